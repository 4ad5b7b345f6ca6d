"""Sweep results on disk: one Parquet part file per finished cell, written atomically.

A part is written to a temporary name in the results directory and moved into place with
`os.replace` (atomic on POSIX), so a killed sweep leaves only complete parts: it loses at most the
cells in flight, never a finished one, and never a half-written file.  `--resume` reads the
`cell_id` of the parts present and skips those cells.  `load` reads the directory as one
table (pyarrow); `compact` merges the parts into `results.parquet` (atomically too) and
removes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sdederive._atomic import atomic_write
from sdederive.errors import SdederiveError

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

__all__ = ["write_row", "done_ids", "load", "compact", "check_writable"]

MERGED = "results.parquet"


def _arrow():
    """`(pyarrow, pyarrow.parquet)`, imported when a sweep stores or reads results (`import sdederive`
    does not load pyarrow), or an `SdederiveError` naming the `sweep` extra."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as e:
        raise SdederiveError("sweep results are Parquet files, which need pyarrow, the 'sweep' extra: "
                             "pip install 'sdederive[sweep]'") from e
    return pyarrow, pyarrow.parquet


def check_writable(out: str | Path) -> Path:
    """Create the results directory `out` if needed and check that files can be written in it, before any
    cell runs (not after all the work): refuses a path that is a file or an unwritable directory."""
    from sdederive._outdir import check_output_dir

    return check_output_dir(out, "sweep results directory (--out)")


def _atomic_write_table(table: pa.Table, path: Path) -> None:
    atomic_write(path, lambda tmp: _arrow()[1].write_table(table, tmp))


def write_row(out: str | Path, row: dict) -> Path:
    """Write one cell's row as `part-<cell_id>.parquet` (atomically)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"part-{row['cell_id']}.parquet"
    _atomic_write_table(_arrow()[0].Table.from_pylist([row]), path)
    return path


def _files(out: Path) -> list[Path]:
    if not out.exists():
        return []
    parts = sorted(out.glob("part-*.parquet"))
    merged = out / MERGED
    return ([merged] if merged.exists() else []) + parts


def done_ids(out: str | Path) -> set[str]:
    """`cell_id` of every finished cell in `out`."""
    ids: set[str] = set()
    for f in _files(Path(out)):
        ids.update(_arrow()[1].read_table(f, columns=["cell_id"]).column("cell_id").to_pylist())
    return ids


def load(out: str | Path) -> pa.Table:
    """All finished cells as one table (columns unified across parts)."""
    pa, pq = _arrow()
    files = _files(Path(out))
    if not files:
        return pa.table({})
    return pa.concat_tables([pq.read_table(f) for f in files], promote_options="permissive")


def compact(out: str | Path) -> pa.Table:
    """Merge the parts into `results.parquet` (one row per `cell_id`) and remove them; returns
    the merged table.  A crash in between only leaves duplicates of finished cells, which the next
    `compact` drops.  The temporary files of writes that never finished (a driver killed between
    `atomic_write`'s temporary file and its rename: `.part-<id>.parquet.<random>.tmp`) are removed too:
    every cell of the run is on disk by now, so no writer of this sweep is left to rename them."""
    out = Path(out)
    for pattern in (".part-*.parquet.*.tmp", f".{MERGED}.*.tmp"):
        for f in out.glob(pattern):
            f.unlink(missing_ok=True)
    table = load(out)
    if table.num_rows:
        ids = table.column("cell_id").to_pylist()
        keep = sorted({c: i for i, c in enumerate(ids)}.values())
        table = table.take(keep)
    _atomic_write_table(table, out / MERGED)
    for f in out.glob("part-*.parquet"):
        f.unlink()
    return table

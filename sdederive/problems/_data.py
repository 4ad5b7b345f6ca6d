"""Data sets for `LogisticRegression` from files: CSV, NPZ, Parquet.

`read_dataset(path, label=None)` returns `(A, y)`: the `(n, d)` features and the labels in
{-1, +1}.  Labels coded 0/1 (or `False`/`True`) are mapped to -1/+1; any other coding (three
classes, 1/2, text) is refused with the values found.  Files are parsed as data only: CSV by the
`csv` module, NPZ by `numpy.load` with `allow_pickle=False` (an NPZ holding Python objects is
refused instead of unpickled), Parquet by pyarrow (the `sweep` extra).

- CSV: one example per row, numbers only; a first row that is not all numbers is the header.  The
  label column is `label` (a header name or a 0-based index), by default the column named `y`,
  `label`, `target` or `class` if there is one, else the last column.
- NPZ: arrays `A` (or `X`) and `y` (or `label`); `label` names another array.
- Parquet: columns as for CSV (numeric columns only).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from sdederive.errors import SdederiveError

__all__ = ["read_dataset", "labels_pm1", "DatasetError"]

_LABEL_NAMES = ("y", "label", "target", "class")


class DatasetError(SdederiveError):
    """A data file that cannot be read as (features, binary labels); the message names the file and why."""


def labels_pm1(y, where: str = "labels") -> np.ndarray:
    """Binary labels as floats in {-1, +1}: 0/1 and False/True map to -1/+1, -1/+1 stay."""
    yv = np.asarray(y)
    if yv.dtype == bool:
        yv = yv.astype(float)
    try:
        yv = yv.astype(float).ravel()
    except (TypeError, ValueError):
        vals = sorted({str(v) for v in np.asarray(y).ravel()})[:5]
        raise DatasetError(f"{where} are not numbers (values {vals}); allowed: two classes coded 0/1 or -1/+1") \
            from None
    if not np.all(np.isfinite(yv)):
        raise DatasetError(f"{where} hold a non-finite value; allowed: two classes coded 0/1 or -1/+1")
    vals = set(np.unique(yv).tolist())
    if vals <= {-1.0, 1.0}:
        return yv
    if vals <= {0.0, 1.0}:
        return 2.0 * yv - 1.0
    shown = sorted(vals)[:6]
    raise DatasetError(f"{where} hold the values {shown}{' ...' if len(vals) > 6 else ''}; allowed: two classes "
                       "coded 0/1 or -1/+1 (recode other labels before loading)")


def _pick_label(names: list[str], label) -> int:
    if label is None:
        low = [n.strip().lower() for n in names]
        for cand in _LABEL_NAMES:
            if cand in low:
                return low.index(cand)
        return len(names) - 1
    if isinstance(label, bool):
        raise DatasetError(f"label={label!r}; allowed: a column name or a 0-based column index")
    if isinstance(label, int | np.integer):
        if not -len(names) <= int(label) < len(names):
            raise DatasetError(f"label column index {label} is out of range; the file has {len(names)} columns")
        return int(label) % len(names)
    if str(label) in names:
        return names.index(str(label))
    raise DatasetError(f"no column named {label!r}; columns: {names}")


def _split(cols: list[str], M: np.ndarray, label, path: Path) -> tuple[np.ndarray, np.ndarray]:
    if M.ndim != 2 or M.shape[1] < 2:
        raise DatasetError(f"{path}: needs at least two columns (features and a label); got shape {M.shape}")
    j = _pick_label(cols, label)
    A = np.delete(M, j, axis=1)
    return np.ascontiguousarray(A), labels_pm1(M[:, j], f"{path}: the labels (column {cols[j]!r})")


def _read_csv(path: Path, label) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    except UnicodeDecodeError:
        raise DatasetError(f"{path} is not a UTF-8 text CSV file") from None
    if not rows:
        raise DatasetError(f"{path} holds no rows")

    def numbers(r):
        try:
            return [float(c) for c in r]
        except ValueError:
            return None

    header = None
    if numbers(rows[0]) is None:
        header, rows = [c.strip() for c in rows[0]], rows[1:]
    width = len(header) if header else len(rows[0])
    data = []
    for k, r in enumerate(rows):
        v = numbers(r)
        line = k + (2 if header else 1)
        if v is None:
            bad = next(c for c in r if numbers([c]) is None)
            raise DatasetError(f"{path}, line {line}: {bad!r} is not a number; allowed: numeric columns only")
        if len(v) != width:
            raise DatasetError(f"{path}, line {line}: {len(v)} columns where the file has {width}")
        data.append(v)
    if not data:
        raise DatasetError(f"{path} holds a header and no data rows")
    M = np.array(data, dtype=float)
    cols = header or [str(i) for i in range(width)]
    return _split(cols, M, label, path)


def _read_npz(path: Path, label) -> tuple[np.ndarray, np.ndarray]:
    import zipfile

    if not zipfile.is_zipfile(path):
        raise DatasetError(f"{path} is not a .npz file (an .npz is a zip archive of arrays, as np.savez writes)")
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.files)
            akey = next((k for k in ("A", "X") if k in keys), None)
            ykey = label if label is not None else next((k for k in ("y", "label") if k in keys), None)
            if akey is None or ykey is None or ykey not in keys:
                raise DatasetError(f"{path}: needs arrays 'A' (or 'X') and 'y' (or 'label', or label=NAME); "
                                   f"holds {keys}")
            A, y = z[akey], z[ykey]
    except DatasetError:
        raise
    except ValueError as e:  # object arrays: numpy refuses to unpickle them
        raise DatasetError(f"{path}: {e}; allowed: numeric arrays (saved without pickling)") from None
    except (OSError, EOFError) as e:
        raise DatasetError(f"{path} is not a readable .npz file: {e}") from None
    A = np.asarray(A, dtype=float)
    if A.ndim != 2:
        raise DatasetError(f"{path}: the features {akey!r} must be an (n, d) matrix; got shape {A.shape}")
    y = labels_pm1(y, f"{path}: the labels {ykey!r}")
    if y.size != A.shape[0]:
        raise DatasetError(f"{path}: {y.size} labels for {A.shape[0]} examples")
    return np.ascontiguousarray(A), y


def _read_parquet(path: Path, label) -> tuple[np.ndarray, np.ndarray]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DatasetError("reading Parquet needs pyarrow: pip install 'sdederive[sweep]'") from None
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises its own ArrowInvalid / OSError family
        raise DatasetError(f"{path} is not a readable Parquet file: {e}") from None
    cols = list(table.column_names)
    try:
        M = np.column_stack([np.asarray(table.column(c).to_numpy(zero_copy_only=False), dtype=float)
                             for c in cols])
    except (TypeError, ValueError):
        bad = [c for c in cols if not np.issubdtype(np.asarray(table.column(c).to_numpy(zero_copy_only=False)).dtype,
                                                     np.number)]
        raise DatasetError(f"{path}: column(s) {bad} are not numeric; allowed: numeric columns only") from None
    return _split(cols, M, label, path)


def read_dataset(path: str | Path, label=None) -> tuple[np.ndarray, np.ndarray]:
    """`(A, y)` from a `.csv`, `.npz` or `.parquet` file (see the module docstring)."""
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"data file {str(p)!r} does not exist" if not p.exists()
                           else f"data file {str(p)!r} is not a file")
    suffix = p.suffix.lower()
    readers = {".csv": _read_csv, ".npz": _read_npz, ".parquet": _read_parquet, ".pq": _read_parquet}
    if suffix not in readers:
        raise DatasetError(f"data file {str(p)!r}: unknown format {suffix or '(no suffix)'}; allowed: "
                           ".csv, .npz, .parquet")
    return readers[suffix](p, label)

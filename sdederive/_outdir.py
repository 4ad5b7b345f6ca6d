"""Output directories checked before the work that fills them (sweeps' `--out`, validators' `--report`):
a path that is a file, or a directory this process cannot write to, is refused at once instead of after
all the computing."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from sdederive.errors import SdederiveError

__all__ = ["check_output_dir"]


def check_output_dir(out: str | os.PathLike, what: str) -> Path:
    """Create `out` (and its parents) if missing and probe it with a temporary file; raise
    `SdederiveError` naming the path if it is a file or not writable."""
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise SdederiveError(f"{what} {str(p)!r} is a file, not a directory; allowed: a directory (it is created "
                             "if missing)")
    try:
        p.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".write-test.", dir=p)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise SdederiveError(f"{what} {str(p)!r} cannot be written: {e.strerror or e}; allowed: a writable "
                             "directory") from None
    return p

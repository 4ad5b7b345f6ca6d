"""What every paper example shares: its command line (``--quick``, ``--out``) and an atomic JSON
write of its results (``validators.reporting.atomic_write_text``: a killed run leaves no half file).

The examples import this as ``_example`` (the script's own directory is on ``sys.path`` when it is
run as ``python examples/<name>.py``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sdederive.validators.reporting import atomic_write_text


def parse_args(doc: str, argv=None) -> tuple[argparse.Namespace, Path]:
    """``--quick`` (reduced sizes, CI) and ``--out`` (default ``examples/out``); returns the arguments
    and the output directory, created."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="reduced sizes (CI)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "out"), help="output directory")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return args, out


def write_json(path: Path, obj, **kw) -> Path:
    """``obj`` as indented JSON at ``path``, written atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=1, **kw))

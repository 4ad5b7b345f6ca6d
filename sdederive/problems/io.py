"""`from_dict` and `load`: the JSON problem files of the CLI."""

from __future__ import annotations

from pathlib import Path

from sdederive._json import JSONTextError, loads_strict
from sdederive.errors import UnknownNameError
from sdederive.problems.base import Problem, ProblemError
from sdederive.problems.custom import Custom
from sdederive.problems.logistic import LogisticRegression
from sdederive.problems.quadratic import Quadratic

__all__ = ["from_dict", "load"]

_KEYS = {
    "quadratic": {"kind", "h", "H", "sigma", "Sigma", "noise", "nu", "x0", "d"},
    "logistic": {"kind", "A", "y", "B", "l2", "x0", "synthetic", "data", "label"},
    "custom": {"kind", "f", "sigma", "noise", "nu", "x0"},
}
#: the fields of a logistic problem's ``synthetic`` object (`LogisticRegression.synthetic`)
_SYNTHETIC_KEYS = ("n", "d", "seed", "l2", "scale")


def from_dict(spec: dict, base_dir: str | Path | None = None) -> Problem:
    """Build a problem from its JSON form, e.g.
    `{"kind": "quadratic", "h": [1, 10], "sigma": [1, 1], "noise": "student-t", "nu": 3, "x0": [1, 1]}`,
    `{"kind": "logistic", "synthetic": {"n": 512, "d": 10, "seed": 0}, "B": 8}`,
    `{"kind": "logistic", "data": "train.csv", "label": "y", "B": 8}` (a CSV, NPZ or Parquet file,
    relative to `base_dir`: the folder of the problem file)."""
    if not isinstance(spec, dict):
        raise ProblemError(f"a problem is a JSON object; got {type(spec).__name__}")
    kind = spec.get("kind", "quadratic")
    if not isinstance(kind, str) or kind not in _KEYS:
        raise UnknownNameError("problem kind", kind, _KEYS)
    unknown = sorted(set(spec) - _KEYS[kind])
    if unknown:
        raise ProblemError(f"unknown field(s) {unknown} for a {kind} problem; allowed: {sorted(_KEYS[kind])}")
    args = {k: v for k, v in spec.items() if k != "kind"}
    if kind == "quadratic":
        return Quadratic(**args)
    if kind == "custom":
        missing = [k for k in ("f", "sigma", "x0") if k not in args]
        if missing:
            raise ProblemError(f"a custom problem needs the field(s) {missing}; e.g. "
                               '{"kind": "custom", "f": "x_0**4/4 + x_1**2/2", "sigma": [1, 1], "x0": [1, 1]}')
        return Custom(**args)
    data = args.pop("data", None)
    label = args.pop("label", None)
    if label is not None and data is None:
        raise ProblemError("'label' names a column of a data file; it needs 'data' (a .csv, .npz or .parquet file)")
    if data is not None:
        if not isinstance(data, str) or "A" in args or "y" in args or "synthetic" in args:
            raise ProblemError(f"'data' must be one file name, given instead of 'A'/'y'/'synthetic'; got {data!r}")
        path = Path(data) if base_dir is None or Path(data).is_absolute() else Path(base_dir) / data
        return LogisticRegression.from_file(path, label=label, **args)
    syn = args.pop("synthetic", None)
    if syn is not None:
        if "A" in args or "y" in args:
            raise ProblemError("'synthetic' draws the data A and labels y; give either 'synthetic' or 'A' and 'y', "
                               "not both")
        if not isinstance(syn, dict):
            raise ProblemError(f"'synthetic' must be an object such as {{\"n\": 512, \"d\": 10, \"seed\": 0}}; got "
                               f"{type(syn).__name__} {str(syn)[:60]}")
        extra = sorted(str(k) for k in set(syn) - set(_SYNTHETIC_KEYS))
        if extra:
            raise ProblemError(f"unknown field(s) {extra} of 'synthetic'; allowed: {', '.join(_SYNTHETIC_KEYS)} (B, l2 "
                               "and x0 are fields of the problem itself)")
        if "l2" in syn and "l2" in args:
            raise ProblemError(f"l2 is given twice, l2={args['l2']!r} and synthetic l2={syn['l2']!r}; allowed: one "
                               "of them")
        base = LogisticRegression.synthetic(**syn, B=args.get("B", 8))
        return LogisticRegression(base.A, base.y, B=args.get("B", 8), l2=args.get("l2", base.l2), x0=args.get("x0"))
    missing = [k for k in ("A", "y") if k not in args]
    if missing:
        raise ProblemError(f"a logistic problem needs the field(s) {missing}, or 'synthetic' or 'data' instead; e.g. "
                           '{"kind": "logistic", "A": [[1, 0], [0, 1]], "y": [1, -1], "B": 1}')
    return LogisticRegression(**args)


def load(path: str | Path) -> Problem:
    """Read a problem JSON file, or a data file (`.csv`, `.npz`, `.parquet`) as a logistic regression
    with batch size 1 and no ridge (a JSON file `{"kind": "logistic", "data": ..., "B": ..., "l2": ...}`
    sets those)."""
    p = Path(path)
    if p.suffix.lower() in (".csv", ".npz", ".parquet", ".pq"):
        return LogisticRegression.from_file(p)
    if p.is_dir():
        raise ProblemError(f"problem file {str(p)!r} is a directory; allowed: a JSON problem file")
    try:
        spec = loads_strict(p.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise ProblemError(f"problem file {str(p)!r} does not exist") from None
    except UnicodeDecodeError:
        raise ProblemError(f"problem file {str(p)!r} is not a text (UTF-8 JSON) file; a binary file such as "
                           ".npz cannot be a problem; allowed: a JSON problem file") from None
    except OSError as e:
        raise ProblemError(f"problem file {str(p)!r} cannot be read: {e.strerror or e}") from None
    except JSONTextError as e:
        raise ProblemError(f"problem file {str(p)!r} is not valid JSON: {e}") from None
    return from_dict(spec, base_dir=p.parent)

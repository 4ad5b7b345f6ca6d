"""Standard JSON out of results that may hold NaN or infinity: those become `null` (`json.dumps`
would otherwise write the non-standard `NaN`/`Infinity`, which strict parsers refuse)."""

from __future__ import annotations

import json
import math

import numpy as np

__all__ = ["finite_or_none", "has_nonfinite", "dumps", "loads_strict", "JSONTextError"]


def finite_or_none(obj, other=None):
    """`obj` with arrays as lists, numpy scalars as Python numbers and every non-finite float as `None`;
    `other(o)`, when given, converts any other leaf (`validators.reporting.json_ready`: sympy to text)."""
    if isinstance(obj, dict):
        return {str(k): finite_or_none(v, other) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v, other) for v in obj]
    if isinstance(obj, np.ndarray):
        return finite_or_none(obj.tolist(), other)
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj if other is None else other(obj)


def has_nonfinite(obj) -> bool:
    """Whether `obj` (nested dicts, lists, arrays, numbers) holds a NaN or an infinity."""
    if isinstance(obj, dict):
        return any(has_nonfinite(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(has_nonfinite(v) for v in obj)
    if isinstance(obj, np.ndarray):
        return obj.dtype.kind in "fc" and not bool(np.isfinite(obj).all())
    if isinstance(obj, (float, np.floating)):
        return not math.isfinite(float(obj))
    return False


def dumps(obj, **kw) -> str:
    """`json.dumps` of `finite_or_none` of `obj` with `allow_nan=False` (`default=str` for the rest)."""
    kw.setdefault("default", str)
    return json.dumps(finite_or_none(obj), allow_nan=False, **kw)


class JSONTextError(ValueError):
    """Text that `loads_strict` refuses; the message says what is wrong (the callers wrap it in their own
    `SdederiveError` subclass, with the file or field it came from)."""


def _unique_keys(pairs: list) -> dict:
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise JSONTextError(f"the key {k!r} appears twice in one object; allowed: each key once")
        out[k] = v
    return out


def loads_strict(text: str):
    """`json.loads` of a file users share, every failure a `JSONTextError`: invalid JSON, a key given twice
    in one object (`json.loads` would keep the last one silently), nesting too deep for the parser, an
    integer literal beyond Python's digit limit (a `ValueError` from deep inside `json`)."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except JSONTextError:
        raise
    except json.JSONDecodeError as e:
        raise JSONTextError(str(e)) from None
    except RecursionError:
        raise JSONTextError("nested too deeply") from None
    except ValueError as e:  # int('9' * 5000): Python's limit on the digits of an integer
        raise JSONTextError(f"a number has too many digits ({str(e).split(';')[0]})") from None


def provenance(seed: int | None = None) -> dict:
    """What produced a result, for its JSON report: the versions of sdederive, Python and the libraries
    the numbers depend on, and the seed (same versions and seed, same numbers)."""
    import platform
    from importlib import metadata

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    from sdederive import __version__

    out = {"versions": {"sdederive": __version__, "python": platform.python_version(),
                        **{d: version(d) for d in ("numpy", "scipy", "sympy", "numba")}}}
    if seed is not None:
        out["seed"] = int(seed)
    return out

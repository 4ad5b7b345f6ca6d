"""A grid of simulation cells: the cartesian product of named axes.

`Grid(optimizer=["adam", "sgd"], eta=np.geomspace(1e-4, 1e-1, 24), B=[1, 2, 4], seed=range(4))`
has `2*24*3*4` cells.  Each cell is a dict of axis values plus a `cell_id` (a hash of the values,
stable across processes and runs), which is what storage and `--resume` key on.  Axes other than
`optimizer`, `eta`, `B`, `seed`, `mode` and `backend` are discrete hyperparameters
(`beta1=[0.9, 0.99]`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Iterable

import numpy as np

from sdederive.errors import SdederiveError
from sdederive.simulate.backends.registry import backend_names

__all__ = ["Grid", "cell_id"]

RESERVED = ("optimizer", "eta", "B", "seed", "mode", "backend")
#: most values one generator may expand to, and most cells a grid may have (each cell is a simulation; the
#: driver enumerates them all before the first one runs)
MAX_AXIS = 100_000
MAX_CELLS = 1_000_000


def _plain(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        return float(v)
    return v


def cell_id(cell: dict) -> str:
    """16 hex digits of the SHA-256 of the cell's values (key order does not matter)."""
    body = json.dumps({k: _plain(v) for k, v in sorted(cell.items()) if k != "cell_id"}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


_GENERATORS = {"geomspace": "[lo, hi, n] with 0 < lo, hi and n >= 1", "linspace": "[lo, hi, n] with n >= 1",
               "range": "[stop], [start, stop] or [start, stop, step] (integers)",
               "pow2": "[lo, hi], integers with 1 <= lo <= hi"}


def _finite(a) -> bool:
    """Whether the number `a` is finite as a float (an integer beyond the float range is not)."""
    try:
        return bool(np.isfinite(float(a)))
    except OverflowError:
        return False


def _gen_error(axis: str, kind: str, args, why: str) -> SdederiveError:
    return SdederiveError(f"grid axis {axis}: {{{kind} = {args!r}}} {why}; allowed: {{{kind} = {_GENERATORS[kind]}}}")


def _expand(axis: str, gen: dict) -> list:
    """The values of a generator table `{kind = [args]}` (see `Grid.from_dict`)."""
    if len(gen) != 1:
        raise SdederiveError(f"grid axis {axis}: a generator has exactly one key, one of {', '.join(_GENERATORS)}; "
                             f"got {sorted(gen)}")
    (kind, args), = gen.items()
    if kind not in _GENERATORS:
        raise SdederiveError(f"grid axis {axis}: unknown generator {kind!r}; allowed: geomspace, linspace, "
                             "range, pow2")
    if not isinstance(args, (list, tuple)):
        raise _gen_error(axis, kind, args, "is not a list of arguments")
    if any(isinstance(a, bool) or not isinstance(a, (int, float)) or not _finite(a) for a in args):
        raise _gen_error(axis, kind, args, "has an argument that is not a finite number")
    n_ok = {"geomspace": (3,), "linspace": (3,), "range": (1, 2, 3), "pow2": (2,)}[kind]
    if len(args) not in n_ok:
        raise _gen_error(axis, kind, args, f"has {len(args)} argument(s)")
    if kind in ("geomspace", "linspace"):
        lo, hi, n = args
        if not float(n).is_integer() or n < 1:
            raise _gen_error(axis, kind, args, f"has n = {n!r}, not an integer >= 1")
        if n > MAX_AXIS:
            raise _gen_error(axis, kind, args, f"has n = {n!r} values, more than the {MAX_AXIS} an axis may have")
        if kind == "geomspace" and (lo <= 0 or hi <= 0):
            raise _gen_error(axis, kind, args, "has a bound <= 0 (a geometric sequence needs positive bounds)")
        f = np.geomspace if kind == "geomspace" else np.linspace
        return f(float(lo), float(hi), int(n)).tolist()
    if any(not float(a).is_integer() for a in args):
        raise _gen_error(axis, kind, args, "has a non-integer argument")
    ints = [int(a) for a in args]
    if kind == "range":
        if len(ints) == 3 and ints[2] == 0:
            raise _gen_error(axis, kind, args, "has step 0")
        try:
            count = str(len(range(*ints)))
        except OverflowError:  # more than sys.maxsize values
            count = "more than 2**63"
        if not count.isdigit() or int(count) > MAX_AXIS:
            raise _gen_error(axis, kind, args, f"has {count} values, more than the {MAX_AXIS} an axis may have")
        vals = list(range(*ints))
        if not vals:
            raise _gen_error(axis, kind, args, "is empty")
        return vals
    lo, hi = ints
    if lo < 1 or hi < lo:
        raise _gen_error(axis, kind, args, "has lo < 1 or hi < lo")
    return [lo * 2**j for j in range((hi // lo).bit_length())]  # exact: lo * 2**j <= hi


class Grid:
    """Cartesian product of axes (see the module docstring)."""

    def __init__(self, **axes: Iterable) -> None:
        if not axes:
            raise SdederiveError("Grid() needs at least one axis, e.g. Grid(eta=[0.1, 0.01], seed=range(4))")
        self.axes: dict[str, list] = {}
        for name, vals in axes.items():
            vals = [vals] if isinstance(vals, (str, int, float)) else [_plain(v) for v in vals]
            vals = [_plain(v) for v in vals]
            if not vals:
                raise SdederiveError(f"grid axis {name!r} is empty; allowed: a non-empty list of values")
            if any(isinstance(v, (bool, np.bool_)) for v in vals):
                raise SdederiveError(f"grid axis {name}={vals!r} has a boolean value; allowed: numbers (or names)")
            if name == "eta" and any(not (isinstance(v, (int, float)) and v > 0 and np.isfinite(v)) for v in vals):
                raise SdederiveError(f"grid axis eta={vals!r} has a value that is not > 0")
            if name == "B" and any(not (isinstance(v, int) and v >= 1) for v in vals):
                raise SdederiveError(f"grid axis B={vals!r} has a value that is not an integer >= 1")
            if name == "seed" and any(not (isinstance(v, int) and 0 <= v < 2**64) for v in vals):
                raise SdederiveError(f"grid axis seed={vals!r} has a value that is not an integer in [0, 2**64)")
            if name == "mode" and any(v not in ("discrete", "sde") for v in vals):
                raise SdederiveError(f"grid axis mode={vals!r} has a value other than 'discrete' or 'sde'")
            if name == "backend" and any(v not in backend_names() for v in vals):
                raise SdederiveError(f"grid axis backend={vals!r} has a value that is not a backend; allowed: "
                                     f"{', '.join(backend_names())}")
            if name == "optimizer" and any(not isinstance(v, str) for v in vals):
                raise SdederiveError(f"grid axis optimizer={vals!r} has a value that is not an optimizer name")
            if name not in RESERVED and any(not isinstance(v, (int, float)) for v in vals):
                raise SdederiveError(f"grid axis {name}={vals!r} (a hyperparameter) has a value that is not a number")
            if name == "cell_id":
                raise SdederiveError("grid axis 'cell_id' is not allowed: every cell's cell_id is the hash of its "
                                     "values; allowed: the axes optimizer, eta, B, seed, mode, backend and "
                                     "hyperparameters")
            dup = sorted({repr(v) for i, v in enumerate(vals) if v in vals[:i]})
            if dup:  # the same cell twice: run twice, stored twice, counted twice by the analysis
                raise SdederiveError(f"grid axis {name} has the value(s) {', '.join(dup)[:80]} more than once; "
                                     "allowed: each value once")
            self.axes[name] = vals
        if len(self) > MAX_CELLS:
            sizes = " x ".join(str(len(v)) for v in self.axes.values())
            raise SdederiveError(f"the grid has {len(self)} cells ({sizes}); allowed: at most {MAX_CELLS}")

    def __len__(self) -> int:
        return math.prod(len(v) for v in self.axes.values())  # exact (np.prod overflows int64)

    def cells(self) -> list[dict]:
        names = list(self.axes)
        out = []
        for combo in itertools.product(*(self.axes[n] for n in names)):
            c = dict(zip(names, combo))
            c["cell_id"] = cell_id(c)
            out.append(c)
        return out

    @classmethod
    def from_dict(cls, spec: dict) -> Grid:
        """Axes from a dict (a TOML `[grid]` table); `{"geomspace": [lo, hi, n]}`, `{"linspace": [lo, hi, n]}`
        and `{"range": [a, b]}` expand to values, as do `{"pow2": [lo, hi]}` (`lo, 2lo, ..., hi`).  A
        generator with the wrong form (two keys, too few arguments, text for a number, reversed or zero
        bounds) is refused with a message naming the axis."""
        if not isinstance(spec, dict):
            raise SdederiveError(f"a grid is a table of axes; got {type(spec).__name__}")
        axes = {}
        for k, v in spec.items():
            if isinstance(v, dict):
                v = _expand(k, v)
            axes[k] = v
        return cls(**axes)

    def __repr__(self) -> str:
        return f"Grid({', '.join(f'{k}[{len(v)}]' for k, v in self.axes.items())}: {len(self)} cells)"

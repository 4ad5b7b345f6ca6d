"""A grid of simulation cells: the cartesian product of named axes.

``Grid(optimizer=["adam", "sgd"], eta=np.geomspace(1e-4, 1e-1, 24), B=[1, 2, 4], seed=range(4))``
has ``2*24*3*4`` cells.  Each cell is a dict of axis values plus a ``cell_id`` (a hash of the values,
stable across processes and runs), which is what storage and ``--resume`` key on.  Axes other than
``optimizer``, ``eta``, ``B``, ``seed``, ``mode`` and ``backend`` are discrete hyperparameters
(``beta1=[0.9, 0.99]``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable

import numpy as np

from ..errors import SdederiveError

__all__ = ["Grid", "cell_id"]

RESERVED = ("optimizer", "eta", "B", "seed", "mode", "backend")


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


class Grid:
    """Cartesian product of axes (see the module docstring)."""

    def __init__(self, **axes: Iterable) -> None:
        if not axes:
            raise SdederiveError("Grid() needs at least one axis, e.g. Grid(eta=[0.1, 0.01], seed=range(4))")
        self.axes: dict[str, list] = {}
        for name, vals in axes.items():
            vals = [vals] if isinstance(vals, (str, int, float)) else [_plain(v) for v in vals]
            if not vals:
                raise SdederiveError(f"grid axis {name!r} is empty; allowed: a non-empty list of values")
            if name == "eta" and any(not (isinstance(v, (int, float)) and v > 0) for v in vals):
                raise SdederiveError(f"grid axis eta={vals!r} has a value that is not > 0")
            if name == "B" and any(not (isinstance(v, int) and v >= 1) for v in vals):
                raise SdederiveError(f"grid axis B={vals!r} has a value that is not an integer >= 1")
            self.axes[name] = vals

    def __len__(self) -> int:
        return int(np.prod([len(v) for v in self.axes.values()]))

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
        """Axes from a dict (a TOML ``[grid]`` table); ``{"geomspace": [lo, hi, n]}`` and
        ``{"range": [a, b]}`` expand to values, as do ``{"pow2": [lo, hi]}`` (``lo, 2lo, ..., hi``)."""
        axes = {}
        for k, v in spec.items():
            if isinstance(v, dict):
                (kind, args), = v.items()
                if kind == "geomspace":
                    v = np.geomspace(float(args[0]), float(args[1]), int(args[2])).tolist()
                elif kind == "linspace":
                    v = np.linspace(float(args[0]), float(args[1]), int(args[2])).tolist()
                elif kind == "range":
                    v = list(range(*[int(a) for a in args]))
                elif kind == "pow2":
                    lo, hi = int(args[0]), int(args[1])
                    v = [lo * 2**k for k in range(int(np.log2(hi // lo)) + 1)]
                else:
                    raise SdederiveError(f"grid axis {k}: unknown generator {kind!r}; allowed: geomspace, linspace, "
                                         "range, pow2")
            axes[k] = v
        return cls(**axes)

    def __repr__(self) -> str:
        return f"Grid({', '.join(f'{k}[{len(v)}]' for k, v in self.axes.items())}: {len(self)} cells)"

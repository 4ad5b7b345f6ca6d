r"""A numpy evaluation of a vector update rule (`sdederive.spec.vector`), batched over rows.

`step(opt, x, states, g_of, hyper, k)` returns the new value of every state (`x` and the auxiliary
states) for each row of `x` (`(n, d)`): the update evaluated as written, with `g_of(point, batch)` the
stochastic gradient at the rows of `point` for minibatch `batch` (0 is `g`'s own minibatch; each
`grad_at(..., fresh=True)` gets the next number).  The simulators use it for the expected first step of
an SDE that is singular at `t = 0` (a Monte Carlo mean over rows of noise draws); it is an independent
reading of the same IR as the kernels' lowering (`sdederive.simulate.vector_lower`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import numpy as np
import sympy as sp

from sdederive.errors import SdederiveError
from sdederive.sde_vector import IDENT
from sdederive.spec import vector as V
from sdederive.symbols import sym

__all__ = ["step"]


@functools.lru_cache(maxsize=256)
def _lambdify(args: tuple, expr: sp.Expr):
    """`sympy.lambdify` once per (arguments, expression): the same update evaluated chunk by chunk."""
    return sp.lambdify(list(args), expr, "numpy")


def step(opt: V.VectorOptimizer, x: np.ndarray, states: Mapping[str, np.ndarray],
         g_of: Callable[[np.ndarray, int], np.ndarray], hyper: Mapping[str, float], k: int = 0,
         keys: dict | None = None) -> dict:
    """The new states of one step of `opt` (see the module docstring); all states from the same old values.
    `keys`: a dict kept across calls on the same `opt` (the subtrees' memo keys, computed once)."""
    keys = {} if keys is None else keys
    x = np.atleast_2d(np.asarray(x, float))
    names = {h.name: sym(h.name) for h in opt.hypers}
    hsyms = list(names.values()) + [sym("k")]
    hvals = [float(hyper[h]) for h in names] + [float(k)]
    memo: dict = {}
    nb = [1]

    def scal(e: sp.Expr) -> np.ndarray:
        e = sp.sympify(e)
        atoms = sorted(e.atoms(V.VScalar), key=str)
        vals = []
        for a in atoms:
            vs = [low(w) for w in a.vargs]
            vals.append(np.linalg.norm(vs[0], axis=1) if a.op == "norm" else np.einsum("ij,ij->i", vs[0], vs[1]))
        dummies = [sp.Symbol(f"_a{j}", real=True) for j in range(len(atoms))]  # stable names: the cache hits
        f = _lambdify(tuple(dummies + hsyms), e.xreplace(dict(zip(atoms, dummies))))
        return np.asarray(f(*vals, *hvals), float).reshape(-1, 1) * np.ones((x.shape[0], 1))

    def low(v: V.Vec) -> np.ndarray:
        if id(v) not in keys:
            keys[id(v)] = (v, V.value_key(v))  # v itself too: its id stays its own while the dict lives
        key = keys[id(v)][1]
        if key in memo:
            return memo[key]
        if isinstance(v, V.VecSym):
            out = x if v.name == "x" else (g if v.name == "g" else np.asarray(states[v.name], float))
        elif isinstance(v, V.VAdd):
            out = sum(low(t) for t in v.terms)
        elif isinstance(v, V.VScale):
            out = scal(v.scalar) * low(v.vec)
        elif isinstance(v, V.MatVec):
            c, M = v.matrix.as_coeff_mmul() if v.matrix != IDENT else (sp.S.One, IDENT)
            if M != IDENT:
                raise SdederiveError(f"{opt.name}: the update multiplies by the matrix {v.matrix}; only scalar "
                                     "multiples of the identity have a value here")
            out = scal(c) * low(v.vec)
        elif isinstance(v, V.GradAt):
            batch = 0
            if v.fresh:
                batch, nb[0] = nb[0], nb[0] + 1
            out = np.asarray(g_of(low(v.point), batch), float)
        elif isinstance(v, V.CoordMap):
            s = sp.Symbol("_a", real=True)
            out = np.asarray(_lambdify((s,), v.fn(s))(low(v.vec)), float)
        elif isinstance(v, V.CoordExpr):
            f = _lambdify(tuple(v.vars) + tuple(hsyms), v.body)
            out = np.asarray(f(*[low(w) for w in v.vecs], *hvals), float) * np.ones_like(x)
        else:  # pragma: no cover - the IR is closed
            raise SdederiveError(f"{opt.name}: cannot evaluate {v!r}")
        memo[key] = out
        return out

    g = np.asarray(g_of(x, 0), float)
    return {name: low(u) for name, u in opt.updates.items()}

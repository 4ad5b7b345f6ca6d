r"""`Custom`: any `f` written as a sympy expression of `x_0, ..., x_{d-1}`; gradient, Hessian
diagonal and Hessian-vector product by `sympy.diff` (the Hessian from `sympy.hessian`); noise as
for `Quadratic` (per-coordinate `sigma`).

Its one description (`Custom.code`) is `f` itself: the derivatives are unrolled per coordinate
(`Unrolled`) and printed for numba and CUDA after `sympy.cse`; the numpy
reference evaluates the same expressions."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import sympy as sp

from sdederive._safe_expr import OBJECTIVE_FUNCTIONS, parse_expr
from sdederive.problems.base import Problem, ProblemError, _noise_kind, _vec
from sdederive.problems.description import IX, Loop, ProblemCode, Unrolled, V, X, vec

__all__ = ["Custom", "MAX_DIMENSION"]

#: the largest `d` of a custom problem: its derivatives are unrolled per coordinate, so building it costs
#: `d**2` symbolic differentiations (measured: about 1 s at d = 200, growing as d**2)
MAX_DIMENSION = 256


@dataclass(frozen=True, eq=False)
class Custom(Problem):
    """`f` a sympy expression of the symbols `x_0 ... x_{d-1}` (`sympy.symbols("x_0:d")`), or its text
    (`"x_0**4/4 + x_1**2/2"`, read by the safe parser of `sdederive._safe_expr`: numbers,
    `+ - * / **`, `x_i`, `pi`, `E` and `sqrt exp log sin cos tanh atan erf erfc`)."""

    f: sp.Expr | None = None
    sigma: np.ndarray | None = None
    xs: tuple = ()

    kind = "custom"

    def __init__(self, f, sigma, x0, noise: str = "gaussian", nu=None):
        x0v = _vec("x0", x0, None if np.ndim(x0) else None)
        d = x0v.size
        if d == 0:
            raise ProblemError("x0 of a custom problem is empty; allowed: a list of d >= 1 numbers")
        if d > MAX_DIMENSION:
            raise ProblemError(f"x0 of a custom problem has d = {d} coordinates; allowed: at most {MAX_DIMENSION} "
                               "(its gradient, Hessian and kernels are unrolled per coordinate, d**2 symbolic Hessian "
                               "entries; use a Quadratic or LogisticRegression for large d)")
        xs = sp.symbols(f"x_0:{d}", real=True)
        f = _objective(f, xs)
        nk, nuf = _noise_kind(noise, nu)
        object.__setattr__(self, "x0", x0v)
        object.__setattr__(self, "noise", nk)
        object.__setattr__(self, "nu", nuf)
        object.__setattr__(self, "f", f)
        object.__setattr__(self, "sigma", _vec("sigma", sigma, d, nonneg=True))
        object.__setattr__(self, "xs", tuple(xs))

    def fingerprint_data(self) -> str:
        return f"custom:{self.noise}:{sp.srepr(self.f)}"

    # -- the description -----------------------------------------------------------------------------
    def code(self) -> ProblemCode:
        return _code(self.f, self.xs)

    def fields(self) -> tuple:
        return (("sigma", "d"),)

    def pack_values(self) -> dict:
        return {"sigma": self.sigma}

    def hessian_coupling(self) -> str | None:
        xs = self.xs
        if any(sp.diff(self.f, xs[i], xs[j]) != 0 for i in range(len(xs)) for j in range(i + 1, len(xs))):
            return "a custom loss whose Hessian is not diagonal (f is not a sum of functions of one coordinate)"
        return None

    def hessian(self, x: np.ndarray) -> np.ndarray:
        """The `d x d` Hessian at `x` (`sympy.hessian` of `f`)."""
        fn = sp.lambdify([self.xs], sp.hessian(self.f, self.xs), "numpy")
        return np.asarray(fn(np.asarray(x, float)), float)

    def to_dict(self) -> dict:
        out = {"kind": "custom", "f": str(self.f), "sigma": self.sigma.tolist(), "x0": self.x0.tolist(),
               "noise": self.noise}
        if self.nu is not None:
            out["nu"] = self.nu
        return out


@functools.lru_cache(maxsize=64)
def _code(f: sp.Expr, xs: tuple) -> ProblemCode:
    sub = {x: X[i] for i, x in enumerate(xs)}
    grad = [sp.diff(f, x) for x in xs]
    H = sp.hessian(f, xs)
    d = len(xs)
    hvp = [sum((H[i, j] * V[j] for j in range(d)), sp.S.Zero).xreplace(sub) for i in range(d)]
    return ProblemCode(
        grad=Unrolled(tuple(g.xreplace(sub) for g in grad)),
        hess_diag=Unrolled(tuple(H[i, i].xreplace(sub) for i in range(d))),
        hvp=Unrolled(tuple(hvp)),
        loss=f.xreplace(sub),
        fields=("sigma",),
        noise_scale=Loop(vec("sigma")[IX]),
    )


def _objective(f, xs: tuple) -> sp.Expr:
    """`f` of a custom problem as a sympy expression of `xs`.  Text (from a problem file, a sweep
    grid or the API) goes through the safe parser, never `sympify`; a sympy expression is taken as it
    is, its plain `x_i` symbols replaced by the real ones."""
    d = len(xs)
    names = f"x_0..x_{d - 1} (d = len(x0) = {d})" if d > 1 else "x_0 (d = len(x0) = 1)"
    if isinstance(f, str):
        f = parse_expr(f, symbols={f"x_{i}": x for i, x in enumerate(xs)}, functions=OBJECTIVE_FUNCTIONS,
                       what="f of the custom problem", allowed=f"the variables {names}, pi and E")
    elif isinstance(f, (int, float)) and not isinstance(f, bool):
        f = sp.Float(f) if isinstance(f, float) else sp.Integer(f)
    elif not isinstance(f, sp.Expr):
        raise ProblemError(f"f of the custom problem is a {type(f).__name__} ({str(f)[:60]}); allowed: a scalar "
                           f"expression of {names}, as text (\"x_0**2 + 2*x_1**2\") or a sympy expression")
    f = f.xreplace({sp.Symbol(f"x_{i}"): xs[i] for i in range(d)})
    extra = sorted(str(s) for s in f.free_symbols - set(xs))
    if extra:
        raise ProblemError(f"f may only use {names}; it also uses {extra}")
    if f.has(sp.I, sp.zoo, sp.nan, sp.oo, -sp.oo):
        raise ProblemError(f"f = {sp.sstr(f)[:80]} of the custom problem is complex or infinite; allowed: a real, "
                           "finite objective")
    return f

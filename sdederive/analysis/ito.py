r"""The Itô generator of a derived SDE applied to a test function.

For the per-coordinate SDE $dS = b(S, t)\,dt + D(S, t)\,dW$ (`S = (x, m, v, ...)`, one copy
per coordinate `i`, independent Brownian motions across coordinates unless the noise has a full
covariance) and a test function $\varphi$, Itô's formula gives
$d\,\mathbb E\varphi = \mathbb E[\mathcal L\varphi]\,dt$ with

$$
\mathcal L\varphi = \partial_t\varphi + \sum_i\Big(\sum_s b_s\,\partial_{s_i}\varphi
+ \tfrac12\sum_{s,s'} (DD^\top)_{ss'}\,\partial_{s_i}\partial_{s'_i}\varphi\Big).
$$

For the loss $\varphi = f(x)$ this is
$\sum_i b_x\,\partial_i f + \tfrac12 (DD^\top)_{xx}\,\partial_{ii} f$ (with `grad` =
$\partial_i f$, `hess` = $\partial_{ii} f$ in the SDE's notation); cross-coordinate
second derivatives do not enter because the noise of different coordinates is independent.  On a
quadratic the expansion is exact (no Taylor remainder): $\tfrac{d}{dt}\mathbb E f = \mathbb E[\mathcal L f]$.

`generator` returns the per-coordinate summand as a sympy expression (`Generator.summand`)
in the SDE's symbols plus `x_star` (the minimizer coordinate) where the test function needs it.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from sdederive.errors import SdederiveError
from sdederive.sde import SDE
from sdederive.symbols import sym

__all__ = ["generator", "Generator", "TEST_FUNCTIONS"]

x_star = sp.Symbol("x_star", real=True)

#: built-in test functions, per coordinate: (phi, d phi/dx, d2 phi/dx2) in terms of x, grad, hess.
TEST_FUNCTIONS = ("loss", "dist2", "x")


@dataclass(frozen=True)
class Generator:
    r"""`L phi` of one SDE: `summand` per coordinate, summed over `i` for the total."""

    sde: SDE
    test: str
    summand: sp.Expr
    drift_part: sp.Expr
    ito_part: sp.Expr
    time_part: sp.Expr = sp.S.Zero

    def __str__(self) -> str:
        return (f"Ito generator of the {self.sde.optimizer} SDE on phi = {self.test}:\n"
                f"  L phi = sum_i [ {self.drift_part} + {self.ito_part} ]"
                + (f" + {self.time_part}" if self.time_part != 0 else ""))

    __repr__ = __str__

    def latex(self) -> str:
        return rf"\mathcal L\varphi = \sum_i \Big[{sp.latex(self.drift_part)} + {sp.latex(self.ito_part)}\Big]"

    def on_quadratic(self, h: sp.Expr | None = None) -> sp.Expr:
        """The summand on `f = h*x**2/2` (`grad = h*x`, `hess = h`): exact `d E f/dt` per coordinate."""
        h = sym("h") if h is None else h
        x = self._x()
        return sp.simplify(self.summand.xreplace({sym("grad"): h * x, sym("hess"): h}))

    def _x(self):
        return self.sde._free().get("x", sym("x"))


def _svars(sde: SDE) -> list[sp.Symbol]:
    free = sde._free()
    return [free.get(s, sym(s)) for s in sde.states]


def generator(sde: SDE, phi="loss") -> Generator:
    r"""Apply the SDE's generator to `phi`.

    `phi`: `"loss"` ($f(x)$, through `grad`/`hess`), `"dist2"`
    ($\tfrac12|x-x^*|^2$), `"x"` (one coordinate), or a sympy expression of the state
    symbols (and `t`) of one coordinate, summed over coordinates.
    """
    if not isinstance(sde, SDE):
        raise SdederiveError(f"generator() needs a derived SDE (sd.derive(...)), got {type(sde).__name__}")
    svars = _svars(sde)
    x = svars[0]
    grad, hess = sym("grad"), sym("hess")
    D = sde.diffusion_matrix
    Q = (D * D.T) if D.shape[1] else sp.zeros(len(svars))
    b = [sp.sympify(sde.drift[s]) for s in sde.states]
    t = sym("t")
    if phi == "loss":
        drift_part = b[0] * grad
        ito_part = sp.Rational(1, 2) * Q[0, 0] * hess
        return Generator(sde, "loss", drift_part + ito_part, drift_part, sp.simplify(ito_part))
    if phi == "dist2":
        drift_part = b[0] * (x - x_star)
        ito_part = sp.Rational(1, 2) * Q[0, 0]
        return Generator(sde, "dist2", drift_part + ito_part, drift_part, sp.simplify(ito_part))
    if phi == "x":
        return Generator(sde, "x", b[0], b[0], sp.S.Zero)
    if isinstance(phi, str):
        raise SdederiveError(f"unknown test function {phi!r}; allowed: {', '.join(TEST_FUNCTIONS)}, or a sympy "
                             f"expression of the states {list(sde.states)}")
    phi = sp.sympify(phi)
    extra = {str(s) for s in phi.free_symbols} - {str(v) for v in svars} - {"t", "x_star"} - set(sde.symbols)
    if extra:
        raise SdederiveError(f"test function {phi} has symbols {sorted(extra)} that are not states of the "
                             f"{sde.optimizer} SDE {list(sde.states)} (or t, x_star, or the SDE's parameters)")
    drift_part = sum((bi * sp.diff(phi, v) for bi, v in zip(b, svars)), sp.S.Zero)
    ito_part = sp.Rational(1, 2) * sum((Q[a, c] * sp.diff(phi, svars[a], svars[c])
                                        for a in range(len(svars)) for c in range(len(svars))), sp.S.Zero)
    time_part = sp.diff(phi, t)
    return Generator(sde, str(phi), drift_part + ito_part + time_part, drift_part, sp.simplify(ito_part), time_part)

r"""Stationary covariance and expected loss on a diagonal quadratic, from an SDE.

On $f = \tfrac12 h x^2$ per coordinate (`grad = h*x`, `hess = h`), the SDE is
linearized around its fixed point $(x, s) = (0, s^*)$ (`s*` solves `drift_s = 0` for
the auxiliary states at `x = 0`, after `t -> oo` so that bias corrections are spent), with the
diffusion frozen there.  The resulting Ornstein-Uhlenbeck process
$dY = J Y dt + D\,dW$ has the stationary covariance $C$ solving the Lyapunov equation

$$
J C + C J^\top + D D^\top = 0,
$$

and $\mathbb E f(X_\infty) = \tfrac h2 C_{xx}$ per coordinate (sum over coordinates for the
total).  For SGD the SDE is already an OU process and the result is exact
($\eta\sigma^2/(2h)$); for SignSGD and RMSpropW it is the linearization of the reference
notes ($\tfrac\eta2\sqrt{\pi/2}\,\sigma/h$, $\eta\sigma^2/(2P(h+w_dP))$, $P=\sigma+\epsilon$).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy as sp

from sdederive.errors import SdederiveError
from sdederive.sde import SDE
from sdederive.symbols import sym

__all__ = ["stationary", "Stationary"]


@dataclass
class Stationary:
    """Stationary statistics of an SDE on `f = h*x**2/2` (per coordinate)."""

    sde: SDE
    variance: sp.Expr
    loss: sp.Expr
    covariance: sp.Matrix
    fixed_point: dict = field(default_factory=dict)
    jacobian: sp.Matrix | None = None
    exact: bool = False

    def to_dict(self) -> dict:
        return {
            "optimizer": self.sde.optimizer, "regime": self.sde.regime, "noise": self.sde.noise,
            "objective": "h*x**2/2", "variance": str(self.variance), "loss": str(self.loss),
            "fixed_point": {k: str(v) for k, v in self.fixed_point.items()}, "exact": self.exact,
            "states": list(self.sde.states),
            "covariance": [[str(c) for c in row] for row in self.covariance.tolist()],
        }

    def __str__(self) -> str:
        how = "exact (the SDE is an OU process)" if self.exact else "linearized around the fixed point"
        fp = ", ".join(f"{k} = {v}" for k, v in self.fixed_point.items())
        return (f"Stationary state of the {self.sde.optimizer} SDE ({self.sde.regime}) on f = h*x**2/2, {how}:\n"
                f"  Var(x)  = {self.variance}\n  E[f]    = {self.loss}" + (f"\n  fixed point: {fp}" if fp else ""))

    __repr__ = __str__

    def latex(self) -> str:
        """An aligned LaTeX block: the stationary variance and loss on $f = h x^2/2$."""
        lx = self.sde._lx
        rows = [rf"\operatorname{{Var}}_\infty(x) &= {lx(self.variance)}",
                rf"\mathbb E_\infty[f] &= {lx(self.loss)}"]
        rows += [rf"{lx(sym(k))}^\ast &= {lx(v)}" for k, v in self.fixed_point.items()]
        return "\\begin{aligned}\n" + " \\\\\n".join(rows) + "\n\\end{aligned}"

    def _repr_latex_(self) -> str:
        """Jupyter: the LaTeX block, rendered."""
        return "$$" + self.latex() + "$$"


def stationary(sde: SDE, curvature: str = "h") -> Stationary:
    """Stationary variance of `x` and expected loss on `f = h*x**2/2` (see the module docstring)."""
    h = sym(curvature) if curvature == "h" else sym(curvature, positive=True)
    free = sde._free()
    x = free.get("x", sym("x"))
    t = sym("t")
    quad = {sym("grad"): h * x, sym("hess"): h}
    states = list(sde.states)
    svars = [free.get(s, sym(s)) for s in states]

    def prep(e):
        e = sp.sympify(e).xreplace(quad)
        if e.has(t):
            e = sp.limit(e, t, sp.oo) if e.has(sp.exp) else e.subs(t, sp.oo)
        return e

    drift = [prep(sde.drift[s]) for s in states]
    D = sde.diffusion_matrix.applyfunc(prep)
    aux = svars[1:]
    fp: dict = {x: sp.S.Zero}
    if aux:
        eqs = [drift[i].subs(x, 0) for i in range(1, len(states))]
        sols = sp.solve(eqs, aux, dict=True)
        if not sols:
            raise SdederiveError(
                f"no fixed point of the auxiliary states {states[1:]} of the {sde.optimizer} SDE at x = 0"
            )
        fp.update(sols[0])
    at = {**fp}
    drift_vec = sp.Matrix(drift)
    try:
        J = drift_vec.jacobian(svars).xreplace(at)
    except Exception as e:  # noqa: BLE001 - sympy raises various errors on non-differentiable drifts
        raise SdederiveError(f"the {sde.optimizer} drift cannot be linearized at its fixed point: {e}") from None
    J = J.applyfunc(lambda e: sp.simplify(e.doit()) if sp.count_ops(e) < 150 else sp.cancel(e.doit()))
    if any(e.has(sp.DiracDelta, sp.nan, sp.zoo) or isinstance(e, sp.Subs) for e in J):
        raise SdederiveError(
            f"the {sde.optimizer} drift is not differentiable at its fixed point {fp} (e.g. sign(m) at m = 0): "
            "no OU linearization"
        )
    Dfp = D.xreplace(at)
    Q = (Dfp * Dfp.T).applyfunc(sp.simplify) if Dfp.shape[1] else sp.zeros(len(states))
    n = len(states)
    # Lyapunov equation as a linear system in the upper triangle of C (linsolve: sp.solve is far
    # slower on these coefficients)
    cs = sp.symbols(f"C0:{n * n}")
    C = sp.Matrix(n, n, lambda i, j: cs[min(i, j) * n + max(i, j)])
    # solve with placeholder symbols for the entries of J and Q, then substitute: linsolve on the
    # raw entries (erf/exp/pi coefficients for Lion) is orders of magnitude slower
    back = {}

    def ph(e, name):
        if e == 0 or e.is_number:
            return e
        p = sp.Symbol(name)
        back[p] = e
        return p

    Jp = sp.Matrix(n, n, lambda i, j: ph(J[i, j], f"J{i}{j}"))
    Qp = sp.Matrix(n, n, lambda i, j: ph(Q[min(i, j), max(i, j)], f"Q{min(i, j)}{max(i, j)}"))
    L = Jp * C + C * Jp.T + Qp
    eqs = [L[i, j] for i in range(n) for j in range(i, n)]
    unknowns = sorted({c for c in C}, key=str)
    sol = sp.linsolve(eqs, unknowns)
    if not sol or sol == sp.EmptySet:
        raise SdederiveError(f"the Lyapunov equation of the {sde.optimizer} SDE has no solution (unstable fixed point?)")
    (vals,) = list(sol)
    vals = [v.xreplace(back) for v in vals]
    if any(v.free_symbols & set(unknowns) for v in vals):
        raise SdederiveError(f"the Lyapunov equation of the {sde.optimizer} SDE has no unique solution "
                             "(a direction without restoring drift)")
    def neat(e):  # full simplify only where it is affordable (Lion's linearization is large)
        e = sp.cancel(sp.together(e))
        return sp.factor(sp.simplify(e)) if sp.count_ops(e) < 150 else sp.factor(e)

    Cs = C.xreplace(dict(zip(unknowns, vals))).applyfunc(neat)
    var = Cs[0, 0]
    exact = all(sp.diff(d, v, 2) == 0 for d in drift for v in svars) and all(
        not any(e.has(v) for v in svars) for e in D)
    return Stationary(sde, var, neat(h * var / 2), Cs,
                      {str(k): v for k, v in fp.items() if k != x}, J, exact)

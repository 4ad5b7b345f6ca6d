r"""States that store the previous step's gradient (Adan's `g_{k-1}`): the lagged noise draw.

A state updated as `gp' = phi(g)` (a polynomial in the current gradient `g` only) holds
`phi(g_{k-1})` at step `k`.  It jumps O(1) every step, so it is no slow variable; where it enters
the other updates only affinely, the fast-state elimination of `engine` removes it exactly.
Where it enters nonlinearly (Adan's `n' = beta3 n + (1-beta3)(g + beta2 (g - gp))**2`) it is
modelled here instead.

**The model.**  At step `k`, `gp = phi(grad(x_{k-1}) + s z')` with `z'` the previous draw, an
independent copy of the current `z` (`s` the noise scale).  The increments
$F_k = \Delta_k(z_k, z_{k-1})$ of the slow states then form a *1-dependent* sequence
(`F_k` and `F_{k+1}` share `z_k`), and the SDE matching the chain over many steps has

$$
b = \lim\frac{\mathbb E_{z,z'}[F]}{\tau},\qquad
D D^\top = \lim\frac{1}{\tau}\Big(\operatorname{Cov}[F_k]
  + \operatorname{Cov}[F_k, F_{k+1}] + \operatorname{Cov}[F_{k+1}, F_k]\Big)
$$

(the long-run covariance: `Cov(sum_k F_k)/K`).  With $A(z) = \mathbb E_{z'}[F(z, z')]$ (the
current draw fixed) and $B(z) = \mathbb E_{z''}[F(z'', z)]$ (the draw fixed in the lag slot),
$\operatorname{Cov}[F_k, F_{k+1}] = \operatorname{Cov}_z[A(z), B(z)]$: only one-noise
expectations are needed.  For Adan's gradient-difference EMA the telescoping noise
`(1-beta2)(z_k - z_{k-1})` has single-step variance `2 (1-beta2)**2 s**2` and long-run variance 0.

**What is neglected, and checked.**  `grad(x_{k-1}) = grad(x_k) - H dx_{k-1}`, and the slow states
at step `k` carry the previous draw through their last increment.  Both are first-order Taylor
terms in the previous increment; `check_orders` refuses where they would enter the drift at
order `tau` or the covariance at its leading order.  Where the long-run covariance cancels at the
order of the single-step one (all noise telescoping), the diffusion would come from exactly these
neglected terms: refused as well.
"""

from __future__ import annotations

import sympy as sp

from sdederive.derivation.expectation import expand_eta, is_zero, leading_order
from sdederive.errors import ExpectationError, RegimeMismatchError, SdederiveError
from sdederive.symbols import sym

__all__ = ["Z_PREV", "find_lagged", "LagModel"]

_g, _z, _eta, _grad = sym("g"), sym("z"), sym("eta"), sym("grad")
_NONSMOOTH = (sp.sign, sp.Abs, sp.Heaviside, sp.Max, sp.Min, sp.Piecewise)
#: the previous step's standardized noise draw (an independent copy of z)
Z_PREV = sym("z_prev", real=True)


def find_lagged(opt) -> list:
    """`[(state_decl, phi)]` for the states `gp' = phi(g)` that enter another update non-affinely
    (nonlinearly, or multiplied by the current gradient): these need the lagged-noise model.
    States entering only affinely are left to the fast-state elimination (exact there)."""
    upd = dict(opt.update)
    out = []
    for s in opt.states:
        e = upd[s.name]
        if e.has(s.symbol) or not e.has(_g) or (e.free_symbols & {d.symbol for d in opt.states}) or e.has(sym("x")):
            continue
        users = [(n, ex) for n, ex in opt.update if n != s.name and ex.has(s.symbol)]
        if not any(not is_zero(sp.diff(ex, s.symbol, 2)) or not is_zero(sp.diff(ex, s.symbol, _g)) for _, ex in users):
            continue
        if not e.is_polynomial(_g):
            raise ExpectationError(
                f"state {s.name} of {opt.name!r} stores a function of the previous step's gradient ({s.name}' = {e}) "
                "that is not a polynomial in g; the lagged-noise model needs a polynomial (e.g. g or g**2)"
            )
        out.append((s, e))
    return out


def _z_order(expansion: dict, var) -> sp.Rational | None:
    """Lowest power of eta whose coefficient depends on `var`."""
    ps = [p for p, c in expansion.items() if c.has(var)]
    return min(ps) if ps else None


class LagModel:
    """The lagged-noise expectations and the long-run covariance for one derivation.

    `moment(n)` is the noise model's `E[z**n]` (the lagged draw has the law of the current one).
    """

    def __init__(self, lagged: list, moment, opt_name: str, update=()) -> None:
        self.lagged, self.moment, self.opt_name, self.update = lagged, moment, opt_name, tuple(update)
        self.names = [d.name for d, _ in lagged]

    # -- substitution --------------------------------------------------------------------------
    def substitutions(self, gsub: sp.Expr) -> dict:
        """`{gp: phi(grad + s*z_prev)}`: the stored previous gradient in terms of the previous draw
        (`grad(x_{k-1})` replaced by `grad(x_k)`, see `check_orders`)."""
        gprev = gsub.xreplace({_z: Z_PREV})
        return {d.symbol: phi.xreplace({_g: gprev}) for d, phi in self.lagged}

    def refuse_nonsmooth(self, atoms, show) -> None:
        """A non-smooth function of the current and the previous draw together has no closed form."""
        for a in atoms:
            if a.a.has(Z_PREV) or a.b.has(Z_PREV):
                lag_syms = [d.symbol for d, _ in self.lagged]
                node = next((n for _, e in self.update for n in sp.preorder_traversal(e)
                             if isinstance(n, _NONSMOOTH) and n.has(_g) and n.has(*lag_syms)), None)
                what = f"{node} (in the noise: {show(a.expr)})" if node is not None else show(a.expr)
                raise ExpectationError(
                    f"{self.opt_name!r}: the previous step's gradient ({', '.join(self.names)}) enters the non-smooth "
                    f"function {what} together with the current one; its expectation over the two noise "
                    "draws has no closed form here (in every regime: the previous draw is O(1) and independent). "
                    "Rewrite the update so that the previous gradient enters smoothly."
                )

    # -- expectations --------------------------------------------------------------------------
    def e_prev(self, poly: sp.Expr) -> sp.Expr:
        """`E_{z_prev}[poly]` for a polynomial in `z_prev` (other symbols are coefficients)."""
        if not poly.has(Z_PREV):
            return poly
        out = []
        for term in sp.Add.make_args(sp.expand(poly)):
            c, dep = term.as_independent(Z_PREV, as_Add=False)
            if dep == 1:
                out.append(term)
                continue
            base, p = dep.as_base_exp()
            if base != Z_PREV or not (p.is_Integer and p > 0):
                raise ExpectationError(
                    f"{self.opt_name!r}: the previous step's gradient ({', '.join(self.names)}) enters {term} through "
                    "a non-polynomial function whose argument is random at order one; its expectation over the "
                    "previous noise draw has no closed form here"
                )
            out.append(c * self.moment(int(p)))
        return sp.Add(*out)

    def mean_prev(self, expansion: dict) -> dict:
        """`{p: E_{z_prev}[c]}` of an eta-expansion, zeros dropped."""
        out = {p: self.e_prev(c) for p, c in expansion.items()}
        return {p: c for p, c in out.items() if not is_zero(c)}

    def lag_slot(self, mean_current: dict) -> dict:
        """`B(z)`: an expansion already averaged over the current draw, with `z_prev` renamed `z`."""
        return {p: c.xreplace({Z_PREV: _z}) for p, c in mean_current.items()}

    # -- the neglected terms -------------------------------------------------------------------
    def check_orders(self, raw: dict, subs: dict, states: list, syms: dict, exp_: dict, q) -> None:
        """Refuse where the terms the model neglects reach the drift (order `tau = eta**q`).

        `raw`: the increments with `gp` still a symbol.  For each state `s`:
        (i) the change of the gradient between steps, `(d Delta_s / d gp) * phi'(g) * H dx`, is of order
        `ord(d Delta_s/d gp) + ord(Delta_x)`;
        (ii) the previous draw carried by the states at step `k`, `E[(d Delta_s/d y) * Delta_y(z_prev)]`,
        has a mean only through the `z_prev`-dependent part of `d Delta_s/d y`: order
        `ord_zprev(d Delta_s/d y) + ord(Delta_y)` (`y = x` through `grad`).
        Each expansion is taken only to the order that could trigger a refusal.
        """
        dx = min(exp_["x"]) if exp_.get("x") else None
        for s in states:
            e = raw[s]
            for d, _ in self.lagged:
                de = sp.diff(e, d.symbol)
                if dx is None or is_zero(de):
                    continue
                lo = _lowest(de.xreplace(subs), q - dx)
                if lo is not None:
                    self._refuse(s, f"the change of the gradient between two steps (d{s}/d{d.name} = O(eta**{lo}), "
                                    f"dx = O(eta**{dx}))")
            es = e.xreplace(subs)
            for y in states:
                ysym = _grad if y == "x" else syms[y]
                if not exp_.get(y):
                    continue
                upto = q - min(exp_[y])
                if upto < 0:
                    continue
                dy = sp.diff(es, ysym)
                if not dy.has(Z_PREV):
                    continue
                lo = _z_order(expand_eta(dy, upto) if dy.has(_eta) else {sp.S.Zero: dy}, Z_PREV)
                if lo is not None and lo <= upto:
                    self._refuse(s, f"the previous draw carried by {y} (its increment is O(eta**{min(exp_[y])}))")

    def _refuse(self, s: str, what: str) -> None:
        raise RegimeMismatchError(
            f"{self.opt_name!r}: the previous step's gradient ({', '.join(self.names)}) is modelled as an independent "
            f"draw at the current point, but {what} enters the drift of {s} at leading order in this regime; the "
            "lagged-noise model does not hold. Try a regime in which the states move less per step."
        )

    def refuse_cancelled(self) -> None:
        raise SdederiveError(
            f"{self.opt_name!r}: the long-run covariance of the increments cancels at the order of their single-step "
            f"covariance (the noise entering through the previous gradient {', '.join(self.names)} telescopes in every "
            "state); the diffusion would come from the terms the lagged-noise model neglects. Not derived."
        )


def _lowest(e: sp.Expr, upto):
    """Lowest power of eta of `e` if it is `<= upto`, else None."""
    if upto < 0:
        return None
    lo = leading_order(e, upto)
    return lo if lo is not None and lo <= upto else None

r"""Assumptions on the objective and the gradient noise, as objects the rate engine cites.

An `Assumptions` set names its constants (sympy symbols) and lists the inequalities it
licenses; `sdederive.analysis.rates` uses exactly these, and records each use, so a derived bound
reads as a proof.  Per-coordinate quantities carry the index `i` (`L[i]`, `sigma[i]`) and sums
over coordinates are written with the norms below.

Inequalities (`f^*` the minimum, `x^*` a minimizer, `d` the dimension):

* smoothness, scalar `L`: $\partial_{ii} f \le L$, $|\nabla f|^2 \le 2L(f-f^*)$;
* anisotropic smoothness `L_i` ($-\operatorname{diag}L \preceq \nabla^2 f \preceq \operatorname{diag}L$):
  $\partial_{ii} f \le L_i$, $\operatorname{tr}(\nabla^2 f\,\Sigma) \le \sum_i L_i\Sigma_{ii}$,
  $\sum_i (\partial_i f)^2/L_i \le 2(f-f^*)$; norms $\|L\|_1=\sum_i L_i \le d\|L\|_\infty$;
* $\mu$-PL: $|\nabla f|^2 \ge 2\mu(f-f^*)$ (implied by $\mu$-strong convexity);
* convexity: $\langle\nabla f(x), x-x^*\rangle \ge f(x)-f^*$; with iterates in a box,
  $\|x-x^*\|_\infty \le D_\infty$, $\|x_0-x^*\|_2 = D_2$;
* noise per coordinate: $\operatorname{Var} g_i \le \sigma_i^2/B$ (`B = 1` when `sigma`
  is already at the batch size used), $\sigma_i \le \sigma_{max} = \|\sigma\|_\infty$,
  $\sum_i\sigma_i = \|\sigma\|_1 \le \sqrt d\|\sigma\|_2$;
* Student-t noise with `nu` degrees of freedom: `sigma` is the scale; the variance is finite
  only for $\nu > 2$.
* `small_snr`: the signal-to-noise ratio $|\partial_i f|/\sigma_i$ is small, so a drift that is
  a smooth nonlinear function of it (SignSGD's `erf`) may be replaced by its linearization.
  This is an *approximation* (Compagnoni et al.'s phase 3), and bounds using it say so.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from sdederive.errors import SdederiveError

__all__ = ["Assumptions", "Smooth", "Anisotropic", "idx"]

#: the coordinate index of per-coordinate quantities
idx = sp.Symbol("i", integer=True, positive=True)
_d = sp.Symbol("d", integer=True, positive=True)


def _name(value, what: str) -> str:
    if not isinstance(value, str) or not value.isidentifier():
        raise SdederiveError(f"{what}={value!r} is not a valid symbol name; allowed: an identifier such as 'L'")
    return value


@dataclass(frozen=True)
class Assumptions:
    """A set of assumptions (see the module docstring).

    `smoothness`: `None`, `"scalar"` or `"anisotropic"`; `pl`: mu-PL (or strong
    convexity); `convex`; `B`: name of the batch size (noise `sigma_i/sqrt(B)`) or `None`
    (`sigma` already at the batch size used); `small_snr`: allow linearizing a drift in the
    signal-to-noise ratio (an approximation); `nu`: Student-t degrees of freedom (`None` for
    finite-variance noise).
    """

    smoothness: str | None = "scalar"
    L: str = "L"
    sigma: str = "sigma"
    mu: str = "mu"
    pl: bool = False
    convex: bool = False
    B: str | None = None
    small_snr: bool = True
    nu: float | None = None

    def __post_init__(self) -> None:
        if self.smoothness not in (None, "scalar", "anisotropic"):
            raise SdederiveError(f"smoothness={self.smoothness!r}; allowed: None, 'scalar', 'anisotropic'")
        for what in ("L", "sigma", "mu"):
            _name(getattr(self, what), what)
        if self.B is not None:
            _name(self.B, "B")
        if self.nu is not None and not (float(self.nu) > 0):
            raise SdederiveError(f"nu={self.nu!r}; allowed: Student-t degrees of freedom nu > 0")

    # -- symbols -------------------------------------------------------------------------------
    @property
    def anisotropic(self) -> bool:
        return self.smoothness == "anisotropic"

    def L_i(self) -> sp.Expr:
        """Smoothness constant of coordinate `i` (`L` itself when scalar)."""
        return sp.IndexedBase(self.L, positive=True)[idx] if self.anisotropic else self.L_sym

    @property
    def L_sym(self) -> sp.Symbol:
        return sp.Symbol(self.L, positive=True)

    def sigma_i(self) -> sp.Expr:
        return sp.IndexedBase(self.sigma, positive=True)[idx]

    @property
    def mu_sym(self) -> sp.Symbol:
        return sp.Symbol(self.mu, positive=True)

    @property
    def B_sym(self) -> sp.Expr:
        return sp.Symbol(self.B, positive=True) if self.B else sp.S.One

    @property
    def d(self) -> sp.Symbol:
        return _d

    def norm(self, of: str, p: str) -> sp.Symbol:
        """`norm("L", "1")` -> the symbol `||L||_1` (printed `L_1`); `p` in 1, 2, inf."""
        base = {"L": self.L, "sigma": self.sigma}[of]
        return sp.Symbol(f"{base}_{p}", positive=True)

    def total(self, of: str) -> sp.Expr:
        """`sum_i L_i` (= `||L||_1`) or `d*L` for scalar smoothness."""
        return self.norm("L", "1") if (of == "L" and self.anisotropic) else _d * self.L_sym

    @property
    def sigma_max(self) -> sp.Symbol:
        return sp.Symbol(f"{self.sigma}_max", positive=True)

    def describe(self) -> list[str]:
        """The assumptions in words (what a paper would list)."""
        out = []
        if self.smoothness == "scalar":
            out.append(f"f is {self.L}-smooth: d_ii f <= {self.L}, |grad f|^2 <= 2*{self.L}*(f - f*)")
        elif self.anisotropic:
            out.append(f"anisotropic smoothness: -diag({self.L}) <= Hess f <= diag({self.L}); "
                       f"||{self.L}||_1 = sum_i {self.L}_i")
        if self.pl:
            out.append(f"{self.mu}-PL: |grad f|^2 >= 2*{self.mu}*(f - f*)")
        if self.convex:
            out.append("f convex: <grad f(x), x - x*> >= f(x) - f*")
        b = f"/{self.B}" if self.B else ""
        out.append(f"noise per coordinate: Var(g_i) <= {self.sigma}_i^2{b}" if self.nu is None else
                   f"Student-t noise (nu = {self.nu}) with scale {self.sigma}_i{'/sqrt(' + self.B + ')' if self.B else ''}")
        if self.small_snr:
            out.append("small signal-to-noise ratio |d_i f|/sigma_i: nonlinear drifts linearized (approximation)")
        return out


def Smooth(L: str = "L", sigma: str = "sigma", mu: str = "mu", pl: bool = False, convex: bool = False,
           B: str | None = None, small_snr: bool = True, nu: float | None = None) -> Assumptions:
    """Scalar `L`-smoothness (with optional mu-PL, convexity, batch size)."""
    return Assumptions("scalar", L, sigma, mu, pl, convex, B, small_snr, nu)


def Anisotropic(L: str = "L", sigma: str = "sigma", mu: str = "mu", pl: bool = False, convex: bool = False,
                B: str | None = None, small_snr: bool = True, nu: float | None = None) -> Assumptions:
    """Anisotropic smoothness `L_i` and per-coordinate noise `sigma_i` (Liu, Pan & Zhang)."""
    return Assumptions("anisotropic", L, sigma, mu, pl, convex, B, small_snr, nu)

r"""Per-coordinate clipping `clip(y, -c, c)` of a noisy argument: closed-form moments.

An update written with `Min(Max(y, -c), c)` (or `Max(Min(y, c), -c)`, as
`sdederive.spec.transforms.clip` writes it) is rewritten before the expectation engine sees it:

* if the noise of `y` does not vanish as `eta -> 0` it becomes `c*Clip(y/c)`, an atom with
  the closed-form rule below (truncated moments of the noise);
* otherwise (`y` deterministic at leading order, e.g. clipping an EMA) it becomes
  `(|y + c| - |y - c|)/2`, whose `sign` atoms tend to their deterministic limits.

For `Clip(y) = max(-1, min(1, y))` and `y = a + b z` (`b != 0`), with `B = |b|`,
`lo = (-1 - a)/B` and `hi = (1 - a)/B`,

$$
\mathbb E[z^n \operatorname{Clip}(a + bz)^p] = \operatorname{sign}(b)^n\Big(
(-1)^p L_n(lo) + \sum_{j=0}^{p}\binom pj a^{p-j}B^j\big(G_{n+j}(hi) - G_{n+j}(lo)\big) + M_n(hi)\Big)
$$

with $G_m(h) = \int_0^h z^m f(z)\,dz$, $A_m = \mathbb E|z|^m$,
$M_n(h) = A_n/2 - G_n(h)$ (upper tail) and $L_n(h) = (-1)^n A_n/2 + G_n(h)$ (lower tail).
Gaussian: $G_0 = \operatorname{erf}(h/\sqrt2)/2$, $G_1 = (1 - e^{-h^2/2})/\sqrt{2\pi}$,
$G_m = -h^{m-1}\varphi(h) + (m-1)G_{m-2}$.  Student-t (`nu` degrees of freedom):
$G_m(h) = C_\nu\,\frac{h^{m+1}}{m+1}\,{}_2F_1(\tfrac{\nu+1}2, \tfrac{m+1}2; \tfrac{m+3}2; -\tfrac{h^2}\nu)$,
$C_\nu = \Gamma(\frac{\nu+1}2)/(\sqrt{\pi\nu}\,\Gamma(\frac\nu2))$, valid for every real `h`
and every `nu > 0`; the tails need $A_n$, finite for `n < nu` (`n = 0` always: the
clipped moments themselves exist for every `nu`).
"""

from __future__ import annotations

import sympy as sp
from mpmath.libmp.libmpf import prec_to_dps

from sdederive.errors import ExpectationError
from sdederive.symbols import sym

__all__ = ["Clip", "ClipMoment", "rewrite_clip", "clip_moment", "expand_clip_moments"]

_z = sym("z")


class Clip(sp.Function):
    """`Clip(y) = max(-1, min(1, y))` (unit clipping; `clip(y, -c, c) = c*Clip(y/c)`)."""

    nargs = 1

    @classmethod
    def eval(cls, y):
        if y.is_number and y.is_real:
            return sp.Max(-1, sp.Min(1, y))
        return None

    def fdiff(self, argindex=1):
        y = self.args[0]
        return sp.Heaviside(1 - y**2)

    def _eval_is_real(self):
        return self.args[0].is_real

    def _eval_rewrite_as_Min(self, y, **kwargs):
        return sp.Min(sp.Max(y, -1), 1)

    def _numpycode(self, printer):
        return f"{printer._module_format('numpy.clip')}({printer._print(self.args[0])}, -1, 1)"


def _clip_parts(e: sp.Expr):
    """`(y, c)` if `e` is `Min(Max(y, -c), c)` or `Max(Min(y, c), -c)` with `c > 0`, else `None`."""
    if not isinstance(e, (sp.Min, sp.Max)) or len(e.args) != 2:
        return None
    inner_t = sp.Max if isinstance(e, sp.Min) else sp.Min
    for c, other in (e.args, e.args[::-1]):
        if not isinstance(other, inner_t) or len(other.args) != 2:
            continue
        cpos = c if isinstance(e, sp.Min) else -c
        if not cpos.is_positive:
            continue
        for lim, y in (other.args, other.args[::-1]):
            if sp.expand(lim + c) == 0:
                return y, cpos
    return None


def rewrite_clip(expr: sp.Expr) -> sp.Expr:
    """Rewrite the clippings of noise-dependent arguments in `expr` (see the module docstring)."""
    from sdederive.derivation.expectation import leading_order

    def is_clip(e):
        return e.has(_z) and _clip_parts(e) is not None

    def rewrite(e):
        y, c = _clip_parts(e)
        inner = [n for n in sp.preorder_traversal(y)
                 if isinstance(n, (sp.sign, sp.Abs, sp.Heaviside, sp.Max, sp.Min, Clip)) and n.has(_z)]
        if inner:
            raise ExpectationError(
                f"cannot take the expectation of clip({y}, -{c}, {c}): its argument contains {inner[0]}, itself a "
                "non-smooth function of the noise z (g = grad + sigma*z); the clipped moments need an argument "
                "a + b*z affine in z. Clip the gradient before the non-smooth step, or rewrite the update."
            )
        lo = leading_order(sp.diff(y, _z))
        if lo is not None and lo <= 0:
            return c * Clip(y / c)
        return (sp.Abs(y + c) - sp.Abs(y - c)) / 2

    out = expr.replace(is_clip, rewrite)
    for n in sp.preorder_traversal(out):
        if isinstance(n, (sp.sign, sp.Abs, sp.Heaviside, sp.Max, sp.Min)) and n.has(Clip) and n.has(_z):
            raise ExpectationError(
                f"cannot take the expectation of {n}: a non-smooth function of the clipped noise "
                f"{next(iter(n.atoms(Clip)))} (g = grad + sigma*z) has no closed form here; rewrite the update "
                "(e.g. sign(clip(g, -c, c)) = sign(g))."
            )
    return out


def _family(noise) -> tuple[int, sp.Expr]:
    if noise.name == "gaussian":
        return 0, sp.S.Zero
    if noise.name == "student-t":
        return 1, noise.nu_expr
    raise ExpectationError(f"no clipped moments for the noise model {noise.name!r}; allowed: gaussian, student-t")


def _abs_moment(fam: int, nu: sp.Expr, m: int) -> sp.Expr:
    """`E|z|**m` (`fam` 0: Gaussian, 1: Student-t with `nu` degrees of freedom)."""
    if m == 0:
        return sp.S.One
    if fam == 0:
        return 2 ** sp.Rational(m, 2) * sp.gamma(sp.Rational(m + 1, 2)) / sp.sqrt(sp.pi)
    if nu.is_Number and not nu > m:
        raise ExpectationError(
            f"E[|z|**{m}] is infinite for Student-t noise with nu={float(nu):g} (it needs nu > {m}): the clipped "
            f"update's moment E[z**{m} * clip(.)] has no finite value; plain moments of clip(g) exist for every nu"
        )
    return nu ** sp.Rational(m, 2) * sp.gamma(sp.Rational(m + 1, 2)) * sp.gamma((nu - m) / 2) / (
        sp.sqrt(sp.pi) * sp.gamma(nu / 2))


def _partial(fam: int, nu: sp.Expr, m: int, h: sp.Expr, memo: dict) -> sp.Expr:
    """`G_m(h) = int_0^h z**m f(z) dz` of the noise density `f`."""
    key = (m, h)
    if key in memo:
        return memo[key]
    if fam == 0:
        phi = sp.exp(-(h**2) / 2) / sp.sqrt(2 * sp.pi)
        if m == 0:
            val = sp.erf(h / sp.sqrt(2)) / 2
        elif m == 1:
            val = 1 / sp.sqrt(2 * sp.pi) - phi
        else:
            val = -(h ** (m - 1)) * phi + (m - 1) * _partial(fam, nu, m - 2, h, memo)
    else:
        cn = sp.gamma((nu + 1) / 2) / (sp.sqrt(sp.pi * nu) * sp.gamma(nu / 2))
        val = cn * h ** (m + 1) / (m + 1) * sp.hyper([(nu + 1) / 2, sp.Rational(m + 1, 2)],
                                                      [sp.Rational(m + 3, 2)], -(h**2) / nu)
    memo[key] = val
    return val


def _moment(fam: int, nu: sp.Expr, n: int, a: sp.Expr, b: sp.Expr, p: int) -> sp.Expr:
    if b == 0:
        raise ExpectationError(f"Clip({a}) has no noise; it should have been expanded, not treated as an atom")
    B = sp.Abs(b)
    lo, hi = sp.cancel((-1 - a) / B), sp.cancel((1 - a) / B)
    memo: dict = {}
    tails = ((-1) ** (p + n) + 1) * _abs_moment(fam, nu, n) / 2  # raises where E|z|**n is infinite
    val = tails + (-1) ** p * _partial(fam, nu, n, lo, memo) - _partial(fam, nu, n, hi, memo)
    for j in range(p + 1):
        val += sp.binomial(p, j) * a ** (p - j) * B**j * (_partial(fam, nu, n + j, hi, memo)
                                                         - _partial(fam, nu, n + j, lo, memo))
    return sp.sign(b) ** n * val


def clip_moment(noise, n: int, a: sp.Expr, b: sp.Expr, p: int) -> sp.Expr:
    """`E[z**n * Clip(a + b*z)**p]` in closed form under `noise` (Gaussian or Student-t)."""
    fam, nu = _family(noise)
    return _moment(fam, nu, n, a, b, p)


class ClipMoment(sp.Function):
    """`E[z**n * Clip(a + b*z)**p]` held unevaluated while the engine simplifies the SDE.

    Arguments `(family, n, p, a, b, nu)`: `family` 0 (Gaussian) or 1 (Student-t, `nu`
    degrees of freedom; 0 for Gaussian).  The closed form (`clip_moment`) is substituted when
    the derivation is done (`expand_clip_moments`); numeric evaluation and derivatives go
    through it.  Keeping it opaque keeps the simplification of drift and diffusion fast.
    """

    nargs = 6

    def closed(self) -> sp.Expr:
        fam, n, p, a, b, nu = self.args
        return _moment(int(fam), nu, int(n), a, b, int(p))

    def _eval_is_real(self):
        return True

    def _eval_evalf(self, prec):
        return self.closed().evalf(prec_to_dps(prec))

    def fdiff(self, argindex=1):
        if argindex not in (4, 5):
            raise sp.ArgumentIndexError(self, argindex)
        d = sp.Dummy("d")
        args = list(self.args)
        args[argindex - 1] = d
        return sp.diff(ClipMoment(*args).closed(), d).subs(d, self.args[argindex - 1])


def _clip_rule(noise, n: int, a: sp.Expr, b: sp.Expr, p: int) -> sp.Expr:
    """The registered rule: opaque `ClipMoment` when `a, b` do not depend on `eta` (the
    engine does not expand it), else the closed form (expanded in `eta` by the engine)."""
    fam, nu = _family(noise)
    if a.has(sym("eta")) or b.has(sym("eta")):
        return _moment(fam, nu, n, a, b, p)
    _abs_moment(fam, nu, n)  # refuse now where E|z|**n is infinite
    return ClipMoment(fam, n, p, a, b, nu)


def expand_clip_moments(e):
    """Replace every `ClipMoment` in `e` (an expression or Matrix) by its closed form."""
    if not e.has(ClipMoment):
        return e
    return e.replace(lambda n: isinstance(n, ClipMoment), lambda n: n.closed())


def _register() -> None:
    from sdederive.derivation.expectation import register_expectation

    register_expectation(Clip, _clip_rule)


_register()

r"""The SDE of a vector optimizer, $dX = b(X)\,dt + D(X)\,dW$ in d dimensions, as sympy matrix expressions.

Symbols of the results (`d` the symbolic dimension):

=================  ==========  ====================================================================
name               shape       meaning
=================  ==========  ====================================================================
`x`              `(d, 1)`  the parameter vector
`grad`           `(d, 1)`  the true gradient $\nabla f(x)$ (printed `grad f`)
`H`              `(d, d)`  the Hessian $\nabla^2 f(x)$ (symmetric)
`Sigma`          `(d, d)`  the full gradient-noise covariance (symmetric PSD): `g = grad + Sigma^(1/2) z`
`I`              `(d, d)`  the identity
`m`, `v`, ...    `(d, 1)`  auxiliary vector states (`state_vector`); `ones` the vector of ones
`E[...]`         varies      a named expectation atom over `g ~ N(grad, Sigma)` (`ExpectationAtom`);
                               `E_t(nu)[...]` over the multivariate Student-t `g ~ t_nu(grad, Sigma)`
`nu`             scalar      the degrees of freedom of multivariate Student-t noise (when symbolic)
=================  ==========  ====================================================================

`Sigma**(1/2)` (and the square root of a covariance) is the symmetric PSD square root.  JSON (see
`docs/vector.md`) stores every matrix expression as text in this grammar plus `transpose(.)`, and the
atoms by name with their integrand; it is parsed back by `sdederive._safe_expr`, never evaluated.
"""

from __future__ import annotations

import functools
import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import sympy as sp
from sympy.core.symbol import Str
from sympy.matrices.expressions.diagonal import DiagMatrix, DiagonalOf
from sympy.printing.latex import LatexPrinter
from sympy.printing.str import StrPrinter

from sdederive._safe_expr import IDENTIFIER, SDE_FUNCTIONS, parse_expr
from sdederive.errors import ExpectationError, SdederiveError
from sdederive.spec.vector import dim
from sdederive.symbols import KNOWN, sym

__all__ = ["VectorSDE", "ExpectationAtom", "law_text", "SignMean", "SignSecond", "sign_mean", "sign_second_moment",
           "isotropic_unit_mean", "isotropic_unit_second", "isotropic_radial", "square_norm_moment",
           "SymmetricMatrixSymbol", "VNorm", "VDot", "evaluate", "evaluate_atom", "infinite_variance",
           "GRAD", "HESS", "SIGMA", "XVEC", "IDENT", "NORM_G", "ONES", "state_vector"]


class SymmetricMatrixSymbol(sp.MatrixSymbol):
    """A matrix symbol with `A^T = A` (the Hessian, the noise covariance)."""

    def _eval_transpose(self):
        return self


GRAD = sp.MatrixSymbol("grad", dim, 1)
XVEC = sp.MatrixSymbol("x", dim, 1)
HESS = SymmetricMatrixSymbol("H", dim, dim)
SIGMA = SymmetricMatrixSymbol("Sigma", dim, dim)
IDENT = sp.Identity(dim)
#: the gradient of tr Sigma(x) for a state-dependent minibatch covariance (`Sigma="x"`): E[(grad xi) xi] = grad tr
#: Sigma(x)/2 when xi is a gradient field (the minibatch noise grad f_gamma - grad f)
GRAD_TRSIGMA = sp.MatrixSymbol("grad_trSigma", dim, 1)
#: the vector of ones (a coordinate-wise constant: `eps` in `sqrt(v) + eps`)
ONES = sp.OneMatrix(dim, 1)


def state_vector(name: str) -> sp.MatrixSymbol:
    """The `(d, 1)` symbol of an auxiliary vector state (`m`, `v`) in the results."""
    return sp.MatrixSymbol(name, dim, 1)

#: the placeholder for ``|g|`` inside an atom's integrand
NORM_G = sp.Symbol("norm_g", positive=True)
_G_DISPLAY = sp.Symbol("g")
_GGT_DISPLAY = sp.Symbol("g g^T")
_GSQ_DISPLAY = sp.Symbol("g o g")
_GGSQ_DISPLAY = sp.Symbol("g (g o g)^T")
_GSQGSQ_DISPLAY = sp.Symbol("(g o g)(g o g)^T")
_NORM_DISPLAY = sp.Symbol("|g|", positive=True)

#: the tensors `T(g)` of the atoms `E[r(|g|) T(g)]`, with their shapes; `o` the coordinate-wise product (the
#: `gsq` tensors come from a coordinate-wise square of a clipped or normalised gradient in an EMA state)
_TENSORS = {"g": "(d, 1): E[r(|g|) g]", "ggT": "(d, d): E[r(|g|) g g^T]", "1": "(1, 1): E[r(|g|)]",
            "gsq": "(d, 1): E[r(|g|) g o g]", "g_gsqT": "(d, d): E[r(|g|) g (g o g)^T]",
            "gsq_gsqT": "(d, d): E[r(|g|) (g o g)(g o g)^T]"}
_T_DISPLAY = {"g": _G_DISPLAY, "ggT": _GGT_DISPLAY, "1": sp.S.One, "gsq": _GSQ_DISPLAY, "g_gsqT": _GGSQ_DISPLAY,
              "gsq_gsqT": _GSQGSQ_DISPLAY}


class VNorm(sp.Function):
    """`norm(v)`: the Euclidean norm of a deterministic vector expression (`norm(x)`)."""

    nargs = 1
    is_nonnegative = True


class VDot(sp.Function):
    """`dot(a, b)`: the inner product of two deterministic vector expressions (a real scalar, so it commutes with
    the matrices it multiplies: `dot(x, x)*g`)."""

    nargs = 2
    is_real = True


class ExpectationAtom(sp.MatrixExpr):
    r"""A named expectation without a closed form: $\mathbb E[r(|g|)\,T(g)]$ for `g ~ N(grad, Sigma)`,
    with `T(g)` one of `g` (a vector), `g g^T` (a matrix) or `1` (a scalar, shape `(1, 1)`), or one of the
    coordinate-wise squares `g o g` (a vector), `g (g o g)^T` and `(g o g)(g o g)^T` (matrices), and the
    scalar integrand `r` a sympy expression in `NORM_G` (`|g|`) and hyperparameters.

    `nu` (a number or the symbol `nu`) makes it an expectation over the multivariate Student-t
    `g = grad + Sigma^(1/2) z sqrt(nu/W)`, `W ~ chi2_nu` independent of `z` (`law == "student-t"`); without
    it the law is the Gaussian `N(grad, Sigma)` (`law == "gaussian"`).

    Evaluate it with `evaluate_atom` (Monte Carlo over `g`), or supply a value to `evaluate`.
    """

    def __new__(cls, tensor, integrand: sp.Expr, nu=None):
        tensor = tensor.name if isinstance(tensor, Str) else tensor
        if tensor not in _TENSORS:
            raise SdederiveError(f"expectation atom tensor {tensor!r}; allowed: {sorted(_TENSORS)}")
        law = () if nu is None else (sp.sympify(nu),)
        return sp.Basic.__new__(cls, Str(tensor), sp.sympify(integrand), *law)

    @property
    def tensor(self) -> str:
        return self.args[0].name

    @property
    def nu(self) -> sp.Expr | None:
        """The Student-t degrees of freedom, or `None` for the Gaussian law."""
        return self.args[2] if len(self.args) > 2 else None

    @property
    def law(self) -> str:
        """`"gaussian"` or `"student-t"` (the multivariate t with scale matrix `Sigma`)."""
        return "gaussian" if self.nu is None else "student-t"

    @property
    def free_symbols(self) -> set:
        return (self.integrand.free_symbols - {NORM_G}) | (set() if self.nu is None else self.nu.free_symbols)

    @property
    def integrand(self) -> sp.Expr:
        return self.args[1]

    @property
    def shape(self):
        return {"g": (dim, 1), "ggT": (dim, dim), "1": (sp.S.One, sp.S.One), "gsq": (dim, 1), "g_gsqT": (dim, dim),
                "gsq_gsqT": (dim, dim)}[self.tensor]

    def _eval_transpose(self):
        return self if self.tensor in ("ggT", "1", "gsq_gsqT") else None

    def display(self) -> str:
        """`E[g/|g|]`, `E[g g^T/|g|**2]`, `E[Min(1, c/|g|)]` (Gaussian); `E_t(nu=5)[g/|g|]`, `E_t(nu)[g/|g|]`
        (multivariate Student-t, numeric or symbolic `nu`)."""
        T = _T_DISPLAY[self.tensor]
        return f"{_law_prefix(self.nu)}[{sp.sstr(self.integrand.xreplace({NORM_G: _NORM_DISPLAY}) * T)}]"

    def _sympystr(self, printer) -> str:
        return self.display()

    def _latex(self, printer) -> str:
        names = {_NORM_DISPLAY: r"\|g\|", _G_DISPLAY: "g", _GGT_DISPLAY: r"g g^{\top}", _GSQ_DISPLAY: r"g \odot g",
                 _GGSQ_DISPLAY: r"g (g \odot g)^{\top}", _GSQGSQ_DISPLAY: r"(g \odot g)(g \odot g)^{\top}"}
        T = _T_DISPLAY[self.tensor]
        body = sp.latex(self.integrand.xreplace({NORM_G: _NORM_DISPLAY}) * T, symbol_names=names)
        return rf"{_law_latex(self.nu)}\left[{body}\right]"


#: the power of |g| that bounds each atom's tensor: |g|, |g|**2, |g o g| <= |g|**2, ...
_TENSOR_POWER = {"g": 1, "ggT": 2, "1": 0, "gsq": 2, "g_gsqT": 3, "gsq_gsqT": 4}


@functools.lru_cache(maxsize=256)
def origin_exponent(atom: ExpectationAtom) -> float | None:
    r"""`p` with $|r(|g|)|\,|g|^k \sim |g|^p$ as `|g| -> 0` (`k` the tensor's power: 1 for `g`, 2 for
    `g g^T`, ...), `inf` when the integrand vanishes faster than any power there, `None` if it cannot be told.

    The Gaussian and Student-t laws of `g` have a bounded density, positive at `g = 0` when `Sigma` is
    nonsingular, so in polar coordinates $\mathbb E|g|^p$ is finite near the origin iff $p > -d$: the atom is
    finite iff `p > -d` (`E[g/|g|**3]`, `p = -2`, needs `d >= 3`; `E[g g^T/|g|**6]`, `p = -4`, needs `d >= 5`).
    Deterministic scalars of the integrand (`norm(x)`, hyperparameters) are taken positive.  Computed by
    `sympy.limit` of `log|.|/log|g|` (each `Min`/`Max` first resolved to its winner as `|g| -> 0`), else (and
    for piecewise integrands: `Heaviside`, `Piecewise`, on which `limit` can hang) from the numeric slope at
    `|g| = 1e-4 ... 1e-8` with the other scalars set to 1."""
    t = sp.Dummy("t", positive=True)
    e = atom.integrand * NORM_G ** _TENSOR_POWER[atom.tensor]
    pos = {a: sp.Dummy(positive=True) for a in e.atoms(VNorm, VDot, sp.Trace)}
    e = e.xreplace(pos)
    e = e.xreplace({s: sp.Dummy(s.name, positive=True) for s in e.free_symbols if s != NORM_G})
    e = sp.Abs(e.xreplace({NORM_G: t}))

    smooth = not e.has(sp.Heaviside, sp.Piecewise, sp.floor, sp.ceiling, sp.sign)  # sympy's limit can hang there
    try:
        if not smooth:
            raise ValueError(e)
        p = sp.limit(sp.log(resolve_minmax(e, t, 0)) / sp.log(t), t, 0, "+")
        if p.is_extended_real:
            return float(p)
    except Exception:  # noqa: BLE001 - sympy's limit raises many types on what it cannot do
        pass
    try:  # the numeric slope of log|e| against log|g| near 0, every other scalar 1
        f = sp.lambdify(t, e.xreplace({s: 1 for s in e.free_symbols if s != t}), modules="numpy")
        ts = np.array([1e-4, 1e-6, 1e-8])
        with np.errstate(all="ignore"):
            v = np.abs(np.array([float(f(u)) for u in ts]))
        if np.all(v == 0):
            return math.inf
        if not np.all(np.isfinite(v)) or np.any(v == 0):
            return None
        slopes = np.diff(np.log(v)) / np.diff(np.log(ts))
        if abs(slopes[0] - slopes[1]) < 1e-3 * max(1.0, abs(slopes[1])):
            return float(np.round(slopes[1], 6))
    except Exception:  # noqa: BLE001 - lambdify/evaluation of an arbitrary integrand
        pass
    return None


def resolve_minmax(e: sp.Expr, var: sp.Symbol, point) -> sp.Expr:
    """`e` with each `Min`/`Max` holding `var` replaced by the argument that wins as `var -> point` (`0` from
    above, or `oo`), inner ones first; `ValueError` where sympy cannot compare two arguments there."""
    def pick(m):
        args = list(m.args)
        best = args[0]
        for a in args[1:]:
            lim = sp.limit(a / best, var, point, "+") if point == 0 else sp.limit(a / best, var, point)
            if lim.is_extended_real is not True:
                raise ValueError(m)
            if (isinstance(m, sp.Min) and lim < 1) or (isinstance(m, sp.Max) and lim > 1):
                best = a
        return best

    return e.replace(lambda a: isinstance(a, (sp.Min, sp.Max)) and a.has(var), pick)


def origin_exponents(atoms, what: str) -> dict:
    """`{atom: origin_exponent(atom)}`; an atom whose behaviour at `g = 0` cannot be told is refused."""
    out = {a: origin_exponent(a) for a in atoms}
    for a, p in out.items():
        if p is None:
            raise ExpectationError(
                f"{what}: whether {a.display()} is finite near g = 0 (where the noise density is positive) cannot be "
                "told: sympy found no power law |r(|g|)| ~ |g|**p there; supported: integrands behaving like a power "
                "of |g| at 0 (powers of |g|, Min, Max, smooth functions)")
    return out


def _charged_rank(d: int, Sigma=None, grad=None) -> int | None:
    """The dimension `k` of the law of `g = grad + Sigma^(1/2) z` near `g = 0`: `d`, or `rank(Sigma)` for a
    singular numeric `Sigma`; `None` where no singularity at 0 is charged: `0` is off `grad + range(Sigma)`, or
    `Sigma = 0` (rank 0: `g = grad` is a point, with no density)."""
    if Sigma is None:
        return d
    S = np.asarray(Sigma, dtype=float)
    w, V = np.linalg.eigh((S + S.T) / 2)
    k = int(np.sum(w > 1e-12 * max(1.0, float(np.abs(w).max()))))
    if k == 0:
        return None
    if k < d and grad is not None:
        mu = np.asarray(grad, dtype=float).reshape(-1)
        R = V[:, d - k:]  # range(Sigma): the eigenvectors of the k largest eigenvalues
        if np.linalg.norm(mu - R @ (R.T @ mu)) > 1e-9 * max(1.0, float(np.linalg.norm(mu))):
            return None  # g = grad + Sigma^(1/2) z never comes near 0
    return k


def check_origin(atoms, d: int, what: str, Sigma=None, grad=None) -> None:
    """Refuse atoms that are infinite in dimension `d` (`origin_exponent(atom) <= -d`, a singularity at `g = 0`
    that the noise density charges).  With a singular numeric `Sigma` the law of `g` lives on
    `grad + range(Sigma)`: an atom is then finite where `0` is off that subspace (given `grad`), and otherwise
    needs `p > -rank(Sigma)`.  A zero `Sigma` (rank 0) makes `g = grad` a point: no density charges the origin,
    and nothing is refused (the value at `grad = 0` itself, `0/0` for `g/|g|`, is a non-finite state that the
    simulators report as a divergence, with its path and step)."""
    k = _charged_rank(d, Sigma, grad)
    if k is None:
        return
    for a, p in origin_exponents(atoms, what).items():
        if p > -k:
            continue
        raise ExpectationError(
            f"{what}: {a.display()} is infinite in dimension {k}: its integrand behaves like |g|**{p:g} at g = 0, "
            f"where the noise density is positive, and E|g|**p is finite near 0 only for p > -d; this moment of the "
            f"update (a drift or the covariance of its diffusion) needs d > {-p:g}"
            + ("" if k == d else f" (here the rank of Sigma, {k})") + ". Allowed: updates whose |g|-singularity "
            "is integrable in the problem's dimension (g/|g| for d >= 2 for its covariance)")


def infinite_variance(atoms, d: int, what: str, Sigma=None, grad=None) -> dict:
    """`{atom: p}` for the finite atoms whose Monte Carlo estimate has an infinite variance because of the
    singularity at `g = 0`: the integrand behaves like `|g|**p` there, so its square is integrable only for
    `2 p > -k` (`k = d`, or the rank of a singular `Sigma`: `_charged_rank`).  There the sample mean still
    converges (the strong law of large numbers needs the first moment only), but more slowly than `n**-0.5`,
    and a standard error computed from the samples means nothing."""
    k = _charged_rank(d, Sigma, grad)
    if k is None:
        return {}
    return {a: p for a, p in origin_exponents(atoms, what).items() if -k < p and 2 * p <= -k}


def _law_prefix(nu) -> str:
    """`E` (Gaussian), `E_t(nu=5)` or `E_t(nu)` (multivariate Student-t)."""
    if nu is None:
        return "E"
    return f"E_t({nu})" if isinstance(nu, sp.Symbol) else f"E_t(nu={nu})"


def _law_latex(nu) -> str:
    if nu is None:
        return r"\mathbb{E}"
    return rf"\mathbb{{E}}_{{t_{{{_latex_nu(nu)}}}}}"


def _latex_nu(nu) -> str:
    return sp.latex(nu, symbol_names={sym("nu"): r"\nu"})


def law_text(nu) -> str:
    """`N(grad f, Sigma)` or `t_nu(grad f, Sigma)` (`t_5(grad f, Sigma)`): the law of `g` in words."""
    return "N(grad f, Sigma)" if nu is None else f"t_{nu}(grad f, Sigma)"


class _SignFunction(sp.MatrixExpr):
    """A closed-form moment of `sign(g)` for `g ~ N(grad, Sigma)` (arguments: the mean and the covariance), or
    for the multivariate Student-t `g ~ t_nu(grad, Sigma)` (a third argument `nu`: the location, the scale
    matrix and the degrees of freedom)."""

    def __new__(cls, mean=None, cov=None, nu=None):
        law = () if nu is None else (sp.sympify(nu),)
        return sp.Basic.__new__(cls, GRAD if mean is None else mean, SIGMA if cov is None else cov, *law)

    @property
    def nu(self) -> sp.Expr | None:
        return self.args[2] if len(self.args) > 2 else None

    @property
    def mean(self):
        return self.args[0]

    @property
    def cov(self):
        return self.args[1]


class SignMean(_SignFunction):
    r"""`E[sign(g)] = erf(grad_i / sqrt(2 Sigma_ii))` coordinate-wise (a `(d, 1)` vector); under the multivariate
    Student-t `2 F_nu(grad_i / sqrt(Sigma_ii)) - 1`, `F_nu` the univariate t CDF (the marginal of the
    multivariate t is the univariate t with the same `nu` and scale `sqrt(Sigma_ii)`)."""

    json_name = "sign_mean"

    @property
    def shape(self):
        return (dim, 1)

    def _sympystr(self, printer) -> str:
        if self.nu is not None:
            return f"(2*F_t({self.nu})(grad f/sqrt(diag Sigma)) - 1)"
        return "erf(grad f/sqrt(2 diag Sigma))"

    def _latex(self, printer) -> str:
        if self.nu is not None:
            nu = _latex_nu(self.nu)
            return rf"\left(2 F_{{t_{{{nu}}}}}\left(\frac{{\nabla f}}{{\sqrt{{\operatorname{{diag}}\Sigma}}}}\right) - 1\right)"
        return r"\operatorname{erf}\left(\frac{\nabla f}{\sqrt{2\,\operatorname{diag}\Sigma}}\right)"


class SignSecond(_SignFunction):
    r"""`E[sign(g) sign(g)^T]` (`(d, d)`): 1 on the diagonal, and off it the bivariate normal orthant form
    `4 Phi2(a_i, a_j; r_ij) - 2 Phi(a_i) - 2 Phi(a_j) + 1` with `a = grad/sqrt(diag Sigma)` and the
    correlation `r_ij = Sigma_ij/sqrt(Sigma_ii Sigma_jj)`; at `grad = 0` it is `(2/pi) arcsin(r_ij)`.
    `Phi2` is the bivariate normal CDF, evaluated by Owen's T function (`sign_second_moment`).  Under the
    multivariate Student-t (a third argument `nu`) `Phi` and `Phi2` become the univariate and bivariate t CDFs
    (`sign_second_moment` with `nu`); at `grad = 0` it is the same `(2/pi) arcsin(r_ij)` (sign is scale invariant)."""

    json_name = "sign_second"

    @property
    def shape(self):
        return (dim, dim)

    def _eval_transpose(self):
        return self

    def _sympystr(self, printer) -> str:
        return f"{_law_prefix(self.nu)}[sign(g) sign(g)^T]"

    def _latex(self, printer) -> str:
        return _law_latex(self.nu) + r"\left[\operatorname{sign}(g)\operatorname{sign}(g)^{\top}\right]"


def _bvn_orthant(h: float, k: float, r: float) -> float:
    """`Phi2(h, k; r) = P(X <= h, Y <= k)` for a standard bivariate normal with correlation `r`
    (Owen 1956: `Phi(h)/2 + Phi(k)/2 - T(h, a_h) - T(k, a_k) - beta`)."""
    from scipy.special import ndtr, owens_t

    if r >= 1 - 1e-15:
        return float(ndtr(min(h, k)))
    if r <= -1 + 1e-15:
        return float(max(0.0, ndtr(h) + ndtr(k) - 1))
    if h == 0 and k == 0:
        return 0.25 + float(np.arcsin(r)) / (2 * np.pi)
    s = np.sqrt(1 - r * r)

    def T(a, b):  # T(a, (b - r a)/(a s)) with the limits at a = 0
        if a == 0:
            return 0.25 * np.sign(b)
        return float(owens_t(a, (b - r * a) / (a * s)))

    beta = 0.0 if (h * k > 0 or (h * k == 0 and h + k >= 0)) else 0.5
    return float(0.5 * ndtr(h) + 0.5 * ndtr(k) - T(h, k) - T(k, h) - beta)


def _bvt_orthant(h: float, k: float, r: float, nu: float) -> float:
    """`P(T1 <= h, T2 <= k)` for the standard bivariate Student-t with correlation `r` and `nu` degrees of freedom,
    as the normal variance mixture it is: `T = Z/sqrt(W/nu)`, so the probability is `E_W[Phi2(h u, k u; r)]` with
    `u = sqrt(W/nu)`, `W ~ chi2_nu`; one-dimensional adaptive quadrature over the chi2 quantile `q` in (0, 1)
    (`W = 2 gammaincinv(nu/2, q)`), a bounded smooth integrand (absolute error below 1e-10)."""
    from scipy.integrate import quad
    from scipy.special import gammaincinv

    if h == 0 and k == 0:
        return 0.25 + float(np.arcsin(np.clip(r, -1.0, 1.0))) / (2 * np.pi)

    def f(q: float) -> float:
        u = float(np.sqrt(2 * gammaincinv(nu / 2, q) / nu))
        return _bvn_orthant(h * u, k * u, r)

    val, _ = quad(f, 0.0, 1.0, epsabs=1e-12, epsrel=1e-11, limit=200)
    return float(val)


def sign_second_moment(grad, Sigma, nu: float | None = None) -> np.ndarray:
    """`E[sign(g) sign(g)^T]` for `g ~ N(grad, Sigma)` in closed form (see `SignSecond`); with `nu`, for the
    multivariate Student-t `g = grad + Sigma^(1/2) z sqrt(nu/W)`: the same orthant form with the univariate and
    bivariate t CDFs (`scipy.special.stdtr`, and a quadrature over the chi2 mixing variable)."""
    from scipy.special import ndtr, stdtr

    mu = np.asarray(grad, dtype=float).reshape(-1)
    S = np.asarray(Sigma, dtype=float)
    sd_ = np.sqrt(np.diag(S))
    if np.any(sd_ <= 0):
        raise SdederiveError("E[sign(g) sign(g)^T] needs Sigma_ii > 0 for every coordinate (a noiseless coordinate "
                             f"has a deterministic sign); diag Sigma = {np.diag(S).tolist()}")
    a = mu / sd_
    if nu is not None:
        nu = _check_numeric_nu(nu)
    cdf = ndtr(a) if nu is None else stdtr(nu, a)
    out = np.eye(mu.size)
    for i in range(mu.size):
        for j in range(i + 1, mu.size):
            r = float(np.clip(S[i, j] / (sd_[i] * sd_[j]), -1.0, 1.0))
            p = _bvn_orthant(a[i], a[j], r) if nu is None else _bvt_orthant(a[i], a[j], r, nu)
            out[i, j] = out[j, i] = 4 * p - 2 * cdf[i] - 2 * cdf[j] + 1
    return out


def sign_mean(grad, Sigma, nu: float | None = None) -> np.ndarray:
    """`E[sign(g)] = erf(grad/sqrt(2 diag Sigma))` as a `(d, 1)` array; with `nu` (multivariate Student-t)
    `2 F_nu(grad/sqrt(diag Sigma)) - 1` (`scipy.special.stdtr`)."""
    from scipy.special import erf, stdtr

    mu = np.asarray(grad, dtype=float).reshape(-1)
    if nu is None:
        return erf(mu / np.sqrt(2 * np.diag(np.asarray(Sigma, dtype=float)))).reshape(-1, 1)
    return (2 * stdtr(_check_numeric_nu(nu), mu / np.sqrt(np.diag(np.asarray(Sigma, dtype=float)))) - 1).reshape(-1, 1)


def _check_numeric_nu(nu) -> float:
    try:
        v = float(nu)
    except (TypeError, ValueError):
        raise SdederiveError(f"Student-t degrees of freedom nu={nu!r} is not a number; give a numeric nu > 0 "
                             "(evaluate(..., nu=5.0))") from None
    if not (np.isfinite(v) and v > 0):
        raise SdederiveError(f"Student-t degrees of freedom nu={nu!r}; allowed: a finite nu > 0")
    return v


# -- printing ------------------------------------------------------------------------------------------------
_HUMAN_NAMES = {"grad": "grad f", "grad_trSigma": "grad tr Sigma(x)"}


def _identity_first(args):
    return sorted(args, key=lambda a: 0 if isinstance(a, sp.Identity) else 1 if isinstance(a, sp.MatrixSymbol)
                  or (isinstance(a, sp.MatMul) and len(a.args) == 2 and a.args[0] == -1) else 2)


class _HumanPrinter(StrPrinter):
    def _print_MatrixSymbol(self, expr):
        return _HUMAN_NAMES.get(expr.name, expr.name)

    _print_SymmetricMatrixSymbol = _print_MatrixSymbol

    def _print_MatAdd(self, expr):
        out = []
        for i, a in enumerate(_identity_first(expr.args)):
            s = self._print(a)
            if i and s.startswith("-"):
                out.append("- " + s[1:])
            else:
                out.append(("+ " if i else "") + s)
        return " ".join(out)

    def _print_MatPow(self, expr):
        base = self._print(expr.base)
        if not isinstance(expr.base, sp.MatrixSymbol):
            base = f"({base})"
        return f"{base}^({self._print(expr.exp)})"

    def _print_MatMul(self, expr):
        c, mats = expr.as_coeff_mmul()
        parts = []
        for m in mats.args if isinstance(mats, sp.MatMul) else (mats,):
            s = self._print(m)
            parts.append(f"({s})" if isinstance(m, sp.MatAdd) else s)
        body = " ".join(parts)
        sign = ""
        if c.could_extract_minus_sign():
            sign, c = "-", -c
        if c == 1:
            return sign + body
        cs = self._print(c) if not c.is_Add else f"({self._print(c)})"
        # sqrt(eta)(I + rho*H) as in the papers; any other coefficient keeps its "*" (1/(1 - e^(-rho t))*(...))
        return sign + cs + ("" if body.startswith("(") and c.is_Pow and c.exp == sp.S.Half else "*") + body

    def _print_Transpose(self, expr):
        s = self._print(expr.arg)
        return f"{s}^T" if isinstance(expr.arg, (sp.MatrixSymbol, ExpectationAtom)) else f"({s})^T"

    def _print_VNorm(self, expr):
        return f"|{self._print(expr.args[0])}|"

    def _print_Trace(self, expr):
        return f"tr {self._print(expr.arg)}"

    def _print_OneMatrix(self, expr):
        return "1"

    def _print_HadamardProduct(self, expr):
        return " o ".join(f"({self._print(a)})" if isinstance(a, (sp.MatAdd, sp.MatMul)) else self._print(a)
                          for a in expr.args)

    def _print_HadamardPower(self, expr):
        base = self._print(expr.base)
        base = base if isinstance(expr.base, sp.MatrixSymbol) else f"({base})"
        return f"{base}^o({self._print(expr.exp)})"

    def _print_DiagonalOf(self, expr):
        return f"diag({self._print(expr.args[0])})"

    def _print_DiagMatrix(self, expr):
        return f"Diag({self._print(expr.args[0])})"


class _JsonPrinter(StrPrinter):
    """The JSON grammar: `transpose(.)`, `I`, atoms by name, everything else as sympy prints it."""

    printmethod = "_jsonstr"  # not ExpectationAtom._sympystr (the display form)

    def __init__(self, atom_names: Mapping):
        super().__init__({"order": "none"})
        self.atom_names = atom_names

    def _print_Transpose(self, expr):
        return f"transpose({self._print(expr.arg)})"

    def _print_Identity(self, expr):
        return "I"

    def _print_ZeroMatrix(self, expr):
        return "0*I" if expr.shape == (dim, dim) else "0*grad"

    def _print_ExpectationAtom(self, expr):
        return self.atom_names[expr]

    def _print_VNorm(self, expr):
        return f"norm({self._print(expr.args[0])})"

    def _print_SignMean(self, expr):
        return f"sign_mean({', '.join(self._print(a) for a in expr.args)})"

    def _print_SignSecond(self, expr):
        return f"sign_second({', '.join(self._print(a) for a in expr.args)})"

    def _print_VDot(self, expr):
        return f"dot({self._print(expr.args[0])}, {self._print(expr.args[1])})"

    def _print_OneMatrix(self, expr):
        return "ones"

    def _print_HadamardProduct(self, expr):
        return "hadamard(" + ", ".join(self._print(a) for a in expr.args) + ")"

    def _print_HadamardPower(self, expr):
        return f"hpow({self._print(expr.base)}, {self._print(expr.exp)})"

    def _print_DiagonalOf(self, expr):
        return f"diag_of({self._print(expr.args[0])})"

    def _print_DiagMatrix(self, expr):
        return f"diag_matrix({self._print(expr.args[0])})"


class _Latex(LatexPrinter):
    _names = {"grad": r"\nabla f", "Sigma": r"\Sigma", "H": "H", "x": "x",
              "grad_trSigma": r"\nabla \operatorname{tr}\Sigma(x)", "SigmaX": r"\Sigma(x)"}

    def _print_MatrixSymbol(self, expr):
        return self._names.get(expr.name, expr.name)

    _print_SymmetricMatrixSymbol = _print_MatrixSymbol

    def _print_Identity(self, expr):
        return "I"

    def _print_MatAdd(self, expr):
        out = []
        for i, a in enumerate(_identity_first(expr.args)):
            s = self._print(a)
            out.append(s if not i else (s if s.startswith("-") else "+ " + s))
        return " ".join(out)

    def _print_VNorm(self, expr):
        return rf"\left\|{self._print(expr.args[0])}\right\|"

    def _print_OneMatrix(self, expr):
        return r"\mathbf{1}"

    def _print_DiagonalOf(self, expr):
        return rf"\operatorname{{diag}}\left({self._print(expr.args[0])}\right)"

    def _print_DiagMatrix(self, expr):
        return rf"\operatorname{{Diag}}\left({self._print(expr.args[0])}\right)"


_LATEX_SYMBOLS = {"eta": r"\eta", "rho": r"\rho", "c": "c", "mu": r"\mu", "eps": r"\epsilon", "wd": r"w_d"}


def _human(e) -> str:
    return _HumanPrinter().doprint(e)


def _latex(e) -> str:
    return _Latex({"symbol_names": {sym(n): v for n, v in _LATEX_SYMBOLS.items()}}).doprint(e)


def _negative(a) -> bool:
    c = a.as_coeff_mmul()[0] if isinstance(a, sp.MatMul) else sp.S.One
    return c.could_extract_minus_sign()


def _cov_root(diff) -> sp.MatPow | None:
    """The factor `C**(1/2)` of a diffusion `sqrt(eta)*C**(1/2)` with a compound `C` (else None)."""
    for p in diff.atoms(sp.MatPow):
        if p.exp == sp.S.Half and not isinstance(p.base, sp.MatrixSymbol):
            return p
    return None


# -- the result object ------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class VectorSDE:
    """A derived vector SDE `dX = drift_vector dt + diffusion_matrix_expr dW` (`W` a d-dim Brownian motion).

    Attributes
    ----------
    optimizer, noise, regime
        provenance.
    tau
        time per step (`eta`).
    drift_vector
        `(d, 1)` sympy matrix expression in `x`, `grad`, `H`, `Sigma`, atoms, hypers.
    diffusion_matrix_expr
        `(d, d)` matrix expression `D` with `D D^T = covariance_expr`.
    covariance_expr
        the leading-order local covariance per unit time, `Cov[Delta x]/tau`.
    atoms
        the `ExpectationAtom` objects the result contains (to be evaluated numerically).
    notes
        assumptions and modelling choices (Hessian expansion, same minibatch, atoms).
    hypers
        `((name, kind, default), ...)` of the optimizer.
    nu
        the degrees of freedom of multivariate Student-t noise (`noise == "student-t"`: a number or the
        symbol `nu`), `None` for Gaussian noise.
    aux_states, aux_drift, aux_diffusion
        auxiliary vector states kept in the SDE (LAMB's `m`, `v` in regime `balanced`), their `(d, 1)` drifts
        and `(d, d)` diffusion matrices.  One d-dimensional Brownian motion `W` (the minibatch noise) drives all
        states: `dm = aux_drift dt + aux_diffusion dW` with the same `dW` as `x`.
    joint_covariance
        `((s1, s2, C), ...)`: the nonzero blocks `Cov[Delta s1, Delta s2]/tau` of the leading local covariance of
        all states (also those whose noise the regime leaves out of the diffusion).
    eliminated
        `((state, A), ...)` for fast states averaged out (heavy ball, Nesterov in regime `sgd`): `x` of the SDE is
        the slow variable `x + A m` (equal to the parameter up to O(eta)).
    """

    optimizer: str
    noise: str
    regime: str
    tau: sp.Expr
    drift_vector: sp.MatrixExpr
    diffusion_matrix_expr: sp.MatrixExpr
    covariance_expr: sp.MatrixExpr
    atoms: tuple = ()
    notes: tuple[str, ...] = ()
    hypers: tuple = ()
    order: int = 1
    source: object = field(default=None, compare=False)
    nu: sp.Expr | None = None
    #: the increment in linear-block form, $F = -\Delta x/\eta = a_0 + \sum_k A_k B_k$ (leading order): one
    #: `(tensor, integrand, batch, A_k)` per block, `B_k = r(|g_b|) g_b` (`"g"`), `r(|g_b|)` (`"1"`) or
    #: `sign(g_b)` (`"sign"`), `r` in `NORM_G`, `b` the minibatch (0 is `g`'s), and `("det", 1, 0, a_0)`; `A_k` a
    #: matrix expression in `H`, `I`, `grad`, `x` and the hyperparameters ($(d,1)$ for `"1"` and `"det"`).  `covariance_expr` is `eta*Cov[F]`; the simulators sample
    #: `F` to draw noise of that covariance where the diffusion is `C^(1/2)` (`docs/vector.md`, simulation).
    increment: tuple = field(default=(), compare=False)
    aux_states: tuple = ()
    #: the auxiliary states' increments in the same form, `F_m = -Delta m/eta` (one tuple of blocks per state of
    #: `aux_states`, empty where the state's drift and noise need no sampling; `()` when no state needs it): a
    #: block `("gsq", r, b, A)` is `A (r(|g_b|) g_b o g_b)`, the coordinate-wise square in Adam's `v`.  Recorded
    #: where a state's drift holds expectation atoms or its diffusion is the root of a covariance (regime
    #: `balanced` with a clipped or normalised gradient in an EMA state)
    aux_increment: tuple = field(default=(), compare=False)
    aux_drift: tuple = ()
    aux_diffusion: tuple = ()
    joint_covariance: tuple = ()
    eliminated: tuple = ()
    #: `Sigma` stands for the state-dependent minibatch covariance `Sigma(x)` (`derive(..., Sigma="x")`); the SDE may
    #: then hold `grad_trSigma`, the gradient of `tr Sigma(x)`
    sigma_x: bool = False

    @property
    def states(self) -> tuple[str, ...]:
        return ("x",) + tuple(self.aux_states)

    @property
    def drift(self) -> dict:
        return {"x": self.drift_vector, **dict(zip(self.aux_states, self.aux_drift))}

    @property
    def diffusion(self) -> dict:
        """state -> its `(d, d)` coefficient of the common `dW`."""
        return {"x": self.diffusion_matrix_expr, **dict(zip(self.aux_states, self.aux_diffusion))}

    def _all_exprs(self) -> list:
        return ([self.drift_vector, self.diffusion_matrix_expr, self.covariance_expr, *self.aux_drift,
                 *self.aux_diffusion] + [c for _, _, c in self.joint_covariance] + [a for _, a in self.eliminated])

    @property
    def symbols(self) -> list[str]:
        """Names of the scalar symbols and matrix symbols the expressions use (sorted)."""
        out = set()
        for e in (*self._all_exprs(), self.tau):
            out |= {str(s) for s in e.free_symbols if s != dim}
            for a in e.atoms(ExpectationAtom):
                out |= {str(s) for s in a.integrand.free_symbols if s != NORM_G}
        return sorted(out)

    def __str__(self) -> str:
        diff = self.diffusion_matrix_expr
        b = self.drift_vector
        if isinstance(b, sp.MatAdd) and all(_negative(a) for a in b.args):
            drift = f"-({_human(sp.MatAdd(*[-a for a in b.args]))})"
        elif isinstance(b, sp.MatAdd):  # a sum times dt needs its parentheses: (-grad f + eta*c*H grad f) dt
            drift = f"({_human(b)})"
        else:
            drift = _human(b)
        root = _cov_root(diff)
        if diff.is_ZeroMatrix:
            noise = ""
        elif root is not None:
            noise = f" + {_human(diff.xreplace({root: sp.MatrixSymbol('C', dim, dim) ** sp.S.Half}))} dW"
        else:
            noise = f" + {_human(diff)} dW"
        noise = noise.replace(" + -", " - ", 1)
        law = (("(state-dependent Sigma(x))" if self.sigma_x else "(full Sigma)") if self.nu is None else "(multivariate, symbolic nu, scale matrix Sigma)"
               if self.nu.free_symbols else f"(multivariate, nu = {self.nu}, scale matrix Sigma)")
        lines = [f"SDE of {self.optimizer} | noise {self.noise} {law} | regime {self.regime} | tau = {self.tau}"
                 f" | vector form, d dimensions", f"  dX = {drift} dt{noise}"]
        if root is not None:
            lines.append(f"  where C = {_human(root.base)}")
        for name, b_s, d_s in zip(self.aux_states, self.aux_drift, self.aux_diffusion):
            noise_s = "" if d_s.is_ZeroMatrix else f" + {_human(d_s)} dW".replace(" + -", " - ", 1)
            drift_s = f"({_human(b_s)})" if isinstance(b_s, sp.MatAdd) else _human(b_s)
            lines.append(f"  d{name} = {drift_s} dt{noise_s}")
        for a in self.atoms:
            lines.append(f"  atom {a.display()}: g ~ {law_text(a.nu)}; no closed form, evaluated numerically")
        for n in self.notes:
            lines.append(f"  note: {n}")
        return "\n".join(lines)

    __repr__ = __str__

    def latex(self) -> str:
        """The SDE as one LaTeX line: `dX_t = (...)\\,dt + (...)\\,dW_t` with its clock."""
        # Sigma(x) where the covariance is state-dependent
        sx = {SIGMA: SymmetricMatrixSymbol("SigmaX", dim, dim)} if self.sigma_x else {}

        def L(e):
            return _latex(e.xreplace(sx) if sx else e)

        diff = self.diffusion_matrix_expr
        b = L(self.drift_vector)
        rhs = (rf"\left({b}\right)\,dt" if isinstance(self.drift_vector, sp.MatAdd) else rf"{b}\,dt")
        if not diff.is_ZeroMatrix:
            rhs += rf" + {L(diff)}\,dW_t"
        for name, b_s, d_s in zip(self.aux_states, self.aux_drift, self.aux_diffusion):
            rhs += rf",\quad d{name}_t = \left({L(b_s)}\right)\,dt"
            if not d_s.is_ZeroMatrix:
                rhs += rf" + {L(d_s)}\,dW_t"
        rhs = rhs.replace(r"\,dt + -", r"\,dt -")
        return rf"dX_t = {rhs},\qquad t = k\tau,\ \tau = {_latex(self.tau)}"

    def _repr_latex_(self) -> str:
        return "$$" + self.latex() + "$$"

    # -- JSON ---------------------------------------------------------------------------------------------
    def _atom_names(self) -> dict:
        return {a: f"A{i + 1}" for i, a in enumerate(self.atoms)}

    def to_dict(self) -> dict:
        """The JSON schema of docs/vector.md, every expression printed in the form the safe parser rebuilds: the
        dict is printed once, parsed and printed again (matrix sums such as `-(rho*H + I)*grad` come back as
        `(-I + (-rho)*H)*grad`), so that saving a loaded SDE gives the same bytes."""
        return _from_json(type(self), self._raw_dict(), check=False)._raw_dict()

    def _raw_dict(self) -> dict:
        names = self._atom_names()
        P = _JsonPrinter(names)
        extra: dict = {}
        if self.aux_states:
            incs = self.aux_increment or ((),) * len(self.aux_states)
            extra["aux"] = {n: {"drift": P.doprint(b_s), "diffusion": P.doprint(d_s),
                                **({"increment": _increment_json(P, inc)} if inc else {})}
                            for n, b_s, d_s, inc in zip(self.aux_states, self.aux_drift, self.aux_diffusion, incs)}
            extra["joint_covariance"] = [[s1, s2, P.doprint(c)] for s1, s2, c in self.joint_covariance]
        if self.eliminated:
            extra["eliminated"] = {n: P.doprint(a) for n, a in self.eliminated}
        out = {
            "kind": "vector",
            "optimizer": self.optimizer,
            "noise": self.noise,
            "regime": self.regime,
            "tau": str(self.tau),
            "dimension": "d",
            "states": list(self.states),
            "drift": P.doprint(self.drift_vector),
            "diffusion": P.doprint(self.diffusion_matrix_expr),
            "covariance": P.doprint(self.covariance_expr),
            "atoms": {names[a]: {"tensor": a.tensor, "integrand": P.doprint(a.integrand), "meaning": a.display(),
                                 **({} if a.nu is None else {"law": a.law, "nu": P.doprint(a.nu)})}
                      for a in self.atoms},
            "symbols": self.symbols,
            "order": self.order,
            "notes": list(self.notes),
            "hypers": [list(h) for h in self.hypers],
            **({} if self.nu is None else {"nu": P.doprint(self.nu)}),
            **({"Sigma": "x"} if self.sigma_x else {}),
            **({"increment": _increment_json(P, self.increment)} if self.increment else {}),
        }
        out.update(extra)
        return out

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, data: str | Mapping) -> VectorSDE:
        """Rebuild from `to_json` output; every expression goes through the safe parser."""
        return _from_json(cls, data)

    # -- numerics -------------------------------------------------------------------------------------------
    def evaluate(self, what: str = "drift", *, atoms: Mapping | None = None, **env) -> np.ndarray:
        """`drift`, `diffusion` or `covariance` (of `x`) as a numpy array at the values `env` (`grad`, `H`,
        `Sigma`, `x` and the auxiliary states' arrays; hyperparameters, `t` by name).  With auxiliary states:
        `"drift:m"`, `"diffusion:m"` and `"covariance:m,v"` (the block `Cov[Delta m, Delta v]/tau`).
        `atoms`: values for the expectation atoms (else each is estimated by `evaluate_atom` with 10**5 samples)."""
        table = {"drift": self.drift_vector, "diffusion": self.diffusion_matrix_expr,
                 "covariance": self.covariance_expr}
        for n in self.aux_states:
            table[f"drift:{n}"], table[f"diffusion:{n}"] = self.drift[n], self.diffusion[n]
        blocks = {(s1, s2): c for s1, s2, c in self.joint_covariance}
        for s1 in self.states if self.aux_states else ():
            for s2 in self.states:
                c = blocks.get((s1, s2))
                if c is None:
                    c = blocks[(s2, s1)].T if (s2, s1) in blocks else sp.ZeroMatrix(dim, dim)
                table[f"covariance:{s1},{s2}"] = c
        e = table.get(what.replace(" ", ""))
        if e is None:
            raise SdederiveError(f"evaluate: {what!r}; allowed: {', '.join(repr(k) for k in table)}")
        return evaluate(e, env, atoms)


def square_norm_moment(tensor: str, r: sp.Expr, nu: sp.Expr | None = None) -> sp.MatrixExpr | None:
    r"""The moments whose integrand is `r = c |g|^2` (`c` free of `|g|`), in closed form by Isserlis' theorem for
    `g = grad + xi`, with $m_2 = |\nabla f|^2 + s_2\operatorname{tr}\Sigma$:

    $E[|g|^2 g] = m_2\,\nabla f + 2 s_2\Sigma\nabla f$ (tensor `"g"`) and
    $E[|g|^2 g g^T] = |\nabla f|^2\nabla f\nabla f^T + s_2(|\nabla f|^2\Sigma + \operatorname{tr}\Sigma\,
    \nabla f\nabla f^T + 2\nabla f\nabla f^T\Sigma + 2\Sigma\nabla f\nabla f^T) + s_4(\operatorname{tr}\Sigma\,
    \Sigma + 2\Sigma^2)$ (tensor `"ggT"`; the covariance of `|g| g`, ...).

    Gaussian `xi ~ N(0, Sigma)` (`nu = None`): `s_2 = s_4 = 1`.  The multivariate t `xi = Sigma^(1/2) z
    sqrt(nu/W)`: its moments are the Gaussian's times `E[(nu/W)^k]`, `s_2 = nu/(nu - 2)` and
    `s_4 = nu^2/((nu - 2)(nu - 4))` (finite for `nu > 3` and `nu > 4`: the derivation records these through the
    integrand's tail exponent).

    `None` (an atom) for every other integrand or tensor.  The scalar `E[|g|^2] = m_2` stays an atom: the
    expressions, their JSON and the kernels hold a scalar expectation as a `(1, 1)` matrix, which sympy's
    `Identity(1)` would not survive (JSON's `I` is the `d x d` identity).  The derivation (`_Law.vec`) and the
    simulators' check of an increment against its drift both use this one function."""
    if tensor not in ("g", "ggT"):
        return None
    c = sp.simplify(r / NORM_G ** 2)
    if c.has(NORM_G) or c == 0:
        return None
    s2 = sp.S.One if nu is None else nu / (nu - 2)
    s4 = sp.S.One if nu is None else nu ** 2 / ((nu - 2) * (nu - 4))
    n2, tr = VNorm(GRAD) ** 2, sp.Trace(SIGMA)
    if tensor == "g":
        return c * ((n2 + s2 * tr) * GRAD + 2 * s2 * SIGMA * GRAD)
    gg = GRAD * GRAD.T
    return c * (n2 * gg + s2 * (n2 * SIGMA + tr * gg + 2 * (gg * SIGMA + SIGMA * gg))
                + s4 * (tr * SIGMA + 2 * SIGMA * SIGMA))


def _increment_json(P, blocks) -> list:
    return [{"tensor": t, "integrand": P.doprint(r), "batch": int(b), "coefficient": P.doprint(c)}
            for t, r, b, c in blocks]


# -- numerics ---------------------------------------------------------------------------------------------------


def _psd_sqrt(A: np.ndarray) -> np.ndarray:
    A = (A + A.T) / 2
    w, V = np.linalg.eigh(A)
    if w.min() < -1e-9 * max(1.0, abs(w).max()):
        raise SdederiveError(f"the square root of a matrix with eigenvalue {w.min():.3g} < 0 (not PSD) is undefined")
    return (V * np.sqrt(np.clip(w, 0, None))) @ V.T


def isotropic_unit_mean(grad, s2: float) -> np.ndarray:
    r"""`E[g/|g|]` for `g ~ N(grad, s2*I)` in closed form (the gradient in `grad` of the noncentral-chi mean
    `E|g| = s sqrt(2) Gamma((d+1)/2)/Gamma(d/2) 1F1(-1/2; d/2; -|grad|^2/(2 s2))`):

    $$
    \mathbb E\Big[\frac{g}{|g|}\Big] = \frac{\nabla f}{s}\,\frac{\sqrt2\,\Gamma(\frac{d+1}2)}{d\,\Gamma(\frac d2)}\,
    {}_1F_1\Big(\tfrac12; \tfrac d2 + 1; -\frac{|\nabla f|^2}{2 s^2}\Big)
    $$

    (`d = 1`: `erf(grad/(sqrt(2) s))`)."""
    from scipy.special import gammaln, hyp1f1

    mu = np.asarray(grad, dtype=float).reshape(-1)
    d, s = mu.size, float(np.sqrt(s2))
    c = np.sqrt(2.0) * np.exp(gammaln((d + 1) / 2) - gammaln(d / 2)) / d
    return (mu / s * c * hyp1f1(0.5, d / 2 + 1, -(mu @ mu) / (2 * s2))).reshape(-1, 1)


def isotropic_unit_second(grad, s2: float) -> np.ndarray:
    r"""`E[g g^T/|g|^2]` for `g ~ N(grad, s2*I)` in closed form (NSGD's covariance atom).  By symmetry it is
    `a (I - P) + b P` with `P` the projection on `grad` and `(d - 1) a + b = 1`.  With `m = grad.P g/s` and the
    Poisson mixture of the noncentral chi-square (`(g.u)^2/s^2 ~ chi2_{1+2J}`, `J ~ Poisson(|grad|^2/(2 s2))`,
    independent of the `chi2_{d-1}` of the other directions), `(g.u)^2/|g|^2` is `Beta((1+2J)/2, (d-1)/2)` given
    `J`, so `b = E[(1 + 2J)/(d + 2J)]`, and Kummer's transformation gives

    $$
    b = 1 - \frac{d-1}{d}\,{}_1F_1\Big(1; \tfrac d2 + 1; -\frac{|\nabla f|^2}{2 s^2}\Big),
    $$

    `1/d` at `grad = 0` and `1` as `|grad|/s` grows (`d = 1`: `[[1]]`)."""
    from scipy.special import hyp1f1

    mu = np.asarray(grad, dtype=float).reshape(-1)
    d = mu.size
    if d == 1:
        return np.ones((1, 1))
    lam = float(mu @ mu) / float(s2)
    b = 1.0 - (d - 1) / d * hyp1f1(1.0, d / 2 + 1, -lam / 2)
    a = (1.0 - b) / (d - 1)
    P = np.outer(mu, mu) / (mu @ mu) if lam > 0 else np.zeros((d, d))
    return a * (np.eye(d) - P) + b * P if lam > 0 else np.eye(d) / d


def _ncx2_mean(h, k: int, lam: float, breaks=()) -> float:
    """`E[h(Y)]` for `Y ~ chi2'_k(lam)` (noncentral chi-square, `k` degrees of freedom, noncentrality `lam`) by
    adaptive quadrature of its density (`scipy.stats.ncx2`, the central `chi2` at `lam = 0`) over the window of
    +-40 standard deviations around its mean `k + lam` (the mass outside is below 1e-300), split at the
    integrand's kinks `breaks` (`Min(1, c/|g|)` at `|g| = c`); relative accuracy about 1e-10."""
    from scipy import integrate, stats

    law = stats.chi2(k) if lam == 0 else stats.ncx2(k, lam)
    m, sd = k + lam, math.sqrt(2.0 * (k + 2.0 * lam))
    lo, hi = max(0.0, m - 40.0 * sd), m + 40.0 * sd
    cuts = sorted({lo, hi, *(b for b in breaks if lo < b < hi)})
    if k <= 2:  # the density is unbounded or not smooth at 0: start there
        cuts[0] = 0.0
    total = 0.0
    for a, b in zip(cuts[:-1], cuts[1:]):
        val, _err = integrate.quad(lambda y: h(y) * law.pdf(y), a, b, limit=200, epsabs=0.0, epsrel=1e-11)
        total += val
    return float(total)


def _kinks(expr: sp.Expr, env: Mapping) -> list:
    """The values of `|g|` where a radial integrand has a kink: the arguments of its `Min`/`Max` equal
    (`Min(1, c/|g|)`: `|g| = c`), at the numeric hyperparameters `env`."""
    out = []
    for m in expr.atoms(sp.Min, sp.Max):
        if len(m.args) != 2:
            continue
        try:
            sols = sp.solve(sp.Eq(m.args[0].subs(env), m.args[1].subs(env)), NORM_G)
        except (NotImplementedError, TypeError):
            continue
        out += [float(v) for v in sols if v.is_real and v > 0]
    return out


def isotropic_radial(atom: ExpectationAtom, grad, s2: float, hyper: Mapping | None = None) -> np.ndarray | None:
    r"""`E[r(|g|) T(g)]` for `g ~ N(grad, s2*I)` and any radial integrand `r`, for `T = 1, g, g g^T, g o g`, by the
    noncentral chi-square identities (Stein's lemma on the Poisson mixture; `lam = |grad|^2/s2`, `Y_k ~
    chi2'_k(lam)`, `rho(y) = r(s sqrt(y))`):

    $$
    \mathbb E[r] = \mathbb E\,
ho(Y_d),\quad \mathbb E[r\,g] = 
abla f\;\mathbb E\,
ho(Y_{d+2}),\quad
    \mathbb E[r\,g g^	op] = s^2 I\;\mathbb E\,
ho(Y_{d+2}) + 
abla f 
abla f^	op\;\mathbb E\,
ho(Y_{d+4}),
    $$

    `E[r g o g]` the diagonal of the last.  Each one-dimensional expectation by quadrature (`_ncx2_mean`,
    deterministic, relative accuracy about 1e-10): clipping's `Min(1, c/|g|)` and `Min(1, c/|g|)**2`, normalised
    SGD's `1/|g|` and `1/|g|**2`, any user's `r(|g|)`.  `None` for the tensors of third and fourth order."""
    if atom.tensor not in ("1", "g", "ggT", "gsq"):
        return None
    hyper = dict(hyper or {})
    free = sorted(atom.integrand.free_symbols - {NORM_G}, key=str)
    missing = [str(q) for q in free if str(q) not in hyper]
    if missing:
        raise SdederiveError(f"evaluate_atom: no value for {missing} in the integrand of {atom.display()}")
    env = {q: sp.Float(float(hyper[str(q)])) for q in free}
    r_num = atom.integrand.xreplace(env)
    f = sp.lambdify([NORM_G], r_num, modules="math")
    mu = np.asarray(grad, dtype=float).reshape(-1)
    d, s = mu.size, math.sqrt(float(s2))
    lam = float(mu @ mu) / float(s2)
    breaks = [(k / s) ** 2 for k in _kinks(atom.integrand, env)]

    def rho(y: float) -> float:
        return float(f(s * math.sqrt(y))) if y > 0 else float(f(1e-300))

    if atom.tensor == "1":
        return np.array([[_ncx2_mean(rho, d, lam, breaks)]])
    e2 = _ncx2_mean(rho, d + 2, lam, breaks)
    if atom.tensor == "g":
        return (mu * e2).reshape(-1, 1)
    e4 = _ncx2_mean(rho, d + 4, lam, breaks)
    if atom.tensor == "gsq":
        return (s2 * e2 + mu**2 * e4).reshape(-1, 1)
    return s2 * e2 * np.eye(d) + e4 * np.outer(mu, mu)


def evaluate_atom(atom: ExpectationAtom, grad, Sigma, hyper: Mapping | None = None, n: int = 100_000,
                  rng: np.random.Generator | None = None) -> np.ndarray:
    """`atom` at `g ~ N(grad, Sigma)`: `E[g/|g|]` and `E[g g^T/|g|^2]` with an isotropic `Sigma = s2*I` in closed
    form (`isotropic_unit_mean`, `isotropic_unit_second`), every other radial atom of order at most two with an
    isotropic `Sigma` by the noncentral chi-square identities and quadrature (`isotropic_radial`: clipping's
    atoms among them), every other case by Monte Carlo with `n` samples (standard error `O(n**-0.5)`; unbiased
    for every `n`).

    An atom over the multivariate Student-t (`atom.nu`; a symbolic `nu` takes its value from `hyper["nu"]`) is
    sampled from that law, `g = grad + Sigma^(1/2) z sqrt(nu/W)` with `W ~ chi2_nu` independent of `z`: plain
    Monte Carlo (no closed form is used), unbiased where the atom is finite; its standard error is
    `O(n**-0.5)` when the integrand's second moment is finite (for `E[r(|g|) T(g)]` growing like `|g|**p`:
    `nu > 2p`)."""
    rng = np.random.default_rng(0) if rng is None else rng
    S = np.asarray(Sigma, dtype=float)
    check_origin([atom], int(np.asarray(grad).size), "evaluate_atom", S, grad)
    hyper = dict(hyper or {})
    nu = _atom_nu(atom, hyper)
    if (nu is None and atom.tensor == "g" and sp.simplify(atom.integrand - 1 / NORM_G) == 0 and S.ndim == 2
            and S[0, 0] > 0 and np.allclose(S, S[0, 0] * np.eye(S.shape[0]), rtol=1e-12, atol=0)):
        return isotropic_unit_mean(grad, float(S[0, 0]))
    if (nu is None and atom.tensor == "ggT" and sp.simplify(atom.integrand - NORM_G ** -2) == 0 and S.ndim == 2
            and S[0, 0] > 0 and np.allclose(S, S[0, 0] * np.eye(S.shape[0]), rtol=1e-12, atol=0)):
        return isotropic_unit_second(grad, float(S[0, 0]))
    if (nu is None and S.ndim == 2 and S[0, 0] > 0
            and np.allclose(S, S[0, 0] * np.eye(S.shape[0]), rtol=1e-12, atol=0)):
        iso = isotropic_radial(atom, grad, float(S[0, 0]), hyper)
        if iso is not None:
            return iso
    mu = np.asarray(grad, dtype=float).reshape(-1)
    for a, p in infinite_variance([atom], mu.size, "evaluate_atom", S, grad).items():
        warnings.warn(
            f"evaluate_atom: the Monte Carlo estimate of {a.display()} (n = {n}) has an infinite variance in "
            f"dimension {mu.size}: its integrand behaves like |g|**{p:g} at g = 0, whose square is integrable only "
            f"for d > {-2 * p:g}; the estimate converges more slowly than n**-0.5 (pass atoms= with a value "
            "computed otherwise where its accuracy matters)", RuntimeWarning, stacklevel=2)
    L = _psd_sqrt(np.asarray(Sigma, dtype=float))
    if nu is None:
        gs = mu + rng.standard_normal((n, mu.size)) @ L.T
    else:
        gs = mu + (rng.standard_normal((n, mu.size)) @ L.T) * np.sqrt(nu / rng.chisquare(nu, n))[:, None]
    free = sorted(atom.integrand.free_symbols - {NORM_G}, key=str)
    missing = [str(s) for s in free if str(s) not in hyper]
    if missing:
        raise SdederiveError(f"evaluate_atom: no value for {missing} in the integrand of {atom.display()}")
    f = sp.lambdify([NORM_G] + free, atom.integrand, modules="numpy")
    r = np.broadcast_to(np.asarray(f(np.linalg.norm(gs, axis=1), *[float(hyper[str(s)]) for s in free]),
                                   dtype=float), (n,))
    if atom.tensor == "g":
        return (r[:, None] * gs).mean(axis=0).reshape(-1, 1)
    if atom.tensor == "ggT":
        return np.einsum("n,ni,nj->ij", r, gs, gs) / n
    if atom.tensor == "gsq":
        return (r[:, None] * gs ** 2).mean(axis=0).reshape(-1, 1)
    if atom.tensor == "g_gsqT":
        return np.einsum("n,ni,nj->ij", r, gs, gs ** 2) / n
    if atom.tensor == "gsq_gsqT":
        return np.einsum("n,ni,nj->ij", r, gs ** 2, gs ** 2) / n
    return np.array([[r.mean()]])


def _atom_nu(atom: ExpectationAtom, hyper: Mapping) -> float | None:
    """The numeric degrees of freedom of a Student-t atom (`hyper["nu"]` for a symbolic one), `None` if Gaussian."""
    if atom.nu is None:
        return None
    nu = atom.nu
    if nu.free_symbols:
        missing = sorted(str(s) for s in nu.free_symbols if str(s) not in hyper)
        if missing:
            raise SdederiveError(f"evaluate_atom: {atom.display()} is over the multivariate Student-t with a symbolic "
                                 f"nu; no value for {missing} (pass nu=...)")
        nu = nu.xreplace({s: sp.Float(float(hyper[str(s)])) for s in nu.free_symbols})
    return _check_numeric_nu(nu)


def evaluate(expr: sp.Basic, env: Mapping, atoms: Mapping | None = None) -> np.ndarray:
    """A matrix expression as a numpy array: `env` gives `grad`, `x` (vectors), `H`, `Sigma`
    (matrices) and the scalars by name; `atoms` maps `ExpectationAtom` to values (missing ones are
    estimated with `evaluate_atom` at `env`'s `grad` and `Sigma`)."""
    env = dict(env)
    atoms = dict(atoms or {})
    mats = {k: np.asarray(v, dtype=float) for k, v in env.items() if np.ndim(v) > 0}
    for k in mats:  # vectors (grad, x, the states) as columns
        if mats[k].ndim == 1:
            mats[k] = mats[k].reshape(-1, 1)
    dims = {m.shape[0] for m in mats.values()}
    if len(dims) != 1:
        raise SdederiveError(f"evaluate: the arrays have inconsistent sizes {sorted(dims)}; give grad, x, H, Sigma "
                             "of one dimension d")
    n = dims.pop()
    scal = {k: sp.Float(float(v)) for k, v in env.items() if np.ndim(v) == 0}

    def dets(e: sp.Expr) -> sp.Expr:
        """`e` with its norms, inner products and traces of deterministic matrices as numbers at env's values."""
        e = e.replace(lambda a: isinstance(a, (VNorm, VDot)), lambda a: sp.Float(float(_vfun(a))))
        return e.replace(lambda a: isinstance(a, sp.Trace), lambda a: sp.Float(float(np.trace(M(a.arg)))))

    def S(e) -> float:
        e2 = dets(e.xreplace({s: scal[str(s)] for s in e.free_symbols if str(s) in scal}))
        if e2.free_symbols:
            raise SdederiveError(f"evaluate: no value for {sorted(map(str, e2.free_symbols))}")
        return float(e2)

    def _vfun(a):
        vs = [M(v).reshape(-1) for v in a.args]
        return np.linalg.norm(vs[0]) if isinstance(a, VNorm) else float(vs[0] @ vs[1])

    def M(e) -> np.ndarray:
        if isinstance(e, ExpectationAtom):
            if e not in atoms:
                if "grad" not in mats or "Sigma" not in mats:
                    raise SdederiveError(f"evaluate: the atom {e.display()} needs grad and Sigma (or a value in atoms=)")
                # the deterministic scalars of the integrand (norm(x), dot(x, m), traces: a clipping radius
                # c*norm(x)) take their values at env's vectors; evaluate_atom sees |g| and hyperparameters only
                r = dets(e.integrand)
                num = e if r == e.integrand else ExpectationAtom(e.tensor, r, e.nu)
                atoms[e] = evaluate_atom(num, mats["grad"], mats["Sigma"], {k: float(v) for k, v in scal.items()})
            return np.asarray(atoms[e], dtype=float).reshape([int(s) if s != dim else n for s in e.shape])
        if isinstance(e, SignMean):
            return sign_mean(M(e.mean), M(e.cov), None if e.nu is None else S(e.nu))
        if isinstance(e, SignSecond):
            return sign_second_moment(M(e.mean), M(e.cov), None if e.nu is None else S(e.nu))
        if isinstance(e, sp.MatrixSymbol):
            if e.name not in mats:
                raise SdederiveError(f"evaluate: no value for the matrix symbol {e.name!r}")
            return mats[e.name]
        if isinstance(e, sp.Identity):
            return np.eye(n)
        if isinstance(e, sp.OneMatrix):
            return np.ones([int(s) if s != dim else n for s in e.shape])
        if isinstance(e, sp.HadamardProduct):
            out = M(e.args[0])
            for a in e.args[1:]:
                out = out * M(a)
            return out
        if isinstance(e, sp.HadamardPower):
            return M(e.base) ** S(e.exp)
        if isinstance(e, DiagonalOf):
            return np.diag(M(e.args[0])).reshape(-1, 1).copy()
        if isinstance(e, DiagMatrix):
            return np.diag(M(e.args[0]).ravel())
        if isinstance(e, sp.ZeroMatrix):
            return np.zeros((n, n) if e.shape[1] != 1 else (n, 1))
        if isinstance(e, sp.MatAdd):
            return sum(M(a) for a in e.args)
        if isinstance(e, sp.MatMul):
            c, out = 1.0, None
            for a in e.args:
                if getattr(a, "is_Matrix", False):
                    v = M(a)
                    out = v if out is None else out @ v
                else:
                    c *= S(a)
            return c * out
        if isinstance(e, sp.Transpose):
            return M(e.arg).T
        if isinstance(e, sp.MatPow):
            base, ex = M(e.base), e.exp
            if ex == sp.S.Half:
                return _psd_sqrt(base)
            if ex.is_Integer:
                return np.linalg.matrix_power(base, int(ex))
            raise SdederiveError(f"evaluate: the matrix power {e} is not supported (only 1/2 and integers)")
        raise SdederiveError(f"evaluate: cannot evaluate {type(e).__name__} {e}")

    return M(expr)


# -- JSON loading ----------------------------------------------------------------------------------------------------
_VEC_FUNCTIONS = {k: SDE_FUNCTIONS[k] for k in ("sqrt", "Min", "Max", "Abs", "abs", "exp", "log")}


def _transpose(a):
    if not getattr(a, "is_Matrix", False):
        raise TypeError(f"transpose of the scalar {a}")
    return a.T


_VEC_FUNCTIONS.update({"Trace": (sp.Trace, (1, 1)), "sign_mean": (SignMean, (2, 3)), "sign_second": (SignSecond, (2, 3)),
                       "transpose": (_transpose, (1, 1)), "norm": (VNorm, (1, 1)), "dot": (VDot, (2, 2))})
_MATRICES = {"grad": GRAD, "x": XVEC, "H": HESS, "Sigma": SIGMA, "I": IDENT, "ones": ONES, "grad_trSigma": GRAD_TRSIGMA}


def _hadamard(*args):
    if any(not getattr(a, "is_Matrix", False) for a in args):
        raise TypeError("hadamard of a scalar")
    return sp.HadamardProduct(*args)


def _hpow(a, p):
    if not getattr(a, "is_Matrix", False) or getattr(p, "is_Matrix", False):
        raise TypeError("hpow(matrix, scalar) needed")
    return sp.HadamardPower(a, p)


def _diag_of(a):
    if not getattr(a, "is_Matrix", False) or a.shape[0] != a.shape[1]:
        raise TypeError("diag_of needs a square matrix")
    return DiagonalOf(a)


def _diag_matrix(a):
    if not getattr(a, "is_Matrix", False) or a.shape[1] != 1:
        raise TypeError("diag_matrix needs a (d, 1) vector")
    return DiagMatrix(a)


_VEC_FUNCTIONS.update({"hadamard": (_hadamard, (2, None)), "hpow": (_hpow, (2, 2)), "diag_of": (_diag_of, (1, 1)),
                       "diag_matrix": (_diag_matrix, (1, 1))})


def _shape_mismatch(e) -> str | None:
    """A product, sum or power in `e` whose shapes do not fit symbolically (sympy does not check them when
    the dimension is a symbol: `grad*grad` would pass for `d = 1`); `None` if all fit."""
    for node in sp.preorder_traversal(e):
        if isinstance(node, sp.MatMul):
            mats = [a for a in node.args if getattr(a, "is_Matrix", False)]
            for a, b in zip(mats, mats[1:]):
                if a.shape[1] != b.shape[0]:
                    return f"the product {a}*{b} of shapes {a.shape} and {b.shape}"
        elif isinstance(node, sp.MatAdd):
            if len({a.shape for a in node.args}) > 1:
                return f"the sum {node} of different shapes"
        elif isinstance(node, sp.HadamardProduct):
            if len({a.shape for a in node.args}) > 1:
                return f"the coordinate-wise product {node} of different shapes"
        elif isinstance(node, sp.MatPow) and node.base.shape[0] != node.base.shape[1]:
            return f"the power {node} of a non-square matrix {node.base.shape}"
    return None


def _err(msg: str) -> SdederiveError:
    return SdederiveError(f"vector SDE JSON: {msg} (see docs/vector.md for the schema)")


def _from_json(cls, data, check: bool = True) -> VectorSDE:
    """`VectorSDE.from_json`; `check=False` skips `_check_diffusion_matches_covariance` (the round trip of
    `to_dict`, whose expressions come from the engine)."""
    if isinstance(data, str):
        from sdederive._json import JSONTextError, loads_strict

        try:
            d = loads_strict(data)
        except JSONTextError as e:
            raise _err(f"not valid JSON: {e}") from None
    elif isinstance(data, Mapping):
        d = dict(data)
    else:
        raise _err(f"expected JSON text or a dict; got {type(data).__name__}")
    if not isinstance(d, Mapping) or d.get("kind") != "vector":
        raise _err("the top level must be an object with \"kind\": \"vector\"")
    required = ("optimizer", "noise", "regime", "tau", "drift", "diffusion", "covariance")
    missing = [k for k in required if k not in d]
    if missing:
        raise _err(f"missing key(s) {missing}")
    allowed = set(required) | {"kind", "dimension", "states", "atoms", "symbols", "order", "notes", "hypers", "nu",
                               "increment", "aux", "joint_covariance", "eliminated", "Sigma"}
    unknown = sorted(str(k) for k in d if k not in allowed)
    if unknown:
        raise _err(f"unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    if d.get("Sigma", "x") != "x":
        raise _err(f"Sigma = {d['Sigma']!r}; allowed: \"x\" (the state-dependent minibatch covariance Sigma(x)), or no "
                   "key (a constant Sigma)")
    sigma_x = d.get("Sigma") == "x"
    for k in ("optimizer", "noise", "regime"):
        if not isinstance(d[k], str) or not IDENTIFIER.match(d[k].replace("-", "_").replace("+", "_")):
            raise _err(f"{k} = {d[k]!r} is not a valid name")
    hypers = d.get("hypers", [])
    if not isinstance(hypers, list) or any(not isinstance(h, list) or len(h) != 3 or not isinstance(h[0], str)
                                           or not IDENTIFIER.match(h[0]) for h in hypers):
        raise _err("hypers must be a list of [name, kind, default]")
    scalars = {h[0]: sym(h[0]) if h[0] in KNOWN else sym(h[0], positive=True) for h in hypers}
    scalars.setdefault("eta", sym("eta"))
    listed = d.get("symbols", [])
    if not isinstance(listed, list) or not all(isinstance(n, str) and IDENTIFIER.match(n) for n in listed):
        raise _err("symbols must be a list of names")
    listed_states = d.get("states") if isinstance(d.get("states"), list) else []
    for n in listed:  # regime parameters such as r (rho = r*eta)
        if n not in _MATRICES and n not in scalars and n not in listed_states:
            scalars[n] = sym(n) if n in KNOWN else sym(n, positive=True)

    if d["noise"] == "student-t":  # the multivariate t's degrees of freedom (a number or the symbol nu)
        scalars.setdefault("nu", sym("nu"))

    def scalar_lookup(name: str):
        return scalars.get(name)

    def law_nu(text, where: str):
        """The degrees of freedom written in `where` (`None`: absent, the Gaussian law)."""
        if text is None:
            return None
        if d["noise"] != "student-t":
            raise _err(f"{where} gives nu = {str(text)[:40]!r} but noise = {d['noise']!r}; nu belongs to noise "
                       "'student-t' only")
        if not isinstance(text, str):
            raise _err(f"{where}: nu must be an expression string")
        v = parse_expr(text, symbols=scalar_lookup, what=f"vector SDE JSON {where} nu")
        if v.free_symbols - {sym("nu")} or (v.is_number and not v > 0):
            raise _err(f"{where}: nu = {text[:40]!r}; allowed: a number > 0 or the symbol nu")
        return v

    nu_top = law_nu(d.get("nu"), "the top level")
    if d["noise"] == "student-t" and nu_top is None:
        raise _err("noise 'student-t' needs the key \"nu\" (its degrees of freedom)")

    atoms: dict[str, ExpectationAtom] = {}
    raw = d.get("atoms", {})
    if not isinstance(raw, Mapping):
        raise _err("atoms must be an object name -> {tensor, integrand}")
    for name, spec in raw.items():
        if not isinstance(name, str) or not IDENTIFIER.match(name) or name in _MATRICES or name in scalars:
            raise _err(f"atom name {name!r} is not allowed (an identifier not used by a matrix or hyperparameter)")
        if not isinstance(spec, Mapping) or spec.get("tensor") not in _TENSORS or not isinstance(spec.get("integrand"), str):
            raise _err(f"atom {name!r} = {str(spec)[:80]}: needs \"tensor\" in {sorted(_TENSORS)} and an \"integrand\" "
                       "string in norm_g and the hyperparameters")
        law = spec.get("law", "gaussian")  # absent in files written before the Student-t law: Gaussian
        if law not in ("gaussian", "student-t") or (law == "student-t") != ("nu" in spec):
            raise _err(f"atom {name!r}: law = {law!r}; allowed: \"gaussian\" (no nu) or \"student-t\" with its \"nu\"")
        extra = sorted(str(k) for k in spec if k not in ("tensor", "integrand", "meaning", "law", "nu"))
        if extra:
            raise _err(f"atom {name!r}: unknown key(s) {extra}; allowed: tensor, integrand, meaning, law, nu")
        r = parse_expr(spec["integrand"], symbols=lambda n: NORM_G if n == "norm_g" else scalar_lookup(n),
                       functions=_VEC_FUNCTIONS, what=f"vector SDE JSON atom {name}")
        atom_nu = law_nu(spec.get("nu"), f"atom {name!r}")
        if atom_nu != nu_top:
            raise _err(f"atom {name!r} has nu = {atom_nu} but the noise has nu = {nu_top}; they must agree")
        atoms[name] = ExpectationAtom(spec["tensor"], r, atom_nu)

    from sdederive.spec.vector import RESERVED_VECTOR_NAMES

    states = d.get("states", ["x"])
    if (not isinstance(states, list) or not states or states[0] != "x" or len(set(map(str, states))) != len(states)
            or any(not isinstance(n, str) or not IDENTIFIER.match(n) or n in _MATRICES or n in atoms or n in scalars
                   or n in RESERVED_VECTOR_NAMES or n == "g" for n in states[1:])):
        raise _err(f"states = {str(states)[:80]}: a list of distinct names starting with \"x\" (auxiliary states: "
                   "identifiers not used by a matrix, an atom, a hyperparameter or a reserved name)")
    svecs = {n: state_vector(n) for n in states[1:]}

    def resolve(name: str):
        return _MATRICES.get(name) or svecs.get(name) or atoms.get(name) or scalar_lookup(name)

    def P(key, shape, text=None) -> sp.MatrixExpr:
        text = d[key] if text is None else text
        if not isinstance(text, str):
            raise _err(f"{key} must be an expression string")
        try:
            e = parse_expr(text, symbols=resolve, functions=_VEC_FUNCTIONS, what=f"vector SDE JSON {key}")
        except SdederiveError:
            raise
        except Exception as exc:  # noqa: BLE001 - shape errors of sympy's matrix algebra
            raise _err(f"{key} = {text[:80]!r} is not a valid matrix expression ({type(exc).__name__}: {exc})") from None
        if not getattr(e, "is_Matrix", False) or e.shape != shape:
            raise _err(f"{key} = {text[:80]!r} is not a matrix expression of shape {shape}")
        bad = _shape_mismatch(e)
        if bad:
            raise _err(f"{key} = {text[:80]!r}: {bad} (the shapes do not fit for a symbolic dimension d)")
        return e

    tau = parse_expr(d["tau"], symbols=scalar_lookup, what="vector SDE JSON tau")
    order = d.get("order", 1)
    if isinstance(order, bool) or order not in (1, 2):
        raise _err(f"order = {order!r}; allowed: 1 or 2")
    notes = d.get("notes", [])
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        raise _err("notes must be a list of strings")
    if any(not isinstance(h[1], str) or not (h[2] is None or isinstance(h[2], (int, float))) for h in hypers):
        raise _err("hypers must be a list of [name, kind, default]")
    try:
        drift, diff, cov = P("drift", (dim, 1)), P("diffusion", (dim, dim)), P("covariance", (dim, dim))
    except ExpectationError:
        raise
    aux = d.get("aux", {})
    if not isinstance(aux, Mapping) or list(aux) != states[1:]:
        raise _err(f"aux must be an object with the states {states[1:]} (in that order), each {{drift, diffusion}}")
    _INC_TENSORS = ("1", "det", "g", "gsq", "sign")

    def increment_of(raw_inc, where: str) -> tuple:
        if not isinstance(raw_inc, list):
            raise _err(f"{where} must be a list of {{tensor, integrand, batch, coefficient}}")
        out = []
        for j, blk in enumerate(raw_inc):
            if (not isinstance(blk, Mapping) or set(blk) != {"tensor", "integrand", "batch", "coefficient"}
                    or blk["tensor"] not in _INC_TENSORS or not isinstance(blk["integrand"], str)
                    or not isinstance(blk["coefficient"], str) or isinstance(blk["batch"], bool)
                    or not isinstance(blk["batch"], int) or not 0 <= blk["batch"] < 64):
                raise _err(f"{where}[{j}] = {str(blk)[:80]}: needs \"tensor\" in {list(_INC_TENSORS)}, an "
                           "\"integrand\" string in norm_g and the hyperparameters, an integer \"batch\" in [0, 64) "
                           "and a \"coefficient\" matrix expression")
            r = parse_expr(blk["integrand"], symbols=lambda n: NORM_G if n == "norm_g" else scalar_lookup(n),
                           functions=_VEC_FUNCTIONS, what=f"vector SDE JSON {where}[{j}] integrand")
            key = f"{where}[{j}].coefficient"
            c = P(key, (dim, 1) if blk["tensor"] in ("1", "det") else (dim, dim), blk["coefficient"])
            out.append((blk["tensor"], r, blk["batch"], c))
        return tuple(out)

    aux_drift, aux_diff, aux_inc = [], [], []
    for n in states[1:]:
        spec = aux[n]
        if not isinstance(spec, Mapping) or not {"drift", "diffusion"} <= set(spec) <= {"drift", "diffusion",
                                                                                         "increment"}:
            raise _err(f"aux[{n!r}] must be an object with the keys drift and diffusion, and optionally increment")
        aux_drift.append(P(f"drift of {n}", (dim, 1), spec["drift"]))
        aux_diff.append(P(f"diffusion of {n}", (dim, dim), spec["diffusion"]))
        aux_inc.append(increment_of(spec.get("increment", []), f"aux[{n!r}].increment"))
    joint = []
    raw_joint = d.get("joint_covariance", [])
    if not isinstance(raw_joint, list) or any(not isinstance(j, list) or len(j) != 3 or j[0] not in states
                                              or j[1] not in states for j in raw_joint):
        raise _err("joint_covariance must be a list of [state, state, expression]")
    for s1, s2, text in raw_joint:
        joint.append((s1, s2, P(f"joint_covariance {s1},{s2}", (dim, dim), text)))
    elim = d.get("eliminated", {})
    if not isinstance(elim, Mapping) or any(not isinstance(n, str) or not IDENTIFIER.match(n) or n in states
                                            for n in elim):
        raise _err("eliminated must be an object state -> expression (states not among the SDE's states)")
    eliminated = tuple((n, P(f"eliminated {n}", (dim, dim), text)) for n, text in elim.items())
    used = set()
    for e in (drift, diff, cov, *aux_drift, *aux_diff, *[c for _, _, c in joint]):
        used |= set(e.atoms(ExpectationAtom))
    increment = increment_of(d.get("increment", []), "increment")
    sde = cls(optimizer=d["optimizer"], noise=d["noise"], regime=d["regime"], tau=tau, drift_vector=drift,
              diffusion_matrix_expr=diff, covariance_expr=cov, atoms=tuple(a for a in atoms.values() if a in used),
              notes=tuple(notes), hypers=tuple(tuple(h) for h in hypers), order=order, nu=nu_top,
              increment=increment, aux_states=tuple(states[1:]), aux_drift=tuple(aux_drift),
              aux_diffusion=tuple(aux_diff), aux_increment=tuple(aux_inc) if any(aux_inc) else (),
              joint_covariance=tuple(joint), eliminated=eliminated, sigma_x=sigma_x)
    if check:
        _check_diffusion_matches_covariance(sde)
        _check_increments_match_drifts(sde)
    return sde


def _test_point(sde: VectorSDE, generic: bool = False) -> dict:
    """The fixed point, `d = 3`, at which a file's SDE is checked for consistency
    (`_check_diffusion_matches_covariance`, `increment_matches_drift`): a dense positive definite `H` and `Sigma`, a
    `grad` and an `x`, positive auxiliary states (roots of second moments), `eta = 0.01`, `t = 1`, a symbolic `nu` 7
    and 0.3 for any other symbol. The hyperparameters take their defaults (0.3 without one), or with `generic` the
    distinct values 0.3, 0.4, ..., so that no term vanishes at a default of 0 (a weight decay) and no two
    hyperparameters are confused."""
    dd = 3
    r = np.random.default_rng(12345)
    A = r.standard_normal((dd, dd))
    B = r.standard_normal((dd, dd))
    env: dict = {"grad": np.array([0.7, -0.4, 0.2]), "x": np.array([0.5, 1.0, -0.8]),
                 "H": A @ A.T / dd + 0.5 * np.eye(dd), "Sigma": B @ B.T / dd + 0.3 * np.eye(dd)}
    for n in sde.aux_states:
        env[n] = np.array([0.4, 0.9, 0.25])
    for j, h in enumerate(sde.hypers):
        default = h[2] if isinstance(h[2], (int, float)) and not isinstance(h[2], bool) else 0.3
        env[str(h[0])] = 0.3 + 0.1 * j if generic else float(default)
    env["eta"], env["t"] = 0.01, 1.0
    names = {str(s) for e in sde._all_exprs() for s in e.free_symbols if isinstance(s, sp.Symbol)}
    for n in names - set(env) - {"d"}:
        env[n] = 7.0 if n == "nu" else 0.3
    return env


def increment_matches_drift(sde: VectorSDE, state: str = "x", blocks: tuple | None = None) -> tuple[bool | None, str]:
    r"""Whether the drift of `state` is `-E[F]` of the increment `F` that the simulators sample (`blocks`;
    `sde.increment` for `x`): `(True, "")`, `(False, what disagrees)`, or `(None, why)` where the pair cannot be
    evaluated.

    `E[F]` is assembled from the blocks `C r(|g|) T(g)` with the closed forms where the engine has them
    (`E[g] = grad f`, `E[g o g] = grad f^2 + diag Sigma`, `square_norm_moment`, the sign means) and an atom
    otherwise, then both sides are evaluated at `_test_point(sde, generic=True)` with the same random value for
    each atom (an identity in the atoms, not a property of one law) and compared to 1e-9.  A hand-edited JSON
    could make them disagree: the SDE would show one drift and simulate another."""
    blocks = sde.increment if blocks is None else blocks
    drift = sde.drift[state]
    mean = sp.ZeroMatrix(*drift.shape)
    nu = sde.nu  # the atoms and sign moments of a Student-t SDE are over its law
    for tensor, r, _bt, coef in blocks:
        if tensor == "det":
            mean = mean + coef
        elif tensor == "sign":
            mean = mean + coef * (SignMean() if nu is None else SignMean(GRAD, SIGMA, nu))
        elif tensor == "g":
            closed = square_norm_moment("g", r, nu)
            mean = mean + coef * (GRAD if r == 1 else closed if closed is not None else ExpectationAtom("g", r, nu))
        elif tensor == "gsq":
            mean = mean + coef * (sp.HadamardPower(GRAD, 2) + DiagonalOf(SIGMA) if r == 1
                                  else ExpectationAtom("gsq", r, nu))
        else:
            mean = mean + coef * (sp.S.One if r == 1 else ExpectationAtom("1", r, nu))
    env = _test_point(sde, generic=True)
    for s in drift.free_symbols | mean.free_symbols:
        if isinstance(s, sp.Symbol) and s.name not in env:
            env[s.name] = 0.7
    rng = np.random.default_rng(12345)
    atoms: dict = {}
    for e in (drift, mean):
        for a in e.atoms(ExpectationAtom):
            atoms.setdefault(a, rng.normal(size=(3, 1)) if a.tensor in ("g", "gsq") else rng.normal(size=(1, 1)))
    try:
        got = evaluate(-mean, env, atoms)
        want = evaluate(drift, env, atoms)
    except Exception as e:  # noqa: BLE001 - any failure to evaluate is reported to the caller
        return None, str(e)
    if np.allclose(got, want, rtol=1e-9, atol=1e-12):
        return True, ""
    where = "VectorSDE.increment" if state == "x" else f"VectorSDE.aux_increment, state {state}"
    return False, f"the drift of {state} is not -E[F] of its increment ({where})"


def _check_increments_match_drifts(sde: VectorSDE) -> None:
    """`SdederiveError` where a file's `increment` (of `x`, or of an auxiliary state) is not the drift's `-E[F]`
    (`increment_matches_drift`): run at load, so that the file is refused when it is read and not only when a
    simulator is built.  A pair that cannot be evaluated here passes; building a simulator checks it again
    (`vector_lower`, with the problem's symbols), and refuses it there."""
    if sde.order != 1:  # an order-2 drift carries O(eta) corrections that -E[F] does not
        return
    todo = [("x", sde.increment)] if sde.increment else []
    todo += [(n, inc) for n, inc in zip(sde.aux_states, sde.aux_increment) if inc]
    for state, blocks in todo:
        ok, why = increment_matches_drift(sde, state, blocks)
        if ok is False:
            raise _err(f"the increment of {state} does not match its drift: {why}, so the noise the simulators sample "
                       "would not belong to this drift")


def _check_diffusion_matches_covariance(sde: VectorSDE) -> None:
    r"""`SdederiveError` where a file's `diffusion` `D` and `covariance` `C` of `x` disagree (`D D^T != C`): the two
    are written side by side, the simulators use one and `print` and `evaluate` show both, so a file edited in one
    of them would simulate an SDE other than the one it displays.  (The auxiliary states' `joint_covariance` is the
    full leading covariance, which a regime's diffusion may leave out, as `balanced` does for a second moment: it
    is not checked against their diffusions.)

    Checked numerically at a fixed point, `d = 3`: a dense PD `H` and `Sigma`, a `grad`, `x`, positive auxiliary
    states, every hyperparameter at its default (0.3 without one, `eta = 0.01`, `t = 1`, a symbolic `nu` 7).  The
    expectation atoms take the moments of one empirical law (400 draws of `g` of a fixed seed, each atom over the
    same draws), so `C` is a covariance of that law and the identity `D D^T = C` of a derived SDE holds to rounding
    (rtol 1e-8); a point where either cannot be evaluated (a root of a matrix that is not PSD there, a domain the
    point leaves) checks nothing, and the file is accepted."""
    env = _test_point(sde)
    hyper = {k: v for k, v in env.items() if np.ndim(v) == 0}
    try:
        vals = {a: evaluate_atom(a, env["grad"], env["Sigma"], hyper, n=400, rng=np.random.default_rng(7))
                for a in sde.atoms}
        with np.errstate(all="ignore"):
            D = np.asarray(sde.evaluate("diffusion", atoms=vals, **env), float)
            C = np.asarray(sde.evaluate("covariance", atoms=vals, **env), float)
    except Exception:  # noqa: BLE001 - a point the expressions cannot be evaluated at tells nothing
        return
    prod = D @ D.T
    if not (np.all(np.isfinite(prod)) and np.all(np.isfinite(C))) or prod.shape != C.shape:
        return
    scale = max(np.abs(C).max(), np.abs(prod).max(), 1e-300)
    err = np.abs(prod - C).max()
    if err > 1e-8 * scale:
        raise _err(f"diffusion D and covariance C of x disagree: D D^T - C has an entry of size "
                   f"{err:.3g} against {scale:.3g} at a test point (d = 3, the hyperparameters' defaults); a file "
                   "must give D D^T = C (the simulators use one of them, print and evaluate show both)")

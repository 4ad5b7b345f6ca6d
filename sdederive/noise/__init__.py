r"""Gradient-noise models: `g = grad + s*z` with `z` standardized.

Each model gives the moments the expectation engine needs, in closed form:

* $\mathbb E z^n$ (Gaussian: $(n-1)!!$; Student-t with scale `sigma`:
  $\nu^{n/2}\Gamma(\frac{n+1}2)\Gamma(\frac{\nu-n}2)/(\sqrt\pi\,\Gamma(\frac\nu2))$, finite only for
  $n<\nu$);
* $\mathbb E[z^n\operatorname{sign}(z+r)]$ (Gaussian for every `n` by integration by parts;
  Student-t for `n = 0, 1`), from which `sign`, `Abs`, `Heaviside` and `Max(0, .)` of an
  affine function of `g` follow.

The Student-t CDF is written out as in the reference:
$2F_\nu(r)-1 = \frac{2r\,\Gamma(\frac{\nu+1}2)}{\sqrt{\pi\nu}\,\Gamma(\frac\nu2)}\,{}_2F_1(\tfrac12,\tfrac{\nu+1}2;\tfrac32;-\tfrac{r^2}\nu)$.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import mpmath
import numpy as np
import sympy as sp

from sdederive.errors import ExpectationError, NoiseModelError, UnknownNameError
from sdederive.symbols import sym

__all__ = ["NoiseModel", "Gaussian", "StudentT", "get", "names", "canonical_name", "aliases", "kernel_fields",
           "student_t_sign_mean"]

_nu, _sigma, _sigma1, _B = sym("nu"), sym("sigma"), sym("sigma1"), sym("B")


def student_t_sign_mean(r: sp.Expr, nu: sp.Expr = _nu) -> sp.Expr:
    """$2F_\\nu(r) - 1$, the mean of `sign(r + T_nu)`, with the hypergeometric form."""
    return (
        2 * r * sp.gamma((nu + 1) / 2) / (sp.sqrt(sp.pi * nu) * sp.gamma(nu / 2))
        * sp.hyper([sp.S.Half, (nu + 1) / 2], [sp.Rational(3, 2)], -(r**2) / nu)
    )


@dataclass(frozen=True)
class NoiseModel:
    """Base class: `g = grad + scale*z`.

    `scale` is `sigma` (NOTATION: the std, or Student-t scale, at the batch size used), or
    `sigma1/sqrt(B)` for the minibatch form.  `Sigma` (optional, numeric) is a full noise
    covariance across coordinates; it is only used where the update is linear in the noise.
    """

    name: str = "noise"
    batch: bool = False
    Sigma: tuple | None = field(default=None, compare=True)
    values: tuple = ()  # numeric values (name, value) checked at construction

    #: the scalar parameters this model gives the simulation kernels: fields of a problem's parameter pack
    #: (:class:`sdederive.problems.base.ParamLayout`), read by the kernels' samplers by name
    kernel_fields: ClassVar[tuple] = ()

    def kernel_values(self) -> dict:
        """`{field: number}` for `kernel_fields` (numeric parameters only)."""
        return {}

    @property
    def scale(self) -> sp.Expr:
        return _sigma1 / sp.sqrt(_B) if self.batch else _sigma

    @property
    def label(self) -> str:
        return self.name + ("+minibatch" if self.batch else "")

    def moment(self, n: int) -> sp.Expr:  # pragma: no cover - abstract
        raise NotImplementedError

    def sign_mean(self, r: sp.Expr) -> sp.Expr:  # pragma: no cover - abstract
        raise NotImplementedError

    def sign_moment(self, n: int, r: sp.Expr) -> sp.Expr:  # pragma: no cover - abstract
        raise NotImplementedError

    def conditions(self, n: int) -> list[str]:
        return []

    def density(self, z: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        """The density of the standardized noise `z` (`g = grad + sigma z`), in numpy: what the simulators'
        expected first step integrates against (`sdederive.simulate._quadrature.noise_expectation`)."""
        raise NotImplementedError

    def sample(self, rng: np.random.Generator, size, nu: float | None = None) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def sigma_matrix(self) -> np.ndarray | None:
        return None if self.Sigma is None else np.array(self.Sigma, dtype=float)


def _check_sigma(sigma) -> None:
    if sigma is None:
        return
    arr = np.atleast_1d(np.asarray(sigma, dtype=float))
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise NoiseModelError(f"noise sigma={sigma!r} is invalid; allowed: finite sigma >= 0 (per coordinate)")


def _check_Sigma(Sigma) -> tuple | None:
    if Sigma is None:
        return None
    S = np.asarray(Sigma, dtype=float)
    if S.ndim != 2 or S.shape[0] != S.shape[1]:
        raise NoiseModelError(f"Sigma must be a square matrix, got shape {S.shape}")
    if not np.all(np.isfinite(S)):
        raise NoiseModelError("Sigma has non-finite entries; allowed: a finite symmetric PSD matrix")
    if not np.allclose(S, S.T, rtol=1e-10, atol=1e-12):
        i, j = np.unravel_index(np.argmax(np.abs(S - S.T)), S.shape)
        raise NoiseModelError(
            f"Sigma is not symmetric: Sigma[{i},{j}]={float(S[i, j])!r} but Sigma[{j},{i}]={float(S[j, i])!r}; "
            "a covariance matrix must be symmetric"
        )
    w = np.linalg.eigvalsh(S)
    if w.min() < -1e-10 * max(1.0, abs(w).max()):
        raise NoiseModelError(
            f"Sigma is not positive semi-definite: smallest eigenvalue {w.min():.3g} < 0; a covariance "
            "matrix must be PSD"
        )
    return tuple(map(tuple, S.tolist()))


@dataclass(frozen=True)
class Gaussian(NoiseModel):
    """Gaussian noise, `z ~ N(0, 1)` per coordinate (`Sigma` correlates coordinates)."""

    name: str = "gaussian"

    def __init__(self, sigma=None, Sigma=None, batch: bool = False) -> None:
        _check_sigma(sigma)
        object.__setattr__(self, "name", "gaussian")
        object.__setattr__(self, "batch", bool(batch))
        object.__setattr__(self, "Sigma", _check_Sigma(Sigma))
        object.__setattr__(self, "values", () if sigma is None else (("sigma", _freeze(sigma)),))

    def moment(self, n: int) -> sp.Expr:
        return sp.S.Zero if n % 2 else sp.factorial2(n - 1) if n > 0 else sp.S.One

    def sign_mean(self, r: sp.Expr) -> sp.Expr:
        return sp.erf(r / sp.sqrt(2))

    def sign_moment(self, n: int, r: sp.Expr) -> sp.Expr:
        # E[z^n sign(z + r)] = 2 M_n(-r) - E z^n,  M_n(c) = E[z^n 1{z > c}],
        # M_0 = (1 - erf(c/sqrt2))/2, M_1 = phi(c), M_n = c^(n-1) phi(c) + (n-1) M_(n-2).
        c = -r
        phi = sp.exp(-(c**2) / 2) / sp.sqrt(2 * sp.pi)
        M = [(1 - sp.erf(c / sp.sqrt(2))) / 2, phi]
        for j in range(2, n + 1):
            M.append(c ** (j - 1) * phi + (j - 1) * M[j - 2])
        return sp.expand(2 * M[n] - self.moment(n))

    def density(self, z):
        return np.exp(-0.5 * z * z) / np.sqrt(2.0 * np.pi)

    def sample(self, rng, size, nu=None):
        return rng.standard_normal(size)


#: the smallest numeric ``nu`` accepted: below it Student-t samples overflow double precision
#: (numpy's ``standard_t(0.01)`` is infinite for ~2% of draws), so no simulator or validator can check it
NU_MIN = 0.1
#: from this ``nu`` on, the Student-t moments and CDF are replaced by their Gaussian limits: the
#: errors are O(1/nu) (CDF: at most 0.016/nu; E z**2 = nu/(nu - 2); E z**4: 18/nu), all below 2e-7
NU_GAUSSIAN = 1e8
#: up to this ``nu`` (with 2*nu an integer) the normalising constant of the density is kept exact
_NU_EXACT = 64


def _check_nu(nu) -> float | None:
    if nu is None:
        return None
    allowed = (f"allowed: nu > 0, finite and at least {NU_MIN:g} (below {NU_MIN:g} Student-t samples overflow "
               "double precision); for nu -> infinity use noise='gaussian'")
    if isinstance(nu, bool):
        raise NoiseModelError(f"Student-t degrees of freedom nu={nu!r} is not a number; {allowed}")
    try:
        v = float(nu)
    except (TypeError, ValueError, OverflowError):
        raise NoiseModelError(f"Student-t degrees of freedom nu={nu!r} is not a number; {allowed}") from None
    if math.isinf(v) and v > 0:
        raise NoiseModelError(f"Student-t degrees of freedom nu={nu!r}: the limit nu -> infinity is Gaussian "
                              f"noise, use noise='gaussian' (allowed: nu > 0, finite and at least {NU_MIN:g})")
    if not (math.isfinite(v) and v >= NU_MIN):
        raise NoiseModelError(f"Student-t degrees of freedom nu={nu!r} is invalid; {allowed}")
    return v


def _density_const(nu: sp.Expr) -> sp.Expr:
    r"""$\Gamma(\frac{\nu+1}2)/(\sqrt{\pi\nu}\,\Gamma(\frac\nu2))$: exact for a symbolic or a small
    (half-)integer `nu`, else a 30-digit float (exact gammas of a large `nu` are huge rationals)."""
    if not nu.is_number or (nu <= _NU_EXACT and (2 * nu).is_Integer):
        return sp.gamma((nu + 1) / 2) / (sp.sqrt(sp.pi * nu) * sp.gamma(nu / 2))
    with mpmath.workdps(40):
        nu_m = mpmath.mpf(sp.Float(nu, 40))
        val = mpmath.gammaprod([(nu_m + 1) / 2], [nu_m / 2]) / mpmath.sqrt(mpmath.pi * nu_m)
        return sp.Float(val, 30)


@dataclass(frozen=True)
class StudentT(NoiseModel):
    """Student-t noise with `nu` degrees of freedom; `sigma` is the scale (`g = grad + sigma*T_nu`).

    A numeric `nu` must be finite and at least `NU_MIN` (the variance is infinite for
    `nu <= 2`: a state that averages `g` then has no diffusion limit and the derivation says so;
    an update that uses `g` only through `sign` is fine).  From `NU_GAUSSIAN` on, the
    moments are the Gaussian ones (errors below 2e-7), noted in the SDE.
    """

    name: str = "student-t"
    nu: object = None

    kernel_fields: ClassVar[tuple] = ("nu",)  # the degrees of freedom of the kernels' t sampler

    def kernel_values(self) -> dict:
        if self.nu is None:
            raise NoiseModelError("the kernels need a numeric nu for Student-t noise; got a symbolic nu")
        return {"nu": float(self.nu)}

    def __init__(self, nu=None, sigma=None, batch: bool = False) -> None:
        nu = _check_nu(nu)
        _check_sigma(sigma)
        object.__setattr__(self, "name", "student-t")
        object.__setattr__(self, "batch", bool(batch))
        object.__setattr__(self, "Sigma", None)
        object.__setattr__(self, "nu", nu)
        vals = [] if sigma is None else [("sigma", _freeze(sigma))]
        object.__setattr__(self, "values", tuple(vals + ([] if nu is None else [("nu", nu)])))

    @property
    def nu_expr(self) -> sp.Expr:
        return _nu if self.nu is None else sp.nsimplify(self.nu, rational=True)

    @property
    def gaussian_limit(self) -> bool:
        """True when `nu >= NU_GAUSSIAN`: the moments used are the Gaussian limits."""
        return self.nu is not None and self.nu >= NU_GAUSSIAN

    def _require(self, n: int, what: str) -> None:
        if self.nu is not None and not self.nu > n:
            raise ExpectationError(
                f"{what} is infinite for Student-t noise with nu={self.nu:g} (it needs nu > {n}). An update "
                f"whose one-step moments involve E[z**{n}] has no SDE limit under this noise. Updates that use "
                "g only through sign(...) (sign-based ones such as signsgd) are defined for every nu; a state that averages g "
                "or g**2 (the momentum of signum and lion, Adam's moments) needs the moments it uses to exist."
            )

    def moment(self, n: int) -> sp.Expr:
        if n == 0:
            return sp.S.One
        self._require(n, f"E[z**{n}]")
        if n % 2:
            return sp.S.Zero
        if self.gaussian_limit:
            return Gaussian().moment(n)
        nu = self.nu_expr
        # nu**(n/2) Gamma((n+1)/2) Gamma((nu-n)/2) / (sqrt(pi) Gamma(nu/2)), with
        # Gamma((nu - n)/2)/Gamma(nu/2) = 1/prod_j (nu/2 - j) (n even), numeric or symbolic nu: no gammas to simplify
        return sp.factorial2(n - 1) * nu ** sp.Rational(n, 2) / sp.Mul(*[nu - 2 * j for j in range(1, n // 2 + 1)])

    def conditions(self, n: int) -> list[str]:
        return [f"nu > {n}"] if n >= 1 and self.nu is None else []

    def sign_mean(self, r: sp.Expr) -> sp.Expr:
        if self.gaussian_limit:
            return Gaussian().sign_mean(r)
        nu = self.nu_expr
        return 2 * r * _density_const(nu) * sp.hyper([sp.S.Half, (nu + 1) / 2], [sp.Rational(3, 2)], -(r**2) / nu)

    def sign_moment(self, n: int, r: sp.Expr) -> sp.Expr:
        if n == 0:
            return self.sign_mean(r)
        if n == 1:
            # E[z 1{z > c}] = (nu + c^2)/(nu - 1) f_nu(c) for nu > 1; E[z sign(z + r)] = 2 E[z 1{z > -r}].
            self._require(1, "E[z*sign(z + r)]")
            if self.gaussian_limit:
                return Gaussian().sign_moment(1, r)
            nu = self.nu_expr
            pdf = _density_const(nu) * (1 + r**2 / nu) ** (-(nu + 1) / 2)
            return 2 * (nu + r**2) / (nu - 1) * pdf
        raise ExpectationError(
            f"E[z**{n} * sign(z + r)] under Student-t noise has no built-in closed form (only n = 0, 1). "
            "Register one with sdederive.register_expectation(sympy.sign, rule)."
        )

    def density(self, z):
        # scipy.special's gammaln, not scipy.stats (whose import alone costs a second of a simulation's start)
        from scipy.special import gammaln

        if self.nu is None:
            raise NoiseModelError("the Student-t density needs a numeric nu")
        nu = float(self.nu)
        c = np.exp(gammaln((nu + 1) / 2) - gammaln(nu / 2)) / np.sqrt(nu * np.pi)
        return c * np.exp(-(nu + 1) / 2 * np.log1p(z * z / nu))

    def sample(self, rng, size, nu=None):
        nu = self.nu if self.nu is not None else nu
        if nu is None:
            raise NoiseModelError("sampling Student-t noise needs a numeric nu")
        return rng.standard_t(nu, size)


def _freeze(v):
    arr = np.asarray(v, dtype=float)
    return float(arr) if arr.ndim == 0 else tuple(arr.ravel().tolist())


# The one alias table of noise names (the derivation, the problems, the CLI and the kernels all resolve
# names through canonical_name).
_NAMES = {"gaussian": "gaussian", "normal": "gaussian", "student-t": "student-t", "student_t": "student-t",
          "studentt": "student-t", "t": "student-t", "minibatch": "minibatch"}



def names() -> list[str]:
    return ["gaussian", "student-t", "minibatch"]


def canonical_name(noise) -> str:
    """The canonical name (`"gaussian"`, `"student-t"`, `"minibatch"`) of a noise name or alias
    (`"normal"`, `"student_t"`, `"studentt"`, `"t"`; case and surrounding blanks ignored), or of a
    `NoiseModel`; raises `UnknownNameError` for anything else."""
    if isinstance(noise, NoiseModel):
        return "minibatch" if noise.batch and noise.name == "gaussian" else noise.name
    key = noise.strip().lower() if isinstance(noise, str) else None
    if key not in _NAMES:
        raise UnknownNameError("noise model", noise, names())
    return _NAMES[key]


def aliases(name: str) -> tuple[str, ...]:
    """Every spelling `canonical_name` maps to the canonical `name` (lower case)."""
    canon = canonical_name(name)
    return tuple(k for k, v in _NAMES.items() if v == canon)


def kernel_fields(noise) -> tuple[str, ...]:
    """Names of the scalar kernel parameters of noise model `noise` (a name, an alias or a
    `NoiseModel`): the model class's `NoiseModel.kernel_fields`, `("nu",)` for Student-t,
    `()` for Gaussian noise."""
    if isinstance(noise, NoiseModel):
        return noise.kernel_fields
    return {"gaussian": Gaussian, "minibatch": Gaussian, "student-t": StudentT}[canonical_name(noise)].kernel_fields


def get(noise, **params) -> NoiseModel:
    """Resolve `"gaussian"`, `"student-t"` (`nu=...`) or `"minibatch"` (Gaussian with
    `sigma = sigma1/sqrt(B)`), or pass a `NoiseModel` through."""
    if isinstance(noise, NoiseModel):
        return noise
    key = canonical_name(noise)
    allowed = {"gaussian": ("sigma", "Sigma"), "minibatch": ("sigma", "Sigma"), "student-t": ("nu", "sigma")}[key]
    extra = sorted(set(params) - set(allowed))
    if extra:  # e.g. nu= with Gaussian noise (a TypeError from the constructor otherwise)
        raise NoiseModelError(f"noise model {key!r} takes no parameter {', '.join(extra)}; allowed: "
                              f"{', '.join(allowed)}" + (" (nu is for noise='student-t')" if "nu" in extra else ""))
    if key == "gaussian":
        return Gaussian(**params)
    if key == "minibatch":
        return Gaussian(batch=True, **params)
    return StudentT(**params)

r"""Gradient-noise models: ``g = grad + s*z`` with ``z`` standardized.

Each model gives the moments the expectation engine needs, in closed form:

* :math:`\mathbb E z^n` (Gaussian: :math:`(n-1)!!`; Student-t with scale ``sigma``:
  :math:`\nu^{n/2}\Gamma(\frac{n+1}2)\Gamma(\frac{\nu-n}2)/(\sqrt\pi\,\Gamma(\frac\nu2))`, finite only for
  :math:`n<\nu`);
* :math:`\mathbb E[z^n\operatorname{sign}(z+r)]` (Gaussian for every ``n`` by integration by parts;
  Student-t for ``n = 0, 1``), from which ``sign``, ``Abs``, ``Heaviside`` and ``Max(0, .)`` of an
  affine function of ``g`` follow.

The Student-t CDF is written out as in the reference:
:math:`2F_\nu(r)-1 = \frac{2r\,\Gamma(\frac{\nu+1}2)}{\sqrt{\pi\nu}\,\Gamma(\frac\nu2)}\,{}_2F_1(\tfrac12,\tfrac{\nu+1}2;\tfrac32;-\tfrac{r^2}\nu)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import sympy as sp

from .errors import ExpectationError, NoiseModelError, UnknownNameError
from .symbols import sym

__all__ = ["NoiseModel", "Gaussian", "StudentT", "get", "names", "student_t_sign_mean"]

_nu, _sigma, _sigma1, _B = sym("nu"), sym("sigma"), sym("sigma1"), sym("B")


def student_t_sign_mean(r: sp.Expr, nu: sp.Expr = _nu) -> sp.Expr:
    """:math:`2F_\\nu(r) - 1`, the mean of ``sign(r + T_nu)``, with the hypergeometric form."""
    return (
        2 * r * sp.gamma((nu + 1) / 2) / (sp.sqrt(sp.pi * nu) * sp.gamma(nu / 2))
        * sp.hyper([sp.S.Half, (nu + 1) / 2], [sp.Rational(3, 2)], -(r**2) / nu)
    )


def _student_t_pdf(r: sp.Expr, nu: sp.Expr) -> sp.Expr:
    return sp.gamma((nu + 1) / 2) / (sp.sqrt(sp.pi * nu) * sp.gamma(nu / 2)) * (1 + r**2 / nu) ** (-(nu + 1) / 2)


@dataclass(frozen=True)
class NoiseModel:
    """Base class: ``g = grad + scale*z``.

    ``scale`` is ``sigma`` (NOTATION: the std, or Student-t scale, at the batch size used), or
    ``sigma1/sqrt(B)`` for the minibatch form.  ``Sigma`` (optional, numeric) is a full noise
    covariance across coordinates; it is only used where the update is linear in the noise.
    """

    name: str = "noise"
    batch: bool = False
    Sigma: tuple | None = field(default=None, compare=True)
    values: tuple = ()  # numeric values (name, value) checked at construction

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
    """Gaussian noise, ``z ~ N(0, 1)`` per coordinate (``Sigma`` correlates coordinates)."""

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

    def sample(self, rng, size, nu=None):
        return rng.standard_normal(size)


@dataclass(frozen=True)
class StudentT(NoiseModel):
    """Student-t noise with ``nu`` degrees of freedom; ``sigma`` is the scale (``g = grad + sigma*T_nu``).

    Any ``nu > 0`` is accepted (the variance is infinite for ``nu <= 2``: an update linear in ``g``
    then has no diffusion limit and the derivation says so; sign-based updates are fine).
    """

    name: str = "student-t"
    nu: object = None

    def __init__(self, nu=None, sigma=None, batch: bool = False) -> None:
        if nu is not None:
            try:
                ok = math.isfinite(float(nu)) and float(nu) > 0
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise NoiseModelError(f"Student-t degrees of freedom nu={nu!r} is invalid; allowed: nu > 0")
        _check_sigma(sigma)
        object.__setattr__(self, "name", "student-t")
        object.__setattr__(self, "batch", bool(batch))
        object.__setattr__(self, "Sigma", None)
        object.__setattr__(self, "nu", None if nu is None else float(nu))
        vals = [] if sigma is None else [("sigma", _freeze(sigma))]
        object.__setattr__(self, "values", tuple(vals + ([] if nu is None else [("nu", float(nu))])))

    @property
    def nu_expr(self) -> sp.Expr:
        return _nu if self.nu is None else sp.nsimplify(self.nu)

    def _require(self, n: int, what: str) -> None:
        if self.nu is not None and not self.nu > n:
            raise ExpectationError(
                f"{what} is infinite for Student-t noise with nu={self.nu:g} (it needs nu > {n}). An update "
                f"whose one-step moments involve E[z**{n}] has no SDE limit under this noise; sign-based "
                "optimizers (signsgd, signum, lion) are defined for every nu > 0."
            )

    def moment(self, n: int) -> sp.Expr:
        if n == 0:
            return sp.S.One
        self._require(n, f"E[z**{n}]")
        if n % 2:
            return sp.S.Zero
        nu = self.nu_expr
        return sp.simplify(
            nu ** sp.Rational(n, 2) * sp.gamma(sp.Rational(n + 1, 2)) * sp.gamma((nu - n) / 2)
            / (sp.sqrt(sp.pi) * sp.gamma(nu / 2))
        )

    def conditions(self, n: int) -> list[str]:
        return [f"nu > {n}"] if n >= 1 and self.nu is None else []

    def sign_mean(self, r: sp.Expr) -> sp.Expr:
        return student_t_sign_mean(r, self.nu_expr)

    def sign_moment(self, n: int, r: sp.Expr) -> sp.Expr:
        if n == 0:
            return self.sign_mean(r)
        if n == 1:
            # E[z 1{z > c}] = (nu + c^2)/(nu - 1) f_nu(c) for nu > 1; E[z sign(z + r)] = 2 E[z 1{z > -r}].
            self._require(1, "E[z*sign(z + r)]")
            nu = self.nu_expr
            return 2 * (nu + r**2) / (nu - 1) * _student_t_pdf(r, nu)
        raise ExpectationError(
            f"E[z**{n} * sign(z + r)] under Student-t noise has no built-in closed form (only n = 0, 1). "
            "Register one with sdederive.register_expectation(sympy.sign, rule)."
        )

    def sample(self, rng, size, nu=None):
        nu = self.nu if self.nu is not None else nu
        if nu is None:
            raise NoiseModelError("sampling Student-t noise needs a numeric nu")
        return rng.standard_t(nu, size)


def _freeze(v):
    arr = np.asarray(v, dtype=float)
    return float(arr) if arr.ndim == 0 else tuple(arr.ravel().tolist())


_NAMES = {"gaussian": "gaussian", "normal": "gaussian", "student-t": "student-t", "student_t": "student-t",
          "studentt": "student-t", "t": "student-t", "minibatch": "minibatch"}


def names() -> list[str]:
    return ["gaussian", "student-t", "minibatch"]


def get(noise, **params) -> NoiseModel:
    """Resolve ``"gaussian"``, ``"student-t"`` (``nu=...``) or ``"minibatch"`` (Gaussian with
    ``sigma = sigma1/sqrt(B)``), or pass a :class:`NoiseModel` through."""
    if isinstance(noise, NoiseModel):
        return noise
    if not isinstance(noise, str) or noise.strip().lower() not in _NAMES:
        raise UnknownNameError("noise model", noise, names())
    key = _NAMES[noise.strip().lower()]
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

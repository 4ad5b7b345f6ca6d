r"""`Quadratic`: $f(x) = \tfrac12 x^\top H x$ with `H = diag(h)` or a dense symmetric PSD `H`;
gradient noise `g = Hx + \xi` with per-coordinate scale `sigma` (Gaussian or Student-t,
`xi_i = sigma_i z_i`) or a full Gaussian covariance `Sigma` (`xi = L z`, `L L^T = Sigma`).  With
`noise="multivariate-t", nu=...` the noise is the vector engine's multivariate Student-t
`xi = sqrt(nu/W) L z`, `W ~ chi2_nu` (one per draw), with scale matrix `Sigma` (or `diag(sigma**2)`); only the
vector simulators draw it.

Its one description (`Quadratic.code`) gives the numba and CUDA kernel helpers and the numpy
reference (`sdederive.problems.description`)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import sympy as sp

from sdederive.problems.base import Problem, ProblemError, _dim, _noise_kind, _psd_matrix, _vec
from sdederive.problems.description import IX, JX, D, Loop, ProblemCode, V, X, Z, dsum, mat, vec

__all__ = ["Quadratic"]

_h, _sigma, _H, _L = vec("h"), vec("sigma"), mat("H"), mat("L")


@functools.cache
def _code(dense: bool, correlated: bool) -> ProblemCode:
    i, j = IX, JX
    if dense:
        grad = Loop(dsum(_H[i, j] * X[j]))
        hess = Loop(_H[i, i])
        hvp = Loop(dsum(_H[i, j] * V[j]))
        loss = sp.Sum(sp.Rational(1, 2) * X[i] * dsum(_H[i, j] * X[j]), (i, 0, D - 1))
    else:
        grad = Loop(_h[i] * X[i])
        hess = Loop(_h[i])
        hvp = Loop(_h[i] * V[i])
        loss = sp.Sum(sp.Rational(1, 2) * _h[i] * X[i] ** 2, (i, 0, D - 1))
    return ProblemCode(grad=grad, hess_diag=hess, hvp=hvp, loss=loss,
                       fields=("sigma",) if dense else ("h", "sigma"),
                       matrices=(("H", "PM"), ("L", "PL")),
                       noise_scale=Loop(_sigma[i]),
                       noise_factor=Loop(dsum(_L[i, j] * Z[j])) if correlated else None)


@dataclass(frozen=True, eq=False)
class Quadratic(Problem):
    """`f = x^T H x / 2`; give `h` (diagonal) or `H` (dense) and `sigma` or `Sigma`."""

    h: np.ndarray | None = None
    H: np.ndarray | None = None
    sigma: np.ndarray | None = None
    Sigma: np.ndarray | None = None
    L: np.ndarray | None = field(default=None, repr=False)
    #: `(lambda, U)` of `Sigma = U diag(lambda) U^T` (`numpy.linalg.eigh`), whose `L = U diag(lambda)^(1/2)`
    noise_eigen: tuple | None = field(default=None, repr=False)

    def __init__(self, h=None, H=None, sigma=None, Sigma=None, noise="gaussian", nu=None, x0=None, d=None):
        if (h is None) == (H is None):
            raise ProblemError("a quadratic needs exactly one of h (diagonal curvature) or H (dense matrix)")
        d = _dim(d)
        if H is not None:
            Hm = _psd_matrix("H", H, d, "the Hessian of a convex quadratic")
            dd = Hm.shape[0]
            hv = None
        else:
            hv = _vec("h", h, d if d is not None else (None if x0 is None else np.asarray(x0).size), nonneg=True)
            dd = hv.size
            Hm = None
        nk, nuf = _noise_kind(noise, nu)
        if (sigma is None) == (Sigma is None):
            raise ProblemError("give the gradient noise as exactly one of sigma (per coordinate) or Sigma (matrix)")
        L = None
        eig = None
        if Sigma is not None:
            if nk == "student-t":
                raise ProblemError("a full covariance Sigma is not supported with noise='student-t' (an independent t "
                                   "for each coordinate, scale sigma_i); give it a per-coordinate sigma, or use "
                                   "noise='multivariate-t' (xi = sqrt(nu/W) Sigma^(1/2) z, one W ~ chi2_nu per draw: the "
                                   "vector engine's law, with Sigma its scale matrix)")
            S = _psd_matrix("Sigma", Sigma, dd, "a covariance")
            # eigen-factor (works for singular Sigma, unlike Cholesky); L L^T = Sigma
            ww, Vm = np.linalg.eigh(S)
            L = Vm * np.sqrt(np.clip(ww, 0, None))
            eig = (np.clip(ww, 0, None), Vm)
            sv = np.sqrt(np.diag(S))
        else:
            sv = _vec("sigma", sigma, dd, nonneg=True)
            S = None
        x0v = _vec("x0", np.ones(dd) if x0 is None else x0, dd)
        object.__setattr__(self, "x0", x0v)
        object.__setattr__(self, "noise", nk)
        object.__setattr__(self, "nu", nuf)
        object.__setattr__(self, "h", hv)
        object.__setattr__(self, "H", Hm)
        object.__setattr__(self, "sigma", sv)
        object.__setattr__(self, "Sigma", S)
        object.__setattr__(self, "L", L)
        object.__setattr__(self, "noise_eigen", eig)

    @property
    def kind(self) -> str:  # type: ignore[override]
        return "quadratic_dense" if self.H is not None else "quadratic_diag"

    @property
    def correlated(self) -> bool:
        return self.Sigma is not None and not np.allclose(self.Sigma, np.diag(np.diag(self.Sigma)))

    def fingerprint_data(self) -> str:
        return f"{self.kind}:{self.noise}:{'corr' if self.Sigma is not None else 'diag'}"

    # -- the description and its data ---------------------------------------------------------------
    def code(self) -> ProblemCode:
        return _code(self.H is not None, self.Sigma is not None)

    def fields(self) -> tuple:
        return (("sigma", "d"),) if self.H is not None else (("h", "d"), ("sigma", "d"))

    def pack_values(self) -> dict:
        return {"sigma": self.sigma} if self.H is not None else {"h": self.h, "sigma": self.sigma}

    def matrices(self) -> dict:
        out = {}
        if self.H is not None:
            out["PM"] = self.H
        if self.L is not None:
            out["PL"] = self.L
        return out

    def hessian_coupling(self) -> str | None:
        if self.H is not None and not np.array_equal(self.H, np.diag(np.diag(self.H))):
            return "a quadratic with a non-diagonal H"
        return None

    def hessian(self) -> np.ndarray:
        """The `d x d` Hessian `H` (`diag(h)` for a diagonal quadratic)."""
        return self.H if self.H is not None else np.diag(self.h)

    def noise_factor(self) -> np.ndarray | None:
        """`L` with `L L^T = Sigma` (`None` for per-coordinate noise)."""
        return self.L

    def eigenbasis(self) -> tuple[np.ndarray, "Quadratic"]:
        r"""`(U, Q)`: the eigenvectors `U` of a full `Sigma = U Lambda U^T` and the same problem in the coordinates
        `y = U^T x`, `Q = Quadratic(H=U^T H U, sigma=sqrt(lambda), x0=U^T x0)` with the same noise law: its noise is
        diagonal, `U^T L z = Lambda^(1/2) z` for the same Gaussians `z`, and its loss at `y` is this loss at `U y`
        (`sdederive.simulate.vector_eigenbasis`; `U^T H U` is dense for a diagonal `h` too).  Only for a full
        `Sigma`."""
        if self.noise_eigen is None:
            raise ProblemError("the eigenbasis of the noise is that of a full Sigma; this quadratic has per-coordinate "
                               "sigma")
        lam, U = self.noise_eigen
        Hy = U.T @ self.hessian() @ U
        Hy = 0.5 * (Hy + Hy.T)  # symmetric to the last bit (the product is symmetric up to rounding)
        return U, Quadratic(H=Hy, sigma=np.sqrt(lam), noise=self.noise, nu=self.nu, x0=U.T @ self.x0)

    def to_dict(self) -> dict:
        out: dict = {"kind": "quadratic", "noise": self.noise, "x0": self.x0.tolist()}
        out.update({"h": self.h.tolist()} if self.H is None else {"H": self.H.tolist()})
        out.update({"sigma": self.sigma.tolist()} if self.Sigma is None else {"Sigma": self.Sigma.tolist()})
        if self.nu is not None:
            out["nu"] = self.nu
        return out

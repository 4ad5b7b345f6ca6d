r"""Ready-made problems for validation runs.

* `breast_cancer`: binary logistic regression on the Wisconsin breast-cancer data
  (569 examples, 30 features; shipped inside the scikit-learn wheel, nothing is downloaded).
  Labels are mapped to `{-1, +1}` (`+1` = benign, scikit-learn's class 1), as
  `sdederive.LogisticRegression` expects.  The discrete optimizer sees real minibatches of
  `B` examples drawn with replacement; the SDE the per-example gradient covariance
  $\Sigma(x)/B$ (see `sdederive.problems`).
* `synthetic_logistic`: `sdederive.LogisticRegression.synthetic`.
* `quadratic`: $f(x) = \tfrac12 x^\top H x$ with eigenvalues
  `h = geomspace(h_min, h_min*cond, d)`, diagonal or rotated (dense `H = Q diag(h) Q^T`),
  Gaussian or Student-t noise, isotropic or anisotropic noise scales
  `sigma_i = sigma*(h_i/h_max)**sigma_power`.

`get` resolves the names used by the command line (`quadratic`, `breast-cancer`,
`synthetic-logistic`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from sdederive.problems import LogisticRegression, Problem, Quadratic

from .errors import ValidationError

__all__ = ["breast_cancer", "synthetic_logistic", "quadratic", "get", "names"]


def breast_cancer(B: int = 32, l2: float = 1e-3, standardize: bool = True, intercept: bool = False,
                  x0=None) -> LogisticRegression:
    """Logistic regression on the Breast Cancer Wisconsin data (569 samples, 30 features), the copy
    of `sklearn.datasets.load_breast_cancer` bundled with the validators (no scikit-learn needed;
    labels: benign `+1`, malignant `-1`).

    Parameters
    ----------
    B
        minibatch size of the discrete optimizer (and `Sigma(x)/B` for the SDE).
    l2
        ridge coefficient $\\lambda$ of $f + \\tfrac\\lambda2 |x|^2$.
    standardize
        centre every feature and scale it to unit variance (the raw features span five
        orders of magnitude, which makes any fixed step size unstable).
    intercept
        append a constant-1 column (a bias weight); `d` becomes 31.
    x0
        initial weights (default zeros: loss `log 2`).
    """
    A, y = _breast_cancer_data()
    A = np.asarray(A, dtype=float)
    if standardize:
        A = (A - A.mean(0)) / A.std(0)
    if intercept:
        A = np.hstack([A, np.ones((A.shape[0], 1))])
    labels = np.where(np.asarray(y) == 1, 1.0, -1.0)
    return LogisticRegression(A, labels, B=B, l2=l2, x0=x0)


def _breast_cancer_data() -> tuple[np.ndarray, np.ndarray]:
    """`(A, y)` from `validators/data/breast_cancer.npz` (see the README beside it)."""
    from importlib.resources import files

    with files(__package__).joinpath("data", "breast_cancer.npz").open("rb") as fh, np.load(fh) as z:
        return np.asarray(z["A"], dtype=float), np.asarray(z["y"], dtype=int)


def synthetic_logistic(n: int = 512, d: int = 10, B: int = 8, seed: int = 0, l2: float = 1e-3,
                       scale=None) -> LogisticRegression:
    """Gaussian features with column scales `scale` (default `geomspace(0.3, 3, d)`) and labels
    from a logistic model with a random unit `w*` (`sdederive.LogisticRegression.synthetic`)."""
    return LogisticRegression.synthetic(n=n, d=d, B=B, seed=seed, l2=l2, scale=scale)


def quadratic(d: int = 10, cond: float = 100.0, sigma=1.0, noise: str = "gaussian", nu: float | None = None,
              dense: bool = False, h_min: float = 0.1, sigma_power: float = 0.0, x0=1.0,
              seed: int = 0) -> Quadratic:
    r"""A quadratic $f = \tfrac12 x^\top H x$ with condition number `cond`.

    Parameters
    ----------
    d
        dimension.
    cond
        `h_max/h_min`; eigenvalues `h = geomspace(h_min, h_min*cond, d)`.
    sigma
        noise scale (a scalar or a length-`d` vector), before the anisotropy factor.
    noise
        `"gaussian"` or `"student-t"` (with `nu`).
    dense
        rotate by a random orthogonal `Q` (seeded): `H = Q diag(h) Q^T`; with Gaussian noise
        the noise covariance is rotated too, `Sigma = Q diag(sigma_i^2) Q^T` (correlated noise);
        Student-t noise keeps per-coordinate scales `sigma_i`.
    sigma_power
        anisotropic noise `sigma_i = sigma*(h_i/h_max)**sigma_power` (`0`: isotropic,
        `0.5`: `Sigma` proportional to `H`, as for a well-specified model near its minimum).
    x0
        initial point (scalar or vector).
    seed
        seed of the rotation.
    """
    if not isinstance(d, (int, np.integer)) or isinstance(d, bool) or d < 1:
        raise ValidationError(f"d={d!r} is invalid; allowed: an integer >= 1")
    if not np.isfinite(cond) or cond < 1:
        raise ValidationError(f"cond={cond!r} is invalid; allowed: a finite number >= 1")
    if not np.isfinite(h_min) or h_min <= 0:
        raise ValidationError(f"h_min={h_min!r} is invalid; allowed: a finite number > 0")
    h = np.geomspace(h_min, h_min * cond, int(d))
    sig = np.broadcast_to(np.asarray(sigma, dtype=float), (int(d),)) * (h / h.max()) ** float(sigma_power)
    x0v = np.broadcast_to(np.asarray(x0, dtype=float), (int(d),)).copy()
    if not dense:
        return Quadratic(h=h, sigma=sig, noise=noise, nu=nu, x0=x0v)
    rng = np.random.default_rng(seed)
    Q, R = np.linalg.qr(rng.standard_normal((int(d), int(d))))
    Q = Q * np.sign(np.diag(R))
    H = (Q * h) @ Q.T
    H = 0.5 * (H + H.T)
    key = str(noise).strip().lower().replace("_", "-")
    if key in ("gaussian", "normal"):
        S = (Q * sig**2) @ Q.T
        return Quadratic(H=H, Sigma=0.5 * (S + S.T), x0=x0v)
    return Quadratic(H=H, sigma=sig, noise=noise, nu=nu, x0=x0v)


_BUILTINS: dict[str, Callable[..., Problem]] = {
    "quadratic": quadratic,
    "breast-cancer": breast_cancer,
    "synthetic-logistic": synthetic_logistic,
}


def names() -> list[str]:
    """Names accepted by `get` (and by `sdederive validate --problem`)."""
    return sorted(_BUILTINS)


def get(name: str, **kw) -> Problem:
    """A built-in problem by name (`quadratic`, `breast-cancer`, `synthetic-logistic`)."""
    key = str(name).strip().lower().replace("_", "-")
    if key not in _BUILTINS:
        raise ValidationError(f"unknown problem {name!r}; valid problems: {', '.join(names())} "
                              "(or a JSON problem file)")
    return _BUILTINS[key](**kw)

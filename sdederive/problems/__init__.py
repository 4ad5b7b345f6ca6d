r"""Objective functions the simulators compile into their kernels.

* :class:`Quadratic`: :math:`f(x) = \tfrac12 x^\top H x` with ``H = diag(h)`` or a dense symmetric PSD
  ``H``; gradient noise ``g = Hx + \xi`` with per-coordinate scale ``sigma`` (Gaussian or Student-t,
  ``xi_i = sigma_i z_i``) or a full Gaussian covariance ``Sigma`` (``xi = L z``, ``L L^T = Sigma``).
* :class:`LogisticRegression`: :math:`f(x) = \frac1n\sum_j \log(1+e^{-y_j a_j^\top x}) + \frac{\lambda}2|x|^2`;
  the discrete optimizer sees real minibatches (``B`` examples drawn with replacement), the SDE the
  per-example gradient covariance ``Sigma(x)/B`` applied through the low-rank factor
  :math:`\xi = (nB)^{-1/2}\sum_j (\nabla f_j - \nabla f)\,w_j`, ``w_j ~ N(0,1)`` (never a ``d x d``
  square root).
* :class:`Custom`: any ``f`` written as a sympy expression of ``x_0, ..., x_{d-1}``; gradient and
  Hessian diagonal by ``sympy.diff``; noise as for :class:`Quadratic` (per-coordinate ``sigma``).

:func:`from_dict` reads the JSON problem files of the CLI.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sympy as sp

from sdederive._safe_expr import OBJECTIVE_FUNCTIONS, parse_expr
from sdederive.errors import NoiseModelError, SdederiveError, UnknownNameError

__all__ = ["Problem", "Quadratic", "LogisticRegression", "Custom", "from_dict", "load", "ProblemError"]


class ProblemError(SdederiveError):
    """A problem description that cannot be simulated."""


def _short(v, n: int = 60) -> str:
    text = repr(v)
    return text if len(text) <= n else text[: n - 3] + "..."


def _as_float_array(name: str, v) -> np.ndarray:
    """``np.asarray(v, float)``, refusing text, booleans and ragged nested lists with a message."""
    if isinstance(v, (str, bytes, bool, np.bool_)):
        raise ProblemError(f"{name}={_short(v)} is not a number; allowed: a number or a list of numbers")
    try:
        arr = np.asarray(v, dtype=float)
    except (TypeError, ValueError):
        raise ProblemError(f"{name}={_short(v)} is not a number, a list of numbers or a rectangular list of lists "
                           "(ragged rows or non-numeric entries)") from None
    return arr


def _dim(d) -> int | None:
    """The dimension field ``d``: ``None`` or an integer >= 1 (its memory is checked when vectors of that size
    are built)."""
    if d is None:
        return None
    if isinstance(d, (bool, np.bool_)) or not isinstance(d, (int, np.integer, float)) or (
            isinstance(d, float) and not d.is_integer()) or d < 1:
        raise ProblemError(f"dimension d={_short(d)} is invalid; allowed: an integer >= 1")
    d = int(d)
    from sdederive.simulate._memory import check_memory

    # h, sigma, x0 and the simulator's per-path copy of x, at 8 bytes a coordinate
    check_memory(4 * 8 * d, f"a problem with d={d}")
    return d


def _vec(name: str, v, d: int | None, *, positive: bool = False, nonneg: bool = False) -> np.ndarray:
    arr = _as_float_array(name, v)
    if arr.ndim == 0:
        if d is None:
            raise ProblemError(f"{name}={v!r}: a scalar needs the dimension from another field")
        arr = np.full(d, float(arr))
    if arr.ndim != 1 or (d is not None and arr.size != d):
        raise ProblemError(f"{name} must be a scalar or a vector of length d={d}; got shape {arr.shape}")
    if arr.size == 0:
        raise ProblemError(f"{name} is empty (d = 0); allowed: at least one coordinate")
    if not np.all(np.isfinite(arr)):
        raise ProblemError(f"{name} has non-finite entries: {arr[~np.isfinite(arr)][:3].tolist()}; allowed: finite")
    if positive and np.any(arr <= 0):
        raise ProblemError(f"{name} must be > 0 in every coordinate; got {arr[arr <= 0][:3].tolist()}")
    if nonneg and np.any(arr < 0):
        raise ProblemError(f"{name} must be >= 0 in every coordinate; got {arr[arr < 0][:3].tolist()}")
    return arr


def _psd_matrix(name: str, M, dd: int | None, what: str) -> np.ndarray:
    """A symmetric positive semi-definite ``dd x dd`` matrix, checked in the order shape, finite, symmetric,
    PSD (so a NaN is reported as a NaN, not as an asymmetry).  The PSD test allows eigenvalues down to
    ``-1e-10 * max(1, |lambda|_max)`` (rounding of a singular matrix)."""
    S = _as_float_array(name, M)
    if S.ndim != 2 or S.shape[0] != S.shape[1] or (dd is not None and S.shape[0] != dd):
        size = f"{dd}x{dd}" if dd is not None else "square"
        raise ProblemError(f"{name} must be a {size} matrix ({what}); got shape {S.shape}")
    if S.shape[0] == 0:
        raise ProblemError(f"{name} is empty (d = 0); allowed: at least one coordinate")
    if not np.all(np.isfinite(S)):
        bad = np.argwhere(~np.isfinite(S))[0]
        raise ProblemError(f"{name} has a non-finite entry {name}[{bad[0]}][{bad[1]}] = {S[tuple(bad)]}; "
                           "allowed: finite numbers")
    scale = float(np.abs(S).max())
    if not np.allclose(S, S.T, rtol=1e-12, atol=1e-14 * max(scale, 1.0)):
        i, j = np.unravel_index(int(np.argmax(np.abs(S - S.T))), S.shape)
        raise ProblemError(f"{name} must be symmetric; {name}[{i}][{j}] = {S[i, j]:.6g} but {name}[{j}][{i}] = "
                           f"{S[j, i]:.6g}")
    w = np.linalg.eigvalsh(S)
    if w.min() < -1e-10 * max(1.0, abs(w).max()):
        raise ProblemError(f"{name} is not positive semi-definite (smallest eigenvalue {w.min():.3g}); allowed: "
                           f"a PSD matrix ({what})")
    return S


def _noise_kind(noise: str, nu) -> tuple[str, float | None]:
    key = str(noise).strip().lower().replace("_", "-")
    if key in ("gaussian", "normal"):
        return "gaussian", None
    if key in ("student-t", "studentt", "t"):
        try:
            nuf = float(nu)
        except (TypeError, ValueError):
            raise NoiseModelError(f"Student-t noise needs a numeric nu > 0; got nu={nu!r}") from None
        if not np.isfinite(nuf) or nuf <= 0:
            raise NoiseModelError(f"Student-t degrees of freedom nu={nu!r} is invalid; allowed: nu > 0")
        return "student-t", nuf
    raise UnknownNameError("noise model", noise, ["gaussian", "student-t"])


@dataclass(frozen=True, eq=False)
class Problem:
    """Base class.  ``kind`` selects the kernel fragment; ``x0`` the initial parameter."""

    x0: np.ndarray
    noise: str = "gaussian"
    nu: float | None = None

    kind = "problem"

    @property
    def d(self) -> int:
        return int(self.x0.size)

    def loss(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def fingerprint_data(self) -> str:
        """What the generated code depends on (not the numbers, which are kernel arguments)."""
        return f"{self.kind}:{self.noise}"

    def to_dict(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True, eq=False)
class Quadratic(Problem):
    """``f = x^T H x / 2``; give ``h`` (diagonal) or ``H`` (dense) and ``sigma`` or ``Sigma``."""

    h: np.ndarray | None = None
    H: np.ndarray | None = None
    sigma: np.ndarray | None = None
    Sigma: np.ndarray | None = None
    L: np.ndarray | None = field(default=None, repr=False)

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
        if Sigma is not None:
            if nk != "gaussian":
                raise ProblemError("a full covariance Sigma is only supported for Gaussian noise; give Student-t "
                                   "noise a per-coordinate sigma")
            S = _psd_matrix("Sigma", Sigma, dd, "a covariance")
            # eigen-factor (works for singular Sigma, unlike Cholesky); L L^T = Sigma
            ww, V = np.linalg.eigh(S)
            L = V * np.sqrt(np.clip(ww, 0, None))
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

    @property
    def kind(self) -> str:  # type: ignore[override]
        return "quadratic_dense" if self.H is not None else "quadratic_diag"

    @property
    def correlated(self) -> bool:
        return self.Sigma is not None and not np.allclose(self.Sigma, np.diag(np.diag(self.Sigma)))

    def fingerprint_data(self) -> str:
        return f"{self.kind}:{self.noise}:{'corr' if self.Sigma is not None else 'diag'}"

    def hessian(self) -> np.ndarray:
        return self.H if self.H is not None else np.diag(self.h)

    def loss(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        if self.H is None:
            return 0.5 * np.sum(self.h * x * x, axis=-1)
        return 0.5 * np.einsum("...i,ij,...j->...", x, self.H, x)

    def to_dict(self) -> dict:
        out: dict = {"kind": "quadratic", "noise": self.noise, "x0": self.x0.tolist()}
        out.update({"h": self.h.tolist()} if self.H is None else {"H": self.H.tolist()})
        out.update({"sigma": self.sigma.tolist()} if self.Sigma is None else {"Sigma": self.Sigma.tolist()})
        if self.nu is not None:
            out["nu"] = self.nu
        return out


@dataclass(frozen=True, eq=False)
class LogisticRegression(Problem):
    """Binary logistic regression on data ``A`` (n x d) with labels ``y`` in {-1, +1}, batch size ``B``,
    optional ridge ``l2``."""

    A: np.ndarray | None = None
    y: np.ndarray | None = None
    B: int = 1
    l2: float = 0.0

    kind = "logistic"

    def __init__(self, A, y, B: int = 1, l2: float = 0.0, x0=None):
        Am = np.ascontiguousarray(_as_float_array("A", A))
        if Am.ndim != 2 or Am.shape[0] < 2 or Am.shape[1] < 1:
            raise ProblemError(f"A must be an (n, d) matrix with n >= 2 examples; got shape {Am.shape}")
        if not np.all(np.isfinite(Am)):
            bad = np.argwhere(~np.isfinite(Am))[0]
            raise ProblemError(f"A has a non-finite entry A[{bad[0]}][{bad[1]}] = {Am[tuple(bad)]}; allowed: finite "
                               "numbers")
        yv = _as_float_array("y", y).ravel()
        if yv.size != Am.shape[0] or not np.all(np.isin(yv, (-1.0, 1.0))):
            raise ProblemError(f"y must hold n={Am.shape[0]} labels in {{-1, +1}}; got {np.unique(yv)[:5]}")
        if isinstance(B, (bool, np.bool_)) or not isinstance(B, (int, np.integer, float)) or not np.isfinite(B) \
                or int(B) != B or B < 1:
            raise ProblemError(f"batch size B={B!r} is invalid; allowed: an integer >= 1")
        if isinstance(l2, (bool, np.bool_)) or not isinstance(l2, (int, np.integer, float)) or not np.isfinite(l2) \
                or l2 < 0:
            raise ProblemError(f"l2={l2!r} is invalid; allowed: a finite number >= 0")
        d = Am.shape[1]
        object.__setattr__(self, "x0", _vec("x0", np.zeros(d) if x0 is None else x0, d))
        object.__setattr__(self, "noise", "minibatch")
        object.__setattr__(self, "nu", None)
        object.__setattr__(self, "A", Am)
        object.__setattr__(self, "y", yv)
        object.__setattr__(self, "B", int(B))
        object.__setattr__(self, "l2", float(l2))

    @property
    def n(self) -> int:
        return int(self.A.shape[0])

    @classmethod
    def synthetic(cls, n: int = 512, d: int = 10, B: int = 8, seed: int = 0, l2: float = 1e-3,
                  scale: np.ndarray | None = None) -> LogisticRegression:
        """Gaussian features (column scales ``scale``, default ``geomspace(0.3, 3, d)``), labels from a
        logistic model with a random unit ``w*``."""
        rng = np.random.default_rng(seed)
        sc = np.geomspace(0.3, 3.0, d) if scale is None else np.asarray(scale, float)
        A = rng.standard_normal((n, d)) * sc
        w = rng.standard_normal(d)
        w /= np.linalg.norm(w)
        p = 1.0 / (1.0 + np.exp(-A @ w))
        y = np.where(rng.random(n) < p, 1.0, -1.0)
        return cls(A, y, B=B, l2=l2)

    def margins(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, float) @ self.A.T * self.y

    def loss(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        return np.mean(np.logaddexp(0.0, -self.margins(x)), axis=-1) + 0.5 * self.l2 * np.sum(x * x, axis=-1)

    def per_example_grads(self, x: np.ndarray) -> np.ndarray:
        """``(n, d)``: gradient of each example's loss (ridge included) at a single ``x``."""
        s = 1.0 / (1.0 + np.exp(self.margins(x)))  # sigma(-y a.x)
        return -(self.y * s)[:, None] * self.A + self.l2 * np.asarray(x, float)[None, :]

    def fingerprint_data(self) -> str:
        return "logistic"

    def to_dict(self) -> dict:
        return {"kind": "logistic", "A": self.A.tolist(), "y": self.y.tolist(), "B": self.B, "l2": self.l2,
                "x0": self.x0.tolist()}


@dataclass(frozen=True, eq=False)
class Custom(Problem):
    """``f`` a sympy expression of the symbols ``x_0 ... x_{d-1}`` (``sympy.symbols("x_0:d")``), or its text
    (``"x_0**4/4 + x_1**2/2"``, read by the safe parser of :mod:`sdederive._safe_expr`: numbers,
    ``+ - * / **``, ``x_i``, ``pi``, ``E`` and ``sqrt exp log sin cos tanh atan erf erfc``)."""

    f: sp.Expr | None = None
    sigma: np.ndarray | None = None
    xs: tuple = ()

    kind = "custom"

    def __init__(self, f, sigma, x0, noise: str = "gaussian", nu=None):
        x0v = _vec("x0", x0, None if np.ndim(x0) else None)
        d = x0v.size
        if d == 0:
            raise ProblemError("x0 of a custom problem is empty; allowed: a list of d >= 1 numbers")
        xs = sp.symbols(f"x_0:{d}", real=True)
        f = _objective(f, xs)
        nk, nuf = _noise_kind(noise, nu)
        object.__setattr__(self, "x0", x0v)
        object.__setattr__(self, "noise", nk)
        object.__setattr__(self, "nu", nuf)
        object.__setattr__(self, "f", f)
        object.__setattr__(self, "sigma", _vec("sigma", sigma, d, nonneg=True))
        object.__setattr__(self, "xs", tuple(xs))

    def fingerprint_data(self) -> str:
        return f"custom:{self.noise}:{sp.srepr(self.f)}"

    def loss(self, x: np.ndarray) -> np.ndarray:
        fn = sp.lambdify([self.xs], self.f, "numpy")
        x = np.asarray(x, float)
        return np.asarray(fn(np.moveaxis(x, -1, 0)), float) * np.ones(x.shape[:-1])

    def to_dict(self) -> dict:
        out = {"kind": "custom", "f": str(self.f), "sigma": self.sigma.tolist(), "x0": self.x0.tolist(),
               "noise": self.noise}
        if self.nu is not None:
            out["nu"] = self.nu
        return out


def _objective(f, xs: tuple) -> sp.Expr:
    """``f`` of a custom problem as a sympy expression of ``xs``.  Text (from a problem file, a sweep
    grid or the API) goes through the safe parser, never ``sympify``; a sympy expression is taken as it
    is, its plain ``x_i`` symbols replaced by the real ones."""
    d = len(xs)
    names = f"x_0..x_{d - 1} (d = len(x0) = {d})" if d > 1 else "x_0 (d = len(x0) = 1)"
    if isinstance(f, str):
        f = parse_expr(f, symbols={f"x_{i}": x for i, x in enumerate(xs)}, functions=OBJECTIVE_FUNCTIONS,
                       what="f of the custom problem", allowed=f"the variables {names}, pi and E")
    elif isinstance(f, (int, float)) and not isinstance(f, bool):
        f = sp.Float(f) if isinstance(f, float) else sp.Integer(f)
    elif not isinstance(f, sp.Expr):
        raise ProblemError(f"f of the custom problem is a {type(f).__name__} ({str(f)[:60]}); allowed: a scalar "
                           f"expression of {names}, as text (\"x_0**2 + 2*x_1**2\") or a sympy expression")
    f = f.xreplace({sp.Symbol(f"x_{i}"): xs[i] for i in range(d)})
    extra = sorted(str(s) for s in f.free_symbols - set(xs))
    if extra:
        raise ProblemError(f"f may only use {names}; it also uses {extra}")
    if f.has(sp.I, sp.zoo, sp.nan, sp.oo, -sp.oo):
        raise ProblemError(f"f = {sp.sstr(f)[:80]} of the custom problem is complex or infinite; allowed: a real, "
                           "finite objective")
    return f


_KEYS = {
    "quadratic": {"kind", "h", "H", "sigma", "Sigma", "noise", "nu", "x0", "d"},
    "logistic": {"kind", "A", "y", "B", "l2", "x0", "synthetic"},
    "custom": {"kind", "f", "sigma", "noise", "nu", "x0"},
}


def from_dict(spec: dict) -> Problem:
    """Build a problem from its JSON form, e.g.
    ``{"kind": "quadratic", "h": [1, 10], "sigma": [1, 1], "noise": "student-t", "nu": 3, "x0": [1, 1]}``,
    ``{"kind": "logistic", "synthetic": {"n": 512, "d": 10, "seed": 0}, "B": 8}``."""
    if not isinstance(spec, dict):
        raise ProblemError(f"a problem is a JSON object; got {type(spec).__name__}")
    kind = spec.get("kind", "quadratic")
    if kind not in _KEYS:
        raise UnknownNameError("problem kind", kind, _KEYS)
    unknown = sorted(set(spec) - _KEYS[kind])
    if unknown:
        raise ProblemError(f"unknown field(s) {unknown} for a {kind} problem; allowed: {sorted(_KEYS[kind])}")
    args = {k: v for k, v in spec.items() if k != "kind"}
    if kind == "quadratic":
        return Quadratic(**args)
    if kind == "custom":
        missing = [k for k in ("f", "sigma", "x0") if k not in args]
        if missing:
            raise ProblemError(f"a custom problem needs the field(s) {missing}; e.g. "
                               '{"kind": "custom", "f": "x_0**4/4 + x_1**2/2", "sigma": [1, 1], "x0": [1, 1]}')
        return Custom(**args)
    syn = args.pop("synthetic", None)
    if syn is not None:
        base = LogisticRegression.synthetic(**{k: v for k, v in syn.items()}, B=args.get("B", 8))
        return LogisticRegression(base.A, base.y, B=args.get("B", 8), l2=args.get("l2", base.l2), x0=args.get("x0"))
    return LogisticRegression(**args)


def load(path: str | Path) -> Problem:
    """Read a problem JSON file."""
    p = Path(path)
    if p.is_dir():
        raise ProblemError(f"problem file {str(p)!r} is a directory; allowed: a JSON problem file")
    try:
        spec = json.loads(p.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise ProblemError(f"problem file {str(p)!r} does not exist") from None
    except UnicodeDecodeError:
        raise ProblemError(f"problem file {str(p)!r} is not a text (UTF-8 JSON) file; a binary file such as "
                           ".npz cannot be a problem; allowed: a JSON problem file") from None
    except OSError as e:
        raise ProblemError(f"problem file {str(p)!r} cannot be read: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise ProblemError(f"problem file {str(p)!r} is not valid JSON: {e}") from None
    return from_dict(spec)

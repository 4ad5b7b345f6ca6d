r"""The problem interface every kind implements, its typed parameter pack, and the input checks.

A problem kind is one module (`.quadratic`, `.logistic`, `.custom`) holding its data, its
numpy reference and its kernel code.  The simulators see a problem only through `Problem`:

* `Problem.layout` / `Problem.pack`: the kernels' float parameter vector `PV` as named
  fields (`ParamLayout`: `h` and `sigma` of size `d`, `nu`, `B`, `l2` of size 1, ...),
  filled by name; both backends read it at named offsets (`PV[P_sigma + i]`) printed from the layout;
* `Problem.kernel_arrays`: `(PV, PM, PL, PY)`, the pack and the matrix/label slots;
* `Problem.numba_fragment` / `Problem.cuda_fragment`: the kernel helpers `prob_grad`,
  `prob_loss`, `prob_hvp`, `prob_noise0` (a noise scale constant in `x`) and `prob_corr` (the
  correlated noise increment), generated from the kind's one description (`Problem.code`, see
  `sdederive.problems.description`);
* the numpy reference `Problem.grad`, `Problem.loss`, `Problem.hvp`,
  `Problem.hess_diag`, `Problem.noise_scale`, evaluated from the same description.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sympy as sp

from sdederive import noise as noise_mod
from sdederive.errors import NoiseModelError, SdederiveError, UnknownNameError
from sdederive.problems.description import IX, Loop, Unrolled, V, evaluate

__all__ = ["Problem", "AbstractProblem", "ParamLayout", "ProblemError"]


class ProblemError(SdederiveError):
    """A problem description that cannot be simulated."""


@dataclass(frozen=True)
class ParamLayout:
    """Named fields of the kernels' parameter vector `PV`, in order, each of size `"d"` (one entry per
    coordinate) or an integer.  Offsets are affine in `d` (`offset("sigma") == (1, 0)`: `1*d + 0`), so
    the numba kernels, which take `d` from their arguments, are shared by every `d`; CUDA prints them as
    `#define P_name` constants of its compile-time `D`."""

    fields: tuple = ()  # ((name, size), ...), size "d" or an int >= 1

    def __post_init__(self) -> None:
        seen = set()
        for name, size in self.fields:
            if not name.isidentifier() or name in seen:
                raise SdederiveError(f"parameter-pack field {name!r} is not a new identifier")
            if size != "d" and not (isinstance(size, int) and size >= 1):
                raise SdederiveError(f"parameter-pack field {name!r} has size {size!r}; allowed: 'd' or an int >= 1")
            seen.add(name)

    @property
    def names(self) -> tuple:
        return tuple(n for n, _ in self.fields)

    def offset(self, name: str) -> tuple[int, int]:
        """`(a, b)`: field `name` starts at `PV[a*d + b]`."""
        a = b = 0
        for n, size in self.fields:
            if n == name:
                return a, b
            if size == "d":
                a += 1
            else:
                b += size
        raise UnknownNameError("parameter-pack field", name, self.names)

    def size(self, name: str, d: int) -> int:
        return d if dict(self.fields)[name] == "d" else int(dict(self.fields)[name])

    def total(self, d: int) -> int:
        return sum(d if s == "d" else s for _, s in self.fields)

    def pack(self, d: int, values: dict) -> np.ndarray:
        """`PV` from `values` by field name (each a number or an array of the field's size); a trailing 0
        keeps the vector non-empty."""
        missing = [n for n in self.names if n not in values]
        extra = sorted(set(values) - set(self.names))
        if missing or extra:
            raise SdederiveError(f"parameter pack: missing {missing}, unknown {extra}; fields: {list(self.names)}")
        out = np.zeros(self.total(d) + 1)
        for n, _ in self.fields:
            a, b = self.offset(n)
            k = self.size(n, d)
            v = np.asarray(values[n], dtype=float).ravel()
            if v.size != k:
                raise SdederiveError(f"parameter-pack field {n!r} needs {k} value(s); got {v.size}")
            out[a * d + b: a * d + b + k] = v
        return out

    @staticmethod
    def _expr(a: int, b: int, d: str) -> str:
        if a == 0:
            return str(b)
        t = d if a == 1 else f"{a} * {d}"
        return t if b == 0 else f"{t} + {b}"

    def numba_offsets(self, indent: str, d: str = "d") -> str:
        """`P_name = <offset>` lines (`d` a variable of the function)."""
        return "\n".join(f"{indent}P_{n} = {self._expr(*self.offset(n), d)}" for n in self.names) or f"{indent}pass"

    def c_defines(self) -> str:
        """`#define P_name (<offset>)` lines (`D` the compile-time dimension)."""
        return "\n".join(f"#define P_{n} ({self._expr(*self.offset(n), 'D')})" for n in self.names)


def _short(v, n: int = 60) -> str:
    text = repr(v)
    return text if len(text) <= n else text[: n - 3] + "..."


def _as_float_array(name: str, v) -> np.ndarray:
    """`np.asarray(v, float)`, refusing text, booleans and ragged nested lists with a message."""
    if isinstance(v, (str, bytes, bool, np.bool_)):
        raise ProblemError(f"{name}={_short(v)} is not a number; allowed: a number or a list of numbers")
    try:
        arr = np.asarray(v, dtype=float)
    except (TypeError, ValueError):
        raise ProblemError(f"{name}={_short(v)} is not a number, a list of numbers or a rectangular list of lists "
                           "(ragged rows or non-numeric entries)") from None
    return arr


def _integer(name: str, v, lo: int, hi: int | None = None) -> int:
    """`v` as an `int` if it is an integer in `[lo, hi]` (an integral float such as `8.0` included), else a
    `ProblemError` naming it (also for text, booleans, NaN and infinities)."""
    ok = not isinstance(v, (bool, np.bool_)) and (
        isinstance(v, (int, np.integer)) or (isinstance(v, (float, np.floating)) and float(v).is_integer()))
    if not ok or v < lo or (hi is not None and v > hi):
        allowed = f"an integer >= {lo}" if hi is None else f"an integer from {lo} to {hi}"
        raise ProblemError(f"{name}={_short(v)} is invalid; allowed: {allowed}")
    return int(v)


def _dim(d) -> int | None:
    """The dimension field `d`: `None` or an integer >= 1 (its memory is checked when vectors of that size
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
    """A symmetric positive semi-definite `dd x dd` matrix, checked in the order shape, finite, symmetric,
    PSD (so a NaN is reported as a NaN, not as an asymmetry).  The PSD test allows eigenvalues down to
    `-1e-10 * max(1, |lambda|_max)` (rounding of a singular matrix)."""
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


#: the problems' name of the vector engine's law: one `W ~ chi2_nu` shared by the coordinates of a draw
MULTIVARIATE_T = "multivariate-t"
_MVT_NAMES = {"multivariate-t", "multivariate_t", "multivariatet", "multivariate-student-t", "mvt"}


def _check_problem_nu(nu, law: str) -> float:
    try:
        nuf = float(nu)
    except (TypeError, ValueError):
        raise NoiseModelError(f"{law} noise needs a numeric nu > 0; got nu={nu!r}") from None
    if not np.isfinite(nuf) or nuf <= 0:
        raise NoiseModelError(f"{law} degrees of freedom nu={nu!r} is invalid; allowed: nu > 0")
    return nuf


def _noise_kind(noise: str, nu) -> tuple[str, float | None]:
    """The noise of a problem: `("gaussian", None)`, `("student-t", nu)` (an independent t for each coordinate,
    `xi_i = sigma_i t_i`: the scalar engine's law) or `("multivariate-t", nu)` (the vector engine's law
    `xi = sqrt(nu/W) Sigma^(1/2) z`, one `W ~ chi2_nu` shared by all coordinates of a draw; only the vector
    simulators draw it).  Names and aliases through `sdederive.noise.canonical_name` (the one alias table), and
    `"multivariate-t"` (also `"multivariate_t"`, `"mvt"`)."""
    allowed = ["gaussian", "student-t", MULTIVARIATE_T]
    if isinstance(noise, str) and noise.strip().lower() in _MVT_NAMES:
        if nu is None:
            raise NoiseModelError(f"noise={noise!r} (multivariate Student-t) needs its degrees of freedom: nu > 0")
        return MULTIVARIATE_T, _check_problem_nu(nu, "multivariate Student-t")
    try:
        key = noise_mod.canonical_name(noise) if isinstance(noise, str) else None
    except UnknownNameError:
        key = None
    if key == "gaussian":
        if nu is not None:  # it would have no effect
            raise NoiseModelError(f"nu={_short(nu)} is given but the noise is Gaussian (noise={noise!r}), which has "
                                  "no degrees of freedom; allowed: nu with noise='student-t' or 'multivariate-t', "
                                  "or no nu")
        return "gaussian", None
    if key == "student-t":
        return "student-t", _check_problem_nu(nu, "Student-t")
    raise UnknownNameError("noise model", noise, allowed)


@dataclass(frozen=True, eq=False)
class Problem:
    """Base class of the problem kinds.  `kind` names the kernel code (part of the kernels' content
    hash through `fingerprint_data`); `x0` the initial parameter.

    A kind defines `code` (its one description), `pack_values` (field name -> value) and
    `matrices` (kernel slot -> array); the rest of the interface follows from them.  Kinds whose
    kernel code is not generated (logistic regression's minibatches) override the fragment and numpy
    methods instead."""

    x0: np.ndarray
    noise: str = "gaussian"
    nu: float | None = None

    kind = "problem"
    #: the noise scale depends on ``x`` (computed by ``prob_grad`` when ``need_sg``), not constant
    noise_varies = False
    #: the discrete optimizer draws real minibatches (the kind supplies the kernels' minibatch gradient)
    minibatch = False

    @property
    def d(self) -> int:
        return int(self.x0.size)

    # -- the description and the data ----------------------------------------------------------------
    def code(self):
        """The kind's one description, a `ProblemCode`."""
        raise NotImplementedError(f"problem kind {self.kind!r} has no generated kernel code")

    def fields(self) -> tuple:
        """The kind's pack fields `((name, size), ...)` without the noise model's (added by `layout`)."""
        return ()

    def layout(self) -> ParamLayout:
        """The parameter pack: the kind's fields, then the noise model's kernel parameters (`nu`)."""
        names = ("nu",) if self.noise == MULTIVARIATE_T else (
            noise_mod.kernel_fields(self.noise) if self.noise != "minibatch" else ())
        extra = tuple((n, 1) for n in names)
        return ParamLayout(tuple(self.fields()) + extra)

    def pack_values(self) -> dict:
        """Field name -> value for `layout` (the kind's fields; the noise model's are added here)."""
        return {}

    def pack(self) -> np.ndarray:
        """`PV`, filled by name."""
        vals = dict(self.pack_values())
        for name in self.layout().names:  # the noise model's kernel parameters (Student-t's nu)
            if name not in vals and getattr(self, name, None) is not None:
                vals[name] = getattr(self, name)
        return self.layout().pack(self.d, vals)

    def matrices(self) -> dict:
        """Kernel array slot (`"PM"`, `"PL"`, `"PY"`) -> array; missing slots are passed as placeholders."""
        return {}

    def kernel_arrays(self) -> tuple:
        """`(PV, PM, PL, PY)` for the kernels (C-contiguous float64)."""
        m = self.matrices()
        empty2 = np.zeros((1, 1))
        return (self.pack(), np.ascontiguousarray(m.get("PM", empty2), dtype=float),
                np.ascontiguousarray(m.get("PL", empty2), dtype=float),
                np.ascontiguousarray(m.get("PY", np.zeros(1)), dtype=float))

    def kernel_scalar(self, name: str) -> float | None:
        """The value of a kernel scalar the problem supplies (`nu` of Student-t noise), else `None`."""
        if name == "nu":
            return self.nu
        return None

    @property
    def correlated(self) -> bool:
        """Whether the gradient noise is correlated across coordinates (the SDE kernels then apply
        `prob_corr`)."""
        return False

    @property
    def has_noise_factor(self) -> bool:
        """Whether the kernels' `prob_corr` applies a correlated noise factor (`xi = L z`, or a low-rank one)."""
        return self.code().noise_factor is not None

    def hessian_coupling(self) -> str | None:
        """Why the Hessian couples coordinates (a phrase for error messages), or `None` where it is diagonal:
        the per-coordinate order-2 SDE needs a diagonal one.  From the description: a Hessian-vector product
        that sums over coordinates, or whose coordinate `i` reads `v[j]` for `j != i`."""
        hvp = self.code().hvp
        if isinstance(hvp, Loop):
            uses = {a.indices[0] for a in hvp.expr.atoms(sp.Indexed) if a.base == V}
            if hvp.expr.atoms(sp.Sum) or uses - {IX}:
                return f"a {self.kind} problem whose Hessian-vector product mixes coordinates"
        elif isinstance(hvp, Unrolled):
            for i, e in enumerate(hvp.exprs):
                if {a.indices[0] for a in e.atoms(sp.Indexed) if a.base == V} - {sp.Integer(i)}:
                    return f"a {self.kind} problem whose Hessian is not diagonal"
        return None

    def numba_minibatch_grad(self, ind: str) -> list[str]:
        """Kernel lines computing the discrete optimizer's minibatch gradient `G` (kinds with `minibatch`)."""
        raise NotImplementedError(f"problem kind {self.kind!r} draws no minibatches")

    def cuda_minibatch_grad(self, ind: str) -> list[str]:
        """The same in CUDA C."""
        raise NotImplementedError(f"problem kind {self.kind!r} draws no minibatches")

    def _arrays(self) -> dict:
        """Description name -> numpy value, for the numpy reference: the pack fields (`pack_values`) and
        the matrices (`matrices`, under the names the description gives their slots)."""
        out = dict(self.pack_values())
        m = self.matrices()
        for name, slot in self.code().matrices:
            if slot in m:
                out[name] = m[slot]
        return out

    def _scalars(self) -> dict:
        return {}

    # -- kernel fragments -------------------------------------------------------------------------------
    def numba_fragment(self) -> str:
        """The numba helpers (`prob_grad`, `prob_loss`, `prob_hvp`, `prob_noise0`, `prob_corr`)."""
        return self.code().numba(self.layout())

    def cuda_fragment(self, real: str) -> str:
        """The CUDA `__device__` helpers with the same names and the pack's `#define P_name` offsets."""
        return self.code().cuda(self.layout(), real)

    # -- numpy reference ----------------------------------------------------------------------------------
    def _eval(self, part: str, x, v=None, arrays: dict | None = None, scalars: dict | None = None) -> np.ndarray:
        pc = self.code()
        code = getattr(pc, part)
        if code is None:
            raise SdederiveError(f"a {self.kind} problem has no {part.replace('_', ' ')}")
        return evaluate(code, x, self._arrays() if arrays is None else arrays,
                        self._scalars() if scalars is None else scalars, v, pc.stages(code))

    def loss(self, x: np.ndarray) -> np.ndarray:
        """`f(x)` (`x` of shape `(d,)` or `(..., d)`)."""
        return self._eval("loss", x)

    def grad(self, x: np.ndarray) -> np.ndarray:
        """`grad f(x)` (the full-batch gradient)."""
        return self._eval("grad", x)

    def hess_diag(self, x: np.ndarray) -> np.ndarray:
        """The Hessian's diagonal at `x`."""
        return self._eval("hess_diag", x)

    def hvp(self, x: np.ndarray, v: np.ndarray) -> np.ndarray:
        """The Hessian-vector product `H(x) v`."""
        return self._eval("hvp", x, v)

    def grad_trace_cov(self, x: np.ndarray) -> np.ndarray:
        """`grad tr Sigma(x)`, the gradient of the trace of the noise covariance (0 where the noise does not vary)."""
        if not self.noise_varies:
            return np.zeros(np.shape(x))
        return self._eval("grad_trace_cov", x)

    def noise_scale(self, x: np.ndarray) -> np.ndarray:
        """The per-coordinate gradient-noise scale at `x` (std, or Student-t scale)."""
        return self._eval("noise_scale_x" if self.code().noise_scale_x is not None else "noise_scale", x)

    def fingerprint_data(self) -> str:
        """What the generated code depends on (not the numbers, which are kernel arguments)."""
        return f"{self.kind}:{self.noise}"

    def to_dict(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError


AbstractProblem = Problem

r"""Simulators of vector optimizers and vector SDEs: `sd.compile(sd.derive("sam"), problem)` and
`sd.compile("sam", problem)`.

The kernel is printed from a vector program (`sdederive.simulate.vector_lower`, then
`sdederive.simulate.backends.numba_vector`, or `cuda_vector` for `backend="cupy"`) with the signature of the
scalar kernels, so the
run loop, the snapshots, the divergence reports, Ctrl-C, the memory estimate and the statistics are
`Simulator`'s own.  The states are `x` and the auxiliary vector states (LAMB's `m`, `v`; Nesterov's `m`);
both modes report the loss, `|x|^2` and `x` on the time axis `t = k*eta`.

Start values.  The discrete optimizer starts from `x0` with its auxiliary states at 0.  An SDE that is
singular at `t = 0` (a bias correction `1 - e^{-rho t}` in its drift, or a second-moment state, which is 0
under a square root in a denominator) starts one step later, at `t = tau`, from the *expected* discrete
state after the first step, `E[s_1]`, as the scalar simulators do.  `E[s_1]` is a Monte Carlo mean over
`2**12` antithetic pairs of noise draws (an error of about `eta sigma/90` in `x`, far below the
SDE's own `O(eta)`) of the first update (`sdederive.spec.vector_numpy.step`), under the
Gaussian model of the noise at `x0` that the SDE is derived for (`g = grad f + Sigma(x0)^(1/2) z`; on
logistic regression `Sigma(x0)` is the minibatch covariance of the per-example gradients at `x0`), from a
fixed seed: the same start for every run, computed once per hyperparameter setting and kept by the simulator
(LAMB's SDE at d = 100: a run's start 0.33 s the first time, 0.01 s after).  `init={...}` overrides any state's
start.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import numpy as np
import sympy as sp

from sdederive.errors import SdederiveError, UnknownNameError
from sdederive.problems import Problem
from sdederive.sde_vector import VectorSDE
from sdederive.simulate.backends.base import BackendUnavailableError, KernelSource
from sdederive.simulate.backends.registry import get_backend
from sdederive.simulate.lower import CodegenError
from sdederive.simulate.simulator import Simulator, check_nonnegative_init
from sdederive.simulate.vector_lower import DEFAULT_INNER, lower_discrete, lower_sde
from sdederive.spec import vector as V
from sdederive.symbols import sym

__all__ = ["compile_vector", "VectorSimulator", "VectorKernelSpec"]


@dataclass(frozen=True, eq=False)
class VectorKernelSpec:
    """What `Simulator` reads of a kernel spec (the vector kernels have one state, `x`)."""

    mode: str
    name: str
    scalars: tuple
    notes: tuple = ()
    n_inner: int = 0
    states: tuple = ("x",)
    outputs: tuple = ("x",)

#: antithetic pairs of the Monte Carlo mean of the first step (module docstring)
FIRST_STEP_PAIRS = 2 ** 12
#: how many hyperparameter settings' first steps a simulator keeps (`VectorSimulator._first_step`)
FIRST_STEP_CACHE = 8


class VectorSimulator(Simulator):
    """A compiled vector kernel (see the module docstring)."""

    def _hyper_table(self) -> dict:
        if isinstance(self.obj, VectorSDE):
            return {n: (kind, default) for n, kind, default in self.obj.hypers}
        return {h.name: (h.kind, h.default) for h in self.obj.hypers}

    def _source(self):
        """The discrete vector optimizer of this simulator (the SDE's source, or a built-in by its name)."""
        if not isinstance(self.obj, VectorSDE):
            return self.obj
        src = self.obj.source
        if isinstance(src, V.VectorOptimizer):
            return src
        return V.get(self.obj.optimizer) if V.is_vector(self.obj.optimizer) else None

    def _first_step(self, opt, hv: dict) -> dict:
        """`_expected_first_step` at the hyperparameters `hv`, kept for the simulator's next runs at the same values
        (a fixed seed makes it a function of them, the problem and the optimizer alone): LAMB's SDE spent 0.13 s of a
        1.2 s run on it, again on every seed of a loop.  The last `FIRST_STEP_CACHE` values are kept."""
        key = tuple(sorted((k, float(v)) for k, v in hv.items()))
        cache = self.__dict__.setdefault("_first_steps", {})
        if key not in cache:
            if len(cache) >= FIRST_STEP_CACHE:
                cache.pop(next(iter(cache)))
            cache[key] = _expected_first_step(opt, self.problem, hv)
        return {k: np.array(v, copy=True) for k, v in cache[key].items()}

    def initial_state(self, hv: dict, init: dict | None = None):
        """`(k_start, states)`: `x0` and zeros at step 0, or the expected first step at step 1 for an SDE that is
        singular at `t = 0` (module docstring); `init={name: ...}` overrides a state's start."""
        d = self.problem.d
        states = self.spec.states
        init = dict(init or {})
        for k in init:
            if k not in states:
                raise UnknownNameError("state", k, states)
        st = {s: np.zeros(d) for s in states}
        st["x"] = self.problem.x0.copy()
        k_start = 0
        opt = self._source()
        if opt is not None:
            check_nonnegative_init(init, {a[0]: a[2] for a in opt.aux}, opt.name)
        missing = [s for s in states if s not in init]
        if isinstance(self.obj, VectorSDE) and self.obj.aux_states and opt is None and missing:
            # without the optimizer neither the states' kinds (is v a second moment, singular at 0?) nor the first
            # step are known
            raise SdederiveError(
                f"the SDE of {self.obj.optimizer!r} keeps auxiliary states {list(self.obj.aux_states)} and carries no "
                "optimizer (sde.source is None: read from JSON, and the name is not a built-in), so whether it is "
                "singular at t = 0 and its expected first step are unknown; pass init={...} for the states "
                f"{missing} (for example the initial_state of a simulator of the SDE derived from the optimizer)")
        if isinstance(self.obj, VectorSDE) and self._singular_at_zero():
            if opt is None and missing:
                raise SdederiveError(
                    f"the SDE of {self.obj.optimizer!r} is singular at t = 0 and carries no optimizer (sde.source is None "
                    "and the name is not a built-in), so its expected first step cannot be computed; pass init={...} "
                    f"for the states {missing}")
            if missing:
                st.update(self._first_step(opt, hv))
            k_start = 1
        for k, v in init.items():
            st[k] = np.broadcast_to(np.asarray(v, float), (d,)).copy()
        return k_start, st

    def _singular_at_zero(self) -> bool:
        """A bias correction `1 - e^{-rho t}` in a drift (it reads `t`), or a second-moment state (0 at the start,
        under a square root in a denominator)."""
        sde = self.obj
        if any(f.name == "t" for e in sde.drift.values() for f in e.free_symbols):
            return True
        opt = self._source()
        kinds = {a[0]: a[2] for a in opt.aux} if opt is not None else {}
        return any(kinds.get(s) == "second_moment" for s in sde.aux_states)

    _host_text: str | None = None

    @property
    def module(self):
        """The numba module whose `host_loss` and `host_obs` the simulator calls on the host: the kernel's own
        on numba, the float64 numba twin of the program on other backends (`AbstractBackend.host_module`
        would build the scalar kernels' twin)."""
        if self._host is None and self._host_text is not None:
            from sdederive.simulate.backends.numba_backend import _build_host, load_module

            mod = load_module(self._host_text)
            _build_host(mod, self.spec, len(self.spec.states), self.problem.d)
            self._host = mod
        return super().module

    def _n_blocks(self, paths: int) -> int:
        """At most 64 statistics blocks of at least `ROW_BLOCK` paths each (when there are that many): a row
        block never spans two statistics blocks, so this keeps the matrix products `ROW_BLOCK` rows tall."""
        from sdederive.simulate.backends.numba_vector import ROW_BLOCK

        return int(max(1, min(64, paths // ROW_BLOCK)))

    #: `(U, rotated problem)` of a kernel that runs in the noise's eigenbasis (`vector_eigenbasis`), else None
    _eigenbasis: tuple | None = None

    def _problem_arrays(self):
        """The kernel's arrays: the problem's own, or in the eigenbasis the rotated problem's with `U` as `PL`
        (`numba_vector.generate_vector(rotate=True)`); the host functions take the problem's own (`_host_arrays`)."""
        if self._eigenbasis is None:
            return super()._problem_arrays()
        U, rotated = self._eigenbasis
        PV, PM, _PL, PY = rotated.kernel_arrays()
        return PV, PM, np.ascontiguousarray(U, dtype=float), PY

    def _host_arrays(self, arrays: tuple) -> tuple:
        """The arrays of the host's `host_loss`, which reads `x` in the user's coordinates: in the eigenbasis the
        rotated (dense) problem's module computes `x^T PM x / 2`, so `PM` is the user's `H` there (`diag(h)` for a
        diagonal quadratic), beside the rotated problem's other arrays."""
        if self._eigenbasis is None:
            return arrays
        PV, _PM, PL, PY = self._eigenbasis[1].kernel_arrays()
        return PV, np.ascontiguousarray(self.problem.hessian(), dtype=float), PL, PY

    def _host_obs(self, st: dict, PV, PM, PL, PY, HP, discrete: bool) -> np.ndarray:
        return super()._host_obs(st, *self._host_arrays((PV, PM, PL, PY)), HP, discrete)

    def _keep_final(self, res, state, DIV, PV, PM, PL, PY):
        """As `Simulator._keep_final`, plus every auxiliary state's final value per path (NaN for diverged paths)."""
        res = super()._keep_final(res, state, DIV, *self._host_arrays((PV, PM, PL, PY)))
        for j, s in enumerate(self.spec.states[1:], 1):
            v = np.array(state[:, j, :], dtype=np.float64)
            v[DIV >= 0] = np.nan
            res.final[s] = v
        return res

    def _step0_state(self, k_start: int, st0: dict) -> dict:
        """The start itself when the run starts at step 0 (`init={"x": ...}` moves it); else `x0` and zeros."""
        return st0 if k_start == 0 else self._disc_init_vector()

    def _disc_init_vector(self) -> dict:
        return {s: (self.problem.x0.copy() if s == "x" else np.zeros(self.problem.d)) for s in self.spec.states}


def _noise_root_at(problem: Problem, x0: np.ndarray) -> np.ndarray:
    """A `(d, r)` factor `F` of the gradient noise's covariance at `x0`, `F F^T = Sigma(x0)`."""
    if problem.minibatch:  # iid indices with repeats: Cov of the minibatch mean = Cov of the examples / B
        G = problem.per_example_grads(x0)
        return (G - G.mean(0)).T / np.sqrt(G.shape[0] * problem.B)
    L = getattr(problem, "noise_factor", lambda: None)()
    if L is not None:
        return np.asarray(L, float)
    return np.diag(np.asarray(problem.noise_scale(x0), float))


def _whitened_pairs(rng, n: int, r: int) -> np.ndarray:
    """`(2n, r)` normals `[z; -z]` whose sample mean is 0 and sample covariance exactly `I` (antithetic pairs and
    moment matching, Glasserman, *Monte Carlo Methods in Financial Engineering*, 2003, section 4.5): a first step
    linear or quadratic in the noise (`m_1`, `v_1` of Adam-like states) then has its exact mean."""
    z = rng.standard_normal((n, r))
    if n >= 4 * r:
        C = z.T @ z / n
        z = np.linalg.solve(np.linalg.cholesky(C), z.T).T  # z L^(-T): sample covariance I
    return np.concatenate([z, -z])


def _expected_first_step(opt: V.VectorOptimizer, problem: Problem, hv: dict) -> dict:
    """`E[s_1]` of every state: the first update from `x0` and zero states, the Monte Carlo mean over antithetic,
    moment-matched pairs of Gaussian noise draws at `x0` (`_whitened_pairs`; module docstring), evaluated in chunks
    of about 2**18 numbers; each minibatch has its own draw."""
    from sdederive.spec.vector_numpy import step

    rng = np.random.default_rng(20261202)
    x0 = problem.x0
    F = _noise_root_at(problem, x0)
    d, r, n = x0.size, F.shape[1], FIRST_STEP_PAIRS
    rows = 2 * n
    whole = n * r <= 2 ** 23  # all draws at once (64 MB at most) and moment-matched; else chunk by chunk, antithetic
    chunk = int(max(2, min(rows, 2 ** 18 // max(d, r)) // 2 * 2))
    draws: dict[int, np.ndarray] = {}
    sums: dict = {}
    keys: dict = {}
    for lo in range(0, rows, chunk):
        hi = min(rows, lo + chunk)
        xs = np.broadcast_to(x0, (hi - lo, d))
        if not whole:
            draws.clear()

        def g_of(points, batch, lo=lo, hi=hi):
            if batch not in draws:
                draws[batch] = _whitened_pairs(rng, n, r) if whole else _whitened_pairs(rng, (hi - lo) // 2, r)
            z = draws[batch][lo:hi] if whole else draws[batch]
            pts = np.asarray(points, float)
            return np.asarray(problem.grad(pts), float).reshape(pts.shape) + z @ F.T

        out = step(opt, xs, {a[0]: np.zeros_like(xs) for a in opt.aux}, g_of, hv, k=0, keys=keys)
        for s, v in out.items():
            sums[s] = sums.get(s, 0.0) + v.sum(0)
    return {s: v / rows for s, v in sums.items()}


def _check_law(sde: VectorSDE, problem: Problem) -> None:
    """A Gaussian SDE runs on a Gaussian problem; a Student-t SDE (the multivariate t) on a problem with
    `noise="multivariate-t"` of the same `nu` (a symbolic `nu` takes the problem's)."""
    if sde.noise not in ("gaussian", "student-t") or (sde.noise == "gaussian") != (sde.nu is None):
        raise SdederiveError(f"the SDE of {sde.optimizer} has noise {sde.noise!r} (nu = {sde.nu}); the vector "
                             "simulators run SDEs derived under 'gaussian' or 'student-t' (multivariate) noise")
    if sde.nu is None:
        if problem.noise == "multivariate-t":
            raise SdederiveError(
                f"the SDE of {sde.optimizer} was derived under Gaussian noise but the problem's noise is the "
                f"multivariate Student-t (nu={problem.nu:g}); derive it with noise=sd.StudentT(nu={problem.nu:g}), "
                "or give the problem noise='gaussian'")
        return
    if problem.noise != "multivariate-t":
        raise SdederiveError(
            f"the SDE of {sde.optimizer} was derived under multivariate Student-t noise (nu = {sde.nu}) but the "
            f"problem's noise is {problem.noise!r}; give the problem noise='multivariate-t' and nu"
            + ("" if sde.nu.free_symbols else f"={sde.nu}") + " (or derive the SDE with noise='gaussian')")
    if not sde.nu.free_symbols and abs(float(sde.nu) - problem.nu) > 1e-12 * max(1.0, problem.nu):
        raise SdederiveError(
            f"the SDE of {sde.optimizer} was derived for nu = {sde.nu} but the problem's multivariate Student-t has "
            f"nu = {problem.nu:g}; derive it with noise=sd.StudentT(nu={problem.nu:g}) (or without nu: a symbolic nu "
            "takes the problem's value), or give the problem nu={sde.nu}")
    if sde.nu.free_symbols:  # the derivation's condition for a symbolic nu, "valid for nu > p" in its notes
        for n in sde.notes:
            m = re.search(r"valid for nu > (\d+(?:/\d+)?)\b", n)
            if m and not problem.nu > float(sp.Rational(m.group(1))):
                raise SdederiveError(
                    f"the SDE of {sde.optimizer} (symbolic nu) is valid for nu > {m.group(1)} (its one-step moments are "
                    f"infinite below); the problem has nu = {problem.nu:g}. Allowed: a problem nu > {m.group(1)}")


def compile_vector(obj, problem: Problem, backend: str = "numba", dtype: str = "float64", scheme: str = "euler",
                   regime: str | None = None, inner: int = DEFAULT_INNER) -> VectorSimulator:
    """Compile the discrete vector optimizer or the vector SDE `obj` for `problem` (numba backend: the kernel of
    `numba_vector`; cupy: the CUDA kernel of `cuda_vector`, `BackendUnavailableError` without CuPy or a GPU)."""
    impl = get_backend(backend)
    if impl.name not in ("numba", "cupy"):
        raise CodegenError(f"vector kernels ({getattr(obj, 'optimizer', getattr(obj, 'name', obj))!r}) are generated "
                           f"for the numba and cupy backends only; got backend={backend!r}. Use backend='numba' or "
                           "'cupy'")
    if scheme != "euler":
        raise SdederiveError(f"scheme={scheme!r}: vector SDEs are simulated with Euler–Maruyama only; use "
                             "scheme='euler'" if isinstance(obj, VectorSDE) else
                             "scheme applies to SDE mode only; the discrete optimizer is its own update rule")
    if problem.noise == "student-t":
        raise SdederiveError(
            f"the problem has noise='student-t' (nu={problem.nu:g}): an independent t for each coordinate, "
            "xi_i = sigma_i t_i, the scalar engine's law. The vector engine and its simulators use Gaussian noise or "
            "the multivariate Student-t xi = sqrt(nu/W) Sigma^(1/2) z (one W ~ chi2_nu per draw, shared by the "
            f"coordinates): give the problem noise='multivariate-t', nu={problem.nu:g} (or noise='gaussian')")
    if isinstance(obj, VectorSDE):
        _check_law(obj, problem)
    t0 = time.perf_counter()
    if isinstance(obj, VectorSDE):
        from sdederive.simulate.simulator import _check_regime_of_sde, _check_tau

        _check_regime_of_sde(obj, regime)
        tau_expr = _check_tau(obj)
        prog = lower_sde(obj, problem, inner)
        notes = tuple(obj.notes)
        mode = "sde"
    else:
        opt = V.get(obj)
        from sdederive.derivation.vector import _REGIMES, _STATE_REGIMES

        allowed = tuple(dict.fromkeys(_REGIMES + _STATE_REGIMES))
        if regime is not None and str(regime).strip().lower().replace("_", "-") not in allowed:
            raise SdederiveError(f"regime={regime!r}: the discrete vector optimizer {opt.name!r} runs on the time axis "
                                 f"t = k*eta of the vector engine's regimes {', '.join(allowed)} (all tau = eta)")
        prog = lower_discrete(opt, problem)
        tau_expr = sym("eta")
        notes = ()
        mode = "discrete"
        obj = opt
    ok, why = impl.available()
    if not ok:  # no CuPy or no GPU (numba is a dependency)
        raise BackendUnavailableError(why or f"backend {impl.name!r} cannot run here")
    from sdederive.simulate.backends.numba_vector import generate_vector

    from sdederive.simulate.vector_eigenbasis import eigenbasis_for, matrix_products

    eig = eigenbasis_for(prog, problem)
    if eig is not None:
        n_rot, n_as = matrix_products(prog, eig[1]), matrix_products(prog, problem)
        notes += (f"run in the eigenbasis of Sigma: {n_rot} matrix product{'s' * (n_rot != 1)} per step instead "
                  f"of {n_as} (sdederive.simulate.vector_eigenbasis)",)
    kprob = eig[1] if eig else problem
    if impl.name == "cupy":
        from sdederive.simulate.backends.cuda_vector import generate_vector_cuda

        text = generate_vector_cuda(prog, kprob, dtype, rotate=eig is not None)
    else:
        text = generate_vector(prog, kprob, dtype, rotate=eig is not None)
    spec = VectorKernelSpec(mode, prog.name, prog.hypers, notes, prog.n_inner, states=tuple(prog.states))
    source = KernelSource(impl.name, text, spec, problem, scheme, dtype)
    handle = impl.build(source)
    sim = VectorSimulator(spec, problem, impl, dtype, scheme, source, obj, tau_expr, time.perf_counter() - t0,
                          handle=handle)
    if impl.name != "numba":  # the host's loss and observables: the float64 numba twin (Simulator.module)
        sim._host_text = generate_vector(prog, kprob, "float64", rotate=eig is not None)
    if eig is not None:
        sim._eigenbasis = eig
    return sim

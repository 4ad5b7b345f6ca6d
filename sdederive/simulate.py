r"""Compiled ensemble simulators: :func:`compile` and :class:`Simulator`.

``sd.compile(sde, problem)`` simulates the SDE (Euler–Maruyama, or ``scheme="weak2"``: Platen's
explicit weak order-2 scheme); ``sd.compile(optimizer, problem)`` runs the discrete optimizer.
Both report, every ``save_every`` steps, the mean and variance across paths of the loss, of
``|x|^2`` and of every state (in the discrete optimizer's variables), on the shared time axis
``t = k*tau`` (``tau`` the regime's time per step: ``eta`` or ``eta**2``).

Random numbers are Philox4x32-10 keyed by ``seed`` and addressed by (path, step, coordinate), so
results do not depend on the thread count, and the discrete run and the SDE run of the same seed
use the *same* Gaussians (``g_k = grad + sigma z_k`` and ``dW_k = sqrt(tau) z_k``): their difference
has a much smaller variance than either, which the weak-error validators exploit.

SDE initial values.  The discrete optimizer starts from ``x0`` and the spec's state initial values
(PyTorch's ``m = v = 0``).  Where the SDE is singular there (a bias correction ``1 - e^{-ct}`` at
``t = 0``, or a second-moment/accumulator state at 0 under a square root in a denominator), the
SDE starts one step later, at ``t = tau``, from the *expected* discrete state after the first
step, ``E[s_1]`` (each coordinate's expectation over the gradient noise, by quadrature), mapped to
the SDE's variables (``u = eta**2 v``).  ``init={"v": ...}`` overrides those values.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import numpy as np
import sympy as sp

from . import optimizers as _opt
from . import regimes as _reg
from .codegen.spec import KernelSpec, discrete_spec, sde_spec, source_optimizer
from .errors import DivergenceError, HyperparameterError, SdederiveError, UnknownNameError
from .hyper import check_value
from .problems import LogisticRegression, Problem, Quadratic
from .sde import SDE
from .symbols import sym

__all__ = ["compile", "Simulator", "SimulationResult"]

_BACKENDS = ("numba", "cupy")
_SCHEMES = ("euler", "weak2")
_DTYPES = ("float64", "float32")
# keep_final: the most memory the per-path final values (x and loss, doubles) may take
_FINAL_MAX_BYTES = 2 * 2**30
# CUDA path: observables per reduction slab (doubles), the size of the per-path observable buffer
_CUDA_OBS_SLAB = 2**26


@dataclass
class SimulationResult:
    """Snapshots across paths.  ``mean[name]``/``var[name]``/``se[name]``: arrays over snapshots
    (``(n_save,)`` for ``loss`` and ``sqnorm``, ``(n_save, d)`` for states); ``count[j]``: paths that
    entered snapshot ``j`` (all of them unless diverged paths were masked)."""

    t: np.ndarray
    steps: np.ndarray
    mean: dict
    var: dict
    count: np.ndarray
    paths: int
    mode: str
    name: str
    diverged: int = 0
    interrupted: bool = False
    timing: dict = field(default_factory=dict)
    notes: tuple = ()
    hyper: dict = field(default_factory=dict)
    seed: int = 0
    final: dict | None = None  # keep_final=True: per-path "x" (paths, d) and "loss" (paths,) at the end

    @property
    def se(self) -> dict:
        """Standard error of each mean: ``sqrt(var/count)``."""
        c = np.maximum(self.count, 1).astype(float)
        return {k: np.sqrt(v / (c if v.ndim == 1 else c[:, None])) for k, v in self.var.items()}

    def to_dict(self) -> dict:
        """JSON-ready: ``{"t", "mean", "var", "se", "count", "paths", "timing", ...}``."""
        se = self.se
        return {
            "mode": self.mode, "name": self.name, "t": self.t.tolist(), "steps": self.steps.tolist(),
            "mean": {k: v.tolist() for k, v in self.mean.items()},
            "var": {k: v.tolist() for k, v in self.var.items()},
            "se": {k: v.tolist() for k, v in se.items()},
            "count": self.count.tolist(), "paths": self.paths, "diverged": self.diverged,
            "interrupted": self.interrupted, "timing": self.timing, "notes": list(self.notes),
            "hyper": self.hyper, "seed": self.seed,
        }


def _progress(done: int, total: int, t0: float, stream=sys.stderr) -> None:
    # A one-line bar; tqdm would be a dependency for exactly this line.
    frac = done / max(total, 1)
    el = time.perf_counter() - t0
    eta_s = el / frac - el if frac > 0 else float("nan")
    bar = "#" * int(30 * frac)
    stream.write(f"\r[{bar:<30}] {done}/{total} steps  {el:6.1f}s elapsed  ~{eta_s:6.1f}s left")
    if done >= total:
        stream.write("\n")
    stream.flush()


class Simulator:
    """A compiled kernel plus what it needs to run (see :func:`compile`)."""

    def __init__(self, spec: KernelSpec, problem: Problem, backend: str, dtype: str, scheme: str,
                 source, obj, tau_expr: sp.Expr, compile_s: float):
        self.spec, self.problem, self.backend, self.dtype, self.scheme = spec, problem, backend, dtype, scheme
        self.source, self.obj, self.tau_expr, self.compile_s = source, obj, tau_expr, compile_s

    @property
    def mode(self) -> str:
        return self.spec.mode

    # -- hyperparameters ------------------------------------------------------------------------
    def _hyper_table(self) -> dict:
        if isinstance(self.obj, SDE):
            return {n: (kind, default) for n, kind, default in self.obj.hypers}
        return {h.name: (h.kind, h.default) for h in self.obj.hypers}

    def resolve_hyper(self, eta=None, hyper=None) -> dict:
        table = self._hyper_table()
        values = {n: d for n, (_, d) in table.items() if d is not None}
        given = dict(hyper or {})
        if eta is not None:
            given["eta"] = eta
        for k, v in given.items():
            if k not in table:
                raise UnknownNameError(f"hyperparameter of {self.spec.name}", k, table)
            check_value(k, table[k][0], v)
            values[k] = float(v)
        missing = [n for n in table if n not in values]
        if missing:
            raise HyperparameterError(f"{self.spec.name}: no value for hyperparameter(s) {missing}")
        return values

    def _scalar_values(self, hv: dict) -> np.ndarray:
        out = []
        for s in self.spec.scalars:
            if s in hv:
                out.append(hv[s])
            elif s == "nu":
                if self.problem.nu is None:
                    raise SdederiveError("the SDE uses nu (Student-t noise) but the problem has Gaussian noise")
                out.append(self.problem.nu)
            elif s == "B":
                out.append(float(getattr(self.problem, "B", 1)))
            else:  # pragma: no cover - spec construction refuses these
                raise SdederiveError(f"no value for kernel parameter {s!r}")
        return np.array(out + [0.0], dtype=np.float64)

    # -- problem data -----------------------------------------------------------------------------
    def _problem_arrays(self):
        p = self.problem
        d = p.d
        empty2 = np.zeros((1, 1))
        if isinstance(p, LogisticRegression):
            return np.array([p.l2, float(p.B)]), p.A, empty2, p.y
        nu = [p.nu if p.nu is not None else 0.0]
        if isinstance(p, Quadratic):
            hv = p.h if p.H is None else np.zeros(d)
            PM = p.H if p.H is not None else empty2
            PL = p.L if p.L is not None else empty2
            return np.concatenate([hv, p.sigma, nu]), np.ascontiguousarray(PM), np.ascontiguousarray(PL), np.zeros(1)
        return np.concatenate([np.zeros(d), p.sigma, nu]), empty2, empty2, np.zeros(1)

    # -- initial state ----------------------------------------------------------------------------
    def _discrete_init(self, opt) -> dict:
        out = {"x": self.problem.x0.copy()}
        for s in opt.states:
            out[s.name] = np.full(self.problem.d, float(s.init))
        return out

    def initial_state(self, hv: dict, init: dict | None = None):
        """``(k_start, states)``: the step the kernel starts at and the per-state initial vectors (kernel
        variables).  See the module docstring for the SDE rule."""
        p = self.problem
        init = dict(init or {})
        if self.mode == "discrete":
            st = self._discrete_init(self.obj)
            for k, v in init.items():
                if k not in st:
                    raise UnknownNameError("state", k, st)
                st[k] = np.broadcast_to(np.asarray(v, float), (p.d,)).copy()
            return 0, st
        sde: SDE = self.obj
        opt = source_optimizer(sde)
        outputs = dict(zip(self.spec.states, self.spec.outputs))  # SDE state -> discrete name
        disc_names = set(outputs.values())
        for k in init:
            if k not in disc_names:
                raise UnknownNameError("state (discrete variables)", k, disc_names)
        t = sym("t")
        singular_t = any(sp.sympify(e).has(t) for e in sde.drift.values())
        kinds = {s.name: s for s in opt.states} if opt else {}
        singular_states = [
            outputs[s] for s in sde.states[1:]
            if outputs[s] in kinds and kinds[outputs[s]].kind in ("second_moment", "accumulator")
            and kinds[outputs[s]].init == 0.0 and outputs[s] not in init
        ]
        offset = singular_t or bool(singular_states)
        disc = self._disc_init_vector()
        if offset:
            if opt is None:
                raise SdederiveError(
                    f"the SDE of {sde.optimizer!r} is singular at t = 0 and its optimizer is not a built-in, so "
                    "the expected first step cannot be computed; pass init={...} for every auxiliary state")
            disc.update(self._expected_first_step(opt, hv))
        for k, v in init.items():
            disc[k] = np.broadcast_to(np.asarray(v, float), (p.d,)).copy()
        # to SDE variables
        out = {}
        for s in sde.states:
            name = outputs[s]
            if s in sde.state_map:
                f = sp.lambdify([sym(name)] + [sym(h) for h in hv], sp.sympify(sde.state_map[s]), "numpy")
                out[s] = np.asarray(f(disc[name], *hv.values()), float) * np.ones(p.d)
            else:
                out[s] = disc[name]
        return (1 if offset else 0), out

    def _noise_scale_at(self, x: np.ndarray) -> np.ndarray:
        p = self.problem
        if isinstance(p, LogisticRegression):
            G = p.per_example_grads(x)
            return np.sqrt(np.mean((G - G.mean(0)) ** 2, axis=0) / p.B)
        return p.sigma

    def _grad_at(self, x):
        p = self.problem
        if isinstance(p, Quadratic):
            return p.hessian() @ x
        if isinstance(p, LogisticRegression):
            return p.per_example_grads(x).mean(0)
        fn = sp.lambdify([p.xs], [sp.diff(p.f, xi) for xi in p.xs], "numpy")
        return np.asarray(fn(x), float)

    def _expected_first_step(self, opt, hv: dict) -> dict:
        """``E[s_1]`` per coordinate over ``g = grad(x0) + sigma z`` by adaptive quadrature, split at the
        point where ``g = 0`` (sign-type updates are discontinuous there)."""
        from scipy import integrate, stats

        p = self.problem
        x0 = p.x0
        gr = self._grad_at(x0)
        sg = self._noise_scale_at(x0)
        dens = stats.t(p.nu).pdf if p.noise == "student-t" else stats.norm.pdf
        args = [sym("x"), sym("g"), sym("k")] + [s.symbol for s in opt.states] + [h.symbol for h in opt.hypers]
        init = self._discrete_init(opt)
        out = {}
        for name, expr in opt.update:
            f = sp.lambdify(args, expr, "math")
            vals = np.empty(p.d)
            for i in range(p.d):
                fixed = [x0[i]]
                st = [init[s.name][i] for s in opt.states]
                hvals = [hv[h.name] for h in opt.hypers]

                def integrand(z, i=i, st=st, hvals=hvals, f=f):
                    return f(x0[i], gr[i] + sg[i] * z, 0, *st, *hvals) * dens(z)

                if sg[i] == 0:
                    vals[i] = f(*fixed, gr[i], 0, *st, *hvals)
                    continue
                z0 = -gr[i] / sg[i]
                a = integrate.quad(integrand, -np.inf, z0, limit=200)[0]
                b = integrate.quad(integrand, z0, np.inf, limit=200)[0]
                vals[i] = a + b
            out[name] = vals
        return out

    # -- running ----------------------------------------------------------------------------------
    def run(self, paths: int = 1000, steps: int = 1000, eta: float | None = None, hyper: dict | None = None,
            seed: int = 0, save_every: int = 1, init: dict | None = None, mask_diverged: bool = False,
            progress: bool = False, substeps: int = 1, chunk_seconds: float = 0.5,
            threads: int | None = None, keep_final: bool = False) -> SimulationResult:
        """Simulate ``paths`` independent paths for ``steps`` steps (``t = steps*tau``).

        ``eta`` and ``hyper`` are the *discrete* hyperparameters in both modes.  ``substeps`` (SDE
        mode) splits each ``tau`` into that many integrator steps.  A non-finite state raises
        :class:`~sdederive.errors.DivergenceError` naming the first path and step, unless
        ``mask_diverged`` (then those paths leave the statistics and ``result.diverged`` counts them).
        Ctrl-C stops at the end of the current chunk and returns what was computed
        (``result.interrupted``).  ``keep_final``: also return every path's final ``x`` and loss
        (``result.final``; NaN rows for diverged paths), refused above ``_FINAL_MAX_BYTES``.
        """
        for nm, v, lo in (("paths", paths, 1), ("steps", steps, 1), ("save_every", save_every, 1),
                          ("substeps", substeps, 1)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lo:
                raise SdederiveError(f"{nm}={v!r} is invalid; allowed: an integer >= {lo}")
        if not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**64:
            raise SdederiveError(f"seed={seed!r} is invalid; allowed: an integer in [0, 2**64)")
        if steps * substeps >= 2**32:
            raise SdederiveError(f"steps*substeps={steps * substeps} exceeds the 2**32 Philox step counter")
        if self.mode == "discrete" and substeps != 1:
            raise SdederiveError("substeps applies to SDE mode only; the discrete optimizer takes one step per k")
        if keep_final and paths * (self.problem.d + 1) * 8 > _FINAL_MAX_BYTES:
            raise SdederiveError(f"keep_final with paths={paths} and d={self.problem.d} needs "
                                 f"{paths * (self.problem.d + 1) * 8 / 2**30:.2f} GiB for the per-path final values; "
                                 f"allowed: at most {_FINAL_MAX_BYTES / 2**30:.0f} GiB (fewer paths)")
        hv = self.resolve_hyper(eta, hyper)
        if self.mode == "sde" and getattr(_reg.REGIMES.get(self.obj.regime), "scale_noise", False):
            # a RegimeWarning when the problem is outside the SDE's regime (sdederive.regime_check)
            from .regime_check import regime_check

            regime_check(self.obj, self.problem, hv["eta"], hv).warn(stacklevel=2)
        tau = float(self.tau_expr.subs(sym("eta"), hv["eta"]))
        HP = self._scalar_values(hv)
        PV, PM, PL, PY = self._problem_arrays()
        k_start, st0 = self.initial_state(hv, init)
        S, d = len(self.spec.states), self.problem.d
        state = np.empty((paths, S, d), dtype=np.float64)
        for j, s in enumerate(self.spec.states):
            state[:, j, :] = st0[s]
        n_save = steps // save_every
        nblk = int(min(paths, 64))
        nobs = 2 + len(self.spec.outputs) * d
        MEAN = np.zeros((nblk, n_save + 1, nobs))
        M2 = np.zeros_like(MEAN)
        CNT = np.zeros((nblk, n_save + 1), dtype=np.int64)
        DIV = np.full(paths, -1, dtype=np.int64)
        key0, key1 = int(seed) & 0xFFFFFFFF, (int(seed) >> 32) & 0xFFFFFFFF
        # host snapshots of the deterministic start (all paths equal)
        snap0 = self._host_obs(self._disc_init_vector(), PV, PM, PL, PY, HP, discrete=True)
        self._put_snapshot(MEAN, CNT, 0, snap0, paths)
        if k_start > 0 and k_start % save_every == 0:
            self._put_snapshot(MEAN, CNT, k_start // save_every,
                               self._host_obs(st0, PV, PM, PL, PY, HP, discrete=False), paths)
        if self.backend == "cupy":
            res = self._run_cuda(state, DIV, k_start, steps, save_every, substeps, tau, key0, key1, HP, PV, PM,
                                 PL, PY, MEAN, M2, CNT, n_save, paths, hv, seed, mask_diverged, progress)
            return self._keep_final(res, state, DIV, PV, PM, PL, PY) if keep_final else res
        kern = self._kernel()
        t_run = 0.0
        k = k_start
        # first chunk small (a progress update soon, Ctrl-C answered soon); later ones sized to chunk_seconds
        chunk = max(1, min(steps - k_start, int(1e6 // max(1, paths * d * S)), max(1, steps // 100)))
        interrupted = False
        t0 = time.perf_counter()
        try:
            while k < steps:
                k_end = min(steps, k + chunk)
                c0 = time.perf_counter()
                self._launch(kern, (state, DIV, k, k_end, save_every, substeps, tau, key0, key1, HP, PV, PM,
                                    PL, PY, MEAN, M2, CNT, nblk), nblk, threads)
                el = time.perf_counter() - c0
                t_run += el
                k = k_end
                if progress:
                    _progress(k, steps, t0)
                if not mask_diverged and np.any(DIV >= 0):
                    break
                if el > 0:
                    chunk = max(1, int(chunk * min(4.0, chunk_seconds / el)))
        except KeyboardInterrupt:
            interrupted = True
        res = self._result(MEAN, M2, CNT, n_save, k // save_every, save_every, tau, paths, DIV, hv, seed,
                           interrupted, t_run)
        if not mask_diverged:
            self._raise_if_diverged(DIV, tau, k, res)
        return self._keep_final(res, state, DIV, PV, PM, PL, PY) if keep_final else res

    def _keep_final(self, res, state, DIV, PV, PM, PL, PY) -> SimulationResult:
        """``res`` with ``final = {"x": (paths, d), "loss": (paths,)}`` from the kernel's final states."""
        x = np.array(state[:, 0, :], dtype=np.float64)
        x[DIV >= 0] = np.nan
        mod = self.module
        W = np.zeros(2 * PM.shape[0] + 4)
        loss = np.array([float(mod.prob_loss(np.ascontiguousarray(xi), PV, PM, PL, PY, W)) if np.all(np.isfinite(xi))
                         else np.nan for xi in x])
        res.final = {"x": x, "loss": loss}
        return res

    def _raise_if_diverged(self, DIV, tau, k, res) -> None:
        """:class:`DivergenceError` naming the first (smallest-index) diverged path and its step."""
        bad = np.flatnonzero(DIV >= 0)
        if bad.size == 0:
            return
        p0 = int(bad[0])
        raise DivergenceError(
            f"{self.spec.mode} simulation of {self.spec.name} diverged: path {p0} became non-finite at step "
            f"{int(DIV[p0])} (t = {int(DIV[p0]) * tau:.6g}); {bad.size} of {DIV.size} paths diverged by step {k}. "
            "Lower eta, or pass mask_diverged=True (CLI: --mask-diverged) to drop diverged paths from the "
            "statistics.", p0, int(DIV[p0]), int(bad.size), res)

    def _run_cuda(self, state, DIV, k_start, steps, save_every, substeps, tau, key0, key1, HP, PV, PM, PL, PY,
                  MEAN, M2, CNT, n_save, paths, hv, seed, mask_diverged, progress) -> SimulationResult:
        """GPU path: one thread per path; the kernel runs from one save point to the next, then
        ``obs_kernel`` writes each path's observables and CuPy reduces them (block 0 of the statistics
        arrays holds the totals)."""
        import cupy as cp

        src = self.source
        nobs = MEAN.shape[2]
        g = {k: cp.asarray(v) for k, v in dict(state=state, DIV=DIV, HP=HP, PV=PV, PM=PM, PL=PL, PY=PY).items()}
        threads = 128
        grid = ((paths + threads - 1) // threads,)
        # totals go to block 0; the other blocks hold the host-filled snapshots only (step 0, and step
        # k_start where that is a save point: the kernel writes the save points after k_start)
        j0 = k_start // save_every + 1
        MEAN[:, j0:] = 0
        CNT[:, j0:] = 0
        slab = max(1, int(_CUDA_OBS_SLAB // max(nobs, 1)))
        out = cp.empty((min(paths, slab), nobs))
        t_run, k, interrupted = 0.0, k_start, False
        t0 = time.perf_counter()
        try:
            while k < steps:
                k_end = min(steps, (k // save_every + 1) * save_every)
                c0 = time.perf_counter()
                src.step(grid, (threads,), (g["state"], g["DIV"], np.int64(k), np.int64(k_end), np.int32(substeps),
                                            np.float64(tau), np.uint32(key0), np.uint32(key1), g["HP"], g["PV"],
                                            g["PM"], g["PL"], g["PY"], np.int64(paths)))
                if k_end % save_every == 0:
                    j = k_end // save_every
                    alive = g["DIV"] < 0
                    # two passes per slab (its mean, then squared deviations from it), slabs merged like
                    # the numba blocks (_merge_blocks): no s2 - n mu^2 cancellation (|x|^2 of a far-away
                    # x is 1e16)
                    slabs = []
                    for p0 in range(0, paths, out.shape[0]):
                        m = min(out.shape[0], paths - p0)
                        # N = p0 + m: the threads of the last block past the slab write no row of `out`
                        src.obs(((m + threads - 1) // threads,), (threads,),
                                (g["state"], g["DIV"], g["HP"], g["PV"], g["PM"], g["PL"], g["PY"], out,
                                 np.int64(p0), np.int64(p0 + m)))
                        a = alive[p0:p0 + m, None]
                        nb = int(a.sum())
                        if nb == 0:
                            continue
                        mb = cp.where(a, out[:m], 0.0).sum(0) / nb
                        dev = cp.where(a, out[:m] - mb, 0.0)
                        slabs.append((nb, cp.asnumpy(mb), cp.asnumpy((dev * dev).sum(0))))
                    if slabs:
                        with np.errstate(over="ignore", invalid="ignore"):
                            n, MEAN[0, j], M2[0, j] = _merge_blocks(np.array([sl[0] for sl in slabs], float),
                                                                    np.stack([sl[1] for sl in slabs]),
                                                                    np.stack([sl[2] for sl in slabs]))
                        CNT[0, j] = int(n)
                cp.cuda.Device().synchronize()
                t_run += time.perf_counter() - c0
                k = k_end
                if progress:
                    _progress(k, steps, t0)
                if not mask_diverged and bool((g["DIV"] >= 0).any()):
                    break
        except KeyboardInterrupt:
            interrupted = True
        DIV[:] = cp.asnumpy(g["DIV"])
        state[:] = cp.asnumpy(g["state"])
        res = self._result(MEAN, M2, CNT, n_save, k // save_every, save_every, tau, paths, DIV, hv, seed,
                           interrupted, t_run)
        if not mask_diverged:
            self._raise_if_diverged(DIV, tau, k, res)
        return res

    def _disc_init_vector(self) -> dict:
        """The discrete optimizer's initial states (``x0``, the spec's inits), keyed by discrete name."""
        if self.mode == "discrete":
            return self._discrete_init(self.obj)
        opt = source_optimizer(self.obj)
        out = {"x": self.problem.x0.copy()}
        for o in self.spec.outputs[1:]:
            init = 0.0
            if opt is not None:
                try:
                    init = float(opt.state_decl(o).init)
                except KeyError:
                    pass
            out[o] = np.full(self.problem.d, init)
        return out

    def _host_obs(self, st: dict, PV, PM, PL, PY, HP, discrete: bool) -> np.ndarray:
        mod = self.module
        x = np.ascontiguousarray(st["x"], dtype=np.float64)
        W = np.zeros(2 * PM.shape[0] + 4)
        loss = float(mod.prob_loss(x, PV, PM, PL, PY, W))
        vals = [np.array([loss]), np.array([float(x @ x)])]
        if discrete:  # already in discrete variables
            for o in self.spec.outputs:
                vals.append(np.asarray(st[o], float))
        else:
            hp = list(HP[: len(self.spec.scalars)])
            outs = [np.empty(self.problem.d) for _ in self.spec.outputs]
            for i in range(self.problem.d):
                r = mod.obs(*[float(st[s][i]) for s in self.spec.states], *hp)
                for j in range(len(outs)):
                    outs[j][i] = r[j]
            vals += outs
        return np.concatenate(vals)

    @staticmethod
    def _put_snapshot(MEAN, CNT, j, vec, paths) -> None:
        nblk = MEAN.shape[0]
        for b in range(nblk):
            MEAN[b, j] = vec
            CNT[b, j] = (b + 1) * paths // nblk - b * paths // nblk

    def _result(self, MEAN, M2, CNT, n_save, done_save, save_every, tau, paths, DIV, hv, seed, interrupted,
                t_run) -> SimulationResult:
        # the per-block Welford statistics, combined by _merge_blocks (Chan et al.)
        with np.errstate(over="ignore", invalid="ignore"):
            return self._result_inner(MEAN, M2, CNT, n_save, done_save, save_every, tau, paths, DIV, hv, seed,
                                      interrupted, t_run)

    def _result_inner(self, MEAN, M2, CNT, n_save, done_save, save_every, tau, paths, DIV, hv, seed, interrupted,
                      t_run) -> SimulationResult:
        n, mean, m2 = _merge_blocks(CNT.astype(float), MEAN, M2)
        var = m2 / np.maximum(n - 1, 1)[:, None]
        keep = slice(0, done_save + 1)
        d = self.problem.d
        means = {"loss": mean[keep, 0], "sqnorm": mean[keep, 1]}
        vars_ = {"loss": var[keep, 0], "sqnorm": var[keep, 1]}
        for j, o in enumerate(self.spec.outputs):
            means[o] = mean[keep, 2 + j * d: 2 + (j + 1) * d]
            vars_[o] = var[keep, 2 + j * d: 2 + (j + 1) * d]
        steps_arr = np.arange(done_save + 1) * save_every
        return SimulationResult(
            t=steps_arr * tau, steps=steps_arr, mean=means, var=vars_, count=n[keep].astype(np.int64),
            paths=paths, mode=self.mode, name=self.spec.name, diverged=int(np.sum(DIV >= 0)),
            interrupted=interrupted, timing={"compile_s": self.compile_s, "run_s": t_run},
            notes=self.spec.notes, hyper=hv, seed=int(seed),
        )

    @staticmethod
    def _launch(kern, args, nblk, threads) -> None:
        """Blocks of paths split over ``threads`` OS threads (the kernel is ``nogil``).  Each block is
        owned by one thread and its statistics by that block, so the split does not change results."""
        n = threads or _default_threads()
        n = max(1, min(n, nblk))
        if n == 1:
            kern(*args, 0, nblk)
            return
        bounds = [(i * nblk // n, (i + 1) * nblk // n) for i in range(n)]
        futs = [_pool(n).submit(kern, *args, lo, hi) for lo, hi in bounds]
        for f in futs:
            f.result()

    def _kernel(self):
        return self.module.kernel

    @property
    def module(self):
        """The numba module (for the CUDA backend, a numba twin used for host-side snapshots)."""
        if self.backend == "numba":
            return self.source.module
        if getattr(self, "_twin", None) is None:
            from .codegen.numba_backend import NumbaSource

            self._twin = NumbaSource(self.spec, self.problem, self.scheme, "float64")
            self._twin.build()
        return self._twin.module


_POOLS: dict = {}


def _merge_blocks(n_b: np.ndarray, mean_b: np.ndarray, m2_b: np.ndarray):
    r"""Chan et al.'s combination of per-block statistics, all blocks at once (axis 0):
    :math:`n = \sum_b n_b,\ \bar y = \sum_b n_b \bar y_b / n,\
    M_2 = \sum_b \big(M_{2,b} + n_b (\bar y_b - \bar y)^2\big)`; ``n_b`` has one axis fewer than
    ``mean_b`` and ``m2_b`` (the observables).  One block gives its own mean and ``M2`` unchanged."""
    n = n_b.sum(0)
    w = n_b[..., None]
    mean = (w * mean_b).sum(0) / np.maximum(n, 1)[..., None]
    return n, mean, (m2_b + w * (mean_b - mean[None]) ** 2).sum(0)


def _default_threads() -> int:
    import os

    env = os.environ.get("SDEDERIVE_THREADS") or os.environ.get("NUMBA_NUM_THREADS")
    if env:
        return max(1, int(env))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _pool(n: int):
    from concurrent.futures import ThreadPoolExecutor

    if n not in _POOLS:
        _POOLS[n] = ThreadPoolExecutor(max_workers=n, thread_name_prefix="sdederive")
    return _POOLS[n]


def _tau_for(obj, regime) -> sp.Expr:
    if isinstance(obj, SDE):
        return sp.sympify(obj.tau)
    reg = _reg.get(regime if regime is not None else obj.natural_regime)
    return reg.tau


def compile(obj, problem: Problem, backend: str = "numba", dtype: str = "float64", scheme: str = "euler",
            regime: str | None = None) -> Simulator:
    """Compile a simulator.

    Parameters
    ----------
    obj: an :class:`~sdederive.sde.SDE` (simulate it) or an :class:`~sdederive.optimizers.Optimizer` /
        built-in name (run the discrete update rule).
    problem: a :class:`~sdederive.problems.Problem` (quadratic, logistic regression, custom ``f``).
    backend: ``"numba"`` (CPU, parallel over paths) or ``"cupy"`` (CUDA, one thread per path).
    dtype: ``"float64"`` or ``"float32"`` (the state's precision; random numbers are always drawn in
        double precision, so both dtypes see the same Gaussians).
    scheme: SDE integrator, ``"euler"`` (Euler–Maruyama, weak order 1) or ``"weak2"`` (Platen's
        explicit weak order-2 scheme; one noise source, uncorrelated noise).
    regime: discrete mode only: the regime whose ``tau`` defines the time axis ``t = k*tau``
        (default the optimizer's natural regime).
    """
    if backend not in _BACKENDS:
        raise UnknownNameError("backend", backend, _BACKENDS)
    if dtype not in _DTYPES:
        raise UnknownNameError("dtype", dtype, _DTYPES)
    if scheme not in _SCHEMES:
        raise UnknownNameError("scheme", scheme, _SCHEMES)
    if not isinstance(problem, Problem):
        raise SdederiveError(f"problem must be a sdederive.problems.Problem, got {type(problem).__name__}")
    correlated = bool(getattr(problem, "Sigma", None) is not None and problem.correlated) or isinstance(
        problem, LogisticRegression)
    if isinstance(obj, SDE):
        _check_noise_match(obj, problem)
        spec = sde_spec(obj, problem, correlated=correlated)
        if scheme == "weak2" and (spec.n_sources != 1 or spec.noise_form == "corr"):
            raise SdederiveError(
                f"scheme='weak2' needs one noise source per coordinate and uncorrelated noise; the {obj.optimizer} "
                f"SDE has {spec.n_sources} source(s){' and correlated noise' if spec.noise_form == 'corr' else ''}. "
                "Use scheme='euler'.")
    else:
        obj = _opt.get(obj)
        if scheme != "euler":
            raise SdederiveError("scheme applies to SDE mode only; the discrete optimizer is its own update rule")
        spec = discrete_spec(obj)
    tau_expr = _tau_for(obj, regime)
    t0 = time.perf_counter()
    if backend == "numba":
        from .codegen.numba_backend import NumbaSource

        src = NumbaSource(spec, problem, scheme, dtype)
    else:
        from .codegen.cuda_backend import CudaSource

        src = CudaSource(spec, problem, scheme, dtype)
    src.build()
    return Simulator(spec, problem, backend, dtype, scheme, src, obj, tau_expr, time.perf_counter() - t0)


def _check_noise_match(sde: SDE, problem: Problem) -> None:
    fam = sde.noise.split("+")[0]
    want = "student-t" if problem.noise == "student-t" else "gaussian"
    if fam != want:
        raise SdederiveError(
            f"the SDE was derived under {sde.noise} noise but the problem's noise is {problem.noise}; derive it "
            + (f"with noise=sd.StudentT(nu={problem.nu:g})" if want == "student-t" else "with noise='gaussian'"))

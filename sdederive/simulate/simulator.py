r"""Compiled ensemble simulators: `compile` and `Simulator`.

`sd.compile(sde, problem)` simulates the SDE (Euler–Maruyama, or `scheme="weak2"`: Platen's
explicit weak order-2 scheme); `sd.compile(optimizer, problem)` runs the discrete optimizer.
Both report, every `save_every` steps, the mean and variance across paths of the loss, of
`|x|^2` and of every state (in the discrete optimizer's variables), on the shared time axis
`t = k*tau` (`tau` the regime's time per step: `eta` or `eta**2`).

Random numbers are Philox4x32-10 keyed by `seed` and addressed by (path, step, coordinate), so
results do not depend on the thread count, and the discrete run and the SDE run of the same seed
use the *same* Gaussians (`g_k = grad + sigma z_k` and `dW_k = sqrt(tau) z_k`): their difference
has a much smaller variance than either, which the weak-error validators exploit.

SDE initial values.  The discrete optimizer starts from `x0` and the spec's state initial values
(PyTorch's `m = v = 0`).  Where the SDE is singular there (a bias correction `1 - e^{-ct}` at
`t = 0`, or a second-moment/accumulator state at 0 under a square root in a denominator), the
SDE starts one step later, at `t = tau`, from the *expected* discrete state after the first
step, `E[s_1]` (each coordinate's expectation over the gradient noise, by quadrature), mapped to
the SDE's variables (`u = eta**2 v`).  `init={"v": ...}` overrides those values.
"""

from __future__ import annotations

import functools
import signal
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import sympy as sp

from sdederive import regimes as _reg
from sdederive.errors import DivergenceError, HyperparameterError, SdederiveError, UnknownNameError
from sdederive.problems import Problem
from sdederive.sde import SDE
from sdederive.simulate._memory import fmt_bytes
from sdederive.simulate._quadrature import break_points, noise_expectation
from sdederive.simulate.backends.base import (
    AbstractBackend,
    BackendUnavailableError,
    KernelSource,
    RunArrays,
)
from sdederive.simulate.backends.registry import get_backend
from sdederive.simulate.spec import KernelSpec, discrete_spec, sde_spec, source_optimizer
from sdederive.spec import optimizers as _opt
from sdederive.spec.hyper import KINDS, check_value
from sdederive.spec.kinds import StateKind
from sdederive.symbols import sym

__all__ = ["compile", "Simulator", "SimulationResult", "check_run_args", "check_nonnegative_init"]

_SCHEMES = ("euler", "weak2")
_DTYPES = ("float64", "float32")
# keep_final: the most memory the per-path final values (x and loss, doubles) may take
_FINAL_MAX_BYTES = 2 * 2**30


@dataclass
class SimulationResult:
    """Snapshots across paths.  `mean[name]`/`var[name]`/`se[name]`: arrays over snapshots
    (`(n_save,)` for `loss` and `sqnorm`, `(n_save, d)` for states); `count[j]`: paths that
    entered snapshot `j` (all of them unless diverged paths were masked)."""

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
    #: steps completed and asked for (they differ after Ctrl-C or a divergence stop)
    steps_done: int = -1
    steps_total: int = -1
    timing: dict = field(default_factory=dict)
    notes: tuple = ()
    hyper: dict = field(default_factory=dict)
    seed: int = 0
    final: dict | None = None  # keep_final=True: per-path "x" (paths, d) and "loss" (paths,) at the end

    @property
    def se(self) -> dict:
        """Standard error of each mean: `sqrt(var/count)` (NaN where no path is left)."""
        c = np.maximum(self.count, 1).astype(float)
        return {k: np.sqrt(v / (c if v.ndim == 1 else c[:, None])) for k, v in self.var.items()}

    def to_pandas(self):
        """The snapshots as a long `pandas.DataFrame`: one row per (snapshot, observable,
        coordinate) with `step, t, observable, coord, mean, var, se, count` (`coord = -1` for
        `loss` and `sqnorm`); `df.attrs` holds mode, name, paths, seed.  Needs the `pandas` extra."""
        from sdederive._tables import simulation_frame

        return simulation_frame(self)

    @property
    def partial(self) -> bool:
        """Whether the run stopped before its last step (Ctrl-C)."""
        return bool(self.interrupted) or (0 <= self.steps_done < self.steps_total)

    def to_dict(self, timing: bool = True) -> dict:
        """Standard JSON-ready: `{"t", "mean", "var", "se", "count", "paths", "timing", ...}`.  A statistic
        without a value (a snapshot no path entered: `count` 0) is `null`, flagged by `"nonfinite": true`
        and `"no_paths_left"`; `"partial"` and `"steps_done"` say whether the run was interrupted.
        `timing=False` leaves out the wall-clock times, the one part that differs between two runs of the same
        seed: the rest is then the same bytes under `json_dumps`."""
        from sdederive._json import finite_or_none, has_nonfinite

        se = self.se
        raw = {"mean": self.mean, "var": self.var, "se": se}
        return {
            "mode": self.mode, "name": self.name, "t": self.t.tolist(), "steps": self.steps.tolist(),
            **{k: finite_or_none(v) for k, v in raw.items()},
            "nonfinite": has_nonfinite(raw), "no_paths_left": bool(self.count.size and self.count[-1] == 0),
            "count": self.count.tolist(), "paths": self.paths, "diverged": self.diverged,
            "interrupted": self.interrupted, "partial": self.partial, "steps_done": self.steps_done,
            "steps_total": self.steps_total, "notes": list(self.notes),
            "hyper": finite_or_none(self.hyper), "seed": self.seed,
            **({"timing": self.timing} if timing else {}),
        }


class _StopFlag:
    """While a run is in progress (main thread only), the first Ctrl-C sets this flag instead of raising
    `KeyboardInterrupt` in the middle of a chunk: the loop stops after the chunk, with consistent
    statistics, and returns them marked `interrupted`.  A second Ctrl-C raises as usual."""

    def __init__(self) -> None:
        self.set = False
        self._old = None
        if threading.current_thread() is threading.main_thread():
            try:
                self._old = signal.signal(signal.SIGINT, self._handler)
            except (ValueError, OSError):  # pragma: no cover - no signals here
                self._old = None

    def _handler(self, signum, frame) -> None:
        self.set = True
        self.restore()  # a second Ctrl-C raises KeyboardInterrupt

    def restore(self) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None

    def __bool__(self) -> bool:
        return self.set


class _Progress:
    """The progress bar of one `Simulator.run` call, from its first line to its last: the start-up
    stages (hyperparameters, the regime check, the start values with the SDE's expected first step, the host
    snapshots) by name, then the steps, then the statistics.  `tqdm.auto` when tqdm is installed (a widget in
    Jupyter, a text bar in a terminal); otherwise a one-line text bar on `stream`.  A disabled one
    (`progress=False`) does nothing and is false."""

    def __init__(self, total: int, enabled: bool, desc: str = "", stream=None) -> None:
        self.enabled, self.total, self.stream = bool(enabled), int(total), stream or sys.stderr
        self.t0 = time.perf_counter()
        self._tq = None
        self._stage = "start-up"
        self._done = 0
        if not self.enabled:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            tqdm = None
        if tqdm is not None:
            self._tq = tqdm(total=self.total, desc=desc or None, unit="step", file=self.stream, leave=True,
                            dynamic_ncols=True)
        self.stage("start-up")

    def __bool__(self) -> bool:
        return self.enabled

    def stage(self, name: str) -> None:
        """Show what the run is doing before (or after) its steps."""
        if not self.enabled:
            return
        self._stage = name
        if self._tq is not None:
            self._tq.set_postfix_str(name)
        else:
            self._line()

    def update(self, done: int) -> None:
        """`done` of the `total` steps are finished."""
        if not self.enabled:
            return
        self._done = int(done)
        self._stage = "steps"
        if self._tq is not None:
            self._tq.update(self._done - self._tq.n)
            self._tq.set_postfix_str("steps", refresh=False)
        else:
            self._line()

    def close(self) -> None:
        if not self.enabled:
            return
        if self._tq is not None:
            self._tq.close()
        else:
            self._line()
            self.stream.write("\n")
            self.stream.flush()
        self.enabled = False

    def _line(self) -> None:
        frac = self._done / max(self.total, 1)
        el = time.perf_counter() - self.t0
        left = f"~{el / frac - el:6.1f}s left" if frac > 0 else ""
        bar = "#" * int(30 * frac)
        self.stream.write(f"\r[{bar:<30}] {self._done}/{self.total} steps  {el:6.1f}s elapsed  {left:<14} "
                          f"{self._stage:<16}")
        self.stream.flush()


def _timed(run):
    """`timing["total_s"]`: the wall time of the whole call (start values, set-up and the kernel), and
    `timing["start_s"]`, its part outside the kernel (`total_s - run_s`): what a user waits for.  The
    `progress` flag becomes the call's `_Progress` (covering the same span) and is closed at the end,
    also when the run raises."""
    import inspect

    sig = inspect.signature(run)

    @functools.wraps(run)
    def wrapper(self, *args, **kwargs):
        t0 = time.perf_counter()
        bound = sig.bind(self, *args, **kwargs)
        bound.apply_defaults()
        bar = _Progress(bound.arguments["steps"] if isinstance(bound.arguments["steps"], (int, np.integer)) else 0,
                        bool(bound.arguments["progress"]), desc=f"{self.spec.mode} {self.spec.name}")
        bound.arguments["progress"] = bar
        try:
            res = run(*bound.args, **bound.kwargs)
            bar.stage("done")
        finally:
            bar.close()
        res.timing["total_s"] = time.perf_counter() - t0
        res.timing["start_s"] = res.timing["total_s"] - res.timing.get("run_s", 0.0)
        return res

    return wrapper


class Simulator:
    """A compiled kernel plus what it needs to run (see `compile`).

    `backend` is the backend's name, `backend_impl` its `AbstractBackend`
    (which `run` drives), `source` the generated `KernelSource`
    (`source.text`) and `handle` what the backend built from it."""

    def __init__(self, spec: KernelSpec, problem: Problem, backend: str | AbstractBackend, dtype: str, scheme: str,
                 source: KernelSource, obj, tau_expr: sp.Expr, compile_s: float, handle=None):
        self.backend_impl = backend if isinstance(backend, AbstractBackend) else get_backend(backend)
        self.backend = self.backend_impl.name
        self.spec, self.problem, self.dtype, self.scheme = spec, problem, dtype, scheme
        self.source, self.obj, self.tau_expr, self.compile_s = source, obj, tau_expr, compile_s
        self.handle = self.backend_impl.build(source) if handle is None else handle
        self._host = None

    @property
    def mode(self) -> str:
        return self.spec.mode

    def _n_blocks(self, paths: int) -> int:
        """The statistics blocks of a run (a function of `paths` alone, so results do not depend on threads)."""
        return int(min(paths, 64))

    # -- hyperparameters ------------------------------------------------------------------------
    def _hyper_table(self) -> dict:
        if isinstance(self.obj, SDE):
            return {n: (kind, default) for n, kind, default in self.obj.hypers}
        return {h.name: (h.kind, h.default) for h in self.obj.hypers}

    def resolve_hyper(self, eta=None, hyper=None) -> dict:
        table = self._hyper_table()
        values = {n: d for n, (_, d) in table.items() if d is not None}
        if hyper is not None and not isinstance(hyper, Mapping):
            raise HyperparameterError(f"hyper={str(hyper)[:60]} ({type(hyper).__name__}) is not allowed; allowed: a "
                                      f"dict name -> value of the hyperparameters {', '.join(table)}")
        given = dict(hyper or {})
        if eta is not None:
            if "eta" in given and given["eta"] != eta:
                raise HyperparameterError(f"eta is given twice, eta={eta!r} and hyper eta={given['eta']!r} (CLI: "
                                          "--eta and --hp eta=); allowed: one of them")
            given["eta"] = eta
        for k, v in given.items():
            if k not in table:
                raise UnknownNameError(f"hyperparameter of {self.spec.name}", k, table)
            if isinstance(v, (bool, np.bool_)):
                raise HyperparameterError(f"hyperparameter {k}={v!r} is a boolean; allowed: a number, "
                                          f"{KINDS[table[k][0]][0]}")
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
                if self.problem.kernel_scalar("nu") is None:
                    raise SdederiveError("the SDE uses nu (Student-t noise) but the problem has Gaussian noise")
                out.append(self.problem.kernel_scalar("nu"))
            elif s == "B":
                b = self.problem.kernel_scalar("B")
                out.append(1.0 if b is None else float(b))
            else:  # pragma: no cover - spec construction refuses these
                raise SdederiveError(f"no value for kernel parameter {s!r}")
        return np.array(out + [0.0], dtype=np.float64)

    # -- problem data -----------------------------------------------------------------------------
    def _problem_arrays(self):
        """`(PV, PM, PL, PY)`: the problem's parameter pack (filled by field name, read by the kernels at the
        named offsets of its `ParamLayout`) and its matrix/label slots."""
        return self.problem.kernel_arrays()

    # -- initial state ----------------------------------------------------------------------------
    def _discrete_init(self, opt) -> dict:
        out = {"x": self.problem.x0.copy()}
        for s in opt.states:
            out[s.name] = np.full(self.problem.d, float(s.init))
        return out

    def initial_state(self, hv: dict, init: dict | None = None):
        """`(k_start, states)`: the step the kernel starts at and the per-state initial vectors (kernel
        variables).  See the module docstring for the SDE rule."""
        p = self.problem
        init = dict(init or {})
        if self.mode == "discrete":
            st = self._discrete_init(self.obj)
            check_nonnegative_init(init, {s.name: s.kind for s in self.obj.states}, self.obj.name)
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
        check_nonnegative_init(init, {k: s.kind for k, s in kinds.items()}, sde.optimizer)
        singular_states = [
            outputs[s] for s in sde.states[1:]
            if outputs[s] in kinds and kinds[outputs[s]].kind in (StateKind.SECOND_MOMENT, StateKind.ACCUMULATOR)
            and kinds[outputs[s]].init == 0.0 and outputs[s] not in init
        ]
        offset = singular_t or bool(singular_states)
        disc = self._disc_init_vector()
        if offset:
            if opt is None:
                raise SdederiveError(
                    f"the SDE of {sde.optimizer!r} is singular at t = 0 and carries no optimizer (sde.source is None: "
                    "built by hand, or read from an old JSON without \"source\") that is not a built-in, so "
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
        return np.asarray(self.problem.noise_scale(x), float)

    def _grad_at(self, x):
        return np.asarray(self.problem.grad(x), float)

    def _expected_first_step(self, opt, hv: dict) -> dict:
        """`E[s_1]` per coordinate over `g = grad(x0) + sigma z`, all coordinates at once
        (`sdederive.simulate._quadrature.noise_expectation`: Gauss–Legendre pieces cut at `g = 0` and at
        the update's other kinks and jumps in `g`, `break_points`)."""
        p = self.problem
        x0 = p.x0
        gr = self._grad_at(x0)
        sg = self._noise_scale_at(x0)
        nu = float(p.nu) if p.noise == "student-t" else None
        args = [sym("x"), sym("g"), sym("k")] + [s.symbol for s in opt.states] + [h.symbol for h in opt.hypers]
        init = self._discrete_init(opt)
        hvals = [float(hv[h.name]) for h in opt.hypers]
        full = [np.broadcast_to(x0, gr.shape), None, 0.0] + [init[s.name] for s in opt.states] + hvals
        out = {}
        for name, expr in opt.update:
            f = sp.lambdify(args, expr, "numpy")
            # kinks and jumps of the update in g (clipping at +-c, sign(g - a)): cut the rule there too
            roots = break_points(expr, sym("g"))
            rf = sp.lambdify(args, roots, "numpy") if roots else None
            vals = np.empty(p.d)
            for lo in range(0, p.d, 512):  # blocks of coordinates: the (rows, nodes) arrays stay in cache
                rows = slice(lo, min(lo + 512, p.d))
                cols = [np.asarray(a, float)[rows, None] if np.ndim(a) else a for a in full]

                def F(g, f=f, cols=cols):
                    # every argument as a full array: numpy's Max/Min printers stack their arguments
                    return np.broadcast_to(f(*np.broadcast_arrays(*[g if a is None else a for a in cols])), g.shape)

                breaks = None
                if rf is not None:
                    at = [c[:, 0] if np.ndim(c) else c for c in cols]
                    at[1] = gr[rows]
                    breaks = np.stack([np.broadcast_to(np.asarray(r, float), gr[rows].shape) for r in rf(*at)], axis=1)
                vals[rows] = noise_expectation(F, gr[rows], sg[rows], nu, breaks)
            out[name] = vals
        return out

    # -- running ----------------------------------------------------------------------------------
    @_timed
    def run(self, paths: int = 1000, steps: int = 1000, eta: float | None = None, hyper: dict | None = None,
            seed: int = 0, save_every: int = 1, init: dict | None = None, mask_diverged: bool = False,
            progress: bool = False, substeps: int = 1, chunk_seconds: float = 0.5,
            threads: int | None = None, keep_final: bool = False) -> SimulationResult:
        """Simulate `paths` independent paths for `steps` steps (`t = steps*tau`).

        `eta` and `hyper` are the *discrete* hyperparameters in both modes.  `substeps` (SDE
        mode) splits each `tau` into that many integrator steps.  A non-finite state, or at a snapshot
        a non-finite or overflowing observable of a finite state (the loss of a huge `x`), raises
        `DivergenceError` naming the first path and step, unless
        `mask_diverged` (then those paths leave the statistics and `result.diverged` counts them; a
        snapshot no path is left in has NaN statistics and `count` 0).  A mean or variance that is still
        not finite raises `DivergenceError` in both cases.  The memory the run
        needs is estimated first and refused (`MemoryLimitError`) above 80 % of the
        available memory.  Ctrl-C stops at the end of the current chunk and returns what was computed
        (`result.interrupted`, `result.partial`, `result.steps_done` of `result.steps_total`); a
        second Ctrl-C interrupts the chunk.  `keep_final`: also return every path's final `x` and loss
        (`result.final`; NaN rows for diverged paths), refused above `_FINAL_MAX_BYTES`.
        """
        check_run_args(paths=paths, steps=steps, save_every=save_every, substeps=substeps, seed=seed, threads=threads,
                       chunk_seconds=chunk_seconds)
        if steps * substeps >= 2**32:
            raise SdederiveError(f"steps*substeps={steps * substeps} exceeds the 2**32 Philox step counter")
        if self.mode == "discrete" and substeps != 1:
            raise SdederiveError("substeps applies to SDE mode only; the discrete optimizer takes one step per k")
        self._check_memory(paths, steps // save_every, threads)
        if keep_final and paths * (self.problem.d + 1) * 8 > _FINAL_MAX_BYTES:
            raise SdederiveError(f"keep_final with paths={paths} and d={self.problem.d} needs "
                                 f"{paths * (self.problem.d + 1) * 8 / 2**30:.2f} GiB for the per-path final values; "
                                 f"allowed: at most {_FINAL_MAX_BYTES / 2**30:.0f} GiB (fewer paths)")
        init = _check_init(init, self.problem.d)
        progress.stage("hyperparameters")
        hv = self.resolve_hyper(eta, hyper)
        if self.mode == "sde" and getattr(_reg.REGIMES.get(self.obj.regime), "scale_noise", False):
            # a RegimeWarning when the problem is outside the SDE's regime (sdederive.analysis.regime_check)
            from sdederive.analysis.regime_check import regime_check

            regime_check(self.obj, self.problem, hv["eta"], hv).warn(stacklevel=3)  # the caller of run (through _timed)
        tau = float(self.tau_expr.subs(sym("eta"), hv["eta"]))
        HP = self._scalar_values(hv)
        PV, PM, PL, PY = self._problem_arrays()
        progress.stage("start values")
        k_start, st0 = self.initial_state(hv, init)
        S, d = len(self.spec.states), self.problem.d
        state = np.empty((paths, S, d), dtype=np.float64)
        for j, s in enumerate(self.spec.states):
            state[:, j, :] = st0[s]
        n_save = steps // save_every
        nblk = self._n_blocks(paths)
        nobs = 2 + len(self.spec.outputs) * d
        MEAN = np.zeros((nblk, n_save + 1, nobs))
        M2 = np.zeros_like(MEAN)
        CNT = np.zeros((nblk, n_save + 1), dtype=np.int64)
        DIV = np.full(paths, -1, dtype=np.int64)
        key0, key1 = int(seed) & 0xFFFFFFFF, (int(seed) >> 32) & 0xFFFFFFFF
        # host snapshots of the deterministic start (all paths equal)
        progress.stage("first snapshot")
        snap0 = self._host_obs(self._step0_state(k_start, st0), PV, PM, PL, PY, HP, discrete=True)
        self._put_snapshot(MEAN, CNT, 0, snap0, paths)
        if k_start > 0 and k_start % save_every == 0:
            self._put_snapshot(MEAN, CNT, k_start // save_every,
                               self._host_obs(st0, PV, PM, PL, PY, HP, discrete=False), paths)
        impl = self.backend_impl
        run = RunArrays(state, DIV, HP, PV, PM, PL, PY, MEAN, M2, CNT, save_every, substeps, tau, key0, key1,
                        threads, k_start)
        impl.start(self.handle, run)
        t_run = 0.0
        k = k_start
        # first chunk small (a progress update soon, Ctrl-C answered soon); later ones sized to chunk_seconds
        # (a backend may end a chunk elsewhere: AbstractBackend.chunk_end)
        chunk = max(1, min(steps - k_start, int(1e6 // max(1, paths * d * S)), max(1, steps // 100)))
        interrupted = False
        stop = _StopFlag()
        try:
            while k < steps and not stop:
                k_end = impl.chunk_end(k, steps, save_every, chunk)
                c0 = time.perf_counter()
                impl.run_chunk(self.handle, run, k, k_end)
                el = time.perf_counter() - c0
                t_run += el
                k = k_end
                progress.update(k)
                if not mask_diverged and impl.any_diverged(run):
                    break
                if el > 0:
                    chunk = max(1, int(chunk * min(4.0, chunk_seconds / el)))
        except KeyboardInterrupt:  # a second Ctrl-C, inside a chunk (CPU threads finish it in the background)
            interrupted = True
        finally:
            stop.restore()
        interrupted = interrupted or bool(stop)
        impl.finish(self.handle, run)
        progress.stage("statistics")
        res = self._finish(MEAN, M2, CNT, n_save, k, steps, save_every, tau, paths, DIV, hv, seed, interrupted,
                           t_run, mask_diverged)
        return self._keep_final(res, state, DIV, PV, PM, PL, PY) if keep_final else res

    def _finish(self, MEAN, M2, CNT, n_save, k, steps, save_every, tau, paths, DIV, hv, seed, interrupted, t_run,
                mask_diverged) -> SimulationResult:
        """The result of the run, then the checks: a diverged path (unless masked), then any
        statistic that is still non-finite."""
        res = self._result(MEAN, M2, CNT, n_save, k // save_every, save_every, tau, paths, DIV, hv, seed,
                           interrupted, t_run)
        res.steps_done, res.steps_total = int(k), int(steps)
        if not mask_diverged:
            self._raise_if_diverged(DIV, tau, k, res)
        self._raise_if_nonfinite(res)
        return res

    def _keep_final(self, res, state, DIV, PV, PM, PL, PY) -> SimulationResult:
        """`res` with `final = {"x": (paths, d), "loss": (paths,)}` from the kernel's final states."""
        x = np.array(state[:, 0, :], dtype=np.float64)
        x[DIV >= 0] = np.nan
        W = np.zeros(2 * PM.shape[0] + 4)
        fin = np.isfinite(x).all(1)
        loss = np.full(x.shape[0], np.nan)
        out = np.empty(int(fin.sum()))
        self.module.host_loss(np.ascontiguousarray(x[fin]), PV, PM, PL, PY, W, out)
        loss[fin] = out
        res.final = {"x": x, "loss": loss}
        return res

    def _raise_if_nonfinite(self, res: SimulationResult) -> None:
        """`DivergenceError` for a non-finite mean or variance at a snapshot that has paths (the kernels
        drop a path whose observables are non-finite or overflow; this catches a variance across finite paths
        that overflows all the same).  Snapshots without paths (all masked) hold NaN and are not errors."""
        live = res.count > 0
        for name in res.mean:
            for arr, what in ((res.mean[name], "mean"), (res.var[name], "variance")):
                bad = ~np.isfinite(arr.reshape(len(arr), -1)).all(1) & live
                if bad.any():
                    j = int(np.flatnonzero(bad)[0])
                    step = int(res.steps[j])
                    raise DivergenceError(
                        f"{self.spec.mode} simulation of {self.spec.name}: the {what} of {name} across the "
                        f"{int(res.count[j])} paths is not finite at step {step} (t = {res.t[j]:.6g}), although "
                        "each path's value is: they are too large to be averaged. Lower eta.", None, step,
                        int(res.diverged), res)

    def _check_memory(self, paths: int, n_save: int, threads: int | None) -> None:
        """Estimate the host memory of a run before allocating it (`check_memory`):
        the state and divergence arrays (per path), the per-block snapshot statistics and the temporaries of
        their merge (per snapshot), and for the discrete optimizer on logistic regression the minibatch index
        buffer of every kernel thread (`B` integers each)."""
        from sdederive.simulate._memory import check_memory

        S, d = len(self.spec.states), self.problem.d
        nblk = self._n_blocks(paths)
        nobs = 2 + len(self.spec.outputs) * d
        per_path = 8.0 * (S * d + 1)
        # the merge (merge_blocks) holds two temporaries of the blocks' statistics' size at its peak (measured
        # 2.08x MEAN, docs/benchmarks.md section 7), plus its results
        stats = 8.0 * nblk * (n_save + 1) * (2 * nobs + 1) + 8.0 * (2 * nblk + 4) * (n_save + 1) * nobs
        work = 0.0
        if self.problem.minibatch and self.mode == "discrete":
            work = 8.0 * (self.problem.B + 4) * min(nblk, threads or _default_threads())
        need = per_path * paths + stats + work
        parts = [f"{paths} paths x {S} state(s) x d={d}: {fmt_bytes(per_path * paths)}",
                 f"{n_save + 1} snapshots x {nobs} observables: {fmt_bytes(stats)}"]
        if work:
            parts.append(f"minibatch indices (B={self.problem.B}): {fmt_bytes(work)}")
        check_memory(need, f"this run ({'; '.join(parts)})",
                     "lower paths or d (or B), raise save_every, or split the run over seeds")

    def _raise_if_diverged(self, DIV, tau, k, res) -> None:
        """`DivergenceError` naming the first (smallest-index) diverged path and its step."""
        bad = np.flatnonzero(DIV >= 0)
        if bad.size == 0:
            return
        p0 = int(bad[0])
        raise DivergenceError(
            f"{self.spec.mode} simulation of {self.spec.name} diverged: path {p0} became non-finite at step "
            f"{int(DIV[p0])} (t = {int(DIV[p0]) * tau:.6g}; a state, or at a snapshot its loss or another "
            "observable, which are checked every save_every steps); "
            f"{bad.size} of {DIV.size} paths diverged by step {k}. "
            "Lower eta, or pass mask_diverged=True (CLI: --mask-diverged) to drop diverged paths from the "
            "statistics.", p0, int(DIV[p0]), int(bad.size), res)

    def _disc_init_vector(self) -> dict:
        """The discrete optimizer's initial states (`x0`, the spec's inits), keyed by discrete name."""
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

    def _step0_state(self, k_start: int, st0: dict) -> dict:
        """The state of the snapshot at step 0, in discrete variables: the discrete optimizer's start (the
        SDE's `init` values are in its own variables and may start at step 1)."""
        return self._disc_init_vector()

    def _host_obs(self, st: dict, PV, PM, PL, PY, HP, discrete: bool) -> np.ndarray:
        # the module's cached host_loss/host_obs (float64), not prob_loss/obs themselves: those would be compiled
        # for Python arguments in every process
        mod = self.module
        x = np.ascontiguousarray(st["x"], dtype=np.float64)
        W = np.zeros(2 * PM.shape[0] + 4)
        loss = np.empty(1)
        mod.host_loss(x[None, :], PV, PM, PL, PY, W, loss)
        vals = [loss, np.array([float(x @ x)])]
        if discrete:  # already in discrete variables
            for o in self.spec.outputs:
                vals.append(np.asarray(st[o], float))
        else:
            ST = np.ascontiguousarray(np.stack([np.broadcast_to(np.asarray(st[s], float), (self.problem.d,))
                                                for s in self.spec.states]))
            outs = np.empty((len(self.spec.outputs), self.problem.d))
            mod.host_obs(ST, np.asarray(HP, np.float64), outs)
            vals += list(outs)
        return np.concatenate(vals)

    @staticmethod
    def _put_snapshot(MEAN, CNT, j, vec, paths) -> None:
        nblk = MEAN.shape[0]
        for b in range(nblk):
            MEAN[b, j] = vec
            CNT[b, j] = (b + 1) * paths // nblk - b * paths // nblk

    def _result(self, MEAN, M2, CNT, n_save, done_save, save_every, tau, paths, DIV, hv, seed, interrupted,
                t_run) -> SimulationResult:
        # the per-block Welford statistics, combined by the backend (merge_blocks: Chan et al.)
        with np.errstate(over="ignore", invalid="ignore"):
            return self._result_inner(MEAN, M2, CNT, n_save, done_save, save_every, tau, paths, DIV, hv, seed,
                                      interrupted, t_run)

    def _result_inner(self, MEAN, M2, CNT, n_save, done_save, save_every, tau, paths, DIV, hv, seed, interrupted,
                      t_run) -> SimulationResult:
        n, mean, m2 = self.backend_impl.reduce(CNT.astype(float), MEAN, M2)
        var = m2 / np.maximum(n - 1, 1)[:, None]
        # a snapshot no path entered (all diverged and masked) has no statistics, not zeros
        mean[n == 0] = np.nan
        var[n == 0] = np.nan
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

    @property
    def module(self):
        """The numba module with the kernel's `prob_loss` and `obs`, evaluated on the host (the snapshots of
        the start, `keep_final`): the kernel's own module on numba; a float64 numba twin for other backends."""
        if self._host is None:
            self._host = self.backend_impl.host_module(self.source, self.handle)
        return self._host


def check_run_args(paths=1, steps=1, save_every=1, substeps=1, seed=0, threads=None, chunk_seconds=0.5) -> None:
    """Validate the size arguments of `Simulator.run` (shared by the API, the CLI and sweeps):
    `paths`, `steps`, `save_every`, `substeps` integers >= 1 (not `bool`), `save_every <= steps`,
    `seed` an integer in `[0, 2**64)`, `threads` `None` or an integer >= 1, `chunk_seconds > 0`;
    raises `SdederiveError` naming the value."""
    for nm, v in (("paths", paths), ("steps", steps), ("save_every", save_every), ("substeps", substeps)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, (bool, np.bool_)) or v < 1:
            raise SdederiveError(f"{nm}={v!r} is invalid; allowed: an integer >= 1")
    if save_every > steps:
        raise SdederiveError(f"save_every={save_every} is larger than steps={steps}: no snapshot after the start; "
                             "allowed: 1 <= save_every <= steps")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, (bool, np.bool_)) or not 0 <= int(seed) < 2**64:
        raise SdederiveError(f"seed={seed!r} is invalid; allowed: an integer in [0, 2**64)")
    if threads is not None and (not isinstance(threads, (int, np.integer)) or isinstance(threads, (bool, np.bool_))
                                or threads < 1):
        raise SdederiveError(f"threads={threads!r} is invalid; allowed: None (all cores) or an integer >= 1")
    if isinstance(chunk_seconds, (bool, np.bool_)) or not isinstance(chunk_seconds, (int, float)) or not (
            0 < chunk_seconds < float("inf")):
        raise SdederiveError(f"chunk_seconds={chunk_seconds!r} is invalid; allowed: a finite number > 0")


def _check_init(init, d: int) -> dict:
    """`init` of `Simulator.run` as a dict of state name -> finite float vector of length `d` (a number is
    broadcast); `SdederiveError` naming the state and value otherwise (a NaN start would only show up as a
    divergence at step 1).  The names are checked against the states by `initial_state`."""
    if init is None:
        return {}
    if not isinstance(init, Mapping):
        raise SdederiveError(f"init={str(init)[:60]} ({type(init).__name__}) is not allowed; allowed: a dict state "
                             "name -> a number or a list of d numbers")
    out = {}
    for k, v in init.items():
        what = f"init of state {k!r} = {str(v)[:60]}"
        if isinstance(v, (str, bytes, bool, np.bool_)) or v is None:
            raise SdederiveError(f"{what} is not allowed; allowed: a finite number or a list of d = {d} of them")
        try:
            a = np.asarray(v, dtype=float)
        except (TypeError, ValueError):
            raise SdederiveError(f"{what} is not allowed; allowed: a finite number or a list of d = {d} of "
                                 "them") from None
        if a.ndim > 1 or (a.ndim == 1 and a.size != d):
            raise SdederiveError(f"{what} has shape {a.shape}; allowed: a number or a vector of length d = {d}")
        if not np.all(np.isfinite(a)):
            raise SdederiveError(f"{what} is not finite; allowed: finite numbers")
        out[k] = np.broadcast_to(a, (d,)).copy()
    return out


def check_nonnegative_init(init: Mapping, kinds: Mapping, name: str) -> None:
    """`SdederiveError` for an `init` value below 0 of a state whose declared kind is nonnegative (a second moment or
    an accumulator of `g**2`, `StateKind.nonnegative`): such a start would be taken under a square root at the
    first step and reported as a divergence of every path, with the advice to lower `eta`.  `kinds`: state name ->
    its kind (states without one are not checked)."""
    for k, v in init.items():
        kind = kinds.get(k)
        try:
            nonneg = kind is not None and StateKind(kind).nonnegative
        except ValueError:
            nonneg = False
        if nonneg:
            a = np.atleast_1d(np.asarray(v, float))
            bad = np.flatnonzero(a < 0)
            if bad.size:
                i = int(bad[0])
                raise SdederiveError(
                    f"init of state {k!r} of {name!r} has {float(a[i])!r} (coordinate {i}); state {k!r} "
                    f"has kind {StateKind(kind).value!r} (an average or a sum of g**2): allowed: numbers >= 0")


def _check_tau(sde) -> sp.Expr:
    """The time per step of an SDE to simulate: `c*eta**q` with a number `c > 0` and a rational `q > 0`
    (what every regime has), so that `t = k*tau` is a positive time once `eta` is given.  An SDE read from
    JSON could hold any expression there (`0`, `-eta`, another symbol)."""
    from sdederive.errors import RegimeMismatchError

    tau, name = sde.tau, sde.optimizer
    try:
        c, _, _ = _reg._tau_form(str(sde.regime), tau)
    except RegimeMismatchError as e:
        raise SdederiveError(f"the SDE of {name!r} cannot be simulated: {e}") from None
    if not c.is_number:
        raise SdederiveError(f"the SDE of {name!r} cannot be simulated: its tau = {tau} has the symbol(s) "
                             f"{sorted(map(str, c.free_symbols))} besides eta; allowed: tau = c*eta**q with a "
                             "number c > 0")
    return sp.sympify(tau)


def _default_threads() -> int:
    """The numba backend's thread count for `threads=None` (`
    default_threads`), for the memory estimate."""
    from sdederive.simulate.backends.numba_backend import default_threads

    return default_threads()


def _tau_for(obj, regime) -> sp.Expr:
    if isinstance(obj, SDE):
        _check_regime_of_sde(obj, regime)
        return _check_tau(obj)
    reg = _reg.get(regime if regime is not None else obj.natural_regime)
    return reg.tau


def compile(obj, problem: Problem, backend: str = "numba", dtype: str = "float64", scheme: str = "euler",
            regime: str | None = None, inner: int | None = None) -> Simulator:
    """Compile a simulator.

    Parameters
    ----------
    obj
        an `SDE` (simulate it) or an `Optimizer` /
        built-in name (run the discrete update rule).
    problem
        a `Problem` (quadratic, logistic regression, custom `f`).
    backend
        `"numba"` (CPU, parallel over paths), `"cupy"` (CUDA, one thread per path), or any name
        registered with `register_backend`
        (`backend_names`).
    dtype
        `"float64"` or `"float32"` (the state's precision; random numbers are always drawn in
        double precision, so both dtypes see the same Gaussians). A vector kernel on a dense
        quadratic also keeps the step's other vectors in float32 and makes its matrix products
        in float32 (BLAS `sgemm`); its norms and scalars stay double.
    scheme
        SDE integrator, `"euler"` (Euler–Maruyama, weak order 1) or `"weak2"` (Platen's
        explicit weak order-2 scheme; one noise source, uncorrelated noise).
    regime
        discrete mode only: the regime whose `tau` defines the time axis `t = k*tau`
        (default the optimizer's natural regime).
    inner
        vector SDEs whose diffusion is the root of a covariance with expectation atoms (SAM, NSGD,
        clipped SGD, the clipped EMA of adamw_clip): inner Monte Carlo samples per step (default 8, at
        least 2; see `sdederive.simulate.vector_lower`).  Refused for everything else.

    A `VectorSDE` or a vector optimizer (`usam`, `sam`, `nsgd`, `clip_sgd`, or one written with
    `sd.vectors`) gets a vector kernel (`sdederive.simulate.vector_sim`).
    """
    from sdederive.sde_vector import VectorSDE
    from sdederive.spec import vector as _vec

    if isinstance(obj, VectorSDE) or (not isinstance(obj, SDE) and _vec.is_vector(obj)):
        from sdederive.simulate.vector_lower import DEFAULT_INNER
        from sdederive.simulate.vector_sim import compile_vector

        if not isinstance(problem, Problem):
            raise SdederiveError(f"problem must be a sdederive.problems.Problem, got {type(problem).__name__}")
        from sdederive.simulate.vector_lower import sampled_noise

        if inner is not None and not (isinstance(obj, VectorSDE) and sampled_noise(obj)):
            raise SdederiveError(f"inner={inner!r} applies to vector SDEs whose diffusion is sampled (SAM, NSGD, "
                                 "clipped SGD, adamw_clip); this simulator draws no inner samples")
        return compile_vector(obj, problem, backend, dtype, scheme, regime, DEFAULT_INNER if inner is None else inner)
    if inner is not None:
        raise SdederiveError(f"inner={inner!r} applies to vector SDEs only")
    impl = get_backend(backend)  # UnknownNameError listing the registered names
    if dtype not in _DTYPES:
        raise UnknownNameError("dtype", dtype, _DTYPES)
    if scheme not in _SCHEMES:
        raise UnknownNameError("scheme", scheme, _SCHEMES)
    if not isinstance(problem, Problem):
        raise SdederiveError(f"problem must be a sdederive.problems.Problem, got {type(problem).__name__}")
    if problem.noise == "multivariate-t":
        raise SdederiveError(
            f"the problem's noise is the multivariate Student-t (noise='multivariate-t', nu={problem.nu:g}: one "
            "W ~ chi2_nu shared by all coordinates), the vector engine's law; the scalar kernels of "
            f"{getattr(obj, 'name', None) or getattr(obj, 'optimizer', obj)!r} draw Gaussian or per-coordinate "
            "Student-t noise only. Use a vector optimizer (sd.vectors, or usam/sam/nsgd/clip_sgd) or a VectorSDE, "
            "or give the problem noise='student-t' (an independent t per coordinate) or 'gaussian'")
    correlated = bool(problem.correlated)
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
    ok, why = impl.available()
    if not ok:
        raise BackendUnavailableError(why or f"backend {impl.name!r} cannot run here")
    source = impl.generate(spec, problem, scheme, dtype)
    handle = impl.build(source)
    return Simulator(spec, problem, impl, dtype, scheme, source, obj, tau_expr, time.perf_counter() - t0,
                     handle=handle)


def _check_regime_of_sde(sde, regime) -> None:
    """`regime` of `compile` sets the time axis of a discrete run; an SDE has its own (it was derived in one),
    so another regime given with it would be ignored: refused."""
    if regime is not None and str(regime) != str(sde.regime):
        raise SdederiveError(f"regime={regime!r} applies to discrete mode only; this SDE was derived in the regime "
                             f"{sde.regime!r}, which fixes its time axis; derive it with regime={regime!r} instead")


def _check_noise_match(sde: SDE, problem: Problem) -> None:
    fam = sde.noise.split("+")[0]
    want = "student-t" if problem.noise == "student-t" else "gaussian"
    if fam != want:
        raise SdederiveError(
            f"the SDE was derived under {sde.noise} noise but the problem's noise is {problem.noise}; derive it "
            + (f"with noise=sd.StudentT(nu={problem.nu:g})" if want == "student-t" else "with noise='gaussian'"))

r"""Run a `Grid` on any `concurrent.futures.Executor`.

Each cell compiles (or reuses: kernels are cached on disk and in the worker process) the
discrete optimizer or its SDE, rescales the problem's noise to the cell's batch size
($\sigma/\sqrt B$, $\Sigma/B$; a real minibatch size for logistic regression), runs
`paths` paths for `steps` steps and returns one row.  The driver writes each row to disk as
its future completes (`sdederive.sweep.store`), so a killed sweep keeps every finished cell
and `resume=True` skips them.

Executors: `None` is a local process pool (`spawn` context, one single-threaded kernel per
process); a Dask cluster is `client.get_executor()` (tested on a `distributed.LocalCluster`);
a GPU cell asks for `backend="cupy"` (one Dask worker per GPU, e.g. `dask_cuda.LocalCUDACluster`).
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from pathlib import Path

import numpy as np

from sdederive.errors import SdederiveError
from sdederive.problems import LogisticRegression, Problem, Quadratic
from sdederive.sweep import store
from sdederive.sweep.grid import RESERVED, Grid, cell_id

__all__ = ["run", "run_cell", "with_batch"]


def with_batch(problem: Problem, B: int | None) -> Problem:
    """The problem at batch size `B`: noise `sigma/sqrt(B)` (`Sigma/B`) on a quadratic (its
    `sigma` is per example), the minibatch size `B` for logistic regression."""
    if B is None:
        return problem
    if isinstance(problem, LogisticRegression):
        return replace(problem, B=int(B))
    if isinstance(problem, Quadratic):
        if problem.Sigma is not None:
            return Quadratic(h=problem.h, H=problem.H, Sigma=problem.Sigma / B, noise=problem.noise, nu=problem.nu,
                             x0=problem.x0)
        return Quadratic(h=problem.h, H=problem.H, sigma=problem.sigma / np.sqrt(B), noise=problem.noise,
                         nu=problem.nu, x0=problem.x0)
    raise SdederiveError(f"a batch-size axis needs a Quadratic or LogisticRegression problem, got "
                         f"{type(problem).__name__}")


def _optimizer(name: str, specs: Mapping | None):
    """The cell's optimizer: a user spec of that name (`specs`), else the built-in."""
    return specs[name] if specs and name in specs else name


def _get_optimizer(name, **hyper):
    """A scalar or vector optimizer (built-in name or spec), its hyperparameters checked."""
    from sdederive.spec import optimizers as opt_mod
    from sdederive.spec import vector as vec_mod

    return vec_mod.get(name, **hyper) if vec_mod.is_vector(name) else opt_mod.get(name, **hyper)


def run_cell(cell: dict, problem: Problem, steps: int, paths: int, mode: str = "discrete",
             threads: int = 1, specs: Mapping | None = None) -> dict:
    """Simulate one cell and return its row (cell values, final loss and its standard error, the
    fraction of diverged paths, timings).  `specs`: user optimizers by name (the grid's `spec` files),
    used for the cells whose `optimizer` names one of them."""
    import sdederive as sd

    t0 = time.perf_counter()
    name = _optimizer(cell.get("optimizer", "sgd"), specs)
    mode = cell.get("mode", mode)
    prob = with_batch(problem, cell.get("B"))
    hyper = {k: v for k, v in cell.items() if k not in RESERVED and k != "cell_id"}
    obj = _get_optimizer(name) if mode == "discrete" else sd.derive(name)
    sim = sd.compile(obj, prob, backend=cell.get("backend", "numba"))
    t1 = time.perf_counter()
    from sdederive.errors import DivergenceError

    try:
        res = sim.run(paths=paths, steps=steps, eta=float(cell["eta"]), hyper=hyper, seed=int(cell.get("seed", 0)),
                      save_every=steps, threads=threads, mask_diverged=True)
        nonfinite = False
    except DivergenceError as e:  # finite paths whose variance overflows: the cell diverged as a whole
        res, nonfinite = e.result, True
    if res.partial:  # Ctrl-C reached this worker: a partial cell is not a row (resume computes it again)
        raise KeyboardInterrupt
    t2 = time.perf_counter()
    final = float(res.mean["loss"][-1]) if res.count[-1] > 0 and not nonfinite else float("nan")
    se = float(res.se["loss"][-1]) if not nonfinite else float("nan")
    return {**cell, "mode": mode, "final_loss": final, "final_loss_se": se,
            "initial_loss": float(res.mean["loss"][0]), "diverged_fraction": float(res.diverged) / paths,
            "paths": int(paths), "steps": int(steps), "coord_steps": float(paths) * steps * prob.d,
            "compile_s": t1 - t0, "sim_s": t2 - t1, "cell_s": time.perf_counter() - t0}


def _exit_with_parent() -> None:
    """Worker initializer: a daemon thread that ends this worker when the driver process dies (a killed
    driver otherwise leaves its idle workers blocked on the task queue forever, busy ones after their cell)."""
    import threading
    from multiprocessing.connection import wait

    parent = mp.parent_process()
    if parent is None:  # pragma: no cover - not a multiprocessing child
        return

    def watch() -> None:
        wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="sdederive-exit-with-parent", daemon=True).start()


def _run_key(problem: Problem, steps: int, paths: int, mode: str, specs: Mapping | None = None) -> dict:
    """Everything besides the cell's own values that determines its result, hashed into its `cell_id`: the
    fixed settings (steps, paths, default mode), the problem (its full JSON form: every number), the user
    optimizers (their JSON form) and the package version.  `--resume` after changing any of them recomputes
    the cells."""
    import hashlib
    import json

    from sdederive import __version__
    from sdederive._json import finite_or_none

    try:
        pdesc = json.dumps(finite_or_none(problem.to_dict()), sort_keys=True, default=str)
    except NotImplementedError:  # pragma: no cover - a Problem subclass without a JSON form
        pdesc = repr(problem)
    key = {"__steps": steps, "__paths": paths, "__mode": mode,
           "__problem": hashlib.sha256(pdesc.encode()).hexdigest(), "__version": __version__}
    if specs:  # absent without specs: the cell ids of a built-in-only sweep are those of earlier versions
        text = json.dumps({n: o.to_dict() for n, o in sorted(specs.items())}, sort_keys=True)
        key["__specs"] = hashlib.sha256(text.encode()).hexdigest()
    return key


def _validate_cells(grid: Grid, problem: Problem, mode: str, specs: Mapping | None = None) -> None:
    """Check every cell's settings in the driver, before any worker starts: the optimizer names and their
    hyperparameters (names and ranges), the modes (and, for `"sde"`, that the SDE can be derived), the
    backends, and the problem at every batch size.  Each distinct combination is built once."""
    import sdederive as sd
    from sdederive.simulate.backends.registry import backend_names

    seen: set = set()
    for c in grid.cells():
        name = _optimizer(c.get("optimizer", "sgd"), specs)
        m = c.get("mode", mode)
        hyper = {k: v for k, v in c.items() if k not in RESERVED and k != "cell_id"}
        key = (str(c.get("optimizer", "sgd")), m, tuple(sorted(hyper.items())))
        if key not in seen:
            seen.add(key)
            _get_optimizer(name, **hyper)  # unknown optimizer or hyperparameter, out-of-range value
            if m not in ("discrete", "sde"):
                raise SdederiveError(f"cell mode={m!r}; allowed: 'discrete', 'sde'")
            if m == "sde" and ("sde", key[0]) not in seen:
                seen.add(("sde", key[0]))
                sd.derive(name)
        b = c.get("backend", "numba")
        if b not in backend_names():
            raise SdederiveError(f"cell backend={b!r}; allowed: {', '.join(backend_names())}")
        if ("B", c.get("B")) not in seen:
            seen.add(("B", c.get("B")))
            with_batch(problem, c.get("B"))
    from sdederive.spec.hyper import check_value

    for v in grid.axes["eta"]:
        check_value("eta", "lr", v)


def _spec_table(specs) -> dict | None:
    """`{name: Optimizer}` of `run(specs=...)`, refusing anything else and two specs of one name."""
    if specs is None:
        return None
    from sdederive.spec.optimizers import Optimizer

    if isinstance(specs, Optimizer):
        specs = [specs]
    out: dict = {}
    for o in specs:
        if not isinstance(o, Optimizer):
            raise SdederiveError(f"specs holds {o!r} ({type(o).__name__}); allowed: sdederive Optimizer objects")
        if o.name in out and out[o.name] != o:
            raise SdederiveError(f"specs: two different optimizers are named {o.name!r}; allowed: one per name")
        out[o.name] = o
    return out or None


def _progress(done: int, total: int, t0: float, skipped: int, stream=None) -> None:
    stream = sys.stderr if stream is None else stream  # looked up per call: the stream of now, not of the import
    el = time.perf_counter() - t0
    rate = done / el if el > 0 else 0.0
    eta_s = (total - done) / rate if rate > 0 else float("inf")
    stream.write(f"\r[sweep] {done + skipped}/{total + skipped} cells ({skipped} resumed), {rate:.2f} cells/s, "
                 f"ETA {eta_s:.0f} s   ")
    stream.flush()


def _broken_pool_error(e: BaseException) -> SdederiveError:
    """What a broken local pool most often means: the script has no main guard, so each `spawn`ed
    worker, importing it again, tried to start a sweep of its own and was stopped by Python."""
    main = sys.modules.get("__main__")
    script = getattr(main, "__file__", None)
    where = f" ({script})" if script else ""
    return SdederiveError(
        "a worker process of the sweep's process pool died"
        f"{where}. If you call sd.sweep.run from a script, put the call under "
        "`if __name__ == \"__main__\":` (the pool starts its workers with the 'spawn' method, which "
        "imports the script again in every worker; without the guard each worker starts a sweep of its "
        "own and Python stops it). Otherwise a worker crashed or ran out of memory: rerun with "
        f"max_workers=1 to see its error. ({type(e).__name__}: {e})")


def run(grid: Grid, problem: Problem, steps: int = 1000, paths: int = 1000, *, executor: cf.Executor | None = None,
        out: str | Path | None = None, resume: bool = False, mode: str = "discrete", threads_per_cell: int = 1,
        max_workers: int | None = None, progress: bool = True, specs: Sequence | None = None):
    """Run every cell of `grid` (see the module docstring); returns a `SweepResult`.

    `out`: results directory (Parquet parts, then `results.parquet`); `resume`: skip the cells
    already in `out`; `mode`: `"discrete"` (the optimizer) or `"sde"`.  `specs`: user-written
    `Optimizer` objects; a cell whose `optimizer` is one's name runs it
    (ahead of a built-in of that name), and a grid without an `optimizer` axis gets one of their names.
    """
    from sdederive.simulate.simulator import check_run_args
    from sdederive.sweep.analysis import SweepResult

    if not isinstance(grid, Grid):
        raise SdederiveError(f"run() needs a sd.sweep.Grid, got {type(grid).__name__}")
    if not isinstance(problem, Problem):
        raise SdederiveError(f"run() needs a sdederive.problems.Problem, got {type(problem).__name__}")
    if mode not in ("discrete", "sde"):
        raise SdederiveError(f"mode={mode!r}; allowed: 'discrete', 'sde'")
    check_run_args(paths=paths, steps=steps, threads=threads_per_cell)
    if max_workers is not None and (isinstance(max_workers, bool) or not isinstance(max_workers, int)
                                    or max_workers < 1):
        raise SdederiveError(f"max_workers={max_workers!r} is invalid; allowed: None (all cores) or an integer >= 1")
    if "eta" not in grid.axes:
        raise SdederiveError("the grid has no 'eta' axis; every cell needs a learning rate")
    if resume and out is None:
        raise SdederiveError("resume=True needs out= (the directory of a previous run)")
    specs = _spec_table(specs)
    if specs and "optimizer" not in grid.axes:
        grid = Grid(**grid.axes, optimizer=list(specs))
    if out is not None:
        store.check_writable(out)
    _validate_cells(grid, problem, mode, specs)
    run_key = _run_key(problem, int(steps), int(paths), mode, specs)
    cells = [{**c, "cell_id": cell_id({**c, **run_key})} for c in grid.cells()]
    skip = store.done_ids(out) if (resume and out is not None) else set()
    if out is not None and not resume and store.done_ids(out):
        raise SdederiveError(f"{out} already holds results; pass resume=True (CLI: --resume) to continue that sweep, "
                             "or choose another directory")
    todo = [c for c in cells if c["cell_id"] not in skip]
    own = executor is None
    if own:
        executor = cf.ProcessPoolExecutor(max_workers=max_workers or os.cpu_count() or 1,
                                          mp_context=mp.get_context("spawn"), initializer=_exit_with_parent)
    rows: list[dict] = []
    t0 = time.perf_counter()
    last = 0.0
    try:
        futs = {executor.submit(run_cell, c, problem, int(steps), int(paths), mode, threads_per_cell, specs): c
                for c in todo}
        for k, f in enumerate(cf.as_completed(futs), 1):
            try:
                row = f.result()
            except BrokenProcessPool as e:
                raise _broken_pool_error(e) from e
            if out is not None:
                store.write_row(out, row)
            rows.append(row)
            if progress and (time.perf_counter() - last > 0.5 or k == len(todo)):
                last = time.perf_counter()
                _progress(k, len(todo), t0, len(skip))
    finally:
        if own:
            executor.shutdown(wait=True, cancel_futures=True)
    if progress:
        sys.stderr.write("\n")
    wall = time.perf_counter() - t0
    if out is not None:
        return SweepResult(store.compact(out).to_pylist(), wall=wall, out=Path(out))
    return SweepResult(rows, wall=wall, out=None)

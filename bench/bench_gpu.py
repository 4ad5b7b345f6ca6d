"""GPU throughput of the generated CUDA kernel, against the numba kernel run in the same process.

Issue 3's target: >= 1e11 coordinate-steps/s in float32 on an H100.  Reference case as in
``bench_simulate.py`` (the RMSprop SDE, noise-dominated regime, on the diagonal quadratic
``h = geomspace(0.1, 10, d)``, ``sigma = 1``), with enough paths to fill the GPU (default 2^20, one
thread per path).  ``run_s`` is the simulation alone (``res.timing["run_s"]``: the step kernel,
the observable kernel and CuPy's reductions at each save point, synchronised), after a warm-up run
that compiles the kernel.  The baseline is the numba backend on this machine's CPU, in the same
process, on ``--cpu-paths`` paths.

    python bench/bench_gpu.py [--paths N] [--d D] [--steps T] [--save-every K] [--cpu-paths N]

``--vector MODE:NAME[,...]`` (``MODE`` ``d`` discrete or ``s`` SDE, for example ``s:lamb,d:sam``) measures vector
kernels instead: a dense quadratic with a full ``Sigma`` (as ``bench_vector.py``: random ``H`` with eigenvalues
0.1 to about 4, ``Sigma = 0.5 A A^T + 0.1 I``), one thread per path, every vector a per-thread array; the numba
baseline is the row-block BLAS kernel of the same program.

Without CuPy or without a GPU it says so and exits with status 0 (nothing to measure).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))

from bench_simulate import ETA, problem  # noqa: E402  (the reference case; beta, eps: RMSprop's defaults)
from bench_vector import bench_target, dense_problem  # noqa: E402  (the vector kernels' dense quadratic, hypers)

import sdederive as sd  # noqa: E402


def gpu_name() -> str | None:
    """The GPU's name, or None when CuPy or a device is missing."""
    try:
        import cupy as cp
    except ImportError:
        return None
    try:
        if not cp.cuda.is_available():
            return None
        props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
        name = props["name"]
        return name.decode() if isinstance(name, bytes) else str(name)
    except AttributeError:  # a CuPy stand-in without the runtime API
        return "unknown CUDA device"
    except Exception:  # noqa: BLE001 - CUDA driver errors: no usable device
        return None


def measure(backend: str, dtype: str, paths: int, d: int, steps: int, save_every: int,
            target: str | None = None) -> dict:
    """One warm-up run (compiles), then the timed run; coordinate-steps/s from ``run_s``.  ``target`` ``"s:lamb"``
    (a vector kernel on `dense_problem`) instead of the reference RMSprop SDE."""
    hyper, eta = {}, ETA
    if target is None:
        sim = sd.compile(sd.derive("rmsprop"), problem(d), backend=backend, dtype=dtype)
    else:
        _, _, obj, hyper = bench_target(target)
        sim = sd.compile(obj, dense_problem(d), backend=backend, dtype=dtype)
        eta = 0.01
    sim.run(paths=min(paths, 1024), steps=2, eta=eta, seed=1, save_every=1, hyper=hyper)
    res = sim.run(paths=paths, steps=steps, eta=eta, seed=0, save_every=save_every, hyper=hyper)
    run_s = res.timing["run_s"]
    loss = float(res.mean["loss"][-1])
    se = float(np.sqrt(res.var["loss"][-1] / paths))
    return {"target": target or "rmsprop SDE", "backend": backend, "dtype": dtype, "paths": paths, "run_s": run_s, "compile_s": sim.compile_s,
            "coord_steps_per_s": paths * d * steps / run_s, "loss": loss, "loss_se": se}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--paths", type=int, default=2**20)
    ap.add_argument("--d", type=int, default=100)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--save-every", type=int, default=100)
    ap.add_argument("--cpu-paths", type=int, default=1000)
    ap.add_argument("--only", choices=("float32", "float64"), default=None,
                    help="one GPU precision only (the numba baseline is still run)")
    ap.add_argument("--vector", default="", help="vector kernels MODE:NAME[,...] (d discrete, s SDE) on a dense "
                                                   "quadratic instead of the RMSprop SDE")
    a = ap.parse_args(argv)
    name = gpu_name()
    if name is None:
        print("# no CuPy or no CUDA GPU on this machine: nothing to measure")
        return 0
    dtypes = (a.only,) if a.only else ("float32", "float64")
    if a.vector:
        return _vector_table(a, name, dtypes)
    rows = [measure("cupy", dt, a.paths, a.d, a.steps, a.save_every) for dt in dtypes]
    rows.append(measure("numba", "float64", a.cpu_paths, a.d, a.steps, a.save_every))
    ref = rows[-1]["coord_steps_per_s"]
    print(f"# GPU: {name}; CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"RMSprop SDE, d={a.d}, T={a.steps}, save_every={a.save_every}")
    print(f"| {'backend':<7} | {'dtype':<7} | {'paths':>8} | {'run s':>8} | {'coord-steps/s':>13} | {'/ numba':>8} "
          f"| {'E[loss] at T (se)':>22} |")
    print(f"|{'-' * 9}|{'-' * 9}|{'-' * 10}|{'-' * 10}|{'-' * 15}|{'-' * 10}|{'-' * 24}|")
    for r in rows:
        print(f"| {r['backend']:<7} | {r['dtype']:<7} | {r['paths']:>8} | {r['run_s']:8.3f} | "
              f"{r['coord_steps_per_s']:13.3e} | {r['coord_steps_per_s'] / ref:8.1f} | "
              f"{r['loss']:.5f} ({r['loss_se']:.1e}) |")
    for r in rows[:-1]:
        if r["dtype"] == "float32":
            total = r["paths"] * a.d * a.steps
            print(f"float32 GPU: {r['coord_steps_per_s']:.3e} coordinate-steps/s (target on an H100/H200: >= 1e11: "
                  f"{'met' if r['coord_steps_per_s'] >= 1e11 else 'not met'}); {total:.1e} coordinate-steps in "
                  f"{r['run_s']:.2f} s")
    return 0


def _vector_table(a, name: str, dtypes) -> int:
    print(f"# GPU: {name}; CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; vector kernels on "
          f"a dense quadratic, full Sigma, d={a.d}, T={a.steps}, save_every={a.save_every}")
    print(f"| {'kernel':<14} | {'backend':<7} | {'dtype':<7} | {'paths':>8} | {'run s':>8} | {'coord-steps/s':>13} "
          f"| {'/ numba':>8} | {'E[loss] at T (se)':>22} |")
    print(f"|{'-' * 16}|{'-' * 9}|{'-' * 9}|{'-' * 10}|{'-' * 10}|{'-' * 15}|{'-' * 10}|{'-' * 24}|")
    for target in a.vector.split(","):
        rows = [measure("cupy", dt, a.paths, a.d, a.steps, a.save_every, target) for dt in dtypes]
        rows.append(measure("numba", "float64", a.cpu_paths, a.d, a.steps, a.save_every, target))
        ref = rows[-1]["coord_steps_per_s"]
        for r in rows:
            print(f"| {target:<14} | {r['backend']:<7} | {r['dtype']:<7} | {r['paths']:>8} | {r['run_s']:8.3f} | "
                  f"{r['coord_steps_per_s']:13.3e} | {r['coord_steps_per_s'] / ref:8.1f} | "
                  f"{r['loss']:.5f} ({r['loss_se']:.1e}) |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

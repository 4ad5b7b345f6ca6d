"""Sweep machinery overhead and scaling.

1. Per-cell overhead at 1e8 coordinate-steps per cell (paths=1000, steps=1000, d=100, SignSGD):
   ``sd.sweep.run`` on a warmed 1-process pool with Parquet storage; overhead = (sweep wall - the
   cells' simulation time measured in the worker) / simulation time.  A second baseline runs the
   same cells directly in this process (noisier: it is a different run of the same kernels).
2. Scaling: a 200-cell grid (3e7 coordinate-steps per cell) on a ``distributed.LocalCluster`` with
   1 worker and with 2 workers (one thread each); ratio of wall times.

    python bench/bench_sweep.py            # prints both tables
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import platform
import tempfile
import time

import numpy as np

import sdederive as sd
from sdederive import sweep


def _problem(d):
    return sd.Quadratic(h=np.geomspace(0.1, 10, d), sigma=np.ones(d), x0=np.ones(d))


def overhead(n_cells: int = 16) -> dict:
    """Sweep wall time against the simulation time of the same cells, measured inside the workers
    of the same run (``sim_s``) and, as a second baseline, by running the cells directly here."""
    prob = _problem(100)
    grid = sweep.Grid(optimizer=["signsgd"], eta=np.geomspace(1e-3, 1e-2, n_cells), seed=[0])
    cells = grid.cells()
    sweep.run_cell(cells[0], prob, 1000, 1000)  # compile + warm in this process
    t = time.perf_counter()
    direct = [sweep.run_cell(c, prob, 1000, 1000) for c in cells]
    base = time.perf_counter() - t
    with cf.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as ex:
        ex.submit(sweep.run_cell, cells[0], prob, 1000, 1000).result()  # warm the worker (imports, kernel)
        with tempfile.TemporaryDirectory() as out:
            t = time.perf_counter()
            res = sweep.run(grid, prob, steps=1000, paths=1000, executor=ex, out=out, progress=False)
            swept = time.perf_counter() - t
    sim = sum(r["sim_s"] for r in res.rows)
    return {"cells": n_cells, "direct_s": base, "direct_sim_s": sum(r["sim_s"] for r in direct), "sweep_s": swept,
            "sweep_sim_s": sim, "overhead": (swept - sim) / sim, "overhead_vs_direct": (swept - base) / base}


def scaling(n_cells: int = 200) -> dict:
    from distributed import Client, LocalCluster

    prob = _problem(100)
    grid = sweep.Grid(optimizer=["signsgd"], eta=np.geomspace(1e-3, 1e-2, n_cells // 4), seed=range(4))
    out = {}
    for workers in (1, 2):
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address=None) as cl, Client(cl) as client:
            ex = client.get_executor()
            list(ex.map(sweep.run_cell, [grid.cells()[0]] * workers, [prob] * workers, [100] * workers,
                        [1000] * workers))  # warm every worker
            t = time.perf_counter()
            sweep.run(grid, prob, steps=300, paths=1000, executor=ex, progress=False)
            out[workers] = time.perf_counter() - t
    return {"cells": n_cells, "coord_steps_per_cell": 3e7, "1_worker_s": out[1], "2_workers_s": out[2],
            "speedup": out[1] / out[2]}


def main() -> None:
    print(f"machine: {platform.processor() or platform.machine()}, {mp.cpu_count()} cores, "
          f"python {platform.python_version()}")
    o = overhead()
    print("\n| 1e8 coord-steps per cell | cells | simulation s (in the sweep's worker) | sweep wall s | overhead "
          "| direct loop s | sweep vs direct |")
    print("|---|---|---|---|---|---|---|")
    print(f"| SignSGD d=100, 1000 paths x 1000 steps | {o['cells']} | {o['sweep_sim_s']:.2f} | {o['sweep_s']:.2f} | "
          f"{o['overhead']:+.1%} | {o['direct_s']:.2f} | {o['overhead_vs_direct']:+.1%} |")
    s = scaling()
    print("\n| LocalCluster scaling | cells | 1 worker s | 2 workers s | speedup |")
    print("|---|---|---|---|---|")
    print(f"| 3e7 coord-steps/cell | {s['cells']} | {s['1_worker_s']:.2f} | {s['2_workers_s']:.2f} | "
          f"{s['speedup']:.2f}x |")


if __name__ == "__main__":
    main()

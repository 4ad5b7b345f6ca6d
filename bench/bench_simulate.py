"""Simulator throughput: the generated numba kernel against baselines run in the same process.

Reference case (issue 3 / reference note §6): the RMSprop SDE (noise-dominated regime) on a diagonal
quadratic, N=1000 paths, d=100, T=1000 steps, float64.  Prints a table of coordinate-steps/s and the
ratio of ours to each baseline:

* numpy: the same Euler–Maruyama step vectorised over (paths, d) with ``Generator.standard_normal``
  (always available);
* diffrax (Euler + UnsafeBrownianPath, jit+vmap) and torchsde (euler), from ``bench/baselines.py``
  when installed (``pip install -e '.[bench]'``).

Compile times are measured in fresh subprocesses: cold (empty cache) and from the on-disk cache, for the
first kernel of a process and a further one, next to numba's own per-process start (import and the first
call of a trivial cached function), which any numba program pays.

    python bench/bench_simulate.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))

import sdederive as sd  # noqa: E402
from sdederive.problems import Quadratic  # noqa: E402

ETA, BETA, EPS = 1e-2, 0.99, 1e-8


def problem(d: int) -> Quadratic:
    return Quadratic(h=np.geomspace(0.1, 10, d), sigma=np.ones(d), x0=np.ones(d))


def ours(N, d, T, repeats=3):
    sim = sd.compile(sd.derive("rmsprop"), problem(d))
    sim.run(paths=N, steps=10, eta=ETA, seed=0)  # warm
    best = np.inf
    for _ in range(repeats):
        r = sim.run(paths=N, steps=T, eta=ETA, seed=0, save_every=T)
        best = min(best, r.timing["run_s"])
    return {"run_s": best, "coord_steps_per_s": N * d * T / best, "mean_loss": float(r.mean["loss"][-1])}


def ours_discrete(N, d, T, repeats=3):
    sim = sd.compile("rmsprop", problem(d))
    best = np.inf
    for _ in range(repeats):
        r = sim.run(paths=N, steps=T, eta=ETA, seed=0, save_every=T)
        best = min(best, r.timing["run_s"])
    return {"run_s": best, "coord_steps_per_s": N * d * T / best, "mean_loss": float(r.mean["loss"][-1])}


def numpy_em(N, d, T):
    """Plain numpy Euler–Maruyama of the same SDE (x, u), u started at sigma0^2."""
    rng = np.random.default_rng(0)
    h = np.geomspace(0.1, 10, d)
    s0, e0, c, dt = ETA * 1.0, EPS * ETA, (1 - BETA) / ETA**2, ETA**2
    x = np.ones((N, d))
    u = np.full((N, d), s0**2)
    t0 = time.perf_counter()
    sq = np.sqrt(dt)
    for _ in range(T):
        den = e0 + np.sqrt(u)
        x += -(h * x) / den * dt + s0 / den * sq * rng.standard_normal((N, d))
        u += c * (s0**2 - u) * dt
    el = time.perf_counter() - t0
    return {"run_s": el, "coord_steps_per_s": N * d * T / el, "mean_loss": float(np.mean(0.5 * (h * x * x).sum(1)))}


_COMPILE = """
import time, numpy as np
t0 = time.perf_counter()
import sdederive as sd
from sdederive.problems import Quadratic
sde = sd.derive("rmsprop")
p = Quadratic(h=np.geomspace(0.1, 10, 100), sigma=np.ones(100), x0=np.ones(100))
t1 = time.perf_counter()
sim = sd.compile(sde, p)
t2 = time.perf_counter()
sim2 = sd.compile("rmsprop", p)
t3 = time.perf_counter()
print(t1 - t0, t2 - t1, t3 - t2)
"""

# numba's own start in a fresh process: ``import numba``, then the first call of a trivial @njit
# function, compiled (cold) or loaded from numba's cache.  numba initialises its target context on
# the first compile or cache load (typing and lowering registries; it imports scipy.linalg for its
# BLAS check), so every numba program pays this once per process.
_FLOOR = """
import sys, time
t0 = time.perf_counter()
import numba
t1 = time.perf_counter()
import trivial_numba
(trivial_numba.f if sys.argv[1] == "cached" else trivial_numba.g)(3)
t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""
_TRIVIAL = """import math

import numpy as np
from numba import njit


@njit(cache=True)
def f(n):
    return n + 1.0


@njit(nogil=True)
def g(n):
    a = np.zeros(n)
    for i in range(n):
        a[i] = math.sqrt(i)
    return a.sum()
"""


def _fresh(code: str, env: dict, cwd: str | None = None, *args: str) -> list[float]:
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=cwd, capture_output=True, text=True,
                         check=True)
    return [float(v) for v in out.stdout.split()]


def compile_times(repeats: int = 3) -> dict:
    """Median over ``repeats`` fresh processes of: the first kernel of a process (the RMSprop SDE)
    and a further one (discrete RMSprop), cold (empty ``SDEDERIVE_CACHE``) and from the on-disk
    cache, plus numba's own per-process start measured on a trivial function (compiled, and loaded
    from numba's cache)."""
    rows: dict[str, list[float]] = {}
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as td:
            env = dict(os.environ, SDEDERIVE_CACHE=td)
            c = _fresh(_COMPILE, env)
            w = _fresh(_COMPILE, env)
            with open(os.path.join(td, "trivial_numba.py"), "w") as fh:
                fh.write(_TRIVIAL)
            fenv = dict(env, PYTHONPATH=td, NUMBA_CACHE_DIR=os.path.join(td, "nb"))
            _fresh(_FLOOR, fenv, td, "cached")  # compiles and caches f
            f = _fresh(_FLOOR, fenv, td, "cached")
            g = _fresh(_FLOOR, fenv, td, "cold")
        for k, v in (("cold_first_s", c[1]), ("cold_further_s", c[2]), ("cached_first_s", w[1]),
                     ("cached_further_s", w[2]), ("numba_import_s", f[0]), ("numba_start_cached_s", f[0] + f[1]),
                     ("numba_start_cold_s", g[0] + g[1])):
            rows.setdefault(k, []).append(v)
    return {k: float(np.median(v)) for k, v in rows.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller T for the baselines")
    a = ap.parse_args()
    N, d, T = 1000, 100, 1000
    rows = [("sdederive numba, SDE (EM)", ours(N, d, T)), ("sdederive numba, discrete RMSprop", ours_discrete(N, d, T)),
            ("numpy EM (vectorised)", numpy_em(N, d, T // 10 if a.quick else T))]
    try:
        import baselines

        for label, fn, TT in (("diffrax Euler+UBP, d normals/step",
                               lambda N, d, T: baselines.diffrax_run(N, d, T, brownian="x"), T),
                              ("diffrax Euler+UBP, 2d normals/step", baselines.diffrax_run, T),
                              ("torchsde euler", baselines.torchsde_run, T // 10 if a.quick else T)):
            try:
                rows.append((label, fn(N, d, TT)))
            except ImportError as e:
                print(f"# skipped {label}: {e}")
    except ImportError as e:
        print(f"# baselines unavailable: {e}")
    ref = rows[0][1]["coord_steps_per_s"]
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}, "
          f"N={N} d={d} T={T} float64")
    print(f"| {'implementation':<36} | {'run s':>8} | {'coord-steps/s':>14} | {'ours / this':>11} | {'E[loss] at T':>12} |")
    print(f"|{'-' * 38}|{'-' * 10}|{'-' * 16}|{'-' * 13}|{'-' * 14}|")
    for label, r in rows:
        print(f"| {label:<36} | {r['run_s']:8.3f} | {r['coord_steps_per_s']:14.3e} | {ref / r['coord_steps_per_s']:11.1f} "
              f"| {r.get('mean_loss', float('nan')):12.4g} |")
    ct = compile_times()
    print("\nsd.compile, fresh processes, median of 3 (first kernel of a process / a further one):")
    print(f"| {'':<18} | {'first kernel':>12} | {'further kernel':>14} | {'first - numba start':>19} |")
    print(f"|{'-' * 20}|{'-' * 14}|{'-' * 16}|{'-' * 21}|")
    for tag in ("cold", "cached"):
        a, b, floor = ct[f"{tag}_first_s"], ct[f"{tag}_further_s"], ct[f"numba_start_{tag}_s"]
        print(f"| {tag:<18} | {a:10.2f} s | {b:12.2f} s | {a - floor:17.2f} s |")
    print(f"numba's own start in a fresh process (import {ct['numba_import_s']:.2f} s, then the first call of a "
          f"trivial @njit function): {ct['numba_start_cold_s']:.2f} s compiling it, {ct['numba_start_cached_s']:.2f} s "
          "loading it from numba's cache")


if __name__ == "__main__":
    main()

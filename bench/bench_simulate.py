"""Simulator throughput, end to end and kernel-only, against diffrax and torchsde run in the same process.

Table 1 (``end_to_end``): the RMSprop SDE (noise-dominated regime) and the SGD SDE on the diagonal quadratic
``h = geomspace(0.1, 10, d)``, ``sigma = 1``, ``x0 = 1``, ``eta = 1e-2``, at d = 100 and d = 1000, float64.
For each case:

* sdederive, **end to end**: ``sd.compile`` (the kernel loaded from the on-disk cache, which a subprocess
  warms first) plus the first ``Simulator.run`` of that simulator, wall time, as a user's script makes the
  call (hyperparameters, the expected first step of the SDE's start, host snapshots and the kernel);
  **kernel-only**: ``res.timing["run_s"]``, best of the runs.  numba's one-time start of a process (~0.7 s)
  is paid before the table (a throw-away kernel) and reported in table 2;
* diffrax (``bench/baselines.py: sde_diffrax_run``: Euler, ``UnsafeBrownianPath``, ``jit(vmap)``, the same
  SDE through ``sdederive.export``'s lowering, the same start), **end to end**: the first call (trace, XLA
  compile, run; JAX's own start paid before the table); **kernel-only**: the best warm call;
* torchsde (``sde_torchsde_run``, euler, diagonal noise), one call with ``T // 20`` steps (it is 100 to
  1000 times slower; throughput is per coordinate-step, so it stays comparable).

Ratios: sdederive's coordinate-steps/s over the row's, end to end and kernel-only.

Table 2 (``cold_start``): fresh processes with an empty ``SDEDERIVE_CACHE`` and ``NUMBA_CACHE_DIR`` (a
temporary folder), then a second one on the same folders: ``import sdederive``, ``derive``, the first
``sd.compile`` and the first ``run`` (d = 100), next to diffrax's fresh-process import and first call.

Older kernel-only rows (run on demand with ``--kernel-table``):

* numpy: the same Euler–Maruyama step vectorised over (paths, d) with ``Generator.standard_normal``
  (always available);
* diffrax (Euler + UnsafeBrownianPath, jit+vmap) and torchsde (euler), from ``bench/baselines.py``
  when installed (``pip install -e '.[bench]'``).

Compile times are measured in fresh subprocesses: cold (empty cache) and from the on-disk cache, for the
first kernel of a process and a further one, next to numba's own per-process start (import and the first
call of a trivial cached function), which any numba program pays.

    python bench/bench_simulate.py            # tables 1 and 2 (a few minutes on 2 cores)
    python bench/bench_simulate.py --quick    # tiny sizes: checks that the script runs (seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings

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


# one case of table 1: (optimizer, d, N, T); full sizes ~1e8 to 5e8 coordinate-steps (ours ~1 s, diffrax a few s)
CASES = [("rmsprop", 100, 1000, 2000), ("rmsprop", 1000, 500, 1000), ("sgd", 100, 1000, 2000), ("sgd", 1000, 500, 1000)]
QUICK = [("rmsprop", 100, 50, 40), ("rmsprop", 1000, 20, 40), ("sgd", 100, 50, 40), ("sgd", 1000, 20, 40)]

_WARM = """
import sys, warnings
warnings.simplefilter("ignore")
import numpy as np
import sdederive as sd
from sdederive.problems import Quadratic
for name, d in [a.split(":") for a in sys.argv[1:]]:
    d = int(d)
    sd.compile(sd.derive(name), Quadratic(h=np.geomspace(0.1, 10, d), sigma=np.ones(d), x0=np.ones(d)))
"""


def end_to_end(cases, repeats: int = 2, torch_div: int = 20, baselines_too: bool = True) -> list[dict]:
    """Table 1: one dict per (case, implementation)."""
    subprocess.run([sys.executable, "-c", _WARM, *sorted({f"{n}:{d}" for n, d, _, _ in cases})], check=True)
    warnings.simplefilter("ignore")  # RegimeWarning: |grad|/sigma = 10 at x0 on the reference problem
    sd.compile(sd.derive("sgd"), problem(2))  # numba's per-process start, outside the table
    bl = None
    if baselines_too:
        try:
            import baselines as bl
            import jax
            import jax.numpy as jnp

            jax.config.update("jax_enable_x64", True)
            jax.block_until_ready(jax.jit(lambda x: x + 1)(jnp.ones(2)))  # JAX's per-process start
        except ImportError as e:
            print(f"# diffrax/torchsde baselines unavailable: {e}")
            bl = None
    rows = []
    for name, d, N, T in cases:
        sde = sd.derive(name)
        prob = problem(d)
        t0 = time.perf_counter()
        sim = sd.compile(sde, prob)
        c = time.perf_counter() - t0
        r = sim.run(paths=N, steps=T, eta=ETA, seed=0, save_every=T)
        e2e = time.perf_counter() - t0
        first = dict(r.timing)
        best = r.timing["run_s"]
        for _ in range(repeats - 1):
            r = sim.run(paths=N, steps=T, eta=ETA, seed=0, save_every=T)
            best = min(best, r.timing["run_s"])
        base = {"sde": name, "d": d, "N": N, "T": T}
        rows.append({**base, "impl": "sdederive", "e2e_s": e2e, "compile_s": c, "start_s": first["start_s"],
                     "run_s": best, "cs_e2e": N * d * T / e2e, "cs_kernel": N * d * T / best,
                     "loss": float(r.mean["loss"][-1]), "se": float(r.se["loss"][-1])})
        if bl is None:
            continue
        for impl, fn, TT in (("diffrax", bl.sde_diffrax_run, T), ("torchsde", bl.sde_torchsde_run, max(4, T // torch_div))):
            try:
                kw = {"timed": 0} if impl == "torchsde" else {}
                b = fn(sde, prob, N, TT, ETA, **kw)
            except (ImportError, ValueError) as e:
                print(f"# skipped {impl} {name} d={d}: {e}")
                continue
            rows.append({**base, "T": TT, "impl": impl, "e2e_s": b["compile_s"], "compile_s": float("nan"),
                         "start_s": float("nan"), "run_s": b["run_s"], "cs_e2e": N * d * TT / b["compile_s"],
                         "cs_kernel": b["coord_steps_per_s"], "loss": b["mean_loss"], "se": float("nan")})
    return rows


_COLD = """
import json, sys, time, warnings
warnings.simplefilter("ignore")
t0 = time.perf_counter()
import numpy as np
import sdederive as sd
from sdederive.problems import Quadratic
t1 = time.perf_counter()
sde = sd.derive("rmsprop")
t2 = time.perf_counter()
d, N, T = (int(a) for a in sys.argv[1:4])
sim = sd.compile(sde, Quadratic(h=np.geomspace(0.1, 10, d), sigma=np.ones(d), x0=np.ones(d)))
t3 = time.perf_counter()
r = sim.run(paths=N, steps=T, eta=1e-2, seed=0, save_every=T)
t4 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "derive_s": t2 - t1, "compile_s": t3 - t2, "run_wall_s": t4 - t3,
                  "start_s": r.timing["start_s"], "run_s": r.timing["run_s"]}))
"""

_COLD_DIFFRAX = """
import json, sys, time
t0 = time.perf_counter()
import baselines, diffrax, jax
t1 = time.perf_counter()
r = baselines.diffrax_run(*(int(a) for a in sys.argv[1:4]), brownian="x")
print(json.dumps({"import_s": t1 - t0, "first_call_s": r["compile_s"], "run_s": r["run_s"]}))
"""


def cold_start(d: int = 100, N: int = 1000, T: int = 100, baselines_too: bool = True) -> dict:
    """Table 2: ``{"cold": ..., "cached": ..., "diffrax": ...}``, each a dict of seconds from a fresh process."""
    out = {}
    with tempfile.TemporaryDirectory() as td:
        env = dict(os.environ, SDEDERIVE_CACHE=td, NUMBA_CACHE_DIR=os.path.join(td, "nb"))
        for tag in ("cold", "cached"):
            p = subprocess.run([sys.executable, "-c", _COLD, str(d), str(N), str(T)], env=env, capture_output=True,
                               text=True, check=True)
            out[tag] = json.loads(p.stdout.strip().splitlines()[-1])
    if baselines_too:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.abspath(__file__)),
                                                           os.environ.get("PYTHONPATH", "")]))
        p = subprocess.run([sys.executable, "-c", _COLD_DIFFRAX, str(N), str(d), str(T)], env=env, capture_output=True,
                           text=True)
        if p.returncode == 0:
            out["diffrax"] = json.loads(p.stdout.strip().splitlines()[-1])
    return out


def _fmt(v: float) -> str:
    return "" if v != v else (f"{v:.2e}" if v >= 1e4 else f"{v:.3g}")


def print_tables(rows: list[dict], cold: dict | None) -> None:
    """Markdown tables (pandas when installed only sorts nothing here: plain text keeps the script dependency-free)."""
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.1f} (1 min), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("\n| SDE | d | N | T | implementation | end-to-end s | start s (ours) | kernel s | coord-steps/s end to end "
          "| coord-steps/s kernel | sdederive / this, end to end | sdederive / this, kernel | E[loss] at T |")
    print("| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    ours = {(r["sde"], r["d"]): r for r in rows if r["impl"] == "sdederive"}
    for r in rows:
        o = ours[(r["sde"], r["d"])]
        loss = f"{r['loss']:.4g}" + (f" ± {r['se']:.1g}" if r["se"] == r["se"] else "")
        print(f"| {r['sde']} | {r['d']} | {r['N']} | {r['T']} | {r['impl']} | {_fmt(r['e2e_s'])} | {_fmt(r['start_s'])} "
              f"| {_fmt(r['run_s'])} | {_fmt(r['cs_e2e'])} | {_fmt(r['cs_kernel'])} | {o['cs_e2e'] / r['cs_e2e']:.1f} "
              f"| {o['cs_kernel'] / r['cs_kernel']:.1f} | {loss} |")
    print("\nsdederive start-up (first run's start_s) / kernel time:")
    for o in ours.values():
        print(f"  {o['sde']} d={o['d']}: {o['start_s']:.3f} s / {o['run_s']:.3f} s = {100 * o['start_s'] / o['run_s']:.1f} %"
              f"; sd.compile from the cache in the process {o['compile_s']:.3f} s")
    if cold:
        print("\n| fresh process (RMSprop SDE, d=100) | import | derive | first sd.compile | first run (wall) | "
              "of which start | kernel |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for tag, label in (("cold", "empty caches"), ("cached", "caches warm")):
            c = cold[tag]
            print(f"| sdederive, {label} | {c['import_s']:.2f} | {c['derive_s']:.2f} | {c['compile_s']:.2f} "
                  f"| {c['run_wall_s']:.2f} | {c['start_s']:.3f} | {c['run_s']:.3f} |")
        if "diffrax" in cold:
            c = cold["diffrax"]
            print(f"| diffrax (reference RMSprop SDE) | {c['import_s']:.2f} | | | {c['first_call_s']:.2f} "
                  f"(trace + compile + run) | | {c['run_s']:.3f} |")


def kernel_table(N: int = 1000, d: int = 100, T: int = 1000, quick: bool = False) -> None:
    """The kernel-only table of issue 3 (RMSprop SDE, discrete RMSprop, numpy, the hand-written baselines)."""
    rows = [("sdederive numba, SDE (EM)", ours(N, d, T)), ("sdederive numba, discrete RMSprop", ours_discrete(N, d, T)),
            ("numpy EM (vectorised)", numpy_em(N, d, T // 10 if quick else T))]
    try:
        import baselines

        for label, fn, TT in (("diffrax Euler+UBP, d normals/step",
                               lambda N, d, T: baselines.diffrax_run(N, d, T, brownian="x"), T),
                              ("diffrax Euler+UBP, 2d normals/step", baselines.diffrax_run, T),
                              ("torchsde euler", baselines.torchsde_run, T // 10 if quick else T)):
            try:
                rows.append((label, fn(N, d, TT)))
            except ImportError as e:
                print(f"# skipped {label}: {e}")
    except ImportError as e:
        print(f"# baselines unavailable: {e}")
    ref = rows[0][1]["coord_steps_per_s"]
    print(f"| {'implementation':<36} | {'run s':>8} | {'coord-steps/s':>14} | {'ours / this':>11} | {'E[loss] at T':>12} |")
    print(f"|{'-' * 38}|{'-' * 10}|{'-' * 16}|{'-' * 13}|{'-' * 14}|")
    for label, r in rows:
        print(f"| {label:<36} | {r['run_s']:8.3f} | {r['coord_steps_per_s']:14.3e} | {ref / r['coord_steps_per_s']:11.1f} "
              f"| {r.get('mean_loss', float('nan')):12.4g} |")
    ct = compile_times()
    print("\nsd.compile, fresh processes, median of 3 (first kernel of a process / a further one):")
    for tag in ("cold", "cached"):
        print(f"  {tag}: first {ct[f'{tag}_first_s']:.2f} s, further {ct[f'{tag}_further_s']:.2f} s, numba's own start "
              f"{ct[f'numba_start_{tag}_s']:.2f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run of the script)")
    ap.add_argument("--no-baselines", action="store_true", help="sdederive only (no diffrax / torchsde)")
    ap.add_argument("--no-cold", action="store_true", help="skip table 2 (fresh processes, empty caches)")
    ap.add_argument("--kernel-table", action="store_true", help="also the kernel-only table of issue 3")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    a = ap.parse_args(argv)
    rows = end_to_end(QUICK if a.quick else CASES, repeats=1 if a.quick else 2, baselines_too=not a.no_baselines)
    cold = None if a.no_cold else cold_start(T=10 if a.quick else 100, N=100 if a.quick else 1000,
                                              baselines_too=not a.no_baselines)
    print_tables(rows, cold)
    if a.kernel_table:
        kernel_table(quick=a.quick)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"rows": rows, "cold": cold}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

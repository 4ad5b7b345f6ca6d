"""The vector kernels against their roofline: `python bench/bench_vector_roofline.py`.

A vector kernel's step, for a row block of `PB = 64` paths, is a few BLAS products `(64, d) x (d, d)` (`H x`,
`Sigma^(1/2) z`, SAM's `H v`, the z-space `L^T grad` and `L beta`, ...), a number of standard normals per row, and
coordinate-wise loops.  The first two are the floor: this script counts them in each kernel's generated source
(`np.dot` calls of the step before its snapshot, `fill_normals` calls and their sizes, a call inside
`for kin in range(n)` counted `n` times) and measures their costs on this machine, in the same process and with as
many threads at once as the kernels use:

- `t_prod`: one `np.dot(A, B, out)` of a `(64, d)` by a `(d, d)` matrix inside a numba function (the kernels'
  call), in the kernel's precision, BLAS limited to one thread per caller (as the kernels' launch does);
- `t_norm`: one normal of `fill_normals` filling a `(64, d)` row block row by row (the kernels' call).

The estimate is then `threads * 64 * d / (products * t_prod + normals_per_row * 64 * t_norm)` coordinate-steps/s: what
the kernel would reach if its coordinate-wise loops, reductions and bookkeeping took no time.  Each kernel runs
`--reps` times (4096 paths x 200 steps, the benchmarks' dense quadratic and hyperparameters, `bench_vector`); the
table gives the best rate, the estimate and their ratio, so that a kernel far below its estimate has slack in its
own code and one near it can only go faster with fewer products or normals.  It is not a strict bound: a kernel
overlaps one thread's products with the other's normals, which the separate timings do not (benchmarks.md 6f).

Options: --only KIND:NAME[,...] (KIND d = discrete, s = SDE; default every vector built-in in both modes),
--dtype float64|float32 (default float64), --reps N (default 2), --inner N (the sampled SDEs' inner samples, 8),
--pairs on|off|both (the z-space kernels' antithetic pairs, `vector_lower.ANTITHETIC`; `both` runs each sampled SDE
with independent samples and then with pairs, in the same process, and prints the ratio), --eigenbasis on|off|both
(kernels that can run in the noise's eigenbasis, `sdederive.simulate.vector_eigenbasis`; `both` runs each such
kernel as written and then rotated, in the same process, and prints the ratio).
"""

from __future__ import annotations

import argparse
import re
import threading
import time

import numpy as np
from numba import njit
from threadpoolctl import ThreadpoolController

import sdederive as sd
from bench_vector import bench_target, dense_problem
from sdederive.simulate.backends.numba_backend import default_threads
from sdederive.simulate.rng.philox import fill_normals
from sdederive.simulate import vector_eigenbasis, vector_lower
from sdederive.simulate.vector_lower import sampled_noise

DEFAULT = ",".join(f"{k}:{n}" for n in ("usam", "sam", "nsgd", "clip_sgd", "sgd_nesterov", "lamb", "adamw_clip")
                   for k in "ds")
PB = 64


def step_costs(text: str) -> tuple[int, int, int]:
    """(products, normals per row, row fillers of `nz4` normals per row) of one step of the generated numba kernel
    `text`: the `np.dot` and `fill_normals` lines of the loop over steps before its snapshot (whose product is not
    part of the step), those inside `for kin in range(n):` counted `n` times.  A filler's size is `nz4` (`nz4 // 4`
    blocks of four: the step's Gaussians) or `4 k` (`np.int64(k)` blocks: the inner samples' weights)."""
    lines = text.splitlines()
    start = next(j for j, ln in enumerate(lines) if ln.strip() == "for k in range(k_begin, k_end):")
    base = len(lines[start]) - len(lines[start].lstrip())
    prods = fixed = fills = 0
    loops: list[tuple[int, int]] = []  # (indent, count) of the enclosing `for kin` loops
    for ln in lines[start + 1:]:
        if not ln.strip():
            continue
        ind = len(ln) - len(ln.lstrip())
        if ind <= base or ln.strip().startswith("if (k + 1) % save_every"):
            break
        while loops and ind <= loops[-1][0]:
            loops.pop()
        mult = int(np.prod([m for _, m in loops])) if loops else 1
        s = ln.strip()
        m = re.match(r"for kin in range\((\d+)\):", s)
        if m:
            loops.append((ind, int(m.group(1))))
        elif s.startswith("np.dot("):
            prods += mult
        elif (m := re.match(r"fill_normals\(\w+, r, (nz4 // 4|np\.int64\((\d+)\))", s)):
            if m.group(2) is None:
                fills += mult
            else:
                fixed += mult * 4 * int(m.group(2))
    return prods, fixed, fills


@njit(nogil=True, cache=False)
def _prods(A, B, C, reps):
    for _ in range(reps):
        np.dot(A, B, C)


@njit(nogil=True, cache=False)
def _normals(Z, nz4, reps):
    for k in range(reps):
        for r in range(Z.shape[0]):
            fill_normals(Z, r, np.int64(nz4 // 4), np.int64(k), np.int64(r), np.int64(0), np.int64(1), np.int64(2))


def _concurrent(fn, threads: int) -> float:
    """Wall time of `fn()` run in `threads` threads at once (numba releases the GIL), best of three."""
    best = np.inf
    for _ in range(3):
        ts = [threading.Thread(target=fn) for _ in range(threads)]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        best = min(best, time.perf_counter() - t0)
    return best


def unit_costs(d: int, dtype: str, threads: int) -> tuple[float, float]:
    """(t_prod, t_norm) in seconds, each thread of `threads` running its own loop at the same time."""
    nz4 = ((d + 3) // 4) * 4
    rng = np.random.default_rng(0)
    A, B = rng.normal(size=(PB, d)).astype(dtype), rng.normal(size=(d, d)).astype(dtype)
    C = np.zeros((PB, d), dtype)
    Z = np.zeros((PB, nz4 + 4))
    _prods(A, B, C, 1)
    _normals(Z, nz4, 1)
    reps_p, reps_n = 2000, 200
    with ThreadpoolController().limit(limits=1, user_api="blas"):  # as the kernels' launch: one BLAS thread each
        t_prod = _concurrent(lambda: _prods(A, B, np.zeros_like(C), reps_p), threads) / reps_p
    t_norm = _concurrent(lambda: _normals(np.zeros_like(Z), nz4, reps_n), threads) / (reps_n * PB * nz4)
    return t_prod, t_norm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=DEFAULT)
    ap.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--inner", type=int, default=8)
    ap.add_argument("--pairs", default="on", choices=("on", "off", "both"))
    ap.add_argument("--eigenbasis", default="on", choices=("on", "off", "both"))
    a = ap.parse_args()
    d, paths, steps = 100, 4096, 200
    threads = default_threads()
    nz4 = ((d + 3) // 4) * 4
    prob = dense_problem(d)
    t_prod, t_norm = unit_costs(d, a.dtype, threads)
    print(f"d = {d}, {paths} paths, {steps} steps, {a.dtype}, {threads} threads; per thread, all at once: "
          f"product (64 x {d}) x ({d} x {d}) {t_prod * 1e6:.1f} us, normal {t_norm * 1e9:.2f} ns")
    print(f"{'kernel':16s} {'products':>8s} {'normals/cs':>10s} {'estimate':>10s} {'kernel cs/s':>11s} "
          f"{'of est.':>8s}")
    for target in a.only.split(","):
        kind, name, obj, hp = bench_target(target)
        sampled = kind == "s" and sampled_noise(obj)
        pair_set = {"on": (True,), "off": (False,), "both": (False, True)}[a.pairs] if sampled else (True,)
        eig_set = {"on": (True,), "off": (False,), "both": (False, True)}[a.eigenbasis]
        settings = [(p, e) for p in pair_set for e in eig_set]
        rates = []
        for pairs, eig in settings:
            vector_lower.ANTITHETIC = pairs
            vector_eigenbasis.EIGENBASIS = eig
            sim = sd.compile(obj, prob, dtype=a.dtype, **({"inner": a.inner} if sampled else {}))
            rotated = any("eigenbasis" in n for n in sim.spec.notes)
            if a.eigenbasis == "both" and eig and not rotated:
                continue  # the kernel runs as written either way: no second row
            prods, fixed, fills = step_costs(sim.source.text)
            normals = fixed + fills * nz4
            est = threads * PB * d / (prods * t_prod + normals * PB * t_norm)
            sim.run(paths=64, steps=2, eta=0.01, hyper=hp)
            best = np.inf
            for _ in range(a.reps):
                r = sim.run(paths=paths, steps=steps, eta=0.01, hyper=hp, save_every=steps, seed=3)
                best = min(best, r.timing["run_s"])
            rate = paths * steps * d / best
            rates.append(rate)
            label = target + ("" if len(pair_set) == 1 else (" pairs" if pairs else " indep"))
            label += " eig" if rotated else ""
            print(f"{label:16s} {prods:8d} {normals / d:10.2f} {est:10.3g} {rate:11.3g} {rate / est:8.2f}",
                  flush=True)
        if len(rates) == 2:
            what = ("antithetic pairs / independent samples" if len(pair_set) == 2 else
                    "eigenbasis / as written")
            print(f"{'':16s} {what}: {rates[1] / rates[0]:.2f}x", flush=True)
        vector_eigenbasis.EIGENBASIS = True
        vector_lower.ANTITHETIC = True

if __name__ == "__main__":
    main()

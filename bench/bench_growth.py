"""Cost growth and a roofline of the numba simulators (issue 18): `python bench/bench_growth.py`.

Table 1 (``growth``): the reference case of ``docs/benchmarks.md`` section 3 (the RMSprop SDE, noise-dominated
regime, Euler–Maruyama, on the diagonal quadratic ``h = geomspace(0.1, 10, d)``, ``sigma = 1``, ``x0 = 1``,
``eta = 1e-2``, float64) timed against N (paths), d and T (steps), each over two decades with the other two
fixed.  Per row: the kernel alone (``res.timing["run_s"]``, best of the repeats), end to end (the whole
``Simulator.run`` call, ``res.timing["total_s"]``, of the same run), the time per path-step and the
coordinate-steps/s; per series the fitted log-log slope of time against the varied size (1 = linear growth).

Table 2 (``memory``): the host arrays of one run against N: the state ``STATE`` (``N x S x d`` doubles,
necessarily linear in N), the per-block snapshot statistics ``MEAN``/``M2``/``CNT`` (``nblk = min(N, 64)``
blocks: constant once N >= 64), the peak of ``tracemalloc`` over the whole call (numpy reports its allocations
to it; the kernel's per-block scratch arrays of size d are numba's and not counted) and the estimate that
``Simulator.run`` checks before allocating (``sdederive.simulate._memory.check_memory``'s argument).

Table 3 (``roofline``): five configurations at d = 100 -- Gaussian-only (the reference SDE), Student-t (discrete
RMSprop on the same quadratic with ``noise="student-t"``, ``nu = 5``: the SDE on that problem draws Gaussians,
the discrete optimizer draws the t variates), minibatch logistic regression (discrete SGD on
``LogisticRegression.synthetic(n=512, d=100, B=8)``) and dense ``H`` (discrete SGD on a dense quadratic with a full
``Sigma``), and the same dense problem through the vector engine (the SGD SDE with ``Sigma="full"``, whose kernel
runs the products as BLAS GEMM on blocks of 64 paths) -- against ceilings measured in the same process, on the
same threads as the kernels (one per CPU):

* the in-kernel Gaussian generator alone: a numba loop that draws the d normals of every path-step with the
  project's ``normal_pair`` into a buffer and adds them into an accumulator (so nothing is optimised away);
* the Student-t block filler alone (``fill_student_t``), the same way;
* the Euler arithmetic of the reference SDE (gradient, coefficients, update, finiteness check) with the normals
  read from a pre-generated pool that stays in cache;
* a matrix-vector FLOP rate: a numba matvec loop over paths at d = 100 (the scalar kernels' own loop form), and
  numpy's BLAS GEMM (the ceiling of a path-blocked kernel such as the vector engine's).

The bound of a configuration is the sum of its ceilings' times per coordinate-step (serial: the generator and the
arithmetic run on the same cores, one after the other) and, looser, the slowest of them alone (overlapped: an
out-of-order core can hide independent work behind a latency-bound reduction); "fraction of bound" is the measured
rate over each.  Ceilings and configurations are measured in turns (best of 3 each) so that both sides of a ratio
saw the same load.

    python bench/bench_growth.py            # all three tables (1 to 2 minutes on 2 cores)
    python bench/bench_growth.py --quick    # tiny sizes: checks that the script runs (seconds once compiled)
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
import tracemalloc
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numba import njit

import sdederive as sd
from sdederive.problems import LogisticRegression, Quadratic
from sdederive.simulate.backends.numba_backend import default_threads
from sdederive.simulate.rng.philox import fill_student_t, normal_pair

ETA, BETA, EPS, NU = 1e-2, 0.99, 1e-8, 5.0

# (varied size, fixed sizes); each series over two decades
FULL = {"N": dict(values=(100, 1000, 10000), d=100, T=1000),
        "d": dict(values=(10, 100, 1000), N=1000, T=1000),
        "T": dict(values=(100, 1000, 10000), N=1000, d=100)}
QUICK = {"N": dict(values=(10, 100, 1000), d=20, T=50),
         "d": dict(values=(4, 40, 400), N=100, T=50),
         "T": dict(values=(10, 100, 1000), N=100, d=20)}
MEM_FULL = (100, 1000, 10000, 100000)
MEM_QUICK = (10, 100, 1000)


def reference(d: int, noise: str = "gaussian") -> Quadratic:
    """The reference problem of docs/benchmarks.md section 3 at dimension `d`."""
    kw = {"nu": NU} if noise != "gaussian" else {}
    return Quadratic(h=np.geomspace(0.1, 10, d), sigma=np.ones(d), x0=np.ones(d), noise=noise, **kw)


_SIMS: dict = {}


def _sim(d: int):
    if d not in _SIMS:
        _SIMS[d] = sd.compile(sd.derive("rmsprop"), reference(d))
    return _SIMS[d]


def _fmt(v: float) -> str:
    if v != v:
        return ""
    return f"{v:.3g}" if 1e-3 <= abs(v) < 1e4 else f"{v:.2e}"


def _slope(x, y) -> float:
    return float(np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)[0])


# -- table 1: run time against N, d and T -------------------------------------------------------------------------
def growth(series: dict, repeats: int = 2) -> dict:
    """`{"N": [row, ...], "d": [...], "T": [...]}`; a row holds N, d, T, kernel_s (best of `repeats`), total_s (of
    that run), path_step_ns, cs_kernel and cs_e2e (coordinate-steps/s).  The repeats go round all rows in turn, so
    that a spell of load on the shared machine costs one repeat of several rows, not every repeat of one."""
    cases = []
    for var, cfg in series.items():
        for v in cfg["values"]:
            size = {k: cfg[k] for k in ("N", "d", "T") if k != var} | {var: v}
            cases.append((var, size["N"], size["d"], size["T"]))
    for _var, N, d, _T in cases:
        _sim(d).run(paths=min(N, 64), steps=2, eta=ETA, seed=0)  # warm (first run of a kernel in the process)
    best: dict = {}
    for _ in range(repeats):
        for c in cases:
            _var, N, d, T = c
            r = _sim(d).run(paths=N, steps=T, eta=ETA, seed=0, save_every=max(1, T // 10))
            if c not in best or r.timing["run_s"] < best[c]["run_s"]:
                best[c] = dict(r.timing)
    out: dict = {}
    for c in cases:
        var, N, d, T = c
        b = best[c]
        out.setdefault(var, []).append({"N": N, "d": d, "T": T, "kernel_s": b["run_s"], "total_s": b["total_s"],
                                        "path_step_ns": 1e9 * b["run_s"] / (N * T), "cs_kernel": N * d * T / b["run_s"],
                                        "cs_e2e": N * d * T / b["total_s"]})
    return out


def print_growth(g: dict) -> dict:
    """Print table 1 and return the slopes `{var: (kernel, end to end)}`."""
    slopes = {}
    print("\n## Run time against N, d and T (RMSprop SDE, reference quadratic, float64, save_every = T/10)\n")
    print("| varied | N | d | T | kernel s | end to end s | ns per path-step | ns per coord-step | "
          "coord-steps/s kernel | coord-steps/s end to end |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for var, rows in g.items():
        for r in rows:
            print(f"| {var} | {r['N']} | {r['d']} | {r['T']} | {_fmt(r['kernel_s'])} | {_fmt(r['total_s'])} "
                  f"| {_fmt(r['path_step_ns'])} | {_fmt(1e9 / r['cs_kernel'])} | {_fmt(r['cs_kernel'])} "
                  f"| {_fmt(r['cs_e2e'])} |")
        x = [r[var] for r in rows]
        slopes[var] = (_slope(x, [r["kernel_s"] for r in rows]), _slope(x, [r["total_s"] for r in rows]),
                       _slope(x[-2:], [r["kernel_s"] for r in rows[-2:]]))
    print("\nfitted log-log slope of time against the varied size (1 = linear):")
    for var, (sk, se, su) in slopes.items():
        print(f"  {var}: kernel {sk:.3f}, end to end {se:.3f} (kernel over the upper decade alone: {su:.3f})")
    return slopes


# -- table 2: memory against N ------------------------------------------------------------------------------------
def memory(Ns, d: int = 100, steps: int = 20, save_every: int = 2) -> list[dict]:
    """One row per N: bytes of STATE, of MEAN+M2+CNT, tracemalloc's peak over `Simulator.run`, the growth of the
    process's peak RSS, and the estimate `Simulator.run` checks (captured from `check_memory`)."""
    import sdederive.simulate._memory as mem

    sim = _sim(d)
    impl = sim.backend_impl
    sim.run(paths=64, steps=2, eta=ETA, seed=0)
    rows = []
    for N in Ns:
        seen: dict = {}
        real_check, real_start = mem.check_memory, impl.start

        def check(nbytes, what, hint="", seen=seen, real_check=real_check):
            seen["estimate"] = float(nbytes)
            return real_check(nbytes, what, hint)

        def start(handle, run, seen=seen, real_start=real_start):
            seen["state"] = run.state.nbytes
            seen["stats"] = run.MEAN.nbytes + run.M2.nbytes + run.CNT.nbytes
            seen["nblk"] = run.MEAN.shape[0]
            seen["div"] = run.DIV.nbytes
            return real_start(handle, run)

        mem.check_memory, impl.start = check, start
        tracemalloc.start()
        try:
            sim.run(paths=N, steps=steps, eta=ETA, seed=0, save_every=save_every)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
            mem.check_memory = real_check
            del impl.start  # back to the class's method
        seen["other"] = float(peak) - seen["state"] - seen["stats"] - seen["div"]
        rows.append({"N": N, "d": d, "n_save": steps // save_every, **seen, "traced_peak": float(peak)})
    return rows


def print_memory(rows: list[dict]) -> None:
    r0 = rows[0]
    print(f"\n## Host memory of one run against N (RMSprop SDE, d = {r0['d']}, S = 2 states, "
          f"{r0['n_save'] + 1} snapshots of 2 + 2d observables)\n")
    print("| N | nblk | STATE bytes | STATE / N | MEAN+M2+CNT bytes | DIV bytes | tracemalloc peak of the run | "
          "peak - STATE - stats - DIV | estimate checked by run() | peak / estimate |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['N']} | {r['nblk']} | {r['state']} | {r['state'] / r['N']:.0f} | {r['stats']} | {r['div']} "
              f"| {r['traced_peak']:.0f} | {r['other']:.0f} | {r['estimate']:.0f} "
              f"| {r['traced_peak'] / r['estimate']:.2f} |")
    big = [r for r in rows if r["N"] >= 64]
    if len(big) >= 2:
        const = len({r["stats"] for r in big}) == 1
        print(f"\nsnapshot statistics for N >= 64: {'constant' if const else 'NOT constant'} "
              f"({big[0]['stats']} bytes); STATE slope against N: "
              f"{_slope([r['N'] for r in rows], [r['state'] for r in rows]):.3f}")


# -- table 3: roofline --------------------------------------------------------------------------------------------
@njit(nogil=True, cache=False, error_model="numpy")
def _gen_normals(p_lo, p_hi, T, d, key0, key1):  # pragma: no cover - numba
    nz4 = ((d + 3) // 4) * 4
    Z = np.zeros(nz4 + 4)
    acc = np.zeros(nz4 + 4)
    for p in range(p_lo, p_hi):
        for k in range(T):
            for jb in range(nz4 // 4):
                z0, z1, z2, z3 = normal_pair(k, jb, p, 0, key0, key1)
                Z[4 * jb] = z0
                Z[4 * jb + 1] = z1
                Z[4 * jb + 2] = z2
                Z[4 * jb + 3] = z3
            for i in range(d):
                acc[i] += Z[i]
    return acc.sum()


@njit(nogil=True, cache=False, error_model="numpy")
def _gen_student(p_lo, p_hi, T, d, nu, key0, key1):  # pragma: no cover - numba
    Z = np.zeros(d)
    acc = np.zeros(d)
    for p in range(p_lo, p_hi):
        for k in range(T):
            fill_student_t(Z, d, nu, k, p, key0, key1)
            for i in range(d):
                acc[i] += Z[i]
    return acc.sum()


@njit(nogil=True, cache=False, error_model="numpy")
def _euler_pool(STATE, p_lo, p_hi, T, h, sg, ZP, dt, sdt, beta, eps, eta):  # pragma: no cover - numba
    """The reference kernel's step (generated `coef` and update of the RMSprop SDE) with normals from `ZP`."""
    d = h.size
    npool = ZP.shape[0]
    X = np.empty((2, d))
    GR = np.zeros(d)
    for p in range(p_lo, p_hi):
        for i in range(d):
            X[0, i] = STATE[p, 0, i]
            X[1, i] = STATE[p, 1, i]
        for k in range(T):
            for i in range(d):
                GR[i] = h[i] * X[0, i]
            r = (k + p) % npool
            bad = 0
            for i in range(d):
                w0 = 1 / (eps * eta + math.sqrt(X[1, i]))
                w1 = eta ** 2
                a0 = -GR[i] * w0
                a1 = -(beta - 1) * (-X[1, i] + sg[i] ** 2 * w1) / w1
                b0 = -eta * sg[i] * w0
                b1 = 0
                y0 = X[0, i] + a0 * dt + b0 * (sdt * ZP[r, i])
                y1 = X[1, i] + a1 * dt + b1 * (sdt * ZP[r, i])
                X[0, i] = y0
                X[1, i] = y1
                if not (abs(X[0, i]) <= 1.7976931348623157e308):
                    bad += 1
                if not (abs(X[1, i]) <= 1.7976931348623157e308):
                    bad += 1
            if bad > 0:
                break
        for i in range(d):
            STATE[p, 0, i] = X[0, i]
            STATE[p, 1, i] = X[1, i]


@njit(nogil=True, cache=False, error_model="numpy")
def _matvec(p_lo, p_hi, T, H, x0):  # pragma: no cover - numba
    """`T` products `H x` per path, the generated kernels' loop form (`for i: for j: acc += H[i, j] x[j]`)."""
    d = x0.size
    x = np.empty(d)
    y = np.empty(d)
    s = 0.0
    for _p in range(p_lo, p_hi):
        for i in range(d):
            x[i] = x0[i]
        for _k in range(T):
            for i in range(d):
                acc = 0.0
                for j in range(d):
                    acc += H[i, j] * x[j]
                y[i] = acc
            for i in range(d):
                x[i] = 0.5 * x[i] + 1e-3 * y[i]
        s += x[0]
    return s


def _threaded(fn, N: int, *args, repeats: int = 1) -> float:
    """Seconds of `fn(p_lo, p_hi, *args)` over N paths split among the kernels' threads (best of `repeats`)."""
    n = max(1, min(default_threads(), N))
    bounds = [(i * N // n, (i + 1) * N // n) for i in range(n)]
    fn(0, 1, *args)  # compile
    best = np.inf
    with ThreadPoolExecutor(n) as pool:
        for _ in range(repeats):
            t0 = time.perf_counter()
            list(pool.map(lambda b: fn(b[0], b[1], *args), bounds))
            best = min(best, time.perf_counter() - t0)
    return best


def ceilings(N: int, T: int, d: int = 100) -> dict:
    """Measured rates on this machine, this process, the kernels' thread count: normals/s, t variates/s, Euler
    coordinate-steps/s with pre-drawn normals, matvec and GEMM flop/s."""
    out = {"threads": default_threads()}
    out["normals_per_s"] = N * T * d / _threaded(_gen_normals, N, T, d, 0, 0)
    Ts = max(1, T // 4)  # the t filler is about 10x slower: fewer steps
    out["student_per_s"] = N * Ts * d / _threaded(_gen_student, N, Ts, d, NU, 0, 0)
    h, sg = np.geomspace(0.1, 10, d), np.ones(d)
    ZP = np.random.default_rng(0).standard_normal((64, d))
    STATE = np.empty((N, 2, d))
    STATE[:, 0], STATE[:, 1] = 1.0, ETA ** 2
    tau = ETA ** 2
    out["euler_cs_per_s"] = N * T * d / _threaded(
        lambda lo, hi: _euler_pool(STATE, lo, hi, T, h, sg, ZP, tau, math.sqrt(tau), BETA, EPS, ETA), N)
    Hm = np.random.default_rng(1).standard_normal((d, d)) / d
    Tm = max(1, T // 4)
    out["matvec_flops"] = 2.0 * d * d * N * Tm / _threaded(_matvec, N, Tm, Hm, np.ones(d))
    n = 1000
    a, b = np.random.default_rng(2).standard_normal((2, n, n))
    a @ b
    best = np.inf
    for _ in range(3):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    out["gemm_flops"] = 2.0 * n ** 3 / best
    return out


def _dense_problem(d: int) -> Quadratic:
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    H = (Q * np.geomspace(0.1, 4.0, d)) @ Q.T
    A = rng.standard_normal((d, d)) / np.sqrt(d)
    return Quadratic(H=H, Sigma=A @ A.T + 0.1 * np.eye(d), x0=np.ones(d))


def roofline(N: int, T: int, d: int = 100, B: int = 8, repeats: int = 3) -> tuple[list[dict], dict]:
    """Table 3's rows and the ceilings (see the module docstring), each the best of `repeats` turns."""
    configs = [
        ("Gaussian-only (RMSprop SDE)", sd.derive("rmsprop"), reference(d), T),
        ("Student-t nu=5 (discrete RMSprop)", "rmsprop", reference(d, "student-t"), max(1, T // 4)),
        (f"minibatch logistic (discrete SGD, n=512, B={B})", "sgd", LogisticRegression.synthetic(n=512, d=d, B=B),
         max(1, T // 2)),
        ("dense H, full Sigma (discrete SGD)", "sgd", _dense_problem(d), max(1, T // 20)),
        ("dense H, full Sigma (SGD SDE, vector kernel)", sd.derive("sgd", Sigma="full"), _dense_problem(d),
         max(1, T // 5)),
    ]
    sims = []
    for _label, obj, prob, _TT in configs:
        sim = sd.compile(obj, prob)
        sim.run(paths=min(N, 64), steps=2, eta=ETA, seed=0)
        sims.append(sim)
    # the machine is shared: ceilings and configurations are measured in turns, the best of each kept, so that
    # both sides of a ratio saw the same spells of load
    ceil: dict = {}
    best = [np.inf] * len(configs)
    for _ in range(repeats):
        for k, v in ceilings(N, T, d).items():
            ceil[k] = max(ceil.get(k, 0), v)
        for i, (sim, (_l, _o, _p, TT)) in enumerate(zip(sims, configs, strict=True)):
            best[i] = min(best[i], sim.run(paths=N, steps=TT, eta=ETA, seed=0, save_every=TT).timing["run_s"])
    rows = [{"config": label, "N": N, "T": TT, "cs": N * d * TT / b}
            for (label, _o, _p, TT), b in zip(configs, best, strict=True)]
    g, t, e, mv, gemm = (ceil["normals_per_s"], ceil["student_per_s"], ceil["euler_cs_per_s"], ceil["matvec_flops"],
                         ceil["gemm_flops"])
    # per coordinate-step: the ceilings' times ("terms"), what bounds it, the bytes it moves
    rows[0].update(normals=1, terms=(1 / g, 1 / e), what="generator (1 normal) + Euler arithmetic",
                   bytes="~80 B of L1 traffic (x, u, grad, z stored and loaded; h, sigma loaded); "
                         "DRAM: STATE at chunk ends only")
    rows[1].update(tvar=1, terms=(1 / t, 1 / e),
                   what="t filler (1 variate: a vectorised pass of polar attempts, 4.6 % redrawn one by one) "
                        "+ the Euler arithmetic as a proxy",
                   bytes="~80 B of L1 traffic, as above")
    rows[2].update(flops=4 * B, terms=(2 * B / mv,),
                   what=f"the B dot products A_i x: {2 * B} flop at the matvec (reduction) rate; "
                        f"axpy ({2 * B} flop), B exp and index draws not counted",
                   bytes=f"{2 * B * 8} B of A's rows (gathered, A = {512 * d * 8 // 1024} KiB in L2)")
    rows[3].update(normals=1, flops=4 * d, terms=(4 * d / mv, 1 / g),
                   what=f"H x and L z: {4 * d} flop at the matvec rate + 1 normal",
                   bytes=f"{2 * d * 8} B of H and L (2 d*d*8 = {2 * d * d * 8 // 1024} KiB per path-step, L2)")
    rows[4].update(normals=1, flops=4 * d, terms=(4 * d / gemm, 1 / g),
                   what=f"H x and L z as GEMM on blocks of 64 paths: {4 * d} flop at the GEMM rate + 1 normal",
                   bytes=f"{2 * d * 8 // 64} B of H and L (read once per 64-path block), the block's rows in L2")
    for r in rows:
        # serial: the terms one after the other; overlapped: the slowest term alone (out-of-order cores overlap a
        # latency-bound reduction with independent work, so a kernel can beat the serial sum, never the max)
        r["bound_cs"] = 1 / sum(r["terms"])
        r["overlap_cs"] = 1 / max(r["terms"])
        r["fraction"] = r["cs"] / r["bound_cs"]
        r["fraction_overlap"] = r["cs"] / r["overlap_cs"]
        r["normals_per_s"] = r["cs"] * (r.get("normals", 0) + r.get("tvar", 0))
        r["flops_per_s"] = r["cs"] * r.get("flops", 0)
    rows[3]["gemm_bound_cs"] = 1 / (4 * d / gemm + 1 / g)
    rows[2]["gemm_bound_cs"] = 1 / (4 * B / gemm)
    return rows, ceil


def print_roofline(rows: list[dict], ceil: dict, d: int = 100) -> None:
    print(f"\n## Roofline at d = {d} (same process, {ceil['threads']} threads)\n")
    print("measured ceilings:")
    print(f"  in-kernel Gaussian generator (normal_pair) alone: {ceil['normals_per_s']:.3e} normals/s")
    print(f"  Student-t block filler (fill_student_t) alone:     {ceil['student_per_s']:.3e} variates/s")
    print(f"  Euler arithmetic of the reference SDE, normals pre-drawn: {ceil['euler_cs_per_s']:.3e} coord-steps/s")
    print(f"  numba matvec loop, d = {d}:                          {ceil['matvec_flops']:.3e} flop/s")
    print(f"  numpy BLAS GEMM 1000 x 1000:                        {ceil['gemm_flops']:.3e} flop/s")
    print("\n| configuration | N | T | coord-steps/s | normals (or t)/s | matrix flop/s | bytes per coord-step "
          "| bound: what | bound (serial) coord-steps/s | fraction of bound | bound (overlapped) | fraction of it "
          "| bound with BLAS GEMM |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        gb = r.get("gemm_bound_cs")
        nps = _fmt(r["normals_per_s"]) if r["normals_per_s"] else "-"
        print(f"| {r['config']} | {r['N']} | {r['T']} | {_fmt(r['cs'])} | {nps} "
              f"| {_fmt(r['flops_per_s']) if r['flops_per_s'] else '-'} | {r['bytes']} | {r['what']} "
              f"| {_fmt(r['bound_cs'])} | {r['fraction']:.2f} | {_fmt(r['overlap_cs'])} | {r['fraction_overlap']:.2f} "
              f"| {_fmt(gb) if gb else ''} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run of the script)")
    ap.add_argument("--only", default="growth,memory,roofline", help="comma-separated subset of the tables")
    a = ap.parse_args(argv)
    only = set(a.only.split(","))
    warnings.simplefilter("ignore")  # RegimeWarning: |grad|/sigma = 10 at x0 on the reference problem
    la = os.getloadavg()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {default_threads()} kernel "
          f"threads, python {platform.python_version()}, load average {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    t0 = time.perf_counter()
    if "growth" in only:
        print_growth(growth(QUICK if a.quick else FULL, repeats=1 if a.quick else 3))
    if "memory" in only:
        print_memory(memory(MEM_QUICK if a.quick else MEM_FULL, d=20 if a.quick else 100))
    if "roofline" in only:
        d = 100
        rows, ceil = roofline(N=64 if a.quick else 1000, T=20 if a.quick else 1000, d=d, repeats=1 if a.quick else 3)
        print_roofline(rows, ceil, d)
    la = os.getloadavg()
    print(f"\n# done in {time.perf_counter() - t0:.1f} s; load average now {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

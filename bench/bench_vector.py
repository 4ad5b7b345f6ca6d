"""Vector simulators at d = 100 on a dense quadratic with a full Sigma: `python bench/bench_vector.py`.

For SGD (written with vectors), USAM, SAM, NSGD, clipped SGD, look-ahead Nesterov and LAMB, discrete and SDE mode: end-to-end time of
`Simulator.run` in a warm process (what a user waits for after the first compile) and the kernel alone, in
coordinate-steps per second (paths * steps * d / s).  Baseline, in the same process: the same discrete
update in numpy, vectorised over the paths (BLAS matrix products for H x and L z, numpy's normals), the
way one writes it by hand.

For the SDEs whose noise is sampled (SAM, NSGD, clipped SGD: `inner` samples of the increment per step), a
second row `sde-ps` runs the per-sample form (`g_k = grad + L z_k` and `F_k` for every sample: a matrix product
each, independent samples) that the z-space form of `sdederive.simulate.vector_lower._lower_zspace`
(antithetic pairs for an even `inner >= 4`) replaces.

`--dtype float64,float32` runs both precisions in turn (a float64 row is then the same-process baseline of the
float32 row below it; the numpy baseline runs in the row's precision: float32 normals and `sgemm`).

Options: --paths N (default 4096), --steps K (default 200), --d D (default 100), --only NAME[,NAME] (a subset),
--inner N (inner samples of the sampled-noise SDEs, default 8), --dtype D[,D] (default float64), --reps N (best
of N runs, the dtypes alternating; default 1).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import sdederive as sd
from sdederive.simulate import vector_lower


#: the vector built-ins' hyperparameters other than eta in every vector benchmark (bench_vector, bench_vector_fuse,
#: bench_vector_f32 and bench_gpu's vector kernels); `vsgd` is bench_vector's SGD written with vectors
BENCH_HYPER = {"vsgd": {}, "usam": {"rho": 0.05}, "sam": {"rho": 0.05}, "nsgd": {}, "clip_sgd": {"c": 1.0},
               "sgd_nesterov": {"mu": 0.9}, "lamb": {"beta1": 0.9, "beta2": 0.999, "eps": 1e-6, "wd": 0.01},
               "adamw_clip": {"beta1": 0.9, "beta2": 0.999, "eps": 1e-6, "wd": 0.01, "c": 1.0}}


def bench_target(target: str) -> tuple:
    """`(kind, name, obj, hyper)` of a benchmark target `KIND:NAME` (`d:sam`: the discrete optimizer, `s:sam`: its
    derived SDE), with `BENCH_HYPER[name]`; shared by the vector benchmarks' `--only` lists."""
    kind, name = target.split(":")
    return kind, name, (name if kind == "d" else sd.derive(name)), BENCH_HYPER[name]


def dense_problem(d: int) -> sd.Quadratic:
    """The benchmarks' dense quadratic (seed 0): `H = Q Q^T/d + 0.1 I` (eigenvalues 0.1 to about 4) and
    `Sigma = 0.5 A A^T + 0.1 I` with Gaussian `Q` and `A/sqrt(d)`, `x0 = 1` (bench_vector_fuse, bench_vector_f32 and
    bench_gpu's vector kernels use it too)."""
    rng = np.random.default_rng(0)
    Q = rng.normal(size=(d, d))
    H = Q @ Q.T / d + 0.1 * np.eye(d)
    A = rng.normal(size=(d, d)) / np.sqrt(d)
    return sd.Quadratic(H=(H + H.T) / 2, Sigma=0.5 * A @ A.T + 0.1 * np.eye(d), x0=np.ones(d))


def numpy_discrete(name, H, L, x0, eta, hyper, paths, steps, seed=0, dtype="float64"):
    rng = np.random.default_rng(seed)
    H, L = H.astype(dtype), L.astype(dtype)
    X = np.tile(x0, (paths, 1)).astype(dtype)
    M = np.zeros_like(X)
    V = np.zeros_like(X)
    for k in range(steps):
        xi = rng.standard_normal(X.shape, dtype=X.dtype) @ L.T
        G = X @ H + xi
        if name == "sgd_nesterov":
            M = hyper["mu"] * M + ((X - eta * hyper["mu"] * M) @ H + xi)
            X = X - eta * M
        elif name == "lamb":
            b1, b2 = hyper["beta1"], hyper["beta2"]
            M = b1 * M + (1 - b1) * G
            V = b2 * V + (1 - b2) * G * G
            U = (M / (1 - b1 ** (k + 1))) / (np.sqrt(V / (1 - b2 ** (k + 1))) + hyper["eps"]) + hyper["wd"] * X
            X = X - eta * (np.linalg.norm(X, axis=1, keepdims=True) / np.linalg.norm(U, axis=1, keepdims=True)) * U
        elif name == "adamw_clip":
            b1, b2 = hyper["beta1"], hyper["beta2"]
            Gc = np.minimum(1.0, hyper["c"] / np.linalg.norm(G, axis=1, keepdims=True)) * G
            M = b1 * M + (1 - b1) * Gc
            V = b2 * V + (1 - b2) * Gc * Gc
            U = (M / (1 - b1 ** (k + 1))) / (np.sqrt(V / (1 - b2 ** (k + 1))) + hyper["eps"]) + hyper["wd"] * X
            X = X - eta * U
        elif name == "vsgd":
            X = X - eta * G
        elif name == "usam":
            X = X - eta * ((X + hyper["rho"] * G) @ H + xi)
        elif name == "sam":
            n = np.linalg.norm(G, axis=1, keepdims=True)
            X = X - eta * ((X + hyper["rho"] * G / n) @ H + xi)
        elif name == "nsgd":
            X = X - eta * G / np.linalg.norm(G, axis=1, keepdims=True)
        elif name == "clip_sgd":
            X = X - eta * np.minimum(1.0, hyper["c"] / np.linalg.norm(G, axis=1, keepdims=True)) * G
    return X


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--paths", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--d", type=int, default=100)
    ap.add_argument("--only", default="")
    ap.add_argument("--inner", type=int, default=vector_lower.DEFAULT_INNER)
    ap.add_argument("--dtype", default="float64")
    ap.add_argument("--reps", type=int, default=1)
    a = ap.parse_args()
    only = set(filter(None, a.only.split(",")))
    d, paths, steps = a.d, a.paths, a.steps
    prob = dense_problem(d)
    H = prob.H
    x, g = sd.vectors("x g")
    vsgd = sd.from_update("vsgd", {"x": x - sd.sym("eta") * g}, hypers={"eta": (1e-2, "lr")})
    cs = paths * steps * d
    print(f"d = {d}, {paths} paths, {steps} steps, dense H, full Sigma; coordinate-steps/s (paths*steps*d/s)")
    print(f"{'optimizer':12s} {'mode':8s} {'dtype':7s} {'compile s':>9s} {'e2e s':>7s} {'kernel s':>8s} "
          f"{'e2e cs/s':>9s} "
          f"{'kernel cs/s':>11s} {'numpy s':>8s} {'e2e / numpy':>11s}")
    for name, obj in (("vsgd", vsgd), ("usam", "usam"), ("sam", "sam"), ("nsgd", "nsgd"), ("clip_sgd", "clip_sgd"),
                      ("sgd_nesterov", "sgd_nesterov"), ("lamb", "lamb"), ("adamw_clip", "adamw_clip")):
        if only and name not in only:
            continue
        hp = BENCH_HYPER[name]
        dtypes = a.dtype.split(",")
        t_np = {}
        for dtype in dtypes:
            t = time.perf_counter()
            numpy_discrete(name, H, prob.noise_factor(), prob.x0, 0.01, hp, paths, steps, dtype=dtype)
            t_np[dtype] = time.perf_counter() - t
        for mode in ("discrete", "sde", "sde-ps"):
            sde_obj = obj if mode == "discrete" else (sd.derive("sgd", Sigma="full") if name == "vsgd" else
                                                      sd.derive(obj))
            if mode == "sde-ps" and (not vector_lower.sampled_noise(sde_obj) or sde_obj.aux_states):  # no z-space
                continue
            vector_lower.ZSPACE = mode != "sde-ps"
            sims, c_s = {}, {}
            for dtype in dtypes:
                t0 = time.perf_counter()
                sampled = mode != "discrete" and vector_lower.sampled_noise(sde_obj)
                sims[dtype] = sd.compile(sde_obj, prob, inner=a.inner if sampled else None, dtype=dtype)
                c_s[dtype] = time.perf_counter() - t0
                sims[dtype].run(paths=64, steps=2, eta=0.01, hyper=hp)  # warm: numba's dispatch, BLAS threads
            best = {dt: [np.inf, np.inf] for dt in dtypes}
            for _ in range(a.reps):  # the dtypes alternate, so the machine's drift hits them alike
                for dtype in dtypes:
                    r = sims[dtype].run(paths=paths, steps=steps, eta=0.01, hyper=hp, save_every=steps)
                    b = best[dtype]
                    b[0], b[1] = min(b[0], r.timing["total_s"]), min(b[1], r.timing["run_s"])
            for dtype in dtypes:
                e2e, ker = best[dtype]
                print(f"{name:12s} {mode:8s} {dtype:7s} {c_s[dtype]:9.2f} {e2e:7.2f} {ker:8.2f} {cs / e2e:9.3g} "
                      f"{cs / ker:11.3g} {t_np[dtype]:8.2f} {t_np[dtype] / e2e:11.2f}", flush=True)

if __name__ == "__main__":
    main()

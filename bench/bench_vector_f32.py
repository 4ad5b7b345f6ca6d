"""float32 vector kernels against float64, in one process: `python bench/bench_vector_f32.py`.

Three forms of each kernel (d = 100 dense quadratic, full Sigma): float64; float32 with double coordinate-wise
arithmetic on float32 vectors (`numba_vector.F32_ARITH = False`: only the products are `sgemm`); and float32
throughout (`F32_ARITH = True`, the default: the element-free parts hoisted and rounded, `_Hoist`).  All three
are compiled first, then run alternately `--reps` times (4096 paths x 200 steps, `save_every = steps`), so the
VM's drift hits them alike; the table gives the best kernel rates, the ratios against float64 and the relative
gap of the final E[loss] to float64 (float32 rounding, not a bias: it must be far below the Monte Carlo error).

Options: --only KIND:NAME[,...] (KIND d = discrete, s = SDE; default eight kernels), --reps N (default 3).
"""

from __future__ import annotations

import argparse

import numpy as np

import sdederive as sd
from bench_vector import bench_target, dense_problem
from sdederive.simulate.backends import numba_vector

DEFAULT = "d:sam,s:usam,d:lamb,s:lamb,d:adamw_clip,d:sgd_nesterov,d:clip_sgd,s:nsgd"
FORMS = (("float64", True), ("float32", False), ("float32", True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=DEFAULT)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    d, paths, steps = 100, 4096, 200
    prob = dense_problem(d)
    cs = paths * steps * d
    print(f"d = {d}, {paths} paths, {steps} steps; best kernel coordinate-steps/s of {a.reps}, forms alternating")
    print(f"{'kernel':16s} {'float64':>9s} {'f32 vec':>9s} {'f32 all':>9s} {'vec/64':>7s} {'all/64':>7s} "
          f"{'all/vec':>7s} {'dE[loss]/E':>10s} {'MC se/E':>8s}")
    for target in a.only.split(","):
        kind, name, obj, hp = bench_target(target)
        sims = {}
        for dt, arith in FORMS:
            numba_vector.F32_ARITH = arith
            sims[(dt, arith)] = sd.compile(obj, prob, dtype=dt)
            sims[(dt, arith)].run(paths=8, steps=2, hyper=hp)
        numba_vector.F32_ARITH = True
        best, loss = {f: np.inf for f in FORMS}, {}
        for _ in range(a.reps):
            for f in FORMS:
                r = sims[f].run(paths=paths, steps=steps, eta=0.01, hyper=hp, save_every=steps, seed=3)
                best[f] = min(best[f], r.timing["run_s"])
                loss[f] = (r.mean["loss"][-1], r.se["loss"][-1])
        rate = [cs / best[f] for f in FORMS]
        ref, se = loss[FORMS[0]]
        gap = abs(loss[FORMS[2]][0] - ref) / abs(ref)
        print(f"{target:16s} {rate[0]:9.3g} {rate[1]:9.3g} {rate[2]:9.3g} {rate[1] / rate[0]:7.2f} "
              f"{rate[2] / rate[0]:7.2f} {rate[2] / rate[1]:7.2f} {gap:10.2e} {se / abs(ref):8.1e}", flush=True)


if __name__ == "__main__":
    main()

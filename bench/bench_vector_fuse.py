"""Fused against unfused coordinate-wise loops of the numba vector kernels: `python bench/bench_vector_fuse.py`.

`sdederive.simulate.backends.numba_vector.FUSE` prints a run of consecutive coordinate-wise operations as one
loop (its temporaries in locals) instead of one loop each.  The baseline, the unfused form, runs in the same
process: for each kernel (d = 100 dense quadratic, full Sigma) both forms are compiled from empty caches (the
order alternating between kernels, so neither always pays the first compile), then run alternately `--reps`
times (4096 paths x 100 steps); the table gives the compile times, the best kernel rates and whether the final
states are equal bit for bit.  Run it with fresh `SDEDERIVE_CACHE` and `NUMBA_CACHE_DIR` for the compile times.

`--switch sums` compares instead the reductions over the coordinates as four partial sums
(`sdederive.simulate.vector_lower.SPLIT_SUMS`, the default) against one sequential sum; their final states differ
in the last bits (another order of the additions), so the table gives their largest relative difference too.

Options: --only KIND:NAME[,...] (KIND d = discrete, s = SDE; default eight kernels), --reps N (default 5),
--switch fuse|sums (default fuse).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import sdederive as sd
from bench_vector import bench_target, dense_problem
from sdederive.simulate import vector_lower
from sdederive.simulate.backends import numba_vector

DEFAULT = "d:adamw_clip,s:lamb,d:lamb,s:adamw_clip,s:nsgd,d:sgd_nesterov,d:sam,d:clip_sgd"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=DEFAULT)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--switch", choices=("fuse", "sums"), default="fuse")
    a = ap.parse_args()
    mod, flag = (numba_vector, "FUSE") if a.switch == "fuse" else (vector_lower, "SPLIT_SUMS")
    d, paths, steps = 100, 4096, 100
    prob = dense_problem(d)
    sd.compile("usam", prob).run(paths=8, steps=2)  # the process's first kernel (the shared helpers)
    cs = paths * steps * d
    print(f"d = {d}, {paths} paths, {steps} steps; compile s (empty caches) and best kernel coordinate-steps/s of {a.reps}")
    off, on = ("unfused", "fused") if a.switch == "fuse" else ("1 sum", "4 sums")
    print(f"{'kernel':16s} {'compile ' + off:>15s} {on:>7s} {'cs/s ' + off:>13s} {on:>9s} {'ratio':>6s} "
          f"{'same bits':>9s} {'max rel':>9s}")
    tot = [0.0, 0.0]
    for j, target in enumerate(a.only.split(",")):
        kind, name, obj, hp = bench_target(target)
        sims, comp = {}, {}
        for f in ((False, True) if j % 2 == 0 else (True, False)):
            setattr(mod, flag, f)
            t0 = time.perf_counter()
            sims[f] = sd.compile(obj, prob)
            sims[f].run(paths=8, steps=2, hyper=hp)
            comp[f] = time.perf_counter() - t0
        setattr(mod, flag, True)
        best, final = {False: np.inf, True: np.inf}, {}
        for _ in range(a.reps):
            for f in (False, True):
                r = sims[f].run(paths=paths, steps=steps, eta=0.01, hyper=hp, save_every=steps, seed=3,
                                keep_final=True)
                best[f] = min(best[f], r.timing["run_s"])
                final[f] = r.final["x"]
        tot[0] += comp[False]
        tot[1] += comp[True]
        rel = float(np.max(np.abs(final[True] - final[False])) / np.max(np.abs(final[False])))
        print(f"{target:16s} {comp[False]:15.2f} {comp[True]:7.2f} {cs / best[False]:13.3g} {cs / best[True]:9.3g} "
              f"{best[False] / best[True]:6.2f} {str(bool(np.array_equal(final[False], final[True]))):>9s} "
              f"{rel:9.1e}", flush=True)
    print(f"{'total compile':16s} {tot[0]:15.2f} {tot[1]:7.2f}")


if __name__ == "__main__":
    main()

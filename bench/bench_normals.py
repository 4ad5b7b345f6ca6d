"""The Gaussian block filler at LLVM's vector width and at forced widths: `python bench/bench_normals.py`.

`fill_normals` (Philox4x32-10 and Box–Muller, `sdederive/simulate/rng/philox.py`) is compiled three times in
this process from its Python source, uncached: at the vectorisation factor LLVM picks (the baseline), and with
`-force-vector-width` 8 and 16 (`sdederive.simulate.rng.vector_width`).  Each copy is called from its own numba
function, as the kernels call it (one row of `4 nb` normals per call, 64 rows a step), on one core.  The table
gives normals/s for rows of `nb` blocks (25 is a row of d = 100, the kernels' call) and the ratio of each forced
width to the baseline; the last column says which width the library compiles with on this host
(`philox.FILLER_WIDTH` where the host has AVX-512, else LLVM's).

Options: --reps N (default 5, best of N), --blocks 25,50,200, --dtype float64,float32.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
from numba import njit

from sdederive.simulate.rng import philox
from sdederive.simulate.rng.vector_width import forced_vector_width, host_width

WIDTHS = (0, 8, 16)  # 0: LLVM's choice


def driver(width: int, dtype: str):
    """A numba function calling a fresh copy of the filler compiled at `width` for `rows` rows a step."""
    fill = njit(cache=False, nogil=True, error_model="numpy")(philox.fill_normals.py_func)
    with forced_vector_width(width):
        fill.compile(f"({dtype}[:, ::1], int64, int64, int64, int64, int64, int64, int64)")

    @njit(cache=False, nogil=True)
    def drive(Z, nb, steps):
        acc = 0.0
        for s in range(steps):
            for r in range(Z.shape[0]):
                fill(Z, np.int64(r), nb, np.int64(s), np.int64(r), np.int64(3), np.int64(42), np.int64(7))
            acc += Z[0, 0]
        return acc

    return drive


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--blocks", default="25,50,200")
    ap.add_argument("--dtype", default="float64,float32")
    a = ap.parse_args()
    used = host_width(philox.FILLER_WIDTH)
    print(f"{platform.processor() or platform.machine()}, numba fill_normals on one core, best of {a.reps}; "
          f"the library compiles it at width {used or 'LLVM'}")
    print(f"{'dtype':8s} {'blocks':>6s} " + " ".join(f"{('LLVM' if w == 0 else f'w{w}'):>9s}" for w in WIDTHS)
          + "   " + " ".join(f"{f'w{w}/LLVM':>8s}" for w in WIDTHS[1:]))
    for dtype in a.dtype.split(","):
        drivers = {w: driver(w, dtype) for w in WIDTHS}
        for nb in (int(b) for b in a.blocks.split(",")):
            Z = np.zeros((64, 4 * nb), dtype)
            steps = max(1, 40000 // nb)
            rate = {}
            for w, drive in drivers.items():
                drive(Z, nb, 1)
                best = np.inf
                for _ in range(a.reps):
                    t = time.perf_counter()
                    drive(Z, nb, steps)
                    best = min(best, time.perf_counter() - t)
                rate[w] = steps * Z.size / best
            print(f"{dtype:8s} {nb:6d} " + " ".join(f"{rate[w]:9.2e}" for w in WIDTHS) + "   "
                  + " ".join(f"{rate[w] / rate[0]:8.2f}" for w in WIDTHS[1:]))


if __name__ == "__main__":
    main()

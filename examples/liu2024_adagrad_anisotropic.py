"""Liu, Pan & Zhang (ICLR 2025), "AdaGrad under anisotropic smoothness": large batches do not hurt AdaGrad.

Claim (read from the reconstructed convex bounds, [RB] §3.2): at a fixed sample budget N = M*T, SGD's
averaged-iterate suboptimality grows with the batch size M (its smoothness term ||L||_inf D_2^2 M/N
takes over), AdaGrad's stays nearly flat when smoothness and noise are concentrated on few
coordinates and the solution is dense (||L||_1 D_inf^2 is much smaller); with a sparse solution SGD
wins.

Set-up of [RB] §5C: f(w) = 1/2 sum L_i (w_i - w*_i)^2, L_i = i^-2, sigma_i = 1/i, d = 128, N = 2^14,
M in {1, ..., 4096}, best constant eta per method on a grid, averaged iterate, 3 seeds; dense target
w*_i = +-U(0.5, 1.5); control w* = e_1.  The runs are the generated discrete SGD and Adagrad
(``sd.compile``) with a running-average state added from their own sympy updates
(``validators.checks.with_iterate_average``); batch M enters as sigma/sqrt(M).

    python examples/liu2024_adagrad_anisotropic.py            # full size
    python examples/liu2024_adagrad_anisotropic.py --quick    # reduced (CI)
"""

from __future__ import annotations

import sys
import time

import numpy as np
from _example import parse_args, write_json  # examples/_example.py, next to this script
from sdederive.validators import checks as C

NAME = "liu2024_adagrad_anisotropic"


def main(argv=None) -> int:
    args, out = parse_args(__doc__, argv)
    t0 = time.perf_counter()
    if args.quick:
        kw = dict(d=32, budget=2**11, batch_sizes=(1, 16, 256), seeds=2,
                  sgd_etas=np.logspace(-2, np.log10(1.9), 7), adagrad_etas=np.logspace(-2, 2, 9))
    else:
        kw = dict(d=128, budget=2**14, batch_sizes=(1, 4, 16, 64, 256, 1024, 4096), seeds=3)
    res = C.adagrad_vs_sgd_batch(**kw)
    print(res)
    png = out / f"{NAME}.png"
    C.plot_results([res], png, ncol=2,
                         title="Liu, Pan & Zhang: AdaGrad vs SGD at a fixed sample budget")
    write_json(out / f"{NAME}.json", res.to_dict())
    f = res.figures
    print(f"\nnorms: |L|_1 = {f['|L|_1']:.3g}, |L|_inf = {f['|L|_inf']:.3g}, |sigma|_1 = {f['|sigma|_1']:.3g}, "
          f"|sigma|_2 = {f['|sigma|_2']:.3g}, D_inf = {f['D_inf']:.3g}, D_2 = {f['D_2']:.3g}; "
          f"critical-batch ratio of the bounds M*_Ada/M*_SGD = {f['predicted_critical_batch_ratio']:.3g}")
    print(f"SGD grows x{f['sgd_growth']:.3g} and AdaGrad x{f['adagrad_growth']:.3g} over the batch range; "
          f"SGD/AdaGrad {f['ratio_smallest_M']:.3g} -> {f['ratio_largest_M']:.3g}; control (sparse w*) SGD/AdaGrad in "
          f"[{f['control_ratio_min']:.3g}, {f['control_ratio_max']:.3g}]")
    print(f"\nCONCLUSION: AdaGrad tolerates large batches where SGD does not (dense target), and SGD wins with a sparse "
          f"target: {'yes' if res.passed else 'no'}")
    print(f"figure: {png}")
    print(f"runtime: {time.perf_counter() - t0:.1f} s")
    return 0 if res.passed else 1


if __name__ == "__main__":
    sys.exit(main())

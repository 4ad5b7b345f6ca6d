"""Li, Tai & E (ICML 2017 / JMLR 2019): stochastic modified equations of SGD.

Claim: SGD x_{k+1} = x_k - eta g_k is approximated in the weak sense by the SDE
dX = -grad f dt + sqrt(eta Sigma) dW on the clock t = k*eta with error O(eta) (order 1), and by the
order-2 SME dX = -(I + eta/2 Hess f) grad f dt + sqrt(eta Sigma) dW with error O(eta^2).

Both SDEs are derived by sdederive (``sd.derive("sgd")``, ``sd.derive("sgd", order=2)``); the weak
error max_t |E f(x_k) - E f(X_{k eta})| of the generated discrete SGD against each generated SDE
simulator is measured by ``validators.compare`` (coupled runs, replicate-batch confidence intervals,
weak order = log-log slope over eta).

    python examples/li_tai_e_sme.py            # full size
    python examples/li_tai_e_sme.py --quick    # reduced (CI)
"""

from __future__ import annotations

import sys
import time

import numpy as np
from _example import parse_args, write_json  # examples/_example.py, next to this script
from sdederive.validators import compare
from sdederive.validators.checks import markdown_table

import sdederive as sd

NAME = "li_tai_e_sme"


def main(argv=None) -> int:
    args, out = parse_args(__doc__, argv)
    t0 = time.perf_counter()
    d = 10
    problem = sd.Quadratic(h=np.geomspace(0.1, 1.0, d), sigma=np.ones(d), x0=np.ones(d))
    etas = (0.1, 0.05, 0.025) if args.quick else (0.1, 0.05, 0.025, 0.0125)
    paths = 10_000 if args.quick else 40_000
    print(sd.derive("sgd"))
    print(sd.derive("sgd", order=2))
    print()
    comps = {}
    for order in (1, 2):
        sde = sd.derive("sgd", order=order)
        comps[order] = compare("sgd", problem, etas=etas, paths=paths, horizon=2.0, sde=sde, expected_order=order,
                               order_tol=0.3, seed=order)
        print(f"== order-{order} SME")
        print(comps[order])
        print()
    pngs = [out / f"{NAME}_order{o}.png" for o in (1, 2)]
    for o, png in zip((1, 2), pngs):
        comps[o].plot(png)
    write_json(out / f"{NAME}.json", {f"order{o}": comps[o].to_dict(curves=False) for o in comps}, default=str)
    rows = []
    for o, c in comps.items():
        for i, eta in enumerate(c.etas):
            rows.append({"SME": f"order {o}", "eta": float(eta), "weak error (loss)": float(c.weak_error["loss"][i]),
                         "95% CI low": float(c.interval["loss"][i][0]), "95% CI high": float(c.interval["loss"][i][1])})
    print(markdown_table(rows))
    o1, o2 = comps[1].order["loss"], comps[2].order["loss"]
    print(f"\nfitted weak orders: order-1 SME {o1:.3f}, order-2 SME {o2:.3f}")
    ok = bool(comps[1].passed) and bool(comps[2].passed)
    print(f"\nCONCLUSION: SGD's order-1 SME is weak order 1 and its order-2 SME weak order 2 (within 0.3): "
          f"{'yes' if ok else 'no'}")
    print("figures: " + ", ".join(str(p) for p in pngs))
    print(f"runtime: {time.perf_counter() - t0:.1f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

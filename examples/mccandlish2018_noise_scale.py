"""McCandlish, Kaplan, Amodei et al. (2018): the gradient noise scale and the optimal learning rate of SGD.

Claim 1 (one step, eq. 2.6-2.8): the step that minimises the expected loss after one SGD step at
batch B is eps_opt(B) = eps_max/(1 + B_noise/B), with B_noise = tr(H Sigma)/(G^T H G); linear in B
for B << B_noise, saturating at eps_max for B >> B_noise.  Predictions from
``sdederive.analysis.batchsize.sgd_noise_scale``; measurement: one step of the generated discrete SGD
(``sd.compile``) over an eps grid with common random numbers (``validators.checks.optimal_lr_vs_batch``).

Claim 2 (training, eq. 2.11-2.12, [RB] §5A): the steps S and examples E = B*S needed to reach a target
loss trade off as (S/S_min - 1)(E/E_min - 1) = 1, and the critical batch B_crit = E_min/S_min is far
above the noise scale at initialisation (the noise scale grows as the loss falls).  Measured with the
exact moment recursion of SGD on the noisy quadratic of [RB] §5A (per coordinate
m <- (1 - eps h) m, v <- (1 - eps h)^2 v + eps^2 s/B; no sampling), best eps per B.

    python examples/mccandlish2018_noise_scale.py            # full size
    python examples/mccandlish2018_noise_scale.py --quick    # reduced (CI)
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np
from _example import parse_args, write_json  # examples/_example.py, next to this script
from sdederive.validators import checks as C

from sdederive.analysis.batchsize import sgd_noise_scale

NAME = "mccandlish2018_noise_scale"


def tradeoff(Bs: np.ndarray, n_eps: int, d: int = 20, target: float = 0.02, max_steps: int = 200_000) -> C.CheckResult:
    """[RB] §5A: steps S(B) and examples E(B) = B*S(B) to reach E[L] <= target*L0 (exact dynamics)."""
    h = np.logspace(0, -2, d)
    s = 20 * h
    theta0 = np.ones(d)
    L0 = 0.5 * float(np.sum(h * theta0**2))
    eps = np.logspace(-3.5, math.log10(1.95), n_eps)[:, None]
    rows = []
    for B in Bs:
        m = np.tile(theta0, (n_eps, 1))
        v = np.zeros_like(m)
        a = (1 - eps * h) ** 2
        c = eps**2 * s / B
        r = 1 - eps * h
        S = np.full(n_eps, np.inf)
        k = 0
        alive = np.ones(n_eps, bool)
        while alive.any() and k < max_steps:
            k += 1
            m = r * m
            v = a * v + c
            L = 0.5 * np.sum(h * (m * m + v), axis=1)
            hit = alive & (L <= target * L0)
            S[hit] = k
            alive &= ~hit
            if np.isfinite(S).any() and k > 2 * np.nanmin(S[np.isfinite(S)]):
                break
        j = int(np.argmin(S))
        rows.append({"B": float(B), "S": float(S[j]), "E = B*S": float(B * S[j]), "best eps": float(eps[j, 0])})
    S = np.array([r["S"] for r in rows])
    E = np.array([r["E = B*S"] for r in rows])
    # [RB] §1.5 / Surge eq. 22: 1/S = 1/S_min - B_crit/E, fitted by least squares
    slope, icpt = np.polyfit(1 / E, 1 / S, 1)
    S_min, B_crit = 1 / icpt, -slope
    E_min = B_crit * S_min
    pred = icpt + slope / E
    r2 = 1 - np.sum((1 / S - pred) ** 2) / np.sum((1 / S - np.mean(1 / S)) ** 2)
    prod = (S / S_min - 1) * (E / E_min - 1)
    for r, p in zip(rows, prod):
        r["(S/Smin-1)(E/Emin-1)"] = float(p)
    ns = sgd_noise_scale(h * theta0, np.diag(h), np.diag(s))
    interior = (S > 1.5 * S_min) & (E > 1.5 * E_min)
    crit = {
        f"1/S linear in 1/E (eq. 22 fit: R^2 = {r2:.4f} >= 0.98)": bool(r2 >= 0.98),
        f"B_crit = E_min/S_min = {B_crit:.3g} > 10 x B_noise at initialisation ({ns.B_noise:.3g})":
            B_crit > 10 * ns.B_noise,
    }
    figures = {"S_min": S_min, "E_min": E_min, "B_crit": B_crit, "fit_R2": float(r2), "B_noise_init": ns.B_noise,
               "B_simple_init": ns.B_simple, "product_interior_median": float(np.median(prod[interior]))
               if interior.any() else float("nan")}
    plots = [{"title": "steps vs examples to reach 2% of the initial loss (exact SGD moments)",
              "xlabel": "examples E", "ylabel": "steps S", "xscale": "log", "yscale": "log",
              "lines": [{"x": E, "y": S, "label": "best eps per B", "style": "o-"},
                        {"x": E, "y": S_min / (1 - E_min / np.maximum(E, E_min * (1 + 1e-9))),
                         "label": "S_min/S + E_min/E = 1", "style": ":"}]}]
    return C.CheckResult("steps_examples_tradeoff", all(crit.values()),
                         "S and E trade off as (S/S_min - 1)(E/E_min - 1) = 1; B_crit >> B_noise at init ([RB] §1.5, §5A)",
                         figures, rows, crit, plots)


def main(argv=None) -> int:
    args, out = parse_args(__doc__, argv)
    t0 = time.perf_counter()
    q = args.quick
    one = C.optimal_lr_vs_batch("sgd", batch_sizes=np.logspace(0, 4, 5 if q else 17), paths=2000 if q else 20000,
                                replicates=4 if q else 8, n_eps=3 if q else 7)
    wrong = C.optimal_lr_vs_batch("sgd", prediction="surge", batch_sizes=np.logspace(0, 4, 5), paths=2000,
                                  replicates=4, n_eps=3)
    trade = tradeoff(np.logspace(0.5, 5, 8 if q else 16), n_eps=30 if q else 90)
    for label, r in (("one-step optimal learning rate (McCandlish eq. 2.6)", one),
                     ("the same measurement against the surge formula (fails by design)", wrong),
                     ("steps/examples trade-off (eq. 2.11)", trade)):
        print(f"== {label}")
        print(r)
        print()
    png = out / f"{NAME}.png"
    C.plot_results([one, trade], png, title="McCandlish et al. 2018: noise scale", ncol=2)
    write_json(out / f"{NAME}.json", {"one_step": one.to_dict(), "wrong_formula": wrong.to_dict(), "tradeoff": trade.to_dict()})
    f = one.figures
    print(f"B_noise = {f['5A B_noise']:.4g}, eps_max = {f['5A eps_max']:.4g}; "
          f"B_crit = {trade.figures['B_crit']:.4g}, S_min = {trade.figures['S_min']:.4g}, "
          f"E_min = {trade.figures['E_min']:.4g}")
    ok = one.passed and not wrong.passed and trade.passed
    print(f"\nCONCLUSION: eps_opt(B) = eps_max/(1 + B_noise/B) reproduced and the S-E trade-off holds with "
          f"B_crit >> B_noise(init): {'yes' if ok else 'no'}")
    print(f"figure: {png}")
    print(f"runtime: {time.perf_counter() - t0:.1f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

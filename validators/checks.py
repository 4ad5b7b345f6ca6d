r"""Checks of the papers' predictions against the generated discrete optimizers.

Each function runs the discrete optimizer compiled by `sdederive.compile` (one source of
truth: the same sympy update rule the SDEs are derived from), compares what it measures with the
prediction, and returns a `CheckResult` (`passed`, headline `figures`, a table, the
criteria, a `plot(path)`).  Wherever the package derives the prediction
(`sdederive.scaling_rule`, `sdederive.analysis.stationary`) the check uses that derived
expression, not a formula copied from the paper; the paper's formula is reported next to it.

Every check takes its sizes (paths, steps, grids) as arguments; the defaults are small (test
sizes); the scripts in `examples/` call them at full size.  Every check can fail: the test suite
runs each one on a case where the claim is false (`tests/test_checks.py`).

References are to the notes `docs/reference/adaptive_sdes.md` ([AS]) and `docs/reference/rates_and_batch_scaling.md` ([RB]).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import sympy as sp

import sdederive as sd
from sdederive.problems import LogisticRegression, Problem, Quadratic

from ._runs import (
    CheckError,
    CheckResult,
    batch_scaled,
    choice,
    grid,
    loglog_slope,
    markdown_table,
    plot_results,
    positive_float,
    positive_int,
    relaxation_rate,
    stationary_loss,
    stationary_mean,
    tail_ratio,
    to_float,
)
from ._runs import diag_h as _runs_diag
from ._runs import quadratic_like as _quadratic_like

__all__ = [
    "CheckError", "CheckResult", "plot_results", "markdown_table", "square_root_rule", "linear_rule",
    "signsgd_vs_sgd_stationary", "signsgd_rate_vs_noise", "heavy_tails", "rmspropw_bounded_in_noise", "adagrad_vs_sgd_batch",
    "with_iterate_average", "optimal_lr_vs_batch", "one_step_eps_opt",
]

_KAPPA = sd.sym("kappa")
_K = sd.sym("k")


# ---------------------------------------------------------------------------------------------------
# 1. batch-size scaling rules
# ---------------------------------------------------------------------------------------------------

# Base settings (kappa = 1) per optimizer: a diagonal quadratic and hyperparameters inside the
# optimizer's natural regime.  Adam/RMSprop: noise-dominated ([AS] §1.3: sigma0 = sigma*eta = 0.2,
# c1 = (1 - beta1)/eta**2 = 25, c2 = 2.5, t = k*eta**2); AdamW/RMSpropW: balanced ([AS] §2.4:
# rho = (1 - beta)/eta = 5 and 1, t = k*eta); SGD: t = k*eta.
_RULE_DEFAULTS: dict[str, dict] = {
    "adam": {"hyper": {"eta": 0.02, "beta1": 0.99, "beta2": 0.999, "eps": 1e-8},
             "h": (1.0, 0.5), "sigma": (10.0, 10.0), "x0": (1.0, 1.0), "steps": 8000},
    "rmsprop": {"hyper": {"eta": 0.02, "beta": 0.999, "eps": 1e-8},
                "h": (1.0, 0.5), "sigma": (10.0, 10.0), "x0": (1.0, 1.0), "steps": 8000},
    "adamw": {"hyper": {"eta": 0.01, "beta1": 0.95, "beta2": 0.99, "eps": 1e-8, "wd": 0.5},
              "h": (1.0, 0.5), "sigma": (4.0, 4.0), "x0": (0.5, 0.5), "steps": 4000},
    "rmspropw": {"hyper": {"eta": 0.01, "beta": 0.99, "eps": 1e-8, "wd": 0.5},
                 "h": (1.0, 0.5), "sigma": (4.0, 4.0), "x0": (0.5, 0.5), "steps": 4000},
    "sgd": {"hyper": {"eta": 0.01}, "h": (1.0, 0.5), "sigma": (1.0, 1.0), "x0": (1.0, 1.0), "steps": 4000},
}
_RULES = ("derived", "linear", "sqrt")


def _rule_map(optimizer: str, rule, exclude: Sequence[str]) -> tuple[dict, sp.Expr, str]:
    """`(map name -> sympy expression in kappa and the old value, steps expression, description)`."""
    if rule is None or rule == "derived":
        sr = sd.scaling_rule(sd.derive(optimizer))
        mp = dict(sr.map)
        steps = sp.sympify(sr.steps)
        shown = sr.to_dict()
        desc = "derived: " + ", ".join(f"{k} -> {shown[k]}" for k in mp)
    elif isinstance(rule, str):
        key = choice("rule", rule, _RULES + ("derived",))
        factor = _KAPPA if key == "linear" else sp.sqrt(_KAPPA)
        mp = {"eta": factor * sd.sym("eta")}
        steps = _K / _KAPPA
        desc = f"{key}: eta -> {factor}*eta, other hyperparameters unchanged"
    elif isinstance(rule, Mapping):
        mp = {k: sp.sympify(v) for k, v in rule.items()}
        steps = _K / _KAPPA
        desc = "given: " + ", ".join(f"{k} -> {v}" for k, v in mp.items())
    else:
        raise CheckError(f"rule={rule!r} is invalid; allowed: None (the rule derived by sd.scaling_rule), "
                         f"{', '.join(map(repr, _RULES))}, or a dict name -> sympy expression in kappa")
    for name in exclude:
        if name not in mp:
            raise CheckError(f"exclude={tuple(exclude)!r}: {name!r} is not mapped by the rule; mapped: {sorted(mp)}")
        del mp[name]
    if exclude:
        desc += f" (without scaling {', '.join(exclude)})"
    return mp, steps, desc


def _apply_rule(opt, mp: dict, hyper: dict, kappa: float) -> dict:
    new = dict(hyper)
    for name, expr in mp.items():
        if name not in hyper:
            raise CheckError(f"the rule maps {name!r}, which is not a hyperparameter of {opt.name}; "
                             f"hyperparameters: {sorted(hyper)}")
        vals = {**hyper, "kappa": kappa}
        new[name] = to_float(expr, vals)
    try:
        opt.check_hyper(new)
    except sd.HyperparameterError as e:
        raise CheckError(f"at kappa={kappa:g} the rule gives {e}; with decays, kappa*(1 - beta) must stay below 1 "
                         "(lower kappa or raise beta)") from None
    return new


def _fstar(problem: Problem) -> float:
    """Minimum of the full-batch loss (0 on a quadratic; L-BFGS on logistic regression)."""
    if isinstance(problem, Quadratic):
        return 0.0
    from scipy.optimize import minimize

    def fg(x):
        G = problem.per_example_grads(x)
        return float(problem.loss(x)), G.mean(0)

    r = minimize(fg, np.zeros(problem.d), jac=True, method="L-BFGS-B", options={"gtol": 1e-12, "maxiter": 10000})
    return float(r.fun)


def square_root_rule(optimizer: str = "adam", problem: Problem | None = None, kappas: Sequence[float] = (1, 2, 4, 8),
                     rule=None, *, exclude: Sequence[str] = (), hyper: Mapping[str, float] | None = None,
                     paths: int = 1000, steps: int | None = None, n_save: int = 16, seed: int = 0,
                     z: float = 3.0, rtol: float = 0.1, stationary_from: float = 0.5) -> CheckResult:
    r"""Batch-size scaling rule: runs at `kappa*B` with the scaled hyperparameters follow the base run.

    Prediction ([AS] §1.7, §2.6, §7 items 1, 2, 4, 18).  When `B -> kappa*B` the gradient noise
    shrinks, $\sigma\to\sigma/\sqrt\kappa$.  The rule `sd.scaling_rule(sd.derive(optimizer))`
    leaves the optimizer's SDE invariant up to a time change; for Adam/RMSprop it is the square-root
    rule $\eta\to\sqrt\kappa\eta,\ 1-\beta_i\to\kappa(1-\beta_i),\ \epsilon\to\epsilon/\sqrt\kappa$,
    for AdamW/RMSpropW the same plus $w_d\to\sqrt\kappa w_d$, for SGD the linear rule
    $\eta\to\kappa\eta$; in every case `k -> k/kappa` steps (same epochs).  So
    $\mathbb E f(x)$ after the same number of epochs must agree for every `kappa`.

    Procedure: the discrete optimizer (`sd.compile(sd.optimizers.<optimizer>(), problem)`) is run at
    the base hyperparameters and, for each `kappa`, at the mapped ones on the problem at batch
    `kappa*B` (quadratic: `sigma/sqrt(kappa)`; logistic regression: the real batch `kappa*B`) for
    `steps/kappa` steps.  Snapshot `j` of every run lies at the same epoch (base time
    `t = k*tau`).  With $L = \mathbb E f - f^*$ (`f* = 0` on a quadratic, the L-BFGS minimum
    of the full-batch loss on logistic regression) the check passes when at every snapshot

    $$
    |L_\kappa - L_1| \le z\sqrt{SE_\kappa^2 + SE_1^2} + r_{tol}\,L_1 ,
    $$

    i.e. the curves agree within the Monte Carlo confidence band plus a relative tolerance for the
    `O(eta)` discretisation error the rule does not control.

    Parameters
    ----------
    optimizer
        `"adam"`, `"rmsprop"`, `"adamw"`, `"rmspropw"` or `"sgd"`.
    problem
        a `Quadratic` or `LogisticRegression` at the base
        batch; default: a 2-d diagonal quadratic set in the optimizer's regime.
    kappas
        batch multipliers (> 0; `1` is the base run and always included).
    rule
        `None` (the derived rule), `"linear"` (`eta -> kappa*eta` only), `"sqrt"`
        (`eta -> sqrt(kappa)*eta` only) or a dict `name -> sympy expression` in `kappa` and the names.
    exclude
        hyperparameters the rule maps but which are left unchanged (`("wd",)`: AdamW's rule
        without the weight-decay part, [AS] §2.6).
    hyper
        base hyperparameters (default: the regime's values in `_RULE_DEFAULTS`).
    paths, steps, n_save
        Monte Carlo paths, base steps (rounded up so every run saves on the same
        epochs), number of snapshots compared.
    z, rtol
        the tolerance above.
    stationary_from
        fraction of the run after which the loss is averaged as the stationary value
        (reported, and compared with `sd.stationary` on a diagonal quadratic).
    """
    name = choice("optimizer", optimizer, tuple(_RULE_DEFAULTS))
    ks = grid("kappas", kappas)
    paths = positive_int("paths", paths, 2)
    n_save = positive_int("n_save", n_save, 2)
    z = positive_float("z", z)
    rtol = positive_float("rtol", rtol, allow_zero=True)
    base = _RULE_DEFAULTS[name]
    opt = sd.optimizers.get(name)
    hyp = dict(opt.defaults)
    hyp.update(base["hyper"])
    if hyper:
        opt.check_hyper(hyper)
        hyp.update({k: float(v) for k, v in hyper.items()})
    if problem is None:
        problem = sd.Quadratic(h=np.array(base["h"]), sigma=np.array(base["sigma"]), x0=np.array(base["x0"]))
    if not isinstance(problem, (Quadratic, LogisticRegression)):
        raise CheckError(f"problem of type {type(problem).__name__} is not supported; allowed: sd.Quadratic, "
                         "sd.LogisticRegression")
    steps = positive_int("steps", base["steps"] if steps is None else steps)
    mp, steps_expr, desc = _rule_map(name, rule, exclude)
    others = sorted({float(k) for k in ks if k != 1.0})
    if not others:
        raise CheckError(f"kappas={tuple(kappas)!r} has no value other than 1; nothing to compare")
    # steps of the run at kappa per base step, from the rule (k -> k/kappa)
    ratios = {}
    for kap in others:
        r = float(steps_expr.subs({_K: 1, _KAPPA: kap}))
        inv = 1.0 / r
        if abs(inv - round(inv)) > 1e-9:
            raise CheckError(f"kappa={kap:g}: the rule runs {r:g} steps per base step; allowed kappas make this "
                             "1/integer (use integer kappas)")
        ratios[kap] = int(round(inv))
    lcm = 1
    for v in ratios.values():
        lcm = lcm * v // math.gcd(lcm, v)
    save_every = max(lcm, int(math.ceil(steps / n_save / lcm)) * lcm)
    steps = save_every * n_save
    sim = sd.compile(opt, problem)
    tau = float(sp.sympify(sim.tau_expr).subs(sd.sym("eta"), hyp["eta"]))
    res1 = sim.run(paths, steps, hyper=hyp, seed=seed, save_every=save_every)
    t = res1.t
    fstar = _fstar(problem)
    L1, S1 = res1.mean["loss"] - fstar, res1.se["loss"]
    m1, s1 = stationary_mean(res1, stationary_from)
    m1 -= fstar
    diag = isinstance(problem, Quadratic) and problem.H is None and not (problem.Sigma is not None and problem.correlated)
    sde = _sde_for(name, problem) if isinstance(problem, Quadratic) else sd.derive(name)
    pred1 = stationary_loss(sde, problem.h, problem.sigma, hyp) if diag else float("nan")
    rows = [{"kappa": 1.0, **{k: hyp[k] for k in mp}, "steps": steps, "stationary E[f]": m1, "SE": s1,
             "predicted": pred1, "max |dev|/tol": 0.0, "worst at t": float("nan")}]
    lines = [{"x": t, "y": L1, "label": "kappa=1 (base)", "style": "k-"}]
    worst = 0.0
    crit = {}
    for kap in others:
        hk = _apply_rule(opt, mp, hyp, kap)
        pk = batch_scaled(problem, kap)
        simk = sd.compile(opt, pk)
        resk = simk.run(paths, steps // ratios[kap], hyper=hk, seed=seed + 7919 * int(kap * 16),
                        save_every=save_every // ratios[kap])
        Lk, Sk = resk.mean["loss"] - fstar, resk.se["loss"]
        n = min(len(Lk), len(L1))
        tol = z * np.sqrt(S1[1:n] ** 2 + Sk[1:n] ** 2) + rtol * np.abs(L1[1:n])
        dev = np.abs(Lk[1:n] - L1[1:n]) / tol
        mk, sk = stationary_mean(resk, stationary_from)
        mk -= fstar
        predk = stationary_loss(sde, pk.h, pk.sigma, hk) if diag else float("nan")
        w = float(dev.max())
        worst = max(worst, w)
        crit[f"kappa={kap:g}: |L_kappa - L_1| <= {z:g} SE + {rtol:g} L_1 at all {n - 1} epochs"] = w <= 1.0
        rows.append({"kappa": kap, **{k: hk[k] for k in mp}, "steps": steps // ratios[kap], "stationary E[f]": mk,
                     "SE": sk, "predicted": predk, "max |dev|/tol": w, "worst at t": float(t[1 + int(np.argmax(dev))])})
        lines.append({"x": t[:n], "y": Lk[:n], "yerr": z * Sk[:n], "label": f"kappa={kap:g}", "style": "o"})
    passed = all(crit.values())
    figures = {"worst_dev_over_tol": worst, "stationary_base": m1, "stationary_base_predicted": pred1,
               "tau_base": tau, "rule": desc}
    for r in rows[1:]:
        figures[f"stationary_ratio_kappa{r['kappa']:g}"] = r["stationary E[f]"] / m1
    claim = (f"{name}: under the batch-size rule [{desc}], E[f] after the same number of epochs does not "
             "depend on kappa ([AS] §1.7/§2.6)")
    short = desc.split(":")[0] + (f" without {', '.join(exclude)}" if exclude else "")
    kind = "quadratic" if isinstance(problem, Quadratic) else f"logistic regression, B={problem.B}"
    plots = [{"title": f"{name} on {kind}: {short} rule", "xlabel": "epochs in base continuous time t = k*tau",
              "ylabel": "E[f(x)]", "yscale": "log", "lines": lines}]
    notes = []
    if not diag:
        notes.append("stationary prediction not computed (sd.stationary is for diagonal quadratics)")
    return CheckResult("square_root_rule", passed, claim, figures, rows, crit, plots, notes, seed=seed)


def linear_rule(optimizer: str = "sgd", problem: Problem | None = None, kappas: Sequence[float] = (1, 2, 4, 8),
                **kw) -> CheckResult:
    r"""The linear scaling rule `eta -> kappa*eta` (other hyperparameters unchanged, `k -> k/kappa`):
    `square_root_rule` with `rule="linear"`.  Holds for SGD ([AS] §7 item 4: the SDE
    $dX=-\nabla f\,dt+(\eta\Sigma/B)^{1/2}dW$ depends on `eta/B` only); fails for Adam."""
    return square_root_rule(optimizer, problem, kappas, rule="linear", **kw)


# ---------------------------------------------------------------------------------------------------
# 2. SignSGD versus SGD (Compagnoni et al. 2025)
# ---------------------------------------------------------------------------------------------------


def _sde_for(optimizer: str, problem: Quadratic):
    if problem.noise == "student-t":
        return sd.derive(optimizer, noise=sd.StudentT(nu=problem.nu))
    return sd.derive(optimizer)


def _default_pair_problem() -> Quadratic:
    # [AS] §6 Monte Carlo items 3-4: h = (1, 4), sigma = (0.5, 2)
    return sd.Quadratic(h=np.array([1.0, 4.0]), sigma=np.array([0.5, 2.0]), x0=np.array([1.0, 1.0]))


def signsgd_vs_sgd_stationary(problem: Quadratic | None = None, eta: float = 0.005, *,
                              sigma_scales: Sequence[float] = (1.0,), signsgd_sde=None, sgd_sde=None,
                              paths: int = 2000, time: float = 20.0, n_save: int = 40, seed: int = 0,
                              z: float = 3.0, rtol: float = 0.05, burn: float = 0.5,
                              slope_tol: float = 0.15) -> CheckResult:
    r"""Stationary loss of SignSGD and SGD on a diagonal quadratic against the derived SDEs.

    Prediction ([AS] §2.3, §7 item 12): on $f=\tfrac12\sum_i h_i x_i^2$ with gradient noise
    $\sigma_i$, the OU linearisation of the SignSGD SDE gives
    $\mathbb E f(X_\infty)=\tfrac\eta4\sqrt{\pi/2}\sum_i\sigma_i$ (linear in the noise), SGD's
    $\tfrac\eta4\sum_i\sigma_i^2$ (quadratic).  The predictions used are
    `sum_i sd.stationary(sd.derive("signsgd")).loss` and the same for `"sgd"` (Student-t problems:
    the SDEs derived under that noise), evaluated at `h_i, sigma_i, eta`.

    Procedure: discrete SignSGD and SGD (`sd.compile`) for `time/eta` steps from `x0`; the loss is
    averaged over the snapshots after `burn*time` (standard error by batch means).  Passes when for
    every noise scale `s` in `sigma_scales` (noise `s*sigma`) and both optimizers
    `|measured - predicted| <= z*SE + rtol*predicted`; with two or more scales also the fitted
    exponents of the loss in `s` must be 1 (SignSGD) and 2 (SGD) within `slope_tol`.

    `signsgd_sde`/`sgd_sde` replace the SDE whose stationary loss is the prediction; passing
    `signsgd_sde=sd.derive("sgd")` (the wrong formula) makes the check fail.
    """
    problem = _default_pair_problem() if problem is None else problem
    if not isinstance(problem, Quadratic):
        raise CheckError(f"problem must be a diagonal sd.Quadratic; got {type(problem).__name__}")
    h = _runs_diag(problem)
    eta = positive_float("eta", eta)
    scales = grid("sigma_scales", sigma_scales)
    paths = positive_int("paths", paths, 2)
    n_save = positive_int("n_save", n_save, 4)
    time_ = positive_float("time", time)
    steps = int(math.ceil(time_ / eta / n_save)) * n_save
    sdes = {"signsgd": signsgd_sde if signsgd_sde is not None else _sde_for("signsgd", problem),
            "sgd": sgd_sde if sgd_sde is not None else _sde_for("sgd", problem)}
    rows, crit, lines = [], {}, []
    meas = {"signsgd": [], "sgd": []}
    for i_s, s in enumerate(scales):
        p = _quadratic_like(problem, sigma_factor=s)
        for name in ("signsgd", "sgd"):
            sim = sd.compile(sd.optimizers.get(name), p)
            # independent seeds per scale (SGD's stationary part is exactly linear in the noise for a shared seed)
            res = sim.run(paths, steps, eta=eta, seed=seed + 101 * i_s, save_every=steps // n_save)
            m, se = stationary_mean(res, burn)
            pred = stationary_loss(sdes[name], h, p.sigma, {"eta": eta})
            ok = abs(m - pred) <= z * se + rtol * pred
            meas[name].append(m)
            crit[f"{name}, sigma x {s:g}: |E f - prediction| <= {z:g} SE + {rtol:g} prediction"] = ok
            rows.append({"optimizer": name, "sigma scale": s, "eta": eta, "measured E[f]": m, "SE": se,
                         "predicted": pred, "rel. error": (m - pred) / pred,
                         "prediction from": f"sd.stationary({sdes[name].optimizer} SDE)"})
            lines.append({"x": res.t, "y": res.mean["loss"], "label": f"{name}, sigma x {s:g}",
                          "style": "-" if name == "signsgd" else "--"})
    figures: dict = {}
    for r in rows:
        figures[f"{r['optimizer']}_x{r['sigma scale']:g}_measured"] = r["measured E[f]"]
        figures[f"{r['optimizer']}_x{r['sigma scale']:g}_predicted"] = r["predicted"]
    plots = [{"title": "E[f] along the run (discrete optimizers)", "xlabel": "t = k*eta", "ylabel": "E[f]",
              "yscale": "log", "lines": lines}]
    if len(scales) >= 2:
        for name, want in (("signsgd", 1.0), ("sgd", 2.0)):
            sl = loglog_slope(scales, meas[name])
            figures[f"{name}_noise_exponent"] = sl
            crit[f"{name}: stationary loss ~ sigma^{want:g} (fitted exponent {sl:.3f}, tolerance {slope_tol:g})"] = (
                abs(sl - want) <= slope_tol)
        plots.append({"title": "stationary E[f] vs noise scale", "xlabel": "sigma scale", "ylabel": "E[f]",
                      "xscale": "log", "yscale": "log", "lines": [
                          {"x": scales, "y": meas[n], "label": f"{n} measured", "style": "o"} for n in meas] + [
                          {"x": scales, "y": [r["predicted"] for r in rows if r["optimizer"] == n],
                           "label": f"{n} predicted", "style": "-"} for n in meas]})
    claim = ("stationary E[f] of SignSGD = (eta/4) sqrt(pi/2) sum sigma_i (linear in the noise) and of SGD = "
             "(eta/4) sum sigma_i^2 (quadratic), as derived by sd.stationary ([AS] §2.3)")
    return CheckResult("signsgd_vs_sgd_stationary", all(crit.values()), claim, figures, rows, crit, plots, seed=seed)


def signsgd_rate_vs_noise(sigmas: Sequence[float] = (1.0, 2.0, 4.0, 8.0), *, h: float = 1.0, x0: float = 0.5,
                          eta: float = 0.002, paths: int = 2000, n_save: int = 30, efolds: float = 3.0,
                          expected_slopes: Mapping[str, float] | None = None, slope_tol: float = 0.15,
                          rate_rtol: float = 0.15, seed: int = 0) -> CheckResult:
    r"""Convergence rate of SignSGD falls like `1/sigma`; SGD's does not depend on `sigma`.

    Prediction ([AS] §2.2-2.3, phase 3): near the minimum the SignSGD SDE is
    $dX=-\sqrt{2/\pi}\,\Sigma^{-1/2}\nabla f\,dt+\sqrt\eta\,dW$, so on $f=\tfrac h2x^2$
    $\mathbb E f(X_t)-f_\infty\propto e^{-rt}$ with $r=2\sqrt{2/\pi}\,h/\sigma$; for SGD
    $r=2h$.  The predicted rates are `-2*J` with `J = sd.stationary(sde).jacobian` (the
    derived linearisation), and `f_inf` is `sd.stationary(sde).loss`.

    Procedure: for each `sigma` the discrete optimizer runs on a 1-d quadratic from
    `x0*sigma/min(sigmas)` (every run starts at the same signal-to-noise ratio
    $h x_0/(\sqrt2\sigma)$, inside SignSGD's phase 3, and with the same ratio of initial loss to
    SGD's floor $\eta\sigma^2/4$) for `efolds` predicted e-foldings; `log(E f - f_inf)` is fitted linearly in `t = k*eta` over the
    snapshots where the excess is between `0.8` and `e^-efolds` (times the initial excess) and
    above `4` standard errors.  Passes when every measured rate is within `rate_rtol` of the
    prediction and the slope of `log(rate)` against `log(sigma)` is `expected_slopes[name]`
    (default `-1` for SignSGD, `0` for SGD) within `slope_tol`.
    """
    sig = grid("sigmas", sigmas, minimum_len=2)
    h = positive_float("h", h)
    x0 = positive_float("x0", x0)
    eta = positive_float("eta", eta)
    paths = positive_int("paths", paths, 2)
    n_save = positive_int("n_save", n_save, 5)
    efolds = positive_float("efolds", efolds)
    want = {"signsgd": -1.0, "sgd": 0.0}
    if expected_slopes:
        for k in expected_slopes:
            choice("optimizer in expected_slopes", k, want)
        want.update({k: float(v) for k, v in expected_slopes.items()})
    rows, crit, rates = [], {}, {"signsgd": [], "sgd": []}
    fit_lines = []
    for name in ("signsgd", "sgd"):
        sde = sd.derive(name)
        opt = sd.optimizers.get(name)
        for i_s, s in enumerate(sig):
            p = sd.Quadratic(h=np.array([h]), sigma=np.array([s]), x0=np.array([x0 * s / min(sig)]))
            r_pred = 2.0 * relaxation_rate(sde, h, s, {"eta": eta})
            floor = stationary_loss(sde, np.array([h]), np.array([s]), {"eta": eta})
            t_end = efolds / r_pred * 1.15
            steps = int(math.ceil(t_end / eta / n_save)) * n_save
            # independent seeds per sigma: SGD from x0 ~ sigma is exactly scale-invariant, so a shared
            # seed would return the same rate for every sigma by construction
            res = sd.compile(opt, p).run(paths, steps, eta=eta, seed=seed + 101 * i_s, save_every=steps // n_save)
            ex = res.mean["loss"] - floor
            se = res.se["loss"]
            ex0 = ex[0]
            sel = (ex <= 0.8 * ex0) & (ex >= math.exp(-efolds) * ex0) & (ex > 4 * se)
            sel[0] = False
            if sel.sum() < 3:
                raise CheckError(f"{name}, sigma={s:g}: fewer than 3 snapshots in the fit window; raise n_save "
                                 f"(now {n_save}) or paths (now {paths}), or lower eta (now {eta:g})")
            slope, icpt = np.polyfit(res.t[sel], np.log(ex[sel]), 1)
            r_meas = -float(slope)
            rates[name].append(r_meas)
            ok = abs(r_meas - r_pred) <= rate_rtol * r_pred
            crit[f"{name}, sigma={s:g}: rate within {rate_rtol:g} of the SDE's"] = ok
            rows.append({"optimizer": name, "sigma": s, "measured rate": r_meas, "predicted rate": r_pred,
                         "rel. error": r_meas / r_pred - 1, "floor f_inf": floor, "fit points": int(sel.sum())})
            fit_lines.append({"x": res.t, "y": np.maximum(ex, 1e-12), "label": f"{name} sigma={s:g}",
                              "style": "-" if name == "signsgd" else "--"})
    figures = {}
    for name in rates:
        sl = loglog_slope(sig, rates[name])
        figures[f"{name}_rate_slope"] = sl
        figures[f"{name}_rate_slope_expected"] = want[name]
        crit[f"{name}: d log(rate)/d log(sigma) = {sl:.3f}, expected {want[name]:g} +- {slope_tol:g}"] = (
            abs(sl - want[name]) <= slope_tol)
    plots = [{"title": "excess loss E[f] - f_inf", "xlabel": "t = k*eta", "ylabel": "E[f] - f_inf",
              "yscale": "log", "lines": fit_lines},
             {"title": "rate vs noise", "xlabel": "sigma", "ylabel": "rate", "xscale": "log", "yscale": "log",
              "lines": [{"x": sig, "y": rates[n], "label": f"{n} measured", "style": "o"} for n in rates]
              + [{"x": sig, "y": [r["predicted rate"] for r in rows if r["optimizer"] == n],
                  "label": f"{n} SDE", "style": "-"} for n in rates]}]
    claim = ("the exponential rate of E[f] - f_inf scales as 1/sigma for SignSGD and is independent of sigma for "
             "SGD ([AS] §2.3)")
    return CheckResult("signsgd_rate_vs_noise", all(crit.values()), claim, figures, rows, crit, plots, seed=seed)


def heavy_tails(nu: Sequence[float] = (1.5,), *, problem: Quadratic | None = None, eta: float = 0.005,
                paths: int = 2000, n_save: int = 24, spacing: float = 2.0, seed: int = 0, z: float = 3.0,
                rtol: float = 0.08, light_max: float = 10.0, heavy_factor: float = 5.0, growth_min: float = 1.5,
                subsample: int = 8) -> CheckResult:
    r"""Under Student-t noise with `nu <= 2` SignSGD stays bounded, SGD's loss has no finite moments.

    Prediction ([AS] §2.2 heavy-tailed, §2.3): the SignSGD SDE under $Z\sim t_\nu$ has drift
    $-(2F_\nu(\nabla f/\sigma)-1)$ and a bounded diffusion for every `nu > 0`, with stationary
    loss $\eta\sum_i\sigma_i/(8f_\nu(0))$ (`sd.stationary(sd.derive("signsgd",
    noise=sd.StudentT(nu)))`).  SGD has no SDE when `nu <= 2` (`sd.derive("sgd",
    noise=sd.StudentT(nu))` refuses: `E[z**2]` is infinite); its iterates are a linear filter of the
    noise and inherit its tail index `nu`, so $f\propto x^2$ has tail index `nu/2 <= 1` and
    no finite mean.

    Measurement (seed-stable): for each stationary snapshot the ratio
    $R=\mathrm{Var}_{paths}(f)/\mathbb E_{paths}(f)^2$, and its median over `n_save` snapshots
    `spacing` slowest relaxation times apart (medians of many snapshots are stable under heavy
    tails; single means are not).  For a light-tailed loss `R` converges to a constant of order one
    (about 2 here); when `f` has tail index below one the largest path carries a fixed fraction of
    the sum and `R` grows like the number of paths.  Reference: the same SGD under Gaussian noise of
    the same scale.

    Passes when for every `nu`: SignSGD's stationary mean is within `z*SE + rtol*prediction` of the
    Student-t prediction and its `R <= light_max`; SGD's `R` is at least `heavy_factor` times the
    Gaussian reference's and grows by at least `growth_min` from `paths/subsample` to `paths`
    paths.  With `nu` above 4 (finite variance of `f`) the SGD criteria fail.
    """
    nus = grid("nu", nu)
    problem = sd.Quadratic(h=np.array([1.0, 4.0]), sigma=np.array([0.5, 2.0]), x0=np.zeros(2)) if problem is None \
        else problem
    h = _runs_diag(problem)
    eta = positive_float("eta", eta)
    paths = positive_int("paths", paths, 16)
    n_save = positive_int("n_save", n_save, 4)
    subsample = positive_int("subsample", subsample, 2)
    if paths // subsample < 8:
        raise CheckError(f"paths={paths} / subsample={subsample} leaves fewer than 8 paths; raise paths")
    spacing = positive_float("spacing", spacing)
    # stationary snapshots `spacing` slowest relaxation times apart, after a burn-in of >= 3 of them
    gap = int(math.ceil(spacing / (eta * float(np.min(h)))))
    burn_snaps = max(1, int(math.ceil(3.0 / spacing)))
    total = n_save + burn_snaps
    steps = gap * total
    burn = burn_snaps / total - 1e-9
    sgd_sim_g = sd.compile(sd.optimizers.sgd(), _quadratic_like(problem, noise="gaussian"))
    res_ref = sgd_sim_g.run(paths, steps, eta=eta, seed=seed + 3, save_every=gap)
    R_ref = float(np.median(tail_ratio(res_ref, burn)))
    rows, crit = [], {}
    figures: dict = {"sgd_gaussian_tail_ratio": R_ref}
    lines_r = [{"x": res_ref.t[1:], "y": res_ref.var["loss"][1:] / res_ref.mean["loss"][1:] ** 2,
                "label": "SGD Gaussian (reference)", "style": "k:"}]
    for v in nus:
        p = _quadratic_like(problem, noise="student-t", nu=v)
        # SignSGD
        sde_s = sd.derive("signsgd", noise=sd.StudentT(nu=v))
        pred = stationary_loss(sde_s, h, p.sigma, {"eta": eta})
        res_s = sd.compile(sd.optimizers.signsgd(), p).run(paths, steps, eta=eta, seed=seed, save_every=gap)
        m_s, se_s = stationary_mean(res_s, burn)
        R_s = float(np.median(tail_ratio(res_s, burn)))
        # SGD, two sample sizes
        sim = sd.compile(sd.optimizers.sgd(), p)
        res_g = sim.run(paths, steps, eta=eta, seed=seed + 1, save_every=gap)
        res_g_small = sim.run(paths // subsample, steps, eta=eta, seed=seed + 2, save_every=gap)
        R_g = float(np.median(tail_ratio(res_g, burn)))
        R_g_small = float(np.median(tail_ratio(res_g_small, burn)))
        growth = R_g / R_g_small
        m_g = float(np.median(res_g.mean["loss"][res_g.t >= burn * res_g.t[-1]]))
        try:
            sd.derive("sgd", noise=sd.StudentT(nu=v))
            sgd_sde = "exists"
        except sd.SdederiveError:
            sgd_sde = "none (E z^2 infinite)"
        ok_mean = abs(m_s - pred) <= z * se_s + rtol * pred
        crit[f"nu={v:g}: SignSGD E[f] within {z:g} SE + {rtol:g} of the Student-t prediction"] = ok_mean
        crit[f"nu={v:g}: SignSGD loss light-tailed (median Var/mean^2 = {R_s:.3g} <= {light_max:g})"] = R_s <= light_max
        crit[f"nu={v:g}: SGD median Var/mean^2 = {R_g:.3g} >= {heavy_factor:g} x Gaussian reference ({R_ref:.3g})"] = (
            R_g >= heavy_factor * R_ref)
        crit[f"nu={v:g}: SGD Var/mean^2 grows with the number of paths (x{growth:.3g} for x{subsample} paths, "
             f">= {growth_min:g})"] = growth >= growth_min
        rows.append({"nu": v, "SignSGD E[f]": m_s, "SE": se_s, "Student-t prediction": pred,
                     "rel. error": m_s / pred - 1, "SignSGD Var/mean^2": R_s, "SGD median E[f]": m_g,
                     f"SGD Var/mean^2 ({paths // subsample} paths)": R_g_small,
                     f"SGD Var/mean^2 ({paths} paths)": R_g, "growth": growth, "SGD SDE": sgd_sde})
        figures[f"nu{v:g}_signsgd_measured"] = m_s
        figures[f"nu{v:g}_signsgd_predicted"] = pred
        figures[f"nu{v:g}_signsgd_tail_ratio"] = R_s
        figures[f"nu{v:g}_sgd_tail_ratio"] = R_g
        figures[f"nu{v:g}_sgd_tail_ratio_growth"] = growth
        lines_r.append({"x": res_g.t[1:], "y": res_g.var["loss"][1:] / res_g.mean["loss"][1:] ** 2,
                        "label": f"SGD nu={v:g}", "style": "--"})
        lines_r.append({"x": res_s.t[1:], "y": res_s.var["loss"][1:] / res_s.mean["loss"][1:] ** 2,
                        "label": f"SignSGD nu={v:g}", "style": "-"})
    plots = [{"title": f"Var(f)/E(f)^2 across {paths} paths", "xlabel": "t = k*eta", "ylabel": "Var/mean^2",
              "yscale": "log", "lines": lines_r},
             {"title": "SignSGD stationary E[f] under Student-t noise", "xlabel": "nu", "ylabel": "E[f]",
              "lines": [{"x": nus, "y": [r["SignSGD E[f]"] for r in rows],
                         "yerr": [z * r["SE"] for r in rows], "label": "measured", "style": "o"},
                        {"x": nus, "y": [r["Student-t prediction"] for r in rows], "label": "sd.stationary",
                         "style": "x"}]}]
    claim = ("under Student-t noise with nu <= 2, SignSGD's stationary E[f] is finite and equals "
             "eta*sum(sigma_i)/(8 f_nu(0)), while SGD's loss is heavy-tailed (no finite mean) ([AS] §2.2-2.3)")
    return CheckResult("heavy_tails", all(crit.values()), claim, figures, rows, crit, plots, seed=seed)


def rmspropw_bounded_in_noise(sigmas: Sequence[float] = (1.0, 4.0, 16.0, 64.0), wd: float = 0.5, *,
                              optimizer: str = "rmspropw", h: Sequence[float] = (1.0,),
                              hyper: Mapping[str, float] | None = None, paths: int = 1000, n_save: int = 20,
                              efolds: float = 4.0, seed: int = 0, z: float = 3.0, rtol: float = 0.08,
                              saturation_slope: float = 0.3) -> CheckResult:
    r"""Decoupled weight decay keeps the stationary loss of RMSpropW/AdamW bounded as the noise grows.

    Prediction ([AS] §2.5, §7 item 12): on $f=\tfrac12\sum h_ix_i^2$ the RMSpropW SDE has
    $\mathbb E f(X_\infty)=\sum_i\eta\sigma_i^2h_i/(4P_i(h_i+w_dP_i))$, $P_i=\sigma_i+\epsilon$
    (`sd.stationary(sd.derive("rmspropw")).loss`; for AdamW the derived expression carries the extra
    factor `rho1/(rho1 + wd)`).  As `sigma -> oo` it tends to $(\eta/(4w_d))\sum_ih_i$ when
    `wd > 0` and grows like $\eta\sigma/4$ when `wd = 0`.

    Procedure: for each `sigma` the discrete optimizer starts at `x = 0` and runs for `efolds`
    slowest relaxation times of the linearised SDE (`sd.stationary(...).jacobian`); the second half
    is averaged.  Passes when every measurement is within `z*SE + rtol*prediction` of the prediction
    and the loss saturates: the fitted exponent of the loss in `sigma` over the two largest `sigma`
    is at most `saturation_slope` and the last value is below `(1 + rtol)*(eta/(4 wd)) sum h`.
    With `wd = 0` the loss keeps growing linearly and the check fails.
    """
    name = choice("optimizer", optimizer, ("rmspropw", "adamw"))
    sig = grid("sigmas", sigmas, minimum_len=2)
    wd = positive_float("wd", wd, allow_zero=True)
    hv = np.array(grid("h", h), float)
    paths = positive_int("paths", paths, 2)
    n_save = positive_int("n_save", n_save, 4)
    efolds = positive_float("efolds", efolds)
    opt = sd.optimizers.get(name)
    hyp = dict(opt.defaults)
    hyp.update({"eta": 0.01, "eps": 1e-8, "wd": wd})
    hyp.update({"beta": 0.99} if name == "rmspropw" else {"beta1": 0.9, "beta2": 0.99})
    if hyper:
        hyp.update({k: float(v) for k, v in hyper.items()})
    opt.check_hyper(hyp)
    eta = hyp["eta"]
    sde = sd.derive(name)
    sim = None
    rows, crit, meas, preds = [], {}, [], []
    for s in sig:
        p = sd.Quadratic(h=hv, sigma=np.full(hv.size, s), x0=np.zeros(hv.size))
        rate = min(relaxation_rate(sde, float(hi), s, hyp) for hi in hv)
        steps = int(math.ceil(2 * efolds / (rate * eta) / n_save)) * n_save
        sim = sd.compile(opt, p)
        res = sim.run(paths, steps, hyper=hyp, seed=seed, save_every=steps // n_save)
        m, se = stationary_mean(res, 0.5)
        pred = stationary_loss(sde, hv, p.sigma, hyp)
        meas.append(m)
        preds.append(pred)
        crit[f"sigma={s:g}: |E f - prediction| <= {z:g} SE + {rtol:g} prediction"] = abs(m - pred) <= z * se + rtol * pred
        rows.append({"sigma": s, "wd": wd, "measured E[f]": m, "SE": se, "predicted": pred,
                     "rel. error": m / pred - 1, "steps": steps})
    bound = eta * float(hv.sum()) / (4 * wd) if wd > 0 else float("inf")
    sl = loglog_slope(sig[-2:], meas[-2:])
    crit[f"saturates: exponent of E f in sigma over the two largest sigma = {sl:.3f} <= {saturation_slope:g}"] = (
        sl <= saturation_slope)
    crit[f"bounded: E f at sigma={sig[-1]:g} <= (1+{rtol:g}) (eta/(4 wd)) sum h = {bound:.4g}"] = (
        meas[-1] <= (1 + rtol) * bound)
    figures = {"bound_eta_over_4wd_sum_h": bound, "last_exponent": sl, "wd": wd}
    for r in rows:
        figures[f"sigma{r['sigma']:g}_measured"] = r["measured E[f]"]
        figures[f"sigma{r['sigma']:g}_predicted"] = r["predicted"]
    plots = [{"title": f"{name} stationary E[f], wd={wd:g}", "xlabel": "sigma", "ylabel": "E[f]",
              "xscale": "log", "yscale": "log",
              "lines": [{"x": sig, "y": meas, "yerr": [z * r["SE"] for r in rows], "label": "measured",
                         "style": "o"},
                        {"x": sig, "y": preds, "label": "sd.stationary", "style": "-"}],
              "hlines": [{"y": bound, "label": "eta sum h/(4 wd)"}] if wd > 0 else []}]
    claim = (f"{name} with decoupled weight decay wd > 0: the stationary loss stays below (eta/(4 wd)) sum h as "
             "sigma grows (with wd = 0 it grows like eta*sigma/4) ([AS] §2.5)")
    return CheckResult("rmspropw_bounded_in_noise", all(crit.values()), claim, figures, rows, crit, plots, seed=seed)


# ---------------------------------------------------------------------------------------------------
# 3. AdaGrad versus SGD at a fixed sample budget (Liu, Pan & Zhang)
# ---------------------------------------------------------------------------------------------------

_AVG = sd.sym("a")


def with_iterate_average(optimizer) -> sd.Optimizer:
    r"""The optimizer plus a state `a`: the running average of the iterates,
    $a_{k+1} = a_k + (x_{k+1} - a_k)/(k+1)$, i.e. $a_T=\bar x_T=\tfrac1T\sum_{k=1}^T x_k$.

    Built from the built-in's own sympy update (`x_{k+1}` is its update of `x`), so the compiled
    kernel is the generated optimizer with one extra line."""
    opt = sd.optimizers.get(optimizer)
    upd = opt.updates
    new = {s.name: upd[s.name] for s in opt.states}
    new["a"] = _AVG + (upd["x"] - _AVG) / (_K + 1)
    new["x"] = upd["x"]
    return sd.from_update(f"{opt.name}_avg", new, {h.name: h for h in opt.hypers},
                          init={s.name: s.init for s in opt.states}, kinds={s.name: s.kind for s in opt.states},
                          natural_regime=opt.natural_regime,
                          doc=f"{opt.name} with the running average a of its iterates")


def _avg_suboptimality(res, L: np.ndarray) -> float:
    # E f(abar) - f* = 1/2 sum_i L_i E[a_i^2]; mean/var across paths of the last snapshot
    m, v, n = res.mean["a"][-1], res.var["a"][-1], res.count[-1]
    return float(0.5 * np.sum(L * (m**2 + v * (n - 1) / n)))


def adagrad_vs_sgd_batch(d: int = 32, budget: int = 2**12, batch_sizes: Sequence[int] = (1, 4, 16, 64, 256, 1024), *,
                         seeds: int = 3, sgd_etas: Sequence[float] | None = None,
                         adagrad_etas: Sequence[float] | None = None, target: str = "dense",
                         control: str | None = "sparse", growth_min: float = 4.0, seed: int = 0,
                         eps: float = 1e-12) -> CheckResult:
    r"""AdaGrad tolerates large batches at a fixed sample budget where SGD does not ([RB] §3.2, §5C).

    Set-up ([RB] §5C): $f(w)=\tfrac12\sum_i L_i(w_i-w^*_i)^2$, `L_i = i**-2`, stochastic gradient
    $L\odot(w-w^*)+\sigma\odot z/\sqrt M$ with `sigma_i = 1/i` (batch `M` as `sigma/sqrt(M)`),
    `w0 = 0`, dense target $w^*_i=\pm U(0.5,1.5)$; budget `N = M*T` samples.  For each `M`
    and each method the best constant `eta` on a grid is taken for the averaged iterate
    $f(\bar w_T)-f^*$ (mean over `seeds` paths, computed exactly from the per-coordinate mean
    and variance of `a` across paths).  The runs are the generated discrete SGD and Adagrad
    (`sd.compile`) with the running average added (`with_iterate_average`).

    Prediction (the [R] bounds of [RB] §3.2, read at fixed `N`): SGD's bound has a smoothness term
    $\|L\|_\infty D_2^2 M/N$, AdaGrad's $\|L\|_1D_\infty^2M/N$; with concentrated `L`,
    `sigma` and a dense `w*` AdaGrad's critical batch is ~`sqrt(d)` times larger, so the
    SGD/AdaGrad ratio of the final suboptimality grows with `M` (pilot: 0.9 at `M=1` to 24 at
    `M=4096`).  Control: with a 1-sparse target `w* = e_1` (the largest `L_i`) SGD wins at every
    `M`.

    Passes when `ratio(M_max)/ratio(M_min) >= growth_min` for `target` and, if `control` is given,
    SGD's suboptimality is below AdaGrad's at every `M` for the control target.  `target="sparse"`
    (with `control="dense"`) makes the check fail.
    """
    d = positive_int("d", d, 2)
    budget = positive_int("budget", budget)
    Ms = grid("batch_sizes", batch_sizes, minimum_len=2, integer=True)
    for M in Ms:
        if budget % M:
            raise CheckError(f"batch size {M} does not divide the budget N={budget}; allowed: divisors of N")
    seeds = positive_int("seeds", seeds, 2)
    target = choice("target", target, ("dense", "sparse"))
    if control is not None:
        control = choice("control", control, ("dense", "sparse"))
    growth_min = positive_float("growth_min", growth_min)
    i = np.arange(1, d + 1, dtype=float)
    L, sig = i**-2.0, 1.0 / i
    sgd_etas = tuple(np.logspace(-2, math.log10(1.9), 14) / L.max()) if sgd_etas is None else grid("sgd_etas", sgd_etas)
    adagrad_etas = tuple(np.logspace(-2, 2, 17)) if adagrad_etas is None else grid("adagrad_etas", adagrad_etas)
    rng = np.random.default_rng(seed)
    targets = {"dense": rng.choice([-1.0, 1.0], d) * rng.uniform(0.5, 1.5, d), "sparse": np.eye(d)[0]}
    methods = {"sgd": (with_iterate_average("sgd"), sgd_etas, {}),
               "adagrad": (with_iterate_average("adagrad"), adagrad_etas, {"eps": eps})}

    def scan(wstar: np.ndarray) -> list[dict]:
        out = []
        for M in Ms:
            T = budget // M
            p = sd.Quadratic(h=L, sigma=sig / math.sqrt(M), x0=-wstar)
            row = {"M": M, "T": T}
            for name, (opt, etas, extra) in methods.items():
                sim = sd.compile(opt, p)
                best, best_eta, at_edge = float("inf"), float("nan"), False
                for j, e in enumerate(etas):
                    try:
                        res = sim.run(seeds, T, hyper={"eta": e, **extra}, seed=seed + 1000 * M, save_every=T)
                        val = _avg_suboptimality(res, L)
                    except sd.DivergenceError:
                        val = float("inf")
                    if np.isfinite(val) and val < best:
                        best, best_eta, at_edge = val, e, j in (0, len(etas) - 1)
                row[name] = best
                row[f"{name} eta*"] = best_eta
                row[f"{name} eta* at grid edge"] = at_edge
            row["SGD/AdaGrad"] = row["sgd"] / row["adagrad"]
            out.append(row)
        return out

    main = scan(targets[target])
    rows = [{"target": target, **r} for r in main]
    ratio = [r["SGD/AdaGrad"] for r in main]
    growth = ratio[-1] / ratio[0]
    crit = {f"{target} target: SGD/AdaGrad ratio grows x{growth:.3g} from M={Ms[0]} to M={Ms[-1]} "
            f"(>= {growth_min:g})": growth >= growth_min}
    figures = {"ratio_smallest_M": ratio[0], "ratio_largest_M": ratio[-1], "ratio_growth": growth,
               "sgd_growth": main[-1]["sgd"] / main[0]["sgd"], "adagrad_growth": main[-1]["adagrad"] / main[0]["adagrad"]}
    lines = [{"x": Ms, "y": [r["sgd"] for r in main], "label": f"SGD ({target})", "style": "o-"},
             {"x": Ms, "y": [r["adagrad"] for r in main], "label": f"AdaGrad ({target})", "style": "s-"}]
    if control is not None:
        ctrl = scan(targets[control])
        rows += [{"target": f"{control} (control)", **r} for r in ctrl]
        cr = [r["SGD/AdaGrad"] for r in ctrl]
        crit[f"control ({control} target): SGD beats AdaGrad at every M (max ratio {max(cr):.3g} < 1)"] = max(cr) < 1
        figures["control_ratio_max"] = max(cr)
        figures["control_ratio_min"] = min(cr)
        lines += [{"x": Ms, "y": [r["sgd"] for r in ctrl], "label": f"SGD ({control})", "style": "o:"},
                  {"x": Ms, "y": [r["adagrad"] for r in ctrl], "label": f"AdaGrad ({control})", "style": "s:"}]
    norms = {"|L|_1": float(L.sum()), "|L|_inf": float(L.max()), "|sigma|_1": float(sig.sum()),
             "|sigma|_2": float(np.linalg.norm(sig)), "D_inf": float(np.abs(targets[target]).max()),
             "D_2": float(np.linalg.norm(targets[target]))}
    figures.update(norms)
    figures["predicted_critical_batch_ratio"] = (norms["|sigma|_1"] / norms["|sigma|_2"]) * (
        norms["|L|_inf"] / norms["|L|_1"]) * (norms["D_2"] / norms["D_inf"])
    plots = [{"title": f"f(wbar_T) - f* at fixed budget N={budget}, d={d}", "xlabel": "batch size M",
              "ylabel": "best-eta suboptimality", "xscale": "log", "yscale": "log", "lines": lines},
             {"title": "SGD / AdaGrad", "xlabel": "batch size M", "ylabel": "ratio", "xscale": "log", "yscale": "log",
              "lines": [{"x": Ms, "y": ratio, "label": target, "style": "o-"}]
              + ([{"x": Ms, "y": [r["SGD/AdaGrad"] for r in ctrl], "label": f"{control} (control)", "style": "s:"}]
                 if control is not None else []), "hlines": [{"y": 1.0}]}]
    claim = ("at a fixed sample budget, AdaGrad's averaged-iterate suboptimality stays nearly flat in the batch size "
             "while SGD's grows (SGD/AdaGrad ratio grows with M) under anisotropic smoothness and noise with a dense "
             "target; with a sparse target SGD wins ([RB] §3.2, §5C)")
    columns = ["target", "M", "T", "sgd", "sgd eta*", "adagrad", "adagrad eta*", "SGD/AdaGrad"]
    res = CheckResult("adagrad_vs_sgd_batch", all(crit.values()), claim, figures, rows, crit, plots, columns=columns,
                      seed=seed)
    edges = [f"{r['target']} M={r['M']}: {n}" for r in rows for n in ("sgd", "adagrad") if r[f"{n} eta* at grid edge"]]
    if edges:
        res.notes.append("best eta at the edge of its grid (the loss may be flat there): " + "; ".join(edges))
    return res


# ---------------------------------------------------------------------------------------------------
# 4. optimal learning rate versus batch size (McCandlish et al. 2018; Li et al. 2024, "surge")
# ---------------------------------------------------------------------------------------------------


def _predictor(kind: str, G: np.ndarray, H: np.ndarray, sig: np.ndarray):
    """`(noise scale object, curve B -> eps_opt compared with the measurement)` from sdederive.analysis.batchsize."""
    from sdederive.analysis import batchsize as bs

    if kind == "mccandlish":
        ns = bs.sgd_noise_scale(G, H, np.diag(sig**2))
        return ns, ns.eps_opt
    ns = bs.sign_noise_scale(G, sig, H)
    return ns, ns.eps_opt_exact


def one_step_eps_opt(optimizer, H: np.ndarray, x0: np.ndarray, sigma: np.ndarray, B: float,
                     eps_grid: np.ndarray, paths: int, replicates: int, seed: int) -> dict:
    r"""Monte Carlo optimal step of one discrete step of `optimizer` from `x0` at batch `B`.

    The generated discrete optimizer (`sd.compile`) takes one step at every `eps` of the grid with
    the same seed (common random numbers).  On a quadratic each path's loss after the step is exactly
    $L_0-\epsilon a+\tfrac12\epsilon^2b$ ($a=G^\top V$, $b=V^\top HV$), so the mean
    losses over the grid determine the sample `a`, `b` by least squares and the optimum
    $\hat\epsilon=\bar a/\bar b$ without grid error.  Antithetic pairs: the run from `-x0` with
    the same seed is the run from `x0` with the noise negated (the loss is even), and the pair mean
    cancels most of the noise of `a`.  `replicates` independent seeds give the standard error.
    """
    L0 = 0.5 * float(x0 @ H @ x0)
    sims = [sd.compile(optimizer, sd.Quadratic(H=H, sigma=sigma / math.sqrt(B), x0=s * x0)) for s in (1.0, -1.0)]
    A = np.column_stack([eps_grid, -0.5 * eps_grid**2])
    ab, curves = [], []
    n = max(2, paths // replicates)
    for r in range(replicates):
        Lpair = np.zeros(eps_grid.size)
        for sim in sims:
            for j, e in enumerate(eps_grid):
                Lpair[j] += 0.5 * sim.run(n, 1, eta=float(e), seed=seed + 7907 * r, save_every=1).mean["loss"][1]
        sol, *_ = np.linalg.lstsq(A, L0 - Lpair, rcond=None)
        ab.append(sol)
        curves.append(Lpair)
    ab = np.array(ab)
    a, b = ab.mean(0)
    per = ab[:, 0] / ab[:, 1]
    curve = np.mean(curves, axis=0)
    return {"eps_opt": float(a / b), "se": float(np.std(per, ddof=1) / math.sqrt(replicates)),
            "grid_argmin": float(eps_grid[int(np.argmin(curve))]), "curve": curve}


def _peak(Bs: np.ndarray, eps: np.ndarray) -> float:
    """Peak of `eps(B)`: vertex of a parabola in `log B` through the grid maximum and its neighbours."""
    k = int(np.argmax(eps))
    if k == 0 or k == len(Bs) - 1:
        return float(Bs[k])
    lx, ly = np.log(Bs[k - 1:k + 2]), np.log(eps[k - 1:k + 2])
    c2, c1, _ = np.polyfit(lx, ly, 2)
    if c2 >= 0:
        return float(Bs[k])
    return float(np.exp(np.clip(-c1 / (2 * c2), lx[0], lx[-1])))


def optimal_lr_vs_batch(update: str = "sign", *, prediction: str = "auto", d: int | None = None,
                        rho: float = 0.5, c: Sequence[float] = (0.02, 0.01), batch_sizes: Sequence[float] | None = None,
                        n_eps: int = 5, paths: int = 4000, replicates: int = 4, control: bool = True, seed: int = 0,
                        z: float = 3.0, rtol: float = 0.1, peak_tol: float = 1.6) -> CheckResult:
    r"""Optimal one-step learning rate against batch size: McCandlish for SGD, the surge for sign updates.

    Predictions (`sdederive.analysis.batchsize`, [RB] §1.3, §2.3-2.5, §4 items 1-5, 12-25):

    * `update="sgd"` ([RB] §1.3, 5A model: `d = 20`, `h = logspace(0, -2, d)`, per-example noise
      variance `20 h`, `theta = 1`): $\epsilon_{opt}(B)=\epsilon_{max}/(1+\mathcal B_{noise}/B)$
      with $\mathcal B_{noise}=\operatorname{tr}(H\Sigma)/G^\top HG$ (`sgd_noise_scale`).
    * `update="sign"` ([RB] §5B: `d = 100`, $H=(1-\rho)I+\rho 11^\top$, per-example
      `sigma_i = 1`, gradient `mu = c*1`): $\epsilon_{opt}$ from the exact eq. (9) with
      $\mathcal E_i=\operatorname{erf}(\sqrt{B/2}\mu_i/\sigma_i)$ (`sign_noise_scale(...).eps_opt_exact`)
      rises like $\sqrt B$, peaks at $\mathcal B_{noise}=\pi/(2(d-1)\rho c^2)$ (eq. 14),
      falls, and flattens at $\epsilon_\infty$ (eq. 17); halving `c` moves the peak right x4;
      with `rho = 0` (control) there is no peak.

    Measurement: `one_step_eps_opt` with the generated discrete SGD / SignSGD (`n_eps` steps
    on a grid up to `2*eps_max`, common random numbers, antithetic pairs, `replicates` seeds).

    Passes when at every `B` `|eps_meas - eps_pred| <= z*SE + rtol*eps_pred`, and for `"sign"`
    when the measured peak (parabola in `log B` around the grid maximum) lies within a factor
    `peak_tol` of `B_noise` for every `c`, the peak ratio of consecutive `c` matches
    `(c_i/c_{i+1})**2` within `peak_tol`, and (`control`) the `rho = 0` curve is nondecreasing
    within `z` standard errors; for `"sgd"` the measured curve must be nondecreasing too.
    `prediction="mccandlish"` for sign updates (or `"surge"` for SGD) compares with the other
    paper's formula and fails.
    """
    update = choice("update", update, ("sgd", "sign"))
    prediction = choice("prediction", prediction, ("auto", "mccandlish", "surge"))
    kind = ("mccandlish" if update == "sgd" else "surge") if prediction == "auto" else prediction
    n_eps = positive_int("n_eps", n_eps, 3)
    paths = positive_int("paths", paths, 4)
    replicates = positive_int("replicates", replicates, 2)
    rho = positive_float("rho", rho, allow_zero=True)
    cs = grid("c", c)
    opt = sd.optimizers.sgd() if update == "sgd" else sd.optimizers.signsgd()
    rows, crit, figures, lines, eps_lines = [], {}, {}, [], []
    if update == "sgd":
        d = 20 if d is None else positive_int("d", d, 1)
        h = np.logspace(0, -2, d)
        configs = [("5A", np.diag(h), h * 1.0, np.sqrt(20 * h), np.ones(d))]
        Bs = np.array(grid("batch_sizes", batch_sizes if batch_sizes is not None else np.logspace(0, 4, 9)))
    else:
        d = 100 if d is None else positive_int("d", d, 2)
        if not 0 < rho < 1:
            raise CheckError(f"rho={rho!r} is invalid for the surge set-up; allowed: 0 < rho < 1 (rho = 0 is the control)")
        configs = []
        Hc = (1 - rho) * np.eye(d) + rho * np.ones((d, d))
        for cc in cs:
            mu = np.full(d, cc)
            configs.append((f"c={cc:g}", Hc, mu, np.ones(d), np.linalg.solve(Hc, mu)))
        if control:
            mu = np.full(d, cs[-1])
            configs.append((f"c={cs[-1]:g}, rho=0 (control)", np.eye(d), mu, np.ones(d), mu.copy()))
        Bs = np.array(grid("batch_sizes", batch_sizes if batch_sizes is not None else np.logspace(0, 5, 16)))
    peaks = {}
    vlines: list = []
    for label, H, G, sig, x0 in configs:
        if update == "sgd":
            x0 = np.ones(d)
        ns, curve = _predictor(kind, G, H, sig)
        pred = np.asarray(curve(Bs), float)
        scale = float(np.max(pred))
        eps_grid = scale * np.linspace(2.0 / n_eps, 2.0, n_eps)
        meas, ses = [], []
        for B in Bs:
            r = one_step_eps_opt(opt, H, x0, sig, float(B), eps_grid, paths, replicates, seed)
            meas.append(r["eps_opt"])
            ses.append(r["se"])
        meas, ses = np.array(meas), np.array(ses)
        ok = np.abs(meas - pred) <= z * ses + rtol * np.abs(pred)
        crit[f"{label}: eps_opt within {z:g} SE + {rtol:g} of the {kind} prediction at all {len(Bs)} batch sizes "
             f"({int(ok.sum())} hold)"] = bool(ok.all())
        bn = float(getattr(ns, "B_noise", float("nan")))
        em = float(getattr(ns, "eps_max", float("nan")))
        for B, m, s_, p_ in zip(Bs, meas, ses, pred):
            rows.append({"setting": label, "B": float(B), "eps_opt measured": m, "SE": s_, "predicted": p_,
                         "measured/eps_max": m / em if np.isfinite(em) and em > 0 else float("nan"),
                         "rel. error": m / p_ - 1})
        figures[f"{label} B_noise"] = bn
        figures[f"{label} eps_max"] = em
        if update == "sign" and kind == "surge":
            figures[f"{label} eps_inf"] = float(ns.eps_inf)
            figures[f"{label} eq2 at grid"] = list(np.asarray(ns.eps_opt(Bs), float))
        if "control" in label or update == "sgd":
            dec = [meas[k + 1] < meas[k] - z * math.hypot(ses[k], ses[k + 1]) for k in range(len(Bs) - 1)]
            crit[f"{label}: measured eps_opt nondecreasing in B (no surge)"] = not any(dec)
        else:
            pk = _peak(Bs, meas)
            peaks[label] = pk
            figures[f"{label} measured peak B"] = pk
            crit[f"{label}: measured peak at B = {pk:.4g}, within x{peak_tol:g} of B_noise = {bn:.4g}"] = (
                np.isfinite(bn) and 1 / peak_tol <= pk / bn <= peak_tol)
        lines.append({"x": Bs, "y": meas, "yerr": z * ses, "label": f"{label} measured", "style": "o"})
        lines.append({"x": Bs, "y": pred, "label": f"{label} {kind}" + (" (exact eq. 9)" if kind == "surge" else ""),
                      "style": "-"})
        if kind == "surge" and np.isfinite(bn):
            lines.append({"x": Bs, "y": np.asarray(ns.eps_opt(Bs), float), "label": f"{label} eq. 2", "style": ":"})
            vlines.append({"x": bn})
        eps_lines.append({"x": Bs, "y": meas / scale, "label": label, "style": "o-"})
    if update == "sign" and len(peaks) >= 2:
        labs = list(peaks)
        for a_, b_, ca, cb in zip(labs, labs[1:], cs, cs[1:]):
            want = (ca / cb) ** 2
            got = peaks[b_] / peaks[a_]
            figures[f"peak shift {a_} -> {b_}"] = got
            crit[f"peak moves x{got:.3g} from {a_} to {b_} (predicted x{want:.3g}, within x{peak_tol:g})"] = (
                1 / peak_tol <= got / want <= peak_tol)
    title = "McCandlish: SGD" if update == "sgd" else "surge: sign updates"
    plots = [{"title": f"optimal one-step learning rate, {title}", "xlabel": "batch size B",
              "ylabel": "eps_opt", "xscale": "log", "yscale": "log", "lines": lines, "vlines": vlines}]
    claim = ("SGD: eps_opt(B) = eps_max/(1 + B_noise/B) (McCandlish et al. 2018, [RB] §1.3)" if update == "sgd" else
             "sign updates: eps_opt(B) rises ~sqrt(B), peaks at B_noise (eq 14), then falls to eps_inf; the peak "
             "moves right x4 when the gradient halves; no peak without off-diagonal curvature (Li et al. 2024, [RB] §2)")
    if kind != ("mccandlish" if update == "sgd" else "surge"):
        claim += f" [compared with the {kind} prediction instead]"
    return CheckResult("optimal_lr_vs_batch", all(crit.values()), claim, figures, rows, crit, plots, seed=seed)

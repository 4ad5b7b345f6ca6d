"""Command line interface: `sdederive list | derive | scaling-rule | stationary | simulate | rate | optimal-lr | tour`.

Every command has `--help` with an example.  Bad input (an unknown optimizer, noise model or
regime, an invalid `nu`, an optimizer with no limit in the regime asked for, ...) prints
`sdederive: error: <message>` on stderr and exits with status 2, without a traceback.

The scaling-rule and stationary commands (and the tour) import `sdederive.analysis.scaling` and
`sdederive.analysis.stationary` when they run.
"""

from __future__ import annotations

import argparse
import math
import sys
import textwrap
import time
from collections.abc import Sequence

from sdederive.cli import _catalog
from sdederive.cli._common import SPEC_HELP, Formatter, Parser, UsageError, examples, kv_list, load_spec
from sdederive.errors import NoiseModelError, SdederiveError


class _Lazy:
    """A module imported on its first attribute access: building the parser (`--help`, `list`) imports
    neither sympy nor numba; the names its help texts list come from `sdederive.cli._catalog`."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str):
        import importlib

        return getattr(importlib.import_module(self._name), attr)


noise_mod = _Lazy("sdederive.noise")
regime_mod = _Lazy("sdederive.regimes")
opt_mod = _Lazy("sdederive.spec.optimizers")


def derive(*args, **kwargs):
    """`sdederive.derivation.engine.derive`, imported on first use."""
    from sdederive.derivation.engine import derive as _derive_impl

    return _derive_impl(*args, **kwargs)


def json_dumps(obj, **kwargs) -> str:
    """`sdederive._json.dumps`, imported on first use (it needs numpy)."""
    from sdederive._json import dumps

    return dumps(obj, **kwargs)

__all__ = ["main", "build_parser"]

PROG = "sdederive"

#: one line per built-in noise model, for ``sdederive list``
NOISE_DOCS = {
    "gaussian": "g = grad + sigma*z, z ~ N(0, 1) per coordinate",
    "student-t": "g = grad + sigma*T_nu: heavy tails, scale sigma, nu degrees of freedom (--nu; symbolic if omitted)",
    "minibatch": "Gaussian with sigma = sigma1/sqrt(B): per-example std sigma1, batch size B",
}

_NOISE_HELP = f"gradient-noise model: {', '.join(_catalog.noise_names())} (default: gaussian)"
_REGIME_HELP = (f"asymptotic regime: {', '.join(_catalog.regime_names())}; for the vector engine also "
                f"{', '.join(_catalog.vector_regime_names())} (default: the optimizer's natural one)")
_NU_HELP = "Student-t degrees of freedom, a number > 0 (only with --noise student-t; default: symbolic nu)"


# -- shared helpers --------------------------------------------------------------------------------


def _noise_params(args) -> dict:
    """`nu=...` for the noise constructor, refusing `--nu` for noise models that have none."""
    if args.nu is None:
        return {}
    key = str(args.noise).strip().lower()
    if key not in noise_mod.aliases("student-t"):
        noise_mod.get(args.noise)  # an unknown noise name is the clearer error
        raise SdederiveError(f"--nu={args.nu} applies only to --noise student-t (got --noise {args.noise})")
    try:
        nu: object = float(args.nu)
    except ValueError:
        nu = args.nu  # not a number: the noise model refuses it with its own message
    else:
        if not math.isfinite(nu):  # nan, inf, 1e400 (which float() reads as inf)
            raise NoiseModelError(f"--nu={args.nu} is invalid; allowed: a finite number nu > 0")
        if nu == int(nu):  # keep nu=3 an integer so that exact moments stay exact
            nu = int(nu)
    return {"nu": nu}


def _optimizer_usage(args) -> str | None:
    """The usage error of a command that takes `OPT` or `--spec`: neither or both given (else `None`)."""
    if not hasattr(args, "spec") or not hasattr(args, "optimizer"):
        return None
    if args.spec is not None and args.optimizer is not None:
        return f"both OPT ({args.optimizer}) and --spec ({args.spec}) are given; allowed: one of them"
    if args.spec is None and args.optimizer is None:
        return (f"no optimizer: give a built-in OPT ({', '.join(opt_mod.names())}) or --spec FILE.py:NAME or "
                "--spec FILE.json")
    return None


def _optimizer(args):
    """The optimizer of a command: the built-in `OPT` or the `--spec` file (exactly one of them)."""
    msg = _optimizer_usage(args)
    if msg:
        raise SdederiveError(msg)
    return load_spec(args.spec) if args.spec is not None else args.optimizer


def _derive(args, order: int = 1):
    return derive(_optimizer(args), args.noise, args.regime, order, **_noise_params(args))


def _dump(obj) -> str:
    return json_dumps(obj, indent=2)


# -- commands ------------------------------------------------------------------------------------


def _optimizer_table(title: str, catalog_rows, out) -> None:
    """`title`, then one aligned row per `(name, natural regime, states, description)` of the catalog."""
    print(title, file=out)
    rows = [(name, reg, ", ".join(states) or "-", doc) for name, reg, states, doc in catalog_rows]
    w = [max(len(r[i]) for r in rows + [("name", "natural regime", "states", "")]) for i in range(3)]
    print(f"  {'name':<{w[0]}}  {'natural regime':<{w[1]}}  {'states':<{w[2]}}  description", file=out)
    for r in rows:
        print(f"  {r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:<{w[2]}}  {r[3]}", file=out)


def cmd_list(args, out) -> int:
    # from the catalog (sdederive.cli._catalog, generated from the registries and tested against them): no sympy
    _optimizer_table("Optimizers (sdederive derive NAME):", _catalog.OPTIMIZERS, out)

    print("\nNoise models (--noise NAME):", file=out)
    wn = max(len(n) for n in _catalog.noise_names())
    for name in _catalog.noise_names():
        print(f"  {name:<{wn}}  {NOISE_DOCS.get(name, '')}", file=out)

    _optimizer_table("\nVector optimizers (sdederive derive NAME: the vector engine, d dimensions, a full Sigma):",
                     _catalog.VECTOR_OPTIMIZERS, out)

    print("\nRegimes (--regime NAME):", file=out)
    wr = max(len(r[0]) for r in _catalog.REGIMES)
    wt = max(len(r[1]) for r in _catalog.REGIMES)
    indent = " " * (2 + wr + 2 + len("tau = ") + wt + 2)
    for name, tau, doc in _catalog.REGIMES:
        head = f"  {name:<{wr}}  tau = {tau:<{wt}}  "
        print(textwrap.fill(doc or "-", width=110, initial_indent=head, subsequent_indent=indent), file=out)
    for name, doc in _catalog.VECTOR_REGIMES:
        print(f"  {name:<{wr}}  (vector engine) {doc}", file=out)
    return 0


def _add_format_args(p: argparse.ArgumentParser, json_what: str, latex_what: str) -> None:
    """`--json` / `--latex` (exclusive), read by `_show`."""
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help=f"print {json_what}")
    fmt.add_argument("--latex", action="store_true", help=f"print {latex_what}")


def _show(args, out, obj, json_text) -> int:
    """Print `obj` as JSON (`--json`: `json_text()`), LaTeX (`--latex`) or text."""
    if args.json:
        print(json_text(), file=out)
    elif getattr(args, "latex", False):
        print(obj.latex(), file=out)
    else:
        print(obj, file=out)
    return 0


def cmd_derive(args, out) -> int:
    if getattr(args, "Sigma", None) is not None:
        from sdederive.derivation.engine import derive as _d

        sde = _d(_optimizer(args), args.noise, args.regime, args.order, **_noise_params(args), Sigma=args.Sigma)
        return _show(args, out, sde, sde.to_json)
    sde = _derive(args, args.order)
    return _show(args, out, sde, sde.to_json)


def cmd_scaling_rule(args, out) -> int:
    from sdederive.analysis.scaling import scaling_rule

    rule = scaling_rule(_derive(args), kappa="kappa")
    print(_dump(rule.to_dict()) if args.json else rule, file=out)
    return 0


def cmd_stationary(args, out) -> int:
    from sdederive.analysis.stationary import stationary

    sde = _derive(args)
    st = stationary(sde, curvature="h")
    print(_dump(st.to_dict()) if args.json else st, file=out)
    return 0


def cmd_tour(args, out) -> int:
    t0 = time.perf_counter()

    def heading(text: str) -> None:
        print(f"\n== {text} ==", file=out)

    print("sdederive tour: SDE approximations derived from optimizer update rules (sympy, one coordinate).",
          file=out)
    print("Notation: grad = true gradient, sigma = noise std, eta = learning rate, t = k*tau.", file=out)

    heading("1. SGD, Gaussian noise (regime sgd: tau = eta; Li, Tai & E's SME)")
    print(derive("sgd"), file=out)

    heading("2. SignSGD, Gaussian noise: the drift is an erf of the signal-to-noise ratio")
    print(derive("signsgd"), file=out)

    heading("3. SignSGD, Student-t noise with nu = 3: heavy tails change the erf into a 2F1")
    print(derive("signsgd", "student-t", nu=3), file=out)

    heading("4. Adam, noise-dominated regime (tau = eta**2; Malladi et al. 2022)")
    adam = derive("adam", regime="noise-dominated")
    print(adam, file=out)

    heading("5. AdamW, balanced regime (tau = eta, 1 - beta = rho*eta; Compagnoni et al. 2025)")
    print(derive("adamw", regime="balanced"), file=out)

    heading("6. Adam's square-root scaling rule: batch B -> kappa*B leaves the SDE unchanged")
    from sdederive.analysis.scaling import scaling_rule

    print(scaling_rule(adam), file=out)

    heading("7. Stationary loss on f = h*x**2/2: SGD vs SignSGD")
    from sdederive.analysis.stationary import stationary

    for name in ("sgd", "signsgd"):
        st = stationary(derive(name), curvature="h")
        how = "exact" if st.exact else "linearized around x = 0"
        print(f"  {name:<8} E[f] = {st.loss}   ({how})", file=out)

    print(f"\nDone in {time.perf_counter() - t0:.1f} s. Next: `sdederive list`, "
          "`sdederive derive adam --latex`, `sdederive derive lion --json`.", file=out)
    return 0


# -- parser --------------------------------------------------------------------------------------


#: noise scale of the default problem of ``simulate`` for regimes with ``sigma = sigma0/eta``: ten times
#: the largest gradient at x0 (|grad_i|/sigma_i <= 0.1, inside sdederive.analysis.regime_check's criterion)
_NOISE_DOMINATED_SIGMA = 100.0


def _default_problem(optimizer, regime: str | None):
    """The problem of `simulate` without `--problem`: `f = sum_i h_i x_i**2/2`, `h = geomspace(0.1, 10,
    10)`, `x0 = 1`, with `sigma = 1`, or `sigma = 100` where the regime (`--regime` or the optimizer's
    natural one) is noise-dominated, so that `|grad|/sigma` is small as that regime assumes."""
    import numpy as np

    from sdederive.problems import Quadratic
    from sdederive.spec import vector as vec_mod

    if vec_mod.is_vector(optimizer):  # the vector engine's regimes ('sgd', 'high-dim', 'rho-eta') scale no noise
        sigma = 1.0
    else:
        rg = regime_mod.get(regime if regime is not None else opt_mod.get(optimizer).natural_regime)
        sigma = _NOISE_DOMINATED_SIGMA if rg.scale_noise else 1.0
    return Quadratic(h=np.geomspace(0.1, 10, 10), sigma=np.full(10, sigma), x0=np.ones(10))


def cmd_simulate(args, out) -> int:
    from sdederive.errors import DivergenceError
    from sdederive.problems import load
    from sdederive.simulate.simulator import check_run_args
    from sdederive.simulate.simulator import compile as sd_compile

    optimizer = _optimizer(args)
    problem = load(args.problem) if args.problem else _default_problem(optimizer, args.regime)
    hyper = kv_list(args.hp, "--hp")
    init = kv_list(args.init, "--init")
    if args.mode == "sde":
        from sdederive.noise import StudentT

        noise = StudentT(nu=problem.nu) if problem.noise in ("student-t", "multivariate-t") else "gaussian"
        obj = derive(optimizer, noise, args.regime)
    else:
        from sdederive.spec import vector as vec_mod

        obj = optimizer if vec_mod.is_vector(optimizer) else opt_mod.get(optimizer)
    save_every = args.save_every if args.save_every is not None else max(1, args.steps // 100)
    # the run's sizes are checked before the (seconds-long) compile
    check_run_args(paths=args.paths, steps=args.steps, save_every=save_every, seed=args.seed)
    sim = sd_compile(obj, problem, backend=args.backend, dtype=args.dtype, scheme=args.scheme,
                     regime=args.regime if args.mode == "discrete" else None)
    import warnings

    from sdederive.analysis.regime_check import RegimeWarning

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RegimeWarning)
            res = sim.run(paths=args.paths, steps=args.steps, eta=args.eta, hyper=hyper, seed=args.seed,
                          save_every=save_every, init=init or None, mask_diverged=args.mask_diverged,
                          progress=args.progress)
    except DivergenceError as e:
        raise SdederiveError(str(e)) from None
    for w in caught:
        if issubclass(w.category, RegimeWarning):
            print(f"{PROG}: warning: {w.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    status = 130 if res.partial else 0
    if res.partial:
        if args.progress:  # end the progress bar's line
            sys.stderr.write("\n")
        print(f"{PROG}: interrupted: partial result, completed {res.steps_done} of {res.steps_total} steps",
              file=sys.stderr)
    if args.json:
        out.write(json_dumps(res.to_dict(timing=args.timing)) + "\n")
        return status
    se = res.se
    done = (f"{args.steps} steps" if not res.partial else
            f"partial: completed {res.steps_done} of {res.steps_total} steps (interrupted)")
    out.write(f"{res.mode} {res.name}: {res.paths} paths, {done}, backend {args.backend}, "
              f"compile {res.timing['compile_s']:.2f}s, run {res.timing['run_s']:.2f}s\n")
    if res.diverged:
        out.write(f"{res.diverged} of {res.paths} paths diverged and were left out of the statistics "
                  "(--mask-diverged)\n")
    out.write(f"{'t':>12} {'E[loss]':>14} {'se':>10}\n")
    for j in range(len(res.t)):
        if res.count[j] == 0:
            out.write(f"{res.t[j]:12.6g} {'no path left':>14} {'-':>10}  (all {res.paths} paths diverged)\n")
        else:
            out.write(f"{res.t[j]:12.6g} {res.mean['loss'][j]:14.6g} {se['loss'][j]:10.3g}\n")
    for n in res.notes:
        out.write(f"note: {n}\n")
    return status


def _add_optimizer_args(p: argparse.ArgumentParser) -> None:
    """`OPT` (a built-in name) or `--spec FILE` (read by `_optimizer`)."""
    p.add_argument("optimizer", metavar="OPT", nargs="?", default=None,
                   help=f"built-in optimizer: {', '.join(_catalog.optimizer_names())}; vector engine (d "
                        f"dimensions, full Sigma): {', '.join(_catalog.vector_optimizer_names())} (or --spec)")
    p.add_argument("--spec", default=None, metavar="FILE", help=SPEC_HELP)
    p.set_defaults(usage_parser=p)


def _add_problem_args(p: argparse.ArgumentParser) -> None:
    _add_optimizer_args(p)
    p.add_argument("--noise", default="gaussian", metavar="NOISE", help=_NOISE_HELP)
    p.add_argument("--nu", default=None, metavar="NU", help=_NU_HELP)
    p.add_argument("--regime", default=None, metavar="R", help=_REGIME_HELP)


_ASSUME = ("smooth", "anisotropic", "pl", "convex", "batch", "exact")
_ASSUME_DOC = {"smooth": "scalar L-smoothness (default)", "anisotropic": "per-coordinate smoothness L_i",
               "pl": "mu-PL inequality", "convex": "convexity: averaged-iterate bound via a distance Lyapunov function",
               "batch": "noise sigma_i/sqrt(B) with per-example sigma_i", "exact": "no small signal-to-noise "
               "linearization of nonlinear drifts (SignSGD then has no closed form)"}


def _assumptions(text: str):
    from sdederive.analysis.assumptions import Assumptions

    items = [a.strip().lower() for a in text.split(",") if a.strip()]
    bad = [a for a in items if a not in _ASSUME]
    if bad:
        raise SdederiveError(f"unknown assumption {bad[0]!r} in --assume; allowed: "
                             + "; ".join(f"{k} ({v})" for k, v in _ASSUME_DOC.items()))
    return Assumptions("anisotropic" if "anisotropic" in items else "scalar", pl="pl" in items,
                       convex="convex" in items, B="B" if "batch" in items else None, small_snr="exact" not in items)


def cmd_rate(args, out) -> int:
    from sdederive.analysis import rates

    A = _assumptions(args.assume)
    sde = _derive(args, 1)
    bound = rates.convex_bound(sde, A) if A.convex else rates.loss_bound(sde, A)
    return _show(args, out, bound, lambda: _dump(bound.to_dict()))


def cmd_optimal_lr(args, out) -> int:
    from sdederive.analysis.batchsize import optimal_lr

    res = optimal_lr(args.direction, noise=args.noise, **_noise_params(args))
    return _show(args, out, res, lambda: _dump(res.to_dict()))


def build_parser() -> argparse.ArgumentParser:
    from sdederive import __version__

    parser = Parser(
        prog=PROG,
        formatter_class=Formatter,
        description="Derive SDE approximations of stochastic optimizers from their update rules.",
        epilog=examples(f"{PROG} tour", f"{PROG} derive adam --latex", f"{PROG} derive signsgd --noise student-t --nu 3")
        + f"\n\nRun `{PROG} COMMAND --help` for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    p = sub.add_parser(
        "list", help="list built-in optimizers, noise models and regimes", formatter_class=Formatter,
        description="List the built-in optimizers (with their natural regime), noise models and regimes.",
        epilog=examples(f"{PROG} list"),
    )
    p.set_defaults(func=cmd_list)

    p = sub.add_parser(
        "derive", help="derive the SDE of an optimizer", formatter_class=Formatter,
        description="Derive the SDE dX = b dt + D dW of a built-in optimizer, or of your own (--spec), one "
        "coordinate, by a one-step moment expansion in the learning rate eta. Prints a readable form by default.",
        epilog=examples(f"{PROG} derive sgd", f"{PROG} derive adam --regime noise-dominated --latex",
                         f"{PROG} derive signsgd --noise student-t --nu 3 --json",
                         f"{PROG} derive sgd --order 2", f"{PROG} derive sam --latex",
                         f"{PROG} derive usam --regime rho-eta --order 2 --Sigma x",
                         f"{PROG} derive --spec my_opt.py:my_adagrad --json",
                         f"{PROG} derive --spec my_adagrad.json"),
    )
    _add_problem_args(p)
    p.add_argument("--order", type=int, default=1, choices=(1, 2),
                   help="1: leading order; 2: stochastic modified equation of order 2 (needs tau = eta)")
    p.add_argument("--Sigma", default=None, choices=("full", "x"),
                   help="the vector engine's noise covariance: full (a constant full Sigma) or x (the state-dependent "
                        "minibatch covariance Sigma(x)); a scalar built-in then derives in vector form")
    _add_format_args(p, "the SDE as JSON (the docs/notation.md schema)", "the SDE as a LaTeX aligned block")
    p.set_defaults(func=cmd_derive)

    p = sub.add_parser(
        "scaling-rule", help="batch-size scaling rule that leaves the SDE invariant", formatter_class=Formatter,
        description="Find how to change the hyperparameters when the batch size B becomes kappa*B so that the "
        "SDE (and so the training dynamics, to leading order) is unchanged; e.g. Adam's square-root rule.",
        epilog=examples(f"{PROG} scaling-rule adam", f"{PROG} scaling-rule sgd --json"),
    )
    _add_problem_args(p)
    p.add_argument("--json", action="store_true", help="print the rule as JSON")
    p.set_defaults(func=cmd_scaling_rule)

    p = sub.add_parser(
        "stationary", help="stationary variance and loss on a quadratic", formatter_class=Formatter,
        description="Stationary variance of x and expected loss of the SDE on the quadratic f = h*x**2/2 "
        "(one coordinate, curvature h).",
        epilog=examples(f"{PROG} stationary sgd", f"{PROG} stationary signsgd --json"),
    )
    _add_problem_args(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_stationary)

    p = sub.add_parser(
        "simulate", help="simulate the SDE or the discrete optimizer on a problem", formatter_class=Formatter,
        description="Compile and run an ensemble simulator: --mode sde integrates the derived SDE, --mode discrete "
        "runs the optimizer's update rule, both on the time axis t = k*tau with the discrete hyperparameters "
        "(--eta, --hp). Prints E[loss] over time, or with --json the means, variances and standard errors of the "
        "loss, |x|^2 and every state. Without --problem: a 10-dimensional diagonal quadratic, h = geomspace(0.1, "
        "10), x0 = 1, sigma = 1 (sigma = 100 for a noise-dominated regime: adam, rmsprop). A warning says when the "
        "problem is outside the SDE's regime (sdederive.analysis.regime_check).",
        epilog=examples(
            f"{PROG} simulate adam --mode sde --problem quad.json --paths 10000 --steps 5000 --eta 0.01 "
            "--hp beta1=0.9 --hp beta2=0.999 --seed 0 --json",
            f"{PROG} simulate rmsprop --mode discrete --paths 1000 --steps 1000 --eta 0.01 --save-every 100",
            f"{PROG} simulate --spec my_opt.py:my_adagrad --paths 1000 --steps 1000",
            'quad.json: {"kind": "quadratic", "h": [1, 10], "sigma": [1, 1], "noise": "gaussian", "x0": [1, 1]}'),
    )
    _add_optimizer_args(p)
    p.add_argument("--mode", choices=("sde", "discrete"), default="sde", help="what to simulate (default: sde)")
    p.add_argument("--regime", default=None, metavar="R", help=_REGIME_HELP)
    p.add_argument("--problem", default=None, metavar="FILE", help="problem JSON file (quadratic, logistic, custom)")
    p.add_argument("--paths", type=int, default=1000, help="number of independent paths (default 1000)")
    p.add_argument("--steps", type=int, default=1000, help="number of steps k; t = k*tau (default 1000)")
    p.add_argument("--eta", type=float, default=None, help="learning rate (default: the optimizer's)")
    p.add_argument("--hp", action="append", metavar="NAME=VALUE", help="a discrete hyperparameter (repeatable)")
    p.add_argument("--init", action="append", metavar="STATE=VALUE",
                   help="initial value of an auxiliary state, in the optimizer's variables (e.g. v=1e-4)")
    p.add_argument("--seed", type=int, default=0, help="Philox key (default 0)")
    p.add_argument("--save-every", type=int, default=None, help="snapshot every N steps (default steps/100)")
    from sdederive.simulate.backends.registry import backend_names  # light: no numpy, sympy or numba

    p.add_argument("--backend", choices=backend_names(), default="numba", help="numba (CPU) or cupy (GPU)")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                   help="precision of the state (float32: rounded each step; a vector kernel on a dense quadratic "
                        "computes in float32 too)")
    p.add_argument("--scheme", choices=("euler", "weak2"), default="euler",
                   help="SDE integrator: Euler-Maruyama or Platen's weak order-2 scheme")
    p.add_argument("--mask-diverged", action="store_true", help="drop diverged paths instead of stopping")
    p.add_argument("--progress", action="store_true", help="progress bar on stderr")
    p.add_argument("--json", action="store_true",
                   help="print the result as JSON (the same seed gives the same bytes; add --timing for the times)")
    p.add_argument("--timing", action="store_true", help="with --json: include the compile and run times")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser(
        "rate", help="a convergence bound derived from the SDE (Ito + assumptions + Gronwall)",
        formatter_class=Formatter,
        description="Apply Ito's formula to the loss (or, with 'convex', to a distance to the minimizer) along the "
        "optimizer's SDE, bound each term with the assumptions given, and integrate. Prints every step with the "
        "assumption it uses, then the rate and floor (or the averaged-iterate bound). Assumptions (comma-separated): "
        f"{', '.join(_ASSUME)}.",
        epilog=examples(f"{PROG} rate signsgd --assume pl,anisotropic --latex", f"{PROG} rate sgd --assume pl",
                         f"{PROG} rate adagrad --assume convex,anisotropic,batch",
                         f"{PROG} rate signsgd --noise student-t --nu 1 --assume pl --json"),
    )
    _add_problem_args(p)
    p.add_argument("--assume", default="pl", metavar="LIST",
                   help=f"comma-separated assumptions: {', '.join(_ASSUME)} (default: pl)")
    _add_format_args(p, "the bound as JSON (with every step)", "the bound as a LaTeX aligned block")
    p.set_defaults(func=cmd_rate)

    p = sub.add_parser(
        "optimal-lr", help="optimal learning rate vs batch size, noise scale B_noise", formatter_class=Formatter,
        description="From the one-step expected loss change of an update direction on a quadratic, derive "
        "eps_opt(B), the noise scale B_noise and eps_max: the McCandlish form for SGD, the surge form for sign "
        "updates (Adam at beta1 = beta2 = 0).",
        epilog=examples(f"{PROG} optimal-lr sgd", f"{PROG} optimal-lr sign --latex", f"{PROG} optimal-lr adam --json"),
    )
    p.add_argument("direction", metavar="DIR", help="update direction: sgd, sign, signsgd, adam")
    p.add_argument("--noise", default="gaussian", help=_NOISE_HELP)
    p.add_argument("--nu", default=None, metavar="NU", help=_NU_HELP)
    _add_format_args(p, "the result as JSON", "eps_opt, B_noise, eps_max as LaTeX")
    p.set_defaults(func=cmd_optimal_lr)

    from sdederive.validators.cli import add_validate_parser  # the validators package ships with sdederive

    add_validate_parser(sub)
    from sdederive.sweep.cli import add_sweep_parser

    add_sweep_parser(sub)

    p = sub.add_parser(
        "tour", help="a short demo: a few SDEs, a scaling rule, stationary losses", formatter_class=Formatter,
        description="Derive and print a few SDEs (SGD, SignSGD under Gaussian and Student-t noise, Adam, AdamW), "
        "Adam's square-root scaling rule and the stationary losses of SGD and SignSGD.",
        epilog=examples(f"{PROG} tour"),
    )
    p.set_defaults(func=cmd_tour)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI on `argv` (default `sys.argv[1:]`); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except UsageError as e:
        sys.stderr.write(e.usage)
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help, --version
        return e.code if isinstance(e.code, int) else 0
    if getattr(args, "func", None) is None:
        parser.print_usage(sys.stderr)
        print(f"{PROG}: error: a command is required: list, derive, scaling-rule, stationary, simulate, rate, optimal-lr, validate, sweep, tour", file=sys.stderr)
        return 2
    msg = _optimizer_usage(args)
    if msg:  # OPT and --spec: exactly one (a usage error, as a missing positional argument is)
        if getattr(args, "usage_parser", None) is not None:
            sys.stderr.write(args.usage_parser.format_usage())
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 2
    try:
        return args.func(args, sys.stdout)
    except SdederiveError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C while deriving or compiling (a running simulation returns its partial result)
        print(f"\n{PROG}: interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `sdederive tour | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""`sdederive validate`: discrete optimizer against its SDE, from the command line.

`add_validate_parser` adds the subcommand to an `argparse` subparsers object (it sets
`func=run_validate`); `run_validate` runs it.  Bad input prints `sdederive: error: <message>`
on stderr and returns 2, as every `sdederive` command does; a failed `--tol` or
`--expected-order` check returns 1.
"""

from __future__ import annotations

import argparse
import os
import sys

from sdederive.errors import SdederiveError
from sdederive.simulate.backends.registry import backend_names

from .errors import ValidationError

__all__ = ["add_validate_parser", "run_validate"]

PROG = "sdederive"

_DESCRIPTION = (
    "Run the discrete optimizer and its derived SDE on a problem at several learning rates, to the same continuous "
    "time (t = k*tau), and report the weak error max_t |E g(x_k) - E g(X_t)| of each observable with a confidence "
    "interval (independent replicate batches of coupled paths), whether it is resolved, and the weak order (log-log "
    "slope against eta). --report DIR writes report.md, report.json and comparison.png (each atomically).\n\n"
    "With --tol, PASSED needs the upper CI bound of the weak error below TOL at every eta and the error shrinking "
    "with eta: the fitted order's lower CI bound above half the claimed order (--expected-order, default the "
    "SDE's order); one eta is inconclusive. A regime check (sdederive.analysis.regime_check) warns when the problem does "
    "not scale as the SDE's regime assumes (--strict refuses).\n\n"
    "--problem is a JSON problem file (as for `sdederive simulate`) or a built-in: quadratic (default: d = 10, "
    "h = geomspace(0.1, 10), sigma = 1, x0 = 1), breast-cancer (logistic regression on the Wisconsin data, "
    "standardized, batch --batch), synthetic-logistic."
)


def _formatter():
    try:  # the same fixed-width help layout as the other sdederive commands
        from sdederive.cli._common import Formatter

        return Formatter
    except ImportError:  # pragma: no cover
        return argparse.RawDescriptionHelpFormatter


def add_validate_parser(subparsers) -> argparse.ArgumentParser:
    """Add `validate` to `subparsers` (from `parser.add_subparsers()`); returns its parser."""
    # names from the CLI's catalog (tested against the registries): building the parser imports no sympy
    from sdederive.cli._catalog import optimizer_names
    from sdederive.cli._catalog import validate_problem_names as problem_names

    ex = "\n".join([
        "Example:",
        f"  {PROG} validate sgd --etas 0.04,0.02,0.01 --paths 20000 --horizon 2 --expected-order 1",
        f"  {PROG} validate adam --problem quad.json --etas 0.04,0.02,0.01 --paths 20000 --horizon 2 "
        "--hp beta1=0.9 --report out/",
        f"  {PROG} validate adam --problem breast-cancer --etas 0.02,0.01 --svag 1 --hp beta2=0.99 --paths 200 "
        "--horizon 0.016 --points 2 --tol 0.1",
    ])
    p = subparsers.add_parser(
        "validate", help="weak error and weak order of the SDE against the discrete optimizer",
        formatter_class=_formatter(), description=_DESCRIPTION, epilog=ex)
    from sdederive.cli._common import SPEC_HELP

    p.add_argument("optimizer", metavar="OPT", nargs="?", default=None,
                   help=f"built-in optimizer: {', '.join(optimizer_names())} (or --spec)")
    p.add_argument("--spec", default=None, metavar="FILE", help=SPEC_HELP)
    p.add_argument("--problem", default="quadratic", metavar="FILE|NAME",
                   help=f"problem JSON file or built-in name: {', '.join(problem_names())} (default quadratic)")
    p.add_argument("--batch", type=int, default=None, metavar="B",
                   help="batch size of the built-in logistic problems (default 32 for breast-cancer, 8 synthetic)")
    p.add_argument("--etas", default="0.04,0.02,0.01", metavar="E1,E2,...",
                   help="comma-separated learning rates in integer ratios (default 0.04,0.02,0.01)")
    p.add_argument("--paths", type=int, default=20000, help="paths per eta and mode (default 20000)")
    p.add_argument("--horizon", type=float, default=2.0, help="continuous time T = k*tau of every run (default 2)")
    p.add_argument("--hp", action="append", metavar="NAME=VALUE", help="a discrete hyperparameter (repeatable)")
    p.add_argument("--observables", default="loss", metavar="O1,O2",
                   help="comma-separated: loss, sqnorm, x, m, v (a state: every coordinate) or x[0] (default loss)")
    p.add_argument("--regime", default=None, metavar="R", help="regime of the SDE (default the optimizer's natural one)")
    p.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    p.add_argument("--replicates", type=int, default=10, help="independent replicate batches (default 10)")
    p.add_argument("--points", type=int, default=20, help="about this many grid times in (0, T] (default 20)")
    p.add_argument("--tol", type=float, default=None, help="pass if the weak error's upper CI bound is below TOL")
    p.add_argument("--expected-order", type=float, default=None, help="pass if the weak order is within --order-tol")
    p.add_argument("--order-tol", type=float, default=0.3, help="tolerance of --expected-order (default 0.3)")
    p.add_argument("--svag", type=float, default=None, metavar="L",
                   help="discrete side as SVAG (Malladi et al. 2022), multiplier L at the largest eta and L*max(etas)/eta "
                   "at each eta: the noise-dominated limit on a fixed data set (adam, rmsprop)")
    p.add_argument("--strict", action="store_true",
                   help="refuse when the problem is outside the SDE's regime (default: a warning and a note)")
    p.add_argument("--scheme", choices=("auto", "euler", "weak2"), default="auto",
                   help="SDE integrator (default auto: weak order 2 where possible)")
    p.add_argument("--backend", choices=backend_names(), default="numba", help="numba (CPU) or cupy (GPU)")
    p.add_argument("--report", default=None, metavar="DIR", help="write report.md, report.json, comparison.png")
    p.add_argument("--json", action="store_true", help="print the report as JSON (without the time series)")
    p.add_argument("--progress", action="store_true", help="a line per eta and replicate on stderr")
    p.set_defaults(func=run_validate, usage_parser=p)
    return p


def _floats(text: str, what: str) -> list[float]:
    out = []
    for item in str(text).split(","):
        item = item.strip()
        if not item:
            continue
        try:
            out.append(float(item))
        except ValueError:
            raise ValidationError(f"{what} {text!r}: {item!r} is not a number") from None
    if not out:
        raise ValidationError(f"{what} {text!r} is empty; allowed: comma-separated numbers, e.g. 0.04,0.02,0.01")
    return out


def _load_problem(spec: str, batch: int | None):
    from sdederive.problems import load

    from .problems import get, names

    if spec.lower().endswith(".json") or os.path.sep in spec or os.path.exists(spec):
        if batch is not None:
            raise ValidationError("--batch applies to the built-in logistic problems; set B in the JSON file")
        return load(spec)
    key = spec.strip().lower().replace("_", "-")
    if key not in names():
        raise ValidationError(f"unknown problem {spec!r}; valid problems: {', '.join(names())}, or a JSON file")
    if batch is not None:
        if key == "quadratic":
            raise ValidationError("--batch applies to breast-cancer and synthetic-logistic, not to quadratic")
        return get(key, B=batch)
    return get(key)


def _optimizer(args: argparse.Namespace, load_spec):
    """The built-in `OPT` or the `--spec` optimizer (exactly one of them)."""
    spec = getattr(args, "spec", None)
    if spec is not None and args.optimizer is not None:
        raise ValidationError(f"both OPT ({args.optimizer}) and --spec ({spec}) are given; allowed: one of them")
    if spec is not None:
        return load_spec(spec)
    if args.optimizer is None:
        from sdederive.spec import optimizers as opt_mod

        raise ValidationError(f"no optimizer: give a built-in OPT ({', '.join(opt_mod.names())}) or --spec "
                              "FILE.py:NAME or --spec FILE.json")
    return args.optimizer


def run_validate(args: argparse.Namespace, out=None) -> int:
    """Run `sdederive validate` with parsed `args`; print the report to `out` (default stdout).
    Returns 0 (done / passed), 1 (a requested check failed) or 2 (bad input: `sdederive: error: ...`)."""
    out = sys.stdout if out is None else out
    try:
        import warnings

        from sdederive.analysis.regime_check import RegimeWarning
        from sdederive.cli._common import kv_list, load_spec  # shared by every sdederive command

        from .compare import compare

        if args.report:  # before the work, not after it (a file there, or a folder that cannot be written)
            from sdederive._outdir import check_output_dir

            check_output_dir(args.report, "--report directory")
        optimizer = _optimizer(args, load_spec)
        problem = _load_problem(args.problem, getattr(args, "batch", None))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RegimeWarning)
            res = compare(
                optimizer, problem, etas=_floats(args.etas, "--etas"), paths=args.paths, horizon=args.horizon,
                observables=[o.strip() for o in str(args.observables).split(",") if o.strip()],
                hyper=kv_list(args.hp, "--hp"), regime=args.regime, seed=args.seed, replicates=args.replicates,
                tol=args.tol, backend=args.backend, n_points=args.points, progress=args.progress,
                expected_order=args.expected_order, order_tol=args.order_tol, scheme=args.scheme,
                svag=getattr(args, "svag", None), strict=getattr(args, "strict", False))
        for w in caught:
            if issubclass(w.category, RegimeWarning):
                print(f"{PROG}: warning: {w.message}", file=sys.stderr)
        out.write((res.to_json(curves=False) if args.json else res.table()) + "\n")
        if args.report:
            paths = res.write_report(args.report)
            if not args.json:
                out.write("report: " + ", ".join(str(p) for p in paths.values()) + "\n")
    except SdederiveError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    return 1 if res.passed is False else 0

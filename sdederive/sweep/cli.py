"""`sdederive sweep grid.toml --out results/ [--scheduler tcp://host:8786] [--resume] [--workers N]`.

The TOML file:

    steps = 1                    # per cell
    paths = 2000
    mode = "discrete"            # or "sde"
    spec = "my_opt.json"         # optional: user optimizer JSON file(s) (a string or a list), relative to
                                 # this file; the [grid] optimizer axis names them (default: all of them)

    [problem]                    # a problem JSON/TOML table (sdederive.problems.from_dict),
    preset = "surge"             # or the preset of Li et al.'s experiment: H = (1-rho) I + rho 11^T,
    d = 20                       # gradient c*1 at the start, per-example noise sigma_i = 1
    rho = 0.5
    c = 0.04

    [grid]                       # axes; {geomspace = [lo, hi, n]}, {pow2 = [lo, hi]}, {range = [a, b]}
    optimizer = ["signsgd"]
    eta = {geomspace = [6e-4, 2e-2, 16]}
    B = {pow2 = [4, 4096]}
    seed = {range = [0, 3]}

    [analysis]                   # optional: optimal eta per B, with a fit and a plot
    param = "eta"
    by = "B"
    fit = "surge"                # or "mccandlish"
"""

from __future__ import annotations

import os
import sys

from sdederive.errors import SdederiveError, UnknownNameError

__all__ = ["add_sweep_parser", "run_sweep", "surge_problem"]


def surge_problem(d: int = 100, rho: float = 0.5, c: float = 0.02):
    """Li et al.'s §5B set-up: `H = (1-rho) I + rho 11^T`, start where the gradient is `c*1`,
    per-example noise `sigma_i = 1` (a sweep's `B` axis divides it by `sqrt(B)`)."""
    import numpy as np  # here, not at the top: the CLI's parser imports this module

    from sdederive.problems import Quadratic

    for name, v in (("d", d), ("rho", rho), ("c", c)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
            raise SdederiveError(f"surge preset: {name}={v!r} is not a finite number")
    if not float(d).is_integer() or d < 1:
        raise SdederiveError(f"surge preset: d={d!r} is invalid; allowed: an integer >= 1")
    d = int(d)
    # eigenvalues 1 - rho (d - 1 times) and 1 + (d - 1) rho: positive definite (x0 = H^-1 c 1 exists) iff
    # -1/(d - 1) < rho < 1
    if d > 1 and not -1.0 / (d - 1) < rho < 1:
        raise SdederiveError(f"surge preset: rho={rho!r} makes H = (1-rho) I + rho 11^T singular or indefinite "
                             f"(d={d}); allowed: {-1.0 / (d - 1):.4g} < rho < 1")
    from sdederive.simulate._memory import check_memory

    check_memory(8.0 * 3 * d * d, f"the surge preset with d={d} (dense {d}x{d} H)")
    H = (1 - rho) * np.eye(d) + rho * np.ones((d, d))
    return Quadratic(H=H, sigma=np.ones(d), x0=np.linalg.solve(H, c * np.ones(d)))


def _load(path: str) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise SdederiveError(f"sweep file {path!r} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise SdederiveError(f"sweep file {path!r} is not valid TOML: {e}") from None


def _count(spec: dict, key: str) -> int:
    """`steps`/`paths` of a sweep file: an integer >= 1 (`2e3` is accepted as 2000)."""
    v = spec.get(key, 1000)
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise SdederiveError(f"{key} = {v!r} in the sweep file is invalid; allowed: an integer >= 1")
    return v


def _specs(value, grid_file: str):
    """The optimizers of the sweep file's `spec` key: optimizer JSON files (a path or a list of paths),
    relative to the sweep file's folder.  Only JSON: a shared sweep file must not run code."""
    if value is None:
        return None
    from sdederive.cli._common import load_spec

    files = [value] if isinstance(value, str) else value
    if not isinstance(files, list) or not files or any(not isinstance(f, str) for f in files):
        raise SdederiveError(f"spec = {value!r} in {grid_file} is invalid; allowed: an optimizer JSON file name "
                             "(relative to the sweep file) or a non-empty list of them")
    base = os.path.dirname(os.path.abspath(grid_file))
    return [load_spec(os.path.join(base, f), f"spec {f!r} in {grid_file}", python=False) for f in files]


_ANALYSIS_KEYS = ("param", "by", "metric", "fit")


def _analysis(an, grid_file: str) -> dict | None:
    """The sweep file's `[analysis]` table, checked: a table of `param`, `by`, `metric` (names) and `fit`
    (`"surge"` or `"mccandlish"`); any other key is refused, as at the top level."""
    if an is None:
        return None
    if not isinstance(an, dict):
        raise SdederiveError(f"[analysis] in {grid_file} must be a table; got {an!r}")
    unknown = sorted(set(an) - set(_ANALYSIS_KEYS))
    if unknown:
        raise SdederiveError(f"unknown key(s) {unknown} in [analysis] of {grid_file}; allowed: "
                             f"{', '.join(_ANALYSIS_KEYS)}")
    for k in ("param", "by", "metric"):
        if k in an and not isinstance(an[k], str):
            raise SdederiveError(f"[analysis] {k} = {an[k]!r} in {grid_file} is not a name; allowed: a column name "
                                 "such as \"eta\", \"B\" or \"final_loss\"")
    if an.get("fit") not in (None, "surge", "mccandlish"):
        raise SdederiveError(f"[analysis] fit={an['fit']!r}; allowed: 'surge', 'mccandlish'")
    return an


def add_sweep_parser(sub) -> None:
    from sdederive.cli._common import Formatter, examples

    p = sub.add_parser(
        "sweep", help="run a grid of simulations (optimizer x eta x batch size x seed) and analyse it",
        formatter_class=Formatter,
        description="Run every cell of the grid in a TOML file on a local process pool or a Dask cluster "
        "(--scheduler), writing one Parquet row per finished cell to --out; --resume skips finished cells. "
        "With an [analysis] table, prints the optimal eta per batch size with a bootstrap band, fits the "
        "surge or McCandlish curve and writes optimal.png. A top-level spec = \"my_opt.json\" (or a list) adds "
        "user-written optimizers from optimizer JSON files, relative to the sweep file (JSON only: a sweep file "
        "may be shared, so it cannot name Python code).",
        epilog=examples("sdederive sweep grid.toml --out results/", "sdederive sweep grid.toml --out results/ --resume",
                         "sdederive sweep grid.toml --out results/ --scheduler tcp://127.0.0.1:8786"),
    )
    p.add_argument("file", metavar="GRID.toml", help="sweep description: a TOML file (format: docs/sweeps.md, section 'Grid file reference')")
    p.add_argument("--out", required=True, metavar="DIR", help="results directory (Parquet)")
    p.add_argument("--resume", action="store_true", help="skip the cells already in --out")
    p.add_argument("--scheduler", default=None, metavar="ADDR", help="a Dask scheduler address (tcp://host:port)")
    p.add_argument("--workers", type=int, default=None, help="local processes (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.set_defaults(func=run_sweep)


def run_sweep(args, out=None) -> int:
    out = sys.stdout if out is None else out  # the stream of the call, not of the import
    from sdederive.problems import from_dict
    from sdederive.sweep.grid import Grid
    from sdederive.sweep.runner import run

    spec = _load(args.file)
    unknown = sorted(set(spec) - {"steps", "paths", "mode", "spec", "problem", "grid", "analysis"})
    if unknown:
        raise SdederiveError(f"unknown key(s) {unknown} in {args.file}; allowed: steps, paths, mode, spec, problem, "
                             "grid, analysis")
    specs = _specs(spec.get("spec"), args.file)
    if "grid" not in spec:
        raise SdederiveError(f"{args.file} has no [grid] table")
    pspec = spec.get("problem", {"preset": "surge"})
    if not isinstance(pspec, dict):
        raise SdederiveError(f"[problem] in {args.file} must be a table; got {pspec!r}")
    pspec = dict(pspec)
    preset = pspec.pop("preset", None)
    if preset == "surge":
        extra = sorted(set(pspec) - {"d", "rho", "c"})
        if extra:
            raise SdederiveError(f"unknown key(s) {extra} for the surge preset; allowed: d, rho, c")
        problem = surge_problem(**pspec)
    elif preset is not None:
        raise UnknownNameError("problem preset", preset, ["surge"])
    else:
        from pathlib import Path

        problem = from_dict(pspec, base_dir=Path(args.file).parent)
    mode = spec.get("mode", "discrete")
    if mode not in ("discrete", "sde"):
        raise SdederiveError(f"mode={mode!r} in {args.file}; allowed: 'discrete', 'sde'")
    steps, paths = (_count(spec, k) for k in ("steps", "paths"))
    if args.workers is not None and args.workers < 1:
        raise SdederiveError(f"--workers {args.workers} is invalid; allowed: an integer >= 1 (default: all cores)")
    grid = Grid.from_dict(spec["grid"])
    an = _analysis(spec.get("analysis"), args.file)  # before the sweep: a typo found after hours of cells is late
    executor, client = None, None
    if args.scheduler:
        from distributed import Client

        client = Client(args.scheduler)
        executor = client.get_executor()
    from sdederive.sweep import store

    try:
        res = run(grid, problem, steps=steps, paths=paths,
                  executor=executor, out=args.out, resume=args.resume, mode=mode,
                  max_workers=args.workers, progress=not args.quiet, specs=specs)
    except KeyboardInterrupt:
        n = len(store.done_ids(args.out))
        print(f"\nsdederive: interrupted (Ctrl-C): {n} finished cell(s) are kept in {args.out}; run again with "
              "--resume to compute only the missing ones", file=sys.stderr)
        return 130
    finally:
        if client is not None:
            client.close()
    print(f"{len(res)} cells in {args.out} ({res.wall:.1f} s this run)", file=out)
    if an:
        opt = res.optimal(an.get("param", "eta"), by=an.get("by", "B"), metric=an.get("metric", "final_loss"))
        print(opt.table(), file=out)
        fit = an.get("fit")
        if fit is not None:
            f = opt.fit_surge() if fit == "surge" else opt.fit_mccandlish()
            print(f"{fit} fit: B_noise = {f['B_noise']:.4g}, eps_max = {f['eps_max']:.4g}", file=out)
        opt.plot(f"{args.out}/optimal.png")
        print(f"plot: {args.out}/optimal.png", file=out)
    return 0

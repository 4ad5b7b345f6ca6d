r"""Shared machinery of `validators.checks`: the result object, input checking, runs of the
compiled simulators and their summaries, and the evaluation of the symbolic predictions.

Nothing here states a claim of a paper; the claims and their tolerances live in
`validators.checks`.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sympy as sp

import sdederive as sd
from sdederive._json import provenance
from sdederive.errors import SdederiveError
from sdederive.problems import LogisticRegression, Problem, Quadratic

from .reporting import json_ready

__all__ = ["CheckError", "CheckResult", "markdown_table", "plot_results"]


class CheckError(SdederiveError):
    """Bad input to a check (a size, grid or name that cannot be used); the message names the value and
    what is allowed."""


# ---------------------------------------------------------------------------------------------------
# result object
# ---------------------------------------------------------------------------------------------------


def _fmt(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if not math.isfinite(v):
            return str(v)
        if v == 0:
            return "0"
        a = abs(v)
        return f"{v:.4g}" if 1e-3 <= a < 1e5 else f"{v:.3e}"
    return str(v)


def markdown_table(rows: Sequence[Mapping], columns: Sequence[str] | None = None) -> str:
    """A pipe table (GitHub markdown) of `rows` (dicts), columns in first-seen order."""
    if not rows:
        return ""
    if columns is None:
        columns = []
        for r in rows:
            for k in r:
                if k not in columns:
                    columns.append(k)
    cells = [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(str(c)), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = "| " + " | ".join(str(c).ljust(w) for c, w in zip(columns, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |" for row in cells]
    return "\n".join([line, sep, *body])


@dataclass
class CheckResult:
    """Outcome of one check of a paper's prediction.

    Attributes
    ----------
    name
        the check (function) name.
    passed
        whether every criterion of the check held.
    claim
        the prediction being tested, in words, with its reference.
    figures
        headline numbers (predicted and measured values, fitted slopes, ratios ...).
    rows
        one dict per row of the table (the per-setting numbers).
    criteria
        criterion text -> whether it held (`passed` is their conjunction).
    plots
        panels for `plot`: dicts with `title, xlabel, ylabel, xscale, yscale` and
        `lines`: dicts `x, y` (and optionally `yerr, label, style`).
    notes
        remarks (approximations used, sizes, what was not resolvable).
    seed
        the base seed of the check's runs (in the JSON with the package versions).
    """

    name: str
    passed: bool
    claim: str = ""
    figures: dict = field(default_factory=dict)
    rows: list = field(default_factory=list)
    criteria: dict = field(default_factory=dict)
    plots: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    columns: list | None = None
    seed: int | None = None

    @property
    def table(self) -> str:
        """The rows as a markdown table."""
        return markdown_table(self.rows, self.columns)

    def to_dict(self) -> dict:
        """JSON-ready copy (arrays as lists, non-finite numbers as strings)."""
        return json_ready({
            "name": self.name, "passed": bool(self.passed), "claim": self.claim, "figures": self.figures,
            "criteria": self.criteria, "rows": self.rows, "table": self.table, "notes": self.notes,
            "plots": self.plots, "provenance": provenance(self.seed),
        })

    def __str__(self) -> str:
        head = f"{self.name}: {'PASSED' if self.passed else 'FAILED'}"
        out = [head]
        if self.claim:
            out.append(f"claim: {self.claim}")
        if self.table:
            out.append(self.table)
        for crit, ok in self.criteria.items():
            out.append(f"  [{'x' if ok else ' '}] {crit}")
        for n in self.notes:
            out.append(f"  note: {n}")
        return "\n".join(out)

    __repr__ = __str__

    def plot(self, path: str | Path | None = None):
        """The panels as one `matplotlib.figure.Figure` (Agg canvas: no display needed), written
        to `path` when given (format from the suffix: PDF, SVG, EPS or PNG)."""
        return plot_results([self], path)


def _draw_panel(ax, p: Mapping) -> None:
    """One panel of a check; labels written with the notation's plain names are set as mathtext."""
    from sdederive._figures import log_axis, math_label

    for ln in p.get("lines", []):
        x, y = np.asarray(ln["x"], float), np.asarray(ln["y"], float)
        style = ln.get("style", "-")
        label = math_label(ln["label"]) if ln.get("label") else None
        if ln.get("yerr") is not None:
            ax.errorbar(x, y, yerr=np.asarray(ln["yerr"], float), fmt=style, label=label, capsize=2)
        else:
            ax.plot(x, y, style, label=label)
    for hl in p.get("hlines", []):
        ax.axhline(hl["y"], ls=hl.get("ls", ":"), color=hl.get("color", "k"),
                   label=math_label(hl["label"]) if hl.get("label") else None)
    for vl in p.get("vlines", []):
        ax.axvline(vl["x"], ls=vl.get("ls", ":"), color=vl.get("color", "grey"),
                   label=math_label(vl["label"]) if vl.get("label") else None)
    for which in ("x", "y"):
        if p.get(f"{which}scale") == "log":
            log_axis(ax, which)
    ax.set_title(math_label(textwrap.fill(p.get("title", ""), 46)))
    ax.set_xlabel(math_label(p.get("xlabel", "")))
    ax.set_ylabel(math_label(p.get("ylabel", "")))
    handles = ax.get_legend_handles_labels()[0]
    if len(handles) >= 3:  # a long legend inside the axes covers the data: beside the axes (constrained layout makes room)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    elif handles:
        ax.legend(frameon=True, framealpha=0.85, edgecolor="none")


def plot_results(results: Sequence[CheckResult], path: str | Path | None = None, title: str | None = None,
                 ncol: int = 3):
    """All panels of `results` in one figure, each titled with its check's verdict; written to
    `path` (format from its suffix: PDF, SVG, EPS or PNG) when given.  Returns the
    `matplotlib.figure.Figure`."""
    from sdederive import _figures as F

    if path is not None:
        F.figure_format(path)
    panels = []
    for r in results:
        verdict = "PASSED" if r.passed else "FAILED"
        for p in (r.plots or [{"title": r.name, "lines": []}]):
            panels.append({**p, "title": f"[{verdict}] {p.get('title', r.name)}"})
    if not panels:
        raise CheckError("nothing to plot: no results given")
    n = len(panels)
    ncol = max(1, min(n, ncol))
    nrow = (n + ncol - 1) // ncol
    with F.style():
        # a dashboard: each panel keeps a column's width (3.4 in), so its labels read at print size
        # a legend of 3 or more entries goes beside its panel (_draw_panel): a single panel then gets the page width,
        # so that the axes keep a column's width next to it
        beside = n == 1 and sum(bool(ln.get("label")) for ln in panels[0].get("lines", [])) + sum(
            bool(h.get("label")) for k in ("hlines", "vlines") for h in panels[0].get(k, [])) >= 3
        w = F.WIDTHS["page"] if beside else F.WIDTHS["column"] * ncol
        fig, axes = F.figure(nrow, ncol, width=w, aspect=0.78 * F.WIDTHS["column"] * ncol / w)  # rows keep their height
        flat = axes.ravel()
        for i, p in enumerate(panels):
            _draw_panel(flat[i], p)
        for ax in flat[n:]:
            ax.set_visible(False)
        if title is None and len(results) == 1:
            title = f"{results[0].name}: {'PASSED' if results[0].passed else 'FAILED'}"
        if title:
            fig.suptitle(title)
    if path is not None:
        F.save(fig, path)
    return fig


# ---------------------------------------------------------------------------------------------------
# input checking
# ---------------------------------------------------------------------------------------------------


def positive_int(name: str, v, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < minimum:
        raise CheckError(f"{name}={v!r} is invalid; allowed: an integer >= {minimum}")
    return int(v)


def positive_float(name: str, v, allow_zero: bool = False) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise CheckError(f"{name}={v!r} is invalid; allowed: a finite number {'>= 0' if allow_zero else '> 0'}") from None
    if not math.isfinite(f) or f < 0 or (f == 0 and not allow_zero):
        raise CheckError(f"{name}={v!r} is invalid; allowed: a finite number {'>= 0' if allow_zero else '> 0'}")
    return f


def grid(name: str, values, *, minimum_len: int = 1, allow_zero: bool = False, integer: bool = False) -> tuple:
    """A non-empty grid of positive (or non-negative) finite numbers."""
    if isinstance(values, (int, float, np.integer, np.floating)):
        values = (values,)
    try:
        vals = tuple(values)
    except TypeError:
        raise CheckError(f"{name}={values!r} is invalid; allowed: a sequence of numbers") from None
    if len(vals) < minimum_len:
        raise CheckError(f"{name}={values!r} is invalid; allowed: at least {minimum_len} value(s)"
                         + (" (an empty grid has nothing to check)" if not vals else ""))
    out = []
    for v in vals:
        if integer:
            out.append(positive_int(f"{name} entry", v))
        else:
            out.append(positive_float(f"{name} entry", v, allow_zero=allow_zero))
    return tuple(out)


def choice(name: str, v, allowed: Iterable[str]) -> str:
    allowed = list(allowed)
    key = str(v).strip().lower() if isinstance(v, str) else v
    if key not in allowed:
        raise CheckError(f"unknown {name} {v!r}; allowed: {', '.join(map(str, allowed))}")
    return key


# ---------------------------------------------------------------------------------------------------
# problems
# ---------------------------------------------------------------------------------------------------


def quadratic_like(p: Quadratic, *, sigma_factor: float = 1.0, sigma=None, x0=None, noise=None, nu=None) -> Quadratic:
    """A copy of `p` with the noise scaled by `sigma_factor` (covariance by its square) or replaced."""
    noise = p.noise if noise is None else noise
    nu = p.nu if nu is None and noise == p.noise else nu
    x0 = p.x0 if x0 is None else x0
    kw = {"h": p.h} if p.H is None else {"H": p.H}
    if sigma is not None:
        kw["sigma"] = sigma
    elif p.Sigma is not None and p.correlated:
        kw["Sigma"] = p.Sigma * sigma_factor**2
    else:
        kw["sigma"] = p.sigma * sigma_factor
    return Quadratic(**kw, noise=noise, nu=nu, x0=x0)


def batch_scaled(problem: Problem, kappa: float) -> Problem:
    r"""The problem at batch `kappa*B`: on a quadratic `sigma -> sigma/sqrt(kappa)` (the per-coordinate
    noise is the per-example noise over `sqrt(B)`), on logistic regression the real batch `kappa*B`."""
    if isinstance(problem, Quadratic):
        return quadratic_like(problem, sigma_factor=1.0 / math.sqrt(kappa))
    if isinstance(problem, LogisticRegression):
        nb = problem.B * kappa
        if abs(nb - round(nb)) > 1e-9:
            raise CheckError(f"kappa={kappa!r} times the batch size B={problem.B} is not an integer; on logistic "
                             "regression kappa*B must be a whole batch")
        return LogisticRegression(problem.A, problem.y, B=int(round(nb)), l2=problem.l2, x0=problem.x0)
    raise CheckError(f"problem of type {type(problem).__name__} is not supported here; allowed: Quadratic, "
                     "LogisticRegression")


def diag_h(problem: Quadratic) -> np.ndarray:
    if not isinstance(problem, Quadratic) or problem.H is not None:
        raise CheckError("this prediction needs a diagonal quadratic (sd.Quadratic(h=..., sigma=...)); got "
                         f"{type(problem).__name__}{' with a dense H' if isinstance(problem, Quadratic) else ''}")
    if problem.Sigma is not None and problem.correlated:
        raise CheckError("this prediction needs per-coordinate (uncorrelated) noise sigma; got a correlated Sigma")
    return problem.h


# ---------------------------------------------------------------------------------------------------
# symbolic predictions
# ---------------------------------------------------------------------------------------------------


def subs_values(expr: sp.Expr, values: Mapping[str, float]) -> sp.Expr:
    """Substitute by symbol *name* (the package's symbols carry assumptions)."""
    expr = sp.sympify(expr)
    return expr.xreplace({s: sp.Float(values[str(s)]) if not isinstance(values[str(s)], sp.Basic) else values[str(s)]
                          for s in expr.free_symbols if str(s) in values})


def to_float(expr: sp.Expr, values: Mapping[str, float]) -> float:
    e = subs_values(expr, values)
    try:
        return float(sp.N(e))
    except TypeError:
        raise CheckError(f"the prediction {expr} still has free symbols {sorted(map(str, e.free_symbols))} after "
                         f"substituting {sorted(values)}") from None


def sde_values(sde, hyper: Mapping[str, float], extra: Mapping[str, float] = ()) -> dict:
    """Values of the discrete hyperparameters and of the SDE's scaled parameters (`rho1`, `sigma0`...)."""
    vals = dict(hyper)
    vals.update(dict(extra))
    for name, definition in sde.params.items():
        vals[name] = to_float(definition, vals)
    return vals


_STATIONARY: dict = {}


def stationary_of(sde) -> sd.Stationary:
    """`sd.stationary(sde)`, memoised per SDE (the Lyapunov solve of AdamW takes seconds)."""
    key = sde.to_json()
    if key not in _STATIONARY:
        _STATIONARY[key] = sd.stationary(sde)
    return _STATIONARY[key]


def stationary_loss(sde, h: np.ndarray, sigma: np.ndarray, hyper: Mapping[str, float]) -> float:
    r"""`sum_i` of `sd.stationary(sde).loss` at `h_i, sigma_i` and the discrete hyperparameters."""
    expr = stationary_of(sde).loss
    total = 0.0
    for hi, si in zip(np.broadcast_to(h, np.shape(sigma)), sigma):
        vals = sde_values(sde, hyper, {"h": float(hi), "sigma": float(si)})
        total += to_float(expr, vals)
    return total


# ---------------------------------------------------------------------------------------------------
# runs and summaries
# ---------------------------------------------------------------------------------------------------


def stationary_mean(res, burn: float = 0.5, batches: int = 8) -> tuple[float, float]:
    r"""Time average of `E[loss]` over the snapshots with `t >= burn*t_end` and its standard error.

    The snapshots are correlated in time, so the error is the larger of the batch-means estimate
    (`batches` consecutive blocks of snapshots) and the error of one snapshot divided by the
    square root of the number of snapshots (the value for independent snapshots)."""
    t = res.t
    keep = t >= burn * t[-1]
    keep[0] = False
    m = np.asarray(res.mean["loss"])[keep]
    se = np.asarray(res.se["loss"])[keep]
    if m.size == 0:
        raise CheckError("no snapshot in the stationary window; increase steps or lower save_every")
    mean = float(np.mean(m))
    se_indep = float(np.sqrt(np.mean(se**2) / m.size))
    nb = min(batches, m.size)
    if nb >= 2:
        blocks = np.array_split(m, nb)
        bm = np.array([b.mean() for b in blocks])
        se_b = float(np.std(bm, ddof=1) / math.sqrt(nb))
    else:
        se_b = float(se[0])
    return mean, max(se_b, se_indep)


def loglog_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of `log y` against `log x`."""
    lx, ly = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    return float(np.polyfit(lx, ly, 1)[0])


def relaxation_rate(sde, h: float, sigma: float, hyper: Mapping[str, float]) -> float:
    r"""Slowest relaxation rate (per unit SDE time) of the SDE linearised at its fixed point on
    `f = h x^2/2`: `min(-Re eig(J))` with `J = sd.stationary(sde).jacobian`."""
    st = stationary_of(sde)
    vals = sde_values(sde, hyper, {"h": float(h), "sigma": float(sigma)})
    J = np.array([[to_float(e, vals) for e in row] for row in st.jacobian.tolist()], dtype=float)
    ev = np.linalg.eigvals(J)
    return float(np.min(-ev.real))


def tail_ratio(res, burn: float = 0.3) -> np.ndarray:
    r"""Per stationary snapshot: `Var_paths(f)/E_paths(f)**2` (sample values).

    For a light-tailed loss this converges to a constant of order one; when `f` has an infinite
    mean (tail index below 1) it grows like the number of paths: the largest path carries a fixed
    fraction of the sum, so `n*sum(f**2)/sum(f)**2` is of order `n`."""
    keep = res.t >= burn * res.t[-1]
    keep[0] = False
    m = np.asarray(res.mean["loss"])[keep]
    v = np.asarray(res.var["loss"])[keep]
    return v / np.maximum(m, 1e-300) ** 2

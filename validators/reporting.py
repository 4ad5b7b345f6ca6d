"""Atomic file writes, strict JSON, and the figure of a `Comparison`.

Every file is written to a temporary file in the destination directory and moved into place with
`os.replace` (atomic on POSIX and Windows), so an interrupted run leaves either the old file
or the new one, never a half-written one, and no temporary file behind.
"""

from __future__ import annotations

import json
import math
import os
from typing import TYPE_CHECKING

import numpy as np

from sdederive._atomic import atomic_write, atomic_write_text
from sdederive._json import finite_or_none

if TYPE_CHECKING:  # pragma: no cover
    from .compare import Comparison

__all__ = ["atomic_write", "atomic_write_text", "json_ready", "plot_comparison"]


def json_ready(obj):
    """Arrays to lists, numpy scalars to Python numbers, NaN/inf to `None` (strict JSON), sympy
    expressions to their text."""
    def text_of_sympy(o):
        return str(o) if hasattr(o, "free_symbols") and hasattr(o, "atoms") else o

    return finite_or_none(obj, text_of_sympy)


def dumps(obj) -> str:
    """Standard JSON with sorted keys (the same result gives the same bytes)."""
    return json.dumps(json_ready(obj), indent=2, allow_nan=False, sort_keys=True)


def plot_comparison(c: Comparison, path: str | os.PathLike | None = None):
    r"""The comparison figure; written to `path` (format from its suffix: PDF, SVG, EPS or PNG) when
    given.  Returns the `matplotlib.figure.Figure`.

    One row per observable, three panels:

    * $\mathbb E[g]$ over continuous time $t = k\tau$, discrete (solid) and SDE (dashed)
      for each $\eta$ (log axis when the curves span more than a decade);
    * the gap $\mathbb E[g_{\rm disc}] - \mathbb E[g_{\rm SDE}]$ over $t$ with its
      confidence band (the quantity that is judged: on the first panel it is thinner than a line);
    * the weak error $\sup_t|\ldots|$ against $\eta$ on log-log axes, with the interval of
      each point (hollow: not resolved from zero), the fitted $C\eta^p$ and the expected slope.
    """
    from sdederive import _figures as F

    if path is not None:
        F.figure_format(path)  # refuse a bad suffix before drawing
    obs = list(c.observables)
    colors = [f"C{i % 10}" for i in range(len(c.etas))]
    etas = np.asarray(c.etas, float)
    with F.style():
        fig, axes = F.figure(len(obs), 3, width="page", aspect=0.33 * 3)
        for row, name in enumerate(obs):
            ax, axg, ax2 = axes[row]
            j = int(c.plot_coord[name])
            lab = name if c.curves[name][0]["disc_mean"].shape[1] == 1 else f"{name}[{c.plot_coord[name]}]"
            mlab = F.math_label(f"E[{lab}]")
            lows, highs = [], []
            for i in range(len(c.etas)):
                cv = c.curves[name][i]
                for key, ls in (("disc", "-"), ("sde", "--")):
                    m = np.asarray(cv[f"{key}_mean"])[:, j]
                    h = np.asarray(cv[f"{key}_ci"])[:, j]
                    ax.plot(c.t, m, ls, color=colors[i])
                    ax.fill_between(c.t, m - h, m + h, color=colors[i], alpha=0.25, lw=0)
                    lows.append(np.min(m)), highs.append(np.max(m))
                gap = np.asarray(cv["diff"])[:, j]
                gh = np.asarray(cv["diff_ci"])[:, j]
                axg.plot(c.t, gap, color=colors[i])
                axg.fill_between(c.t, gap - gh, gap + gh, color=colors[i], alpha=0.3, lw=0)
            if min(lows) > 0 and max(highs) > 10 * min(lows):
                F.log_axis(ax, "y")
            ax.set_xlabel(r"$t = k\tau$")
            ax.set_ylabel(mlab)
            ax.set_title(f"means with {c.level:.0%} CI")
            # one legend entry per eta (colour) and per side (line style), not one per curve
            from matplotlib.lines import Line2D

            keys = [Line2D([], [], color=colors[i], label=f"$\\eta={eta:g}$") for i, eta in enumerate(c.etas)]
            keys += [Line2D([], [], color="k", ls="-", label="discrete"), Line2D([], [], color="k", ls="--", label="SDE")]
            if row == 0:  # one legend for the figure, above the panels (colours are shared by the three columns)
                fig.legend(handles=keys, ncol=len(keys), loc="outside upper center", frameon=False)
            axg.axhline(0.0, color="k", lw=0.6)
            axg.set_xlabel(r"$t = k\tau$")
            axg.set_ylabel(mlab.replace(r"$\mathbb{E}[$", r"$\mathbb{E}_{\rm disc}[$") + r" $-$ SDE")
            axg.set_title(f"gap with its {c.level:.0%} CI")
            err = np.asarray(c.weak_error[name], float)
            lo, hi = np.asarray(c.interval[name], float).T
            res = np.asarray(c.resolved[name], bool)
            for k in range(len(etas)):
                y = max(err[k], 1e-300)
                yerr = [[max(y - max(lo[k], y * 1e-3), 0)], [max(hi[k] - y, 0)]]
                ax2.errorbar([etas[k]], [y], yerr=yerr, fmt="o", color=colors[k],
                             mfc=colors[k] if res[k] else "white", capsize=3)
            order = c.order[name]
            if math.isfinite(order) and res.sum() >= 2:
                e = etas[res]
                C = math.exp(np.mean(np.log(err[res]) - order * np.log(e)))
                xs = np.geomspace(e.min(), e.max(), 20)
                olo, ohi = c.order_ci[name]
                ax2.plot(xs, C * xs**order, "k-", lw=1,
                         label=f"fit: order {order:.2f} {F.fmt_interval(olo, ohi)}")
            if c.expected_order is not None and res.any():
                k0 = int(np.argmax(np.where(res, etas, -np.inf)))
                xs = np.geomspace(etas.min(), etas.max(), 20)
                ax2.plot(xs, err[k0] * (xs / etas[k0]) ** c.expected_order, ":", color="grey",
                         label=f"slope {c.expected_order:g} (expected)")
            if np.all(err > 0) or np.any(hi > 0):
                F.log_axis(ax2, "x")
                F.log_axis(ax2, "y")
            ax2.set_xlabel(r"$\eta$")
            ax2.set_ylabel(r"$\sup_t\,|\mathbb{E}\,g_{\rm disc} - \mathbb{E}\,g_{\rm SDE}|$")
            ax2.set_title(f"weak error of {lab} (hollow: not resolved)")
            if ax2.get_legend_handles_labels()[0]:
                ax2.legend(loc="lower right")  # errors grow with eta: the lower right is empty
    if path is not None:
        F.save(fig, path)
    return fig

"""Atomic file writes and the figures of a :class:`~validators.compare.Comparison`.

Every file is written to a temporary file in the destination directory and moved into place with
:func:`os.replace` (atomic on POSIX and Windows), so an interrupted run leaves either the old file
or the new one, never a half-written one, and no temporary file behind.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sdederive._atomic import atomic_write, atomic_write_text

if TYPE_CHECKING:  # pragma: no cover
    from .compare import Comparison

__all__ = ["atomic_write", "atomic_write_text", "json_ready", "plot_comparison"]


def json_ready(obj):
    """Arrays to lists, numpy scalars to Python numbers, NaN/inf to ``None`` (strict JSON), sympy
    expressions to their text."""
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_ready(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if hasattr(obj, "free_symbols") and hasattr(obj, "atoms"):  # a sympy expression: its text
        return str(obj)
    return obj


def dumps(obj) -> str:
    return json.dumps(json_ready(obj), indent=2, allow_nan=False)


def plot_comparison(c: Comparison, path: str | os.PathLike) -> Path:
    """One row per observable.  Left: ``E[g]`` over continuous time, discrete (solid) and SDE
    (dashed) for each ``eta``, with pointwise confidence bands.  Right: weak error against ``eta``
    on log-log axes (error bars: the confidence interval of the sup over the grid; hollow markers:
    not resolved), with the fitted ``C*eta**order`` line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    obs = list(c.observables)
    fig = Figure(figsize=(11.0, 3.8 * len(obs)), layout="constrained")
    FigureCanvasAgg(fig)  # the Agg backend, without pyplot's global state
    axes = fig.subplots(len(obs), 2, squeeze=False)
    colors = [f"C{i % 10}" for i in range(len(c.etas))]
    for row, name in enumerate(obs):
        ax, ax2 = axes[row]
        for i, eta in enumerate(c.etas):
            cv = c.curves[name][i]
            j = int(c.plot_coord[name])
            t = c.t
            for key, style, lab in (("disc", "-", "discrete"), ("sde", "--", "SDE")):
                m = cv[f"{key}_mean"][:, j]
                h = cv[f"{key}_ci"][:, j]
                ax.plot(t, m, style, color=colors[i], lw=1.4, label=f"{lab}, eta={eta:g}")
                ax.fill_between(t, m - h, m + h, color=colors[i], alpha=0.18, lw=0)
        lab = name if c.curves[name][0]["disc_mean"].shape[1] == 1 else f"{name}[{c.plot_coord[name]}]"
        ax.set_xlabel("t = k*tau")
        ax.set_ylabel(f"E[{lab}]")
        ax.set_title(f"{name}: discrete (solid) vs SDE (dashed), {c.level:.0%} CI bands")
        ax.legend(fontsize=7, ncol=2)
        err = np.asarray(c.weak_error[name], float)
        lo, hi = np.asarray(c.interval[name], float).T
        res = np.asarray(c.resolved[name], bool)
        etas = np.asarray(c.etas, float)
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
                     label=f"fit: order {order:.2f} [{olo:.2f}, {ohi:.2f}]")
        if c.expected_order is not None and res.any():
            k0 = int(np.argmax(np.where(res, etas, -np.inf)))
            xs = np.geomspace(etas.min(), etas.max(), 20)
            ax2.plot(xs, err[k0] * (xs / etas[k0]) ** c.expected_order, ":", color="grey",
                     label=f"slope {c.expected_order:g} (expected)")
        if np.all(err > 0) or np.any(hi > 0):
            ax2.set_xscale("log")
            ax2.set_yscale("log")
        ax2.set_xlabel("eta")
        ax2.set_ylabel(f"sup_t |E_disc - E_sde| ({name})")
        ax2.set_title("weak error (hollow: not resolved)")
        if ax2.get_legend_handles_labels()[0]:
            ax2.legend(fontsize=7)

    def _w(tmp: str) -> None:
        fig.savefig(tmp, format="png", dpi=110)

    return atomic_write(path, _w)

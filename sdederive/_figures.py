r"""Figures a paper can use: one style, one writer, shared by every plot of the project.

* `figure` makes a `matplotlib.figure.Figure` on the Agg canvas (no pyplot, no display,
  no global state), sized for a two-column paper: `width="column"` is 3.4 in, `"page"` 7.0 in,
  with fonts that stay readable at that width (8 pt text, 7 pt ticks and legends).
* `save` writes it atomically in the format named by the file's suffix (`.pdf`, `.svg`,
  `.eps`: vector; `.png`: 300 dpi); any other suffix is refused before anything is drawn.
* `math_label` turns the notation's plain names (`eta`, `kappa`, `E[loss]`) into mathtext.
* `fmt_interval` prints a confidence interval with as many digits as it takes to tell its
  bounds apart (`[0.975, 0.984]`, not `[0.98, 0.98]`).
"""

from __future__ import annotations

import math
import os
import re
from contextlib import contextmanager
from pathlib import Path

from sdederive._atomic import atomic_write
from sdederive.errors import SdederiveError

__all__ = ["FORMATS", "figure", "save", "style", "math_label", "fmt_interval", "log_axis"]

#: file suffix -> matplotlib format; raster formats are written at :data:`DPI`
FORMATS = {".pdf": "pdf", ".svg": "svg", ".eps": "eps", ".png": "png"}
DPI = 300
WIDTHS = {"column": 3.4, "page": 7.0}

_RC = {
    "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "legend.fontsize": 7, "xtick.labelsize": 7,
    "ytick.labelsize": 7, "legend.frameon": False, "lines.linewidth": 1.2, "lines.markersize": 4,
    "axes.grid": True, "grid.alpha": 0.3, "grid.linewidth": 0.5, "axes.spines.top": False,
    "axes.spines.right": False, "mathtext.fontset": "dejavusans", "pdf.fonttype": 42, "ps.fonttype": 42,
    "svg.fonttype": "none", "savefig.bbox": "tight", "savefig.pad_inches": 0.02,
}


def figure_format(path: str | os.PathLike) -> str:
    """The matplotlib format for `path`'s suffix; `SdederiveError` for any other suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise SdederiveError(f"figure file {str(path)!r}: the suffix {suffix or '(none)'!r} is not a figure format; "
                             f"allowed: {', '.join(FORMATS)}")
    return FORMATS[suffix]


def _matplotlib():
    try:
        import matplotlib
    except ImportError as e:
        raise SdederiveError("figures need matplotlib, which is the 'plot' extra: pip install 'sdederive[plot]'") from e
    return matplotlib


@contextmanager
def style():
    """The project's rc settings (sizes for a column-width figure, TrueType fonts in PDF/EPS, text
    kept as text in SVG), for the artists created inside the block."""
    matplotlib = _matplotlib()

    with matplotlib.rc_context(_RC):
        yield


def figure(nrows: int = 1, ncols: int = 1, width: str | float = "column", aspect: float = 0.75):
    """`(fig, axes)`: a constrained-layout Figure on the Agg canvas, `width` inches wide
    (`"column"`, `"page"` or a number) and `aspect * width / ncols * nrows` tall; `axes` is a
    2-d array.  Call inside `style` so the artists get the project's sizes."""
    _matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    w = WIDTHS[width] if isinstance(width, str) else float(width)
    h = aspect * w / ncols * nrows
    fig = Figure(figsize=(w, h), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def save(fig, path: str | os.PathLike) -> Path:
    """Write `fig` to `path` atomically, in the format of its suffix (raster at 300 dpi)."""
    fmt = figure_format(path)

    def _w(tmp: str) -> None:
        with style():
            fig.savefig(tmp, format=fmt, dpi=DPI)

    return atomic_write(path, _w)


_GREEK = ("alpha", "beta", "gamma", "delta", "epsilon", "eps", "zeta", "eta", "theta", "kappa", "lambda", "mu",
          "nu", "xi", "rho", "sigma", "tau", "phi", "chi", "psi", "omega")
_TEX = {"eps": r"\epsilon", "epsilon": r"\epsilon", "lambda": r"\lambda"}
_WORD = re.compile(r"(?<![A-Za-z\\])(" + "|".join(sorted(_GREEK, key=len, reverse=True)) + r")(_?\d+|_[A-Za-z]+)?(?![A-Za-z])")
_EXP = re.compile(r"E\[([^\]]+)\]")


def math_label(text: str) -> str:
    r"""Mathtext for a label written with the notation's plain names: Greek names become symbols
    (`eta` -> $\eta$, `beta1` -> $\beta_1$), `E[...]` becomes
    $\mathbb{E}[\ldots]$, `|x|^2` and `sqrt(...)` are set as math; text that already holds
    `$` is returned unchanged.  Words that are not names stay roman text."""
    if not text or "$" in text:
        return text

    def greek(m: re.Match) -> str:
        name, sub = m.group(1), m.group(2) or ""
        sub = sub.lstrip("_")
        return "$" + _TEX.get(name, "\\" + name) + (f"_{{{sub}}}" if sub else "") + "$"

    out = _EXP.sub(lambda m: r"$\mathbb{E}[$" + m.group(1) + "$]$", text)
    out = out.replace("|x|^2", r"$|x|^2$").replace("sqrt(", r"$\sqrt{}$(")
    out = _WORD.sub(greek, out)
    return out.replace("$$", "")


def fmt_interval(lo: float, hi: float, digits: int = 2) -> str:
    """`[lo, hi]` with at least `digits` decimals and as many more (up to 6) as it takes for the
    printed bounds to differ."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"[{lo:g}, {hi:g}]"
    for d in range(digits, 7):
        a, b = f"{lo:.{d}f}", f"{hi:.{d}f}"
        if a != b or lo == hi:
            return f"[{a}, {b}]"
    return f"[{lo:.3g}, {hi:.3g}]"


def log_axis(ax, which: str = "y") -> None:
    """Log scale on `which` (`"x"`/`"y"`) with labelled ticks also on ranges shorter than a
    decade (where the major ticks alone would leave the axis without a number)."""
    from matplotlib.ticker import LogFormatterSciNotation, LogLocator, NullFormatter

    axis = ax.yaxis if which == "y" else ax.xaxis
    (ax.set_yscale if which == "y" else ax.set_xscale)("log")
    axis.set_major_locator(LogLocator(base=10))
    axis.set_minor_locator(LogLocator(base=10, subs=(2, 5), numticks=12))
    lo, hi = (ax.get_ylim() if which == "y" else ax.get_xlim())
    short = lo > 0 and hi / lo < 30  # under ~1.5 decades the major ticks alone may label nothing
    axis.set_minor_formatter(LogFormatterSciNotation(labelOnlyBase=False, minor_thresholds=(2, 2)) if short
                             else NullFormatter())

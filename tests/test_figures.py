"""Figures: every plot function writes the format its file suffix names, returns the Figure, uses
mathtext labels, log axes with numbers on them, and confidence intervals printed so their bounds differ."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure
from sdederive.validators import compare
from sdederive.validators._runs import CheckResult, plot_results

import sdederive as sd
from sdederive import _figures as F
from sdederive.sweep.analysis import Optimum

MAGIC = {".png": b"\x89PNG\r\n\x1a\n", ".pdf": b"%PDF-", ".svg": b"<?xml", ".eps": b"%!PS-Adobe"}


@pytest.fixture(scope="module")
def comparison():
    return compare("sgd", sd.Quadratic(h=[1.0], sigma=[0.5], x0=[2.0]), etas=[0.2, 0.1], paths=400, replicates=4)


def _check_result():
    x = np.geomspace(1e-3, 1e-1, 5)
    return CheckResult("demo", True, plots=[{
        "title": "error vs eta", "xlabel": "eta", "ylabel": "E[loss]", "xscale": "log", "yscale": "log",
        "lines": [{"x": x, "y": 0.02 + 0.5 * x, "label": "beta1 = 0.9"}]}])


def _optimum():
    B = np.array([1.0, 4.0, 16.0, 64.0])
    best = np.array([0.01, 0.03, 0.06, 0.07])
    return Optimum(groups=B, best=best, lo=best * 0.9, hi=best * 1.1, by="B", param="eta", metric="final_loss")


@pytest.mark.parametrize("suffix", list(MAGIC))
def test_every_plot_writes_the_format_of_its_suffix(tmp_path, comparison, suffix):
    makers = {"comparison": lambda p: comparison.plot(p), "check": lambda p: _check_result().plot(p),
              "checks": lambda p: plot_results([_check_result(), _check_result()], p, ncol=2),
              "optimum": lambda p: _optimum().plot(p)}
    for name, make in makers.items():
        path = tmp_path / f"{name}{suffix}"
        fig = make(path)
        assert isinstance(fig, Figure), name
        assert path.read_bytes().startswith(MAGIC[suffix]), (name, path.read_bytes()[:16])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{n}{suffix}" for n in makers)  # no temp files


def test_vector_formats_keep_text_and_embed_truetype(tmp_path):
    _check_result().plot(tmp_path / "f.svg")
    _check_result().plot(tmp_path / "f.pdf")
    assert "<text" in (tmp_path / "f.svg").read_text()  # text stays editable text in SVG
    assert b"/FontFile2" in (tmp_path / "f.pdf").read_bytes()  # TrueType (Type 42), not Type 3 bitmaps


@pytest.mark.parametrize("bad", ["fig.jpg", "fig", "fig.txt"])
def test_unknown_suffix_is_refused_before_drawing(tmp_path, comparison, bad):
    for make in (comparison.plot, _check_result().plot, _optimum().plot):
        with pytest.raises(sd.SdederiveError, match=r"allowed: \.pdf, \.svg, \.eps, \.png"):
            make(tmp_path / bad)
    assert not list(tmp_path.iterdir())


def test_no_path_returns_the_figure_and_writes_nothing(tmp_path, monkeypatch, comparison):
    monkeypatch.chdir(tmp_path)
    assert isinstance(comparison.plot(), Figure) and isinstance(_optimum().plot(), Figure)
    assert not list(tmp_path.iterdir())


def test_comparison_figure_labels_axes_and_bands(comparison):
    fig = comparison.plot()
    means, gap, weak = fig.axes[:3]
    assert weak.get_xscale() == "log" and weak.get_yscale() == "log"
    assert weak.get_xlabel() == r"$\eta$" and "$" in weak.get_ylabel() and "$" in means.get_xlabel()
    assert "fit: order" in " ".join(t.get_text() for t in weak.get_legend().get_texts())
    # the gap panel holds the judged difference with a band per eta (what the means panel cannot show)
    assert len(gap.collections) == len(comparison.etas)
    # one figure legend above the panels (the colours are shared by the three columns): one entry per eta, one per
    # side, and none inside the means panel, where it covered the curves and the tick labels
    assert means.get_legend() is None and len(fig.legends) == 1
    assert len(fig.legends[0].get_texts()) == len(comparison.etas) + 2


def test_log_axis_with_less_than_a_decade_has_numbers(tmp_path):
    with F.style():
        fig, ax = F.figure()
        ax = ax[0, 0]
        ax.plot([1, 2, 3], [0.02, 0.05, 0.08])
        F.log_axis(ax, "y")
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_yticklabels(minor=True) + ax.get_yticklabels() if t.get_visible()]
    lo, hi = ax.get_ylim()
    shown = [t for t, v in zip(ax.get_yticklabels(minor=True), ax.yaxis.get_minorticklocs()) if lo <= v <= hi]
    assert any(t.get_text() for t in shown), labels


@pytest.mark.parametrize("text, want", [
    ("eta", r"$\eta$"), ("beta1 = 0.9", r"$\beta_{1}$ = 0.9"), ("t = k*tau", r"t = k*$\tau$"),
    ("E[loss]", r"$\mathbb{E}[$loss$]$"), ("steps per eta", r"steps per $\eta$"), ("number", "number"),
    ("theta and beta", r"$\theta$ and $\beta$"), ("$x$", "$x$"), ("optimal eps0", r"optimal $\epsilon_{0}$"),
])
def test_math_label(text, want):
    assert F.math_label(text) == want


@pytest.mark.parametrize("lo, hi, want", [
    (0.9751, 0.9849, "[0.975, 0.985]"),
    (0.91, 1.07, "[0.91, 1.07]"), (1.2941, 1.3012, "[1.29, 1.30]"), (0.98001, 0.98004, "[0.98001, 0.98004]"),
    (1.0, 1.0, "[1.00, 1.00]"),
])
def test_interval_bounds_are_printed_apart(lo, hi, want):
    assert F.fmt_interval(lo, hi) == want

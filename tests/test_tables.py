"""Results as DataFrames (the same numbers as the result objects) and as booktabs LaTeX."""

from __future__ import annotations

import numpy as np
import pytest
from sdederive.validators import compare

import sdederive as sd
from sdederive.sweep.analysis import Optimum, SweepResult


@pytest.fixture(scope="module")
def comparison():
    return compare("sgd", sd.Quadratic(h=[1.0], sigma=[0.5], x0=[2.0]), etas=[0.2, 0.1], paths=400, replicates=4)


def test_simulation_result_frame_holds_every_snapshot():
    prob = sd.Quadratic(h=[1.0, 2.0], sigma=[1.0, 0.5], x0=[1.0, -1.0])
    res = sd.compile(sd.derive("rmsprop"), prob).run(paths=64, steps=20, eta=1e-2, seed=3, save_every=5)
    df = res.to_pandas()
    n = len(res.t)
    assert set(df.columns) == {"step", "t", "observable", "coord", "mean", "var", "se", "count"}
    assert len(df) == sum(n * (1 if np.ndim(v) == 1 else v.shape[1]) for v in res.mean.values())
    loss = df[df.observable == "loss"].sort_values("step")
    np.testing.assert_array_equal(loss["mean"].to_numpy(), res.mean["loss"])
    np.testing.assert_array_equal(loss["coord"].to_numpy(), -1)
    x1 = df[(df.observable == "x") & (df.coord == 1)].sort_values("step")
    np.testing.assert_array_equal(x1["var"].to_numpy(), res.var["x"][:, 1])
    np.testing.assert_array_equal(x1["se"].to_numpy(), res.se["x"][:, 1])
    np.testing.assert_array_equal(x1["t"].to_numpy(), res.t)
    assert df.attrs["paths"] == 64 and df.attrs["seed"] == 3


def test_comparison_frame_and_latex(comparison):
    df = comparison.to_pandas()
    assert len(df) == len(comparison.observables) * len(comparison.etas)
    row = df[(df.observable == "loss") & (df.eta == 0.1)].iloc[0]
    i = list(comparison.etas).index(0.1)
    assert row.weak_error == comparison.weak_error["loss"][i]
    assert (row.ci_lo, row.ci_hi) == tuple(comparison.interval["loss"][i])
    assert row.order == comparison.order["loss"]
    tex = comparison.to_latex(label="tab:sgd")
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex and "\\label{tab:sgd}" in tex
    assert "quadratic\\_diag" in tex and "95\\% confidence" in tex  # the caption is valid LaTeX text
    assert "$\\eta$" in tex and "weak error" in tex and f"{comparison.weak_error['loss'][i]:.4g}" in tex


def test_sweep_frames_and_latex():
    rows = [{"cell": "a", "eta": 0.1, "B": 4, "final_loss": 0.3}, {"cell": "b", "eta": 0.2, "B": 4, "final_loss": 0.2}]
    df = SweepResult(rows).to_pandas()
    assert list(df["final_loss"]) == [0.3, 0.2] and list(df.columns) == ["cell", "eta", "B", "final_loss"]
    B, best = np.array([1.0, 4.0, 16.0]), np.array([0.01, 0.03, 0.06])
    opt = Optimum(groups=B, best=best, lo=best * 0.9, hi=best * 1.1, by="B", param="eta", metric="final_loss")
    o = opt.to_pandas()
    np.testing.assert_array_equal(o["eta"].to_numpy(), best)
    tex = opt.to_latex()
    assert "\\toprule" in tex and "0.03" in tex and "band\\_lo" in tex and "final\\_loss" in tex


def test_comparison_renders_in_jupyter(comparison, monkeypatch):
    import sys

    html = comparison._repr_html_()
    assert "<table" in html and "weak_error" in html
    monkeypatch.setitem(sys.modules, "pandas", None)  # without pandas: the text report, escaped
    html = comparison._repr_html_()
    assert html.startswith("<pre>") and "weak error" in html and "<table" not in html

"""Weak-error comparisons of discrete optimizers with their SDEs (``validators.compare``).

The SGD order test is a measurement: on ``f = h x^2/2`` both the discrete means and the exact SDE
(Ornstein-Uhlenbeck) means are known in closed form, so the measured weak errors are checked
against the analytic ones as well as against order 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os

import numpy as np
import pytest
from sdederive.validators import (
    Comparison,
    ValidationError,
    assert_sde_matches,
    assert_weak_order,
    compare,
    problems,
    weak_order,
)
from sdederive.validators.cli import add_validate_parser, run_validate
from sdederive.validators.reporting import atomic_write, atomic_write_text

import sdederive as sd

H, SIGMA, X0 = 1.0, 0.5, 2.0
ETAS = [0.2, 0.1, 0.05]


def _quad() -> sd.Quadratic:
    return sd.Quadratic(h=[H], sigma=[SIGMA], x0=[X0])


def _analytic_gap(eta: float, t: np.ndarray) -> np.ndarray:
    """E loss(x_k) - E loss(X_t) for SGD and its exact SDE dX = -hX dt + sqrt(eta) sigma dW, t = k eta."""
    k = np.rint(t / eta)
    a = 1 - eta * H
    md, vd = a**k * X0, eta**2 * SIGMA**2 * (1 - a ** (2 * k)) / (1 - a**2)
    ms, vs = np.exp(-H * t) * X0, eta * SIGMA**2 / (2 * H) * (1 - np.exp(-2 * H * t))
    return H / 2 * (md**2 + vd) - H / 2 * (ms**2 + vs)


@pytest.fixture(scope="module")
def sgd_order() -> Comparison:
    return weak_order("sgd", _quad(), ETAS, paths=2000, horizon=2.0, replicates=10, seed=3)


# -- measured weak order ---------------------------------------------------------------------------


def test_sgd_weak_order_is_one(sgd_order):
    c = sgd_order
    assert c.resolved["loss"].all()
    assert abs(c.order["loss"] - 1.0) < 0.35, c.table()
    lo, hi = c.order_ci["loss"]
    assert lo <= c.order["loss"] <= hi
    # the measured weak errors agree with the closed form (the remaining gap is the O(eta**2) error of
    # the weak order-2 integrator, which shrinks with eta)
    for i, eta in enumerate(c.etas):
        exact = np.abs(_analytic_gap(eta, c.t[1:])).max()
        assert abs(c.weak_error["loss"][i] - exact) < 0.4 * eta * exact + c.ci["loss"][i], (eta, exact, c.table())
    exact = [np.abs(_analytic_gap(e, c.t[1:])).max() for e in c.etas]
    assert abs(c.order["loss"] - np.polyfit(np.log(c.etas), np.log(exact), 1)[0]) < 0.1
    assert "weak order (loss)" in c.table() and "PASSED" not in c.table()  # no criterion was asked for
    assert c.passed is None


def test_assert_weak_order_passes_and_fails():
    res = assert_weak_order("sgd", _quad(), order=1, tol=0.35, etas=ETAS, paths=1000, horizon=2.0, seed=1)
    assert res.passed
    with pytest.raises(AssertionError, match="weak order of the sgd SDE is not 2"):
        assert_weak_order("sgd", _quad(), order=2, tol=0.3, etas=ETAS, paths=1000, horizon=2.0, seed=1)


# -- a wrong SDE must fail ----------------------------------------------------------------------------


def test_wrong_drift_is_caught():
    sde = sd.derive("sgd")
    wrong = dataclasses.replace(sde, drift={"x": 1.5 * sde.drift["x"]})
    c = compare("sgd", _quad(), ETAS, paths=2000, horizon=2.0, sde=wrong)
    assert c.resolved["loss"].all()
    assert c.weak_error["loss"].min() > 0.15  # does not shrink with eta
    assert abs(c.order["loss"]) < 0.3, c.table()
    with pytest.raises(AssertionError) as info:
        assert_sde_matches("sgd", _quad(), tol=0.05, etas=ETAS, paths=2000, horizon=2.0, sde=wrong)
    msg = str(info.value)
    assert "not shown below tol=0.05" in msg and "FAILED" in msg and "weak error" in msg


# -- a difference the Monte Carlo cannot resolve ---------------------------------------------------------


def test_unresolved_difference_is_reported():
    # Student-t noise: the SDE's Gaussian noise is not coupled to the discrete draws; start at the minimum,
    # where discrete and SDE differ only at O(eta**2)
    p = sd.Quadratic(h=[1.0], sigma=[1.0], x0=[0.0], noise="student-t", nu=5)
    c = compare("sgd", p, [0.1, 0.05], paths=400, horizon=1.0, replicates=8)
    assert not c.resolved["loss"].any()
    assert all(lo == 0 for lo, _ in c.interval["loss"])
    text = c.table()
    assert "difference below the Monte Carlo resolution ±" in text
    assert "weak order (loss): not measured: 0 of 2 etas resolved" in text
    assert np.isnan(c.order["loss"])
    d = json.loads(c.to_json())
    assert d["results"]["loss"]["order"] is None and d["results"]["loss"]["resolved"] == [False, False]
    # ... and a tolerance these paths cannot resolve is refused with the number of paths needed
    with pytest.raises(ValidationError, match=r"paths=400 is too few to resolve tol=0\.001 .* paths >= \d+"):
        compare("sgd", p, [0.1, 0.05], paths=400, horizon=1.0, replicates=8, tol=1e-3)


# -- real data ------------------------------------------------------------------------------------------


def test_breast_cancer_logistic_sgd_matches_its_sde():
    bc = problems.breast_cancer(B=32)
    assert bc.d == 30 and bc.n == 569 and set(np.unique(bc.y)) == {-1.0, 1.0}
    # two etas: one alone cannot show the error shrinking, so it cannot pass
    res = assert_sde_matches("sgd", bc, tol=0.01, etas=[0.1, 0.05], paths=2000, horizon=1.0, replicates=8,
                             n_points=10)
    hi = res.interval["loss"][-1, 1]
    assert hi < 0.01
    assert any("not coupled" in n for n in res.notes)  # minibatch sampling vs Gaussian noise
    curve = res.curves["loss"][0]
    assert curve["disc_mean"][-1, 0] < 0.5 * np.log(2)  # it trains


# -- reports --------------------------------------------------------------------------------------------


def test_report_files_are_complete(sgd_order, tmp_path):
    out = tmp_path / "rep"
    paths = sgd_order.write_report(out)
    assert sorted(os.listdir(out)) == ["comparison.png", "report.json", "report.md"]  # no temporary files
    d = json.loads((out / "report.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert d["results"]["loss"]["weak_error"] == pytest.approx(sgd_order.weak_error["loss"].tolist())
    assert len(d["results"]["loss"]["curves"]) == 3
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    assert "comparison.png" in md and "weak order (loss)" in md
    assert set(paths) == {"json", "png", "md"}


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "old")

    def boom(tmp):
        with open(tmp, "w") as fh:
            fh.write("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "a.txt", boom)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "b.txt", boom)
    assert sorted(os.listdir(tmp_path)) == ["a.txt"]
    assert (tmp_path / "a.txt").read_text() == "old"


# -- command line ---------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sdederive")
    add_validate_parser(p.add_subparsers(dest="command"))
    return p


def test_cli_validate_writes_report(tmp_path, capsys):
    quad = tmp_path / "quad.json"
    quad.write_text(json.dumps({"kind": "quadratic", "h": [H], "sigma": [SIGMA], "x0": [X0]}))
    args = _parser().parse_args(["validate", "sgd", "--problem", str(quad), "--etas", "0.2,0.1", "--paths", "400",
                                 "--replicates", "4", "--horizon", "1", "--expected-order", "1", "--order-tol", "0.4",
                                 "--report", str(tmp_path / "out"), "--progress"])
    out = io.StringIO()
    assert args.func(args, out) == 0
    text = out.getvalue()
    assert "weak order (loss)" in text and "PASSED" in text
    assert sorted(os.listdir(tmp_path / "out")) == ["comparison.png", "report.json", "report.md"]
    assert "[compare] eta=0.2 (1/2)" in capsys.readouterr().err
    # a failed check exits 1
    args = _parser().parse_args(["validate", "sgd", "--problem", str(quad), "--etas", "0.2,0.1", "--paths", "400",
                                 "--replicates", "4", "--horizon", "1", "--expected-order", "3"])
    assert run_validate(args, io.StringIO()) == 1


@pytest.mark.parametrize("argv, needle", [
    (["--etas", "0.04,x"], "'x' is not a number"),
    (["--etas", "0.04,-0.02"], "eta=-0.02"),
    (["--problem", "circle"], "unknown problem 'circle'; valid problems: breast-cancer, quadratic"),
    (["--hp", "beta1"], "'beta1' is not NAME=VALUE"),
    (["--hp", "beta1=0.9"], "beta1"),
    (["--observables", "lossy"], "unknown observable 'lossy'; valid observables: loss"),
])
def test_cli_bad_input_exits_2(argv, needle, capsys):
    args = _parser().parse_args(["validate", "sgd", "--paths", "40", "--horizon", "0.1"] + argv)
    assert run_validate(args, io.StringIO()) == 2
    err = capsys.readouterr().err
    assert err.startswith("sdederive: error: ") and needle in err, err


# -- bad input --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw, needle", [
    ({"etas": [0.1, 0.0]}, "eta=0.0"),
    ({"etas": [0.1, 0.05, 0.1]}, "duplicates [0.1]"),
    ({"etas": []}, "etas=[] is empty"),
    ({"horizon": 0.05}, "horizon=0.05 is shorter than one step of the largest eta=0.1"),
    ({"horizon": -1.0}, "horizon=-1.0"),
    ({"etas": [0.03, 0.02], "horizon": 0.05}, "no common time grid"),
    ({"observables": ["loss", "w"]}, "unknown observable 'w'; valid observables: loss, sqnorm (or |x|^2), x"),
    ({"observables": ["x[3]"]}, "coordinate '3' is invalid; allowed: 0 <= i < d = 1"),
    ({"sde": "adam"}, "sde must be a sdederive.SDE"),
    ({"paths": 10, "replicates": 10}, "paths=10 is too few for replicates=10"),
    ({"replicates": 1}, "replicates=1"),
    ({"tol": -1.0}, "tol=-1.0"),
    ({"hyper": {"eta": 0.1}}, "must not contain 'eta'"),
    ({"scheme": "rk4"}, "scheme='rk4'"),
    ({"expected_order": 1.0, "etas": [0.1]}, "at least 2 etas"),
])
def test_bad_input_names_the_value(kw, needle):
    args = {"etas": [0.1, 0.05], "paths": 40, "horizon": 0.5, "replicates": 4} | kw
    with pytest.raises(ValidationError) as info:
        compare("sgd", _quad(), **args)
    assert needle in str(info.value)


def test_incompatible_sde_and_single_eta_order():
    with pytest.raises(ValidationError, match="derived for 'adam' but the optimizer is 'sgd'"):
        compare("sgd", _quad(), [0.1], paths=40, sde=sd.derive("adam"))
    with pytest.raises(ValidationError, match=r"at least 2 etas; got etas=\[0.1\]"):
        weak_order("sgd", _quad(), [0.1], paths=40)
    with pytest.raises(sd.SdederiveError, match="unknown optimizer 'sgdd'"):
        compare("sgdd", _quad(), [0.1], paths=40)


# -- reproducibility, problems ------------------------------------------------------------------------------


def test_same_seed_same_numbers():
    kw = dict(etas=[0.2, 0.1], paths=200, horizon=1.0, replicates=4, observables=("loss", "x"))
    a = compare("sgd", _quad(), seed=11, **kw)
    b = compare("sgd", _quad(), seed=11, **kw)
    c = compare("sgd", _quad(), seed=12, **kw)
    for obs in ("loss", "x"):
        np.testing.assert_array_equal(a.weak_error[obs], b.weak_error[obs])
        np.testing.assert_array_equal(a.interval[obs], b.interval[obs])
        np.testing.assert_array_equal(a.curves[obs][1]["diff"], b.curves[obs][1]["diff"])
    da, db = a.to_dict(), b.to_dict()
    da.pop("timing")
    db.pop("timing")
    assert da == db
    assert not np.array_equal(a.curves["loss"][0]["disc_mean"], c.curves["loss"][0]["disc_mean"])


def test_problem_builders():
    q = problems.quadratic(d=4, cond=10, sigma=0.5, sigma_power=0.5)
    assert np.allclose(q.h, np.geomspace(0.1, 1.0, 4)) and np.allclose(q.sigma, 0.5 * np.sqrt(q.h / q.h.max()))
    qd = problems.quadratic(d=3, cond=100, dense=True, seed=1, sigma_power=0.5)
    assert np.allclose(np.linalg.eigvalsh(qd.H), np.geomspace(0.1, 10, 3)) and qd.correlated
    assert np.allclose(np.linalg.eigvalsh(qd.Sigma), np.geomspace(0.1, 10, 3) / 10)
    qt = problems.quadratic(d=3, noise="student-t", nu=4, dense=True)
    assert qt.noise == "student-t" and qt.H is not None and qt.Sigma is None
    s = problems.synthetic_logistic(n=64, d=3, B=4)
    assert s.A.shape == (64, 3) and s.B == 4
    assert problems.get("breast-cancer", B=8, intercept=True).d == 31
    with pytest.raises(ValidationError, match="d=0"):
        problems.quadratic(d=0)

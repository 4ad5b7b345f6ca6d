"""The paper-prediction checks of :mod:`validators.checks`: each passes on the claim and fails on a case
where the claim is false (so each check is shown able to fail).  Sizes are reduced; the examples in
``examples/`` run them at full size."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sdederive.validators import checks as C

import sdederive as sd

# -- batch-size scaling rules ([AS] §1.7, §2.6) -----------------------------------------------------


def test_square_root_rule_adam_passes_linear_rule_fails():
    ok = C.square_root_rule("adam", kappas=(1, 4), paths=600, steps=6000, n_save=12)
    assert ok.passed, str(ok)
    assert ok.rows[1]["eta"] == pytest.approx(0.04) and ok.rows[1]["beta1"] == pytest.approx(0.96)
    bad = C.square_root_rule("adam", kappas=(1, 4), rule="linear", paths=600, steps=6000, n_save=12)
    assert not bad.passed, str(bad)
    assert bad.figures["worst_dev_over_tol"] > 2


def test_linear_rule_sgd_passes_sqrt_rule_fails():
    ok = C.linear_rule("sgd", kappas=(1, 8), paths=600, steps=2000, n_save=10)
    assert ok.passed, str(ok)
    # for SGD the derived rule *is* the linear rule
    assert "eta -> eta*kappa" in ok.figures["rule"] or "kappa*eta" in ok.figures["rule"]
    assert C.square_root_rule("sgd", kappas=(1, 8), paths=600, steps=2000, n_save=10).passed
    bad = C.square_root_rule("sgd", kappas=(1, 8), rule="sqrt", paths=600, steps=2000, n_save=10)
    assert not bad.passed


def test_adamw_rule_needs_weight_decay_scaling():
    ok = C.square_root_rule("adamw", kappas=(1, 4), paths=1000, steps=3000, n_save=10)
    assert ok.passed, str(ok)
    assert ok.rows[1]["wd"] == pytest.approx(2 * ok.rows[0]["wd"])
    # without wd -> sqrt(kappa)*wd the stationary loss moves (resolved at this size: ~1.6x at kappa=4)
    bad = C.square_root_rule("adamw", kappas=(1, 4), exclude=("wd",), paths=1000, steps=3000, n_save=10)
    assert not bad.passed
    assert bad.figures["stationary_ratio_kappa4"] > 1.3
    assert bad.rows[1]["predicted"] / bad.rows[0]["predicted"] > 1.3  # sd.stationary predicts the shift


def test_square_root_rule_on_logistic_regression_real_batches():
    # B -> kappa*B is a real minibatch size here; the loss is measured above the L-BFGS minimum
    lr = sd.LogisticRegression.synthetic(n=256, d=5, B=1, seed=0)
    kw = dict(kappas=(1, 2), hyper={"eta": 1e-3, "beta1": 0.99, "beta2": 0.999}, steps=6000, paths=300, n_save=10)
    ok = C.square_root_rule("adam", lr, **kw)
    assert ok.passed, str(ok)
    assert ok.rows[1]["steps"] == ok.rows[0]["steps"] // 2
    assert not C.square_root_rule("adam", lr, rule="linear", **kw).passed


def test_rmsprop_rule_passes():
    assert C.square_root_rule("rmsprop", kappas=(1, 4), paths=600, steps=6000, n_save=12).passed


# -- SignSGD vs SGD ([AS] §2.2-2.3) --------------------------------------------------------------


def test_signsgd_vs_sgd_stationary_and_wrong_formula():
    ok = C.signsgd_vs_sgd_stationary(sigma_scales=(0.5, 2.0), paths=1000, time=15.0, n_save=30)
    assert ok.passed, str(ok)
    assert ok.figures["signsgd_noise_exponent"] == pytest.approx(1.0, abs=0.1)
    assert ok.figures["sgd_noise_exponent"] == pytest.approx(2.0, abs=0.1)
    bad = C.signsgd_vs_sgd_stationary(signsgd_sde=sd.derive("sgd"), paths=1000, time=15.0, n_save=30)
    assert not bad.passed


def test_signsgd_rate_vs_noise():
    ok = C.signsgd_rate_vs_noise((1.0, 2.0, 4.0), paths=800, n_save=20)
    assert ok.passed, str(ok)
    assert ok.figures["signsgd_rate_slope"] == pytest.approx(-1.0, abs=0.15)
    assert ok.figures["sgd_rate_slope"] == pytest.approx(0.0, abs=0.15)
    bad = C.signsgd_rate_vs_noise((1.0, 2.0, 4.0), paths=800, n_save=20, expected_slopes={"sgd": -1.0})
    assert not bad.passed


def test_heavy_tails():
    ok = C.heavy_tails(nu=(1.5,), paths=1600, n_save=16)
    assert ok.passed, str(ok)
    assert ok.rows[0]["SGD SDE"].startswith("none")  # sd.derive refuses SGD under nu <= 2
    bad = C.heavy_tails(nu=(6.0,), paths=1600, n_save=16)  # finite variance: SGD's loss is light-tailed
    assert not bad.passed
    assert bad.rows[0]["rel. error"] == pytest.approx(0.0, abs=0.08)  # SignSGD still matches


def test_rmspropw_bounded_in_noise_and_wd_zero():
    ok = C.rmspropw_bounded_in_noise((1.0, 8.0, 64.0), wd=0.5, paths=600, n_save=12)
    assert ok.passed, str(ok)
    bad = C.rmspropw_bounded_in_noise((1.0, 4.0, 16.0), wd=0.0, paths=600, n_save=12)
    assert not bad.passed
    assert bad.figures["last_exponent"] > 0.7


# -- AdaGrad vs SGD at a fixed budget ([RB] §5C) ------------------------------------------------------


def test_adagrad_vs_sgd_batch():
    kw = dict(d=32, budget=2**11, batch_sizes=(1, 16, 256), seeds=2,
              sgd_etas=np.logspace(-2, np.log10(1.9), 7), adagrad_etas=np.logspace(-2, 2, 9))
    ok = C.adagrad_vs_sgd_batch(**kw)
    assert ok.passed, str(ok)
    bad = C.adagrad_vs_sgd_batch(target="sparse", control="dense", **kw)
    assert not bad.passed


# -- optimal learning rate vs batch size ([RB] §1.3, §2, §5B) -----------------------------------------


def test_optimal_lr_sgd_mccandlish():
    kw = dict(update="sgd", batch_sizes=(1, 10, 100, 1000), paths=1000, replicates=4, n_eps=3)
    ok = C.optimal_lr_vs_batch(**kw)
    assert ok.passed, str(ok)
    assert ok.figures["5A B_noise"] == pytest.approx(26.9, rel=0.01)
    assert not C.optimal_lr_vs_batch(prediction="surge", **kw).passed


def test_optimal_lr_sign_surge():
    # d = 20: B_noise = pi/(2*19*0.5*c^2) = 103 (c = 0.04) and 413 (c = 0.02)
    kw = dict(update="sign", d=20, c=(0.04, 0.02), batch_sizes=np.logspace(0, 4, 13), paths=1000, replicates=4,
              n_eps=3)
    ok = C.optimal_lr_vs_batch(**kw)
    assert ok.passed, str(ok)
    assert ok.figures["peak shift c=0.04 -> c=0.02"] == pytest.approx(4.0, rel=0.5)
    assert not C.optimal_lr_vs_batch(prediction="mccandlish", control=False, **kw).passed


# -- result object and bad input ----------------------------------------------------------------------


def test_result_object(tmp_path):
    r = C.signsgd_vs_sgd_stationary(paths=200, time=5.0, n_save=10)
    d = r.to_dict()
    json.dumps(d)
    assert d["name"] == "signsgd_vs_sgd_stationary" and set(d) >= {"passed", "figures", "rows", "table"}
    assert "| optimizer" in r.table and ("PASSED" in str(r) or "FAILED" in str(r))
    r.plot(tmp_path / "fig.png")
    assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    C.plot_results([r, r], tmp_path / "both.pdf", title="two")
    assert (tmp_path / "both.pdf").read_bytes()[:5] == b"%PDF-"


@pytest.mark.parametrize("call, words", [
    (lambda: C.square_root_rule("adam", kappas=(1, -2)), ["kappas entry", "-2", "> 0"]),
    (lambda: C.square_root_rule("adam", kappas=()), ["kappas", "at least 1"]),
    (lambda: C.square_root_rule("adam", kappas=(1,)), ["nothing to compare"]),
    (lambda: C.square_root_rule("adamm"), ["unknown optimizer", "adamm", "adam"]),
    (lambda: C.square_root_rule("adam", rule="cubic"), ["unknown rule", "cubic", "linear"]),
    (lambda: C.square_root_rule("adam", kappas=(1, 128)), ["kappa=128", "beta1"]),
    (lambda: C.square_root_rule("adamw", exclude=("mu",)), ["exclude", "mu", "wd"]),
    (lambda: C.signsgd_rate_vs_noise(sigmas=(1.0,)), ["sigmas", "at least 2"]),
    (lambda: C.signsgd_vs_sgd_stationary(eta=0), ["eta=0", "> 0"]),
    (lambda: C.heavy_tails(nu=()), ["nu", "empty"]),
    (lambda: C.rmspropw_bounded_in_noise(wd=-1), ["wd=-1", ">= 0"]),
    (lambda: C.adagrad_vs_sgd_batch(budget=100, batch_sizes=(1, 3)), ["batch size 3", "divide"]),
    (lambda: C.optimal_lr_vs_batch(update="adam"), ["unknown update", "adam", "sign"]),
    (lambda: C.optimal_lr_vs_batch(update="sign", batch_sizes=[]), ["batch_sizes", "empty"]),
])
def test_bad_input_names_value_and_allowed(call, words):
    with pytest.raises(C.CheckError) as e:
        call()
    assert isinstance(e.value, sd.SdederiveError)
    for w in words:
        assert w in str(e.value), (w, str(e.value))

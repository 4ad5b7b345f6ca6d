"""Scaling rules and stationary statistics computed from derived SDEs, against the reference."""

from __future__ import annotations

import pytest
import sympy as sp

import sdederive as sd
from tests.helpers import assert_equiv

S = sd.sym
kappa, eta, sigma, h, eps, wd = (S(n) for n in "kappa eta sigma h eps wd".split())


def test_square_root_rule_adam():
    """Malladi's SRSR: eta*sqrt(kappa), 1-beta_i -> kappa*(1-beta_i), eps/sqrt(kappa), k/kappa."""
    rule = sd.scaling_rule(sd.derive("adam", regime="noise-dominated"))
    b1, b2 = S("beta1"), S("beta2")
    assert sp.simplify(rule.map["eta"] - sp.sqrt(kappa) * eta) == 0
    assert sp.simplify(rule.map["beta1"] - (1 - kappa * (1 - b1))) == 0
    assert sp.simplify(rule.map["beta2"] - (1 - kappa * (1 - b2))) == 0
    assert sp.simplify(rule.map["eps"] - eps / sp.sqrt(kappa)) == 0
    assert sp.simplify(rule.steps - S("k") / kappa) == 0
    assert rule.exact and rule.time_change == 1
    d = rule.to_dict()
    assert d["eta"] == "sqrt(kappa)*eta" or sp.sympify(d["eta"], locals={"eta": eta, "kappa": kappa}) == rule.map["eta"]


def test_square_root_rule_rmsprop():
    rule = sd.scaling_rule(sd.derive("rmsprop"))
    assert sp.simplify(rule.map["eta"] - sp.sqrt(kappa) * eta) == 0
    assert sp.simplify(rule.map["beta"] - (1 - kappa * (1 - S("beta")))) == 0


def test_linear_rule_sgd():
    rule = sd.scaling_rule(sd.derive("sgd"))
    assert sp.simplify(rule.map["eta"] - kappa * eta) == 0 and rule.exact


@pytest.mark.parametrize("opt", ["adamw", "rmspropw"])
def test_weight_decay_rule(opt):
    """AdamW/RMSpropW (reference 2.6): the SRSR plus wd -> sqrt(kappa)*wd, SDE time sqrt(kappa) faster;
    exact invariance is impossible (the grad**2 term of the v drift), so the rule is the high-noise one."""
    rule = sd.scaling_rule(sd.derive(opt))
    assert sp.simplify(rule.map["eta"] - sp.sqrt(kappa) * eta) == 0
    assert sp.simplify(rule.map["wd"] - sp.sqrt(kappa) * wd) == 0
    assert sp.simplify(rule.map["eps"] - eps / sp.sqrt(kappa)) == 0
    assert sp.simplify(rule.time_change - sp.sqrt(kappa)) == 0
    assert sp.simplify(rule.steps - S("k") / kappa) == 0
    assert not rule.exact and rule.approximations == ["grad**2"]


def test_rule_verified_by_substitution():
    """Apply the computed map to the discrete hyperparameters and check the SDE really is invariant."""
    sde = sd.derive("adam")
    rule = sd.scaling_rule(sde)
    new_discrete = {S(k): v for k, v in rule.map.items()}
    new_discrete[sigma] = sigma / sp.sqrt(kappa)
    # scaled SDE parameters after the map
    repl = {}
    for name, definition in sde.params.items():
        repl[S(name)] = sp.simplify(definition.xreplace(new_discrete))
        assert sp.simplify(repl[S(name)] - definition) == 0, name


def test_no_rule_for_signsgd():
    with pytest.raises(sd.ScalingRuleError, match="erf"):
        sd.scaling_rule(sd.derive("signsgd"))


def test_rule_for_a_new_optimizer_is_computed():
    """EMA-momentum SGD (not a built-in) in the balanced regime gets a rule computed from its SDE."""
    opt = sd.chain(sd.transforms.ema(0.9), sd.transforms.scale_by_learning_rate(0.1), name="ema_sgd")
    sde = sd.derive(opt, regime="balanced")
    rule = sd.scaling_rule(sde)
    # dx = -m dt, dm = rho (grad - m) dt + sqrt(eta) rho sigma dW  ->  linear rule, 1 - beta -> kappa (1 - beta)
    assert sp.simplify(rule.map["eta"] - kappa * eta) == 0
    assert sp.simplify(rule.map["beta"] - (1 - kappa * (1 - S("beta")))) == 0


# -- stationary ---------------------------------------------------------------------------------


def test_stationary_sgd_exact():
    st = sd.stationary(sd.derive("sgd"))
    assert st.exact
    assert sp.simplify(st.variance - eta * sigma**2 / (2 * h)) == 0
    assert sp.simplify(st.loss - eta * sigma**2 / 4) == 0


def test_stationary_signsgd():
    st = sd.stationary(sd.derive("signsgd"))
    assert not st.exact
    assert sp.simplify(st.loss - eta / 4 * sp.sqrt(sp.pi / 2) * sigma) == 0
    assert sp.simplify(st.variance - eta / 2 * sp.sqrt(sp.pi / 2) * sigma / h) == 0


def test_stationary_signsgd_student_t():
    # E f = eta * sigma / (8 f_nu(0)); Cauchy: eta*pi*sigma/8
    nu = S("nu")
    st = sd.stationary(sd.derive("signsgd", noise="student-t"))
    f0 = sp.gamma((nu + 1) / 2) / (sp.sqrt(sp.pi * nu) * sp.gamma(nu / 2))
    assert_equiv(st.loss, eta * sigma / (8 * f0))
    assert sp.simplify(st.loss.subs(nu, 1) - eta * sp.pi * sigma / 8) == 0


def test_stationary_rmspropw():
    st = sd.stationary(sd.derive("rmspropw"))
    P = sigma + eps
    assert_equiv(st.loss, eta * sigma**2 * h / (4 * P * (h + wd * P)))
    assert st.fixed_point == {"v": sigma**2}
    # bounded in the noise when wd > 0: -> eta*h/(4*wd)
    lim = sp.limit(st.loss.subs(eps, 0), sigma, sp.oo)
    assert sp.simplify(lim - eta * h / (4 * wd)) == 0
    # linear in the noise when eps = wd = 0
    assert sp.simplify(st.loss.subs({eps: 0, wd: 0}) - eta * sigma / 4) == 0


def test_stationary_reference_numbers():
    """Reference section 6 item 4: eta = 0.005, h = (1, 4), sigma = (0.5, 2) (values given by the MC there)."""
    sg = sd.stationary(sd.derive("signsgd")).loss
    sgd = sd.stationary(sd.derive("sgd")).loss
    tot_sign = sum(float(sg.subs({eta: 0.005, sigma: s_, h: h_})) for h_, s_ in [(1, 0.5), (4, 2.0)])
    tot_sgd = sum(float(sgd.subs({eta: 0.005, sigma: s_, h: h_})) for h_, s_ in [(1, 0.5), (4, 2.0)])
    assert abs(tot_sign - 0.003917) < 5e-6
    assert abs(tot_sgd - 0.005313) < 5e-6


def test_stationary_not_linearizable():
    with pytest.raises(sd.SdederiveError, match="not differentiable"):
        sd.stationary(sd.derive("signum"))


def test_user_defined_regime():
    """A regime of one's own: noise-dominated with weight decay scaled as wd = wd0*eta."""
    eta_, wd0 = S("eta"), S("wd0", nonnegative=True)
    reg = sd.Regime("nd-wd-test", eta_**2, decay_power=2, decay_prefix="c", scale_noise=True, scale_eps=True,
                    rescale=("second_moment",), subs=(("wd", wd0 * eta_),))
    sd.regimes.register(reg)
    sde = sd.derive("adamw", regime="nd-wd-test")
    assert sde.params["wd0"] == S("wd") / eta_
    x = S("x")
    assert sp.simplify(sp.diff(sde.drift["x"], x) + wd0) == 0
    rule = sd.scaling_rule(sde)
    # the square-root rule; wd0 = wd/eta must stay fixed, so wd scales like eta: sqrt(kappa)
    assert sp.simplify(rule.map["wd"] - sp.sqrt(kappa) * S("wd")) == 0
    assert "nd-wd-test" in sd.regimes.names()


def test_stationary_lion_reduces_to_signsgd():
    """Lion with beta1 = 0 steps along sign(g): its linearized stationary variance is SignSGD's."""
    lion = sd.stationary(sd.derive("lion")).variance.subs({S("beta1"): 0, wd: 0})
    sign = sd.stationary(sd.derive("signsgd")).variance
    assert sp.simplify(lion - sign) == 0

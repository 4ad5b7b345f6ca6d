"""Bad input gets a clear error naming the value and what is allowed; JSON/LaTeX round trips."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sympy as sp

import sdederive as sd
from sdederive.spec import optimizers as O
from sdederive.spec import transforms as T

S = sd.sym


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: sd.derive("adamm"), r"unknown optimizer 'adamm'; valid optimizers: adabelief, adagrad, adam,"),
        (lambda: sd.derive("adam", noise="cauchy"), r"unknown noise model 'cauchy'.*gaussian, minibatch, student-t"),
        (lambda: sd.derive("adam", regime="fast"), r"unknown regime 'fast'.*balanced"),
        (lambda: sd.derive("sgd", noise="student-t", nu=0), r"nu=0 .*allowed: nu > 0"),
        (lambda: sd.derive("sgd", noise="student-t", nu=-2), r"nu=-2"),
        (lambda: sd.derive("sgd", noise="gaussian", sigma=-1.0), r"sigma=-1.0 .*sigma >= 0"),
        (lambda: sd.Gaussian(Sigma=[[1.0, 0.5], [0.4, 1.0]]), r"not symmetric: Sigma\[0,1\]=0.5"),
        (lambda: sd.Gaussian(Sigma=[[1.0, 2.0], [2.0, 1.0]]), r"not positive semi-definite"),
        (lambda: O.adam(beta1=1.2), r"beta1=1.2 is out of range; allowed: 0 <= value < 1"),
        (lambda: O.adam(eta=0.0), r"eta=0.0 is out of range; allowed: eta > 0"),
        (lambda: O.adam(eta=-1e-3), r"eta=-0.001"),
        (lambda: O.get("adam", beta2=-0.1), r"beta2=-0.1"),
        (lambda: sd.derive("sgd").subs(eta=-1), r"eta=-1 is out of range"),
        (lambda: sd.derive("sgd").subs(foo=1), r"'foo' is not a symbol of this SDE"),
        (lambda: sd.derive("sgd", order=3), r"order=3 is not supported; allowed: 1 or 2"),
    ],
)
def test_bad_input_messages(call, match):
    with pytest.raises(sd.SdederiveError, match=match):
        call()


def test_student_t_infinite_variance_for_linear_update():
    with pytest.raises(sd.ExpectationError, match=r"nu=2 .*needs nu > 2.*sign-based"):
        sd.derive("sgd", noise="student-t", nu=2)
    # a sign-based optimizer is fine under the same noise
    sde = sd.derive("signsgd", noise="student-t", nu=1.5)
    assert sde.drift["x"].has(sp.hyper)


def test_symbolic_nu_records_condition():
    sde = sd.derive("sgd", noise="student-t")
    assert any("nu > 2" in n for n in sde.notes)
    assert sp.simplify(sde.diffusion["x"] ** 2 - S("eta") * S("sigma") ** 2 * S("nu") / (S("nu") - 2)) == 0


def test_regime_mismatch_messages():
    with pytest.raises(sd.RegimeMismatchError, match=r"regime 'noise-dominated' the parameter x of 'sgd' moves O\(1\)"):
        sd.derive("sgd", regime="noise-dominated")
    with pytest.raises(sd.RegimeMismatchError, match=r"state v .* fast .*nonlinearly"):
        sd.derive("rmsprop", regime="sgd")
    with pytest.raises(sd.RegimeMismatchError, match=r"drift of x diverges"):
        sd.derive("adamw", regime="noise-dominated")


def test_full_covariance_needs_linear_noise():
    Sig = np.array([[1.0, 0.3], [0.3, 2.0]])
    sde = sd.derive("sgd", Sigma=Sig)
    assert sde.linear_noise
    with pytest.raises(sd.ExpectationError, match="full noise covariance Sigma needs an update linear"):
        sd.derive("signsgd", Sigma=Sig)


def test_spec_errors():
    x, g, m, q = S("x"), S("g"), S("m"), S("q")
    eta = S("eta")
    with pytest.raises(sd.SpecError, match=r"uses \['q'\].*state used before it is defined"):
        sd.from_update("bad", {"x": x - eta * q * g}, hypers={"eta": (0.1, "lr")})
    with pytest.raises(sd.SpecError, match="no update depends on the gradient"):
        sd.from_update("nograd", {"m": 0.5 * m, "x": x - eta * m}, hypers={"eta": (0.1, "lr")})
    with pytest.raises(sd.SpecError, match="no update of the parameter 'x'"):
        sd.from_update("nox", {"m": g}, hypers={})
    with pytest.raises(sd.SpecError, match="other assumptions"):
        sd.from_update("wrongsym", {"x": x - sp.Symbol("eta") * g}, hypers={"eta": (0.1, "lr")})
    with pytest.raises(sd.HyperparameterError, match=r"decay.*|beta=1.5"):
        sd.from_update("badhyp", {"x": x - eta * g}, hypers={"eta": (0.1, "lr"), "beta": (1.5, "decay")})


def test_unsupported_nonlinearity_names_subexpression():
    x, g, eta = S("x"), S("g"), S("eta")
    opt = sd.from_update("tanh_sgd", {"x": x - eta * sp.tanh(g)}, hypers={"eta": (0.1, "lr")})
    with pytest.raises(sd.ExpectationError, match=r"tanh\(grad \+ sigma\*z\).*register_expectation\(sympy.tanh"):
        sd.derive(opt)


def test_registered_rule_is_used():
    """A user rule for E[z^n tanh(a + b z)] (here a made-up closed form) flows into the SDE."""
    x, g, eta = S("x"), S("g"), S("eta")
    Et = sp.Function("Etanh")

    def rule(noise, n, a, b, p):
        return Et(n, p, a, b)

    sd.register_expectation(sp.tanh, rule)
    try:
        opt = sd.from_update("tanh_sgd2", {"x": x - eta * sp.tanh(g)}, hypers={"eta": (0.1, "lr")})
        sde = sd.derive(opt)
        assert sde.drift["x"] == -Et(0, 1, S("grad"), S("sigma"))
        var = sde.covariance[0, 0]
        assert sp.simplify(var - S("eta") * (Et(0, 2, S("grad"), S("sigma")) - Et(0, 1, S("grad"), S("sigma")) ** 2)) == 0
    finally:
        from sdederive.derivation import expectation

        expectation._RULES.pop(sp.tanh, None)


def test_smooth_function_of_small_noise_is_expanded():
    """tanh of a slowly varying EMA needs no rule: its noise is O(eta) and is Taylor-expanded."""
    x, g, m, eta, beta = S("x"), S("g"), S("m"), S("eta"), S("beta")
    m1 = beta * m + (1 - beta) * g
    opt = sd.from_update("tanh_mom", {"m": m1, "x": x - eta * sp.tanh(m1)},
                         hypers={"eta": (0.1, "lr"), "beta": (0.9, "decay")})
    sde = sd.derive(opt, regime="balanced")
    assert sp.simplify(sde.drift["x"] + sp.tanh(m)) == 0


@pytest.mark.parametrize("name", O.names())
def test_json_round_trip(name):
    sde = sd.derive(name)
    text = sde.to_json()
    d = json.loads(text)
    for key in ("optimizer", "noise", "regime", "tau", "states", "drift", "diffusion", "symbols"):
        assert key in d
    back = sd.SDE.from_json(text)
    assert back == sde
    assert back.params.keys() == sde.params.keys()
    assert "\\begin{aligned}" in sde.latex() and sde._repr_latex_().startswith("$$")


def test_json_parses_with_notation_names_only():
    allowed = {"erf": sp.erf, "exp": sp.exp, "sqrt": sp.sqrt, "sign": sp.sign, "Abs": sp.Abs,
               "gamma": sp.gamma, "hyper": sp.hyper, "pi": sp.pi}
    for name in ["adam", "signsgd", "lion"]:
        for noise in ["gaussian", "student-t"] if name != "adam" else ["gaussian"]:
            d = sd.derive(name, noise=noise).to_dict()
            loc = {**{s: sp.Symbol(s) for s in d["symbols"]}, **allowed}
            for e in list(d["drift"].values()) + [x for v in d["diffusion"].values() for x in (v if isinstance(v, list) else [v])]:
                parsed = sp.sympify(e, locals=loc)
                assert {str(s) for s in parsed.free_symbols} <= set(d["symbols"])


def test_from_json_bad_input():
    with pytest.raises(sd.SdederiveError, match="missing the key 'drift'"):
        sd.SDE.from_json({"optimizer": "x", "noise": "g", "regime": "r", "tau": "eta", "states": ["x"], "diffusion": {}})


def test_subs_numbers():
    sde = sd.derive("rmspropw").subs(rho=2, wd=0.5, eps=0.1, sigma=0.5)
    assert sde.drift["v"].free_symbols == {S("grad"), S("v")}


def test_custom_chain_is_a_few_lines():
    """A new optimizer from transforms: sign of RMS-normalized momentum."""
    opt = sd.chain(T.ema(0.9), T.scale_by_sign(), T.add_decayed_weights(0.1), T.scale_by_learning_rate(1e-3),
                   name="signum_wd", natural_regime="balanced")
    sde = sd.derive(opt)
    assert sp.simplify(sde.drift["x"] + sp.sign(S("m")) + S("wd") * S("x")) == 0


def test_defaults_follow_pytorch():
    assert O.adam().defaults == {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "eta": 1e-3}
    assert O.rmsprop().defaults == {"beta": 0.99, "eps": 1e-8, "eta": 1e-2}
    assert O.adagrad().defaults == {"eps": 1e-10, "eta": 1e-2}
    assert O.adamw().defaults["wd"] == 1e-2


def test_spec_updates_match_pytorch_formulas():
    """The numpy step generated from the spec against the documented PyTorch algorithms."""
    rng = np.random.default_rng(0)
    n = 5
    g = rng.normal(size=n)
    st = {"x": rng.normal(size=n), "m": rng.normal(size=n), "v": rng.uniform(0.1, 1, size=n)}
    k = 3
    hp = {"eta": 0.01, "beta1": 0.9, "beta2": 0.99, "eps": 1e-8, "wd": 0.1}
    out = O.adamw().numpy_step()(st, g, k, hp)
    m1 = 0.9 * st["m"] + 0.1 * g
    v1 = 0.99 * st["v"] + 0.01 * g**2
    step = k + 1
    x1 = st["x"] * (1 - 0.01 * 0.1) - 0.01 * (m1 / (1 - 0.9**step)) / (np.sqrt(v1 / (1 - 0.99**step)) + 1e-8)
    assert np.allclose(out["x"], x1) and np.allclose(out["m"], m1) and np.allclose(out["v"], v1)
    out = O.sgd_momentum().numpy_step()(st, g, k, {"eta": 0.1, "mu": 0.9})
    assert np.allclose(out["m"], 0.9 * st["m"] + g) and np.allclose(out["x"], st["x"] - 0.1 * (0.9 * st["m"] + g))
    out = O.adagrad().numpy_step()(st, g, k, {"eta": 0.1})
    assert np.allclose(out["x"], st["x"] - 0.1 * g / (np.sqrt(st["v"] + g**2) + 1e-10))
    out = O.lion().numpy_step()(st, g, k, {"eta": 0.1, "wd": 0.2})
    assert np.allclose(out["x"], st["x"] - 0.1 * (np.sign(0.9 * st["m"] + 0.1 * g) + 0.2 * st["x"]))
    assert np.allclose(out["m"], 0.99 * st["m"] + 0.01 * g)


def test_derivation_is_cached():
    sd.clear_cache()
    a = sd.derive("adam")
    assert sd.derive("adam") is a

"""AdamW on the globally clipped gradient (`adamw_clip`, regime `balanced`): EMA states fed by a function of
`|g|`, whose SDE has expectation atoms in the states' drifts and the root of a covariance as `m`'s noise.

* the derived drifts and local covariances of `m`, `v` (exact one-step moments of the discrete step: `m` and `v`
  are linear in the clipped gradient and its square) and `x`'s drift (its leading order) against an
  independent Monte Carlo of the discrete step, the atoms evaluated by their own Monte Carlo; the clipping
  moves the drift of `m` by many standard errors, so the check tells it from AdamW's;
* the SDE kernel's one Euler step from a given state against the derived drift and diffusion (`m`'s noise from
  inner samples; `v`'s drift estimate from the same samples adds `dt**2 Cov[F_v]/n`, which is checked too);
* the weak error against the discrete optimizer shrinks with eta;
* JSON: the increments of the states round-trip, a file without them or with an edited one is refused;
* two noisy states with such noise are refused at derivation.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import sympy as sp

import sdederive as sd
from sdederive.errors import ExpectationError
from sdederive.sde_vector import evaluate_atom
from sdederive.simulate.lower import CodegenError
from tests.test_vector_simulate import _dense

HV = {"eta": 0.02, "beta1": 0.9, "beta2": 0.95, "eps": 1e-3, "wd": 0.05, "c": 0.7}


def _clip(g, c):
    n = np.linalg.norm(g, axis=-1, keepdims=True)
    return np.minimum(1.0, c / n) * g


def _atoms(sde, grad, S, hyper, n, seed):
    rng = np.random.default_rng(seed)
    return {a: evaluate_atom(a, grad, S, hyper, n=n, rng=rng) for a in sde.atoms}


def test_derived_moments_match_a_monte_carlo_of_the_discrete_step():
    d = 3
    H, S = _dense(d=d, seed=5)
    sde = sd.derive("adamw_clip")
    st = {"x": np.array([0.9, -0.6, 0.5]), "m": np.array([0.2, -0.1, 0.3]), "v": np.array([0.5, 0.3, 0.4])}
    grad = H @ st["x"]
    rho1, rho2, t = 2.0, 1.0, 3.0
    hyper = {"c": HV["c"], "eps": HV["eps"], "wd": HV["wd"], "rho1": rho1, "rho2": rho2, "t": t}
    env = {**st, "grad": grad, "H": H, "Sigma": S, **hyper}
    atoms = _atoms(sde, grad, S, hyper, 400_000, 1)
    # the discrete step's clipped gradients, an independent sample
    n = 400_000
    L = np.linalg.cholesky(S)
    g = grad + np.random.default_rng(2).standard_normal((n, d)) @ L.T
    gc = _clip(g, HV["c"])
    assert np.mean(np.linalg.norm(g, axis=1) > HV["c"]) > 0.5  # the clipping is active on most steps

    for eta in (0.01,):
        b1, b2 = 1 - rho1 * eta, 1 - rho2 * eta
        dm = (b1 - 1) * st["m"] + (1 - b1) * gc
        dv = (b2 - 1) * st["v"] + (1 - b2) * gc**2
        for name, inc in (("m", dm), ("v", dv)):
            want = sde.evaluate(f"drift:{name}", atoms=atoms, **env).ravel()
            se = inc.std(0) / np.sqrt(n) / eta
            assert np.all(np.abs(inc.mean(0) / eta - want) <= 5 * se * np.sqrt(2)), (name, inc.mean(0) / eta, want)
        # the local covariances Cov[Delta s1, Delta s2]/tau, tau = eta
        for s1, a in (("m", dm), ("v", dv)):
            for s2, b in (("m", dm), ("v", dv)):
                want = sde.evaluate(f"covariance:{s1},{s2}", atoms=atoms, eta=eta, **env)
                got = ((a - a.mean(0)).T @ (b - b.mean(0))) / (n - 1) / eta
                scale = np.sqrt(np.outer(a.var(0), b.var(0))) / eta
                assert np.all(np.abs(got - want) <= 6 * scale * np.sqrt(2 / n) * np.sqrt(2)), (s1, s2, got, want)
        D = sde.evaluate("diffusion:m", atoms=atoms, eta=eta, **env)
        np.testing.assert_allclose(D @ D.T, sde.evaluate("covariance:m,m", atoms=atoms, eta=eta, **env), rtol=1e-9)
    # the clipping matters: AdamW's drift of m, rho1 (grad - m), is many standard errors away
    unclipped = rho1 * (grad - st["m"])
    se_m = (rho1 * gc.std(0) / np.sqrt(n))
    assert np.max(np.abs(sde.evaluate("drift:m", atoms=atoms, **env).ravel() - unclipped) / se_m) > 50

    # x: its leading-order drift (m', v' = m, v + O(eta)), at a small eta where the bias corrections of step k,
    # 1 - beta**(k + 1) with (k + 1) eta = t, are 1 - exp(-rho t) up to O(eta)
    eta = 1e-4
    b1, b2 = 1 - rho1 * eta, 1 - rho2 * eta
    k = int(round(t / eta)) - 1
    m1 = b1 * st["m"] + (1 - b1) * gc[:20_000]
    v1 = b2 * st["v"] + (1 - b2) * gc[:20_000] ** 2
    u = (m1 / (1 - b1 ** (k + 1))) / (np.sqrt(v1 / (1 - b2 ** (k + 1))) + HV["eps"])
    dx = -eta * (u + HV["wd"] * st["x"])
    want = sde.evaluate("drift", atoms=atoms, **env).ravel()
    np.testing.assert_allclose(dx.mean(0) / eta, want, rtol=2e-3)
    assert sde.diffusion["x"].is_ZeroMatrix and sde.diffusion["v"].is_ZeroMatrix


def test_sde_kernel_one_euler_step_is_the_derived_drift_and_diffusion():
    d = 3
    H, S = _dense(d=d, seed=4)
    prob = sd.Quadratic(H=H, Sigma=S, x0=[0.6, -0.4, 0.9])
    sde = sd.derive("adamw_clip")
    eta = tau = HV["eta"]
    st = {"x": np.array([0.5, -0.2, 0.7]), "m": np.array([0.1, -0.3, 0.2]), "v": np.array([0.4, 0.2, 0.3])}
    n, inner = 40_000, 8
    res = sd.compile(sde, prob, inner=inner).run(paths=n, steps=2, hyper=HV, seed=9, init=st, keep_final=True)
    # the run starts at step 1 (t = tau) and takes one Euler step of dt = tau
    rho = {"rho1": (1 - HV["beta1"]) / eta, "rho2": (1 - HV["beta2"]) / eta}
    env = {**st, "grad": H @ st["x"], "H": H, "Sigma": S, "t": tau, **HV, **rho}
    atoms = _atoms(sde, env["grad"], S, {**HV, **rho}, 400_000, 3)
    inc = {s: res.final[s] - st[s] for s in ("x", "m", "v")}
    for s in ("x", "m", "v"):
        b = sde.evaluate(f"drift:{s}" if s != "x" else "drift", atoms=atoms, **env).ravel()
        sd_inc = np.maximum(inc[s].std(0), 1e-300)
        assert np.all(np.abs(inc[s].mean(0) - b * tau) <= 5 * sd_inc / np.sqrt(n) + 1e-12), (s, inc[s].mean(0), b * tau)
    # m: the covariance D D^T tau (the noise scale makes up for the drift estimated from the samples)
    want = sde.evaluate("covariance:m,m", atoms=atoms, **env) * tau
    scale = np.sqrt(np.outer(np.diag(want), np.diag(want)))
    assert np.all(np.abs(np.cov(inc["m"].T) - want) <= 6 * scale * np.sqrt(2 / n)), (np.cov(inc["m"].T), want)
    # v has no noise in the model; its drift estimate (the mean of `inner` samples) varies by dt**2 Cov[F_v]/n
    want_v = sde.evaluate("covariance:v,v", atoms=atoms, **env) / eta * tau**2 / inner
    scale = np.sqrt(np.outer(np.diag(want_v), np.diag(want_v)))
    assert np.all(np.abs(np.cov(inc["v"].T) - want_v) <= 6 * scale * np.sqrt(2 / n)), (np.cov(inc["v"].T), want_v)
    # x's step is deterministic given the state
    assert np.ptp(res.final["x"], axis=0).max() < 1e-12


def test_weak_error_against_adamw_clip_shrinks_with_eta():
    """Balanced regime (1 - beta = rho*eta, rho fixed): the gap of E[loss] at t = 1 between the SDE and the
    discrete optimizer falls when eta falls 4x (the runs are independent: the SDE's noise is drawn from inner
    samples, not from the discrete run's Gaussians)."""
    H, S = _dense(d=4, seed=0, scale=1.0)
    prob = sd.Quadratic(H=H, Sigma=S, x0=np.ones(4))
    cd, cs = sd.compile("adamw_clip", prob), sd.compile(sd.derive("adamw_clip"), prob)
    gaps = []
    for eta in (0.04, 0.01):
        hv = {"eta": eta, "beta1": 1 - 5 * eta, "beta2": 1 - 2 * eta, "eps": 1e-3, "wd": 0.01, "c": 0.8}
        steps = int(round(1 / eta))
        a = cd.run(paths=20_000, steps=steps, hyper=hv, seed=3, keep_final=True)
        b = cs.run(paths=20_000, steps=steps, hyper=hv, seed=4, keep_final=True)
        la, lb = a.final["loss"], b.final["loss"]
        gaps.append((abs(la.mean() - lb.mean()), np.sqrt(la.var() / la.size + lb.var() / lb.size)))
    (g1, s1), (g2, s2) = gaps
    assert g1 > 5 * s1, gaps
    assert g2 < g1 / 2 + 3 * s2, gaps


def test_json_round_trip_and_edited_files():
    sde = sd.derive("adamw_clip")
    text = sde.to_json()
    back = sd.VectorSDE.from_json(text)
    assert back.to_json() == text and back.aux_increment == sde.aux_increment and back.increment == ()
    d = json.loads(text)
    assert [b["tensor"] for b in d["aux"]["v"]["increment"]] == ["det", "gsq"]
    prob = sd.Quadratic(H=np.diag([1.0, 2.0]), Sigma=np.eye(2) * 0.3, x0=[1.0, -1.0])
    sim = sd.compile(sde, prob)
    k0, st0 = sim.initial_state(sim.resolve_hyper())
    a = sim.run(paths=300, steps=30, seed=1)
    b = sd.compile(back, prob).run(paths=300, steps=30, seed=1, init=st0)
    np.testing.assert_array_equal(a.mean["loss"][1:], b.mean["loss"][1:])  # the same kernel from step k0 = 1
    # without the states' increments the sampled noise cannot be drawn
    del d["aux"]["m"]["increment"]
    with pytest.raises(CodegenError, match="aux_increment"):
        sd.compile(sd.VectorSDE.from_json(json.dumps(d)), prob)
    # an increment that does not belong to the drift
    d = json.loads(text)
    d["aux"]["v"]["increment"][1]["coefficient"] = "(-2*rho2)*I"
    with pytest.raises(sd.SdederiveError, match="drift of v is not -E"):  # refused when the file is read
        sd.VectorSDE.from_json(json.dumps(d))
    d = json.loads(text)  # code in a state's increment is parsed, never run
    d["aux"]["m"]["increment"][1]["integrand"] = "__import__('os').system('exit 3')"
    with pytest.raises(sd.SdederiveError, match="not attribute access"):
        sd.VectorSDE.from_json(json.dumps(d))
    d = json.loads(text)
    d["aux"]["v"]["increment"][1]["tensor"] = "gg"
    with pytest.raises(sd.SdederiveError, match="tensor"):
        sd.VectorSDE.from_json(json.dumps(d))


def test_two_states_with_clipped_noise_are_refused():
    """Without kinds={'v': 'second_moment'} both m and v carry noise, v's through the square of the clipped
    gradient: their joint diffusion would be the root of the block covariance, which the SDE cannot write."""
    x, g, m, v = sd.vectors("x g m v")
    eta, c, b1, b2 = sd.sym("eta"), sd.sym("c"), sd.sym("beta1"), sd.sym("beta2")
    gc = sd.minimum(1, c / sd.norm(g)) * g
    m1, v1 = b1 * m + (1 - b1) * gc, b2 * v + (1 - b2) * sd.coordinatewise(lambda a: a**2, gc)
    u = sd.coordinatewise(lambda a, b: a / (sp.sqrt(b) + sd.sym("eps")), m1, v1)
    hy = {"eta": (1e-2, "lr"), "c": (1.0, "positive"), "beta1": (0.9, "decay"), "beta2": (0.99, "decay"),
          "eps": (1e-3, "eps")}
    opt = sd.from_update("clip_adam_v_noisy", {"m": m1, "v": v1, "x": x - eta * u}, hypers=hy,
                         natural_regime="balanced")
    with pytest.raises(ExpectationError, match="all carry noise"):
        sd.derive(opt)
    # with v a second moment the same update is derived, and its m has the clipped noise
    opt = sd.from_update("clip_adam", {"m": m1, "v": v1, "x": x - eta * u}, hypers=hy,
                         kinds={"v": "second_moment"}, natural_regime="balanced")
    sde = sd.derive(opt)
    assert sde.diffusion["m"].has(sp.MatPow) and sde.diffusion["v"].is_ZeroMatrix


def test_clipped_heavy_ball_in_regime_sgd_simulates_and_tracks_its_optimizer():
    """Regime `sgd` eliminates the momentum of `m' = mu*m + gc, x' = x - eta*m'`: the slow variable's noise is the
    root of a covariance with clipping atoms, so its increment is recorded for the sampled noise.  At t = 2
    E[loss] of the SDE and of the discrete run agree within the Monte Carlo error and the O(eta) weak error,
    and are far from where unclipped heavy ball's SDE ends."""
    x, g, m = sd.vectors("x g m")
    eta, c, mu = sd.sym("eta"), sd.sym("c"), sd.sym("mu")
    gc = sd.minimum(1, c / sd.norm(g)) * g
    opt = sd.from_update("clip_hb", {"m": mu * m + gc, "x": x - eta * (mu * m + gc)},
                         hypers={"eta": (1e-2, "lr"), "c": (0.5, "positive"), "mu": (0.5, "momentum")})
    sde = sd.derive(opt)
    assert [b[0] for b in sde.increment] == ["g"] and sde.atoms
    H, S = _dense(d=3, seed=1, scale=1.0)
    prob = sd.Quadratic(H=H, Sigma=S, x0=[2.0, -1.5, 1.0])
    run = dict(paths=8000, steps=200, eta=0.01, seed=5, keep_final=True)
    a = sd.compile(opt, prob).run(**run)
    b = sd.compile(sde, prob).run(**run)
    la, lb = a.final["loss"], b.final["loss"]
    se = np.sqrt(la.var() / la.size + lb.var() / lb.size)
    l0 = float(0.5 * prob.x0 @ H @ prob.x0)
    assert abs(la.mean() - lb.mean()) <= 4 * se + 0.03 * (l0 - la.mean()), (la.mean(), lb.mean(), se)
    x2, g2, m2 = sd.vectors("x g m")
    hb = sd.from_update("hb", {"m": mu * m2 + g2, "x": x2 - eta * (mu * m2 + g2)},
                        hypers={"eta": (1e-2, "lr"), "mu": (0.5, "momentum")})
    lc = sd.compile(sd.derive(hb), prob).run(**run).final["loss"]
    assert abs(lc.mean() - la.mean()) > 10 * se  # clipping changes where the run is at t = 2


def test_ema_of_signs_with_a_full_sigma_is_derived_and_simulated():
    """`m' = beta*m + (1 - beta)*sign(g)`, `x' = x - eta*m` in regime `balanced`: `m`'s drift holds the closed-form
    sign mean `erf(grad/sqrt(2 diag Sigma))` and its noise the root of the orthant covariance `Cov[sign(g)]`, which
    the correlated noise makes non-diagonal.  Both are checked against a Monte Carlo of the discrete step (exact
    one-step moments: m is linear in sign(g)); the SDE's E[loss] at t = 2 tracks the discrete run's."""
    x, g, m = sd.vectors("x g m")
    eta, beta = sd.sym("eta"), sd.sym("beta")
    opt = sd.from_update("ema_sign", {"m": beta * m + (1 - beta) * sd.coordinatewise(sp.sign, g), "x": x - eta * m},
                         hypers={"eta": (1e-2, "lr"), "beta": (0.9, "decay")}, natural_regime="balanced")
    sde = sd.derive(opt)
    H, S = _dense(d=3, seed=0)  # noise correlations 0.43 to 0.56
    st = {"x": np.array([0.2, -0.1, 0.1]), "m": np.array([0.1, 0.0, -0.2])}
    grad = H @ st["x"]
    rho, eta_v, n = 3.0, 0.01, 400_000
    env = {**st, "grad": grad, "H": H, "Sigma": S, "rho": rho, "eta": eta_v}
    sg = np.sign(grad + np.random.default_rng(4).standard_normal((n, 3)) @ np.linalg.cholesky(S).T)
    dm = rho * eta_v * (sg - st["m"])
    want = sde.evaluate("drift:m", **env).ravel()
    se = dm.std(0) / np.sqrt(n) / eta_v
    assert np.all(np.abs(dm.mean(0) / eta_v - want) <= 5 * se), (dm.mean(0) / eta_v, want)
    C = sde.evaluate("covariance:m,m", **env)
    got = np.cov(dm.T) / eta_v
    corr = C / np.sqrt(np.outer(np.diag(C), np.diag(C)))
    assert np.abs(corr[np.triu_indices(3, 1)]).max() > 0.2, corr  # the orthant correlations are there
    assert np.all(np.abs(got - C) <= 6 * np.sqrt(np.outer(np.diag(C), np.diag(C))) * np.sqrt(2 / n)), (got, C)
    D = sde.evaluate("diffusion:m", **env)
    np.testing.assert_allclose(D @ D.T, C, rtol=1e-9, atol=1e-12)
    prob = sd.Quadratic(H=H, Sigma=S, x0=[1.0, -1.0, 0.5])
    hv = {"eta": 0.01, "beta": 0.9}
    a = sd.compile(opt, prob).run(paths=4000, steps=200, hyper=hv, seed=1, keep_final=True).final["loss"]
    b = sd.compile(sde, prob).run(paths=4000, steps=200, hyper=hv, seed=2, keep_final=True).final["loss"]
    se = np.sqrt(a.var() / a.size + b.var() / b.size)
    l0 = float(0.5 * prob.x0 @ H @ prob.x0)
    assert abs(a.mean() - b.mean()) <= 4 * se + 0.01 * (l0 - a.mean()), (a.mean(), b.mean(), se)

"""Learning-rate and hyperparameter schedules: the derived SDE is the unscheduled one with s(t) in
its coefficients, and the discrete and SDE simulators run the same schedule on the same time axis
(checked against exact numpy recursions and an independent numpy Adam)."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

import sdederive as sd
from sdederive.spec import schedules as S
from tests.helpers import assert_equiv

t, eta, grad, sigma = sd.sym("t"), sd.sym("eta"), sd.sym("grad"), sd.sym("sigma")
H = np.array([1.0, 4.0])
SIG = np.array([0.5, 0.5])
X0 = np.array([1.0, -1.0])


def test_scheduled_sgd_sde_is_li_tai_e_with_s_of_t():
    s = S.warmup_cosine(1, 10, final=0.1)
    sde = sd.derive(S.scheduled("sgd", s))
    assert_equiv(sde.drift["x"], -s * grad, overrides={"t": 3.7})
    assert_equiv(sde.drift["x"], -s * grad, overrides={"t": 0.4})
    assert_equiv(sde.diffusion["x"], sp.sqrt(eta) * sigma * s, overrides={"t": 5.2})
    assert sde.drift["x"].has(t)


@pytest.mark.parametrize("schedule", [S.linear_warmup(0.5), S.step_decay(0.4, 0.5)], ids=["warmup", "step"])
def test_both_modes_follow_the_schedule_on_the_time_axis(schedule):
    """SGD on f = h x^2/2: E x_K = x0 prod_k (1 - eta h s(k eta)) exactly, for the optimizer and for the
    SDE's Euler scheme; the schedule evaluated at k instead of t = k*eta would miss it by far."""
    e, K = 0.004, 250
    prob = sd.Quadratic(h=H, sigma=SIG, x0=X0)
    opt = S.scheduled("sgd", schedule)
    s_num = sp.lambdify(t, schedule, "numpy")
    exact = X0 * np.prod([1 - e * H * float(s_num(k * e)) for k in range(K)], axis=0)
    wrong = X0 * np.prod([1 - e * H * float(s_num(min(k, 1.0))) for k in range(K)], axis=0)
    for obj in (opt, sd.derive(opt)):
        res = sd.compile(obj, prob).run(paths=8000, steps=K, eta=e, seed=4, save_every=K)
        se = res.se["x"][-1]
        assert np.all(np.abs(res.mean["x"][-1] - exact) < 5 * se + 1e-12), (res.mean["x"][-1], exact, se)
        assert np.any(np.abs(res.mean["x"][-1] - wrong) > 50 * se)
    # and the time axis is the SDE's: the exact flow x0 exp(-h int_0^1 s) is within O(eta) of it
    grid = np.linspace(0.0, 1.0, 200_001)
    integral = float(np.mean(np.broadcast_to(s_num(grid), grid.shape)))  # fine Riemann sum (jumps)
    assert np.allclose(exact, X0 * np.exp(-H * integral), rtol=0.05)


def test_scheduled_adam_matches_an_independent_numpy_adam():
    """The generated discrete Adam with warm-up against a numpy Adam written here (own random numbers):
    mean x after 150 steps within 5 standard errors."""
    e, K, n = 0.01, 150, 4000
    b1, b2, eps = 0.9, 0.999, 1e-8
    schedule = S.linear_warmup(0.005)  # t = k*eta**2 (Adam's natural regime): full lr from step 50
    prob = sd.Quadratic(h=H, sigma=SIG, x0=X0)
    res = sd.compile(S.scheduled("adam", schedule), prob).run(paths=n, steps=K, eta=e, seed=1, save_every=K)
    rng = np.random.default_rng(7)
    x = np.tile(X0, (n, 1))
    m = np.zeros_like(x)
    v = np.zeros_like(x)
    for k in range(K):
        g = H * x + SIG * rng.standard_normal(x.shape)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        lr = e * min(1.0, k * e * e / 0.005)
        x = x - lr * (m / (1 - b1 ** (k + 1))) / (np.sqrt(v / (1 - b2 ** (k + 1))) + eps)
    ref, ref_se = x.mean(0), x.std(0) / np.sqrt(n)
    se = np.sqrt(res.se["x"][-1] ** 2 + ref_se ** 2)
    assert np.all(np.abs(res.mean["x"][-1] - ref) < 5 * se), (res.mean["x"][-1], ref, se)
    unscheduled = sd.compile("adam", prob).run(paths=n, steps=K, eta=e, seed=1, save_every=K)
    assert np.any(np.abs(unscheduled.mean["x"][-1] - ref) > 20 * se)  # the schedule matters here


def test_decay_schedule_and_refusals():
    opt = S.scheduled("adam", S.cosine(5), hyper="beta1")
    m_new = dict(opt.update)["m"]
    b1, g, m, k = sd.sym("beta1"), sd.sym("g"), sd.sym("m"), sd.sym("k")
    s_k = S.cosine(5).subs(t, k * eta**2)
    assert sp.simplify(m_new - ((1 - (1 - b1) * s_k) * m + (1 - b1) * s_k * g)) == 0
    with pytest.raises(sd.SdederiveError, match="depend on t only"):
        S.scheduled("sgd", sp.Min(1, t / sd.sym("T")))
    with pytest.raises(sd.SdederiveError, match="fixed in every regime"):
        S.scheduled("lion", S.cosine(1), hyper="beta1") if sd.optimizers.get("lion").hyper["beta1"].kind == "interp" \
            else S.scheduled("sgd_momentum", S.cosine(1), hyper="mu")
    with pytest.raises(sd.UnknownNameError):
        S.scheduled("sgd", S.cosine(1), hyper="beta9")
    with pytest.raises(sd.SdederiveError, match="t_warmup=-1"):
        S.linear_warmup(-1)
    with pytest.raises(sd.SdederiveError, match="t_total > t_warmup"):
        S.warmup_cosine(2, 1)

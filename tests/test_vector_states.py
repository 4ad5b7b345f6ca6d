"""Auxiliary vector states in the vector engine: sgd_nesterov (regime sgd, the buffer eliminated) and lamb
(regime balanced, Adam's moments kept as states).

The one-step moments of each SDE are checked against an independent numpy Monte Carlo of the *discrete* update
at fixed states (d = 3, dense H, full Sigma), with Richardson extrapolation in eta; tolerances are 5 combined
standard errors from 20 batch means (as in tests/test_vector_engine.py).  Nesterov without its look-ahead shift is
heavy ball, whose SDE must be the scalar engine's sgd_momentum SDE.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import sympy as sp

import sdederive as sd
from sdederive.errors import RegimeMismatchError, SdederiveError, SpecError
from sdederive.sde_vector import VectorSDE, evaluate
from tests.helpers import VEC_GRAD as GRAD
from tests.helpers import VEC_H as H
from tests.helpers import VEC_K as K
from tests.helpers import VEC_L as L
from tests.helpers import VEC_N as N
from tests.helpers import VEC_SIG as SIG
from tests.helpers import VEC_X as X

M0 = np.array([1.0, -1.5, 0.5])  # far from heavy ball's quasi-stationary buffer grad/(1 - mu)
V0 = np.array([0.3, 0.2, 0.5])


def _noise(seed: int, n: int = N) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3)) @ L.T


def _batched(fn, samples: np.ndarray):
    full = fn(samples)
    parts = np.array([fn(b) for b in np.array_split(samples, K)])
    return full, parts.std(axis=0, ddof=1) / np.sqrt(K)


def _moments(step, etas, weights, xi):
    """Richardson-extrapolated E[D]/eta and Cov[D]/eta**2 of the increments D = step(eta, xi) (rows), common noise."""
    def stats(s):
        out = 0
        for e, w in zip(etas, weights):
            d = step(e, s)
            out = out + w * np.concatenate([d.mean(0) / e, np.cov(d.T).ravel() / e**2])
        return out

    return _batched(stats, xi)


# -- Nesterov -----------------------------------------------------------------------------------------------------
MU = 0.5


def _nesterov_dy(eta: float, xi: np.ndarray, lookahead: bool = True) -> np.ndarray:
    """Increment of the slow variable y = x + eta*mu/(mu - 1)*m (the scalar engine's heavy-ball formula, by hand)
    over one discrete step m' = mu m + grad f_gamma(x - eta mu m), x' = x - eta m' on f = x^T H x/2, additive noise."""
    a = eta * MU / (MU - 1)
    point = X - eta * MU * M0 if lookahead else X
    m_new = MU * M0 + point @ H.T + xi
    x_new = X - eta * m_new
    return (x_new + a * m_new) - (X + a * M0)


def test_nesterov_one_step_moments_match_discrete_monte_carlo():
    sde = sd.derive("sgd_nesterov")
    assert isinstance(sde, VectorSDE) and sde.regime == "sgd" and sde.states == ("x",)
    (name, A), = sde.eliminated
    env = dict(grad=GRAD, H=H, Sigma=SIG, x=X, mu=MU, eta=0.01)
    np.testing.assert_allclose(evaluate(A, env), 0.01 * MU / (MU - 1) * np.eye(3), rtol=1e-12)
    assert name == "m"
    v, se = _moments(lambda e, s: _nesterov_dy(e, s), (0.02, 0.01), (-1.0, 2.0), _noise(1))
    b = sde.evaluate("drift", **env).ravel()
    c = sde.evaluate("covariance", **{**env, "eta": 1.0})
    tol = 5 * se + 1e-12
    assert np.all(np.abs(v[:3] - b) < tol[:3]), (v[:3], b, tol[:3])
    assert np.all(np.abs(v[3:] - c.ravel()) < tol[3:]), (v[3:], c.ravel(), tol[3:])
    # the check can fail: the drift is not SGD's -grad f, and without the slow variable (y = x) the mean is O(1) off
    assert np.abs(b + GRAD).max() > 20 * tol[:3].max()
    naive, _ = _moments(lambda e, s: (X - e * (MU * M0 + X @ H.T + s)) - X, (0.02, 0.01), (-1.0, 2.0), _noise(1))
    assert np.abs(naive[:3] - b).max() > 20 * tol[:3].max()


def _scalar_at(expr, **vals) -> float:
    return float(expr.xreplace({sd.sym(k): v for k, v in vals.items()}))


def test_nesterov_without_lookahead_is_the_scalar_sgd_momentum_sde():
    """Heavy ball written as a vector update (Nesterov's update with the look-ahead point x - eta*mu*m replaced by x)
    has, with a diagonal Sigma, the scalar engine's sgd_momentum SDE in every coordinate: drift grad/(mu - 1),
    diffusion sqrt(eta) sigma/(1 - mu), slow variable x + eta mu/(mu - 1) m.  With the shift (Nesterov) the order-1
    SDE is the same: the look-ahead enters the slow variable's increment at O(eta**2) only."""
    x, g, m = sd.vectors("x g m")
    eta, mu = sd.sym("eta"), sd.sym("mu")
    hb = sd.from_update("hb_vec", {"m": mu * m + g, "x": x - eta * (mu * m + g)},
                        hypers={"eta": (1e-2, "lr"), "mu": (0.9, "momentum")})
    vec, nest, scalar = sd.derive(hb), sd.derive("sgd_nesterov"), sd.derive("sgd_momentum")
    sig2 = np.array([0.5, 0.4, 0.6])
    env = dict(grad=GRAD, Sigma=np.diag(sig2), H=H, x=X, mu=MU, eta=0.01)
    for i in range(3):
        vals = dict(grad=GRAD[i], mu=MU, eta=0.01, sigma=np.sqrt(sig2[i]))
        assert vec.evaluate("drift", **env)[i, 0] == pytest.approx(_scalar_at(scalar.drift["x"], **vals), rel=1e-12)
        assert vec.evaluate("diffusion", **env)[i, i] ** 2 == pytest.approx(
            _scalar_at(scalar.diffusion["x"], **vals) ** 2, rel=1e-12)
    np.testing.assert_allclose(vec.evaluate("diffusion", **env), np.diag(np.diag(vec.evaluate("diffusion", **env))),
                               atol=1e-15)
    a_scalar = _scalar_at(scalar.eliminated["m"]["x"], mu=MU, eta=0.01)
    np.testing.assert_allclose(evaluate(vec.eliminated[0][1], env), a_scalar * np.eye(3), rtol=1e-12)
    for what in ("drift", "covariance"):
        np.testing.assert_allclose(nest.evaluate(what, **{**env, "Sigma": SIG}),
                                   vec.evaluate(what, **{**env, "Sigma": SIG}), rtol=1e-12)
    # the discrete heavy ball against its SDE too (the same Monte Carlo as for Nesterov, look-ahead removed)
    v, se = _moments(lambda e, s: _nesterov_dy(e, s, lookahead=False), (0.02, 0.01), (-1.0, 2.0), _noise(2))
    assert np.all(np.abs(v[:3] - vec.evaluate("drift", **{**env, "Sigma": SIG}).ravel()) < 5 * se[:3])


# -- LAMB ----------------------------------------------------------------------------------------------------------
RHO1, RHO2, EPS, WD, T = 1.0, 0.5, 1e-3, 0.1, 0.4


def _lamb_step(eta: float, xi: np.ndarray) -> np.ndarray:
    """One discrete LAMB step from (X, M0, V0) at step k = T/eta with beta = 1 - rho*eta: increments of (x, m, v)."""
    k = round(T / eta)
    b1, b2 = 1 - RHO1 * eta, 1 - RHO2 * eta
    g = GRAD + xi
    m = b1 * M0 + (1 - b1) * g
    v = b2 * V0 + (1 - b2) * g**2
    u = (m / (1 - b1 ** (k + 1))) / (np.sqrt(v / (1 - b2 ** (k + 1))) + EPS)
    step = u + WD * X
    ratio = np.linalg.norm(X) / np.linalg.norm(step, axis=1, keepdims=True)
    x = X - eta * ratio * step
    return np.concatenate([x - X, m - M0, v - V0], axis=1)


def test_lamb_one_step_moments_match_discrete_monte_carlo():
    """Drifts of x, m, v and the joint covariance of (x, m, v), against a Monte Carlo of the discrete LAMB step with
    three-point Richardson extrapolation (eta = 0.02, 0.01, 0.005, k = t/eta integer), which removes the O(eta) and
    O(eta**2) terms of the bias corrections and of the moments' change within the step."""
    sde = sd.derive("lamb")
    assert sde.regime == "balanced" and sde.states == ("x", "m", "v")
    w = (1 / 3, -2.0, 8 / 3)
    xi = _noise(3)
    v, se = _moments(_lamb_step, (0.02, 0.01, 0.005), w, xi)
    coarse, _ = _moments(_lamb_step, (0.04, 0.02, 0.01), w, xi[: N // 4])
    fine, _ = _moments(_lamb_step, (0.02, 0.01, 0.005), w, xi[: N // 4])
    env = dict(grad=GRAD, H=H, Sigma=SIG, x=X, m=M0, v=V0, rho1=RHO1, rho2=RHO2, eps=EPS, wd=WD, t=T, eta=1.0)
    b = np.concatenate([sde.evaluate(f"drift{s}", **env).ravel() for s in ("", ":m", ":v")])
    C = np.block([[sde.evaluate(f"covariance:{s1},{s2}", **env) for s2 in sde.states] for s1 in sde.states])
    # x's rows are deterministic at leading order, so their Monte Carlo error is tiny and the O(eta**3) Richardson
    # remainder matters: it is bounded by 2*|extrapolation at 2*eta - at eta| (the remainder scales as eta**3, so
    # that difference is about 7 times the remainder), computed with common noise
    floor = 2 * np.abs(coarse - fine)
    assert floor[:3].max() < 1e-4  # far below x's drift (about 0.5) and its change without the trust ratio
    tol = 5 * se + floor + 1e-12
    assert np.all(np.abs(v[:9] - b) < tol[:9]), (v[:9], b, tol[:9])
    assert np.all(np.abs(v[9:] - C.ravel()) < tol[9:]), np.abs(v[9:] - C.ravel()).max()
    # hand formula of x's drift: -(|x|/|u + wd x|)(u + wd x), u the bias-corrected Adam direction at time t
    u = (M0 / (1 - np.exp(-RHO1 * T))) / (np.sqrt(V0 / (1 - np.exp(-RHO2 * T))) + EPS)
    ref = -np.linalg.norm(X) / np.linalg.norm(u + WD * X) * (u + WD * X)
    np.testing.assert_allclose(b[:3], ref, rtol=1e-12)
    assert abs(np.linalg.norm(X) / np.linalg.norm(u + WD * X) - 1) > 0.3  # the trust ratio matters here
    assert np.abs(-(u + WD * X) - b[:3]).min() > 100 * tol[:3].max()
    # the diffusion: m has sqrt(eta)*rho1*Sigma^(1/2); v's is left out (regime balanced), x has none
    Dm = sde.evaluate("diffusion:m", **{**env, "eta": 0.01})
    np.testing.assert_allclose(Dm @ Dm.T, 0.01 * RHO1**2 * SIG, atol=1e-14)
    assert not sde.evaluate("diffusion:v", **env).any() and not sde.evaluate("diffusion", **env).any()


@pytest.mark.parametrize("name", ["sgd_nesterov", "lamb"])
def test_json_round_trip_and_printing(name):
    sde = sd.derive(name)
    text = sde.to_json()
    back = VectorSDE.from_json(text)
    assert back.to_json() == VectorSDE.from_json(back.to_json()).to_json()
    assert back.states == sde.states
    env = dict(grad=GRAD, H=H, Sigma=SIG, x=X, m=M0, v=V0, rho1=RHO1, rho2=RHO2, eps=EPS, wd=WD, t=T, mu=MU,
               eta=0.02)
    whats = ["drift", "diffusion", "covariance"] + [f"{w}:{s}" for s in sde.states[1:] for w in ("drift", "diffusion")]
    whats += [f"covariance:{a},{b}" for a in sde.states[1:] for b in sde.states]
    for what in whats:
        np.testing.assert_allclose(back.evaluate(what, **env), sde.evaluate(what, **env), atol=1e-14)
    d = json.loads(text)
    if name == "lamb":
        assert d["states"] == ["x", "m", "v"] and set(d["aux"]) == {"m", "v"}
        assert "dm = (rho1*grad f - rho1*m) dt + sqrt(eta)*rho1*Sigma^(1/2) dW" in str(sde)
        assert "\\quad dv_t" in sde.latex()
        bad = {**d, "aux": {"m": d["aux"]["m"]}}
        with pytest.raises(SdederiveError, match="aux must be an object"):
            VectorSDE.from_json(json.dumps(bad))
        with pytest.raises(SdederiveError, match="states"):
            VectorSDE.from_json(json.dumps({**d, "states": ["x", "H", "v"]}))
        with pytest.raises(SdederiveError):  # a coordinate-wise product of different shapes
            VectorSDE.from_json(json.dumps({**d, "drift": "hadamard(x, Sigma)"}))
    else:
        assert d["states"] == ["x"] and set(d["eliminated"]) == {"m"}
        assert str(sde).splitlines()[1].strip() == "dX = 1/(mu - 1)*grad f dt - sqrt(eta)/(mu - 1)*Sigma^(1/2) dW"


def test_refusals_with_states():
    x, g, m, v = sd.vectors("x g m v")
    eta, mu, beta = sd.sym("eta"), sd.sym("mu"), sd.sym("beta")
    with pytest.raises(RegimeMismatchError, match="nonlinearly"):
        sd.derive("lamb", regime="sgd")
    with pytest.raises(RegimeMismatchError, match="no hyperparameter of kind 'decay'"):
        sd.derive("sgd_nesterov", regime="balanced")
    with pytest.raises(RegimeMismatchError, match="in the regimes sgd, balanced only"):
        sd.derive("lamb", regime="balanced-full")
    with pytest.raises(SdederiveError, match="order=2"):
        sd.derive("sgd_nesterov", order=2)
    with pytest.raises(SpecError, match="not a state"):
        sd.from_update("no_m", {"x": x - eta * (g + m)}, hypers={"eta": (1e-2, "lr")})
    with pytest.raises(SpecError, match="not available"):
        sd.vectors("grad")
    # normalized momentum: m enters x's update through |m|, nonlinearly: fast in 'sgd', not eliminable
    nm = sd.from_update("nmom", {"m": mu * m + g, "x": x - eta * (mu * m + g) / sd.norm(mu * m + g)},
                        hypers={"eta": (1e-2, "lr"), "mu": (0.9, "momentum")})
    with pytest.raises(RegimeMismatchError, match="cannot be eliminated"):
        sd.derive(nm)
    # an EMA state whose noise is not linear Gaussian and is kept (kind aux): the joint diffusion is not represented
    sq = sd.from_update("ema_sq", {"v": beta * v + (1 - beta) * sd.coordinatewise(lambda a: a**2, g),
                                   "x": x - eta * g - eta * v}, hypers={"eta": (1e-2, "lr"), "beta": (0.9, "decay")},
                        natural_regime="balanced")
    with pytest.raises(SdederiveError, match="not one linear Gaussian block"):
        sd.derive(sq)
    with pytest.raises(SpecError, match="start at 0"):
        sd.from_update("init_m", {"m": mu * m + g, "x": x - eta * m}, hypers={"eta": (1e-2, "lr"), "mu": (0.9, "momentum")},
                       init={"m": 1.0})


def test_user_ema_rmsprop_like_update():
    """A user-written RMSprop-like vector update in regime balanced: x' = x - eta g/(sqrt(v') + eps) has the noise
    diag(1/(sqrt(v) + eps)) Sigma^(1/2) at leading order, drift -grad f/(sqrt(v) + eps) (coordinate-wise)."""
    x, g, v = sd.vectors("x g v")
    eta, beta, eps = sd.sym("eta"), sd.sym("beta"), sd.sym("eps")
    vn = beta * v + (1 - beta) * sd.coordinatewise(lambda a: a**2, g)
    opt = sd.from_update("rms_vec", {"v": vn, "x": x - eta * sd.coordinatewise(lambda a, b: a / (sp.sqrt(b) + eps), g, vn)},
                         hypers={"eta": (1e-2, "lr"), "beta": (0.99, "decay"), "eps": (1e-8, "eps")},
                         kinds={"v": "second_moment"}, natural_regime="balanced")
    sde = sd.derive(opt)
    env = dict(grad=GRAD, Sigma=SIG, v=V0, eps=EPS, rho=0.5, eta=0.01)
    w = 1 / (np.sqrt(V0) + EPS)
    np.testing.assert_allclose(sde.evaluate("drift", **env).ravel(), -w * GRAD, rtol=1e-12)
    np.testing.assert_allclose(sde.evaluate("covariance", **env), 0.01 * np.outer(w, w) * SIG, rtol=1e-12)
    np.testing.assert_allclose(sde.evaluate("covariance:x,v", **env),
                               -0.01 * 0.5 * 2 * np.diag(w) @ SIG @ np.diag(GRAD), rtol=1e-12)


def test_lamb_without_trust_ratio_is_the_scalar_adamw_sde():
    """LAMB's update with the trust ratio removed is AdamW: written as a vector update, its SDE in regime balanced
    with a diagonal Sigma is the scalar engine's adamw SDE in every coordinate (drifts of x, m, v, the diffusion of
    m, and the local covariance of (m, v), Gaussian fourth moments included)."""
    x, g, m, v = sd.vectors("x g m v")
    eta, b1, b2, eps, wd, k = (sd.sym(n) for n in ("eta", "beta1", "beta2", "eps", "wd", "k"))
    mn, vn = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * sd.coordinatewise(lambda a: a**2, g)
    u = sd.coordinatewise(lambda a, b: a / (1 - b1 ** (k + 1)) / (sp.sqrt(b / (1 - b2 ** (k + 1))) + eps), mn, vn)
    adamw_vec = sd.from_update("adamw_vec", {"m": mn, "v": vn, "x": x - eta * (u + wd * x)},
                               hypers={"eta": (1e-3, "lr"), "beta1": (0.9, "decay"), "beta2": (0.999, "decay"),
                                       "eps": (1e-8, "eps"), "wd": (1e-2, "positive")},
                               kinds={"v": "second_moment"}, natural_regime="balanced")
    vec, scalar = sd.derive(adamw_vec), sd.derive("adamw")
    assert scalar.regime == vec.regime == "balanced" and scalar.states == vec.states
    sig2 = np.array([0.5, 0.4, 0.6])
    common = dict(rho1=RHO1, rho2=RHO2, eps=EPS, wd=WD, t=T, eta=0.01)
    env = dict(grad=GRAD, Sigma=np.diag(sig2), x=X, m=M0, v=V0, **common)
    C = {(a, b): vec.evaluate(f"covariance:{a},{b}", **env) for a in vec.states for b in vec.states}
    idx = {s: i for i, s in enumerate(scalar.states)}
    for i in range(3):
        vals = dict(grad=GRAD[i], x=X[i], m=M0[i], v=V0[i], sigma=np.sqrt(sig2[i]), **common)
        for s in vec.states:
            assert vec.evaluate("drift" + ("" if s == "x" else f":{s}"), **env)[i, 0] == pytest.approx(
                _scalar_at(scalar.drift[s], **vals), rel=1e-12), s
            for s2 in vec.states:
                assert C[(s, s2)][i, i] == pytest.approx(_scalar_at(scalar.covariance[idx[s], idx[s2]], **vals),
                                                         rel=1e-12, abs=1e-15), (s, s2)
        assert vec.evaluate("diffusion:m", **env)[i, i] == pytest.approx(_scalar_at(scalar.diffusion["m"], **vals),
                                                                          rel=1e-12)
    assert not vec.evaluate("diffusion:v", **env).any() and scalar.diffusion["v"] == 0


def test_state_specs_and_sdes_pickle_and_hostile_json():
    import pickle

    from sdederive.spec import vector as V

    opt = V.get("lamb")
    back = pickle.loads(pickle.dumps(opt))
    assert back == opt and hash(back) == hash(opt) and back.fingerprint() == opt.fingerprint()
    assert str(pickle.loads(pickle.dumps(sd.derive("lamb")))) == str(sd.derive("lamb"))
    d = sd.derive("lamb").to_dict()
    for bad in ({**d, "aux": {"m": {"drift": "__import__('os')", "diffusion": "0*I"}, "v": d["aux"]["v"]}},
                {**d, "joint_covariance": [["m", "w", "Sigma"]]},
                {**d, "joint_covariance": [["m", "m", "m"]]},  # a vector where a (d, d) block belongs
                {**d, "eliminated": {"m": "I"}},  # m is a state of this SDE
                {**d, "states": ["m", "x", "v"]}):
        with pytest.raises(SdederiveError):
            VectorSDE.from_json(json.dumps(bad))

"""The state-dependent minibatch covariance `Sigma(x)` in the vector engine (`sd.derive(..., Sigma="x")`).

* USAM with rho = r*eta at order 2: the drift is -grad(f + (rho/2)(|grad f|^2 + tr Sigma(x)) + (eta/4)|grad f|^2),
  i.e. -grad f~ of Compagnoni et al. 2023 plus the order-2 SME term, with grad tr Sigma(x)/2 = E[(grad xi) xi];
* that identity checked on logistic regression with one-example minibatches, where every expectation is an exact
  average over the examples and grad tr Sigma(x) is a finite difference of tr Sigma(x) (numpy, independent of the
  engine): E_j[g_j(x + rho g_j(x))] = grad f + rho (H grad f + grad tr Sigma/2) + O(rho^2);
* the refusals (an O(1) shift, SAM's g/|g| shift, Student-t), JSON and LaTeX, and the simulators (0 on a constant
  Sigma; on logistic regression the kernel's grad tr Sigma(x) against a finite difference).
"""

from __future__ import annotations

import numpy as np
import pytest

import sdederive as sd
from sdederive.errors import NoiseModelError, SdederiveError
from sdederive.sde_vector import evaluate


def _logistic(n=60, d=3, seed=2):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(n, d)) * np.array([0.5, 1.0, 2.0])
    y = np.where(rng.random(n) < 0.5, 1.0, -1.0)
    return A, y, 1e-2


def _per_example(A, y, l2, x):
    s = 1.0 / (1.0 + np.exp(y * (A @ x)))  # sigma(-y a.x)
    return (-y * s)[:, None] * A + l2 * x, s


def _tr_sigma(A, y, l2, x):
    G, _ = _per_example(A, y, l2, x)
    return float(((G - G.mean(0)) ** 2).sum(1).mean())  # B = 1


def test_usam_rho_eta_order2_is_grad_of_compagnoni_f_tilde():
    sde = sd.derive("usam", Sigma="x", regime="rho-eta", order=2)
    assert sde.sigma_x and "Sigma(x)" in str(sde) and r"\Sigma(x)" in sde.latex()
    rng = np.random.default_rng(0)
    d = 4
    Q = rng.normal(size=(d, d))
    H = (Q + Q.T) / 2
    g, gts = rng.normal(size=d), rng.normal(size=d)
    eta, r = 0.03, 0.7
    got = np.asarray(evaluate(sde.drift_vector, {"grad": g, "H": H, "grad_trSigma": gts, "Sigma": np.eye(d), "eta": eta,
                                                   "r": r, "rho": r * eta}), float).ravel()
    rho = r * eta
    # -grad of f + (rho/2)(|grad f|^2 + tr Sigma) + (eta/4)|grad f|^2
    want = -(g + rho * H @ g + rho / 2 * gts + eta / 2 * H @ g)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # with a constant Sigma the same SDE without the trace term
    const = sd.derive("usam", regime="rho-eta", order=2)
    c = np.asarray(evaluate(const.drift_vector, {"grad": g, "H": H, "Sigma": np.eye(d), "eta": eta, "r": r}), float)
    np.testing.assert_allclose(c.ravel(), want + rho / 2 * gts, rtol=1e-12)


def test_noise_derivative_identity_on_logistic_regression_exactly():
    """B = 1: E over the example j is an exact average. The residual of E_j[g_j(x + rho g_j)] after grad f +
    rho (H grad f + grad tr Sigma / 2) is O(rho^2) (it halves twice per halving of rho), while grad tr Sigma/2 itself
    is O(1): without it the residual would be O(rho)."""
    A, y, l2 = _logistic()
    x = np.array([0.3, -0.6, 0.2])
    G, s = _per_example(A, y, l2, x)
    gbar = G.mean(0)
    H = (A.T * (s * (1 - s))) @ A / A.shape[0] + l2 * np.eye(3)
    h = 1e-5
    gts = np.array([(_tr_sigma(A, y, l2, x + h * e) - _tr_sigma(A, y, l2, x - h * e)) / (2 * h) for e in np.eye(3)])
    assert np.linalg.norm(gts) > 0.1
    res = []
    for rho in (0.02, 0.01, 0.005):
        Gp = np.array([_per_example(A[j:j + 1], y[j:j + 1], l2, x + rho * G[j])[0][0] for j in range(A.shape[0])])
        R = Gp.mean(0) - gbar - rho * (H @ gbar + gts / 2)
        res.append(np.linalg.norm(R))
    # O(rho^2): 4 per halving (measured 4.04, 4.02); a missing or wrong noise-derivative term leaves an O(rho)
    # residual, 2 per halving
    assert res[0] / res[1] > 3.5 and res[1] / res[2] > 3.5, res
    assert np.linalg.norm(gts / 2) > 10 * res[-1] / 0.005  # the term is not negligible (measured 30x)


def test_refusals():
    with pytest.raises(NoiseModelError, match="joint law of the minibatch gradient and Hessian"):
        sd.derive("usam", Sigma="x")  # rho fixed: an O(1) shift
    with pytest.raises(NoiseModelError, match="function of |g|"):
        sd.derive("sam", Sigma="x", regime="rho-eta", order=2)
    with pytest.raises(NoiseModelError, match="Gaussian noise only"):
        sd.derive("nsgd", Sigma="x", noise="student-t", nu=5)
    with pytest.raises(NoiseModelError, match="'x' \\(the state-dependent"):
        sd.derive("nsgd", Sigma="y")
    # optimizers that evaluate gradients at x only, and O(eta) look-ahead shifts, derive with Sigma(x)
    for name in ("nsgd", "clip_sgd", "sgd_nesterov", "lamb"):
        s = sd.derive(name, Sigma="x")
        assert s.sigma_x and not s.drift_vector.has(sd.sde_vector.GRAD_TRSIGMA)
    assert not sd.derive("usam", Sigma="x", regime="rho-eta").drift_vector.has(sd.sde_vector.GRAD_TRSIGMA)


def test_json_round_trip_and_hostile_key():
    sde = sd.derive("usam", Sigma="x", regime="rho-eta", order=2)
    text = sde.to_json()
    back = sd.VectorSDE.from_json(text)
    assert back.sigma_x and back.to_json() == text and back.drift_vector == sde.drift_vector
    import json

    d = json.loads(text)
    d["Sigma"] = "__import__('os')"
    with pytest.raises(SdederiveError, match="Sigma = "):
        sd.VectorSDE.from_json(d)
    d.pop("Sigma")
    assert not sd.VectorSDE.from_json(d).sigma_x


def test_simulators_constant_sigma_and_logistic_grad_trace():
    """On a constant Sigma the term is 0 (the SDE runs as the constant-Sigma one); on logistic regression one Euler step
    differs from the constant-Sigma SDE's by exactly -dt (rho/2) grad tr Sigma(x0), the kernel's prob_gtrs against
    a central finite difference of tr Sigma(x) = mean_j |g_j - grad f|^2 / B in numpy."""
    prob = sd.Quadratic(H=np.diag([1.0, 2.0, 3.0]), Sigma=np.eye(3) * 0.5, x0=[1.0, 1.0, 1.0])
    hv = {"eta": 0.05, "rho": 0.02}
    sx = sd.derive("usam", Sigma="x", regime="rho-eta", order=2)
    const = sd.derive("usam", regime="rho-eta", order=2)
    a = sd.compile(sx, prob).run(paths=64, steps=20, hyper=hv, seed=1, keep_final=True)
    b = sd.compile(const, prob).run(paths=64, steps=20, hyper=hv, seed=1, keep_final=True)
    np.testing.assert_allclose(a.final["x"], b.final["x"], rtol=1e-12, atol=1e-15)  # grad tr Sigma = 0
    lg = sd.LogisticRegression.synthetic(n=50, d=3, B=4, seed=1, l2=1e-2)
    x0 = lg.x0

    def tr_sigma(x):
        G = lg.per_example_grads(x)
        return ((G - G.mean(0)) ** 2).sum(1).mean() / lg.B

    h = 1e-5
    fd = np.array([(tr_sigma(x0 + h * e) - tr_sigma(x0 - h * e)) / (2 * h) for e in np.eye(3)])
    np.testing.assert_allclose(lg.grad_trace_cov(x0), fd, rtol=1e-6, atol=1e-9)
    hv = {"eta": 0.05, "rho": 0.05}
    a = sd.compile(sx, lg).run(paths=16, steps=1, hyper=hv, seed=1, keep_final=True)
    b = sd.compile(const, lg).run(paths=16, steps=1, hyper=hv, seed=1, keep_final=True)
    want = -hv["eta"] * (hv["rho"] / 2) * fd
    assert np.abs(want).max() > 1e-4
    np.testing.assert_allclose(a.final["x"] - b.final["x"], np.broadcast_to(want, (16, 3)), rtol=1e-6, atol=1e-12)

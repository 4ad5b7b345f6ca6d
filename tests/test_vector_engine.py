"""The vector engine (issue 16): SDEs of usam, sam, nsgd, clip_sgd in d dimensions with a full Sigma.

Every symbolic result is checked against an independent numpy Monte Carlo of the *discrete* update at a
fixed x (d = 3, dense H, full Sigma), and the expectation atoms are evaluated by the test's own Monte Carlo.
Tolerances: 5 combined standard errors, estimated from 20 batch means of each Monte Carlo.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import sympy as sp

import sdederive as sd
from sdederive.errors import (
    ExpectationError,
    NoiseModelError,
    RegimeMismatchError,
    SdederiveError,
    SpecError,
)
from sdederive.sde_vector import VectorSDE
from tests.helpers import VEC_C as C
from tests.helpers import VEC_GRAD as GRAD
from tests.helpers import VEC_H as H
from tests.helpers import VEC_K as K
from tests.helpers import VEC_L as L
from tests.helpers import VEC_N as N
from tests.helpers import VEC_RHO as RHO
from tests.helpers import VEC_SIG as SIG
from tests.helpers import VEC_X as X


def _noise(seed: int, n: int = N) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3)) @ L.T


def _discrete(name: str, eta: float, xi: np.ndarray) -> np.ndarray:
    """x_{k+1} - x_k of the discrete optimizer on f = x^T H x / 2 with additive noise xi (same minibatch)."""
    def grad_gamma(y):  # the minibatch gradient at the points y (rows), same noise draw per row
        return y @ H.T + xi

    x = np.broadcast_to(X, xi.shape)
    g = grad_gamma(x)
    ng = np.linalg.norm(g, axis=1, keepdims=True)
    if name == "usam":
        return -eta * grad_gamma(x + RHO * g)
    if name == "sam":
        return -eta * grad_gamma(x + RHO * g / ng)
    if name == "nsgd":
        return -eta * g / ng
    if name == "clip_sgd":
        return -eta * np.minimum(1.0, C / ng) * g
    raise AssertionError(name)


def _batched(fn, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``fn`` on the full sample and its standard error from K batch means."""
    full = fn(samples)
    parts = np.array([fn(b) for b in np.array_split(samples, K)])
    return full, parts.std(axis=0, ddof=1) / np.sqrt(K)


def _moments(name: str, eta: float, xi: np.ndarray):
    """Richardson-extrapolated one-step moments E[D]/eta and Cov[D]/eta**2 (eta and eta/2, common noise)."""
    def stats(s):
        d1, d2 = _discrete(name, eta, s), _discrete(name, eta / 2, s)
        m = 2 * d2.mean(0) / (eta / 2) - d1.mean(0) / eta
        c = 2 * np.cov(d2.T) / (eta / 2) ** 2 - np.cov(d1.T) / eta**2
        return np.concatenate([m, c.ravel()])

    v, se = _batched(stats, xi)
    return v[:3], se[:3], v[3:].reshape(3, 3), se[3:].reshape(3, 3)


def _atom_values(sde: VectorSDE, g: np.ndarray) -> dict:
    """The test's own Monte Carlo of every atom E[r(|g|) T(g)], identified by its printed meaning."""
    ng = np.linalg.norm(g, axis=1)
    r = {"1/|g|": 1 / ng, "|g|**(-2)": ng**-2.0, "Min(1, c/|g|)": np.minimum(1, C / ng),
         "Min(1, c/|g|)**2": np.minimum(1, C / ng) ** 2}
    known = {"E[g/|g|]": ("g", "1/|g|"), "E[g g^T/|g|]": ("ggT", "1/|g|"), "E[g g^T/|g|**2]": ("ggT", "|g|**(-2)"),
             "E[g*Min(1, c/|g|)]": ("g", "Min(1, c/|g|)"), "E[g g^T*Min(1, c/|g|)**2]": ("ggT", "Min(1, c/|g|)**2")}
    out = {}
    for a in sde.atoms:
        tensor, key = known[a.display()]
        w = r[key]
        out[a] = (w[:, None] * g).mean(0).reshape(3, 1) if tensor == "g" else np.einsum("n,ni,nj->ij", w, g, g) / len(g)
    return out


def _predicted(sde: VectorSDE, xi: np.ndarray):
    """Drift and covariance/eta of the SDE with the atoms from the test's Monte Carlo (and their standard errors)."""
    env = dict(grad=GRAD, H=H, Sigma=SIG, x=X, rho=RHO, c=C, eta=1.0)

    def stats(s):
        atoms = _atom_values(sde, GRAD + s)
        b = sde.evaluate("drift", atoms=atoms, **env).ravel()
        cov = sde.evaluate("covariance", atoms=atoms, **env)
        return np.concatenate([b, cov.ravel()])

    v, se = _batched(stats, xi)
    return v[:3], se[:3], v[3:].reshape(3, 3), se[3:].reshape(3, 3)


@pytest.mark.parametrize("name", ["usam", "sam", "nsgd", "clip_sgd"])
def test_one_step_moments_match_discrete_monte_carlo(name):
    sde = sd.derive(name)
    assert isinstance(sde, VectorSDE) and sde.tau == sd.sym("eta")
    m, m_se, c, c_se = _moments(name, 0.05, _noise(1))
    b, b_se, cp, cp_se = _predicted(sde, _noise(2))
    tol_m = 5 * np.hypot(m_se, b_se) + 1e-12
    tol_c = 5 * np.hypot(c_se, cp_se) + 1e-12
    assert np.all(np.abs(m - b) < tol_m), (name, m, b, tol_m)
    assert np.all(np.abs(c - cp) < tol_c), (name, c, cp, tol_c)
    # the drift is not trivially SGD's (-grad): the check above can tell the optimizers apart
    if name != "usam":
        assert np.abs(b + GRAD).max() > 10 * tol_m.max()


def test_usam_exact_form_and_published_drift():
    """USAM on an additive-noise quadratic: Delta = -eta (I + rho H)(H x + xi) exactly, so the drift is
    -(I + rho H) grad f and D D^T = eta (I + rho H) Sigma (I + rho H).  Compagnoni et al. (2023) write the drift as
    -grad(f + rho/2 E|grad f_gamma|^2); with E|grad f_gamma|^2 = |H x|^2 + tr Sigma (Sigma constant) this is the same
    vector: checked by sympy differentiation of their modified loss, independently of the engine."""
    sde = sd.derive("usam")
    assert str(sde).splitlines()[1].strip() == "dX = -(I + rho*H) grad f dt + sqrt(eta)(I + rho*H) Sigma^(1/2) dW"
    assert sde.atoms == ()
    xs = sp.symbols("x1:4")
    xv = sp.Matrix(xs)
    Hs, Ss = sp.Matrix(H), sp.Matrix(SIG)
    f = (xv.T * Hs * xv)[0] / 2
    modified = f + sp.Rational(2, 5) / 2 * (((Hs * xv).T * (Hs * xv))[0] + Ss.trace())  # rho = 0.4
    published = -sp.Matrix([sp.diff(modified, s) for s in xs]).subs(dict(zip(xs, X)))
    env = dict(grad=GRAD, H=H, Sigma=SIG, x=X, rho=0.4, eta=0.01)
    np.testing.assert_allclose(sde.evaluate("drift", **env).ravel(), np.array(published, dtype=float).ravel(),
                               rtol=1e-12)
    # diffusion: the published first-order covariance Sigma + rho (H Sigma + Sigma H) is ours minus rho**2 H Sigma H
    cov = sde.evaluate("covariance", **env) / 0.01
    first_order = SIG + 0.4 * (H @ SIG + SIG @ H)
    np.testing.assert_allclose(cov - first_order, 0.16 * H @ SIG @ H, atol=1e-12)
    D = sde.evaluate("diffusion", **env)
    np.testing.assert_allclose(D @ D.T, sde.evaluate("covariance", **env), atol=1e-12)


def test_sam_drift_is_gradient_of_published_modified_loss():
    """Compagnoni et al.: SAM's drift is -grad(f + rho E|grad f_gamma|).  The gradient of E|H x + xi| by central
    differences of a Monte Carlo with common noise (h = 1e-4), against the engine's drift -(grad f + rho H E[g/|g|])
    with the atom from the same noise sample."""
    sde = sd.derive("sam")
    xi = _noise(3, 200_000)

    def loss(x):
        return X @ H @ X / 2 if x is None else x @ H @ x / 2 + RHO * np.linalg.norm(x @ H.T + xi, axis=1).mean()

    h = 1e-4
    fd = np.array([(loss(X + h * e) - loss(X - h * e)) / (2 * h) for e in np.eye(3)])
    atoms = _atom_values(sde, GRAD + xi)
    b = sde.evaluate("drift", atoms=atoms, grad=GRAD, H=H, Sigma=SIG, rho=RHO).ravel()
    np.testing.assert_allclose(-b, fd, atol=1e-6)


def test_nsgd_and_clip_forms():
    s = sd.derive("nsgd")
    assert [a.display() for a in s.atoms] == ["E[g/|g|]", "E[g g^T/|g|**2]"]
    assert str(s).splitlines()[1].strip() == "dX = -E[g/|g|] dt + sqrt(eta)*C^(1/2) dW"
    c = sd.derive("clip_sgd")
    assert {a.display() for a in c.atoms} == {"E[g*Min(1, c/|g|)]", "E[g g^T*Min(1, c/|g|)**2]"}
    # with c far above |g| the clipped update is SGD: drift -grad f, covariance eta*Sigma
    big = dict(grad=GRAD, H=H, Sigma=SIG, x=X, c=1e6, eta=0.01)
    g = GRAD + _noise(4, 100_000)
    atoms = {}
    for a in c.atoms:
        atoms[a] = g.mean(0).reshape(3, 1) if a.tensor == "g" else g.T @ g / len(g)
    np.testing.assert_allclose(c.evaluate("drift", atoms=atoms, **big).ravel(), -g.mean(0), rtol=1e-12)
    np.testing.assert_allclose(c.evaluate("covariance", atoms=atoms, **big) / 0.01, np.cov(g.T, bias=True), atol=1e-12)


def test_user_vector_update_equals_builtin():
    x, g = sd.vectors("x g")
    eta, c = sd.sym("eta"), sd.sym("c")
    opt = sd.from_update("my_clip", {"x": x - eta * sd.minimum(1, c / sd.norm(g)) * g},
                         hypers={"eta": (1e-2, "lr"), "c": (1.0, "positive")})
    mine, ref = sd.derive(opt), sd.derive("clip_sgd")
    assert mine.to_dict()["drift"] == ref.to_dict()["drift"]
    assert mine.to_dict()["covariance"] == ref.to_dict()["covariance"]
    # fresh minibatch at the perturbed point: USAM's noise terms no longer add up, Cov = Sigma + rho^2 H Sigma H
    rho = sd.sym("rho")
    fresh = sd.from_update("usam_fresh", {"x": x - eta * sd.grad_at(x + rho * g, fresh=True)},
                           hypers={"eta": (1e-2, "lr"), "rho": (0.1, "positive")})
    s = sd.derive(fresh)
    env = dict(grad=GRAD, H=H, Sigma=SIG, x=X, rho=RHO, eta=1.0)
    np.testing.assert_allclose(s.evaluate("drift", **env).ravel(), -(np.eye(3) + RHO * H) @ GRAD, rtol=1e-12)
    np.testing.assert_allclose(s.evaluate("covariance", **env), SIG + RHO**2 * H @ SIG @ H, atol=1e-12)
    # a matrix-vector product: preconditioned SGD x - eta*A g
    A = sd.matrix("A", symmetric=True)
    pre = sd.derive(sd.from_update("precond", {"x": x - eta * (A * g)}, hypers={"eta": (1e-2, "lr")}))
    Am = np.array([[1.0, 0.2, 0.0], [0.2, 2.0, 0.1], [0.0, 0.1, 0.5]])
    np.testing.assert_allclose(pre.evaluate("covariance", A=Am, grad=GRAD, Sigma=SIG, eta=1.0), Am @ SIG @ Am,
                               atol=1e-12)


@pytest.mark.parametrize("name", ["usam", "sam", "nsgd", "clip_sgd"])
def test_json_round_trip(name):
    sde = sd.derive(name)
    back = VectorSDE.from_json(sde.to_json())
    assert back.to_json() == VectorSDE.from_json(back.to_json()).to_json()
    env = dict(grad=GRAD, H=H, Sigma=SIG, x=X, rho=RHO, c=C, eta=0.02)
    atoms = _atom_values(sde, GRAD + _noise(5, 20_000))
    for what in ("drift", "diffusion", "covariance"):
        np.testing.assert_allclose(back.evaluate(what, atoms=atoms, **env), sde.evaluate(what, atoms=atoms, **env),
                                   atol=1e-12)
    assert sde.latex().startswith("dX_t = ") and "\\eta" in sde.latex()
    assert ("\\Sigma" in sde.latex()) == (name in ("usam", "sam"))


def test_json_is_never_evaluated():
    d = sd.derive("usam").to_dict()
    for bad in ("__import__('os').system('true')", "grad.T", "lambda: 1", "H*H*grad*grad"):
        with pytest.raises(SdederiveError):
            VectorSDE.from_json(json.dumps({**d, "drift": bad}))
    with pytest.raises(SdederiveError, match="shape"):
        VectorSDE.from_json(json.dumps({**d, "drift": "H"}))
    with pytest.raises(SdederiveError, match="kind"):
        VectorSDE.from_json(json.dumps({k: v for k, v in d.items() if k != "kind"}))


def test_refusals_say_why():
    x, g = sd.vectors("x g")
    eta = sd.sym("eta")
    hyp = {"eta": (1e-2, "lr")}
    with pytest.raises(ExpectationError, match="not a function of |g| alone"):
        sd.derive(sd.from_update("bad_norm", {"x": x - eta * g / sd.norm(x + g)}, hypers=hyp))
    with pytest.raises(ExpectationError, match="coordinate-wise map tanh"):
        sd.derive(sd.from_update("vtanh", {"x": x - eta * sd.coordinatewise(sp.tanh, g)}, hypers=hyp))
    with pytest.raises(ExpectationError, match="sign"):
        sd.derive(sd.from_update("mixed", {"x": x - eta * (sd.coordinatewise(sp.sign, g) + g)}, hypers=hyp))
    with pytest.raises(RegimeMismatchError, match="diverges as eta -> 0"):
        sd.derive(sd.from_update("no_lr", {"x": x - g}, hypers=hyp))
    with pytest.raises(RegimeMismatchError, match="in the regimes sgd, rho-eta, high-dim only; got regime 'balanced'"):
        sd.derive("sam", regime="balanced")
    with pytest.raises(NoiseModelError, match="Gaussian"):
        sd.derive("nsgd", noise="minibatch")
    with pytest.raises(NoiseModelError, match="positive semi-definite"):
        sd.derive("usam", Sigma=[[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(SdederiveError, match="order"):
        sd.derive("usam", order=3)
    with pytest.raises(SpecError, match="'H' is not available"):  # auxiliary states are names other than these
        sd.vectors("H")
    with pytest.raises(SpecError, match="dot"):
        g * g
    with pytest.raises(SpecError, match="uses no gradient"):
        sd.from_update("still", {"x": 2 * x}, hypers=hyp)
    with pytest.raises(SpecError, match="not hyperparameters"):
        sd.from_update("undeclared", {"x": x - sd.sym("lr2") * g}, hypers=hyp)


def test_signsgd_with_correlated_noise():
    """SignSGD written as a vector update with a full Sigma: drift -erf(grad/sqrt(2 diag Sigma)) and the sign-sign
    covariance from bivariate normal orthant probabilities, against a Monte Carlo of the discrete update and against
    scipy's bivariate normal CDF; at grad = 0 the correlation is (2/pi) arcsin(r_ij)."""
    from scipy.special import ndtr
    from scipy.stats import multivariate_normal

    x, g = sd.vectors("x g")
    eta = sd.sym("eta")
    sde = sd.derive(sd.from_update("vsign", {"x": x - eta * sd.coordinatewise(sp.sign, g)}, hypers={"eta": (0.01, "lr")}))
    assert sde.atoms == ()
    mu = np.array([0.3, -0.2, 0.0])
    env = dict(grad=mu, Sigma=SIG, eta=1.0)
    sg = np.sign(mu + _noise(6))
    full = np.concatenate([sg.mean(0), np.cov(sg.T).ravel()])
    parts = np.array([np.concatenate([b.mean(0), np.cov(b.T).ravel()]) for b in np.array_split(sg, K)])
    se = parts.std(0, ddof=1) / np.sqrt(K)
    pred = np.concatenate([-sde.evaluate("drift", **env).ravel(), sde.evaluate("covariance", **env).ravel()])
    assert np.all(np.abs(full - pred) < 5 * se + 1e-12), (full, pred, se)
    sdv = np.sqrt(np.diag(SIG))
    a = mu / sdv
    second = sde.evaluate("covariance", **env) + np.outer(pred[:3], pred[:3])
    for i in range(3):
        for j in range(i + 1, 3):
            r = SIG[i, j] / (sdv[i] * sdv[j])
            p = multivariate_normal(mean=[0, 0], cov=[[1, r], [r, 1]]).cdf([a[i], a[j]])
            assert abs(second[i, j] - (4 * p - 2 * ndtr(a[i]) - 2 * ndtr(a[j]) + 1)) < 1e-7
    zero = sde.evaluate("covariance", grad=np.zeros(3), Sigma=SIG, eta=1.0)
    np.testing.assert_allclose(zero, 2 / np.pi * np.arcsin(SIG / np.outer(sdv, sdv)), atol=1e-12)
    back = VectorSDE.from_json(sde.to_json())
    np.testing.assert_allclose(back.evaluate("covariance", **env), sde.evaluate("covariance", **env), atol=1e-14)


def _one_step_mean_error(sde: VectorSDE, eta: float, disc_mean: np.ndarray, env: dict) -> float:
    """|E[X_eta] - x - E[Delta]| for the SDE's drift on the quadratic (the drift is M x, linear: the mean of the
    SDE after time eta is expm(M eta) x, exactly) against the discrete one-step mean."""
    from scipy.linalg import expm

    M = np.column_stack([sde.evaluate("drift", **{**env, "eta": eta, "grad": H @ e}).ravel() for e in np.eye(3)])
    return float(np.abs(expm(M * eta) @ X - X - disc_mean).max())


def test_order2_modified_equations():
    """Li, Tai & E's order-2 SME for SGD with a full Sigma: drift -grad(f + eta/4 |grad f|^2) (sympy, independent);
    USAM with rho = r*eta (regime 'rho-eta') at order 2: drift -grad(f + (rho/2 + eta/4)|grad f|^2).  Both: the
    one-step mean of the SDE matches the discrete one to O(eta**3) (halving eta divides the error by ~8), the order-1
    SDE only to O(eta**2) (~4)."""
    sgd2 = sd.derive("sgd", Sigma="full", order=2)
    assert str(sd.derive("sgd", Sigma="full")).splitlines()[1].strip() == "dX = -grad f dt + sqrt(eta)*Sigma^(1/2) dW"
    xs = sp.symbols("x1:4")
    xv, Hs = sp.Matrix(xs), sp.Matrix(H)
    eta_v, r_v = 0.02, 3.0
    gradf = Hs * xv
    for sde, extra in ((sgd2, 0), (sd.derive("usam", regime="rho-eta", order=2), r_v * eta_v / 2)):
        modified = (xv.T * Hs * xv)[0] / 2 + (eta_v / 4 + extra) * (gradf.T * gradf)[0]
        ref = -sp.Matrix([sp.diff(modified, s) for s in xs]).subs(dict(zip(xs, X)))
        got = sde.evaluate("drift", grad=GRAD, H=H, Sigma=SIG, x=X, eta=eta_v, r=r_v).ravel()
        np.testing.assert_allclose(got, np.array(ref, dtype=float).ravel(), rtol=1e-12)
    for name, kw, disc in (("sgd", dict(Sigma="full"), lambda e: -e * GRAD),
                           ("usam", dict(regime="rho-eta"), lambda e: -e * (np.eye(3) + r_v * e * H) @ GRAD)):
        env = dict(H=H, Sigma=SIG, x=X, r=r_v)
        errs = {o: [_one_step_mean_error(sd.derive(name, order=o, **kw), e, disc(e), env) for e in (0.04, 0.02)]
                for o in (1, 2)}
        assert 3.5 < errs[1][0] / errs[1][1] < 4.5, (name, errs)
        assert 7.0 < errs[2][0] / errs[2][1] < 9.0, (name, errs)
    with pytest.raises(SdederiveError, match="order=2 for 'sam'"):
        sd.derive("sam", order=2)
    with pytest.raises(NoiseModelError, match="not of the form x \\+ a\\*g"):
        sd.derive("adam", Sigma="full")
    with pytest.raises(RegimeMismatchError, match="has no rho"):
        sd.derive("nsgd", regime="rho-eta")
    sam2 = sd.derive("sam", regime="rho-eta", order=2)
    assert [a.display() for a in sam2.atoms] == ["E[g/|g|]"]
    back = VectorSDE.from_json(sam2.to_json())
    assert back.order == 2 and back.regime == "rho-eta"


def test_high_dimensional_regime():
    """Regime 'high-dim' replaces |g| by sqrt(|grad f|^2 + tr Sigma): nsgd's drift -grad f/sqrt(|grad f|^2 + tr Sigma)
    against a Monte Carlo of E[g/|g|] (projected on grad f): off by about 1 % at d = 4, within 0.1 % and 5 standard
    errors at d = 400, where |g| concentrates."""
    sde = sd.derive("nsgd", regime="high-dim")
    assert sde.atoms == () and "tr Sigma" in str(sde)
    rel = {}
    for d, n in ((4, 200_000), (400, 20_000)):
        rng = np.random.default_rng(d)
        sig = rng.uniform(0.5, 1.5, d)
        grad = rng.standard_normal(d) * np.sqrt(sig.mean())
        g = grad + rng.standard_normal((n, d)) * np.sqrt(sig)
        e = grad / np.linalg.norm(grad)
        proj = (g @ e) / np.linalg.norm(g, axis=1)
        pred = -sde.evaluate("drift", grad=grad, Sigma=np.diag(sig), eta=1.0).ravel() @ e
        rel[d] = abs(proj.mean() - pred) / pred
        if d == 400:
            assert abs(proj.mean() - pred) < 5 * proj.std() / np.sqrt(n)
    assert rel[400] < 1e-3 < 5e-3 < rel[4], rel


def test_sums_of_eta_terms_are_expanded_term_by_term():
    """x - eta*g - eta*(A g): the coefficient (-1/eta)(-eta I - eta A) must become I + A, not be evaluated at eta = 0
    as a whole (0 * (1/0))."""
    x, g = sd.vectors("x g")
    eta = sd.sym("eta")
    A = sd.matrix("A")
    s = sd.derive(sd.from_update("two_terms", {"x": x - eta * g - eta * (A * g)}, hypers={"eta": (0.01, "lr")}))
    Am = np.array([[0.5, 0.1, 0.0], [0.0, 0.2, 0.3], [0.1, 0.0, 0.4]])
    np.testing.assert_allclose(s.evaluate("drift", grad=GRAD, A=Am, Sigma=SIG, eta=1.0).ravel(),
                               -(np.eye(3) + Am) @ GRAD, rtol=1e-12)
    np.testing.assert_allclose(s.evaluate("covariance", grad=GRAD, A=Am, Sigma=SIG, eta=1.0),
                               (np.eye(3) + Am) @ SIG @ (np.eye(3) + Am).T, atol=1e-12)


def test_isotropic_closed_form_of_the_unit_mean():
    """E[g/|g|] for Sigma = s^2 I through the noncentral chi mean (1F1): erf at d = 1, and a Monte Carlo at d = 5;
    evaluate_atom uses it (exact: independent of the random generator)."""
    from scipy.special import erf

    from sdederive.sde_vector import evaluate_atom, isotropic_unit_mean

    np.testing.assert_allclose(isotropic_unit_mean([0.7], 0.3).ravel(), erf(0.7 / np.sqrt(0.6)), rtol=1e-12)
    rng = np.random.default_rng(7)
    mu, s2 = rng.standard_normal(5), 0.8
    g = mu + np.sqrt(s2) * rng.standard_normal((400_000, 5))
    u = g / np.linalg.norm(g, axis=1, keepdims=True)
    exact = isotropic_unit_mean(mu, s2).ravel()
    assert np.all(np.abs(u.mean(0) - exact) < 5 * u.std(0) / np.sqrt(len(u)))
    atom = sd.derive("nsgd").atoms[0]
    a = evaluate_atom(atom, mu, s2 * np.eye(5), rng=np.random.default_rng(1))
    b = evaluate_atom(atom, mu, s2 * np.eye(5), rng=np.random.default_rng(2))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a.ravel(), exact, rtol=1e-14)


def test_isotropic_radial_atoms_by_the_noncentral_chi_square_identities():
    """isotropic_radial (E[r(|g|) T(g)] for Sigma = s^2 I through chi2'_{d}, chi2'_{d+2}, chi2'_{d+4} and quadrature)
    agrees with the two hypergeometric closed forms to 1e-12, and with a Monte Carlo of clipping's atoms
    (Min(1, c/|g|) and its square, tensors 1, g, g g^T, g o g) at d = 4 to 5 standard errors per entry; the atoms of
    sd.derive("clip_sgd") are evaluated by it (the same numbers for any random generator), a full Sigma still by
    Monte Carlo."""
    import sympy as sp

    from sdederive.sde_vector import (NORM_G, ExpectationAtom, evaluate_atom, isotropic_radial, isotropic_unit_mean,
                                      isotropic_unit_second)

    rng = np.random.default_rng(11)
    mu, s2 = np.array([0.9, -0.4, 0.3, 0.0]), 0.5
    np.testing.assert_allclose(isotropic_radial(ExpectationAtom("g", 1 / NORM_G), mu, s2),
                               isotropic_unit_mean(mu, s2), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(isotropic_radial(ExpectationAtom("ggT", NORM_G**-2), mu, s2),
                               isotropic_unit_second(mu, s2), rtol=1e-12, atol=1e-15)
    c = sp.Symbol("c")
    n = 1_000_000
    g = mu + np.sqrt(s2) * rng.standard_normal((n, 4))
    R = np.linalg.norm(g, axis=1)
    for integrand, r in ((sp.Min(1, c / NORM_G), np.minimum(1, 1.2 / R)),
                         (sp.Min(1, c / NORM_G) ** 2, np.minimum(1, 1.2 / R) ** 2)):
        assert 0.1 < np.mean(r < 1) < 0.9  # the clipping is active on part of the law
        for T, X in (("1", r[:, None]), ("g", r[:, None] * g), ("gsq", r[:, None] * g**2),
                     ("ggT", (r[:, None, None] * g[:, :, None] * g[:, None, :]).reshape(n, -1))):
            v = isotropic_radial(ExpectationAtom(T, integrand), mu, s2, {"c": 1.2}).ravel()
            se = X.std(0) / np.sqrt(n)
            assert np.all(np.abs(v - X.mean(0)) <= 5 * se + 1e-15), (integrand, T)
    atoms = sd.derive("clip_sgd").atoms
    assert atoms
    for atom in atoms:
        a = evaluate_atom(atom, mu, s2 * np.eye(4), {"c": 1.2}, rng=np.random.default_rng(1))
        b = evaluate_atom(atom, mu, s2 * np.eye(4), {"c": 1.2}, rng=np.random.default_rng(2))
        np.testing.assert_array_equal(a, b)
    full = np.diag([0.5, 0.6, 0.5, 0.5])
    a = evaluate_atom(atoms[0], mu, full, {"c": 1.2}, rng=np.random.default_rng(1), n=2000)
    b = evaluate_atom(atoms[0], mu, full, {"c": 1.2}, rng=np.random.default_rng(2), n=2000)
    assert not np.array_equal(a, b)


def test_isotropic_closed_form_of_the_unit_second_moment():
    """E[g g^T/|g|^2] for Sigma = s^2 I (NSGD's covariance atom): trace 1, I/d at grad = 0, against a Monte Carlo at
    d = 5 and d = 2 (5 standard errors per entry); evaluate_atom uses it (independent of the random generator)."""
    from sdederive.sde_vector import evaluate_atom, isotropic_unit_second

    np.testing.assert_allclose(isotropic_unit_second(np.zeros(4), 0.5), np.eye(4) / 4, rtol=1e-14)
    rng = np.random.default_rng(8)
    for d, s2 in ((5, 0.4), (2, 2.0)):
        mu = rng.standard_normal(d)
        g = mu + np.sqrt(s2) * rng.standard_normal((400_000, d))
        q = np.einsum("ni,nj->nij", g, g) / (g * g).sum(1)[:, None, None]
        exact = isotropic_unit_second(mu, s2)
        assert abs(np.trace(exact) - 1) < 1e-12
        assert np.all(np.abs(q.mean(0) - exact) < 5 * q.std(0) / np.sqrt(len(q)) + 1e-12), (d, q.mean(0), exact)
    atom = [a for a in sd.derive("nsgd").atoms if a.tensor == "ggT"][0]
    a = evaluate_atom(atom, mu, s2 * np.eye(d), rng=np.random.default_rng(1))
    b = evaluate_atom(atom, mu, s2 * np.eye(d), rng=np.random.default_rng(2))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, isotropic_unit_second(mu, s2), rtol=1e-14)


def test_vector_specs_and_sdes_pickle():
    """Sweeps and process pools pickle specs and results: the norm symbols carry their vectors through it."""
    import pickle

    from sdederive.spec import vector as V

    opt = V.get("sam")
    back = pickle.loads(pickle.dumps(opt))
    assert back == opt and hash(back) == hash(opt)
    assert str(pickle.loads(pickle.dumps(sd.derive("sam")))) == str(sd.derive("sam"))

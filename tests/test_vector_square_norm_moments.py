"""Gaussian expectations with the integrand `|g|^2` in closed form (Isserlis), not as atoms: checked against an
independent Monte Carlo of `g ~ N(grad, Sigma)`, through JSON, and by simulating the SDE against the discrete
optimizer."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import sympy as sp

import sdederive as sd
from sdederive.sde_vector import NORM_G, VectorSDE, evaluate, square_norm_moment

ETA = sp.Symbol("eta", positive=True)
RNG = np.random.default_rng(3)
D = 3
_A = RNG.standard_normal((D, D))
SIGMA = _A @ _A.T / D + 0.2 * np.eye(D)
GRAD = np.array([0.5, -0.3, 0.8])
X = np.array([0.2, 0.4, -0.1])


def _samples(n: int = 2_000_000):
    """`g` and `|g|^2` by numpy's generator (not the library's)."""
    g = GRAD + np.random.default_rng(11).standard_normal((n, D)) @ np.linalg.cholesky(SIGMA).T
    return g, (g ** 2).sum(1)


def _opt(name, update):
    x, g = sd.vectors("x g")
    return sd.from_update(name, {"x": update(x, g)}, hypers={"eta": (0.01, "lr")})


def test_closed_forms_match_a_monte_carlo():
    g, n2 = _samples()
    env = {"grad": GRAD, "Sigma": SIGMA}
    for tensor, mc in (("g", n2[:, None] * g), ("ggT", None)):
        closed = evaluate(square_norm_moment(tensor, 3 * NORM_G ** 2), env)
        if tensor == "g":
            want, se = 3 * mc.mean(0), 3 * mc.std(0) / np.sqrt(len(mc))
            assert np.all(np.abs(closed.ravel() - want) < 5 * se), (closed.ravel(), want, se)
        else:
            w = np.sqrt(n2)[:, None] * g  # E[|g|^2 g g^T] = E[w w^T]
            want = 3 * (w.T @ w) / len(w)
            se = 3 * np.sqrt(((w[:, :, None] * w[:, None, :]) ** 2).mean(0) / len(w))
            assert np.all(np.abs(closed - want) < 5 * se), (closed, want, se)
    # not of the form c |g|^2: no closed form claimed
    assert square_norm_moment("g", NORM_G) is None and square_norm_moment("g", NORM_G ** 2 + 1) is None
    assert square_norm_moment("1", NORM_G ** 2) is None


def test_derived_sdes_use_them_and_keep_the_rest_as_atoms():
    sde = sd.derive(_opt("sqnorm_g", lambda x, g: x - ETA * sd.norm(g) ** 2 * g))
    assert not sde.drift_vector.has(sd.sde_vector.ExpectationAtom)  # E[|g|^2 g] closed
    assert [a.display() for a in sde.atoms] == ["E[g g^T*|g|**4]"]  # sixth moments: still an atom
    g, n2 = _samples()
    b = sde.evaluate("drift", grad=GRAD, Sigma=SIGMA, x=X, H=np.eye(D), eta=0.01).ravel()
    f = n2[:, None] * g
    assert np.all(np.abs(b + f.mean(0)) < 5 * f.std(0) / np.sqrt(len(f)))
    again = VectorSDE.from_json(sde.to_json())
    assert again.to_json() == sde.to_json() and not again.drift_vector.has(sd.sde_vector.ExpectationAtom)
    # |g| g: the covariance's E[|g|^2 g g^T] closed, E[|g| g] an atom
    sde = sd.derive(_opt("norm_g", lambda x, g: x - ETA * sd.norm(g) * g))
    assert [a.display() for a in sde.atoms] == ["E[g*|g|]"]
    # the multivariate t: E[|g|^2 g] closed too; its sixth moments, finite for nu > 6, stay an atom
    t = sd.derive(_opt("sqnorm_g_t", lambda x, g: x - ETA * sd.norm(g) ** 2 * g), "student-t", nu=9)
    assert [a.tensor for a in t.atoms] == ["ggT"]
    with pytest.raises(sd.SdederiveError, match=r"finite only for nu > 4"):  # E[|g|^2 g g^T] of |g| g
        sd.derive(_opt("norm_g_t", lambda x, g: x - ETA * sd.norm(g) * g), "student-t", nu=3.5)


@pytest.mark.parametrize("nu", [7.0, 12.0])
def test_student_t_closed_forms_match_a_monte_carlo(nu):
    """`xi = Sigma^(1/2) z sqrt(nu/W)`: the Gaussian forms with `E[xi xi^T] = nu/(nu - 2) Sigma` and the fourth
    moments times `nu^2/((nu - 2)(nu - 4))` (a numpy sample of the t law, not the library's)."""
    r = np.random.default_rng(5)
    n = 4_000_000
    w = r.chisquare(nu, n)
    g = GRAD + (r.standard_normal((n, D)) @ np.linalg.cholesky(SIGMA).T) * np.sqrt(nu / w)[:, None]
    n2 = (g ** 2).sum(1)
    env = {"grad": GRAD, "Sigma": SIGMA}
    f = n2[:, None] * g  # E[|g|^2 g]: the MC variance needs sixth moments, finite for nu > 6
    closed = evaluate(square_norm_moment("g", NORM_G ** 2, sp.Float(nu)), env).ravel()
    assert np.all(np.abs(closed - f.mean(0)) < 5 * f.std(0) / np.sqrt(n)), (closed, f.mean(0))
    if nu > 8:  # E[|g|^2 g g^T]: its MC variance needs eighth moments
        v = np.sqrt(n2)[:, None] * g
        want = (v.T @ v) / n
        se = np.sqrt(((v[:, :, None] * v[:, None, :]) ** 2).mean(0) / n)
        closed = evaluate(square_norm_moment("ggT", NORM_G ** 2, sp.Float(nu)), env)
        assert np.all(np.abs(closed - want) < 5 * se), (closed, want, se)
        gauss = evaluate(square_norm_moment("ggT", NORM_G ** 2), env)
        assert np.abs(gauss - want).max() > 10 * se.max()  # the t law's correction is resolved


@pytest.mark.parametrize("name, update", [("sqnorm_g", lambda x, g: x - ETA * sd.norm(g) ** 2 * g),
                                          ("norm_g", lambda x, g: x - ETA * sd.norm(g) * g)])
def test_their_sdes_simulate_like_the_discrete_optimizer(name, update):
    d = 4
    rng = np.random.default_rng(0)
    Q = rng.normal(size=(d, d))
    A = rng.normal(size=(d, d)) / np.sqrt(d)
    H = Q @ Q.T / d + 0.3 * np.eye(d)
    prob = sd.Quadratic(H=(H + H.T) / 2, Sigma=0.2 * A @ A.T + 0.05 * np.eye(d), x0=np.full(d, 0.6))
    opt = _opt(name, update)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runs = [sd.compile(o, prob).run(paths=20000, steps=100, eta=0.01, seed=1, save_every=100)
                for o in (sd.derive(opt), opt)]
    (a, sa), (b, sb) = [(r.mean["loss"][-1], r.se["loss"][-1]) for r in runs]
    start = float(prob.loss(prob.x0))
    assert a < 0.8 * start  # the loss moved: the comparison is not of two starts
    assert abs(a - b) < 4 * np.hypot(sa, sb), (a, b, sa, sb)

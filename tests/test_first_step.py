"""The simulators' start: E[F(mu + s z)] vectorised over coordinates, against closed forms and against
scipy's adaptive quadrature of the expected first step."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate, special, stats

import sdederive as sd
from sdederive.simulate._quadrature import noise_expectation

MU = np.array([1.0, 0.3, -2.0, 1e-9, 5.0, 30.0, 1.0, -40.0, 0.0, 1e6])
S = np.array([1.0, 2.0, 0.5, 1.0, 1e-6, 1.0, 0.0, 2.0, 3.0, 1.0])


@pytest.mark.parametrize("nu", [None, 30.0, 3.0, 2.5, 1.5, 0.7])
def test_closed_forms(nu):
    D = stats.norm if nu is None else stats.t(nu)
    r = MU / np.where(S > 0, S, 1.0)
    sign = np.where(S > 0, 2 * D.cdf(r) - 1, np.sign(MU))
    np.testing.assert_allclose(noise_expectation(np.sign, MU, S, nu), sign, rtol=0, atol=1e-12)
    # E[max(g, 0)] = mu P(g > 0) + s E[z; z > -mu/s]; for t: E[z; z > a] = (nu + a^2)/(nu - 1) f(a)
    if nu is None or nu > 1:
        a = -r
        tail = stats.norm.pdf(a) if nu is None else (nu + a**2) / (nu - 1) * stats.t.pdf(a, nu)
        relu = np.where(S > 0, MU * D.sf(a) + S * tail, np.maximum(MU, 0))
        np.testing.assert_allclose(noise_expectation(lambda g: np.maximum(g, 0), MU, S, nu), relu,
                                   rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(noise_expectation(lambda g: g, MU, S, nu), MU, rtol=1e-12, atol=1e-11)
    if nu is None or nu > 2:
        var = S**2 * (1.0 if nu is None else nu / (nu - 2))
        np.testing.assert_allclose(noise_expectation(lambda g: g**2, MU, S, nu), MU**2 + var, rtol=1e-9)


def test_gaussian_abs_and_clip():
    """E|g| = s sqrt(2/pi) exp(-r^2/2) + mu erf(r/sqrt 2); E clip(g, -1, 1) from the normal cdf/pdf."""
    mu, s = MU[S > 0], S[S > 0]
    r = mu / s
    want = s * np.sqrt(2 / np.pi) * np.exp(-(r**2) / 2) + mu * special.erf(r / np.sqrt(2))
    np.testing.assert_allclose(noise_expectation(np.abs, mu, s), want, rtol=1e-10, atol=1e-12)
    a, b = (-1 - mu) / s, (1 - mu) / s
    P = stats.norm
    clip = -P.cdf(a) + P.sf(b) + mu * (P.cdf(b) - P.cdf(a)) + s * (P.pdf(a) - P.pdf(b))
    kinks = np.tile([-1.0, 1.0], (mu.size, 1))
    np.testing.assert_allclose(noise_expectation(lambda g: np.clip(g, -1, 1), mu, s, breaks=kinks), clip,
                               rtol=1e-10, atol=1e-12)
    # without the kinks the fixed rule is off by up to ~2e-4: the break points are what makes it exact
    assert np.max(np.abs(noise_expectation(lambda g: np.clip(g, -1, 1), mu, s) - clip)) > 1e-6


def _quad_first_step(opt, x0, gr, sg, hv, nu=None):
    """The reference: scipy's adaptive quad per coordinate and state, split at g = 0."""
    import sympy as sp

    from sdederive.symbols import sym

    dens = stats.t(nu).pdf if nu else stats.norm.pdf
    args = [sym("x"), sym("g"), sym("k")] + [s.symbol for s in opt.states] + [h.symbol for h in opt.hypers]
    out = {}
    for name, expr in opt.update:
        f = sp.lambdify(args, expr, "math")
        vals = []
        for i in range(len(x0)):
            st = [float(s.init) for s in opt.states]
            hvals = [hv[h.name] for h in opt.hypers]
            z0 = -gr[i] / sg[i]
            # finite pieces cut at z0 (quad over an infinite interval misses a bulk far from its end),
            # plus the tails for Student-t
            cuts = sorted({-60.0, 60.0, min(max(z0, -60.0), 60.0)})
            pieces = list(zip(cuts[:-1], cuts[1:])) + ([(-np.inf, -60.0), (60.0, np.inf)] if nu else [])

            def integrand(z, i=i, st=st, hvals=hvals, f=f):
                return f(x0[i], gr[i] + sg[i] * z, 0, *st, *hvals) * dens(z)

            vals.append(sum(integrate.quad(integrand, lo, hi, limit=400, epsabs=1e-14, epsrel=1e-12)[0]
                            for lo, hi in pieces))
        out[name] = np.array(vals)
    return out


@pytest.mark.parametrize("name, noise", [("adam", "gaussian"), ("adam", "student-t"), ("rmsprop", "gaussian"),
                                         ("signum", "gaussian")])
def test_expected_first_step_matches_adaptive_quadrature(name, noise):
    kw = {"noise": noise, "nu": 3.0} if noise == "student-t" else {}
    prob = sd.Quadratic(h=[1.0, 2.0, 0.5, 4.0], sigma=[1.0, 0.1, 3.0, 1e-3], x0=[1.0, -2.0, 0.3, 5.0], **kw)
    sim = sd.compile(sd.optimizers.get(name), prob)
    opt = sd.optimizers.get(name)
    hv = sim.resolve_hyper(0.01, None)
    got = sim._expected_first_step(opt, hv)
    gr = prob.hessian() @ prob.x0
    want = _quad_first_step(opt, prob.x0, gr, prob.sigma, hv, 3.0 if noise == "student-t" else None)
    assert set(got) == set(want)
    for k in want:
        # 1e-7: Adam's x update g/(|g| + eps) turns over within eps/sigma of the cut at g = 0, where the two
        # rules differ by ~2e-8 relative (the simulations this start feeds have Monte Carlo errors ~1e-3)
        np.testing.assert_allclose(got[k], want[k], rtol=1e-7, atol=1e-12, err_msg=k)


def test_break_points_of_clipping_and_shifted_signs():
    import sympy as sp

    from sdederive.simulate._quadrature import break_points

    g = sp.Symbol("g", real=True)
    c, a = sp.symbols("c a", positive=True)
    assert set(break_points(sp.Min(sp.Max(g, -c), c), g)) == {-c, c}
    assert break_points(sp.sign(g - a) + sp.Abs(2 * g + 1), g) == sorted([a, sp.Rational(-1, 2)], key=sp.default_sort_key)
    assert break_points(g**2 + sp.sign(g), g) == []  # g = 0 is always a cut; nothing else


def test_first_step_of_a_clipped_update_is_exact():
    """E[x - eta*clip(g, -c, c)] on a user-written update: the truncated-normal closed form."""
    import sympy as sp

    x, g = sd.symbols("x g")
    eta, c = sd.sym("eta"), sd.sym("cl")
    opt = sd.from_update("clipped", {"x": x - eta * sp.Min(sp.Max(g, -c), c)},
                         hypers={"eta": (0.1, "lr"), "cl": (0.5, "positive")})
    prob = sd.Quadratic(h=[1.0, 1.0, 1.0], sigma=[1.0, 0.2, 2.0], x0=[0.3, 2.0, -1.0])
    sim = sd.compile(opt, prob)
    got = sim._expected_first_step(opt, sim.resolve_hyper(0.1, None))["x"]
    mu, s = prob.x0, prob.sigma
    P = stats.norm
    lo, hi = (-0.5 - mu) / s, (0.5 - mu) / s
    clip = -0.5 * P.cdf(lo) + 0.5 * P.sf(hi) + mu * (P.cdf(hi) - P.cdf(lo)) + s * (P.pdf(lo) - P.pdf(hi))
    np.testing.assert_allclose(got, prob.x0 - 0.1 * clip, rtol=1e-12, atol=1e-14)


def test_timing_covers_the_whole_call():
    sim = sd.compile(sd.derive("rmsprop"), sd.Quadratic(h=[1.0, 2.0], sigma=[1.0, 1.0], x0=[1.0, 1.0]))
    res = sim.run(paths=16, steps=4, eta=1e-2, seed=0)
    t = res.timing
    assert {"compile_s", "run_s", "total_s", "start_s"} <= set(t)
    assert t["total_s"] >= t["run_s"] > 0 and t["start_s"] == pytest.approx(t["total_s"] - t["run_s"])

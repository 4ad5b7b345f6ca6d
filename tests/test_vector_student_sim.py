"""Vector simulators under the multivariate Student-t noise of the vector engine (issue 16): a problem with
`noise="multivariate-t"` draws `xi = sqrt(nu/W) Sigma^(1/2) z`, one `W ~ chi2_nu` per draw shared by the
coordinates.

* the chi-square draw and the kernel's noise against scipy's laws (KS tests) and the t law's moments: the
  covariance `nu/(nu - 2) Sigma`, `q = xi^T Sigma^-1 xi` with `q/d ~ F(d, nu)`, and `E[u_i^2 u_j^2]` of the
  whitened noise `u`, which a shared `W` makes `nu^2/((nu - 2)(nu - 4))` (independent per-coordinate t give
  `(nu/(nu - 2))^2`);
* the SDE kernels' one-step mean and covariance against the derived drift and covariance, with atoms from an
  independent numpy Monte Carlo under the t law (sampled noise: SAM, NSGD; the root form of USAM with a
  symbolic nu, whose Brownian motion stays Gaussian);
* discrete NSGD against its SDE under t: the weak error of E[loss] at t = 1 shrinks with eta;
* the refusals.

Standard errors are the samples' own (nu = 7 or more where a fourth moment's variance is needed, nu > 8).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats as st

import sdederive as sd
from sdederive.errors import SdederiveError
from sdederive.problems.io import from_dict
from sdederive.simulate.rng.philox import chi_square
from tests.helpers import VEC_H, VEC_SIG
from tests.test_vector_simulate import atoms_from_samples

X0 = np.array([0.6, -0.4, 0.5])


def _prob(nu, **kw):
    return sd.Quadratic(H=VEC_H, Sigma=VEC_SIG, x0=kw.pop("x0", X0), noise="multivariate-t", nu=nu, **kw)


def _vsgd():
    x, g = sd.vectors("x g")
    return sd.from_update("vsgd", {"x": x - sd.sym("eta") * g}, hypers={"eta": (1e-2, "lr")})


@pytest.mark.parametrize("nu", [5.0, 1.5, 0.6])
def test_chi_square_draw_has_the_chi_square_law(nu):
    """Marsaglia-Tsang (and its boost for nu < 2) against scipy's chi2 CDF; a new stream is a new draw."""
    w = np.array([chi_square(nu, 3, p, 7, 11, 0) for p in range(40_000)])
    assert st.kstest(w, st.chi2(nu).cdf).pvalue > 1e-3
    w2 = np.array([chi_square(nu, 3, p, 8, 11, 0) for p in range(2000)])
    assert abs(np.corrcoef(w[:2000], w2)[0, 1]) < 5 / np.sqrt(2000)


def _xi(nu, paths, seed):
    """The noise of one discrete SGD step with eta = 1: x1 = x0 - (H x0 + xi)."""
    prob = _prob(nu)
    res = sd.compile(_vsgd(), prob).run(paths=paths, steps=1, eta=1.0, seed=seed, keep_final=True)
    return X0 - VEC_H @ X0 - res.final["x"]


def test_discrete_noise_is_the_multivariate_t():
    d, n = 3, 200_000
    Sinv = np.linalg.inv(VEC_SIG)
    # nu = 7: covariance nu/(nu - 2) Sigma (SE of each entry from the samples), and the law of q = xi^T Sigma^-1 xi:
    # q/d ~ F(d, nu) exactly for the multivariate t (KS); independent per-coordinate t would not give it
    nu = 7.0
    xi = _xi(nu, n, 1)
    C = nu / (nu - 2) * VEC_SIG
    prod = xi[:, :, None] * xi[:, None, :]
    se = prod.std(0) / np.sqrt(n)
    assert np.all(np.abs(prod.mean(0) - C) < 5 * se), (prod.mean(0), C, se)
    q = np.einsum("ni,ij,nj->n", xi, Sinv, xi)
    assert st.kstest(q / d, st.f(d, nu).cdf).pvalue > 1e-3
    # a Gaussian with the same covariance is far from it (the test has the power to see the law)
    assert st.kstest(q * (nu - 2) / nu, st.chi2(d).cdf).pvalue < 1e-6
    # nu = 12 (eighth moments finite): with u = L^-1 xi the whitened noise, E[u_i^2 u_j^2] (i != j) is
    # E[(nu/W)^2] = nu^2/((nu - 2)(nu - 4)) for a shared W, but E[t^2]^2 = (nu/(nu - 2))^2 for independent t_nu
    # coordinates (and 1 for Gaussian ones)
    nu = 12.0
    xi = _xi(nu, n, 2)
    u2 = np.linalg.solve(np.linalg.cholesky(VEC_SIG), xi.T).T ** 2
    cross = (u2[:, 0] * u2[:, 1] + u2[:, 0] * u2[:, 2] + u2[:, 1] * u2[:, 2]) / 3
    want = nu ** 2 / ((nu - 2) * (nu - 4))
    indep = (nu / (nu - 2)) ** 2
    se = cross.std() / np.sqrt(n)
    assert abs(cross.mean() - want) < 5 * se, (cross.mean(), want, se)
    assert abs(indep - want) > 20 * se, (indep, want, se)
    # E[q^2] of q = |u|^2: d(d + 2) E[(nu/W)^2]
    q = u2.sum(1)
    se = (q ** 2).std() / np.sqrt(n)
    assert abs((q ** 2).mean() - d * (d + 2) * want) < 5 * se, ((q ** 2).mean(), d * (d + 2) * want, se)
    # a fresh seed gives new W's, and x0 plays no part in the noise
    assert not np.array_equal(xi[:10], _xi(nu, 10, 3))


def test_t_noise_does_not_depend_on_the_thread_count():
    """W is a function of (seed, step, path, stream): the same numbers with 1 and 2 threads."""
    sim = sd.compile(_vsgd(), _prob(5.0))
    a = sim.run(paths=300, steps=5, eta=0.1, seed=4, threads=1, keep_final=True)
    b = sim.run(paths=300, steps=5, eta=0.1, seed=4, threads=2, keep_final=True)
    np.testing.assert_array_equal(a.final["x"], b.final["x"])


def _t_samples(grad, Sigma, nu, n, seed):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, grad.size)) @ np.linalg.cholesky(Sigma).T
    return grad + z * np.sqrt(nu / rng.chisquare(nu, n))[:, None]


def _mc_atoms_t(sde, grad, Sigma, nu, hv, n=1_000_000, seed=5):
    """Every atom of `sde` by an independent numpy Monte Carlo over g = grad + sqrt(nu/W) L z."""
    assert all(a.law == "student-t" for a in sde.atoms)
    return atoms_from_samples(sde, _t_samples(grad, Sigma, nu, n, seed), hv)


@pytest.mark.parametrize("name, nu_sde", [("sam", 7), ("nsgd", 7), ("usam", None)])
def test_sde_one_step_moments_under_t(name, nu_sde):
    """One SDE step from x0 over many paths: mean and covariance of the increment equal drift*dt and
    covariance*dt of the SDE derived under the t law (nu = 7; USAM with a symbolic nu, which takes the problem's)."""
    nu = 7.0
    sde = sd.derive(name, noise=sd.StudentT(nu=nu_sde))
    prob = _prob(nu)
    hv = {k: v for k, v in {"eta": 0.02, "rho": 0.3}.items() if k in {h[0] for h in sde.hypers}}
    paths = 300_000
    res = sd.compile(sde, prob).run(paths=paths, steps=1, hyper=hv, seed=1, keep_final=True)
    dx = res.final["x"] - X0
    dt = hv["eta"]
    env = dict(grad=VEC_H @ X0, H=VEC_H, Sigma=VEC_SIG, x=X0, **hv, **({"nu": nu} if nu_sde is None else {}))
    atoms = _mc_atoms_t(sde, VEC_H @ X0, VEC_SIG, nu, {k: v for k, v in hv.items() if k != "eta"})
    b = sde.evaluate("drift", atoms=atoms, **env).ravel()
    C = sde.evaluate("covariance", atoms=atoms, **env) * dt
    mean = dx.mean(0)
    se_mean = dx.std(0) / np.sqrt(paths)
    assert np.all(np.abs(mean - b * dt) < 5 * se_mean + 1e-3 * np.abs(b * dt)), (mean, b * dt, se_mean)
    c = dx - mean
    prod = c[:, :, None] * c[:, None, :]
    se_cov = prod.std(0) / np.sqrt(paths)
    assert np.all(np.abs(prod.mean(0) - C) < 5 * se_cov + 2e-3 * np.abs(C).max()), (prod.mean(0), C, se_cov)
    # the t law's covariance differs from the Gaussian one's (nu/(nu - 2) = 1.4 on the Sigma part): resolved
    g = sd.derive(name)
    Cg = g.evaluate("covariance", atoms=_gauss_atoms(g, hv), grad=VEC_H @ X0, H=VEC_H, Sigma=VEC_SIG, x=X0,
                    **hv) * dt
    assert np.max(np.abs(prod.mean(0) - Cg) / (se_cov + 1e-30)) > 20


def _gauss_atoms(sde, hv):
    from sdederive.sde_vector import evaluate_atom

    return {a: evaluate_atom(a, VEC_H @ X0, VEC_SIG, {k: v for k, v in hv.items() if k != "eta"}, n=400_000)
            for a in sde.atoms}


def test_nsgd_weak_error_under_t_shrinks_with_eta():
    """|E_discrete[f(x_T)] - E_SDE[f(x_T)]| at T = 1 for NSGD under the multivariate t (nu = 5), both sides drawing
    the t law: resolved at eta = 0.2 and about 4x smaller at eta = 0.05 (weak order 1).  (The Gaussian SDE of the
    same Sigma ends 0.023 from the discrete E[loss] at eta = 0.05, 15x this test's error there; the one-step test
    above tells the two laws apart directly.)"""
    x0 = [1.5, -1.0, 1.0]
    prob = _prob(5.0, x0=x0)
    sde = sd.derive("nsgd", noise=sd.StudentT(nu=5))
    errs, ses = [], []
    for eta in (0.2, 0.05):
        steps = int(round(1.0 / eta))
        a = sd.compile("nsgd", prob).run(paths=30_000, steps=steps, eta=eta, seed=2, save_every=steps)
        b = sd.compile(sde, prob).run(paths=30_000, steps=steps, eta=eta, seed=9, save_every=steps, substeps=2)
        errs.append(abs(a.mean["loss"][-1] - b.mean["loss"][-1]))
        ses.append(np.hypot(a.se["loss"][-1], b.se["loss"][-1]))
    assert a.mean["loss"][-1] < 0.5 * a.mean["loss"][0]  # it trains
    assert errs[0] > 4 * ses[0], (errs, ses)
    assert errs[1] < errs[0] / 2 + 3 * ses[1], (errs, ses)


def test_problem_law_and_refusals():
    p = _prob(5.0)
    assert p.noise == "multivariate-t" and p.nu == 5.0
    q = from_dict(p.to_dict())
    assert q.noise == "multivariate-t" and q.nu == 5.0 and np.array_equal(q.Sigma, p.Sigma)
    assert sd.Quadratic(h=[1.0, 2.0], sigma=[1.0, 1.0], noise="mvt", nu=3).noise == "multivariate-t"
    with pytest.raises(SdederiveError, match="needs its degrees of freedom"):
        sd.Quadratic(h=[1.0, 2.0], sigma=[1.0, 1.0], noise="multivariate-t")
    with pytest.raises(SdederiveError, match="nu=-1 is invalid"):
        sd.Quadratic(h=[1.0, 2.0], sigma=[1.0, 1.0], noise="multivariate-t", nu=-1)
    with pytest.raises(SdederiveError, match="noise='multivariate-t'"):
        sd.Quadratic(H=VEC_H, Sigma=VEC_SIG, noise="student-t", nu=5)
    # the per-coordinate t is not the vector engine's law: refused, pointing to the new name
    per_coord = sd.Quadratic(h=[1.0, 2.0, 0.5], sigma=[1.0, 1.0, 0.5], noise="student-t", nu=5)
    for obj in ("sam", sd.derive("sam", noise=sd.StudentT(nu=5))):
        with pytest.raises(SdederiveError, match="independent t for each coordinate.*noise='multivariate-t', nu=5"):
            sd.compile(obj, per_coord)
    # the scalar kernels refuse the multivariate t
    with pytest.raises(SdederiveError, match="vector engine's law; the scalar kernels of 'sgd'"):
        sd.compile("sgd", p)
    # the SDE's law and nu must be the problem's
    with pytest.raises(SdederiveError, match="derived for nu = 7 but the problem's multivariate Student-t has nu = 5"):
        sd.compile(sd.derive("usam", noise=sd.StudentT(nu=7)), p)
    with pytest.raises(SdederiveError, match="derived under Gaussian noise but the problem's noise is the multivariate"):
        sd.compile(sd.derive("usam"), p)
    with pytest.raises(SdederiveError, match="derived under multivariate Student-t noise .* problem's noise is 'gaussian'"):
        sd.compile(sd.derive("usam", noise=sd.StudentT(nu=5)), sd.Quadratic(H=VEC_H, Sigma=VEC_SIG))
    with pytest.raises(SdederiveError, match="valid for nu > 2.*nu = 1.5"):
        sd.compile(sd.derive("usam", noise=sd.StudentT()), _prob(1.5))

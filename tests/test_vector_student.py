"""The vector engine under multivariate Student-t gradient noise (issue 16): g = grad + Sigma^(1/2) z sqrt(nu/W),
W ~ chi2_nu independent of z.

Every symbolic result is checked against the test's own numpy Monte Carlo of the *discrete* update at a fixed x
(d = 3, dense H, full Sigma), with the noise drawn here (not by the code under test), and the expectation atoms from
the test's own Monte Carlo of g.  Tolerances: 5 combined standard errors from 20 batch means.  Heavy tails make the
standard error of a sample covariance itself noisy: covariances of updates that grow like |g| are checked at
nu >= 5 (finite fourth moment, and finite variance of the variance estimate's batches up to nu > 8 at nu = 9);
bounded updates (nsgd, clip_sgd, sign) have every moment, also at nu <= 2.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import sympy as sp

import sdederive as sd
from sdederive.errors import NoiseModelError, RegimeMismatchError, SdederiveError
from sdederive.sde_vector import NORM_G, ExpectationAtom, VectorSDE, evaluate_atom
from tests.helpers import VEC_C as C
from tests.helpers import VEC_GRAD as GRAD
from tests.helpers import VEC_H as H
from tests.helpers import VEC_K as K
from tests.helpers import VEC_L as L
from tests.helpers import VEC_N as N
from tests.helpers import VEC_RHO as RHO
from tests.helpers import VEC_SIG as SIG
from tests.helpers import VEC_X as X


def _t_noise(seed: int, nu: float, n: int = N) -> np.ndarray:
    """The multivariate t noise, drawn independently of sdederive: L z * sqrt(nu/W), W ~ chi2_nu."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 3)) @ L.T
    return z * np.sqrt(nu / rng.chisquare(nu, n))[:, None]


def _discrete(name: str, xi: np.ndarray) -> np.ndarray:
    """F = -Delta/eta of the discrete optimizer on f = x^T H x / 2, additive noise xi (same minibatch at both
    points).  In regime sgd F does not depend on eta, so E[F] and Cov[F] are the exact one-step moments."""
    x = np.broadcast_to(X, xi.shape)
    g = x @ H.T + xi
    ng = np.linalg.norm(g, axis=1, keepdims=True)
    if name == "usam":
        return (x + RHO * g) @ H.T + xi
    if name == "sam":
        return (x + RHO * g / ng) @ H.T + xi
    if name == "nsgd":
        return g / ng
    if name == "clip_sgd":
        return np.minimum(1.0, C / ng) * g
    if name == "sgd":
        return g
    raise AssertionError(name)


def _batched(fn, samples: np.ndarray):
    full = fn(samples)
    parts = np.array([fn(b) for b in np.array_split(samples, K)])
    return full, parts.std(axis=0, ddof=1) / np.sqrt(K)


def _atom_values(sde: VectorSDE, g: np.ndarray, nu) -> dict:
    """The test's own Monte Carlo of every atom, identified by its printed meaning (which names the t law)."""
    ng = np.linalg.norm(g, axis=1)
    r = {"1/|g|": 1 / ng, "|g|**(-2)": ng**-2.0, "Min(1, c/|g|)": np.minimum(1, C / ng),
         "Min(1, c/|g|)**2": np.minimum(1, C / ng) ** 2}
    p = f"E_t(nu={sp.nsimplify(nu)})"
    known = {f"{p}[g/|g|]": ("g", "1/|g|"), f"{p}[g g^T/|g|]": ("ggT", "1/|g|"),
             f"{p}[g g^T/|g|**2]": ("ggT", "|g|**(-2)"), f"{p}[g*Min(1, c/|g|)]": ("g", "Min(1, c/|g|)"),
             f"{p}[g g^T*Min(1, c/|g|)**2]": ("ggT", "Min(1, c/|g|)**2")}
    out = {}
    for a in sde.atoms:
        assert a.law == "student-t" and a.nu == sp.nsimplify(nu)
        tensor, key = known[a.display()]
        w = r[key]
        out[a] = (w[:, None] * g).mean(0).reshape(3, 1) if tensor == "g" else np.einsum("n,ni,nj->ij", w, g, g) / len(g)
    return out


CASES = [("usam", 5), ("usam", 9), ("sam", 5), ("sam", 9), ("nsgd", 3), ("nsgd", 1.5), ("clip_sgd", 5),
         ("clip_sgd", 2)]


@pytest.mark.parametrize("name, nu", CASES)
def test_one_step_moments_match_discrete_monte_carlo(name, nu):
    sde = sd.derive(name, noise=sd.StudentT(nu=nu))
    assert sde.noise == "student-t" and sde.nu == sp.nsimplify(nu)
    env = dict(grad=GRAD, H=H, Sigma=SIG, x=X, rho=RHO, c=C, eta=1.0)

    def disc(s):
        F = _discrete(name, s)
        return np.concatenate([F.mean(0), np.cov(F.T).ravel()])

    def pred(s):
        atoms = _atom_values(sde, GRAD + s, nu)
        return np.concatenate([-sde.evaluate("drift", atoms=atoms, **env).ravel(),
                               sde.evaluate("covariance", atoms=atoms, **env).ravel()])

    v, se = _batched(disc, _t_noise(1, nu))
    w, we = _batched(pred, _t_noise(2, nu))
    tol = 5 * np.hypot(se, we) + 1e-12
    assert np.all(np.abs(v - w) < tol), (name, nu, v, w, tol)
    # the t law is visible: the Gaussian SDE's moments are far outside the tolerance
    gauss = sd.derive(name)
    g_atoms = {ga: evaluate_atom(ga, GRAD, SIG, dict(rho=RHO, c=C), n=N) for ga in gauss.atoms}
    g = np.concatenate([-gauss.evaluate("drift", atoms=g_atoms, **env).ravel(),
                        gauss.evaluate("covariance", atoms=g_atoms, **env).ravel()])
    assert np.max(np.abs(g - v) / tol) > 5, (name, nu)


def test_user_vector_update_under_t_equals_builtin():
    """A user's clipped SGD written with sd.vectors is derived under the t law exactly as the built-in clip_sgd; with
    a symbolic nu, its atoms are over t_nu and take nu from evaluate's values."""
    x, g = sd.vectors("x g")
    eta, c = sd.sym("eta"), sd.sym("c")
    opt = sd.from_update("my_clip", {"x": x - eta * sd.minimum(1, c / sd.norm(g)) * g},
                         hypers={"eta": (1e-2, "lr"), "c": (1.0, "positive")})
    for noise in (sd.StudentT(nu=4), sd.StudentT()):
        mine, ref = sd.derive(opt, noise=noise).to_dict(), sd.derive("clip_sgd", noise=noise).to_dict()
        for k in ("drift", "covariance", "atoms", "nu", "noise"):
            assert mine[k] == ref[k], k
    s = sd.derive(opt, noise=sd.StudentT())
    assert [a.display() for a in s.atoms] == ["E_t(nu)[g*Min(1, c/|g|)]", "E_t(nu)[g g^T*Min(1, c/|g|)**2]"]
    # c far above |g| (nu = 6: |g| <= 1e3 except with probability ~1e-15): the drift is -grad f
    b = s.evaluate("drift", grad=GRAD, Sigma=SIG, c=1e3, nu=6.0)
    np.testing.assert_allclose(b.ravel(), -GRAD, atol=0.03)


def test_linear_block_diffusion_is_scaled_root():
    """USAM and SGD (one linear noise block A g): D = sqrt(eta nu/(nu - 2)) A Sigma^(1/2), by hand, with the
    symmetric root from scipy; D D^T = eta nu/(nu - 2) A Sigma A^T."""
    from scipy.linalg import sqrtm

    A = np.eye(3) + RHO * H
    for nu in (5, 7.5):
        s = sd.derive("usam", noise="student-t", nu=nu)
        assert s.atoms == ()
        D = s.evaluate("diffusion", H=H, Sigma=SIG, eta=0.01, rho=RHO)
        np.testing.assert_allclose(D, np.sqrt(0.01 * nu / (nu - 2)) * A @ np.real(sqrtm(SIG)), atol=1e-12)
        np.testing.assert_allclose(s.evaluate("covariance", H=H, Sigma=SIG, eta=0.01, rho=RHO),
                                   0.01 * nu / (nu - 2) * A @ SIG @ A, atol=1e-12)
    sgd = sd.derive("sgd", noise=sd.StudentT(nu=6), Sigma="full")
    np.testing.assert_allclose(sgd.evaluate("diffusion", Sigma=SIG, eta=1.0), np.sqrt(1.5) * np.real(sqrtm(SIG)),
                               atol=1e-12)
    np.testing.assert_allclose(sgd.evaluate("drift", grad=GRAD, eta=1.0).ravel(), -GRAD, rtol=1e-14)


def test_symbolic_nu_and_gaussian_limit():
    """A symbolic nu: the SDE carries nu/(nu - 2) and atoms over t_nu; numeric values of nu give the numeric
    derivation's results; nu -> oo (sympy limit) gives the Gaussian SDE, and nu = 1e8 agrees with it to 1e-7."""
    nu = sd.sym("nu")
    s = sd.derive("usam", noise=sd.StudentT())
    assert s.nu == nu and "nu" in s.symbols and any("valid for nu > 2" in n for n in s.notes)
    cov = s.covariance_expr
    gauss = sd.derive("usam")
    env = dict(H=H, Sigma=SIG, eta=0.01, rho=RHO)
    np.testing.assert_allclose(s.evaluate("covariance", nu=5.0, **env),
                               sd.derive("usam", noise=sd.StudentT(nu=5)).evaluate("covariance", **env), atol=1e-14)
    coeff, mats = cov.as_coeff_mmul()
    assert sp.simplify(coeff - sd.sym("eta") * nu / (nu - 2)) == 0
    lim = sp.limit(coeff, nu, sp.oo) * mats
    assert lim == gauss.covariance_expr
    np.testing.assert_allclose(s.evaluate("covariance", nu=1e8, **env), gauss.evaluate("covariance", **env),
                               rtol=1e-7)
    # atoms: a symbolic nu needs a value to be sampled; a large one approaches the Gaussian atom
    sam = sd.derive("sam", noise=sd.StudentT())
    a = sam.atoms[0]
    assert a.nu == nu and a.display() == "E_t(nu)[g/|g|]"
    with pytest.raises(SdederiveError, match="symbolic nu"):
        evaluate_atom(a, GRAD, SIG)
    big = evaluate_atom(a, GRAD, SIG, {"nu": 1e8}, n=200_000).ravel()
    ga = sd.derive("sam").atoms[0]
    g = evaluate_atom(ga, GRAD, SIG, n=200_000, rng=np.random.default_rng(3)).ravel()
    assert np.abs(big - g).max() < 5e-3  # two Monte Carlos of 2e5 samples: standard error about 1e-3


def test_evaluate_atom_samples_the_multivariate_t():
    """E_t[g g^T] = grad grad^T + nu/(nu - 2) Sigma and E_t[|g|^2] = |grad|^2 + nu/(nu - 2) tr Sigma (the law's
    second moments, by hand) from evaluate_atom's sampler, within 5 standard errors; the Gaussian sampler is off."""
    nu = 7
    n = 400_000
    second = GRAD[:, None] * GRAD[None, :] + nu / (nu - 2) * SIG
    xi = _t_noise(11, nu, n)
    g = GRAD + xi
    se_ggT = np.einsum("ni,nj->nij", g, g).std(0) / np.sqrt(n)
    got = evaluate_atom(ExpectationAtom("ggT", 1, nu), GRAD, SIG, n=n)
    assert np.all(np.abs(got - second) < 5 * se_ggT), (got, second, se_ggT)
    sq = (g**2).sum(1)
    got1 = evaluate_atom(ExpectationAtom("1", NORM_G**2, nu), GRAD, SIG, n=n)[0, 0]
    assert abs(got1 - (GRAD @ GRAD + nu / (nu - 2) * np.trace(SIG))) < 5 * sq.std() / np.sqrt(n)
    gauss = evaluate_atom(ExpectationAtom("1", NORM_G**2), GRAD, SIG, n=n)[0, 0]
    assert abs(gauss - (GRAD @ GRAD + np.trace(SIG))) < 5 * sq.std() / np.sqrt(n)
    assert abs(gauss - got1) > 20 * sq.std() / np.sqrt(n)
    # the isotropic closed form is Gaussian-only: under t the sampler is used (and differs from it off zero)
    from sdederive.sde_vector import isotropic_unit_mean

    u = ExpectationAtom("g", 1 / NORM_G, 3)
    mc = evaluate_atom(u, GRAD, 0.5 * np.eye(3), n=n).ravel()
    gt = GRAD + np.random.default_rng(5).standard_normal((n, 3)) * np.sqrt(0.5) * np.sqrt(
        3 / np.random.default_rng(6).chisquare(3, n))[:, None]
    ref = gt / np.linalg.norm(gt, axis=1, keepdims=True)
    assert np.all(np.abs(mc - ref.mean(0)) < 5 * np.sqrt(2) * ref.std(0) / np.sqrt(n))
    assert np.abs(mc - isotropic_unit_mean(GRAD, 0.5).ravel()).max() > 0.01


def _bvt_cdf(h: float, k: float, r: float, nu: float) -> float:
    """P(T1 <= h, T2 <= k) for the standard bivariate t, by conditioning on T1 = t (a formula independent of the
    code's normal-mixture quadrature): T2 | T1 = t is t_{nu+1} with location r t and scale
    sqrt((1 - r^2)(nu + t^2)/(nu + 1))."""
    from scipy.integrate import quad
    from scipy.special import stdtr
    from scipy.stats import t as student

    def f(t):
        return student.pdf(t, nu) * stdtr(nu + 1, (k - r * t) / np.sqrt((1 - r * r) * (nu + t * t) / (nu + 1)))

    return quad(f, -np.inf, min(h, 0.0), epsabs=1e-13, limit=200)[0] + (
        quad(f, 0.0, h, epsabs=1e-13, limit=200)[0] if h > 0 else 0.0)


def test_sign_under_multivariate_t():
    """SignSGD under the multivariate t: E[sign g_i] = 2 F_nu(a_i) - 1, E[sign g_i sign g_j] from the bivariate t
    orthant probability: against a Monte Carlo of the discrete update, against scipy.stats.multivariate_t.cdf
    (Genz's quasi-Monte Carlo, to 1e-6) and the conditional-t formula (`_bvt_cdf`, to 1e-10), both independent of the
    quadrature used here, and (2/pi) arcsin(r_ij) at grad = 0 for every nu (sign is scale invariant)."""
    from scipy.special import stdtr
    from scipy.stats import multivariate_t

    x, g = sd.vectors("x g")
    eta = sd.sym("eta")
    opt = sd.from_update("vsign", {"x": x - eta * sd.coordinatewise(sp.sign, g)}, hypers={"eta": (0.01, "lr")})
    mu = np.array([0.3, -0.2, 0.1])
    sdv = np.sqrt(np.diag(SIG))
    for nu in (1.5, 4):
        sde = sd.derive(opt, noise=sd.StudentT(nu=nu))
        assert "E_t(nu=" in str(sde) and sde.atoms == ()
        env = dict(grad=mu, Sigma=SIG, eta=1.0)
        sg = np.sign(mu + _t_noise(21, nu))
        v, se = _batched(lambda s: np.concatenate([s.mean(0), np.cov(s.T).ravel()]), sg)
        pred = np.concatenate([-sde.evaluate("drift", **env).ravel(), sde.evaluate("covariance", **env).ravel()])
        assert np.all(np.abs(v - pred) < 5 * se + 1e-12), (nu, v, pred, se)
        np.testing.assert_allclose(pred[:3], 2 * stdtr(nu, mu / sdv) - 1, rtol=1e-12)
        zero = sde.evaluate("covariance", grad=np.zeros(3), Sigma=SIG, eta=1.0)
        np.testing.assert_allclose(zero, 2 / np.pi * np.arcsin(SIG / np.outer(sdv, sdv)), atol=1e-12)
        second = sde.evaluate("covariance", **env) + np.outer(pred[:3], pred[:3])
        a = mu / sdv
        i, j = 0, 2
        r = SIG[i, j] / (sdv[i] * sdv[j])
        p = multivariate_t(loc=[0, 0], shape=[[1, r], [r, 1]], df=nu).cdf([a[i], a[j]], maxpts=1_000_000,
                                                                          random_state=0)
        ref = 4 * p - 2 * stdtr(nu, a[i]) - 2 * stdtr(nu, a[j]) + 1
        assert abs(second[i, j] - ref) < 1e-6, (nu, second[i, j], ref)
        for i, j in ((0, 1), (0, 2), (1, 2)):
            r = SIG[i, j] / (sdv[i] * sdv[j])
            exact = 4 * _bvt_cdf(a[i], a[j], r, nu) - 2 * stdtr(nu, a[i]) - 2 * stdtr(nu, a[j]) + 1
            assert abs(second[i, j] - exact) < 1e-10, (nu, i, j, second[i, j], exact)
        gs = sd.derive(opt)
        gauss = np.concatenate([-gs.evaluate("drift", **env).ravel(), gs.evaluate("covariance", **env).ravel()])
        assert np.max(np.abs(gauss - pred) / (se + 1e-12)) > 10  # the Gaussian sign moments are far off
        back = VectorSDE.from_json(sde.to_json())
        np.testing.assert_allclose(back.evaluate("covariance", **env), sde.evaluate("covariance", **env), atol=1e-14)


@pytest.mark.parametrize("name, noise", [("usam", sd.StudentT(nu=5)), ("sam", sd.StudentT(nu=5.5)),
                                         ("nsgd", sd.StudentT()), ("clip_sgd", sd.StudentT(nu=3))])
def test_json_round_trip(name, noise):
    sde = sd.derive(name, noise=noise)
    d = sde.to_dict()
    assert d["noise"] == "student-t" and d["nu"] == str(sde.nu)
    for spec in d["atoms"].values():
        assert spec["law"] == "student-t" and spec["nu"] == str(sde.nu) and spec["meaning"].startswith("E_t(")
    back = VectorSDE.from_json(sde.to_json())
    assert back.nu == sde.nu and back.noise == "student-t"
    assert [a.display() for a in back.atoms] == [a.display() for a in sde.atoms]
    assert all(a.law == "student-t" for a in back.atoms)
    assert back.to_json() == VectorSDE.from_json(back.to_json()).to_json()
    nu = 5.5 if noise.nu is None else noise.nu
    env = dict(grad=GRAD, H=H, Sigma=SIG, x=X, rho=RHO, c=C, eta=0.02, nu=nu)
    atoms = {a: evaluate_atom(a, GRAD, SIG, env, n=20_000) for a in sde.atoms}
    batoms = {b: atoms[a] for a, b in zip(sde.atoms, back.atoms)}
    for what in ("drift", "diffusion", "covariance"):
        np.testing.assert_allclose(back.evaluate(what, atoms=batoms, **env), sde.evaluate(what, atoms=atoms, **env),
                                   atol=1e-12)
    if sde.atoms:
        assert "\\mathbb{E}_{t_{" in sde.latex()


def test_old_and_hostile_json():
    """Gaussian JSON (the format before the t law: no nu, no atom law) still loads as Gaussian; a t JSON without nu,
    a nu on Gaussian noise, a bad law or a non-positive nu are refused, and nothing is evaluated."""
    g = sd.derive("sam").to_dict()
    assert "nu" not in g and all("law" not in a for a in g["atoms"].values())
    back = VectorSDE.from_json(json.dumps(g))
    assert back.nu is None and all(a.law == "gaussian" for a in back.atoms)
    t = sd.derive("sam", noise=sd.StudentT(nu=5)).to_dict()
    with pytest.raises(SdederiveError, match="needs the key"):
        VectorSDE.from_json(json.dumps({k: v for k, v in t.items() if k != "nu"}))
    with pytest.raises(SdederiveError, match="nu belongs to noise 'student-t'"):
        VectorSDE.from_json(json.dumps({**g, "nu": "5"}))
    a1 = dict(t["atoms"]["A1"])
    for bad, msg in (({**a1, "law": "cauchy"}, "law"), ({k: v for k, v in a1.items() if k != "nu"}, "law"),
                     ({**a1, "nu": "-3"}, "allowed: a number > 0"), ({**a1, "nu": "__import__('os')"}, "nu"),
                     ({**a1, "extra": 1}, "unknown key"), ({**a1, "nu": "7"}, "must agree")):
        with pytest.raises(SdederiveError, match=msg):
            VectorSDE.from_json(json.dumps({**t, "atoms": {**t["atoms"], "A1": bad}}))


def test_refusals_say_why():
    for name in ("usam", "sam"):
        with pytest.raises(NoiseModelError, match=r"nu = 2: .*finite only for nu > 2 \(infinite covariance"):
            sd.derive(name, noise=sd.StudentT(nu=2))
    with pytest.raises(NoiseModelError, match="nu > 2"):
        sd.derive("sgd", noise="student-t", nu=1.9, Sigma="full")
    with pytest.raises(RegimeMismatchError, match="does not concentrate"):
        sd.derive("nsgd", noise=sd.StudentT(nu=5), regime="high-dim")
    with pytest.raises(NoiseModelError, match="scale matrix Sigma"):
        sd.derive("usam", noise=sd.StudentT(nu=5, sigma=0.3))
    with pytest.raises(NoiseModelError, match="nu"):
        sd.derive("usam", noise="student-t", nu=-1)
    with pytest.raises(NoiseModelError, match="not used by the vector engine"):
        sd.derive("usam", noise="student-t", nu=5, sigma=1.0)
    with pytest.raises(NoiseModelError, match="or the multivariate Student-t.*got noise=.minibatch"):
        sd.derive("usam", noise="minibatch")
    # a bounded update has its moments for every nu: nsgd at nu = 1 (Cauchy-tailed noise) is derived
    assert sd.derive("nsgd", noise=sd.StudentT(nu=1)).nu == 1

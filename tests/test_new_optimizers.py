"""AMSGrad, per-coordinate clipping, AdaBelief, QH-Adam and Adan (issue 13, "common optimizers").

Adan's lagged gradient: its one-step check draws the previous gradient independently and measures the
long-run covariance from two steps off the same state (``validators.onestep``).

Every derived SDE is checked against an independent one-step Monte Carlo of the discrete update
(``validators.onestep_check`` with ``richardson=True``: the same random numbers at ``eta``, ``2*eta``
and ``4*eta``; ``2*S(eta) - r*S(2 eta)`` removes the O(eta) truncation, ``|R(eta) - R(2 eta)|``
bounds the O(eta**2) rest; 1e6 draws, 5 standard errors).  AMSGrad's running maximum is a limit
of many steps, not a one-step moment at the boundary ``vhat = v``: it is checked by running the
discrete chain to ``t = 3`` at several ``eta`` against the hand-computed ODE limit.  The clipped
moments are checked against numerical quadrature (scipy).  Mutation tests show the checks can fail.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy as sp
from scipy import integrate, stats
from sdederive.validators import onestep_check

import sdederive as sd
from sdederive.derivation._clip_moments import clip_moment
from sdederive.noise import Gaussian, StudentT

N = 1_000_000
eta_s = sd.sym("eta")


def check(*args, **kw):
    kw.setdefault("samples", N)
    kw.setdefault("richardson", True)
    r = onestep_check(*args, **kw)
    assert r.passed(), "\n" + str(r)
    return r


# ------------------------------------------------------------------------------------------------
# clipping
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("noise, nu", [("gaussian", None), ("student-t", 1.5), ("student-t", 5.0)])
@pytest.mark.parametrize("n, p, a, b", [(0, 1, 0.3, 0.8), (0, 2, -1.4, 0.5), (1, 1, 0.6, 1.7), (2, 2, 0.2, -0.9),
                                        (1, 3, -0.5, 2.5)])
def test_clip_moments_match_quadrature(noise, nu, n, p, a, b):
    """E[z**n clip(a + b z, -1, 1)**p] against scipy quadrature of the density."""
    if nu is not None and n >= nu:
        with pytest.raises(sd.SdederiveError, match="infinite"):
            clip_moment(StudentT(nu=nu), n, sp.Float(a), sp.Float(b), p)
        return
    model, dens = (Gaussian(), stats.norm.pdf) if nu is None else (StudentT(nu=nu), stats.t(nu).pdf)
    got = float(sp.N(clip_moment(model, n, sp.Float(a), sp.Float(b), p), 20))
    want = 0.0
    cuts = sorted([(-1 - a) / b, (1 - a) / b])
    for lo, hi in [(-np.inf, cuts[0]), (cuts[0], cuts[1]), (cuts[1], np.inf)]:
        want += integrate.quad(lambda z: z**n * np.clip(a + b * z, -1, 1) ** p * dens(z), lo, hi,
                               epsabs=1e-12, epsrel=1e-10, limit=200)[0]
    assert got == pytest.approx(want, rel=1e-7, abs=1e-9)


@pytest.mark.parametrize("grad, sigma, c", [(0.7, 1.3, 1.0), (-2.0, 0.6, 0.5), (3.0, 1.0, 1.0)])
def test_sgd_clip_gaussian(grad, sigma, c):
    check("sgd_clip", point=dict(grad=grad, sigma=sigma, clip=c), eta=1e-2)


@pytest.mark.parametrize("nu", [1.5, 4.0])
def test_sgd_clip_student_t_heavy_tails(nu):
    """Clipping makes every moment finite: nu = 1.5 (infinite variance of g) derives and agrees."""
    check("sgd_clip", "student-t", point=dict(grad=0.7, sigma=1.3, clip=1.0), eta=1e-2, noise_params={"nu": nu})


def test_sgd_clip_student_t_symbolic_nu():
    check("sgd_clip", "student-t", point=dict(grad=-0.4, sigma=0.9, clip=0.8, nu=3.0), eta=1e-2)


def test_clip_written_by_a_user_is_the_builtin():
    x, g = sd.symbols("x g")
    c, eta = sd.sym("clip", positive=True), sd.sym("eta")
    mine = sd.from_update("myclip", {"x": x - eta * sp.Min(sp.Max(g, -c), c)},
                          hypers={"eta": (1e-2, "lr"), "clip": (1.0, "positive")})
    a, b = sd.derive(mine), sd.derive("sgd_clip")
    pt = {sd.sym("grad"): 0.37, sd.sym("sigma", positive=True): 1.1, c: 0.9, eta: 0.01}
    assert float(a.drift["x"].subs(pt)) == pytest.approx(float(b.drift["x"].subs(pt)), rel=1e-12)
    assert float(a.covariance[0, 0].subs(pt)) == pytest.approx(float(b.covariance[0, 0].subs(pt)), rel=1e-12)


def test_clip_then_momentum_and_adam():
    """Clipping composed with a momentum EMA (balanced) and with Adam (noise-dominated, clip = c0/eta
    is not scaled: the clipped gradient saturates and the update becomes sign-like)."""
    opt = sd.chain(sd.transforms.clip(1.0), sd.transforms.ema(0.9), sd.transforms.scale_by_learning_rate(),
                   name="clip_ema", natural_regime="balanced")
    check(opt, point=dict(grad=0.5, sigma=1.2, clip=1.0, rho=2.0, m=0.3, x=0.0), eta=1e-4)
    opt2 = sd.chain(sd.transforms.clip(1.0), sd.transforms.scale_by_adam(), sd.transforms.scale_by_learning_rate(),
                    name="clip_adam", natural_regime="balanced")
    check(opt2, point=dict(grad=0.5, sigma=1.2, clip=0.8, rho1=2.0, rho2=1.0, eps=0.1, m=0.3, v=0.5, t=0.6, x=0.0),
          eta=1e-4)


def test_sgd_clip_order2():
    """Order 2 (the drift's derivative in grad goes through the opaque clipped moments): the one-step
    mean through eta**2 agrees, and the order-1 drift in its place does not."""
    pt = dict(grad=0.7, hess=2.0, sigma=1.3, clip=1.0)
    check("sgd_clip", order=2, point=pt, eta=0.05, step_doubling=False, richardson=False)
    wrong = onestep_check("sgd_clip", order=2, point=pt, eta=0.05, step_doubling=False, samples=N,
                          drift_override={"x": lambda e: e.subs(eta_s, 0)})
    assert not wrong.passed()


def test_clip_of_a_slow_state():
    """Clipping an EMA (balanced): the argument's noise vanishes, so x follows -clip(m, -c, c)."""
    opt = sd.chain(sd.transforms.ema(0.9), sd.transforms.clip(1.0), sd.transforms.scale_by_learning_rate(),
                   name="ema_clip", natural_regime="balanced")
    sde = sd.derive(opt)
    m, c = sd.sym("m"), sd.sym("clip", positive=True)
    for mv, want in [(0.4, -0.4), (2.5, -1.2), (-3.0, 1.2)]:
        assert float(sde.drift["x"].subs({m: mv, c: 1.2})) == pytest.approx(want)
    check(opt, point=dict(grad=0.5, sigma=1.2, clip=0.8, rho=2.0, m=0.3, x=0.0), eta=1e-4)


def test_clip_of_a_non_smooth_function_of_the_noise_is_refused_quickly():
    """Found by the differential test: clip(sign(.)) used to hang in the zero test of the atom's derivative."""
    opt = sd.chain(sd.transforms.scale_by_sign(), sd.transforms.clip(0.5), sd.transforms.scale_by_learning_rate(),
                   name="sign_clip")
    with pytest.raises(sd.ExpectationError, match="itself a non-smooth function of the noise"):
        sd.derive(opt)


# ------------------------------------------------------------------------------------------------
# AMSGrad
# ------------------------------------------------------------------------------------------------

AMS = dict(grad=0.7, sigma0=1.3, c1=2.0, c2=1.0, eps0=0.1, m=0.3, u=0.8, x=0.1)


@pytest.mark.parametrize("u_vhat", [0.9, 4.0])
def test_amsgrad_interior_one_step(u_vhat):
    """Off the boundary (vhat > v) the running maximum does not move and x uses vhat."""
    check("amsgrad", point=dict(AMS, u_vhat=u_vhat), eta=1e-3)


def test_amsgrad_drift_is_the_running_maximum():
    sde = sd.derive("amsgrad")
    u, uh = sd.sym("u", nonnegative=True), sd.sym("u_vhat", nonnegative=True)
    c2, s0 = sd.sym("c2", positive=True), sd.sym("sigma0", positive=True)
    for uv, uhv, want in [(0.5, 0.5, 2.0 * (1.0 - 0.5)), (0.5, 0.7, 0.0), (1.5, 1.5, 0.0)]:
        val = sde.drift["u_vhat"].subs({u: uv, uh: uhv, c2: 2.0, s0: 1.0})
        assert float(val) == pytest.approx(want)


def _amsgrad_chain(eta, T, hyp, x0, grad_fn, sigma, paths, seed=0):
    """Discrete AMSGrad, written out in numpy (not through the spec)."""
    rng = np.random.default_rng(seed)
    x, m, v, vh = np.full(paths, x0), np.zeros(paths), np.zeros(paths), np.zeros(paths)
    b1, b2, eps = hyp
    for _ in range(int(round(T / eta))):
        g = grad_fn(x) + sigma * rng.standard_normal(paths)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        vh = np.maximum(vh, v)
        x = x - eta * m / (np.sqrt(vh) + eps)
    return x.mean(), v.mean(), vh.mean()


def test_amsgrad_running_maximum_over_many_steps_balanced():
    """Balanced regime, f = x**2/2 from x0 = 2: v rises with grad**2 and falls back as x -> 0, so the
    running maximum is v's peak, not v.  The SDE's ODE (integrated here) gives vhat(3); the discrete
    chain approaches it like sqrt(eta) (v's O(sqrt(eta)) fluctuations lift the maximum), and the
    sqrt(eta)-extrapolation of two runs agrees within 1%."""
    sde = sd.derive("amsgrad", regime="balanced")
    rho1, rho2, sigma, eps, T = 1.0, 3.0, 0.5, 0.1, 3.0
    names = ["x", "m", "v", "vhat", "grad", "sigma", "rho1", "rho2", "eps"]
    free = {str(f): f for e in sde.drift.values() for f in e.free_symbols}
    f = {s: sp.lambdify([free.get(n, sp.Symbol(n)) for n in names], sde.drift[s]) for s in sde.states}
    y = dict(x=2.0, m=0.0, v=0.0, vhat=0.0)
    dt = 2e-4
    for _ in range(int(T / dt)):
        args = [y["x"], y["m"], y["v"], y["vhat"], y["x"], sigma, rho1, rho2, eps]
        y = {s: y[s] + dt * float(f[s](*args)) for s in y}
    assert y["vhat"] > 4 * y["v"]  # the maximum is held far above v
    res = {}
    for eta in (4e-3, 1e-3):
        res[eta] = _amsgrad_chain(eta, T, (1 - rho1 * eta, 1 - rho2 * eta, eps), 2.0, lambda x: x, sigma, 3000)
    e_big, e_small = abs(res[4e-3][2] - y["vhat"]), abs(res[1e-3][2] - y["vhat"])
    assert e_small < e_big
    extrap = (2 * res[1e-3][2] - res[4e-3][2])  # error ~ A*sqrt(eta): sqrt(4e-3) = 2*sqrt(1e-3)
    assert extrap == pytest.approx(y["vhat"], rel=0.01)
    # the naive alternative (vhat following v) is far off
    assert abs(res[1e-3][2] - res[1e-3][1]) > 2.0


@pytest.mark.parametrize("u0, sigma0", [(0.2, 1.0), (3.0, 1.0)])
def test_amsgrad_running_maximum_noise_dominated(u0, sigma0):
    """Natural regime: u relaxes to sigma0**2; vhat follows it up (u0 < sigma0**2) or stays (u0 > sigma0**2)."""
    c2, T = 2.0, 1.0  # (v and vhat do not depend on m, x: only their updates are run)
    want_u = sigma0**2 + (u0 - sigma0**2) * math.exp(-c2 * T)
    want_uh = max(u0, want_u)
    errs = []
    for eta in (0.04, 0.02):
        rng = np.random.default_rng(1)
        paths = 4000
        b2 = 1 - c2 * eta**2
        v = np.full(paths, u0 / eta**2)
        vh = v.copy()
        for _ in range(int(round(T / eta**2))):
            g = 0.3 + sigma0 / eta * rng.standard_normal(paths)
            v = b2 * v + (1 - b2) * g**2
            vh = np.maximum(vh, v)
        errs.append(abs(eta**2 * vh.mean() - want_uh))
        assert eta**2 * v.mean() == pytest.approx(want_u, rel=0.02)
    assert errs[1] < 0.03 * want_uh and errs[1] < errs[0] + 1e-3


def test_amsgrad_refused_where_v_has_diffusion():
    with pytest.raises(sd.RegimeMismatchError, match="running maximum of v, which has a diffusion"):
        sd.derive("amsgrad", regime="balanced-full")


# ------------------------------------------------------------------------------------------------
# AdaBelief, QH-Adam
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [0.0, 0.3])
def test_adabelief_noise_dominated(eps):
    check("adabelief", point=dict(grad=0.7, sigma0=1.3, c1=2.0, c2=1.0, eps=eps, m=0.3, u_s=0.8, t=0.7, x=0.1),
          eta=1e-3)


def test_adabelief_balanced_with_eps_scaled():
    """Balanced regime, eps = eps1*eta: s tracks (grad - m)**2 + sigma**2 (the 'belief'), plus eps1."""
    eps1 = sd.sym("eps1", positive=True)
    rg = sd.Regime("balanced-belief", eta_s, decay_power=1, subs=(("eps", eps1 * eta_s),))
    sde = sd.derive("adabelief", regime=rg)
    assert sde.params["eps1"] == sd.sym("eps") / eta_s
    check("adabelief", regime=rg, point=dict(grad=0.7, sigma=1.3, rho1=2.0, rho2=1.0, eps1=0.2, m=0.3, s=0.8,
                                            t=0.7, x=0.1), eta=1e-4)


def test_adabelief_eps_unscaled_diverges_in_balanced():
    with pytest.raises(sd.RegimeMismatchError):
        sd.derive("adabelief", regime="balanced")


@pytest.mark.parametrize("nu1", [0.0, 0.7, 1.0])
def test_qhadam_noise_dominated(nu1):
    check("qhadam", point=dict(grad=0.7, sigma0=1.3, c1=2.0, c2=1.0, eps0=0.1, nu1=nu1, m=0.3, u=0.8, t=0.7, x=0.1),
          eta=1e-3)


def test_qhadam_nu2_below_one_refused_with_the_reason():
    with pytest.raises(sd.ExpectationError, match="non-polynomial function"):
        sd.derive(sd.optimizers.get("qhadam", nu2=0.9))


# ------------------------------------------------------------------------------------------------
# Adan
# ------------------------------------------------------------------------------------------------


def test_adan_spec_matches_the_official_update():
    """numpy_step of the spec against the official implementation's step written out in numpy."""
    opt = sd.optimizers.get("adan")
    step = opt.numpy_step()
    rng = np.random.default_rng(3)
    st = {k: rng.standard_normal(5) for k in ("x", "m", "vd", "gp")}
    st["n"] = rng.uniform(0.1, 1.0, 5)
    g = rng.standard_normal(5)
    hyp = dict(eta=0.01, beta1=0.98, beta2=0.92, beta3=0.99, eps=1e-8, wd=0.02)
    new = step(st, g, 3, hyp)
    diff = g - st["gp"]
    m = 0.98 * st["m"] + 0.02 * g
    vd = 0.92 * st["vd"] + 0.08 * diff
    upd = g + 0.92 * diff
    n = 0.99 * st["n"] + 0.01 * upd**2
    x = st["x"] * (1 - 0.01 * 0.02) - 0.01 * (m + 0.92 * vd) / (np.sqrt(n) + 1e-8)
    for k, want in dict(m=m, vd=vd, n=n, x=x, gp=g).items():
        np.testing.assert_allclose(new[k], want, rtol=1e-12, atol=1e-15)


ADAN = dict(grad=0.7, sigma=1.3, rho1=2.0, rho2=3.0, rho3=1.5, m=0.3, vd=0.1, n=1.2, eps=0.1, wd=0.05, x=0.5)


def _adan_long_run_nn(mu, s2, m4):
    """Long-run variance of h_k = (2 g_k - g_{k-1})**2, g = mu + xi (E xi**2 = s2, E xi**4 = m4, symmetric),
    by hand: Var h = 20 mu**2 s2 + 17 m4 - s2**2, Cov(h_k, h_k+1) = -8 mu**2 s2 + 4 m4 - 4 s2**2."""
    return (20 * mu**2 * s2 + 17 * m4 - s2**2) + 2 * (-8 * mu**2 * s2 + 4 * m4 - 4 * s2**2)


@pytest.mark.parametrize("noise, nu", [("gaussian", None), ("student-t", 5)])
def test_adan_sde_matches_the_hand_derivation(noise, nu):
    """Balanced regime (1 - beta_i = rho_i eta): n relaxes to grad**2 + 5 s2 (the variance of 2 g_k - g_k-1),
    the gradient-difference EMA carries no diffusion (its noise telescopes), and the n-n entry is the long-run
    variance (66 s2**2 + 4 mu**2 s2 for Gaussian noise), not the single-step 50 s2**2 + 20 mu**2 s2."""
    sde = sd.derive("adan", noise, **({"nu": nu} if nu else {}))
    assert sde.states == ("x", "m", "vd", "n") and any("previous step" in n_ for n_ in sde.notes)
    f = sde._free()
    grad, sig, eta, m, vd, n = (f[k] for k in ("grad", "sigma", "eta", "m", "vd", "n"))
    r1, r2, r3, eps, wd, x = (f[k] for k in ("rho1", "rho2", "rho3", "eps", "wd", "x"))
    s2 = sig**2 if nu is None else sig**2 * sp.Rational(nu, nu - 2)
    m4 = 3 * s2**2 if nu is None else 3 * sig**4 * sp.Rational(nu**2, (nu - 2) * (nu - 4))
    want = {"x": -(m + vd) / (sp.sqrt(n) + eps) - wd * x, "m": r1 * (grad - m), "vd": -r2 * vd,
            "n": r3 * (grad**2 + 5 * s2 - n)}
    for k, w in want.items():
        assert sp.simplify(sde.drift[k] - w) == 0, (k, sde.drift[k])
    C = sde.covariance
    i = {s: sde.states.index(s) for s in sde.states}
    assert sp.simplify(C[i["m"], i["m"]] - eta * r1**2 * s2) == 0
    assert sp.simplify(C[i["m"], i["n"]] - eta * r1 * r3 * 2 * grad * s2) == 0  # Cov(xi_k, h_k) + Cov(xi_k, h_k+1)
    assert sp.simplify(C[i["n"], i["n"]] - eta * r3**2 * _adan_long_run_nn(grad, s2, m4)) == 0
    assert all(C[i["vd"], j] == 0 for j in range(4)) and all(C[i["x"], j] == 0 for j in range(4))


@pytest.mark.parametrize("noise, nu", [("gaussian", None), ("student-t", 9)])
def test_adan_one_step_monte_carlo(noise, nu):
    """Against the discrete update: the previous gradient drawn independently, the covariance the long-run one
    (two steps off the same state), Richardson over eta, 2 eta, 4 eta."""
    check("adan", noise, point=ADAN, eta=1e-3, noise_params={"nu": nu} if nu else None)


@pytest.mark.parametrize("which", ["single-step n-n", "single-step vd-vd", "m coupling"])
def test_adan_monte_carlo_catches_the_single_step_covariance(which):
    """The check can fail: the one-step covariance in place of the long-run one is detected."""
    g, s2, eta = sd.sym("grad"), sd.sym("sigma") ** 2, sd.sym("eta")
    r2, r3 = sd.sym("rho2", positive=True), sd.sym("rho3", positive=True)
    cov = {"single-step n-n": {("n", "n"): eta * r3**2 * (50 * s2**2 + 20 * g**2 * s2)},
           "single-step vd-vd": {("vd", "vd"): 2 * eta * r2**2 * s2},
           "m coupling": {("m", "n"): lambda e: 2 * e}}[which]  # Cov(xi_k, h_k) alone: twice the long-run value
    bad = onestep_check("adan", point=ADAN, eta=1e-3, samples=N, richardson=True, covariance_override=cov)
    assert not bad.passed(), "the wrong coefficient was not detected:\n" + str(bad)


def test_adan_noise_dominated():
    """Malladi et al.'s scaling (sigma = sigma0/eta, 1 - beta = c eta**2): u_n = eta**2 n relaxes to 5 sigma0**2,
    only m is noisy; with wd (unscaled, O(eta) per step against tau = eta**2) the drift diverges: refused."""
    import sdederive.spec.transforms as T

    opt = sd.chain(T.scale_by_adan(), T.scale_by_learning_rate(1e-3), name="adan_nowd", natural_regime="noise-dominated")
    sde = sd.derive(opt)
    f = sde._free()
    assert sp.simplify(sde.drift["u_n"] - f["c3"] * (5 * f["sigma0"] ** 2 - f["u_n"])) == 0
    assert sp.simplify(sde.drift["x"] + (f["m"] + f["vd"]) / (f["eps0"] + sp.sqrt(f["u_n"]))) == 0
    check(opt, point=dict(grad=0.7, sigma0=1.3, c1=2.0, c2=3.0, c3=1.5, m=0.3, vd=0.1, u_n=1.2, eps0=0.1, x=0.5),
          eta=1e-3)
    with pytest.raises(sd.RegimeMismatchError, match="drift of x diverges"):
        sd.derive("adan", regime="noise-dominated")


def test_adan_written_by_a_user_gets_the_same_sde():
    x, g, m, d, gp = sd.symbols("x g m d gp")
    n = sd.sym("n", nonnegative=True)
    eta, b1, b2 = sd.symbols("eta beta1 beta2")
    b3 = sd.sym("beta3", nonnegative=True)
    m1, d1 = b1 * m + (1 - b1) * g, b2 * d + (1 - b2) * (g - gp)
    n1 = b3 * n + (1 - b3) * (g + b2 * (g - gp)) ** 2
    opt = sd.from_update("my_adan", {"m": m1, "d": d1, "n": n1, "gp": g, "x": x - eta * (m1 + b2 * d1) / sp.sqrt(n1)},
                         hypers={"eta": (1e-3, "lr"), "beta1": (0.98, "decay"), "beta2": (0.92, "decay"),
                                 "beta3": (0.99, "decay")}, kinds={"n": "second_moment"}, natural_regime="balanced")
    mine, ref = sd.derive(opt), sd.derive(sd.optimizers.get("adan", eps=0.0, wd=0.0))
    assert mine.states == ("x", "m", "d", "n")
    ren = {sd.sym("d"): ref._free()["vd"]}
    for a, b in (("x", "x"), ("m", "m"), ("d", "vd"), ("n", "n")):
        diff = mine.drift[a].xreplace(ren) - ref.drift[b].subs({ref._free()["eps"]: 0, ref._free()["wd"]: 0})
        assert sp.simplify(diff) == 0, (a, mine.drift[a], ref.drift[b])
    assert sp.simplify(mine.covariance.xreplace(ren) - ref.covariance) == sp.zeros(4, 4)


def test_adan_refusals_name_the_reason():
    with pytest.raises(sd.SdederiveError, match="order=2 .* previous step's gradient"):
        sd.derive("adan", order=2)
    with pytest.raises(sd.RegimeMismatchError, match="m of 'adan' is fast .* previous-gradient state gp"):
        sd.derive("adan", regime="sgd")
    x, g, gp = sd.symbols("x g gp")
    eta, b = sd.sym("eta"), sd.sym("beta")
    v = sd.sym("v", nonnegative=True)
    hy = {"eta": (1e-3, "lr"), "beta": (0.9, "decay")}
    # all the noise telescopes: the diffusion would come from the neglected terms
    d = g - gp
    v1 = b * v + (1 - b) * d + (1 - b) * eta * d**2
    tele = sd.from_update("tele", {"gp": g, "v": v1, "x": x - eta * v1}, hypers=hy, natural_regime="balanced")
    with pytest.raises(sd.SdederiveError, match="long-run covariance .* cancels"):
        sd.derive(tele)
    # the previous gradient inside a sign together with the current one
    sg = sd.from_update("sg", {"gp": g, "x": x - eta * sp.sign(g - gp)}, hypers={"eta": hy["eta"]})
    with pytest.raises(sd.ExpectationError, match="previous step's gradient .* sign.* no closed form"):
        sd.derive(sg)


# ------------------------------------------------------------------------------------------------
# mutation: the checks above can fail
# ------------------------------------------------------------------------------------------------

MUTATIONS = [
    ("sgd_clip", None, dict(grad=0.7, sigma=1.3, clip=1.0), 1e-2, {"x": lambda e: 1.05 * e}, None),
    ("sgd_clip", None, dict(grad=0.7, sigma=1.3, clip=1.0), 1e-2, None, {("x", "x"): lambda e: 1.05 * e}),
    ("amsgrad", None, dict(AMS, u_vhat=1.5), 1e-3, {"x": lambda e: 1.05 * e}, None),
    ("adabelief", None, dict(grad=0.7, sigma0=1.3, c1=2.0, c2=1.0, eps=0.3, m=0.3, u_s=0.8, t=0.7, x=0.1), 1e-3,
     {"u_s": lambda e: e - sd.sym("eps")}, None),
    ("qhadam", None, dict(grad=0.7, sigma0=1.3, c1=2.0, c2=1.0, eps0=0.1, nu1=0.7, m=0.3, u=0.8, t=0.7, x=0.1), 1e-3,
     None, {("x", "m"): lambda e: 1.1 * e}),
]


@pytest.mark.parametrize("case", MUTATIONS, ids=lambda c: f"{c[0]}-{'drift' if c[4] else 'cov'}")
def test_mutation_fails(case):
    opt, regime, point, eta, dov, cov = case
    bad = onestep_check(opt, regime=regime, point=point, eta=eta, samples=N, richardson=True,
                        drift_override=dov, covariance_override=cov)
    assert not bad.passed(), "the wrong coefficient was not detected:\n" + str(bad)


@pytest.mark.slow
def test_adan_weak_error_shrinks_with_eta():
    """End to end (simulators): discrete Adan against its SDE on a quadratic at t = 1 with the scaled decays
    rho_i fixed (1 - beta_i = rho_i eta): the error of E[loss] falls roughly like eta (O(1 - beta2) terms)."""
    import warnings

    from sdederive.analysis.regime_check import RegimeWarning

    prob = sd.Quadratic(h=np.geomspace(0.1, 10, 10), sigma=np.ones(10), x0=np.ones(10))
    rho = dict(beta1=20.0, beta2=80.0, beta3=10.0)
    disc, sde = sd.compile("adan", prob), sd.compile(sd.derive("adan"), prob)
    errs = []
    for eta in (2e-3, 5e-4):
        hyp = {k: 1 - r * eta for k, r in rho.items()} | {"wd": 0.0, "eps": 1e-8}
        steps = int(round(1 / eta))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RegimeWarning)
            a = disc.run(paths=2000, steps=steps, eta=eta, hyper=hyp, seed=3)
            b = sde.run(paths=2000, steps=steps, eta=eta, hyper=hyp, seed=3)
        d = abs(a.mean["loss"][-1] - b.mean["loss"][-1])
        se = math.hypot(a.se["loss"][-1], b.se["loss"][-1])
        errs.append((d, se))
    (d1, se1), (d2, se2) = errs
    assert d1 > 10 * se1, errs  # the O(1 - beta2) error is resolved at eta = 2e-3
    assert d2 < d1 / 2.5 + 4 * se2, errs  # and shrinks about 4x when eta does


def _lag_cases():
    x, g, gp, m = sd.symbols("x g gp m")
    eta, b = sd.sym("eta"), sd.sym("beta")
    v = sd.sym("v", nonnegative=True)
    hy = {"eta": (1e-3, "lr"), "beta": (0.9, "decay")}
    return {
        # x' = x - eta g_k g_k-1: Var(g_k g_k-1) = 2 mu^2 s^2 + s^4, Cov(g_k g_k-1, g_k+1 g_k) = mu^2 s^2
        "prod": (sd.from_update("prod", {"gp": g, "x": x - eta * g * gp}, hypers={"eta": hy["eta"]}), "sgd",
                 dict(grad=0.7, sigma=1.3, x=0.2), ("x", "x"), lambda mu, s2: 4 * mu**2 * s2 + s2**2),
        # the EMA of (g_k**2 + g_k-1**2)/2 has the long-run variance of g**2 alone: 4 mu^2 s^2 + 2 s^4 (times rho^2)
        "sqlag": (sd.from_update("sqlag", {"gp": g**2, "v": b * v + (1 - b) * (g**2 + gp) / 2,
                                           "x": x - eta * g / sp.sqrt(v)}, hypers=hy, kinds={"v": "second_moment"},
                                 natural_regime="balanced"),
                  "balanced", dict(grad=0.7, sigma=1.3, rho=2.0, v=1.1, x=0.2), ("v", "v"),
                  lambda mu, s2: sd.sym("rho", positive=True) ** 2 * (4 * mu**2 * s2 + 2 * s2**2)),
    }


@pytest.mark.parametrize("name", ["prod", "sqlag"])
def test_user_lagged_gradient_rules_match_hand_and_monte_carlo(name):
    """Lagged-gradient rules nobody has published: the long-run covariance against a hand computation and the
    one-step Monte Carlo (previous draw independent, two steps off one state)."""
    opt, regime, point, (a, b_), want = _lag_cases()[name]
    sde = sd.derive(opt, regime=regime)
    f = sde._free()
    i, j = sde.states.index(a), sde.states.index(b_)
    assert sp.simplify(sde.covariance[i, j] - f["eta"] * want(f["grad"], f["sigma"] ** 2)) == 0
    check(opt, regime=regime, point=point, eta=1e-3)

"""AMSGrad, per-coordinate clipping, AdaBelief, QH-Adam and Adan (issue 13, "common optimizers").

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


@pytest.mark.parametrize("regime", ["balanced", "noise-dominated", "sgd"])
def test_adan_refused_with_the_real_reason(regime):
    with pytest.raises(sd.RegimeMismatchError, match="previous step's gradient"):
        sd.derive("adan", regime=regime)
    assert "adan" not in sd.optimizers.names()  # the listed built-ins all derive


def test_adan_written_by_a_user_gets_the_same_reason():
    x, g, m, d, gp = sd.symbols("x g m d gp")
    n = sd.sym("n", nonnegative=True)
    eta, b1, b2 = sd.symbols("eta beta1 beta2")
    b3 = sd.sym("beta3", nonnegative=True)
    m1, d1 = b1 * m + (1 - b1) * g, b2 * d + (1 - b2) * (g - gp)
    n1 = b3 * n + (1 - b3) * (g + b2 * (g - gp)) ** 2
    opt = sd.from_update("my_adan", {"m": m1, "d": d1, "n": n1, "gp": g, "x": x - eta * (m1 + b2 * d1) / sp.sqrt(n1)},
                         hypers={"eta": (1e-3, "lr"), "beta1": (0.98, "decay"), "beta2": (0.92, "decay"),
                                 "beta3": (0.99, "decay")}, kinds={"n": "second_moment"}, natural_regime="balanced")
    with pytest.raises(sd.RegimeMismatchError, match="gp .* previous step's gradient .* long-run covariance"):
        sd.derive(opt)


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

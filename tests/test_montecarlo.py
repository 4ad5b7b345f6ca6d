"""Monte Carlo check of the derivation engine: derived one-step moments vs the discrete optimizers.

For every built-in optimizer in its natural regime (and the extra noise models and regimes listed
below) hypothesis draws hyperparameters, states and noise levels at the SDE level; the discrete
update is run from that state many times (``validators.onestep_check``) and the sample mean and
covariance of the increment must agree with ``tau*drift`` and ``tau*covariance`` within 5 standard
errors (plus the step-doubling truncation allowance, see ``validators/onestep.py``).

Choice of ``eta`` (the bias caveat).  The derived moments are leading order.

* Exact cases, checked without any allowance (``step_doubling=False``): SGD (any noise), heavy
  ball's slow variable ``x + eta*mu/(mu - 1)*m``, SignSGD in the sgd regime and Lion (their one-step
  increments are exactly ``-eta*sign(.)`` or linear in ``g``, whose moments are the derived closed
  forms), so ``eta`` is free (``1e-2``, ``1e-3``).
* Signum: ``sign(m_new) = sign(m)`` unless the noise flips it, which needs ``|z| > |m|/(rho*eta*sigma)``;
  with ``eta = 1e-4``, ``rho <= 5``, ``sigma <= 3`` and ``|m| >= 0.2`` that is ``|z| > 133``: never in
  the sample (Gaussian), probability ``< 1e-9`` per draw (Student-t, ``nu >= 5``), and what there is
  shrinks like ``eta**nu``, which the step-doubling allowance covers.
* Adaptive methods: the relative truncation error is ``O(eta)`` (``rho*eta*g**2/v`` in the balanced
  regimes, ``c*eta**2`` in the noise-dominated and accumulator ones).  ``eta = 1e-5`` (balanced) and
  ``1e-3`` (noise-dominated, accumulator) keep it around 1e-3 for typical ``g`` over the drawn
  ranges, well inside the regime, and the step-doubling allowance (same random numbers at
  ``2*eta``) absorbs what is left: with antithetic pairs the Monte Carlo error of e.g. Adam's mean
  step scales exactly like the truncation, so no ``eta`` makes it negligible by itself.  Step
  doubling also checks that the entries the leading order sets to zero (Adam's ``Cov[dx, dm]`` ...)
  really are of higher order: a leading-order entry wrongly derived as zero fails (mutation test).
* SignSGD in the noise-dominated regime: mean ``O(eta**2)`` under noise ``O(eta)``; antithetic pairs
  only differ when ``|z| < eta*|grad|/sigma0``, so ``eta = 1e-2`` gives a few-percent resolution.
* Sign methods: points where the moments hinge on a rare event (a flip of probability << 1/samples)
  are excluded from the drawn ranges (see ``RATIO``); the sample cannot resolve them.

Mutation tests multiply one derived coefficient by 1.1 (drift) or 1.2 (covariance) at the same
settings and assert the check fails, so every case above demonstrably could fail.

Runtime: about 30 s on 2 cores (10 examples per case, 2e5 samples per check).
"""

from __future__ import annotations

import os

import pytest
import sympy as sp
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from sdederive.validators import OneStepResult, onestep_check

import sdederive as sd
from sdederive.errors import ExpectationError

# No shrinking: each example is a Monte Carlo run; a failure is reported as drawn (with the table).
# SDEDERIVE_MC_EXAMPLES raises the number of examples per case; SDEDERIVE_MC_RANDOM=1 draws new ones
# (a stress run; the default is derandomized and so reproducible).
SETTINGS = settings(max_examples=int(os.environ.get("SDEDERIVE_MC_EXAMPLES", "10")), deadline=None,
                    derandomize=os.environ.get("SDEDERIVE_MC_RANDOM", "0") != "1",
                    phases=(Phase.explicit, Phase.generate), suppress_health_check=[HealthCheck.too_slow])
N = 200_000  # samples per check (100_000 antithetic pairs)


def f(lo, hi):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


def signed(lo, hi):
    """|value| in [lo, hi], either sign (kept away from 0 where a sign(.) must not flip)."""
    return st.tuples(st.sampled_from([-1.0, 1.0]), f(lo, hi)).map(lambda p: p[0] * p[1])


GRAD, SIGMA, X, M = f(-2.0, 2.0), f(0.2, 2.0), f(-2.0, 2.0), f(-2.0, 2.0)
RATE, EPS, WD, V, T = f(0.1, 5.0), f(0.0, 1.0), f(0.0, 0.5), f(0.1, 5.0), f(0.1, 3.0)


def check(*args, **kw) -> OneStepResult:
    kw.setdefault("samples", N)
    r = onestep_check(*args, **kw)
    assert r.passed(), "\n" + str(r)
    return r


# ------------------------------------------------------------------------------------------------
# natural regimes, Gaussian noise
# ------------------------------------------------------------------------------------------------


@SETTINGS
@given(grad=f(-3, 3), sigma=f(0.05, 3))
def test_sgd(grad, sigma):
    check("sgd", point=dict(grad=grad, sigma=sigma), eta=1e-2, step_doubling=False)


@SETTINGS
@given(grad=GRAD, sigma=SIGMA, mu=f(0.0, 0.95), m=M, x=X)
def test_sgd_momentum(grad, sigma, mu, m, x):
    """The fast buffer m is eliminated: the SDE's x is the discrete x + eta*mu/(mu - 1)*m."""
    check("sgd_momentum", point=dict(grad=grad, sigma=sigma, mu=mu, m=m, x=x), eta=1e-2, step_doubling=False)


# Sign methods: the mean sign argument over its noise scale (grad/sigma for SignSGD) is kept in
# 0.05 <= |ratio| <= 3 (or exactly 0), so that the events that carry the moments (a sign flip; with
# antithetic pairs, a pair whose signs agree) have probability >= 1e-3 and the sample resolves them.
# Outside that the event is rare (probability << 1/samples), the sample shows no fluctuation and
# its standard error is 0, so the check would fail without any error in the engine.
RATIO = st.one_of(st.just(0.0), signed(0.05, 3.0))


@SETTINGS
@given(ratio=RATIO, sigma=f(0.1, 3))
def test_signsgd(ratio, sigma):
    check("signsgd", point=dict(grad=ratio * sigma, sigma=sigma), eta=1e-2, step_doubling=False)


@SETTINGS
@given(grad=GRAD, sigma=f(0.2, 3), rho=RATE, m=signed(0.2, 2.0))
def test_signum(grad, sigma, rho, m):
    check("signum", point=dict(grad=grad, sigma=sigma, rho=rho, m=m), eta=1e-4)


@SETTINGS
@given(grad=GRAD, sigma0=SIGMA, c=RATE, eps0=EPS, u=V)
def test_rmsprop(grad, sigma0, c, eps0, u):
    check("rmsprop", point=dict(grad=grad, sigma0=sigma0, c=c, eps0=eps0, u=u), eta=1e-3)


@SETTINGS
@given(grad=GRAD, sigma=SIGMA, rho=RATE, eps=EPS, v=V, wd=WD, x=X)
def test_rmspropw(grad, sigma, rho, eps, v, wd, x):
    check("rmspropw", point=dict(grad=grad, sigma=sigma, rho=rho, eps=eps, v=v, wd=wd, x=x), eta=1e-5)


@SETTINGS
@given(grad=GRAD, sigma0=SIGMA, c1=RATE, c2=RATE, eps0=EPS, m=M, u=V, t=T, x=X)
def test_adam(grad, sigma0, c1, c2, eps0, m, u, t, x):
    check("adam", point=dict(grad=grad, sigma0=sigma0, c1=c1, c2=c2, eps0=eps0, m=m, u=u, t=t, x=x), eta=1e-3)


@SETTINGS
@given(grad=GRAD, sigma=SIGMA, rho1=RATE, rho2=RATE, eps=EPS, m=M, v=V, t=T, x=X, wd=WD)
def test_adamw(grad, sigma, rho1, rho2, eps, m, v, t, x, wd):
    check("adamw", point=dict(grad=grad, sigma=sigma, rho1=rho1, rho2=rho2, eps=eps, m=m, v=v, t=t, x=x, wd=wd),
          eta=1e-5)


@SETTINGS
@given(grad=GRAD, sigma=SIGMA, eps0=EPS, u=V)
def test_adagrad(grad, sigma, eps0, u):
    check("adagrad", point=dict(grad=grad, sigma=sigma, eps0=eps0, u=u), eta=1e-3)


def lion_m(ratio, grad, sigma, beta1):
    """m such that the sign's argument beta1*m + (1 - beta1)*g is ratio*(1 - beta1)*sigma on average."""
    return (1 - beta1) * (ratio * sigma - grad) / beta1


@SETTINGS
@given(ratio=RATIO, grad=GRAD, sigma=f(0.1, 3), rho2=RATE, beta1=f(0.3, 0.98), x=X, wd=WD)
def test_lion(ratio, grad, sigma, rho2, beta1, x, wd):
    m = lion_m(ratio, grad, sigma, beta1)
    check("lion", point=dict(grad=grad, sigma=sigma, rho2=rho2, beta1=beta1, m=m, x=x, wd=wd), eta=1e-3,
          step_doubling=False)


# ------------------------------------------------------------------------------------------------
# other noise models and regimes
# ------------------------------------------------------------------------------------------------


@SETTINGS
@given(ratio=RATIO, sigma=f(0.1, 3), nu=f(0.5, 12.0))
@example(ratio=0.8, sigma=1.0, nu=1.5)
@example(ratio=-0.5, sigma=0.7, nu=1.0)
@example(ratio=2.0, sigma=0.5, nu=2.0)
def test_signsgd_student_t(ratio, sigma, nu):
    """Any nu > 0 (no finite variance needed: sign(g) is bounded); nu symbolic in the SDE."""
    check("signsgd", "student-t", point=dict(grad=ratio * sigma, sigma=sigma, nu=nu), eta=1e-2, step_doubling=False)


@SETTINGS
@given(ratio=RATIO, sigma=f(0.1, 3))
def test_signsgd_student_t_nu_1_5(ratio, sigma):
    """nu fixed at 1.5 when deriving (infinite variance): the SDE has numbers where nu was."""
    check("signsgd", "student-t", point=dict(grad=ratio * sigma, sigma=sigma), eta=1e-2, step_doubling=False,
          noise_params={"nu": 1.5})


@SETTINGS
@given(grad=GRAD, sigma=f(0.2, 3), rho=RATE, m=signed(0.2, 2.0), nu=f(5.0, 15.0))
def test_signum_student_t(grad, sigma, rho, m, nu):
    """nu >= 5: Cov[dm, dm] is the variance of a linear function of T_nu; its Monte Carlo SE needs
    a finite fourth moment (nu > 4)."""
    check("signum", "student-t", point=dict(grad=grad, sigma=sigma, rho=rho, m=m, nu=nu), eta=1e-4)


@SETTINGS
@given(ratio=RATIO, grad=GRAD, sigma=f(0.1, 3), rho2=RATE, beta1=f(0.3, 0.98), x=X, wd=WD, nu=f(5.0, 15.0))
def test_lion_student_t(ratio, grad, sigma, rho2, beta1, x, wd, nu):
    m = lion_m(ratio, grad, sigma, beta1)
    check("lion", "student-t", point=dict(grad=grad, sigma=sigma, rho2=rho2, beta1=beta1, m=m, x=x, wd=wd, nu=nu),
          eta=1e-3, step_doubling=False)


@pytest.mark.parametrize("opt", ["signum", "lion"])
@pytest.mark.parametrize("nu", [1.5, 2.0])
def test_momentum_sign_methods_refuse_infinite_variance(opt, nu):
    """signum/lion at nu <= 2: their momentum m is linear in g, so Cov[dm] is infinite and there is no
    diffusion limit; the engine refuses (correctly) instead of returning an SDE to check."""
    with pytest.raises(ExpectationError, match="nu > 2"):
        sd.derive(opt, "student-t", nu=nu)


@SETTINGS
@given(grad=f(-3, 3), sigma1=f(0.1, 5.0), B=st.integers(1, 512))
def test_sgd_minibatch(grad, sigma1, B):
    check("sgd", "minibatch", point=dict(grad=grad, sigma1=sigma1, B=B), eta=1e-2, step_doubling=False)


@SETTINGS
@given(grad=GRAD, sigma=SIGMA, rho=RATE, eps=EPS, v=V, wd=WD, x=X)
def test_rmspropw_balanced_full(grad, sigma, rho, eps, v, wd, x):
    r = check("rmspropw", regime="balanced-full",
              point=dict(grad=grad, sigma=sigma, rho=rho, eps=eps, v=v, wd=wd, x=x), eta=1e-5)
    assert r.derived_cov[1, 1] > 0  # v's O(sqrt(eta)) noise is kept (and checked)


@SETTINGS
@given(grad=GRAD, sigma=SIGMA, rho1=RATE, rho2=RATE, eps=EPS, m=M, v=V, t=T, x=X, wd=WD)
def test_adamw_balanced_full(grad, sigma, rho1, rho2, eps, m, v, t, x, wd):
    check("adamw", regime="balanced-full",
          point=dict(grad=grad, sigma=sigma, rho1=rho1, rho2=rho2, eps=eps, m=m, v=v, t=t, x=x, wd=wd), eta=1e-5)


@SETTINGS
@given(ratio=st.one_of(st.just(0.0), signed(0.2, 2.0)), sigma0=f(0.3, 3.0))
def test_signsgd_noise_dominated(ratio, sigma0):
    """The antithetic pairs differ only when |z| < eta*|grad|/sigma0 (probability ~ 0.8*eta*|ratio|):
    |ratio| >= 0.2 gives >= 100 such pairs in 1e5."""
    check("signsgd", regime="noise-dominated", point=dict(grad=ratio * sigma0, sigma0=sigma0), eta=1e-2,
          samples=200_000)


# ------------------------------------------------------------------------------------------------
# order 2 (SGD): exact symbolic check, and the Monte Carlo mean through eta**2
# ------------------------------------------------------------------------------------------------

eta_s, x_s, h_s = sd.sym("eta"), sd.sym("x"), sd.sym("h")
grad_s, hess_s = sd.sym("grad"), sd.sym("hess")


def _order2_mean(b2, b1, grad, hess):
    """eta*b2 + eta**2/2*(d b1/dx)*b1: the SDE's E[X_eta - x] through eta**2 (d/dx via grad and hess)."""
    b2 = b2.subs({grad_s: grad, hess_s: hess})
    b1 = b1.subs({grad_s: grad, hess_s: hess})
    return eta_s * b2 + eta_s**2 / 2 * sp.diff(b1, x_s) * b1


def test_sgd_order2_symbolic_quadratic():
    """f = h x**2/2: grad = h*x, hess = h; the discrete mean -eta*h*x is matched through eta**2,
    and the order-1 drift alone misses the eta**2 term."""
    b2 = sd.derive("sgd", order=2).drift["x"]
    b1 = sd.derive("sgd").drift["x"]
    err2 = sp.expand(_order2_mean(b2, b1, h_s * x_s, h_s) - (-eta_s * h_s * x_s))
    assert all(sp.simplify(err2.coeff(eta_s, p)) == 0 for p in (0, 1, 2))
    err1 = sp.expand(_order2_mean(b1, b1, h_s * x_s, h_s) - (-eta_s * h_s * x_s))
    assert sp.simplify(err1.coeff(eta_s, 2)) != 0


def test_sgd_order2_symbolic_general_f():
    """Any smooth f: grad = f'(x), hess = f''(x)."""
    fx = sp.Function("f")(x_s)
    b2 = sd.derive("sgd", order=2).drift["x"]
    b1 = sd.derive("sgd").drift["x"]
    fp, fpp = sp.diff(fx, x_s), sp.diff(fx, x_s, 2)
    err = sp.expand(_order2_mean(b2, b1, fp, fpp) + eta_s * fp)
    assert all(sp.simplify(err.coeff(eta_s, p)) == 0 for p in (0, 1, 2))


@SETTINGS
@given(grad=GRAD, hess=f(-3.0, 3.0), sigma=SIGMA)
def test_sgd_order2_montecarlo(grad, hess, sigma):
    """onestep_check(order=2): derived mean = weak Ito-Taylor mean of the order-2 SDE through eta**2.
    The order-1 drift put in its place fails (its eta**2 term, eta**2*hess*grad/2, is visible)."""
    pt = dict(grad=grad, hess=hess, sigma=sigma)
    check("sgd", order=2, point=pt, eta=0.05, step_doubling=False)
    if abs(grad * hess) > 0.05:
        wrong = onestep_check("sgd", order=2, point=pt, eta=0.05, step_doubling=False, samples=N,
                              drift_override={"x": -grad_s})
        assert not wrong.passed()


# ------------------------------------------------------------------------------------------------
# mutation tests: a wrong coefficient fails at the same settings
# ------------------------------------------------------------------------------------------------

MUTATIONS = [
    # (optimizer, noise, regime, point, eta, step_doubling, drift_override, covariance_override[, samples])
    ("sgd", "gaussian", None, dict(grad=0.7, sigma=1.3), 1e-2, False, {"x": lambda e: 1.1 * e}, None),
    ("sgd", "gaussian", None, dict(grad=0.7, sigma=1.3), 1e-2, False, None, {("x", "x"): lambda e: 1.2 * e}),
    ("signsgd", "gaussian", None, dict(grad=0.7, sigma=1.3), 1e-2, False, {"x": lambda e: 1.1 * e}, None),
    ("signsgd", "gaussian", None, dict(grad=0.7, sigma=1.3), 1e-2, False, None, {("x", "x"): lambda e: 1.2 * e}),
    ("signsgd", "student-t", None, dict(grad=0.7, sigma=1.3, nu=1.5), 1e-2, False, {"x": lambda e: 1.1 * e}, None),
    ("rmsprop", "gaussian", None, dict(grad=0.7, sigma0=1.3, c=2.0, eps0=0.1, u=0.8), 1e-3, True,
     {"x": lambda e: 1.1 * e}, None),
    ("rmsprop", "gaussian", None, dict(grad=0.7, sigma0=1.3, c=2.0, eps0=0.1, u=0.8), 1e-3, True,
     {"u": lambda e: 1.1 * e}, None),
    ("rmsprop", "gaussian", None, dict(grad=0.7, sigma0=1.3, c=2.0, eps0=0.1, u=0.8), 1e-3, True,
     None, {("x", "x"): lambda e: 1.2 * e}),
    ("adam", "gaussian", None, dict(grad=0.7, sigma0=1.3, c1=2.0, c2=1.0, eps0=0.1, m=0.3, u=0.8, t=0.7, x=0.1),
     1e-3, True, {"x": lambda e: 1.1 * e}, None),
    ("adam", "gaussian", None, dict(grad=0.7, sigma0=1.3, c1=2.0, c2=1.0, eps0=0.1, m=0.3, u=0.8, t=0.7, x=0.1),
     1e-3, True, {"m": lambda e: e.subs(sd.sym("c1"), 1.1 * sd.sym("c1"))}, None),
    ("adam", "gaussian", None, dict(grad=0.7, sigma0=1.3, c1=2.0, c2=1.0, eps0=0.1, m=0.3, u=0.8, t=0.7, x=0.1),
     1e-3, True, None, {("m", "m"): lambda e: 1.2 * e}),
    # a leading-order entry wrongly set to zero is caught (the step-doubling allowance does not hide it)
    ("adamw", "gaussian", "balanced-full",
     dict(grad=0.7, sigma=1.3, rho1=2.0, rho2=1.0, eps=0.1, m=0.3, v=0.8, t=0.7, x=1.0, wd=0.2), 1e-5, True,
     None, {("m", "v"): 0}),
    ("lion", "gaussian", None, dict(grad=0.7, sigma=1.3, rho2=2.0, beta1=0.9, m=0.3, x=1.0, wd=0.1), 1e-3, False,
     {"x": lambda e: 1.1 * e}, None),
    ("lion", "gaussian", None, dict(grad=0.7, sigma=1.3, rho2=2.0, beta1=0.9, m=0.3, x=1.0, wd=0.1), 1e-3, False,
     None, {("x", "m"): lambda e: 1.2 * e}, 400_000),  # Cov[dx, dm]: weak correlation, 2.3% SE at 4e5
    ("lion", "student-t", None, dict(grad=0.7, sigma=1.3, rho2=2.0, beta1=0.9, m=0.3, x=1.0, wd=0.1, nu=6.0), 1e-3,
     False, None, {("x", "x"): lambda e: 1.2 * e}),
]


@pytest.mark.parametrize("case", MUTATIONS, ids=lambda c: f"{c[0]}-{c[1]}-{'drift' if c[6] else 'cov'}"
                         f"-{next(iter(c[6] or c[7]))}")
def test_mutation_fails(case):
    opt, noise, regime, point, eta, sd_, dov, cov = case[:8]
    kw = dict(point=point, eta=eta, step_doubling=sd_, samples=case[8] if len(case) > 8 else N)
    good = onestep_check(opt, noise, regime, **kw)
    assert good.passed(), "\n" + str(good)
    bad = onestep_check(opt, noise, regime, **kw, drift_override=dov, covariance_override=cov)
    assert not bad.passed(), "the wrong coefficient was not detected:\n" + str(bad)


# ------------------------------------------------------------------------------------------------
# the harness itself
# ------------------------------------------------------------------------------------------------


def test_harness_maps_sde_values_to_discrete_ones():
    eta = 1e-3
    r = onestep_check("adam", point=dict(grad=0.5, sigma0=1.0, c1=2.0, c2=1.0, eps0=0.1, m=0.3, u=0.8, t=0.7, x=0.1),
                      eta=eta, samples=2_000)
    d = r.discrete
    assert d["beta1"] == pytest.approx(1 - 2.0 * eta**2) and d["beta2"] == pytest.approx(1 - eta**2)
    assert d["eps"] == pytest.approx(0.1 / eta) and d["noise scale"] == pytest.approx(1.0 / eta)
    assert d["v_0"] == pytest.approx(0.8 / eta**2)
    assert d["k"] % 4 == 0 and r.point["t"] == pytest.approx(d["k"] * eta**2)  # k*tau, doubling-compatible
    assert "E[dx]" in str(r) and "PASSED" in str(r)


def test_harness_heavy_ball_slow_variable():
    r = onestep_check("sgd_momentum", point=dict(grad=0.5, sigma=1.0, mu=0.9, m=2.0, x=1.0), eta=1e-2,
                      samples=2_000, step_doubling=False)
    # discrete x = SDE x - a*m with a = eta*mu/(mu - 1)
    assert r.discrete["x_0"] == pytest.approx(1.0 - 1e-2 * 0.9 / (0.9 - 1) * 2.0)


def test_harness_rejects_incomplete_point():
    with pytest.raises(ValueError, match="lacks"):
        onestep_check("adam", point=dict(grad=0.5), eta=1e-3, samples=1_000)
    with pytest.raises(ValueError, match="unknown"):
        onestep_check("sgd", point=dict(grad=0.5, sigma=1.0, sigmaa=2.0), eta=1e-3, samples=1_000)


# ------------------------------------------------------------------------------------------------
# a fast state that enters only through sign(.) cannot be averaged out linearly: refused, not dropped
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("opt", ["signum", "lion"])
def test_eliminated_fast_state_does_not_remain_in_the_sde(opt):
    with pytest.raises(sd.RegimeMismatchError, match=r"state m .* fast .*enters the update through sign"):
        sd.derive(opt, regime="sgd")
    # and wherever a fast state is eliminated, the SDE no longer depends on it
    for name in ["sgd_momentum"]:
        sde = sd.derive(name, regime="sgd")
        for fast in sde.eliminated:
            assert fast not in sde.symbols

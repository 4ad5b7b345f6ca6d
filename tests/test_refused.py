"""Right or refused (issue 13): inputs on which the derivation used to return a silently wrong SDE.

Every test here failed on the code before the fix: a custom ``tau`` with a constant or a fractional
power, ``order=2`` with bias corrections or on a dense Hessian, nested non-smooth functions of the
noise, Student-t ``nu`` that hung or returned NaN, and messages with internal names or wrong advice.
Expected values are hand derivations or an independent numpy Monte Carlo, never the code under test.
"""

from __future__ import annotations

import math
import re
import time

import numpy as np
import pytest
import sympy as sp

import sdederive as sd
from sdederive.cli.main import main
from sdederive.derivation.expectation import is_zero
from sdederive.simulate.lower import CodegenError
from sdederive.simulate.spec import sde_spec

S = sd.sym
eta, grad, sigma, t = S("eta"), S("grad"), S("sigma"), S("t")
_INTERNAL = re.compile(r"(?<![A-Za-z0-9])_[A-Za-z]\w*")  # how sympy prints a Dummy: _S0, _G1, ...


def _num(e, vals):
    return complex(sp.N(sp.sympify(e).xreplace(vals), 20)).real


# -- 1. tau = c*eta**q: the constant and fractional powers are used, not dropped ---------------------


def test_constant_in_tau_halves_sgd_drift_and_covariance():
    # Delta = -eta*(grad + sigma*z): E/tau = -grad/2 and Var/tau = eta*sigma**2/2 for tau = 2*eta
    sde = sd.derive("sgd", regime=sd.Regime("sgd-2eta", 2 * eta))
    assert sp.simplify(sde.drift["x"] + grad / 2) == 0
    assert sp.simplify(sde.covariance[0, 0] - eta * sigma**2 / 2) == 0


def test_tau_eta_squared_over_three():
    # signSGD is O(eta) per step: with tau = eta**2/3 the drift diverges -> refused, naming the term
    with pytest.raises(sd.RegimeMismatchError, match=r"diverges"):
        sd.derive("sgd", regime=sd.Regime("sgd-eta2", eta**2 / 3))


def test_sqrt_tau_is_refused_as_no_limit():
    # E[Delta]/tau = -sqrt(eta)*grad -> 0 and Var/tau -> 0: the "limit" would be dx = 0
    with pytest.raises(sd.RegimeMismatchError, match=r"does not move.*tau = eta"):
        sd.derive("sgd", regime=sd.Regime("sgd-sqrt", sp.sqrt(eta)))


@pytest.mark.parametrize("tau", [eta + eta**2, -eta, sp.exp(-1 / eta), eta * sp.log(1 / eta), sp.Integer(2)])
def test_tau_not_a_power_of_eta_is_refused(tau):
    with pytest.raises(sd.RegimeMismatchError, match=r"tau=.*allowed: tau = c\*eta\*\*q"):
        sd.Regime("bad", tau)


def test_adam_with_tau_two_eta_squared_matches_hand_formula():
    # the noise-dominated scalings with tau = 2*eta**2: k = t/(2 eta**2), so beta**(k+1) -> exp(-c*t/2);
    # Delta m = c1 eta**2 (grad - m) + noise, Delta u = c2 eta**2 (sigma0**2 - u) + ..., and
    # Delta x = -eta**2 (m/G1)/(sqrt(u/G2) + eps0) + ..., all divided by 2 eta**2.
    reg = sd.Regime("nd-2eta2", 2 * eta**2, decay_power=2, decay_prefix="c", scale_noise=True, scale_eps=True,
                    rescale=("second_moment",))
    sde = sd.derive("adam", regime=reg)
    c1, c2, s0, e0, m, u = S("c1"), S("c2"), S("sigma0"), S("eps0"), S("m"), S("u")
    G1, G2 = 1 - sp.exp(-c1 * t / 2), 1 - sp.exp(-c2 * t / 2)
    want = {"m": c1 * (grad - m) / 2, "u": c2 * (s0**2 - u) / 2,
            "x": -(m / G1) / (2 * (sp.sqrt(u) / sp.sqrt(G2) + e0))}
    rng = np.random.default_rng(0)
    for _ in range(3):
        vals = {c1: 0.7, c2: 0.3, s0: 1.3, e0: 0.2, m: 0.4, u: 0.9, grad: -0.6, t: 1.7}
        vals = {k: sp.Float(v * rng.uniform(0.8, 1.2)) for k, v in vals.items()}
        for s, w in want.items():
            assert math.isclose(_num(sde.drift[s], vals), _num(w, vals), rel_tol=1e-12), s


# -- 2. order 2 with time-dependent coefficients -----------------------------------------------------


@pytest.mark.parametrize("opt", ["adamw", sd.Regime("bal2", eta, decay_power=1)])
def test_order2_with_bias_correction_is_refused(opt):
    name, regime = ("adamw", None) if opt == "adamw" else ("adam", opt)
    with pytest.raises(sd.SdederiveError, match=r"order=2 is not available.*step counter k.*bias correction"):
        sd.derive(name, regime=regime, order=2)


def test_order2_without_step_counter_still_derives():
    sde = sd.derive("rmspropw", order=2)
    assert sde.order == 2 and any("diagonal Hessian" in n for n in sde.notes)


# -- 3. nested non-smooth functions of the noise -------------------------------------------------------


def _nested_opt(inner):
    x, g = sd.symbols("x g")
    return sd.from_update("nested", {"x": x - eta * inner(g)}, hypers={"eta": (1e-3, "lr"), "cl": (1.0, "positive")})


def test_sign_of_clipped_gradient_matches_monte_carlo():
    cl = S("cl", positive=True)
    sde = sd.derive(_nested_opt(lambda g: sp.sign(sp.Min(g, cl) - cl / 2)))
    drift = sde.drift["x"]
    assert not drift.has(S("z")) and not drift.has(sp.DiracDelta) and not drift.has(sp.Piecewise)
    rng = np.random.default_rng(1)
    z = rng.standard_normal(400_000)
    for gv, sv, cv in [(0.3, 1.0, 1.0), (-0.4, 0.5, 2.0), (1.2, 0.8, 1.5)]:
        # E[Delta x]/eta at any eta: the update is exactly -eta*sign(min(g, c) - c/2)
        samples = -np.sign(np.minimum(gv + sv * z, cv) - cv / 2)
        mc, se = samples.mean(), samples.std() / np.sqrt(z.size)
        got = _num(drift, {grad: gv, sigma: sv, cl: cv})
        assert abs(got - mc) < 5 * se, (gv, sv, cv, got, mc)
        var = _num(sde.covariance[0, 0], {grad: gv, sigma: sv, cl: cv, eta: 1.0})
        assert abs(var - samples.var()) < 5 * 2 * se, (var, samples.var())


@pytest.mark.parametrize("inner", [
    lambda g: sp.sign(sp.Abs(g) - S("cl", positive=True)),         # sign(|g| - c): not sign of an affine
    lambda g: sp.sign(sp.Min(g, S("r")) - sp.Rational(1, 2)),     # r - 1/2 of unknown sign
    lambda g: sp.sign(sp.sign(g) + g),                              # sign inside sign
])
def test_unsupported_nesting_is_refused(inner):
    x, g = sd.symbols("x g")
    opt = sd.from_update("nested2", {"x": x - eta * inner(g)},
                         hypers={"eta": (1e-3, "lr"), "cl": (1.0, "positive"), "r": (1.0, "real")})
    with pytest.raises(sd.ExpectationError, match=r"cannot take the expectation"):
        sd.derive(opt)


def test_zero_test_does_not_take_a_point_mass_for_zero():
    x = S("x")
    assert not is_zero(sp.DiracDelta(x - sp.Rational(1, 3)))


# -- 4. order 2 on a dense Hessian ------------------------------------------------------------------------


def test_order2_sde_refused_on_dense_hessian():
    sde2 = sd.derive("sgd", order=2)
    dense = sd.Quadratic(H=[[2.0, 0.5], [0.5, 1.0]], sigma=[1.0, 1.0], x0=[1.0, 1.0])
    with pytest.raises(CodegenError, match=r"diagonal Hessian.*non-diagonal H"):
        sde_spec(sde2, dense, correlated=False)
    with pytest.raises(CodegenError, match=r"diagonal Hessian"):
        sd.compile(sde2, dense)
    with pytest.raises(CodegenError, match=r"logistic"):
        sde_spec(sde2, sd.LogisticRegression.synthetic(n=16, d=2, B=4), correlated=True)
    # a diagonal problem (dense or not in form) and the order-1 SDE are fine
    diag = sd.Quadratic(H=[[2.0, 0.0], [0.0, 1.0]], sigma=[1.0, 1.0], x0=[1.0, 1.0])
    assert sde_spec(sde2, diag, correlated=False).mode == "sde"
    assert sde_spec(sde2, sd.Quadratic(h=[2.0, 1.0], sigma=[1.0, 1.0], x0=[1.0, 1.0]), correlated=False)
    assert sde_spec(sd.derive("sgd"), dense, correlated=False)


def test_readme_and_docs_state_the_order2_caveat():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for page in ("README.md", "docs/derivation.md"):
        text = " ".join((root / page).read_text().lower().split())
        assert "diagonal hessian" in text and "order-2" in text, page


# -- 5. Student-t nu: fast for every valid nu, Gaussian limit for very large nu ----------------------------


@pytest.mark.parametrize("nu", [2.5, 3, 30, 100, 1e4, 1e6, 1e300])
def test_student_t_signsgd_derives_fast(nu):
    sd.clear_cache()
    t0 = time.perf_counter()
    sde = sd.derive("signsgd", noise="student-t", nu=nu)
    assert time.perf_counter() - t0 < 2.0
    vals = {grad: 0.7, sigma: 1.3, eta: 0.01}
    assert math.isfinite(_num(sde.drift["x"], vals)) and math.isfinite(_num(sde.covariance[0, 0], vals))


@pytest.mark.parametrize("nu", [1e6, 1e300])
def test_student_t_large_nu_is_the_gaussian_limit(nu):
    # E[-sign(grad + sigma*T)] -> -erf(grad/(sigma*sqrt(2))): the CDF gap is at most 0.016/nu
    sde = sd.derive("signsgd", noise="student-t", nu=nu)
    for gv, sv in [(0.3, 1.0), (-1.5, 0.7), (2.0, 3.0)]:
        gauss = -math.erf(gv / (sv * math.sqrt(2)))
        assert abs(_num(sde.drift["x"], {grad: gv, sigma: sv}) - gauss) < 1e-6


def test_student_t_large_nu_adam():
    t0 = time.perf_counter()
    sde = sd.derive("adam", noise="student-t", nu=1e300)
    assert time.perf_counter() - t0 < 5.0
    # noise-dominated Adam: u relaxes to sigma0**2 E z**2, with E z**2 = nu/(nu - 2) -> 1
    assert sp.simplify(sde.drift["u"] - S("c2") * (S("sigma0") ** 2 - S("u"))) == 0


# -- 6. nu out of range -----------------------------------------------------------------------------------


@pytest.mark.parametrize("nu", [1e-300, 0, -1, 0.05, float("nan"), float("inf"), "many"])
def test_bad_nu_is_refused(nu):
    with pytest.raises(sd.NoiseModelError, match=r"nu=.*(allowed: nu > 0|noise='gaussian')"):
        sd.derive("signsgd", noise="student-t", nu=nu)


@pytest.mark.parametrize("nu", ["1e-300", "nan", "inf"])
def test_cli_bad_nu_exits_2(capsys, nu):
    rc = main(["derive", "signsgd", "--noise", "student-t", "--nu", nu])
    cap = capsys.readouterr()
    assert rc == 2 and f"nu={nu}" in cap.err and "allowed" in cap.err and "(nan)" not in cap.out


# -- messages ---------------------------------------------------------------------------------------------


def test_hyperparameter_built_with_sd_sym_is_accepted():
    x, g = sd.symbols("x g")
    gam = sd.sym("gamma")  # default assumptions; the hyperparameter's own symbol is positive
    opt = sd.from_update("scaled_sgd", {"x": x - eta * gam * g}, hypers={"eta": (1e-3, "lr"), "gamma": (0.5, "positive")})
    sde = sd.derive(opt)
    assert sp.simplify(sde.drift["x"] + S("gamma", positive=True) * grad) == 0


def test_hyperparameter_with_plain_symbol_gets_exact_advice():
    x, g = sd.symbols("x g")
    with pytest.raises(sd.SpecError, match=re.escape("sd.sym('gamma', positive=True)")):
        sd.from_update("o", {"x": x - eta * sp.Symbol("gamma") * g},
                       hypers={"eta": (1e-3, "lr"), "gamma": (0.5, "positive")})


def test_reserved_hyperparameter_name_is_a_hyperparameter_error():
    x, g = sd.symbols("x g")
    with pytest.raises(sd.HyperparameterError, match=r"'nu' is reserved.*Student-t.*another name"):
        sd.from_update("o", {"x": x - eta * g}, hypers={"eta": (1e-3, "lr"), "nu": (0.5, "decay")})


def test_unknown_hyperparameter_message_reads_well():
    with pytest.raises(sd.UnknownNameError, match=r"valid hyperparameters of sgd: eta"):
        sd.optimizers.get("sgd", foo=1)


def _adam_like():
    x, g, m, s = sd.symbols("x g m s")
    b1, b2, eps, k = S("beta1"), S("beta2"), S("eps"), S("k")
    hy = {"eta": (1e-3, "lr"), "beta1": (0.9, "decay"), "beta2": (0.999, "decay"), "eps": (1e-8, "eps")}
    return x, g, m, s, b1, b2, eps, k, hy


def test_fast_state_message_names_the_cause():
    # AdaBelief-like: s gains eps every step, so s is fast in the balanced regime whatever the decays do
    x, g, m, s, b1, b2, eps, k, hy = _adam_like()
    m1 = b1 * m + (1 - b1) * g
    s1 = b2 * s + (1 - b2) * (g - m1) ** 2 + eps
    opt = sd.from_update("belief", {"m": m1, "s": s1, "x": x - eta * m1 / (sp.sqrt(s1) + eps)}, hypers=hy)
    with pytest.raises(sd.RegimeMismatchError) as info:
        sd.derive(opt, regime="balanced")
    msg = str(info.value)
    assert "state s" in msg and "part eps" in msg and "comes from eps" in msg, msg
    assert "Use a regime in which it is slow" not in msg and not _INTERNAL.search(msg), msg


def test_last_gradient_state_is_not_sent_to_a_regime_that_cannot_exist():
    x, g, m, s, b1, b2, eps, k, hy = _adam_like()
    gp = S("gprev")
    opt = sd.from_update("adan_like", {"gprev": g, "x": x - eta * sp.sign(g - gp)}, hypers={"eta": hy["eta"]})
    with pytest.raises(sd.ExpectationError) as info:  # the lagged-noise model takes gprev; the sign of both is refused
        sd.derive(opt)
    msg = str(info.value)
    assert "previous step's gradient (gprev)" in msg and "sign(g - gprev)" in msg and "every regime" in msg, msg
    assert "in which it is slow" not in msg and "Try another regime" not in msg, msg


def test_max_of_states_derives_as_the_running_maximum():
    # AMSGrad-like: Max(vmax, v_new) compares a state with one quadratic in g.  It used to be refused
    # (with advice to register a rule that could not apply); it now derives as the running maximum of
    # v's limit: d vmax = 1{v >= vmax} max(0, b_v) dt, with b_v = rho2 (grad**2 + sigma**2 - v)
    x, g, m, s, b1, b2, eps, k, hy = _adam_like()
    v, vmax = S("v"), S("vmax")
    v1 = b2 * v + (1 - b2) * g**2
    vm1 = sp.Max(vmax, v1)
    opt = sd.from_update("ams_like", {"v": v1, "vmax": vm1, "x": x - eta * g / (sp.sqrt(vm1) + eps)},
                         hypers={n: hy[n] for n in ("eta", "beta2", "eps")}, kinds={"v": "second_moment"})
    sde = sd.derive(opt, regime="balanced")
    free = sde._free()
    drift = sde.drift["vmax"]
    for vv, vm, gr, sg in [(1.0, 2.0, 0.5, 1.0), (2.0, 2.0, 1.5, 1.0), (2.0, 2.0, 0.1, 0.5), (3.0, 2.0, 2.0, 0.5)]:
        b_v = 0.7 * (gr**2 + sg**2 - vv)  # rho2 = 0.7
        want = max(0.0, b_v) if vv >= vm else 0.0
        got = float(drift.subs({free["v"]: vv, free["vmax"]: vm, free["grad"]: gr, free["sigma"]: sg,
                                free["rho2"]: 0.7}))
        assert got == pytest.approx(want, abs=1e-12), (vv, vm, gr, sg, got, want)


def test_no_internal_names_in_messages():
    # QHAdam-like: the noise enters a square root at order one; the message used to show nuq2*v/_G1
    x, g, m, s, b1, b2, eps, k, hy = _adam_like()
    v, n2 = S("v"), S("nuq2", nonnegative=True)
    v1 = b2 * v + (1 - b2) * g**2
    opt = sd.from_update("qh_like", {"v": v1, "x": x - eta * g / (sp.sqrt((1 - n2) * g**2 + n2 * v1 / (1 - b2 ** (k + 1))) + eps)},
                         hypers={**{n: hy[n] for n in ("eta", "beta2", "eps")}, "nuq2": (0.7, "interp")},
                         kinds={"v": "second_moment"})
    with pytest.raises(sd.ExpectationError) as info:
        sd.derive(opt, regime="balanced")
    msg = str(info.value)
    assert not _INTERNAL.search(msg) and "1 - exp(-rho2*t)" in msg, msg


def test_student_t_message_does_not_promise_signum_for_every_nu():
    with pytest.raises(sd.ExpectationError) as info:
        sd.derive("signum", noise="student-t", nu=1.5)
    msg = str(info.value)
    assert "needs nu > 2" in msg and "signum, lion) are defined for every" not in msg, msg


def test_no_internal_names_in_unsupported_function_message():
    # the bias placeholder inside an unsupported function of the noise is shown as 1 - exp(-rho1*t)
    x, g, m, s, b1, b2, eps, k, hy = _adam_like()
    m1 = b1 * m + (1 - b1) * g
    opt = sd.from_update("tanh_bias", {"m": m1, "x": x - eta * sp.tanh(g / (1 - b1 ** (k + 1)))},
                         hypers={n: hy[n] for n in ("eta", "beta1")})
    with pytest.raises(sd.ExpectationError) as info:
        sd.derive(opt, regime="balanced")
    msg = str(info.value)
    assert not _INTERNAL.search(msg) and "1 - exp(-rho1*t)" in msg, msg


@pytest.mark.parametrize("nu", [0.1, 2.7, 1e5])
def test_student_t_sign_drift_matches_scipy(nu):
    # E[-sign(grad + sigma*T_nu)] = -(2*F_nu(grad/sigma) - 1), F_nu from scipy
    from scipy import stats

    sde = sd.derive("signsgd", noise="student-t", nu=nu)
    for gv, sv in [(0.5, 1.0), (-2.0, 0.7)]:
        ref = -(2 * stats.t.cdf(gv / sv, nu) - 1)
        assert abs(_num(sde.drift["x"], {grad: gv, sigma: sv}) - ref) < 1e-12


def test_no_internal_names_when_x_moves_order_one():
    # used to print the increment as -lam*_S0 (the sign atom's placeholder)
    x, g = sd.symbols("x g")
    lam = S("lam", positive=True)
    opt = sd.from_update("o1", {"x": x - lam * sp.sign(g)}, hypers={"lam": (0.1, "positive")})
    with pytest.raises(sd.RegimeMismatchError) as info:
        sd.derive(opt)
    msg = str(info.value)
    assert "moves O(1)" in msg and "sign(grad + sigma*z)" in msg and not _INTERNAL.search(msg), msg

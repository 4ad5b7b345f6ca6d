"""Rates from SDEs: the Itô generator, the bounding steps, Grönwall, and the published forms.

Symbolic results are compared with the reference formulas (docs/reference/adaptive_sdes.md §2.3, §2.5;
docs/reference/rates_and_batch_scaling.md §3.2) written out here independently, and the generator and one bound
are checked against Monte Carlo runs of the simulators.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

import sdederive as sd
from sdederive.analysis import rates
from sdederive.analysis.assumptions import Anisotropic, Assumptions, Smooth
from sdederive.analysis.ito import generator

eta, sigma, grad, hess, h = (sd.sym(n) for n in ("eta", "sigma", "grad", "hess", "h"))
t = sd.sym("t")
L, mu, smax = (sp.Symbol(n, positive=True) for n in ("L", "mu", "sigma_max"))
F0 = rates.F0
d = sp.Symbol("d", integer=True, positive=True)


# -- Itô generator ----------------------------------------------------------------------------
def test_generator_of_sgd_is_exact_on_a_quadratic():
    """d/dt E f = E[L f] for the OU process of SGD on f = h x^2/2, from its closed-form moments."""
    gen = generator(sd.derive("sgd"), "loss")
    assert sp.simplify(gen.summand - (-grad**2 + eta * sigma**2 * hess / 2)) == 0
    x0 = sp.Symbol("x0", real=True)
    mean = x0 * sp.exp(-h * t)
    var = eta * sigma**2 * (1 - sp.exp(-2 * h * t)) / (2 * h)
    Ef = h / 2 * (mean**2 + var)
    lf = sp.expand(gen.on_quadratic())  # -h^2 x^2 + eta h sigma^2/2, in E: x^2 -> mean^2 + var
    x = sd.sym("x")
    ELf = lf.coeff(x, 2) * (mean**2 + var) + lf.coeff(x, 0)
    assert sp.simplify(sp.diff(Ef, t) - ELf) == 0


def test_generator_matches_monte_carlo_of_signsgd_student_t():
    """E[f(X_tau)] - f(x0) = tau * Lf(x0) + O(tau^2) for the Student-t SignSGD SDE (one Euler step)."""
    from sdederive.problems import Quadratic

    sde = sd.derive("signsgd", noise="student-t", nu=3)
    gen = generator(sde, "loss")
    hv, sv, x0, e = 2.0, 0.7, 0.4, 1e-3
    lf = float(gen.on_quadratic().subs({h: hv, sigma: sv, eta: e, sd.sym("x"): x0}))
    sim = sd.compile(sde, Quadratic(h=[hv], sigma=[sv], x0=[x0], noise="student-t", nu=3))
    res = sim.run(paths=400_000, steps=1, eta=e, seed=3, save_every=1)
    f0 = hv * x0**2 / 2
    est = (res.mean["loss"][-1] - f0) / e
    se = res.se["loss"][-1] / e
    assert abs(est - lf) < 4 * se + 0.02 * abs(lf), (est, lf, se)
    assert lf < 0  # the drift decreases f at this point: the test is not vacuous


def test_generator_of_a_user_test_function():
    sde = sd.derive("rmspropw")
    v, x = sd.sym("v"), sd.sym("x")
    gen = generator(sde, x**2 * v)
    # drift terms b_x d_x phi + b_v d_v phi, Ito term 1/2 D_x^2 * 2 v
    bx, bv = sde.drift["x"], sde.drift["v"]
    Dx = sde.diffusion["x"]
    assert sp.simplify(gen.summand - (bx * 2 * x * v + bv * x**2 + Dx**2 * v)) == 0
    with pytest.raises(sd.SdederiveError, match="not states"):
        generator(sde, x * sp.Symbol("foo"))
    with pytest.raises(sd.SdederiveError, match="unknown test function 'lossy'"):
        generator(sde, "lossy")


# -- the published loss bounds -----------------------------------------------------------------
def test_sgd_bound_is_the_reference_form():
    """Rate 2 mu independent of sigma; floor eta L tr(Sigma)/(4 mu) (Compagnoni et al.; §2.3)."""
    b = rates.loss_bound("sgd", Smooth(pl=True))
    s2 = sp.Symbol("sigma_2", positive=True)
    assert b.closed and b.rigorous
    assert sp.simplify(b.rate - 2 * mu) == 0
    assert sp.simplify(b.floor - eta * L * s2**2 / (4 * mu)) == 0
    ref = F0 * sp.exp(-2 * mu * t) + eta * L * s2**2 / (4 * mu) * (1 - sp.exp(-2 * mu * t))
    assert sp.simplify(b.integrated - ref) == 0
    assert not b.rate.has(s2)  # rate independent of the noise
    assert sp.simplify(b.floor.subs(s2, 2 * s2) / b.floor) == 4  # floor ~ sigma^2
    kinds = [s.kind for s in b.steps]
    assert kinds[0] == "ito" and "integration" in kinds
    assert any("PL" in s.assumption for s in b.steps) and any("smooth" in s.assumption for s in b.steps)


def test_signsgd_bound_is_the_reference_form():
    """Rate 2 mu sqrt(2/pi)/sigma_max, floor eta L d sigma_max sqrt(pi/2)/(4 mu) (phase 3; §2.3)."""
    b = rates.loss_bound("signsgd", Smooth(pl=True))
    r_ref = 2 * mu * sp.sqrt(2 / sp.pi) / smax
    floor_ref = eta * L * d * smax / (4 * mu) * sp.sqrt(sp.pi / 2)
    assert sp.simplify(b.rate - r_ref) == 0
    assert sp.simplify(b.floor - floor_ref) == 0
    assert sp.simplify(b.rate.subs(smax, 2 * smax) / b.rate) == sp.Rational(1, 2)  # rate ~ 1/sigma
    assert sp.simplify(b.floor.subs(smax, 2 * smax) / b.floor) == 2  # floor ~ sigma
    assert not b.rigorous  # the phase-3 linearization is an approximation, and the bound says so
    assert any(s.kind == "approximation" and "erf" in s.text for s in b.steps)
    assert any("<= 0" in s.text for s in b.steps)  # 1 - erf^2 <= 1, recorded


@pytest.mark.parametrize("nu, slope", [(1, 2 / sp.pi), (3, 4 / (sp.pi * sp.sqrt(3)))])
def test_signsgd_student_t_rate_uses_the_density_at_zero(nu, slope):
    """Small-SNR slope 2 f_nu(0) = 2 Gamma((nu+1)/2)/(sqrt(pi nu) Gamma(nu/2)) (§2.2)."""
    b = rates.loss_bound(sd.derive("signsgd", noise="student-t", nu=nu), Smooth(pl=True))
    two_f0 = 2 * sp.gamma(sp.Rational(nu + 1, 2)) / (sp.sqrt(sp.pi * nu) * sp.gamma(sp.Rational(nu, 2)))
    assert sp.simplify(two_f0 - slope) == 0
    assert sp.simplify(b.rate - 2 * mu * slope / smax) == 0


def test_anisotropic_signsgd_floor_uses_the_l1_norm():
    b = rates.loss_bound("signsgd", Anisotropic(pl=True))
    L1 = sp.Symbol("L_1", positive=True)
    assert b.floor.has(L1) and not b.floor.has(d)


def test_bounds_that_do_not_close_say_so():
    b = rates.loss_bound("sgd", Smooth())  # no PL
    assert not b.closed and b.rate is None and b.floor is None and b.integrated is None
    assert "No closed-form rate follows" in b.statement and "PL" in b.statement
    assert "gradient_average" in b.extra  # what does follow: an average-gradient bound
    for opt in ("rmspropw", "adamw"):  # state-dependent preconditioners / weight decay
        b = rates.loss_bound(opt, Smooth(pl=True))
        assert not b.closed and b.rate is None and "No closed-form rate" in b.statement
    b = rates.loss_bound("signsgd", Smooth(pl=True, small_snr=False))
    assert not b.closed and "nonlinear" in b.statement
    with pytest.raises(sd.SdederiveError, match="regime"):
        rates.loss_bound("rmsprop", Smooth(pl=True))  # noise-dominated: sigma0 = sigma*eta
    with pytest.raises(sd.SdederiveError, match="smoothness='weird'"):
        Assumptions("weird")
    with pytest.raises(sd.SdederiveError, match="Assumptions"):
        rates.loss_bound("sgd", {"pl": True})


def test_sgd_bound_holds_for_the_discrete_optimizer():
    """Monte Carlo: SGD on a quadratic with h in [mu, L] stays below the derived bound (and the
    bound is not loose by orders of magnitude)."""
    from sdederive.problems import Quadratic

    hv = np.array([0.5, 1.0, 2.0])
    sv = np.array([0.3, 0.5, 0.4])
    x0 = np.array([1.0, -1.0, 0.5])
    e = 0.01
    b = rates.loss_bound("sgd", Smooth(pl=True))
    sim = sd.compile(sd.optimizers.get("sgd"), Quadratic(h=hv, sigma=sv, x0=x0))
    res = sim.run(paths=20_000, steps=1000, eta=e, seed=1, save_every=50)
    vals = {"F_0": float(0.5 * np.sum(hv * x0**2)), "mu": hv.min(), "L": hv.max(),
            "sigma_2": float(np.sqrt(np.sum(sv**2))), "eta": e}
    bound = np.array([b.evaluate(**vals, t=tt) for tt in res.t])
    assert np.all(res.mean["loss"] <= bound + 4 * res.se["loss"])
    assert res.mean["loss"][-1] > bound[-1] / 20


def test_rmspropw_stationary_loss_is_bounded_in_the_noise_only_with_weight_decay():
    """§2.5: E f = sum eta sigma^2 h/(4 P (h + wd P)), P = sigma + eps; -> eta h/(4 wd) as sigma -> oo."""
    out = rates.stationary_loss("rmspropw")
    eps, wd = sd.sym("eps"), sd.sym("wd")
    P = sigma + eps
    ref = eta * sigma**2 * h / (4 * P * (h + wd * P))
    assert sp.simplify(out["loss"] - ref) == 0
    assert out["bounded_in_noise"] and out["condition"] == "wd > 0"
    assert sp.simplify(out["sigma->oo"] - eta * h / (4 * wd)) == 0
    no_wd = rates.stationary_loss(sd.derive("rmspropw").subs(wd=0))
    assert not no_wd["bounded_in_noise"]
    assert not rates.stationary_loss("sgd")["bounded_in_noise"]


# -- convex bounds and the anisotropic comparison ---------------------------------------------
def test_convex_sgd_bound_is_the_textbook_rate():
    b = rates.convex_bound("sgd", Anisotropic(convex=True, B="B"))
    K, B = sp.Symbol("K", positive=True), sp.Symbol("B", positive=True)
    D2, Linf, s2 = (sp.Symbol(n, positive=True) for n in ("D_2", "L_inf", "sigma_2"))
    assert sp.simplify(b.integrated - (Linf * D2**2 / (2 * K) + D2 * s2 / sp.sqrt(B * K))) == 0
    assert b.rigorous


def test_convex_adagrad_bound_has_the_lpz_form():
    """||L||_1 D_inf^2/K + ||sigma||_1 D_inf/sqrt(BK) (the form of Liu, Pan & Zhang; constants are ours)."""
    b = rates.convex_bound("adagrad", Anisotropic(convex=True, B="B"))
    K, B = sp.Symbol("K", positive=True), sp.Symbol("B", positive=True)
    L1, s1, Dinf, D2 = (sp.Symbol(n, positive=True) for n in ("L_1", "sigma_1", "D_inf", "D_2"))
    e = b.integrated.subs(sd.sym("eps0"), 0)
    assert sp.simplify(e - (L1 * Dinf**2 / (2 * K) + 3 * Dinf * s1 / sp.sqrt(B * K))) == 0
    assert not e.has(D2) and not e.has(d)  # dimension enters only through the norms
    assert any(s.kind == "approximation" for s in b.steps) and not b.rigorous
    # scalar smoothness: the Adagrad bound pays d*L where SGD pays L
    bs = rates.convex_bound("adagrad", Smooth(convex=True)).integrated
    assert bs.has(d)
    with pytest.raises(sd.SdederiveError, match="template"):
        rates.convex_bound("adamw", Smooth(convex=True))


def test_sgd_vs_adagrad_table_at_a_fixed_sample_budget():
    """docs/reference/rates_and_batch_scaling.md §5C set-up: as B grows at fixed N, SGD's bound degrades much more."""
    cmp = rates.compare(["sgd", "adagrad"], Anisotropic(convex=True), budget="samples")
    dd = 128
    Li = np.arange(1, dd + 1.0) ** -2
    si = 1 / np.arange(1, dd + 1.0)
    vals = {"L_1": Li.sum(), "L_inf": Li.max(), "sigma_1": si.sum(), "sigma_2": np.sqrt(np.sum(si**2)),
            "D_2": np.sqrt(150.0), "D_inf": 1.5, "eps0": 0.0}
    rows = cmp.table(vals, [1, 16, 256, 4096], budget=2**14)
    ratio = [r["sgd/adagrad"] for r in rows]
    assert all(b > a for a, b in zip(ratio, ratio[1:]))
    assert ratio[-1] > 10 * ratio[0]
    sgd = [r["sgd"] for r in rows]
    ada = [r["adagrad"] for r in rows]
    assert sgd[-1] / sgd[0] > 50 and ada[-1] / ada[0] < 5
    assert "| B |" in cmp.format_table(rows)
    # the norm ranges of §3.2: L concentrated (||L||_1 ~ ||L||_inf), dense solution (D_2 ~ sqrt(d) D_inf)
    assert Li.sum() < 2 * Li.max() and np.sqrt(150) > 5 * 1.5
    with pytest.raises(sd.SdederiveError, match="needs values"):
        cmp.table({}, [1])


def test_latex_and_json_of_a_bound():
    b = rates.loss_bound("signsgd", Anisotropic(pl=True))
    tex = b.latex()
    assert r"\|L\|_{1}" in tex and r"\sigma_{max}" in tex and tex.startswith("\\begin{aligned}")
    dct = b.to_dict()
    assert dct["closed"] and not dct["rigorous"] and len(dct["steps"]) >= 5
    assert sp.sympify(dct["rate"]).has(sp.Symbol("sigma_max"))


def test_cli_rate(capsys):
    from sdederive.cli.main import main

    assert main(["rate", "signsgd", "--assume", "pl,anisotropic", "--latex"]) == 0
    assert r"\|L\|_{1}" in capsys.readouterr().out
    assert main(["rate", "sgd", "--assume", "smooth"]) == 0
    assert "No closed-form rate follows" in capsys.readouterr().out
    assert main(["rate", "adagrad", "--assume", "convex,anisotropic,batch", "--json"]) == 0
    import json

    out = json.loads(capsys.readouterr().out)
    assert out["kind"] == "convex" and "sigma_1" in out["integrated"]
    assert main(["rate", "sgd", "--assume", "pl,strongly"]) == 2
    err = capsys.readouterr().err
    assert "unknown assumption 'strongly'" in err and "anisotropic" in err

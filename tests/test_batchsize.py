"""Optimal learning rate vs batch size from the symbolic one-step loss change.

Checked against McCandlish et al.'s and Li et al.'s formulas written out independently
(docs/reference/rates_and_batch_scaling.md §1.3, §2.3-2.5, §4 facts 1-25) and against Monte Carlo draws of the
minibatch gradient.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
from scipy.special import erf

import sdederive as sd
from sdederive.analysis import batchsize as bs

B = bs.B


def _doit(e, dd):
    return sp.simplify(e.subs(bs.d, dd).doit())


def test_sgd_is_the_mccandlish_form():
    r = bs.optimal_lr("sgd")
    assert r.form == "mccandlish"
    G = [sp.Symbol(f"g{k}", real=True) for k in range(3)]
    s = [sp.Symbol(f"s{k}", positive=True) for k in range(3)]
    H = sp.Matrix(3, 3, lambda a, b: sp.Symbol(f"h{min(a, b)}{max(a, b)}", real=True))
    vals = {}
    for k in range(3):
        vals[bs.G[k + 1]] = G[k]
        vals[bs.Sg[k + 1]] = s[k]
        for m in range(3):
            vals[bs.H[k + 1, m + 1]] = H[k, m]
    Gv = sp.Matrix(G)
    GHG = (Gv.T * H * Gv)[0]
    trHS = sum(H[k, k] * s[k] ** 2 for k in range(3))
    assert sp.simplify(_doit(r.B_noise, 3).xreplace(vals) - trHS / GHG) == 0          # eq. 2.8
    assert sp.simplify(_doit(r.eps_max, 3).xreplace(vals) - (Gv.T * Gv)[0] / GHG) == 0  # eq. 2.7
    eo = _doit(r.eps_opt, 3).xreplace(vals)
    assert sp.simplify(eo - (Gv.T * Gv)[0] / (GHG + trHS / B)) == 0                   # eq. 2.6
    # facts 3, 4: half of eps_max at B_noise; linear scaling for small B
    bn, em = bs._BN, bs._EM
    assert sp.simplify(r.eps_form.subs(B, bn) - em / 2) == 0
    assert sp.limit(r.eps_form / B, B, 0) == em / bn


def test_sign_is_the_surge_form():
    r = bs.optimal_lr("sign")
    assert r.form == "surge"
    assert r.mean == sp.erf(sp.sqrt(2) * sp.sqrt(B) * sp.Symbol("G_i", real=True) / (2 * sp.Symbol("sigma_i", positive=True)))
    # eq. 14 on d = 3: B_noise = pi sum_i H_ii / (2 sum_{i != j} mu_i mu_j H_ij/(sigma_i sigma_j))
    mu = [sp.Rational(1, 3), sp.Rational(1, 2), 1]
    sg = [1, 2, sp.Rational(3, 2)]
    H = [[2, sp.Rational(1, 2), sp.Rational(1, 4)], [sp.Rational(1, 2), 3, sp.Rational(1, 5)],
         [sp.Rational(1, 4), sp.Rational(1, 5), 1]]
    vals = {}
    for k in range(3):
        vals[bs.G[k + 1]], vals[bs.Sg[k + 1]] = mu[k], sg[k]
        for m in range(3):
            vals[bs.H[k + 1, m + 1]] = H[k][m]
    Doff = sum(mu[a] * mu[b] * H[a][b] / (sg[a] * sg[b]) for a in range(3) for b in range(3) if a != b)
    trH = sum(H[k][k] for k in range(3))
    S1 = sum(mu[k] ** 2 / sg[k] for k in range(3))
    Bn = sp.pi * trH / (2 * Doff)
    assert sp.simplify(_doit(r.B_noise, 3).xreplace(vals) - Bn) == 0
    em = sp.sqrt(Bn / (2 * sp.pi)) * S1 / trH                                     # eq. 16
    assert sp.simplify(_doit(r.eps_max, 3).xreplace(vals) - em) == 0
    assert sp.simplify(em - S1 / (2 * sp.sqrt(trH * Doff))) == 0                  # fact 20
    # facts 12-15 on the form
    bn, e = bs._BN, bs._EM
    f = r.eps_form
    assert sp.simplify(f - 2 * e * sp.sqrt(B * bn) / (B + bn)) == 0
    assert sp.simplify(f.subs(B, bn) - e) == 0 and sp.simplify(sp.diff(f, B).subs(B, bn)) == 0
    assert sp.simplify(f.subs(B, 4 * bn) - f.subs(B, bn / 4)) == 0
    assert sp.simplify(f.subs(B, 4 * bn) / e) == sp.Rational(4, 5)
    for root in (7 - 4 * sp.sqrt(3), 7 + 4 * sp.sqrt(3)):
        # sqrt(7 - 4 sqrt(3)) = 2 - sqrt(3) is a nested radical sympy does not denest: check to 30 digits
        assert abs(sp.N((f.subs(B, root * bn) - e / 2).subs(e, 1), 30)) < 1e-25
    assert any("small-batch" in s for s in r.steps)


def test_worked_example_of_the_reference():
    """Fact 25: H = (1-rho)I + rho 11^T, mu = c 1, sigma = 1, d = 100, rho = 0.5."""
    dd, rho = 100, 0.5
    H = (1 - rho) * np.eye(dd) + rho * np.ones((dd, dd))
    for c, peak in ((0.02, 79), (0.01, 316)):
        ns = bs.sign_noise_scale(c * np.ones(dd), np.ones(dd), H)
        assert ns.B_noise == pytest.approx(np.pi / (2 * (dd - 1) * rho * c**2), rel=1e-12)
        assert ns.eps_max == pytest.approx(c / (2 * np.sqrt((dd - 1) * rho)), rel=1e-12)
        assert ns.eps_inf == pytest.approx(c / (1 + (dd - 1) * rho), rel=1e-9)
        grid = np.logspace(0, 6, 61)
        assert grid[np.argmax(ns.eps_opt_exact(grid))] == pytest.approx(peak, rel=0.02)
        assert ns.eps_max / ns.eps_inf == pytest.approx(3.589, rel=1e-3)
    # control (fact 24): diagonal H, no surge, monotone curve
    ns = bs.sign_noise_scale(0.02 * np.ones(dd), np.ones(dd), np.eye(dd))
    assert ns.B_noise == np.inf
    e = ns.eps_opt_exact(np.logspace(0, 6, 31))
    assert np.all(np.diff(e) >= -1e-15) and e[-1] > 50 * e[0]  # non-decreasing, saturating at c


def test_sgd_noise_scale_on_numbers_and_monte_carlo_argmin():
    """§5A one-step check: the Monte-Carlo argmin of E[L(theta - eps G_est)] is eps_opt(B)."""
    rng = np.random.default_rng(0)
    dd = 6
    A = rng.normal(size=(dd, dd))
    H = A @ A.T / dd + np.eye(dd) * 0.1
    C = rng.normal(size=(dd, dd))
    Sigma = C @ C.T / dd
    G = rng.normal(size=dd)
    ns = bs.sgd_noise_scale(G, H, Sigma)
    assert ns.B_noise == pytest.approx(np.trace(H @ Sigma) / (G @ H @ G))
    assert ns.B_simple == pytest.approx(np.trace(Sigma) / (G @ G))
    Bv = 4.0
    Lc = np.linalg.cholesky(Sigma)
    Z = rng.standard_normal((200_000, dd)) @ Lc.T / np.sqrt(Bv)
    V = G + Z                                                  # G_est draws (common to every eps)
    epsg = np.linspace(0.05, 2.5, 400) * ns.eps_opt(Bv)
    gv = V @ G
    vhv = np.einsum("ni,ij,nj->n", V, H, V)
    dL = epsg * gv.mean() - 0.5 * epsg**2 * vhv.mean()        # L(theta) - L(theta - eps V), exact quadratic
    assert epsg[np.argmax(dL)] == pytest.approx(ns.eps_opt(Bv), rel=0.03)
    assert ns.dL_opt(Bv) == pytest.approx(dL.max(), rel=0.03)


def test_sign_expected_change_matches_monte_carlo():
    """E[dL](eps) = eps N - eps^2/2 D with the exact (erf) moments, against sign(G_est) draws."""
    rng = np.random.default_rng(1)
    dd = 5
    H = 0.6 * np.eye(dd) + 0.4 * np.ones((dd, dd))
    mu = rng.uniform(0.05, 0.2, dd)
    sg = rng.uniform(0.5, 1.5, dd)
    ns = bs.sign_noise_scale(mu, sg, H)
    for Bv in (2.0, 50.0):
        V = np.sign(mu + sg / np.sqrt(Bv) * rng.standard_normal((400_000, dd)))
        eps = ns.eps_opt_exact(Bv)[0]
        mc = eps * (V @ mu) - 0.5 * eps**2 * np.einsum("ni,ij,nj->n", V, H, V)
        m1 = erf(np.sqrt(Bv / 2) * mu / sg)
        exact = eps * (mu @ m1) - 0.5 * eps**2 * (np.trace(H) + m1 @ H @ m1 - np.sum(np.diag(H) * m1**2))
        assert abs(mc.mean() - exact) < 4 * mc.std() / np.sqrt(mc.size)


def test_student_t_sign_direction_mean():
    r = bs.optimal_lr("sign", noise="student-t", nu=3, approximation="exact")
    f = sp.lambdify((sp.Symbol("G_i", real=True), sp.Symbol("sigma_i", positive=True), B), r.mean, "mpmath")
    rng = np.random.default_rng(2)
    z = rng.standard_t(3, size=1_000_000)
    for g, s, b in ((0.3, 1.0, 4.0), (-0.2, 0.5, 1.0)):
        mc = np.sign(g + s / np.sqrt(b) * z)
        assert abs(mc.mean() - float(f(g, s, b))) < 4 * mc.std() / np.sqrt(z.size)


def test_bad_input():
    with pytest.raises(sd.SdederiveError, match="unknown update direction 'lion'"):
        bs.optimal_lr("lion")
    with pytest.raises(sd.SdederiveError, match="free symbols"):
        bs.optimal_lr(sp.Symbol("g") * sp.Symbol("beta"))
    with pytest.raises(sd.SdederiveError, match="approximation="):
        bs.optimal_lr("sgd", approximation="fast")
    with pytest.raises(sd.SdederiveError, match=r"H has shape \(2, 2\)"):
        bs.sgd_noise_scale(np.ones(3), np.eye(2), np.eye(3))
    with pytest.raises(sd.SdederiveError, match="full covariance Sigma only applies"):
        bs.noise_scale("sign", np.ones(2), np.eye(2), Sigma=[[1, 0.5], [0.5, 1]])


def test_cli_optimal_lr(capsys):
    from sdederive.cli.main import main

    assert main(["optimal-lr", "sgd"]) == 0
    assert "mccandlish form" in capsys.readouterr().out
    assert main(["optimal-lr", "adam", "--json"]) == 0
    import json

    assert json.loads(capsys.readouterr().out)["form"] == "surge"
    assert main(["optimal-lr", "sign", "--latex"]) == 0
    assert r"\mathcal{B}_{noise}" in capsys.readouterr().out
    assert main(["optimal-lr", "momentum"]) == 2
    assert "unknown update direction 'momentum'" in capsys.readouterr().err

"""Jupyter renders every result object: LaTeX for the symbolic ones, HTML for the comparison."""

from __future__ import annotations

import sympy as sp

import sdederive as sd


def _block(obj) -> str:
    tex = obj._repr_latex_()
    assert tex.startswith("$$\\begin{aligned}") and tex.endswith("\\end{aligned}$$")
    assert tex.count("{") == tex.count("}")
    return tex


def test_stationary_latex_is_the_published_loss():
    st = sd.stationary(sd.derive("sgd"))
    tex = _block(st)
    eta, sigma = sd.sym("eta"), sd.sym("sigma")
    assert sp.simplify(st.loss - eta * sigma**2 / 4) == 0  # Li, Tai & E: E[f] = eta sigma^2 / 4 on h x^2/2
    assert st.sde._lx(st.loss) in tex and "\\operatorname{Var}_\\infty(x)" in tex


def test_bound_comparison_and_optimal_lr_render():
    A = sd.assumptions.Anisotropic(L="L", sigma="sigma", mu="mu", pl=True)
    b = sd.rates.loss_bound(sd.derive("signsgd"), A)
    assert _block(b) == "$$" + b.latex() + "$$"
    c = sd.rates.compare(["sgd", "adagrad"], sd.assumptions.Anisotropic(convex=True))
    assert "\\text{sgd}" in _block(c) and "\\text{adagrad}" in _block(c)
    olr = sd.batchsize.optimal_lr("sign")
    assert "\\epsilon_{opt}(B)" in _block(olr)


def test_scaling_rule_latex_is_the_square_root_rule():
    rule = sd.scaling_rule(sd.derive("adam"))
    tex = _block(rule)
    kappa, eta = rule.kappa, sd.sym("eta")
    assert sp.simplify(rule.map["eta"] - sp.sqrt(kappa) * eta) == 0  # Malladi et al.: eta -> sqrt(kappa) eta
    assert "\\eta &\\to \\eta \\sqrt{\\kappa}" in tex and "1 - \\kappa\\,(1 - \\beta_1)" in tex
    assert "k &\\to \\frac{k}{\\kappa}" in tex and "\\epsilon" in tex

"""The vector kernels in the noise's eigenbasis (sdederive.simulate.vector_eigenbasis).

* where it applies (equivariant steps on a dense quadratic with a full Sigma, fewer products) and where not;
* the rotated kernels give the paths of the kernels as written, for the same seed, to rounding (both modes,
  antithetic pairs and independent samples, the multivariate t, a singular Sigma), their snapshots are in the
  user's coordinates, and they do not depend on the thread count;
* the equivariance check refuses what a rotation would change: forced onto a coordinate-wise step, the rotated
  kernel's paths differ (so the agreement above is not automatic).

The rotated kernels are also what the one-step moment tests and the numpy references of test_vector_simulate.py
run on their dense problems.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

import sdederive as sd
from sdederive.errors import DivergenceError
from sdederive.simulate import vector_eigenbasis as VE
from sdederive.simulate import vector_lower
from sdederive.simulate.vector_lower import VOp, VProgram, lower_discrete, lower_sde
from sdederive.spec import vector as V


def _dense(d=6, seed=1, singular=False, noise="gaussian", nu=None):
    rng = np.random.default_rng(seed)
    Q = rng.normal(size=(d, d))
    H = Q @ Q.T / d + 0.3 * np.eye(d)
    A = rng.normal(size=(d, d - 2 if singular else d))
    S = 0.4 * A @ A.T / d + (0 if singular else 0.05) * np.eye(d)
    return sd.Quadratic(H=(H + H.T) / 2, Sigma=(S + S.T) / 2, x0=rng.normal(size=d), noise=noise, nu=nu)


def _rotated(sim) -> bool:
    return sim._eigenbasis is not None and any("eigenbasis" in n for n in sim.spec.notes)


def _pair(obj, prob, **kw):
    """(rotated, as written) simulators of `obj` on `prob`."""
    a = sd.compile(obj, prob, **kw)
    VE.EIGENBASIS = False
    try:
        b = sd.compile(obj, prob, **kw)
    finally:
        VE.EIGENBASIS = True
    return a, b


def _run(sim, **kw):
    args = dict(paths=150, steps=40, eta=0.02, seed=11, save_every=4, keep_final=True)
    args.update(kw)
    return sim.run(**args)


def _close(ra, rb, tol):
    for k in ("loss", "sqnorm", "x"):
        np.testing.assert_allclose(ra.mean[k], rb.mean[k], rtol=tol, atol=tol)
        np.testing.assert_allclose(ra.var[k], rb.var[k], rtol=tol, atol=tol)
    np.testing.assert_allclose(ra.final["x"], rb.final["x"], rtol=tol, atol=tol)
    np.testing.assert_allclose(ra.final["loss"], rb.final["loss"], rtol=tol, atol=tol)


@pytest.mark.parametrize("name,mode", [("nsgd", "sde"), ("sam", "sde"), ("clip_sgd", "sde"), ("nsgd", "discrete"),
                                       ("sam", "discrete"), ("sgd_nesterov", "sde")])
def test_rotated_kernel_gives_the_paths_of_the_kernel_as_written(name, mode):
    prob = _dense()
    obj = sd.derive(name) if mode == "sde" else name
    hyper = {"rho": 0.1} if "sam" in name else ({"c": 0.8} if name == "clip_sgd" else None)
    a, b = _pair(obj, prob)
    assert _rotated(a) and not _rotated(b)
    ra, rb = _run(a, hyper=hyper), _run(b, hyper=hyper)
    _close(ra, rb, 1e-10)
    # the statistics are in the user's coordinates: x's mean moves from x0, not from U^T x0
    np.testing.assert_allclose(ra.mean["x"][0], prob.x0)
    assert np.abs(ra.mean["x"][-1] - ra.mean["x"][0]).max() > 1e-3  # the run moved


@pytest.mark.parametrize("pairs", [True, False])
def test_rotated_sampled_noise_with_and_without_antithetic_pairs_and_float32(pairs, monkeypatch):
    monkeypatch.setattr(vector_lower, "ANTITHETIC", pairs)
    prob = _dense(d=5, seed=2)
    a, b = _pair(sd.derive("nsgd"), prob)
    assert _rotated(a)
    _close(_run(a), _run(b), 1e-10)
    a32, b32 = _pair(sd.derive("clip_sgd"), prob, dtype="float32")
    assert _rotated(a32)
    ra, rb = _run(a32, hyper={"c": 0.8}), _run(b32, hyper={"c": 0.8})
    np.testing.assert_allclose(ra.final["x"], rb.final["x"], rtol=2e-4, atol=2e-4)  # float32 rounding only


def test_rotated_kernel_on_a_diagonal_hessian():
    """A diagonal `h` with a full `Sigma`: the rotated problem's `U^T diag(h) U` is dense, and the host's loss of the
    user's `x` reads `diag(h)` (`VectorSimulator._host_arrays`): the start snapshot and `keep_final` check it."""
    rng = np.random.default_rng(8)
    A = rng.normal(size=(6, 6))
    prob = sd.Quadratic(h=np.linspace(0.3, 2.0, 6), Sigma=A @ A.T / 6 + 0.1 * np.eye(6), x0=rng.normal(size=6))
    for obj, hyper in ((sd.derive("nsgd"), None), (sd.derive("sam"), {"rho": 0.1})):
        a, b = _pair(obj, prob)
        assert _rotated(a) and not _rotated(b)
        ra, rb = _run(a, hyper=hyper), _run(b, hyper=hyper)
        _close(ra, rb, 1e-10)
        np.testing.assert_allclose(ra.mean["loss"][0], prob.loss(prob.x0), rtol=1e-12)
        np.testing.assert_allclose(ra.final["loss"], prob.loss(ra.final["x"]), rtol=1e-12)


def test_rotated_kernel_multivariate_t_and_singular_sigma():
    prob_t = _dense(d=5, seed=3, noise="multivariate-t", nu=6.0)
    a, b = _pair(sd.derive("nsgd", noise="student-t", nu=6), prob_t)
    assert _rotated(a)
    _close(_run(a), _run(b), 1e-10)
    prob_s = _dense(d=6, seed=4, singular=True)  # two zero eigenvalues: no noise along them
    assert prob_s.noise_eigen[0].min() < 1e-12
    a, b = _pair(sd.derive("sam"), prob_s)
    assert _rotated(a)
    _close(_run(a, hyper={"rho": 0.05}), _run(b, hyper={"rho": 0.05}), 1e-10)


def test_rotated_kernel_does_not_depend_on_threads_and_reports_divergence_in_user_terms():
    prob = _dense(d=6, seed=5)
    sim = sd.compile(sd.derive("nsgd"), prob)
    assert _rotated(sim)
    r1 = _run(sim, paths=300, threads=1)
    r2 = _run(sim, paths=300, threads=2)
    assert np.array_equal(r1.final["x"], r2.final["x"]) and np.array_equal(r1.mean["x"], r2.mean["x"])
    # look-ahead Nesterov's SDE (rotated) diverges at a large eta: the same path and step as written
    a, b = _pair(sd.derive("sgd_nesterov"), prob)
    assert _rotated(a)
    errs = []
    for sim in (a, b):
        with pytest.raises(DivergenceError) as e:
            sim.run(paths=50, steps=400, eta=1.5, hyper={"mu": 0.9}, seed=2)
        errs.append(str(e.value))
    assert errs[0] == errs[1] and "path" in errs[0] and "step" in errs[0]


def test_where_the_eigenbasis_applies():
    dense = _dense()
    cases = {  # (object, problem) -> rotated?
        ("s", "usam"): False,  # folded affine step: 2 products either way
        ("d", "usam"): False,
        ("s", "lamb"): False,  # auxiliary coordinate-wise states
        ("d", "lamb"): False,
        ("s", "adamw_clip"): False,
        ("s", "nsgd"): True,
        ("d", "clip_sgd"): True,
    }
    for (kind, name), want in cases.items():
        prog = lower_sde(sd.derive(name), dense) if kind == "s" else lower_discrete(V.get(name), dense)
        assert (VE.eigenbasis_for(prog, dense) is not None) is want, (kind, name)
    nsgd = lower_sde(sd.derive("nsgd"), dense)
    assert VE.matrix_products(nsgd, dense) == 3 and VE.matrix_products(nsgd, dense.eigenbasis()[1]) == 1
    sam = lower_sde(sd.derive("sam"), dense)
    assert VE.matrix_products(sam, dense) == 5 and VE.matrix_products(sam, dense.eigenbasis()[1]) == 2
    # no full Sigma: nothing to rotate
    diag_noise = sd.Quadratic(H=dense.H, sigma=np.ones(dense.d))
    assert VE.eigenbasis_for(lower_sde(sd.derive("nsgd"), diag_noise), diag_noise) is None
    # a diagonal H with a full Sigma: H x is coordinate-wise, L^T grad f and L beta are not; rotated, H_y y is the one
    # product. Discrete NSGD's L z against H_y y saves nothing and stays as written
    diag_h = sd.Quadratic(h=np.linspace(0.5, 2.0, 4), Sigma=np.eye(4) + 0.1)
    nsgd_d = lower_sde(sd.derive("nsgd"), diag_h)
    assert VE.matrix_products(nsgd_d, diag_h) == 2 and VE.eigenbasis_for(nsgd_d, diag_h) is not None
    assert VE.eigenbasis_for(lower_discrete(V.get("nsgd"), diag_h), diag_h) is None


def test_rotated_problem_is_the_same_problem_in_other_coordinates():
    prob = _dense(d=5, seed=6)
    U, rot = prob.eigenbasis()
    np.testing.assert_allclose(U.T @ U, np.eye(5), atol=1e-12)
    x = np.random.default_rng(0).normal(size=(7, 5))
    np.testing.assert_allclose(rot.loss(x @ U), prob.loss(x), rtol=1e-12)
    np.testing.assert_allclose(np.diag(rot.sigma ** 2), U.T @ prob.Sigma @ U, atol=1e-12)
    np.testing.assert_allclose(U @ rot.x0, prob.x0, atol=1e-12)


_x, _g = sd.vectors("x g")
_eta = sd.sym("eta")


@pytest.mark.parametrize("update,why", [
    (_x - _eta * sd.coordinatewise(sp.tanh, _g), "not linear"),  # a coordinate-wise map of g
    (_x - _eta * sd.coordinatewise(sp.sign, _g) * sd.norm(_g), "not linear"),
])
def test_coordinatewise_steps_are_not_rotated(update, why):
    opt = sd.from_update("cw_opt", {"x": update}, hypers={"eta": 0.05})
    prob = _dense(d=4, seed=7)
    prog = lower_discrete(opt, prob)
    fail = VE.equivariance_failure(prog)
    assert fail is not None and why in fail
    assert VE.eigenbasis_for(prog, prob) is None
    assert not _rotated(sd.compile(opt, prob))


def test_forcing_the_rotation_onto_a_coordinatewise_step_changes_its_paths(monkeypatch):
    """The mutation the equivariance check guards against: a tanh(g) step run rotated is another optimizer."""
    opt = sd.from_update("tanh_opt", {"x": _x - _eta * sd.coordinatewise(sp.tanh, _g)}, hypers={"eta": 0.05})
    prob = _dense(d=4, seed=7)
    b = sd.compile(opt, prob)
    monkeypatch.setattr(VE, "equivariance_failure", lambda prog: None)
    a = sd.compile(opt, prob)
    assert _rotated(a) and not _rotated(b)
    ra, rb = _run(a, eta=0.2), _run(b, eta=0.2)
    assert np.abs(ra.final["x"] - rb.final["x"]).max() > 1e-3


def _prog(*ops, result="R"):
    return VProgram("sde", "t", pre=list(ops), result=result)


def _v(n):
    return sp.Symbol(f"v_{n}", real=True)


def test_equivariance_check_on_hand_written_programs():
    grad = VOp("grad", "G", ("X",))
    z = VOp("noise", "Z", (1000, 1, "z"))
    ltv = VOp("ltv", "T", ("G",))
    ok = _prog(grad, VOp("red", "q", (_v("G") ** 2,)), VOp("cw", "R", (_v("X") - sp.Symbol("s_q") * _v("G"),)))
    assert VE.equivariance_failure(ok) is None
    assert "quadratic form" in VE.equivariance_failure(
        _prog(grad, VOp("red", "q", (_v("G"),)), VOp("cw", "R", (_v("X"),))))  # sum_i g_i: not invariant
    assert "mixes" in VE.equivariance_failure(
        _prog(grad, z, VOp("cw", "R", (_v("X") + _v("Z"),))))  # an x-basis and a z-basis vector added
    assert "z basis" in VE.equivariance_failure(_prog(grad, ltv, result="T"))  # the result in z coordinates
    assert "x needed" in VE.equivariance_failure(_prog(z, VOp("hvp", "R", ("Z",))))  # H applied to z
    assert "same value in every coordinate" in VE.equivariance_failure(
        _prog(VOp("cw", "C", (sp.Integer(1),)), VOp("cw", "R", (_v("X") + _v("C"),))))
    assert "no basis" in VE.equivariance_failure(_prog(VOp("cw", "R", (_v("X") * _v("SG"),))))


def test_zero_sigma_is_the_deterministic_limit():
    """`Sigma = 0` (rank 0: `g = grad f`, a point mass, so no singularity at `g = 0` is charged): NSGD's SDE is
    normalised gradient descent's Euler scheme, path for path the discrete NSGD (once refused as "infinite in
    dimension 0"); at the minimum itself, `g/|g| = 0/0`, the run reports the path and the step."""
    prob = sd.Quadratic(H=np.diag([1.0, 2.0, 3.0, 4.0]), Sigma=np.zeros((4, 4)), x0=np.ones(4))
    r = sd.compile(sd.derive("nsgd"), prob).run(paths=8, steps=50, eta=0.05, keep_final=True)
    d = sd.compile("nsgd", prob).run(paths=8, steps=50, eta=0.05, keep_final=True)
    np.testing.assert_allclose(r.final["x"], d.final["x"], rtol=1e-12, atol=1e-14)
    assert np.abs(r.final["x"] - prob.x0).max() > 0.1 and r.var["x"][-1].max() < 1e-28
    at_min = sd.Quadratic(H=prob.H, Sigma=np.zeros((4, 4)), x0=np.zeros(4))
    with pytest.raises(DivergenceError, match="path 0 became non-finite at step 1"):
        sd.compile(sd.derive("nsgd"), at_min).run(paths=8, steps=5, eta=0.05)


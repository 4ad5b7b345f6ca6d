"""Simulators of the vector optimizers and their SDEs (sdederive.simulate.vector_sim).

* discrete runs against an independent numpy implementation of each update rule fed the same Philox
  Gaussians (and minibatch indices), path by path;
* the SDE kernel's one-step mean and covariance against the derived drift and covariance, evaluated
  with atoms from an independent numpy Monte Carlo (this is what fails if the sampled noise had the
  wrong covariance, e.g. without the drift-estimate correction);
* the weak error of SDE against discrete shrinks with eta on a dense quadratic;
* reproducibility across thread counts, and the refusals.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

import sdederive as sd
from sdederive.errors import SdederiveError
from sdederive.simulate.rng.philox import draw_indices, normal_pair
from sdederive.spec.vector import get as _vget

BUILTINS = ("usam", "sam", "nsgd", "clip_sgd")


def _dense(d=3, seed=0, scale=0.3):
    rng = np.random.default_rng(seed)
    Q = rng.normal(size=(d, d))
    H = Q @ Q.T / d + 0.5 * np.eye(d)
    A = rng.normal(size=(d, d))
    S = scale * (A @ A.T / d + 0.5 * np.eye(d))
    return H, S


def _z(step, path, n, seed):
    key0, key1 = seed & 0xFFFFFFFF, seed >> 32
    out = []
    for jb in range((n + 3) // 4):
        out += list(normal_pair(step, jb, path, 0, key0, key1))
    return np.array(out[:n])


def _reference_step(name, x, g_of, H, hv):
    """One discrete step of the built-in `name` with `g_of(y)` the stochastic gradient at y (same minibatch)."""
    eta = hv["eta"]
    g = g_of(x)
    n = np.linalg.norm(g)
    if name == "usam":
        return x - eta * g_of(x + hv["rho"] * g)
    if name == "sam":
        return x - eta * g_of(x + hv["rho"] * g / n)
    if name == "nsgd":
        return x - eta * g / n
    if name == "clip_sgd":
        return x - eta * min(1.0, hv["c"] / n) * g
    raise AssertionError(name)


@pytest.mark.parametrize("name", BUILTINS)
def test_discrete_matches_numpy_reference_dense(name):
    H, S = _dense()
    prob = sd.Quadratic(H=H, Sigma=S, x0=[0.8, -0.5, 0.3])
    L = prob.noise_factor()
    hv = {"eta": 0.05, "rho": 0.1, "c": 0.7}
    hyper = {k: v for k, v in hv.items() if k in {h.name for h in _vget(name).hypers}}
    sim = sd.compile(name, prob)
    seed, paths, steps = 7, 5, 6
    res = sim.run(paths=paths, steps=steps, hyper=hyper, seed=seed, keep_final=True)
    for p in range(paths):
        x = prob.x0.copy()
        for k in range(steps):
            xi = L @ _z(k, p, 3, seed)
            x = _reference_step(name, x, lambda y, xi=xi: H @ y + xi, H, hv)
        np.testing.assert_allclose(res.final["x"][p], x, rtol=1e-12, atol=1e-14)


def test_discrete_matches_numpy_reference_logistic_minibatch():
    prob = sd.LogisticRegression.synthetic(n=40, d=3, B=6, seed=3, l2=1e-2)
    A, y, l2, B = prob.A, prob.y, prob.l2, prob.B
    hv = {"eta": 0.1, "rho": 0.2}
    sim = sd.compile("sam", prob)
    seed, paths, steps = 11, 4, 5
    res = sim.run(paths=paths, steps=steps, hyper=hv, seed=seed, keep_final=True)
    for p in range(paths):
        x = prob.x0.copy()
        for k in range(steps):
            idx = np.zeros(B + 4, np.int64)
            draw_indices(idx, B, A.shape[0], k, p, 1, seed, 0)
            idx = idx[:B]

            def g_of(v, idx=idx):  # the minibatch gradient over the same indices at both points
                s = -y[idx] / (1.0 + np.exp(y[idx] * (A[idx] @ v)))
                return (s[:, None] * A[idx]).sum(0) / B + l2 * v

            x = _reference_step("sam", x, g_of, None, hv)
        np.testing.assert_allclose(res.final["x"][p], x, rtol=1e-11, atol=1e-13)


def test_vector_sgd_is_the_scalar_sgd():
    """SGD written with vectors runs the same numbers as the scalar built-in on a diagonal quadratic."""
    x, g = sd.vectors("x g")
    vsgd = sd.from_update("vsgd", {"x": x - sd.sym("eta") * g}, hypers={"eta": (1e-2, "lr")})
    prob = sd.Quadratic(h=[0.5, 1.0, 2.0, 4.0, 1.5], sigma=[0.3, 0.2, 0.5, 0.1, 0.4], x0=[1, -1, 0.5, 2, 0.1])
    a = sd.compile(vsgd, prob).run(paths=300, steps=50, eta=0.05, seed=3, keep_final=True)
    b = sd.compile("sgd", prob).run(paths=300, steps=50, eta=0.05, seed=3, keep_final=True)
    np.testing.assert_allclose(a.final["x"], b.final["x"], rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(a.mean["loss"], b.mean["loss"], rtol=1e-12)


def _mc_atoms(sde, grad, Sigma, hv, n=2_000_000, seed=5):
    """Every atom of `sde` by an independent numpy Monte Carlo over g ~ N(grad, Sigma)."""

    rng = np.random.default_rng(seed)
    Lc = np.linalg.cholesky(Sigma)
    return atoms_from_samples(sde, grad + rng.standard_normal((n, grad.size)) @ Lc.T, hv)


def atoms_from_samples(sde, gs, hv):
    """Every atom of `sde` as the mean over the gradient samples `gs` (rows)."""
    from sdederive.sde_vector import NORM_G

    n = len(gs)
    ng = np.linalg.norm(gs, axis=1)
    out = {}
    for a in sde.atoms:
        r = sp.lambdify([NORM_G] + [sp.Symbol(k, positive=True) for k in hv], a.integrand, "numpy")
        rv = np.broadcast_to(r(ng, *hv.values()), ng.shape)
        if a.tensor == "g":
            out[a] = (rv[:, None] * gs).mean(0)[:, None]
        elif a.tensor == "ggT":
            out[a] = np.einsum("n,ni,nj->ij", rv, gs, gs) / n
        else:
            out[a] = np.array([[rv.mean()]])
    return out


@pytest.mark.parametrize("name", BUILTINS + ("nsgd@high-dim", "sgd@full"))
def test_sde_one_step_moments(name):
    """One SDE step from x0 over many paths: mean and covariance of the increment equal drift*dt and
    covariance*dt (exactly for the Euler step; the sampled noise is exact in expectation)."""
    if name == "sgd@full":
        sde = sd.derive("sgd", Sigma="full")
    elif "@" in name:
        base, rg = name.split("@")
        sde = sd.derive(base, regime=rg)
    else:
        sde = sd.derive(name)
    H, S = _dense(seed=2)
    x0 = np.array([0.9, -0.6, 0.4])
    prob = sd.Quadratic(H=H, Sigma=S, x0=x0)
    hv_all = {"eta": 0.02, "rho": 0.3, "c": 0.8}
    names = {h[0] for h in sde.hypers}
    hv = {k: v for k, v in hv_all.items() if k in names}
    paths = 400_000
    res = sd.compile(sde, prob).run(paths=paths, steps=1, hyper=hv, seed=1, keep_final=True)
    dx = res.final["x"] - x0
    dt = hv["eta"]
    grad = H @ x0
    env = dict(grad=grad, H=H, Sigma=S, x=x0, **hv)
    atoms = _mc_atoms(sde, grad, S, {k: v for k, v in hv.items() if k != "eta"})
    b = sde.evaluate("drift", atoms=atoms, **env).ravel()
    C = sde.evaluate("covariance", atoms=atoms, **env)
    mean, cov = dx.mean(0), np.cov(dx.T)
    se_mean = np.sqrt(np.diag(cov) / paths)
    assert np.all(np.abs(mean - b * dt) < 5 * se_mean + 1e-4 * np.abs(b * dt)), (mean, b * dt, se_mean)
    # covariance: the increment's covariance is C*dt (+ (b dt) outer terms cancel in np.cov); the standard error
    # of a sample covariance entry is about sqrt((C_ii C_jj + C_ij^2)/paths)
    Cdt = C * dt
    se_cov = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov ** 2) / paths)
    assert np.all(np.abs(cov - Cdt) < 5 * se_cov + 2e-3 * np.abs(Cdt).max()), (cov, Cdt)


@pytest.mark.parametrize("name", BUILTINS)
def test_weak_error_shrinks_with_eta(name):
    """|E_discrete[f(x_T)] - E_SDE[f(x_T)]| at T = 1 for f = loss shrinks when eta is halved twice."""
    H, S = _dense(seed=4, scale=1.0)
    prob = sd.Quadratic(H=H, Sigma=S, x0=[1.5, -1.0, 1.0])
    sde = sd.derive(name)
    extra = {"rho": 0.2} if "rho" in {h[0] for h in sde.hypers} else ({"c": 0.8} if name == "clip_sgd" else {})
    errs, ses = [], []
    for eta in (0.2, 0.05):
        steps = int(round(1.0 / eta))
        hyper = {"eta": eta, **extra}
        a = sd.compile(name, prob).run(paths=40_000, steps=steps, hyper=hyper, seed=2, save_every=steps)
        b = sd.compile(sde, prob).run(paths=40_000, steps=steps, hyper=hyper, seed=9, save_every=steps,
                                      substeps=4)
        errs.append(abs(a.mean["loss"][-1] - b.mean["loss"][-1]))
        ses.append(np.hypot(a.se["loss"][-1], b.se["loss"][-1]))
    assert errs[0] > 4 * ses[0], (errs, ses)  # the O(eta) error at eta = 0.2 is resolved
    assert errs[1] < errs[0] / 2 + 3 * ses[1], (errs, ses)  # and shrinks about 4x at eta = 0.05


def test_thread_count_does_not_change_results():
    H, S = _dense(d=5, seed=1)
    prob = sd.Quadratic(H=H, Sigma=S, x0=np.ones(5))
    sim = sd.compile(sd.derive("sam"), prob)
    a = sim.run(paths=300, steps=20, seed=4, threads=1)
    b = sim.run(paths=300, steps=20, seed=4, threads=2)
    np.testing.assert_array_equal(a.mean["x"], b.mean["x"])
    np.testing.assert_array_equal(a.var["loss"], b.var["loss"])
    c = sim.run(paths=300, steps=20, seed=5, threads=2)
    assert not np.array_equal(a.mean["x"], c.mean["x"])


def test_logistic_sde_against_discrete():
    """USAM on logistic regression: the SDE (full-batch gradient, Hessian-vector products, the minibatch noise
    factor) and the discrete optimizer (true minibatches at both points) agree at small eta."""
    prob = sd.LogisticRegression.synthetic(n=64, d=4, B=8, seed=1, l2=1e-2)
    hyper = {"eta": 0.05, "rho": 0.3}
    a = sd.compile("usam", prob).run(paths=20_000, steps=40, hyper=hyper, seed=1, save_every=40)
    b = sd.compile(sd.derive("usam"), prob).run(paths=20_000, steps=40, hyper=hyper, seed=2, save_every=40)
    la, lb = a.mean["loss"][-1], b.mean["loss"][-1]
    assert la < a.mean["loss"][0]  # it trains
    assert abs(la - lb) < 0.02 * la + 5 * np.hypot(a.se["loss"][-1], b.se["loss"][-1]), (la, lb)


def test_custom_problem_runs_both_modes():
    prob = sd.Custom("x_0**4/4 + x_1**2/2 + x_0*x_1/4", sigma=[0.3, 0.3], x0=[1.0, -1.0])
    a = sd.compile("nsgd", prob).run(paths=4000, steps=100, eta=0.02, seed=1)
    b = sd.compile(sd.derive("nsgd"), prob).run(paths=4000, steps=100, eta=0.02, seed=2)
    assert a.mean["loss"][-1] < 0.5 * a.mean["loss"][0]
    assert abs(a.mean["loss"][-1] - b.mean["loss"][-1]) < 0.1 * a.mean["loss"][-1]


def test_json_round_trip_simulates_identically():
    H, S = _dense()
    prob = sd.Quadratic(H=H, Sigma=S)
    sde = sd.derive("clip_sgd")
    back = sd.VectorSDE.from_json(sde.to_json())
    a = sd.compile(sde, prob).run(paths=200, steps=10, seed=3)
    b = sd.compile(back, prob).run(paths=200, steps=10, seed=3)
    np.testing.assert_array_equal(a.mean["loss"], b.mean["loss"])


def test_refusals():
    H, S = _dense()
    prob = sd.Quadratic(H=H, Sigma=S)
    sam = sd.derive("sam")
    with pytest.raises(SdederiveError, match="inner=1"):
        sd.compile(sam, prob, inner=1)
    with pytest.raises(SdederiveError, match="inner="):
        sd.compile(sd.derive("usam"), prob, inner=4)
    with pytest.raises(SdederiveError, match="Euler"):
        sd.compile(sam, prob, scheme="weak2")
    with pytest.raises(SdederiveError, match="Student-t"):
        sd.compile("sam", sd.Quadratic(h=[1.0, 2.0], sigma=[1.0, 1.0], noise="student-t", nu=5))
    with pytest.raises(SdederiveError, match="multivariate Student-t noise .* problem's noise is 'gaussian'"):
        sd.compile(sd.derive("sam", noise=sd.StudentT(nu=5)), prob)
    # an SDE JSON without the increment cannot be simulated where the noise is sampled
    data = sam.to_dict()
    del data["increment"]
    with pytest.raises(SdederiveError, match="increment"):
        sd.compile(sd.VectorSDE.from_json(data), prob)
    # an increment that does not belong to the drift is refused (an edited file)
    data = sam.to_dict()
    data["increment"][1]["coefficient"] = "2*rho*H"
    with pytest.raises(SdederiveError, match="not -E\\[F\\]"):
        sd.compile(sd.VectorSDE.from_json(data), prob)
    # a user matrix has no value in the simulators
    x, g = sd.vectors("x g")
    A = sd.matrix("A")
    opt = sd.from_update("precond", {"x": x - sd.sym("eta") * (A * g)}, hypers={"eta": (1e-2, "lr")})
    with pytest.raises(SdederiveError, match="matrix A"):
        sd.compile(opt, prob)


def test_compare_and_sweep_accept_vector_builtins():
    from concurrent.futures import ThreadPoolExecutor

    from sdederive.validators import compare

    H, S = _dense(seed=4, scale=1.0)
    prob = sd.Quadratic(H=H, Sigma=S, x0=[1.5, -1.0, 1.0])
    r = compare("nsgd", prob, etas=(0.2, 0.1), paths=4000, horizon=0.6, n_points=3)
    # the vector regime 'sgd' holds (nothing but eta varies, sigma fixed)
    assert r.regime_check["holds"] and r.regime_check["fits"] == ["sgd"] and "nsgd" in str(r)
    assert np.all(np.isfinite(r.weak_error["loss"]))
    with pytest.raises(SdederiveError, match="SVAG"):
        compare("sam", prob, etas=(0.2, 0.1), paths=400, svag=2.0)
    grid = sd.sweep.Grid(optimizer=["sam", "clip_sgd"], eta=[0.02, 0.05], mode=["discrete", "sde"])
    with ThreadPoolExecutor(1) as ex:
        res = sd.sweep.run(grid, prob, steps=20, paths=200, executor=ex, progress=False)
    fl = np.array([row["final_loss"] for row in res.rows])
    assert len(res) == 8 and np.all(fl < 0.8 * res.rows[0]["initial_loss"])
    with pytest.raises(SdederiveError, match="hyperparameter of sam"):
        sd.sweep.run(sd.sweep.Grid(optimizer=["sam"], eta=[0.1], c=[1.0]), prob, steps=2, paths=10, progress=False)


@pytest.mark.parametrize("mode", ["discrete", "sde"])
def test_float32_state_tracks_float64(mode):
    """dtype='float32' keeps the step's vectors in float32 (products by sgemm): the statistics agree with float64
    to float32 precision and differ from it by rounding."""
    H, S = _dense()
    prob = sd.Quadratic(H=H, Sigma=S, x0=[1.0, -1.0, 0.5])
    obj = "sam" if mode == "discrete" else sd.derive("sam")
    a = sd.compile(obj, prob).run(paths=400, steps=30, seed=1)
    b = sd.compile(obj, prob, dtype="float32").run(paths=400, steps=30, seed=1)
    np.testing.assert_allclose(b.mean["loss"], a.mean["loss"], rtol=1e-5)
    assert not np.array_equal(a.mean["loss"], b.mean["loss"])


def test_float32_products_are_single_precision():
    """On a dense quadratic, dtype='float32' computes `H x` in single precision (the sgemm that makes it faster),
    not only rounds the state: one NSGD step from x0 along H's smallest eigenvector (eigenvalue 1e-3 among
    entries of order 1) cancels in `H x0`, and normalising `g` amplifies the cancellation's float32 error to
    about 1e-4 of the step, far above the state's rounding (6e-8), where float64 matches numpy to 1e-10."""
    rng = np.random.default_rng(5)
    d = 8
    Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    H = Q @ np.diag(np.r_[1e-3, np.linspace(1.0, 3.0, d - 1)]) @ Q.T
    H = (H + H.T) / 2
    x0 = Q[:, 0].astype(np.float32).astype(float)  # exactly representable in both precisions
    prob = sd.Quadratic(H=H, Sigma=1e-30 * np.eye(d), x0=x0)
    g = H @ x0
    ref = x0 - g / np.linalg.norm(g)  # eta = 1; the noise (1e-15) is far below either precision
    out = {}
    for dt in ("float64", "float32"):
        r = sd.compile("nsgd", prob, dtype=dt).run(paths=1, steps=1, eta=1.0, save_every=1, keep_final=True)
        out[dt] = r.final["x"][0]
    np.testing.assert_allclose(out["float64"], ref, atol=1e-10)
    err = np.abs(out["float32"] - ref).max()
    assert 1e-6 < err < 1e-2, err  # single-precision products; a rounded double step would be below 1e-7


def test_float32_coordinatewise_arithmetic_is_single_precision():
    """A float32 step's coordinate-wise values are float32 as numba types them (numba_vector._Hoist): LAMB's
    SDE step (bias corrections exp(-rho t), square roots, quotients, the trust ratio of two norms) compiled
    afresh from the kernel's source gives every fused-loop local l_* and hoisted constant c_* the type
    float32 (a Python float or int in them would make them float64, numpy's promotion), and the run tracks
    float64 to float32 precision."""
    import numba

    H, S = _dense()
    prob = sd.Quadratic(H=H, Sigma=S, x0=[1.0, -1.0, 0.5])
    sde = sd.derive("lamb")
    sim = sd.compile(sde, prob, dtype="float32")
    k = sim.handle.kernel
    sig = k.signatures[0]
    fresh = numba.njit(sig, error_model="numpy")(k.py_func)  # not from the cache: with its type annotation
    types = {n: str(t) for n, t in fresh.overloads[sig].type_annotation.typemap.items() if n[:2] in ("l_", "c_")}
    assert len(types) > 10 and set(types.values()) == {"float32"}, types
    hp = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-6, "wd": 0.01}
    a = sd.compile(sde, prob).run(paths=400, steps=30, seed=1, hyper=hp)
    b = sim.run(paths=400, steps=30, seed=1, hyper=hp)
    np.testing.assert_allclose(b.mean["loss"], a.mean["loss"], rtol=2e-5)


def test_nesterov_sde_with_its_eliminated_momentum_tracks_nesterov_sgd():
    """sgd_nesterov's SDE (the momentum eliminated: x stands for the slow variable x + eta mu/(mu - 1) m, which
    starts at x0 since m0 = 0) simulates, and tracks Nesterov SGD (the scalar chain trace(nesterov=True)) with an
    error that shrinks like eta: relative gap of E[loss] at t = 2 halves (or better) when eta is divided by 4."""
    import math

    import sdederive.spec.transforms as T

    prob = sd.Quadratic(h=np.geomspace(0.1, 10, 10), sigma=np.ones(10), x0=np.ones(10))
    sim = sd.compile(sd.derive("sgd_nesterov"), prob)
    assert any("slow variable" in n for n in sim.spec.notes)
    disc = sd.compile(sd.chain(T.trace(0.9, nesterov=True), T.scale_by_learning_rate(1e-2), name="nest"), prob)
    rel = []
    for eta in (5e-3, 1.25e-3):
        steps = int(round(2 / eta))
        a = sim.run(paths=2000, steps=steps, eta=eta, hyper={"mu": 0.9}, seed=2)
        b = disc.run(paths=2000, steps=steps, eta=eta, hyper={"mu": 0.9}, seed=2)
        gap, se = abs(a.mean["loss"][-1] - b.mean["loss"][-1]), math.hypot(a.se["loss"][-1], b.se["loss"][-1])
        rel.append((gap / b.mean["loss"][-1], se / b.mean["loss"][-1]))
    (r1, s1), (r2, s2) = rel
    assert r1 > 5 * s1, rel  # resolved at the larger eta
    assert r2 < r1 / 2 + 4 * s2, rel


def test_usam_sde_at_dt_eta_is_usam_itself_on_a_quadratic():
    """On a quadratic, USAM with the same minibatch is x' = x - eta (I + rho H)(H x + xi): linear in the noise, so the
    Euler step of its SDE at dt = eta *is* the discrete update when dW is the discrete run's noise with the right
    sign (x's diffusion is written for F = -(x' - x)/eta). Path by path, to rounding: this fails if the SDE kernel's
    noise were anti-coupled, on another stream, or its drift or diffusion off."""
    H, S = _dense(d=4, seed=3)
    prob = sd.Quadratic(H=H, Sigma=S, x0=[0.8, -0.5, 0.3, 1.0])
    hv = {"eta": 0.05, "rho": 0.2}
    a = sd.compile("usam", prob).run(paths=64, steps=30, hyper=hv, seed=4, keep_final=True)
    b = sd.compile(sd.derive("usam"), prob).run(paths=64, steps=30, hyper=hv, seed=4, keep_final=True)
    np.testing.assert_allclose(b.final["x"], a.final["x"], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("name, kind", [("sam", "dense"), ("clip_sgd", "custom")])
def test_zspace_noise_is_the_sampled_noise_on_the_same_gaussians(name, kind, monkeypatch):
    """The z-space form of the sampled noise (`vector_lower._lower_zspace`: norms from `L^T grad` and
    `lambda = diag(L^T L)`, the products by `L` and `C` after the inner loop) against the per-sample form
    (`g_k = grad + L z_k` and `F_k` for every sample): the same Gaussians, so the same paths up to rounding.
    A wrong `e_k`, a missing block or a wrong `lambda` moves every path by O(sqrt(eta)).  SAM on a dense
    quadratic with a full Sigma (the factor's products, `C = rho H`; its z-space kernel is the one of
    `test_sde_one_step_moments[sam]`, from the cache) and clipped SGD on a custom objective with per-coordinate
    noise (`L = diag(sigma)`); the multivariate t runs in z-space in `test_cuda_vector` and
    `test_vector_student_sim`."""
    from sdederive.simulate import vector_lower as VL

    monkeypatch.setattr(VL, "ANTITHETIC", False)  # independent samples: the per-sample form's Gaussians
    H, S = _dense(seed=2)
    x0 = np.array([0.9, -0.6, 0.4])
    if kind == "custom":
        xs = sp.symbols("x_0:3")
        f = sum(xs[i] ** 2 * (0.5 + 0.4 * i) for i in range(3)) + xs[0] ** 4 / 4 + xs[1] * xs[2] / 3
        prob = sd.Custom(f, sigma=np.sqrt(np.diag(S)), x0=x0)
    else:
        prob = sd.Quadratic(H=H, Sigma=S, x0=x0)
    sde = sd.derive(name)
    hv = {"rho": 0.3, "c": 0.8}
    hyper = {h[0]: hv[h[0]] for h in sde.hypers if h[0] in hv}
    assert VL.zspace_applies(sde, prob)
    assert "ltv" in {o.kind for o in VL.lower_sde(sde, prob).pre}
    run = dict(paths=96, steps=40, eta=0.02, seed=7, hyper=hyper, keep_final=True)
    a = sd.compile(sde, prob).run(**run).final["x"]
    monkeypatch.setattr(VL, "ZSPACE", False)
    assert not VL.zspace_applies(sde, prob)
    b = sd.compile(sde, prob).run(**run).final["x"]
    assert np.abs(b - x0).max() > 0.05  # the paths moved
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", ["discrete", "sde"])
def test_folded_affine_step_is_the_step_as_written(mode, monkeypatch):
    """USAM on a dense quadratic is affine in (x, z): `vector_fold` runs it as `x @ p(H)` and `z @ L^T q(H)`, two
    products per step instead of three (discrete) or four (SDE).  Against the step as written, on the same
    Gaussians: the same paths up to rounding, for two values of rho on the same compiled kernels (the matrices come
    from the run's hyperparameters).  A wrong coefficient, a missing H or a transposed L moves every path."""
    from sdederive.simulate import vector_fold as VF
    from sdederive.simulate import vector_lower as VL
    from sdederive.spec import vector as VS

    H, S = _dense(d=4, seed=5)
    x0 = np.array([0.8, -0.5, 0.3, 1.0])
    prob = sd.Quadratic(H=H, Sigma=S, x0=x0)
    obj = "usam" if mode == "discrete" else sd.derive("usam")
    prog = VL.lower_discrete(VS.get("usam"), prob) if mode == "discrete" else VL.lower_sde(obj, prob)
    folded = VF.fold_affine(prog, prob)
    assert [o.kind for o in folded.pre] == ["noise", "lin", "cw"] and not folded.post
    want = 3 if mode == "discrete" else 4
    assert f"2 matrix products per step instead of {want}" in folded.notes[-1]
    folded_sim = sd.compile(obj, prob)
    monkeypatch.setattr(VF, "FOLD", False)
    plain_sim = sd.compile(obj, prob)
    for rho in (0.2, 0.5):
        run = dict(paths=64, steps=40, seed=4, hyper={"eta": 0.05, "rho": rho}, keep_final=True)
        a, b = folded_sim.run(**run).final["x"], plain_sim.run(**run).final["x"]
        assert np.abs(b - x0).max() > 0.05  # the paths moved
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def test_unread_gradient_is_not_computed_on_quadratics():
    """Look-ahead Nesterov reads only `grad_at(x - eta mu m)`: its discrete program on a dense quadratic keeps one
    gradient (at the look-ahead point) and the noise, 2 matrix products per step, not the `grad f(x)` that the
    lowering evaluates for `g`.  On logistic regression the minibatch gradient at x stays: it draws the minibatch
    that the look-ahead gradient reuses."""
    from sdederive.simulate import vector_lower as VL
    from sdederive.spec import vector as VS

    H, S = _dense(d=3, seed=1)
    prog = VL.lower_discrete(VS.get("sgd_nesterov"), sd.Quadratic(H=H, Sigma=S, x0=np.ones(3)))
    assert [(o.kind, o.args[0]) for o in prog.pre if o.kind in ("grad", "hvp", "noise")] == [("noise", 0),
                                                                                          ("grad", "t6")]
    logistic = sd.LogisticRegression.synthetic(n=40, d=3, B=40, seed=0)
    prog = VL.lower_discrete(VS.get("sgd_nesterov"), logistic)
    assert [(o.kind, o.args[0]) for o in prog.pre if o.kind in ("grad", "mbgrad")] == [("mbgrad", "X"),
                                                                                        ("mbgrad", "t5")]


def test_fold_is_not_used_where_it_does_not_hold_or_pay():
    """Norms (SAM), the step counter of bias corrections (LAMB) and a diagonal quadratic keep the step as written;
    so do look-ahead Nesterov (folding x' and m' over x, m and z would make 6 products instead of 2) and vector SGD
    (2 either way)."""
    from sdederive.simulate import vector_fold as VF
    from sdederive.simulate import vector_lower as VL
    from sdederive.spec import vector as VS

    H, S = _dense(d=3, seed=1)
    dense = sd.Quadratic(H=H, Sigma=S, x0=np.ones(3))
    diag = sd.Quadratic(h=[1.0, 2.0, 3.0], sigma=[1.0, 0.5, 0.2], x0=np.ones(3))
    x, g = sd.vectors("x g")
    vsgd = sd.from_update("vsgd_fold", {"x": x - sd.sym("eta") * g}, hypers={"eta": (1e-2, "lr")})
    for opt, prob in (("sam", dense), ("lamb", dense), ("usam", diag), ("sgd_nesterov", dense), (vsgd, dense)):
        prog = VL.lower_discrete(VS.get(opt), prob)
        assert VF.fold_affine(prog, prob) is prog, opt
    for sde in (sd.derive("sgd_nesterov"), sd.derive("sgd", Sigma="full")):
        prog = VL.lower_sde(sde, dense)
        assert VF.fold_affine(prog, dense) is prog, sde.optimizer
    prog = VL.lower_sde(sd.derive("usam"), diag)
    assert VF.fold_affine(prog, diag) is prog


def test_zspace_is_not_used_where_it_does_not_hold():
    """`sign(g)` needs `g` itself (SignSGD with a full Sigma), and logistic regression's noise factor varies
    with x: both keep the per-sample form."""
    from sdederive.simulate.vector_lower import zspace_applies

    H, S = _dense(d=3, seed=1)
    dense = sd.Quadratic(H=H, Sigma=S, x0=np.ones(3))
    assert zspace_applies(sd.derive("nsgd"), dense)
    x, g = sd.vectors("x g")
    vsign = sd.from_update("vsign", {"x": x - sd.sym("eta") * sd.coordinatewise(sp.sign, g)},
                           hypers={"eta": (0.01, "lr")})
    assert not zspace_applies(sd.derive(vsign), dense)
    logi = sd.LogisticRegression.synthetic(n=30, d=3, B=4, seed=0)
    assert not zspace_applies(sd.derive("nsgd"), logi)


def _one_step_check(sde, prob, x0, hv, paths=400_000, inner=8, seed=1):
    """One SDE step from x0: the increment's mean and covariance against drift*dt and covariance*dt, the atoms
    from an independent numpy Monte Carlo (as `test_sde_one_step_moments`)."""
    res = sd.compile(sde, prob, inner=inner).run(paths=paths, steps=1, hyper=hv, seed=seed, keep_final=True)
    dx = res.final["x"] - x0
    dt = hv["eta"]
    grad = prob.H @ x0
    S = prob.noise_factor() @ prob.noise_factor().T
    env = dict(grad=grad, H=prob.H, Sigma=S, x=x0, **hv)
    atoms = _mc_atoms(sde, grad, S, {k: v for k, v in hv.items() if k != "eta"})
    b = sde.evaluate("drift", atoms=atoms, **env).ravel()
    C = sde.evaluate("covariance", atoms=atoms, **env)
    mean, cov = dx.mean(0), np.cov(dx.T)
    se_mean = np.sqrt(np.diag(cov) / paths)
    assert np.all(np.abs(mean - b * dt) < 5 * se_mean + 1e-4 * np.abs(b * dt)), (mean, b * dt, se_mean)
    se_cov = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov ** 2) / paths)
    assert np.all(np.abs(cov - C * dt) < 5 * se_cov + 2e-3 * np.abs(C * dt).max()), (cov, C * dt)


@pytest.mark.parametrize("case, form", [("norm_scale", "z"), ("nsgd_near_minimum", "z"), ("sam_fresh", "z"),
                                        ("norm_scale", "per-sample"), ("sam_fresh", "per-sample"),
                                        ("sign", "per-sample")])
def test_antithetic_pairs_keep_the_one_step_moments(case, form, monkeypatch):
    """The z-space kernels draw their inner samples as antithetic pairs `(z, -z)` (`vector_lower._lower_zspace`):
    the drift estimate is the mean of the pair means `P_j`, and the noise `s_P`-scaled deviations of the `P_j`
    plus the weighted half-differences `D_j`.  The step's mean and covariance must still be `b dt` and `C dt`.
    The cases are chosen where the even part `P` carries much of `Cov[F]`, so that a wrong `s_P`
    (`1 - dt/(n eta)` for `1 - dt/(m eta)`, a 12.5 % error on `Cov[P]` at `dt = eta`) or a wrong weight of `D`
    fails: `F = |g| x` with `|grad f| << |noise|` (`F` nearly even in `z`), NSGD where `|grad f|` is comparable
    to the noise, and SAM with a fresh minibatch at the perturbed point (two streams flipped together).  The
    per-sample form (`ZSPACE` off; the form of logistic regression and of `sign(g)`) pairs `xi, -xi` the same
    way, with SignSGD under a full Sigma (`sign(g)`, even part `E[sign]`-like near `grad = 0`) added."""
    from sdederive.simulate import vector_lower as VL

    if form == "per-sample":
        monkeypatch.setattr(VL, "ZSPACE", False)

    rng = np.random.default_rng(0)
    A = rng.normal(size=(3, 3))
    S = A @ A.T / 3 + 0.5 * np.eye(3)
    x, g = sd.vectors("x g")
    eta = sd.sym("eta")
    if case == "norm_scale":
        opt = sd.from_update("norm_scale", {"x": x - eta * sd.norm(g) * x}, hypers={"eta": (0.01, "lr")})
        prob, x0, hv = sd.Quadratic(H=0.05 * np.eye(3), Sigma=S, x0=[0.9, -0.6, 0.4]), [0.9, -0.6, 0.4], {}
    elif case == "nsgd_near_minimum":
        opt, hv = "nsgd", {}
        H, _ = _dense(seed=2)
        x0 = np.linalg.solve(H, np.array([0.6, -0.5, 0.4]))  # |grad f| = 0.88, tr Sigma = 3.3
        prob = sd.Quadratic(H=H, Sigma=S, x0=x0)
    elif case == "sign":
        opt, hv = sd.from_update("vsign_pairs", {"x": x - eta * sd.coordinatewise(sp.sign, g)},
                                 hypers={"eta": (0.01, "lr")}), {}
        H, _ = _dense(seed=2)
        x0 = np.linalg.solve(H, np.array([0.5, -0.3, 0.2]))
        prob = sd.Quadratic(H=H, Sigma=S, x0=x0)
    else:
        rho = sd.sym("rho")
        opt = sd.from_update("sam_fresh", {"x": x - eta * sd.grad_at(x + rho * g / sd.norm(g), fresh=True)},
                             hypers={"eta": (0.01, "lr"), "rho": (0.05, "positive")})
        H, _ = _dense(seed=2)
        x0, hv = np.array([0.5, -0.4, 0.3]), {"rho": 0.5}
        prob = sd.Quadratic(H=H, Sigma=S, x0=x0)
    sde = sd.derive(opt)
    x0 = np.asarray(x0, dtype=float)
    prog = VL.lower_sde(sde, prob)
    assert prog.zspace == (form == "z") and prog.pairs and prog.n_loop == 4
    assert form == "z" or prog.fdiff
    _one_step_check(sde, prob, x0, {"eta": 0.05, **hv})


def test_antithetic_pairs_halve_the_gaussians_and_fall_back_for_odd_inner():
    """`inner = 2m` with `m >= 2` runs `m` pairs: the kernel's inner loop draws `m` rows of Gaussians a step, in
    z-space and in the per-sample form (logistic regression); an odd `inner`, or 2 (one pair has no sample
    covariance of its means), keeps independent samples.  `inner = 5` and `6` still give the right moments."""
    from sdederive.simulate import vector_lower as VL

    H, S = _dense(seed=2)
    x0 = np.array([0.9, -0.6, 0.4])
    prob = sd.Quadratic(H=H, Sigma=S, x0=x0)
    sde = sd.derive("nsgd")
    for n, pairs in ((2, False), (5, False), (6, True), (8, True), (16, True)):
        prog = VL.lower_sde(sde, prob, n)
        assert (prog.pairs, prog.n_loop) == (pairs, n // 2 if pairs else n), n
        src = sd.compile(sde, prob, inner=n).source.text
        assert f"for kin in range({prog.n_loop}):" in src
    logi = sd.LogisticRegression.synthetic(n=30, d=3, B=4, seed=0)
    prog = VL.lower_sde(sde, logi)  # the per-sample form: pairs (xi, -xi) of the minibatch noise
    assert prog.pairs and not prog.zspace and prog.fdiff and prog.n_loop == 4
    assert not VL.lower_sde(sde, logi, 5).pairs
    for n in (5, 6):
        _one_step_check(sde, prob, x0, {"eta": 0.05}, inner=n, paths=300_000)


def test_the_gradient_skips_a_noise_scale_that_no_operation_reads():
    """On logistic regression the noise scale depends on x (a pass over the data); the vector kernels' gradient at
    x recomputes it only for a program that reads `SG` (`vector_lower.reads_noise_scale`): NSGD's SDE samples its
    noise through the low-rank factor and does not (one pass of seven saved per step)."""
    from sdederive.simulate.vector_lower import VOp, VProgram, reads_noise_scale

    def _prog(*ops):
        return VProgram("sde", "t", pre=list(ops), result="R")

    def _v(n):
        return sp.Symbol(f"v_{n}", real=True)

    logi = sd.LogisticRegression.synthetic(n=64, d=5, B=8, seed=1)
    text = sd.compile(sd.derive("nsgd"), logi).source.text
    assert "prob_grad(XB[r], V_GR[r], HS1, SGS, PV, PM, PL, PY, WX[r], False, False)" in text
    grad = VOp("grad", "G", ("X",))
    assert reads_noise_scale(_prog(grad, VOp("cw", "R", (_v("X") * _v("SG"),))), factor=True)
    assert reads_noise_scale(_prog(grad, VOp("noise", "N", (0, 0)), VOp("cw", "R", (_v("N"),))), factor=False)
    assert not reads_noise_scale(_prog(grad, VOp("noise", "N", (0, 0)), VOp("cw", "R", (_v("N"),))), factor=True)
    assert not reads_noise_scale(_prog(grad, VOp("noise", "Z", (1000, 1, "z")), VOp("cw", "R", (_v("Z"),))),
                                 factor=False)

"""sde.to_torchsde() and sde.to_diffrax(): the ecosystem's integrators run the same SDE, checked in
distribution against the exact law of Euler's scheme (SGD) and against this project's simulator."""

from __future__ import annotations

import numpy as np
import pytest

import sdederive as sd

PROB = sd.Quadratic(h=[1.0, 3.0], sigma=[1.0, 0.5], x0=[1.0, -1.0])
PATHS, STEPS = 4000, 50


def _euler_sgd_loss(eta: float, steps: int) -> float:
    """E[f] after ``steps`` Euler steps of dX = -hX dt + sqrt(eta) sigma dW with dt = eta, exactly:
    mean r^k x0 and variance eta^2 sigma^2 (1 - r^(2k)) / (1 - r^2), r = 1 - eta h."""
    h, s, x0 = PROB.h, PROB.sigma, PROB.x0
    r = 1 - eta * h
    var = eta**2 * s**2 * (1 - r ** (2 * steps)) / (1 - r**2)
    return float(np.sum(0.5 * h * ((r**steps * x0) ** 2 + var)))


def _loss(x: np.ndarray) -> np.ndarray:
    return 0.5 * np.sum(PROB.h * x**2, axis=1)


def _close(a: np.ndarray, ref: float, ref_se: float = 0.0) -> None:
    se = np.hypot(a.std() / np.sqrt(a.size), ref_se)
    assert abs(a.mean() - ref) < 4.5 * se, (a.mean(), ref, se)


def _torchsde_final(sde, eta):
    torch = pytest.importorskip("torch")
    torchsde = pytest.importorskip("torchsde")
    ex = sde.to_torchsde(PROB, eta=eta)
    t1 = ex.time(STEPS)
    y0 = torch.tensor(ex.y0, dtype=torch.float64).expand(PATHS, -1).clone()
    bm = torchsde.BrownianInterval(t0=ex.t0, t1=t1, size=(PATHS, ex.noise_sources * ex.d), dtype=torch.float64,
                                   entropy=0)
    ys = torchsde.sdeint(ex.module, y0, torch.tensor([ex.t0, t1], dtype=torch.float64), method="euler", dt=ex.tau,
                         bm=bm)
    return ex, ex.x(ys[-1].numpy())


def _diffrax_final(sde, eta):
    jax = pytest.importorskip("jax")
    diffrax = pytest.importorskip("diffrax")
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    ex = sde.to_diffrax(PROB, eta=eta)
    t1 = ex.time(STEPS)

    def solve(key):
        bm = diffrax.UnsafeBrownianPath(shape=(ex.noise_sources * ex.d,), key=key)
        terms = diffrax.MultiTerm(diffrax.ODETerm(ex.drift), diffrax.ControlTerm(ex.diffusion, bm))
        sol = diffrax.diffeqsolve(terms, diffrax.Euler(), ex.t0, t1, dt0=ex.tau, y0=jnp.asarray(ex.y0),
                                  saveat=diffrax.SaveAt(t1=True), max_steps=STEPS + 2, adjoint=diffrax.ForwardMode())
        return sol.ys[-1]

    ys = jax.jit(jax.vmap(solve))(jax.random.split(jax.random.PRNGKey(0), PATHS))
    return ex, ex.x(np.asarray(ys))


@pytest.mark.parametrize("final", [_torchsde_final, _diffrax_final], ids=["torchsde", "diffrax"])
def test_sgd_export_has_the_law_of_euler(final):
    ex, x = final(sd.derive("sgd"), 0.05)
    assert ex.states == ("x",) and ex.t0 == 0.0 and ex.tau == pytest.approx(0.05)
    _close(_loss(x), _euler_sgd_loss(0.05, STEPS))
    # a wrong diffusion scale would be far off: with sigma doubled the loss is ~4x
    assert abs(_loss(x).mean() - _euler_sgd_loss(0.05, STEPS)) < 0.25 * _euler_sgd_loss(0.05, STEPS)


@pytest.mark.parametrize("final", [_torchsde_final, _diffrax_final], ids=["torchsde", "diffrax"])
@pytest.mark.parametrize("name, eta", [("rmsprop", 0.02), ("signsgd", 0.05)])
def test_export_matches_our_simulator(final, name, eta):
    sde = sd.derive(name)
    ex, x = final(sde, eta)
    res = sd.compile(sde, PROB).run(paths=PATHS, steps=STEPS, eta=eta, seed=1, save_every=STEPS)
    assert ex.t0 == pytest.approx(float(res.t[0]) if res.t[0] > 0 else 0.0) or ex.t0 >= 0
    _close(_loss(x), float(res.mean["loss"][-1]), float(res.se["loss"][-1]))
    _close(x[:, 0], float(res.mean["x"][-1, 0]), float(res.se["x"][-1, 0]))


def test_custom_objective_exports():
    """A non-quadratic f: the gradient comes from sympy, printed for torch and JAX alike."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("jax")
    prob = sd.Custom("x_0**4/4 + x_1**2/2 + exp(-x_1)", sigma=[0.5, 0.5], x0=[1.5, -0.5])
    sde = sd.derive("sgd")
    y = np.array([[1.5, -0.5], [0.2, 1.0]])
    want = -np.stack([y[:, 0] ** 3, y[:, 1] - np.exp(-y[:, 1])], 1)  # -grad f
    f_torch = sde.to_torchsde(prob, eta=0.1).module.f(0.0, torch.tensor(y)).numpy()
    f_jax = np.stack([np.asarray(sde.to_diffrax(prob, eta=0.1).drift(0.0, yy, None)) for yy in y])
    np.testing.assert_allclose(f_torch, want, rtol=1e-12)
    np.testing.assert_allclose(f_jax, want, rtol=1e-6)  # float32 unless jax_enable_x64 is set


def test_export_refuses_what_it_cannot_express():
    dense = sd.Quadratic(H=[[2.0, 0.5], [0.5, 1.0]], Sigma=[[1.0, 0.3], [0.3, 1.0]], x0=[1.0, 1.0])
    with pytest.raises(sd.SdederiveError, match="correlated"):
        sd.derive("sgd").to_torchsde(dense, eta=0.1)
    with pytest.raises(sd.SdederiveError, match="Quadratic and Custom"):
        sd.derive("sgd").to_diffrax(sd.LogisticRegression.synthetic(n=16, d=2, B=4), eta=0.1)


@pytest.mark.parametrize("lib", ["jax", "torch"])
@pytest.mark.parametrize("kind", ["dense", "custom"])
def test_export_evaluates_the_problems_one_description(lib, kind):
    """The exports' gradient and Hessian diagonal are the problem's description evaluated in jax / torch
    (`evaluate_xp`), equal to the numpy reference on a batch of points: a dense H (a reduction over j) and a
    custom objective (unrolled derivatives)."""
    from sdederive.export import _problem_parts

    if kind == "dense":
        prob = sd.Quadratic(H=[[2.0, 0.5, 0.1], [0.5, 1.0, 0.2], [0.1, 0.2, 3.0]], sigma=[1.0, 0.5, 0.2],
                            x0=[1.0, 1.0, 1.0])
    else:
        prob = sd.Custom("x_0**4/4 + x_0*x_1**2 + exp(-x_2)*sin(x_1)", sigma=[1, 1, 1], x0=[0.5, -0.5, 1.0])
    X = np.random.default_rng(4).standard_normal((5, 3))
    if lib == "jax":
        jnp = pytest.importorskip("jax.numpy")
        import jax

        jax.config.update("jax_enable_x64", True)
        grad, hess, _ = _problem_parts(prob, jnp)
        g, h = np.asarray(grad(jnp.asarray(X))), np.asarray(hess(jnp.asarray(X)))
    else:
        torch = pytest.importorskip("torch")
        grad, hess, _ = _problem_parts(prob, torch)
        g, h = grad(torch.as_tensor(X)).numpy(), hess(torch.as_tensor(X)).numpy()
    np.testing.assert_allclose(g, prob.grad(X), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(h, prob.hess_diag(X), rtol=1e-12, atol=1e-14)

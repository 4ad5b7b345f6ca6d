"""Baseline Monte-Carlo simulators (diffrax / JAX and torchsde / PyTorch) of one reference SDE.

The benchmark compares sdederive's generated numba kernel against these, in the same process.

Reference SDE: the RMSprop SDE in the noise-dominated regime, on the diagonal quadratic
``f(x) = sum_i h_i x_i^2 / 2``.  Every coordinate ``i`` is independent, with states ``x_i`` and ``u_i``::

    dx_i = -(h_i x_i) / (eps0 + sqrt(u_i)) dt + sigma0_i / (eps0 + sqrt(u_i)) dW_i
    du_i = c (sigma0_i^2 - u_i) dt                                  (no noise on u)

with ``sigma0_i = eta sigma_i``, ``eps0 = eps eta``, ``c = (1 - beta) / eta^2`` and one Euler-Maruyama step
per optimizer step: ``dt = tau = eta^2``, ``T`` steps, ``N`` independent paths, float64.

Default case (``python bench/baselines.py``): ``N=1000, d=100, T=1000, eta=1e-2, beta=0.99, eps=1e-8``,
``h = geomspace(0.1, 10, d)``, ``sigma_i = 1``, ``x0_i = 1``, ``u0_i = sigma0_i^2`` (``v`` starts at its
stationary value, so ``sqrt(u)`` is never 0; ``u`` then stays constant, but both baselines still integrate it).

Both functions return ``{"compile_s", "run_s", "coord_steps_per_s", "mean_loss"}``:

* ``compile_s``: wall time of the first call (JIT compilation included for diffrax; for torchsde, which
  compiles nothing, the cold first call).
* ``run_s``: best of 3 timed calls after that warm-up.
* ``coord_steps_per_s``: ``N * d * T / run_s``.  Throughput is counted per coordinate-step, so a run with a
  smaller ``T`` is comparable with the full case: every step costs the same (checked for torchsde at
  T = 100, 300, 1000).  Keep ``N`` and ``d`` though: a step's cost is not linear in the batch (per-step
  overhead dominates small batches).
* ``mean_loss``: mean over paths of ``f(x_T)``.

By default both baselines draw one Gaussian per state component per step, i.e. ``2 d`` (the ``u`` components
get a zero diffusion): torchsde's ``"diagonal"`` noise type needs a Brownian motion of the state's size, and
diffrax's ``DiagonalLinearOperator`` maps a control of the state's shape onto the state.  Drawing the
Gaussians is most of the cost, so ``diffrax_run(..., brownian="x")`` also offers the layout drawing only the
``d`` needed (the fairer baseline against a kernel that draws ``d`` a step).

Each function raises ``ImportError`` (telling to ``pip install -e '.[bench]'``) when its library is missing,
so that a caller can skip it.

``EQX_ON_ERROR=nan`` is set (unless already set) when this module is imported: equinox reads it when it is
first imported, so import this module before anything that imports equinox.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, Literal

import numpy as np

os.environ.setdefault("EQX_ON_ERROR", "nan")

__all__ = ["diffrax_run", "torchsde_run", "euler_reference_loss", "problem", "sde_diffrax_run", "sde_torchsde_run"]

_INSTALL_HINT = "pip install -e '.[bench]'"
_N_TIMED = 3


def problem(d: int, eta: float = 1e-2) -> dict[str, np.ndarray]:
    """The default test problem: curvatures ``h``, noise scales ``sigma``, and initial ``x0``, ``u0``."""
    h = np.geomspace(0.1, 10.0, d)
    sigma = np.ones(d)
    x0 = np.ones(d)
    u0 = (eta * sigma) ** 2
    return {"h": h, "sigma": sigma, "x0": x0, "u0": u0}


def euler_reference_loss(
    N: int, d: int, T: int, eta: float = 1e-2, beta: float = 0.99, eps: float = 1e-8
) -> tuple[float, float]:
    """Exact mean of ``f(x_T)`` under the Euler-Maruyama scheme, and its Monte-Carlo standard error over N paths.

    Valid for the default problem only, where ``u`` starts at (and so stays at) ``sigma0^2``: then every
    ``x_i`` is a Gaussian AR(1) process ``x <- (1 - a dt) x + b sqrt(dt) z`` with ``a = h / (eps0 + sigma0)``
    and ``b = sigma0 / (eps0 + sigma0)``, whose mean and variance follow exactly.  ``beta`` is unused
    (``u`` is stationary) and kept for a signature like the simulators'.
    """
    del beta
    p = problem(d, eta)
    dt = eta**2
    s = eta * p["sigma"] + eps * eta
    rho = 1.0 - p["h"] / s * dt
    b2dt = (eta * p["sigma"] / s) ** 2 * dt
    mu = p["x0"] * rho**T
    r2 = rho**2
    var = b2dt * T if np.any(r2 == 1.0) else b2dt * (1.0 - r2**T) / (1.0 - r2)
    mean = float(np.sum(p["h"] / 2 * (mu**2 + var)))
    var_loss = float(np.sum((p["h"] / 2) ** 2 * (2 * var**2 + 4 * mu**2 * var)))
    return mean, (var_loss / N) ** 0.5


def _time_calls(call: Callable[[], Any], N: int, d: int, T: int) -> tuple[dict[str, float], Any]:
    """Time ``call`` once cold and ``_N_TIMED`` times warm; return the timing dict and the last result."""
    t0 = time.perf_counter()
    out = call()
    compile_s = time.perf_counter() - t0
    best = float("inf")
    for _ in range(_N_TIMED):
        t0 = time.perf_counter()
        out = call()
        best = min(best, time.perf_counter() - t0)
    return {"compile_s": compile_s, "run_s": best, "coord_steps_per_s": N * d * T / best}, out


def diffrax_run(
    N: int,
    d: int,
    T: int,
    eta: float = 1e-2,
    beta: float = 0.99,
    eps: float = 1e-8,
    seed: int = 0,
    brownian: Literal["state", "x"] = "state",
) -> dict[str, float]:
    """Simulate the reference SDE with diffrax (Euler, fixed step ``eta^2``, ``jit`` + ``vmap`` over paths).

    The state of one path is the pair ``y = (x, u)`` of ``(d,)`` arrays; the drift is an ``ODETerm`` and the
    diffusion a ``ControlTerm`` against an ``UnsafeBrownianPath`` (solved with ``adjoint=ForwardMode()``, as
    the default adjoint refuses that path).  Each path gets its own key (``jax.random.split``, then ``vmap``;
    see diffrax issue #531).  Runs on JAX's default device (the CPU here).

    ``brownian`` picks the diffusion's layout:

    * ``"state"`` (default): a Brownian motion with the state's shape, ``(d,) x 2``, and the diffusion
      ``lineax.DiagonalLinearOperator((g_x, 0))``: diffrax's documented diagonal-noise form, drawing ``2 d``
      Gaussians a step like torchsde's ``"diagonal"`` noise.
    * ``"x"``: a ``(d,)`` Brownian motion and ``lineax.FunctionLinearOperator(w -> (g_x * w, 0))``: the same
      SDE with only the ``d`` Gaussians it needs.  Drawing them dominates the cost, so this is the faster
      (fairer) baseline against a kernel that draws ``d`` a step.

    Raises:
        ImportError: jax, diffrax or lineax is not installed.
    """
    try:
        import diffrax
        import jax
        import jax.numpy as jnp
        import lineax as lx
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(f"diffrax_run needs jax, diffrax and lineax: {_INSTALL_HINT} ({err})") from err
    if brownian not in ("state", "x"):
        raise ValueError(f"brownian must be 'state' or 'x', not {brownian!r}")

    jax.config.update("jax_enable_x64", True)
    p = problem(d, eta)
    h = jnp.asarray(p["h"])
    sig0 = jnp.asarray(eta * p["sigma"])
    y0 = (jnp.asarray(p["x0"]), jnp.asarray(p["u0"]))
    eps0 = eps * eta
    c = (1.0 - beta) / eta**2
    dt = eta**2
    vec = jax.ShapeDtypeStruct((d,), jnp.float64)

    def drift(t: Any, y: Any, args: Any) -> Any:
        x, u = y
        return -h * x / (eps0 + jnp.sqrt(u)), c * (sig0**2 - u)

    def diffusion(t: Any, y: Any, args: Any) -> Any:
        u = y[1]
        g = sig0 / (eps0 + jnp.sqrt(u))
        if brownian == "state":
            return lx.DiagonalLinearOperator((g, jnp.zeros_like(u)))
        return lx.FunctionLinearOperator(lambda w: (g * w, jnp.zeros_like(u)), vec)

    def one_path(key: Any) -> Any:
        bm = diffrax.UnsafeBrownianPath(shape=(vec, vec) if brownian == "state" else vec, key=key)
        terms = diffrax.MultiTerm(diffrax.ODETerm(drift), diffrax.ControlTerm(diffusion, bm))
        sol = diffrax.diffeqsolve(
            terms,
            diffrax.Euler(),
            t0=0.0,
            t1=T * dt,
            dt0=dt,
            y0=y0,
            saveat=diffrax.SaveAt(t1=True),
            max_steps=T + 16,
            adjoint=diffrax.ForwardMode(),
        )
        return sol.ys[0][-1], sol.stats["num_steps"]

    @jax.jit
    def simulate(key: Any) -> tuple[Any, Any]:
        return jax.vmap(one_path)(jax.random.split(key, N))

    key = jax.random.key(seed)

    def call() -> tuple[Any, Any]:
        return jax.block_until_ready(simulate(key))

    res, (xT, nsteps) = _time_calls(call, N, d, T)
    nsteps = int(np.max(np.asarray(nsteps)))
    if nsteps != T:
        raise RuntimeError(f"diffrax took {nsteps} steps, expected {T}")
    xT = np.asarray(xT)
    res["mean_loss"] = float(np.mean(np.sum(p["h"] * xT**2 / 2, axis=1)))
    return res


def torchsde_run(
    N: int, d: int, T: int, eta: float = 1e-2, beta: float = 0.99, eps: float = 1e-8, seed: int = 0
) -> dict[str, float]:
    """Simulate the reference SDE with ``torchsde.sdeint`` (Euler, ``dt = eta^2``, float64, CPU, no grad).

    ``y0`` has shape ``(N, 2 d)`` (``x`` then ``u``); the noise type is ``"diagonal"`` and ``u``'s diffusion
    is zero.  The Brownian motion is the ``BrownianInterval`` that ``sdeint`` would build, made explicitly so
    that ``seed`` fixes it and given the step hint ``dt`` (as torchsde advises for fixed-step solvers): without
    the hint its interval tree is built from the first queries and a step costs more the larger ``T`` is
    (about 9 ms at T=100 but 60 ms at T=1000 for N=1000, d=100), with it a step costs the same for any ``T``.
    torchsde runs its time loop in Python, so it is slow; pass a smaller ``T`` to keep a run short:
    ``coord_steps_per_s`` is per coordinate-step and stays comparable.

    Raises:
        ImportError: torch or torchsde is not installed.
    """
    try:
        import torch
        import torchsde
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(f"torchsde_run needs torch and torchsde: {_INSTALL_HINT} ({err})") from err

    p = problem(d, eta)
    f64 = torch.float64
    h = torch.as_tensor(p["h"], dtype=f64)
    sig0 = torch.as_tensor(eta * p["sigma"], dtype=f64)
    eps0 = eps * eta
    c = (1.0 - beta) / eta**2
    dt = eta**2
    # torchsde advances with ``t += dt`` and steps again while ``t < ts[-1]``; with ``ts[-1] = T * dt`` the
    # rounding of that sum can leave a last step of ~1e-17 (T + 1 steps).  Ending at the same float sum gives
    # exactly T steps of dt.
    t1 = 0.0
    for _ in range(T):
        t1 += dt
    y0 = torch.cat([torch.as_tensor(p["x0"], dtype=f64), torch.as_tensor(p["u0"], dtype=f64)]).expand(N, 2 * d)
    ts = torch.tensor([0.0, t1], dtype=f64)
    n_drift = [0]

    class RMSpropSDE(torch.nn.Module):
        """Drift and diagonal diffusion of the reference SDE, batched over paths."""

        noise_type = "diagonal"
        sde_type = "ito"

        def f(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            n_drift[0] += 1
            x, u = y[:, :d], y[:, d:]
            return torch.cat([-h * x / (eps0 + torch.sqrt(u)), c * (sig0**2 - u)], dim=1)

        def g(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            u = y[:, d:]
            return torch.cat([sig0 / (eps0 + torch.sqrt(u)), torch.zeros_like(u)], dim=1)

    sde = RMSpropSDE()

    def call() -> torch.Tensor:
        n_drift[0] = 0
        bm = torchsde.BrownianInterval(t0=0.0, t1=t1, size=(N, 2 * d), dtype=f64, device="cpu", entropy=seed, dt=dt)
        with torch.no_grad():
            return torchsde.sdeint(sde, y0, ts, bm=bm, method="euler", dt=dt)

    res, ys = _time_calls(call, N, d, T)
    if n_drift[0] != T + 1:  # sdeint calls f once on y0 to check shapes, then once per Euler step
        raise RuntimeError(f"torchsde took {n_drift[0] - 1} steps, expected {T}")
    xT = ys[-1, :, :d].numpy()
    res["mean_loss"] = float(np.mean(np.sum(p["h"] * xT**2 / 2, axis=1)))
    return res


def _sde_parts(sde: Any, prob: Any, eta: float, T: int) -> dict[str, Any]:
    """Any derived SDE on ``prob`` through ``sdederive.export``'s lowering (the kernels' own per-coordinate drift
    and diffusion, scalars substituted, the same start ``y0`` at ``t0``): what the generic baselines integrate."""
    import sympy as sp

    from sdederive.export import _coefficients, _lowered

    spec, scalars, y0, t0, tau = _lowered(sde, prob, eta, None)
    args, drift, diff, S, R = _coefficients(spec, scalars)
    k0 = int(round(t0 / tau))
    return {"args": args, "drift": drift, "diff": [b for row in diff for b in row], "S": S, "R": R, "y0": y0,
            "t0": t0, "tau": tau, "steps": T - k0, "sp": sp, "d": prob.d}


def _sde_loss(prob: Any, xT: np.ndarray) -> float:
    from sdederive.problems import Quadratic

    if not isinstance(prob, Quadratic) or prob.H is not None:
        return float("nan")
    return float(np.mean(np.sum(prob.h * xT**2 / 2, axis=1)))


def sde_diffrax_run(sde: Any, prob: Any, N: int, T: int, eta: float, seed: int = 0) -> dict[str, float]:
    """A derived SDE (``sdederive.derive``) on a diagonal quadratic ``prob`` with diffrax: Euler at ``dt = tau``,
    ``jit(vmap)`` over ``N`` paths, from the start sdederive's simulator uses (``t0``, ``y0`` of
    ``sdederive.export``) to step ``T``.  The diffusion is a ``lineax.FunctionLinearOperator`` applying the
    per-coordinate coefficients to an ``(R d,)`` ``UnsafeBrownianPath`` (``R`` noise sources): the ``R d``
    Gaussians a step that the SDE needs, no dense ``(S d, R d)`` matrix (``sdederive.export.to_diffrax``'s
    matrix is meant for correctness, not for speed at d = 1000).

    ``compile_s`` is the first call (trace, XLA compile and one run: what a one-shot script waits for),
    ``run_s`` the best of the warm calls (``_N_TIMED``)."""
    try:
        import diffrax
        import jax
        import jax.numpy as jnp
        import jax.scipy.special as jsp
        import lineax as lx
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(f"sde_diffrax_run needs jax, diffrax and lineax: {_INSTALL_HINT} ({err})") from err
    jax.config.update("jax_enable_x64", True)
    q = _sde_parts(sde, prob, eta, T)
    sp, S, R, d, tau = q["sp"], q["S"], q["R"], q["d"], q["tau"]
    mods = [{"erf": jsp.erf, "erfc": jsp.erfc}, "jax"]
    fa = sp.lambdify(q["args"], q["drift"], mods)
    fb = sp.lambdify(q["args"], q["diff"], mods)
    h = jnp.asarray(prob.h)
    sg = jnp.asarray(prob.sigma)
    wstruct = jax.ShapeDtypeStruct((R * d,), jnp.float64)

    def inputs(t: Any, y: Any) -> list:
        st = [y[s * d:(s + 1) * d] for s in range(S)]
        z = 0 * st[0]
        return st + [h * st[0], h + z, sg + z, t + z, t / tau + z]

    def drift(t: Any, y: Any, args: Any) -> Any:
        return jnp.concatenate([jnp.broadcast_to(a, (d,)) for a in fa(*inputs(t, y))])

    def diffusion(t: Any, y: Any, args: Any) -> Any:
        b = fb(*inputs(t, y))

        def apply(w: Any) -> Any:
            return jnp.concatenate([sum(jnp.broadcast_to(b[s * R + r], (d,)) * w[r * d:(r + 1) * d] for r in range(R))
                                    for s in range(S)])

        return lx.FunctionLinearOperator(apply, wstruct)

    t0, n = q["t0"], q["steps"]
    t1 = t0 + n * tau
    y0 = jnp.asarray(q["y0"])

    def one_path(key: Any) -> Any:
        bm = diffrax.UnsafeBrownianPath(shape=wstruct, key=key)
        terms = diffrax.MultiTerm(diffrax.ODETerm(drift), diffrax.ControlTerm(diffusion, bm))
        sol = diffrax.diffeqsolve(terms, diffrax.Euler(), t0=t0, t1=t1, dt0=tau, y0=y0,
                                  saveat=diffrax.SaveAt(t1=True), max_steps=n + 16, adjoint=diffrax.ForwardMode())
        return sol.ys[-1][:d], sol.stats["num_steps"]

    @jax.jit
    def simulate(key: Any) -> tuple[Any, Any]:
        return jax.vmap(one_path)(jax.random.split(key, N))

    key = jax.random.key(seed)
    res, (xT, nsteps) = _time_calls(lambda: jax.block_until_ready(simulate(key)), N, d, T)
    nsteps = int(np.max(np.asarray(nsteps)))
    if abs(nsteps - n) > 1:
        raise RuntimeError(f"diffrax took {nsteps} steps, expected {n}")
    res["mean_loss"] = _sde_loss(prob, np.asarray(xT))
    return res


def sde_torchsde_run(sde: Any, prob: Any, N: int, T: int, eta: float, seed: int = 0,
                     timed: int = 1) -> dict[str, float]:
    """The same SDE with ``torchsde.sdeint(method="euler")`` (float64, CPU, no grad), diagonal noise: valid when
    the SDE has one noise source and only ``x`` is driven by it (SGD, RMSprop in the noise-dominated regime);
    otherwise a ``ValueError`` (torchsde's "general" noise needs a dense ``(N, S d, d)`` tensor a step).
    ``timed`` warm calls after the first (torchsde compiles nothing, so both cost the same)."""
    try:
        import torch
        import torchsde
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(f"sde_torchsde_run needs torch and torchsde: {_INSTALL_HINT} ({err})") from err
    q = _sde_parts(sde, prob, eta, T)
    sp, S, R, d, tau = q["sp"], q["S"], q["R"], q["d"], q["tau"]
    if R != 1 or any(b != 0 for b in q["diff"][1:]):
        raise ValueError("torchsde's diagonal noise needs one noise source that drives x only")
    fa = sp.lambdify(q["args"], q["drift"], "torch")
    fb = sp.lambdify(q["args"], q["diff"][:1], "torch")
    f64 = torch.float64
    h = torch.as_tensor(prob.h, dtype=f64)
    sg = torch.as_tensor(np.asarray(prob.sigma, float), dtype=f64)

    def inputs(t: Any, y: Any) -> list:
        st = [y[:, s * d:(s + 1) * d] for s in range(S)]
        z = 0 * st[0]
        tt = torch.as_tensor(t, dtype=f64) + z
        return st + [h * st[0], h + z, sg + z, tt, tt / tau]

    class _SDE(torch.nn.Module):
        noise_type = "diagonal"
        sde_type = "ito"

        def f(self, t: Any, y: Any) -> Any:
            return torch.cat([torch.as_tensor(a, dtype=f64) + 0 * y[:, :d] for a in fa(*inputs(t, y))], dim=1)

        def g(self, t: Any, y: Any) -> Any:
            gx = torch.as_tensor(fb(*inputs(t, y))[0], dtype=f64) + 0 * y[:, :d]
            return torch.cat([gx] + [torch.zeros_like(gx)] * (S - 1), dim=1)

    t0, n = q["t0"], q["steps"]
    t1 = t0
    for _ in range(n):  # the same float sum torchsde's stepping makes: exactly n steps (see torchsde_run)
        t1 += tau
    y0 = torch.as_tensor(q["y0"], dtype=f64).expand(N, S * d)
    ts = torch.tensor([t0, t1], dtype=f64)
    mod = _SDE()

    def call() -> Any:
        bm = torchsde.BrownianInterval(t0=t0, t1=t1, size=(N, S * d), dtype=f64, device="cpu", entropy=seed, dt=tau)
        with torch.no_grad():
            return torchsde.sdeint(mod, y0, ts, bm=bm, method="euler", dt=tau)

    t_start = time.perf_counter()
    ys = call()
    first = time.perf_counter() - t_start
    best = first
    for _ in range(timed):
        t_start = time.perf_counter()
        ys = call()
        best = min(best, time.perf_counter() - t_start)
    return {"compile_s": first, "run_s": best, "coord_steps_per_s": N * d * T / best,
            "mean_loss": _sde_loss(prob, ys[-1, :, :d].numpy())}


def main() -> None:
    """Run the baselines on the default case and print a table (``--T-torchsde`` shortens torchsde's run).

    The "Euler ref" column is the exact mean loss of the Euler scheme (``euler_reference_loss``) with the
    Monte-Carlo standard error of an N-path mean: every ``mean_loss`` should lie within a few of those.
    """
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--N", type=int, default=1000)
    ap.add_argument("--d", type=int, default=100)
    ap.add_argument("--T", type=int, default=1000)
    ap.add_argument("--T-torchsde", type=int, default=None, help="T for torchsde (default: --T)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    rows: list[tuple[str, int, dict[str, float] | str]] = []
    runs: list[tuple[str, Callable[..., dict[str, float]], int, dict[str, Any]]] = [
        ("diffrax", diffrax_run, a.T, {"brownian": "state"}),
        ("diffrax-x", diffrax_run, a.T, {"brownian": "x"}),
        ("torchsde", torchsde_run, a.T_torchsde or a.T, {}),
    ]
    for name, fn, T, kw in runs:
        try:
            rows.append((name, T, fn(a.N, a.d, T, seed=a.seed, **kw)))
        except ImportError as err:
            rows.append((name, T, f"skipped: {err}"))

    print(f"N={a.N} d={a.d}")
    print(
        f"{'baseline':<10} {'T':>6} {'compile_s':>10} {'run_s':>9} {'coord-steps/s':>14} {'mean_loss':>10} {'Euler ref':>19}"
    )
    for name, T, r in rows:
        if isinstance(r, str):
            print(f"{name:<10} {T:>6} {r}")
            continue
        ref, se = euler_reference_loss(a.N, a.d, T)
        print(
            f"{name:<10} {T:>6} {r['compile_s']:>10.3f} {r['run_s']:>9.3f} {r['coord_steps_per_s']:>14.3e} "
            f"{r['mean_loss']:>10.5f} {ref:>10.5f} ± {se:.5f}"
        )


if __name__ == "__main__":
    main()

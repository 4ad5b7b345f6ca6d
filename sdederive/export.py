r"""A derived SDE on a problem, as the drift and diffusion of the ecosystem's integrators.

`to_diffrax` gives JAX functions `drift(t, y, args)` and `diffusion(t, y, args)` for
`diffrax.MultiTerm(ODETerm(drift), ControlTerm(diffusion, brownian))`; `to_torchsde` gives a
`torch.nn.Module` with `f(t, y)` and `g(t, y)` (`noise_type="general"`, `sde_type="ito"`)
for `torchsde.sdeint`.  Both are built from the same lowering as this project's own kernels
(`sdederive.simulate.spec.sde_spec`): the per-coordinate drift $a_s$ and diffusion
$b_{s,r}$ with the problem's gradient, Hessian diagonal and noise scale, and the same start
(the expected first step where the SDE is singular at $t = 0$).  The gradient and Hessian diagonal
are the problem's one description (`Problem.code`, `sdederive.problems.description.evaluate_xp`)
evaluated in JAX or torch, so they trace and differentiate there.

The state is flat: `y[s*d + i]` is state `s` (in the SDE's variables, `x` first) of coordinate
`i`; the Brownian motion has `R*d` components, `R` noise sources per coordinate, and the
diffusion matrix is block diagonal in the coordinates.  Time is the SDE's: one optimizer step is
`tau`.  Problems: quadratics (diagonal `h` or dense `H`, per-coordinate noise) and custom
objectives; correlated noise (a full `Sigma`) and logistic regression are refused.

The packages are optional extras: `pip install 'sdederive[export]'` (jax, diffrax, torch, torchsde).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sympy as sp

from sdederive.errors import SdederiveError
from sdederive.problems import Custom, Problem, Quadratic
from sdederive.sde import SDE
from sdederive.symbols import sym

__all__ = ["Exported", "to_diffrax", "to_torchsde"]


@dataclass(frozen=True)
class Exported:
    """What both exports share: the flat layout, the start and the time axis.

    Attributes
    ----------
    states
        the SDE's state names (`x` first); `y[s*d + i]` is state `s` of coordinate `i`.
    d, noise_sources
        coordinates and noise sources per coordinate (the Brownian motion has
        `noise_sources*d` components).
    y0
        the start (NumPy, `(len(states)*d,)`) at time `t0`.
    t0, tau
        the start time (`tau` where the SDE starts from the expected first step, else 0) and
        the SDE time of one optimizer step, so step `k` is `t = k*tau`.
    drift, diffusion
        the exported callables (JAX: `(t, y, args)`; torch: a module's `f`/`g`).
    module
        the torchsde module (torch export only).
    """

    states: tuple
    d: int
    noise_sources: int
    y0: np.ndarray
    t0: float
    tau: float
    drift: object = None
    diffusion: object = None
    module: object = None

    def time(self, steps: int) -> float:
        """SDE time after `steps` optimizer steps."""
        return steps * self.tau

    def x(self, y):
        """The parameter block `x` of flat states `y` (`(..., d)`)."""
        return y[..., : self.d]


def _elementary(e: sp.Expr) -> sp.Expr:
    """Forms every array library prints: `Max`/`Min` of two by `(a + b +- |a - b|)/2` (and the
    kernels' square-root clamp `NonNeg(a)` by `(a + |a|)/2`),
    `Heaviside(u)` by `(1 + sign(u))/2` (also 1/2 at 0), numbers as floats."""
    def mx(*a):
        out = a[0]
        for b in a[1:]:
            out = (out + b + sp.Abs(out - b)) / 2
        return out

    def mn(*a):
        out = a[0]
        for b in a[1:]:
            out = (out + b - sp.Abs(out - b)) / 2
        return out

    from sdederive.simulate.lower import NonNeg

    e = e.replace(sp.Max, mx).replace(sp.Min, mn).replace(sp.Heaviside, lambda u, *h: (1 + sp.sign(u)) / 2)
    e = e.replace(NonNeg, lambda a: (a + sp.Abs(a)) / 2)
    return e.evalf()


def _lowered(sde: SDE, problem: Problem, eta, hyper):
    """`(spec, scalar values, start, t0, tau)` from the project's own simulator set-up."""
    from sdederive.simulate.simulator import compile as _compile

    if not isinstance(sde, SDE):
        raise SdederiveError(f"export needs a derived SDE (sdederive.derive(...)), got {type(sde).__name__}")
    if not isinstance(problem, (Quadratic, Custom)):
        raise SdederiveError(f"export supports Quadratic and Custom problems, got {type(problem).__name__} "
                             "(logistic regression's minibatch noise has no per-coordinate closed form here)")
    sim = _compile(sde, problem)
    spec = sim.spec
    if spec.noise_form != "diag":
        raise SdederiveError("export supports per-coordinate noise; this problem's noise is correlated (a full "
                             "Sigma): simulate it with sdederive.compile instead")
    hv = sim.resolve_hyper(eta, hyper)
    tau = float(sim.tau_expr.subs(sym("eta"), hv["eta"]))
    k0, st0 = sim.initial_state(hv)
    y0 = np.concatenate([np.broadcast_to(np.asarray(st0[s], float), (problem.d,)) for s in spec.states])
    scalars = dict(zip(spec.scalars, sim._scalar_values(hv)[: len(spec.scalars)]))
    return spec, scalars, y0, k0 * tau, tau


def _coefficients(spec, scalars: dict):
    """The drift and diffusion outputs as whole expressions of the per-coordinate inputs, with the
    scalars substituted: `(args, [a_s], [[b_{s,r}]])`."""
    env: dict = {}
    for name, e in spec.coef.temps:
        env[sp.Symbol(name)] = e.xreplace(env)
    out = {name: e.xreplace(env) for name, e in spec.coef.outputs}
    vals = {sp.Symbol(f"hp_{k}", real=True): float(v) for k, v in scalars.items()}
    S, R = len(spec.states), spec.n_sources
    drift = [_elementary(out[f"a_{s}"].xreplace(vals)) for s in spec.states]
    diff = [[_elementary(out[f"b_{s}_{r}"].xreplace(vals)) for r in range(R)] for s in spec.states]
    args = [sp.Symbol(f"s_{s}", real=True) for s in spec.states] + [
        sp.Symbol(n, real=True) for n in ("gr", "hs", "sg", "tt", "kk")]
    return args, drift, diff, S, R


def _problem_parts(problem: Problem, xp):
    """`grad(x)`, `hess_diag(x)`, `sigma` in the array library `xp` (jax.numpy or torch): the problem's one
    description (`Problem.code`) evaluated in that library, as the kernels print it and numpy evaluates it."""
    from sdederive.problems.description import evaluate_xp

    pc = problem.code()
    arrays, scalars = problem._arrays(), problem._scalars()
    return ((lambda x: evaluate_xp(pc.grad, x, arrays, scalars, xp)),
            (lambda x: evaluate_xp(pc.hess_diag, x, arrays, scalars, xp)), problem.sigma)


def to_diffrax(sde: SDE, problem: Problem, eta=None, hyper: dict | None = None) -> Exported:
    """The SDE on `problem` at the discrete hyperparameters `eta`/`hyper`, as JAX functions.

    `drift(t, y, args)` returns `(S*d,)`, `diffusion(t, y, args)` the `(S*d, R*d)` matrix:

        ex = sde.to_diffrax(problem, eta=1e-2)
        bm = diffrax.VirtualBrownianTree(ex.t0, t1, tol=ex.tau / 4, shape=(ex.noise_sources * ex.d,), key=key)
        terms = diffrax.MultiTerm(diffrax.ODETerm(ex.drift), diffrax.ControlTerm(ex.diffusion, bm))
        sol = diffrax.diffeqsolve(terms, diffrax.Euler(), ex.t0, t1, dt0=ex.tau, y0=jnp.asarray(ex.y0))
    """
    spec, scalars, y0, t0, tau = _lowered(sde, problem, eta, hyper)  # what cannot be exported is refused first
    try:
        import jax.numpy as jnp
    except ImportError as e:
        raise SdederiveError("to_diffrax needs jax and diffrax, the 'export' extra: "
                             "pip install 'sdederive[export]'") from e
    args, drift, diff, S, R = _coefficients(spec, scalars)
    import jax.scipy.special as jsp

    mods = [{"erf": jsp.erf, "erfc": jsp.erfc}, "jax"]  # sympy's jax printer leaves erf to math.erf
    fa = sp.lambdify(args, drift, mods)
    fb = sp.lambdify(args, [b for row in diff for b in row], mods)
    grad, hess, sigma = _problem_parts(problem, jnp)
    d = problem.d
    sg = jnp.asarray(sigma)
    eye = jnp.eye(d)

    def inputs(t, y):
        st = [y[s * d:(s + 1) * d] for s in range(S)]
        x = st[0]
        return st + [grad(x), hess(x), sg + 0 * x, t + 0 * x, t / tau + 0 * x]

    def drift_fn(t, y, args=None):
        return jnp.concatenate([jnp.broadcast_to(a, (d,)) for a in fa(*inputs(t, y))])

    def diffusion_fn(t, y, args=None):
        b = fb(*inputs(t, y))
        rows = [jnp.concatenate([jnp.broadcast_to(b[s * R + r], (d,))[:, None] * eye for r in range(R)], axis=1)
                for s in range(S)]
        return jnp.concatenate(rows, axis=0)

    return Exported(tuple(spec.states), d, R, y0, t0, tau, drift_fn, diffusion_fn)


def to_torchsde(sde: SDE, problem: Problem, eta=None, hyper: dict | None = None) -> Exported:
    """The SDE on `problem` as a torchsde module (`Exported.module`): `f(t, y)` is
    `(batch, S*d)`, `g(t, y)` is `(batch, S*d, R*d)`; float64:

        ex = sde.to_torchsde(problem, eta=1e-2)
        y0 = torch.tensor(ex.y0).expand(paths, -1)
        ys = torchsde.sdeint(ex.module, y0, torch.tensor([ex.t0, t1]), method="euler", dt=ex.tau)
    """
    spec, scalars, y0, t0, tau = _lowered(sde, problem, eta, hyper)  # what cannot be exported is refused first
    try:
        import torch
    except ImportError as e:
        raise SdederiveError("to_torchsde needs torch and torchsde, the 'export' extra: "
                             "pip install 'sdederive[export]'") from e
    args, drift, diff, S, R = _coefficients(spec, scalars)
    fa = sp.lambdify(args, drift, "torch")
    fb = sp.lambdify(args, [b for row in diff for b in row], "torch")
    grad, hess, sigma = _problem_parts(problem, torch)
    d = problem.d
    sg = torch.as_tensor(np.asarray(sigma, float))

    def inputs(t, y):
        st = [y[:, s * d:(s + 1) * d] for s in range(S)]
        x = st[0]
        tt = torch.as_tensor(t, dtype=y.dtype) + 0 * x
        return st + [grad(x), hess(x), sg + 0 * x, tt, tt / tau]

    class _Module(torch.nn.Module):
        noise_type = "general"
        sde_type = "ito"

        def f(self, t, y):
            return torch.cat([torch.as_tensor(a, dtype=y.dtype) + 0 * y[:, :d] for a in fa(*inputs(t, y))], dim=1)

        def g(self, t, y):
            b = fb(*inputs(t, y))
            out = y.new_zeros(y.shape[0], S * d, R * d)
            idx = torch.arange(d)
            for s in range(S):
                for r in range(R):
                    out[:, s * d + idx, r * d + idx] = torch.as_tensor(b[s * R + r], dtype=y.dtype) + 0 * y[:, :d]
            return out

    return Exported(tuple(spec.states), d, R, y0, t0, tau, module=_Module())

r"""What a kernel computes, independent of the backend: `KernelSpec`.

Built from an `SDE` (`sde_spec`) or an
`Optimizer` (`discrete_spec`) and a problem.  Holds three
straight-line functions of one coordinate, as sympy assignments:

`coef`  (SDE mode) drift `a_s` and diffusion `b_{s,r}` of every state `s`;
`upd`   (discrete mode) the state after one step;
`obs`   the reported states in the *discrete* optimizer's variables (`v = u/eta**2`), so both
          modes report the same observables.

Kernel argument names: state `s` is `s_<s>`, hyperparameter `h` is `hp_<h>`, and `gr`,
`hs`, `sg` are the coordinate's gradient, Hessian diagonal and noise scale, `gv` the
stochastic gradient, `tt` the time, `kk` the step counter.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import sympy as sp

from sdederive.problems import Problem
from sdederive.sde import SDE
from sdederive.simulate.lower import (
    GRAD,
    HESS,
    SIGMA,
    Assignments,
    CodegenError,
    NonNeg,
    T,
    check_supported,
    cse_assignments,
)
from sdederive.spec.optimizers import Optimizer
from sdederive.symbols import sym

__all__ = ["KernelSpec", "sde_spec", "discrete_spec", "check_names", "source_optimizer"]

_GR, _HS, _SG, _TT, _KK, _GV = (sp.Symbol(n, real=True) for n in ("gr", "hs", "sg", "tt", "kk", "gv"))


@dataclass(frozen=True, eq=False)
class KernelSpec:
    mode: str  # "sde" | "discrete"
    name: str
    states: tuple[str, ...]  # kernel state names (SDE or discrete variables), x first
    outputs: tuple[str, ...]  # reported states (discrete names), x first
    scalars: tuple[str, ...]  # scalar parameters, in HP order (discrete hyperparameters, nu)
    coef: Assignments | None  # SDE: a_<s>, b_<s>_<r>
    upd: Assignments | None  # discrete: n_<s>
    obs: Assignments  # o_<out>
    n_sources: int  # SDE noise sources per coordinate (1 for discrete)
    noise_form: str  # "diag" | "corr" (correlated increment xi, SDE linear in it)
    uses: frozenset  # subset of {"hs", "sg", "tt", "kk"}
    notes: tuple[str, ...] = ()

    def fingerprint(self) -> str:
        text = repr((self.mode, self.states, self.outputs, self.scalars, self.n_sources, self.noise_form,
                     sorted(self.uses),
                     [(n, sp.srepr(e)) for a in (self.coef, self.upd, self.obs) if a for n, e in a.temps + a.outputs]))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


_IDENT = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")


def check_names(spec: KernelSpec) -> None:
    """Every name the generated code is built from must be a plain ASCII identifier: the spec's states,
    reported states and scalar parameters become argument names of the generated functions (a name
    from a hand-built SDE could otherwise put code into the kernel source)."""
    for what, names in (("state", spec.states), ("reported state", spec.outputs), ("parameter", spec.scalars)):
        for n in names:
            if not isinstance(n, str) or not _IDENT.match(n):
                raise CodegenError(f"{spec.mode} kernel of {spec.name!r}: {what} name {n!r} is not an identifier; "
                                   "allowed: letters, digits and '_', starting with a letter")


class _Rename:
    """Kernel argument names for an expression's symbols, matched by *name*: a user's hyperparameter
    `sd.sym("cl", positive=True)` and a plain `sd.sym("cl")` are different sympy symbols but one
    kernel argument `hp_cl`."""

    def __init__(self, states: tuple[str, ...], scalars: tuple[str, ...]) -> None:
        m = {s: sp.Symbol(f"s_{s}", real=True) for s in states}
        m.update({h: sp.Symbol(f"hp_{h}", real=True) for h in scalars})
        m.update({str(GRAD): _GR, str(HESS): _HS, str(SIGMA): _SG, str(T): _TT, "k": _KK, "g": _GV})
        self.by_name = m

    def __call__(self, e: sp.Expr) -> sp.Expr:
        e = sp.sympify(e)
        return e.xreplace({f: self.by_name[f.name] for f in e.free_symbols
                           if isinstance(f, sp.Symbol) and f.name in self.by_name})


def _student_t_elementary(e: sp.Expr, nu: float | None) -> sp.Expr:
    if not e.has(sp.hyper):
        return e
    if nu is None:
        raise CodegenError("the SDE uses the Student-t CDF but the problem gives no nu")
    e = sp.hyperexpand(e.subs(sym("nu"), sp.nsimplify(nu)))
    if e.has(sp.hyper):
        raise CodegenError(
            f"the Student-t CDF with nu={nu:g} has no elementary form the kernel printers can lower; use an "
            "integer or half-integer nu (1, 1.5, 2, 3, ...)"
        )
    return sp.simplify(e)


def _scalars_of(exprs, known_states, hypers_order) -> tuple[str, ...]:
    per_coord = {"grad", "hess", "sigma", "t", "k", "g", *known_states}
    names = set()
    for e in exprs:
        names |= {str(s) for s in sp.sympify(e).free_symbols}
    names -= per_coord
    order = [h for h in hypers_order if h in names] + sorted(names - set(hypers_order))
    return tuple(order)


def source_optimizer(sde: SDE) -> Optimizer | None:
    """The optimizer `sde` was derived from: `sde.source` (set by `sdederive.derive` and
    restored by `SDE.from_json`), else the built-in of that name (an
    SDE built by hand or read from an old JSON without `"source"`), else `None`.  The simulators take
    the states' kinds, initial values and update rule from it, so a user-written copy of a built-in
    simulates exactly like the built-in."""
    if isinstance(sde.source, Optimizer):
        return sde.source
    from sdederive.spec.optimizers import BUILTINS, get

    return get(sde.optimizer) if sde.optimizer in BUILTINS else None


def _clamp_sqrt(e: sp.Expr) -> sp.Expr:
    """`sqrt(A) -> sqrt(NonNeg(A))` (`max(A, 0)`) where `A` is not known to be nonnegative.  A diffusion entry
    under a square root is a Cholesky pivot `Var - Cov**2/Var` (nonnegative by Cauchy-Schwarz);
    floating point can still make it a tiny negative number where the two terms cancel (Lion's
    `1 - erf(.)**2 - ...` at a large signal-to-noise ratio, where `erf` rounds to 1), which would
    turn a zero into NaN."""
    def fix(p):
        base = p.base
        if p.exp == sp.S.Half and base.is_nonnegative is not True:
            return sp.sqrt(NonNeg(base))
        return p

    return e.replace(lambda a: isinstance(a, sp.Pow) and a.exp == sp.S.Half, fix)


def _coupling_signs(sde: SDE, D: sp.Matrix) -> list[int]:
    """Orient each noise column of `D` like the discrete update's response to `z`.

    `D` and `-D` give the same SDE in law; the derivation fixes the sign of a Cholesky factor,
    not the sign with which the gradient noise moves the state.  The simulators feed the discrete
    run and the SDE run of one seed the same Gaussians (`g = grad + sigma z`, `dW = sqrt(tau) z`);
    for that coupling to make their difference small, `dW` must push the state the way `z` does.
    Per column: take its first nonzero row `s` and compare the sign of `D[s, j]` with the sign
    of `x_s(z = +1) - x_s(z = -1)` of the optimizer's update (a difference, not a derivative, so
    that `sign(g)` responds too), at a generic point with a small gradient.  Returns +1 or -1 per
    column; +1 where the optimizer is unknown or the state was eliminated.
    """
    r = D.shape[1]
    out = [1] * r
    if sde.eliminated or r == 0:
        return out
    opt = source_optimizer(sde)
    if opt is None:  # a hand-built SDE (or old JSON) of an optimizer that is not a built-in: keep the derived sign
        return out
    upd = opt.updates
    point = {sym("grad"): 0.1, SIGMA: 1.0, sym("hess"): 1.0, sym("x"): 0.3, sym("k"): 5, sym("t"): 0.7}
    for h in opt.hypers:
        if h.default is not None:
            point[sym(h.name)] = h.default
    for st in opt.states:
        point.setdefault(sym(st.name), 0.5)
    names = {}
    for s in sde.states:
        if s in sde.state_map:
            free = [str(f) for f in sp.sympify(sde.state_map[s]).free_symbols if str(f) in opt.state_names]
            names[s] = free[0] if len(free) == 1 else None
        else:
            names[s] = s if s in opt.state_names else None

    def num(e, extra=None):
        e = sp.sympify(e).xreplace({**point, **(extra or {})})
        e = e.xreplace({f: 0.37 for f in e.free_symbols})  # anything left (scaled params, eps0, ...)
        try:
            return complex(sp.N(e)).real
        except (TypeError, ValueError):
            return 0.0

    # g = grad + sigma z at z = +1 and -1, as numbers (substituting the expression grad + sigma*z and then the
    # numbers rebuilt the update symbolically first, 5 ms of a kernel's spec)
    g_up, g_down = point[sym("grad")] + point[SIGMA], point[sym("grad")] - point[SIGMA]
    for j in range(r):
        for i, s in enumerate(sde.states):
            dv = num(D[i, j])
            if abs(dv) < 1e-12:
                continue
            dname = names.get(s)
            if dname is None or dname not in upd:
                break
            e = sp.sympify(upd[dname])
            resp = num(e, {sym("g"): g_up}) - num(e, {sym("g"): g_down})
            if resp * dv < 0:
                out[j] = -1
            break
    return out


def _require_diagonal_hessian(sde: SDE, problem: Problem) -> None:
    """The order-2 drift is derived per coordinate: its `(grad b0) b0` term uses `hess` =
    `d grad_i/dx_i` only, so on a problem whose Hessian couples coordinates it misses `H grad`'s
    off-diagonal part and the SDE is only first order.  Refuse such a problem."""
    why = problem.hessian_coupling()  # each problem kind knows its Hessian's structure
    if why:
        raise CodegenError(
            f"the order-2 SDE of {sde.optimizer} assumes a diagonal Hessian (its correction uses hess = "
            f"d grad_i/dx_i per coordinate, not the full H grad), so on {why} it is only first order. Simulate "
            "it on a problem with a diagonal Hessian, or use the order-1 SDE (sd.derive(..., order=1))."
        )


def invert_state_map(u: sp.Symbol, smap: sp.Expr, v: sp.Symbol) -> sp.Expr:
    """`v` as a function of the SDE's state `u = smap(v)` (the reported discrete state): `u / c` for a linear map
    `u = c v` (every built-in's, `u = eta**2 v`), which is what `sympy.solve` returns, 10 ms sooner; `solve`
    otherwise (its first root)."""
    coef = sp.diff(smap, v)
    if coef != 0 and not coef.has(v) and sp.expand(smap - coef * v) == 0:
        return u / coef
    return sp.solve(sp.Eq(u, smap), v)[0]


def sde_spec(sde: SDE, problem: Problem, *, correlated: bool) -> KernelSpec:
    """Kernel spec of an SDE on a problem.  `correlated`: the problem's noise is correlated across
    coordinates (then a linear-noise SDE uses the correlated increment, otherwise the per-coordinate
    marginal scale, which is recorded in `notes`)."""
    if getattr(sde, "order", 1) == 2:
        _require_diagonal_hessian(sde, problem)
    states = tuple(sde.states)
    # the parameters' own symbols (a decay of any name scales to a positive `rho_...`, which `sym(name)`
    # would not rebuild with its assumptions)
    own = {str(f): f for e in [*sde.drift.values(), *sde.diffusion_matrix] for f in sp.sympify(e).free_symbols}
    params = {}
    for k, v in sde.params.items():
        key = own.get(k, sym(k)) if isinstance(k, str) else k
        params[key] = v
    notes = []
    sigma1, B = sym("sigma1"), sym("B")

    def prep(e):
        e = sp.sympify(e).xreplace(params)
        if e.has(sigma1):  # minibatch-form SDE: sigma = sigma1/sqrt(B)
            e = e.xreplace({sigma1: SIGMA * sp.sqrt(B)})
        return _student_t_elementary(e, problem.nu)

    drift = {s: prep(sde.drift[s]) for s in states}
    D = sde.diffusion_matrix.applyfunc(lambda e: _clamp_sqrt(prep(e)))
    r = D.shape[1]
    for j, sgn in enumerate(_coupling_signs(sde, D)):
        if sgn < 0:
            D[:, j] = -D[:, j]
    noise_form = "diag"
    if correlated:
        if sde.linear_noise and r == 1:
            Dn = D.applyfunc(lambda e: sp.simplify(e / SIGMA))
            if any(d.has(SIGMA) and sp.simplify(sp.diff(d, SIGMA)) != 0 for d in Dn):
                notes.append("diffusion is not proportional to sigma; correlated noise replaced by its marginals")
            else:
                D, noise_form = Dn, "corr"
        else:
            notes.append(
                f"the {sde.optimizer} SDE was derived per coordinate and its noise is not linear in the gradient "
                "noise: correlated gradient noise enters through its per-coordinate marginal scale only"
            )
    hyper_names = [h[0] for h in sde.hypers]
    all_exprs = list(drift.values()) + list(D)
    # reported states: discrete names via the inverse of the state map (u = eta**2 v -> v = u/eta**2)
    outs, out_exprs = [], []
    inv = {}
    for s in states:
        if s in sde.state_map:
            dsyms = [f for f in sp.sympify(sde.state_map[s]).free_symbols if str(f) not in hyper_names]
            if len(dsyms) != 1:
                raise CodegenError(f"cannot invert the state map {s} = {sde.state_map[s]}")
            dv = dsyms[0]  # the state's own symbol (assumptions included: vhat, s are nonnegative)
            ssym = next((f for e in all_exprs for f in e.free_symbols if str(f) == s), sym(s))
            inv[s] = (str(dv), invert_state_map(ssym, sp.sympify(sde.state_map[s]).xreplace(params), dv))
        else:
            inv[s] = (s, sym(s))
    for s in states:
        outs.append(inv[s][0])
        out_exprs.append(inv[s][1])
    all_exprs += out_exprs
    for e in all_exprs:
        check_supported(e, f"SDE of {sde.optimizer}")
    scalars = _scalars_of(all_exprs, states, hyper_names)
    bad = [s for s in scalars if s not in hyper_names and s not in ("nu", "B")]
    if bad:
        raise CodegenError(f"SDE of {sde.optimizer}: symbol(s) {bad} have no value: they are neither "
                           f"hyperparameters {hyper_names} nor problem quantities (grad, hess, sigma, t, nu, B)")
    ren = _Rename(states, scalars)
    coef_out = [(f"a_{s}", ren(drift[s])) for s in states]
    coef_out += [(f"b_{s}_{j}", ren(D[i, j])) for j in range(r) for i, s in enumerate(states)]
    coef = cse_assignments(coef_out, "w")
    obs = cse_assignments([(f"o_{o}", ren(e)) for o, e in zip(outs, out_exprs)], "q")
    uses = _uses(coef_out)
    return KernelSpec("sde", sde.optimizer, states, tuple(outs), scalars, coef, None, obs, r, noise_form,
                      uses, tuple(notes))


def _uses(outs) -> frozenset:
    fs = set()
    for _, e in outs:
        fs |= {str(s) for s in e.free_symbols}
    return frozenset(fs & {"hs", "sg", "tt", "kk"})


def discrete_spec(opt: Optimizer) -> KernelSpec:
    """Kernel spec of the discrete update rule (same for every problem: the gradient is an input)."""
    states = opt.state_names
    hyper_names = [h.name for h in opt.hypers]
    upd = opt.updates
    for s in states:
        check_supported(upd[s], f"update of {opt.name}")
    scalars = tuple(hyper_names)
    ren = _Rename(states, scalars)
    outs = [(f"n_{s}", ren(upd[s])) for s in states]
    a = cse_assignments(outs, "w")
    obs = cse_assignments([(f"o_{s}", ren(sym(s))) for s in states], "q")
    return KernelSpec("discrete", opt.name, states, states, scalars, None, a, obs, 1, "diag", _uses(outs))

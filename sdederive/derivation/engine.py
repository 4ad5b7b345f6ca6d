r"""Derive the SDE of an optimizer: one-step moment expansion in the small parameter `eta`.

For states $s$ with one-step increments $\Delta s = s_{k+1}-s_k$ and time per step
$\tau=\eta^q$, the SDE $dX = b\,dt + D\,dW$ is matched to the discrete chain by

$$
b = \lim \frac{\mathbb E[\Delta]}{\tau},\qquad
D D^\top = \text{leading term of } \frac{\operatorname{Cov}[\Delta]}{\tau},
$$

after the regime's substitutions (`beta = 1 - rho*eta`, `sigma = sigma0/eta`, ...).  Terms of
$\mathbb E[\Delta]$ below order $\tau$ must vanish (else the optimizer has no limit in
that regime); the covariance keeps its leading order, which may carry powers of `eta` (the
`sqrt(eta)` of the SME).  Powers `beta**(k+1)` of bias corrections become
$\exp(\lim_{\eta\to0}(k+1)\log\beta)$ with $k = t/\tau$ (e.g. `exp(-rho*t)`).

States whose increment does not vanish as $\eta\to0$ (heavy-ball's buffer at fixed
`mu`) are *fast*.  When they enter the updates affinely they are eliminated: the slow variable
$y = x + a\,m$ with $\partial\Delta y/\partial m = 0$ evolves without them (for heavy
ball $a=\eta\mu/(\mu-1)$, $\Delta y = -\eta g/(1-\mu)$).

`order=2` (`tau = eta`) adds the next drift term of the stochastic modified equation,
$b = b_0 + \eta\big(E_2 - \tfrac12 (\nabla b_0) b_0\big)$ where $E_2$ is the
$\eta^2$ coefficient of $\mathbb E[\Delta]$ and $\partial_x$ acts on `grad`
through `hess`; for SGD this is $-\nabla(f + \tfrac\eta4|\nabla f|^2)$.
"""

from __future__ import annotations

import functools
import math

import sympy as sp

from sdederive import noise as noise_mod
from sdederive import regimes as regime_mod
from sdederive.derivation._lag import Z_PREV, LagModel, find_lagged
from sdederive.derivation._special import derive_special
from sdederive.derivation.expectation import Expectation, expand_eta, expect, extract_atoms, is_zero
from sdederive.errors import ExpectationError, RegimeMismatchError, SdederiveError
from sdederive.regimes import scaled_name
from sdederive.sde import SDE
from sdederive.spec import optimizers as opt_mod
from sdederive.symbols import sym

__all__ = ["derive", "clear_cache"]

_eta, _z, _g, _k, _t = sym("eta"), sym("z"), sym("g"), sym("k"), sym("t")
_grad, _hess, _sigma, _sigma0 = sym("grad"), sym("hess"), sym("sigma"), sym("sigma0")


def derive(optimizer="adam", noise="gaussian", regime=None, order: int = 1, **noise_params) -> SDE:
    """Derive the SDE of `optimizer` under `noise` in `regime`.

    Results are cached: deriving the same (optimizer, noise, regime, order) again is free.

    Parameters
    ----------
    optimizer
        a built-in name (`sdederive.spec.optimizers.names()`) or an `Optimizer`;
        a vector optimizer (`usam`, `sam`, `nsgd`, `clip_sgd`, `sgd_nesterov`, `lamb` or one from `sdederive.from_update`
        with vector expressions) goes to `sdederive.derivation.vector.derive_vector` (docs/vector.md).
    noise
        `"gaussian"`, `"student-t"`, `"minibatch"` or a `NoiseModel`;
        `noise_params` (`nu=3`, `sigma=...`, `Sigma=...`) are passed to its constructor.
    regime
        a regime name or `Regime`; default: the optimizer's natural one.
    order
        1 (leading order) or 2 (stochastic modified equation of order 2; needs `tau = eta`).
    """
    from sdederive.spec import vector as _vec

    if _vec.is_vector(optimizer):  # norms, inner products, gradients at other points: the vector engine
        from sdederive.derivation.vector import derive_vector

        return derive_vector(optimizer, noise, regime, order, **noise_params)
    if isinstance(noise_params.get("Sigma"), str):  # Sigma="full": symbolic full covariance, vector engine
        from sdederive.derivation.vector import derive_vector, vector_form

        return derive_vector(vector_form(opt_mod.get(optimizer)), noise, regime, order, **noise_params)
    opt = opt_mod.get(optimizer)
    nm = noise_mod.get(noise, **noise_params)
    rg = regime_mod.get(regime if regime is not None else opt.natural_regime)
    if order not in (1, 2):
        raise SdederiveError(f"order={order!r} is not supported; allowed: 1 or 2")
    return derive_special(_derive, opt, nm, rg, order)  # running maxima, lagged gradients (_special.py)


def clear_cache() -> None:
    _derive.cache_clear()
    from sdederive.derivation import vector as _vector_engine

    _vector_engine.clear_cache()


def _unit_interval(opt) -> dict:
    """`{symbol: w}` for the hyperparameters known to lie in [0, 1) (decays, interpolation weights,
    heavy-ball mu), each with a positive placeholder `w` used to tell sympy so:
    `h = 1/(1 + w)` for sign decisions, `h = 1 - w` for simplification."""
    return {
        h.symbol: sp.Dummy(f"w_{h.name}", positive=True)
        for h in opt.hypers
        if h.kind in ("decay", "interp", "momentum")
    }


@functools.lru_cache(maxsize=256)
def _derive(opt, nm, rg, order: int) -> SDE:
    q, ctau = rg.tau_power, rg.tau_coeff  # tau = ctau*eta**q
    N = int(sp.ceiling(q)) + 2  # expansion order of the increments
    notes: list[str] = []

    # 1. the regime's substitutions, and the definitions of its scaled parameters ----------------
    hsubs: dict = {}
    params: dict[str, sp.Expr] = {}
    for h in opt.hypers:
        if h.kind == "decay" and rg.decay_power:
            s = sym(scaled_name(h.name, rg.decay_prefix), positive=True)
            hsubs[h.symbol] = 1 - s * _eta**rg.decay_power
            params[s.name] = (1 - h.symbol) / _eta**rg.decay_power
        elif h.kind == "eps" and rg.scale_eps:
            s = sym(h.name + "0", nonnegative=True)
            hsubs[h.symbol] = s / _eta
            params[s.name] = h.symbol * _eta
    for name, expr in rg.subs:
        target = next((h.symbol for h in opt.hypers if h.name == name), sym(name))
        expr = sp.sympify(expr)
        hsubs[target] = expr
        new_syms = [f for f in expr.free_symbols if f != _eta]
        if len(new_syms) == 1:  # record the scaled symbol's definition, e.g. wd0 = wd/eta
            sol = sp.solve(sp.Eq(target, expr), new_syms[0])
            if len(sol) == 1:
                params[str(new_syms[0])] = sol[0]
    gsub = nm.scale * _z + _grad
    if rg.scale_noise:
        if nm.batch:
            raise RegimeMismatchError(
                f"regime {rg.name!r} scales sigma = sigma0/eta; use the 'gaussian' or 'student-t' noise with "
                "sigma (not the minibatch form sigma1/sqrt(B))"
            )
        gsub = gsub.subs(_sigma, _sigma0 / _eta)
        params["sigma0"] = _sigma * _eta
    if nm.batch:
        params["sigma"] = nm.scale
    # states storing the previous gradient, entering non-affinely: the lagged-noise model (_lag.py)
    lagged = find_lagged(opt)
    lag = LagModel(lagged, lambda n: E.moment(n), opt.name, opt.update) if lagged else None
    lag_names = {d.name for d, _ in lagged}

    # 2. state rescaling (v -> u = eta**2 * v) -----------------------------------------------------
    rename: dict[str, str] = {}
    ssubs: dict = {}
    state_map: dict[str, sp.Expr] = {}
    for s in opt.states:
        if s.kind in rg.rescale:
            new = "u" if s.name == "v" else f"u_{s.name}"
            rename[s.name] = new
            ssubs[s.symbol] = sym(new, nonnegative=True) / _eta**2
            state_map[new] = _eta**2 * s.symbol
    states = ["x"] + [rename.get(s.name, s.name) for s in opt.states if s.name not in lag_names]
    kinds = {rename.get(s.name, s.name): s.kind for s in opt.states} | {"x": "param"}
    init = {rename.get(s.name, s.name): sp.nsimplify(s.init) * (_eta**2 if s.name in rename else 1)
            for s in opt.states if s.name not in lag_names}

    tau = rg.tau
    if order == 2:
        _order2_allowed(opt, rg)
        if lagged:
            raise SdederiveError(
                f"order=2 is not available for {opt.name!r}: its state {lagged[0][0].name} stores the previous "
                "step's gradient, and the order-2 drift would need the two-step corrections of the lagged-noise "
                "model (the change of the gradient between steps) that are not derived; use order=1"
            )
    subs_all = {_g: gsub, **hsubs, **ssubs}
    unit = _unit_interval(opt)
    bias: dict = {}
    root_kinds = ("second_moment", "accumulator")
    new_vals: dict[str, sp.Expr] = {}
    for sname, expr in opt.update:
        if sname in lag_names:
            continue
        e = expr.xreplace(subs_all)
        if sname in rename:
            e = _eta**2 * e
        new_vals[rename.get(sname, sname)] = _limit_powers(e, tau, unit, N, bias)
    syms = {"x": sym("x")}
    for sd_ in opt.states:
        name = rename.get(sd_.name, sd_.name)
        syms[name] = sym(name, nonnegative=True) if sd_.name in rename else sd_.symbol
    incr = {s: new_vals[s] - syms[s] for s in states}
    roots = frozenset(syms[s] for s in states if kinds.get(s) in root_kinds)

    def tidy(e):
        return _tidy(e, unit, roots)
    raw_incr, lag_subs = incr, {}
    if lag:
        lag_subs = lag.substitutions(gsub)
        incr = {s: e.xreplace(lag_subs) for s, e in incr.items()}

    # 3. atoms (non-smooth functions of the noise) -------------------------------------------------
    try:
        incr, atoms = extract_atoms(incr)
    except ExpectationError as exc:  # show bias placeholders as what they stand for
        msg = exc.args[0]
        for G in sorted(bias, key=lambda d: -len(str(d))):
            msg = msg.replace(str(G), f"({bias[G]})")
        raise ExpectationError(msg) from None
    readable = {a.symbol: a.expr for a in atoms} | bias  # the engine's placeholders, for messages

    def show(e: sp.Expr) -> str:
        return _pretty(sp.sympify(e).xreplace(readable).xreplace(readable))

    if lag:
        lag.refuse_nonsmooth(atoms, show)

    E = Expectation(nm, atoms, {h: 1 / (1 + w) for h, w in unit.items()}, N, names=readable)

    # 4. expansions; fast states ----------------------------------------------------------------
    exp_ = {s: expand_eta(e, N) for s, e in incr.items()}
    fast = [s for s in states if exp_[s] and min(exp_[s]) <= 0]
    eliminated: dict[str, sp.Expr] = {}
    if fast:
        if "x" in fast:
            raise RegimeMismatchError(
                f"in regime {rg.name!r} the parameter x of {opt.name!r} moves O(1) per step "
                f"(increment {show(incr['x'])}); no SDE limit. Try another regime "
                f"({', '.join(regime_mod.names())})."
            )
        for a in atoms:
            inside = [f for f in fast if a.a.has(syms[f]) or a.b.has(syms[f])]
            if inside:
                raise RegimeMismatchError(
                    f"state {inside[0]} of {opt.name!r} is fast in regime {rg.name!r}: "
                    f"{_fast_cause(inside[0], exp_[inside[0]], opt, show)}. It enters the update through "
                    f"{show(a.expr)}, nonlinearly, so it cannot be averaged out."
                )
        if lag:
            raise RegimeMismatchError(
                f"state {fast[0]} of {opt.name!r} is fast in regime {rg.name!r}: "
                f"{_fast_cause(fast[0], exp_[fast[0]], opt, show)}. Together with the previous-gradient state "
                f"{lagged[0][0].name} this is not supported (the elimination of fast states assumes increments "
                "driven by the current noise only)."
            )
        incr, eliminated = _eliminate(incr, fast, syms, opt, rg, exp_, show)
        for f in fast:
            notes.append(
                f"state {f} is fast in regime {rg.name!r} (O(1) change per step) and was eliminated: "
                + ", ".join(f"{s} denotes the slow variable {s} + ({a})*{f}" for s, a in eliminated[f].items())
                + " (equal to the original up to O(eta))"
            )
        states = [s for s in states if s not in fast]
        exp_ = {s: expand_eta(incr[s], N) for s in states}
        if order == 2:
            raise SdederiveError("order=2 is not supported together with fast-state elimination")

    # 5. means ---------------------------------------------------------------------------------
    if lag:  # the drift needs E[Delta] to order q; the covariance's products (to q + 1) one order more
        nm_ = int(sp.ceiling(q)) + 1
        lag.check_orders(raw_incr, lag_subs, states, syms, exp_, q)
        means = {s: lag.mean_prev(expect({p: c for p, c in exp_[s].items() if p <= nm_}, E, nm_)) for s in states}
    else:
        means = {s: expect(exp_[s], E, N) for s in states}
    drift: dict[str, sp.Expr] = {}
    for s in states:
        low = {p: c for p, c in means[s].items() if p < q}
        if low:
            p = min(low)
            raise RegimeMismatchError(
                f"the drift of {s} diverges in regime {rg.name!r} for {opt.name!r}: E[increment] has the term "
                f"({show(low[p])})*eta**{p}, of lower order than tau = {tau}. The optimizer has no limit in "
                f"this regime; try another ({', '.join(regime_mod.names())}) or scale the hyperparameter "
                "responsible (a custom Regime with subs=...)."
            )
        drift[s] = tidy(means[s].get(q, sp.S.Zero) / ctau)

    if order == 2:
        drift = _order2(drift, means, states, syms, tau, rg, tidy)
        notes.append("order-2 drift: b0 + eta*(E2 - (grad b0) b0 / 2); assumes sigma independent of x and a "
                     "diagonal Hessian (the correction is per coordinate, hess = d grad_i/dx_i, not the full H grad; "
                     "on a problem whose Hessian couples coordinates the SDE is only first order and the "
                     "simulators refuse it)")

    # 6. covariance ------------------------------------------------------------------------------
    pmin = None
    for extra in (0, 2, 4):
        # the lagged-noise products are large: start at the covariance's usual order eta**(q+1)
        n2 = (int(sp.ceiling(q)) + 1 if lag else N) + extra
        if extra:
            exp_ = {s: expand_eta(incr[s], n2) for s in states}
            means = {s: expect(exp_[s], E, n2) for s in states}
            if lag:
                means = {s: lag.mean_prev(m) for s, m in means.items()}
        if lag:  # A(z) = E_{z_prev} F(z, z_prev), B(z) = E_z F(z, z_prev) at z_prev = z (module _lag)
            low = min((min(e) for e in exp_.values() if e), default=0)
            cut = {s: {p: c for p, c in exp_[s].items() if p <= n2 - low} for s in states}  # what products keep
            A = {s: lag.mean_prev(cut[s]) for s in states}
            B = {s: lag.lag_slot(expect(cut[s], E, n2 - low)) for s in states}
        cov_exp, single = {}, {}
        for i, si in enumerate(states):
            for sj in states[i:]:
                prod = _mul_trunc(exp_[si], exp_[sj], n2)
                m2 = expect(prod, E, n2)
                mm = _mul_trunc(means[si], means[sj], n2)
                if lag:
                    m2 = lag.mean_prev(m2)
                d = {p: m2.get(p, 0) - mm.get(p, 0) for p in set(m2) | set(mm)}
                single[(si, sj)] = d = {p: c for p, c in d.items() if not is_zero(c)}
                if lag:  # the long-run covariance: Cov F_k + Cov(F_k, F_k+1) + Cov(F_k+1, F_k)
                    ab = expect(_mul_trunc(A[si], B[sj], n2), E, n2)
                    ba = expect(_mul_trunc(B[si], A[sj], n2), E, n2)
                    d = {p: d.get(p, 0) + ab.get(p, 0) + ba.get(p, 0) - 2 * mm.get(p, 0)
                         for p in set(d) | set(ab) | set(ba) | set(mm)}
                cov_exp[(si, sj)] = {p: c for p, c in d.items() if not is_zero(c)}
        orders = [min(d) for d in single.values() if d]
        if orders:
            if lag:
                p1 = min(orders)
                if p1 < q:
                    (si, sj), = [k for k, d in single.items() if d and min(d) == p1][:1]
                    raise RegimeMismatchError(
                        f"the single-step covariance of ({si}, {sj}) of {opt.name!r} is of order eta**{p1}, larger "
                        f"than tau = {tau} in regime {rg.name!r}: the chain jumps by more than the diffusion scale "
                        "every step (through the previous gradient), so it has no SDE limit in this regime."
                    )
                lr = [min(d) for d in cov_exp.values() if d]
                if not lr or min(lr) > p1:
                    lag.refuse_cancelled()
            pmin = min(min(d) for d in cov_exp.values() if d)
            break
    n = len(states)
    C = sp.zeros(n, n)
    if pmin is not None:
        if pmin < q:
            (si, sj), = [(k) for k, d in cov_exp.items() if d and min(d) == pmin][:1]
            raise RegimeMismatchError(
                f"the diffusion of ({si}, {sj}) diverges in regime {rg.name!r} for {opt.name!r}: Cov[increment] "
                f"is of order eta**{pmin}, larger than tau = {tau}. Try another regime "
                f"({', '.join(regime_mod.names())})."
            )
        for (si, sj), d in cov_exp.items():
            c = tidy(d.get(pmin, sp.S.Zero) * _eta ** (pmin - q) / ctau)
            i, j = states.index(si), states.index(sj)
            C[i, j] = C[j, i] = c

    _check_moves(means, cov_exp, drift, q, tau, rg, opt, show)

    # 7. modelled diffusion ----------------------------------------------------------------------
    dropped = [s for s in states if kinds.get(s) in rg.drop_noise and any(C[states.index(s), j] != 0 for j in range(n))]
    Cm = C.copy()
    for s in dropped:
        i = states.index(s)
        for j in range(n):
            Cm[i, j] = Cm[j, i] = sp.S.Zero
    if dropped:
        # the modelled covariance carries eta**(pmin - q), so the dropped diffusion is O(eta**((pmin - q)/2))
        size = {sp.Rational(1, 2): "O(sqrt(eta))", sp.S.One: "O(eta)"}.get(sp.Rational(pmin - q) / 2,
                                                                          f"O(eta**({sp.Rational(pmin - q) / 2}))")
        notes.append(
            f"the {size} diffusion of {', '.join(dropped)} is left out of the model as in the published "
            f"SDE (regime {rg.name!r}); the full local covariance is SDE.covariance"
            + (" (regime 'balanced-full' keeps it)" if rg.name == "balanced" else "")
        )
    D = _factor(Cm, tidy)

    linear = _linear_noise(exp_, states, Cm, atoms) and not lag
    if nm.Sigma is not None and not linear:
        raise ExpectationError(
            f"a full noise covariance Sigma needs an update linear in the noise at leading order; {opt.name!r} "
            f"in regime {rg.name!r} is not (its noise enters through sign/abs or g**2). Use per-coordinate "
            "(diagonal) noise."
        )
    if lag:
        notes.append(
            f"{', '.join(sorted(lag_names))} stores the previous step's gradient and is not an SDE state: the previous "
            "draw is an independent copy z_prev of the noise at the current point; the drift averages over it, "
            "and the covariance is the long-run covariance Cov(F_k) + Cov(F_k, F_k+1) + Cov(F_k+1, F_k) of the "
            "1-dependent increments (the gradient's change between steps enters beyond leading order)"
        )
    notes.extend(sorted(E.conditions))
    if getattr(nm, "gaussian_limit", False):
        notes.append(f"Student-t nu={nm.nu:g} >= {noise_mod.NU_GAUSSIAN:g}: its moments and CDF are replaced by "
                     "the Gaussian limits (errors O(1/nu), below 2e-7)")
    if bias:
        drift = {k: v.xreplace(bias) for k, v in drift.items()}
        D = D.xreplace(bias)
        C = C.xreplace(bias)
        notes.append("bias corrections 1 - beta**(k+1) -> " + ", ".join(sorted(str(v) for v in bias.values()))
                     + " (k = t/tau, eta -> 0)")

    _check_clean(opt, rg, drift, C, D, show, finite=getattr(nm, "nu", None) is not None)

    return SDE(
        optimizer=opt.name,
        noise=nm.label,
        regime=rg.name,
        states=tuple(states),
        drift=drift,
        diffusion_matrix=D,
        covariance=C,
        tau=tau,
        order=order,
        params=params,
        state_map=state_map,
        init={s: init.get(s, sp.S.Zero) for s in states if s != "x"},
        linear_noise=linear,
        eliminated={f: {s_: a for s_, a in m.items()} for f, m in eliminated.items()},
        notes=tuple(notes),
        noise_values=dict(nm.values),
        hypers=tuple((h.name, h.kind, h.default) for h in opt.hypers),
        source=opt,
        noise_model=nm,
    )


# -- helpers ------------------------------------------------------------------------------------


def _pretty(e: sp.Expr) -> str:
    return str(sp.factor_terms(e))


def _heavy(e: sp.Expr) -> bool:
    """Expressions that rational simplification would blow up: large powers of sums (a numeric
    Student-t `nu` puts `(1 + r**2/nu)**(-(nu + 1)/2)` into the density), large expressions with
    the Student-t CDF (Lion's Cholesky factor: seconds), or float constants."""
    return e.has(sp.Float) or (e.has(sp.hyper) and sp.count_ops(e) > 100) or any(
        p.base.is_Add and p.exp.is_Rational and abs(p.exp) > 4 for p in e.atoms(sp.Pow)
    )


def _tidy(e: sp.Expr, unit: dict, roots: frozenset = frozenset()) -> sp.Expr:
    """Canonical, readable form: the smallest of a few rewrites.

    Hyperparameters in [0, 1) are written `1 - w` with `w > 0` while simplifying, so that
    `sqrt((1 - mu)**2)` becomes `1 - mu`; radicands are factored (`sqrt((eps + sqrt(v))**2)`).
    `roots`: the nonnegative states of kind second moment or accumulator (by kind, whatever their
    name), written as squares so that their square roots are polynomial generators.
    """
    if e == 0:
        return sp.S.Zero
    e = sp.unpolarify(e)
    if _heavy(e):
        return sp.factor_terms(e)
    orig = e
    fwd = {h: 1 - w for h, w in unit.items()}
    back = {w: 1 - h for h, w in unit.items()}
    # nonnegative states as squares, so that sqrt(v) is a polynomial generator for factoring
    for s_ in e.free_symbols:
        if s_.is_nonnegative and s_ in roots:
            w_ = sp.Dummy(f"r_{s_}", positive=True)
            fwd[s_] = w_**2
            back[w_] = sp.sqrt(s_)
    e = e.xreplace(fwd)
    e = e.replace(lambda n: n.is_Pow and n.exp.is_Rational and not n.exp.is_Integer,
                  lambda n: sp.Pow(sp.factor(n.base), n.exp))
    base = sp.factor_terms(sp.cancel(sp.together(e)))
    cands = [base]
    if sp.count_ops(base) < 80 and not base.has(sp.hyper):  # simplify would hyperexpand: seconds per nu
        try:
            cands.append(sp.simplify(base))
        except Exception:  # noqa: BLE001 - simplify is a best effort
            pass
    xs = sym("x")
    if base.has(xs):
        try:
            cands.append(sp.apart(base, xs))
        except Exception:  # noqa: BLE001 - apart fails on non-rational dependence
            pass
    cands.append(sp.powsimp(base, combine="exp"))
    best = min(cands, key=lambda c: (sp.count_ops(c), len(str(c))))
    best = sp.unpolarify(best.xreplace(back))
    if sp.count_ops(orig) < sp.count_ops(best):
        best = orig
    return sp.factor_terms(best) if sp.count_ops(sp.factor_terms(best)) <= sp.count_ops(best) else best


def _limit_powers(e: sp.Expr, tau: sp.Expr, unit: dict, N: int, bias: dict) -> sp.Expr:
    """Replace the step counter: `k = t/tau`; powers `b**f(k)` by their eta -> 0 limit.

    A power whose limit is `exp(L0(t))` becomes `1 - G` with `G` a positive placeholder in
    `bias` (`G -> 1 - exp(L0)`, e.g. `1 - exp(-c1*t)`), substituted back at the end; the
    O(eta) corrections of the exponent only enter beyond leading order.
    """
    if not e.has(_k):
        return e
    repl = {}
    for p in e.atoms(sp.Pow):
        base, ex = p.args
        if not ex.has(_k):
            continue
        ex_t = ex.subs(_k, _t / tau)
        if not ex_t.has(_eta) and not base.has(_eta):
            repl[p] = base**ex_t  # a function of the time t (a schedule's factor**floor(t/T)): kept as it is
            continue
        if base.has(_eta):
            L = sp.series(ex_t * sp.log(base), _eta, 0, N + 1).removeO()
            co = expand_eta(sp.expand(L), N) if L.has(_eta) else {sp.S.Zero: L}
            if co and min(co) < 0:
                raise RegimeMismatchError(
                    f"{p} has no limit as eta -> 0 with k = t/tau (its logarithm is O(eta**{min(co)}))"
                )
            limit = sp.exp(co.get(sp.S.Zero, sp.S.Zero))
            G = next((G_ for G_, val in bias.items() if val == 1 - limit), None)
            if G is None:
                G = sp.Dummy(f"G{len(bias) + 1}", positive=True)
                bias[G] = 1 - limit
            repl[p] = 1 - G
        elif base in unit or (base.is_number and 0 <= base < 1):
            repl[p] = sp.S.Zero  # a fixed decay to the power t/tau -> 0: the bias correction is spent
        else:
            raise RegimeMismatchError(
                f"the step counter enters as {p}; its limit with k = t/tau is unknown (base {base} is neither "
                "scaled with eta nor a decay in [0, 1))"
            )
    out = e.xreplace(repl)
    return out.subs(_k, _t / tau)


def _check_moves(means: dict, cov_exp: dict, drift: dict, q, tau, rg, opt, show) -> None:
    """Refuse a regime whose clock is too fast for the parameter: `E[Delta x]` nonzero but of
    higher order than `tau` and `Cov[Delta x]/tau -> 0`, so that the limit would be the trivial
    `dX = 0` while the optimizer moves on a longer time scale."""
    if not is_zero(drift["x"]):
        return
    higher = sorted(p for p in means["x"] if p > q)
    var = cov_exp.get(("x", "x"), {})
    if higher and (not var or min(var) > q):
        p = higher[0]
        raise RegimeMismatchError(
            f"in regime {rg.name!r} (tau = {tau}) the parameter x of {opt.name!r} does not move: E[increment of x] "
            f"= ({show(means['x'][p])})*{_eta**p} + ... is of higher order than tau and its variance vanishes "
            f"faster than tau, so the limit would be dx = 0. The optimizer has no limit in this regime; its time "
            f"scale is tau = {_eta**p}."
        )


def _check_clean(opt, rg, drift: dict, C: sp.Matrix, D: sp.Matrix, show, finite: bool = False) -> None:
    """Last guard: a derived coefficient must be a function of the state, free of the noise `z`, of
    point masses and of the engine's placeholders; anything else is a derivation that went wrong.
    `finite`: also evaluate every coefficient at a generic point (a numeric Student-t `nu`), which
    must give a finite number."""
    entries = [(f"drift of {s}", e) for s, e in drift.items()]
    entries += [(f"covariance[{i},{j}]", C[i, j]) for i in range(C.shape[0]) for j in range(C.shape[1])]
    entries += [(f"diffusion[{i},{j}]", D[i, j]) for i in range(D.shape[0]) for j in range(D.shape[1])]
    for what, e in entries:
        bad = None
        if e.has(_z) or e.has(Z_PREV):
            bad = "the noise variable z"
        elif e.has(sp.DiracDelta):
            bad = "a DiracDelta"
        elif any(isinstance(f, sp.Dummy) for f in e.free_symbols):
            bad = "an internal placeholder"
        if not bad and finite and e != 0:
            point = {f: sp.Float(0.6180339887 if f.is_nonnegative else 0.3247179572, 30) for f in e.free_symbols}
            try:
                val = complex(sp.N(e.xreplace(point), 20))
            except (TypeError, ValueError, ZeroDivisionError):
                val = complex("nan")
            if not (math.isfinite(val.real) and math.isfinite(val.imag)):
                at = ", ".join(f"{k}={float(v):.4g}" for k, v in point.items())
                raise ExpectationError(
                    f"the derivation of {opt.name!r} in regime {rg.name!r} failed: the {what}, {show(e)}, is not "
                    f"finite at {at} ({val.real:g}) for this noise; the noise parameters are outside what the "
                    "closed forms can represent in floating point"
                )
        if bad:
            raise ExpectationError(
                f"the derivation of {opt.name!r} in regime {rg.name!r} failed: the {what} still contains {bad} "
                f"({show(e)}); the update has a function of the noise the expectation engine does not handle. Rewrite "
                "the update (e.g. without nested non-smooth functions of g)."
            )


def _fast_cause(f: str, exp_f: dict, opt, show) -> str:
    """Why state `f` is fast: the part of its increment that does not vanish as eta -> 0, and what
    would have to be scaled with eta for it to be slow (or that nothing can)."""
    p0 = min(exp_f)
    lead = exp_f[p0]
    names = {h.name for h in opt.hypers}
    hy = sorted(str(s_) for s_ in lead.free_symbols if str(s_) in names)
    part = f"its increment has the part {show(lead * _eta**p0)}"
    part += ", which does not vanish as eta -> 0"
    if not hy:
        return (part + "; it involves no hyperparameter, so no scaling of hyperparameters makes the state slow: "
                "only a rescaling of the state itself can (regimes 'accumulator' and 'noise-dominated' rescale "
                "u = eta**2*v for states of kind 'accumulator' or 'second_moment'); a state that stores the last "
                "gradient moves O(1) per step in every regime")
    kinds = {h.name: h.kind for h in opt.hypers}
    decays = [h_ for h_ in hy if kinds[h_] == "decay"]
    how = (f"regimes 'balanced' (1 - {decays[0]} = rho*eta) and 'noise-dominated' (c*eta**2) scale decays"
           if decays and len(decays) == len(hy) else
           f"a custom sd.Regime(name, tau, subs=(({hy[0]!r}, <expression in eta>),))")
    return (part + f"; it comes from {', '.join(hy)}, unscaled in this regime and entering every step: for {f} to be "
            f"slow, {'it' if len(hy) == 1 else 'they'} must scale with a power of eta ({how})")


def _eliminate(incr: dict, fast: list[str], syms: dict, opt, rg, exp_: dict, show) -> tuple[dict, dict]:
    """Adiabatic elimination of fast states entering affinely (see the module docstring)."""
    fsyms = [syms[f] for f in fast]
    slow = [s for s in incr if s not in fast]
    for s, e in incr.items():
        for f in fsyms:
            if not is_zero(sp.diff(e, f, 2)) or any(not is_zero(sp.diff(e, f, f2)) for f2 in fsyms if f2 != f):
                raise RegimeMismatchError(
                    f"state {f} of {opt.name!r} is fast in regime {rg.name!r}: "
                    f"{_fast_cause(str(f), exp_[str(f)], opt, show)}. It enters the update of {s} nonlinearly, "
                    "so it cannot be averaged out."
                )
    out, coeffs = {}, {f: {} for f in fast}
    for s in slow:
        a = [sp.Dummy(f"a_{f}") for f in fast]
        y = incr[s] + sum(ai * incr[f] for ai, f in zip(a, fast))
        eqs = [sp.diff(y, fs) for fs in fsyms]
        sol = sp.solve(eqs, a, dict=True)
        if not sol or any(v.has(_z) or v.has(*[at for at in y.free_symbols if isinstance(at, sp.Dummy) and at not in a])
                          for v in sol[0].values()):
            raise RegimeMismatchError(
                f"the fast state(s) {fast} of {opt.name!r} cannot be eliminated from {s} with deterministic "
                f"coefficients in regime {rg.name!r}: for {fast[0]}, {_fast_cause(fast[0], exp_[fast[0]], opt, show)}"
            )
        ysol = sp.simplify(y.subs(sol[0]))
        if any(ysol.has(fs) for fs in fsyms):
            ysol = ysol.subs({fs: 0 for fs in fsyms})
        out[s] = ysol
        for ai, f in zip(a, fast):
            coeffs[f][s] = sp.factor(sol[0][ai])
    return out, coeffs


def _mul_trunc(a: dict, b: dict, order) -> dict:
    out: dict = {}
    for p, x in a.items():
        for r, y in b.items():
            if p + r <= order:
                out[p + r] = out.get(p + r, 0) + x * y
    return out


def _order2_allowed(opt, rg) -> None:
    """Refuse `order=2` where the order-2 drift below would not be of order 2."""
    if rg.tau != _eta:
        raise SdederiveError(f"order=2 needs tau = eta; regime {rg.name!r} has tau = {rg.tau}")
    timed = [(s, e) for s, e in opt.update if e.has(_k)]
    if timed:
        s, e = timed[0]
        where = next((str(p) for p in sp.preorder_traversal(e) if isinstance(p, sp.Pow) and p.exp.has(_k)), None)
        raise SdederiveError(
            f"order=2 is not available for {opt.name!r}: the update of {s} depends on the step counter k"
            + (f" (through {where}, a bias correction)" if where else "")
            + ", so its coefficients depend on time t = k*tau; the order-2 drift b0 + eta*(E2 - (grad b0) b0/2) "
            "holds only for time-independent coefficients (the time-derivative terms of the modified equation "
            "are not derived), and would be only first order. Use order=1, or an optimizer without bias "
            "correction (e.g. rmsprop instead of adam)."
        )


def _order2(drift, means, states, syms, tau, rg, tidy):
    q = sp.S.One

    def d(expr, s):
        out = sp.diff(expr, syms[s])
        if s == "x":
            out += _hess * sp.diff(expr, _grad)
        return out

    new = {}
    for s in states:
        e2 = means[s].get(q + 1, sp.S.Zero)
        jb = sum(d(drift[s], r) * drift[r] for r in states)
        new[s] = tidy(drift[s] + _eta * (e2 - jb / 2))
    return new


def _factor(C: sp.Matrix, tidy) -> sp.Matrix:
    """A diffusion factor D with D D^T = C: one column when C has rank one (signs kept from the
    covariances), else a symbolic Cholesky factor over the noisy states."""
    n = C.shape[0]
    idx = [i for i in range(n) if C[i, i] != 0]
    if not idx:
        return sp.zeros(n, 0)
    r = idx[0]
    rank1 = all(is_zero(C[i, j] ** 2 - C[i, i] * C[j, j]) for i in idx for j in idx if i < j)
    if rank1:
        col = sp.zeros(n, 1)
        root = sp.sqrt(C[r, r])
        for i in idx:
            col[i, 0] = tidy(root if i == r else C[i, r] / root)
        return col
    # pivot on the simplest variance first (the state driven linearly by the noise)
    idx = sorted(idx, key=lambda i: sp.count_ops(C[i, i]))
    sub = C.extract(idx, idx)
    L = sub.cholesky(hermitian=False)
    D = sp.zeros(n, len(idx))
    for a, i in enumerate(idx):
        for b in range(len(idx)):
            D[i, b] = tidy(L[a, b])
    return D


def _linear_noise(exp_, states, Cm, atoms) -> bool:
    """True if every modelled-noisy state's leading random part is linear in z (no atoms)."""
    asyms = {a.symbol for a in atoms}
    for i, s in enumerate(states):
        if Cm[i, i] == 0:
            continue
        for p in sorted(exp_[s]):
            c = exp_[s][p]
            if c.has(_z) or any(c.has(a) for a in asyms):
                if any(c.has(a) for a in asyms) or sp.degree(sp.expand(c), _z) != 1:
                    return False
                break
    return True

r"""Learning-rate and hyperparameter schedules: $\eta_k = \eta\,s(k\tau)$.

A schedule is a sympy expression $s(t)$ of the continuous time `t` (`sdederive.sym("t")`), on
the time axis of the SDE ($t = k\tau$, $\tau$ the regime's time per step). `scheduled`
turns an optimizer into the one whose hyperparameter follows the schedule: in its update rule,
$\eta$ becomes $\eta\,s(k\tau)$ with the step counter `k`. Nothing else is special:

- the derivation expands the scheduled update as any other (the step counter becomes $k = t/\tau$),
  so the SDE has time-dependent coefficients, e.g. SGD with a schedule gives
  $dX = -s(t)\nabla f\,dt + \sqrt{\eta}\,s(t)\,\sigma\,dW$ (the derivation holds for a schedule
  that varies on the time scale of $t$, constant over one step to $O(\tau)$);
- the discrete optimizer and the SDE simulators are generated from the same expression, so both
  modes run the same schedule (the kernels know `k` and `t`).

Built-ins (all $s \ge 0$, $s = 1$ at the peak): `constant`, `linear_warmup`, `cosine`,
`warmup_cosine`, `step_decay`, `exponential_decay`. Any other sympy expression of `t` (with
functions the kernel printers know: `Min`, `Max`, `cos`, `exp`, `Piecewise` is not among them)
can be passed to `scheduled`.

A decay (kind `decay`, e.g. `beta1`) is scheduled through its complement,
$1 - \beta \to (1 - \beta)\,s(t)$; a learning rate, weight decay or other positive hyperparameter
is multiplied, $h \to h\,s(t)$.
"""

from __future__ import annotations

import sympy as sp

from sdederive.errors import HyperparameterError, SpecError, UnknownNameError
from sdederive.spec.kinds import HyperKind
from sdederive.symbols import sym

__all__ = ["constant", "linear_warmup", "cosine", "warmup_cosine", "step_decay", "exponential_decay", "scheduled"]

_t = sym("t")
_k = sym("k")


def _positive(name: str, v) -> sp.Expr:
    e = sp.sympify(v) if isinstance(v, int | float | sp.Expr) and not isinstance(v, bool) else None
    if e is None or not e.is_number or not e.is_finite or not (e > 0):
        raise HyperparameterError(f"schedule parameter {name}={v!r} is invalid; allowed: a finite number > 0")
    return sp.nsimplify(e, rational=True)


def constant() -> sp.Expr:
    """$s(t) = 1$."""
    return sp.S.One


def linear_warmup(t_warmup) -> sp.Expr:
    r"""$s(t) = \min(1, t/t_w)$: linear warm-up over the time $t_w$, then constant."""
    tw = _positive("t_warmup", t_warmup)
    return sp.Min(1, _t / tw)


def cosine(t_total, final: float = 0.0) -> sp.Expr:
    r"""$s(t) = f + (1 - f)\,\tfrac12(1 + \cos(\pi \min(t, T)/T))$: cosine decay from 1 to `final` at $T$."""
    T = _positive("t_total", t_total)
    if isinstance(final, bool) or not isinstance(final, int | float) or not 0 <= final <= 1:
        raise HyperparameterError(f"schedule parameter final={final!r} is invalid; allowed: a number in [0, 1]")
    f = sp.nsimplify(final)
    return f + (1 - f) * (1 + sp.cos(sp.pi * sp.Min(_t, T) / T)) / 2


def warmup_cosine(t_warmup, t_total, final: float = 0.0) -> sp.Expr:
    r"""Linear warm-up over $t_w$, then cosine decay to `final` at $T$ (the usual LLM schedule)."""
    tw, T = _positive("t_warmup", t_warmup), _positive("t_total", t_total)
    if not T > tw:
        raise HyperparameterError(f"warmup_cosine needs t_total > t_warmup; got {t_total!r} <= {t_warmup!r}")
    if isinstance(final, bool) or not isinstance(final, int | float) or not 0 <= final <= 1:
        raise HyperparameterError(f"schedule parameter final={final!r} is invalid; allowed: a number in [0, 1]")
    f = sp.nsimplify(final)
    u = sp.Max(0, sp.Min(_t, T) - tw) / (T - tw)
    return sp.Min(1, _t / tw) * (f + (1 - f) * (1 + sp.cos(sp.pi * u)) / 2)


def step_decay(every, factor: float = 0.1) -> sp.Expr:
    r"""$s(t) = \text{factor}^{\lfloor t/\text{every} \rfloor}$: multiply by `factor` every `every` time units."""
    e = _positive("every", every)
    if isinstance(factor, bool) or not isinstance(factor, int | float) or not 0 < factor <= 1:
        raise HyperparameterError(f"schedule parameter factor={factor!r} is invalid; allowed: a number in (0, 1]")
    return sp.nsimplify(factor) ** sp.floor(_t / e)


def exponential_decay(rate) -> sp.Expr:
    r"""$s(t) = e^{-\text{rate}\,t}$."""
    return sp.exp(-_positive("rate", rate) * _t)


def scheduled(optimizer, schedule: sp.Expr, hyper: str = "eta", regime=None, name: str | None = None):
    r"""`optimizer` with hyperparameter `hyper` following `schedule` (a sympy expression of `t`).

    In the update rule `hyper` becomes `hyper * s(k*tau)` (kinds `lr`, `wd`, `positive`, `real`,
    `eps`) or `1 - (1 - hyper) * s(k*tau)` (kind `decay`), with `tau` the time per step of `regime`
    (default: the optimizer's natural regime), so that step `k` sits at time $t = k\tau$ of the SDE
    derived in that regime. The result is an ordinary `Optimizer`: derive it, compile it in either
    mode, save it with `to_json`.
    """
    from sdederive import regimes as regime_mod
    from sdederive.spec.optimizers import Optimizer, get

    opt = get(optimizer) if isinstance(optimizer, str) else optimizer
    if not isinstance(opt, Optimizer):
        raise SpecError(f"scheduled() takes an Optimizer or a built-in name; got {type(optimizer).__name__}")
    if not isinstance(schedule, sp.Expr):
        raise SpecError(f"a schedule is a sympy expression of t (see sdederive.spec.schedules); got {schedule!r}")
    extra = schedule.free_symbols - {_t}
    if extra:
        raise SpecError(f"a schedule may depend on t only; {schedule} also has {sorted(map(str, extra))}")
    if hyper not in opt.hyper:
        raise UnknownNameError(f"hyperparameter of {opt.name}", hyper, opt.hyper)
    h = opt.hyper[hyper]
    rg = regime_mod.get(regime if regime is not None else opt.natural_regime)
    s_k = schedule.subs(_t, _k * rg.tau)
    hs = h.symbol
    new_h = 1 - (1 - hs) * s_k if h.kind == HyperKind.DECAY else hs * s_k
    if h.kind in (HyperKind.INTERP, HyperKind.MOMENTUM):
        raise SpecError(f"{hyper} is an {h.kind.value} weight (fixed in every regime); schedule the learning rate, "
                        "a decay or a weight decay instead")
    update = tuple((s, e.xreplace({hs: new_h})) for s, e in opt.update)
    label = name or f"{opt.name}_scheduled"
    return Optimizer(label, opt.hypers, opt.states, update, opt.natural_regime,
                     (opt.doc + "\n\n" if opt.doc else "") + f"{hyper} scheduled: s(t) = {schedule}", opt.transforms)

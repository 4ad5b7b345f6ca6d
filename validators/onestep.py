r"""One-step Monte Carlo check of a derived SDE.

The derivation engine claims, for the SDE states $X$ (`sde.states`) and one discrete step
taken from a fixed state,

$$
\mathbb E[\Delta X] = \tau\,b + \dots,\qquad \operatorname{Cov}[\Delta X] = \tau\,C + \dots,
$$

with `b = sde.drift` and `C = sde.covariance` (the full leading-order local covariance, before
the regime's modelling choice `drop_noise`).  `onestep_check` tests this claim: it maps
numeric SDE-level values (`rho1`, `sigma0`, `u`, `t` ...) and `eta` back to the discrete
hyperparameters and states (inverting `sde.params` and `sde.state_map`), runs
`Optimizer.numpy_step` vectorised over many draws of the gradient noise `g = grad + s*z`, maps
the new states back to SDE variables (`state_map`, and `slow + a*fast` for states listed in
`sde.eliminated`) and compares sample moments with the derived ones, entry by entry, in units of
their Monte Carlo standard error.

Variance reduction
    `antithetic=True` (default) draws `z` and `-z` in pairs (every noise model here is
    symmetric).  In the noise-dominated regime the mean of `Delta x` is `O(eta**2)` while its
    noise is `O(eta)`; the pairs cancel the odd-in-`z` part and make the mean sharp.  Standard
    errors are then computed from the pair averages (of the increments, and of the centred
    products for covariances), so they stay honest.

Truncation of the expansion
    The derived moments are leading order: the discrete moments differ from them by a relative
    `O(eta)` (`O(eta**2)`, or exponentially small, for some optimizers), and covariance entries
    that the leading order sets to zero are nonzero at higher order.  Variance reduction can make
    the Monte Carlo resolution finer than that truncation at *any* `eta` (for instance the
    antithetic standard error of Adam's mean step scales like the truncation itself), so a
    check at a single `eta` cannot be made bias-free by shrinking `eta`.  With
    `step_doubling=True` (the default at `order=1`) the same random numbers are also run at
    `2*eta` (same SDE-level values, same time `t`) and each compared quantity gets the allowance

    $$
    A = \kappa\,\big|\,S(2\eta)\,r - S(\eta)\,\big|,\qquad \kappa = 2,
    $$

    where `S` is the sample estimate and `r = D(eta)/D(2 eta)` the derived `eta`-scaling of
    the quantity (`tau(eta)/tau(2 eta)` for means and for covariance entries derived as zero,
    whose claimed scale is that of the leading order).  If the truncation error of the
    normalised quantity behaves like `B*eta**p` with `p >= 1` then `|S(2eta) r - S(eta)|`
    is `(2**p - 1) B eta**p >= B eta**p`, so `A` bounds it with a factor-2 margin; an engine
    error in a leading-order coefficient does not change with `eta` and is not covered.  In
    particular an entry derived as zero passes when it really is of higher order (it shrinks
    faster than the leading order between `2*eta` and `eta`) and fails when it is really of
    leading order.  For exact cases (SGD, SignSGD, Lion: the one-step moments are exactly
    `tau*b` and `tau*C`) `step_doubling=False` halves the cost.

Richardson extrapolation
    `richardson=True` runs `eta`, `2*eta` and `4*eta` on the same random numbers and compares
    `R(eta) = 2*S(eta) - r*S(2 eta)` (`r` as above) with the derived value: an O(eta) relative
    truncation cancels exactly, and what is left, `O(eta**p)` with `p >= 2`, is bounded by the
    allowance `|R(eta) - r*R(2 eta)| = (2**p - 1)*|R(eta) - derived| >= 3*|R(eta) - derived|`.  The
    standard errors are those of the per-sample combination (antithetic pairs as above).  This is
    much tighter than the step-doubling allowance where the truncation is O(eta).

Standard errors are estimated from the sample, so fluctuations that are rare events at the
point (a sign flip of probability well below `1/samples`) are not resolved: the sample shows no
variance and the check fails (with a note).  Choose points where the noise is not rare.

A quantity passes when `|sample - derived| <= A + z*SE`.  A floating-point floor is added to
`SE` in quadrature (SGD's antithetic mean has `SE = 0`; a sign step is constant up to
rounding): `1e-9` relative to `max(|derived|, |sample|)`, plus `f_i = 1e-9*rms_i +
1e-15*|state_i|` for means (`rms_i` the root mean square of the increment, `|state_i|` the
largest magnitude of the state, whose ulp bounds the rounding of `new - old`) and
`f_i*rms_j + f_j*rms_i` for covariances.

`order=2` (SGD-like optimizers, `tau = eta`): the derived mean is the weak Ito-Taylor
expansion of the order-2 SDE through `eta**2`,
`tau*b + tau**2/2*(sum_r b_r d_r b + 1/2 sum_rs C_rs d_r d_s b)`, truncated at `eta**2`, with
`d_x = d/dx + hess*d/dgrad` (a quadratic objective: `d hess/dx = 0`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import sympy as sp

from sdederive import noise as noise_mod
from sdederive.derivation.engine import derive
from sdederive.sde import SDE
from sdederive.spec import optimizers as opt_mod
from sdederive.symbols import sym

__all__ = ["onestep_check", "OneStepResult"]

_ETA = sym("eta")
_SAFETY = 2.0  # kappa of the step-doubling allowance
_FLOOR = 1e-9  # relative floating-point floor added to every standard error


# ------------------------------------------------------------------------------------------------
# result
# ------------------------------------------------------------------------------------------------


@dataclass
class OneStepResult:
    """Derived and sampled one-step moments of the SDE states, with standard errors.

    Arrays follow `states` (the SDE's, parameter first).  `*_allowance` is the truncation
    allowance (zero without step doubling).  `mean_z`/`cov_z` are the raw z-scores
    `(sample - derived)/SE`; `mean_excess`/`cov_excess` the judged ones
    `max(|sample - derived| - allowance, 0)/SE`.
    """

    optimizer: str
    noise: str
    regime: str
    order: int
    states: tuple[str, ...]
    eta: float
    tau: float
    samples: int
    antithetic: bool
    step_doubling: bool
    point: dict
    discrete: dict
    derived_mean: np.ndarray
    sample_mean: np.ndarray
    mean_se: np.ndarray
    mean_allowance: np.ndarray
    derived_cov: np.ndarray
    sample_cov: np.ndarray
    cov_se: np.ndarray
    cov_allowance: np.ndarray
    mean_floor: np.ndarray | None = None
    cov_floor: np.ndarray | None = None
    notes: tuple[str, ...] = ()
    sde: SDE | None = field(default=None, repr=False)

    # -- scores ----------------------------------------------------------------------------------
    def _se(self, se, derived, sample):
        floor = self.mean_floor if se.ndim == 1 else self.cov_floor
        floor = 0.0 if floor is None else floor
        return np.sqrt(se**2 + (_FLOOR * np.maximum(np.abs(derived), np.abs(sample))) ** 2 + floor**2)

    @staticmethod
    def _z(diff, se):
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(diff == 0, 0.0, diff / se)
        return np.where(np.isnan(z), np.inf, z)

    @property
    def mean_z(self) -> np.ndarray:
        se = self._se(self.mean_se, self.derived_mean, self.sample_mean)
        return self._z(self.sample_mean - self.derived_mean, se)

    @property
    def cov_z(self) -> np.ndarray:
        se = self._se(self.cov_se, self.derived_cov, self.sample_cov)
        return self._z(self.sample_cov - self.derived_cov, se)

    @property
    def mean_excess(self) -> np.ndarray:
        se = self._se(self.mean_se, self.derived_mean, self.sample_mean)
        return self._z(np.maximum(np.abs(self.sample_mean - self.derived_mean) - self.mean_allowance, 0.0), se)

    @property
    def cov_excess(self) -> np.ndarray:
        se = self._se(self.cov_se, self.derived_cov, self.sample_cov)
        return self._z(np.maximum(np.abs(self.sample_cov - self.derived_cov) - self.cov_allowance, 0.0), se)

    # -- verdict -------------------------------------------------------------------------------
    def _rows(self):
        n = len(self.states)
        me, ce, mz, cz = self.mean_excess, self.cov_excess, self.mean_z, self.cov_z
        for i, s in enumerate(self.states):
            yield (f"E[d{s}]", self.derived_mean[i], self.sample_mean[i], self.mean_se[i],
                   self.mean_allowance[i], mz[i], me[i])
        for i in range(n):
            for j in range(i, n):
                yield (f"Cov[d{self.states[i]},d{self.states[j]}]", self.derived_cov[i, j], self.sample_cov[i, j],
                       self.cov_se[i, j], self.cov_allowance[i, j], cz[i, j], ce[i, j])

    def failures(self, z: float = 5.0) -> list[str]:
        """The quantities whose judged z-score exceeds `z`, one line each."""
        return [f"{q}: derived {d:.6g}, sampled {s:.6g} +- {se:.3g} (allowance {a:.3g}), z = {zz:.3g}"
                for q, d, s, se, a, zz, ex in self._rows() if not ex <= z]

    def passed(self, z: float = 5.0) -> bool:
        """True when every mean and covariance entry agrees within `allowance + z*SE`."""
        return not self.failures(z)

    def __str__(self) -> str:
        head = (f"one-step check: {self.optimizer} | noise {self.noise} | regime {self.regime}"
                + (f" | order {self.order}" if self.order != 1 else "")
                + f" | eta = {self.eta:g}, tau = {self.tau:g} | {self.samples} samples"
                + (" (antithetic)" if self.antithetic else "") + (" | step doubling" if self.step_doubling else ""))
        lines = [head,
                 "  point:    " + ", ".join(f"{k}={v:.6g}" for k, v in self.point.items()),
                 "  discrete: " + ", ".join(f"{k}={v:.6g}" for k, v in self.discrete.items())]
        w = max(12, max(len(r[0]) for r in self._rows()))
        lines.append(f"  {'quantity':<{w}} {'derived':>13} {'sampled':>13} {'SE':>10} {'allowance':>10} "
                     f"{'z':>8} {'judged z':>8}")
        for q, d, s, se, a, zz, ex in self._rows():
            lines.append(f"  {q:<{w}} {d:>13.6g} {s:>13.6g} {se:>10.3g} {a:>10.3g} {zz:>8.3g} {ex:>8.3g}"
                         + ("" if ex <= 5.0 else "  <-- z > 5"))
        for n in self.notes:
            lines.append(f"  note: {n}")
        lines.append("  PASSED (z <= 5)" if self.passed() else "  FAILED (z > 5)")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def _free(sde: SDE) -> dict[str, sp.Symbol]:
    out: dict[str, sp.Symbol] = {}
    exprs = list(sde.drift.values()) + list(sde.covariance) + [sde.tau]
    for e in exprs:
        for s in sp.sympify(e).free_symbols:
            out[str(s)] = s
    return out


def _num(expr, values: Mapping[str, float]) -> float:
    """Numeric value of a sympy expression (erf, hyper, gamma ... through mpmath)."""
    expr = sp.sympify(expr)
    if expr.is_number:
        v = complex(sp.N(expr, 20))
    else:
        missing = sorted(str(s) for s in expr.free_symbols if str(s) not in values)
        if missing:
            raise ValueError(f"no value for {missing} in {expr}")
        e = expr.xreplace({s: sp.Float(values[str(s)], 20) for s in expr.free_symbols})
        v = complex(sp.N(e, 20))
    if abs(v.imag) > 1e-9 * max(1.0, abs(v.real)):
        raise ValueError(f"{expr} is not real at the point: {v}")
    return v.real


def _np_eval(expr, values: Mapping[str, object]):
    """Evaluate a sympy expression on numbers or numpy arrays given by name."""
    expr = sp.sympify(expr)
    syms = sorted(expr.free_symbols, key=str)
    f = sp.lambdify(syms, expr, modules="numpy")
    return f(*[values[str(s)] for s in syms])


def _resolve(sde: SDE, opt, known: dict[str, float]) -> dict[str, float]:
    """Extend `known` (SDE-level values and eta) through `sde.params` and `sde.state_map`:
    solve `name = expr` for the one unknown discrete symbol of `expr`, or evaluate `expr`
    for an unknown `name` (`sigma = sigma1/sqrt(B)`)."""
    known = dict(known)
    eqs = list(sde.params.items()) + list(sde.state_map.items())
    pending = [(n, sp.sympify(e)) for n, e in eqs]
    progress = True
    while pending and progress:
        progress = False
        for item in list(pending):
            name, expr = item
            unknown = [s for s in expr.free_symbols if str(s) not in known]
            if name in known and len(unknown) == 1:
                u = unknown[0]
                sub = expr.xreplace({s: sp.Float(known[str(s)], 30) for s in expr.free_symbols if s != u})
                sols = sp.solve(sp.Eq(sub, sp.Float(known[name], 30)), u)
                real = [complex(sp.N(s)) for s in sols]
                real = [c.real for c in real if abs(c.imag) < 1e-12 * max(1.0, abs(c.real))]
                if not real:
                    raise ValueError(f"cannot solve {name} = {expr} for {u} at {name} = {known[name]}")
                known[str(u)] = real[0]
            elif not unknown:
                val = _num(expr, known)
                if name in known:
                    if not math.isclose(val, known[name], rel_tol=1e-9, abs_tol=1e-300):
                        raise ValueError(f"inconsistent values: {name} = {known[name]} but {expr} = {val}")
                else:
                    known[name] = val
            else:
                continue
            pending.remove(item)
            progress = True
    return known


def _order2_mean(sde: SDE, drift: dict) -> dict:
    """Weak Ito-Taylor mean of the SDE through eta**2 (tau = eta)."""
    states = list(sde.states)
    syms = {s: sym(s) for s in states}
    free = _free(sde)
    for s in states:
        if s in free:
            syms[s] = free[s]
    grad, hess = free.get("grad", sym("grad")), sym("hess")

    def d(e, s):
        out = sp.diff(e, syms[s])
        if s == "x":
            out += hess * sp.diff(e, grad)
        return out

    C = sde.covariance
    tau = sde.tau
    out = {}
    for s in states:
        b = drift[s]
        Lb = sum(drift[r] * d(b, r) for r in states)
        Lb += sp.Rational(1, 2) * sum(C[i, j] * d(d(b, r), q) for i, r in enumerate(states)
                                      for j, q in enumerate(states))
        m = sp.expand(tau * b + tau**2 / 2 * Lb)
        out[s] = sp.series(m, _ETA, 0, 3).removeO()
    return out


def _prods(incr, two=None):
    """Per-sample centred products whose mean is the covariance claimed by the SDE: `c c^T` of the
    one-step increment, or, with a lagged-gradient state (`two` = `F_k + F_{k+1}` from the same
    frozen state), the long-run covariance `Cov(F_k + F_{k+1}) - Cov(F_k)`
    `= Cov F + Cov(F_k, F_{k+1}) + Cov(F_{k+1}, F_k)`."""
    c = incr - incr.mean(axis=0)
    p = c[:, :, None] * c[:, None, :]
    if two is not None:
        c2 = two - two.mean(axis=0)
        p = c2[:, :, None] * c2[:, None, :] - p
    return p


def _richardson(run1, run2, r_tau, r_cov, antithetic: bool, half: int):
    """Per-sample Richardson combination of the runs at `eta` and `2*eta` (`(incr, two)` each): mean,
    covariance and their standard errors (from antithetic pair averages when `antithetic`)."""
    incr1, incr2 = run1[0], run2[0]
    x = 2.0 * incr1 - r_tau * incr2
    p = 2.0 * _prods(*run1) - r_cov[None, :, :] * _prods(*run2)
    mean, cov = x.mean(axis=0), p.mean(axis=0)
    if antithetic:
        xm, pm = 0.5 * (x[:half] + x[half:]), 0.5 * (p[:half] + p[half:])
        return mean, cov, xm.std(axis=0, ddof=1) / math.sqrt(half), pm.std(axis=0, ddof=1) / math.sqrt(half)
    n = x.shape[0]
    return mean, cov, x.std(axis=0, ddof=1) / math.sqrt(n), p.std(axis=0, ddof=1) / math.sqrt(n)


def _apply_drift_override(drift: dict, override) -> dict:
    if override is None:
        return dict(drift)
    if callable(override) and not isinstance(override, Mapping):
        return dict(override(dict(drift)))
    out = dict(drift)
    for s, v in override.items():
        if s not in out:
            raise KeyError(f"drift_override: {s!r} is not a state; states: {list(out)}")
        out[s] = v(out[s]) if callable(v) else sp.sympify(v)
    return out


def _apply_cov_override(C: sp.Matrix, states, override) -> sp.Matrix:
    if override is None:
        return C
    if callable(override) and not isinstance(override, Mapping):
        return sp.Matrix(override(C.copy()))
    C = C.copy()
    for key, v in override.items():
        si, sj = key
        i, j = states.index(si), states.index(sj)
        new = v(C[i, j]) if callable(v) else sp.sympify(v)
        C[i, j] = C[j, i] = new
    return C


# ------------------------------------------------------------------------------------------------
# the check
# ------------------------------------------------------------------------------------------------


def onestep_check(
    optimizer,
    noise="gaussian",
    regime=None,
    *,
    point: dict,
    eta: float,
    samples: int = 200_000,
    seed: int = 0,
    order: int = 1,
    noise_params: dict | None = None,
    antithetic: bool = True,
    step_doubling: bool | None = None,
    richardson: bool = False,
    drift_override: Mapping | Callable | None = None,
    covariance_override: Mapping | Callable | None = None,
) -> OneStepResult:
    """Compare the derived one-step mean and covariance with a Monte Carlo estimate.

    Parameters
    ----------
    optimizer, noise, regime, order, noise_params
        as for `sdederive.derive`.
    point
        numeric values of the SDE-level symbols (`sde.symbols` except `eta`; `t` is rounded
        to a whole number of steps `k = t/tau`, a multiple of `tau(2 eta)/tau(eta)` with step
        doubling, at least one doubled step), plus optionally values of discrete states that are
        not SDE states (the fast momentum `m` of heavy ball; default 0) and of discrete
        hyperparameters that do not enter the SDE (default: the optimizer's), and `grad` where the
        SDE does not depend on it (default 0).  For Student-t noise without `noise_params["nu"]`,
        `nu` comes from `point`.
    eta
        the learning rate of the discrete steps.
    samples
        number of noise draws (an even number of antithetic pairs when `antithetic`).
    seed
        seed of `numpy.random.default_rng`.
    antithetic
        draw `z, -z` pairs (standard errors from pair averages).
    step_doubling
        also run at `2*eta` with the same random numbers and allow for the truncation
        of the leading-order expansion (see the module docstring).  Default: on for `order=1`,
        off for `order=2` (whose point is the `eta**2` term, which the allowance would absorb;
        asking for both is an error).
    richardson
        instead of the step-doubling allowance, compare the Richardson extrapolation
        `2*S(eta) - r*S(2 eta)` (same random numbers; `r` the derived eta-scaling as above) with
        the derived value, its standard error computed from the per-sample combination; the O(eta)
        truncation cancels and no allowance is granted (implies the run at `2*eta`).
    drift_override
        `{state: expr | callable(expr) -> expr}` or `callable(drift_dict) -> dict`,
        replacing the derived drift (to show that a wrong coefficient fails the check).
    covariance_override
        `{(state_i, state_j): expr | callable(expr) -> expr}` (set
        symmetrically) or `callable(Matrix) -> Matrix`, replacing the derived covariance per unit
        time.
    """
    noise_params = dict(noise_params or {})
    sde = derive(optimizer, noise, regime, order=order, **noise_params)
    opt = opt_mod.get(optimizer)
    nm = noise_mod.get(noise, **noise_params)
    states = list(sde.states)
    free = _free(sde)
    eta = float(eta)
    if not eta > 0:
        raise ValueError(f"eta must be > 0, got {eta}")
    if step_doubling is None:
        step_doubling = order == 1
    if richardson:
        if order == 2:
            raise ValueError("richardson=True extrapolates away the O(eta) term that order=2 checks; use order=1")
        step_doubling = True
    if step_doubling and order == 2:
        raise ValueError("order=2 checks the eta**2 term of the mean; the step-doubling allowance would absorb it. "
                         "Use step_doubling=False (and an eta at which the O(eta**3) remainder is below the SE).")

    # -- names a point may give ------------------------------------------------------------------
    hyper_names = [h.name for h in opt.hypers if h.name != "eta"]
    disc_states = list(opt.state_names)
    allowed = set(free) | set(hyper_names) | set(disc_states) | {"t", "k", "sigma", "sigma1", "B", "nu", "grad"}
    allowed |= set(sde.params) | set(sde.state_map)
    bad = sorted(set(point) - allowed)
    if bad:
        raise ValueError(f"point has unknown name(s) {bad}; SDE symbols: {sorted(set(free) - {'eta'})}")
    missing = sorted(n for n in free if n not in point and n not in ("eta", "t"))
    if "t" in free and "t" not in point:
        missing.append("t")
    if missing:
        raise ValueError(f"point lacks the SDE symbol(s) {missing} (of {opt.name} / {nm.label} / {sde.regime})")

    # -- step counter ----------------------------------------------------------------------------
    tau1 = _num(sde.tau, {"eta": eta})
    tau2 = _num(sde.tau, {"eta": 2 * eta})
    ratio = int(round(tau2 / tau1))
    notes: list[str] = []
    pt = {k: float(v) for k, v in point.items()}
    if "t" in free:
        t = pt["t"]
        if step_doubling:
            mult = ratio**2 if richardson else ratio  # k divisible by the runs at 2*eta (and 4*eta)
            k = mult * max(1, int(round(t / (tau1 * mult))))
        else:
            k = max(1, int(round(t / tau1)))
        t_used = k * tau1
        if not math.isclose(t_used, t, rel_tol=1e-12):
            notes.append(f"t = {t:g} rounded to k*tau = {k}*{tau1:g} = {t_used:g}")
        pt["t"] = t_used
    else:
        # no time dependence left in the SDE: bias corrections (if any) are spent, k -> infinity
        k = int(point.get("k", 10**9))
    pt.pop("k", None)

    # -- derived moments -----------------------------------------------------------------------------
    drift = _apply_drift_override(sde.drift, drift_override)
    C = _apply_cov_override(sde.covariance, states, covariance_override)
    if order == 2:
        mean_exprs = _order2_mean(sde, drift)
    else:
        mean_exprs = {s: sde.tau * drift[s] for s in states}

    def derived_at(e: float):
        vals = {**pt, "eta": e}
        mean = np.array([_num(mean_exprs[s], vals) for s in states])
        tau_e = _num(sde.tau, vals)
        n = len(states)
        cov = np.zeros((n, n))
        for i in range(n):
            for j in range(i, n):
                cov[i, j] = cov[j, i] = tau_e * _num(C[i, j], vals) if C[i, j] != 0 else 0.0
        return mean, cov

    dmean, dcov = derived_at(eta)

    # -- noise draws ---------------------------------------------------------------------------------
    rng = np.random.default_rng(seed)
    nu = None
    if nm.name == "student-t":
        nu = nm.nu if getattr(nm, "nu", None) is not None else pt.get("nu")
        if nu is None:
            raise ValueError("Student-t noise needs nu (in noise_params or point)")
    half = samples // 2 if antithetic else samples

    def draw():
        w = nm.sample(rng, half, nu=nu)
        return np.concatenate([w, -w]) if antithetic else w

    z = draw()
    n = z.size
    # states storing the previous gradient (Adan's gp): drawn from an independent previous noise draw,
    # and the covariance is the long-run one, from a second step off the same frozen state
    from sdederive.derivation._lag import find_lagged

    lagged = [d.name for d, _ in find_lagged(opt)]
    if lagged:
        z_prev, z_next = draw(), draw()
        notes.append(f"{', '.join(lagged)} holds the previous gradient: drawn from an independent previous noise "
                     "draw; covariance = Cov(F_k + F_k+1) - Cov(F_k) from two steps off the same state (long-run)")

    # -- discrete runs ---------------------------------------------------------------------------------
    step = opt.numpy_step()

    def run(e: float, k: int):
        known = _resolve(sde, opt, {**pt, "eta": e})
        hyp = {}
        for h in opt.hypers:
            if h.name == "eta":
                hyp["eta"] = e
            elif h.name in known:
                hyp[h.name] = known[h.name]
            elif h.name in free:
                raise ValueError(f"no value for hyperparameter {h.name}")
            elif h.default is not None:
                hyp[h.name] = h.default
            else:
                raise ValueError(f"no value for hyperparameter {h.name} (and no default)")
        scale = _num(nm.scale, known)
        # discrete states; eliminated slow variables: discrete slow = SDE slow - a*fast
        st = {}
        for s in disc_states:
            st[s] = known.get(s, 0.0)
        coef = {}
        for fast, m in sde.eliminated.items():
            for slow, a in m.items():
                coef[(fast, slow)] = _num(a, {**known, **hyp, "eta": e})
                st[slow] = known.get(slow, 0.0) - coef[(fast, slow)] * st[fast]
        grad0 = known.get("grad", 0.0)
        g = grad0 + scale * z  # grad may have dropped out of the SDE (default 0)
        if lagged:
            prev = step(st, grad0 + scale * z_prev, max(k - 1, 0), hyp)
            st = {**st, **{s: np.asarray(prev[s], dtype=float) for s in lagged}}
        new = step(st, g, k, hyp)
        new = {s: np.broadcast_to(np.asarray(v, dtype=float), (n,)) for s, v in new.items()}

        def sde_vals(d):
            out = []
            for s in states:
                if s in sde.state_map:
                    v = _np_eval(sde.state_map[s], {**d, **hyp, "eta": e})
                else:
                    v = d[s]
                for (fast, slow), a in coef.items():
                    if slow == s:
                        v = v + a * d[fast]
                out.append(v)
            return out

        old_v, new_v = sde_vals(st), sde_vals(new)
        incr = np.stack([np.broadcast_to(nv - ov, (n,)) for nv, ov in zip(new_v, old_v)], axis=1)
        two = None
        if lagged:  # F_k+1 from the same slow state, its previous gradient the g_k just drawn
            st2 = {**st, **{s: new[s] for s in lagged}}
            new2 = step(st2, grad0 + scale * z_next, k, hyp)
            new2 = {s: np.broadcast_to(np.asarray(v, dtype=float), (n,)) for s, v in new2.items()}
            f2 = np.stack([np.broadcast_to(nv - ov, (n,)) for nv, ov in zip(sde_vals(new2), sde_vals(st2))], axis=1)
            two = incr + f2
        mag = np.array([max(np.max(np.abs(nv)), np.max(np.abs(ov))) for nv, ov in zip(new_v, old_v)])
        discrete = {**{h: v for h, v in hyp.items()}, **{f"{s}_0": v for s, v in st.items() if s not in lagged}, "k": k,
                    "noise scale": scale}
        if nu is not None:
            discrete["nu"] = nu
        return (incr, two), discrete, mag

    def stats(run_):
        incr = run_[0]
        mean = incr.mean(axis=0)
        prods = _prods(*run_)
        cov = prods.mean(axis=0)
        if antithetic:
            pm = 0.5 * (incr[:half] + incr[half:])
            pp = 0.5 * (prods[:half] + prods[half:])
            return mean, cov, pm.std(axis=0, ddof=1) / math.sqrt(half), pp.std(axis=0, ddof=1) / math.sqrt(half)
        return mean, cov, incr.std(axis=0, ddof=1) / math.sqrt(n), prods.std(axis=0, ddof=1) / math.sqrt(n)

    run1, discrete, mag = run(eta, k)
    incr1 = run1[0]
    smean, scov, mse, cse = stats(run1)
    rms = np.sqrt(np.mean(incr1**2, axis=0))
    mfloor = _FLOOR * rms + 1e-15 * mag
    cfloor = mfloor[:, None] * rms[None, :] + rms[:, None] * mfloor[None, :]

    d = len(states)
    for i, s in enumerate(states):
        if dcov[i, i] != 0 and scov[i, i] <= cfloor[i, i]:
            notes.append(f"d{s} did not fluctuate in the sample although its derived variance is {dcov[i, i]:.3g}: "
                         "its noise is a rare event at this point (e.g. a sign flip with probability << 1/samples); "
                         "the sample cannot resolve it, choose a point where it is not rare")
    mallow, callow = np.zeros(d), np.zeros((d, d))
    if step_doubling:
        run2, _, _ = run(2 * eta, k // ratio if "t" in free else k)
        smean2, scov2, _, _ = stats(run2)

        def scalings(factor: float):
            """r_tau, r_cov: the derived eta-scaling of means and covariance entries, eta vs factor*eta."""
            _, dcov_f = derived_at(factor * eta)
            r_t = tau1 / _num(sde.tau, {"eta": factor * eta})
            nz = [(i, j) for i in range(d) for j in range(d) if dcov[i, j] != 0 and dcov_f[i, j] != 0]
            if nz:
                i0, j0 = max(nz, key=lambda ij: abs(dcov[ij]))
                r_lead = dcov[i0, j0] / dcov_f[i0, j0]
            else:
                r_lead = r_t
            return r_t, np.where((dcov != 0) & (dcov_f != 0), np.divide(dcov, np.where(dcov_f == 0, 1.0, dcov_f)),
                                 r_lead)

        r_tau, r_cov = scalings(2.0)
        if richardson:
            # R(eta) = 2*S(eta) - r*S(2 eta) removes an O(eta) relative truncation; what is left is
            # O(eta**p), p >= 2, bounded by |R(eta) - R(2 eta)| = (2**p - 1)*|R(eta) - derived|
            run4, _, _ = run(4 * eta, k // ratio**2 if "t" in free else k)
            smean4, scov4, _, _ = stats(run4)
            r_tau4, r_cov4 = scalings(4.0)
            smean, scov, mse, cse = _richardson(run1, run2, r_tau, r_cov, antithetic, half)
            mallow = np.abs(smean - (2 * r_tau * smean2 - r_tau4 * smean4))
            callow = np.abs(scov - (2 * r_cov * scov2 - r_cov4 * scov4))
            notes.append("Richardson extrapolation R = 2*S(eta) - r*S(2 eta) (O(eta) truncation removed); "
                         "allowance |R(eta) - R(2 eta)| for the O(eta**2) remainder")
        else:
            mallow = _SAFETY * np.abs(smean2 * r_tau - smean)
            callow = _SAFETY * np.abs(scov2 * r_cov - scov)
            notes.append(f"step doubling: allowance = {_SAFETY:g}*|S(2 eta)*r - S(eta)| (truncation of the "
                         "leading-order expansion)")

    return OneStepResult(
        optimizer=sde.optimizer, noise=sde.noise, regime=sde.regime, order=order, states=tuple(states),
        eta=eta, tau=tau1, samples=n, antithetic=antithetic, step_doubling=step_doubling,
        point=pt, discrete=discrete,
        derived_mean=dmean, sample_mean=smean, mean_se=mse, mean_allowance=mallow,
        derived_cov=dcov, sample_cov=scov, cov_se=cse, cov_allowance=callow,
        mean_floor=mfloor, cov_floor=cfloor,
        notes=tuple(notes), sde=sde,
    )

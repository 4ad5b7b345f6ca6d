r"""Does a regime hold on a problem?  `regime_check`.

A regime (`sdederive.regimes`) describes a limit `eta -> 0` in which some quantities are
held fixed: `rho = (1 - beta)/eta` (`balanced`), `c = (1 - beta)/eta**2`, `sigma0 = eta*sigma`
and `eps0 = eps*eta` (`noise-dominated`).  The SDE approximates the optimizer only when the run
is near that limit, so the check measures, on the problem at its initial point `x0`:

`snr`
    `|grad_i(x0)|/sigma_i(x0)` per coordinate (`sigma_i` the gradient-noise scale; for
    logistic regression the per-example gradient spread over `sqrt(B)`).  The noise-dominated
    regime takes `sigma = sigma0/eta` to infinity, so its second moment is `sigma**2` with
    `grad**2` neglected: the SDE's preconditioner is off by the factor `sqrt(1 + snr**2)`.
    **Criterion** (regimes with `scale_noise`, one `eta`): `max_i snr_i <= snr_max` (default
    0.3, a preconditioner error of at most 4.4 %).  With several step sizes the scaling below is the
    criterion (`snr` must shrink like `eta`); the values are reported.
`powers`
    with two or more step sizes: the log-log slope against `eta` of `1 - beta` for every decay
    hyperparameter, and of the median noise scale `sigma`.  A regime holds `(1 - beta)/eta**p`
    fixed (`p` its `decay_power`, 0 for fixed decays) and `sigma*eta` (`scale_noise`) or
    `sigma` fixed.  **Criterion**: every measured power is within `power_tol` (default 0.25) of
    the regime's.  A fixed data set has a fixed `sigma` (power 0), which the noise-dominated
    regime (power -1) does not fit: its weak error cannot shrink as `eta` does (SVAG, in
    `validators.compare`, amplifies the noise to restore the scaling).
`eps_ratio`
    `eps/sqrt(grad**2 + sigma**2)` (median), `eps` against `sqrt(v)`; reported only.

The result names the built-in regimes whose scalings fit the measurements (`fits`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from sdederive import regimes as _reg
from sdederive.errors import SdederiveError
from sdederive.problems import Problem

__all__ = ["RegimeCheck", "RegimeWarning", "regime_check", "grad_and_noise"]


class RegimeWarning(UserWarning):
    """The run is outside the region where the SDE's regime holds (see `regime_check`)."""


@dataclass
class RegimeCheck:
    """Result of `regime_check`.

    Attributes
    ----------
    regime
        the regime checked.
    holds
        every criterion held.
    etas
        the step sizes measured (decreasing).
    quantities
        `snr_median`, `snr_max` (per eta), `eps_ratio`, `powers` (name -> fitted power).
    criteria
        criterion text -> whether it held.
    fits
        built-in regimes whose scalings fit the measurements.
    """

    regime: str
    holds: bool
    etas: list
    quantities: dict = field(default_factory=dict)
    criteria: dict = field(default_factory=dict)
    fits: list = field(default_factory=list)

    @property
    def message(self) -> str:
        """One paragraph: the failed criteria and the regimes that fit."""
        if self.holds:
            return f"regime {self.regime!r} holds: " + "; ".join(self.criteria) if self.criteria else (
                f"regime {self.regime!r}: nothing to check")
        bad = [c for c, ok in self.criteria.items() if not ok]
        fit = (f"regime(s) that fit: {', '.join(self.fits)}" if self.fits else
               "no built-in regime fits these scalings")
        return f"regime {self.regime!r} does not hold on this problem: " + "; ".join(bad) + f". {fit}"

    def to_dict(self) -> dict:
        return {"regime": self.regime, "holds": self.holds, "etas": list(self.etas), "quantities": self.quantities,
                "criteria": dict(self.criteria), "fits": list(self.fits), "message": self.message}

    def warn(self, stacklevel: int = 2) -> None:
        """Issue a `RegimeWarning` with `message` when the regime does not hold."""
        if not self.holds:
            warnings.warn(self.message, RegimeWarning, stacklevel=stacklevel + 1)


def grad_and_noise(problem: Problem, x: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`(grad f(x), sigma(x))` per coordinate (default `x = x0`): the true gradient and the
    gradient-noise scale the SDE uses (logistic regression: per-example spread over `sqrt(B)`)."""
    x = problem.x0 if x is None else np.asarray(x, float)
    # the problem's own numpy reference (sdederive.problems: from the same description as its kernels)
    return np.asarray(problem.grad(x), float), np.asarray(problem.noise_scale(x), float)


def _power(etas: np.ndarray, q: np.ndarray) -> float:
    if np.all(q == q[0]):  # constant (also all zero): power 0
        return 0.0
    if np.any(q <= 0) or not np.all(np.isfinite(q)):
        return float("nan")
    return float(np.polyfit(np.log(etas), np.log(q), 1)[0])


def regime_check(regime, problem: Problem, etas, hyper=None, *, decays: Sequence[str] | None = None,
                 sigma_factor=None, snr_max: float = 0.3, power_tol: float = 0.25) -> RegimeCheck:
    """Measure on `problem` the quantities `regime` scales (see the module docstring).

    Parameters
    ----------
    regime
        a regime name or `Regime`, or an `SDE`
        (its regime).
    problem
        the problem, or a sequence of problems (one per eta).
    etas
        one step size or several.
    hyper
        the discrete hyperparameters (a mapping, or one mapping per eta).
    decays
        names of the decay hyperparameters (default: those of kind `decay` in an SDE's
        `hypers`; with a regime name and no `decays`, none: hyperparameters are known by their
        kind, not guessed from their names, and the result's `quantities["decays"]` says so).
    sigma_factor
        a noise amplification per eta (SVAG multiplies `sigma` by `l`), default 1.
    snr_max, power_tol
        the thresholds of the criteria.
    """
    from sdederive.sde import SDE
    from sdederive.sde_vector import VectorSDE

    vector = None  # a vector SDE: (its regime's name, {hyperparameter: the power of eta it must scale with})
    if isinstance(regime, VectorSDE):
        vector = (regime.regime, _vector_powers(regime))
        decays = []  # checked with the other hyperparameters (_vector_result)
        # 'rho-eta' and 'high-dim' have sgd's time scale and fixed decays; their own scalings are in vector[1]
        regime = regime.regime if regime.regime in _reg.REGIMES else "sgd"
    elif isinstance(regime, SDE):
        if decays is None:
            decays = [n for n, kind, _ in regime.hypers if kind == "decay"]
        regime = regime.regime
    rg = _reg.get(regime)
    etas_a = np.atleast_1d(np.asarray(etas, float))
    if etas_a.size == 0 or not np.all(np.isfinite(etas_a)) or np.any(etas_a <= 0):
        raise SdederiveError(f"etas={etas!r} is invalid; allowed: step sizes > 0")
    n = etas_a.size
    probs = list(problem) if isinstance(problem, Sequence) else [problem] * n
    hyps = list(hyper) if isinstance(hyper, Sequence) else [dict(hyper or {})] * n
    facs = np.ones(n) if sigma_factor is None else np.broadcast_to(np.asarray(sigma_factor, float), (n,))
    if len(probs) != n or len(hyps) != n:
        raise SdederiveError(f"regime_check: {len(probs)} problems and {len(hyps)} hyper dicts for {n} etas")
    unchecked = decays is None  # a regime name without an SDE: no kinds to tell which hyperparameters decay
    decays = [] if decays is None else list(decays)
    snr_med, snr_mx, sig_med, eps_ratio = [], [], [], []
    for p, h, f in zip(probs, hyps, facs):
        g, s = grad_and_noise(p)
        s = s * f
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(s > 0, np.abs(g) / np.where(s > 0, s, 1.0), np.where(np.abs(g) > 0, np.inf, 0.0))
        snr_med.append(float(np.median(r)))
        snr_mx.append(float(np.max(r)))
        sig_med.append(float(np.median(s)))
        if "eps" in h:
            eps_ratio.append(float(np.median(h["eps"] / np.sqrt(g**2 + s**2 + 1e-300))))
    q = {"snr_median": snr_med, "snr_max": snr_mx, "sigma_median": sig_med,
         "decays": "not checked: pass the SDE, or decays=[...]" if unchecked else list(decays)}
    if eps_ratio:
        q["eps_ratio"] = eps_ratio
    crit: dict = {}
    i_min = int(np.argmin(etas_a))
    if rg.scale_noise and n == 1:  # with several etas the scaling (powers) is the criterion
        crit[f"max_i |grad_i|/sigma_i at x0 must be <= {snr_max:g} (the noise-dominated second moment neglects "
             f"grad**2 against sigma**2): measured {snr_mx[i_min]:.3g} at eta={etas_a[i_min]:g}"] = bool(
            snr_mx[i_min] <= snr_max)
    powers: dict = {}
    if n >= 2:
        for b in decays:
            vals = [h.get(b) for h in hyps]
            if all(v is not None for v in vals):
                powers[f"1-{b}"] = _power(etas_a, 1.0 - np.asarray(vals, float))
        powers["sigma"] = _power(etas_a, np.asarray(sig_med))
        q["powers"] = powers
        want_decay = float(rg.decay_power or 0)
        for name, pw in powers.items():
            want = (-1.0 if rg.scale_noise else 0.0) if name == "sigma" else want_decay
            held = (f"eta*{name}" if want == -1 else name if want == 0 else f"({name})/eta**{want:g}")
            crit[f"{held} fixed across etas: {name} ~ eta**{pw:.2f}, regime {rg.name!r} needs eta**{want:g} "
                 f"(+-{power_tol:g})"] = bool(math.isfinite(pw) and abs(pw - want) <= power_tol)
    if vector is not None:
        return _vector_result(vector, rg, etas_a, hyps, q, crit, powers, power_tol)
    fits = []
    for cand in _reg.REGIMES.values():
        ok = True
        if cand.scale_noise and n == 1 and snr_mx[i_min] > snr_max:
            ok = False
        if n >= 2:
            for name, pw in powers.items():
                want = (-1.0 if cand.scale_noise else 0.0) if name == "sigma" else float(cand.decay_power or 0)
                if not (math.isfinite(pw) and abs(pw - want) <= power_tol):
                    ok = False
        elif rg.scale_noise != cand.scale_noise and snr_mx[i_min] <= snr_max:
            ok = False
        if ok and (cand.decay_power is None) != (rg.decay_power is None) and n < 2:
            ok = False
        if ok:
            fits.append(cand.name)
    return RegimeCheck(rg.name, all(crit.values()), etas_a.tolist(), q, crit, fits)



def _vector_powers(sde) -> dict:
    """The power of `eta` each hyperparameter of a vector SDE scales with in its regime (`eta` itself left out):
    `1 - beta` like `eta` in 'balanced' (a decay), `rho` like `eta` in 'rho-eta', everything else fixed."""
    out = {}
    for name, kind, _ in sde.hypers:
        if kind == "lr":
            continue
        if kind == "decay":
            out[f"1-{name}"] = 1.0 if sde.regime == "balanced" else 0.0
        elif name == "rho" and sde.regime == "rho-eta":
            out[name] = 1.0
        else:
            out[name] = 0.0
    return out


#: the vector engine's regimes and the scalings each holds (`decay`: the power of 1 - beta; `rho`: of rho)
_VECTOR_FITS = {"sgd": (0.0, 0.0), "balanced": (1.0, 0.0), "rho-eta": (0.0, 1.0)}


def _vector_result(vector, rg, etas_a, hyps, q, crit, powers, power_tol) -> RegimeCheck:
    """The check of a vector SDE: with two or more step sizes, every hyperparameter's measured power of `eta`
    (`1 - beta` for a decay) against its regime's (`_vector_powers`); the regimes of the vector engine that fit."""
    name, want = vector
    if etas_a.size >= 2:
        for h, pw_want in want.items():
            key = h[2:] if h.startswith("1-") else h
            vals = [hp.get(key) for hp in hyps]
            if any(v is None for v in vals):
                continue
            arr = 1.0 - np.asarray(vals, float) if h.startswith("1-") else np.asarray(vals, float)
            pw = _power(etas_a, arr)
            powers[h] = pw
            held = h if pw_want == 0 else f"({h})/eta" if pw_want == 1 else f"({h})/eta**{pw_want:g}"
            ok = bool(math.isfinite(pw) and abs(pw - pw_want) <= power_tol)
            how = ""
            if not ok:  # how to hold it (validators.compare takes hyper as a function of eta)
                how = (f" (hold it with hyper=lambda eta: {{'{key}': 1 - r*eta}}, r = (1 - {key})/eta)"
                       if h.startswith("1-") and pw_want == 1 else
                       f" (hold it with hyper=lambda eta: {{'{key}': r*eta}})" if pw_want == 1 else
                       f" (give {key} one value for every eta)")
            crit[f"{held} fixed across etas: {h} ~ eta**{pw:.2f}, regime {name!r} needs eta**{pw_want:g} "
                 f"(+-{power_tol:g}){how}"] = ok
        q["powers"] = powers
    fits = []
    if etas_a.size >= 2:
        for cand, (p_decay, p_rho) in _VECTOR_FITS.items():
            # a regime that scales a hyperparameter the SDE does not have is not offered
            ok = not ((cand == "balanced" and not any(h.startswith("1-") for h in want))
                      or (cand == "rho-eta" and "rho" not in want))
            for h, pw in powers.items():
                target = p_decay if h.startswith("1-") else p_rho if h == "rho" else 0.0
                if h != "sigma" and not (math.isfinite(pw) and abs(pw - target) <= power_tol):
                    ok = False
            if ok:
                fits.append(cand)
    else:
        fits = [name]
    return RegimeCheck(name, all(crit.values()), etas_a.tolist(), q, crit, fits)

"""Randomized differential test of the derivation engine (issue 13, "right or refused").

hypothesis draws a composition of transforms (trace, ema, scale_by_rms / adam / rss / sign / lion,
decoupled weight decay, per-coordinate clipping; at most three, then the learning rate), a regime,
a noise model (Gaussian or Student-t with nu = 6), and a random point (states, gradient, noise
level, scaled hyperparameters).  The derivation must either raise an ``SdederiveError`` (a
refusal; any other exception fails the test) or return an SDE whose drift and local covariance
agree with the one-step Monte Carlo of the discrete update (``validators.onestep_check`` with
``richardson=True``: the same random numbers at ``eta``, ``2*eta`` and ``4*eta``; the O(eta)
truncation is extrapolated away and the O(eta**2) rest bounded; 5 standard errors).

The hyperparameters are symbolic in the derivation, so one derivation serves every point drawn
for the same (composition, regime, noise): sdederive's cache makes the slow run affordable.

Ranges keep the Monte Carlo able to resolve what it checks: the mean sign argument over its noise
scale stays below about 2 (a sign flip must not be a rare event, see ``test_montecarlo.py``), so
``|grad| <= 1 <= 2*sigma``, Lion's ``m`` is placed like ``test_montecarlo.lion_m`` and its
interpolation weight is at most 0.9.

``SDEDERIVE_DIFF_EXAMPLES`` sets the number of cases of the slow run (default 50; 120 ran clean on 2026-12-02).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sdederive.validators import onestep_check

import sdederive as sd
from sdederive.spec import transforms as T

TIME_LIMIT_S = 120  # per derivation (the slowest compositions take ~20 s on a loaded 2-core machine)
SAMPLES = 100_000  # 5e4 antithetic pairs; three runs (eta, 2 eta, 4 eta) per case
ETA = {"sgd": 1e-2, "balanced": 1e-4, "balanced-full": 1e-4, "noise-dominated": 1e-3, "accumulator": 1e-3}

#: the transforms a composition draws from (state and hyperparameter names chosen so that any two
#: can be combined, except Adam with Lion: both own m and beta1)
POOL = {
    "clip": lambda: T.clip(1.0),
    "trace": lambda: T.trace(0.9, state="mt"),
    "ema": lambda: T.ema(0.9, name="beta3", state="me"),
    "rms": lambda: T.scale_by_rms(0.99, 1e-8, state="vr"),
    "adam": lambda: T.scale_by_adam(0.9, 0.999, 1e-8),
    "rss": lambda: T.scale_by_rss(1e-8, state="va"),
    "sign": lambda: T.scale_by_sign(),
    "lion": lambda: T.scale_by_lion(0.9, 0.99),
    "wd": lambda: T.add_decayed_weights(0.01),
}

COMPOSITIONS = st.lists(st.sampled_from(sorted(POOL)), min_size=0, max_size=3, unique=True).filter(
    lambda c: not ({"adam", "lion"} <= set(c)))
REGIMES = st.sampled_from(list(ETA))
NOISES = st.sampled_from(["gaussian", "gaussian", "student-t"])

_OUTCOMES: Counter = Counter()


def build(comp: list[str]) -> sd.Optimizer:
    trs = [POOL[k]() for k in comp] + [T.scale_by_learning_rate(1e-3)]
    return sd.chain(*trs, name="diff_" + "_".join(comp or ["sgd"]))


def _range(name: str) -> tuple[float, float]:
    """Values drawn for an SDE-level or discrete symbol of the given name."""
    if name == "grad":
        return -1.0, 1.0
    if name in ("sigma", "sigma0"):
        return 0.5, 2.0
    if name == "clip":
        return 0.3, 2.0
    if name in ("eps", "eps0"):
        return 0.05, 1.0
    if name == "wd":
        return 0.0, 0.5
    if name == "mu":
        return 0.0, 0.9
    if name == "t":
        return 0.2, 2.0
    if name.startswith("rho") or name == "c" or (name.startswith("c") and name[1:2] in ("", "_") + tuple("0123456789")):
        return 0.5, 3.0
    if name.startswith("beta"):  # an unscaled decay (regime sgd), or Lion's interpolation weight
        return 0.1, 0.9
    if name in ("x", "m", "mt", "me"):
        return -1.0, 1.0
    if name in ("v", "u", "vr", "va") or name.startswith("u_"):
        return 0.2, 3.0
    raise AssertionError(f"no range for the symbol {name!r}: extend _range")


def point_for(sde: sd.SDE, comp: list[str], rng: np.random.Generator) -> dict:
    names = set(sde.symbols) - {"eta", "nu"} | set(sde.states)
    names |= {"grad", "sigma0" if "sigma0" in sde.params else "sigma"}  # the discrete gradient, even if the SDE lost it
    names = sorted(names)
    pt = {n: float(rng.uniform(*_range(n))) for n in names}
    if "lion" in comp and "m" in pt and "sigma" in pt:
        # the sign argument beta1*m + (1 - beta1)*g is ratio*(1 - beta1)*sigma on average, |ratio| <= 2
        b1, ratio = pt["beta1"], float(rng.uniform(-2.0, 2.0))
        pt["m"] = (1 - b1) * (ratio * pt["sigma"] - pt["grad"]) / b1
    return pt


@contextlib.contextmanager
def _time_limit(seconds: int, what: str):
    """A derivation that does not finish is neither right nor refused: fail it (SIGALRM, main thread)."""
    if not hasattr(signal, "SIGALRM") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise AssertionError(f"the derivation of {what} did not finish within {seconds} s")

    old = signal.signal(signal.SIGALRM, handler)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def run_case(comp, regime, noise, seed) -> str:
    """'refused' or 'derived' (and then the one-step check passed); anything else raises."""
    opt = build(comp)
    params = {"nu": 6.0} if noise == "student-t" else {}
    try:
        with _time_limit(TIME_LIMIT_S, f"{comp}, regime {regime}, noise {noise}"):
            sde = sd.derive(opt, noise, regime, **params)
    except sd.SdederiveError:
        _OUTCOMES["refused"] += 1
        return "refused"
    rng = np.random.default_rng(seed)
    pt = point_for(sde, comp, rng)
    r = onestep_check(opt, noise, regime, point=pt, eta=ETA[regime], samples=SAMPLES, seed=seed,
                      noise_params=params, richardson=True)
    assert r.passed(), f"\ncomposition {comp}, regime {regime}, noise {noise}\n{r}"
    _OUTCOMES["derived"] += 1
    return "derived"


def _settings(n: int):
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    phases=(Phase.explicit, Phase.generate), suppress_health_check=list(HealthCheck))


@_settings(15)
@given(comp=COMPOSITIONS, regime=REGIMES, noise=NOISES, seed=st.integers(0, 2**31 - 1))
def test_differential_quick(comp, regime, noise, seed):
    run_case(comp, regime, noise, seed)


@pytest.mark.slow
@_settings(int(os.environ.get("SDEDERIVE_DIFF_EXAMPLES", "50")))
@given(comp=COMPOSITIONS, regime=REGIMES, noise=NOISES, seed=st.integers(0, 2**31 - 1))
def test_differential_slow(comp, regime, noise, seed):
    run_case(comp, regime, noise, seed)


def test_outcomes_of_the_drawn_cases():
    """Runs after the drawn cases (file order): they must not all be refusals."""
    total = _OUTCOMES["derived"] + _OUTCOMES["refused"]
    if total >= 10:
        assert _OUTCOMES["derived"] >= 0.2 * total, f"only {_OUTCOMES['derived']} of {total} drawn cases derived"


def test_refusals_are_not_everything():
    """Over the natural compositions (each optimizer's own regime) most derive; a refusal-only engine fails."""
    derived = 0
    cases = [(["adam"], "noise-dominated"), (["rms", "wd"], "balanced"), (["ema", "sign"], "balanced"),
             (["clip"], "sgd"), (["lion", "wd"], "balanced"), (["rss"], "accumulator"), (["trace"], "sgd"),
             (["clip", "ema"], "balanced")]
    for i, (comp, regime) in enumerate(cases):
        derived += run_case(comp, regime, "gaussian", i) == "derived"
    assert derived == len(cases)

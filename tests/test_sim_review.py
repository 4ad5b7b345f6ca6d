"""Review of the simulators' inputs: `init`, `hyper`, the `regime` of `compile` and the time per step `tau`
of an SDE read from JSON.  Each case below gave a raw traceback from numpy or sympy, a misleading
divergence, or an option silently ignored; now it is a `SdederiveError` naming the value."""

from __future__ import annotations

import io
import json
import warnings
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest

import sdederive as sd
from sdederive.errors import DivergenceError, HyperparameterError, SdederiveError
from sdederive.problems import Quadratic


@pytest.fixture(scope="module")
def adam_sim():
    return sd.compile("adam", Quadratic(h=[1.0, 2.0], sigma=[1.0, 1.0], x0=[1.0, 1.0]))


@pytest.mark.parametrize("init, match", [
    ({"v": float("nan")}, "init of state 'v' = nan is not finite"),
    ({"v": [1.0, float("inf")]}, "init of state 'v' = .* is not finite"),
    ({"v": "abc"}, "init of state 'v' = abc is not allowed"),
    ({"v": None}, "init of state 'v' = None is not allowed"),
    ({"v": [1.0, 2.0, 3.0]}, r"has shape \(3,\); allowed: a number or a vector of length d = 2"),
    ({"v": [[1.0, 2.0]]}, r"has shape \(1, 2\)"),
    ([("v", 1.0)], r"init=.* \(list\) is not allowed; allowed: a dict"),
])
def test_run_init_values_are_checked(adam_sim, init, match):
    # before: a NaN start was reported as a divergence at step 1 ("Lower eta"), the rest as numpy's ValueError
    with pytest.raises(SdederiveError, match=match) as e:
        adam_sim.run(paths=4, steps=3, init=init)
    assert not isinstance(e.value, DivergenceError)


@pytest.mark.parametrize("make", ["adam", "adagrad", "rmsprop-sde", "adamw_clip-sde", "lamb"])
def test_negative_start_of_a_second_moment_is_refused(make):
    """A second moment or accumulator started below 0 is bad input, named as such (before: every path "diverged"
    at step 1, with the advice to lower eta); 0 and positive starts still run."""
    p = Quadratic(h=[1.0, 2.0], sigma=[1.0, 1.0], x0=[1.0, 1.0])
    name, _, mode = make.partition("-")
    sim = sd.compile(sd.derive(name) if mode else name, p)
    warnings.simplefilter("ignore")  # the regime check of a short run on this small problem (pytest restores filters)
    with pytest.raises(SdederiveError, match=r"init of state 'v' of '%s' has -0.5 \(coordinate 1\); state 'v' has "
                                             r"kind '(second_moment|accumulator)'.*allowed: numbers >= 0" % name) as e:
        sim.run(paths=4, steps=3, init={"v": [0.1, -0.5]})
    assert not isinstance(e.value, DivergenceError)
    assert np.isfinite(sim.run(paths=4, steps=3, init={"v": [0.0, 0.5]}).mean["loss"][-1])


def test_run_hyper_must_be_a_dict(adam_sim):
    with pytest.raises(HyperparameterError, match=r"hyper=.* \(list\) is not allowed; allowed: a dict"):
        adam_sim.run(paths=4, steps=3, hyper=[0.9, 0.999])


def test_run_init_still_sets_the_start():
    # heavy ball m1 = mu*m0 + g0 with m0 = 1, g0 = x0 = 1 (f = x**2/2, no noise), x1 = x0 - eta*m1
    p = Quadratic(h=[1.0], sigma=[0.0], x0=[1.0])
    res = sd.compile("sgd_momentum", p).run(paths=2, steps=1, eta=0.1, hyper={"mu": 0.9}, init={"m": 1.0})
    assert res.mean["x"][-1][0] == pytest.approx(1.0 - 0.1 * (0.9 * 1.0 + 1.0), rel=1e-12)


def test_cli_init_nan_names_the_state(tmp_path):
    from sdederive.cli.main import main

    f = tmp_path / "q.json"
    f.write_text('{"kind": "quadratic", "h": [1, 2], "sigma": [1, 1], "x0": [1, 1]}')
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        rc = main(["simulate", "adam", "--mode", "discrete", "--problem", str(f), "--paths", "4", "--steps", "3",
                   "--init", "v=nan"])
    assert rc == 2 and "init of state 'v' = nan is not finite" in err.getvalue() and "diverged" not in err.getvalue()


def test_compile_regime_with_an_sde_is_refused():
    # the regime sets the time axis of a discrete run only; with an SDE it was dropped without a word
    p = Quadratic(h=[1.0], sigma=[1.0], x0=[1.0])
    with pytest.raises(SdederiveError, match="regime='noise-dominated' applies to discrete mode only"):
        sd.compile(sd.derive("sgd"), p, regime="noise-dominated")
    sd.compile(sd.derive("sgd"), p, regime="sgd")  # the SDE's own regime: consistent, accepted


def test_compile_regime_with_a_vector_sde_is_refused():
    p = Quadratic(H=[[2.0, 0.5], [0.5, 1.0]], sigma=[1.0, 1.0], x0=[1.0, 1.0])
    with pytest.raises(SdederiveError, match="regime='high-dim' applies to discrete mode only"):
        sd.compile(sd.derive("usam"), p, regime="high-dim")


def _sde_with_tau(tau: str, name: str = "sgd"):
    d = json.loads(sd.derive(name).to_json())
    d["tau"] = tau
    return type(sd.derive(name)).from_json(json.dumps(d))


@pytest.mark.parametrize("tau", ["0", "-eta", "x", "grad*eta"])
def test_sde_json_tau_is_checked_before_simulating(tau):
    # before: tau = 0 gave t = 0 at every step, -eta negative times, a symbol sympy's TypeError at run
    p = Quadratic(h=[1.0, 2.0], sigma=[1.0, 1.0], x0=[1.0, 1.0])
    sde = _sde_with_tau(tau)
    with pytest.raises(SdederiveError, match="cannot be simulated: .*tau="):
        sd.compile(sde, p).run(paths=4, steps=3, eta=0.1)


@pytest.mark.parametrize("tau", ["0", "rho", "-eta"])
def test_vector_sde_json_tau_is_checked_before_simulating(tau):
    p = Quadratic(H=[[2.0, 0.5], [0.5, 1.0]], sigma=[1.0, 1.0], x0=[1.0, 1.0])
    sde = _sde_with_tau(tau, "usam")
    with pytest.raises(SdederiveError, match="cannot be simulated: .*tau="):
        sd.compile(sde, p).run(paths=4, steps=3, hyper={"eta": 0.1, "rho": 0.05})


def test_sde_json_tau_of_another_form_still_runs():
    # tau = 2*eta: step k sits at t = 2*eta*k
    p = Quadratic(h=[1.0], sigma=[1.0], x0=[1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = sd.compile(_sde_with_tau("2*eta"), p).run(paths=4, steps=5, eta=0.1)
    np.testing.assert_allclose(res.t, 2 * 0.1 * np.arange(6), rtol=1e-12)

"""Compiled simulators: torch.optim equality, closed forms, weak order, seeds, divergence, cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from numba import njit

import sdederive as sd
from sdederive.problems import Custom, LogisticRegression, Quadratic
from sdederive.simulate.rng import philox as rng


@njit
def _z(d, step, path, k0, k1):
    nb = (d + 3) // 4
    out = np.empty(4 * nb)
    for j in range(nb):
        a, b, c, e = rng.normal_pair(step, j, path, 0, k0, k1)
        out[4 * j], out[4 * j + 1], out[4 * j + 2], out[4 * j + 3] = a, b, c, e
    return out[:d]


H = np.array([0.5, 1.0, 3.0])
SIG = np.array([0.3, 1.0, 2.0])
X0 = np.array([1.0, -2.0, 0.5])


def _torch_traj(name, hyper, steps, seed):
    torch = pytest.importorskip("torch")
    x = torch.tensor(X0.copy(), dtype=torch.float64, requires_grad=True)
    eta = hyper["eta"]
    ctor = {
        "sgd": lambda: torch.optim.SGD([x], lr=eta),
        "rmsprop": lambda: torch.optim.RMSprop([x], lr=eta, alpha=hyper["beta"], eps=hyper["eps"]),
        "adam": lambda: torch.optim.Adam([x], lr=eta, betas=(hyper["beta1"], hyper["beta2"]), eps=hyper["eps"]),
        "adamw": lambda: torch.optim.AdamW([x], lr=eta, betas=(hyper["beta1"], hyper["beta2"]), eps=hyper["eps"],
                                           weight_decay=hyper["wd"]),
        "adagrad": lambda: torch.optim.Adagrad([x], lr=eta, eps=hyper["eps"]),
    }[name]()
    out = [X0.copy()]
    for k in range(steps):
        z = _z(3, k, 0, seed & 0xFFFFFFFF, seed >> 32)
        g = H * x.detach().numpy() + SIG * z
        x.grad = torch.tensor(g, dtype=torch.float64)
        ctor.step()
        out.append(x.detach().numpy().copy())
    return np.array(out)


@pytest.mark.parametrize("name,hyper", [
    ("sgd", {"eta": 0.05}),
    ("rmsprop", {"eta": 0.01, "beta": 0.99, "eps": 1e-8}),
    ("adam", {"eta": 0.01, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}),
    ("adamw", {"eta": 0.01, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "wd": 0.1}),
    ("adagrad", {"eta": 0.1, "eps": 1e-10}),
])
def test_discrete_matches_torch_optim(name, hyper):
    """One path, same Gaussians: the generated update rule equals torch.optim step by step."""
    steps, seed = 60, 2**33 + 5
    ref = _torch_traj(name, hyper, steps, seed)
    prob = Quadratic(h=H, sigma=SIG, x0=X0)
    sim = sd.compile(sd.optimizers.get(name), prob)
    res = sim.run(paths=1, steps=steps, hyper=hyper, seed=seed, save_every=1)
    np.testing.assert_allclose(res.mean["x"], ref, rtol=1e-12, atol=1e-13)
    # and a perturbed hyperparameter does not match (the comparison can fail)
    bumped = dict(hyper, eta=hyper["eta"] * 1.01)
    res2 = sim.run(paths=1, steps=steps, hyper=bumped, seed=seed, save_every=1)
    assert not np.allclose(res2.mean["x"], ref, rtol=1e-6)


def test_sgd_sde_matches_ornstein_uhlenbeck():
    """SGD's SDE on f = h x^2/2 is OU: E x_t = x0 e^{-ht}, Var = eta sigma^2 (1 - e^{-2ht})/(2h)."""
    h, sig, eta = np.array([0.5, 2.0]), np.array([1.0, 3.0]), 0.01
    prob = Quadratic(h=h, sigma=sig, x0=[1.0, -1.0])
    res = sd.compile(sd.derive("sgd"), prob).run(paths=20_000, steps=300, eta=eta, seed=1, save_every=100)
    t = res.t[:, None]
    mean = prob.x0 * np.exp(-h * t)
    var = eta * sig**2 * (1 - np.exp(-2 * h * t)) / (2 * h)
    # Euler with dt = eta has O(dt) bias; allow it plus 5 standard errors
    assert np.all(np.abs(res.mean["x"] - mean) <= 5 * res.se["x"] + 0.02 * np.abs(mean) + 1e-12)
    assert np.all(np.abs(res.var["x"][1:] - var[1:]) / var[1:] < 0.05)
    # the discrete SGD shares the Gaussians: its paths stay close to the SDE's
    disc = sd.compile("sgd", prob).run(paths=20_000, steps=300, eta=eta, seed=1, save_every=100)
    assert np.all(np.abs(disc.mean["x"] - res.mean["x"]) < 0.01)


def test_weak_order_two_scheme_beats_euler():
    """OU with a coarse step: E[x_T^2] has O(dt) error under Euler and O(dt^2) under weak2."""
    h, sig, eta = 1.0, 1.0, 0.25  # SGD SDE: dx = -h x dt + sqrt(eta) sigma dW, dt = eta
    prob = Quadratic(h=[h], sigma=[sig], x0=[2.0])
    sde = sd.derive("sgd")
    T = 8
    exact = 4.0 * np.exp(-2 * h * T * eta) + eta * sig**2 / (2 * h) * (1 - np.exp(-2 * h * T * eta))
    errs = {}
    for scheme in ("euler", "weak2"):
        r = sd.compile(sde, prob, scheme=scheme).run(paths=200_000, steps=T, eta=eta, seed=3, save_every=T)
        m2 = r.mean["sqnorm"][-1]
        se = np.sqrt(r.var["sqnorm"][-1] / r.paths)
        errs[scheme] = (abs(m2 - exact), se)
    assert errs["euler"][0] > 10 * errs["euler"][1]  # Euler's bias is resolved
    assert errs["weak2"][0] < errs["euler"][0] / 5
    assert errs["weak2"][0] < 5 * errs["weak2"][1] + 2e-3


def test_signsgd_student_t_sde_tracks_discrete():
    prob = Quadratic(h=[1.0, 10.0], sigma=[1.0, 1.0], noise="student-t", nu=3, x0=[1.0, 1.0])
    sde = sd.derive("signsgd", noise=sd.StudentT(nu=3))
    a = sd.compile(sde, prob).run(paths=4000, steps=400, eta=0.01, seed=0, save_every=100)
    b = sd.compile("signsgd", prob).run(paths=4000, steps=400, eta=0.01, seed=0, save_every=100)
    assert np.all(np.abs(a.mean["loss"] - b.mean["loss"]) < 5 * np.hypot(a.se["loss"], b.se["loss"]) + 2e-3)


def test_rmsprop_sde_initial_value_and_v_units():
    """v = 0 is singular for the RMSprop SDE: it starts at t = tau from E[v_1] and reports v (not u)."""
    prob = Quadratic(h=[1.0, 4.0], sigma=[1.0, 0.5], x0=[1.0, 1.0])
    sim = sd.compile(sd.derive("rmsprop"), prob)
    hv = sim.resolve_hyper(eta=0.01)
    k0, st = sim.initial_state(hv)
    assert k0 == 1
    Ev1 = (1 - 0.99) * ((prob.h * prob.x0) ** 2 + prob.sigma**2)
    np.testing.assert_allclose(st["u"], 0.01**2 * Ev1, rtol=1e-6)
    res = sim.run(paths=2000, steps=3000, eta=0.01, seed=0, save_every=1000)
    # stationary v of the SDE is sigma^2 in the discrete units
    np.testing.assert_allclose(res.mean["v"][-1], prob.sigma**2, rtol=0.05)
    k1, st1 = sim.initial_state(hv, init={"v": 2.0})
    np.testing.assert_allclose(st1["u"], 0.01**2 * 2.0)


def test_adam_noise_dominated_sde_is_the_small_eta_limit():
    """At fixed c1, c2, sigma0 (noise-dominated scaling) the discrete Adam approaches the SDE as eta -> 0,
    and the SDE itself barely moves with eta."""
    c1, c2, s0 = 10.0, 0.1, 0.1
    gaps, sde_vals = [], []
    for eta in (0.02, 0.01, 0.005):
        prob = Quadratic(h=[1.0, 2.0], sigma=[s0 / eta] * 2, x0=[5.0, 5.0])
        hyper = {"beta1": 1 - c1 * eta**2, "beta2": 1 - c2 * eta**2}
        steps = int(round(0.05 / eta**2))
        a = sd.compile(sd.derive("adam"), prob).run(paths=1000, steps=steps, eta=eta, hyper=hyper, seed=2,
                                                    save_every=steps)
        b = sd.compile("adam", prob).run(paths=1000, steps=steps, eta=eta, hyper=hyper, seed=2, save_every=steps)
        gaps.append(abs(a.mean["loss"][-1] - b.mean["loss"][-1]))
        sde_vals.append(a.mean["loss"][-1])
    assert gaps[1] < gaps[0] / 2 and gaps[2] < gaps[1] / 2
    assert abs(sde_vals[2] - sde_vals[1]) < 0.05 * sde_vals[2]


def test_same_seed_same_numbers_any_thread_count():
    prob = Quadratic(h=[1.0, 2.0, 3.0], sigma=[1.0, 1.0, 1.0], x0=[1.0, 1.0, 1.0])
    sim = sd.compile(sd.derive("rmspropw"), prob)
    kw = dict(paths=301, steps=200, eta=0.01, seed=7, save_every=50)
    r1 = sim.run(threads=1, **kw)
    r2 = sim.run(threads=2, **kw)
    r3 = sim.run(threads=2, chunk_seconds=1e-6, **kw)  # tiny chunks: chunking does not change results
    for k in r1.mean:
        np.testing.assert_array_equal(r1.mean[k], r2.mean[k])
        np.testing.assert_array_equal(r1.var[k], r3.var[k])
    r4 = sim.run(threads=2, **dict(kw, seed=8))
    assert not np.array_equal(r1.mean["x"], r4.mean["x"])


def test_divergence_names_path_and_step():
    prob = Quadratic(h=[10.0], sigma=[1.0], x0=[1.0])
    sim = sd.compile("sgd", prob)
    with pytest.raises(sd.DivergenceError, match=r"path 0 became non-finite at step \d+") as ei:
        sim.run(paths=10, steps=2000, eta=0.5, seed=0)
    assert ei.value.n_diverged == 10 and ei.value.step > 100
    assert ei.value.result is not None
    res = sim.run(paths=10, steps=2000, eta=0.5, seed=0, mask_diverged=True, save_every=1)
    assert res.diverged == 10 and res.count[-1] == 0 and res.count[0] == 10


def test_keyboard_interrupt_returns_partial_result(monkeypatch):
    prob = Quadratic(h=[1.0], sigma=[1.0], x0=[1.0])
    sim = sd.compile("sgd", prob)
    calls = {"n": 0}
    orig = sim.backend_impl.run_chunk

    def launch(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return orig(*a, **k)

    monkeypatch.setattr(sim.backend_impl, "run_chunk", launch)
    res = sim.run(paths=4, steps=1000, eta=0.01, seed=0, chunk_seconds=1e-9, save_every=1)
    assert res.interrupted and 1 < len(res.t) < 1001 and np.all(res.count == 4)


def test_dense_quadratic_with_correlated_noise():
    """SGD on a dense H with correlated Sigma: stationary covariance solves H C + C H = eta Sigma."""
    from scipy.linalg import solve_continuous_lyapunov

    Hm = np.array([[2.0, 0.8], [0.8, 1.0]])
    S = np.array([[1.0, 0.6], [0.6, 0.5]])
    eta = 0.01
    prob = Quadratic(H=Hm, Sigma=S, x0=[0.0, 0.0])
    res = sd.compile(sd.derive("sgd"), prob).run(paths=40_000, steps=1500, eta=eta, seed=4, save_every=1500)
    C = solve_continuous_lyapunov(-Hm, -eta * S)
    exact_loss = 0.5 * np.trace(Hm @ C)
    assert abs(res.mean["loss"][-1] - exact_loss) < 5 * res.se["loss"][-1] + 0.03 * exact_loss
    disc = sd.compile("sgd", prob).run(paths=40_000, steps=1500, eta=eta, seed=4, save_every=1500)
    assert abs(disc.mean["loss"][-1] - exact_loss) < 5 * disc.se["loss"][-1] + 0.03 * exact_loss


def test_logistic_regression_minibatch_vs_sde():
    prob = LogisticRegression.synthetic(n=200, d=4, B=4, seed=1)
    eta = 0.05
    a = sd.compile(sd.derive("sgd"), prob).run(paths=2000, steps=400, eta=eta, seed=0, save_every=100)
    b = sd.compile("sgd", prob).run(paths=2000, steps=400, eta=eta, seed=0, save_every=100)
    assert a.mean["loss"][-1] < a.mean["loss"][0]
    np.testing.assert_allclose(a.mean["loss"], b.mean["loss"], rtol=0.02)
    # the variance of x comes from the per-example covariance: same order in both
    np.testing.assert_allclose(a.var["x"][-1], b.var["x"][-1], rtol=0.3)


def test_custom_objective():
    import sympy as sp

    x0, x1 = sp.symbols("x_0 x_1")
    prob = Custom(x0**4 / 4 + x1**2 / 2 + x0 * x1 / 4, sigma=[0.5, 0.5], x0=[1.5, -1.0])
    a = sd.compile(sd.derive("sgd"), prob).run(paths=4000, steps=500, eta=0.01, seed=0, save_every=100)
    b = sd.compile("sgd", prob).run(paths=4000, steps=500, eta=0.01, seed=0, save_every=100)
    np.testing.assert_allclose(a.mean["loss"], b.mean["loss"], rtol=0.02, atol=1e-3)
    assert a.mean["loss"][-1] < 0.2 * a.mean["loss"][0]


def test_float32_state():
    prob = Quadratic(h=[1.0, 2.0], sigma=[1.0, 1.0], x0=[1.0, 1.0])
    r64 = sd.compile(sd.derive("sgd"), prob).run(paths=1000, steps=100, eta=0.01, seed=0, save_every=100)
    r32 = sd.compile(sd.derive("sgd"), prob, dtype="float32").run(paths=1000, steps=100, eta=0.01, seed=0,
                                                                   save_every=100)
    assert not np.array_equal(r32.mean["x"], r64.mean["x"])
    np.testing.assert_allclose(r32.mean["x"], r64.mean["x"], rtol=1e-5)


def test_bad_input():
    prob = Quadratic(h=[1.0], sigma=[1.0], x0=[1.0])
    sim = sd.compile("adam", prob)
    with pytest.raises(sd.UnknownNameError, match="beta3"):
        sim.run(paths=2, steps=2, hyper={"beta3": 0.5})
    with pytest.raises(sd.HyperparameterError, match="beta1"):
        sim.run(paths=2, steps=2, hyper={"beta1": 1.5})
    with pytest.raises(sd.SdederiveError, match="paths=0"):
        sim.run(paths=0, steps=2)
    with pytest.raises(sd.UnknownNameError, match="backend"):
        sd.compile("adam", prob, backend="opencl")
    with pytest.raises(sd.SdederiveError, match="weak2"):
        sd.compile(sd.derive("rmsprop", regime="balanced-full"), prob, scheme="weak2")  # two noise sources
    with pytest.raises(sd.SdederiveError, match="student-t"):
        sd.compile(sd.derive("signsgd"), Quadratic(h=[1.0], sigma=[1.0], noise="student-t", nu=3, x0=[1.0]))
    with pytest.raises(sd.problems.ProblemError, match="Sigma"):
        Quadratic(h=[1.0, 1.0], Sigma=[[1.0, 2.0], [2.0, 1.0]], x0=[0, 0])


def test_cli_simulate_json(tmp_path):
    import contextlib
    import io

    from sdederive.cli.main import main

    f = tmp_path / "quad.json"
    f.write_text(json.dumps({"kind": "quadratic", "h": [1, 10], "sigma": [1, 1], "noise": "gaussian",
                             "x0": [1, 1]}))
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["simulate", "adam", "--mode", "discrete", "--problem", str(f), "--paths", "100", "--steps", "50",
                   "--eta", "0.01", "--hp", "beta1=0.9", "--seed", "0", "--save-every", "10", "--json", "--timing"])
    assert rc == 0
    d = json.loads(buf.getvalue())
    assert set(d) >= {"t", "mean", "se", "paths", "timing"} and d["paths"] == 100
    assert len(d["t"]) == 6 and len(d["mean"]["loss"]) == 6 and "run_s" in d["timing"]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["simulate", "adam", "--hp", "beta1=2"]) == 2
    assert "beta1" in err.getvalue()


def test_kernel_cache_reused_by_second_process(tmp_path):
    """A second process loads the compiled kernel from numba's on-disk cache (no recompilation)."""
    code = textwrap.dedent("""
        import sdederive as sd
        from sdederive.problems import Quadratic
        sim = sd.compile(sd.derive("sgd"), Quadratic(h=[1.0, 2.0], sigma=[1.0, 1.0], x0=[1.0, 1.0]))
        r = sim.run(paths=10, steps=10, eta=0.1, seed=0)
        print(dict(sim.module.kernel.stats.cache_hits).__len__(), sim.compile_s, float(r.mean["loss"][-1]))
    """)
    env = dict(os.environ, SDEDERIVE_CACHE=str(tmp_path))
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]  # two concurrent cold processes: the atomic write keeps both working
    outs = [p.communicate()[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    out3 = subprocess.run([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True, check=True)
    hits, _, loss = out3.stdout.split()
    assert int(hits) >= 1
    assert loss == outs[0][2] == outs[1][2]
    assert len(list((tmp_path / "kernels").glob("sdegen_*.py"))) == 1


def test_first_run_in_a_fresh_process_compiles_nothing(tmp_path):
    """With the kernel cached, the first ``run`` of a new process compiles no numba function: the host-side
    snapshots (the start, the SDE's expected first step mapped through ``obs``, ``keep_final``) go through the
    module's cached ``host_loss``/``host_obs``, not through ``prob_loss``/``obs`` called from Python (each of
    which numba compiled for Python's argument types, about 0.3 s at every start)."""
    code = textwrap.dedent("""
        import warnings
        warnings.simplefilter("ignore")
        import numpy as np
        import sdederive as sd
        from sdederive.problems import Quadratic
        sim = sd.compile(sd.derive("rmsprop"), Quadratic(h=[1.0, 2.0], sigma=[1.0, 1.0], x0=[1.0, 1.0]))
        r = sim.run(paths=8, steps=4, eta=0.1, seed=0, save_every=1, keep_final=True)
        m = sim.module
        print(len(m.prob_loss.signatures) + len(m.obs.signatures), len(m.host_obs.stats.cache_hits),
              repr(float(r.mean["loss"][1])), repr(float(r.final["loss"].sum())))
    """)
    env = dict(os.environ, SDEDERIVE_CACHE=str(tmp_path))
    first = subprocess.run([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True, check=True)
    second = subprocess.run([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True, check=True)
    compiled, hits, snap1, final = second.stdout.split()
    assert int(compiled) == 0
    assert int(hits) >= 1
    assert [snap1, final] == first.stdout.split()[2:]  # the cold and the cached functions agree


def test_editing_the_random_number_code_renames_every_kernel(monkeypatch):
    """numba's cache of a kernel only tracks the kernel's own file, so code the kernel takes from
    rng.py / kernel_support.py must be part of its content hash: a changed generator or snapshot
    routine gives a new module (never a cached kernel with the old code linked in)."""
    import hashlib

    from sdederive.problems import Quadratic
    from sdederive.simulate.backends import kernel_support, numba_backend
    from sdederive.simulate.rng import philox as rng
    from sdederive.simulate.spec import sde_spec

    assert kernel_support.SOURCE_HASH == hashlib.sha256(open(kernel_support.__file__, "rb").read()).hexdigest()
    width_file = Path(rng.__file__).parent / "vector_width.py"  # how the filler is compiled is part of the hash
    assert rng.SOURCE_HASH == hashlib.sha256(Path(rng.__file__).read_bytes() + width_file.read_bytes()).hexdigest()
    prob = Quadratic(h=[1.0, 2.0], sigma=[1.0, 1.0], x0=[1.0, 1.0])
    spec = sde_spec(sd.derive("sgd"), prob, correlated=False)
    base = numba_backend.generate(spec, prob)
    for mod in (rng, kernel_support):
        with monkeypatch.context() as m:
            m.setattr(mod, "SOURCE_HASH", "0" * 64)
            assert numba_backend.generate(spec, prob) != base
    assert numba_backend.generate(spec, prob) == base


@pytest.mark.parametrize("opt", ["sgd", "rmsprop", "signsgd", "adam"])
def test_discrete_and_sde_paths_of_one_seed_are_positively_coupled(opt):
    """The SDE's noise columns are oriented like the discrete update's response to z, so that the
    two runs of one seed move together (their difference is then far less noisy than either)."""
    from sdederive.problems import Quadratic

    prob = Quadratic(h=[1.0], sigma=[1.0], x0=[0.05])
    disc = sd.compile(sd.optimizers.get(opt), prob)
    sde = sd.compile(sd.derive(opt), prob)
    key = "x" if opt != "adam" else "m"
    a, b = [], []
    for seed in range(12):
        a.append(disc.run(paths=1, steps=2, eta=0.01, seed=seed, save_every=2).mean[key][-1][0])
        b.append(sde.run(paths=1, steps=2, eta=0.01, seed=seed, save_every=2).mean[key][-1][0])
    a, b = np.array(a) - np.mean(a), np.array(b) - np.mean(b)
    assert a @ b / np.sqrt((a @ a) * (b @ b)) > 0.5


def _progress_run(capsys, monkeypatch, tqdm_present: bool) -> str:
    if not tqdm_present:
        monkeypatch.setitem(sys.modules, "tqdm", None)  # any import of tqdm now raises ImportError
        monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    sim = sd.compile(sd.derive("rmsprop"), Quadratic(h=[1.0, 2.0], sigma=[1.0, 1.0], x0=[1.0, 1.0]))
    capsys.readouterr()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = sim.run(paths=20, steps=300, eta=0.1, seed=0, save_every=100, progress=True)
    assert r.steps_done == 300
    return capsys.readouterr().err.replace("\r", "\n")


@pytest.mark.parametrize("tqdm_present", [True, False])
def test_progress_bar_covers_the_whole_run(capsys, monkeypatch, tqdm_present):
    """``progress=True`` shows the start-up stages (the SDE's start values: its expected first step) before the
    steps and the statistics after them, through tqdm when it is installed and a text bar when it is not (the
    old hand-written bar appeared only once the kernel had run its first chunk)."""
    err = _progress_run(capsys, monkeypatch, tqdm_present)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    import re

    done = [int(m.group(1)) if (m := re.search(r"(\d+)/300", ln)) else -1 for ln in lines]
    first_steps = next(i for i, n in enumerate(done) if n > 0)  # the first line after a kernel chunk
    start = [i for i, ln in enumerate(lines) if "start values" in ln]
    assert start and start[0] < first_steps, err
    assert any("300/300" in ln and "done" in ln for ln in lines), err
    assert ("it/s" in err or "step/s" in err) == tqdm_present  # tqdm's rate column; the text bar has none


def test_first_run_on_a_quadratic_does_not_import_scipy_special():
    """The first `Simulator.run` of a process evaluates the problem's gradient (its regime check); the evaluator
    imports `scipy.special` (50 to 60 ms) only for an expression that calls `erf`/`erfc`, which a quadratic has not.
    A fresh process, since the test session has imported scipy.special long ago."""
    code = ("import sys, warnings, numpy as np, sdederive as sd; warnings.simplefilter('ignore');"
            "p = sd.Quadratic(h=np.geomspace(0.1, 10, 8), sigma=np.ones(8));"
            "sd.compile(sd.derive('rmsprop'), p).run(paths=8, steps=3, eta=1e-2);"
            "print('scipy.special' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stdout + out.stderr


def test_state_map_inversion_is_sympys_solve():
    """`spec.invert_state_map` (the reported discrete state from the SDE's state, without `sympy.solve` for a
    linear map) gives `solve`'s answer for every built-in's state map in every regime it derives, and falls back
    to `solve` for a map that is not linear."""
    import sympy as sp

    from sdederive.simulate.spec import invert_state_map

    checked = 0
    for name in sd.optimizers.names():
        for regime in ("sgd", "balanced", "noise-dominated"):
            try:
                sde = sd.derive(name, regime=regime)
            except sd.SdederiveError:
                continue
            hypers = {h[0] for h in sde.hypers}
            for s, m in sde.state_map.items():
                smap = sp.sympify(m)
                (v,) = [f for f in smap.free_symbols if str(f) not in hypers]
                u = sp.Symbol(s)
                got = invert_state_map(u, smap, v)
                assert sp.simplify(got - sp.solve(sp.Eq(u, smap), v)[0]) == 0, (name, regime, s)
                assert sp.simplify(smap.xreplace({v: got}) - u) == 0
                checked += 1
    assert checked >= 5  # adam, rmsprop, adagrad, ... (a loop that checks nothing fails)
    v, u, eta = sp.symbols("v u eta", positive=True)
    assert sp.simplify(invert_state_map(u, eta * v**2, v) - sp.sqrt(u / eta)) == 0  # not linear: solve's root

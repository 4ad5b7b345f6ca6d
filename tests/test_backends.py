"""The backend interface and registry (sdederive/simulate/backends/base.py).

A third backend written here, in the test file, is picked up by ``sd.compile``, ``Simulator.run``, the CLI's
``--backend`` choices and the sweep grid: a pure-numpy reference backend (its own step loop, its own random
numbers, its own statistics), checked against the exact moments of SGD on a diagonal quadratic, and a backend
that subclasses numba's and counts the calls the simulator makes."""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import types

import numpy as np
import pytest

import sdederive as sd
from sdederive.errors import SdederiveError, UnknownNameError
from sdederive.simulate.backends import registry
from sdederive.simulate.backends.base import (
    AbstractBackend,
    BackendUnavailableError,
    KernelSource,
    backend_names,
    get_backend,
    register_backend,
)
from sdederive.simulate.backends.numba_backend import NumbaBackend
from sdederive.simulate.backends.numba_printer import print_python
from sdederive.simulate.lower import CodegenError


class NumpyReference(AbstractBackend):
    """Discrete optimizers on a diagonal quadratic with Gaussian noise, all paths at once in numpy; normals from
    ``numpy.random.default_rng((key0, key1, step))`` (not Philox: an independent implementation)."""

    name = "numpy_ref"

    def generate(self, spec, problem, scheme, dtype) -> KernelSource:
        if spec.mode != "discrete" or problem.kind != "quadratic_diag" or problem.noise != "gaussian":
            raise CodegenError("numpy_ref: discrete mode on a diagonal quadratic with Gaussian noise only")
        st = ", ".join(f"s_{s}" for s in spec.states)
        hp = "".join(f", hp_{h}" for h in spec.scalars)
        upd = ", ".join(f"n_{s}" for s in spec.states)
        obs = ", ".join(f"o_{o}" for o in spec.outputs)
        text = (f"def upd({st}, gv, kk{hp}):\n{print_python(spec.upd, '    ')}\n    return [{upd}]\n\n"
                f"def obs({st}{hp}):\n{print_python(spec.obs, '    ')}\n    return [{obs}]\n")
        return KernelSource(self.name, text, spec, problem, scheme, dtype)

    def build(self, source: KernelSource):
        ns = {"math": np}  # the printer's math.* calls, elementwise
        exec(compile(source.text, "<numpy_ref>", "exec"), ns)  # noqa: S102 - text generated just above
        return types.SimpleNamespace(upd=ns["upd"], obs=ns["obs"], nhp=len(source.spec.scalars))

    def run_chunk(self, handle, run, k_begin, k_end) -> None:
        d = run.state.shape[2]
        h, sigma = run.PV[:d], run.PV[d:2 * d]
        hp = [float(v) for v in run.HP[:handle.nhp]]
        for k in range(k_begin, k_end):
            live = run.DIV < 0
            X = run.state[live]
            z = np.random.default_rng((run.key0, run.key1, k)).standard_normal((run.paths, d))[live]
            g = h * X[:, 0] + sigma * z
            new = handle.upd(*[X[:, j] for j in range(X.shape[1])], g, float(k), *hp)
            run.state[live] = np.stack([np.broadcast_to(v, g.shape) for v in new], axis=1)
            bad = live & ~np.isfinite(run.state).all((1, 2))
            run.DIV[bad] = k + 1
            if (k + 1) % run.save_every == 0:
                live = run.DIV < 0
                x = run.state[live, 0]
                o = handle.obs(*[run.state[live, j] for j in range(run.state.shape[1])], *hp)
                Y = np.concatenate([(0.5 * h * x * x).sum(1, keepdims=True), (x * x).sum(1, keepdims=True)]
                                   + [np.broadcast_to(v, x.shape) for v in o], axis=1)
                j = (k + 1) // run.save_every
                run.MEAN[0, j] = Y.mean(0)
                run.M2[0, j] = ((Y - Y.mean(0)) ** 2).sum(0)
                run.CNT[0, j] = Y.shape[0]


class Counting(NumbaBackend):
    """The numba backend, counting the calls the simulator makes."""

    name = "counting"
    calls: dict = {}

    def _count(self, what):
        Counting.calls[what] = Counting.calls.get(what, 0) + 1

    def generate(self, *a, **k):
        self._count("generate")
        return super().generate(*a, **k)

    def build(self, *a, **k):
        self._count("build")
        return super().build(*a, **k)

    def run_chunk(self, *a, **k):
        self._count("run_chunk")
        return super().run_chunk(*a, **k)

    def reduce(self, *a, **k):
        self._count("reduce")
        return super().reduce(*a, **k)


@pytest.fixture
def registered(monkeypatch):
    """The two test backends registered, and unregistered afterwards."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    register_backend(NumpyReference)
    register_backend(Counting)
    Counting.calls = {}
    yield


H = np.array([0.5, 2.0])
SIGMA = np.array([1.0, 0.3])
X0 = np.array([1.0, -2.0])
PROB = sd.Quadratic(h=H, sigma=SIGMA, x0=X0)


def test_a_numpy_backend_written_in_the_test_runs_sgd_to_its_exact_moments(registered):
    """x_{k+1} = a x_k - eta sigma z, a = 1 - eta h: E x_k = a^k x0, Var x_k = eta^2 sigma^2 (1 - a^{2k})/(1 - a^2).
    Mean within 5 standard errors; the variance within 5 sd of its estimator (sqrt(2/(n-1)) relative, Gaussian)."""
    assert "numpy_ref" in backend_names()
    eta, n, steps = 0.1, 4000, 30
    sim = sd.compile("sgd", PROB, backend="numpy_ref")
    assert sim.backend == "numpy_ref" and isinstance(sim.backend_impl, NumpyReference)
    res = sim.run(paths=n, steps=steps, eta=eta, seed=7, save_every=10)
    k = res.steps[:, None]
    a = 1 - eta * H
    mean = a ** k * X0
    var = eta**2 * SIGMA**2 * (1 - a ** (2 * k)) / (1 - a**2)
    assert res.count.tolist() == [n] * 4 and np.array_equal(res.t, eta * np.arange(0, 31, 10))
    np.testing.assert_array_equal(res.mean["x"][0], X0)
    assert np.all(np.abs(res.mean["x"] - mean) <= 5 * np.sqrt(var / n) + 1e-15)
    assert np.all(np.abs(res.var["x"][1:] / var[1:] - 1) <= 5 * np.sqrt(2 / (n - 1)))
    loss = 0.5 * (H * (mean**2 + var)).sum(1)
    assert np.all(np.abs(res.mean["loss"] - loss) <= 5 * res.se["loss"] + 1e-15)
    # what it cannot do is refused, not run wrong
    with pytest.raises(CodegenError, match="numpy_ref: discrete mode"):
        sd.compile(sd.derive("sgd"), PROB, backend="numpy_ref")


@pytest.mark.filterwarnings("ignore::sdederive.analysis.regime_check.RegimeWarning")
def test_a_subclassed_backend_is_driven_through_the_interface(registered):
    """Same numbers as numba (it is numba underneath), and every number went through run_chunk and reduce."""
    kw = dict(paths=50, steps=40, eta=0.05, seed=3, save_every=5, chunk_seconds=1e-9)
    ref = sd.compile(sd.derive("rmsprop"), PROB).run(**kw)
    sim = sd.compile(sd.derive("rmsprop"), PROB, backend="counting")
    assert Counting.calls == {"generate": 1, "build": 1}
    res = sim.run(**kw)
    assert Counting.calls["run_chunk"] >= 2 and Counting.calls["reduce"] == 1
    for name in ref.mean:
        np.testing.assert_array_equal(res.mean[name], ref.mean[name])
        np.testing.assert_array_equal(res.var[name], ref.var[name])


def test_cli_backend_choices_come_from_the_registry(registered):
    from sdederive.cli.main import build_parser, main

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for cmd in ("simulate", "validate"):
        backend = next(a for a in sub.choices[cmd]._actions if a.dest == "backend")
        assert tuple(backend.choices) == ("numba", "cupy", "numpy_ref", "counting"), cmd
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["simulate", "sgd", "--mode", "discrete", "--backend", "counting", "--paths", "20", "--steps", "10",
                   "--eta", "0.05", "--json"])
    assert rc == 0 and Counting.calls["run_chunk"] >= 1, err.getvalue()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["simulate", "sgd", "--backend", "nope"])
    assert rc == 2 and "'nope'" in err.getvalue() and "numpy_ref" in err.getvalue()


def test_unknown_backend_name_lists_the_allowed_ones(registered):
    with pytest.raises(UnknownNameError, match=r"unknown backend 'nope'; valid backends: counting, cupy, numba, "
                                               r"numpy_ref"):
        sd.compile("sgd", PROB, backend="nope")
    with pytest.raises(UnknownNameError, match="unknown backend 3"):
        get_backend(3)
    from sdederive.sweep.grid import Grid

    with pytest.raises(SdederiveError, match=r"backend=\['nope'\].*allowed: numba, cupy, numpy_ref, counting"):
        Grid(eta=[0.1], backend=["nope"])
    Grid(eta=[0.1], backend=["numpy_ref"])  # a registered one is a valid grid value


def test_register_backend_refuses_what_is_not_a_backend(registered):
    class NoName(NumbaBackend):
        name = "two words"

    class Incomplete(AbstractBackend):
        name = "incomplete"

    with pytest.raises(SdederiveError, match="name='two words'; allowed: an identifier"):
        register_backend(NoName)
    with pytest.raises(SdederiveError, match="does not implement build, generate, run_chunk"):
        register_backend(Incomplete)
    with pytest.raises(SdederiveError, match="takes an AbstractBackend subclass"):
        register_backend(object)
    assert "incomplete" not in backend_names()


def test_cuda_availability_gives_the_reason(monkeypatch):
    """Without CuPy, and with CuPy but no device: available() says which, and compile raises it."""
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy -> ImportError
    ok, why = get_backend("cupy").available()
    assert not ok and "needs CuPy" in why
    with pytest.raises(BackendUnavailableError, match="needs CuPy: pip install"):
        sd.compile("sgd", PROB, backend="cupy")
    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(is_available=lambda: False)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    ok, why = get_backend("cupy").available()
    assert not ok and "none is visible" in why
    with pytest.raises(BackendUnavailableError, match="needs a CUDA GPU; none is visible"):
        sd.compile("sgd", PROB, backend="cupy")
    assert get_backend("numba").available() == (True, "")


def test_cuda_source_precision_is_passed_through_not_kept_in_a_global():
    """The CUDA generator keeps no module-global precision (it had ``REAL``, set by every generate() and read by the
    custom-problem fragment instead of its own argument); generating float32, float64, float32 in turn, each
    custom fragment is printed in its own precision."""
    from sdederive.simulate.backends import cuda_backend
    from sdederive.simulate.spec import discrete_spec

    assert not hasattr(cuda_backend, "REAL")
    prob = sd.problems.Custom(f="exp(x_0) + x_0**2*x_1**2", sigma=[1.0, 1.0], x0=[0.1, 0.2])
    spec = discrete_spec(sd.optimizers.get("sgd"))
    for dtype, real, other in (("float32", "float", "double"), ("float64", "double", "float"),
                               ("float32", "float", "double")):
        text = cuda_backend.generate(spec, prob, dtype=dtype)
        fns = text[text.index("prob_grad("):text.index('extern "C"')]  # problem fragment and spec functions
        assert f"const {real} " in fns and f"const {other} " not in fns.replace("const double *", ""), dtype


def test_an_unavailable_backend_is_refused_with_its_reason_before_generating(monkeypatch):
    class Offline(Counting):
        name = "offline"

        @classmethod
        def available(cls):
            return False, "offline: the accelerator is switched off"

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    register_backend(Offline)
    Counting.calls = {}
    with pytest.raises(BackendUnavailableError, match="offline: the accelerator is switched off"):
        sd.compile("sgd", PROB, backend="offline")
    assert Counting.calls == {}


def test_the_registry_imports_nothing_heavy():
    """The CLI builds its --backend choices from the registry: importing it (and the packages above it, as far
    as they are ours to keep light) loads neither numpy, sympy, numba nor CuPy."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = ("import sys, types\n"
            "pkg = types.ModuleType('sdederive'); pkg.__path__ = [sys.argv[1]]; sys.modules['sdederive'] = pkg\n"
            "from sdederive.simulate.backends.registry import backend_names\n"
            "print(backend_names(), sorted(m for m in ('numpy', 'sympy', 'numba', 'cupy', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(root / "sdederive")], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "('numba', 'cupy') []"


def test_blas_is_single_threaded_under_the_kernel_threads():
    """The numba kernels' threads each call BLAS (the vector kernels' row-block products); a threaded BLAS
    under them oversubscribes the cores, so `_launch` limits BLAS to one thread for the launch and restores
    it after (threadpoolctl)."""
    import scipy.linalg  # noqa: F401 - loads scipy's BLAS, the one numba's np.dot calls
    from threadpoolctl import threadpool_info, threadpool_limits

    from sdederive.simulate.backends import numba_backend as nb

    def blas_threads():
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    with threadpool_limits(limits=2, user_api="blas"):  # a threaded BLAS, as on any multi-core machine
        before = blas_threads()
        assert before and max(before) == 2
        seen = []
        nb._refresh_blas()
        nb._launch(lambda *a: seen.append(blas_threads()), (), 4, 2)
        assert seen == [[1] * len(before)] * 2
        assert blas_threads() == before

"""Every generated CUDA kernel compiles (NVRTC via cuda-bindings, or nvcc) for sm_90 without a GPU;
GPU runs are marked ``gpu`` and compared with the numba backend."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import sympy as sp

import sdederive as sd
from sdederive.problems import Custom, LogisticRegression, Quadratic
from sdederive.simulate.backends import cuda_backend
from sdederive.simulate.backends.cuda_backend import compile_check, generate
from sdederive.simulate.spec import discrete_spec, sde_spec

if not cuda_backend.nvrtc_available() and shutil.which("nvcc") is None:
    pytest.skip("no CUDA compiler: NVRTC comes with the test extra (pip install -e '.[test]')", allow_module_level=True)

DIAG = Quadratic(h=[1.0, 2.0, 3.0], sigma=[1.0, 1.0, 1.0], x0=[1.0, 1.0, 1.0])
DENSE = Quadratic(H=[[2.0, 0.5], [0.5, 1.0]], Sigma=[[1.0, 0.3], [0.3, 1.0]], x0=[1.0, 1.0])
STUDENT = Quadratic(h=[1.0, 2.0], sigma=[1.0, 1.0], noise="student-t", nu=3, x0=[1.0, 1.0])
LOGI = LogisticRegression.synthetic(n=32, d=3, B=4)
_x0, _x1 = sp.symbols("x_0 x_1")
CUSTOM = Custom(_x0**4 / 4 + _x1**2 / 2, sigma=[1.0, 1.0], x0=[1.0, 1.0])


@pytest.mark.parametrize("name", sd.optimizers.names())
@pytest.mark.parametrize("mode", ["sde", "discrete"])
def test_builtin_kernels_compile(name, mode):
    spec = sde_spec(sd.derive(name), DIAG, correlated=False) if mode == "sde" else discrete_spec(sd.optimizers.get(name))
    r = compile_check(generate(spec, DIAG, "euler", "float64"))
    assert r["cubin_bytes"] > 1000


@pytest.mark.parametrize("case", ["dense-sde", "dense-disc", "student-sde", "student-disc", "logistic-sde",
                                  "logistic-disc", "custom-sde", "weak2-f32", "adam-f32"])
def test_problem_and_scheme_kernels_compile(case):
    if case == "dense-sde":
        spec, prob, scheme, dt = sde_spec(sd.derive("rmsprop"), DENSE, correlated=True), DENSE, "euler", "float64"
    elif case == "dense-disc":
        spec, prob, scheme, dt = discrete_spec(sd.optimizers.get("sgd")), DENSE, "euler", "float64"
    elif case == "student-sde":
        spec = sde_spec(sd.derive("signsgd", noise=sd.StudentT(nu=3)), STUDENT, correlated=False)
        prob, scheme, dt = STUDENT, "euler", "float64"
    elif case == "student-disc":
        spec, prob, scheme, dt = discrete_spec(sd.optimizers.get("signsgd")), STUDENT, "euler", "float64"
    elif case == "logistic-sde":
        spec, prob, scheme, dt = sde_spec(sd.derive("sgd"), LOGI, correlated=True), LOGI, "euler", "float64"
    elif case == "logistic-disc":
        spec, prob, scheme, dt = discrete_spec(sd.optimizers.get("adam")), LOGI, "euler", "float64"
    elif case == "custom-sde":
        spec, prob, scheme, dt = sde_spec(sd.derive("sgd"), CUSTOM, correlated=False), CUSTOM, "euler", "float64"
    elif case == "weak2-f32":
        spec, prob, scheme, dt = sde_spec(sd.derive("rmsprop"), DIAG, correlated=False), DIAG, "weak2", "float32"
    else:
        spec, prob, scheme, dt = sde_spec(sd.derive("adam"), DIAG, correlated=False), DIAG, "euler", "float32"
    src = generate(spec, prob, scheme, dt)
    assert compile_check(src)["cubin_bytes"] > 1000
    assert compile_check(src, fmad=False)["cubin_bytes"] > 1000


def test_broken_source_fails_with_the_compiler_log():
    src = generate(discrete_spec(sd.optimizers.get("sgd")), DIAG).replace("sd_philox4x32(c, k0, k1);",
                                                                       "sd_philox4x32_typo(c, k0, k1);", 1)
    with pytest.raises(sd.SdederiveError, match="is undefined"):
        compile_check(src)


def _gpu():
    try:
        import cupy

        return cupy.cuda.is_available()
    except Exception:
        return False


_GPU_CASES = {  # (target, problem, compile options): every problem kind, scheme and precision of the host tests
    "sde-rmsprop": (lambda: sd.derive("rmsprop"), DIAG, {}),
    "discrete-adam": (lambda: "adam", DIAG, {}),
    "sde-signsgd": (lambda: sd.derive("signsgd"), DIAG, {}),
    "sde-rmsprop-weak2": (lambda: sd.derive("rmsprop"), DIAG, {"scheme": "weak2"}),
    "sde-rmsprop-dense": (lambda: sd.derive("rmsprop"), DENSE, {}),
    "sde-signsgd-student": (lambda: sd.derive("signsgd", noise=sd.StudentT(nu=3)), STUDENT, {}),
    "discrete-signsgd-student": (lambda: "signsgd", STUDENT, {}),
    "sde-sgd-logistic": (lambda: sd.derive("sgd"), LOGI, {}),
    "discrete-adam-logistic": (lambda: "adam", LOGI, {}),
    "sde-sgd-custom": (lambda: sd.derive("sgd"), CUSTOM, {}),
}


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu(), reason="needs a CUDA GPU (CuPy)")
@pytest.mark.parametrize("case", list(_GPU_CASES))
def test_gpu_matches_numba(case):
    """Same seed, same statistics as the numba backend (the Gaussians are bit-identical; the rest of the
    kernel may contract to FMAs, hence a relative tolerance far below the Monte Carlo error)."""
    make, prob, opts = _GPU_CASES[case]
    target = make()
    kw = dict(paths=4096, steps=200, eta=0.01, seed=3, save_every=50)
    a = sd.compile(target, prob, backend="numba", **opts).run(**kw)
    b = sd.compile(target, prob, backend="cupy", **opts).run(**kw)
    for k in a.mean:
        np.testing.assert_allclose(b.mean[k], a.mean[k], rtol=1e-9, atol=1e-12, err_msg=f"{case}: mean of {k}")
        np.testing.assert_allclose(b.var[k], a.var[k], rtol=1e-7, atol=1e-12, err_msg=f"{case}: variance of {k}")


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu(), reason="needs a CUDA GPU (CuPy)")
def test_gpu_float32_tracks_float64():
    """float32 on the GPU against float64 numba: the same paths, to float32 accuracy over 200 steps."""
    kw = dict(paths=4096, steps=200, eta=0.01, seed=5, save_every=200)
    a = sd.compile(sd.derive("rmsprop"), DIAG, backend="numba").run(**kw)
    b = sd.compile(sd.derive("rmsprop"), DIAG, backend="cupy", dtype="float32").run(**kw)
    np.testing.assert_allclose(b.mean["loss"], a.mean["loss"], rtol=1e-4)

"""Every generated CUDA kernel compiles (NVRTC via cuda-bindings, or nvcc) for sm_90 without a GPU;
GPU runs are marked ``gpu`` and compared with the numba backend."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

import sdederive as sd
from sdederive.codegen.cuda_backend import compile_check, generate
from sdederive.codegen.spec import discrete_spec, sde_spec
from sdederive.problems import Custom, LogisticRegression, Quadratic

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
    src = generate(discrete_spec(sd.optimizers.get("sgd")), DIAG).replace("sd_u01(", "sd_u01_typo(", 1)
    with pytest.raises(sd.SdederiveError, match="is undefined"):
        compile_check(src)


def _gpu():
    try:
        import cupy

        return cupy.cuda.is_available()
    except Exception:
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu(), reason="needs a CUDA GPU (CuPy)")
@pytest.mark.parametrize("obj", ["sde-rmsprop", "discrete-adam", "sde-signsgd"])
def test_gpu_matches_numba(obj):
    mode, name = obj.split("-")
    target = sd.derive(name) if mode == "sde" else name
    kw = dict(paths=4096, steps=200, eta=0.01, seed=3, save_every=50)
    a = sd.compile(target, DIAG, backend="numba").run(**kw)
    b = sd.compile(target, DIAG, backend="cupy").run(**kw)
    for k in a.mean:
        np.testing.assert_allclose(b.mean[k], a.mean[k], rtol=1e-9, atol=1e-12)

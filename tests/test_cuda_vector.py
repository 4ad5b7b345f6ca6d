"""The CUDA kernels of the vector simulators (`sdederive.simulate.backends.cuda_vector`) run on the host
through the fake CuPy of `tests/test_cuda_host.py` (the generated CUDA C built as host C++ by g++) and
compared with the numba vector kernel for the same seed; NVRTC compiles of the generated sources; a
`gpu`-marked comparison on a real GPU.

Both kernels draw the same Gaussians (bit-identical, `-ffp-contract=off`) and do the same operations per
path; they differ in the order of the dense products' sums (numba: BLAS `dgemm` over a row block; CUDA:
the problem's helper loops), in sympy's C against Python printing of some expressions, and in how the
statistics are reduced, so the tolerance is `test_cuda_host`'s 1e-10 relative, and a single path is equal
bit for bit where the two printers emit the same operations (diagonal problem, `test_single_path_bit_for_bit`).
"""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest
import sympy as sp

import sdederive as sd
from sdederive.problems import Custom, LogisticRegression, Quadratic
from sdederive.simulate.backends import cuda_backend
from sdederive.simulate.backends.base import BackendUnavailableError
from sdederive.simulate.backends.cuda_vector import generate_vector_cuda
from sdederive.simulate.vector_lower import lower_discrete, lower_sde
from sdederive.spec import vector as V
from tests import test_cuda_host as _host
from tests.test_cuda_host import GXX, assert_same

# the fake CuPy of test_cuda_host (pytest finds fixtures by name in this module)
fake_cupy, _build_dir = _host.fake_cupy, _host._build_dir

needs_gxx = pytest.mark.skipif(GXX is None, reason="needs g++ to build the generated CUDA kernels as host code")

# a dense 4-d quadratic with a full noise covariance; a diagonal 5-d one with a full Sigma (the noise factor
# then needs d Gaussians, more than one Philox block); a diagonal one with per-coordinate noise; logistic
# regression (real minibatches in discrete mode, the low-rank noise factor of NEX Gaussians in SDE mode)
DENSE = Quadratic(H=[[2.0, 0.6, -0.3, 0.1], [0.6, 1.0, 0.4, 0.0], [-0.3, 0.4, 0.7, 0.2], [0.1, 0.0, 0.2, 1.5]],
                  Sigma=[[0.5, 0.2, -0.1, 0.0], [0.2, 0.4, 0.15, 0.1], [-0.1, 0.15, 0.6, 0.0], [0.0, 0.1, 0.0, 0.3]],
                  x0=[1.0, -1.0, 2.0, 0.5])
_S5 = np.diag([0.8, 0.5, 0.3, 0.6, 0.4])
_S5[0, 4] = _S5[4, 0] = 0.25
_S5[1, 2] = _S5[2, 1] = -0.2
H5 = np.array([0.5, 1.0, 2.0, 1.5, 0.8])
DIAG5 = Quadratic(h=H5, Sigma=_S5, x0=[1.0, -0.5, 0.3, 0.8, -1.2])
DENSE_T = Quadratic(H=DENSE.H, Sigma=DENSE.Sigma, x0=DENSE.x0, noise="multivariate-t", nu=5)
DIAG = Quadratic(h=[0.5, 1.0, 3.0], sigma=[0.3, 1.0, 2.0], x0=[1.0, -2.0, 0.5])
LOGI = LogisticRegression.synthetic(n=40, d=4, B=5, seed=1)

RUN = dict(paths=160, steps=60, eta=0.02, seed=2**33 + 5, save_every=6)
RHO = {"rho": 0.2}


def _target(case: str):
    """`mode-name`: the discrete vector optimizer `name` or its vector SDE (`sgdfull`: SGD with a full Sigma)."""
    mode, name = case.split("-")[:2]
    if name == "sgdfull":
        return sd.derive("sgd", Sigma="full")
    if name == "usamx":
        return sd.derive("usam", Sigma="x", regime="rho-eta", order=2)
    if name.endswith("t") and name[:-1] in ("sam", "nsgd"):  # under the multivariate t, nu = 5
        name = name[:-1]
        return sd.derive(name, noise="student-t", nu=5) if mode == "sde" else name
    return sd.derive(name) if mode == "sde" else name


def _both(target, prob, fake, dtype="float64", mask_diverged=False, **run):
    """(numba result, CUDA-on-host result) of the same run; the CUDA module first (g++ builds it while numba
    compiles)."""
    cuda = sd.compile(target, prob, backend="cupy", dtype=dtype)
    assert fake.modules[-1][0] == cuda.source.text and "vector kernel" in cuda.source.text
    a = sd.compile(target, prob, backend="numba", dtype=dtype).run(**run, mask_diverged=mask_diverged)
    n0 = len(fake.launches)
    b = cuda.run(**run, mask_diverged=mask_diverged)
    assert len(fake.launches) > n0, "the CUDA run launched no kernel"
    return a, b


_X0, _X1 = sp.symbols("x_0 x_1")
# x^4 with strong noise: paths escape one by one and overflow (a step is unstable beyond |x| ~ sqrt(2/eta))
QUARTIC = Custom(_X0**4 / 4 + _X1**2 / 2 + _X0 * _X1 / 4, sigma=[3.0, 1.0], x0=[1.0, 1.0])

# one kernel each (a numba compile and a g++ build): every operation, problem kind and precision once
_CASES = {  # case: (problem, dtype, run); rho or c where the optimizer has one
    "sde-usam": (DENSE, "float64", dict(RUN, hyper=RHO, substeps=2)),  # H grad, L z and H (L z)
    "sde-sam": (LOGI, "float64", dict(RUN, hyper=RHO, eta=0.1, steps=30)),  # inner samples, weights, zeta;
    # logistic regression's low-rank factor (NEX Gaussians), its noise scale varying with x, its H v
    "sde-nsgd": (DENSE, "float32", RUN),  # float32 states (test_float32_state)
    "sde-clip_sgd": (DIAG5, "float64", dict(RUN, hyper={"c": 1.0})),  # Min(1, c/|g|); L z of d = 5 > 4 Gaussians
    "sde-sgdfull": (DIAG5, "float64", RUN),
    "discrete-usam": (QUARTIC, "float64", dict(RUN, hyper=RHO, eta=0.1, steps=150, save_every=5, seed=11)),
    # a custom objective's gradient at the ascent point; paths diverge (test_divergence_...)
    "discrete-sam": (LOGI, "float64", dict(RUN, hyper=RHO, eta=0.1)),  # two minibatch gradients, same indices
    "discrete-nsgd": (DIAG, "float64", RUN),  # per-coordinate noise (test_single_path_bit_for_bit)
    "discrete-lamb": (DENSE, "float32", RUN),  # dense H x + L z at x; auxiliary states (double beside a float32
    # x), the step counter k of the bias corrections, the norm of a coordinate-wise expression of the states
    "sde-lamb": (DENSE, "float64", RUN),  # auxiliary states with the shared dW, the time t, the scaled decays rho
    "sde-adamw_clip": (DENSE, "float64", dict(RUN, hyper={"c": 0.8})),  # m's sampled noise, v's sampled drift
    "discrete-samt": (DENSE_T, "float64", dict(RUN, hyper=RHO)),  # the multivariate t: one chi-square per draw
    "sde-samt": (DENSE_T, "float64", dict(RUN, hyper=RHO)),  # ... per inner sample (z-space: L^T grad, L beta, rho H)
    "sde-usamx": (LOGI, "float64", dict(RUN, hyper=RHO, eta=0.1, steps=30)),  # Sigma(x): grad tr Sigma(x) (prob_gtrs)
}


@needs_gxx
@pytest.mark.parametrize("case", list(_CASES))
def test_matches_numba(fake_cupy, case):
    prob, dtype, run = _CASES[case]
    a, b = _both(_target(case), prob, fake_cupy, dtype, **run, mask_diverged=True)
    if prob is QUARTIC:
        assert 0 < a.diverged < run["paths"] and a.count[-1] == run["paths"] - a.diverged
    else:
        assert a.diverged == 0 and a.count[-1] == run["paths"]
    # float32 on the dense quadratic: both keep every vector in float32 and compute in float (numba's products
    # sgemm, CUDA's loops with double sums), so they agree to single precision (measured: 2.8e-7 apart at most)
    assert_same(a, b, rtol=2e-6 if dtype == "float32" else 1e-10)


@needs_gxx
@pytest.mark.parametrize("case", ["sde-lamb", "discrete-lamb"])  # auxiliary states; float64 and float32
def test_fused_loops_give_the_same_numbers(fake_cupy, monkeypatch, case):
    """cuda_vector.FUSE: a run of coordinate-wise operations as one loop with its inner values in locals gives the
    same statistics bit for bit as one loop per operation (float32 included), in fewer loops."""
    from sdederive.simulate.backends import cuda_vector

    prob, dtype, run = _CASES[case]
    out, loops = {}, {}
    for fuse in (False, True):
        monkeypatch.setattr(cuda_vector, "FUSE", fuse)
        sim = sd.compile(_target(case), prob, backend="cupy", dtype=dtype)
        loops[fuse] = sim.source.text.count("for (int i = 0; i < D; ++i)")
        out[fuse] = sim.run(**run)
    assert loops[True] < loops[False], loops
    for k in out[False].mean:
        np.testing.assert_array_equal(out[True].mean[k], out[False].mean[k], err_msg=k)
        np.testing.assert_array_equal(out[True].var[k], out[False].var[k], err_msg=k)


@needs_gxx
def test_single_path_bit_for_bit(fake_cupy):
    """One path on a diagonal quadratic (no BLAS product on the numba side): mean = the state itself, var = 0,
    equal bit for bit (the C and Python printers emit the same operations for NSGD's update); at d = 37 the norm
    |g| is four partial sums and a tail (vector_lower.SPLIT_SUMS), the same in both."""
    wide = Quadratic(h=np.geomspace(0.2, 5.0, 37), sigma=np.linspace(0.3, 2.0, 37), x0=np.linspace(-1.0, 1.5, 37))
    for prob, seed in ((DIAG, 0), (DIAG, 2**40 + 3), (wide, 7)):
        a, b = _both("nsgd", prob, fake_cupy, **dict(RUN, paths=1, save_every=1, seed=seed))
        for k in a.mean:
            np.testing.assert_array_equal(b.mean[k], a.mean[k], err_msg=k)
            np.testing.assert_array_equal(b.var[k], a.var[k], err_msg=k)


@needs_gxx
def test_float32_state(fake_cupy):
    """dtype="float32": the CUDA kernel's state is a float (every snapshot of one path is a float32 number),
    while the computation is double as on the numba side (test_matches_numba[sde-nsgd])."""
    prob, dtype, run = _CASES["sde-nsgd"]
    b = sd.compile(sd.derive("nsgd"), prob, backend="cupy", dtype=dtype).run(**dict(run, paths=1, save_every=1))
    x = b.mean["x"][1:]
    assert np.all(x.astype(np.float32).astype(float) == x) and np.ptp(x) > 0


@needs_gxx
def test_float32_products_are_single_precision(fake_cupy):
    """On a dense quadratic the CUDA kernel's float32 vectors and products are floats, as numba's sgemm
    (tests/test_vector_simulate.py::test_float32_products_are_single_precision, the same case): a cancelling
    `H x0`, normalised by NSGD, is off by far more than the state's rounding."""
    rng = np.random.default_rng(5)
    d = 8
    Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    H = Q @ np.diag(np.r_[1e-3, np.linspace(1.0, 3.0, d - 1)]) @ Q.T
    H = (H + H.T) / 2
    x0 = Q[:, 0].astype(np.float32).astype(float)
    prob = sd.Quadratic(H=H, Sigma=1e-30 * np.eye(d), x0=x0)
    g = H @ x0
    ref = x0 - g / np.linalg.norm(g)
    out = {}
    for dt in ("float64", "float32"):
        sim = sd.compile("nsgd", prob, backend="cupy", dtype=dt)
        out[dt] = sim.run(paths=1, steps=1, eta=1.0, save_every=1).mean["x"][-1]
    np.testing.assert_allclose(out["float64"], ref, atol=1e-10)
    err = np.abs(out["float32"] - ref).max()
    assert 1e-6 < err < 1e-2, err


def test_float32_coordinatewise_loops_read_only_floats():
    """The CUDA kernel's float32 step on a dense quadratic computes its coordinate-wise values in float, as numba's
    (test_vector_simulate.py::test_float32_coordinatewise_arithmetic_is_single_precision): every loop that writes a
    vector element reads only float vectors and `const float` locals, with no double hyperparameter, row scalar
    or double literal in it (C would compute the whole expression in double), while the float64 source keeps them."""
    import re

    from sdederive.simulate.backends.cuda_vector import generate_vector_cuda
    from sdederive.simulate.vector_lower import lower_sde

    sde = sd.derive("lamb")
    src32 = generate_vector_cuda(lower_sde(sde, DENSE), DENSE, "float32")
    src64 = generate_vector_cuda(lower_sde(sde, DENSE), DENSE, "float64")

    def loops(src):  # the element assignments, in a loop of their own or in a fused one (cuda_vector.FUSE)
        pat = r"\s*(for \(int i = 0; i < D; \+\+i\) )?(const real l_\w+|V_\w+\[i\]|X\[0\]\[i\]) = "
        return [ln for ln in src.splitlines() if re.match(pat, ln)]

    doubles = re.compile(r"hp_|S_|\bkstep\b|\btt\b|\bdt\b|\bsdt\b|\d\.\d")
    assert len(loops(src32)) > 10 and "const float c_" in src32
    assert not [ln for ln in loops(src32) if doubles.search(ln.split("=", 1)[1])]
    assert [ln for ln in loops(src64) if doubles.search(ln.split("=", 1)[1])] and "const float" not in src64


@needs_gxx
def test_divergence_reports_the_same_path_and_step(fake_cupy):
    """Both kernels end the same paths at the same steps (a non-finite coordinate after step k: diverged at
    k + 1) and report the first the same way."""
    prob, _, run = _CASES["discrete-usam"]
    errs = []
    for backend in ("numba", "cupy"):
        with pytest.raises(sd.DivergenceError) as ei:
            sd.compile("usam", prob, backend=backend).run(**dict(run, save_every=1), chunk_seconds=1e-12, threads=1)
        errs.append(ei.value)
    a, b = errs
    assert 1 < a.step < run["steps"] and a.n_diverged < run["paths"]
    assert (b.path, b.step, b.n_diverged) == (a.path, a.step, a.n_diverged)
    assert str(b) == str(a)


@needs_gxx
def test_a_wrong_kernel_is_caught(fake_cupy, monkeypatch):
    """The comparison can fail: the same SAM SDE kernel with its inner samples' weights from another stream."""
    from sdederive.simulate.backends import cuda_vector

    prob, _, run = _CASES["sde-sam"]
    a = sd.compile(sd.derive("sam"), prob).run(**run)
    real = cuda_vector.generate_vector_cuda

    def wrong(*args, **kw):
        text = real(*args, **kw)
        assert "(sd_u32)p, 999u, key0" in text
        return text.replace("(sd_u32)p, 999u, key0", "(sd_u32)p, 998u, key0")

    monkeypatch.setattr(cuda_vector, "generate_vector_cuda", wrong)
    b = sd.compile(sd.derive("sam"), prob, backend="cupy").run(**run)
    with pytest.raises(AssertionError):
        assert_same(a, b)


@needs_gxx
@pytest.mark.parametrize("target,dtype", [("s:sam", "float64"), ("d:nsgd", "float64"), ("s:clip_sgd", "float32")])
def test_eigenbasis_kernel_gives_the_paths_as_written(fake_cupy, target, dtype):
    """The CUDA kernel in the noise's eigenbasis (`generate_vector_cuda(rotate=True)`: y = U^T x loaded, x = U y
    stored, the loss of the snapshots at y) gives the statistics of the CUDA kernel as written (in float32 to
    single precision)."""
    from sdederive.simulate import vector_eigenbasis

    kind, name = target.split(":")
    obj = sd.derive(name) if kind == "s" else name
    hyper = RHO if "sam" in name else ({"c": 0.8} if name == "clip_sgd" else None)
    sims = {}
    for rot in (True, False):
        vector_eigenbasis.EIGENBASIS = rot
        try:
            sims[rot] = sd.compile(obj, DENSE, backend="cupy", dtype=dtype)
        finally:
            vector_eigenbasis.EIGENBASIS = True
    assert sims[True]._eigenbasis is not None and sims[False]._eigenbasis is None
    load = "acc += PL[j * D + i] * STATE[p * NS * D + j]"  # y = U^T x, coordinate by coordinate
    assert load in sims[True].source.text and load not in sims[False].source.text
    a, b = (sims[r].run(**dict(RUN, hyper=hyper)) for r in (True, False))
    assert_same(a, b, rtol=2e-6 if dtype == "float32" else 1e-10)


def test_diagonal_quadratic_full_sigma_beyond_one_philox_block():
    """d = 5 with a full Sigma on a diagonal quadratic: the noise L z needs 5 Gaussians.  The numba kernel drew
    4 (one Philox block, sized by the unused matrix slot) and read the fifth from the next path's row, so
    neighbouring paths shared noise.  Checked against numpy: the final states' covariance is the exact Euler
    recursion C' = A C A + eta dt Sigma (A = I - dt diag(h)), and neighbouring paths are uncorrelated, both
    within 5 standard errors (Gaussian: sqrt(2/n) var for a variance, sqrt(var_i var_j / n) for a covariance)."""
    paths, steps, eta = 4000, 50, 0.02
    res = sd.compile(sd.derive("sgd", Sigma="full"), DIAG5).run(paths=paths, steps=steps, eta=eta, seed=3,
                                                                save_every=steps, keep_final=True)
    A = np.eye(5) - eta * np.diag(H5)
    C = np.zeros((5, 5))
    for _ in range(steps):
        C = A @ C @ A + eta * eta * _S5
    var = np.diag(C)
    x = res.final["x"]
    np.testing.assert_allclose(np.cov(x.T), C, atol=5 * np.sqrt(2 / paths) * var.max())
    np.testing.assert_allclose(x.mean(0), np.linalg.matrix_power(A, steps) @ DIAG5.x0,
                               atol=5 * np.sqrt(var.max() / paths))
    dev = x - x.mean(0)
    cross = dev[0::2].T @ dev[1::2] / (paths // 2)  # path 2m against path 2m + 1
    np.testing.assert_allclose(cross, 0.0, atol=5 * np.sqrt(np.outer(var, var) / (paths // 2)).max())


def test_cupy_without_a_gpu_is_unavailable(monkeypatch):
    """Without CuPy the vector kernels fail as the scalar cupy path does (BackendUnavailableError, its message);
    Student-t problems stay refused."""
    monkeypatch.setitem(sys.modules, "cupy", None)  # `import cupy` raises ImportError
    with pytest.raises(BackendUnavailableError, match="needs CuPy") as vec:
        sd.compile(sd.derive("sam"), DENSE, backend="cupy")
    with pytest.raises(BackendUnavailableError) as scalar:
        sd.compile(sd.derive("sgd"), DIAG, backend="cupy")
    assert str(vec.value) == str(scalar.value)
    student = Quadratic(h=[1.0, 2.0], sigma=[1.0, 1.0], noise="student-t", nu=3, x0=[1.0, 1.0])
    with pytest.raises(sd.SdederiveError, match="Student-t"):
        sd.compile("nsgd", student, backend="cupy")


def test_other_backends_are_refused(monkeypatch):
    """A registered backend other than numba and cupy gets no vector kernel (a message naming both)."""
    from sdederive.simulate.backends import registry

    class Other(cuda_backend.CudaBackend):
        name = "other"

    monkeypatch.setitem(registry._REGISTRY, "other", Other)
    with pytest.raises(sd.SdederiveError, match="numba and cupy backends only; got backend='other'"):
        sd.compile(sd.derive("sam"), DENSE, backend="other")


def _sources():
    """Generated vector sources covering every operation, problem kind and precision."""
    return {
        "sde-sam-dense": generate_vector_cuda(lower_sde(sd.derive("sam"), DENSE), DENSE),
        "sde-usam-diag-f32": generate_vector_cuda(lower_sde(sd.derive("usam"), DIAG), DIAG, "float32"),
        "discrete-sam-logistic": generate_vector_cuda(lower_discrete(V.get("sam"), LOGI), LOGI),
        "sde-nsgd-logistic-f32": generate_vector_cuda(lower_sde(sd.derive("nsgd"), LOGI), LOGI, "float32"),
        "discrete-usam-custom": generate_vector_cuda(lower_discrete(V.get("usam"), QUARTIC), QUARTIC),
        "sde-lamb-dense": generate_vector_cuda(lower_sde(sd.derive("lamb"), DENSE), DENSE),
        "sde-adamw_clip-dense-f32": generate_vector_cuda(lower_sde(sd.derive("adamw_clip"), DENSE), DENSE, "float32"),
        "discrete-lamb-dense-f32": generate_vector_cuda(lower_discrete(V.get("lamb"), DENSE), DENSE, "float32"),
        "sde-nsgd-mvt": generate_vector_cuda(lower_sde(sd.derive("nsgd", noise="student-t", nu=5), DENSE_T), DENSE_T),
        "sde-radius_x-dense": generate_vector_cuda(lower_sde(sd.derive(_RADIUS_X), DENSE), DENSE),  # norm(x) in an atom
        "sde-sam-eigenbasis-f32": generate_vector_cuda(lower_sde(sd.derive("sam"), DENSE), DENSE.eigenbasis()[1],
                                                       "float32", rotate=True),  # y = U^T x loaded, x = U y stored
    }


_xv, _gv = sd.vectors("x g")
_RADIUS_X = sd.from_update("radius_x", {"x": _xv - sd.sym("eta") * sp.Max(1, sd.sym("c") * sd.norm(_xv) / sd.norm(_gv))
                                        * _gv}, hypers={"eta": 0.01, "c": 1.0})


@pytest.mark.skipif(not cuda_backend.nvrtc_available() and shutil.which("nvcc") is None,
                    reason="no CUDA compiler: NVRTC comes with the test extra (pip install -e '.[test]')")
def test_vector_kernels_compile_with_nvrtc():
    for name, src in _sources().items():
        for fmad in (True, False):
            assert cuda_backend.compile_check(src, fmad=fmad)["cubin_bytes"] > 1000, name


def _gpu():
    try:
        import cupy

        return cupy.cuda.is_available()
    except Exception:
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu(), reason="needs a CUDA GPU (CuPy)")
@pytest.mark.parametrize("case", ["sde-sam", "sde-usam", "discrete-sam", "sde-sgdfull", "sde-lamb", "sde-adamw_clip"])
def test_gpu_matches_numba(case):
    """On a GPU, same seed, same statistics as numba (the Gaussians are bit-identical; the rest may contract
    to FMAs, hence a relative tolerance far below the Monte Carlo error)."""
    prob, _, run = _CASES[case]
    kw = dict(run, paths=4096, steps=200, save_every=50)
    target = _target(case)
    a = sd.compile(target, prob, backend="numba").run(**kw)
    b = sd.compile(target, prob, backend="cupy").run(**kw)
    for k in a.mean:
        np.testing.assert_allclose(b.mean[k], a.mean[k], rtol=1e-9, atol=1e-12, err_msg=f"{case}: mean of {k}")
        np.testing.assert_allclose(b.var[k], a.var[k], rtol=1e-7, atol=1e-12, err_msg=f"{case}: variance of {k}")

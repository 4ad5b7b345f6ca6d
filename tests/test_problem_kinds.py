"""Problems own their data and their code: Hessian-vector products on every kind (against finite differences
of the gradient), the typed parameter pack read by name in both backends, the one noise alias table, and a
NEW problem kind written as one class (here, in this file) that simulates without touching the backends."""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np
import pytest
import sympy as sp

import sdederive as sd
from sdederive import noise as noise_mod
from sdederive.errors import SdederiveError, UnknownNameError
from sdederive.problems import Custom, LogisticRegression, ParamLayout, Problem, ProblemCode, Quadratic
from sdederive.problems.description import IX, JX, D, Loop, V, X, dsum, vec
from sdederive.simulate.backends import cuda_backend, numba_backend
from sdederive.simulate.spec import discrete_spec, sde_spec
from tests.helpers import CUDA_BUILTINS_ON_HOST

RNG = np.random.default_rng(11)


def _fd_hvp(grad, x, v, eps=1e-5):
    """Central difference of the gradient along v: (g(x + eps v) - g(x - eps v)) / (2 eps), error O(eps^2)."""
    return (grad(x + eps * v) - grad(x - eps * v)) / (2 * eps)


# -- Hessian-vector products --------------------------------------------------------------------------------

def _problems():
    H = RNG.standard_normal((4, 4))
    return {
        "diag": Quadratic(h=[0.5, 1.0, 3.0, 7.0], sigma=1.0, x0=np.ones(4)),
        "dense": Quadratic(H=H @ H.T + np.eye(4), Sigma=np.eye(4), x0=np.ones(4)),
        "custom": Custom("x_0**4/4 + x_0*x_1**2 + exp(x_1/2) + sin(x_2)*x_0", sigma=[1, 1, 1], x0=[0.3, -0.7, 1.1]),
        "logistic": LogisticRegression.synthetic(n=40, d=5, B=4, seed=3, l2=0.01),
    }


@pytest.mark.parametrize("name", ["diag", "dense", "custom", "logistic"])
def test_hvp_matches_finite_differences_of_the_gradient(name):
    p = _problems()[name]
    for _ in range(3):
        x = RNG.standard_normal(p.d)
        v = RNG.standard_normal(p.d)
        fd = _fd_hvp(p.grad, x, v)
        # central differences: truncation ~eps^2 |f'''| ~ 1e-10, rounding ~ 1e-16 |g| / eps ~ 1e-11
        np.testing.assert_allclose(p.hvp(x, v), fd, rtol=1e-6, atol=1e-8)


def test_logistic_minibatch_hvp_is_the_hvp_of_the_minibatch_gradient():
    p = LogisticRegression.synthetic(n=30, d=4, B=4, seed=5, l2=0.02)
    idx = np.array([3, 3, 17, 29, 0])  # with replacement: a repeated example counts twice

    def mb_grad(x):  # the minibatch gradient, from the per-example gradients (ridge included)
        return p.per_example_grads(x)[idx].mean(0)

    x, v = RNG.standard_normal(4), RNG.standard_normal(4)
    np.testing.assert_allclose(p.hvp(x, v, idx=idx), _fd_hvp(mb_grad, x, v), rtol=1e-6, atol=1e-9)
    # and it is not the full-batch HVP
    assert np.abs(p.hvp(x, v, idx=idx) - p.hvp(x, v)).max() > 1e-3


def test_custom_hvp_uses_the_off_diagonal_hessian():
    p = Custom("x_0*x_1", sigma=[1, 1], x0=[1, 1])
    # H = [[0, 1], [1, 0]]: H e_0 = e_1 (a diagonal-only product would give 0)
    np.testing.assert_allclose(p.hvp(np.array([0.3, 0.4]), np.array([1.0, 0.0])), [0.0, 1.0])


@pytest.mark.parametrize("name", ["diag", "dense", "custom", "logistic"])
def test_kernel_hvp_matches_numpy(name):
    """The numba fragment's prob_hvp (generated, or logistic's hand-written one) agrees with the numpy hvp."""
    p = _problems()[name]
    src = "import math\nimport numpy as np\nfrom numba import njit\nHELPER = njit\n" + p.numba_fragment()
    ns: dict = {}
    exec(compile(src, f"<fragment {name}>", "exec"), ns)  # noqa: S102 - our own generated source
    PV, PM, PL, PY = p.kernel_arrays()
    x, v = RNG.standard_normal(p.d), RNG.standard_normal(p.d)
    HV = np.zeros(p.d)
    ns["prob_hvp"](x, v, HV, PV, PM, PL, PY, np.zeros(2 * PM.shape[0] + 4))
    np.testing.assert_allclose(HV, p.hvp(x, v), rtol=1e-12, atol=1e-13)
    W = np.zeros(2 * PM.shape[0] + 4)
    GR, HS, SG = np.zeros(p.d), np.zeros(p.d), np.zeros(p.d)
    ns["prob_grad"](x, GR, HS, SG, PV, PM, PL, PY, W, True, True)
    np.testing.assert_allclose(GR, p.grad(x), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(HS, p.hess_diag(x), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(ns["prob_loss"](x, PV, PM, PL, PY, W), p.loss(x), rtol=1e-12)
    if name == "logistic":  # the minibatch HVP of the kernels (for SAM's second evaluation on the same batch)
        idx = np.array([4, 4, 0, 39, 17], dtype=np.int64)
        ns["prob_hvp_idx"](x, v, HV, idx, idx.size, PV, PM, PL, PY, W)
        np.testing.assert_allclose(HV, p.hvp(x, v, idx=idx), rtol=1e-12, atol=1e-13)


_HOST_SHIM = r"""
#include <cmath>
using std::sqrt; using std::exp; using std::log; using std::log1p; using std::fabs; using std::pow;
using std::erf; using std::erfc; using std::atan; using std::tanh; using std::sin; using std::cos;
""" + CUDA_BUILTINS_ON_HOST

_HOST_WRAPPERS = r"""
#define ARR const double *PV, const double *PM, const double *PL, const double *PY
extern "C" void t_hvp(const double *x, const double *v, double *HV, ARR) {
    real W[2 * NEX + 4]; prob_hvp(x, v, HV, PV, PM, PL, PY, W); }
extern "C" void t_grad(const double *x, double *GR, double *HS, double *SG, ARR) {
    real W[2 * NEX + 4]; prob_noise0(SG, PV, PM, PL, PY, W); prob_grad(x, GR, HS, SG, PV, PM, PL, PY, W, true, true); }
extern "C" double t_loss(const double *x, ARR) { real W[2 * NEX + 4]; return prob_loss(x, PV, PM, PL, PY, W); }
"""


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ to build the CUDA fragment as host code")
@pytest.mark.parametrize("name", ["diag", "dense", "custom", "logistic"])
def test_cuda_fragment_executes_on_the_host_and_matches_numpy(name, tmp_path):
    """The CUDA fragment (generated, or logistic's hand-written one) built as host C++ (as in
    tests/test_cuda_host.py) and called through ctypes: its HVP, gradient, Hessian diagonal, noise scale
    and loss agree with the numpy reference."""
    p = _problems()[name]
    nex = p.n if p.minibatch else 1
    src = (_HOST_SHIM + f"#define D {p.d}\n#define NEX {nex}\ntypedef double real;\n" + p.cuda_fragment("double")
           + _HOST_WRAPPERS)
    (tmp_path / "f.cpp").write_text(src)
    r = subprocess.run(["g++", "-O1", "-std=c++17", "-shared", "-fPIC", "-ffp-contract=off", "-o",
                        str(tmp_path / "f.so"), str(tmp_path / "f.cpp")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[:3000]
    lib = ctypes.CDLL(str(tmp_path / "f.so"))
    lib.t_loss.restype = ctypes.c_double
    PV, PM, PL, PY = (np.ascontiguousarray(a, dtype=np.float64) for a in p.kernel_arrays())

    def ptr(a):
        return a.ctypes.data_as(ctypes.POINTER(ctypes.c_double))

    arr = [ptr(PV), ptr(PM), ptr(PL), ptr(PY)]
    x, v = RNG.standard_normal(p.d), RNG.standard_normal(p.d)
    HV, GR, HS, SG = (np.zeros(p.d) for _ in range(4))
    lib.t_hvp(ptr(x), ptr(v), ptr(HV), *arr)
    lib.t_grad(ptr(x), ptr(GR), ptr(HS), ptr(SG), *arr)
    np.testing.assert_allclose(HV, p.hvp(x, v), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(GR, p.grad(x), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(HS, p.hess_diag(x), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(SG, p.noise_scale(x), rtol=1e-12, atol=1e-13)
    assert lib.t_loss(ptr(x), *arr) == pytest.approx(float(p.loss(x)), rel=1e-12)


# -- the parameter pack ----------------------------------------------------------------------------------------

def test_param_layout_offsets_and_fill_by_name():
    lay = ParamLayout((("h", "d"), ("sigma", "d"), ("nu", 1), ("B", 1)))
    assert lay.offset("h") == (0, 0) and lay.offset("sigma") == (1, 0) and lay.offset("nu") == (2, 0)
    assert lay.offset("B") == (2, 1)
    pv = lay.pack(3, {"B": 8, "nu": 4.0, "sigma": [0.1, 0.2, 0.3], "h": [1, 2, 3]})
    np.testing.assert_array_equal(pv[:8], [1, 2, 3, 0.1, 0.2, 0.3, 4.0, 8.0])
    assert "P_B = 2 * d + 1" in lay.numba_offsets("")
    assert "#define P_sigma (D)" in lay.c_defines()
    with pytest.raises(SdederiveError, match="missing"):
        lay.pack(3, {"h": [1, 2, 3]})
    with pytest.raises(SdederiveError, match="needs 3"):
        lay.pack(3, {"B": 8, "nu": 4.0, "sigma": [0.1, 0.2], "h": [1, 2, 3]})
    with pytest.raises(UnknownNameError):
        lay.offset("l2")


def test_student_t_nu_is_a_named_field_read_by_name_in_both_backends():
    p = Quadratic(h=[1.0, 2.0], sigma=[0.5, 0.25], noise="student-t", nu=5, x0=[1, 1])
    assert p.layout().names == ("h", "sigma", "nu")
    PV = p.kernel_arrays()[0]
    a, b = p.layout().offset("nu")
    assert PV[a * p.d + b] == 5.0
    spec = discrete_spec(sd.optimizers.get("sgd"))
    nb = numba_backend.generate(spec, p)
    cu = cuda_backend.generate(spec, p)
    assert "PV[P_nu]" in nb and "PV[P_nu]" in cu and "#define P_nu (2 * D)" in cu
    # no hard-coded positional reads of the pack remain (PV[d + i], PV[2 * d], PV[0], PV[1])
    for text in (nb, cu):
        assert not re.search(r"PV\[(\d|d|D|2 \* [dD])", text), re.findall(r"PV\[[^\]]*\]", text)


def test_logistic_pack_fields_by_name():
    p = LogisticRegression.synthetic(n=16, d=3, B=5, seed=0, l2=0.125)
    assert p.layout().names == ("l2", "B")
    PV = p.kernel_arrays()[0]
    assert PV[p.layout().offset("B")[1]] == 5.0 and PV[p.layout().offset("l2")[1]] == 0.125
    for spec in (discrete_spec(sd.optimizers.get("sgd")),):
        for text in (numba_backend.generate(spec, p), cuda_backend.generate(spec, p)):
            assert "PV[P_B]" in text and "PV[P_l2]" in text
            assert not re.search(r"PV\[(\d|d|D)", text)


# -- one noise alias table ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("alias", ["student-t", "Student_T", "studentt", " t "])
def test_noise_aliases_resolve_through_one_table(alias):
    assert noise_mod.canonical_name(alias) == "student-t"
    assert Quadratic(h=[1.0], sigma=[1.0], noise=alias, nu=3, x0=[1.0]).noise == "student-t"
    assert noise_mod.get(alias, nu=3).name == "student-t"
    assert alias.strip().lower() in noise_mod.aliases("student-t")


def test_noise_unknown_name_is_refused_by_problems_and_noise():
    with pytest.raises(UnknownNameError):
        noise_mod.canonical_name("cauchy")
    with pytest.raises(UnknownNameError):
        Quadratic(h=[1.0], sigma=[1.0], noise="cauchy", x0=[1.0])
    with pytest.raises(UnknownNameError):  # minibatch noise is the logistic problem's own, not a quadratic's
        Quadratic(h=[1.0], sigma=[1.0], noise="minibatch", x0=[1.0])


# -- a new problem kind, one class --------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class SeparableQuartic(Problem):
    """f(x) = sum_i a_i x_i^4 / 4 + b_i x_i^2 / 2, gradient noise sigma_i z_i: the whole kind, described once."""

    a: np.ndarray | None = None
    b: np.ndarray | None = None
    sigma: np.ndarray | None = None

    kind = "separable_quartic"

    def __init__(self, a, b, sigma, x0):
        for k, v in (("x0", x0), ("a", a), ("b", b), ("sigma", sigma)):
            object.__setattr__(self, k, np.asarray(v, float))
        object.__setattr__(self, "noise", "gaussian")
        object.__setattr__(self, "nu", None)

    def code(self) -> ProblemCode:
        a, b, s, i = vec("a"), vec("b"), vec("sigma"), IX
        return ProblemCode(
            grad=Loop(a[i] * X[i] ** 3 + b[i] * X[i]),
            hess_diag=Loop(3 * a[i] * X[i] ** 2 + b[i]),
            hvp=Loop((3 * a[i] * X[i] ** 2 + b[i]) * V[i]),
            loss=sp.Sum(a[i] * X[i] ** 4 / 4 + b[i] * X[i] ** 2 / 2, (i, 0, D - 1)),
            fields=("a", "b", "sigma"),
            noise_scale=Loop(s[i]),
        )

    def fields(self) -> tuple:
        return (("a", "d"), ("b", "d"), ("sigma", "d"))

    def pack_values(self) -> dict:
        return {"a": self.a, "b": self.b, "sigma": self.sigma}


A4, B4, S4, X04 = [0.5, 2.0, 1.0], [1.0, 0.2, 0.0], [0.3, 0.6, 1.0], [1.0, -1.5, 0.8]


def test_new_kind_numpy_reference_is_its_formula():
    p = SeparableQuartic(A4, B4, S4, X04)
    a, b = np.array(A4), np.array(B4)
    x = RNG.standard_normal((5, 3))
    np.testing.assert_allclose(p.loss(x), (a * x**4 / 4 + b * x**2 / 2).sum(-1), rtol=1e-14)
    np.testing.assert_allclose(p.grad(x), a * x**3 + b * x, rtol=1e-14)
    np.testing.assert_allclose(p.hvp(x[0], x[1]), _fd_hvp(p.grad, x[0], x[1]), rtol=1e-6)


def test_new_kind_simulates_with_numba_and_matches_a_numpy_loop():
    """SGD on the new kind through the numba kernel against an independent numpy loop of the same update
    x <- x - eta (a x^3 + b x + sigma z): the means of x and of the loss agree within their Monte Carlo error."""
    p = SeparableQuartic(A4, B4, S4, X04)
    eta, steps, paths = 0.05, 40, 4000
    res = sd.compile("sgd", p).run(paths=paths, steps=steps, eta=eta, seed=3, save_every=steps)
    a, b, s = np.array(A4), np.array(B4), np.array(S4)
    rng = np.random.default_rng(123)
    x = np.tile(np.array(X04), (paths, 1))
    for _ in range(steps):
        x = x - eta * (a * x**3 + b * x + s * rng.standard_normal(x.shape))
    loss = (a * x**4 / 4 + b * x**2 / 2).sum(-1)
    # snapshot 0 is the deterministic start: the kernel's own prob_loss at x0
    assert res.mean["loss"][0] == pytest.approx(float((a * np.array(X04) ** 4 / 4 + b * np.array(X04) ** 2 / 2).sum()),
                                                rel=1e-14)
    # two independent ensembles: the difference of the means has std sqrt(se_kernel^2 + se_numpy^2); 5 of them
    se_x = np.sqrt(res.var["x"][-1] / paths + x.var(0, ddof=1) / paths)
    assert np.all(np.abs(res.mean["x"][-1] - x.mean(0)) < 5 * se_x), (res.mean["x"][-1], x.mean(0), se_x)
    se_l = np.sqrt(res.var["loss"][-1] / paths + loss.var(ddof=1) / paths)
    assert abs(res.mean["loss"][-1] - loss.mean()) < 5 * se_l
    # and the run moved: the noise-free x would be far from x0 after 40 steps (not a vacuous comparison)
    assert np.abs(res.mean["x"][-1] - np.array(X04)).max() > 0.3


def test_new_kind_sde_kernel_and_cuda_source():
    """The SGD SDE on the new kind (Euler-Maruyama with the Hessian diagonal for its order-1 drift uses
    only grad; the spec reads grad and sigma) runs on numba, and its CUDA source compiles where NVRTC is."""
    p = SeparableQuartic(A4, B4, S4, X04)
    sde = sd.derive("sgd")
    res = sd.compile(sde, p).run(paths=2000, steps=40, eta=0.05, seed=5, save_every=40)
    a, b, s = np.array(A4), np.array(B4), np.array(S4)
    rng = np.random.default_rng(9)
    x = np.tile(np.array(X04), (2000, 1))
    eta = 0.05
    for _ in range(40):  # Euler-Maruyama of dX = -grad dt + sqrt(eta) sigma dW with dt = eta
        x = x - eta * (a * x**3 + b * x) + np.sqrt(eta) * s * np.sqrt(eta) * rng.standard_normal(x.shape)
    se = np.sqrt(res.var["x"][-1] / 2000 + x.var(0, ddof=1) / 2000)
    assert np.all(np.abs(res.mean["x"][-1] - x.mean(0)) < 5 * se)
    src = cuda_backend.generate(sde_spec(sde, p, correlated=False), p)
    assert "prob_noise0(SG, PV, PM, PL, PY, W);" in src and "#define P_sigma (2 * D)" in src
    if cuda_backend.nvrtc_available():
        assert cuda_backend.compile_check(src)["cubin_bytes"] > 0


def test_hessian_coupling_is_read_from_the_description():
    """The order-2 SDE's per-coordinate correction needs a diagonal Hessian; a new kind's description says
    whether it has one (its HVP reads only v[i]) without the simulator knowing the kind."""
    assert SeparableQuartic(A4, B4, S4, X04).hessian_coupling() is None

    @dataclass(frozen=True, eq=False)
    class Coupled(SeparableQuartic):
        kind = "coupled_quartic"

        def code(self) -> ProblemCode:
            c = super().code()
            # the HVP of f + (sum_i x_i)^2 / 2 adds sum_j v_j to every coordinate
            return ProblemCode(grad=c.grad, hess_diag=c.hess_diag, hvp=Loop(c.hvp.expr + dsum(V[JX])), loss=c.loss,
                               fields=c.fields, noise_scale=c.noise_scale)

    assert "mixes coordinates" in Coupled(A4, B4, S4, X04).hessian_coupling()
    assert Custom("x_0*x_1", sigma=[1, 1], x0=[1, 1]).hessian_coupling()
    assert Quadratic(h=[1.0, 2.0], sigma=1.0, x0=[1, 1]).hessian_coupling() is None


def test_logistic_reference_is_its_description_and_matches_the_closed_forms():
    """Logistic regression is generated from one description like the other kinds (its fragment is the
    description printed); its numpy reference, evaluated from that description, agrees with the closed forms
    written here in numpy: loss log(1 + e^{-y a.x}), gradient, Hessian diagonal, HVP (full and on a minibatch
    with repeats), the minibatch noise's std and the per-example gradients."""
    p = LogisticRegression.synthetic(n=37, d=6, B=3, seed=8, l2=0.03)
    assert p.numba_fragment() == p.code().numba(p.layout())
    assert "prob_mb_accum" in p.numba_fragment() and "prob_mb_accum" in p.cuda_fragment("double")
    A, y, l2 = p.A, p.y, p.l2
    for _ in range(3):
        x, v = RNG.standard_normal(6), RNG.standard_normal(6)
        m = A @ x * y
        s = 1 / (1 + np.exp(m))
        G = -(y * s)[:, None] * A + l2 * x
        np.testing.assert_allclose(p.loss(x), np.mean(np.logaddexp(0, -m)) + 0.5 * l2 * x @ x, rtol=1e-13)
        np.testing.assert_allclose(p.grad(x), G.mean(0), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(p.hess_diag(x), ((s * (1 - s))[:, None] * A * A).mean(0) + l2, rtol=1e-12)
        np.testing.assert_allclose(p.hvp(x, v), ((s * (1 - s) * (A @ v))[:, None] * A).mean(0) + l2 * v,
                                   rtol=1e-11, atol=1e-14)
        idx = np.array([5, 5, 0, 36])
        w = s[idx] * (1 - s[idx]) * (A[idx] @ v)
        np.testing.assert_allclose(p.hvp(x, v, idx=idx), (w[:, None] * A[idx]).mean(0) + l2 * v, rtol=1e-11,
                                   atol=1e-14)
        np.testing.assert_allclose(p.noise_scale(x), np.sqrt(np.mean((G - G.mean(0)) ** 2, axis=0) / p.B),
                                   rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(p.per_example_grads(x), G, rtol=1e-12, atol=1e-15)
    X2 = RNG.standard_normal((5, 6))  # batched points
    np.testing.assert_allclose(p.grad(X2)[3], p.grad(X2[3]), rtol=1e-13)
    np.testing.assert_allclose(p.loss(X2)[1], p.loss(X2[1]), rtol=1e-13)


def test_logistic_kernel_minibatch_gradient_matches_numpy():
    """The generated prob_mb_accum / prob_mb_finish give the minibatch gradient (repeats counted as drawn)."""
    p = LogisticRegression.synthetic(n=30, d=4, B=4, seed=2, l2=0.05)
    src = "import math\nimport numpy as np\nfrom numba import njit\nHELPER = njit\n" + p.numba_fragment()
    ns: dict = {}
    exec(compile(src, "<fragment logistic>", "exec"), ns)  # noqa: S102 - our own generated source
    PV, PM, PL, PY = p.kernel_arrays()
    x = RNG.standard_normal(4)
    idx = [7, 7, 29, 0, 12]
    G = np.zeros(4)
    W = np.zeros(2 * p.n + 4)
    for j in idx:
        ns["prob_mb_accum"](x, G, j, PV, PM, PL, PY, W)
    ns["prob_mb_finish"](x, G, len(idx), PV, PM, PL, PY, W)
    np.testing.assert_allclose(G, p.per_example_grads(x)[idx].mean(0), rtol=1e-12, atol=1e-15)

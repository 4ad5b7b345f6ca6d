"""Philox4x32-10 and the in-kernel Gaussian/Student-t generators: known answers, the C twin bit for bit,
distributions."""

from __future__ import annotations

import ctypes
import re
import shutil
import os
import subprocess
import sys

import numpy as np
import pytest
from numba import njit
from scipy import stats

from sdederive.simulate.rng import philox as rng
from sdederive.simulate.rng.philox_c import CUDA_SOURCE
from tests.helpers import CUDA_BUILTINS_ON_HOST

# Random123 tests/kat_vectors (philox4x32 10): counter, key -> expected
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@njit
def _philox(c0, c1, c2, c3, k0, k1):
    return rng.philox4x32(c0, c1, c2, c3, k0, k1)


@njit
def _normals(n, step, path, k0, k1):
    out = np.empty(4 * n)
    for j in range(n):
        z0, z1, z2, z3 = rng.normal_pair(step, j, path, 0, k0, k1)
        out[4 * j], out[4 * j + 1], out[4 * j + 2], out[4 * j + 3] = z0, z1, z2, z3
    return out


@njit
def _students(nu, n, k0, k1):
    out = np.empty(n)
    for i in range(n):
        out[i] = rng.student_t(nu, 7, i, 3, k0, k1)
    return out


@njit
def _parts(a):
    o1, o2, o3 = np.empty(a.size), np.empty(a.size), np.empty(a.size)
    for i in range(a.size):
        o1[i] = rng.neg2log_u01(a[i])
        s, c = rng.sincos_2pi_u01(a[i])
        o2[i], o3[i] = s, c
    return o1, o2, o3


@pytest.mark.parametrize("ctr,key,want", KAT)
def test_philox_known_answers(ctr, key, want):
    assert tuple(int(v) for v in _philox(*ctr, *key)) == want


def test_log_and_sincos_accuracy():
    a = np.arange(0, 2**32, 65537, dtype=np.uint64).astype(np.uint32)
    a = np.concatenate([a, np.array([0, 1, 2, 2**31, 2**32 - 1], dtype=np.uint32)])
    u = (a.astype(np.float64) + 0.5) * 2.0**-32
    l2, s, c = _parts(a)
    ref = -2 * np.log(u)
    assert np.max(np.abs(l2 - ref) / ref) < 4e-16
    # compare with sin/cos of the exactly reduced angle (2*pi*u itself rounds)
    assert np.max(np.abs(s - np.sin(2 * np.pi * u))) < 2e-15
    assert np.max(np.abs(c - np.cos(2 * np.pi * u))) < 2e-15


def test_gaussian_distribution():
    z = _normals(250_000, 5, 11, 1234, 99)
    assert abs(z.mean()) < 5 * 1 / np.sqrt(z.size)
    assert abs(z.var() - 1) < 5 * np.sqrt(2 / z.size)
    assert stats.kstest(z, "norm").pvalue > 1e-3
    # consecutive draws are uncorrelated
    assert abs(np.corrcoef(z[:-1], z[1:])[0, 1]) < 5 / np.sqrt(z.size)


def test_gaussian_stream_depends_on_every_counter_word():
    base = _normals(4, 1, 2, 3, 4)
    for args in ((4, 9, 2, 3, 4), (4, 1, 9, 3, 4), (4, 1, 2, 9, 4), (4, 1, 2, 3, 9)):
        assert not np.array_equal(base, _normals(*args))
    np.testing.assert_array_equal(base, _normals(4, 1, 2, 3, 4))



def test_fill_normals_is_normal_pair_block_by_block():
    """The vector kernels' row filler gives the blocks of `normal_pair` in order, in its row only, for any stream."""
    Z = np.full((3, 4 * 6 + 2), -7.0)
    for stream in (0, 1000 + 3):
        rng.fill_normals(Z, 1, 6, 17, 5, stream, 42, 7)
        want = [rng.normal_pair(17, j, 5, stream, 42, 7) for j in range(6)]
        np.testing.assert_array_equal(Z[1, :24], np.ravel(want))
    assert (Z[0] == -7.0).all() and (Z[2] == -7.0).all() and (Z[1, 24:] == -7.0).all()

def _fresh_filler(width: int):
    """A new, uncached dispatcher of `fill_normals`' code, compiled with `width` lanes (`wide_loops`)."""
    from sdederive.simulate.rng.vector_width import wide_loops

    return wide_loops(width)(njit(cache=False, nogil=True, error_model="numpy")(rng.fill_normals.py_func))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_wide_filler_same_bits_and_wider_registers(dtype):
    """The filler compiled 8 lanes wide (`vector_width`) writes the same bits as LLVM's own choice and as
    `normal_pair` block by block, for rows of 25 blocks (d = 100: 3 vector iterations and a remainder) and 3
    (remainder only); on an AVX-512 host its machine code uses 512-bit registers, elsewhere it is left alone."""
    from sdederive.simulate.rng.vector_width import forced_vector_width, host_width

    wide = _fresh_filler(8)
    plain = njit(cache=False, nogil=True, error_model="numpy")(rng.fill_normals.py_func)
    with forced_vector_width(0):
        plain.compile(f"({dtype}[:, ::1], int64, int64, int64, int64, int64, int64, int64)")
    for nb in (25, 3):
        A = np.zeros((2, 4 * nb), dtype)
        B = np.zeros((2, 4 * nb), dtype)
        wide(A, 1, nb, 9, 4, 2, 42, 7)
        plain(B, 1, nb, 9, 4, 2, 42, 7)
        want = np.ravel([rng.normal_pair(9, j, 4, 2, 42, 7) for j in range(nb)]).astype(dtype)
        np.testing.assert_array_equal(A, B)
        np.testing.assert_array_equal(A[1], want)
    asm = "".join(wide.inspect_asm().values())
    if host_width(8):  # packed float64 arithmetic on 512-bit registers (LLVM's own choice has none on the Intel
        # Xeons, where it prefers 256 bits; on an AMD Zen 4 it picks 512 bits itself, and the width changes nothing)
        assert re.search(r"v(mul|add|sub)pd\s.*zmm", asm)
    else:
        assert wide.compile.__qualname__ == plain.compile.__qualname__  # not wrapped


def test_wide_filler_covers_compiles_from_jitted_callers():
    """A compile that a jitted caller triggers (the kernels' case: a new signature typed inside the kernel) goes
    through the wrapper too, and LLVM's option is reset afterwards: a loop compiled later vectorises as before."""
    from sdederive.simulate.rng.vector_width import forced_vector_width, host_width

    def axpy(y, x, a):
        for i in range(y.size):
            y[i] += a * x[i]

    sig = "(float64[::1], float64[::1], float64)"
    before = njit(cache=False)(axpy)
    before.compile(sig)
    wide = _fresh_filler(8)

    @njit(cache=False)
    def caller(Z):
        wide(Z, np.int64(0), np.int64(25), np.int64(1), np.int64(2), np.int64(3), np.int64(4), np.int64(5))

    caller(np.zeros((1, 100)))
    (lib,) = [c.library for c in wide.overloads.values()]
    packed = re.compile(r"v(mul|add|sub)pd\s.*zmm")  # float64 arithmetic on 512-bit registers
    assert bool(packed.search(lib.get_asm_str())) == bool(host_width(8))
    after = njit(cache=False)(axpy)
    after.compile(sig)
    # LLVM's choice again (256 bits on the Intel Xeons; 512 on a Zen 4, which prefers them itself)
    assert bool(packed.search("".join(after.inspect_asm().values()))) == bool(
        packed.search("".join(before.inspect_asm().values())))
    with pytest.raises(ValueError, match="power of two"):
        with forced_vector_width(12):  # LLVM would abort the process on it
            pass


@pytest.mark.parametrize("nu", [1.0, 2.5, 5.0])
def test_student_t_distribution(nu):
    t = _students(nu, 100_000, 5, 6)
    assert stats.kstest(t, stats.t(nu).cdf).pvalue > 1e-3


def _host_lib(tmp_path, device_branch: bool = False, contract: bool = False):
    """The CUDA RNG built as host C: its host branch, or its device branch (``__dmul_rn`` as on the
    device); without FMA contraction, or with it wherever it is allowed (``-mfma -ffp-contract=fast``,
    like NVRTC's default ``--fmad=true``)."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("no C compiler on this machine to build the CUDA RNG as host code")
    tag = f"{'device' if device_branch else 'host'}_{'fma' if contract else 'nofma'}"
    src = tmp_path / f"rng_{tag}.c"
    src.write_text("#include <math.h>\n" + (CUDA_BUILTINS_ON_HOST if device_branch else "") + CUDA_SOURCE + r"""
void philox_out(unsigned int *c, unsigned int k0, unsigned int k1) { sd_philox4x32(c, k0, k1); }
void normals_out(int n, unsigned int step, unsigned int path, unsigned int k0, unsigned int k1, double *out) {
    for (int j = 0; j < n; ++j) sd_normal4(step, (unsigned int)j, path, 0u, k0, k1, out + 4 * j);
}
void students_out(int n, double nu, unsigned int step, unsigned int path, unsigned int k0, unsigned int k1,
                  double *out) {
    for (int i = 0; i < n; ++i) out[i] = sd_student_t(nu, step, (unsigned int)i, path, k0, k1);
}
""")
    lib = tmp_path / f"librng_{tag}.so"
    flags = ["-O2", "-mfma", "-ffp-contract=fast"] if contract else ["-O2", "-ffp-contract=off"]
    subprocess.run([gcc, *flags, "-shared", "-fPIC", "-o", str(lib), str(src), "-lm"], check=True)
    return ctypes.CDLL(str(lib))


def _host_normals(lib, n: int) -> np.ndarray:
    out = np.empty(4 * n)
    lib.normals_out(n, 17, 5, 42, 7, out.ctypes.data_as(ctypes.POINTER(ctypes.c_double)))
    return out


def _has_fma() -> bool:
    try:
        return " fma " in open("/proc/cpuinfo").read().replace("\n", " ")
    except OSError:
        return False


@pytest.mark.skipif(not _has_fma(), reason="the CPU has no FMA unit to contract with")
def test_device_branch_is_bit_identical_under_fma_contraction(tmp_path):
    """Every product of the Gaussian path that feeds an addition goes through SD_MUL (__dmul_rn on
    the device), so contracting all the others into FMAs, as NVRTC does by default, changes no bit.
    The host branch under the same flags is the control: there the polynomials do contract, so the
    check can fail."""
    n = 50_000
    ref = _normals(n, 17, 5, 42, 7)
    out = _host_normals(_host_lib(tmp_path, device_branch=True, contract=True), n)
    np.testing.assert_array_equal(out.view(np.uint64), ref.view(np.uint64))
    ctl = _host_normals(_host_lib(tmp_path, device_branch=False, contract=True), n)
    assert np.any(ctl.view(np.uint64) != ref.view(np.uint64))
    np.testing.assert_allclose(ctl, ref, rtol=1e-12, atol=1e-14)


def test_c_twin_matches_numba_bit_for_bit(tmp_path):
    """The CUDA source compiled as host C gives the same integers and the same double bits."""
    lib = _host_lib(tmp_path)
    for ctr, key, want in KAT:
        c = (ctypes.c_uint * 4)(*ctr)
        lib.philox_out(c, key[0], key[1])
        assert tuple(c) == want
    n = 50_000
    out = _host_normals(lib, n)
    ref = _normals(n, 17, 5, 42, 7)
    np.testing.assert_array_equal(out.view(np.uint64), ref.view(np.uint64))


@pytest.mark.parametrize("device_branch,contract", [(False, False), (True, False), (True, True)])
def test_student_t_c_twin_bit_for_bit(tmp_path, device_branch, contract):
    """`sd_student_t` (its log and exp polynomials, the integer acceptance test, two attempts a Philox block) gives
    the numba filler's bits: host branch, device branch, and device branch under FMA contraction (NVRTC's
    default), for a heavy tail (nu = 0.6, W^(-2/nu) up to 1e64), nu = 3 and a near-Gaussian nu = 200."""
    if contract and not _has_fma():
        pytest.skip("the CPU has no FMA unit to contract with")
    lib = _host_lib(tmp_path, device_branch=device_branch, contract=contract)
    n = 20_000
    for nu in (0.6, 3.0, 200.0):
        out = np.empty(n)
        lib.students_out(n, ctypes.c_double(nu), 7, 3, 5, 6, out.ctypes.data_as(ctypes.POINTER(ctypes.c_double)))
        Z = np.empty(n)
        rng.fill_student_t(Z, n, nu, 7, 3, 5, 6)
        np.testing.assert_array_equal(out.view(np.uint64), Z.view(np.uint64))


def test_student_t_filler_is_the_scalar_variate_and_vectorises():
    """`fill_student_t` (the first Philox block of every coordinate in one vectorised loop, then the rejected
    coordinates one by one) gives `student_t` coordinate by coordinate, rejected ones included (about 4.6 % need a
    second block); on an AVX-512 host its first loop runs on 512-bit registers."""
    from sdederive.simulate.rng.vector_width import host_width

    n = 5000
    Z = np.empty(n)
    rng.fill_student_t(Z, n, 2.5, 7, 3, 5, 6)
    np.testing.assert_array_equal(Z, _students(2.5, n, 5, 6))
    second = [i for i in range(n) if not rng.student_t_block(2.5, *rng.philox4x32(7, i, 3, 0x10000, 5, 6))[0]]
    assert 0.02 * n < len(second) < 0.08 * n  # (1 - pi/4)^2 = 4.6 %: the fallback is exercised
    fresh = njit(cache=False, nogil=True, error_model="numpy")(rng._student_t_first_blocks.py_func)
    if host_width(8):
        from sdederive.simulate.rng.vector_width import wide_loops

        fresh = wide_loops(8)(fresh)
    fresh(np.empty(8), 8, 2.5, 0, 0, 1, 2)
    asm = "".join(fresh.inspect_asm().values())
    if host_width(8):
        assert re.search(r"v(mul|add|sub|div)pd\s.*zmm", asm)


@njit
def _exp_log(x, f, k, ox, of):
    for i in range(x.size):
        ox[i] = rng.exp_nonneg(x[i])
    for i in range(f.size):
        of[i] = rng.log_core(f[i], k[i])


def test_exp_and_log_polynomials_within_one_ulp():
    """`exp_nonneg` and `log_core`, the Student-t's libm-free exp and log, against numpy within 1 ulp, over their
    whole ranges (exp up to its overflow to inf, log of `f 2^k` for the exponents the t filler makes)."""
    r = np.random.default_rng(0)
    x = np.concatenate([r.uniform(0, 709.78, 100_000), r.uniform(0, 1, 50_000), 10.0 ** r.uniform(-300, 0, 1000),
                        [0.0, 709.78, 709.79, 1e4, np.inf]])
    f = np.concatenate([r.uniform(0.5, 1.0, 100_000), [0.5, 1.0, np.sqrt(0.5), np.nextafter(np.sqrt(0.5), 1)]])
    k = -r.integers(0, 64, f.size).astype(float)
    ox, of = np.empty_like(x), np.empty_like(f)
    with np.errstate(over="ignore"):
        _exp_log(x, f, k, ox, of)
        want = np.exp(x)
    fin = np.isfinite(want)
    assert np.all(np.isinf(ox[~fin])) and np.all(np.isfinite(ox[fin]))
    assert np.max(np.abs(ox[fin] - want[fin]) / np.spacing(want[fin])) <= 1.0
    lw = np.log(f * 2.0 ** k)
    nz = lw != 0
    assert np.max(np.abs(of[nz] - lw[nz]) / np.spacing(np.abs(lw[nz]))) <= 1.0
    assert np.all(of[~nz] == 0)


def test_student_t_filler_compiles_without_llvm_remarks(tmp_path):
    """Compiled on a fresh cache (a user's first run), the filler prints nothing.  With its vectorised pass and its
    rejection loop in one function compiled at a forced vector width, LLVM printed `remark: ... loop not
    vectorized: Cannot vectorize uncountable loop` to stderr (checked: that form fails this test)."""
    code = ("import numpy as np; from sdederive.simulate.rng.philox import fill_student_t as f; "
            "z = np.empty(10); f(z, 10, 3.0, 1, 2, 3, 4); print(np.isfinite(z).all())")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "True" and "remark" not in out.stderr, out.stderr

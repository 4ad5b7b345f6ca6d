r"""Counter-based random numbers for the generated kernels: Philox4x32-10 and a Box–Muller
transform that vectorises.

Generated numba kernels import this module.  Every kernel, scalar and vector, fills its rows of
Gaussians with the block filler `fill_normals`, whose loop over `normal_pair` (`inline="always"`:
numba inlines at IR level, so the Philox rounds and the polynomials vectorise across coordinate
blocks) is compiled once.  Inlining `normal_pair` into each kernel instead costs numba's IR inlining
per kernel: 0.9 s of a scalar kernel's cold compile, half of a vector kernel's.  (An earlier Xeon
measurement found a called filler 15 to 35 % slower in the scalar kernels; on the AMD EPYC of
2026-12-03 the called row filler ran the reference RMSprop SDE at 3.0e8 coordinate-steps/s against
2.9e8 inlined, and the discrete RMSprop at 3.0e8 against 2.7e8.)
The rare paths call two more block fillers, `fill_student_t` and `draw_indices`.  The fillers are
compiled once per machine and kept in numba's on-disk cache (`cache=True`), so no kernel pays for
compiling them.  numba's cache of a kernel only tracks
the kernel's own file, so the generated module carries the SHA-256 of this file
(`SOURCE_HASH`): editing it gives every kernel a new content hash, and no kernel keeps
stale random-number code in its cached machine code.  The CUDA twin is `CUDA_SOURCE` in
`sdederive.simulate.rng.philox_c`; both are tested against each other bit for bit.

Streams.  One Philox call maps a counter `(c0, c1, c2, c3)` and a key `(k0, k1)` to four
uint32.  The kernels use `c0 = step, c1 = block of four coordinates, c2 = path, c3 = stream`
and `key = (seed mod 2^32, seed >> 32)`, so any (seed, path, step, coordinate) is addressed
directly: the numbers do not depend on the number of threads, on scheduling, or on the backend.

Gaussians.  `u = (a + 1/2) 2^{-32}` (open interval, exact in double) and Box–Muller
$z_0 = \sqrt{-2\ln u_1}\cos 2\pi u_2,\ z_1 = \sqrt{-2\ln u_1}\sin 2\pi u_2$.  The tails are cut
at $\sqrt{-2\ln 2^{-33}} \approx 6.76$ (probability `1.4e-11` per draw), as in cuRAND's
single-precision path.

Why our own `log` and `sincos` (and not `math.log`/`math.sin`)?  Two reasons, both
measured: (1) libm calls are opaque to LLVM's loop vectoriser (numba has no SVML without Intel's
runtime), so a Box–Muller over `math.*` runs at ~6e7 normals/s on two cores, while the
polynomial version below vectorises and reaches ~5e8/s; (2) CUDA's `log`/`sin`/`cos` are not
correctly rounded and differ from glibc in the last bits, while the same polynomials evaluated
with IEEE `+ - * /` (no FMA contraction) give the same bits on CPU and GPU.  The polynomials are
fdlibm's (`e_log.c`, `k_sin.c`, `k_cos.c`; error below 1 ulp on their reduced ranges), and the
argument reduction is exact here because the inputs are integers: `ln u` takes its binary
exponent from a count of leading zeros, and `2 pi u` its quadrant from the top two bits.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
from numba import njit, types
from numba.cpython.unsafe.numbers import leading_zeros  # LLVM ctlz; vectorises (vplzcnt)
from numba.cpython.unsafe.numbers import viewer  # a bit cast (2^k from its exponent bits)

from sdederive.simulate.rng.vector_width import wide_loops

__all__ = ["philox4x32", "neg2log_u01", "log_core", "exp_nonneg", "sincos_2pi_u01", "normal_pair",
           "student_t", "student_t_block",
           "fill_normals", "fill_student_t", "draw_indices", "chi_square", "CHI2_STREAM", "SOURCE_HASH"]

#: SHA-256 of this file and `vector_width.py` (how the filler is compiled): part of every generated numba module,
#: so editing either invalidates their caches.
SOURCE_HASH = hashlib.sha256(Path(__file__).read_bytes()
                             + (Path(__file__).parent / "vector_width.py").read_bytes()).hexdigest()

_M0 = np.uint64(0xD2511F53)
_M1 = np.uint64(0xCD9E8D57)
_W0 = np.uint32(0x9E3779B9)
_W1 = np.uint32(0xBB67AE85)
_LO32 = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)

# fdlibm e_log.c
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_LG1 = 6.666666666666735130e-01
_LG2 = 3.999999999940941908e-01
_LG3 = 2.857142874366239149e-01
_LG4 = 2.222219843214978396e-01
_LG5 = 1.818357216161805012e-01
_LG6 = 1.531383769920937332e-01
_LG7 = 1.479819860511658591e-01
# fdlibm k_sin.c / k_cos.c
_S1 = -1.66666666666666324348e-01
_S2 = 8.33333333332248946124e-03
_S3 = -1.98412698298579493134e-04
_S4 = 2.75573137070700676789e-06
_S5 = -2.50507602534068634195e-08
_S6 = 1.58969099521155010221e-10
_C1 = 4.16666666666666019037e-02
_C2 = -1.38888888888741095749e-03
_C3 = 2.48015872894767294178e-05
_C4 = -2.75573143513906633035e-07
_C5 = 2.08757232129817482790e-09
_C6 = -1.13596475577881948265e-11
# fdlibm e_exp.c
_EXP_OVER = 7.09782712893383973096e+02  # log(DBL_MAX): above, e^x overflows
_INVLN2 = 1.44269504088896338700e+00
_P1 = 1.66666666666666019037e-01
_P2 = -2.77777777770155933842e-03
_P3 = 6.61375632143793436117e-05
_P4 = -1.65339022054652515390e-06
_P5 = 4.13813679705723846039e-08
_PIO2 = 1.5707963267948966
_SQRT1_2 = 0.7071067811865476
_TWO_M64 = 5.421010862427522e-20  # 2**-64
_TWO_M32 = 2.3283064365386963e-10  # 2**-32
_TWO_M30 = 9.313225746154785e-10  # 2**-30
#: `chi_square`'s counter word c3 is `CHI2_STREAM + stream` (2**30 + stream): apart from every Gaussian, index and
#: Student-t stream the kernels use (all below 2**17)
CHI2_STREAM = 1 << 30
#: the loop vectoriser's width for `fill_normals` on AVX-512 hosts (`vector_width`: 8 lanes ran the kernels' rows
#: of d = 100 normals 1.3x faster than LLVM's 4 in float64, 16 lanes no faster); here, so that a change of it
#: invalidates numba's cache of the filler and `SOURCE_HASH`
FILLER_WIDTH = 8


@njit(inline="always", cache=False)
def philox4x32(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 (Salmon et al., SC'11; Random123 `philox.h`) on uint32 words."""
    c0 = np.uint32(c0)
    c1 = np.uint32(c1)
    c2 = np.uint32(c2)
    c3 = np.uint32(c3)
    k0 = np.uint32(k0)
    k1 = np.uint32(k1)
    for _ in range(10):
        p0 = np.uint64(c0) * _M0
        p1 = np.uint64(c2) * _M1
        c0, c1, c2, c3 = (np.uint32(p1 >> _S32) ^ c1 ^ k0, np.uint32(p1 & _LO32),
                          np.uint32(p0 >> _S32) ^ c3 ^ k1, np.uint32(p0 & _LO32))
        k0 = np.uint32(k0 + _W0)
        k1 = np.uint32(k1 + _W1)
    return c0, c1, c2, c3


@njit(inline="always", cache=False)
def neg2log_u01(a):
    """$-2\\ln u$ for `u = (a + 1/2) 2^{-32}` (fdlibm `log`; exponent from ctlz)."""
    y = np.uint64(a) * np.uint64(2) + np.uint64(1)  # u = y 2^-33, y odd
    n = leading_zeros(y)
    f = np.float64(y << np.uint64(n)) * _TWO_M64  # in [1/2, 1), exact (y has <= 33 bits)
    k = 31.0 - np.float64(n)  # u = f 2^k
    return -2.0 * log_core(f, k)


@njit(inline="always", cache=False)
def log_core(f, k):
    """$\\ln(f\\,2^k)$ for `f` in `[1/2, 1]` and an integer `k` (fdlibm `e_log.c` after its reduction: `f` moved to
    `[sqrt(1/2), sqrt(2))`, `s = (f - 1)/(f + 1)` and the polynomial in `s^2`; error below 1 ulp)."""
    low = f < _SQRT1_2
    f = f * 2.0 if low else f
    k = k - 1.0 if low else k
    fm = f - 1.0
    s = fm / (2.0 + fm)
    z = s * s
    w = z * z
    t1 = w * (_LG2 + w * (_LG4 + w * _LG6))
    t2 = z * (_LG1 + w * (_LG3 + w * (_LG5 + w * _LG7)))
    hfsq = 0.5 * fm * fm
    return k * _LN2_HI - ((hfsq - (s * (hfsq + (t2 + t1)) + k * _LN2_LO)) - fm)


@njit(inline="always", cache=False)
def exp_nonneg(x):
    """$e^x$ for `x >= 0` (fdlibm `e_exp.c`: `x = k ln 2 + r`, `|r| <= ln 2/2`, the rational form
    `1 + 2r/(2 - c)` with `c` a degree-5 polynomial in `r^2`, then `2^k` made from its bits; error below 1 ulp;
    `inf` above `log(DBL_MAX)`).  IEEE operations and bit moves only, so the loops that call it vectorise and the C
    twin `sd_exp_nonneg` gives the same bits."""
    big = x > _EXP_OVER
    xs = 0.0 if big else x
    kf = math.floor(xs * _INVLN2 + 0.5)
    hi = xs - kf * _LN2_HI
    lo = kf * _LN2_LO
    r = hi - lo
    t = r * r
    c = r - t * (_P1 + t * (_P2 + t * (_P3 + t * (_P4 + t * _P5))))
    y = 1.0 - ((lo - (r * c) / (2.0 - c)) - hi)
    # 2^(k-1) from its exponent bits (k <= 1024), then * 2: exact, and k = 1024 stays representable
    half = viewer(np.uint64(np.int64(kf) + 1022) << np.uint64(52), types.float64)
    out = (y * half) * 2.0
    return math.inf if big else out


@njit(inline="always", cache=False)
def _polar_square(a, b):
    """`(p, N, accepted)` of one polar attempt from the words `a`, `b`: `U = p 2^-32`, `V = q 2^-32` with the odd
    integers `p = 2a + 1 - 2^32`, `q = 2b + 1 - 2^32` (the values of `2 u01 - 1`, exact), and
    `W = U^2 + V^2 = N 2^-64`, `N = p^2 + q^2`; accepted (`W < 1`) when `N` does not overflow 64 bits: the test is
    exact, in integers."""
    p = np.int64(a) * 2 + 1 - 4294967296
    q = np.int64(b) * 2 + 1 - 4294967296
    ap = np.uint64(p if p >= 0 else -p)
    aq = np.uint64(q if q >= 0 else -q)
    pp = ap * ap  # < 2^64: |p| < 2^32
    nn = pp + aq * aq  # wraps when p^2 + q^2 >= 2^64
    return p, nn, nn >= pp


@njit(inline="always", cache=False)
def student_t_block(nu, a, b, c, d):
    """`(accepted, T)`: Bailey's polar method on one Philox block, its words `(a, b)` first and `(c, d)` if that
    attempt is rejected (both rejected: probability `(1 - pi/4)^2`, 4.6 %).  `T = U sqrt(nu (W^(-2/nu) - 1)/W)`
    with `ln W` from the integer `N`'s leading zeros (`log_core`) and `W^(-2/nu) = exp_nonneg(-(2/nu) ln W)`: no
    libm call and no branch, so the loop of `fill_student_t` vectorises."""
    p1, n1, ok1 = _polar_square(a, b)
    p2, n2, ok2 = _polar_square(c, d)
    ok = ok1 or ok2
    p = p1 if ok1 else p2
    ns = n1 if ok1 else (n2 if ok2 else np.uint64(2))
    lz = leading_zeros(ns)
    f = np.float64(ns << np.uint64(lz)) * _TWO_M64  # in [1/2, 1]: W = f 2^-lz
    lnw = log_core(f, -np.float64(lz))
    w = np.float64(ns) * _TWO_M64
    e = exp_nonneg((-2.0 / nu) * lnw)
    return ok, (np.float64(p) * _TWO_M32) * math.sqrt(nu * (e - 1.0) / w)


@njit(inline="always", cache=False)
def sincos_2pi_u01(b):
    """$(\\sin 2\\pi u, \\cos 2\\pi u)$ for `u = (b + 1/2) 2^{-32}`: exact quadrant reduction,
    fdlibm kernels on `[-pi/4, pi/4]`."""
    q = (np.uint64(b) + np.uint64(1 << 29)) >> np.uint64(30)  # nearest multiple of pi/2: 0..4
    r = (np.float64(b) + 0.5 - np.float64(q) * 1073741824.0) * _TWO_M30  # in [-1/2, 1/2], exact
    x = r * _PIO2
    z = x * x
    sn = x + (z * x) * (_S1 + z * (_S2 + z * (_S3 + z * (_S4 + z * (_S5 + z * _S6)))))
    cs = 1.0 - 0.5 * z + (z * z) * (_C1 + z * (_C2 + z * (_C3 + z * (_C4 + z * (_C5 + z * _C6)))))
    odd = (q & np.uint64(1)) != np.uint64(0)
    s0 = cs if odd else sn
    c0 = sn if odd else cs
    s0 = -s0 if (q & np.uint64(2)) != np.uint64(0) else s0
    c0 = -c0 if ((q + np.uint64(1)) & np.uint64(2)) != np.uint64(0) else c0
    return s0, c0


@njit(inline="always", cache=False)
def normal_pair(c0, c1, c2, c3, k0, k1):
    """Four standard normals from one Philox block: Box–Muller on the word pairs `(a, b)` and
    `(c, d)`.  The two pairs go through one loop so that numba inlines `neg2log_u01` and
    `sincos_2pi_u01` once, not twice: numba's IR inliner deep-copies and re-runs its untyped
    passes on the callee per call site, and this function is inlined into every generated kernel
    (nested call sites cost about 1.5 s of each kernel's cold compile, the loop about 0.5 s)."""
    a, b, c, d = philox4x32(c0, c1, c2, c3, k0, k1)
    z0 = 0.0
    z1 = 0.0
    z2 = 0.0
    z3 = 0.0
    for h in range(2):
        r = math.sqrt(neg2log_u01(a if h == 0 else c))
        sn, cs = sincos_2pi_u01(b if h == 0 else d)
        if h == 0:
            z0 = r * cs
            z1 = r * sn
        else:
            z2 = r * cs
            z3 = r * sn
    return z0, z1, z2, z3


@njit(inline="always", cache=False)
def student_t(nu, c0, c1, c2, k0, k1):
    """A standard Student-t variate with `nu` degrees of freedom (Bailey's polar method,
    Math. Comp. 62 (1994)): draw `U, V` uniform on (-1, 1) until `W = U^2 + V^2 < 1`, then
    `T = U sqrt(nu (W^{-2/nu} - 1) / W)`.  Block `j` of the Philox stream `0x10000 + j` gives attempts `2j` (its
    words `a, b`) and `2j + 1` (`c, d`; `student_t_block`), so the variate is still a function of (seed, path,
    step, coordinate) only."""
    j = 0
    while True:
        a, b, c, d = philox4x32(c0, c1, c2, np.uint32(0x10000 + j), k0, k1)
        ok, t = student_t_block(nu, a, b, c, d)
        if ok:
            return t
        j += 1


# -- block fillers: what the generated kernels call (compiled once, cached on disk) -----------------
# nogil so that the kernel threads never serialise on them; error_model="numpy" so a division does
# not carry a ZeroDivisionError branch that would stop LLVM from vectorising the loop.


@wide_loops(FILLER_WIDTH)
@njit(cache=True, nogil=True, error_model="numpy")
def fill_normals(Z, r, nb, c0, c2, c3, k0, k1):
    """`Z[r, 4 j + q] = normal_pair(c0, j, c2, c3)[q]` for the blocks `j < nb` (`4 nb <= Z.shape[1]`).

    Every kernel's Gaussians (`Z` is the kernel's row block, `r` the row; the scalar kernels pass a block
    of one row): a kernel fills a row of normals and reads it afterwards, so the call (one per row of
    `4 nb` normals) costs nothing measurable (NSGD at d = 100, three alternating runs of each form: 8.2e7 to
    1.05e8 coordinate-steps/s with the call, 7.6e7 to 8.9e7 with `normal_pair` inlined), and the kernel is spared
    numba's IR inlining of `normal_pair` at each site: the SAM SDE kernel, with two sites, compiled in 5.0 s
    instead of 9.3 s.  The arguments are int64 at every call (`np.int64(...)` around literals), so one signature
    serves every kernel.  Every compile of it vectorises its loop `FILLER_WIDTH` lanes wide on AVX-512 hosts
    (`vector_width.wide_loops`)."""
    for jb in range(nb):
        z0, z1, z2, z3 = normal_pair(c0, jb, c2, c3, k0, k1)
        Z[r, 4 * jb] = z0
        Z[r, 4 * jb + 1] = z1
        Z[r, 4 * jb + 2] = z2
        Z[r, 4 * jb + 3] = z3


@wide_loops(FILLER_WIDTH)
@njit(cache=True, nogil=True, error_model="numpy")
def _student_t_first_blocks(Z, n, nu, step, path, k0, k1):
    """`fill_student_t`'s vectorised pass: every coordinate's first Philox block, NaN where both its attempts are
    rejected; returns how many were.  (Its own function, compiled `FILLER_WIDTH` lanes wide: the rejection loop
    of the second pass cannot vectorise, and a forced width would make LLVM print a remark about it.)"""
    rejected = 0
    for i in range(n):
        a, b, c, d = philox4x32(step, i, path, np.uint32(0x10000), k0, k1)
        ok, t = student_t_block(nu, a, b, c, d)
        Z[i] = t if ok else math.nan
        rejected += 0 if ok else 1
    return rejected


@njit(cache=True, nogil=True, error_model="numpy")
def fill_student_t(Z, n, nu, step, path, k0, k1):
    """`Z[i] = T_nu(step, i, path)` for `i < n` (`student_t`, coordinate `i` as counter).

    Every coordinate's first Philox block (two attempts) in one loop that vectorises (`_student_t_first_blocks`,
    branch-free `student_t_block`; a rejected block leaves NaN, which no accepted variate is: `T` is finite or
    infinite), then `student_t` for the coordinates whose block was rejected (4.6 %), which redraws block 0 and
    goes on from block 1: the same variates as `student_t` coordinate by coordinate.  (One attempt per block and
    a scalar loop for the 21 % it rejects ran at 5.1e7 variates/s a core; libm's `log` and `exp`, not vectorised,
    at 3.5e7; this form at 8.1e7, AMD EPYC with AVX-512, rows of 100.)"""
    if _student_t_first_blocks(Z, n, nu, step, path, k0, k1):
        for i in range(n):
            if Z[i] != Z[i]:
                Z[i] = student_t(nu, step, i, path, k0, k1)


@njit(cache=True, nogil=True, error_model="numpy")
def draw_indices(IDX, B, n, step, path, stream, k0, k1):
    """`B` example indices, uniform on `{0, ..., n-1}` with replacement: Philox block `j` gives
    draws `4j .. 4j + 3`, each `floor(r n / 2^32)` of a uint32 `r` (Lemire's multiply-shift;
    its bias is below `n / 2^32`)."""
    nn = np.uint64(n)
    for jb in range((B + 3) // 4):
        r0, r1, r2, r3 = philox4x32(step, jb, path, stream, k0, k1)
        for q in range(4):
            if 4 * jb + q >= B:
                break
            rr = r0 if q == 0 else (r1 if q == 1 else (r2 if q == 2 else r3))
            IDX[4 * jb + q] = np.int64((np.uint64(rr) * nn) >> _S32)


@njit(cache=True, nogil=True, error_model="numpy")
def chi_square(nu, step, path, stream, k0, k1):
    """`W ~ chi2(nu)` for (step, path, stream): `2 G` with `G ~ Gamma(nu/2, 1)` by Marsaglia & Tsang's method
    (ACM TOMS 26 (2000) 363-372), which needs no gamma function.  For shape `a >= 1`, with `dd = a - 1/3`,
    `cc = 1/sqrt(9 dd)`: draw `z ~ N(0, 1)` and `u ~ U(0, 1)`, `v = (1 + cc z)^3`; accept `dd v` if `v > 0` and
    `ln u < z^2/2 + dd - dd v + dd ln v`.  For `a < 1` (`nu < 2`) it draws `Gamma(a + 1)` and multiplies by
    `u'^(1/a)`, `u'` a fourth independent uniform of the accepted attempt (Marsaglia & Tsang, sec. 6).

    Attempt `j` is the Philox block `(step, j, path, CHI2_STREAM + stream)`: its words give `z` (Box-Muller of
    the first two, as `normal_pair`), `u` and `u'`; so `W` is a function of (seed, step, path, stream) only.
    One draw per noise vector: the multivariate Student-t `xi = sqrt(nu/W) Sigma^(1/2) z` of the vector
    kernels shares it among the coordinates."""
    a = 0.5 * nu
    boost = a < 1.0
    dd = (a + 1.0 if boost else a) - 1.0 / 3.0
    cc = 1.0 / math.sqrt(9.0 * dd)
    c3 = np.uint32(CHI2_STREAM + stream)
    j = 0
    while True:
        w0, w1, w2, w3 = philox4x32(step, np.uint32(j), path, c3, k0, k1)
        _sn, cs = sincos_2pi_u01(w1)
        z = math.sqrt(neg2log_u01(w0)) * cs
        v = 1.0 + cc * z
        if v > 0.0:
            v = v * v * v
            if -0.5 * neg2log_u01(w2) < 0.5 * z * z + dd - dd * v + dd * math.log(v):
                g = dd * v
                if boost:
                    g = g * math.exp(-0.5 * neg2log_u01(w3) / a)
                return 2.0 * g
        j += 1

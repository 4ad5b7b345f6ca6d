"""The C/CUDA twin of `sdederive.simulate.rng.philox`, as source text.

Pasted at the top of every generated CUDA kernel; it also compiles as host C/C++ (gcc, or nvcc's
host pass), which is how CI checks it bit for bit against the numba version without a GPU.
Every operation of the Gaussians and of the Student-t is IEEE `+ - * / sqrt`, `floor` (exact), a bit cast or
integer arithmetic; no libm call, so host and device agree (the chi-square of the multivariate t calls libm's `log`
and `exp`, as its comment says). An FMA-contracted polynomial would round differently from the numba twin, so on
the device every product that feeds an addition is `__dmul_rn` (`SD_MUL`), which the compiler never contracts: the
Gaussians stay bit-identical to the CPU's under NVRTC's default `--fmad=true`, while the rest of the generated
kernel keeps its FMAs. Host builds need `-ffp-contract=off` (gcc contracts across statements otherwise).
"""

from __future__ import annotations

__all__ = ["CUDA_SOURCE"]

CUDA_SOURCE = r"""
#ifdef __CUDACC__
#define SD_HD __host__ __device__ __forceinline__
#define SD_CLZ64(v) __clzll((long long)(v))
#define SD_MUL(a, b) __dmul_rn((a), (b))
#define SD_BITS_DOUBLE(u) __longlong_as_double((long long)(u))
#else
#define SD_HD static inline
#define SD_CLZ64(v) __builtin_clzll(v)
#define SD_MUL(a, b) ((a) * (b))
#include <string.h>
static inline double sd_bits_double(unsigned long long u) { double v; memcpy(&v, &u, sizeof v); return v; }
#define SD_BITS_DOUBLE(u) sd_bits_double(u)
#endif
typedef unsigned int sd_u32;
typedef unsigned long long sd_u64;

SD_HD void sd_philox4x32(sd_u32 c[4], sd_u32 k0, sd_u32 k1) {
    for (int r = 0; r < 10; ++r) {
        sd_u64 p0 = (sd_u64)c[0] * 0xD2511F53ull;
        sd_u64 p1 = (sd_u64)c[2] * 0xCD9E8D57ull;
        sd_u32 n0 = (sd_u32)(p1 >> 32) ^ c[1] ^ k0;
        sd_u32 n1 = (sd_u32)p1;
        sd_u32 n2 = (sd_u32)(p0 >> 32) ^ c[3] ^ k1;
        sd_u32 n3 = (sd_u32)p0;
        c[0] = n0; c[1] = n1; c[2] = n2; c[3] = n3;
        k0 += 0x9E3779B9u; k1 += 0xBB67AE85u;
    }
}

SD_HD double sd_log_core(double f, double k) {  /* ln(f 2^k), f in [1/2, 1]: philox.log_core */
    if (f < 0.7071067811865476) { f = f * 2.0; k = k - 1.0; }
    double fm = f - 1.0;
    double s = fm / (2.0 + fm);
    double z = s * s;
    double w = z * z;
    double t1 = SD_MUL(w, 3.999999999940941908e-01 + SD_MUL(w, 2.222219843214978396e-01
                + SD_MUL(w, 1.531383769920937332e-01)));
    double t2 = SD_MUL(z, 6.666666666666735130e-01 + SD_MUL(w, 2.857142874366239149e-01
                + SD_MUL(w, 1.818357216161805012e-01 + SD_MUL(w, 1.479819860511658591e-01))));
    double hfsq = SD_MUL(SD_MUL(0.5, fm), fm);
    return SD_MUL(k, 6.93147180369123816490e-01) - ((hfsq - (SD_MUL(s, hfsq + (t2 + t1))
           + SD_MUL(k, 1.90821492927058770002e-10))) - fm);
}

SD_HD double sd_neg2log_u01(sd_u32 a) {
    sd_u64 y = (sd_u64)a * 2ull + 1ull;
    int n = SD_CLZ64(y);
    double f = SD_MUL((double)(y << n), 5.421010862427522e-20);
    double k = 31.0 - (double)n;
    return -2.0 * sd_log_core(f, k);
}

/* e^x for x >= 0: philox.exp_nonneg (fdlibm e_exp.c; 2^(k-1) from its exponent bits; floor is exact) */
SD_HD double sd_exp_nonneg(double x) {
    const int big = x > 7.09782712893383973096e+02;
    const double xs = big ? 0.0 : x;
    const double kf = floor(SD_MUL(xs, 1.44269504088896338700e+00) + 0.5);
    const double hi = xs - SD_MUL(kf, 6.93147180369123816490e-01);
    const double lo = SD_MUL(kf, 1.90821492927058770002e-10);
    const double r = hi - lo;
    const double t = SD_MUL(r, r);
    const double c = r - SD_MUL(t, 1.66666666666666019037e-01 + SD_MUL(t, -2.77777777770155933842e-03
                     + SD_MUL(t, 6.61375632143793436117e-05 + SD_MUL(t, -1.65339022054652515390e-06
                     + SD_MUL(t, 4.13813679705723846039e-08)))));
    const double y = 1.0 - ((lo - SD_MUL(r, c) / (2.0 - c)) - hi);
    const double half = SD_BITS_DOUBLE((sd_u64)((long long)kf + 1022) << 52);
    const double out = SD_MUL(y, half) * 2.0;
    return big ? SD_BITS_DOUBLE(0x7FF0000000000000ull) : out;  /* +inf */
}

/* one polar attempt from the words a, b: p = 2a + 1 - 2^32 (and q), N = p^2 + q^2; accepted when N < 2^64 */
SD_HD sd_u64 sd_polar_square(sd_u32 a, sd_u32 b, long long *p, int *ok) {
    const long long pv = (long long)a * 2 + 1 - 4294967296LL;
    const long long qv = (long long)b * 2 + 1 - 4294967296LL;
    const sd_u64 ap = (sd_u64)(pv >= 0 ? pv : -pv), aq = (sd_u64)(qv >= 0 ? qv : -qv);
    const sd_u64 pp = ap * ap;
    const sd_u64 nn = pp + aq * aq;
    *p = pv;
    *ok = nn >= pp;
    return nn;
}

/* Bailey's polar method on one Philox block, (a, b) then (c, d): philox.student_t_block */
SD_HD int sd_student_t_block(double nu, sd_u32 a, sd_u32 b, sd_u32 c, sd_u32 d, double *t) {
    long long p1, p2;
    int ok1, ok2;
    const sd_u64 n1 = sd_polar_square(a, b, &p1, &ok1);
    const sd_u64 n2 = sd_polar_square(c, d, &p2, &ok2);
    const long long p = ok1 ? p1 : p2;
    const sd_u64 ns = ok1 ? n1 : (ok2 ? n2 : 2ull);
    const int lz = SD_CLZ64(ns);
    const double f = SD_MUL((double)(ns << lz), 5.421010862427522e-20);
    const double lnw = sd_log_core(f, -(double)lz);
    const double w = SD_MUL((double)ns, 5.421010862427522e-20);
    const double e = sd_exp_nonneg(SD_MUL(-2.0 / nu, lnw));
    *t = SD_MUL((double)p, 2.3283064365386963e-10) * sqrt(nu * (e - 1.0) / w);
    return ok1 || ok2;
}

SD_HD void sd_sincos_2pi_u01(sd_u32 b, double *sn_out, double *cs_out) {
    sd_u64 q = ((sd_u64)b + (1ull << 29)) >> 30;
    double r = ((double)b + 0.5 - SD_MUL((double)q, 1073741824.0)) * 9.313225746154785e-10;
    double x = SD_MUL(r, 1.5707963267948966);  /* x feeds the sum below: keep it rounded */
    double z = x * x;
    double sn = x + SD_MUL(z * x, -1.66666666666666324348e-01 + SD_MUL(z, 8.33333333332248946124e-03
                + SD_MUL(z, -1.98412698298579493134e-04 + SD_MUL(z, 2.75573137070700676789e-06
                + SD_MUL(z, -2.50507602534068634195e-08 + SD_MUL(z, 1.58969099521155010221e-10))))));
    double cs = 1.0 - SD_MUL(0.5, z) + SD_MUL(z * z, 4.16666666666666019037e-02 + SD_MUL(z, -1.38888888888741095749e-03
                + SD_MUL(z, 2.48015872894767294178e-05 + SD_MUL(z, -2.75573143513906633035e-07
                + SD_MUL(z, 2.08757232129817482790e-09 + SD_MUL(z, -1.13596475577881948265e-11))))));
    double s0 = (q & 1ull) ? cs : sn;
    double c0 = (q & 1ull) ? sn : cs;
    if (q & 2ull) s0 = -s0;
    if ((q + 1ull) & 2ull) c0 = -c0;
    *sn_out = s0; *cs_out = c0;
}

/* four standard normals from counter (c0, c1, c2, c3) and key (k0, k1) */
SD_HD void sd_normal4(sd_u32 c0, sd_u32 c1, sd_u32 c2, sd_u32 c3, sd_u32 k0, sd_u32 k1, double z[4]) {
    sd_u32 c[4] = {c0, c1, c2, c3};
    sd_philox4x32(c, k0, k1);
    double s, co, r;
    r = sqrt(sd_neg2log_u01(c[0])); sd_sincos_2pi_u01(c[1], &s, &co); z[0] = r * co; z[1] = r * s;
    r = sqrt(sd_neg2log_u01(c[2])); sd_sincos_2pi_u01(c[3], &s, &co); z[2] = r * co; z[3] = r * s;
}

/* W ~ chi2(nu) of (step, path, stream): the twin of philox.chi_square (Marsaglia & Tsang; attempt j is the
   Philox block (step, j, path, 2**30 + stream); the same operations in the same order; log and exp from libm) */
SD_HD double sd_chi_square(double nu, sd_u32 step, sd_u32 path, sd_u32 stream, sd_u32 k0, sd_u32 k1) {
    const double a = SD_MUL(0.5, nu);
    const int boost = a < 1.0;
    const double dd = (boost ? a + 1.0 : a) - 1.0 / 3.0;
    const double cc = 1.0 / sqrt(SD_MUL(9.0, dd));
    for (sd_u32 j = 0;; ++j) {
        sd_u32 c[4] = {step, j, path, (sd_u32)(1073741824u + stream)};
        sd_philox4x32(c, k0, k1);
        double sn, cs;
        sd_sincos_2pi_u01(c[1], &sn, &cs);
        const double z = SD_MUL(sqrt(sd_neg2log_u01(c[0])), cs);
        double v = 1.0 + SD_MUL(cc, z);
        if (v > 0.0) {
            v = SD_MUL(SD_MUL(v, v), v);
            if (SD_MUL(-0.5, sd_neg2log_u01(c[2])) < SD_MUL(SD_MUL(0.5, z), z) + dd - SD_MUL(dd, v)
                    + SD_MUL(dd, log(v))) {
                double g = SD_MUL(dd, v);
                if (boost) g = SD_MUL(g, exp(SD_MUL(-0.5, sd_neg2log_u01(c[3])) / a));
                return SD_MUL(2.0, g);
            }
        }
    }
}

/* Student-t (Bailey's polar method): block j of stream 0x10000 + j gives attempts 2j and 2j + 1 */
SD_HD double sd_student_t(double nu, sd_u32 c0, sd_u32 c1, sd_u32 c2, sd_u32 k0, sd_u32 k1) {
    for (sd_u32 j = 0;; ++j) {
        sd_u32 c[4] = {c0, c1, c2, 0x10000u + j};
        sd_philox4x32(c, k0, k1);
        double t;
        if (sd_student_t_block(nu, c[0], c[1], c[2], c[3], &t)) return t;
    }
}
"""

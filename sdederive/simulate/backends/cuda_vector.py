r"""The CUDA printer of vector programs (`sdederive.simulate.vector_lower`): `step_kernel` and `obs_kernel`
with the signatures of the scalar CUDA kernels (`sdederive.simulate.backends.cuda_backend`), so
`CudaBackend` builds, launches and reduces them unchanged.

Layout.  One thread per path.  Every vector of the program is a per-thread array `V_NAME[D]` (`D` a
compile-time constant), every scalar a local `S_NAME`; `x` is `X[0][D]` (of the state's dtype) and an auxiliary
state `m` the vector `V_ST_m` (as in the numba kernel), loaded from `STATE` before the steps and stored after
them; their new values are copied in at the end of each step (every update reads the old values).  A
coordinate-wise operation is a loop over `i` (a run of them one loop, `_Writer.ops`), a reduction four partial
sums in the numba kernel's order (`vector_lower.SPLIT_SUMS`).  The problem's generated helpers do the rest: `prob_grad` (also the dense `H x`), `prob_hvp` (also the dense
`H v`), `prob_corr` (`L z`, or logistic regression's low-rank factor), and for minibatch gradients
`prob_mb_accum` / `prob_mb_finish` over indices drawn from the streams `vector_lower.index_stream`.

Numbers as in `sdederive.simulate.backends.numba_vector`: the Gaussians are `sd_normal4` (the C twin of
`normal_pair`) at the same (step, coordinate block, path, stream), the inner samples' streams
`base + kin*stride` and their weights from `WEIGHT_STREAM`, the same `zeta`; every vector and scalar is a
double, and with `dtype="float32"` only the state is a float (rounded when written, its double copy `XD`
read by the helpers); a non-finite coordinate after step `k` ends the path at step `k + 1`.  In the noise's
eigenbasis (`sdederive.simulate.vector_eigenbasis`) a thread loads `y = U^T x` and stores `x = U y`, and
`obs_kernel` takes the loss at `y`, as the numba kernel does.
"""

from __future__ import annotations

import sympy as sp

from sdederive.simulate import vector_lower
from sdederive.simulate.backends.cuda_printer import _CudaPrinter
from sdederive.simulate.backends.single_precision import Hoist
from sdederive.simulate.lower import CodegenError, expand_powers
from sdederive.simulate.rng.philox_c import CUDA_SOURCE
from sdederive.simulate.vector_lower import WEIGHT_STREAM, VOp, VProgram, index_stream, live_outside, op_reads

__all__ = ["generate_vector_cuda", "FUSE"]

#: whether consecutive coordinate-wise operations share one loop (`_Writer.ops`), as in the numba kernel; the tests
#: switch it off to compare the two forms bit for bit
FUSE = True

class _Printer(_CudaPrinter):
    """The CUDA backend's C printer with the program's names bound to the thread's arrays: `v_NAME` is
    `V_NAME[i]` (`X[j][i]` for the state `j`), `s_NAME` is `S_NAME`."""

    def __init__(self, states: tuple, local: frozenset = frozenset()):
        super().__init__()
        self.states = states
        self.local = local  # vectors held in locals l_NAME inside a fused loop (_Writer.ops)

    def _print_Symbol(self, e):
        n = e.name
        if n.startswith("v_") and n[2:] in self.local:
            return f"l_{n[2:]}"
        if n == "s_WK":  # the current inner sample's weight (z-space programs), of a pair its w_j
            return "WK[kin]"
        if n == "s_WK2":  # a pair's w'_j (z-space programs with antithetic pairs; NPAIR = n/2)
            return "WK[kin + NPAIR]"
        if n == "v_LAM":  # lambda_i = (L^T L)_ii, constant
            return "LAMV[i]"
        if n.startswith("v_"):
            v = n[2:]
            return f"X[{self.states.index(v)}][i]" if v in self.states else f"V_{v}[i]"
        if n.startswith("s_"):
            return f"S_{n[2:]}"
        return n


_MB_GRAD = r"""
/* the minibatch gradient at yv over the indices of Philox stream `stream` (drawn as the numba kernel's
   draw_indices: four per block, Lemire's multiply-shift), in the order of its mb_grad */
__device__ void vec_mbgrad(const real *yv, real *G, sd_u32 stream, sd_u32 cstep, sd_u32 p, sd_u32 key0, sd_u32 key1,
        const double *PV, const double *PM, const double *PL, const double *PY, real *W) {
    const int Bm = (int)PV[P_B];
    for (int i = 0; i < D; ++i) G[i] = 0;
    for (int jb = 0; jb < (Bm + 3) / 4; ++jb) {
        sd_u32 c[4] = {cstep, (sd_u32)jb, p, stream}; sd_philox4x32(c, key0, key1);
        for (int q = 0; q < 4 && 4 * jb + q < Bm; ++q)
            prob_mb_accum(yv, G, (int)(((sd_u64)c[q] * (sd_u64)NEX) >> 32), PV, PM, PL, PY, W);
    }
    prob_mb_finish(yv, G, Bm, PV, PM, PL, PY, W);
}
"""


class _Writer:
    def __init__(self, prog: VProgram, problem, dtype: str):
        self.prog, self.problem = prog, problem
        self.f32 = dtype == "float32"
        # float32 on a dense quadratic: float vectors (real = float) and float coordinate-wise arithmetic
        self.f32_arith = self.f32 and problem.kind == "quadratic_dense"
        self.nconst = 0  # the float locals c_j of the hoisted parts, numbered over the kernel
        self.op_reads: list | None = None  # vector_lower.op_reads of the program (the fused loops' locals)
        self.factor = problem.has_noise_factor
        self.L: list[str] = []
        # x is held as X[0] (the state's dtype), written directly by the step's last operation; the auxiliary
        # states are double vectors V_ST_<name> that take their new values (prog.results) at the end of the step
        self.states = ("X",)
        self.results = {prog.result: 0}
        self.printer = _Printer(self.states)

    def w(self, ind: int, text: str) -> None:
        self.L.append("    " * ind + text)

    def expr(self, e: sp.Expr) -> str:
        return self.printer.doprint(expand_powers(e))

    def arr(self, name: str) -> str:
        return f"X[{self.states.index(name)}]" if name in self.states else f"V_{name}"

    def src(self, name: str) -> str:
        """The array a problem helper reads `name` from (the double copy of a float state)."""
        return "XD" if (name == "X" and self.f32) else self.arr(name)

    def cw_value(self, ind: int, e: sp.Expr, printer: "_Printer") -> str:
        """A coordinate-wise expression as C; in a float32 step its element-free parts first, as `const float`
        locals written before the loop (`single_precision.Hoist`: float arithmetic)."""
        if self.f32_arith:
            hoist = Hoist(self.nconst)
            e = hoist.split(e)
            self.nconst = hoist.count
            for part, name in {**hoist.outer, **hoist.row}.items():
                self.w(ind, f"const float {name} = (float)({self.expr(part)});")
        return printer.doprint(expand_powers(e))

    def op(self, ind: int, o: VOp, in_inner: bool) -> None:
        w = self.w
        if o.kind == "cw":
            val = self.cw_value(ind, o.args[0], self.printer)
            if o.out in self.results:
                w(ind, f"for (int i = 0; i < D; ++i) X[{self.results[o.out]}][i] = (sreal)({val});")
            else:
                w(ind, f"for (int i = 0; i < D; ++i) V_{o.out}[i] = {val};")
        elif o.kind == "red" and vector_lower.SPLIT_SUMS:  # the numba kernel's four partial sums, in its order
            val = self.expr(o.args[0])
            w(ind, "{ double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0;")
            w(ind + 1, "for (int j = 0; j < D / 4; ++j) {")
            for q in range(4):
                w(ind + 2, f"{{ const int i = 4 * j + {q}; a{q} += {val}; }}")
            w(ind + 1, "}")
            w(ind + 1, f"for (int i = D - D % 4; i < D; ++i) a0 += {val};")
            w(ind + 1, f"S_{o.out} = (a0 + a1) + (a2 + a3); }}")
        elif o.kind == "red":
            w(ind, f"{{ double acc = 0.0; for (int i = 0; i < D; ++i) acc += {self.expr(o.args[0])}; S_{o.out} = acc; }}")
        elif o.kind == "sc":
            w(ind, f"S_{o.out} = {self.expr(o.args[0])};")
        elif o.kind == "grad":
            at_x = o.args[0] == "X"
            varies = at_x and self.problem.noise_varies and vector_lower.reads_noise_scale(self.prog, self.factor)
            w(ind, f"prob_grad({self.src(o.args[0])}, V_{o.out}, HS1, {'V_SG' if varies else 'SGS'}, PV, PM, PL, PY, "
                   f"{'WX' if at_x else 'WS'}, false, {'true' if varies else 'false'});")
        elif o.kind == "hvp":
            w(ind, f"prob_hvp({self.src('X')}, {self.src(o.args[0])}, V_{o.out}, PV, PM, PL, PY, WS);")
        elif o.kind in ("ltv", "lv"):  # L^T v and L v (z-space programs), the factor PL row-major
            src = self.src(o.args[0])
            if self.factor:
                ent = "PL[j * D + i]" if o.kind == "ltv" else "PL[i * D + j]"
                w(ind, f"for (int i = 0; i < D; ++i) {{ double acc = 0.0; for (int j = 0; j < D; ++j) acc += {ent} * "
                       f"{src}[j]; V_{o.out}[i] = acc; }}")
            else:  # L = diag(sigma)
                w(ind, f"for (int i = 0; i < D; ++i) V_{o.out}[i] = V_SG[i] * {src}[i];")
        elif o.kind in ("noise", "tnoise"):
            base, stride = o.args[:2]
            stream = f"(sd_u32)({base} + kin * {stride})" if (in_inner and stride) else f"{base}u"
            w(ind, f"for (int jb = 0; jb < NZ4 / 4; ++jb) sd_normal4(cstep, (sd_u32)jb, (sd_u32)p, {stream}, key0, "
                   "key1, &Z[4 * jb]);")
            if o.kind == "tnoise":  # the multivariate t: the row's Gaussians times sqrt(nu/W), one W per draw
                w(ind, f"{{ const double tsc = sqrt(PV[P_nu] / sd_chi_square(PV[P_nu], cstep, (sd_u32)p, {stream}, key0, "
                       "key1)); for (int i = 0; i < NZ4; ++i) Z[i] *= tsc; }")
            if o.args[2:] == ("z",):  # the Gaussians z themselves (z-space programs)
                w(ind, f"for (int i = 0; i < D; ++i) V_{o.out}[i] = Z[i];")
            elif self.factor:
                w(ind, f"prob_corr({self.src('X')}, V_GR, Z, V_{o.out}, PV, PM, PL, PY, WX);")
            else:
                w(ind, f"for (int i = 0; i < D; ++i) V_{o.out}[i] = V_SG[i] * Z[i];")
        elif o.kind == "gtrs":  # grad tr Sigma(x) from the weights and gradient of this step's prob_grad at x
            w(ind, f"prob_gtrs({self.src('X')}, V_GR, V_{o.out}, PV, PM, PL, PY, WX);")
        elif o.kind == "mbgrad":
            src, bt = o.args
            w(ind, f"vec_mbgrad({self.src(src)}, V_{o.out}, {index_stream(bt)}u, cstep, (sd_u32)p, key0, key1, PV, PM, "
                   "PL, PY, WS);")
        else:  # pragma: no cover - the IR is closed
            raise CodegenError(f"unknown vector operation {o.kind!r}")

    def ops(self, ind: int, ops, in_inner: bool = False) -> None:
        """The operations in order; a run of consecutive coordinate-wise ones is one loop over `i` (`FUSE`), its
        values that nothing outside the run reads (`vector_lower.live_outside`) in locals `l_NAME` instead of the
        thread's arrays: fewer loads and stores of local memory, and arrays the compiler can drop.  The arithmetic
        of each element is that of the separate loops, so the numbers are the same bit for bit."""
        run: list = []

        def flush() -> None:
            if not run:
                return
            if self.op_reads is None:
                self.op_reads = op_reads(self.prog)
            live = live_outside(self.prog, run, self.op_reads)
            local = frozenset(o.out for o in run if o.out not in live)
            printer = _Printer(self.states, local)
            lines = []
            for o in run:
                val = self.cw_value(ind, o.args[0], printer)
                if o.out in self.results:
                    lines.append(f"X[{self.results[o.out]}][i] = (sreal)({val});")
                elif o.out in local:
                    lines.append(f"const real l_{o.out} = {val};")
                else:
                    lines.append(f"V_{o.out}[i] = {val};")
            self.w(ind, "for (int i = 0; i < D; ++i) {")
            for ln in lines:
                self.w(ind + 1, ln)
            self.w(ind, "}")
            run.clear()

        for o in ops:
            if o.kind == "cw" and FUSE:
                run.append(o)
                continue
            flush()
            self.op(ind, o, in_inner)
        flush()

    def step(self, ind: int) -> None:
        prog, w = self.prog, self.w
        w(ind, "const double kstep = (double)cstep;  /* the discrete update's step counter k */")
        w(ind, "const double tt = cstep * dt;  /* the SDE's time at the start of the step */")
        if self.f32:
            w(ind, "for (int i = 0; i < D; ++i) XD[i] = (double)X[0][i];")
        self.ops(ind, prog.pre)
        if prog.n_inner:
            n = prog.n_inner
            w(ind, f"for (int jb = 0; jb < {(n + 3) // 4}; ++jb) sd_normal4(cstep, (sd_u32)jb, (sd_u32)p, "
                   f"{WEIGHT_STREAM}u, key0, key1, &WK[4 * jb]);")
            if prog.zspace:  # the weights' sum first (of the pairs' w_j); the samples accumulate themselves
                nl = prog.n_loop
                w(ind, f"{{ double acc = 0.0; for (int kin = 0; kin < {nl}; ++kin) acc += WK[kin]; S__SW = acc; }}")
                w(ind, f"for (int kin = 0; kin < {nl}; ++kin) {{")
                self.ops(ind + 1, prog.inner, in_inner=True)
                w(ind, "}")
            else:
                f, fd, n = prog.fsample, prog.fdiff, prog.n_loop
                w(ind, "S__SW = 0.0;")
                zero = ((["V__SF[i] = 0.0;", "V__SWF[i] = 0.0;"] if f else []) + (["V__SDF[i] = 0.0;"] if fd else [])
                        + [f"V_{sm}[i] = 0.0;" for _fs, sm in prog.msamples])
                w(ind, f"for (int i = 0; i < D; ++i) {{ {' '.join(zero)} }}")
                w(ind, f"for (int kin = 0; kin < {n}; ++kin) {{")
                self.ops(ind + 1, prog.inner, in_inner=True)
                w(ind + 1, "const double wk = WK[kin];")
                w(ind + 1, "S__SW += wk;")
                if f:
                    w(ind + 1, f"for (int i = 0; i < D; ++i) {{ const double fv = V_{f}[i]; V__SF[i] += fv; "
                               "V__SWF[i] += wk * fv; }")
                if fd:  # antithetic pairs: w'_j of the pair's half-difference
                    w(ind + 1, f"for (int i = 0; i < D; ++i) V__SDF[i] += WK[kin + NPAIR] * V_{fd}[i];")
                for fs, sm in prog.msamples:  # drift estimates only
                    w(ind + 1, f"for (int i = 0; i < D; ++i) V_{sm}[i] += V_{fs}[i];")
                w(ind, "}")
                if f:
                    # zeta = (n - 1)^(-1/2) sum_k w_k (F_k - Fbar), the numba kernel's formula and constants
                    w(ind, f"for (int i = 0; i < D; ++i) V_ZETA[i] = (V__SWF[i] - S__SW * (V__SF[i] / {n}.0)) * "
                           f"{(n - 1) ** -0.5!r};")
                    if fd:
                        w(ind, f"for (int i = 0; i < D; ++i) V_ZETAD[i] = V__SDF[i] * {n ** -0.5!r};")
        self.ops(ind, prog.post)
        for st, res in prog.results.items():
            w(ind, f"for (int i = 0; i < D; ++i) V_ST_{st}[i] = V_{res}[i];")
        if prog.result == "X":  # pragma: no cover - every program computes a new x
            raise CodegenError("the vector program does not update x")


def generate_vector_cuda(prog: VProgram, problem, dtype: str = "float64", rotate: bool = False) -> str:
    """CUDA C source of `step_kernel` and `obs_kernel` (`extern "C"`) for the vector program `prog` on
    `problem` (see the module docstring).

    `rotate`: `problem` is the eigenbasis form of the user's problem (`sdederive.simulate.vector_eigenbasis`) and
    `PL` is the rotation `U` (row-major): `step_kernel` loads `y = U^T x` and stores `x = U y`, `obs_kernel` reads
    `x` and takes the loss at `y`; `STATE` stays in the user's coordinates (as the numba kernel's)."""
    if problem.noise == "student-t":
        raise CodegenError("vector kernels draw Gaussian or multivariate-t noise; the problem has the per-coordinate "
                           "Student-t (noise='student-t'). Use noise='multivariate-t' or a Gaussian problem")
    if dtype not in ("float32", "float64"):
        raise CodegenError(f"dtype={dtype!r}; allowed: 'float32', 'float64'")
    W = _Writer(prog, problem, dtype)
    w = W.w
    if rotate and (tuple(prog.states) != ("x",) or W.factor):  # pragma: no cover - vector_eigenbasis rotates no other
        raise CodegenError("the eigenbasis kernel rotates the state x alone, on a problem with diagonal noise")
    d, ns = problem.d, len(prog.states)
    nex = problem.n if problem.minibatch else 1
    # the results are written into their states directly
    sums = {"_SF", "_SWF"} if prog.n_inner and not prog.zspace and prog.fsample else set()
    vecs = sorted((set(prog.vectors) | {"SG"} | sums)
                  - set(W.states)
                  - set(W.results))
    scalars = sorted(prog.scalars | ({"_SW"} if prog.n_inner else set()))
    if problem.minibatch and prog.mode == "discrete":
        nz = "0"
    elif W.factor and problem.minibatch:
        nz = "NEX"  # the low-rank factor of the minibatch noise: one Gaussian per example
    else:
        nz = "D"
    w(0, f"/* vector kernel: {prog.mode} {prog.name} on {problem.kind}, dtype {dtype}, inner samples {prog.n_inner} */")
    for note in prog.notes:
        w(0, f"/* note: {str(note).replace('*/', '* /')} */")
    if prog.pairs:  # antithetic pairs (z-space): w'_j of pair j is WK[j + NPAIR]
        w(0, f"#define NPAIR {prog.n_loop}")
    w(0, f"#define D {d}\n#define NS {ns}\n#define NEX {nex}\n#define NZ ({nz})\n#define NZ4 (((NZ) + 3) / 4 * 4)")
    # float32 on a dense quadratic: the vectors, scalars and the problem's helpers (H v, L z) are float, as the
    # numba kernel's float32 vectors and sgemm products; elsewhere only the state is a float
    real = "float" if W.f32_arith else "double"
    w(0, f"typedef {real} real;  /* the helpers, vectors and scalars */")
    w(0, f"typedef {'float' if W.f32 else 'double'} sreal;  /* the states */")
    W.L.append(CUDA_SOURCE)
    W.L.append(problem.cuda_fragment(real))
    if problem.minibatch and prog.mode == "discrete":
        W.L.append(_MB_GRAD)
    w(0, 'extern "C" __global__ void step_kernel(double *STATE, long long *DIV, long long k_begin, long long k_end,')
    w(0, "        int sub, double tau, unsigned int key0, unsigned int key1, const double *HP, const double *PV,")
    w(0, "        const double *PM, const double *PL, const double *PY, long long N) {")
    w(1, "const long long p = (long long)blockIdx.x * blockDim.x + threadIdx.x;")
    w(1, "if (p >= N || DIV[p] >= 0) return;")
    w(1, "const double dt = tau / sub;")
    w(1, "const double sdt = sqrt(dt);")
    for j, h in enumerate(prog.hypers):
        w(1, f"const double hp_{h} = HP[{j}];")
    w(1, "sreal X[1][D];")
    if W.f32:
        w(1, "real XD[D];")
    w(1, f"real {', '.join(f'V_{v}[D]' for v in vecs)};")
    if scalars:
        w(1, f"double {', '.join(f'S_{s}' for s in scalars)};  /* as the numba kernel's, double in float32 too */")
    w(1, "double Z[NZ4 + 4];")
    w(1, "real WX[NEX + 1], WS[NEX + 1], HS1[D], SGS[D];  /* the per-example weights of prob_grad */")
    if prog.n_inner:
        w(1, f"double WK[{((prog.n_inner + 3) // 4) * 4}];")
    if rotate:  # y = U^T x, in double
        w(1, "for (int i = 0; i < D; ++i) { double acc = 0.0; for (int j = 0; j < D; ++j) acc += PL[j * D + i] * "
             "STATE[p * NS * D + j]; X[0][i] = (sreal)acc; }")
    else:
        w(1, "for (int i = 0; i < D; ++i) X[0][i] = (sreal)STATE[p * NS * D + i];")
    for j, st in enumerate(prog.states[1:], 1):
        w(1, f"for (int i = 0; i < D; ++i) V_ST_{st}[i] = STATE[(p * NS + {j}) * D + i];")
    w(1, "prob_noise0(V_SG, PV, PM, PL, PY, WS);  // the noise scale constant in x (prob_grad updates a varying one)")
    if prog.zspace:  # lambda_j = (L^T L)_jj: |L z|^2 = sum_j lambda_j z_j^2 for the factor's orthogonal columns
        w(1, "double LAMV[D];")
        if W.factor:
            w(1, "for (int j = 0; j < D; ++j) { double acc = 0.0; for (int i = 0; i < D; ++i) acc += PL[i * D + j] * "
                 "PL[i * D + j]; LAMV[j] = acc; }")
        else:
            w(1, "for (int j = 0; j < D; ++j) LAMV[j] = V_SG[j] * V_SG[j];")
    w(1, "for (long long k = k_begin; k < k_end; ++k) {")
    if prog.mode == "discrete":
        w(2, "const sd_u32 cstep = (sd_u32)k;")
        W.step(2)
    else:
        w(2, "for (int ss = 0; ss < sub; ++ss) {")
        w(3, "const sd_u32 cstep = (sd_u32)(k * sub + ss);")
        W.step(3)
        w(2, "}")
    # divergence: a non-finite coordinate ends the path at step k + 1
    w(2, "int bad = 0;")
    w(2, "for (int i = 0; i < D; ++i) if (!(fabs((double)X[0][i]) <= 1.7976931348623157e308)) bad = 1;")
    for st in prog.states[1:]:
        w(2, f"for (int i = 0; i < D; ++i) if (!(fabs(V_ST_{st}[i]) <= 1.7976931348623157e308)) bad = 1;")
    w(2, "if (bad) { DIV[p] = k + 1; break; }")
    w(1, "}")
    if rotate:  # x = U y, in double
        w(1, "for (int i = 0; i < D; ++i) { double acc = 0.0; for (int j = 0; j < D; ++j) acc += PL[i * D + j] * "
             "(double)X[0][j]; STATE[p * NS * D + i] = acc; }")
    else:
        w(1, "for (int i = 0; i < D; ++i) STATE[p * NS * D + i] = (double)X[0][i];")
    for j, st in enumerate(prog.states[1:], 1):
        w(1, f"for (int i = 0; i < D; ++i) STATE[(p * NS + {j}) * D + i] = V_ST_{st}[i];")
    w(0, "}")
    # observables: the loss, |x|^2 (float products of a float state, as the numba kernel's snapshot_add) and x
    w(0, 'extern "C" __global__ void obs_kernel(const double *STATE, const long long *DIV, const double *HP,')
    w(0, "        const double *PV, const double *PM, const double *PL, const double *PY, double *OUT, long long p0,")
    w(0, "        long long N) {")
    w(1, "const long long q = (long long)blockIdx.x * blockDim.x + threadIdx.x;")
    w(1, "const long long p = p0 + q;")
    w(1, "if (p >= N) return;")
    w(1, "double *o = OUT + q * (2 + D);")
    w(1, "real XD[D], W[NEX + 1];")
    w(1, "double sq = 0.0;")
    w(1, "for (int i = 0; i < D; ++i) {")
    w(2, "const sreal xi = (sreal)STATE[p * NS * D + i];")
    w(2, "XD[i] = (real)xi;")
    w(2, "sq += (double)(xi * xi);")
    w(2, "o[2 + i] = (double)xi;")
    w(1, "}")
    if rotate:  # the loss at y = U^T x (PM is U^T H U)
        w(1, "real YD[D];")
        w(1, "for (int i = 0; i < D; ++i) { double acc = 0.0; for (int j = 0; j < D; ++j) acc += PL[j * D + i] * "
             "(double)XD[j]; YD[i] = (real)acc; }")
        w(1, "o[0] = (double)prob_loss(YD, PV, PM, PL, PY, W);")
    else:
        w(1, "o[0] = (double)prob_loss(XD, PV, PM, PL, PY, W);")
    w(1, "o[1] = sq;")
    w(0, "}")
    return "\n".join(W.L) + "\n"

r"""The numba printer of vector programs (`sdederive.simulate.vector_lower`): one kernel with the
signature of the scalar kernels, so `Simulator.run` drives it unchanged.

Layout.  A thread owns whole statistics blocks (as the scalar kernels); inside one it advances the live
paths in *row blocks* of `PB` paths: every vector of the program is a `(PB, d)` array, a coordinate-wise
operation is a loop over rows and coordinates (the coordinate loop vectorises; consecutive ones share one loop,
their temporaries in locals: `_Writer.ops`), a reduction four partial sums per row (`vector_lower.SPLIT_SUMS`).
On a dense quadratic the products `H v` (gradient, Hessian-vector products) and `L z` (the noise) of a
row block are one matrix product each, `np.dot` on contiguous blocks, which numba hands to BLAS `dgemm`:
that is what reaches the machine's floating-point rate at d = 100 (a per-path loop of dot products is
latency-bound at a small fraction of it; measured in `docs/benchmarks.md`), and so are the snapshot losses
`x^T H x / 2` of a row block; the launch keeps BLAS single-threaded under the kernel's own threads
(`numba_backend._launch`).  The z-space programs of the sampled-noise SDEs (`vector_lower._lower_zspace`) add
`L^T v` and `L v` as products by `PL` and its transpose, and read `lambda_j = (L^T L)_jj` (`LAMV`, computed once
per launch) and the current inner sample's weight (`WK[r, kin]`).  Other problems call their generated
per-point helpers (`prob_grad`, `prob_hvp`, `prob_corr`) row by row.

Precision.  With `dtype="float32"` on a dense quadratic every `(PB, d)` array is float32 and the products are
`sgemm` on float32 copies of `H`, `L^T` and the folded matrices (made once per launch; the folded ones computed in
double and rounded once); the reductions sum into a double `acc` and the scalars `S_NAME` are double; the
coordinate-wise arithmetic is float32 as well, its element-free parts computed in double and rounded once
(`single_precision.Hoist`).  On other problems the helpers are double: the state alone is float32 and they read
its double copy `XD`.

Results do not depend on the thread count: blocks and row blocks are fixed by the paths alone.  The
Gaussians are addressed by (step, coordinate block, path, stream) as in the scalar kernels
(`sdederive.simulate.rng.philox`), stream 0 for `g`'s noise and the SDE's `dW`.  Multivariate Student-t noise
(`tnoise`, a problem with `noise="multivariate-t"`) scales the same Gaussians of a row by `sqrt(nu/W)`, `W` the
`chi_square` draw of (step, path, stream): one per noise vector, on Philox counters of its own.
"""

from __future__ import annotations

import sympy as sp

from sdederive.simulate import vector_lower
from sdederive.simulate.backends import kernel_support
from sdederive.simulate.backends.numba_backend import _PRELUDE, HOST_LOSS, _comment, _dtype
from sdederive.simulate.backends.numba_printer import _NumbaPrinter
from sdederive.simulate.backends.single_precision import Hoist
from sdederive.simulate.lower import CodegenError
from sdederive.simulate.rng import philox as rng
from sdederive.simulate.vector_fold import fold_affine
from sdederive.simulate.vector_lower import (WEIGHT_STREAM, VOp, VProgram, index_stream, live_outside,
                                             op_reads)

__all__ = ["generate_vector", "ROW_BLOCK"]

#: paths per row block (one BLAS product per block and step); at d = 100, 64 measured 1.8x faster than 32
ROW_BLOCK = 64
#: whether consecutive coordinate-wise operations share one loop (`_Writer.ops`); the tests switch it off to
#: compare the two forms
FUSE = True
#: whether a float32 step computes its coordinate-wise arithmetic in float32 (`single_precision.Hoist`); the benchmark
#: (bench/bench_vector_f32.py) switches it off to compare with double arithmetic on float32 vectors
F32_ARITH = True


class _Printer(_NumbaPrinter):
    """The numba backend's printer with the program's names bound to the row block: `v_NAME` is
    `V_NAME[r, i]` (`XB` for `x`), `s_NAME` is `S_NAME[r]`."""

    #: vectors held in locals `l_NAME` inside a fused loop (`_Writer.ops`); printed by name, so sympy's order of
    #: the terms, which follows the symbols' names, is that of the unfused kernel
    local: frozenset = frozenset()

    def _print_Symbol(self, e):
        n = e.name  # kstep, tt, dt, sdt and hp_<h> are the kernel's own local names
        if n.startswith("v_") and n[2:] in self.local:
            return f"l_{n[2:]}"
        if n == "s_WK":  # the current inner sample's weight (z-space programs), of a pair its w_j
            return "WK[r, kin]"
        if n == "s_WK2":  # a pair's w'_j (z-space programs with antithetic pairs; NPAIR = n/2, a kernel constant)
            return "WK[r, kin + NPAIR]"
        if n == "v_LAM":  # lambda_i = (L^T L)_ii, constant
            return "LAMV[i]"
        if n.startswith("v_"):
            v = n[2:]
            return "XB[r, i]" if v == "X" else f"V_{v}[r, i]"
        if n.startswith("s_"):
            return f"S_{n[2:]}[r]"
        return n


_P = _Printer({"fully_qualified_modules": True, "standard": "python3"})


def _expr(e: sp.Expr, printer: _Printer = _P) -> str:
    return printer.doprint(e)


def _write_consts(w, ind: int, consts: dict, printer: _Printer) -> None:
    """The float32 locals of a float32 step's element-free parts (`single_precision.Hoist`), each computed in
    double and rounded once."""
    for e, name in consts.items():
        w(ind, f"{name} = DT({_expr(e, printer)})")


_MB_GRAD = '''
@HELPER
def mb_grad(yv, G, IDX, Bm, PV, PM, PL, PY, W):
    # the minibatch gradient at yv over IDX[0:Bm] (repeats count as often as drawn): the problem's generated
    # per-example term and finish (mean, ridge), in the same order as the scalar kernels' minibatch gradient
    for i in range(yv.size):
        G[i] = 0.0
    for jb in range(Bm):
        prob_mb_accum(yv, G, IDX[jb], PV, PM, PL, PY, W)
    prob_mb_finish(yv, G, Bm, PV, PM, PL, PY, W)
'''


class _Writer:
    def __init__(self, prog: VProgram, problem, dtype: str = "float64"):
        self.prog, self.problem = prog, problem
        self.dense = problem.kind == "quadratic_dense"
        # float32 on a dense quadratic: every vector of the step is float32 and the products are BLAS `sgemm` (1.9x
        # `dgemm` at d = 100, docs/benchmarks.md), with the problem's matrices as float32 copies (`PMF`, ...); the
        # reductions and scalars stay float64.  On other problems the generated helpers are double, so only the
        # state is float32 and the helpers and products read its double copy XD of the block
        self.f32 = dtype == "float32" and self.dense
        self.xd = dtype == "float32" and not self.dense
        self.L: list[str] = []
        self.factor = problem.has_noise_factor
        self.drawn: set = set()
        self.t_law = False  # the program draws multivariate Student-t noise (the module imports chi_square)
        self.fold_mats: dict = {}  # (input, polynomial) of a folded step's term -> its matrix's name (vector_fold)
        self.op_reads: list | None = None  # (operation, the names it reads) of the program (live_out)
        self.nconst = 0  # float32 locals c_j of the hoisted element-free parts (Hoist), numbered over the module

    def w(self, ind: int, text: str) -> None:
        self.L.append("    " * ind + text)

    def arr(self, name: str) -> str:
        return "XB" if name == "X" else f"V_{name}"

    def src(self, name: str) -> str:
        """The array a product or a problem helper reads `name` from."""
        return "XD" if (name == "X" and self.xd) else self.arr(name)

    def mat(self, name: str) -> str:
        """A problem matrix as a product reads it: its float32 copy in a float32 step (`f32`)."""
        return f"{name}F" if self.f32 else name

    def x_row(self) -> str:
        return "XD[r]" if self.xd else "XB[r]"

    # -- operations -----------------------------------------------------------------------------------------
    def op(self, ind: int, o: VOp, in_inner: bool, out_override: str | None = None) -> None:
        w = self.w
        out = out_override or self.arr(o.out)
        if o.kind == "cw":
            hoist = Hoist(self.nconst) if (self.f32 and F32_ARITH) else None
            val = _expr(hoist.split(o.args[0]) if hoist else o.args[0])
            if hoist:
                self.nconst = hoist.count
                _write_consts(w, ind, hoist.outer, _P)
            w(ind, "for r in range(nr):")
            if hoist:
                _write_consts(w, ind + 1, hoist.row, _P)
            w(ind + 1, "for i in range(d):")
            w(ind + 2, f"{out}[r, i] = {'DT(' + val + ')' if out == 'XB' else val}")
        elif o.kind == "red" and vector_lower.SPLIT_SUMS:
            # four partial sums, coordinate i into sum i mod 4, the tail into the first: four independent chains
            # instead of one (a strict IEEE sum is latency-bound, one addition per 3 to 4 cycles); the CUDA kernel
            # sums in the same order (cuda_vector), so the two still agree to rounding
            val = _expr(o.args[0])
            w(ind, "for r in range(nr):")
            w(ind + 1, "a0 = 0.0")
            w(ind + 1, "a1 = 0.0")
            w(ind + 1, "a2 = 0.0")
            w(ind + 1, "a3 = 0.0")
            w(ind + 1, "for j in range(d // 4):")
            for q in range(4):
                w(ind + 2, f"i = 4 * j + {q}")
                w(ind + 2, f"a{q} += {val}")
            w(ind + 1, "for i in range(d - d % 4, d):")
            w(ind + 2, f"a0 += {val}")
            w(ind + 1, f"S_{o.out}[r] = (a0 + a1) + (a2 + a3)")
        elif o.kind == "red":
            w(ind, "for r in range(nr):")
            w(ind + 1, "acc = 0.0")
            w(ind + 1, "for i in range(d):")
            w(ind + 2, f"acc += {_expr(o.args[0])}")
            w(ind + 1, f"S_{o.out}[r] = acc")
        elif o.kind == "sc":
            w(ind, "for r in range(nr):")
            w(ind + 1, f"S_{o.out}[r] = {_expr(o.args[0])}")
        elif o.kind in ("grad", "hvp") and self.dense:  # H x and H v: one BLAS product of the row block (H symmetric)
            w(ind, f"np.dot({self.src(o.args[0])}[:nr], {self.mat('PM')}, {out}[:nr])")
        elif o.kind == "grad":
            at_x = o.args[0] == "X"
            varies = at_x and self.problem.noise_varies and vector_lower.reads_noise_scale(self.prog, self.factor)
            sg = "V_SG[r]" if varies else "SGS"
            need = "True" if varies else "False"
            wk = "WX[r]" if at_x else "WS"
            w(ind, "for r in range(nr):")
            w(ind + 1, f"prob_grad({self.src(o.args[0])}[r], {out}[r], HS1, {sg}, PV, PM, PL, PY, {wk}, False, {need})")
        elif o.kind == "hvp":
            w(ind, "for r in range(nr):")
            w(ind + 1, f"prob_hvp({self.x_row()}, {self.src(o.args[0])}[r], {out}[r], PV, PM, PL, PY, WS)")
        elif o.kind in ("ltv", "lv"):  # L^T v and L v (z-space programs): one BLAS product of the row block
            if self.factor:
                m = self.mat("PL" if o.kind == "ltv" else "PLT")
                w(ind, f"np.dot({self.src(o.args[0])}[:nr], {m}, {out}[:nr])")
            else:  # L = diag(sigma)
                w(ind, "for r in range(nr):")
                w(ind + 1, "for i in range(d):")
                w(ind + 2, f"{out}[r, i] = V_SG[r, i] * {self.src(o.args[0])}[r, i]")
        elif o.kind in ("noise", "tnoise"):
            base, stride = o.args[:2]
            raw = o.args[2:] == ("z",)  # the Gaussians z themselves (z-space programs), not Sigma^(1/2) z
            stream = f"{base} + kin * {stride}" if (in_inner and stride) else f"{base}"
            w(ind, "for r in range(nr):")
            w(ind + 1, "p = ROWS[r]")
            w(ind + 1, f"fill_normals(ZB, r, nz4 // 4, cstep, p, np.int64({stream}), key0, key1)")
            if o.kind == "tnoise":
                self._t_scale(ind + 1, stream)
            if raw:
                w(ind + 1, "for i in range(d):")
                w(ind + 2, f"{out}[r, i] = ZB[r, i]")
            elif self.dense and self.factor:
                w(ind, f"np.dot(ZB[:nr], LTP, {out}[:nr])")
            elif self.factor:
                w(ind, "for r in range(nr):")
                w(ind + 1, f"prob_corr({self.x_row()}, V_GR[r], ZB[r], {out}[r], PV, PM, PL, PY, WX[r])")
            else:
                w(ind, "for r in range(nr):")
                w(ind + 1, "for i in range(d):")
                w(ind + 2, f"{out}[r, i] = V_SG[r, i] * ZB[r, i]")
        elif o.kind == "lin":  # a folded affine step (vector_fold): one product per input by its matrix FM_j
            for n, (src, poly, _noise) in enumerate(o.args[0]):
                m = self.fold_mats.get((src, poly))
                if m is not None and n == 0:
                    w(ind, f"np.dot({self.src(src)}[:nr], {m}, {out}[:nr])")
                    continue
                if m is not None:
                    w(ind, f"np.dot({self.src(src)}[:nr], {m}, LT[:nr])")
                w(ind, "for r in range(nr):")
                w(ind + 1, "for i in range(d):")
                term = "LT[r, i]" if m is not None else f"({_expr(poly[0])}) * {self.src(src)}[r, i]"
                w(ind + 2, f"{out}[r, i] {'=' if n == 0 else '+='} {term}")
        elif o.kind == "gtrs":  # grad tr Sigma(x), reading the weights and the gradient of this step's prob_grad at x
            w(ind, "for r in range(nr):")
            w(ind + 1, f"prob_gtrs({self.x_row()}, V_GR[r], {out}[r], PV, PM, PL, PY, WX[r])")
        elif o.kind == "mbgrad":
            src, bt = o.args
            w(ind, "for r in range(nr):")
            if bt not in self.drawn:
                self.drawn.add(bt)
                w(ind + 1, f"draw_indices(IDXB[{bt}, r], Bm, n_ex, cstep, ROWS[r], {index_stream(bt)}, key0, key1)")
            w(ind + 1, f"mb_grad({self.src(src)}[r], {out}[r], IDXB[{bt}, r], Bm, PV, PM, PL, PY, WS)")
        else:  # pragma: no cover - the IR is closed
            raise CodegenError(f"unknown vector operation {o.kind!r}")

    def _t_scale(self, ind: int, stream: str) -> None:
        """The multivariate Student-t: the row's Gaussians times `sqrt(nu/W)`, one `W ~ chi2_nu` of the
        (step, path, stream) shared by its coordinates (`chi_square`; `nu` is the problem's `PV[P_nu]`)."""
        if self.problem.noise != "multivariate-t":  # pragma: no cover - lower_* emit tnoise for this law only
            raise CodegenError(f"multivariate Student-t noise on a problem with noise={self.problem.noise!r}")
        self.t_law = True
        self.w(ind, f"tsc = math.sqrt(PV[P_nu] / chi_square(PV[P_nu], cstep, p, {stream}, key0, key1))")
        self.w(ind, "for i in range(nz4):")
        self.w(ind + 1, "ZB[r, i] *= tsc")

    def ops(self, ind: int, ops, in_inner: bool = False) -> None:
        """The operations in order; a run of consecutive coordinate-wise ones shares one loop over rows and
        coordinates (`FUSE`).  That is the same arithmetic in the same order for each element: a `cw` operation
        reads element `(r, i)` of its inputs only, so within a run it sees the values the earlier operations wrote
        there, and the old ones of a vector a later operation overwrites, as in separate loops.  One loop instead of
        several keeps the values in registers and gives LLVM fewer loops to vectorise."""
        run: list[VOp] = []

        def flush() -> None:
            if not run:
                return
            # a value that no operation outside the run reads lives in a local, not in a (PB, d) array: fewer
            # stores, and few enough arrays for LLVM's runtime alias checks to let the loop vectorise
            live = self.live_out(run)
            local = frozenset(o.out for o in run if o.out not in live)
            # a printer of its own for the run's locals (compiles may run in threads; _P is shared)
            printer = _P
            if local:
                printer = _Printer({"fully_qualified_modules": True, "standard": "python3"})
                printer.local = local
            hoist = Hoist(self.nconst) if (self.f32 and F32_ARITH) else None
            vals = [_expr(hoist.split(o.args[0]) if hoist else o.args[0], printer) for o in run]
            if hoist:
                self.nconst = hoist.count
                _write_consts(self.w, ind, hoist.outer, printer)
            self.w(ind, "for r in range(nr):")
            if hoist:
                _write_consts(self.w, ind + 1, hoist.row, printer)
            self.w(ind + 1, "for i in range(d):")
            for o, val in zip(run, vals):
                last = o.out == self.prog.result
                if last:
                    self.w(ind + 2, f"XB[r, i] = DT({val})")
                elif o.out in local:
                    self.w(ind + 2, f"l_{o.out} = {val}")
                else:
                    self.w(ind + 2, f"{self.arr(o.out)}[r, i] = {val}")
            run.clear()

        for o in ops:
            last = o.out == self.prog.result and o.kind == "cw"
            if o.kind == "cw" and FUSE:
                run.append(o)
                continue
            flush()
            self.op(ind, o, in_inner, "XB" if last else None)
        flush()

    def live_out(self, run: list) -> set:
        """`vector_lower.live_outside` of the run (what it reads of the program computed once per module)."""
        if self.op_reads is None:
            self.op_reads = op_reads(self.prog)
        return live_outside(self.prog, run, self.op_reads)

    # -- one step --------------------------------------------------------------------------------------------
    def step(self, ind: int) -> None:
        prog = self.prog
        self.drawn = set()
        self.w(ind, "kstep = float(cstep)  # the discrete update's step counter k")
        self.w(ind, "tt = cstep * dt  # the SDE's time at the start of the step")
        if self.xd:
            self.w(ind, "for r in range(nr):")
            self.w(ind + 1, "for i in range(d):")
            self.w(ind + 2, "XD[r, i] = XB[r, i]")
        self.ops(ind, prog.pre)
        if prog.n_inner:
            n = prog.n_inner
            w = self.w
            w(ind, "for r in range(nr):")
            nb = (n + 3) // 4
            w(ind + 1, f"fill_normals(WK, r, np.int64({nb}), cstep, ROWS[r], np.int64({WEIGHT_STREAM}), key0, key1)")
            if prog.zspace:  # the weights' sum first (of the pairs' w_j); the samples accumulate themselves
                w(ind + 1, "acc = 0.0")
                w(ind + 1, f"for kin in range({prog.n_loop}):")
                w(ind + 2, "acc += WK[r, kin]")
                w(ind + 1, "S__SW[r] = acc")
                w(ind, f"for kin in range({prog.n_loop}):")
                self.ops(ind + 1, prog.inner, in_inner=True)
            else:
                f, fd, n = prog.fsample, prog.fdiff, prog.n_loop
                w(ind + 1, "S__SW[r] = 0.0")
                w(ind + 1, "for i in range(d):")
                if f:
                    w(ind + 2, "V__SF[r, i] = 0.0")
                    w(ind + 2, "V__SWF[r, i] = 0.0")
                if fd:
                    w(ind + 2, "V__SDF[r, i] = 0.0")
                for _fs, sm in prog.msamples:
                    w(ind + 2, f"V_{sm}[r, i] = 0.0")
                w(ind, f"for kin in range({n}):")
                self.ops(ind + 1, prog.inner, in_inner=True)
                w(ind + 1, "for r in range(nr):")
                w(ind + 2, "wk = WK[r, kin]")
                if fd:  # antithetic pairs: w'_j of the pair's half-difference
                    w(ind + 2, "wk2 = WK[r, kin + NPAIR]")
                w(ind + 2, "S__SW[r] += wk")
                w(ind + 2, "for i in range(d):")
                if f:
                    w(ind + 3, f"fv = V_{f}[r, i]")
                    w(ind + 3, "V__SF[r, i] += fv")
                    w(ind + 3, "V__SWF[r, i] += wk * fv")
                if fd:
                    w(ind + 3, f"V__SDF[r, i] += wk2 * V_{fd}[r, i]")
                for fs, sm in prog.msamples:  # drift estimates only
                    w(ind + 3, f"V_{sm}[r, i] += V_{fs}[r, i]")
                if f:
                    # zeta = (n - 1)^(-1/2) sum_k w_k (F_k - Fbar): Gaussian given the samples, covariance their
                    # sample one (with pairs, of the pair means; zetad = m^(-1/2) sum_j w'_j D_j)
                    w(ind, "for r in range(nr):")
                    w(ind + 1, "for i in range(d):")
                    w(ind + 2, f"V_ZETA[r, i] = (V__SWF[r, i] - S__SW[r] * (V__SF[r, i] / {n}.0)) * "
                               f"{(n - 1) ** -0.5!r}")
                    if fd:
                        w(ind + 2, f"V_ZETAD[r, i] = V__SDF[r, i] * {n ** -0.5!r}")
        self.ops(ind, prog.post)
        # the auxiliary states take their new values at the end of the step (every update read the old ones)
        # (one loop for all of them where the loops are fused: the results are vectors of their own, never a state)
        for j, (st, res) in enumerate(prog.results.items()):
            if j == 0 or not FUSE:
                self.w(ind, "for r in range(nr):")
                self.w(ind + 1, "for i in range(d):")
            self.w(ind + 2, f"V_ST_{st}[r, i] = V_{res}[r, i]")
        if prog.result == "X":  # pragma: no cover - every program computes a new x
            raise CodegenError("the vector program does not update x")


def _fold_matrices(W: _Writer, prog: VProgram) -> None:
    """The matrices of a folded affine step (`sdederive.simulate.vector_fold`), once per launch from the run's
    hyperparameters: `p(H) = sum_k c_k H^k` by Horner's rule (a `d x d` matrix product per degree), times `L^T`
    on the left for a noise input (row form: `(p(H) L z)^T = z^T L^T p(H)`, `p(H)` symmetric)."""
    w = W.w
    lins = [o for o in prog.pre + prog.post if o.kind == "lin"]
    for o in lins:
        for src, poly, noise in o.args[0]:
            if not noise and len(poly) == 1 or (src, poly) in W.fold_mats:
                continue
            m = f"FM{len(W.fold_mats)}"
            W.fold_mats[(src, poly)] = m
            if W.f32:  # computed in double, then rounded once for the float32 products
                m = f"{m}D"
            w(1, f"{m} = np.zeros((d, d))")
            w(1, "if b_hi > b_lo:  # not in the compiling call (no blocks, placeholder problem arrays)")
            w(2, "for i in range(d):")
            w(3, f"{m}[i, i] = {_expr(poly[-1])}")
            for c in reversed(poly[:-1]):
                w(2, f"{m} = np.dot({m}, PM)")
                w(2, "for i in range(d):")
                w(3, f"{m}[i, i] += {_expr(c)}")
            if noise:
                w(2, f"{m} = np.dot({'PL.T' if W.factor else 'np.diag(SG0)'}, {m})")
            if W.f32:
                w(1, f"{m[:-1]} = {m}.astype(DT)")
    if lins:
        w(1, f"LT = np.zeros((PB, d){', DT' if W.f32 else ''})")


def _rotate_back(w, ind: int, dtype: str) -> None:
    """`RB = XB U^T` for the row block (`x = U y` row by row), through the double copy `RA` of a float32 block."""
    src = "XB"
    if dtype == "float32":
        w(ind, "for r in range(nr):")
        w(ind + 1, "for i in range(d):")
        w(ind + 2, "RA[r, i] = XB[r, i]")
        src = "RA"
    w(ind, f"np.dot({src}[:nr], UT, RB[:nr])")


def generate_vector(prog: VProgram, problem, dtype: str = "float64", rotate: bool = False) -> str:
    """The module source: the problem's fragment, the kernel, `host_loss` and `host_obs`.

    `rotate`: `problem` is the eigenbasis form of the user's problem (`sdederive.simulate.vector_eigenbasis`) and
    the kernel's `PL` is the rotation `U`: a row block is loaded as `y = U^T x` (row form `x U`), stored as `x = U y`,
    and its snapshots observe `x`; `STATE` and the statistics stay in the user's coordinates."""
    if problem.noise == "student-t":
        raise CodegenError("vector kernels draw Gaussian or multivariate Student-t noise; the problem has "
                           "noise='student-t', an independent t for each coordinate (the scalar engine's law). Give "
                           f"the problem noise='multivariate-t', nu={problem.nu:g} (xi = sqrt(nu/W) Sigma^(1/2) z, one "
                           "W ~ chi2_nu per draw), or noise='gaussian'")
    prog = fold_affine(prog, problem)
    W = _Writer(prog, problem, dtype)
    w = W.w
    vecs = sorted(prog.vectors - {"X"}) + ["SG"]
    if prog.n_inner and not prog.zspace and prog.fsample:
        vecs += ["_SF", "_SWF"]
    vecs = sorted(set(vecs))
    scalars = sorted(prog.scalars | ({"_SW"} if prog.n_inner else set()))
    if problem.minibatch and prog.mode == "discrete":
        nz = "0"
    elif W.factor and problem.minibatch:
        nz = "PM.shape[0]"  # the low-rank factor of the minibatch noise: one Gaussian per example
    else:
        nz = "d"
    w(0, "@njit(cache=True, nogil=True, fastmath=False, error_model='numpy')")
    w(0, "def kernel(STATE, DIV, k_begin, k_end, save_every, sub, tau, key0, key1, HP, PV, PM, PL, PY, "
         "MEAN, M2, CNT, nblk, b_lo, b_hi):")
    w(1, "N = STATE.shape[0]")
    w(1, "d = STATE.shape[2]")
    W.L.append(problem.layout().numba_offsets("    "))
    w(1, f"PB = {ROW_BLOCK}")
    w(1, f"nz = {nz}")
    w(1, "nz4 = ((nz + 3) // 4) * 4")
    w(1, "dt = tau / sub")
    w(1, "sdt = math.sqrt(dt)")
    w(1, "nwork = 2 * PM.shape[0] + 4")
    for j, h in enumerate(prog.hypers):
        w(1, f"hp_{h} = HP[{j}]")
    vdt = ", DT" if W.f32 else ""  # the dtype of the step's vectors
    if W.dense and W.factor:
        w(1, f"LTP = np.zeros((nz4, d){vdt})  # L^T with zero rows for the padding Gaussians: L z as one product")
        w(1, "if b_hi > b_lo:  # not in the compiling call (placeholder problem arrays)")
        w(2, "for i in range(d):")
        w(3, "for j in range(d):")
        w(4, "LTP[i, j] = PL[j, i]")
    if prog.zspace and W.factor:
        w(1, "PLT = np.ascontiguousarray(PL.T)  # L beta of the z-space accumulators as one product")
    if W.f32:
        w(1, "PMF = PM.astype(DT)  # float32 copies of the problem's matrices for the sgemm products")
        if prog.zspace and W.factor:
            w(1, "PLF = PL.astype(DT)")
            w(1, "PLTF = PLT.astype(DT)")
    w(1, "XB = np.zeros((PB, d), DT)" if dtype == "float32" else "XB = np.zeros((PB, d))")
    if W.xd:
        # the helpers read double vectors: the state is float32, every other vector float64 (as the scalar kernels)
        w(1, "XD = np.zeros((PB, d))")
    for v in vecs:
        w(1, f"V_{v} = np.zeros((PB, d){vdt})")
    for s in scalars:
        w(1, f"S_{s} = np.zeros(PB)")
    w(1, f"ZB = np.zeros((PB, nz4){vdt})")
    w(1, "WX = np.zeros((PB, nwork))")
    w(1, "WS = np.zeros(nwork)")
    w(1, "HS1 = np.zeros(d)")
    w(1, "SGS = np.zeros(d)")
    w(1, "SG0 = np.zeros(d)")
    w(1, "prob_noise0(d, SG0, PV, PM, PL, PY, WS)")
    _fold_matrices(W, prog)
    if prog.zspace:  # lambda_j = (L^T L)_jj: |L z|^2 = sum_j lambda_j z_j^2 for the factor's orthogonal columns
        w(1, "LAMV = np.zeros(d)")
        w(1, "for j in range(d):")
        if W.factor:  # (not in the compiling call: its PL is a 1 x 1 placeholder)
            w(2, "for i in range(d if b_hi > b_lo else 0):")
            w(3, "LAMV[j] += PL[i, j] * PL[i, j]")
        else:
            w(2, "LAMV[j] = SG0[j] * SG0[j]")
    if prog.n_inner:
        w(1, f"WK = np.zeros((PB, {((prog.n_inner + 3) // 4) * 4}))")
    if prog.pairs:  # antithetic pairs: w'_j of pair j is WK[r, j + NPAIR]
        w(1, f"NPAIR = {prog.n_loop}")
    if problem.minibatch and prog.mode == "discrete":
        w(1, "n_ex = PM.shape[0]")
        w(1, "Bm = int(PV[P_B])")
        w(1, f"IDXB = np.zeros(({prog.batches}, PB, Bm + 4), np.int64)")
    # the losses of a snapshot on a dense quadratic: one BLAS product per row block (the helper's per-path
    # double loop is latency-bound, and with save_every=1 it cost as much as NSGD's step at d = 100)
    blas_loss = W.dense
    if blas_loss:
        w(1, f"LB = np.zeros((PB, d){vdt})")
    if rotate:  # U^T for the way back; the rotations in double (float32 steps too), as the host's state
        if prog.states != ("x",) or W.factor:  # pragma: no cover - vector_eigenbasis rotates nothing else
            raise CodegenError("the eigenbasis kernel rotates the state x alone, on a problem with diagonal noise")
        w(1, "UT = np.ascontiguousarray(PL.T)")
        w(1, "RA = np.zeros((PB, d))")
        w(1, "RB = np.zeros((PB, d))")
    w(1, "OBS = np.empty(2 + d)")
    w(1, "ROWS = np.zeros(PB, np.int64)")
    w(1, "ALIVE = np.zeros(PB, np.bool_)")
    w(1, "for b in range(b_lo, b_hi):")
    w(2, "p_lo = (b * N) // nblk")
    w(2, "p_hi = ((b + 1) * N) // nblk")
    w(2, "q = p_lo")
    w(2, "while q < p_hi:")
    w(3, "nr = 0")
    w(3, "while q < p_hi and nr < PB:")
    w(4, "if DIV[q] < 0:")
    w(5, "ROWS[nr] = q")
    w(5, "nr += 1")
    w(4, "q += 1")
    w(3, "if nr == 0:")
    w(4, "continue")
    w(3, "nalive = nr")
    w(3, "for r in range(nr):")
    w(4, "ALIVE[r] = True")
    w(4, "for i in range(d):")
    w(5, f"{'RA' if rotate else 'XB'}[r, i] = STATE[ROWS[r], 0, i]")
    w(5, "V_SG[r, i] = SG0[i]")
    for j, st in enumerate(prog.states[1:], 1):
        w(5, f"V_ST_{st}[r, i] = STATE[ROWS[r], {j}, i]")
    if rotate:  # y = U^T x, row form x U
        w(3, "np.dot(RA[:nr], PL, RB[:nr])")
        w(3, "for r in range(nr):")
        w(4, "for i in range(d):")
        w(5, "XB[r, i] = RB[r, i]")
    w(3, "for k in range(k_begin, k_end):")
    if prog.mode == "discrete":
        w(4, "cstep = k")
        W.step(4)
    else:
        w(4, "for ss in range(sub):")
        w(5, "cstep = k * sub + ss")
        W.step(5)
    # divergence: a non-finite coordinate ends the path at step k + 1
    w(4, "for r in range(nr):")
    w(5, "if ALIVE[r]:")
    w(6, "ok = True")
    w(6, "for i in range(d):")
    w(7, "if not (abs(XB[r, i]) <= 1.7976931348623157e308):")
    w(8, "ok = False")
    for st in prog.states[1:]:
        w(7, f"if not (abs(V_ST_{st}[r, i]) <= 1.7976931348623157e308):")
        w(8, "ok = False")
    w(6, "if not ok:")
    w(7, "DIV[ROWS[r]] = k + 1")
    w(7, "ALIVE[r] = False")
    w(7, "nalive -= 1")
    w(4, "if (k + 1) % save_every == 0:")
    w(5, "jsave = (k + 1) // save_every")
    if blas_loss:  # the row block's H x as one product, then prob_loss's sum (x^T H x / 2) row by row
        w(5, f"np.dot(XB[:nr], {W.mat('PM')}, LB[:nr])")
    if rotate:  # the observed x = U y (row form y U^T); the loss x^T H x = y^T (U^T H U) y from XB
        _rotate_back(w, 5, dtype)
    w(5, "for r in range(nr):")
    w(6, "if ALIVE[r]:")
    w(7, "xrow = RB[r]" if rotate else "xrow = XB[r]")
    if blas_loss:
        w(7, "acc = 0.0")
        w(7, "for i in range(d):")
        w(8, "acc += (0.5 * LB[r, i]) * XB[r, i]")
        w(7, "OBS[0] = acc")
    else:
        w(7, "OBS[0] = prob_loss(xrow, PV, PM, PL, PY, WS)")
    w(7, "for i in range(d):")
    w(8, "OBS[2 + i] = xrow[i]")
    w(7, "if not snapshot_add(MEAN, M2, CNT, b, jsave, OBS, xrow):")
    w(8, "DIV[ROWS[r]] = k + 1")
    w(8, "ALIVE[r] = False")
    w(8, "nalive -= 1")
    w(4, "if nalive == 0:")
    w(5, "break")
    if rotate:
        _rotate_back(w, 3, dtype)
    w(3, "for r in range(nr):")
    w(4, "for i in range(d):")
    w(5, f"STATE[ROWS[r], 0, i] = {'RB' if rotate else 'XB'}[r, i]")
    for j, st in enumerate(prog.states[1:], 1):
        w(5, f"STATE[ROWS[r], {j}, i] = V_ST_{st}[r, i]")
    body = "\n".join(W.L)
    host = "\n".join([
        *HOST_LOSS,
        "", "",
        "@njit(cache=True, nogil=True, fastmath=False, error_model='numpy')",
        "def host_obs(ST, HP, OUT):",
        "    for i in range(ST.shape[1]):",
        "        OUT[0, i] = ST[0, i]",
    ])
    header = "# generated by sdederive: do not edit (regenerated from the spec; file name = content hash)\n"
    t_import = "from sdederive.simulate.rng.philox import chi_square\n" if W.t_law else ""
    return (header + _PRELUDE.format(rng=rng.SOURCE_HASH, support=kernel_support.SOURCE_HASH) + t_import + "\n"
            + _comment(f"# vector kernel: {prog.mode} {prog.name} on {problem.kind}, dtype {dtype}, "
                       f"inner samples {prog.n_inner}") + "\n"
            + f"DT = np.{_dtype(dtype)}\n"
            + "\n".join(_comment(f"# note: {n}") for n in prog.notes) + "\n"
            + problem.numba_fragment() + "\n" + (_MB_GRAD if problem.minibatch else "") + "\n" + body + host + "\n")

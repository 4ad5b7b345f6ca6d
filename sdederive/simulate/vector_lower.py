r"""Lowering of vector optimizers and vector SDEs to a backend-independent *vector program*.

A `VProgram` is straight-line code over per-path vectors (length `d`) and scalars, one step of one
path, that the backends print (`sdederive.simulate.backends.numba_vector`: blocks of paths, the
dense products as BLAS matrix products).  Its operations (`VOp`):

============  ============================================================================================
`grad`      `out = grad f(src)` (the problem's full-batch gradient at the point `src`)
`hvp`       `out = H(x) src` (the Hessian at the path's current `x` times `src`)
`noise`     `out = Sigma^(1/2) z` with `z` the Gaussians of one Philox stream (`L z`, `sigma*z`, or
              the low-rank minibatch factor of logistic regression)
`tnoise`    `out = sqrt(nu/W) Sigma^(1/2) z`: the multivariate Student-t of a problem with
              `noise="multivariate-t"` (its `nu`), `z` as for `noise`, one `W ~ chi2_nu` per
              (step, path, stream) shared by the coordinates (`sdederive.simulate.rng.philox.chi_square`)
`gtrs`      `out = grad tr Sigma(x)` at the path's `x` (the problem's `prob_gtrs`; SDEs derived with
              `Sigma="x"`)
`ltv`       `out = L^T src` for the constant noise factor `L` (`diag(sigma)` without one): z-space programs
`lv`        `out = L src`, the same factor (z-space programs; `noise` with the third argument `"z"` there
              writes the Gaussians `z` themselves)
`mbgrad`    `out` = the minibatch gradient at `src` over the indices of minibatch `b` (drawn once per
              step from their own stream), for problems with real minibatches (discrete mode)
`lin`       `out = sum_j M_j src_j`: a folded affine step (`sdederive.simulate.vector_fold`, numba on a dense
              quadratic), each term `(src, (c_0, c_1, ...), noise)` the matrix `sum_k c_k H^k` (times `L` for
              a noise input, whose `src` holds the raw `z`)
`cw`        `out_i = expr` coordinate by coordinate (`v_NAME` is `NAME_i`, `s_NAME` a scalar, `hp_h` a
              hyperparameter)
`red`       the scalar `out = sum_i expr`
`sc`        the scalar `out = expr`
============  ============================================================================================

**Discrete mode** evaluates the update rule as written: `g = grad f(x) + xi` with `xi` of stream 0 (the
same Gaussians as the scalar kernels; `tnoise` on a multivariate-t problem), `grad_at(y)` is `grad f(y) + xi_b` with `g`'s own `xi` for the
same minibatch and a fresh stream for `fresh=True`; on logistic regression both are true minibatch
gradients over the same (or fresh) indices.

**SDE mode** is Euler–Maruyama, `x' = x + b(x) dt + D(x) dW`:

* where the diffusion is a matrix times the noise root, `D = A Sigma^(1/2)` (SGD, USAM, every SDE of
  regime `high-dim`), the increment is `A` applied to `Sigma^(1/2) z sqrt(dt)`, `z` of stream 0, with the
  sign of the discrete noise (`dW = -z sqrt(dt)` for x's own noise, whose coefficient is written for
  `F = -(x' - x)/eta`): the SDE run of a seed shares its Gaussians with the discrete run, positively coupled;
* auxiliary states (LAMB's `m`, `v` in regime `balanced`) take their Euler steps from the same old values and
  the same `dW`; an SDE with a bias correction `1 - e^{-rho t}` reads the time `tt` of the step;
* where it is the root of a covariance with expectation atoms or sign moments,
  `D = sqrt(eta) C^(1/2)`, `C = Cov[F]` (SAM, NSGD, clipped SGD, SignSGD with a full `Sigma`), no root
  is computed.  Each step draws `n` inner samples `g_k = grad + Sigma^(1/2) z_k`, evaluates the random
  part of `F` (`VectorSDE.increment`) at them and uses
  $\zeta = (n-1)^{-1/2}\sum_k w_k (F_k - \bar F)$, `w_k ~ N(0, 1)` independent: conditionally on the
  samples `zeta` is Gaussian with the *sample* covariance of `F`, so `E[zeta zeta^T] = Cov[F]` exactly and
  its odd moments vanish.  The drift is `-(a_0 + mean_k F_k)`: every expectation of `F` (the atoms, and
  `E[g] = grad f`) estimated from the same samples, so `-E[F]` is unbiased and its error has the covariance
  `Cov[F]/n` exactly; the noise is scaled by `s = (1 - dt/(n eta))^(1/2)` to make up for it.  The step's mean
  and covariance are then exactly `b dt` and `D D^T dt` and its third moments zero: a weak order-1 scheme for
  every `n >= 2` (Kloeden & Platen, Thm. 14.5.2), which the inner samples only change the constant of.
  (With the closed-form parts kept exact and only the atoms estimated, the noise would be inflated by
  `dt Cov[drift estimate]`, a relative `1/n` for NSGD at `dt = eta`: the stationary loss `1/n` too high.)
  `inner=` of `sd.compile` sets `n` (default 8).  `VectorSDE.increment` is checked against the drift first.
  With auxiliary states (`adamw_clip`: `m`'s noise such a root, `v`'s drift an atom) the same samples serve
  every state's increment (`VectorSDE.aux_increment`): the noisy state (one at most, with no other noise in
  the SDE) gets `zeta` and the noise scale, a state with atoms in its drift alone the samples' mean.
  Where the noise factor is constant with orthogonal columns (every `Quadratic`) and `F` has no `sign(g)`,
  the same step runs in *z-space* (`_lower_zspace`): the norms `|g_k|` from `L^T grad` and the Gaussians alone,
  the products by `L` and by `F`'s matrices once after the samples, so a sample costs `O(d)` instead of a
  matrix product; the same Gaussians give the same paths up to rounding.  There, for an even `n >= 4`, the
  samples are `n/2` antithetic pairs `(z_j, -z_j)` (`ANTITHETIC`): half the Gaussians, the pair means' sample
  covariance and the half-differences' second moment making up the noise, so the step's mean and covariance
  stay exact (`_lower_zspace`).  The per-sample form pairs `xi, -xi` the same way (`P_j` the sample its sums see,
  the half-differences `D_j` weighted into `ZETAD`), except where a state's drift alone is sampled.

**Student-t SDEs** (`VectorSDE.noise == "student-t"`, derived under the multivariate t) run on a problem with
`noise="multivariate-t"` of the same `nu` (`compile_vector` checks it; a symbolic `nu` takes the problem's value
here).  The inner samples `g_k` are drawn under the t law (`tnoise`), so the sampled drift and covariance are the
t law's; the Brownian increments (`A Sigma^(1/2) dW`, the weights `w_k`) stay Gaussian: the law enters the SDE
only through its coefficients (USAM: `D = sqrt(eta nu/(nu - 2)) (I + rho H) Sigma^(1/2)`).

Everything that cannot be lowered is a `CodegenError` naming it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import sympy as sp

from sdederive.sde_vector import (
    GRAD,
    GRAD_TRSIGMA,
    HESS,
    IDENT,
    NORM_G,
    SIGMA,
    XVEC,
    SignMean,
    VDot,
    VectorSDE,
    VNorm,
    increment_matches_drift,
)
from sdederive.simulate.lower import CodegenError, check_supported, fold_numbers
from sdederive.spec import vector as V

__all__ = ["VOp", "VProgram", "lower_discrete", "lower_sde", "sampled_noise", "DEFAULT_INNER", "NOISE_STREAM_INNER",
           "WEIGHT_STREAM", "index_stream", "noise_stream"]

#: inner samples per step for SDEs whose diffusion is the root of a covariance with atoms
DEFAULT_INNER = 8
#: Philox stream of the inner samples' weights w_k, and the first stream of their Gaussians
WEIGHT_STREAM = 999
NOISE_STREAM_INNER = 1000


def noise_stream(batch: int) -> int:
    """The Philox stream of minibatch `batch`'s Gaussian noise in discrete mode (0 for `g`'s, as the scalar
    kernels)."""
    return 0 if batch == 0 else 100 + batch


def index_stream(batch: int) -> int:
    """The Philox stream of minibatch `batch`'s indices (1 for `g`'s, as the scalar kernels)."""
    return 1 if batch == 0 else 200 + batch


@dataclass(frozen=True)
class VOp:
    kind: str
    out: str
    args: tuple = ()


@dataclass
class VProgram:
    """One step of one path (see the module docstring).  `pre` runs once per step, `inner` once per inner
    sample `k` (its `noise` streams are `stream + k*stride`), then `post`; `fsample` is the vector `F_k` whose
    sum is `_SF` and whose weighted deviations make `ZETA` (the conditionally Gaussian noise).  `result`
    holds the new `x`.  `states` are the kernel's states (`x` first): an auxiliary state `m` is read as the
    vector `ST_m` and `results["m"]` holds its new value (every state is updated from the old values, at the
    end of the step).  Expressions may use `kstep` (the step counter `k` of the discrete update) and `tt` (the
    SDE's time `t` at the start of the step)."""

    mode: str
    name: str
    pre: list = field(default_factory=list)
    inner: list = field(default_factory=list)
    post: list = field(default_factory=list)
    n_inner: int = 0
    fsample: str | None = None
    #: with antithetic pairs in the per-sample form: the pair's half-difference `D_j` (`fsample` is then its mean
    #: `P_j`), whose `w'_j`-weighted sum the printers accumulate as `_SDF` and scale to `ZETAD`
    fdiff: str | None = None
    #: `(F_k, sum)` for sampled increments whose samples estimate a drift only (an auxiliary state's, when another
    #: state carries the sampled noise): the printers accumulate `sum = sum_k F_k` as they do `_SF`
    msamples: tuple = ()
    zspace: bool = False
    #: z-space programs with antithetic pairs (`_lower_zspace`): `inner` runs once per pair `(z_j, -z_j)`,
    #: `n_inner / 2` times, and reads the weights `w_j = WK[j]` and `w'_j = WK[n/2 + j]`
    pairs: bool = False
    result: str = "X"
    vectors: set = field(default_factory=set)
    scalars: set = field(default_factory=set)
    batches: int = 1
    hypers: tuple = ()
    notes: tuple = ()
    states: tuple = ("x",)
    results: dict = field(default_factory=dict)

    @property
    def n_loop(self) -> int:
        """How many times `inner` runs per step: `n_inner`, or `n_inner / 2` antithetic pairs."""
        return self.n_inner // 2 if self.pairs else self.n_inner


def reads(o: VOp) -> set:
    """The names the operation `o` reads: the vectors and scalars of its expressions (`v_NAME`, `s_NAME`) and its
    string arguments (the sources of products and problem helpers, nested in a folded step's terms)."""
    out: set = set()
    stack = list(o.args)
    while stack:
        a = stack.pop()
        if isinstance(a, str):
            out.add(a)
        elif isinstance(a, (tuple, list)):
            stack.extend(a)
        elif isinstance(a, sp.Basic):
            out |= {q.name[2:] for q in a.free_symbols if q.name.startswith(("v_", "s_"))}
    return out


def op_reads(prog) -> list:
    """`(operation, reads(operation))` for every operation of the program, in order."""
    return [(o, reads(o)) for o in prog.pre + prog.inner + prog.post]


def reads_noise_scale(prog, factor: bool) -> bool:
    """Whether a step of `prog` reads the per-coordinate noise scale `SG`: an expression with `v_SG`, or, on a
    problem without a noise factor, the noise `sigma z` and the z-space `L^T v`, `L v` (`L = diag(sigma)`).  Where it
    does not, the gradient at `x` need not recompute a state-dependent scale (logistic regression's: a pass over the
    data per step that nothing reads)."""
    for o, r in op_reads(prog):
        if "SG" in r or (not factor and o.kind in ("noise", "tnoise", "ltv", "lv") and o.args[2:] != ("z",)):
            return True
    return False


def live_outside(prog, run: list, all_reads: list) -> set:
    """The vectors of a run of consecutive coordinate-wise operations that something outside the run reads: another
    operation of the program (any part, any step), the step's results, the sampled increments, or a write before a
    read within the run (a value from the previous step).  The printers fuse a run into one loop and keep the
    others in locals (`numba_vector`, `cuda_vector`); `all_reads` is `op_reads(prog)`."""
    ids = {id(o) for o in run}
    out = {prog.result, *prog.results.values(), *(n for n in (prog.fsample, prog.fdiff) if n),
           *(fs for fs, _sm in prog.msamples)}
    for o, r in all_reads:
        if id(o) not in ids:
            out |= r
    outs, written = {q.out for q in run}, set()
    for o in run:
        out |= {n for n in reads(o) if n in outs and n not in written}
        written.add(o.out)
    return out


def _ordered(atoms: set) -> list:
    """`atoms` in sympy's canonical order: operations are emitted in the order a set is iterated, and a set of
    sympy objects iterates in the order of their hashes, which change with Python's hash seed from one process to
    the next (the same kernel would print differently, miss the on-disk cache and compile again)."""
    return sorted(atoms, key=sp.default_sort_key)


#: the kernel's step counter and time (see `VProgram`)
KSTEP, TT = sp.Symbol("kstep", real=True), sp.Symbol("tt", real=True)
_KERNEL_NAMES = ("v_", "s_", "hp_", "kstep", "tt")


def state_vec(name: str) -> str:
    """The program's vector holding the current value of the state `name`."""
    return "X" if name == "x" else f"ST_{name}"


def _v(name: str) -> sp.Symbol:
    return sp.Symbol(f"v_{name}", real=True)


def _s(name: str) -> sp.Symbol:
    return sp.Symbol(f"s_{name}", real=True)


class _Builder:
    def __init__(self, prog: VProgram, hyper_map: dict):
        self.prog = prog
        self.ops = prog.pre
        self.n = 0
        self.hyper_map = hyper_map  # symbol name -> kernel expression (hp_<h>, r -> hp_rho/hp_eta, k -> kstep, ...)
        self.memo: dict = {}
        self.problem = None  # the problem of an SDE program (lower_sde)

    # -- emitting -------------------------------------------------------------------------------------------
    def fresh(self, stem: str) -> str:
        self.n += 1
        return f"{stem}{self.n}"

    def vop(self, kind: str, args: tuple, stem: str = "t", name: str | None = None) -> str:
        out = name or self.fresh(stem)
        self.ops.append(VOp(kind, out, args))
        self.prog.vectors.add(out)
        return out

    def sop(self, kind: str, expr, stem: str = "q") -> str:
        out = self.fresh(stem)
        self.ops.append(VOp(kind, out, (expr,)))
        self.prog.scalars.add(out)
        return out

    def cw(self, expr: sp.Expr, stem: str = "t") -> str:
        expr = fold_numbers(sp.sympify(expr))
        check_supported(expr, f"the vector kernel of {self.prog.name}")
        # a plain copy needs no new vector
        if isinstance(expr, sp.Symbol) and expr.name.startswith("v_"):
            return expr.name[2:]
        return self.vop("cw", (expr,), stem)

    def red(self, expr: sp.Expr) -> sp.Symbol:
        return _s(self.sop("red", fold_numbers(expr)))

    def norm(self, v: str) -> sp.Symbol:
        key = ("norm", v)
        if key not in self.memo:
            self.memo[key] = _s(self.sop("sc", sp.sqrt(self.red(_v(v) ** 2))))
        return self.memo[key]

    def hyper(self, e: sp.Expr) -> sp.Expr:
        e = sp.sympify(e)
        return e.xreplace({f: self.hyper_map[f.name] for f in e.free_symbols
                           if isinstance(f, sp.Symbol) and f.name in self.hyper_map})

    def check_names(self, out: sp.Expr, what) -> sp.Expr:
        bad = [q for q in out.free_symbols if not q.name.startswith(_KERNEL_NAMES)]
        if bad:
            raise CodegenError(f"{self.prog.name}: no kernel value for the symbol(s) {sorted(map(str, bad))} in {what}")
        return out

    def sum_vec(self, terms: list) -> str:
        """`sum_j c_j v_j` for `(c_j, name_j)`."""
        if not terms:
            return self.cw(sp.S.Zero, "z")
        return self.cw(sp.Add(*[c * _v(n) for c, n in terms]))

    # -- matrix expressions applied to vectors ----------------------------------------------------------------
    def scalar(self, e: sp.Expr) -> sp.Expr:
        """A scalar sympy expression of the SDE as a kernel expression: norms and inner products of
        deterministic vectors become reductions, `Trace(Sigma)` the sum of the noise variances."""
        repl = {}
        for a in _ordered(e.atoms(VNorm)):
            repl[a] = self.norm(self.vec(a.args[0]))
        for a in _ordered(e.atoms(VDot)):
            repl[a] = self.red(_v(self.vec(a.args[0])) * _v(self.vec(a.args[1])))
        for a in _ordered(e.atoms(sp.Trace)):
            if a.arg != SIGMA:
                raise CodegenError(f"{self.prog.name}: the trace {a} cannot be lowered; supported: Trace(Sigma)")
            repl[a] = self.red(_v("SG") ** 2)
        return self.check_names(self.hyper(e.xreplace(repl)), e)

    def apply(self, M: sp.Basic, v: str) -> str:
        """The vector `M v` for a `(d, d)` matrix expression `M` in `H`, `I` and scalars."""
        if M == IDENT:
            return v
        if M == HESS or (isinstance(M, sp.Transpose) and M.arg == HESS):
            key = ("hvp", v)
            if key not in self.memo or self.ops is not self.memo[key][1]:
                self.memo[key] = (self.vop("hvp", (v,), "hv"), self.ops)
            return self.memo[key][0]
        if isinstance(M, sp.MatPow) and M.base == HESS and M.exp.is_Integer and M.exp > 0:
            for _ in range(int(M.exp)):
                v = self.apply(HESS, v)
            return v
        if isinstance(M, sp.MatAdd):
            return self.sum_vec([(sp.S.One, self.apply(t, v)) for t in M.args])
        if isinstance(M, sp.MatMul):
            scal = [a for a in M.args if not getattr(a, "is_Matrix", False)]
            mats = [a for a in M.args if getattr(a, "is_Matrix", False)]
            for m in reversed(mats):
                v = self.apply(m, v)
            c = self.scalar(sp.Mul(*scal))
            return v if c == 1 else self.cw(c * _v(v))
        raise CodegenError(f"{self.prog.name}: the matrix {M} cannot be applied in a kernel; supported: H, I, their "
                           "sums, products and scalar multiples (Sigma only as the noise root Sigma^(1/2) dW)")

    def cwexpr(self, E: sp.Basic) -> sp.Expr:
        """The `i`-th coordinate of the coordinate-wise `(d, 1)` expression `E` (sums, scalar multiples,
        Hadamard products and powers of vectors, `ones`, `diag(Sigma)`) as one kernel expression; anything else
        (a matrix product) becomes a vector of its own."""
        if isinstance(E, sp.OneMatrix):
            return sp.S.One
        if isinstance(E, sp.ZeroMatrix):
            return sp.S.Zero
        if isinstance(E, sp.DiagonalOf) and E.arg == SIGMA:
            return _v("SG") ** 2  # the noise's marginal scale: SG_i**2 = Sigma_ii
        if isinstance(E, sp.HadamardProduct):
            return sp.Mul(*[self.cwexpr(a) for a in E.args])
        if isinstance(E, sp.HadamardPower):
            return self.cwexpr(E.base) ** self.scalar(E.exp)
        if isinstance(E, sp.MatAdd):
            return sp.Add(*[self.cwexpr(a) for a in E.args])
        if isinstance(E, sp.MatMul):
            scal = [a for a in E.args if not getattr(a, "is_Matrix", False)]
            mats = [a for a in E.args if getattr(a, "is_Matrix", False)]
            if len(mats) == 1:
                return self.scalar(sp.Mul(*scal)) * self.cwexpr(mats[0])
        return _v(self.vec(E))

    def vec(self, E: sp.Basic) -> str:
        """The vector of a `(d, 1)` matrix expression (equal expressions once: computed in this part of the
        step or in `pre`, which runs before the others)."""
        key = ("vec", E)
        hit = self.memo.get(key)
        if hit is not None and (hit[1] is self.ops or hit[1] is self.prog.pre):
            return hit[0]
        out = self._vec(E)
        self.memo[key] = (out, self.ops)
        return out

    def _vec(self, E: sp.Basic) -> str:
        if E == GRAD:
            return "GR"
        if E == XVEC:
            return "X"
        if isinstance(E, sp.MatrixSymbol) and E.name in self.prog.states[1:]:
            return state_vec(E.name)
        if isinstance(E, (sp.HadamardProduct, sp.HadamardPower, sp.DiagonalOf, sp.OneMatrix)):
            return self.cw(self.cwexpr(E))
        if E == GRAD_TRSIGMA:  # grad tr Sigma(x) of a state-dependent covariance (Sigma="x")
            if self.problem is None or not self.problem.noise_varies:
                return self.cw(sp.S.Zero, "z")  # a constant covariance
            if self.problem.code().grad_trace_cov is None:  # pragma: no cover - every built-in kind whose noise varies
                raise CodegenError(
                    f"{self.prog.name}: the SDE holds grad tr Sigma(x) (derived with Sigma='x'), and the noise of the "
                    f"{self.problem.kind} problem varies with x without a description of that gradient "
                    "(ProblemCode.grad_trace_cov); simulate it on logistic regression or a problem with a constant "
                    "noise covariance, or derive with Sigma='full'")
            return self.vop("gtrs", ("X",), "gt")  # after the gradient at x (its weights and GR), as prob_corr
        if isinstance(E, SignMean):
            if E.nu is not None:
                raise CodegenError(f"{self.prog.name}: the closed-form sign mean under the multivariate Student-t "
                                   f"({E}) has no kernel value (the t CDF); only the Gaussian erf form is lowered")
            return self.cw(sp.erf(_v("GR") / (sp.sqrt(2) * _v("SG"))))
        if isinstance(E, sp.ZeroMatrix):
            return self.cw(sp.S.Zero, "z")
        if isinstance(E, sp.MatAdd):
            return self.sum_vec([(sp.S.One, self.vec(t)) for t in E.args])
        if isinstance(E, sp.MatMul):
            scal, mats = [], []
            for a in E.args:
                if not getattr(a, "is_Matrix", False):
                    scal.append(a)
                else:
                    mats.append(a)
            if not mats or mats[-1].shape[1] != 1:
                raise CodegenError(f"{self.prog.name}: cannot lower the vector expression {E}")
            v = self.vec(mats[-1])
            for m in reversed(mats[:-1]):
                v = self.apply(m, v)
            c = self.scalar(sp.Mul(*scal))
            return v if c == 1 else self.cw(c * _v(v))
        raise CodegenError(f"{self.prog.name}: cannot lower the vector expression {E} ({type(E).__name__})")


def _hyper_map(hypers, regime: str = "sgd", decays: tuple = ()) -> dict:
    """Symbol name -> kernel expression: the hyperparameters, the step counter `k` and time `t`, SAM's `r` of
    regime `rho-eta` (`rho = r*eta`) and the scaled decays of regime `balanced` (`1 - beta = rho*eta`)."""
    hp = {h: sp.Symbol(f"hp_{h}", real=True) for h in hypers}
    m = dict(hp)
    m.update(k=KSTEP, t=TT)
    if regime == "rho-eta":
        m["r"] = hp["rho"] / hp["eta"]
    if regime == "balanced":
        from sdederive.regimes import scaled_name

        for h in decays:
            m[scaled_name(h, "rho")] = (1 - hp[h]) / hp["eta"]
    return m


# -- discrete mode ----------------------------------------------------------------------------------------------


def lower_discrete(opt: V.VectorOptimizer, problem) -> VProgram:
    """The program of one step of the discrete update `opt` on `problem` (every state from the old values)."""
    prog = VProgram("discrete", opt.name, hypers=tuple(h.name for h in opt.hypers), states=opt.state_names)
    b = _Builder(prog, _hyper_map(prog.hypers))
    prog.vectors |= {"X", "GR"} | {state_vec(s) for s in prog.states[1:]}
    batches: dict[int, str] = {}

    def noisy_grad(point: str, batch: int) -> str:
        if problem.minibatch:
            return b.vop("mbgrad", (point, batch), "mg")
        gr = "GR" if point == "X" else b.vop("grad", (point,), "gr")
        if batch not in batches:
            kind = "tnoise" if problem.noise == "multivariate-t" else "noise"
            batches[batch] = b.vop(kind, (noise_stream(batch), 0), "xi")
        return b.cw(_v(gr) + _v(batches[batch]), "g")

    if not problem.minibatch:
        b.ops.append(VOp("grad", "GR", ("X",)))
    g = noisy_grad("X", 0)
    env = {"x": "X", "g": g, **{s: state_vec(s) for s in prog.states[1:]}}
    nb = [1]
    memo: dict = {}  # V.value_key: equal sub-updates are computed once, fresh minibatches stay separate draws

    def scal(s: sp.Expr) -> sp.Expr:
        repl = {}
        for a in _ordered(s.atoms(V.VScalar)):
            vs = [low(w) for w in a.vargs]
            repl[a] = b.norm(vs[0]) if a.op == "norm" else b.red(_v(vs[0]) * _v(vs[1]))
        return b.check_names(b.hyper(s.xreplace(repl)), "the update")

    def low(v: V.Vec) -> str:
        key = V.value_key(v)
        if key not in memo:
            memo[key] = _low(v)
        return memo[key]

    def _low(v: V.Vec) -> str:
        if isinstance(v, V.VecSym):
            return env[v.name]
        if isinstance(v, V.VAdd):
            return b.sum_vec([(sp.S.One, low(t)) for t in v.terms])
        if isinstance(v, V.VScale):
            w = low(v.vec)
            return b.cw(scal(v.scalar) * _v(w))
        if isinstance(v, V.MatVec):
            M = v.matrix
            if M == IDENT or (isinstance(M, sp.MatMul) and M.as_coeff_mmul()[1] == IDENT):
                return b.cw(scal(M.as_coeff_mmul()[0] if M != IDENT else sp.S.One) * _v(low(v.vec)))
            raise CodegenError(f"{opt.name}: the update multiplies by the matrix {M}, which has no value in the "
                               "simulators; allowed there: scalar multiples of the identity")
        if isinstance(v, V.GradAt):
            p = low(v.point)
            if v.fresh:
                batch = nb[0]
                nb[0] += 1
            else:
                batch = 0
            return noisy_grad(p, batch)
        if isinstance(v, V.CoordMap):
            w = low(v.vec)
            return b.cw(v.fn(_v(w)))
        if isinstance(v, V.CoordExpr):
            args = {var: _v(low(w)) for var, w in zip(v.vars, v.vecs)}
            return b.cw(scal(v.body.xreplace(args)))
        raise CodegenError(f"{opt.name}: cannot lower {v!r}")  # pragma: no cover - the IR is closed

    for name, upd, _kind in opt.aux:
        r = low(upd)
        if r in ("X", "GR") or r.startswith("ST_"):  # a state's old value: copied, so the end-of-step copies
            r = b.vop("cw", (_v(r),), "ns")           # never read a state already overwritten
        prog.results[name] = r
    res = low(opt.update)
    if not (b.ops and b.ops[-1].out == res and b.ops[-1].kind == "cw") or res in prog.results.values():
        res = b.vop("cw", (_v(res),), "nx")  # the new x is written by the step's last operation
    prog.result = res
    prog.batches = nb[0]
    _prune_dead(prog, problem)
    return prog


_PRUNABLE = ("cw", "grad", "hvp", "red", "sc")


def _prune_dead(prog: VProgram, problem) -> None:
    """Drop the operations whose values no later operation and no result reads.  The discrete lowering always
    evaluates `g = grad f(x) + xi`; an update that reads only a look-ahead gradient (Nesterov's
    `grad_at(x - eta mu m)`) leaves `grad f(x)` unread, a matrix product per step on a dense quadratic.  Only on
    quadratics: elsewhere the problem helpers pass state between operations outside the program's names (the
    weights of logistic regression's gradient at `x`, which its noise factor reads; a minibatch gradient draws
    the indices that later ones reuse, and `mbgrad` is never dropped).  The noise draws are kept (each has its
    own Philox stream, so dropping one would change nothing else)."""
    if not problem.kind.startswith("quadratic"):
        return
    live = {prog.result, *prog.results.values()}
    kept = []
    for o in reversed(prog.pre):
        if o.kind in _PRUNABLE and o.out not in live:
            continue
        kept.append(o)
        live |= reads(o)
    prog.pre[:] = kept[::-1]


# -- SDE mode ---------------------------------------------------------------------------------------------------


def _noise_root_factor(D: sp.Basic):
    """`(A, "root")` for `D = A Sigma^(1/2)`; `(c, "cov")` for `D = c C^(1/2)` with a covariance `C`;
    `(None, "zero")` for no noise."""
    if isinstance(D, sp.ZeroMatrix):
        return None, "zero"
    root = SIGMA ** sp.S.Half
    if D == root:
        return IDENT, "root"
    if isinstance(D, sp.MatPow) and D.exp == sp.S.Half:
        return sp.S.One, "cov"
    if isinstance(D, sp.MatMul):
        args = list(D.args)
        if args[-1] == root:
            rest = args[:-1]
            return (sp.MatMul(*rest) if any(getattr(a, "is_Matrix", False) for a in rest)
                    else sp.Mul(*rest) * IDENT), "root"
        if isinstance(args[-1], sp.MatPow) and args[-1].exp == sp.S.Half and not any(
                getattr(a, "is_Matrix", False) for a in args[:-1]):
            return sp.Mul(*args[:-1]), "cov"
    raise CodegenError(f"the diffusion {D} is neither A*Sigma^(1/2) nor c*C^(1/2); it cannot be simulated")


def sampled_noise(sde: VectorSDE) -> bool:
    """Whether the simulators draw `sde`'s noise from inner samples of its increments (a diffusion `c C^(1/2)` of
    any state, or expectation atoms in an auxiliary state's drift)."""
    try:
        if any(_noise_root_factor(D)[1] == "cov" for D in sde.diffusion.values()):
            return True
    except CodegenError:
        return False
    return any(sde.drift[s].has(a) for s in sde.aux_states for a in sde.atoms)


def _check_increment(sde: VectorSDE, state: str = "x", blocks: tuple | None = None) -> None:
    """`CodegenError` unless the drift of `state` is `-E[F]` of the increment the kernel samples
    (`sde_vector.increment_matches_drift`, which the JSON loader runs too); here a pair that cannot be evaluated is
    refused as well."""
    ok, why = increment_matches_drift(sde, state, blocks)
    if ok is None:
        raise CodegenError(f"the SDE of {sde.optimizer}: the increment of {state} cannot be checked against its drift "
                           f"({why})")
    if not ok:
        raise CodegenError(f"the SDE of {sde.optimizer}: {why}; the two disagree (edited JSON?), so the noise the "
                           "kernel samples would not belong to this drift")


#: whether `lower_sde` may use the z-space form of the sampled noise (`zspace_applies`); the tests switch it off to
#: compare the two forms on the same Gaussians
ZSPACE = True
#: whether z-space programs draw their inner samples in antithetic pairs `(z_j, -z_j)` (`_lower_zspace`; for an
#: even `n >= 4`): half the Gaussians per step; the tests switch it off to compare the z-space and per-sample forms
#: on the same Gaussians
ANTITHETIC = True
#: how both printers sum a reduction over the coordinates (a norm, an inner product): four partial sums, coordinate
#: `i` into sum `i mod 4` and the tail `i >= 4 floor(d/4)` into the first, added as `(a0 + a1) + (a2 + a3)`
#: (four independent chains instead of one strict IEEE sum, which is latency-bound at one addition per 3 to 4
#: cycles); the benchmark switches it off to compare with one sequential sum
SPLIT_SUMS = True
#: the kernels' names of the current inner sample's weight `w_k` (of a pair's `w_j`; `WK2` its `w'_j`) and of
#: `sum_k w_k` (over the pairs' `w_j`), and of the vector `lambda_j = (L^T L)_jj` (the squared column norms of the
#: noise factor, `sigma_j**2` without one)
WK, WK2 = sp.Symbol("s_WK", real=True), sp.Symbol("s_WK2", real=True)
SW, LAM = sp.Symbol("s__SW", real=True), sp.Symbol("v_LAM", real=True)


def zspace_applies(sde: VectorSDE, problem) -> bool:
    r"""Whether the sampled noise of `sde` on `problem` can run in *z-space* (`_lower_zspace`): the noise is
    `xi = L z` with a constant factor whose columns are orthogonal (`L^T L` diagonal: the eigen-factor
    `U Lambda^(1/2)` of a `Quadratic`'s `Sigma`, or `diag(sigma)` of any problem whose noise scale is constant),
    and every random block of the increment is
    `r(|g|) g` or `r(|g|) v` (no `sign(g)`: a coordinate-wise function of `g` needs `g` itself)."""
    if not ZSPACE or any(blk[0] == "sign" for blk in sde.increment):
        return False
    if problem.noise_varies or problem.minibatch:
        return False
    if not problem.has_noise_factor:  # xi = sigma * z with a constant sigma (any problem kind)
        return True
    from sdederive.problems.quadratic import Quadratic

    if not isinstance(problem, Quadratic):  # a factor the kernels only know as prob_corr
        return False
    L = problem.noise_factor()
    import numpy as np

    G = L.T @ L
    return bool(np.allclose(G, np.diag(np.diag(G)), rtol=0, atol=1e-12 * max(1.0, float(np.abs(G).max()))))


def _lower_zspace(b: _Builder, sde: VectorSDE, A, batches, student: bool, det: dict, rdet: dict) -> None:
    r"""The sampled noise of `lower_sde` (inner samples `g_k = grad + L z_k`, weights `w_k`) with every sample's
    work `O(d)` instead of `O(d^2)`.

    With `L^T L = Lambda` diagonal, `|g_k|^2 = |grad|^2 + 2 (L^T grad) . z_k + sum_j lambda_j z_kj^2`, so the
    norms need one product `L^T grad` per step.  The step is linear in the samples,
    $x' = x - a_0\,dt + \sum_k e_k F_k$, and a block `C r(|g|) g` of `F` contributes
    $C\,(\alpha\,\nabla f + L\beta)$, $\alpha = \sum_k e_k r_k$, $\beta = \sum_k e_k r_k z_k$: the inner loop
    accumulates the scalars `alpha` and the z-space vectors `beta` (one per matrix `C`), and the products by `L`
    and `C` come once, after it.  A block `r(|g|) v` adds `(sum_k e_k r_k) v`.  NSGD then costs three matrix
    products a step (`H x`, `L^T grad`, `L beta`) for any `n`, against `n + 1`; SAM (`C = rho H`) five
    against `2n + 1`.

    **Independent samples** (`n` odd or 2, or `ANTITHETIC` off): the same Gaussians and the same numbers, up to
    rounding, as the per-sample form, with
    $e_k = -dt/n + c s\,\sqrt{dt}\,(w_k - \bar w)/\sqrt{n-1}$, $s^2 = 1 - dt/(n c^2)$ (the module docstring's
    step written out).

    **Antithetic pairs** (`n = 2m`, `m >= 2`): the samples are `m` pairs `z_j, -z_j` (all minibatches' `z`
    flipped together), so a step draws `m d` Gaussians for the `n` samples instead of `n d`.  With the pair's
    mean $P_j = (F(z_j) + F(-z_j))/2$ and half-difference $D_j = (F(z_j) - F(-z_j))/2$, and `z` symmetric
    (Gaussian or multivariate t), `P` is even and `D` odd in `z`: $E[D] = 0$, $E[P D^T] = 0$ and
    $\mathrm{Cov}[F] = \mathrm{Cov}[P] + E[D D^T]$.  The step takes the drift estimate $-(a_0 + \bar P)$, whose
    error has the covariance `Cov[P]/m`, and the noise
    $\zeta = s_P \sum_j w_j (P_j - \bar P)/\sqrt{m-1} + \sum_j w'_j D_j/\sqrt{m}$ (`w`, `w'` independent
    normals, all `2m` of the `WEIGHT_STREAM`), with $s_P^2 = 1 - dt/(m c^2)$: conditionally Gaussian with mean
    zero and covariance `s_P^2` times the sample covariance of the `P_j` plus `(1/m) sum_j D_j D_j^T`, whose
    expectations are `Cov[P]` and `E[D D^T]`.  So the step's mean and covariance are again exactly `b dt` and
    `D D^T dt`, and its odd moments of `zeta` vanish: weak order 1 as before.  Written out,
    $e^\pm_j = \tfrac12[-dt/m + c\sqrt{dt}\,(s_P (w_j - \bar w)/\sqrt{m-1} \pm w'_j/\sqrt{m})]$ on
    $F(\pm z_j)$, the pair's norms $|g^\pm_j|^2 = |\nabla f|^2 + \sum_i \lambda_i z_{ji}^2 \pm
    2 (L^T\nabla f) \cdot z_j$ from two reductions, $\alpha \mathrel{+}= e^+ r^+ + e^- r^-$ and
    $\beta \mathrel{+}= (e^+ r^+ - e^- r^-) z_j$.  The drift estimate is the mean of the `m` pair means: where
    the odd part of `F` dominates (NSGD with `|grad| << |noise|`) it is far less noisy than `n` independent
    samples; where the even part does it is as noisy as `m` (benchmarks.md 6h)."""
    prog = b.prog
    n = prog.n_inner
    prog.zspace = True
    prog.pairs = pairs = ANTITHETIC and n % 2 == 0 and n >= 4
    m = n // 2 if pairs else n
    dt, sdt = sp.Symbol("dt"), sp.Symbol("sdt")
    # once per step (pre; `det`, the deterministic vectors, are there already): L^T grad, |grad|^2 and the
    # zeroed accumulators
    c = b.scalar(sp.sympify(A))
    s2 = 1 - dt / (m * c ** 2)
    gl = b.vop("ltv", ("GR",), "gl")
    g2 = b.red(_v("GR") ** 2)
    groups: dict = {}  # the matrix C of "g" blocks -> (alpha, beta)
    ones: dict = {}  # j of a "1" block -> its scalar sum_k e_k r_k
    for j, (tensor, _r, _bt, coef) in enumerate(sde.increment):
        if tensor == "g" and coef not in groups:
            groups[coef] = (b.sop("sc", sp.S.Zero, "al"), b.vop("cw", (sp.S.Zero,), "be"))
        elif tensor == "1":
            ones[j] = b.sop("sc", sp.S.Zero, "ga")
    # once per inner sample (pair): z of each minibatch's stream, |g|, e, the accumulations
    b.ops = prog.inner
    b.memo = {}
    zs, ngs = {}, {}
    signs = (1, -1) if pairs else (1,)
    for bt in batches:
        z = b.vop("tnoise" if student else "noise", (NOISE_STREAM_INNER + bt, prog.batches, "z"), "z")
        zs[bt] = z
        # |g|^2 >= 0 exactly; the expanded form can round below 0 only where |g| << |grad|
        if pairs:
            q0, q1 = b.red(LAM * _v(z) ** 2), b.red(2 * _v(gl) * _v(z))
            for sg in signs:
                ngs[bt, sg] = _s(b.sop("sc", sp.sqrt(sp.Max(sp.S.Zero, g2 + q0 + sg * q1)), "ng"))
        else:
            q = b.red(2 * _v(gl) * _v(z) + LAM * _v(z) ** 2)
            ngs[bt, 1] = _s(b.sop("sc", sp.sqrt(sp.Max(sp.S.Zero, g2 + q)), "ng"))
    if pairs:
        even = c * sp.sqrt(s2) * sdt * (WK - SW / m) / sp.sqrt(m - 1)
        odd = c * sdt * WK2 / sp.sqrt(m)
        es = {sg: _s(b.sop("sc", fold_numbers((-dt / m + even + sg * odd) / 2), "e")) for sg in signs}
    else:
        es = {1: _s(b.sop("sc", fold_numbers(-dt / n + c * sp.sqrt(s2) * sdt * (WK - SW / n) / sp.sqrt(n - 1)),
                          "e"))}
    acc_a = {coef: [] for coef in groups}
    acc_b = {coef: [] for coef in groups}
    for j, (tensor, _r, bt, coef) in enumerate(sde.increment):
        if tensor == "det":
            continue
        # e r of each sign: F(+z) and F(-z) of the block
        ers = {sg: es[sg] * b.hyper(rdet[j].xreplace({NORM_G: ngs[bt, sg]})) for sg in signs}
        if tensor == "1":
            b.ops.append(VOp("sc", ones[j], (fold_numbers(_s(ones[j]) + sp.Add(*ers.values())),)))
        else:
            acc_a[coef].append(sp.Add(*ers.values()))
            acc_b[coef].append(sp.Add(*[sg * er for sg, er in ers.items()]) * _v(zs[bt]))
    for coef, (al, be) in groups.items():
        b.ops.append(VOp("sc", al, (fold_numbers(_s(al) + sp.Add(*acc_a[coef])),)))
        upd = fold_numbers(_v(be) + sp.Add(*acc_b[coef]))
        check_supported(upd, f"the vector kernel of {prog.name}")
        b.ops.append(VOp("cw", be, (upd,)))
    # once per step, after the samples (post): the products by L and C, the new x
    b.ops = prog.post
    b.memo = {}
    parts = [_v("X")] + [-dt * _v(det[j]) for j, blk in enumerate(sde.increment) if blk[0] == "det"]
    for coef, (al, be) in groups.items():
        u = b.cw(_s(al) * _v("GR") + _v(b.vop("lv", (be,), "lb")), "u")
        parts.append(_v(b.apply(coef, u)))
    parts += [_s(ga) * _v(det[j]) for j, ga in ones.items()]
    prog.result = b.vop("cw", (fold_numbers(sp.Add(*parts)),), "nx")


def lower_sde(sde: VectorSDE, problem, n_inner: int = DEFAULT_INNER) -> VProgram:
    """The program of one Euler–Maruyama step of `sde` on `problem` (see the module docstring)."""
    hyp = tuple(h[0] for h in sde.hypers)
    prog = VProgram("sde", sde.optimizer, hypers=hyp, states=tuple(sde.states))
    hmap = _hyper_map(hyp, sde.regime, tuple(h[0] for h in sde.hypers if h[1] == "decay"))
    student = sde.nu is not None
    if student and sde.nu.free_symbols:  # a symbolic nu: the problem's (compile_vector checked the laws match)
        hmap.update({s.name: sp.Rational(float(problem.nu)) for s in sde.nu.free_symbols})
    b = _Builder(prog, hmap)
    b.problem = problem
    prog.vectors |= {"X", "GR"} | {state_vec(s) for s in prog.states[1:]}
    b.ops.append(VOp("grad", "GR", ("X",)))
    A, form = _noise_root_factor(sde.diffusion_matrix_expr)
    factors = {"x": (A, form)}
    for s_ in prog.states[1:]:
        factors[s_] = _noise_root_factor(sde.diffusion[s_])
    drift_atoms = {s_: [a for a in sde.atoms if sde.drift[s_].has(a)] for s_ in prog.states}
    bad = [a for a in drift_atoms["x"] if a.tensor == "ggT"]
    if bad:  # pragma: no cover - the drift is -E[F], linear in g-blocks
        raise CodegenError(f"{sde.optimizer}: the drift holds the matrix atom {bad[0].display()}")
    sampled = [s_ for s_ in prog.states if factors[s_][1] == "cov" or drift_atoms[s_]]
    if sde.atoms:  # an atom infinite in the problem's dimension (g/|g|**3 in d = 3) has no SDE to simulate
        from sdederive.sde_vector import check_origin

        L = problem.noise_factor() if hasattr(problem, "noise_factor") else None
        sig = getattr(problem, "sigma", None)
        S = L @ L.T if L is not None else (np.diag(np.asarray(sig, dtype=float) ** 2) if sig is not None else None)
        check_origin(sde.atoms, int(problem.d), f"the SDE of {sde.optimizer} on a problem with d = {problem.d}", S)
    if sampled:
        incs = {"x": sde.increment, **dict(zip(sde.aux_states, sde.aux_increment or ((),) * len(sde.aux_states)))}
        if not all(incs[s_] for s_ in sampled):
            raise CodegenError(
                f"the SDE of {sde.optimizer} has the diffusion C^(1/2) of a covariance with expectation atoms or sign "
                "moments, or atoms in a drift; simulating it needs the increments F (VectorSDE.increment, "
                "aux_increment), which this SDE does not carry (built by hand, or read from a JSON without "
                "\"increment\"); derive it again")
        roots = [s_ for s_ in prog.states if factors[s_][1] == "root"]
        noisy = [s_ for s_ in sampled if factors[s_][1] == "cov"]
        if roots and not noisy:
            raise CodegenError(f"{sde.optimizer}: expectation atoms in the drift of {sampled} with the closed-form "
                               f"noise root of {roots} are not supported (the atoms are estimated from inner samples, "
                               "whose error the sampled noise makes up for)")
        if roots or len(noisy) > 1:
            raise CodegenError(
                f"the SDE of {sde.optimizer}: the states {roots + noisy} all carry noise and "
                f"{noisy[0] if noisy else sampled[0]}'s is drawn from inner samples of its increment; the simulators "
                "draw the sampled noise for one state, with no other noise in the SDE")
        if not (isinstance(n_inner, int) and not isinstance(n_inner, bool) and n_inner >= 2):
            raise CodegenError(f"inner={n_inner!r} inner samples; allowed: an integer >= 2 (the noise is built from "
                               "the deviations of the samples around their mean)")
        for s_ in sampled:
            _check_increment(sde, s_, incs[s_])
        prog.n_inner = n_inner
        batches = sorted({blk[2] for s_ in sampled for blk in incs[s_]} | {0})
        prog.batches = max(batches) + 1
        # the deterministic vectors (a0, the coefficients of "1" blocks): once per step
        det = {(s_, j): b.vec(blk[3]) for s_ in sampled for j, blk in enumerate(incs[s_]) if blk[0] in ("1", "det")}
        # the integrands with their deterministic scalars (norm(x) in a radius c*norm(x), dot(x, x)) as
        # reductions once per step, not once per inner sample
        rdet = {}
        for s_ in sampled:
            for j, blk in enumerate(incs[s_]):
                subs = {a: b.scalar(a) for a in _ordered(blk[1].atoms(VNorm, VDot, sp.Trace))}
                rdet[(s_, j)] = blk[1].xreplace(subs)
        if prog.states == ("x",) and zspace_applies(sde, problem):
            _lower_zspace(b, sde, A, batches, student, {j: v for (_s_, j), v in det.items()},
                          {j: r for (_s_, j), r in rdet.items()})
            return prog
        b.ops = prog.inner
        # antithetic pairs (xi, -xi), as in z-space (`_lower_zspace`): one noise draw and product for two samples.
        # Not where a state's drift alone is sampled (adamw_clip's v): nothing makes up for the error of its drift
        # estimate, dt**2 Cov[P]/m with pairs against dt**2 Cov[F]/n, up to twice as large where F is even in xi
        prog.pairs = pairs = (ANTITHETIC and n_inner % 2 == 0 and n_inner >= 4
                              and all(s_ in noisy for s_ in sampled))
        m_eff = n_inner // 2 if pairs else n_inner
        signs = (1, -1) if pairs else (1,)
        gs, ngs = {}, {}
        for bt in batches:
            xi = b.vop("tnoise" if student else "noise", (NOISE_STREAM_INNER + bt, prog.batches), "xi")
            for sg in signs:
                gs[bt, sg] = b.cw(_v("GR") + sg * _v(xi), "g")
                ngs[bt, sg] = b.norm(gs[bt, sg])
        a0: dict = {s_: [] for s_ in sampled}
        sums: dict = {}
        for s_ in sampled:
            fss = {}
            for sg in signs:
                terms = []
                for j, (tensor, _r, bt, coef) in enumerate(incs[s_]):
                    if tensor == "det":
                        if sg == 1:
                            a0[s_].append(det[(s_, j)])
                        continue
                    g_ = gs[bt, sg]
                    rr = b.hyper(rdet[(s_, j)].xreplace({NORM_G: ngs[bt, sg]}))
                    if tensor == "1":
                        terms.append((rr, det[(s_, j)]))
                        continue
                    if tensor == "g":
                        blk = b.cw(rr * _v(g_), "bk")
                    elif tensor == "gsq":
                        blk = b.cw(rr * _v(g_) ** 2, "bk")
                    else:
                        blk = b.cw(sp.sign(_v(g_)), "bk")
                    terms.append((sp.S.One, b.apply(coef, blk)))
                fss[sg] = b.sum_vec(terms)
            if pairs:  # the pair's mean P_j (the sample the sums see) and half-difference D_j
                fs = b.cw((_v(fss[1]) + _v(fss[-1])) / 2, "pm")
                fd = b.cw((_v(fss[1]) - _v(fss[-1])) / 2, "pd") if s_ in noisy else None
            else:
                fs, fd = fss[1], None
            if s_ in noisy:  # its sum _SF and the weighted deviations ZETA (the printers' names)
                prog.fsample, sums[s_] = fs, "_SF"
                if fd is not None:
                    prog.fdiff = fd
                    prog.vectors |= {"_SDF", "ZETAD"}
            else:  # a drift estimate only: the sum of the samples
                sums[s_] = f"_SF_{s_}"
                prog.msamples += ((fs, sums[s_]),)
            prog.vectors.add(sums[s_])
        if noisy:
            prog.vectors.add("ZETA")
        b.ops = prog.post
        b.memo = {}
        # drift -(a0 + mean_k F_k) (every expectation of F estimated from the same samples: its error has the
        # covariance Cov[F]/n, which the noise scale s makes up for: dt**2 Cov[F]/n + c**2 s**2 dt Cov[F] =
        # c**2 dt Cov[F] with s**2 = 1 - dt/(n c**2); c**2 = eta)
        dt, sdt = sp.Symbol("dt"), sp.Symbol("sdt")
        new = {}
        for s_ in prog.states[1:] + ("x",):  # x last: its Euler step is the step's last operation
            if s_ in sampled:
                drift = -(sp.Add(*[_v(a) for a in a0[s_]]) + _v(sums[s_]) / m_eff)
            else:
                drift = _v(b.vec(sde.drift[s_]))
            step = _v(state_vec(s_)) + drift * dt
            if s_ in noisy:
                # ZETA: the (pair) means' weighted deviations; with pairs ZETAD = sum_j w'_j D_j / sqrt(m) as well,
                # and the drift estimate's error Cov[P]/m is made up for on the means' part alone
                c = b.scalar(sp.sympify(factors[s_][0]))
                zeta = sp.sqrt(1 - dt / (m_eff * c ** 2)) * _v("ZETA") + (_v("ZETAD") if pairs else 0)
                step = step + c * sdt * zeta
            new[s_] = b.cw(step, "nx" if s_ == "x" else "ns")
            if new[s_] in ("X", "GR") or new[s_].startswith("ST_"):  # a plain copy: a vector of its own
                new[s_] = b.vop("cw", (_v(new[s_]),), "nx" if s_ == "x" else "ns")
        prog.results = {s_: new[s_] for s_ in prog.states[1:]}
        new = new["x"]
    else:
        # every state's drift and noise factor from the old values (pre), then the Euler steps (post); the
        # states share the one dW (stream 0): x' = x + b dt + A (Sigma^(1/2) z) sqrt(dt) for each state
        drifts = {s: b.vec(sde.drift[s]) for s in prog.states}
        factors = {"x": (A, form)}
        for s in prog.states[1:]:
            factors[s] = _noise_root_factor(sde.diffusion[s])
            if factors[s][1] == "cov":
                raise CodegenError(f"the SDE of {sde.optimizer}: the diffusion of its state {s} is the root of a "
                                   "covariance, not A*Sigma^(1/2); the simulators cannot draw it")
        b.ops = prog.post
        dw = None
        new = {}
        # x's diffusion is written for F = -(x' - x)/eta (sqrt(eta) A Sigma^(1/2), the published sign), so the
        # discrete noise of x is -sqrt(eta) A xi: with x's noise alone, the kernel takes W = -(the discrete run's
        # normalised noise), equal in law, so that the two runs of a seed are positively coupled. Auxiliary states'
        # coefficients are those of their own increments (dm = ... + sqrt(eta) rho1 Sigma^(1/2) dW, as m' has
        # +(1 - beta1) xi), and with them the derived signs stay as they are (they fix the cross-covariances)
        flip = all(factors[s][1] == "zero" for s in prog.states[1:])
        if not flip and factors["x"][1] == "root":  # no derived SDE has both; a hand-made one is not simulated
            raise CodegenError(
                f"the SDE of {sde.optimizer}: x and the auxiliary states {list(prog.states[1:])} both carry noise; "
                "x's diffusion is written for F = -(x' - x)/eta and the states' for their own increments, so the "
                "sign of their cross-covariance through the common dW is not fixed by the SDE alone; the simulators "
                "run SDEs where only x, or only auxiliary states, have noise")
        for s in prog.states[1:] + ("x",):  # x last: its Euler step is the step's last operation
            Af, fm = factors[s]
            step = _v(state_vec(s)) + _v(drifts[s]) * sp.Symbol("dt")
            if fm == "root":
                if dw is None:
                    dw = b.vop("noise", (0, 0), "dw")
                sgn = -1 if (s == "x" and flip) else 1
                step = step + sgn * sp.Symbol("sdt") * _v(b.apply(Af, dw))
            new[s] = b.vop("cw", (step,), "nx" if s == "x" else "ns")
        prog.results = {s: new[s] for s in prog.states[1:]}
        new = new["x"]
    prog.result = new
    return prog

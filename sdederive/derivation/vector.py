r"""The one-step moment expansion in d dimensions (the vector engine), regime `sgd` (`tau = eta`).

For an update `x' = x + Delta` written with `sdederive.spec.vector`, with `g = grad + xi`,
`xi = Sigma^(1/2) z` Gaussian, and hyperparameters other than `eta` fixed as `eta -> 0`:

1. the update is brought to the *linear-block form*
   $\Delta = -\eta\,F,\ F = a_0 + \sum_k A_k B_k$ with deterministic matrix coefficients `A_k`
   (in `H`, `I`, hyperparameters) and random blocks `B_k` = `r_k(|g_b|) g_b` (a vector) or
   `r_k(|g_b|)` (a scalar), one minibatch `b` per block (`b = 0` is `g`'s, `grad_at(., fresh=True)`
   draws a new one);
2. a gradient at a perturbed point `y = x + delta` is `grad f(y) + xi_b = grad + H delta + xi_b`: the
   Hessian expansion, **exact for quadratic f**; on other f the dropped term is `(1/2) D^3f[delta, delta]`,
   of order `rho**2` for SAM's `delta = rho g/|g|` (recorded in the SDE's notes).  `xi_b` is `g`'s
   own noise for the same minibatch (additive noise, `Sigma` not depending on x), an independent copy for a
   fresh one;
3. the moments: $b = -\mathbb E[F]$, $D D^\top = \eta\operatorname{Cov}[F]$ (the SME's
   `sqrt(eta)`), with `E[g] = grad`, `E[g g^T] = grad grad^T + Sigma` in closed form and every other
   `E[r(|g|) g]`, `E[r(|g|) g g^T]`, `E[r(|g|)]` kept as a named `ExpectationAtom`.

Where `F` does not depend on `eta` (`rho`, `c` fixed), the one-step moments are exact:
`E[Delta]/eta = b` and `Cov[Delta]/eta = D D^T` for every `eta` (no O(eta) bias).  Where it does (`eta/(1 + eta)`,
`Min(eta, c/|g|)`, a look-ahead `grad_at(x - eta*g)`), the SDE has its `eta -> 0` limit, which must be
`F0 + O(eta)` (a fractional power `eta**0.5` is refused); a function of `|g|` holding `eta` is replaced by its
pointwise limit (`_eta_out_of_block`).  An atom with a singularity at `g = 0` (`g/|g|**3`) exists only in
dimensions where it is integrable (`sde_vector.origin_exponent`; recorded in the notes, refused by evaluation).

Coordinate-wise `sign(g)` (SignSGD with a full `Sigma`) uses the closed forms
`SignMean` and `SignSecond`.

Multivariate Student-t noise `xi = Sigma^(1/2) z sqrt(nu/W)`, `W ~ chi2_nu` (`_Law`): `E[g g^T]` becomes
`grad grad^T + nu/(nu - 2) Sigma`, the atoms are expectations over that law (`ExpectationAtom(..., nu)`), the sign
moments use the univariate and bivariate t CDFs; a numeric `nu` at or below the tail exponent of a moment the SDE
uses (`nu <= 2` for anything with `E[g g^T]`) is refused.

Refused (with the reason): other regimes, `order=2` with atoms in the drift, other noise laws, other coordinate-wise
maps, norms of anything but `g` itself, products of functions of two independent minibatches, random matrices.

Auxiliary vector states (`sd.vectors("x g m v")`): in regime `sgd` every state is fast and is eliminated when
the updates are affine in it with coefficients in `I`, `H` (heavy ball, Nesterov: `_derive_fast`); in regime
`balanced` (`1 - beta = rho*eta`) EMA states stay in the SDE, x's increment is taken at its leading order
`-eta*P(x, states)` (`_derive_balanced`: LAMB).

Refused (with the reason): other regimes, `order=2` (with states: any order but 1), non-Gaussian noise, other
coordinate-wise maps of the noise, norms of anything but `g` itself, products of functions of two independent
minibatches, random matrices, states entering nonlinearly in regime `sgd`.
"""

from __future__ import annotations

import contextvars
import functools
from dataclasses import dataclass

import sympy as sp
from sympy.matrices.expressions.diagonal import DiagMatrix, DiagonalOf

from sdederive.errors import ExpectationError, NoiseModelError, RegimeMismatchError, SdederiveError
from sdederive.regimes import scaled_name
from sdederive.sde_vector import (
    GRAD,
    GRAD_TRSIGMA,
    HESS,
    IDENT,
    NORM_G,
    ONES,
    SIGMA,
    XVEC,
    ExpectationAtom,
    SignMean,
    SignSecond,
    VDot,
    VectorSDE,
    VNorm,
    law_text,
    resolve_minmax,
    square_norm_moment,
    state_vector,
)
from sdederive.spec import vector as V
from sdederive.symbols import KNOWN, sym

__all__ = ["derive_vector"]

_eta = sym("eta")
_REGIMES = ("sgd", "rho-eta", "high-dim")
_STATE_REGIMES = ("sgd", "balanced")
_t = sym("t")
_k = sym("k")
#: the mean-field norm of the stochastic gradient, sqrt(|grad f|^2 + tr Sigma)
NBAR = sp.sqrt(VNorm(GRAD) ** 2 + sp.Trace(SIGMA))
_R = sym("r", positive=True)


@dataclass(frozen=True)
class _Block:
    """A random block: `r(|g_b|) g_b` (`tensor = "g"`), `r(|g_b|)` (`tensor = "1"`), `sign(g_b)` (`"sign"`) or
    `r(|g_b|) g_b o g_b` (`"gsq"`, the coordinate-wise square; `r = c(|g|)**2` for the square of `c(|g|) g`)."""

    tensor: str
    r: sp.Expr  # in the placeholder of batch b
    batch: int


_DET = "det"


#: `Sigma="x"`: the noise is the minibatch noise xi(x) = grad f_gamma(x) - grad f(x) with the state-dependent
#: covariance Sigma(x) (a gradient field in x for each minibatch); read by `_lin` at perturbed evaluation points
_STATE_NOISE: contextvars.ContextVar[bool] = contextvars.ContextVar("vector_state_noise", default=False)


def _norm_sym(b: int) -> sp.Symbol:
    return sp.Symbol(f"norm_g{b}", positive=True)


class _Ctx:
    def __init__(self, opt_name: str):
        self.name = opt_name
        self.batches = 1  # batch 0 is g's
        self.hessian = False
        self.same_batch_shift = False
        self.fresh = False


def _add(acc: dict, key, coef) -> None:
    acc[key] = acc[key] + coef if key in acc else coef


def _lin(v: V.Vec, ctx: _Ctx) -> dict:
    """The linear-block form of `v`: `{_DET: a0, _Block: A, ...}`."""
    if isinstance(v, V.VecSym):
        if v.name == "x":
            return {_DET: XVEC}
        if v.name != "g":  # an auxiliary state: deterministic within the step
            return {_DET: state_vector(v.name)}
        return {_Block("g", sp.S.One, 0): IDENT}
    if isinstance(v, V.VAdd):
        out: dict = {}
        for t in v.terms:
            for k, c in _lin(t, ctx).items():
                _add(out, k, c)
        return out
    if isinstance(v, V.MatVec):
        return {k: v.matrix * c for k, c in _lin(v.vec, ctx).items()}
    if isinstance(v, V.VScale):
        s = _scalar(v.scalar, ctx)
        return _scale(s, _lin(v.vec, ctx), ctx, v)
    if isinstance(v, V.GradAt):
        inner = _lin(v.point, ctx)
        delta = dict(inner)
        delta[_DET] = delta.get(_DET, sp.ZeroMatrix(V.dim, 1)) - XVEC
        delta = {k: c for k, c in delta.items() if not _is_zero_matrix(c)}
        if v.fresh:
            b = ctx.batches
            ctx.batches += 1
            ctx.fresh = True
        else:
            b = 0
            if delta:
                ctx.same_batch_shift = True
        out = {_Block("g", sp.S.One, b): IDENT}
        if delta:
            ctx.hessian = True
            for k, c in delta.items():
                _add(out, k, HESS * c)
            if _STATE_NOISE.get():
                _noise_derivative(out, delta, b, ctx, v)
        return out
    if isinstance(v, V.CoordExpr):
        return _lin_coord(v, ctx)
    if isinstance(v, V.CoordMap):
        rb = _random_batch(_lin(v.vec, ctx))
        if v.fn is sp.sign and rb is not None and rb[1] == 1:
            return {_Block("sign", sp.S.One, rb[0]): IDENT}
        raise ExpectationError(
            f"the coordinate-wise map {v} in {ctx.name!r} is not supported by the vector engine; supported: "
            "sign(g) (with a full Sigma: the bivariate normal orthant moments). Other coordinate-wise optimizers "
            "are derived per coordinate by the scalar engine (sd.derive('signsgd'))"
        )
    raise SdederiveError(f"unknown vector expression {v!r}")  # pragma: no cover - the IR is closed


def _noise_derivative(out: dict, delta: dict, batch: int, ctx: _Ctx, v) -> None:
    """The state-dependent noise at the perturbed point `x + delta` of the gradient `v` (minibatch `batch`):
    `xi(x + delta) = xi(x) + (grad xi) delta + ...`.  Supported where `delta` is O(eta) (regime `rho-eta`, a
    look-ahead `x - eta*mu*m`): then `(grad xi) delta` is O(eta), its fluctuation is beyond order 1 and 2 of the
    covariance, and its mean enters the order-2 drift.  For the same minibatch and `delta = c g + a` (`c` a
    scalar), `E[(grad xi)(c xi)] = (c/2) grad tr Sigma(x)` (xi is a gradient field in x, so `d_j xi_i = d_i xi_j`
    and `sum_j E[xi_j d_i xi_j] = (1/2) d_i E|xi|^2`); `E[grad xi] a = 0`.  With an O(1) shift (SAM/USAM with `rho`
    fixed) the covariance of `(grad xi) delta` needs the joint law of the minibatch gradient and Hessian, which
    `Sigma(x)` does not give: refused."""
    for k, c in delta.items():
        if not _is_zero_matrix(_leading(c, f"the shift of {v}", ctx)):
            raise NoiseModelError(
                f"{ctx.name!r} evaluates a gradient at {v.point}, an O(1) shift from x, under the state-dependent "
                "covariance Sigma(x): the noise there, xi(x) + (grad xi) delta + ..., has a covariance that needs the "
                "joint law of the minibatch gradient and Hessian (not Sigma(x) alone) for a same-minibatch gradient, "
                "and Sigma at a random point for a fresh one. Allowed with Sigma='x': shifts of order eta (regime "
                "'rho-eta' for SAM/USAM), or a constant Sigma (Sigma='full')")
        if k == _DET or batch != 0 or k.batch != batch:
            continue  # E[grad xi] = 0; a fresh minibatch is independent of the shift's noise
        if isinstance(c, sp.MatMul):
            coeff = sp.Mul(*[a for a in c.args if not getattr(a, "is_Matrix", False)])
            mats = [a for a in c.args if getattr(a, "is_Matrix", False)]
        else:
            coeff, mats = sp.S.One, [c]
        if not (k.tensor == "g" and k.r == 1 and mats == [IDENT]):
            raise NoiseModelError(
                f"{ctx.name!r} evaluates a gradient at {v.point} with the same minibatch under the state-dependent "
                f"Sigma(x): the mean of (grad xi) delta is (c/2) grad tr Sigma(x) for delta = c*g, but the shift has "
                f"the term {c} times {k} (a matrix, or a function of |g| such as SAM's g/|g|), whose mean needs more than "
                "Sigma(x). Allowed with Sigma='x': shifts c*g with a scalar c of order eta, or a constant Sigma")
        _add(out, _DET, (coeff / 2) * GRAD_TRSIGMA)


def _lin_coord(v: V.CoordExpr, ctx: _Ctx) -> dict:
    """A coordinate-wise expression: of deterministic vectors (a Hadamard expression), `g_b**2` (the block
    `gsq`), or linear in one `g_b` with deterministic coordinate-wise weights (`diag(w) g_b`)."""
    lins = [_lin(a, ctx) for a in v.vecs]
    dets = [L.get(_DET, sp.ZeroMatrix(V.dim, 1)) for L in lins]
    rand = [i for i, L in enumerate(lins) if set(L) - {_DET} and v.body.has(v.vars[i])]
    if not rand:
        return {_DET: _hadamard_of(v.body, v.vars, dets, v, ctx)}
    if len(rand) == 1:
        i = rand[0]
        c = v.vars[i]
        # s*r(|g|)*g (r = 1: g itself; a clipped or normalised gradient otherwise): its coordinate-wise square is
        # s**2 r**2 g o g (the block "gsq" with integrand r**2), and w*(s r g) is diag(w) s r g.  A scaled g without
        # a function of |g| (s != 1, r = 1) is not supported
        fb = _function_block(lins[i])
        if fb is not None and (fb[0].r != 1 or fb[1] == 1):
            k, s_ = fb
            if sp.simplify(v.body - c**2) == 0:
                return {_Block("gsq", sp.simplify(k.r ** 2), k.batch): s_ ** 2 * IDENT}
            if sp.diff(v.body, c, 2) == 0 and sp.simplify(v.body.subs(c, 0)) == 0:
                w = sp.simplify(sp.diff(v.body, c))
                W = _hadamard_of(w, v.vars, dets, v, ctx)
                return {k: s_ * (DiagMatrix(W) if getattr(W, "is_Matrix", False) else W * IDENT)}
    raise ExpectationError(
        f"the coordinate-wise expression {v} in {ctx.name!r} is a nonlinear function of the gradient noise; the vector "
        "engine supports coordinate-wise expressions of deterministic vectors (the states, x), g**2 (coordinate by "
        "coordinate), and w*g with w a coordinate-wise expression of deterministic vectors")


def _hadamard_of(e: sp.Expr, vars_: tuple, vecs: list, where, ctx: _Ctx):
    """The coordinate-wise expression `e` of the coordinates `vars_` of the deterministic vectors `vecs` as a
    sympy Hadamard expression (a `(d, 1)` matrix), or a scalar when `e` uses none of them."""
    if not any(e.has(c) for c in vars_):
        return e
    if e in vars_:
        return vecs[vars_.index(e)]
    if isinstance(e, sp.Add):
        const, rest = e.as_independent(*vars_, as_Add=True)
        out = sp.MatAdd(*[_hadamard_of(a, vars_, vecs, where, ctx) for a in sp.Add.make_args(rest)])
        return out + const * ONES if const != 0 else out
    if isinstance(e, sp.Mul):
        const, rest = e.as_independent(*vars_, as_Add=False)
        mats = [_hadamard_of(a, vars_, vecs, where, ctx) for a in sp.Mul.make_args(rest)]
        prod = mats[0] if len(mats) == 1 else sp.HadamardProduct(*mats)
        return prod if const == 1 else const * prod
    if isinstance(e, sp.Pow) and not any(e.exp.has(c) for c in vars_):
        return sp.HadamardPower(_hadamard_of(e.base, vars_, vecs, where, ctx), e.exp)
    raise ExpectationError(f"the coordinate-wise expression {where} in {ctx.name!r} uses {e}; the vector engine "
                           "represents coordinate-wise sums, products and powers (with exponents free of the vectors)")


def _is_zero_matrix(c) -> bool:
    return isinstance(c, sp.ZeroMatrix) or c == sp.ZeroMatrix(*c.shape)


def _random_batch(lin: dict) -> tuple | None:
    """`(b, s)` if `lin` is exactly `s*g_b` with a deterministic scalar `s`, else None."""
    fb = _function_block(lin)
    if fb is None or fb[0].r != 1:
        return None
    return fb[0].batch, fb[1]


def _function_block(lin: dict):
    """`(block, s)` if `lin` is exactly `s*r(|g_b|)*g_b` (one `"g"` block, a deterministic scalar `s` times the
    identity), else None."""
    if len(lin) != 1:
        return None
    (k, c), = lin.items()
    if not isinstance(k, _Block) or k.tensor != "g":
        return None
    if c == IDENT:
        return k, sp.S.One
    if isinstance(c, sp.MatMul):
        coeff, rest = c.as_coeff_mmul()
        if rest == IDENT or (isinstance(rest, sp.MatMul) and rest.args == (IDENT,)):
            return k, coeff
    return None


def _scalar(s: sp.Expr, ctx: _Ctx) -> sp.Expr:
    """Replace the vector scalars of `s`: deterministic `norm`/`dot` by `VNorm`/`VDot` of
    matrix expressions, `norm(s*g_b)` by `|s|*norm_g{b}`; anything else random is refused."""
    repl = {}
    for a in s.atoms(V.VScalar):
        lins = [_lin(w, ctx) for w in a.vargs]
        if all(set(L) <= {_DET} for L in lins):
            dets = [L.get(_DET, sp.ZeroMatrix(V.dim, 1)) for L in lins]
            repl[a] = VNorm(dets[0]) if a.op == "norm" else VDot(dets[0], dets[1])
            continue
        if a.op == "norm":
            rb = _random_batch(lins[0])
            if rb is not None:
                repl[a] = sp.Abs(rb[1]) * _norm_sym(rb[0])
                continue
        elif all(_random_batch(L) is not None for L in lins):
            (b1, s1), (b2, s2) = (_random_batch(L) for L in lins)
            if b1 == b2:
                repl[a] = s1 * s2 * _norm_sym(b1) ** 2
                continue
        raise ExpectationError(
            f"{a} in {ctx.name!r} is a function of the gradient noise that is not a function of |g| alone (it depends "
            "on the direction of the noise, or on a gradient at a perturbed point); the vector engine supports the "
            "random scalars norm(g), norm(s*g) and dot(g, g) (functions of |g|), and deterministic norm(x), dot(x, x)"
        )
    return s.xreplace(repl)


def _batches(s: sp.Expr) -> set[int]:
    return {int(f.name[6:]) for f in s.free_symbols if f.name.startswith("norm_g") and f.name[6:].isdigit()}


def _scale(s: sp.Expr, lin: dict, ctx: _Ctx, where) -> dict:
    bs = _batches(s)
    if not bs:
        return {k: s * c for k, c in lin.items()}
    if len(bs) > 1:
        raise ExpectationError(f"the scalar {s} in {ctx.name!r} combines the norms of two independent minibatches; "
                               "products of functions of different minibatches are not supported")
    b = bs.pop()
    indep, dep = s.as_independent(_norm_sym(b), as_Add=False)
    out: dict = {}
    for k, c in lin.items():
        if k == _DET:
            _add(out, _Block("1", dep, b), indep * c)
        elif k.tensor in ("sign", "gsq"):
            raise ExpectationError(
                f"{where} in {ctx.name!r} multiplies {'sign(g)' if k.tensor == 'sign' else 'g**2'} by a function of "
                f"|g|; only deterministic multiples of {'sign(g)' if k.tensor == 'sign' else 'g**2'} are supported")
        elif k.batch == b:
            _add(out, _Block(k.tensor, sp.simplify(k.r * dep), b), indep * c)
        else:
            raise ExpectationError(
                f"{where} in {ctx.name!r} multiplies a function of one minibatch's gradient by another, independent "
                "minibatch's gradient; products of functions of different minibatches are not supported")
    return out


# -- moments -------------------------------------------------------------------------------------------------------


def _canon(r: sp.Expr, b: int) -> sp.Expr:
    return r.xreplace({_norm_sym(b): NORM_G})


class _Law:
    """The law of the gradient noise, `g = grad + Sigma^(1/2) z` (Gaussian, `nu = None`) or the multivariate
    Student-t `g = grad + Sigma^(1/2) z sqrt(nu/W)`, `W ~ chi2_nu` independent of `z`.  It builds the moments
    (`E[g] = grad`, `E[g g^T] = grad grad^T + second*Sigma` with `second = nu/(nu - 2)`, atoms and sign moments
    marked with `nu`) and records, for each moment it builds, the tail exponent `p` (the moment is finite iff
    `nu > p`): `needs`."""

    def __init__(self, nu: sp.Expr | None = None):
        self.nu = nu
        self.needs: list[tuple[sp.Expr, str]] = []  # (p, what): finite iff nu > p

    @property
    def second(self) -> sp.Expr:
        """`E[xi xi^T] = second * Sigma`: 1, or `nu/(nu - 2)`."""
        return sp.S.One if self.nu is None else self.nu / (self.nu - 2)

    def _need(self, tensor: str, r: sp.Expr, what: str) -> None:
        if self.nu is not None:
            power = {"g": 1, "ggT": 2, "1": 0, "gsq": 2, "g_gsqT": 3, "gsq_gsqT": 4}[tensor]
            self.needs.append((_tail_exponent(r * NORM_G ** power), what))

    def vec(self, tensor: str, r: sp.Expr) -> sp.MatrixExpr:
        """`E[r(|g|) g]` (`tensor = "g"`), `E[r(|g|) g g^T]` (`"ggT"`) or `E[r(|g|)]` (`"1"`)."""
        if r == 1 and tensor == "g":
            self._need("g", r, "E[g] = grad f")
            return GRAD
        if r == 1 and tensor == "ggT":
            self._need("ggT", r, "E[g g^T] = grad f grad f^T + nu/(nu - 2) Sigma")
            return GRAD * GRAD.T + self.second * SIGMA
        if r == 1 and tensor == "gsq" and self.nu is None:
            return sp.HadamardPower(GRAD, 2) + DiagonalOf(SIGMA)
        closed = self._square_norm_moment(tensor, r)
        if closed is not None:
            return closed
        atom = ExpectationAtom(tensor, r, self.nu)
        self._need(tensor, r, atom.display())
        return atom

    def _square_norm_moment(self, tensor: str, r: sp.Expr) -> sp.MatrixExpr | None:
        """`square_norm_moment` under this law, with the moment's finiteness recorded (`needs`) for the t law."""
        closed = square_norm_moment(tensor, r, self.nu)
        if closed is not None:
            self._need(tensor, r, ExpectationAtom(tensor, r, self.nu).display() + " (in closed form)")
        return closed

    def sign_mean(self) -> sp.MatrixExpr:
        return SignMean() if self.nu is None else SignMean(GRAD, SIGMA, self.nu)

    def sign_second(self) -> sp.MatrixExpr:
        return SignSecond() if self.nu is None else SignSecond(GRAD, SIGMA, self.nu)


_GAUSS = _Law()
#: the law of the derivation in progress: the default of `_mean`, `_second` and `_cov`, so that every moment built
#: inside `_derive` uses it even where a caller does not pass `law`
_ACTIVE: contextvars.ContextVar[_Law] = contextvars.ContextVar("vector_noise_law", default=_GAUSS)


def _resolve_minmax(e: sp.Expr) -> sp.Expr:
    """`e` with each `Min`/`Max` replaced by the argument that wins as `|g| -> oo` (inner ones first)."""
    return resolve_minmax(e, NORM_G, sp.oo)


def _tail_exponent(e: sp.Expr) -> sp.Expr | None:
    """`p` with `|e| ~ |g|**p` as `|g| -> oo` (`e` in `NORM_G` and positive hyperparameters); `None` if sympy cannot
    tell.  Since `|g| ~ |xi|` and the multivariate t has `E|xi|**q` finite iff `q < nu`, `E[e]` is finite iff
    `nu > p` (for `p > 0`; a bounded `e`, `p <= 0`, has every moment)."""
    try:
        t = _resolve_minmax(sp.Abs(e))
        p = sp.limit(sp.log(t) / sp.log(NORM_G), NORM_G, sp.oo)
    except Exception:  # noqa: BLE001 - sympy's limit raises many types on what it cannot do
        return None
    return p if p.is_extended_real and p.is_finite is not False else (p if p == -sp.oo else None)


def _mean(k: _Block, law: _Law | None = None) -> sp.MatrixExpr:
    law = _ACTIVE.get() if law is None else law
    if k.tensor == "sign":
        return law.sign_mean()
    if k.tensor == "gsq":  # E[g o g] = grad o grad + diag(Sigma) (law.vec); E[r(|g|) g o g] an atom
        if law.nu is not None:
            raise ExpectationError("the coordinate-wise square g**2 under Student-t noise is not supported (its "
                                   "moments need the t law's fourth moments); supported: Gaussian noise")
        return law.vec("gsq", _canon(k.r, k.batch))
    r = _canon(k.r, k.batch)
    return law.vec(k.tensor, r)


def _second(k1: _Block, k2: _Block, law: _Law | None = None) -> sp.MatrixExpr:
    """`E[B1 B2^T]` for two blocks of the same minibatch."""
    law = _ACTIVE.get() if law is None else law
    if "sign" in (k1.tensor, k2.tensor):
        if (k1.tensor, k2.tensor) == ("sign", "sign"):
            return law.sign_second()
        raise ExpectationError("an update mixing sign(g) with g or a function of |g| needs E[sign(g) r(|g|) g^T], "
                               "which the vector engine does not have; supported: sign(g) alone")
    r = sp.simplify(_canon(k1.r, k1.batch) * _canon(k2.r, k2.batch))
    t = (k1.tensor, k2.tensor)
    if "gsq" in t:  # the coordinate-wise squares of functions of |g| times g: atoms (Gaussian; _cov checked)
        tensor = {("g", "gsq"): "g_gsqT", ("gsq", "gsq"): "gsq_gsqT", ("1", "gsq"): "gsq"}
        if t in tensor:
            a = law.vec(tensor[t], r)
            return a.T if t == ("1", "gsq") else a
        return _second(k2, k1, law).T
    if t == ("g", "g"):
        return law.vec("ggT", r)
    if t == ("g", "1"):
        return law.vec("g", r)
    if t == ("1", "g"):
        return law.vec("g", r).T
    return law.vec("1", r)


def _cov(k1: _Block, k2: _Block, law: _Law | None = None):
    law = _ACTIVE.get() if law is None else law
    if k1.batch != k2.batch:
        return None
    if "gsq" in (k1.tensor, k2.tensor):
        if law.nu is not None:
            raise ExpectationError("the coordinate-wise square g**2 under Student-t noise is not supported; "
                                   "supported: Gaussian noise")
        # Gaussian: Cov[g_i, g_j**2] = 2 Sigma_ij grad_j, Cov[g_i**2, g_j**2] = 2 Sigma_ij**2 + 4 grad_i grad_j Sigma_ij
        t = (k1.tensor, k2.tensor)
        if "sign" in t:
            raise ExpectationError("the covariance of g**2 with sign(g) is not available; supported: g**2 with g, "
                                   "with g**2 and with functions of |g|")
        if k1.r == 1 and k2.r == 1:  # the closed forms (the integrands of the blocks are 1)
            if t == ("gsq", "gsq"):
                return 2 * sp.HadamardProduct(SIGMA, SIGMA) + 4 * sp.HadamardProduct(GRAD * GRAD.T, SIGMA)
            if t == ("g", "gsq"):
                return 2 * SIGMA * DiagMatrix(GRAD)
            if t == ("gsq", "g"):
                return 2 * DiagMatrix(GRAD) * SIGMA
    return _second(k1, k2, law) - _mean(k1, law) * _mean(k2, law).T


def _scaled(c: sp.MatrixExpr, s: sp.Expr) -> sp.MatrixExpr:
    """`s*c` with the scalar distributed over the terms of sums, so that powers of eta cancel in each term's
    own coefficient (sympy does not distribute `(-1/eta)*(-eta*I - eta*rho*H)`)."""
    if isinstance(c, sp.MatAdd):
        return sp.MatAdd(*[_scaled(a, s) for a in c.args]).doit()
    if isinstance(c, sp.MatMul):
        coeff, mats = c.as_coeff_mmul()
        return sp.MatMul(sp.simplify(coeff * s), *(mats.args if isinstance(mats, sp.MatMul) else (mats,))).doit()
    return sp.MatMul(s, c).doit()


def _leading(c: sp.MatrixExpr, what: str, ctx: _Ctx, state: str = "x", regime: str = "sgd",
             rate: bool = False) -> sp.MatrixExpr:
    """`lim_{eta -> 0} c`, term by term (each scalar coefficient by `sympy.limit`); a divergent one is refused.

    `rate=True` (order 1) also requires each coefficient to be `c0 + O(eta)`: a correction of lower order (the
    `eta**0.5` of `eta + eta**1.5`) is larger than the `O(eta)` weak error of the order-1 SDE, so the SDE would
    hold only at order 1/2; refused."""
    if not c.has(_eta):
        return c
    if isinstance(c, sp.MatAdd):
        return sp.MatAdd(*[_leading(a, what, ctx, state, regime, rate) for a in c.args]).doit()
    if isinstance(c, sp.MatMul):
        coeff, mats = c.as_coeff_mmul()
        lim = sp.limit(coeff, _eta, 0, "+") if coeff.has(_eta) else coeff
        if lim.has(sp.zoo, sp.oo, -sp.oo, sp.nan) or isinstance(lim, sp.AccumBounds):
            raise RegimeMismatchError(
                f"in regime {regime!r} (tau = eta) the increment of {state} in {ctx.name!r} is not O(eta): {what} has "
                f"the coefficient {c}, which diverges as eta -> 0; no SDE limit in this regime")
        if rate and coeff.has(_eta):
            corr = sp.limit((coeff - lim) / _eta, _eta, 0, "+")
            if corr.has(sp.zoo, sp.oo, -sp.oo, sp.nan) or isinstance(corr, sp.AccumBounds):
                raise RegimeMismatchError(
                    f"in regime {regime!r} (tau = eta) the increment of {state} in {ctx.name!r} is eta*(F0 + "
                    f"corrections) with {what} having the coefficient {c} -> {lim}, whose correction {coeff - lim} "
                    "is larger than O(eta) (a fractional power such as eta**0.5); the order-1 SDE is a weak order-1 "
                    "approximation only when F = F0 + O(eta). Write the update as a power series in eta, or rescale "
                    "the learning rate (tau = eta**q)")
        factors = mats.args if isinstance(mats, sp.MatMul) else (mats,)
        return sp.MatMul(lim, *[_leading(f, what, ctx, state, regime, rate) for f in factors]).doit()
    raise RegimeMismatchError(f"{what} of {ctx.name!r}, {c}, depends on eta in a way the vector engine does not expand "
                              "(allowed: scalar coefficients of matrices)")


def _resolve_minmax_eta(e: sp.Expr) -> sp.Expr:
    """`e` with each `Min`/`Max` holding `eta` replaced by the argument that wins as `eta -> 0+` at fixed `|g|`
    (inner ones first): `Min(eta, c/|g|) -> eta`."""
    return resolve_minmax(e, _eta, 0)


def _eta_out_of_block(k: _Block, c, ctx: _Ctx, law: _Law) -> tuple | None:
    r"""A block whose integrand depends on `eta`, `r(eta, |g|)`, as `eta**q` times the pointwise limit
    $r_0(|g|) = \lim_{\eta\to 0} r/\eta^q$ (`q` the least integer with a finite nonzero limit): `(block with r0,
    c*eta**q)`, or `None` when `r = o(eta**3)` (beyond every order kept).  `Min(eta, c/|g|) g` (a clip at
    `c/eta`) becomes `eta*g`: the clip acts only where `|g| > c/eta`, whose probability vanishes as `eta -> 0`.
    The moments of `r0` are the limits of those of `r` when `r` is dominated by a power of `|g|` (dominated
    convergence); under Student-t noise the discrete update's own moments at `eta > 0` are required as well
    (recorded in `law.needs`).  A fractional order (`eta**0.5`) or a limit sympy cannot take is refused."""
    where = f"the function {_canon(k.r, k.batch)} of |g| in {ctx.name!r}"
    try:
        r = _resolve_minmax_eta(k.r)
        q, lim = None, None
        for q_ in range(4):
            lim = sp.simplify(sp.limit(r / _eta ** q_, _eta, 0, "+"))
            if lim != 0:
                q = q_
                break
    except Exception as exc:  # noqa: BLE001 - sympy's limit raises many types on what it cannot do
        raise RegimeMismatchError(f"{where} depends on eta; its limit as eta -> 0 at fixed |g| could not be taken by "
                                  f"sympy ({type(exc).__name__}); write the eta-dependence as a power of eta times a "
                                  "function of |g|") from exc
    if q is None:
        return None
    bad = lim.has(_eta, sp.zoo, sp.oo, -sp.oo, sp.nan) or isinstance(lim, sp.AccumBounds)
    if not bad:  # r/eta**q = r0 + O(eta): a fractional correction (eta**0.5 |g|) exceeds the order kept
        try:
            corr = sp.limit((r / _eta ** q - lim) / _eta, _eta, 0, "+")
        except Exception:  # noqa: BLE001
            corr = sp.nan
        bad = corr.has(sp.zoo, sp.oo, -sp.oo, sp.nan) or isinstance(corr, sp.AccumBounds)
    if bad:
        raise RegimeMismatchError(
            f"{where} depends on eta and is not eta**q (r0(|g|) + O(eta)) for an integer q (r/eta**{q} -> {lim} as "
            "eta -> 0, with a correction of fractional order such as eta**0.5); the vector engine expands updates "
            "whose eta-dependence is a power series in eta")
    if law.nu is not None:
        second = {"g": ("ggT", 2), "1": ("1", 2), "gsq": ("gsq_gsqT", 2)}.get(k.tensor)
        if second is not None:
            law._need(second[0], _canon(k.r, k.batch) ** 2, f"the second moment of {where} at eta > 0")
    return _Block(k.tensor, lim, k.batch), c * _eta ** q


# -- derive ---------------------------------------------------------------------------------------------------


def derive_vector(optimizer, noise="gaussian", regime=None, order: int = 1, **noise_params) -> VectorSDE:
    """The vector SDE of a `VectorOptimizer` (or a built-in name: `usam`,
    `sam`, `nsgd`, `clip_sgd`, `sgd_nesterov`, `lamb`) under Gaussian noise with a full covariance `Sigma`, or
    under the multivariate Student-t with scale matrix `Sigma` (`noise=sd.StudentT(nu=...)`, `noise="student-t",
    nu=...`; without `nu` it is the symbol `nu`), in the optimizer's natural regime (`sgd`; `balanced` for `lamb`).
    With auxiliary vector states: regimes `sgd` (fast states eliminated) and `balanced` (EMA states kept), order 1.

    `noise_params`: `Sigma="full"` (the default: `Sigma` is always carried symbolically) or a numeric
    matrix (validated, and only recorded), and `nu` for Student-t noise; anything else is refused.
    """
    opt = V.get(optimizer)
    nu, noise_params = _noise_law(opt.name, noise, dict(noise_params))
    extra = sorted(k for k in noise_params if k != "Sigma")
    if extra:
        raise NoiseModelError(f"noise parameter(s) {extra} are not used by the vector engine; allowed: Sigma (the "
                              "full covariance is carried symbolically; a numeric Sigma is checked, then substituted "
                              "by VectorSDE.evaluate)")
    S = noise_params.get("Sigma", "full")
    state_noise = isinstance(S, str) and S.strip().lower() in ("x", "sigma(x)", "state-dependent")
    if state_noise and nu is not None:
        raise NoiseModelError("Sigma='x' (the state-dependent minibatch covariance) is derived under Gaussian noise "
                              f"only; got Student-t noise (nu = {nu}). Allowed: noise='gaussian' with Sigma='x'")
    if not (isinstance(S, str) and (S == "full" or state_noise)):
        from sdederive.noise import _check_Sigma

        if isinstance(S, str):
            raise NoiseModelError(f"Sigma={S!r}; allowed: 'full' (a constant covariance), 'x' (the state-dependent "
                                  "minibatch covariance Sigma(x)) or a symmetric PSD matrix")
        _check_Sigma(S)
    rg = regime if regime is not None else opt.natural_regime
    rg_name = getattr(rg, "name", rg)
    rg_name = str(rg_name).strip().lower().replace("_", "-")
    if opt.aux:
        if rg_name not in _STATE_REGIMES:
            raise RegimeMismatchError(
                f"the vector engine derives {opt.name!r}, which has the auxiliary vector states "
                f"{list(opt.state_names[1:])}, in the regimes {', '.join(_STATE_REGIMES)} only; got regime {rg_name!r}. "
                "'sgd': tau = eta, hyperparameters fixed, fast states (momentum) eliminated; 'balanced': tau = eta, "
                "1 - beta = rho*eta for the decays (EMA states such as Adam's moments kept in the SDE)")
        if order != 1:
            raise SdederiveError(f"order={order!r} for {opt.name!r}: with auxiliary vector states the vector engine "
                                 "derives order=1 only (the order-2 drift would need the states' own expansion)")
        if nu is not None:
            raise NoiseModelError(f"{opt.name!r} has auxiliary vector states, which the vector engine derives under "
                                  f"Gaussian noise only; got Student-t noise (nu = {nu}); allowed: noise='gaussian'")
        return _derive_states(opt, rg_name, state_noise)
    if rg_name not in _REGIMES:
        raise RegimeMismatchError(
            f"the vector engine derives {opt.name!r} in the regimes {', '.join(_REGIMES)} only; got regime "
            f"{rg_name!r}. 'sgd': tau = eta, every other hyperparameter fixed; 'high-dim': as 'sgd' with |g| replaced by "
            "sqrt(|grad f|^2 + tr Sigma); 'rho-eta': as 'sgd' with SAM's "
            "radius rho = r*eta (rho ~ eta, the scaling attributed to Compagnoni et al. 2023; unverified)")
    if rg_name == "rho-eta" and "rho" not in opt.hyper:
        raise RegimeMismatchError(f"regime 'rho-eta' scales the hyperparameter rho = r*eta; {opt.name!r} has no rho "
                                  f"(its hyperparameters: {sorted(opt.hyper)})")
    if order not in (1, 2):
        raise SdederiveError(f"order={order!r} is not supported by the vector engine; allowed: 1 or 2")
    if nu is not None and rg_name == "high-dim":
        raise RegimeMismatchError(
            f"regime 'high-dim' replaces |g| by sqrt(|grad f|^2 + tr Sigma), its concentration value under Gaussian "
            f"noise; under the multivariate Student-t (nu = {nu}) |xi|^2 = (nu/W) |Sigma^(1/2) z|^2 does not "
            "concentrate as d grows (the chi2 factor W is shared by all coordinates), so the regime does not apply; "
            "allowed with Student-t noise: regimes 'sgd' and 'rho-eta'")
    if nu is None:
        return _derive(opt, rg_name, order, None, state_noise)
    return _derive(opt, rg_name, order, nu)


def _noise_law(name: str, noise, params: dict) -> tuple[sp.Expr | None, dict]:
    """`(nu, params)`: `nu = None` for Gaussian noise, the degrees of freedom (a rational or the symbol `nu`) of the
    multivariate Student-t; `params` without the law's own parameters."""
    from sdederive.noise import NoiseModel, StudentT, canonical_name

    if isinstance(noise, NoiseModel):
        if noise.name == "gaussian" and not noise.batch:
            if noise.Sigma is not None:
                params = {"Sigma": noise.Sigma, **params}
            if dict(noise.values).get("sigma") is not None:
                raise NoiseModelError(f"Gaussian(sigma=...) is the scalar engine's per-coordinate scale; the vector "
                                      f"engine's noise covariance is the matrix Sigma (carried symbolically); derive "
                                      f"{name!r} with Gaussian() or Sigma=...")
            return None, params
        if isinstance(noise, StudentT) and not noise.batch:
            if dict(noise.values).get("sigma") is not None:
                raise NoiseModelError(f"StudentT(sigma=...) is the scalar engine's per-coordinate scale; the vector "
                                      f"engine's multivariate t has the scale matrix Sigma (carried symbolically); "
                                      f"derive {name!r} with StudentT(nu=...) (and Sigma=... for a numeric one)")
            if "nu" in params:
                raise NoiseModelError(f"nu={params['nu']!r} given twice (StudentT(nu={noise.nu!r}) and nu=); give it once")
            return noise.nu_expr, params
        raise NoiseModelError(f"the vector engine derives {name!r} under Gaussian or multivariate Student-t noise; "
                              f"got the noise model {noise.label!r}")
    try:
        key = canonical_name(noise)
    except SdederiveError:
        key = None
    if key == "gaussian":
        return None, params
    if key == "student-t":
        extra = sorted(k for k in params if k not in ("nu", "Sigma"))
        if extra:
            raise NoiseModelError(f"noise parameter(s) {extra} are not used by the vector engine with Student-t noise; "
                                  "allowed: nu (the degrees of freedom, a number or omitted for a symbolic nu) and Sigma")
        return StudentT(nu=params.pop("nu", None)).nu_expr, params
    raise NoiseModelError(
        f"the vector engine derives {name!r} under Gaussian noise g = grad + Sigma^(1/2) z or the multivariate "
        f"Student-t g = grad + Sigma^(1/2) z sqrt(nu/W) (noise='student-t', nu=... or sd.StudentT(nu=...)); got "
        f"noise={noise!r}")


def _origin_condition(name: str, atoms) -> str | None:
    """The condition on the dimension under which the atoms are finite near `g = 0` (`None` if they all are in
    every dimension); an atom whose behaviour at `g = 0` cannot be told is refused (`origin_exponent`)."""
    from sdederive.sde_vector import origin_exponents

    worst = [(p, a) for a, p in origin_exponents(atoms, f"the SDE of {name!r}").items() if p <= -1]
    if not worst:
        return None
    p, a = min(worst, key=lambda t: t[0])
    return (f"the integrand of {a.display()} behaves like |g|**{p:g} at g = 0, where the noise density is positive: "
            f"the SDE exists only in dimensions d > {-p:g} (an infinite moment for d <= {-p:g}; evaluation and the "
            "simulators refuse those dimensions)")


def _check_moments(name: str, law: _Law) -> str | None:
    """Refuse a numeric `nu` for which a moment the SDE uses is infinite; for a symbolic `nu`, the condition
    (`"nu > 2"`) under which the result holds (`None` if none)."""
    if law.nu is None or not law.needs:
        return None
    unknown = [w for p, w in law.needs if p is None]
    if unknown:
        raise ExpectationError(
            f"under Student-t noise the moment(s) {unknown} of {name!r} exist only for nu above the growth exponent "
            "of the integrand as |g| -> oo, which sympy could not determine or which is not finite (faster than any "
            "power of |g|); supported: integrands growing like a power of |g| (powers of |g|, Min, Max, positive "
            "hyperparameters)")
    p, what = max(law.needs, key=lambda t: float(t[0]))
    if p <= 0:
        return None
    if law.nu.is_number and not law.nu > p:
        extra = (" (infinite covariance: no SDE with this diffusion)" if p == 2 else "")
        raise NoiseModelError(
            f"Student-t noise with nu = {law.nu}: the one-step moments of {name!r} use {what}, which is finite only for "
            f"nu > {p}{extra}; allowed: nu > {p} for this update (bounded updates such as nsgd, clip_sgd and sign(g) "
            "have every moment for every nu > 0)")
    return f"nu > {p}"


def vector_form(opt) -> V.VectorOptimizer:
    """The vector optimizer of a scalar spec whose update is `x + a*g` (SGD): with a full `Sigma` the
    coordinates are coupled, which the vector engine represents; anything else is refused."""
    xs, gs = sym("x"), sym("g")
    upd = opt.updates["x"]
    a = sp.diff(upd, gs)
    if opt.states or sp.simplify(upd - xs - a * gs) != 0 or a.has(xs, gs, sym("k")):
        raise NoiseModelError(
            f"Sigma='full' (a symbolic full noise covariance) needs a vector update; {opt.name!r} is coordinate-wise "
            "and not of the form x + a*g. Write it with sd.vectors('x g') (docs/vector.md), or pass a numeric Sigma "
            "to the scalar engine")
    hyp = tuple(V.VHyper(h.name, h.default, h.kind) for h in opt.hypers)
    return V.VectorOptimizer(opt.name, hyp, V.VecSym("x") + a * V.VecSym("g"), "sgd", opt.doc)


def _subs_vec(v: V.Vec, m: dict) -> V.Vec:
    """`v` with the scalar substitution `m` applied everywhere (scalars, matrices, norms' operands)."""
    if isinstance(v, V.VecSym):
        return v
    if isinstance(v, V.VAdd):
        return V.VAdd(tuple(_subs_vec(t, m) for t in v.terms))
    if isinstance(v, V.VScale):
        inner = {a: V.VScalar(a.op, tuple(_subs_vec(w, m) for w in a.vargs)) for a in v.scalar.atoms(V.VScalar)}
        return V.VScale(v.scalar.xreplace(inner).xreplace(m), _subs_vec(v.vec, m))
    if isinstance(v, V.MatVec):
        return V.MatVec(v.matrix.xreplace(m), _subs_vec(v.vec, m))
    if isinstance(v, V.GradAt):
        return V.GradAt(_subs_vec(v.point, m), v.fresh)
    if isinstance(v, V.CoordMap):
        return V.CoordMap(v.fn, _subs_vec(v.vec, m))
    if isinstance(v, V.CoordExpr):
        return V.CoordExpr(v.body.xreplace(m), v.vars, tuple(_subs_vec(w, m) for w in v.vecs))
    raise SdederiveError(f"unknown vector expression {v!r}")  # pragma: no cover


def _mean_field(lin: dict) -> dict:
    """Regime 'high-dim': every `|g_b|` replaced by its concentration value `sqrt(|grad f|^2 + tr Sigma)`, which
    makes `r(|g|)` deterministic: `r(|g|) g -> r(nbar) g` and `r(|g|) -> r(nbar)`."""
    out: dict = {}
    for k, c in lin.items():
        if k == _DET or k.tensor == "sign":
            _add(out, k, c)
            continue
        r = k.r.xreplace({_norm_sym(k.batch): NBAR})
        if k.tensor == "g":
            _add(out, _Block("g", sp.S.One, k.batch), r * c)
        else:
            _add(out, _DET, r * c)
    return out


def _linear_in_grad(b: sp.MatrixExpr) -> bool:
    """Every term of `b` is a deterministic matrix times `grad` exactly once (no x, no atoms)."""
    if b.has(XVEC, ExpectationAtom, SignMean, SignSecond, VNorm, VDot):
        return False
    terms = b.expand().doit()
    for t in terms.args if isinstance(terms, sp.MatAdd) else (terms,):
        factors = t.args if isinstance(t, sp.MatMul) else (t,)
        if sum(1 for f in factors if f == GRAD) != 1 or any(f != GRAD and f.has(GRAD) for f in factors):
            return False
    return True


@functools.lru_cache(maxsize=64)
def _derive(opt: V.VectorOptimizer, regime: str = "sgd", order: int = 1, nu: sp.Expr | None = None,
            state_noise: bool = False) -> VectorSDE:
    law = _Law(nu)
    token = _ACTIVE.set(law)
    token2 = _STATE_NOISE.set(state_noise)
    try:
        sde = _derive_law(opt, regime, order, law)
    finally:
        _ACTIVE.reset(token)
        _STATE_NOISE.reset(token2)
    if state_noise:
        sde = _mark_sigma_x(sde)
    bad = [a for a in sde.drift_vector.atoms(ExpectationAtom, SignMean, SignSecond)
           | sde.covariance_expr.atoms(ExpectationAtom, SignMean, SignSecond) if a.nu != nu]
    if bad:  # pragma: no cover - a moment built outside _Law
        raise SdederiveError(f"internal: the moments {bad} of {opt.name!r} are not over the noise law with nu = {nu}")
    return sde


def _mark_sigma_x(sde: VectorSDE) -> VectorSDE:
    """`sde` with `Sigma` read as the state-dependent minibatch covariance `Sigma(x)` (its law note replaced)."""
    import dataclasses

    note = ("Gaussian model of the minibatch noise xi(x) = grad f_gamma(x) - grad f(x) with the state-dependent "
            "covariance Sigma(x) (Sigma in the formulas is Sigma(x)); xi is a gradient field in x for each minibatch, "
            "so E[(grad xi) xi] = grad tr Sigma(x)/2 (grad_trSigma)")
    notes = tuple(note if n.startswith(_GAUSS_NOTE_START) else n for n in sde.notes)
    notes = tuple(n.replace("(a state-dependent Sigma(x) would add the derivative of the noise, not modelled)",
                            "(its derivative along the O(eta) shift enters the order-2 drift: (c/2) grad tr Sigma(x) for "
                            "a shift c*g)") for n in notes)
    if note not in notes:
        notes = (note,) + notes
    return dataclasses.replace(sde, sigma_x=True, notes=notes)


_GAUSS_NOTE_START = "Gaussian gradient noise g = grad f + Sigma^(1/2) z with a full, constant covariance Sigma"


def _derive_law(opt: V.VectorOptimizer, regime: str, order: int, law: _Law) -> VectorSDE:
    nu = law.nu
    ctx = _Ctx(opt.name)
    update = _subs_vec(opt.update, {sym("rho"): _R * _eta}) if regime == "rho-eta" else opt.update
    lin = _lin(update, ctx)
    if regime == "high-dim":
        lin = _mean_field(lin)
    lin[_DET] = lin.get(_DET, sp.ZeroMatrix(V.dim, 1)) - XVEC
    # eta inside a function of |g| (Min(eta, c/|g|) g, (eta + eta**2 |g|) g): moved into the coefficient
    eta_in_r = [k for k in lin if k != _DET and k.r.has(_eta)]
    if eta_in_r and order == 2:
        raise SdederiveError(
            f"order=2 for {opt.name!r}: the function {_canon(eta_in_r[0].r, eta_in_r[0].batch)} of |g| depends on "
            "eta, and its O(eta) correction would need the expansion of its expectation in eta (not done); "
            "order 1 is available")
    for k in eta_in_r:
        moved = _eta_out_of_block(k, lin.pop(k), ctx, law)
        if moved is not None:
            _add(lin, *moved)
    # F = -Delta/eta at eta = 0 (and its eta-derivative F1 for order 2)
    F, F1 = {}, {}
    eta_free = not eta_in_r
    for k, c in lin.items():
        if _is_zero_matrix(c):
            continue
        what = "the deterministic part" if k == _DET else f"the block {k}"
        full = _scaled(c, -1 / _eta)
        eta_free = eta_free and not full.has(_eta)
        c0 = _leading(full, what, ctx, rate=order == 1)
        if not _is_zero_matrix(c0):
            F[k] = c0
        if order == 2 and full.has(_eta):
            d1 = _leading(full.diff(_eta).doit(), what, ctx)
            if not _is_zero_matrix(d1):
                F1[k] = d1
    if not F:
        raise RegimeMismatchError(f"the update of {opt.name!r} does not move x at order eta; no SDE in regime "
                                  f"{regime!r}")

    def mean_of(coeffs: dict) -> sp.MatrixExpr:
        out = sp.ZeroMatrix(V.dim, 1)
        for k, c in coeffs.items():
            out = out + (c if k == _DET else c * _mean(k, law))
        return out

    drift = -mean_of(F)
    order_note = None
    if order == 2:
        if not _linear_in_grad(drift):
            raise SdederiveError(
                f"order=2 for {opt.name!r}: the leading drift {drift} is not a constant matrix times grad f (it has "
                "expectation atoms, x or sign moments), so its derivative along the flow would need derivatives of the "
                "atoms; order 2 is available for drifts -A grad f (SGD, USAM, and SAM/USAM in regime 'rho-eta')")
        e2 = -mean_of(F1) if F1 else sp.ZeroMatrix(V.dim, 1)
        jb = drift.xreplace({GRAD: HESS * drift})  # (d b0/dx) b0 for b0 linear in grad f, H constant
        drift = drift + _eta * (e2 - jb / 2)
        order_note = ("order-2 drift b0 + eta*(E2 - (db0/dx) b0/2), E2 the eta**2 coefficient of E[dx]; (db0/dx) = A H for b0 = -A grad f, exact for quadratic f (constant H); the diffusion "
                      "is the order-1 one, which suffices at weak order 2")
    blocks = [k for k in F if k != _DET]
    cov = sp.ZeroMatrix(V.dim, V.dim)
    for k1 in blocks:
        for k2 in blocks:
            C = _cov(k1, k2, law)
            if C is not None and not _is_zero_matrix(C):
                cov = cov + F[k1] * C * F[k2].T
    cov = cov.doit() if not isinstance(cov, sp.ZeroMatrix) else cov
    # diffusion: one Gaussian block -> A Sigma^(1/2); else the symmetric root of the covariance
    if isinstance(cov, sp.ZeroMatrix):
        diff = sp.ZeroMatrix(V.dim, V.dim)
    elif len(blocks) == 1 and blocks[0].tensor == "g" and blocks[0].r == 1:  # Cov = second * A Sigma A^T
        diff = sp.sqrt(_eta * law.second) * F[blocks[0]] * SIGMA ** sp.S.Half
    else:
        diff = sp.sqrt(_eta) * cov ** sp.S.Half
    covariance = _eta * cov if not isinstance(cov, sp.ZeroMatrix) else cov

    atoms = []
    for e in (drift, covariance):
        for a in sorted(e.atoms(ExpectationAtom), key=lambda a: (a.tensor, str(a.integrand))):
            if a not in atoms:
                atoms.append(a)
    condition = _check_moments(opt.name, law)
    origin = _origin_condition(opt.name, atoms)
    exact = regime == "sgd" and order == 1 and eta_free
    if nu is None:
        law_note = ("Gaussian gradient noise g = grad f + Sigma^(1/2) z with a full, constant covariance Sigma "
                    "(additive noise model)")
    else:
        law_note = (f"multivariate Student-t gradient noise g = grad f + Sigma^(1/2) z sqrt(nu/W), W ~ chi2_nu "
                    f"independent of z, {'nu symbolic' if nu.free_symbols else f'nu = {nu}'}, with a full, constant scale matrix Sigma (additive noise model): "
                    "E[g] = grad f, Cov[g] = nu/(nu - 2) Sigma; one W per minibatch, shared by all coordinates (not "
                    "the scalar engine's independent per-coordinate t)"
                    + (f"; valid for {condition}" if condition and not nu.is_number else ""))
    notes = [law_note + ("; the one-step moments E[dx]/eta and Cov[dx]/eta equal drift and D D^T exactly for "
                         "every eta (hyperparameters other than eta fixed)" if exact else "")]
    if not eta_free:
        notes.append("F = -dx/eta depends on eta: the SDE has its eta -> 0 limit F0, so the one-step moments "
                     "E[dx]/eta and Cov[dx]/eta differ from drift and D D^T by O(eta)"
                     + (" (a function of |g| holding eta, such as Min(eta, c/|g|), is replaced by its pointwise "
                        "limit: a clip at a radius c/eta acts with a probability that vanishes as eta -> 0)"
                        if eta_in_r else ""))
    if ctx.hessian and regime == "sgd":
        notes.append("the gradient at a perturbed point x + delta is grad f + H delta (H the Hessian at x): exact for "
                     "quadratic f; otherwise the dropped term (1/2) D^3 f[delta, delta] is O(|delta|**2) (O(rho**2) "
                     "for SAM's normalized perturbation)")
    elif ctx.hessian:
        notes.append("the gradient at a perturbed point x + delta is grad f + H delta: with rho = r*eta the dropped "
                     "term (1/2) D^3 f[delta, delta] is O(eta**2), beyond the order kept, for any smooth f")
    notes += _minibatch_notes(ctx)
    if drift.has(SignMean) and nu is not None:
        notes.append("E[sign(g)] = 2 F_nu(grad/sqrt(diag Sigma)) - 1 (the univariate t CDF of the marginals) and "
                     "E[sign(g) sign(g)^T] (bivariate t orthant probabilities, the normal ones averaged over the chi2 "
                     "mixing variable by quadrature; (2/pi) arcsin(r_ij) at grad = 0, sign being scale invariant) are "
                     "evaluated by sdederive.sde_vector.sign_mean / sign_second_moment with nu")
    elif drift.has(SignMean):
        notes.append("E[sign(g)] = erf(grad/sqrt(2 diag Sigma)) and E[sign(g) sign(g)^T] (bivariate normal orthant "
                     "probabilities, (2/pi) arcsin(r_ij) at grad = 0) are closed forms for the Gaussian noise, "
                     "evaluated by sdederive.sde_vector.sign_mean / sign_second_moment")
    if atoms:
        over = "E[...] over g ~ N(grad f, Sigma)" if nu is None else f"E_t[...] over g ~ {law_text(nu)}"
        notes.append(f"expectation atoms {over} have no closed form for a general Sigma; "
                     "they are kept by name and evaluated numerically (sdederive.sde_vector.evaluate_atom: Monte "
                     "Carlo, unbiased, standard error O(n**-0.5))")
    if origin:
        notes.append(origin)
    if regime == "high-dim":
        notes.append("regime 'high-dim': |g| is replaced by its concentration value sqrt(|grad f|^2 + tr Sigma) "
                     "(|g|^2 = |grad f|^2 + tr Sigma + O(sqrt(tr Sigma^2)) fluctuations); assumes tr(Sigma^2) << "
                     "(|grad f|^2 + tr Sigma)^2, e.g. many coordinates with comparable noise; relative errors "
                     "O(sqrt(tr Sigma^2)/(|grad f|^2 + tr Sigma)), O(1/sqrt(d)) for isotropic noise")
    if regime == "rho-eta":
        notes.append("regime 'rho-eta': rho = r*eta (r fixed as eta -> 0); at order 1 every rho term is O(eta) and drops "
                     "out (the SDE is SGD's); order=2 keeps the O(eta) drift correction")
    if order_note:
        notes.append(order_note)
    # the increment F in linear-block form (what the simulators sample for a diffusion C^(1/2))
    increment = _increment_blocks(F)
    return VectorSDE(optimizer=opt.name, noise="gaussian" if nu is None else "student-t", regime=regime, tau=_eta,
                     drift_vector=drift, diffusion_matrix_expr=diff, covariance_expr=covariance, atoms=tuple(atoms),
                     notes=tuple(notes), hypers=tuple((h.name, h.kind, h.default) for h in opt.hypers), order=order,
                     source=opt, nu=nu, increment=increment)



# -- auxiliary vector states ------------------------------------------------------------------------------------
_h = sp.Symbol("h_H")  # the Hessian as a commuting scalar (coefficients that are polynomials in H commute)
_GAUSS = "Gaussian gradient noise g = grad f + Sigma^(1/2) z with a full, constant covariance Sigma (additive noise model)"


def _split_vec(e: sp.MatrixExpr, what: str, ctx: _Ctx) -> dict:
    """A `(d, 1)` deterministic expression as `{vector symbol: (d, d) coefficient}` (`-eta*mu*H*m` -> {m: -eta*mu*H})."""
    e = e.expand().doit() if not isinstance(e, sp.ZeroMatrix) else e
    out: dict = {}
    for t in (e.args if isinstance(e, sp.MatAdd) else (e,)):
        if isinstance(t, sp.ZeroMatrix):
            continue
        if isinstance(t, sp.MatrixSymbol) and t.shape[1] == 1:
            _add(out, t, IDENT)
            continue
        if isinstance(t, sp.MatMul) and isinstance(t.args[-1], sp.MatrixSymbol) and t.args[-1].shape[1] == 1:
            scal = [a for a in t.args[:-1] if not getattr(a, "is_Matrix", False)]
            mats = [a for a in t.args[:-1] if getattr(a, "is_Matrix", False)]
            _add(out, t.args[-1], sp.Mul(*scal) * (sp.MatMul(*mats) if mats else IDENT))
            continue
        raise RegimeMismatchError(f"{what} of {ctx.name!r} has the term {t}, which is not a matrix times a state or x; "
                                  "fast states can be eliminated only when the updates are affine in them")
    return out


def _to_h(c, what: str, ctx: _Ctx) -> sp.Expr:
    """A `(d, d)` coefficient built from `I`, `H` and scalars as a scalar polynomial in `h_H`."""
    if isinstance(c, sp.Identity):
        return sp.S.One
    if isinstance(c, sp.ZeroMatrix):
        return sp.S.Zero
    if c == HESS:
        return _h
    if not getattr(c, "is_Matrix", False):
        return c
    if isinstance(c, sp.MatAdd):
        return sp.Add(*[_to_h(a, what, ctx) for a in c.args])
    if isinstance(c, sp.MatMul):
        return sp.Mul(*[_to_h(a, what, ctx) for a in c.args])
    if isinstance(c, sp.MatPow) and c.exp.is_Integer:
        return _to_h(c.base, what, ctx) ** c.exp
    raise RegimeMismatchError(
        f"{what} of {ctx.name!r} has the coefficient {c}; eliminating fast states needs coefficients built from I, H "
        "and scalars (they commute), not other matrices or noise-dependent factors")


def _from_h(e: sp.Expr, what: str, ctx: _Ctx) -> sp.MatrixExpr:
    """A polynomial in `h_H` back to the matrix polynomial in `H`."""
    e = sp.expand(sp.simplify(e))
    if not e.has(_h):
        return e * IDENT
    try:
        poly = sp.Poly(e, _h)
    except sp.PolynomialError:
        poly = None
    if poly is None or any(c.has(_h) for c in poly.coeffs()):
        raise RegimeMismatchError(f"{what} of {ctx.name!r} is {e.xreplace({_h: sp.Symbol('H')})}, not a polynomial in "
                                  "H; the vector engine represents polynomials in H only")
    terms = []
    for (p,), c in zip(poly.monoms(), poly.coeffs()):
        terms.append(sp.factor(c) * (IDENT if p == 0 else HESS if p == 1 else HESS**p))
    return sp.MatAdd(*terms).doit() if len(terms) > 1 else terms[0]


def _uses_state_nonlinearly(v: V.Vec, states: set) -> V.Vec | None:
    """A node of `v` (a norm, inner product or coordinate-wise map) whose operands contain an auxiliary state."""
    def has_state(w):
        return any(isinstance(n, V.VecSym) and n.name in states for n in V._walk(w))

    for n in V._walk(v):
        if isinstance(n, (V.CoordExpr, V.CoordMap)) and any(has_state(w) for w in
                                                            (n.vecs if isinstance(n, V.CoordExpr) else (n.vec,))):
            return n
        if isinstance(n, V.VScale):
            for a in n.scalar.atoms(V.VScalar):
                if any(has_state(w) for w in a.vargs):
                    return a
    return None


def _mean_of(coeffs: dict) -> sp.MatrixExpr:
    out = sp.ZeroMatrix(V.dim, 1)
    for k, c in coeffs.items():
        out = out + (c if k == _DET else c * _mean(k))
    return out


def _cross(Fa: dict, Fb: dict) -> sp.MatrixExpr:
    """`Cov[Fa, Fb]` of two linear-block forms over the same blocks."""
    out = sp.ZeroMatrix(V.dim, V.dim)
    for k1, c1 in Fa.items():
        for k2, c2 in Fb.items():
            if _DET in (k1, k2):
                continue
            C = _cov(k1, k2)
            if C is not None and not _is_zero_matrix(C):
                out = out + c1 * C * c2.T
    return out.doit() if not isinstance(out, sp.ZeroMatrix) else out


def _atoms_in(exprs) -> tuple:
    atoms = []
    for e in exprs:
        for a in sorted(e.atoms(ExpectationAtom), key=lambda a: (a.tensor, str(a.integrand))):
            if a not in atoms:
                atoms.append(a)
    return tuple(atoms)


def _derive_states(opt: V.VectorOptimizer, regime: str, state_noise: bool = False) -> VectorSDE:
    f = _derive_fast if regime == "sgd" else _derive_balanced
    if not state_noise:
        return f(opt)
    token = _STATE_NOISE.set(True)
    try:  # uncached: the perturbed gradients are checked under Sigma(x)
        return _mark_sigma_x(f.__wrapped__(opt))
    finally:
        _STATE_NOISE.reset(token)


@functools.lru_cache(maxsize=32)
def _derive_fast(opt: V.VectorOptimizer) -> VectorSDE:
    """Regime `sgd` with auxiliary states: every state is fast (its increment is O(1) at fixed hyperparameters)
    and enters the updates affinely with coefficients in `I`, `H`; it is eliminated as in the scalar engine,
    `y = x + sum_j A_j m_j` with `d(Delta y)/d m_j = 0`."""
    ctx = _Ctx(opt.name)
    aux = list(opt.state_names[1:])
    svec = {n: state_vector(n) for n in aux}
    for sname, upd in opt.updates.items():
        bad = _uses_state_nonlinearly(upd, set(aux))
        if bad is not None:
            raise RegimeMismatchError(
                f"in regime 'sgd' (hyperparameters fixed) the auxiliary states of {opt.name!r} change by O(1) per step "
                f"(fast); the update of {sname} uses them through {bad}, nonlinearly, so they cannot be eliminated. "
                "Optimizers with EMA states and decays (lamb, Adam-like): regime 'balanced' (1 - beta = rho*eta)")
    C: dict = {}
    keys: list = []
    for sname, upd in opt.updates.items():
        lin = _lin(upd, ctx)
        own = XVEC if sname == "x" else svec[sname]
        lin[_DET] = lin.get(_DET, sp.ZeroMatrix(V.dim, 1)) - own
        row: dict = {}
        for k, c in lin.items():
            if _is_zero_matrix(c):
                continue
            what = f"the increment of {sname}"
            if k == _DET:
                for vec, coef in _split_vec(c, what, ctx).items():
                    _add(row, ("vec", vec), _to_h(coef, what, ctx))
            else:
                _add(row, k, _to_h(c, what, ctx))
        for k in row:
            if k not in keys:
                keys.append(k)
        C[sname] = row
    a = [sp.Dummy(f"a_{n}") for n in aux]
    eqs = [C["x"].get(("vec", svec[n]), 0) + sum(aj * C[m].get(("vec", svec[n]), 0) for aj, m in zip(a, aux))
           for n in aux]
    sol = sp.solve(eqs, a, dict=True)
    if len(sol) != 1 or set(sol[0]) != set(a):
        raise RegimeMismatchError(f"the fast states {aux} of {opt.name!r} cannot be eliminated in regime 'sgd': no unique "
                                  "slow variable x + A m with d(Delta)/dm = 0 (a state that does not relax by itself?)")
    coeffs = {}
    for aj, n in zip(a, aux):
        lead = sp.limit(sp.simplify(sol[0][aj] / _eta), _eta, 0, "+")
        if lead.has(sp.oo, -sp.oo, sp.zoo, sp.nan) or sp.limit(sol[0][aj], _eta, 0, "+") != 0:
            raise RegimeMismatchError(
                f"the state {n} of {opt.name!r} is not fast in regime 'sgd' (the slow variable x + A {n} would need "
                f"A = {sol[0][aj]}, which does not vanish as eta -> 0); no SDE with {n} eliminated in this regime")
        coeffs[n] = _from_h(lead, f"the slow-variable coefficient of {n}", ctx)
    F: dict = {}
    for k in keys:
        if isinstance(k, tuple) and k[1] in svec.values():  # the eliminated states' own coefficients (zero now)
            continue
        y = C["x"].get(k, 0) + sum(aj * C[m].get(k, 0) for aj, m in zip(a, aux))
        y = sp.simplify(y.xreplace(sol[0]) if hasattr(y, "xreplace") else y)
        if y == 0:
            continue
        if any(y.has(sv) for sv in svec.values()):
            raise RegimeMismatchError(f"the increment of the slow variable of {opt.name!r} still depends on the states "
                                      f"{aux} ({y}); they enter nonlinearly and cannot be eliminated")
        f = sp.limit(-y / _eta, _eta, 0, "+")
        if f.has(sp.oo, -sp.oo, sp.zoo, sp.nan) or isinstance(f, sp.AccumBounds):
            raise RegimeMismatchError(f"in regime 'sgd' the increment of the slow variable of {opt.name!r} is not "
                                      f"O(eta): the coefficient {y} diverges relative to eta; no SDE limit")
        if f == 0:
            continue
        M = _from_h(f, "the drift coefficient", ctx)
        if isinstance(k, tuple):
            _add(F, _DET, M * k[1])
        else:
            F[k] = M
    if not any(k != _DET for k in F) and _DET not in F:
        raise RegimeMismatchError(f"the update of {opt.name!r} does not move x at order eta; no SDE in regime 'sgd'")
    drift = -_mean_of(F)
    blocks = [k for k in F if k != _DET]
    cov = _cross(F, F)
    root = False  # the diffusion is the root of the covariance (the simulators sample the increment)
    if isinstance(cov, sp.ZeroMatrix):
        diff = cov
    elif len(blocks) == 1 and blocks[0].tensor == "g" and blocks[0].r == 1:
        diff = sp.sqrt(_eta) * F[blocks[0]] * SIGMA ** sp.S.Half
    else:
        diff, root = sp.sqrt(_eta) * cov ** sp.S.Half, True
    covariance = _eta * cov if not isinstance(cov, sp.ZeroMatrix) else cov
    eliminated = tuple((n, sp.MatMul(_eta, coeffs[n]).doit()) for n in aux)
    notes = [_GAUSS]
    for n, A in eliminated:
        notes.append(f"state {n} is fast in regime 'sgd' (O(1) change per step) and was eliminated: x denotes the slow "
                     f"variable x + ({_human_str(A)})*{n} (equal to the original up to O(eta)); grad f, H and the noise "
                     "are taken at it, with an error O(eta) in the drift")
    notes.append("only the O(eta) part of the slow variable's increment enters the order-1 SDE; its O(eta**2) terms "
                 "(for a look-ahead gradient grad_at(x - eta*mu*m), the correction -eta*mu*H m of the gradient) are "
                 "beyond order 1, so Nesterov's look-ahead and heavy ball share this SDE")
    if ctx.hessian:
        notes.append("the gradient at a perturbed point x + delta is grad f + H delta (H the Hessian at x): exact for "
                     "quadratic f; otherwise the dropped term (1/2) D^3 f[delta, delta] is O(|delta|**2)")
    notes += _minibatch_notes(ctx)
    atoms = _atoms_in((drift, covariance))
    if atoms:
        notes.append("expectation atoms E[...] over g ~ N(grad f, Sigma) have no closed form for a general Sigma; "
                     "they are kept by name and evaluated numerically (sdederive.sde_vector.evaluate_atom)")
    return VectorSDE(optimizer=opt.name, noise="gaussian", regime="sgd", tau=_eta, drift_vector=drift,
                     diffusion_matrix_expr=diff, covariance_expr=covariance, atoms=atoms, notes=tuple(notes),
                     hypers=tuple((h.name, h.kind, h.default) for h in opt.hypers), order=1, source=opt,
                     eliminated=eliminated,
                     # the slow variable's increment, where the simulators sample it (atoms, a root noise)
                     increment=_increment_blocks(F) if atoms or root else ())


def _human_str(e) -> str:
    from sdederive.sde_vector import _human

    return _human(e)


# -- regime 'balanced': the leading order of an update in which EMA states move by O(eta) ------------------------


def _flatten(v: V.Vec, coef=sp.S.One) -> list:
    if isinstance(v, V.VAdd):
        return [p for t in v.terms for p in _flatten(t, coef)]
    if isinstance(v, V.VScale):
        return _flatten(v.vec, coef * v.scalar)
    return [(coef, v)]


def _lim_scalar(s: sp.Expr, ctx: _Ctx, where: str) -> sp.Expr:
    """`lim_{eta -> 0}` of a scalar of the update with `k = t/eta` (bias corrections `beta**(k+1) ->
    exp(-rho*t)`), its vector scalars replaced by those of the leading-order vectors."""
    repl = {a: V.VScalar(a.op, tuple(_lead(w, ctx) for w in a.vargs)) for a in s.atoms(V.VScalar)}
    s = s.xreplace(repl)
    if not s.has(_eta) and not s.has(_k):
        return s
    pows = {p: sp.exp(sp.limit(sp.expand_log(p.exp.xreplace({_k: _t / _eta}) * sp.log(p.base), force=True), _eta, 0, "+"))
            for p in s.atoms(sp.Pow) if p.exp.has(_k)}
    s = s.xreplace(pows).xreplace({_k: _t / _eta})
    vs = {a: sp.Dummy() for a in s.atoms(V.VScalar)}
    lim = sp.limit(s.xreplace(vs), _eta, 0, "+").xreplace({d: a for a, d in vs.items()}) if s.has(_eta) else s
    if lim.has(sp.oo, -sp.oo, sp.zoo, sp.nan) or isinstance(lim, sp.AccumBounds) or lim.has(sp.AccumBounds):
        raise RegimeMismatchError(f"in regime 'balanced' the coefficient {s} in {where} of {ctx.name!r} has no finite "
                                  "limit as eta -> 0 (k = t/eta); no SDE limit in this regime")
    return lim


def _lead(v: V.Vec, ctx: _Ctx, where: str = "the update") -> V.Vec:
    """The limit eta -> 0 of a vector expression (like terms combined first, so that x/eta - x/eta cancels)."""
    acc: dict = {}
    order: list = []
    for c, a in _flatten(v):
        if a in acc:
            acc[a] = acc[a] + c
        else:
            acc[a], order = c, order + [a]
    terms = []
    for a in order:
        c = _lim_scalar(sp.simplify(acc[a]) if acc[a].has(_eta) else acc[a], ctx, where)
        if c == 0:
            continue
        if isinstance(a, V.VecSym):
            a0 = a
        elif isinstance(a, V.MatVec):
            a0 = V.MatVec(a.matrix, _lead(a.vec, ctx, where))
        elif isinstance(a, V.GradAt):
            a0 = V.GradAt(_lead(a.point, ctx, where), a.fresh)
        elif isinstance(a, V.CoordMap):
            a0 = V.CoordMap(a.fn, _lead(a.vec, ctx, where))
        elif isinstance(a, V.CoordExpr):
            a0 = V.CoordExpr(_lim_scalar(a.body, ctx, where), a.vars, tuple(_lead(w, ctx, where) for w in a.vecs))
        else:  # pragma: no cover - the IR is closed
            raise SdederiveError(f"unknown vector expression {a!r}")
        terms.append(a0 if c == 1 else V.VScale(c, a0))
    if not terms:
        return V.VScale(sp.S.Zero, V.VecSym("x"))
    return terms[0] if len(terms) == 1 else V.VAdd(tuple(terms))


def _scaled_decay(name: str) -> sp.Symbol:
    n = scaled_name(name, "rho")
    return sym(n) if n in KNOWN else sym(n, positive=True)


@functools.lru_cache(maxsize=32)
def _derive_balanced(opt: V.VectorOptimizer) -> VectorSDE:
    """Regime `balanced` (`tau = eta`, `1 - beta = rho*eta` for the decays): the EMA states move by O(eta) per
    step and stay in the SDE; x's increment is `-eta*P(x, states)` at leading order (the states' O(eta) change
    within the step, and x's own noise, are O(eta**2))."""
    ctx = _Ctx(opt.name)
    decays = [h for h in opt.hypers if h.kind == "decay"]
    if not decays:
        raise RegimeMismatchError(f"regime 'balanced' scales the decays 1 - beta = rho*eta; {opt.name!r} has no "
                                  f"hyperparameter of kind 'decay' (its hyperparameters: {sorted(opt.hyper)}); its "
                                  "auxiliary states are fast: regime 'sgd' eliminates them")
    sub = {h.symbol: 1 - _scaled_decay(h.name) * _eta for h in decays}
    ups = {n: _subs_vec(u, sub) for n, u in opt.updates.items()}
    aux = list(opt.state_names[1:])
    svec = {n: state_vector(n) for n in aux}
    F: dict = {}
    for n in aux:
        if any(isinstance(x, V.VScale) and x.scalar.has(_k) for x in V._walk(ups[n])):
            raise RegimeMismatchError(f"the update of the state {n} of {opt.name!r} depends on the step counter k; "
                                      "regime 'balanced' supports k only in the update of x (bias corrections)")
        lin = _lin(ups[n], ctx)
        lin[_DET] = lin.get(_DET, sp.ZeroMatrix(V.dim, 1)) - svec[n]
        row = {}
        for k, c in lin.items():
            if _is_zero_matrix(c):
                continue
            what = "the deterministic part" if k == _DET else f"the block {k}"
            c0 = _leading(_scaled(c, -1 / _eta), what, ctx, n, "balanced")
            if not _is_zero_matrix(c0):
                row[k] = c0
        F[n] = row
    xs = V.VecSym("x")
    P0 = _lead(V.VScale(-1 / _eta, V.VAdd((ups["x"], V.VScale(sp.S.NegativeOne, xs)))), ctx, "the update of x")
    row = {}
    for k, c in _lin(P0, ctx).items():
        if _is_zero_matrix(c):
            continue
        c0 = _leading(c, "the deterministic part" if k == _DET else f"the block {k}", ctx, "x", "balanced")
        if not _is_zero_matrix(c0):
            row[k] = c0
    F = {"x": row, **F}
    states = ["x"] + aux
    drifts = {n: -_mean_of(F[n]) for n in states}
    joint = []
    for i, s1 in enumerate(states):
        for s2 in states[i:]:
            c = _cross(F[s1], F[s2])
            if not isinstance(c, sp.ZeroMatrix):
                joint.append((s1, s2, _eta * c))
    kinds = {a[0]: a[2] for a in opt.aux}
    dropped = [n for n in aux if kinds[n] == "second_moment" and any(k != _DET for k in F[n])]
    diffs = {}
    noisy = {n: [k for k in F[n] if k != _DET] for n in states if n not in dropped}
    noisy = {n: blocks for n, blocks in noisy.items() if blocks}
    linear = all(blocks == [_Block("g", sp.S.One, 0)] for blocks in noisy.values())
    if not linear and len(noisy) > 1:
        n = next(n for n, blocks in noisy.items() if blocks != [_Block("g", sp.S.One, 0)])
        raise ExpectationError(
            f"the states {list(noisy)} of {opt.name!r} all carry noise in regime 'balanced', and the noise of {n} is "
            f"not one linear Gaussian block (blocks {noisy[n]}): their joint diffusion would be the root of the block "
            "covariance of all of them, which the SDE does not represent (one noisy state with such noise is; a "
            "second-moment state, kinds={'v': 'second_moment'}, has its noise left out)")
    for n in states:
        blocks = noisy.get(n)
        if not blocks:
            diffs[n] = sp.ZeroMatrix(V.dim, V.dim)
        elif linear:  # A*xi: the state's increment -eta*F has the noise -sqrt(eta) A Sigma^(1/2) dW
            diffs[n] = (-sp.sqrt(_eta) * F[n][blocks[0]] * SIGMA ** sp.S.Half).doit()
        else:  # the one noisy state: the symmetric root of eta*Cov[F_n] (clipped or normalised g in an EMA)
            diffs[n] = sp.sqrt(_eta) * _cross(F[n], F[n]) ** sp.S.Half
    cov_x = next((c for s1, s2, c in joint if s1 == s2 == "x"), sp.ZeroMatrix(V.dim, V.dim))
    exprs = [drifts[n] for n in states] + [c for _, _, c in joint]
    atoms = _atoms_in(exprs)
    names = ", ".join(f"{_scaled_decay(h.name)} = (1 - {h.name})/eta" for h in decays)
    notes = [_GAUSS, f"regime 'balanced': tau = eta, {names} fixed as eta -> 0; the auxiliary states "
             f"{', '.join(aux)} change by O(eta) per step and are kept in the SDE (they start at 0)",
             ("x's increment is -eta*P(x, " + ", ".join(aux) + ") + O(eta**2): the states' O(eta) change within the "
              "step and x's own noise (variance O(eta**3) per unit time) are beyond order 1, so x has no diffusion"
              if "x" not in noisy else
              "x's increment is -eta*F_x + O(eta**2) with F_x random through g: the states' O(eta) change within the "
              "step is beyond order 1, and x's noise, of the order of SGD's, is kept")]
    if any(e.has(_t) for e in exprs):
        notes.append("bias corrections 1 - beta**(k+1) -> 1 - exp(-rho*t) (k = t/tau, eta -> 0)")
    if dropped:
        notes.append(f"the O(sqrt(eta)) diffusion of {', '.join(dropped)} is left out of the model as in the published "
                     "SDE (regime 'balanced', second-moment states); the full local covariance of all states is "
                     "VectorSDE.joint_covariance")
    if any(e.has(VNorm) for e in exprs):
        notes.append("norms of the states (the trust ratio |x|/|u + wd*x|) are deterministic functions of them; the "
                     "SDE holds where the norms that divide are nonzero")
    if any(e.has(sp.HadamardPower) for e in exprs):
        notes.append("coordinate-wise roots and quotients of the states (Adam's m/(sqrt(v) + eps)) need v >= 0, eps > 0")
    if ctx.hessian:
        notes.append("the gradient at a perturbed point x + delta is grad f + H delta: exact for quadratic f")
    if not linear:
        n = next(iter(noisy))
        notes.append(f"the noise of {n} is the symmetric root of eta*Cov[F_{n}] (F_{n} = -Delta {n}/eta, nonlinear in "
                     "g); the simulators draw it from inner samples of the increments (VectorSDE.increment, "
                     "aux_increment)")
    # the increments in linear-block form, where the simulators must sample them (atoms in a drift, a root noise)
    sampled = bool(atoms) or not linear
    incs = {n: (_increment_blocks(F[n]) if sampled and any(k != _DET for k in F[n]) else ()) for n in states}
    zero = sp.ZeroMatrix(V.dim, V.dim)
    return VectorSDE(optimizer=opt.name, noise="gaussian", regime="balanced", tau=_eta, drift_vector=drifts["x"],
                     diffusion_matrix_expr=diffs["x"], covariance_expr=cov_x, atoms=atoms, notes=tuple(notes),
                     hypers=tuple((h.name, h.kind, h.default) for h in opt.hypers), order=1, source=opt,
                     aux_states=tuple(aux), aux_drift=tuple(drifts[n] for n in aux),
                     aux_diffusion=tuple(diffs.get(n, zero) for n in aux), joint_covariance=tuple(joint),
                     increment=incs["x"], aux_increment=tuple(incs[n] for n in aux) if sampled else ())


def _increment_blocks(F: dict) -> tuple:
    """`F = a0 + sum_k A_k B_k` as the `VectorSDE.increment` tuple."""
    return tuple(("det", sp.S.One, 0, c) if k == _DET else (k.tensor, _canon(k.r, k.batch), k.batch, c)
                 for k, c in F.items())


def clear_cache() -> None:
    _derive.cache_clear()
    _derive_fast.cache_clear()
    _derive_balanced.cache_clear()


def _minibatch_notes(ctx) -> list[str]:
    """The notes on which minibatch the gradients at other points use (both derivation paths)."""
    out = []
    if ctx.same_batch_shift:
        out.append("same minibatch at both evaluation points: the noise at the perturbed point is g's own xi (a "
                   "state-dependent Sigma(x) would add the derivative of the noise, not modelled)")
    if ctx.fresh:
        out.append("grad_at(..., fresh=True) draws an independent minibatch with the same law")
    return out

r"""Vector update rules: optimizers in d dimensions (norms, inner products, gradients at other points).

The scalar specs of `sdederive.spec.optimizers` are per coordinate; an update that couples the
coordinates (a global norm, an inner product, the gradient at a perturbed point) is written here with
vector symbols:

    import sdederive as sd
    x, g = sd.vectors("x g")
    eta, c = sd.sym("eta"), sd.sym("c")
    opt = sd.from_update("my_clip", {"x": x - eta * sd.minimum(1, c / sd.norm(g)) * g},
                         hypers={"eta": (1e-2, "lr"), "c": (1.0, "positive")})
    sd.derive(opt)

Building blocks (all immutable and hashable, so derivations are cached):

* `x` (the parameter) and `g` (the stochastic gradient at `x`): `vectors`;
* `a + b`, `a - b`, `s*a`, `a/s` with `s` a sympy scalar (which may contain `norm`
  and `dot` of vectors, and `sympy.Min`/`minimum`, `sqrt`, ...);
* `A*a` with `A` a constant sympy matrix expression of shape `(d, d)` (`matrix`);
* `grad_at` `(y)`: the stochastic gradient at the point `y`, with the same minibatch as `g`
  (`fresh=False`, the SAM convention) or a fresh, independent one (`fresh=True`);
* `coordinatewise` `(fn, a)`: a coordinate-wise map (`sign`), the special case the scalar engine covers;
  `coordinatewise(lambda m, v: m/(sqrt(v) + eps), m, v)`: a coordinate-wise expression of several vectors
  (Adam's direction; `coordinatewise(lambda a: a**2, g)` is `g*g` coordinate by coordinate);
* auxiliary vector states (`m`, `v`, ...): `vectors("x g m v")`, updated in the same dict,
  `{"m": mu*m + g, "x": x - eta*(mu*m + g)}`; every update is written in the values *before* the step
  (as in the scalar `from_update`).  Their SDE: regime `sgd` eliminates fast states (momentum at fixed
  `mu`), regime `balanced` keeps EMA states with `1 - beta = rho*eta` (docs/vector.md).

Why not sympy's matrix expressions for the *update*: `MatrixSymbol` arithmetic has no coordinate-wise
nonlinear maps of a vector, no notion of "the gradient at another point", and a scalar function of a
norm (`Min(1, c/sqrt((g.T*g)[0, 0]))`) mixes matrix elements into scalars, which the moment expansion
would have to take apart again.  This small typed IR keeps exactly the operations the expansion
understands; the *results* (drift, diffusion) are sympy matrix expressions (`sdederive.sde_vector`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import sympy as sp

from sdederive.errors import HyperparameterError, SdederiveError, SpecError, UnknownNameError
from sdederive.spec.hyper import KINDS, check_value
from sdederive.symbols import sym

__all__ = ["Vec", "vectors", "norm", "dot", "minimum", "grad_at", "coordinatewise", "matrix", "dim",
           "VectorOptimizer", "VHyper", "from_update_vector", "get", "names", "is_vector", "VECTOR_BUILTINS",
           "RESERVED_VECTOR_NAMES"]

#: the (symbolic) dimension of the parameter vector
dim = sp.Symbol("d", integer=True, positive=True)


class Vec:
    """Base class of vector expressions (see the module docstring).  Subclasses are frozen dataclasses."""

    # -- arithmetic ------------------------------------------------------------------------------
    def __add__(self, other):
        if isinstance(other, Vec):
            return VAdd((self, other))
        if _is_zero_scalar(other):
            return self
        raise SpecError(f"cannot add the scalar {other!r} to the vector {self}; add vectors only "
                        "(a constant vector is a sympy matrix expression times a vector, or write s*x)")

    __radd__ = __add__

    def __neg__(self):
        return VScale(sp.S.NegativeOne, self)

    def __sub__(self, other):
        if isinstance(other, Vec):
            return VAdd((self, -other))
        return self.__add__(-_scalar(other, "subtract"))

    def __rsub__(self, other):
        return (-self).__add__(other)

    def __mul__(self, other):
        if isinstance(other, Vec):
            raise SpecError(f"the product {self} * {other} of two vectors is not defined; use dot({self}, {other}) "
                            "for the inner product or coordinatewise(...) for a coordinate-wise map")
        return VScale(_scalar(other, "multiply"), self)

    def __rmul__(self, other):
        if isinstance(other, sp.MatrixBase) or getattr(other, "is_Matrix", False):
            return MatVec(_matrix(other), self)
        return VScale(_scalar(other, "multiply"), self)

    def __truediv__(self, other):
        if isinstance(other, Vec):
            raise SpecError(f"division by the vector {other} is not defined; divide by a scalar such as norm({other})")
        s = _scalar(other, "divide")
        if s == 0:
            raise SpecError(f"division of {self} by zero")
        return VScale(1 / s, self)

    def __pow__(self, other):
        raise SpecError(f"{self}**{other}: powers of a vector are not defined; use norm(.)**2 or dot(a, b), or "
                        "coordinatewise(...) for a coordinate-wise power")

    __array_priority__ = 1000  # numpy scalars defer to our __rmul__
    _op_priority = 1000  # sympy: Expr * Vec calls Vec.__rmul__


def _is_zero_scalar(v) -> bool:
    try:
        return sp.sympify(v) == 0
    except (sp.SympifyError, TypeError):
        return False


def _scalar(v, what: str) -> sp.Expr:
    if isinstance(v, Vec):
        raise SpecError(f"expected a scalar to {what} a vector with, got the vector {v}")
    try:
        s = sp.sympify(v, strict=True) if not isinstance(v, sp.Basic) else v
    except (sp.SympifyError, TypeError):
        raise SpecError(f"cannot {what} a vector with {v!r} ({type(v).__name__}); allowed: a sympy scalar "
                        "expression (hyperparameters from sd.sym, norm(.), dot(., .))") from None
    if not isinstance(s, sp.Expr) or getattr(s, "is_Matrix", False):
        raise SpecError(f"cannot {what} a vector with {v!r}; allowed: a sympy scalar expression")
    return s


def _matrix(M) -> sp.MatrixExpr:
    if isinstance(M, sp.MatrixBase):
        raise SpecError("explicit sympy matrices are not allowed in a vector update (the dimension is symbolic); "
                        "use a named constant matrix sd.matrix('A')")
    if M.shape != (dim, dim):
        raise SpecError(f"matrix {M} has shape {M.shape}; allowed: (d, d) with d the symbolic dimension "
                        "(build it with sd.matrix(name))")
    return M


@dataclass(frozen=True, repr=False)
class VecSym(Vec):
    """A named vector: `x` (the parameter) or `g` (the stochastic gradient at `x`)."""

    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, repr=False)
class VAdd(Vec):
    terms: tuple

    def __str__(self) -> str:
        return " + ".join(str(t) for t in self.terms).replace("+ -", "- ")


@dataclass(frozen=True, repr=False)
class VScale(Vec):
    scalar: sp.Expr
    vec: Vec

    def __str__(self) -> str:
        if self.scalar == -1:
            return f"-{_paren(self.vec)}"
        return f"({self.scalar})*{_paren(self.vec)}"


@dataclass(frozen=True, repr=False)
class MatVec(Vec):
    matrix: sp.MatrixExpr
    vec: Vec

    def __str__(self) -> str:
        return f"{self.matrix}*{_paren(self.vec)}"


@dataclass(frozen=True, repr=False)
class GradAt(Vec):
    """The stochastic gradient at `point`: same minibatch as `g` (`fresh=False`) or a new one."""

    point: Vec
    fresh: bool = False

    def __str__(self) -> str:
        return f"grad_at({self.point}{', fresh=True' if self.fresh else ''})"


@dataclass(frozen=True, repr=False)
class CoordMap(Vec):
    """A coordinate-wise map `fn` (a one-argument sympy function class such as `sympy.sign`)."""

    fn: type
    vec: Vec

    def __str__(self) -> str:
        return f"{self.fn.__name__}({self.vec})"


@dataclass(frozen=True, repr=False)
class CoordExpr(Vec):
    """A coordinate-wise sympy expression `body` of the coordinates `vars` of the vectors `vecs`
    (`m_i/(sqrt(v_i) + eps)`); `vars[j]` stands for the i-th coordinate of `vecs[j]`."""

    body: sp.Expr
    vars: tuple
    vecs: tuple

    def __str__(self) -> str:
        args = ", ".join(str(v) for v in self.vecs)
        names = ", ".join(str(v) for v in self.vars)
        return f"coordinatewise(({names}) -> {self.body}; {args})"


for _c in (VecSym, VAdd, VScale, MatVec, GradAt, CoordMap, CoordExpr):
    _c.__repr__ = _c.__str__


def _paren(v: Vec) -> str:
    return f"({v})" if isinstance(v, (VAdd, VScale)) else str(v)


class VScalar(sp.Symbol):
    """A scalar built from vectors, `norm(a)` or `dot(a, b)`, as a sympy symbol that carries its
    operands (`op`, `vargs`).  Its name is the structural text of the operation, so equal
    operations are the same symbol."""

    op: str
    vargs: tuple

    def __new__(cls, op: str, vargs: tuple):
        name = f"|{vargs[0]}|" if op == "norm" else f"<{vargs[0]}, {vargs[1]}>"
        obj = super().__new__(cls, name, **({"nonnegative": True} if op == "norm" else {"real": True}))
        obj.op, obj.vargs = op, tuple(vargs)
        return obj

    def __getnewargs_ex__(self):  # pickling (sympy's Symbol pickles name and assumptions)
        return (self.op, self.vargs), {}

    def __getstate__(self):
        return None

    def __setstate__(self, state):
        pass


#: names that cannot be auxiliary vector states (matrices and symbols of the results, the step counter, time)
RESERVED_VECTOR_NAMES = ("grad", "H", "I", "Sigma", "d", "k", "t", "eta", "ones", "norm_g", "dW", "W")


def vectors(names: str) -> tuple[VecSym, ...] | VecSym:
    """Vector symbols by name (`"x g m v"`).  `x` is the parameter, `g` the stochastic gradient at `x`;
    any other identifier is an auxiliary vector state (momentum `m`, second moment `v`), updated in the same
    `from_update` dict."""
    out = []
    for n in names.replace(",", " ").split():
        if not n.isidentifier() or n in RESERVED_VECTOR_NAMES or n.startswith("_"):
            raise SpecError(f"vector symbol {n!r} is not available; allowed: 'x' (the parameter), 'g' (the "
                            "stochastic gradient at x) and identifiers for auxiliary vector states ('m', 'v', ...) "
                            f"other than {list(RESERVED_VECTOR_NAMES)} and names starting with '_'")
        out.append(VecSym(n))
    return out[0] if len(out) == 1 else tuple(out)


def _vec(v, what: str) -> Vec:
    if not isinstance(v, Vec):
        raise SpecError(f"{what} needs a vector (from sd.vectors, grad_at, ...), got {v!r}")
    return v


def norm(a: Vec) -> VScalar:
    """The Euclidean norm `|a|` of a vector expression (a nonnegative sympy scalar)."""
    return VScalar("norm", (_vec(a, "norm"),))


def dot(a: Vec, b: Vec) -> VScalar:
    """The inner product `<a, b>` of two vector expressions (a sympy scalar)."""
    return VScalar("dot", (_vec(a, "dot"), _vec(b, "dot")))


def minimum(a, b) -> sp.Expr:
    """`Min(a, b)` of two scalars (`minimum(1, c/norm(g))` is the global-norm clipping factor)."""
    return sp.Min(_scalar(a, "take the minimum"), _scalar(b, "take the minimum"))


def grad_at(point: Vec, fresh: bool = False) -> GradAt:
    """The stochastic gradient at `point`: the same minibatch as `g` (`fresh=False`: on additive noise
    `grad f(point) + xi` with the same `xi`) or an independent draw (`fresh=True`)."""
    return GradAt(_vec(point, "grad_at"), bool(fresh))


def coordinatewise(fn, *vecs: Vec) -> Vec:
    """A coordinate-wise map: `fn` a one-argument sympy function class (`sympy.sign`) applied to one vector, or
    a Python function of sympy scalars applied coordinate by coordinate to several vectors:
    `coordinatewise(lambda m, v: m/(sympy.sqrt(v) + eps), m, v)` (Adam's direction),
    `coordinatewise(lambda a: a**2, g)` (the coordinate-wise square)."""
    if not vecs:
        raise SpecError("coordinatewise needs at least one vector argument")
    vs = tuple(_vec(a, "coordinatewise") for a in vecs)
    if isinstance(fn, type) and issubclass(fn, sp.Function):
        if len(vs) != 1:
            raise SpecError(f"coordinatewise({fn.__name__}, ...) takes one vector; got {len(vs)}")
        return CoordMap(fn, vs[0])
    if not callable(fn):
        raise SpecError(f"coordinatewise needs a sympy function class (sympy.sign) or a Python function of sympy "
                        f"scalars (lambda m, v: m/(sympy.sqrt(v) + eps)); got {fn!r}")
    placeholders = tuple(sp.Symbol(f"_c{i}", real=True) for i in range(len(vs)))
    try:
        body = fn(*placeholders)
    except SdederiveError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's function
        raise SpecError(f"coordinatewise: calling {fn!r} on {len(vs)} sympy scalar(s) failed "
                        f"({type(exc).__name__}: {exc})") from None
    body = _scalar(body, "map coordinate-wise")
    if body.atoms(VScalar):
        raise SpecError(f"coordinatewise: the coordinate-wise expression {body} contains a norm or inner product; "
                        "multiply the coordinate-wise map by the scalar instead (s*coordinatewise(...))")
    used = tuple(i for i, p in enumerate(placeholders) if body.has(p))
    if not used:
        raise SpecError(f"coordinatewise: the expression {body} does not depend on its vector argument(s)")
    return CoordExpr(body, placeholders, vs)


def matrix(name: str, symmetric: bool = False) -> sp.MatrixExpr:
    """A named constant `d x d` matrix for matrix-vector products in an update (`symmetric=True`: `A^T = A`)."""
    from sdederive.sde_vector import SymmetricMatrixSymbol  # the result layer owns the symmetric symbol

    if name in ("H", "Sigma", "I", "grad", "x", "g", "d"):
        raise SpecError(f"matrix name {name!r} is reserved (H Hessian, Sigma noise covariance, I identity, grad, x, "
                        "g, d); choose another name")
    return SymmetricMatrixSymbol(name, dim, dim) if symmetric else sp.MatrixSymbol(name, dim, dim)


# -- the optimizer -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VHyper:
    """A hyperparameter of a vector optimizer: `name`, `default`, `kind` (a key of `KINDS`).

    Unlike `Hyper`, the names `rho` (SAM's radius) and `c` (the clipping
    threshold) are allowed: the SAM and clipping literature uses them; both are positive."""

    name: str
    default: float | None
    kind: str = "positive"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise HyperparameterError(f"hyperparameter kind {self.kind!r} of {self.name!r} is unknown; "
                                      f"valid kinds: {sorted(KINDS)}")
        if self.default is not None:
            check_value(self.name, self.kind, self.default)

    @property
    def symbol(self) -> sp.Symbol:
        if self.name in ("eta", "rho", "c", "mu", "eps", "wd", "beta", "beta1", "beta2"):
            return sym(self.name)
        return sym(self.name, positive=True) if self.kind in ("lr", "positive") else sym(self.name)


@dataclass(frozen=True)
class VectorOptimizer:
    """A vector optimizer: `update` is `x` after one step, a `Vec` in `x`, `g`, the auxiliary states and the
    hypers; `aux` holds `(name, update, kind)` of each auxiliary vector state (`kind` `"aux"` or
    `"second_moment"`, as the scalar states' kinds: regime `balanced` leaves the noise of second moments out)."""

    name: str
    hypers: tuple[VHyper, ...]
    update: Vec
    natural_regime: str = "sgd"
    doc: str = ""
    aux: tuple = ()

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def hyper(self) -> dict[str, VHyper]:
        return {h.name: h for h in self.hypers}

    @property
    def defaults(self) -> dict[str, float]:
        return {h.name: h.default for h in self.hypers if h.default is not None}

    @property
    def state_names(self) -> tuple[str, ...]:
        return ("x",) + tuple(a[0] for a in self.aux)

    @property
    def updates(self) -> dict[str, Vec]:
        """state name -> its value after the step (in the values before it), `x` last."""
        return {**{a[0]: a[1] for a in self.aux}, "x": self.update}

    def fingerprint(self) -> str:
        """Content hash of the spec."""
        text = repr((self.name, [(h.name, h.kind) for h in self.hypers], str(self.update),
                     [(a[0], str(a[1]), a[2]) for a in self.aux]))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        lines = [f"VectorOptimizer {self.name!r} (natural regime: {self.natural_regime})"]
        lines += [f"  {a[0]}_(k+1) = {a[1]}" for a in self.aux]
        lines.append(f"  x_(k+1) = {self.update}")
        return "\n".join(lines) + "\n  defaults: " + ", ".join(f"{k}={v:g}" for k, v in self.defaults.items())


def value_key(v: Vec) -> object:
    """A key under which equal vector subtrees share one value (LAMB's `m'` inside `u` and inside
    `norm(u + wd*x)`), except a subtree holding a fresh minibatch: each such object is its own draw, keyed by
    identity, so two separate `grad_at(..., fresh=True)` stay independent even where they are equal as trees."""
    text = str(v)
    return id(v) if "fresh=True" in text else text


def _walk(v: Vec):
    """Every vector node of `v` (including those inside norms and dots of its scalars)."""
    yield v
    if isinstance(v, VAdd):
        for t in v.terms:
            yield from _walk(t)
    elif isinstance(v, VScale):
        for s in v.scalar.atoms(VScalar):
            for a in s.vargs:
                yield from _walk(a)
        yield from _walk(v.vec)
    elif isinstance(v, (MatVec, CoordMap)):
        yield from _walk(v.vec)
    elif isinstance(v, CoordExpr):
        for a in v.vecs:
            yield from _walk(a)
    elif isinstance(v, GradAt):
        yield from _walk(v.point)


_STATE_KINDS = ("aux", "second_moment")


def _validate(opt: VectorOptimizer) -> None:
    states = {"x"}
    for a in opt.aux:
        if not (isinstance(a, tuple) and len(a) == 3 and isinstance(a[0], str)):
            raise SpecError(f"optimizer {opt.name!r}: auxiliary states must be (name, update, kind) triples; got {a!r}")
        if a[0] in states or a[0] == "g" or a[0] in RESERVED_VECTOR_NAMES or not a[0].isidentifier():
            raise SpecError(f"optimizer {opt.name!r}: auxiliary state name {a[0]!r} is taken or reserved "
                            f"(x, g, {', '.join(RESERVED_VECTOR_NAMES)})")
        if a[2] not in _STATE_KINDS:
            raise SpecError(f"optimizer {opt.name!r}: state {a[0]!r} has kind {a[2]!r}; allowed: {list(_STATE_KINDS)}")
        states.add(a[0])
    allowed = {h.symbol for h in opt.hypers} | {sym("k")}
    for sname, upd in opt.updates.items():
        if not isinstance(upd, Vec):
            raise SpecError(f"optimizer {opt.name!r}: the update of {sname!r} is {upd!r}, not a vector expression")
        nodes = list(_walk(upd))
        if sname == "x" and not any(isinstance(n, (GradAt,)) or (isinstance(n, VecSym) and n.name == "g")
                                    for n in _walk_all(opt)):
            raise SpecError(f"optimizer {opt.name!r}: the update of 'x' uses no gradient (g or grad_at(...)); an "
                            "optimizer must use it")
        for n in nodes:
            if isinstance(n, VecSym) and n.name not in states and n.name != "g":
                raise SpecError(f"the update of {sname!r} in optimizer {opt.name!r} uses the vector {n.name!r}, which "
                                f"is not a state; states: {sorted(states)} (give its update in the same dict)")
            if isinstance(n, (VScale, CoordExpr)):
                free = (n.scalar if isinstance(n, VScale) else n.body).free_symbols
                if isinstance(n, CoordExpr):
                    free = free - set(n.vars)
                bad = sorted(str(s) for s in free - allowed if not isinstance(s, VScalar))
                if bad:
                    raise SpecError(f"the update of {sname!r} in optimizer {opt.name!r} uses {bad}, which are not "
                                    f"hyperparameters {sorted(h.name for h in opt.hypers)}; declare them in `hypers`")
            if isinstance(n, MatVec):
                bad = sorted(str(s) for s in n.matrix.free_symbols - allowed - {dim}
                             if not isinstance(s, sp.MatrixSymbol))
                if bad:
                    raise SpecError(f"the matrix {n.matrix} in optimizer {opt.name!r} uses {bad}, which are not "
                                    "hyperparameters; declare them in `hypers`")
    seen = set()
    for h in opt.hypers:
        if h.name in seen:
            raise SpecError(f"optimizer {opt.name!r}: hyperparameter {h.name!r} declared twice")
        seen.add(h.name)


def _walk_all(opt: VectorOptimizer):
    for upd in opt.updates.values():
        if isinstance(upd, Vec):
            yield from _walk(upd)


def from_update_vector(name: str, update: Mapping, hypers: Mapping[str, object], natural_regime: str = "sgd",
                       doc: str = "", kinds: Mapping[str, str] | None = None) -> VectorOptimizer:
    """A vector optimizer from its update `{"x": <Vec>, "m": <Vec>, ...}` (called by `sdederive.from_update`
    when the update is a vector expression).  Every update is written in the values before the step.
    `hypers`: name -> `(default, kind)` or a `VHyper`; `kinds`: state name -> `"aux"` (default) or
    `"second_moment"`.  Auxiliary states start at 0."""
    if "x" not in update:
        raise SpecError(f"optimizer {name!r} has no update of the parameter 'x'; updates given: {list(update)}")
    kinds = dict(kinds or {})
    unknown = sorted(k for k in kinds if k not in update or k == "x")
    if unknown:
        raise SpecError(f"vector optimizer {name!r}: kinds given for {unknown}, which are not auxiliary states")
    hs = []
    for hn, spec in hypers.items():
        if isinstance(spec, VHyper):
            hs.append(spec)
        elif hasattr(spec, "kind") and hasattr(spec, "default"):  # a scalar-engine Hyper
            hs.append(VHyper(spec.name, spec.default, spec.kind))
        else:
            default, kind = spec if isinstance(spec, tuple) else (spec, "real")
            if kind not in KINDS:
                raise SpecError(f"hyperparameter {hn!r}: kind {kind!r} unknown; valid kinds: {sorted(KINDS)}")
            hs.append(VHyper(hn, default, kind))
    aux = tuple((str(k), v, str(getattr(kinds.get(k, "aux"), "value", kinds.get(k, "aux"))))
                for k, v in update.items() if k != "x")
    return VectorOptimizer(name, tuple(hs), update["x"], natural_regime, doc, aux)


# -- built-ins ---------------------------------------------------------------------------------------------

_x, _g = VecSym("x"), VecSym("g")
_eta, _rho, _c = sym("eta"), sym("rho"), sym("c")


def usam(eta: float = 1e-2, rho: float = 0.05) -> VectorOptimizer:
    r"""Unnormalized SAM: $x_{k+1} = x_k - \eta\,\nabla f_\gamma(x_k + \rho\,\nabla f_\gamma(x_k))$
    (same minibatch at both points)."""
    return VectorOptimizer("usam", (VHyper("eta", eta, "lr"), VHyper("rho", rho, "positive")),
                           _x - _eta * grad_at(_x + _rho * _g), "sgd", usam.__doc__)


def sam(eta: float = 1e-2, rho: float = 0.05) -> VectorOptimizer:
    r"""SAM (Foret et al. 2021): $x_{k+1} = x_k - \eta\,\nabla f_\gamma(x_k + \rho\,g_k/|g_k|)$,
    $g_k = \nabla f_\gamma(x_k)$ (same minibatch at both points)."""
    return VectorOptimizer("sam", (VHyper("eta", eta, "lr"), VHyper("rho", rho, "positive")),
                           _x - _eta * grad_at(_x + _rho * _g / norm(_g)), "sgd", sam.__doc__)


def nsgd(eta: float = 1e-2) -> VectorOptimizer:
    r"""Normalized SGD: $x_{k+1} = x_k - \eta\,g_k/|g_k|$."""
    return VectorOptimizer("nsgd", (VHyper("eta", eta, "lr"),), _x - _eta * _g / norm(_g), "sgd", nsgd.__doc__)


def clip_sgd(eta: float = 1e-2, c: float = 1.0) -> VectorOptimizer:
    r"""SGD with global-norm clipping: $x_{k+1} = x_k - \eta\,\min(1, c/|g_k|)\,g_k$."""
    return VectorOptimizer("clip_sgd", (VHyper("eta", eta, "lr"), VHyper("c", c, "positive")),
                           _x - _eta * minimum(1, _c / norm(_g)) * _g, "sgd", clip_sgd.__doc__)


_m, _v = VecSym("m"), VecSym("v")
_mu, _k = sym("mu"), sym("k")


def sgd_nesterov(eta: float = 1e-2, mu: float = 0.9) -> VectorOptimizer:
    r"""Nesterov momentum in the look-ahead form (Sutskever et al. 2013).

    Written with the buffer `m` of `sgd_momentum` (the velocity is `-eta*m`):
    $m_{k+1} = \mu m_k + \nabla f_\gamma(x_k - \eta\mu m_k)$, $x_{k+1} = x_k - \eta m_{k+1}$
    (same minibatch: the gradient at the look-ahead point).  Without the look-ahead shift this is `sgd_momentum`."""
    m_new = _mu * _m + grad_at(_x - _eta * _mu * _m)
    return VectorOptimizer("sgd_nesterov", (VHyper("eta", eta, "lr"), VHyper("mu", mu, "momentum")),
                           _x - _eta * m_new, "sgd", sgd_nesterov.__doc__, (("m", m_new, "aux"),))


def lamb(eta: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-6,
         wd: float = 1e-2) -> VectorOptimizer:
    r"""LAMB (You et al. 2020) with one layer, the whole vector: Adam's bias-corrected direction
    $u = \hat m/(\sqrt{\hat v} + \epsilon)$ (coordinate-wise), $m_{k+1} = \beta_1 m_k + (1-\beta_1) g_k$,
    $v_{k+1} = \beta_2 v_k + (1-\beta_2) g_k^2$, $\hat m = m_{k+1}/(1-\beta_1^{k+1})$,
    $\hat v = v_{k+1}/(1-\beta_2^{k+1})$, and
    $x_{k+1} = x_k - \eta\,\frac{|x_k|}{|u + w_d x_k|}\,(u + w_d x_k)$ (the trust ratio; no special case at
    $|x_k| = 0$)."""
    b1, b2, ep, wdec = sym("beta1"), sym("beta2"), sym("eps"), sym("wd")
    m_new = b1 * _m + (1 - b1) * _g
    v_new = b2 * _v + (1 - b2) * coordinatewise(lambda a: a**2, _g)
    u = coordinatewise(lambda a, b: a / (1 - b1 ** (_k + 1)) / (sp.sqrt(b / (1 - b2 ** (_k + 1))) + ep), m_new, v_new)
    step = u + wdec * _x
    hy = (VHyper("eta", eta, "lr"), VHyper("beta1", beta1, "decay"), VHyper("beta2", beta2, "decay"),
          VHyper("eps", eps, "eps"), VHyper("wd", wd, "positive"))
    return VectorOptimizer("lamb", hy, _x - _eta * (norm(_x) / norm(step)) * step, "balanced", lamb.__doc__,
                           (("m", m_new, "aux"), ("v", v_new, "second_moment")))


def adamw_clip(eta: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
               wd: float = 1e-2, c: float = 1.0) -> VectorOptimizer:
    r"""AdamW (Loshchilov & Hutter 2019) on the globally clipped gradient, as in LLM training: the clipped
    gradient $\tilde g_k = \min(1, c/|g_k|)\,g_k$ (global-norm clipping, one norm over the whole vector),
    $m_{k+1} = \beta_1 m_k + (1-\beta_1)\tilde g_k$, $v_{k+1} = \beta_2 v_k + (1-\beta_2)\tilde g_k^2$,
    $x_{k+1} = x_k - \eta\,(\hat m/(\sqrt{\hat v} + \epsilon) + w_d x_k)$ with the bias corrections
    $\hat m = m_{k+1}/(1-\beta_1^{k+1})$, $\hat v = v_{k+1}/(1-\beta_2^{k+1})$."""
    b1, b2, ep, wdec = sym("beta1"), sym("beta2"), sym("eps"), sym("wd")
    gc = minimum(1, _c / norm(_g)) * _g
    m_new = b1 * _m + (1 - b1) * gc
    v_new = b2 * _v + (1 - b2) * coordinatewise(lambda a: a**2, gc)
    u = coordinatewise(lambda a, b: a / (1 - b1 ** (_k + 1)) / (sp.sqrt(b / (1 - b2 ** (_k + 1))) + ep), m_new, v_new)
    hy = (VHyper("eta", eta, "lr"), VHyper("beta1", beta1, "decay"), VHyper("beta2", beta2, "decay"),
          VHyper("eps", eps, "eps"), VHyper("wd", wd, "positive"), VHyper("c", c, "positive"))
    return VectorOptimizer("adamw_clip", hy, _x - _eta * (u + wdec * _x), "balanced", adamw_clip.__doc__,
                           (("m", m_new, "aux"), ("v", v_new, "second_moment")))


VECTOR_BUILTINS: dict[str, Callable[..., VectorOptimizer]] = {
    f.__name__: f for f in (usam, sam, nsgd, clip_sgd, sgd_nesterov, lamb, adamw_clip)}


def names() -> list[str]:
    """The built-in vector optimizers."""
    return sorted(VECTOR_BUILTINS)


def is_vector(optimizer) -> bool:
    """True for a `VectorOptimizer` or the name of a built-in one."""
    if isinstance(optimizer, VectorOptimizer):
        return True
    return isinstance(optimizer, str) and optimizer.strip().lower().replace("-", "_") in VECTOR_BUILTINS


def get(optimizer, **hyper) -> VectorOptimizer:
    """Resolve a built-in vector optimizer by name, or pass a `VectorOptimizer` through."""
    if isinstance(optimizer, VectorOptimizer):
        return optimizer
    key = str(optimizer).strip().lower().replace("-", "_")
    if key not in VECTOR_BUILTINS:
        raise UnknownNameError("vector optimizer", optimizer, VECTOR_BUILTINS)
    import inspect

    allowed = list(inspect.signature(VECTOR_BUILTINS[key]).parameters)
    for h in hyper:
        if h not in allowed:
            raise UnknownNameError(f"hyperparameter of {key}", h, allowed)
    return VECTOR_BUILTINS[key](**hyper)

r"""One description of a problem kind, printed three ways: numba, CUDA C and numpy.

A problem kind describes its gradient, Hessian diagonal, Hessian-vector product, loss and noise
(per-coordinate noise scale, or the correlated noise factor `xi = L z`) once, as **sympy
expressions over indexed arrays**, wrapped in the smallest loop IR that covers what problems need:

* `Loop` `out[i] = expr(i)` for `i in range(d)` (an index-generic expression: the
  quadratic's `h[i]*x[i]`), where `expr` may hold `sympy.Sum(body, (j, 0, d - 1))` reductions
  (the dense quadratic's `Sum(H[i, j]*x[j], j)`);
* `Unrolled` `out[i] = exprs[i]`, one expression per coordinate (a custom `f`'s
  `diff(f, x_i)`, printed as straight-line code after `sympy.cse`);
* a scalar (the loss): an expression, possibly a `Sum` over `i`.

Arrays are `sympy.IndexedBase` objects: the point `x` (`X`), the direction `v` of a
Hessian-vector product (`V`), the standard normals `z` (`Z`), the fields of the problem's
parameter pack (`h[i]`, `sigma[i]`; scalars are plain symbols) and its matrices (`H[i, j]`,
`L[i, j]`), which the printers map to the kernels' arrays: a pack field `h` becomes
`PV[P_h + i]` with `P_h` the offset constant printed from the
`ParamLayout`, a matrix the kernel argument it travels in
(`PM`, `PL`).

Why sympy expressions and not a separate IR of arithmetic: the expressions are printed by the same
printers the SDE coefficients go through (`sdederive.simulate.lower`: `_NumbaPrinter` and
`_CudaPrinter`, with their float folding and `sign`/`Heaviside` conventions), a custom problem's
derivatives come from `sympy.diff` without a translation step, and a new kind is written in the
notation of its formula.  The only thing sympy's printers cannot do for us is turn a `Sum` into a
loop with an accumulator (the C printer refuses `Indexed` without declared ranges, the Python printer
has no loops); that is the few lines of `_lower_sums`, shared by both backends.  The numpy
reference is *evaluated* from the same expressions (`evaluate`: every index is an array axis, a
`Sum` a reduction over its axis, batched points `x` of shape `(..., d)` broadcast in front), so
it cannot drift from the kernels.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import sympy as sp
from sympy.codegen.rewriting import optimize

from sdederive.errors import SdederiveError

__all__ = ["Loop", "Unrolled", "X", "V", "Z", "IX", "JX", "KX", "D", "vec", "mat", "dsum", "evaluate", "ProblemCode",
           "EX", "NEX", "esum", "WV", "GRV"]

#: loop index of a :class:`Loop`, and the indices of reductions (``Sum(..., (JX, 0, D - 1))``)
IX, JX, KX = sp.symbols("i j k", integer=True)
#: the dimension (``d`` in numba, the compile-time ``D`` in CUDA)
D = sp.Symbol("d", integer=True, positive=True)
#: the point, a Hessian-vector product's direction and the standard normals of the noise factor
X, V, Z = sp.IndexedBase("xv"), sp.IndexedBase("vv"), sp.IndexedBase("Z")
#: the example index and the number of examples of a data set (``n_ex`` in numba, the compile-time ``NEX`` in CUDA)
EX = sp.Symbol("ex", integer=True)
NEX = sp.Symbol("n_ex", integer=True, positive=True)
#: the per-example weights `ProblemCode.weights` stored by ``prob_grad``, and the gradient it has just computed
WV, GRV = sp.IndexedBase("W"), sp.IndexedBase("GR")
#: the minibatch of the ``_idx`` helpers: ``IDX[q]`` for ``q in range(nb)``
QX, NB, IDXA = sp.Symbol("qx", integer=True), sp.Symbol("nb", integer=True, positive=True), sp.IndexedBase("IDX")
#: one example index of the minibatch-gradient helper
JEX = sp.Symbol("jx", integer=True)


def vec(name: str) -> sp.IndexedBase:
    """A vector field `name` of the parameter pack (read as `PV[P_name + i]` in the kernels)."""
    return sp.IndexedBase(name)


def mat(name: str) -> sp.IndexedBase:
    """A `d x d` matrix of the problem (`H`, `L`), carried to the kernels in the array slot the kind
    names for it (`ProblemCode.matrices`)."""
    return sp.IndexedBase(name)


def dsum(body: sp.Expr, j: sp.Symbol = JX) -> sp.Sum:
    """`sum_{j=0}^{d-1} body`."""
    return sp.Sum(body, (j, 0, D - 1))


def esum(body: sp.Expr) -> sp.Sum:
    """`sum_{ex=0}^{n-1} body`: a sum over the examples of a data set (`A[EX, IX]`, `y[EX]`)."""
    return sp.Sum(body, (EX, 0, NEX - 1))


def _is_example_sum(e) -> bool:
    return isinstance(e, sp.Sum) and e.limits[0][0] in (EX, QX)


def to_minibatch(e: sp.Expr) -> sp.Expr:
    """`e` with its sums over all examples replaced by sums over the minibatch `IDX[0:nb]` (repeats counted as
    drawn) and the example count `n` by `nb`: the same formula on the minibatch's data."""
    e = e.replace(lambda a: isinstance(a, sp.Sum) and a.limits[0][0] == EX,
                  lambda a: sp.Sum(a.function.xreplace({EX: IDXA[QX]}), (QX, 0, NB - 1)))
    return e.xreplace({NEX: NB})


@dataclass(frozen=True)
class Loop:
    """`out[i] = expr` for `i` in `range(d)`; `expr` uses `IX` and may hold `Sum` reductions."""

    expr: sp.Expr


@dataclass(frozen=True)
class Unrolled:
    """`out[i] = exprs[i]`: one expression per coordinate, of `X[0] .. X[d-1]` (and `V[j]`)."""

    exprs: tuple


# -- numpy: evaluate the description -----------------------------------------------------------------

class _XP:
    """The array library an evaluation runs in: numpy (the reference), or `jax.numpy` / `torch` (the exports
    of `sdederive.export`, which evaluate the same description on traced arrays)."""

    def __init__(self, mod=np, like=None):
        from sympy.codegen.cfunctions import log1p

        self.mod, self.like = mod, like
        self.torch = getattr(mod, "__name__", "") == "torch"
        m = mod
        self.funcs = {sp.exp: m.exp, sp.log: m.log, sp.sin: m.sin, sp.cos: m.cos, sp.tanh: m.tanh, sp.atan: m.arctan,
                      sp.erf: self._special("erf"), sp.erfc: self._special("erfc"), sp.Abs: m.abs, sp.sign: m.sign,
                      sp.cosh: m.cosh, sp.sinh: m.sinh, sp.tan: m.tan, log1p: m.log1p}

    def _special(self, name: str):
        """`erf` or `erfc` of the library, imported at the first call: `scipy.special` takes 50 to 60 ms to import,
        which the first `Simulator.run` of a process paid (its regime check evaluates the problem's gradient) for
        problems that never call it."""
        def f(a):
            if self.mod is np:
                import scipy.special as special
            elif self.torch:
                special = self.mod.special
            else:
                import jax.scipy.special as special
            return getattr(special, name)(a)

        return f

    def data(self, A):
        """A problem's data array (numpy) in this library, with the dtype of the evaluation point."""
        if self.mod is np:
            return np.asarray(A, float)
        if self.torch:
            return self.mod.as_tensor(np.asarray(A, float), dtype=self.like.dtype)
        return self.mod.asarray(np.asarray(A, float))


class _Eval:
    """Evaluate an expression with every free index an axis: a value at reduction depth `k` is an
    array of `nb + k` dimensions (`nb` batch axes of `x`, then one per index in scope) or a number."""

    def __init__(self, arrays: dict, scalars: dict, batched: set, nb: int, xp: _XP | None = None):
        self.arrays, self.scalars, self.batched, self.nb = arrays, scalars, batched, nb
        self.xp = xp or _XP()
        self.funcs = self.xp.funcs

    def __call__(self, e, axes: dict):
        if e.is_number and e.is_real is not False and not e.atoms(sp.Indexed):
            return float(e)
        if e == NEX:
            return float(self.scalars["n_ex"])
        if isinstance(e, sp.Symbol):
            if e in axes:  # an index used as a number
                k = len(axes)
                shape = [1] * (self.nb + k)
                n = self._size(e, axes)
                shape[self.nb + axes[e]] = n
                return self.xp.data(np.arange(n, dtype=float).reshape(shape))
            if e.name in self.scalars:
                return float(self.scalars[e.name])
            if e.name in self.arrays and np.size(self.arrays[e.name]) == 1:  # a scalar field of the pack
                return float(np.asarray(self.arrays[e.name], float).ravel()[0])
            raise SdederiveError(f"the problem description uses {e} but no value is given for it")
        if isinstance(e, sp.Indexed):
            return self._indexed(e, axes)
        if isinstance(e, sp.Sum):
            (j, lo, hi), = e.limits
            if lo == 0 and sp.simplify(hi - (D - 1)) == 0:
                size = self.d
            elif lo == 0 and hi == NEX - 1:
                size = int(self.scalars["n_ex"])
            else:
                raise SdederiveError(f"a reduction must run over 0..d-1 or over the examples; got {e.limits}")
            inner = dict(axes)
            inner[j] = len(axes)
            body = e.function
            if body.is_Mul and all(isinstance(a, sp.Indexed) or a.is_number for a in body.args):
                return self._contract([self(a, inner) for a in body.args], len(axes), size)
            val = self(body, inner)
            if np.ndim(val) == 0:
                return float(val) * size
            # a body that does not depend on j (size 1 along its axis) counts `size` times
            return val.sum(axis=-1) * (size if val.shape[-1] == 1 else 1)
        if isinstance(e, sp.Max):
            out = self(e.args[0], axes)
            for a in e.args[1:]:
                b = self(a, axes)
                out = self.xp.mod.maximum(out, b) if not self.xp.torch else self.xp.mod.clamp(out, min=b)
            return out
        if e.is_Add:
            out = 0.0
            for a in e.args:
                out = out + self(a, axes)
            return out
        if e.is_Mul:
            out = 1.0
            for a in e.args:
                out = out * self(a, axes)
            return out
        if e.is_Pow:
            b, p = self(e.base, axes), self(e.exp, axes)
            if np.ndim(p) == 0 and p == 0.5:
                return self.xp.mod.sqrt(b) if np.ndim(b) else float(np.sqrt(b))
            if np.ndim(b) == 0 and np.ndim(p) == 0:
                return float(b) ** float(p)
            return b ** p
        if isinstance(e, sp.Function) and e.func in self.funcs:
            return self.funcs[e.func](*[self(a, axes) for a in e.args])
        raise SdederiveError(f"the numpy reference cannot evaluate {sp.sstr(e)[:80]} of a problem description")

    def _contract(self, factors: list, k: int, size: int):
        """`sum_j prod(factors)` over the last of `nb + k + 1` axes by `numpy.einsum`, without forming the
        broadcast product (a dense `H[i, j] x[j]` of many points stays `O(points * d)` in memory)."""
        letters = "abcdefghijklmnopqrstuvwxyz"
        n = self.nb + k + 1
        scale, ops, subs, used = 1.0, [], [], set()
        for f in factors:
            if np.ndim(f) == 0:
                scale *= float(f)
                continue
            keep = [ax for ax in range(n) if f.shape[ax] != 1]
            ops.append(f.reshape([f.shape[ax] for ax in keep]))
            subs.append("".join(letters[ax] for ax in keep))
            used.update(keep)
        out_axes = sorted(ax for ax in used if ax != n - 1)
        if n - 1 not in used:  # the summed index appears in no factor: `size` equal terms
            scale *= size
        if not ops:
            return scale
        val = self.xp.mod.einsum(",".join(subs) + "->" + "".join(letters[ax] for ax in out_axes), *ops)
        shape = [1] * (n - 1)
        for ax, size in zip(out_axes, val.shape):
            shape[ax] = size
        return scale * val.reshape(shape)

    @property
    def d(self) -> int:
        return int(self.scalars["d"])

    def _size(self, s, axes) -> int:
        return self.d

    def _indexed(self, e: sp.Indexed, axes: dict):
        name = str(e.base)
        if name not in self.arrays:
            raise SdederiveError(f"the problem description uses the array {name} but no value is given for it")
        batched = name in self.batched
        A = self.arrays[name] if batched else self.xp.data(self.arrays[name])
        nb = self.nb if batched else 0
        lead = A.ndim - len(e.indices)
        # integer indices first (custom problems' unrolled x_0, x_1, ...)
        sel = [slice(None)] * lead
        letters = "abcdefgh"[: nb]
        sub_in = letters
        syms = []
        for ix in e.indices:
            if ix.is_Integer:
                sel.append(int(ix))
            else:
                if not isinstance(ix, sp.Symbol) or ix not in axes:
                    raise SdederiveError(f"index {ix} of {sp.sstr(e)} must be a loop or reduction index or an integer")
                sel.append(slice(None))
                syms.append(ix)
                sub_in += "ijklmnop"[axes[ix]]
        A = A[tuple(sel)]
        present = sorted({axes[s] for s in syms})
        sub_out = letters + "".join("ijklmnop"[a] for a in present)
        if syms:
            A = self.xp.mod.einsum(f"{sub_in}->{sub_out}", A)
        k = len(axes)
        shape = list(A.shape[:nb]) if batched else []
        shape = ([1] * self.nb if not batched else shape)
        rest = iter(A.shape[nb:])
        for a in range(k):
            shape.append(next(rest) if a in present else 1)
        return A.reshape(shape)


def evaluate(code, x: np.ndarray, arrays: dict, scalars: dict, v: np.ndarray | None = None,
             stages: tuple = ()) -> np.ndarray:
    """The numpy value of a `Loop`, an `Unrolled` or a scalar expression at the point(s)
    `x` (shape `(d,)` or `(..., d)`), with the problem's `arrays` (pack fields and matrices by name)
    and `scalars`; `v` the direction of a Hessian-vector product (same shape as `x`).  Returns
    shape `x.shape` for a vector description, `x.shape[:-1]` for a scalar one.  `stages`:
    `(name, code)` pairs evaluated first, in order, at the same points (the per-example weights
    `W[ex]` and the gradient `GR[i]` that a data set's noise reads)."""
    x = np.asarray(x, dtype=float)
    d = x.shape[-1]
    if x.ndim > 2 or (x.ndim == 2 and x.shape[0] * d * d > 2**22):
        # many points: in blocks of rows, so that a reduction's (rows, d, d) temporaries stay small
        flat = x.reshape(-1, d)
        vf = None if v is None else np.broadcast_to(np.asarray(v, float), x.shape).reshape(-1, d)
        rows = max(1, 2**22 // (d * d))
        parts = [_evaluate(code, flat[r:r + rows], arrays, scalars, None if vf is None else vf[r:r + rows], stages)
                 for r in range(0, flat.shape[0], rows)]
        out = np.concatenate(parts, axis=0) if parts else np.zeros(flat.shape if _is_vector(code) else (0,))
        return out.reshape(x.shape if _is_vector(code) else x.shape[:-1])
    return _evaluate(code, x, arrays, scalars, v, stages)


def evaluate_xp(code, x, arrays: dict, scalars: dict, mod):
    """A `Loop` or an `Unrolled` at the points `x` (`(..., d)`, an array of the library `mod`: `jax.numpy`
    or `torch`), evaluated in that library, so that it traces and differentiates there (the exports of
    `sdederive.export`).  The problem's data (`arrays`) are numpy and converted once per call."""
    ev = _Eval({**arrays, str(X): x}, {**scalars, "d": x.shape[-1]}, {str(X)}, x.ndim - 1, _XP(mod, like=x))
    if isinstance(code, Loop):
        return ev(code.expr, {IX: 0}) + 0 * x
    if isinstance(code, Unrolled):
        cols = [ev(e, {}) + 0 * x[..., 0] for e in code.exprs]
        return mod.stack(cols, -1) if getattr(mod, "__name__", "") != "torch" else mod.stack(cols, dim=-1)
    raise SdederiveError(f"evaluate_xp takes a Loop or an Unrolled, got {type(code).__name__}")


def _is_vector(code) -> bool:
    return isinstance(code, (Loop, Unrolled))


def _evaluate(code, x, arrays, scalars, v, stages=()):
    d = x.shape[-1]
    nb = x.ndim - 1
    arrs = dict(arrays)
    arrs[str(X)] = x
    batched = {str(X)}
    if v is not None:
        arrs[str(V)] = np.broadcast_to(np.asarray(v, float), x.shape)
        batched.add(str(V))
    ev = _Eval(arrs, {**scalars, "d": d}, batched, nb)
    for name, st in stages:  # earlier results the description reads as arrays (W[ex], GR[i])
        if isinstance(st, Loop):
            val = np.broadcast_to(ev(st.expr, {IX: 0}), x.shape)
        else:  # an expression of the example index
            val = np.broadcast_to(ev(sp.sympify(st), {EX: 0}), x.shape[:-1] + (int(scalars["n_ex"]),))
        arrs[name] = np.array(val, dtype=float)
        batched.add(name)
    if isinstance(code, Loop):
        val = ev(code.expr, {IX: 0})
        return np.broadcast_to(val, x.shape).astype(float, copy=True)
    if isinstance(code, Unrolled):
        cols = [np.broadcast_to(ev(e, {}), x.shape[:-1]) for e in code.exprs]
        return np.stack(cols, axis=-1).astype(float)
    return np.broadcast_to(ev(sp.sympify(code), {}), x.shape[:-1]).astype(float, copy=True)


# -- the kernels' printers ------------------------------------------------------------------------------

@functools.cache
def _printers():
    """The two printers, subclasses of the backends' own (imported here, not at module level:
    `sdederive.simulate` imports the problems)."""
    from sdederive.simulate.backends.cuda_printer import _CudaPrinter
    from sdederive.simulate.backends.numba_printer import _NumbaPrinter

    class _PyData(_NumbaPrinter):
        """numba: pack fields as `PV[P_name + i]`, matrices as their slot `PM[i, j]`."""

        def __init__(self, fields: set, matrices: dict):
            super().__init__({"fully_qualified_modules": True, "standard": "python3"})
            self.fields, self.matrices = fields, matrices

        def _print_Indexed(self, e):
            name = str(e.base)
            idx = [self._print(i) for i in e.indices]
            if name in self.fields:
                return f"PV[P_{name} + {idx[0]}]"
            return f"{self.matrices.get(name, name)}[{', '.join(idx)}]"

        def _print_Symbol(self, e):
            if e.name in self.fields:
                return f"PV[P_{e.name}]"
            return super()._print_Symbol(e)


    class _CData(_CudaPrinter):
        """CUDA C: pack fields as `(real)PV[P_name + i]`, matrices row-major `(real)PM[i * D + j]`; the
        dimension `d` is the compile-time `D`."""

        def __init__(self, fields: set, matrices: dict, real: str):
            settings = {}
            if real == "float":
                from sympy.codegen.ast import float32
                from sympy.codegen.ast import real as real_t

                settings["type_aliases"] = {real_t: float32}
            super().__init__(settings)
            self.fields, self.matrices = fields, matrices

        def _print_Indexed(self, e):
            name = str(e.base)
            idx = [self._print(i) for i in e.indices]
            if name in self.fields:
                return f"(real)PV[P_{name} + {idx[0]}]"
            if name in ("IDX", "W", "GR"):  # the helpers' own arrays: int indices, real work arrays
                return f"{name}[{idx[0]}]"
            if len(idx) == 2:
                return f"(real){self.matrices.get(name, name)}[({idx[0]}) * D + {idx[1]}]"
            return f"(real){self.matrices.get(name, name)}[{idx[0]}]"

        def _print_Symbol(self, e):
            if e.name in self.fields:
                return f"(real)PV[P_{e.name}]"
            if e == D:
                return "D"
            if e == NEX:  # a real in expressions (sqrt(NEX) of an int is ambiguous in CUDA); loop bounds: _bound
                return "((real)NEX)"
            return super()._print_Symbol(e)

    return _PyData, _CData


def _top_sums(e) -> list:
    """The `Sum` nodes of `e` not inside another `Sum`, in a fixed order."""
    out = []

    def walk(a):
        if isinstance(a, sp.Sum):
            if a not in out:
                out.append(a)
            return
        for b in a.args:
            walk(b)

    walk(e)
    return out


def _bound(hi, pr, lang: str) -> str:
    """The printed end of a loop over `0..hi` (the example count `NEX` as the integer it is)."""
    if hi + 1 == NEX:
        return "n_ex" if lang == "py" else "NEX"
    return pr.doprint(hi + 1)


def _lower_sums(e, lines: list, ind: str, counter: list, pr, lang: str, real: str = "double"):
    """Emit one accumulator loop per `Sum` of `e` (nested ones inside); return `e` printed with the
    accumulators in place of the sums.  A sum runs over `0..d-1`, the examples `0..n-1`, or a
    minibatch `0..nb-1` (its upper limit plus one, printed)."""
    rep = {}
    for s in _top_sums(e):
        (j, lo, hi), = s.limits
        bound = _bound(hi, pr, lang)
        acc = f"acc{counter[0]}"
        counter[0] += 1
        if lang == "py":
            lines.append(f"{ind}{acc} = 0.0")
            lines.append(f"{ind}for {j} in range({bound}):")
            body = _lower_sums(s.function, lines, ind + "    ", counter, pr, lang, real)
            lines.append(f"{ind}    {acc} += {body}")
        else:
            lines.append(f"{ind}{real} {acc} = 0;")
            lines.append(f"{ind}for (int {j} = 0; {j} < {bound}; ++{j}) {{")
            body = _lower_sums(s.function, lines, ind + "    ", counter, pr, lang, real)
            lines.append(f"{ind}    {acc} += {body};")
            lines.append(f"{ind}}}")
        rep[s] = sp.Symbol(acc)
    from sdederive.simulate.lower import fold_numbers

    e = fold_numbers(e.xreplace(rep))
    return pr.doprint(optimize_pow(e) if lang == "c" else e)


def _example_sums(e) -> tuple[list, list]:
    """The top-level sums of `e` over the examples (or a minibatch): `(those that depend on the coordinate
    index i, those that do not)`."""
    tops = [a for a in _top_sums(e) if _is_example_sum(a)]
    return [a for a in tops if a.has(IX)], [a for a in tops if not a.has(IX)]


def _example_loop(expr, out: str, ind: str, pr, lang: str, real: str, counter: list) -> list[str] | None:
    """`out[i] = post(sum_ex F(ex, i))` with the examples as the *outer* loop (one pass over the data, the
    per-example factors computed once per example, not once per coordinate):

        out[i] = 0;  for ex: (i-free factors of F) ; for i: out[i] += F ;  for i: out[i] = post(out[i])

    Sums over the examples that do not depend on `i` are accumulated first, as scalars.  `None` when
    `expr` has no `i`-dependent example sum (the plain coordinate loop applies); more than one is refused."""
    dep, free = _example_sums(expr)
    if not dep:
        return None
    if len(dep) > 1:
        raise SdederiveError(f"a coordinate loop may hold one example sum that depends on i; got {len(dep)}")
    S = dep[0]
    (j, lo, hi), = S.limits
    py = lang == "py"
    cur = sp.Symbol(f"{out}[i]", real=True)
    L: list[str] = []
    L += [f"{ind}for i in range(d):", f"{ind}    {out}[i] = 0.0"] if py else \
         [f"{ind}for (int i = 0; i < D; ++i) {out}[i] = 0;"]
    rep = {}
    for F in free:  # scalar sums over the examples, once
        rep[F] = sp.Symbol(_lower_sums(F, L, ind, counter, pr, lang, real), real=True)
    bound = _bound(hi, pr, lang)
    L.append(f"{ind}for {j} in range({bound}):" if py else f"{ind}for (int {j} = 0; {j} < {bound}; ++{j}) {{")
    body = S.function
    hoist = sp.Mul(*[a for a in body.args if not a.has(IX)]) if body.is_Mul else sp.S.One
    rest = body / hoist if hoist != 1 else body
    if hoist != 1:
        val = _lower_sums(hoist, L, ind + "    ", counter, pr, lang, real)
        h = f"h{counter[0]}"
        counter[0] += 1
        L.append(f"{ind}    {h} = {val}" if py else f"{ind}    const {real} {h} = {val};")
        rest = rest * sp.Symbol(h, real=True)
    else:  # at least the i-free sums of the body (a margin a_ex . x) once per example
        for F in [a for a in _top_sums(body) if not a.has(IX)]:
            rest = rest.xreplace({F: sp.Symbol(_lower_sums(F, L, ind + "    ", counter, pr, lang, real), real=True)})
    L.append(f"{ind}    for i in range(d):" if py else f"{ind}    for (int i = 0; i < D; ++i) {{")
    val = _lower_sums(rest, L, ind + "        ", counter, pr, lang, real)
    L.append(f"{ind}        {out}[i] += {val}" if py else f"{ind}        {out}[i] += {val};")
    if not py:
        L += [f"{ind}    }}", f"{ind}}}"]
    post = expr.xreplace({S: cur, **rep})
    if post != cur:
        L.append(f"{ind}for i in range(d):" if py else f"{ind}for (int i = 0; i < D; ++i) {{")
        val = _lower_sums(post, L, ind + "    ", counter, pr, lang, real)
        L.append(f"{ind}    {out}[i] = {val}" if py else f"{ind}    {out}[i] = {val};")
        if not py:
            L.append(f"{ind}}}")
    return L if py else [f"{ind}{{", *L, f"{ind}}}"]  # C: its accumulators scoped to this loop


def _py_vector(code, out: str, ind: str, pr, tag: str) -> list[str]:
    """numba statements filling `out[0:d]` from a `Loop` or an `Unrolled`."""
    lines: list[str] = []
    if isinstance(code, Loop):
        ex = _example_loop(code.expr, out, ind, pr, "py", "double", [0])
        if ex is not None:
            return ex
        lines.append(f"{ind}for i in range(d):")
        val = _lower_sums(code.expr, lines, ind + "    ", [0], pr, "py")
        lines.append(f"{ind}    {out}[i] = {val}")
        return lines
    from sdederive.simulate.lower import cse_assignments

    a = cse_assignments([(f"{out}[{i}]", e) for i, e in enumerate(code.exprs)], tag)
    return [f"{ind}{n} = {pr.doprint(e)}" for n, e in a.temps + a.outputs]


def _c_vector(code, out: str, ind: str, pr, tag: str, real: str) -> list[str]:
    lines: list[str] = []
    if isinstance(code, Loop):
        ex = _example_loop(code.expr, out, ind, pr, "c", real, [0])
        if ex is not None:
            return ex
        lines.append(f"{ind}for (int i = 0; i < D; ++i) {{")
        val = _lower_sums(code.expr, lines, ind + "    ", [0], pr, "c", real)
        lines.append(f"{ind}    {out}[i] = {val};")
        lines.append(f"{ind}}}")
        return lines
    from sdederive.simulate.lower import cse_assignments

    a = cse_assignments([(f"{tag}o_{i}", e) for i, e in enumerate(code.exprs)], tag)
    lines += [f"{ind}const {real} {n} = {pr.doprint(optimize_pow(e))};" for n, e in a.temps + a.outputs]
    lines += [f"{ind}{out}[{i}] = {tag}o_{i};" for i in range(len(code.exprs))]
    return lines


def _py_scalar(e, ind: str, pr, tag: str) -> tuple[list[str], str]:
    lines: list[str] = []
    if _top_sums(e):
        return lines, _lower_sums(e, lines, ind, [0], pr, "py")
    from sdederive.simulate.lower import cse_assignments

    a = cse_assignments([("loss", e)], tag)
    lines += [f"{ind}{n} = {pr.doprint(v)}" for n, v in a.temps + a.outputs]
    return lines, "loss"


def _c_scalar(e, ind: str, pr, tag: str, real: str) -> tuple[list[str], str]:
    lines: list[str] = []
    if _top_sums(e):
        return lines, _lower_sums(e, lines, ind, [0], pr, "c", real)
    from sdederive.simulate.lower import cse_assignments

    a = cse_assignments([("loss", e)], tag)
    lines += [f"{ind}const {real} {n} = {pr.doprint(optimize_pow(v))};" for n, v in a.temps + a.outputs]
    return lines, "loss"


def optimize_pow(e):
    """Small integer powers as products (`x**2 -> x*x`), as `sdederive.simulate.backends.cuda_printer.print_c` does."""
    from sdederive.simulate.lower import _expand_pow

    return optimize(e, [_expand_pow])


def _expr_of(part) -> sp.Basic:
    """The expression(s) of a `Loop`, an `Unrolled` (a tuple) or a scalar description."""
    if isinstance(part, Unrolled):
        return sp.Tuple(*part.exprs)
    return sp.sympify(getattr(part, "expr", part))


@dataclass(frozen=True)
class ProblemCode:
    """The one description of a problem kind (see the module docstring).

    `grad`, `hess_diag`, `hvp` (a function of `V`), `noise_scale` (constant in `x`; `None`
    when the kind computes it with its gradient) and `noise_factor` (`xi_i` as a function of `Z`;
    `None` when the noise is per coordinate) are `Loop` or `Unrolled`; `loss` a scalar
    expression.  `fields`: pack fields the expressions read besides those of the problem's
    `ParamLayout` (which the printers know; vector fields appear as
    `IndexedBase`, scalars as symbols); `matrices`: description name -> kernel array slot (`{"H": "PM"}`)."""

    grad: object
    hess_diag: object
    hvp: object
    loss: sp.Expr
    fields: tuple = ()
    matrices: tuple = ()  # ((name, slot), ...)
    noise_scale: object = None
    noise_factor: object = None
    #: a data set's per-example weights `W[ex]` (an expression of `EX`), stored by `prob_grad` before the gradient
    #: (which, like the noise factor, may read them as `WV[EX]`)
    weights: object = None
    #: the noise scale where it varies with `x` (a `Loop`, computed by `prob_grad` when `need_sg`; may read the
    #: gradient just computed as `GRV[IX]`)
    noise_scale_x: object = None
    #: real minibatches: example `EX`'s gradient term `F(EX, IX)` and the ridge `R(IX)`; the minibatch gradient is
    #: `mean_{ex in batch} F + R` (helpers `prob_mb_accum`, `prob_mb_finish`)
    example_grad: object = None
    ridge: object = None
    #: `grad tr Sigma(x)` of a noise covariance that varies with `x` (a `Loop`; may read the weights `WV[EX]` and the
    #: gradient `GRV` that `prob_grad` just computed): the helper `prob_gtrs` of the vector SDEs derived with
    #: `Sigma="x"`; `None` where the noise does not vary (the term is 0) or is not described
    grad_trace_cov: object = None

    @property
    def examples(self) -> bool:
        """Whether the description sums over the examples of a data set."""
        parts = [self.grad, self.hess_diag, self.hvp, self.loss, self.weights, self.example_grad]
        return any(_expr_of(p).has(EX) for p in parts if p is not None)

    def stages(self, part) -> tuple:
        """What the numpy reference of `part` must compute first: `(("W", weights), ("GR", grad))` as read."""
        e, grad = _expr_of(part), _expr_of(self.grad)
        out = []
        reads_w = e.has(WV) or (e.has(GRV) and grad.has(WV))
        if self.weights is not None and reads_w:
            out.append(("W", self.weights))
        if e.has(GRV):
            out.append(("GR", self.grad))
        return tuple(out)

    # -- numba -------------------------------------------------------------------------------------------
    def numba(self, layout) -> str:
        """The numba fragment: `prob_grad`, `prob_loss`, `prob_hvp`, `prob_noise0` and `prob_corr`
        (the helpers every kernel calls), offsets from `layout`."""
        pr = _printers()[0](set(self.fields) | set(layout.names), dict(self.matrices))
        offs = layout.numba_offsets("    ")
        if self.examples:
            offs += "\n    n_ex = PM.shape[0]"
        sig = "PV, PM, PL, PY, W"
        out = []
        g = _py_vector(self.grad, "GR", "    ", pr, "c")
        h = _py_vector(self.hess_diag, "HS", "        ", pr, "e")
        wl: list[str] = []
        if self.weights is not None:
            wl = ["    for ex in range(n_ex):"]
            val = _lower_sums(sp.sympify(self.weights), wl, "        ", [0], pr, "py")
            wl.append(f"        W[ex] = {val}")
        sg = []
        if self.noise_scale_x is not None:
            sg = ["    if need_sg:"] + _py_vector(self.noise_scale_x, "SG", "        ", pr, "n")
        out.append(f"@HELPER\ndef prob_grad(xv, GR, HS, SG, {sig}, need_hs, need_sg):\n    d = xv.size\n{offs}\n"
                   + "\n".join(wl + g) + "\n    if need_hs:\n" + ("\n".join(h) or "        pass") + "\n"
                   + ("\n".join(sg) + "\n" if sg else ""))
        lines, val = _py_scalar(self.loss, "    ", pr, "f")
        out.append(f"@HELPER\ndef prob_loss(xv, {sig}):\n    d = xv.size\n{offs}\n" + "\n".join(lines)
                   + f"\n    return {val}\n")
        hv = _py_vector(self.hvp, "HV", "    ", pr, "q")
        out.append(f"@HELPER\ndef prob_hvp(xv, vv, HV, {sig}):\n    d = xv.size\n{offs}\n" + "\n".join(hv) + "\n")
        if self.examples:  # the HVP of a minibatch IDX[0:nb] (the same formula on its examples)
            hb = _py_vector(Loop(to_minibatch(self.hvp.expr)), "HV", "    ", pr, "b")
            out.append(f"@HELPER\ndef prob_hvp_idx(xv, vv, HV, IDX, nb, {sig}):\n    d = xv.size\n{offs}\n"
                       + "\n".join(hb) + "\n")
        if self.example_grad is not None:
            out.append(self._numba_minibatch(pr, offs, sig))
        if self.noise_scale is not None:
            sg = _py_vector(self.noise_scale, "SG", "    ", pr, "n")
            out.append(f"@HELPER\ndef prob_noise0(d, SG, {sig}):\n{offs}\n" + "\n".join(sg) + "\n")
        if self.noise_factor is not None:
            xi = _py_vector(self.noise_factor, "XI", "    ", pr, "z")
            out.append(f"@HELPER\ndef prob_corr(xv, GR, Z, XI, {sig}):\n    d = xv.size\n{offs}\n" + "\n".join(xi)
                       + "\n")
        if self.grad_trace_cov is not None:
            gt = _py_vector(self.grad_trace_cov, "GT", "    ", pr, "t")
            out.append(f"@HELPER\ndef prob_gtrs(xv, GR, GT, {sig}):\n    d = xv.size\n{offs}\n" + "\n".join(gt)
                       + "\n")
        return "\n" + "\n".join(out)

    def _mb_parts(self):
        """`(hoisted, rest, post)`: example `jx`'s term `F = hoisted * rest` and `post(G) = G/nb + ridge`."""
        F = sp.sympify(self.example_grad).xreplace({EX: JEX})
        hoist = sp.Mul(*[a for a in F.args if not a.has(IX)]) if F.is_Mul else sp.S.One
        rest = F / hoist
        cur = sp.Symbol("G[i]", real=True)
        return hoist, rest, cur / NB + sp.sympify(getattr(self.ridge, "expr", self.ridge or 0))

    def _numba_minibatch(self, pr, offs: str, sig: str) -> str:
        hoist, rest, post = self._mb_parts()
        L = [f"@HELPER\ndef prob_mb_accum(xv, G, jx, {sig}):", "    # example jx's term of the minibatch gradient",
             "    d = xv.size", offs]
        c = [0]
        hv = _lower_sums(hoist, L, "    ", c, pr, "py")
        L.append(f"    hm = {hv}")
        L.append("    for i in range(d):")
        rv = _lower_sums(rest * sp.Symbol("hm", real=True), L, "        ", c, pr, "py")
        L.append(f"        G[i] += {rv}")
        L += [f"\n@HELPER\ndef prob_mb_finish(xv, G, nb, {sig}):", "    d = xv.size", offs, "    for i in range(d):"]
        pv = _lower_sums(post, L, "        ", c, pr, "py")
        L.append(f"        G[i] = {pv}")
        return "\n".join(L) + "\n"

    # -- CUDA ---------------------------------------------------------------------------------------------
    def cuda(self, layout, real: str) -> str:
        """The CUDA C fragment with the same functions (`__device__`), offsets as `#define` constants."""
        pr = _printers()[1](set(self.fields) | set(layout.names), dict(self.matrices), real)
        arr = "const double *PV, const double *PM, const double *PL, const double *PY, real *W"
        out = [layout.c_defines()]
        g = _c_vector(self.grad, "GR", "    ", pr, "c", real)
        h = _c_vector(self.hess_diag, "HS", "        ", pr, "e", real)
        wl: list[str] = []
        if self.weights is not None:
            wl = ["    for (int ex = 0; ex < NEX; ++ex) {"]
            val = _lower_sums(sp.sympify(self.weights), wl, "        ", [0], pr, "c", real)
            wl += [f"        W[ex] = {val};", "    }"]
        sg = []
        if self.noise_scale_x is not None:
            sg = ["    if (need_sg) {"] + _c_vector(self.noise_scale_x, "SG", "        ", pr, "n", real) + ["    }"]
        out.append(f"__device__ void prob_grad(const real *xv, real *GR, real *HS, real *SG, {arr}, bool need_hs, "
                   f"bool need_sg) {{\n" + "\n".join(wl + g) + "\n    if (need_hs) {\n" + "\n".join(h) + "\n    }\n"
                   + ("\n".join(sg) + "\n" if sg else "") + "}")
        lines, val = _c_scalar(self.loss, "    ", pr, "f", real)
        out.append(f"__device__ real prob_loss(const real *xv, {arr}) {{\n" + "\n".join(lines)
                   + f"\n    return {val};\n}}")
        hv = _c_vector(self.hvp, "HV", "    ", pr, "q", real)
        out.append(f"__device__ void prob_hvp(const real *xv, const real *vv, real *HV, {arr}) {{\n"
                   + "\n".join(hv) + "\n}")
        if self.examples:
            hb = _c_vector(Loop(to_minibatch(self.hvp.expr)), "HV", "    ", pr, "b", real)
            out.append(f"__device__ void prob_hvp_idx(const real *xv, const real *vv, real *HV, const int *IDX, int nb, "
                       f"{arr}) {{\n" + "\n".join(hb) + "\n}")
        if self.example_grad is not None:
            hoist, rest, post = self._mb_parts()
            L = [f"__device__ void prob_mb_accum(const real *xv, real *G, int jx, {arr}) {{"]
            c = [0]
            hv_ = _lower_sums(hoist, L, "    ", c, pr, "c", real)
            L.append(f"    const {real} hm = {hv_};")
            L.append("    for (int i = 0; i < D; ++i) {")
            rv = _lower_sums(rest * sp.Symbol("hm", real=True), L, "        ", c, pr, "c", real)
            L += [f"        G[i] += {rv};", "    }", "}"]
            L += [f"__device__ void prob_mb_finish(const real *xv, real *G, int nb, {arr}) {{",
                  "    for (int i = 0; i < D; ++i) {"]
            pv = _lower_sums(post, L, "        ", c, pr, "c", real)
            L += [f"        G[i] = {pv};", "    }", "}"]
            out.append("\n".join(L))
        if self.noise_scale is not None:
            sg = _c_vector(self.noise_scale, "SG", "    ", pr, "n", real)
            out.append(f"__device__ void prob_noise0(real *SG, {arr}) {{\n" + "\n".join(sg) + "\n}")
        if self.noise_factor is not None:
            xi = _c_vector(self.noise_factor, "XI", "    ", pr, "z", real)
            out.append(f"__device__ void prob_corr(const real *xv, const real *GR, const double *Z, real *XI, {arr}) "
                       "{\n" + "\n".join(xi) + "\n}")
        if self.grad_trace_cov is not None:
            gt = _c_vector(self.grad_trace_cov, "GT", "    ", pr, "t", real)
            out.append(f"__device__ void prob_gtrs(const real *xv, const real *GR, real *GT, {arr}) "
                       "{\n" + "\n".join(gt) + "\n}")
        return "\n" + "\n".join(out) + "\n"


r"""Folding an affine step on a dense quadratic into one matrix per input: a `VProgram` transform.

On `Quadratic(H=..., Sigma=...)` every gradient and Hessian-vector product is `H v`, and the noise is
`L z`.  When a step uses nothing else (no norm, no inner product, no `sign`, no time), each new state is a
fixed matrix polynomial of `H` applied to each of its inputs:

$$x' = p_x(H)\,x + \sum_s p_s(H)\,L z_s + \sum_m p_m(H)\,m,$$

with scalar coefficients of the hyperparameters, `dt` and `sqrt(dt)`.  USAM's discrete step
`x - eta (H (x + rho (H x + L z)) + L z)` makes three products `H x`, `L z`, `H y` per step, its SDE four
(`H x`, `H H x`, `L z`, `H L z`); folded, both make two: `x @ (I - eta (H + rho H^2))` and
`z @ L^T (-eta (I + rho H))` (row form; the polynomials are symmetric in the symmetric `H`).  The matrices
are computed once per kernel launch from the run's hyperparameters (`numba_vector` prints them by Horner's
rule), so a new `eta` or `rho` needs no new kernel.

`fold_affine` returns the program unchanged where the step is not affine in its inputs, where a coefficient
depends on the state, the step counter or the time, and where folding would not make fewer matrix products
than the program as written (Nesterov's look-ahead step: folding `x' , m'` over `x, m, z` makes more products
than it saves).  The same Gaussians enter (the raw `z` of each noise stream), so the paths agree with the
unfolded program up to rounding (`tests/test_vector_simulate.py`).  Module flag `FOLD` switches the pass off
(the tests compare both forms).
"""

from __future__ import annotations

from dataclasses import replace

import sympy as sp

from sdederive.simulate.vector_lower import KSTEP, TT, VOp, VProgram

__all__ = ["fold_affine", "FOLD"]

#: whether `fold_affine` may fold (the tests switch it off to compare the forms)
FOLD = True

_PRODUCT_OPS = ("grad", "hvp", "noise")


def _is_kernel_vector(s: sp.Symbol) -> bool:
    return s.name.startswith("v_")


def _coefficient_ok(c: sp.Expr) -> bool:
    """A coefficient may hold hyperparameters, `dt`, `sdt` and numbers: nothing of the path or of the step."""
    return not any(s.name.startswith(("v_", "s_")) or s in (KSTEP, TT) for s in c.free_symbols)


def _add(acc: dict, val: dict, scale) -> None:
    for basis, poly in val.items():
        cur = acc.setdefault(basis, [])
        for k, c in enumerate(poly):
            if k < len(cur):
                cur[k] = cur[k] + scale * c
            else:
                cur.append(scale * c)


def _affine_values(prog: VProgram) -> dict | None:
    """The value of every vector of `prog` as `{basis: [c_0, c_1, ...]}` (the vector is
    `sum_basis sum_k c_k H^k basis`; a basis is a state vector or `("Z", stream)` for `L z` of that stream), or
    `None` where the step is not affine with constant coefficients."""
    vals: dict = {"X": {"X": [sp.S.One]}}
    for s in prog.states[1:]:
        vals[f"ST_{s}"] = {f"ST_{s}": [sp.S.One]}
    for o in prog.pre + prog.post:
        if o.kind in ("grad", "hvp"):
            src = vals.get(o.args[0])
            if src is None:
                return None
            vals[o.out] = {b: [sp.S.Zero] + list(p) for b, p in src.items()}
        elif o.kind == "noise":
            if o.args[2:] or o.args[1]:  # raw z (z-space programs) or a per-sample stream
                return None
            vals[o.out] = {("Z", int(o.args[0])): [sp.S.One]}
        elif o.kind == "cw":
            expr = sp.expand(sp.sympify(o.args[0]))
            syms = sorted((s for s in expr.free_symbols if _is_kernel_vector(s)), key=lambda s: s.name)
            acc: dict = {}
            rest = expr
            for s in syms:
                c = sp.expand(sp.diff(expr, s))
                if not _coefficient_ok(c) or s.name[2:] not in vals:
                    return None
                _add(acc, vals[s.name[2:]], c)
                rest = rest - c * s
            if sp.expand(rest) != 0:  # a constant or nonlinear remainder
                return None
            vals[o.out] = acc
        else:  # norms, inner products, scalars, minibatches, Student-t scales, z-space operations
            return None
    return vals


def _clean(val: dict) -> dict:
    out = {}
    for basis, poly in val.items():
        poly = [sp.expand(c) for c in poly]
        while poly and poly[-1] == 0:
            poly.pop()
        if poly:
            out[basis] = tuple(poly)
    return out


def _products(val: dict) -> int:
    """Matrix products of the folded form of one new state: one per input whose polynomial has an `H`, and one
    per noise stream (`L` itself)."""
    return sum(1 for basis, poly in val.items() if isinstance(basis, tuple) or len(poly) > 1)


def fold_affine(prog: VProgram, problem) -> VProgram:
    """`prog` with its step folded into one matrix per input (module docstring), or `prog` itself where folding
    does not apply or would not save products.  Only for a dense quadratic, whose products are BLAS matrix
    products of the row blocks."""
    if not FOLD or problem.kind != "quadratic_dense" or prog.n_inner or prog.inner or prog.zspace:
        return prog
    vals = _affine_values(prog)
    if vals is None:
        return prog
    outs = {"x": prog.result} | dict(prog.results)
    new = {s: _clean(vals[name]) for s, name in outs.items()}
    before = sum(1 for o in prog.pre + prog.post if o.kind in _PRODUCT_OPS and (o.kind != "noise" or
                                                                                 problem.has_noise_factor))
    after = sum(_products(v) for v in new.values())
    if after >= before:
        return prog
    streams = sorted({b[1] for v in new.values() for b in v if isinstance(b, tuple)})
    ops = [VOp("noise", f"FZ{s}", (s, 0, "z")) for s in streams]
    results = {}
    for s, val in new.items():
        terms = tuple((f"FZ{b[1]}" if isinstance(b, tuple) else b, poly, isinstance(b, tuple))
                      for b, poly in sorted(val.items(), key=lambda kv: str(kv[0])))
        ops.append(VOp("lin", f"FL_{s}", (terms,)))
        results[s] = f"FL_{s}"
    ops.append(VOp("cw", "FNX", (sp.Symbol("v_FL_x", real=True),)))
    vectors = set(prog.vectors) | {f"FZ{s}" for s in streams} | {f"FL_{s}" for s in new} | {"FNX"}
    notes = prog.notes + (f"affine step folded: {after} matrix products per step instead of {before}",)
    return replace(prog, pre=ops, post=[], result="FNX", results={s: results[s] for s in prog.results},
                   vectors=vectors, notes=notes)

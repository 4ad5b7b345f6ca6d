r"""Running a vector program in the eigenbasis of the noise: fewer matrix products per step on a quadratic with a
full `Sigma`.

On `Quadratic(H=..., Sigma=...)` write `Sigma = U Lambda U^T` (the eigen-factor `L = U Lambda^(1/2)` the problem
keeps) and `y = U^T x`.  A step built from gradients and Hessian-vector products, the noise, linear combinations
with scalar coefficients, and scalars of inner products and norms is *orthogonally equivariant*: run on the rotated
problem `Quadratic(H=U^T H U, sigma=lambda^(1/2))` (`Quadratic.eigenbasis`) from `y`, it gives `U^T` times the step
from `x`, for the same Gaussians (`U^T L z = Lambda^(1/2) z`).  The noise of the rotated problem is diagonal, so
`L z`, `L^T v` and `L v` are coordinate-wise products instead of `d x d` matrix products.  NSGD's and clipped SGD's
z-space SDE steps (`vector_lower._lower_zspace`) then make one matrix product (`H y`) instead of three (`H x`,
`L^T grad f`, `L beta`), SAM's two instead of five.  The kernel keeps the state in `x` for the host: it rotates a
row block into `y` when it loads it, and back when it stores it and at every snapshot (`x` is one of the
observables; the loss and `|x|^2` are the same in both coordinates): one product per snapshot.

Whether a program is equivariant is decided from its operations (`equivariance_failure`), by the basis each vector
lives in: `x` (the state, gradients, Hessian products, the noise `Sigma^(1/2) z`, `L v`) or `z` (the Gaussians of a
z-space program, `L^T v`, and coordinate-wise functions of those alone, which are the same numbers in both
problems). A coordinate-wise operation on `x`-basis vectors must be linear in them with coefficients free of every
vector (`a v + b w`, not `v_i^2`, `sign(v_i)` or `v_i w_i`), a reduction over them a quadratic form (`v . w`, not
`sum_i v_i`), and no operation mixes the two bases. Anything else keeps the program as it is, and so do programs
where the rotation would not save a product (an affine step folded by `vector_fold`, a problem without a full
`Sigma`). A diagonal `H` with a full `Sigma` rotates too where that saves products (NSGD's SDE: `L^T grad f` and `L
beta` against one `H_y y`; the rotated `H_y` is dense). The same Gaussians enter, so the paths are those of the
unrotated kernel up to rounding (`tests/test_vector_eigenbasis.py`). The module flag `EIGENBASIS` switches it off
(the tests and the benchmark compare the forms).
"""

from __future__ import annotations

import numpy as np
import sympy as sp

from sdederive.simulate.vector_fold import fold_affine
from sdederive.simulate.vector_lower import VProgram

__all__ = ["EIGENBASIS", "eigenbasis_for", "equivariance_failure", "matrix_products"]

#: whether `eigenbasis_for` may rotate (the tests and `bench/bench_vector_roofline.py` switch it off to compare)
EIGENBASIS = True

#: vector names of the kernels that are not the program's own: `LAM` (the `lambda_j` of a z-space program) lives
#: in the z basis; `SG` (the per-coordinate noise scale) is coordinate-dependent, in neither
_Z_CONSTANTS = {"LAM"}


def _vector_names(e: sp.Expr) -> set:
    return {s.name[2:] for s in e.free_symbols if s.name.startswith("v_")}


def _linear_in(e: sp.Expr, xs: list) -> bool:
    """`e = sum_a c_a v_a` over the symbols `xs`, with coefficients free of every vector symbol."""
    if sp.simplify(e.subs({s: 0 for s in xs})) != 0:
        return False
    return all(not _vector_names(sp.diff(e, s)) for s in xs)


def _quadratic_form_in(e: sp.Expr, xs: list) -> bool:
    """`e = sum_{a,b} c_ab v_a v_b` over the symbols `xs`, with coefficients free of every vector symbol: summed over
    the coordinates, `sum_ab c_ab (v_a . v_b)`, invariant under a rotation."""
    zero = {s: 0 for s in xs}
    if sp.simplify(e.subs(zero)) != 0 or any(sp.simplify(sp.diff(e, s).subs(zero)) != 0 for s in xs):
        return False
    return all(not _vector_names(sp.diff(e, a, b)) for a in xs for b in xs)


def equivariance_failure(prog: VProgram) -> str | None:
    """Why the step of `prog` is not orthogonally equivariant (module docstring), or `None` where it is."""
    if tuple(prog.states) != ("x",):
        return f"auxiliary states {list(prog.states[1:])}"
    if prog.n_inner and not prog.zspace:
        return "sampled noise in the per-sample form"
    basis: dict = {"X": "x", **{c: "z" for c in _Z_CONSTANTS}}

    def need(name: str, want: str, o) -> str | None:
        have = basis.get(name)
        if have == "any":
            basis[name] = want
            return None
        if have != want:
            return f"{o.kind} {o.out} reads {name} ({have or 'unknown'} basis, {want} needed)"
        return None

    def assign(o, b: str) -> str | None:
        prev = basis.get(o.out)
        if prev not in (None, "any", b) and b != "any":
            return f"{o.out} is written in the {b} basis and in the {prev} basis"
        if prev is None or prev == "any":
            basis[o.out] = b
        return None

    for o in prog.pre + prog.inner + prog.post:
        why = None
        if o.kind in ("grad", "hvp"):
            why = need(o.args[0], "x", o) or assign(o, "x")
        elif o.kind in ("noise", "tnoise"):
            why = assign(o, "z" if "z" in o.args[2:] else "x")
        elif o.kind == "ltv":
            why = need(o.args[0], "x", o) or assign(o, "z")
        elif o.kind == "lv":
            why = need(o.args[0], "z", o) or assign(o, "x")
        elif o.kind == "sc":
            if _vector_names(o.args[0]):
                why = f"the scalar {o.out} reads a vector coordinate"
        elif o.kind in ("cw", "red"):
            why = _coordinatewise(o, basis, assign)
        else:
            why = f"the operation {o.kind} ({o.out})"
        if why:
            return why
    if basis.get(prog.result) != "x":
        return f"the result {prog.result} is in the {basis.get(prog.result)} basis"
    return None


def _coordinatewise(o, basis: dict, assign) -> str | None:
    """The basis check of a coordinate-wise operation or a reduction `o` (`equivariance_failure`)."""
    e = o.args[0]
    names = _vector_names(e)
    unknown = sorted(n for n in names if basis.get(n) is None)
    if unknown:
        return f"{o.kind} {o.out} reads {unknown} (no basis: a coordinate-dependent vector)"
    kinds = {basis[n] for n in names} - {"any"}
    if kinds == {"x", "z"}:
        return f"{o.kind} {o.out} mixes the x and z bases coordinate by coordinate: {e}"
    if kinds == {"z"}:  # the same numbers in both problems: any function of them
        for n in names:
            basis[n] = "z"
        return assign(o, "z") if o.kind == "cw" else None
    if not names and o.kind == "cw" and e != 0:
        return f"cw {o.out} = {e}: a vector with the same value in every coordinate"
    xs = [s for s in e.free_symbols if s.name.startswith("v_")]
    if not (_linear_in(e, xs) if o.kind == "cw" else _quadratic_form_in(e, xs)):
        what = "linear" if o.kind == "cw" else "a quadratic form"
        return f"{o.kind} {o.out} = {e} is not {what} in its x-basis vectors"
    if not kinds:  # zeros, or linear in vectors that are still zero: a zero of either basis
        return assign(o, "any") if o.kind == "cw" else None
    for n in names:
        basis[n] = "x"
    return assign(o, "x") if o.kind == "cw" else None


def matrix_products(prog: VProgram, problem) -> int:
    """The `d x d` matrix products one step of `prog` makes on `problem` (a quadratic), after the folding
    that `numba_vector` applies: gradients and Hessian products, and products by the noise factor where there is
    one; inner operations count once per inner sample."""
    prog = fold_affine(prog, problem)
    factor = problem.has_noise_factor
    dense = problem.kind == "quadratic_dense"  # a diagonal H's products are coordinate-wise

    def count(ops) -> int:
        n = 0
        for o in ops:
            if o.kind in ("grad", "hvp"):
                n += int(dense)
            elif o.kind in ("noise", "tnoise") and "z" not in o.args[2:] or o.kind in ("ltv", "lv"):
                n += int(factor)
            elif o.kind == "lin":
                n += sum(1 for _src, poly, noise in o.args[0] if noise or len(poly) > 1)
        return n

    return count(prog.pre) + count(prog.post) + prog.n_loop * count(prog.inner)


def eigenbasis_for(prog: VProgram, problem) -> tuple[np.ndarray, object] | None:
    """`(U, rotated problem)` where `prog` runs on `problem` in the noise's eigenbasis (module docstring), else
    `None`: a quadratic with a full `Sigma`, an equivariant step, and fewer matrix products."""
    if not EIGENBASIS or problem.kind not in ("quadratic_dense", "quadratic_diag") or \
            getattr(problem, "noise_eigen", None) is None:
        return None
    if equivariance_failure(prog) is not None:
        return None
    U, rotated = problem.eigenbasis()
    if matrix_products(prog, rotated) >= matrix_products(prog, problem):
        return None
    return U, rotated

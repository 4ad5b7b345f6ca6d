r"""Lowering: from an `SDE` or an `Optimizer` to
the per-coordinate assignments a kernel executes, printed for a backend.

One coordinate `i` of one path advances by one step with straight-line code:

* discrete mode: `s_new = update[s](x, g, k, states, hypers)` for every state, with `g` the
  stochastic gradient the kernel drew;
* SDE mode, Euler–Maruyama: `s_new = s + b_s dt + sum_r D_{s r} dW_r` (diagonal noise, `r` over
  the SDE's noise sources), or `s + b_s dt + (D_s/sigma) xi` when the noise enters linearly and
  the problem's noise is correlated across coordinates (`xi` the correlated increment);
* SDE mode, weak order 2: Platen's explicit scheme (Kloeden & Platen, eq. 15.1.3, one noise source),
  built from the same drift and diffusion expressions.

The SDE's scaled parameters (`rho1 = (1 - beta1)/eta`, `sigma0 = sigma*eta`, ...) are replaced by
their definitions, so kernels take the discrete hyperparameters in both modes.  The expressions go
through `sympy.cse` after number symbols and numeric powers are folded to floats (NVRTC has no
`M_PI`).  This module is backend-independent; each backend prints the assignments with its own printer,
next to it: `numba_printer` (sympy's `PythonCodePrinter`) and
`cuda_printer` (`C99CodePrinter`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import sympy as sp
from sympy.codegen.rewriting import create_expand_pow_optimization, optimize

from sdederive.errors import SdederiveError
from sdederive.symbols import sym

__all__ = ["CodegenError", "Assignments", "fold_numbers", "cse_assignments", "expand_powers"]


class CodegenError(SdederiveError):
    """An expression the kernel printers cannot lower (an unsupported function, a symbol with no value)."""


class NonNeg(sp.Function):
    """`max(a, 0)`, the clamp of a Cholesky pivot under a square root (`sdederive.simulate.spec`).

    Its own function rather than `Max(a, 0.0)`: sympy's code-rewriting passes rebuild every node,
    and `Max` refuses to be rebuilt around arguments it cannot prove real.  Printed the same way by
    both backends, `(a if a > 0 else 0)`, so a NaN pivot gives 0 on the CPU and the GPU alike."""

    nargs = 1
    is_real = True
    is_nonnegative = True

    @classmethod
    def eval(cls, a):
        if a.is_nonnegative:
            return a
        if a.is_number and a.is_comparable:
            return sp.Max(a, 0)
        return None


_SUPPORTED_FUNCS = (sp.exp, sp.log, sp.erf, sp.erfc, sp.sign, sp.Abs, sp.atan, sp.tanh, sp.sin, sp.cos,
                    sp.Max, sp.Min, sp.Heaviside, sp.Piecewise, NonNeg, sp.floor)


def fold_numbers(e: sp.Expr) -> sp.Expr:
    """Replace number symbols (`pi`, `E`) and numeric sub-expressions (`sqrt(2)`) by 17-digit
    floats: NVRTC does not define `M_PI`/`M_SQRT2`, and the kernel should not recompute constants."""
    e = sp.sympify(e)
    e = e.xreplace({sp.pi: sp.Float(math.pi, 17), sp.E: sp.Float(math.e, 17)})
    return e.replace(lambda a: (a.is_Pow or isinstance(a, sp.Function)) and a.is_number and not a.is_Rational,
                     lambda a: sp.Float(sp.N(a, 17), 17))


def check_supported(e: sp.Expr, where: str) -> None:
    for f in e.atoms(sp.Function):
        if isinstance(f, sp.Function) and not isinstance(f, _SUPPORTED_FUNCS):
            raise CodegenError(
                f"{where}: the kernel printers cannot lower {f.func.__name__}(...) (in {sp.sstr(f)[:80]}); "
                f"supported: {', '.join(sorted(c.__name__ for c in _SUPPORTED_FUNCS))}. For Student-t noise give "
                "an integer or half-integer nu, for which the CDF is elementary."
            )


@dataclass
class Assignments:
    """Straight-line code: temporaries then outputs, each `(name, expr)`."""

    temps: list[tuple[str, sp.Expr]] = field(default_factory=list)
    outputs: list[tuple[str, sp.Expr]] = field(default_factory=list)


def cse_assignments(outputs: list[tuple[str, sp.Expr]], prefix: str = "w") -> Assignments:
    """Common-subexpression elimination over all outputs together (`sympy.cse`)."""
    names = [n for n, _ in outputs]
    exprs = [fold_numbers(e) for _, e in outputs]
    repl, red = sp.cse(exprs, symbols=sp.numbered_symbols(prefix), optimizations="basic")
    # cse can factor new numeric powers out (sqrt(2*a) -> sqrt(2)*sqrt(a)): fold again
    return Assignments([(str(s), fold_numbers(v)) for s, v in repl], [(n, fold_numbers(e)) for n, e in zip(names, red)])


_expand_pow = create_expand_pow_optimization(4)


def expand_powers(e: sp.Expr) -> sp.Expr:
    """`e` with integer powers up to 4 written as products (`x**3` -> `x*x*x`), which C compilers
    do not always do for `pow`; sympy's `create_expand_pow_optimization`."""
    return optimize(e, [_expand_pow])


# canonical symbols the kernels bind per coordinate
GRAD, HESS, SIGMA, T, K, G = sym("grad"), sym("hess"), sym("sigma"), sym("t"), sym("k"), sym("g")

r"""Lowering: from an :class:`~sdederive.sde.SDE` or an :class:`~sdederive.spec.optimizers.Optimizer` to
the per-coordinate assignments a kernel executes, printed for a backend.

One coordinate ``i`` of one path advances by one step with straight-line code:

* discrete mode: ``s_new = update[s](x, g, k, states, hypers)`` for every state, with ``g`` the
  stochastic gradient the kernel drew;
* SDE mode, Euler–Maruyama: ``s_new = s + b_s dt + sum_r D_{s r} dW_r`` (diagonal noise, ``r`` over
  the SDE's noise sources), or ``s + b_s dt + (D_s/sigma) xi`` when the noise enters linearly and
  the problem's noise is correlated across coordinates (``xi`` the correlated increment);
* SDE mode, weak order 2: Platen's explicit scheme (Kloeden & Platen, eq. 15.1.3, one noise source),
  built from the same drift and diffusion expressions.

The SDE's scaled parameters (``rho1 = (1 - beta1)/eta``, ``sigma0 = sigma*eta``, ...) are replaced by
their definitions, so kernels take the discrete hyperparameters in both modes.  The expressions go
through ``sympy.cse`` and sympy's own printers (``PythonCodePrinter`` for numba, ``C99CodePrinter``
for CUDA), after number symbols and numeric powers are folded to floats (NVRTC has no ``M_PI``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import sympy as sp
from sympy.codegen.rewriting import create_expand_pow_optimization, optimize
from sympy.printing.c import C99CodePrinter
from sympy.printing.pycode import PythonCodePrinter

from sdederive.errors import SdederiveError
from sdederive.symbols import sym

__all__ = ["CodegenError", "Assignments", "fold_numbers", "cse_assignments", "print_python", "print_c"]


class CodegenError(SdederiveError):
    """An expression the kernel printers cannot lower (an unsupported function, a symbol with no value)."""


class NonNeg(sp.Function):
    """``max(a, 0)``, the clamp of a Cholesky pivot under a square root (``sdederive.simulate.spec``).

    Its own function rather than ``Max(a, 0.0)``: sympy's code-rewriting passes rebuild every node,
    and ``Max`` refuses to be rebuilt around arguments it cannot prove real.  Printed the same way by
    both backends, ``(a if a > 0 else 0)``, so a NaN pivot gives 0 on the CPU and the GPU alike."""

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
                    sp.Max, sp.Min, sp.Heaviside, sp.Piecewise, NonNeg)


def fold_numbers(e: sp.Expr) -> sp.Expr:
    """Replace number symbols (``pi``, ``E``) and numeric sub-expressions (``sqrt(2)``) by 17-digit
    floats: NVRTC does not define ``M_PI``/``M_SQRT2``, and the kernel should not recompute constants."""
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
    """Straight-line code: temporaries then outputs, each ``(name, expr)``."""

    temps: list[tuple[str, sp.Expr]] = field(default_factory=list)
    outputs: list[tuple[str, sp.Expr]] = field(default_factory=list)


def cse_assignments(outputs: list[tuple[str, sp.Expr]], prefix: str = "w") -> Assignments:
    """Common-subexpression elimination over all outputs together (``sympy.cse``)."""
    names = [n for n, _ in outputs]
    exprs = [fold_numbers(e) for _, e in outputs]
    repl, red = sp.cse(exprs, symbols=sp.numbered_symbols(prefix), optimizations="basic")
    # cse can factor new numeric powers out (sqrt(2*a) -> sqrt(2)*sqrt(a)): fold again
    return Assignments([(str(s), fold_numbers(v)) for s, v in repl], [(n, fold_numbers(e)) for n, e in zip(names, red)])


class _NumbaPrinter(PythonCodePrinter):
    """``math.*`` calls numba compiles; ``sign`` as ``math.copysign`` guarded at 0; floats with 17 digits."""

    def _print_sign(self, e):
        a = self._print(e.args[0])
        return f"(0.0 if {a} == 0 else math.copysign(1.0, {a}))"

    def _print_NonNeg(self, e):
        a = self._print(e.args[0])
        return f"({a} if {a} > 0.0 else 0.0)"

    def _print_Float(self, e):
        return repr(float(e))

    def _print_Rational(self, e):
        return repr(float(e))

    def _print_Heaviside(self, e):
        a = self._print(e.args[0])
        return f"(1.0 if {a} > 0 else (0.0 if {a} < 0 else 0.5))"


def print_python(a: Assignments, indent: str) -> str:
    p = _NumbaPrinter({"fully_qualified_modules": True, "standard": "python3"})
    lines = [f"{indent}{n} = {p.doprint(e)}" for n, e in a.temps + a.outputs]
    return "\n".join(lines)


_expand_pow = create_expand_pow_optimization(4)


class _CudaPrinter(C99CodePrinter):
    def _print_sign(self, e):
        a = self._print(e.args[0])
        return f"(({a}) > 0 ? {self._print(sp.Float(1))} : (({a}) < 0 ? {self._print(sp.Float(-1))} : {self._print(sp.Float(0))}))"

    def _print_Heaviside(self, e):
        a = self._print(e.args[0])
        return f"(({a}) > 0 ? 1.0 : (({a}) < 0 ? 0.0 : 0.5))"

    def _print_NonNeg(self, e):
        a = self._print(e.args[0])
        return f"(({a}) > 0 ? ({a}) : {self._print(sp.Float(0))})"


def print_c(a: Assignments, indent: str, real: str = "double") -> str:
    """C99/CUDA statements; ``real="float"`` prints single-precision literals and functions."""
    settings = {}
    if real == "float":
        from sympy.codegen.ast import float32
        from sympy.codegen.ast import real as real_t

        settings["type_aliases"] = {real_t: float32}
    p = _CudaPrinter(settings)
    lines = []
    for n, e in a.temps + a.outputs:
        lines.append(f"{indent}const {real} {n} = {p.doprint(optimize(e, [_expand_pow]))};")
    return "\n".join(lines)


# canonical symbols the kernels bind per coordinate
GRAD, HESS, SIGMA, T, K, G = sym("grad"), sym("hess"), sym("sigma"), sym("t"), sym("k"), sym("g")

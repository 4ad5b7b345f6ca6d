"""The CUDA backend's printer: `Assignments` as C99/CUDA statements
(sympy's `C99CodePrinter`; small integer powers expanded to products by
`expand_powers`; `real="float"` prints single-precision literals and
functions)."""

from __future__ import annotations

import sympy as sp
from sympy.printing.c import C99CodePrinter

from sdederive.simulate.lower import Assignments, expand_powers

__all__ = ["print_c"]


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
    """C99/CUDA statements `const real name = expr;`; `real="float"` prints single-precision literals
    and functions."""
    settings = {}
    if real == "float":
        from sympy.codegen.ast import float32
        from sympy.codegen.ast import real as real_t

        settings["type_aliases"] = {real_t: float32}
    p = _CudaPrinter(settings)
    lines = []
    for n, e in a.temps + a.outputs:
        lines.append(f"{indent}const {real} {n} = {p.doprint(expand_powers(e))};")
    return "\n".join(lines)

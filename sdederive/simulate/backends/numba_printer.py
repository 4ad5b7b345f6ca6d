"""The numba backend's printer: `Assignments` as Python statements numba
compiles (sympy's `PythonCodePrinter` with `math.*` calls, `sign` and `Heaviside` as branch-free
conditionals, floats with 17 digits)."""

from __future__ import annotations

from sympy.printing.pycode import PythonCodePrinter

from sdederive.simulate.lower import Assignments

__all__ = ["print_python"]


class _NumbaPrinter(PythonCodePrinter):
    """`math.*` calls numba compiles; `sign` as `math.copysign` guarded at 0; floats with 17 digits."""

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

    def _print_Pow(self, e, rational=False):
        # an integer base to a symbolic power (a schedule's 2**(-floor(t/T))): a float base, since numba's
        # integer ** negative integer is integer division (2**-1 == 0)
        if e.base.is_Integer and not e.exp.is_number:
            import sympy as sp

            e = sp.Pow(sp.Float(int(e.base), 17), e.exp, evaluate=False)
        return super()._print_Pow(e, rational=rational)

    def _print_Heaviside(self, e):
        a = self._print(e.args[0])
        return f"(1.0 if {a} > 0 else (0.0 if {a} < 0 else 0.5))"


def print_python(a: Assignments, indent: str) -> str:
    """One `name = expr` line per temporary and output of `a`, each prefixed by `indent`."""
    p = _NumbaPrinter({"fully_qualified_modules": True, "standard": "python3"})
    lines = [f"{indent}{n} = {p.doprint(e)}" for n, e in a.temps + a.outputs]
    return "\n".join(lines)

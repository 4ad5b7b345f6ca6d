r"""Single-precision arithmetic for the float32 vector kernels: `Hoist` splits a coordinate-wise expression into
the parts that read vector elements and the parts that do not.  The printers (`numba_vector`, `cuda_vector`) define
the latter as float32 locals, computed in double and rounded once per step or row, so that what is left reads
float32 values only and is typed, and vectorised, in single precision."""

from __future__ import annotations

import sympy as sp

__all__ = ["Hoist"]


class Hoist:
    """Single-precision coordinate-wise arithmetic for a float32 step: the parts of an expression that read no
    vector element (hyperparameters, the step counter, bias corrections such as `1 - beta2**(k+1)`, a row's
    norms, numeric constants) are computed in double once, before the loop over coordinates, and rounded to a
    float32 local `c_j`; what is left reads float32 elements and float32 locals only, so numba types it float32
    and LLVM vectorises it 8 wide (AVX2) instead of 4.  (numba follows numpy's promotion: a float32 element times
    a Python float or an int is a float64, so without this the arithmetic of a float32 step is double.)
    Integer powers stay literal (`x**2` of a float32 is float32), and `1/x` becomes `c/x` with `c = 1` a float32.
    The numba printer relies on numpy's promotion (numba's), the C printer on C's (a float times a double is a
    double): both need every number and double scalar out of the element arithmetic.
    `outer` holds the locals that read no row scalar (defined before the loop over rows), `row` those that do."""

    def __init__(self, start: int = 0):
        self.outer: dict = {}
        self.row: dict = {}
        self.start = start

    @property
    def count(self) -> int:
        return self.start + len(self.outer) + len(self.row)

    @staticmethod
    def _element(e) -> bool:
        return any(s.name.startswith("v_") for s in e.free_symbols)

    def _const(self, e) -> sp.Symbol:
        tab = self.row if any(s.name.startswith("s_") for s in e.free_symbols) else self.outer
        if e not in self.outer and e not in self.row:
            tab[e] = f"c_{self.count}"
        return sp.Symbol(self.outer.get(e) or self.row[e])

    def split(self, e):
        if not self._element(e):
            return self._const(e)
        if e.is_Symbol:
            return e
        if e.is_Pow:
            b, x = e.args
            if x.is_Integer or x in (sp.S.Half, -sp.S.Half):
                out = sp.Pow(self.split(b), x, evaluate=False)
                # 1/b and 1/sqrt(b) print with an int 1: a float32 numerator keeps them float32
                return sp.Mul(self._const(sp.S.One), out, evaluate=False) if x.is_negative else out
            return sp.Pow(self.split(b), self.split(x), evaluate=False)
        if e.is_Mul or e.is_Add:  # the element-free factors (terms) as one local, their product (sum) in double
            free = [a for a in e.args if not self._element(a)]
            args = [self.split(a) for a in e.args if self._element(a)]
            if free:
                c = e.func(*free)
                args.insert(0, c if c == -1 else self._const(c))
            return e.func(*args, evaluate=False)
        if isinstance(e, (sp.Piecewise, sp.Relational)) or not e.args:  # printed as they are (double where mixed)
            return e
        args = [self.split(a) for a in e.args]
        try:
            return e.func(*args, evaluate=False)
        except TypeError:
            return e.func(*args)

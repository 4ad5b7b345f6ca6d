r"""Truncated Laurent series in `eta` with tracked precision, evaluated over the expression tree.

Why not `sympy.series`: it goes through the generic limit machinery and is 10-20x slower on
these increments (Adam's expansions: 26 ms here against 317 ms, `docs/benchmarks.md`).  The
increments are built from `+`, `*`, powers and smooth functions of sub-expressions, so the
classical power-series arithmetic is exact and fast:

* a series is `{power: coefficient}` plus `prec`: every term of power `<= prec` is exact;
* `A*B` is exact to `min(prec_A + val_B, prec_B + val_A)`;
* `(c0*eta**v*(1 + r))**a = c0**a*eta**(v*a)*sum_j binomial(a, j)*r**j`;
* `f(a0 + d) = sum_j f^(j)(a0)*d**j/j!` for smooth `f` (`exp`, `erf`, `hyper`, ...).

If the precision obtained is below the order asked for, the caller re-runs with more padding.
Unsupported nodes fall back to `sympy.series`.
"""

from __future__ import annotations

import random
import zlib

import sympy as sp

from sdederive.symbols import sym

__all__ = ["Series", "eta_series", "numeric_zero"]

_eta = sym("eta")
INF = 10**6
_CAP = [INF]  # absolute truncation order of the evaluation in progress


def numeric_zero(expr: sp.Expr, trials: int = 3) -> bool | None:
    """Random-point identity test: `False` if `expr` is certainly nonzero, `True` if it
    vanishes at `trials` random points (to 25 digits), `None` if it could not be evaluated.

    Symbols get random values of random sign (positive where assumed), so an expression that
    vanishes only on a half-line is not mistaken for zero."""
    if expr.has(sp.DiracDelta):
        return None  # a point mass is zero at every random point, yet not zero
    free = sorted(expr.free_symbols, key=str)
    # stable across processes; seeded by the symbols' names (printing the whole expression to seed
    # cost more than the test itself on large covariance products)
    rnd = random.Random(zlib.crc32(",".join(map(str, free)).encode()))
    for _ in range(trials):
        vals = {}
        for s in free:
            mag = sp.Float(rnd.uniform(0.15, 0.85), 30)
            if s.is_integer:
                vals[s] = sp.Integer(rnd.randint(1, 7))
            elif s.is_nonnegative or s.is_positive:
                vals[s] = mag
            else:
                vals[s] = mag if rnd.random() < 0.5 else -mag
        try:
            val = sp.N(expr.xreplace(vals), 30)
        except (TypeError, ValueError, ZeroDivisionError):
            return None
        if not val.is_number or val.has(sp.nan, sp.zoo, sp.oo, -sp.oo):
            return None
        re, im = val.as_real_imag()
        if abs(im) > 1e-20:
            return None
        if abs(re) > 1e-20:
            return False
    return True


def _is_zero(c: sp.Expr) -> bool:
    if c == 0:
        return True
    nz = numeric_zero(c)
    if nz is not None:
        return nz
    return sp.simplify(c) == 0


class Series:
    """`sum(terms[p]*eta**p) + O(eta**(prec + epsilon))`; powers are sympy Rationals."""

    __slots__ = ("terms", "prec")

    def __init__(self, terms: dict, prec) -> None:
        prec = min(prec, _CAP[0])
        self.terms = {p: c for p, c in terms.items() if p <= prec}
        self.prec = prec

    @property
    def val(self):
        return min(self.terms) if self.terms else self.prec

    def clean(self) -> Series:
        """Drop coefficients that are zero (so that the valuation is right)."""
        for p in sorted(self.terms):
            if _is_zero(self.terms[p]):
                del self.terms[p]
            else:
                break
        return self

    def __add__(self, other: Series) -> Series:
        prec = min(self.prec, other.prec)
        out = dict(self.terms)
        for p, c in other.terms.items():
            out[p] = out[p] + c if p in out else c
        return Series(out, prec).clean()

    def __mul__(self, other: Series) -> Series:
        prec = min(self.prec + other.val, other.prec + self.val)
        out: dict = {}
        for p, a in self.terms.items():
            for r, b in other.terms.items():
                if p + r <= prec:
                    out[p + r] = out[p + r] + a * b if p + r in out else a * b
        return Series(out, prec)

    def pow(self, a: sp.Expr) -> Series:
        if not self.terms:
            if a.is_positive:
                return Series({}, self.prec * a if self.prec < INF else INF)
            raise ZeroDivisionError("power of a series with no known nonzero term")
        if a.is_Integer and a >= 0:
            out = Series({sp.S.Zero: sp.S.One}, INF)
            base, n = self, int(a)
            while n:
                if n & 1:
                    out = out * base
                n >>= 1
                if n:
                    base = base * base
            return out
        v = self.val
        c0 = self.terms[v]
        rel = self.prec - v  # relative precision
        r = Series({p - v: c / c0 for p, c in self.terms.items() if p != v}, rel)
        out = Series({sp.S.Zero: sp.S.One}, rel)
        term = Series({sp.S.Zero: sp.S.One}, rel)
        j = 0
        rv = r.val if r.terms else rel
        while r.terms and (j + 1) * rv <= rel:
            j += 1
            term = term * r
            out = out + Series({p: sp.binomial(a, j) * c for p, c in term.terms.items()}, term.prec)
        lead = sp.Pow(c0, a)
        return Series({p + v * a: lead * c for p, c in out.terms.items()}, out.prec + v * a)

    def apply(self, f) -> Series:
        """`f(self)` for a smooth one-argument function `f` (Taylor at the constant term)."""
        if self.terms and self.val < 0:
            raise ValueError("function of a divergent series")
        a0 = self.terms.get(sp.S.Zero, sp.S.Zero)
        d = Series({p: c for p, c in self.terms.items() if p != 0}, self.prec)
        w = sp.Dummy("w")
        fw = f(w)
        out = Series({sp.S.Zero: fw.subs(w, a0)}, self.prec)
        if not d.terms:
            return Series({0: fw.subs(w, a0)}, self.prec if self.prec < INF else INF)
        dv = d.val
        term = Series({sp.S.Zero: sp.S.One}, INF)
        j = 0
        deriv = fw
        while (j + 1) * dv <= self.prec:
            j += 1
            term = term * d
            deriv = sp.diff(deriv, w)
            coef = deriv.subs(w, a0) / sp.factorial(j)
            out = out + Series({p: coef * c for p, c in term.terms.items()}, term.prec)
        return out


def _const(e) -> Series:
    return Series({sp.S.Zero: e}, INF)


class _Unsupported(Exception):
    pass


def _build(e: sp.Expr, cache: dict) -> Series:
    if e in cache:
        return cache[e]
    if not e.has(_eta):
        s = _const(e)
    elif e == _eta:
        s = Series({sp.S.One: sp.S.One}, INF)
    elif e.is_Add:
        s = None
        for a in e.args:
            sa = _build(a, cache)
            s = sa if s is None else s + sa
    elif e.is_Mul:
        s = None
        for a in e.args:
            sa = _build(a, cache)
            s = sa if s is None else s * sa
    elif e.is_Pow:
        base, ex = e.args
        if ex.has(_eta):
            if base == sp.E:
                s = _build(ex, cache).apply(sp.exp)
            else:
                raise _Unsupported(e)
        elif base == _eta and ex.is_Rational:
            s = Series({sp.Rational(ex): sp.S.One}, INF)
        else:
            s = _build(base, cache).pow(ex)
    elif isinstance(e, sp.exp):
        s = _build(e.args[0], cache).apply(sp.exp)
    elif isinstance(e, (sp.sign, sp.Abs)):
        arg = _build(e.args[0], cache)
        lead = sp.sign(arg.terms[arg.val]) if arg.terms else None
        if lead is None:
            raise _Unsupported(e)
        s = _const(lead) if isinstance(e, sp.sign) else arg * _const(lead)
    elif isinstance(e, sp.Function) and len(e.args) == 1:
        f = type(e)
        s = _build(e.args[0], cache).apply(lambda w: f(w))
    elif isinstance(e, sp.hyper):
        ap, bq, zz = e.args
        if ap.has(_eta) or bq.has(_eta):
            raise _Unsupported(e)
        s = _build(zz, cache).apply(lambda w: sp.hyper(ap, bq, w))
    else:
        raise _Unsupported(e)
    cache[e] = s
    return s


def eta_series(expr: sp.Expr, order) -> dict:
    """`{power: coefficient}` of `expr` up to `eta**order` (exact)."""
    s = None
    for pad in (2, 4, 8):
        _CAP[0] = order + pad
        try:
            s = _build(expr, {})
        except (_Unsupported, ValueError, ZeroDivisionError):
            s = None
            break
        finally:
            _CAP[0] = INF
        if s.prec >= order:
            break
    if s is None or s.prec < order:
        return _sympy_series(expr, order)
    out = {}
    for p, c in s.terms.items():
        if p <= order and not _is_zero(c):
            out[sp.Rational(p)] = c
    return out


def _sympy_series(expr: sp.Expr, order) -> dict:
    from sdederive.derivation.expectation import _split_eta

    ser = sp.expand(sp.series(expr, _eta, 0, int(sp.ceiling(order)) + 1).removeO())
    out: dict = {}
    for term in sp.Add.make_args(ser):
        c, p = _split_eta(term)
        if p <= order:
            out[p] = out.get(p, sp.S.Zero) + c
    return {p: c for p, c in out.items() if not _is_zero(c)}

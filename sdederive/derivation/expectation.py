r"""Expectations of one-step increments under a noise model, and expansions in `eta`.

The engine works on expressions in the standardized noise `z` and the small parameter
`eta`.  Smooth dependence on `z` is handled by Taylor expansion in `eta` (the regime makes
the random part of every smooth argument small) followed by the noise moments
$\mathbb E z^n$.  Non-smooth functions whose argument is random at order one cannot be
expanded; they become *atoms*:

* `sign(a + b z)` (also `Abs`, `Heaviside`, `Max`/`Min` rewritten through `sign`): the
  closed forms $\mathbb E[z^n\operatorname{sign}(a+bz)]=\operatorname{sign}(b)\,
  \mathbb E[z^n\operatorname{sign}(z+a/b)]$ of the noise model.  When $a/b\to\pm\infty$ as
  $\eta\to0$ (the argument's noise is of higher order) the atom tends to the deterministic
  $\operatorname{sign}(a_0)$;
* any other function `f` with a rule registered by `register_expectation`.

An update containing a function of the noise with neither is refused with an
`ExpectationError` naming the sub-expression.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import sympy as sp

from sdederive.derivation.series import eta_series, numeric_zero
from sdederive.errors import ExpectationError
from sdederive.noise import NoiseModel
from sdederive.symbols import sym

__all__ = ["register_expectation", "Atom", "extract_atoms", "expand_eta", "leading_order", "expect", "is_zero"]

_eta, _z = sym("eta"), sym("z")

#: function class -> rule(noise, n, a, b, p) returning E[z**n * f(a + b*z)**p]
_RULES: dict[type, Callable] = {}

_NONSMOOTH = (sp.sign, sp.Abs, sp.Heaviside, sp.Max, sp.Min)


def register_expectation(func, rule: Callable) -> None:
    """Teach the engine `E[z**n * func(a + b*z)]`.

    `rule(noise, n, a, b, p)` must return `E[z**n * func(a + b*z)**p]` as a sympy expression
    (`p = 1` for means, `p = 2` for covariances; it may depend on `eta` through `a` and
    `b`, the engine expands the result).  Example, for a user's `soft_sign`:

        sd.register_expectation(soft_sign, lambda noise, n, a, b, p: ...)
    """
    if not (isinstance(func, type) and issubclass(func, sp.Function)) and func not in _NONSMOOTH:
        raise TypeError(f"register_expectation needs a sympy function class (e.g. sympy.tanh), got {func!r}")
    _RULES[func] = rule


def is_zero(expr: sp.Expr) -> bool:
    """Zero test: random-point evaluation first (identity testing), symbolic simplification
    only where the expression cannot be evaluated."""
    if expr == 0:
        return True
    nz = numeric_zero(expr)
    if nz is not None:
        return nz
    e = sp.expand(expr)
    if e == 0 or sp.cancel(sp.together(e)) == 0:
        return True
    return sp.simplify(e) == 0


@dataclass(frozen=True)
class Atom:
    """A placeholder for `func(a + b*z)`; `kind` is `"sign"` or `"rule"`."""

    symbol: sp.Symbol
    kind: str
    func: object
    a: sp.Expr
    b: sp.Expr

    @property
    def expr(self) -> sp.Expr:
        return self.func(self.a + self.b * _z)


def _rewrite_nonsmooth(expr: sp.Expr) -> sp.Expr:
    """Write Abs, Heaviside, Max, Min of noise-dependent arguments through `sign`."""

    def has_z(e):
        return e.has(_z)

    from sdederive.derivation._clip_moments import rewrite_clip  # clip(y, -c, c): closed-form truncated moments

    expr = rewrite_clip(expr)
    expr = expr.replace(lambda e: isinstance(e, sp.Abs) and has_z(e), lambda e: e.args[0] * sp.sign(e.args[0]))
    expr = expr.replace(
        lambda e: isinstance(e, sp.Heaviside) and has_z(e), lambda e: (1 + sp.sign(e.args[0])) / 2
    )

    def maxmin(e):
        if len(e.args) != 2:
            raise ExpectationError(f"{e}: only two-argument Max/Min of the noise are supported")
        a, b = e.args
        if not _is_affine(a - b):
            raise ExpectationError(
                f"cannot take the expectation of {e}: it compares {a} with {b}, and their difference is not affine "
                "in the noise z (g = grad + sigma*z), so the sign of the difference has no closed form. An "
                "expectation rule cannot help here (rules take an argument affine in z); rewrite the update "
                "(e.g. compare quantities linear in g)."
            )
        s = 1 if isinstance(e, sp.Max) else -1
        return (a + b + s * (a - b) * sp.sign(a - b)) / 2

    expr = expr.replace(
        lambda e: isinstance(e, sp.sign) and any(m.has(_z) for m in e.args[0].atoms(sp.Max, sp.Min)), _sign_maxmin
    )
    return expr.replace(lambda e: isinstance(e, (sp.Max, sp.Min)) and has_z(e), maxmin)


def _sign_maxmin(node: sp.Expr) -> sp.Expr:
    """`sign(k*Min(A, B) - k*d)` (`Max` likewise) with `B - d` free of the noise and of known
    sign, written exactly through `sign(A - d)`: for `B > d`, `min(A, B) > d` iff `A > d`;
    for `B < d` it never is; for `B = d`, `sign(min(A - d, 0)) = (sign(A - d) - 1)/2`.
    Other nestings are left alone (and refused later, their argument not being affine in z)."""
    arg = node.args[0]
    ms = [m for m in arg.atoms(sp.Max, sp.Min) if m.has(_z)]
    if len(ms) != 1 or len(ms[0].args) != 2:
        return node
    M = ms[0]
    w = sp.Dummy("w")
    lin = arg.xreplace({M: w})
    k = sp.diff(lin, w)
    sk = sp.sign(k)
    if k.has(w) or k.has(_z) or sk not in (1, -1):
        return node
    d = -lin.subs(w, 0) / k
    is_min = isinstance(M, sp.Min)
    for X, Y in (M.args, M.args[::-1]):
        gap = sp.simplify(X - d)
        if gap.has(_z):
            continue
        s = sp.sign(gap)
        if s not in (1, -1, 0):
            continue
        inner = sp.sign(Y - d)
        if s == 0:
            out = (inner - 1) / 2 if is_min else (inner + 1) / 2
        elif (s == 1) == is_min:  # the deterministic branch never binds: min(A, B) - d ~ A - d
            out = inner
        else:  # the deterministic branch always binds: the sign is that of B - d
            out = s
        return sk * out
    return node


_NOISY_NONSMOOTH = (sp.sign, sp.Abs, sp.Heaviside, sp.Max, sp.Min, sp.Piecewise, sp.DiracDelta)


def _is_affine(arg: sp.Expr) -> bool:
    try:
        _affine(arg, arg)
    except ExpectationError:
        return False
    return True


def _affine(arg: sp.Expr, what: sp.Expr) -> tuple[sp.Expr, sp.Expr]:
    """`(a, b)` with `arg = a + b*z` exactly (`a`, `b` free of z); anything else is refused."""
    nested = [n for n in sp.preorder_traversal(arg) if isinstance(n, _NOISY_NONSMOOTH) and n.has(_z)]
    e = sp.expand(arg) if not nested else arg
    a, b = e.coeff(_z, 0), e.coeff(_z, 1)
    if nested or a.has(_z) or b.has(_z) or not is_zero(sp.expand(e - a - b * _z)):
        why = (f"its argument contains {nested[0]}, a non-smooth function of the noise inside another (nested "
               "non-smooth functions of the noise are supported only as sign(Min(A, B) - d) or sign(Max(A, B) - d) "
               "with B - d deterministic and of known sign)") if nested else "its argument is not affine in the noise z"
        raise ExpectationError(
            f"cannot take the expectation of {what}: {why} (g = grad + sigma*z). The closed forms, and any rule "
            "registered with sdederive.register_expectation, need an argument a + b*z affine in z; rewrite the "
            "update so that it is."
        )
    return sp.simplify(a), sp.simplify(b)


def extract_atoms(exprs: dict[str, sp.Expr]) -> tuple[dict[str, sp.Expr], list[Atom]]:
    """Replace noise-dependent non-expandable sub-expressions by placeholder symbols.

    Returns the rewritten expressions and the atoms (identical sub-expressions share one).
    """
    out = {k: _rewrite_nonsmooth(e) for k, e in exprs.items()}
    atoms: dict[sp.Expr, Atom] = {}

    def visit(e: sp.Expr) -> None:
        for node in sp.preorder_traversal(e):
            if not (isinstance(node, sp.Function) and node.has(_z)) or node in atoms:
                continue
            if isinstance(node, sp.sign):
                a, b = _affine(node.args[0], node)
                atoms[node] = Atom(sp.Dummy(f"S{len(atoms)}", real=True), "sign", sp.sign, a, b)
                continue
            if len(node.args) == 1:
                arg = node.args[0]
                # a smooth function whose argument's noise vanishes as eta -> 0 is Taylor-expanded
                dz = sp.diff(arg, _z)
                lo = leading_order(dz)
                if lo is None or lo > 0:
                    continue
                if type(node) in _RULES:
                    a, b = _affine(arg, node)
                    atoms[node] = Atom(sp.Dummy(f"F{len(atoms)}", real=True), "rule", type(node), a, b)
                    continue
            raise ExpectationError(
                f"cannot take the expectation of {node}: it is a function of the noise z "
                "(g = grad + sigma*z) at leading order and no rule is registered for "
                f"{type(node).__name__}. Register one with sdederive.register_expectation("
                f"sympy.{type(node).__name__}, rule) where rule(noise, n, a, b, p) returns "
                "E[z**n * f(a + b*z)**p]."
            )

    for e in out.values():
        visit(e)
    # replace innermost-last: sort by size so that nested atoms are not broken
    repl = dict(sorted(((k, a.symbol) for k, a in atoms.items()), key=lambda kv: -sp.count_ops(kv[0])))
    out = {k: e.xreplace(repl) for k, e in out.items()}
    return out, list(atoms.values())


def expand_eta(expr: sp.Expr, order: int) -> dict[sp.Rational, sp.Expr]:
    """Coefficients of `expr` in powers of `eta` up to `eta**order` (negative powers kept).

    Powers may be fractional (`sqrt(eta)`).  Uses sympy's `series`.
    """
    if not expr.has(_eta):
        return {sp.S.Zero: expr} if not is_zero(expr) else {}
    return eta_series(expr, order)


def _split_eta(term: sp.Expr) -> tuple[sp.Expr, sp.Rational]:
    c, e = term.as_independent(_eta, as_Add=False)
    if e == 1:
        return c, sp.S.Zero
    base, p = e.as_base_exp()
    if base != _eta or not p.is_Rational:
        raise ExpectationError(f"unexpected dependence on eta in {term} (not a power of eta)")
    return c, sp.Rational(p)


def leading_order(expr: sp.Expr, upto: int = 4) -> sp.Rational | None:
    """Lowest power of `eta` with a nonzero coefficient (`None` if none up to `eta**upto`)."""
    if not expr.has(_eta):
        return None if is_zero(expr) else sp.S.Zero
    co = expand_eta(expr, upto)
    return min(co) if co else None


def _sign_of(b: sp.Expr, bounded: dict) -> sp.Expr:
    """sign(b), using that decays/interpolation weights lie in [0, 1) (`bounded` substitution)."""
    s = sp.sign(b)
    if isinstance(s, sp.sign):
        s2 = sp.sign(sp.simplify(b.subs(bounded)))
        if not isinstance(s2, sp.sign):
            return s2
    return s


class Expectation:
    """E[.] of polynomials in `z` and atom placeholders, under one noise model."""

    def __init__(self, noise: NoiseModel, atoms: list[Atom], bounded: dict, order: int,
                 names: dict | None = None) -> None:
        self.noise, self.atoms, self.bounded, self.order = noise, {a.symbol: a for a in atoms}, bounded, order
        # placeholders -> what they stand for, so that messages show the user's expressions
        self.names = {a.symbol: a.expr for a in atoms} | dict(names or {})
        self.conditions: set[str] = set()
        self._cache: dict = {}
        self._moments: dict = {}
        self._asym: dict = {}
        for a in atoms:
            if a.kind == "sign":
                r = sp.simplify(a.a / a.b)
                lo = leading_order(r, 2) if r.has(_eta) else (None if is_zero(r) else sp.S.Zero)
                if lo is not None and lo < 0:
                    # a/b -> +-inf: sign(a + b z) -> sign(a_0) with a_0 the leading term of a
                    a0 = expand_eta(a.a, 4)
                    self._asym[a.symbol] = sp.sign(a0[min(a0)])
                    if noise.name == "student-t":
                        self.conditions.add(
                            f"{a.expr} replaced by its deterministic limit; the error is O(eta**nu) under "
                            "Student-t noise"
                        )

    def _show(self, e: sp.Expr) -> str:
        return str(e.xreplace(self.names).xreplace(self.names))

    def moment(self, n: int) -> sp.Expr:
        self.conditions.update(self.noise.conditions(n))
        m = self._moments.get(n)
        if m is None:  # a symbolic Student-t moment simplifies gamma ratios: 30 ms each
            m = self._moments[n] = self.noise.moment(n)
        return m

    def _one(self, n: int, syms: tuple) -> sp.Expr:
        key = (n, syms)
        if key in self._cache:
            return self._cache[key]
        det = sp.S.One
        rest = []
        for s in syms:
            if s in self._asym:
                det *= self._asym[s]
            else:
                rest.append(self.atoms[s])
        if not rest:
            val = det * self.moment(n)
        elif len(rest) == 1 and rest[0].kind == "sign":
            a = rest[0]
            sb = _sign_of(a.b, self.bounded)
            r = a.a / a.b
            if n >= 1:
                self.conditions.update(self.noise.conditions(n))
            val = det * sb * self.noise.sign_moment(n, r)
        elif rest[0].kind == "rule" and all(a is rest[0] for a in rest):
            a = rest[0]
            if n >= 1:
                self.conditions.update(self.noise.conditions(n))
            val = det * _RULES[a.func](self.noise, n, a.a, a.b, len(rest))
        elif len(rest) == 2 and n == 0 and all(a.kind == "sign" for a in rest):
            # sign(z + r1) sign(z + r2) = 1 - 2*1{z between -r1 and -r2}: E = 1 - |s(r2) - s(r1)|
            a1, a2 = rest
            s1 = self.noise.sign_mean(a1.a / a1.b)
            s2 = self.noise.sign_mean(a2.a / a2.b)
            val = det * _sign_of(a1.b, self.bounded) * _sign_of(a2.b, self.bounded) * (1 - sp.Abs(s2 - s1))
        else:
            names = " * ".join(self._show(a.expr) for a in rest)
            raise ExpectationError(
                f"no closed form for E[z**{n} * {names}] (a product of several non-smooth functions of the "
                "same noise). Register a combined rule or rewrite the update."
            )
        self._cache[key] = val
        return val

    def __call__(self, poly: sp.Expr) -> sp.Expr:
        """E[poly] where `poly` is a polynomial in `z` and the atom placeholders."""
        poly = sp.expand(poly)
        if poly == 0:
            return sp.S.Zero
        groups: dict[tuple, sp.Expr] = {}
        gens = [_z, *self.atoms]
        for term in sp.Add.make_args(poly):
            coeff, dep = term.as_independent(*gens, as_Add=False)
            pw = dep.as_powers_dict() if dep != 1 else {}
            n = 0
            syms = []
            for base, p in pw.items():
                if not (p.is_Integer and p > 0):
                    raise ExpectationError(
                        f"cannot take the expectation of {self._show(term)}: the noise z (g = grad + sigma*z) enters "
                        "it through a non-polynomial function whose argument is random at order one (not small as "
                        "eta -> 0), so it cannot be Taylor-expanded, and it is not a sign/Abs/Max/Min with a closed "
                        "form. Rewrite the update, or scale its hyperparameters so that the noise inside is small."
                    )
                if base == _z:
                    n += int(p)
                elif base in self.atoms:
                    a = self.atoms[base]
                    if a.kind == "sign":
                        if int(p) % 2:
                            syms.append(base)
                    else:
                        syms.extend([base] * int(p))
                else:
                    raise ExpectationError(
                        f"cannot take the expectation of {self._show(base)}: a non-polynomial function of the noise "
                        "z remained after expansion. Register a rule with sdederive.register_expectation "
                        "(for a one-argument function of an argument affine in z), or rewrite the update."
                    )
            key = (n, tuple(sorted(syms, key=str)))
            groups[key] = groups.get(key, sp.S.Zero) + coeff
        total = sp.S.Zero
        for (n, syms), coeff in groups.items():
            total += coeff * self._one(n, syms)
        return total


def expect(expansion: dict, E: Expectation, order: int) -> dict:
    """Expectation of an eta-expansion `{p: poly}`, re-expanded in eta up to `order`."""
    out: dict = {}
    for p, poly in expansion.items():
        val = E(poly)
        if val.has(_eta):
            for p2, c in expand_eta(val, max(int(sp.ceiling(order - p)), 0)).items():
                out[p + p2] = out.get(p + p2, sp.S.Zero) + c
        elif not is_zero(val):
            out[p] = out.get(p, sp.S.Zero) + val
    return {p: c for p, c in out.items() if p <= order and not is_zero(c)}

"""A safe parser for the expression text of the files sdederive reads.

SDE JSON files (`sdederive.SDE.from_json`), problem files with `kind: custom` and the
`[problem]` table of a sweep grid hold expressions as text.  `sympy.sympify` would hand that text
to `eval`, so a shared file could run any code.  `parse_expr` never evaluates the text: it
parses it with `ast.parse` and builds the sympy expression itself from a whitelist:

* numbers: integer and float literals (`2`, `1/2` stays the exact `Rational(1, 2)`, `0.9`);
  no complex, boolean, string or other literals;
* `+ - * / **` and unary `+`/`-`;
* names: whatever the caller's `symbols` resolves (the notation's symbols, an SDE's own
  hyperparameters, `x_0 ... x_{d-1}`), plus the constants `pi` and `E`; never a name that
  starts with `_`;
* calls of the whitelisted functions by name, positional arguments only (tuples only as the
  parameter lists of `hyper`).

Everything else (attribute access, subscripts, lambdas, comprehensions, keyword arguments,
comparisons, strings, ...) is refused with `ExpressionError`.  The text
length, the nesting depth and the size of the numbers are bounded before sympy computes anything,
so a hostile file cannot hang the process or exhaust its memory (`9**9**9` is refused, not
computed).
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Callable, Mapping

import sympy as sp

from sdederive.errors import ExpressionError

__all__ = ["parse_expr", "SDE_FUNCTIONS", "OBJECTIVE_FUNCTIONS", "MAX_CHARS", "MAX_DEPTH", "IDENTIFIER"]

#: longest expression text accepted (characters)
MAX_CHARS = 20_000
#: deepest nesting of the expression tree accepted
MAX_DEPTH = 100
#: largest |numerator| / |denominator| of a numeric exponent (``x**1000`` is fine, ``x**10**6`` is not)
MAX_EXPONENT = 1000
#: largest exact number (bits of numerator or denominator) an expression may contain or produce
MAX_BITS = 1024
#: largest exact number (bits) under a root: sympy factors it to simplify ``sqrt(n)``, which costs
MAX_ROOT_BITS = 128
#: a name sdederive accepts for a symbol, a state or a hyperparameter: ASCII, not starting with ``_``
IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")


def _arity(lo: int, hi: int | None = -1) -> tuple[int, int | None]:
    """`(min, max)` argument counts; `hi=None`: no maximum; default: exactly `lo`."""
    return (lo, lo if hi == -1 else hi)


#: functions an SDE file may call: what :meth:`SDE.to_json` prints for the built-in optimizers
#: (Student-t moments need ``gamma`` and ``hyper``, sign-based methods ``sign``, ``erf`` and
#: ``DiracDelta``) and the functions the kernel printers lower.  name -> (sympy function, (min, max) args)
SDE_FUNCTIONS: dict[str, tuple[Callable, tuple[int, int | None]]] = {
    "sqrt": (sp.sqrt, _arity(1)),
    "exp": (sp.exp, _arity(1)),
    "log": (sp.log, _arity(1)),
    "sin": (sp.sin, _arity(1)),
    "cos": (sp.cos, _arity(1)),
    "tanh": (sp.tanh, _arity(1)),
    "atan": (sp.atan, _arity(1)),
    "erf": (sp.erf, _arity(1)),
    "erfc": (sp.erfc, _arity(1)),
    "sign": (sp.sign, _arity(1)),
    "Abs": (sp.Abs, _arity(1)),
    "abs": (sp.Abs, _arity(1)),
    "Min": (sp.Min, _arity(1, None)),
    "Max": (sp.Max, _arity(1, None)),
    "Heaviside": (sp.Heaviside, _arity(1, 2)),
    "DiracDelta": (sp.DiracDelta, _arity(1, 2)),
    "gamma": (sp.gamma, _arity(1)),
    "hyper": (sp.hyper, _arity(3)),
}

#: functions a custom objective ``f`` may use: smooth ones whose first and second derivatives the
#: kernel printers lower (``Abs``, ``sign``, ``Min``/``Max`` would need ``DiracDelta`` in the Hessian)
OBJECTIVE_FUNCTIONS = {k: SDE_FUNCTIONS[k] for k in ("sqrt", "exp", "log", "sin", "cos", "tanh", "atan", "erf",
                                                     "erfc")}

_CONSTANTS = {"pi": sp.pi, "E": sp.E}

#: arguments of these must stay small numbers when they are numbers (sympy evaluates gamma(n) = (n-1)!)
_SMALL_NUMERIC_ARGS = {"gamma": 100}


def _node_name(node: ast.AST) -> str:
    return {ast.Attribute: "attribute access (a.b)", ast.Subscript: "subscript (a[b])", ast.Lambda: "lambda",
            ast.ListComp: "comprehension", ast.SetComp: "comprehension", ast.DictComp: "comprehension",
            ast.GeneratorExp: "comprehension", ast.Compare: "comparison", ast.BoolOp: "and/or",
            ast.IfExp: "conditional expression", ast.NamedExpr: "assignment (:=)", ast.Starred: "*unpacking",
            ast.JoinedStr: "f-string", ast.List: "list", ast.Dict: "dict", ast.Set: "set",
            ast.Tuple: "tuple", ast.Await: "await", ast.Yield: "yield", ast.YieldFrom: "yield",
            ast.Slice: "slice"}.get(type(node), type(node).__name__)


class _Builder:
    def __init__(self, text: str, resolve: Callable[[str], sp.Basic | None], functions: Mapping, what: str,
                 allowed: str):
        self.text, self.resolve, self.functions, self.what, self.allowed = text, resolve, functions, what, allowed

    def fail(self, problem: str) -> ExpressionError:
        shown = self.text if len(self.text) <= 120 else self.text[:117] + "..."
        return ExpressionError(
            f"{self.what} = {shown!r}: {problem}; allowed: numbers, + - * / ** and parentheses, "
            f"{self.allowed}, and the functions {', '.join(sorted(self.functions)) or '(none)'}"
        )

    def number_ok(self, e: sp.Basic, where: str) -> sp.Basic:
        if isinstance(e, sp.Rational) and max(abs(e.p).bit_length(), abs(e.q).bit_length()) > MAX_BITS:
            raise self.fail(f"{where} is a number with more than {MAX_BITS} bits")
        return e

    def build(self, node: ast.AST, depth: int):
        if depth > MAX_DEPTH:
            raise self.fail(f"nesting deeper than {MAX_DEPTH} levels")
        if isinstance(node, ast.Expression):
            return self.build(node.body, depth + 1)
        if isinstance(node, ast.Constant):
            return self.constant(node)
        if isinstance(node, ast.Name):
            return self.name(node.id)
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.UAdd):
                return self.scalar(self.build(node.operand, depth + 1))
            if isinstance(node.op, ast.USub):
                return self.number_ok(-self.scalar(self.build(node.operand, depth + 1)), "a negation")
            raise self.fail(f"the operator {type(node.op).__name__} (~, not) is not allowed")
        if isinstance(node, ast.BinOp):
            if isinstance(node.op, (ast.Add, ast.Sub)):
                return self.chain(node, depth, (ast.Add, ast.Sub))
            if isinstance(node.op, (ast.Mult, ast.Div)):
                return self.chain(node, depth, (ast.Mult, ast.Div))
            if isinstance(node.op, ast.Pow):
                a = self.scalar(self.build(node.left, depth + 1))
                b = self.scalar(self.build(node.right, depth + 1))
                return self.number_ok(self.power(a, b), "a power")
            raise self.fail(f"the operator {type(node.op).__name__} is not allowed (only + - * / **)")
        if isinstance(node, ast.Call):
            return self.call(node, depth)
        raise self.fail(f"{_node_name(node)} is not allowed")

    def chain(self, node: ast.BinOp, depth: int, ops: tuple) -> sp.Expr:
        """A left-associated run `a + b - c ...` or `a * b / c ...`, combined left to right as Python
        (and `sympify`) would, but without recursion: a long sum does not count as nesting."""
        rhs = []
        while isinstance(node, ast.BinOp) and isinstance(node.op, ops):
            rhs.append((node.op, node.right))
            node = node.left
        out = self.scalar(self.build(node, depth + 1))
        for op, r in reversed(rhs):
            e = self.scalar(self.build(r, depth + 1))
            if isinstance(op, ast.Add):
                out = out + e
            elif isinstance(op, ast.Sub):
                out = out - e
            elif isinstance(op, ast.Mult):
                out = out * e
            else:
                if e == 0:
                    raise self.fail("division by zero")
                out = out / e
            out = self.number_ok(out, "a result")
        return out

    @staticmethod
    def scalar(e):
        if isinstance(e, tuple):
            raise TypeError("a tuple is only allowed as a parameter list of hyper(...)")
        return e

    def constant(self, node: ast.Constant):
        v = node.value
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            kind = "complex number" if isinstance(v, complex) else type(v).__name__
            raise self.fail(f"the literal {v!r} ({kind}) is not allowed (only real numbers)")
        if isinstance(v, int):
            return self.number_ok(sp.Integer(v), f"the literal {v}")
        if not math.isfinite(v):
            raise self.fail(f"the literal {ast.get_source_segment(self.text, node)!r} is not a finite number")
        seg = (ast.get_source_segment(self.text, node) or repr(v)).replace("_", "")
        if len(seg) > 64:
            raise self.fail(f"the literal {seg[:20]}... has more than 64 characters")
        try:
            return sp.Float(seg)
        except (ValueError, TypeError):
            return sp.Float(repr(v))

    def name(self, name: str):
        if name.startswith("_") or not IDENTIFIER.match(name):
            raise self.fail(f"the name {name!r} is not allowed (names start with a letter; no '_' prefix)")
        if name in self.functions and self.resolve(name) is None:
            raise self.fail(f"the function name {name!r} is used without arguments")
        s = self.resolve(name)
        if s is None:
            raise self.fail(f"unknown name {name!r}")
        return s

    def power(self, a, b):
        if b.is_number:
            if isinstance(b, sp.Rational):
                size = max(abs(b.p), abs(b.q))
            else:
                v = sp.N(b, 15)
                if not isinstance(v, sp.Float):
                    raise self.fail(f"the exponent {sp.sstr(b)[:40]} is not a real number")
                size = abs(float(v))
            if not size <= MAX_EXPONENT:
                raise self.fail(f"the numeric exponent {sp.sstr(b)[:40]} is too large (numerator, denominator and "
                                f"value at most {MAX_EXPONENT})")
            if isinstance(a, sp.Rational) and isinstance(b, sp.Rational):
                bits = max(abs(a.p).bit_length(), a.q.bit_length())
                if bits * abs(b.p) > MAX_BITS:
                    raise self.fail(f"the power {sp.sstr(a)[:40]}**{sp.sstr(b)} has more than {MAX_BITS} bits")
                if b.q != 1 and bits > MAX_ROOT_BITS:
                    raise self.fail(f"the root {sp.sstr(a)[:40]}**({sp.sstr(b)}) of a number with more than "
                                    f"{MAX_ROOT_BITS} bits is not allowed")
                if a == 0 and b.is_negative:
                    raise self.fail("division by zero (0 to a negative power)")
        return a**b

    def call(self, node: ast.Call, depth: int):
        f = node.func
        if not isinstance(f, ast.Name):
            raise self.fail(f"only whitelisted functions called by name may be called, not {_node_name(f)}")
        name = f.id
        if name not in self.functions:
            raise self.fail(f"the function {name!r} is not allowed")
        if node.keywords:
            raise self.fail(f"{name}(...) with keyword arguments is not allowed")
        fn, (lo, hi) = self.functions[name]
        n = len(node.args)
        if n < lo or (hi is not None and n > hi):
            want = f"{lo}" if lo == hi else (f"{lo} or more" if hi is None else f"{lo} to {hi}")
            raise self.fail(f"{name}(...) takes {want} argument(s), got {n}")
        args = []
        for i, a in enumerate(node.args):
            if isinstance(a, ast.Tuple) and name == "hyper" and i < 2:
                if len(a.elts) > 16:
                    raise self.fail("hyper(...) takes at most 16 parameters per list")
                args.append(tuple(self.scalar(self.build(e, depth + 2)) for e in a.elts))
            else:
                args.append(self.scalar(self.build(a, depth + 1)))
        limit = _SMALL_NUMERIC_ARGS.get(name)
        if limit is not None:
            for a in args:
                if a.is_number and (not a.is_real or abs(float(sp.N(a, 15))) > limit):
                    raise self.fail(f"{name}({sp.sstr(a)[:40]}) with a numeric argument beyond {limit} is not allowed")
        if name == "hyper" and not (isinstance(args[0], tuple) and isinstance(args[1], tuple)):
            raise self.fail("hyper(a, b, z) takes two tuples of parameters, e.g. hyper((1/2, 1), (3/2,), z)")
        if name == "DiracDelta" and n == 2 and not (isinstance(args[1], sp.Integer) and 0 <= args[1] <= 16):
            raise self.fail("DiracDelta(x, k) needs an integer derivative order 0 <= k <= 16")
        if name == "Heaviside" and n == 2 and not args[1].is_number:
            raise self.fail("Heaviside(x, h0) needs a number h0")
        if name == "sqrt":
            return self.number_ok(self.power(args[0], sp.S.Half), "a square root")
        return self.number_ok(fn(*args), f"{name}(...)")


def parse_expr(text: str, *, symbols: Mapping[str, sp.Basic] | Callable[[str], sp.Basic | None],
               functions: Mapping = SDE_FUNCTIONS, what: str = "expression",
               allowed: str = "the notation's symbols", constants: bool = True) -> sp.Expr:
    """Parse `text` into a sympy expression without evaluating it as Python (see the module docstring).

    Parameters
    ----------
    text
        the expression, e.g. `"-m/(sqrt(u) + eps0)"`.
    symbols
        name -> sympy object, or a function of the name returning the object or `None`
        (an unknown name).  The caller decides which names exist and with which assumptions
        (`sdederive.symbols.sym`, so that the symbols compare equal to the engine's).
    functions
        the callable names, `name -> (sympy function, (min args, max args or None))`.
    what
        the field the text came from, for error messages (`"drift of x"`).
    allowed
        how to describe the allowed names in error messages.
    constants
        also accept `pi` and `E` (when `symbols` does not resolve them).

    Raises
    ------
    ExpressionError
        the text is not an expression of the grammar above, or is too long, too deep
        or has too large numbers.  The message names the field, the offending part and what is allowed.
    """
    lookup = symbols.get if isinstance(symbols, Mapping) else symbols

    def resolve(name: str):
        s = lookup(name)
        if s is None and constants:
            s = _CONSTANTS.get(name)
        return s

    b = _Builder(text if isinstance(text, str) else repr(text), resolve, functions, what, allowed)
    if not isinstance(text, str):
        raise b.fail(f"expected a string, got {type(text).__name__}")
    if len(text) > MAX_CHARS:
        raise ExpressionError(f"{what}: the expression has {len(text)} characters; allowed: at most {MAX_CHARS}")
    if not text.strip():
        raise b.fail("the expression is empty")
    bad = sorted({c for c in text if not (c.isascii() and (c.isprintable() or c in " \t"))})
    if bad:
        raise b.fail(f"the character(s) {''.join(bad)!r} are not allowed (printable ASCII only)")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        raise b.fail(f"not an expression ({e.msg})") from None
    except (RecursionError, MemoryError):
        raise b.fail("it is nested or chained too deeply for Python's parser") from None
    except ValueError as e:  # e.g. an integer literal beyond Python's 4300-digit limit
        raise b.fail(f"not an expression ({str(e)[:100]})") from None
    b.text = text.strip()
    try:
        out = b.build(tree, 0)
    except ExpressionError:
        raise
    except RecursionError:
        raise b.fail(f"nesting deeper than {MAX_DEPTH} levels") from None
    except (TypeError, ValueError, ArithmeticError, AttributeError, sp.SympifyError) as e:
        raise b.fail(f"it does not build a valid expression ({type(e).__name__}: {str(e)[:100]})") from None
    if isinstance(out, tuple) or not isinstance(out, sp.Expr):
        raise b.fail("the result is not a scalar expression")
    if out.has(sp.zoo, sp.nan, sp.oo, -sp.oo):
        raise b.fail("the expression is infinite or undefined (division by zero?)")
    return out

"""One sympy symbol per quantity, named as in `docs/notation.md`.

Every module asks this registry for its symbols, so that two parts of the code (and a JSON
round-trip) always meet the *same* `sympy.Symbol` with the same assumptions.  sympy
treats `Symbol("eta")` and `Symbol("eta", positive=True)` as different objects, which is the
classic source of "the expressions print the same but do not compare equal" bugs.

Assumptions encode only facts that hold for every valid value (`eta > 0`, `sigma > 0`,
`v >= 0`): they let sympy simplify `sqrt(eta**2*sigma**2)` to `eta*sigma`.
"""

from __future__ import annotations

import sympy as sp

__all__ = ["sym", "symbols", "NOISE", "KNOWN", "describe", "sympify_expr", "locals_for"]

#: name -> (assumptions, meaning).  Names and meanings follow docs/notation.md; names marked
#: "(sdederive)" are this package's documented additions.
KNOWN: dict[str, tuple[dict, str]] = {
    # state and time
    "x": ({"real": True}, "the parameter (one coordinate)"),
    "m": ({"real": True}, "first-moment / momentum state"),
    "v": ({"nonnegative": True}, "second-moment state or accumulated squared gradients"),
    "u": (
        {"nonnegative": True},
        "(sdederive) rescaled second-moment state u = eta**2 * v (noise-dominated and "
        "accumulator regimes)",
    ),
    "k": ({"integer": True, "nonnegative": True}, "discrete step counter"),
    "t": ({"positive": True}, "continuous time of the SDE"),
    "tau": ({"positive": True}, "continuous time per discrete step"),
    # gradient and noise
    "g": ({"real": True}, "(sdederive) the stochastic gradient coordinate g = grad + sigma*z"),
    "z": ({"real": True}, "(sdederive) standardized noise: mean 0, variance 1 (or a Student-t variable)"),
    "grad": ({"real": True}, "true gradient coordinate df/dx_i"),
    "sigma": ({"positive": True}, "gradient-noise std (or Student-t scale) at the batch size used"),
    "sigma1": (
        {"positive": True},
        "(sdederive) per-example (batch size 1) noise std; sigma = sigma1/sqrt(B)",
    ),
    "nu": ({"positive": True}, "Student-t degrees of freedom"),
    "B": ({"positive": True}, "batch size"),
    "kappa": ({"positive": True}, "batch-size multiplier B -> kappa*B"),
    "hess": ({"real": True}, "diagonal Hessian entry d grad / dx"),
    "h": ({"positive": True}, "(sdederive) curvature of a diagonal quadratic f = h*x**2/2"),
    # hyperparameters
    "eta": ({"positive": True}, "learning rate"),
    "beta": ({"nonnegative": True}, "RMSprop decay of v"),
    "beta1": ({"nonnegative": True}, "first decay (Adam, AdamW, Lion)"),
    "beta2": ({"nonnegative": True}, "second decay (Adam, AdamW, Lion)"),
    "mu": ({"nonnegative": True}, "heavy-ball momentum coefficient"),
    "eps": ({"nonnegative": True}, "denominator guard of adaptive methods"),
    "wd": ({"nonnegative": True}, "decoupled weight decay coefficient"),
    "rho": ({"positive": True}, "scaled decay (1 - beta)/eta"),
    "rho1": ({"positive": True}, "scaled decay (1 - beta1)/eta"),
    "rho2": ({"positive": True}, "scaled decay (1 - beta2)/eta"),
    "c": ({"positive": True}, "scaled decay (1 - beta)/eta**2"),
    "c1": ({"positive": True}, "scaled decay (1 - beta1)/eta**2"),
    "c2": ({"positive": True}, "scaled decay (1 - beta2)/eta**2"),
    "sigma0": ({"positive": True}, "sigma*eta (noise-dominated regime)"),
    "eps0": ({"nonnegative": True}, "eps*eta (noise-dominated regime)"),
}

_cache: dict[tuple[str, tuple], sp.Symbol] = {}


def sym(name: str, **assumptions) -> sp.Symbol:
    """The canonical symbol for `name`.

    Known names get their registered assumptions (extra `assumptions` are refused for them, so
    there is never a second `eta`).  Unknown names (an optimizer's own hyperparameters or
    states) default to `real=True` unless assumptions are given.
    """
    if name in KNOWN:
        if assumptions and assumptions != KNOWN[name][0]:
            raise ValueError(
                f"symbol {name!r} is reserved by docs/notation.md with assumptions {KNOWN[name][0]}; "
                f"got {assumptions}. Use another name for a different quantity."
            )
        assumptions = KNOWN[name][0]
    elif not assumptions:
        assumptions = {"real": True}
    key = (name, tuple(sorted(assumptions.items())))
    s = _cache.get(key)
    if s is None:
        s = _cache[key] = sp.Symbol(name, **assumptions)
    return s


def spelling(s: sp.Symbol) -> str:
    """The call that builds `s` from the registry: `sd.sym('gamma', positive=True)`; for a symbol
    the registry did not build, the call building one of that name with the default assumptions."""
    if s.name in KNOWN:
        return f"sd.sym({s.name!r})"
    for (name, assumptions), canon in _cache.items():
        if canon is s and assumptions != (("real", True),):
            return f"sd.sym({name!r}, " + ", ".join(f"{k}={v!r}" for k, v in assumptions) + ")"
    return f"sd.sym({s.name!r})"


def is_registry_symbol(s: sp.Basic) -> bool:
    """True if `s` was built by `sym` (with any assumptions)."""
    return isinstance(s, sp.Symbol) and any(canon is s for canon in _cache.values())


def symbols(names: str) -> tuple[sp.Symbol, ...]:
    """`symbols("x m v")` -> the canonical symbols, in order."""
    return tuple(sym(n) for n in names.split())


def describe(name: str) -> str:
    """Meaning of a NOTATION name ('' if unknown)."""
    return KNOWN.get(name, ({}, ""))[1]


#: the symbols a noise model contributes
NOISE = {n: sym(n) for n in ("grad", "sigma", "z", "nu", "B", "sigma1")}


def locals_for(names, assumptions: dict[str, dict] | None = None) -> dict:
    """A `sympify` locals dict mapping every name to its canonical symbol."""
    assumptions = assumptions or {}
    out = {}
    for n in names:
        out[n] = sym(n, **assumptions.get(n, {})) if n not in KNOWN else sym(n)
    return out


def sympify_expr(text: str, names, assumptions: dict[str, dict] | None = None) -> sp.Expr:
    """Parse an expression string written with NOTATION names into canonical symbols.

    The text is never evaluated: it goes through the safe parser of `sdederive._safe_expr`
    (numbers, `+ - * / **`, names, whitelisted functions).  `names` get their canonical symbols
    (`assumptions` for the non-notation ones); other identifiers become `sym` symbols, and
    `pi`/`E` are the constants unless listed in `names`."""
    from sdederive._safe_expr import parse_expr

    loc = locals_for(names, assumptions)
    return parse_expr(text, symbols=lambda n: loc[n] if n in loc else (None if n in ("pi", "E") else sym(n)))

"""Optimizer specs: the discrete one-step update of coordinate-wise states.

An `Optimizer` holds, for every state (the parameter `x` and auxiliary states such as
`m`, `v`), its value after one step as a sympy expression of the current states, the
stochastic gradient `g`, the 0-based step counter `k` and the hyperparameters.  Build one
from transforms with `chain`, or write the update directly with `from_update`:

    import sympy as sp, sdederive as sd
    x, g, m = sd.symbols("x g m")
    beta, eta = sd.sym("beta"), sd.sym("eta")
    m1 = beta*m + (1 - beta)*g
    opt = sd.from_update("ema_sign", {"m": m1, "x": x - eta*sp.sign(m1)},
                         hypers={"eta": (1e-3, "lr"), "beta": (0.9, "decay")})

Built-ins (PyTorch defaults where PyTorch has the optimizer): `sgd`, `sgd_momentum`,
`signsgd`, `signum`, `rmsprop`, `rmspropw`, `adam`, `adamw`, `adagrad`, `lion`;
from their papers: `amsgrad`, `sgd_clip` (per-coordinate clipping), `adabelief`, `qhadam`,
and `adan` (a lagged-gradient state, see `adan`).
"""

from __future__ import annotations

import hashlib
import inspect
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import sympy as sp
from sympy.printing.str import StrPrinter

from sdederive import _json
from sdederive._safe_expr import IDENTIFIER, SDE_FUNCTIONS, parse_expr
from sdederive.errors import HyperparameterError, SdederiveError, SpecError, UnknownNameError
from sdederive.spec import transforms as T
from sdederive.spec.hyper import KINDS, Hyper, check_value
from sdederive.spec.kinds import HyperKind, StateKind
from sdederive.spec.transforms import Context, StateDecl, Transform
from sdederive.symbols import is_registry_symbol, spelling, sym

__all__ = ["Optimizer", "chain", "from_update", "get", "names", "BUILTINS", "UNDERIVABLE", "HyperKind", "StateKind"]

_X, _G, _K = sym("x"), sym("g"), sym("k")


@dataclass(frozen=True)
class Optimizer:
    """A coordinate-wise optimizer: `update[s]` is the state `s` after one step.

    Attributes
    ----------
    name
        registry name.
    hypers
        hyperparameters, with defaults and allowed ranges.
    states
        auxiliary states (`x` excluded), with their initial values.
    update
        `((state, expr), ...)` with `x` last; expressions in the canonical symbols
        `x, g, k`, the states and the hyperparameters.
    natural_regime
        the regime `sdederive.derive` uses when none is given.
    """

    name: str
    hypers: tuple[Hyper, ...]
    states: tuple[StateDecl, ...]
    update: tuple[tuple[str, sp.Expr], ...]
    natural_regime: str = "sgd"
    doc: str = ""
    transforms: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        _validate(self)

    # -- views -------------------------------------------------------------------------------
    @property
    def hyper(self) -> dict[str, Hyper]:
        return {h.name: h for h in self.hypers}

    @property
    def defaults(self) -> dict[str, float]:
        return {h.name: h.default for h in self.hypers if h.default is not None}

    @property
    def state_names(self) -> tuple[str, ...]:
        """All states, parameter first: `("x", "m", "v")`."""
        return ("x",) + tuple(s.name for s in self.states)

    @property
    def updates(self) -> dict[str, sp.Expr]:
        return dict(self.update)

    def state_decl(self, name: str) -> StateDecl:
        for s in self.states:
            if s.name == name:
                return s
        raise KeyError(name)

    def with_defaults(self, **values) -> Optimizer:
        """A copy with other default hyperparameters (each value is range-checked)."""
        hyp = self.hyper
        for k in values:
            if k not in hyp:
                raise UnknownNameError(f"hyperparameter of {self.name}", k, hyp)
        new = tuple(h.with_default(values[h.name]) if h.name in values else h for h in self.hypers)
        return Optimizer(self.name, new, self.states, self.update, self.natural_regime, self.doc, self.transforms)

    def check_hyper(self, values: Mapping[str, object]) -> None:
        """Range-check numeric hyperparameter values (unknown names are refused)."""
        hyp = self.hyper
        for k, v in values.items():
            if k not in hyp:
                raise UnknownNameError(f"hyperparameter of {self.name}", k, hyp)
            check_value(k, hyp[k].kind, v)

    def fingerprint(self) -> str:
        """Content hash of the spec (update rule, hyperparameter roles, states)."""
        text = repr((self.name, [(h.name, h.kind.value) for h in self.hypers],
                     [(s.name, s.kind.value, s.init) for s in self.states],
                     [(k, sp.srepr(e)) for k, e in self.update]))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        lines = [f"Optimizer {self.name!r} (natural regime: {self.natural_regime})"]
        for k, e in self.update:
            lines.append(f"  {k}_(k+1) = {e}")
        lines.append("  defaults: " + ", ".join(f"{k}={v:g}" for k, v in self.defaults.items()))
        return "\n".join(lines)

    # -- JSON ----------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The optimizer as plain JSON data (schema in `docs/notation.md`, "Optimizer JSON").

        Expressions are written as text that `sdederive._safe_expr.parse_expr` reads back to the
        same sympy expression (floats with all their digits); an update that text cannot hold (a
        function outside the parser's whitelist, a float of another precision) raises
        `SpecError` naming the state and the part that is not serializable.
        """
        _check_writable(self)
        update = []
        for state, expr in self.update:
            text = _expr_text(expr)
            try:
                back = _parse_update(text, self.states, self.hypers, f"update of {state}")
            except SdederiveError as err:
                back, why = None, str(err)
            else:
                why = "its text does not read back as the same expression"
            if back != expr:
                raise SpecError(
                    f"optimizer {self.name!r}: the update of {state!r} cannot be written as JSON: "
                    f"{_unserializable(expr) or why}. Allowed in an optimizer JSON: numbers, + - * / **, the "
                    f"states, hyperparameters, x, g, k and the functions {', '.join(sorted(SDE_FUNCTIONS))}"
                )
            update.append({"state": state, "expr": text})
        for s in self.states:
            if not _is_number(s.init):
                raise SpecError(f"optimizer {self.name!r}: the initial value {s.init!r} of state {s.name!r} cannot "
                                "be written as JSON; allowed: a finite number")
        for h in self.hypers:
            if h.default is not None and not _is_number(h.default):
                raise SpecError(f"optimizer {self.name!r}: the default {h.default!r} of hyperparameter {h.name!r} "
                                "cannot be written as JSON; allowed: a finite number or None")
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "name": self.name,
            "natural_regime": self.natural_regime,
            "doc": self.doc or "",
            "transforms": list(self.transforms),
            "hypers": [{"name": h.name, "kind": h.kind.value, "default": None if h.default is None else h.default,
                        "doc": h.doc} for h in self.hypers],
            "states": [{"name": s.name, "kind": s.kind.value, "init": s.init, "doc": s.doc} for s in self.states],
            "update": update,
        }

    def to_json(self, indent: int | None = 2) -> str:
        """`to_dict` as JSON text, byte-reproducible (sorted keys, no NaN)."""
        return _json.dumps(self.to_dict(), sort_keys=True, indent=indent)

    @classmethod
    def from_dict(cls, data: Mapping) -> Optimizer:
        """Rebuild an optimizer from `to_dict` data (a file's content: checked, never evaluated).

        Every expression goes through `sdederive._safe_expr.parse_expr` with the optimizer's own
        symbols only (`x`, `g`, `k`, its states and hyperparameters); names, kinds and numbers
        are checked.  Anything else raises `SpecError` naming the field and
        what is allowed.
        """
        return _from_dict(cls, data)

    @classmethod
    def from_json(cls, text: str | bytes) -> Optimizer:
        """Rebuild an optimizer from `to_json` text (see `from_dict`)."""
        if isinstance(text, (bytes, bytearray)):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as e:
                raise _spec_err(f"the text is not UTF-8 ({e})") from None
        if not isinstance(text, str):
            raise _spec_err(f"expected JSON text; got {type(text).__name__}")
        if len(text) > _MAX_TEXT:
            raise _spec_err(f"the text has {len(text)} characters; allowed: at most {_MAX_TEXT}")
        try:
            data = _json.loads_strict(text)
        except _json.JSONTextError as e:
            raise _spec_err(f"not valid JSON: {e}") from None
        return _from_dict(cls, data)

    def numpy_step(self) -> Callable:
        """A numpy function `step(states: dict, g, k, hyper: dict) -> dict` evaluating one update.

        Generated from the same sympy update with `lambdify` (vectorised over arrays).  Used by
        the one-step Monte Carlo check and as a reference discrete simulator.
        """
        args = [_X, _G, _K] + [s.symbol for s in self.states] + [h.symbol for h in self.hypers]
        fns = {k: sp.lambdify(args, e, modules="numpy") for k, e in self.update}
        names = [s.name for s in self.states]
        hnames = [h.name for h in self.hypers]

        def step(states: Mapping, g, k, hyper: Mapping) -> dict:
            h = {**self.defaults, **hyper}
            missing = [n for n in hnames if n not in h]
            if missing:
                raise HyperparameterError(f"{self.name}: no value for hyperparameter(s) {missing}")
            self.check_hyper(h)
            vals = [states["x"], g, k] + [states[n] for n in names] + [h[n] for n in hnames]
            return {key: f(*vals) for key, f in fns.items()}

        return step


def _validate(opt: Optimizer) -> None:
    upd = dict(opt.update)
    if "x" not in upd:
        raise SpecError(f"optimizer {opt.name!r} has no update of the parameter 'x'; updates given: {list(upd)}")
    declared = {s.name for s in opt.states}
    extra = set(upd) - declared - {"x"}
    if extra:
        raise SpecError(
            f"optimizer {opt.name!r} updates undeclared state(s) {sorted(extra)}; declared states: "
            f"{sorted(declared)} (declare them in `init`)"
        )
    allowed = {_X, _G, _K} | {s.symbol for s in opt.states} | {h.symbol for h in opt.hypers}
    allowed_names = sorted(str(a) for a in allowed)
    for name, expr in opt.update:
        if not isinstance(expr, sp.Basic):
            raise SpecError(f"update of {name!r} in {opt.name!r} is {expr!r}, not a sympy expression")
        bad = sorted(str(s) for s in expr.free_symbols - allowed)
        if bad:
            same_name = [b for b in bad if b in allowed_names]
            canon = {str(a): a for a in allowed}
            hint = (
                f" (a symbol of that name exists with other assumptions: write "
                f"{', '.join(spelling(canon[b]) for b in same_name)})"
                if same_name
                else " (a state used before it is defined? declare it in `init`, or a hyperparameter in `hypers`)"
            )
            raise SpecError(
                f"update of {name!r} in optimizer {opt.name!r} uses {bad}, which is neither a state "
                f"{sorted(declared | {'x'})}, a hyperparameter {sorted(h.name for h in opt.hypers)}, the "
                f"gradient 'g' nor the step counter 'k'{hint}"
            )
    if upd["x"] == _X:
        raise SpecError(f"optimizer {opt.name!r}: the update of 'x' leaves x unchanged")
    if not any(e.has(_G) for e in upd.values()):
        raise SpecError(
            f"optimizer {opt.name!r}: no update depends on the gradient 'g'; an optimizer must use it"
        )
    if not upd["x"].has(_G) and not any(upd["x"].has(s.symbol) for s in opt.states):
        raise SpecError(f"optimizer {opt.name!r}: the update of 'x' depends neither on g nor on any state")
    seen = set()
    for h in opt.hypers:
        if h.name in seen:
            raise SpecError(f"optimizer {opt.name!r}: hyperparameter {h.name!r} declared twice")
        seen.add(h.name)


# -- JSON form ------------------------------------------------------------------------------------
_FORMAT = "sdederive-optimizer"
_VERSION = 1
_MAX_TEXT = 2_000_000
_MAX_ENTRIES = 64
_MAX_DOC = 20_000
#: an optimizer or regime name: letters, digits and ``_ . + -`` (and inner spaces), as in an SDE JSON
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+\- ]{0,99}\Z")
_KEYS_REQUIRED = ("name", "hypers", "states", "update")
_KEYS_OPTIONAL = ("format", "version", "natural_regime", "doc", "transforms")


class _TextPrinter(StrPrinter):
    """`str` of an expression, with every float written with all its digits (`repr` of the double)."""

    def _print_Float(self, expr: sp.Float) -> str:
        return repr(float(expr))


def _expr_text(e: sp.Expr) -> str:
    return _TextPrinter().doprint(e)


def _unserializable(e: sp.Expr) -> str:
    """What of `e` the optimizer JSON cannot hold ('' if nothing obvious)."""
    funcs = sorted({type(f).__name__ for f in e.atoms(sp.Function) if type(f).__name__ not in SDE_FUNCTIONS})
    if funcs:
        return f"it uses {', '.join(funcs)}, which the safe expression parser does not read"
    odd = sorted({str(f) for f in e.atoms(sp.Float) if f._prec != 53})
    if odd:
        return f"it holds the float(s) {', '.join(odd)} with a precision other than double's 53 bits"
    if e.has(sp.I, sp.oo, -sp.oo, sp.zoo, sp.nan):
        return "it holds a complex or infinite number"
    return ""


def _check_writable(opt: Optimizer) -> None:
    """Refuse, at writing time, what `_from_dict` would refuse at reading time (names, docs)."""
    def bad(what: str, v, allowed: str) -> SpecError:
        return SpecError(f"optimizer {opt.name!r}: {what} {str(v)[:60]!r} cannot be written as JSON; allowed: {allowed}")

    label = "1 to 100 letters, digits, '_', '.', '+', '-' or inner spaces, starting with a letter or digit"
    if not isinstance(opt.name, str) or not _LABEL.match(opt.name):
        raise bad("the name", opt.name, label)
    if not isinstance(opt.natural_regime, str) or not _LABEL.match(opt.natural_regime):
        raise bad("the natural regime", opt.natural_regime, "a regime name (" + label + "); register a custom "
                  "sd.Regime with sd.regimes.register and give its name")
    for what, n in [("state", s.name) for s in opt.states] + [("hyperparameter", h.name) for h in opt.hypers]:
        if not isinstance(n, str) or not IDENTIFIER.match(n) or len(n) > 64:
            raise bad(f"the {what} name", n, "an identifier of letters, digits and '_' (at most 64 characters)")
    docs = [opt.doc or ""] + [s.doc for s in opt.states] + [h.doc for h in opt.hypers]
    if any(not isinstance(d, str) or len(d) > _MAX_DOC for d in docs):
        raise bad("a doc string", next(d for d in docs if not isinstance(d, str) or len(d) > _MAX_DOC),
                  f"strings of at most {_MAX_DOC} characters")
    if len(opt.states) > _MAX_ENTRIES or len(opt.hypers) > _MAX_ENTRIES or len(opt.transforms) > _MAX_ENTRIES:
        raise bad("the number of states, hyperparameters or transforms", len(opt.states), f"at most {_MAX_ENTRIES}")
    for t in opt.transforms:
        if not isinstance(t, str) or not IDENTIFIER.match(t) or len(t) > 64:
            raise bad("the transform name", t, "an identifier")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _spec_err(msg: str) -> SpecError:
    return SpecError(f"optimizer JSON: {msg} (see docs/notation.md, \"Optimizer JSON\")")


def _parse_update(text: str, states, hypers, what: str) -> sp.Expr:
    """`text` as an update expression in the optimizer's own symbols (floats as doubles)."""
    names = {"x": sym("x"), "g": sym("g"), "k": sym("k")}
    names |= {s.name: s.symbol for s in states} | {h.name: h.symbol for h in hypers}
    e = parse_expr(text, symbols=names, what=f"optimizer JSON {what}",
                   allowed="x, g, k and the optimizer's states and hyperparameters")
    floats = {f: sp.Float(float(f)) for f in e.atoms(sp.Float) if f._prec != 53}
    return e.xreplace(floats) if floats else e


def _from_dict(cls, d) -> Optimizer:
    if not isinstance(d, Mapping):
        raise _spec_err(f"the top level must be an object; got {type(d).__name__}")
    missing = [k for k in _KEYS_REQUIRED if k not in d]
    if missing:
        raise _spec_err(f"missing the key {', '.join(map(repr, missing))}; required: {', '.join(_KEYS_REQUIRED)}")
    unknown = sorted(str(k) for k in d if k not in _KEYS_REQUIRED + _KEYS_OPTIONAL)
    if unknown:
        raise _spec_err(f"unknown key(s) {unknown}; allowed: {sorted(_KEYS_REQUIRED + _KEYS_OPTIONAL)}")
    if d.get("format", _FORMAT) != _FORMAT:
        raise _spec_err(f"format = {str(d['format'])[:60]!r} is not allowed; allowed: {_FORMAT!r}")
    if d.get("version", _VERSION) != _VERSION or isinstance(d.get("version"), bool):
        raise _spec_err(f"version = {str(d['version'])[:20]!r} is not supported; allowed: {_VERSION}")

    def label(key: str, v) -> str:
        if not isinstance(v, str) or not _LABEL.match(v):
            raise _spec_err(f"{key} = {str(v)[:60]!r} is not a valid name; allowed: 1 to 100 letters, digits, '_', "
                            "'.', '+', '-' or inner spaces, starting with a letter or digit")
        return v

    def ident(v, what: str) -> str:
        if not isinstance(v, str) or not IDENTIFIER.match(v) or len(v) > 64:
            raise _spec_err(f"{what} {str(v)[:60]!r} is not a valid name; allowed: an identifier of letters, digits "
                            "and '_' starting with a letter (at most 64 characters)")
        return v

    def text(v, what: str) -> str:
        if not isinstance(v, str) or len(v) > _MAX_DOC:
            raise _spec_err(f"{what} must be a string of at most {_MAX_DOC} characters; got {type(v).__name__}")
        return v

    def number(v, what: str, none: bool = False):
        if none and v is None:
            return None
        if not _is_number(v):
            raise _spec_err(f"{what} = {str(v)[:60]} is not allowed; allowed: a finite number"
                            + (" or null" if none else ""))
        return v

    def entries(key: str, fields: tuple[str, ...], required: tuple[str, ...]) -> list[dict]:
        v = d[key]
        if not isinstance(v, list) or len(v) > _MAX_ENTRIES + (key == "update"):
            raise _spec_err(f"{key} must be a list of at most {_MAX_ENTRIES} objects; got {str(v)[:60]}")
        out = []
        for e in v:
            if not isinstance(e, Mapping) or any(k not in fields for k in e) or any(k not in e for k in required):
                raise _spec_err(f"{key} entry {str(e)[:80]} must be an object with the keys {', '.join(required)}"
                                f"{' (optional: ' + ', '.join(f for f in fields if f not in required) + ')' if len(fields) > len(required) else ''}")
            out.append(dict(e))
        return out

    def kind_of(enum, v, what: str):
        try:
            if not isinstance(v, str):
                raise ValueError
            return enum(v)
        except ValueError:
            raise _spec_err(f"{what} kind {str(v)[:40]!r} is unknown; allowed: {', '.join(k.value for k in enum)}") \
                from None

    name = label("name", d["name"])
    regime = label("natural_regime", d.get("natural_regime", "sgd"))
    doc = text(d.get("doc", ""), "doc")
    tr = d.get("transforms", [])
    if not isinstance(tr, list) or len(tr) > _MAX_ENTRIES:
        raise _spec_err(f"transforms must be a list of at most {_MAX_ENTRIES} names")
    transforms = tuple(ident(t, "transform") for t in tr)
    hypers = []
    for h in entries("hypers", ("name", "kind", "default", "doc"), ("name", "kind")):
        hn = ident(h["name"], "hyperparameter")
        hypers.append(Hyper(hn, number(h.get("default"), f"default of hyperparameter {hn!r}", none=True),
                            kind_of(HyperKind, h["kind"], f"hyperparameter {hn!r}:"),
                            text(h.get("doc", ""), f"doc of hyperparameter {hn!r}")))
    states = []
    for st in entries("states", ("name", "kind", "init", "doc"), ("name", "kind")):
        sn = ident(st["name"], "state")
        if sn in ("x", "g", "k"):
            raise _spec_err(f"state {sn!r} is not allowed: x is the parameter, g the gradient, k the step counter")
        states.append(StateDecl(sn, number(st.get("init", 0.0), f"init of state {sn!r}"),
                                kind_of(StateKind, st["kind"], f"state {sn!r}:"),
                                text(st.get("doc", ""), f"doc of state {sn!r}")))
    taken = [s.name for s in states] + [h.name for h in hypers]
    dup = sorted({n for n in taken if taken.count(n) > 1})
    if dup:
        raise _spec_err(f"the name(s) {dup} are declared twice (states and hyperparameters need distinct names)")
    update, seen = [], set()
    for u in entries("update", ("state", "expr"), ("state", "expr")):
        sn = ident(u["state"], "update: state")
        if sn in seen:
            raise _spec_err(f"update: state {sn!r} is updated twice")
        seen.add(sn)
        if not isinstance(u["expr"], str):
            raise _spec_err(f"update of {sn!r} = {str(u['expr'])[:60]} is not allowed; allowed: an expression string")
        update.append((sn, _parse_update(u["expr"], states, hypers, f"update of {sn}")))
    return cls(name, tuple(hypers), tuple(states), tuple(update), regime, doc, transforms)


def chain(*transforms: Transform, name: str, natural_regime: str = "sgd", doc: str = "") -> Optimizer:
    """Compose transforms (applied left to right, starting from `u = g`) into an optimizer.

    The parameter update is `x_{k+1} = x_k + u_final`; finish with
    `scale_by_learning_rate`.
    """
    ctx = Context()
    u: sp.Expr = ctx.g
    hypers: dict[str, Hyper] = {}
    states: dict[str, StateDecl] = {}
    new: dict[str, sp.Expr] = {}
    for tr in transforms:
        for h in tr.hypers:
            if h.name in hypers and hypers[h.name] != h:
                raise SpecError(
                    f"chain {name!r}: hyperparameter {h.name!r} is declared by two transforms with different "
                    f"defaults or roles ({hypers[h.name]} vs {h})"
                )
            hypers[h.name] = h
        for s in tr.states:
            if s.name in states:
                raise SpecError(f"chain {name!r}: state {s.name!r} is owned by two transforms")
            states[s.name] = s
        u, upd = tr(u, ctx)
        new.update(upd)
    update = tuple((s, new[s]) for s in states) + (("x", ctx.x + u),)
    return Optimizer(name, tuple(hypers.values()), tuple(states.values()), update, natural_regime,
                     doc, tuple(t.name for t in transforms))


def from_update(
    name: str,
    update: Mapping[str, sp.Expr],
    hypers: Mapping[str, object],
    init: Mapping[str, float] | None = None,
    kinds: Mapping[str, str] | None = None,
    natural_regime: str = "sgd",
    doc: str = "",
) -> Optimizer:
    """An optimizer from its update written out.

    Parameters
    ----------
    update
        state name -> its value after the step (`"x"` required), in symbols from
        `sdederive.sym` (`x`, `g`, `k`, states, hyperparameters).
    hypers
        name -> `(default, kind)` or a `Hyper`; kinds are
        `HyperKind` values, the keys of `sdederive.spec.hyper.KINDS`
        (`"decay"` parameters are scaled by the regimes).
    init
        initial values of the auxiliary states (default 0).
    kinds
        state name -> a `StateKind` or its value `"aux"` |
        `"second_moment"` | `"accumulator"` (default `"aux"`); regimes and simulators read the kind,
        never the state's name.
    """
    from sdederive.spec.vector import Vec, from_update_vector

    if any(isinstance(e, Vec) for e in update.values()):  # a vector update: norms, dot, grad_at (spec/vector.py)
        if init and any(v != 0 for v in init.values()):
            raise SpecError(f"vector optimizer {name!r}: init={dict(init)}; auxiliary vector states start at 0")
        return from_update_vector(name, update, hypers, natural_regime, doc, kinds)
    hs = []
    for hn, spec in hypers.items():
        if isinstance(spec, Hyper):
            hs.append(spec)
        else:
            default, kind = spec if isinstance(spec, tuple) else (spec, "real")
            if kind not in KINDS:
                raise SpecError(f"hyperparameter {hn!r}: kind {kind!r} unknown; valid kinds: {sorted(KINDS)}")
            hs.append(Hyper(hn, default, kind))
    if "x" not in update:
        raise SpecError(f"optimizer {name!r} has no update of the parameter 'x'; updates given: {list(update)}")
    init = dict(init or {})
    kinds = dict(kinds or {})
    aux = [s for s in update if s != "x"]
    for s in list(init) + list(kinds):
        if s not in aux:
            raise SpecError(f"optimizer {name!r}: state {s!r} in init/kinds has no update; updated states: {aux}")
    states = tuple(StateDecl(s, float(init.get(s, 0.0)), kinds.get(s, "aux")) for s in aux)
    upd = tuple((s, sp.sympify(update[s])) for s in aux) + (("x", sp.sympify(update["x"])),)
    # a hyperparameter or state written with sd.sym(name) (default assumptions) is that symbol
    own = {h.name: h.symbol for h in hs} | {s.name: s.symbol for s in states}
    upd = tuple((s, e.xreplace({f: own[f.name] for f in e.free_symbols
                                if f.name in own and f != own[f.name] and is_registry_symbol(f)}))
                if isinstance(e, sp.Basic) else (s, e) for s, e in upd)
    return Optimizer(name, tuple(hs), states, upd, natural_regime, doc, ("from_update",))


# -- built-ins -----------------------------------------------------------------------------------


def sgd(eta: float = 1e-3) -> Optimizer:
    r"""SGD: $x_{k+1} = x_k - \eta g_k$."""
    return chain(T.scale_by_learning_rate(eta), name="sgd", natural_regime="sgd", doc=sgd.__doc__)


def sgd_momentum(eta: float = 1e-3, mu: float = 0.9) -> Optimizer:
    r"""Heavy-ball SGD (PyTorch): $m_{k+1} = \mu m_k + g_k,\ x_{k+1} = x_k - \eta m_{k+1}$."""
    return chain(T.trace(mu), T.scale_by_learning_rate(eta), name="sgd_momentum", natural_regime="sgd",
                 doc=sgd_momentum.__doc__)


def signsgd(eta: float = 1e-3) -> Optimizer:
    r"""SignSGD: $x_{k+1} = x_k - \eta\,\mathrm{sign}(g_k)$."""
    return chain(T.scale_by_sign(), T.scale_by_learning_rate(eta), name="signsgd", natural_regime="sgd",
                 doc=signsgd.__doc__)


def signum(eta: float = 1e-3, beta: float = 0.9) -> Optimizer:
    r"""Signum (Bernstein et al. 2018): $m_{k+1} = \beta m_k + (1-\beta) g_k,\ x_{k+1} = x_k - \eta\,\mathrm{sign}(m_{k+1})$."""
    return chain(T.ema(beta), T.scale_by_sign(), T.scale_by_learning_rate(eta), name="signum",
                 natural_regime="balanced", doc=signum.__doc__)


def rmsprop(eta: float = 1e-2, beta: float = 0.99, eps: float = 1e-8) -> Optimizer:
    r"""RMSprop (PyTorch): $v_{k+1} = \beta v_k + (1-\beta) g_k^2,\ x_{k+1} = x_k - \eta g_k/(\sqrt{v_{k+1}}+\epsilon)$."""
    return chain(T.scale_by_rms(beta, eps), T.scale_by_learning_rate(eta), name="rmsprop",
                 natural_regime="noise-dominated", doc=rmsprop.__doc__)


def rmspropw(eta: float = 1e-2, beta: float = 0.99, eps: float = 1e-8, wd: float = 1e-2) -> Optimizer:
    r"""RMSprop with decoupled weight decay: $x_{k+1} = x_k - \eta\big(g_k/(\sqrt{v_{k+1}}+\epsilon) + w_d x_k\big)$."""
    return chain(T.scale_by_rms(beta, eps), T.add_decayed_weights(wd), T.scale_by_learning_rate(eta),
                 name="rmspropw", natural_regime="balanced", doc=rmspropw.__doc__)


def adam(eta: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8) -> Optimizer:
    r"""Adam with bias correction (PyTorch)."""
    return chain(T.scale_by_adam(beta1, beta2, eps), T.scale_by_learning_rate(eta), name="adam",
                 natural_regime="noise-dominated", doc=adam.__doc__)


def adamw(eta: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8, wd: float = 1e-2) -> Optimizer:
    r"""AdamW (PyTorch): Adam's direction plus decoupled weight decay `wd*x`, times `-eta`."""
    return chain(T.scale_by_adam(beta1, beta2, eps), T.add_decayed_weights(wd), T.scale_by_learning_rate(eta),
                 name="adamw", natural_regime="balanced", doc=adamw.__doc__)


def adagrad(eta: float = 1e-2, eps: float = 1e-10) -> Optimizer:
    r"""Adagrad (PyTorch, no lr decay): $v_{k+1} = v_k + g_k^2,\ x_{k+1} = x_k - \eta g_k/(\sqrt{v_{k+1}}+\epsilon)$."""
    return chain(T.scale_by_rss(eps), T.scale_by_learning_rate(eta), name="adagrad",
                 natural_regime="accumulator", doc=adagrad.__doc__)


def lion(eta: float = 1e-4, beta1: float = 0.9, beta2: float = 0.99, wd: float = 0.0) -> Optimizer:
    r"""Lion (Chen et al. 2023): $x_{k+1} = x_k - \eta(\mathrm{sign}(\beta_1 m_k + (1-\beta_1) g_k) + w_d x_k)$."""
    return chain(T.scale_by_lion(beta1, beta2), T.add_decayed_weights(wd), T.scale_by_learning_rate(eta),
                 name="lion", natural_regime="balanced", doc=lion.__doc__)


def sgd_clip(eta: float = 1e-3, clip: float = 1.0) -> Optimizer:
    r"""SGD with per-coordinate gradient clipping: $x_{k+1} = x_k - \eta\,\operatorname{clip}(g_k, -c, c)$.

    The SDE uses the closed-form truncated moments of the noise (Gaussian, Student-t for every `nu`).
    """
    return chain(T.clip(clip), T.scale_by_learning_rate(eta), name="sgd_clip", natural_regime="sgd",
                 doc=sgd_clip.__doc__)


def amsgrad(eta: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8) -> Optimizer:
    r"""AMSGrad (Reddi, Kale & Kumar 2018): Adam without bias correction, with
    $\hat v_{k+1} = \max(\hat v_k, v_{k+1})$ in the denominator.

    In the noise-dominated (and balanced) regime `v` has no diffusion at leading order, and the
    limit of the running maximum is the running maximum of `v`'s limit:
    `d vhat = 1{v >= vhat} max(0, b_v) dt` (`b_v` the drift of `v`), on `vhat >= v`, which
    the discrete chain and the SDE preserve.
    """
    return chain(T.scale_by_amsgrad(beta1, beta2, eps), T.scale_by_learning_rate(eta), name="amsgrad",
                 natural_regime="noise-dominated", doc=amsgrad.__doc__)


def adabelief(eta: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-16) -> Optimizer:
    r"""AdaBelief (Zhuang et al. 2020) as published: `eps` is added to `s` every step.

    Defaults of the authors' `adabelief-pytorch` 0.2 (`eps = 1e-16`).  `eps` is held fixed in
    every regime (kind `wd`: nonnegative, never rescaled): in the natural noise-dominated regime `u_s = eta**2*s`
    then gains `tau*eps` per step (the drift `+eps`) and `eps` drops out of the denominator.
    For the balanced regime use `eps = eps1*eta`:

        rg = sd.Regime("balanced-belief", sd.sym("eta"), decay_power=1, drop_noise=("second_moment",),
                       subs=(("eps", sd.sym("eps1", positive=True)*sd.sym("eta")),))
        sd.derive("adabelief", regime=rg)
    """
    return chain(T.scale_by_belief(beta1, beta2, eps), T.scale_by_learning_rate(eta), name="adabelief",
                 natural_regime="noise-dominated", doc=adabelief.__doc__)


def qhadam(eta: float = 1e-3, beta1: float = 0.995, beta2: float = 0.999, nu1: float = 0.7, nu2: float = 1.0,
           eps: float = 1e-8) -> Optimizer:
    r"""QH-Adam (Ma & Yarats 2019), with the paper's recommended `(nu1, nu2, beta1, beta2) = (0.7, 1, 0.995, 0.999)`.

    With `nu2 = 1` the update is built with `nu2 = 1` substituted (`nu2` is then not a
    hyperparameter of the spec); the noise-dominated SDE exists, the numerator's
    `(1 - nu1)*g` contributing both drift and diffusion.  With `nu2 < 1` the square root's
    argument `(1 - nu2) g**2 + nu2 vhat` carries O(1) noise as `eta -> 0` in every regime, so
    the one-step mean is the expectation of a non-polynomial function of the noise: the
    derivation is refused (`ExpectationError`).
    """
    return chain(T.scale_by_qhadam(beta1, beta2, nu1, nu2, eps), T.scale_by_learning_rate(eta), name="qhadam",
                 natural_regime="noise-dominated", doc=qhadam.__doc__)


def adan(eta: float = 1e-3, beta1: float = 0.98, beta2: float = 0.92, beta3: float = 0.99, eps: float = 1e-8,
         wd: float = 0.02) -> Optimizer:
    r"""Adan (Xie et al. 2022), official-code convention `betas = (0.98, 0.92, 0.99)`, decoupled `wd`.

    The lagged state `gp` holds the previous stochastic gradient, so `n` is driven by
    `(g_k + beta2 (g_k - g_{k-1}))**2`, a function of the current and the previous noise draw.
    The engine models `gp` as an independent copy of the noise at the current point and takes the
    long-run covariance of the 1-dependent increments (`sdederive.derivation._lag`).  In the
    balanced regime (`1 - beta_i = rho_i eta`):

    $$
    dx = -\Big(\frac{m + v_d}{\sqrt n + \epsilon} + w_d x\Big)dt,\quad
    dm = \rho_1(\nabla f - m)\,dt + \sqrt\eta\,\rho_1\sigma\,dW,\quad
    dv_d = -\rho_2 v_d\,dt,\quad
    dn = \rho_3\big((\nabla f)^2 + 5\sigma^2 - n\big)dt,
    $$

    `5 sigma**2 = ((1 + beta2)**2 + beta2**2) sigma**2` at `beta2 -> 1`; the gradient-difference EMA
    `v_d` is O(eta) (its telescoping noise has long-run variance 0) and enters `x` beyond leading
    order.  With the official `beta2 = 0.92` the O(1 - beta2) corrections are visible (about 5 % on
    the CLI's default problem).
    """
    return chain(T.scale_by_adan(beta1, beta2, beta3, eps), T.add_decayed_weights(wd), T.scale_by_learning_rate(eta),
                 name="adan", natural_regime="balanced", doc=adan.__doc__)


BUILTINS: dict[str, Callable[..., Optimizer]] = {
    f.__name__: f for f in (sgd, sgd_momentum, signsgd, signum, rmsprop, rmspropw, adam, adamw, adagrad, lion,
                            sgd_clip, amsgrad, adabelief, qhadam, adan)
}
#: specs that :func:`get` resolves by name but whose SDE derivation is refused (not in :func:`names`); none now
UNDERIVABLE: dict[str, Callable[..., Optimizer]] = {}


def names() -> list[str]:
    """The built-in optimizers (each with an SDE)."""
    return sorted(BUILTINS)


def get(optimizer, **hyper) -> Optimizer:
    """Resolve a name or pass an `Optimizer` through (optionally with new defaults)."""
    if isinstance(optimizer, Optimizer):
        return optimizer.with_defaults(**hyper) if hyper else optimizer
    if isinstance(optimizer, str):
        key = optimizer.strip().lower().replace("-", "_")
        make = BUILTINS.get(key) or UNDERIVABLE.get(key)
        if make is None:
            from sdederive.spec.vector import VECTOR_BUILTINS  # derived by the vector engine (docs/vector.md)

            raise UnknownNameError("optimizer", optimizer, list(BUILTINS) + list(VECTOR_BUILTINS))
        valid = {**make().hyper, **{p: None for p in inspect.signature(make).parameters}}
        unknown = [h for h in hyper if h not in valid]
        if unknown:
            raise UnknownNameError(f"hyperparameter of {key}", unknown[0], valid)
        return make(**hyper)
    raise SpecError(f"optimizer must be a name ({', '.join(names())}) or an Optimizer, got {optimizer!r}")

r"""The SDE object: $dX = b(X,t)\,dt + D(X,t)\,dW$, per coordinate, with provenance.

`drift[s]` and `diffusion[s]` hold one entry per state (docs/notation.md).  When several states
share one Brownian motion (the usual case: all noise comes from the one gradient noise `z` of
the coordinate) `diffusion[s]` is the coefficient of that `dW`; when the local covariance has
rank above one (Lion: `sign(.)` and `g` are not proportional) `diffusion[s]` is the row of a
Cholesky factor over independent `dW^(1), dW^(2), ...`.  `covariance` is the full local
covariance per unit time before any modelling choice of the regime (`drop_noise`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import sympy as sp

from sdederive import noise as noise_mod
from sdederive._safe_expr import IDENTIFIER, parse_expr
from sdederive.errors import HyperparameterError, SdederiveError
from sdederive.spec.hyper import KINDS, check_value
from sdederive.spec.kinds import HyperKind
from sdederive.spec.optimizers import Optimizer
from sdederive.symbols import KNOWN, sym

__all__ = ["SDE"]

_LATEX_NAMES = {
    "eta": r"\eta", "sigma": r"\sigma", "sigma0": r"\sigma_0", "sigma1": r"\sigma_1", "eps": r"\epsilon",
    "eps0": r"\epsilon_0", "rho": r"\rho", "rho1": r"\rho_1", "rho2": r"\rho_2", "c1": "c_1", "c2": "c_2",
    "beta": r"\beta", "beta1": r"\beta_1", "beta2": r"\beta_2", "mu": r"\mu", "nu": r"\nu",
    "grad": r"(\partial_i f)", "hess": r"(\partial_{ii} f)", "wd": r"\lambda_{\mathrm{wd}}", "kappa": r"\kappa",
    "tau": r"\tau",
}


@dataclass(frozen=True, eq=False)
class SDE:
    """A derived SDE (see the module docstring).

    Attributes
    ----------
    optimizer, noise, regime
        provenance.
    states
        state names, parameter first (`("x", "m", "u")`).
    drift
        state -> sympy expression (per coordinate).
    diffusion_matrix
        `len(states) x r` sympy Matrix `D`; `D D^T` is the modelled local covariance.
    covariance
        full leading-order local covariance `Cov[Delta]/tau` (before `drop_noise`).
    tau
        time per step; `t = k*tau`.
    params
        the regime's scaled symbols in terms of the discrete hyperparameters
        (`{"rho1": (1 - beta1)/eta, "sigma0": sigma*eta}`).
    state_map
        SDE states defined from discrete ones (`{"u": eta**2*v}`).
    init
        initial values of the auxiliary states (discrete optimizer's, rescaled).
    linear_noise
        the noise enters linearly at leading order (so a full covariance `Sigma`
        applies: the noise term is `diag(D/sigma) Sigma^{1/2} dW`).
    eliminated
        fast states averaged out: `{fast: {slow: a}}`, the SDE's `slow` being the
        discrete `slow + a*fast` (heavy ball at fixed `mu`: `x + eta*mu/(mu - 1)*m`).
    notes
        conditions and modelling choices (`nu > 2`, eliminated fast states, ...).
    source
        the `Optimizer` it was derived from (the simulators take the
        states' kinds, initial values, update rule and noise-column signs from it); written to JSON under
        `"source"` and restored by `from_json`.  `None` only for an SDE built by hand or read
        from an old JSON without that key (the simulators then resolve a built-in of that name).
    noise_model
        the `NoiseModel` it was derived under (JSON key `"noise_model"`:
        its name and parameters).
    """

    optimizer: str
    noise: str
    regime: str
    states: tuple[str, ...]
    drift: dict
    diffusion_matrix: sp.Matrix
    covariance: sp.Matrix
    tau: sp.Expr
    order: int = 1
    params: dict = field(default_factory=dict)
    state_map: dict = field(default_factory=dict)
    init: dict = field(default_factory=dict)
    linear_noise: bool = True
    eliminated: dict = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    noise_values: dict = field(default_factory=dict)
    hypers: tuple = ()
    source: object = None  # the Optimizer derived from (state kinds, inits, update); JSON "source"
    noise_model: object = None  # the NoiseModel derived under; JSON "noise_model"

    # -- views --------------------------------------------------------------------------------
    @property
    def noise_sources(self) -> int:
        return self.diffusion_matrix.shape[1]

    @property
    def diffusion(self) -> dict:
        """state -> coefficient of `dW` (one source) or list of coefficients (several)."""
        D = self.diffusion_matrix
        if D.shape[1] == 0:
            return {s: sp.S.Zero for s in self.states}
        if D.shape[1] == 1:
            return {s: D[i, 0] for i, s in enumerate(self.states)}
        return {s: [D[i, j] for j in range(D.shape[1])] for i, s in enumerate(self.states)}

    @property
    def local_covariance(self) -> sp.Matrix:
        """The modelled `D D^T`."""
        D = self.diffusion_matrix
        return (D * D.T).applyfunc(sp.simplify) if D.shape[1] else sp.zeros(len(self.states))

    def _exprs(self):
        yield from self.drift.values()
        yield from self.diffusion_matrix
        yield from self.covariance
        yield self.tau

    @property
    def symbols(self) -> list[str]:
        """Names of every free symbol of drift, diffusion, covariance and tau (sorted)."""
        out = set()
        for e in self._exprs():
            out |= {str(s) for s in sp.sympify(e).free_symbols}
        return sorted(out)

    def _free(self) -> dict[str, sp.Symbol]:
        out = {}
        for e in self._exprs():
            for s in sp.sympify(e).free_symbols:
                out[str(s)] = s
        return out

    # -- substitution ---------------------------------------------------------------------------
    def subs(self, values: Mapping[str, object] | None = None, **kw) -> SDE:
        """Substitute numbers (or expressions) for symbols by name, with range checks
        (`eta > 0`, `beta in [0, 1)`, `nu > 0`, `sigma >= 0` ...)."""
        values = {**(values or {}), **kw}
        free = self._free()
        kinds = {name: kind for name, kind, _ in self.hypers}
        rules = {"eta": "lr", "sigma": "eps", "sigma0": "eps", "sigma1": "eps", "eps0": "eps", "nu": "positive",
                 "B": "positive", "kappa": "positive", "rho": "positive", "rho1": "positive",
                 "rho2": "positive", "c": "positive", "c1": "positive", "c2": "positive"}
        mapping = {}
        for name, val in values.items():
            if name not in free:
                raise SdederiveError(
                    f"subs: {name!r} is not a symbol of this SDE; its symbols are {sorted(free)}"
                )
            kind = kinds.get(name) or rules.get(name)
            if kind:
                try:
                    check_value(name, kind, val)
                except HyperparameterError as e:
                    raise HyperparameterError(str(e.args[0]).replace("hyperparameter ", "")) from None
            mapping[free[name]] = (parse_expr(val, symbols=lambda n: free.get(n) or sym(n), what=f"subs: {name}")
                                   if isinstance(val, str) else sp.sympify(val))  # text is never evaluated

        def f(e):
            return sp.sympify(e).xreplace(mapping)

        return replace(
            self,
            drift={s: f(e) for s, e in self.drift.items()},
            diffusion_matrix=self.diffusion_matrix.xreplace(mapping),
            covariance=self.covariance.xreplace(mapping),
            tau=f(self.tau),
        )

    # -- equality ---------------------------------------------------------------------------------
    def __eq__(self, other) -> bool:
        if not isinstance(other, SDE):
            return NotImplemented
        return (
            (self.optimizer, self.noise, self.regime, self.states, self.order)
            == (other.optimizer, other.noise, other.regime, other.states, other.order)
            and all(sp.simplify(self.drift[s] - other.drift[s]) == 0 for s in self.states)
            and self.diffusion_matrix.shape == other.diffusion_matrix.shape
            and all(sp.simplify(a - b) == 0 for a, b in zip(self.diffusion_matrix, other.diffusion_matrix))
            and sp.simplify(self.tau - other.tau) == 0
        )

    __hash__ = object.__hash__

    # -- printing ----------------------------------------------------------------------------------
    def _lx(self, e) -> str:
        names = {s: _LATEX_NAMES[str(s)] for s in sp.sympify(e).free_symbols if str(s) in _LATEX_NAMES}
        return sp.latex(e, symbol_names=names)

    def latex(self) -> str:
        """The SDE as a LaTeX `aligned` block (one line per state), with its clock."""
        lines = []
        D = self.diffusion_matrix
        r = D.shape[1]
        for i, s in enumerate(self.states):
            lhs = f"d{_LATEX_NAMES.get(s, s)}_t"
            rhs = rf"\left({self._lx(self.drift[s])}\right) dt"
            for j in range(r):
                if D[i, j] != 0:
                    dw = "dW_t" if r == 1 else f"dW^{{({j + 1})}}_t"
                    rhs += rf" + \left({self._lx(D[i, j])}\right) {dw}"
            lines.append(f"{lhs} &= {rhs}")
        lines.append(rf"t &= k\tau,\quad \tau = {self._lx(self.tau)}")
        return "\\begin{aligned}\n" + " \\\\\n".join(lines) + "\n\\end{aligned}"

    def _repr_latex_(self) -> str:
        return "$$" + self.latex() + "$$"

    def to_diffrax(self, problem, eta=None, hyper: dict | None = None):
        """JAX drift and diffusion of this SDE on `problem` for diffrax (`sdederive.export.to_diffrax`)."""
        from sdederive.export import to_diffrax

        return to_diffrax(self, problem, eta, hyper)

    def to_torchsde(self, problem, eta=None, hyper: dict | None = None):
        """A torchsde module of this SDE on `problem` (`sdederive.export.to_torchsde`)."""
        from sdederive.export import to_torchsde

        return to_torchsde(self, problem, eta, hyper)

    def __str__(self) -> str:
        lines = [f"SDE of {self.optimizer} | noise {self.noise} | regime {self.regime} | tau = {self.tau}"
                 + (f" | order {self.order}" if self.order != 1 else "")]
        diff = self.diffusion
        w = max(len(s) for s in self.states)
        for s in self.states:
            d = diff[s]
            ds = " + ".join(f"({e}) dW{j + 1}" for j, e in enumerate(d) if e != 0) if isinstance(d, list) else (
                f" + ({d}) dW" if d != 0 else "")
            if isinstance(d, list) and ds:
                ds = " + " + ds
            lines.append(f"  d{s:<{w}} = ({self.drift[s]}) dt{ds}")
        for p, e in self.params.items():
            lines.append(f"  where {p} = {e}")
        for s, e in self.state_map.items():
            lines.append(f"  state {s} = {e}")
        for n in self.notes:
            lines.append(f"  note: {n}")
        return "\n".join(lines)

    __repr__ = __str__

    # -- JSON ------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The docs/notation.md JSON schema, plus sdederive's extra keys.

        Expressions are printed in the evaluated form the JSON parser rebuilds (`_canon_str`), so that
        `to_json(from_json(to_json(sde)))` is byte-identical to `to_json(sde)`."""
        diff = self.diffusion
        free = self._free()
        extra_syms = {}
        for name, s in free.items():
            if name not in KNOWN:
                extra_syms[name] = {k: v for k, v in s.assumptions0.items() if k in ("real", "positive", "nonnegative")}
        for e in list(self.params.values()) + list(self.state_map.values()):
            for s in sp.sympify(e).free_symbols:
                if str(s) not in KNOWN:
                    extra_syms[str(s)] = {k: v for k, v in s.assumptions0.items()
                                          if k in ("real", "positive", "nonnegative")}
        return {
            "optimizer": self.optimizer,
            "noise": self.noise,
            "regime": self.regime,
            "tau": _canon_str(self.tau),
            "states": list(self.states),
            "drift": {s: _canon_str(self.drift[s]) for s in self.states},
            "diffusion": {s: ([_canon_str(e) for e in d] if isinstance(d, list) else _canon_str(d))
                          for s, d in diff.items()},
            "symbols": self.symbols,
            "order": self.order,
            "noise_sources": self.noise_sources,
            "covariance": [[_canon_str(self.covariance[i, j]) for j in range(len(self.states))]
                           for i in range(len(self.states))],
            "params": {k: _canon_str(v) for k, v in self.params.items()},
            "state_map": {k: _canon_str(v) for k, v in self.state_map.items()},
            "init": {k: _canon_str(v) for k, v in self.init.items()},
            "linear_noise": self.linear_noise,
            "eliminated": {f: {k: _canon_str(v) for k, v in m.items()} for f, m in self.eliminated.items()},
            "notes": list(self.notes),
            "assumptions": extra_syms,
            "hypers": [[n, str(k), v] for n, k, v in self.hypers],
            "noise_values": self.noise_values,
            **({"source": self.source.to_dict()} if isinstance(self.source, Optimizer) else {}),
            **({"noise_model": _noise_to_dict(self.noise_model)} if self.noise_model is not None else {}),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, data: str | Mapping) -> SDE:
        """Rebuild an SDE from `to_json` output (or a dict of the NOTATION schema).

        The text is never evaluated: every expression goes through the safe parser of
        `sdederive._safe_expr` (numbers, `+ - * / **`, names, whitelisted functions), and the
        structure is checked (`states` a non-empty list of names, `diffusion` one expression or a
        list of `noise_sources` expressions per state, `order` 1 or 2, ...).  Anything else raises
        `SdederiveError` naming the field and what is allowed.
        """
        return _from_json(cls, data)

    # -- numerics -----------------------------------------------------------------------------------
    def lambdify(self, modules: str = "numpy"):
        """`(drift_fn, diffusion_fn, argnames)`: numpy functions of the symbols in `argnames`
        returning the drift vector and diffusion matrix (states in order)."""
        names = self.symbols
        args = [self._free()[n] for n in names]
        b = sp.lambdify(args, [self.drift[s] for s in self.states], modules=modules)
        D = sp.lambdify(args, self.diffusion_matrix.tolist(), modules=modules)
        return b, D, names


# -- loading (SDE.from_json) ---------------------------------------------------------------------------
_KEYS_REQUIRED = ("optimizer", "noise", "regime", "states", "drift", "diffusion", "tau")
_KEYS_OPTIONAL = ("symbols", "order", "noise_sources", "covariance", "params", "state_map", "init", "linear_noise",
                  "eliminated", "notes", "assumptions", "hypers", "noise_values", "source", "noise_model")
#: optimizer, noise model and regime names: letters, digits and ``_ . + -`` (and inner spaces), no
#: line breaks or other characters that could leave a comment of generated code
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+\- ]{0,99}\Z")
_ASSUMPTION_KEYS = ("real", "positive", "nonnegative")
_MAX_STATES = 64
_MAX_SOURCES = 64


_NOISE_PARAMS = ("sigma", "Sigma", "nu")
_MAX_NOISE_NUMBERS = 1_000_000


def _noise_key(nm) -> str:
    return "minibatch" if getattr(nm, "batch", False) and nm.name == "gaussian" else str(nm.name)


def _noise_to_dict(nm) -> dict:
    """`{"name": ..., "params": {...}}` of a noise model; refused where that does not rebuild it."""
    params = {k: (list(v) if isinstance(v, tuple) else v) for k, v in getattr(nm, "values", ())}
    if getattr(nm, "Sigma", None) is not None:
        params["Sigma"] = [list(r) for r in nm.Sigma]
    key = _noise_key(nm)
    try:
        same = noise_mod.get(key, **params) == nm
    except SdederiveError:
        same = False
    if not same:
        raise SdederiveError(f"SDE.to_json: the noise model {nm!r} ({type(nm).__name__}) cannot be written as JSON; "
                             f"allowed: the built-in models {', '.join(noise_mod.names())} with parameters "
                             f"{', '.join(_NOISE_PARAMS)}")
    return {"name": key, "params": params}


def _noise_from_dict(v, label: str):
    if not isinstance(v, Mapping) or set(v) - {"name", "params"} or "name" not in v:
        raise _json_err(f"noise_model = {str(v)[:80]} must be an object with the keys name and params")
    name, params = v["name"], v.get("params", {})
    if not isinstance(name, str) or name not in noise_mod.names():
        raise _json_err(f"noise_model name {str(name)[:40]!r} is unknown; allowed: {', '.join(noise_mod.names())}")
    if not isinstance(params, Mapping) or any(k not in _NOISE_PARAMS for k in params):
        raise _json_err(f"noise_model params = {str(params)[:80]}; allowed: an object with the keys "
                        f"{', '.join(_NOISE_PARAMS)}")
    count = 0
    for k, x in params.items():
        rows = x if isinstance(x, list) else [x]
        for r in rows:
            for y in (r if isinstance(r, list) else [r]):
                count += 1
                if count > _MAX_NOISE_NUMBERS:
                    raise _json_err(f"noise_model params hold more than {_MAX_NOISE_NUMBERS} numbers")
                _number(y, f"noise_model {k}")
    nm = noise_mod.get(name, **dict(params))  # the constructors check the values (NoiseModelError)
    if nm.label != label:
        raise _json_err(f"noise_model {name!r} is labelled {nm.label!r} but the SDE's noise is {label!r}")
    return nm


def _json_err(msg: str) -> SdederiveError:
    return SdederiveError(f"SDE JSON: {msg} (see docs/notation.md for the schema)")


def _label(d: dict, key: str) -> str:
    v = d[key]
    if not isinstance(v, str) or not _LABEL.match(v):
        raise _json_err(f"{key} = {v!r} is not a valid name; allowed: 1 to 100 letters, digits, '_', '.', '+', '-' "
                        "or inner spaces, starting with a letter or digit")
    return v


def _ident(v, what: str) -> str:
    if not isinstance(v, str) or not IDENTIFIER.match(v) or len(v) > 64:
        raise _json_err(f"{what} {v!r} is not a valid name; allowed: an identifier of letters, digits and '_' "
                        "starting with a letter (at most 64 characters)")
    return v


def _mapping(d: dict, key: str, default=None) -> dict:
    v = d.get(key, {} if default is None else default)
    if not isinstance(v, Mapping):
        raise _json_err(f"{key} must be an object (name -> value); got {type(v).__name__} {str(v)[:60]}")
    return dict(v)


def _number(v, what: str):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _json_err(f"{what} = {v!r} is not a finite number")
    return v


def _from_json(cls, data) -> SDE:
    if isinstance(data, (bytes, bytearray)):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise _json_err(f"the text is not UTF-8 ({e})") from None
    if isinstance(data, str):
        from sdederive._json import JSONTextError, loads_strict

        try:
            d = loads_strict(data)
        except JSONTextError as e:
            raise _json_err(f"not valid JSON: {e}") from None
    elif isinstance(data, Mapping):
        d = data
    else:
        raise _json_err(f"expected JSON text or a dict; got {type(data).__name__}")
    if not isinstance(d, Mapping):
        raise _json_err(f"the top level must be an object; got {type(d).__name__}")
    d = dict(d)
    missing = [k for k in _KEYS_REQUIRED if k not in d]
    if missing:
        raise _json_err(f"missing the key {', '.join(map(repr, missing))}; required: {', '.join(_KEYS_REQUIRED)}")
    unknown = sorted(str(k) for k in d if k not in _KEYS_REQUIRED + _KEYS_OPTIONAL)
    if unknown:
        raise _json_err(f"unknown key(s) {unknown}; allowed: {sorted(_KEYS_REQUIRED + _KEYS_OPTIONAL)}")
    optimizer, noise, regime = _label(d, "optimizer"), _label(d, "noise"), _label(d, "regime")

    states = d["states"]
    if not isinstance(states, list) or not states or len(states) > _MAX_STATES:
        raise _json_err(f"states = {str(states)[:80]} must be a non-empty list of at most {_MAX_STATES} state names, "
                        "parameter first (e.g. [\"x\", \"m\"])")
    states = tuple(_ident(s, "state") for s in states)
    if len(set(states)) != len(states):
        raise _json_err(f"states = {list(states)} names a state twice")

    order = d.get("order", 1)
    if isinstance(order, bool) or order not in (1, 2) or not isinstance(order, int):
        raise _json_err(f"order = {order!r} is not allowed; allowed: 1 or 2 (an integer)")
    linear_noise = d.get("linear_noise", True)
    if not isinstance(linear_noise, bool):
        raise _json_err(f"linear_noise = {linear_noise!r} is not allowed; allowed: true or false")

    assumptions = _mapping(d, "assumptions")
    for name, a in assumptions.items():
        _ident(name, "assumptions: symbol")
        if not isinstance(a, Mapping) or any(k not in _ASSUMPTION_KEYS or not isinstance(v, bool) for k, v in a.items()):
            raise _json_err(f"assumptions of {name!r} = {a!r}; allowed: an object with true/false values for "
                            f"{', '.join(_ASSUMPTION_KEYS)}")
        if name in KNOWN and {k: v for k, v in a.items() if v} not in ({}, KNOWN[name][0]):
            raise _json_err(f"assumptions of {name!r} = {dict(a)} differ from the notation's {KNOWN[name][0]}; "
                            "use another name for a different quantity")
    declared = set(states) | set(assumptions)
    syms = d.get("symbols", [])
    if not isinstance(syms, list):
        raise _json_err(f"symbols must be a list of names; got {type(syms).__name__}")
    declared |= {_ident(s, "symbol") for s in syms}
    cache: dict[str, sp.Symbol] = {}

    def resolve(name: str):
        if name in ("pi", "E") and name not in declared:
            return None  # the constant
        s = cache.get(name)
        if s is None:
            a = {k: v for k, v in assumptions.get(name, {}).items()}
            s = cache[name] = sym(name) if name in KNOWN else sym(name, **a)
        return s

    def P(text, what: str) -> sp.Expr:
        if not isinstance(text, str):
            hint = f" such as \"{text}\"" if isinstance(text, (int, float)) and not isinstance(text, bool) else ""
            raise _json_err(f"{what} = {str(text)[:60]} ({type(text).__name__}) is not allowed; allowed: an "
                            f"expression string{hint}")
        return parse_expr(text, symbols=resolve, what=f"SDE JSON {what}")

    drift_text = _mapping(d, "drift")
    missing = [s for s in states if s not in drift_text]
    extra = sorted(str(k) for k in drift_text if k not in states)
    if missing or extra:
        raise _json_err(f"drift must have one expression per state {list(states)}; missing {missing}, "
                        f"unknown {extra}")
    drift = {s: P(drift_text[s], f"drift of {s}") for s in states}

    diff = _mapping(d, "diffusion")
    extra = sorted(str(k) for k in diff if k not in states)
    if extra:
        raise _json_err(f"diffusion has entries {extra} that are not states; states: {list(states)}")
    r = d.get("noise_sources")
    if r is None:
        r = max([(len(v) if isinstance(v, list) else 1) for v in diff.values()] or [0])
    if isinstance(r, bool) or not isinstance(r, int) or not 0 <= r <= _MAX_SOURCES:
        raise _json_err(f"noise_sources = {r!r} is not allowed; allowed: an integer from 0 to {_MAX_SOURCES}")
    D = sp.zeros(len(states), r)
    for i, s in enumerate(states):
        v = diff.get(s, "0")
        if isinstance(v, list):
            if len(v) != r:
                raise _json_err(f"diffusion of {s} has {len(v)} entries; allowed: one per noise source "
                                f"(noise_sources = {r})")
            vals = v
        elif r > 1:
            raise _json_err(f"diffusion of {s} = {str(v)[:60]!r} must be a list of {r} expression strings "
                            f"(noise_sources = {r})")
        else:
            vals = [v]
        for j, e in enumerate(vals):
            val = P(e, f"diffusion of {s}" + (f"[{j}]" if isinstance(v, list) else ""))
            if r == 0:
                if val != 0:
                    raise _json_err(f"diffusion of {s} = {e!r} is nonzero but noise_sources = 0")
            else:
                D[i, j] = val
    if "covariance" in d:
        C = d["covariance"]
        n = len(states)
        if not isinstance(C, list) or len(C) != n or any(not isinstance(row, list) or len(row) != n for row in C):
            raise _json_err(f"covariance must be a {n}x{n} list of lists of expression strings (one row and column "
                            f"per state); got {str(C)[:80]}")
        C = sp.Matrix([[P(e, f"covariance[{i}][{j}]") for j, e in enumerate(row)] for i, row in enumerate(C)])
    else:
        C = (D * D.T).applyfunc(sp.simplify)

    def exprs(key: str) -> dict:
        return {_ident(k, f"{key}: name"): P(v, f"{key} of {k}") for k, v in _mapping(d, key).items()}

    eliminated = {}
    for f, m in _mapping(d, "eliminated").items():
        if not isinstance(m, Mapping):
            raise _json_err(f"eliminated of {f!r} must be an object (state -> expression); got {str(m)[:60]}")
        eliminated[_ident(f, "eliminated: state")] = {_ident(k, "eliminated: state"): P(v, f"eliminated {f} of {k}")
                                                      for k, v in m.items()}
    notes = d.get("notes", [])
    if not isinstance(notes, list) or any(not isinstance(n, str) or len(n) > 2000 for n in notes):
        raise _json_err("notes must be a list of strings (at most 2000 characters each)")
    hypers = []
    raw = d.get("hypers", [])
    if not isinstance(raw, list):
        raise _json_err(f"hypers must be a list of [name, kind, default]; got {str(raw)[:60]}")
    for h in raw:
        if not isinstance(h, list) or len(h) != 3:
            raise _json_err(f"hypers entry {str(h)[:60]} must be [name, kind, default]")
        name, kind, default = h
        _ident(name, "hyperparameter")
        if not isinstance(kind, str) or kind not in KINDS:
            raise _json_err(f"hyperparameter {name!r} has kind {str(kind)[:40]!r}; allowed: {sorted(KINDS)}")
        kind = HyperKind(kind)
        if default is not None:
            _number(default, f"default of hyperparameter {name!r}")
            check_value(name, kind, default)
        hypers.append((name, kind, default))
    noise_values = _mapping(d, "noise_values")
    for k, v in noise_values.items():
        _ident(k, "noise_values: name")
        flat = v if isinstance(v, list) else [v]
        flat = [y for x in flat for y in (x if isinstance(x, list) else [x])]
        for x in flat:
            _number(x, f"noise_values of {k!r}")
    state_map = exprs("state_map")
    source = None
    if "source" in d:
        source = Optimizer.from_dict(d["source"])
        if source.name != optimizer:
            raise _json_err(f"source is the optimizer {source.name!r} but the SDE is of {optimizer!r}; allowed: "
                            "the optimizer the SDE was derived from")
        if hypers and [h[0] for h in hypers] != [h.name for h in source.hypers]:
            raise _json_err(f"hypers {[h[0] for h in hypers]} differ from the hyperparameters of source "
                            f"{[h.name for h in source.hypers]}; allowed: the same names, in the same order")
        odd = [s for s in states if s not in source.state_names and s not in state_map]
        if odd:
            raise _json_err(f"states {odd} are neither states of source {list(source.state_names)} nor defined in "
                            "state_map")
    noise_model = _noise_from_dict(d["noise_model"], noise) if "noise_model" in d else None
    return cls(
        optimizer=optimizer, noise=noise, regime=regime, states=states, drift=drift, diffusion_matrix=D,
        covariance=C, tau=P(d["tau"], "tau"), order=order, params=exprs("params"), state_map=state_map,
        init=exprs("init"), linear_noise=linear_noise, eliminated=eliminated, notes=tuple(notes),
        noise_values=noise_values, hypers=tuple(hypers), source=source, noise_model=noise_model,
    )


def _canon_str(e) -> str:
    """`e` printed as the JSON parser rebuilds it: `str(parse(str(e)))` (an unevaluated `-(a + b)` from
    `factor_terms` prints as `-a - b`), so that re-serializing a loaded SDE gives the same bytes."""
    text = str(e)
    if not isinstance(e, sp.Basic) or e.is_Atom:
        return text
    own = {f.name: f for f in e.free_symbols}
    try:
        return str(parse_expr(text, symbols=lambda n: own.get(n) or sym(n), what="expression"))
    except SdederiveError:  # not in the JSON's function set: printed as it is (from_json refuses it)
        return text

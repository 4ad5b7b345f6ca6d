r"""The SDE object: :math:`dX = b(X,t)\,dt + D(X,t)\,dW`, per coordinate, with provenance.

``drift[s]`` and ``diffusion[s]`` hold one entry per state (NOTATION.md).  When several states
share one Brownian motion (the usual case: all noise comes from the one gradient noise ``z`` of
the coordinate) ``diffusion[s]`` is the coefficient of that ``dW``; when the local covariance has
rank above one (Lion: ``sign(.)`` and ``g`` are not proportional) ``diffusion[s]`` is the row of a
Cholesky factor over independent ``dW^(1), dW^(2), ...``.  ``covariance`` is the full local
covariance per unit time before any modelling choice of the regime (``drop_noise``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import sympy as sp

from .errors import HyperparameterError, SdederiveError
from .hyper import check_value
from .symbols import KNOWN, sympify_expr

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
    optimizer, noise, regime: provenance.
    states: state names, parameter first (``("x", "m", "u")``).
    drift: state -> sympy expression (per coordinate).
    diffusion_matrix: ``len(states) x r`` sympy Matrix ``D``; ``D D^T`` is the modelled local covariance.
    covariance: full leading-order local covariance ``Cov[Delta]/tau`` (before ``drop_noise``).
    tau: time per step; ``t = k*tau``.
    params: the regime's scaled symbols in terms of the discrete hyperparameters
        (``{"rho1": (1 - beta1)/eta, "sigma0": sigma*eta}``).
    state_map: SDE states defined from discrete ones (``{"u": eta**2*v}``).
    init: initial values of the auxiliary states (discrete optimizer's, rescaled).
    linear_noise: the noise enters linearly at leading order (so a full covariance ``Sigma``
        applies: the noise term is ``diag(D/sigma) Sigma^{1/2} dW``).
    eliminated: fast states averaged out: ``{fast: {slow: a}}``, the SDE's ``slow`` being the
        discrete ``slow + a*fast`` (heavy ball at fixed ``mu``: ``x + eta*mu/(mu - 1)*m``).
    notes: conditions and modelling choices (``nu > 2``, eliminated fast states, ...).
    source: the :class:`~sdederive.optimizers.Optimizer` it was derived from (the simulators take the
        states' kinds, initial values and update from it); ``None`` after :meth:`from_json` (an update
        rule is code, not JSON), where the simulators resolve a built-in by name.
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
    source: object = None  # the Optimizer derived from (state kinds, inits, update); not in the JSON

    # -- views --------------------------------------------------------------------------------
    @property
    def noise_sources(self) -> int:
        return self.diffusion_matrix.shape[1]

    @property
    def diffusion(self) -> dict:
        """state -> coefficient of ``dW`` (one source) or list of coefficients (several)."""
        D = self.diffusion_matrix
        if D.shape[1] == 0:
            return {s: sp.S.Zero for s in self.states}
        if D.shape[1] == 1:
            return {s: D[i, 0] for i, s in enumerate(self.states)}
        return {s: [D[i, j] for j in range(D.shape[1])] for i, s in enumerate(self.states)}

    @property
    def local_covariance(self) -> sp.Matrix:
        """The modelled ``D D^T``."""
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
        (``eta > 0``, ``beta in [0, 1)``, ``nu > 0``, ``sigma >= 0`` ...)."""
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
                    raise HyperparameterError(str(e).replace("hyperparameter ", "")) from None
            mapping[free[name]] = sp.sympify(val)

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
        """The SDE as a LaTeX ``aligned`` block (one line per state), with its clock."""
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
        """The NOTATION.md JSON schema, plus sdederive's extra keys."""
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
            "tau": str(self.tau),
            "states": list(self.states),
            "drift": {s: str(self.drift[s]) for s in self.states},
            "diffusion": {s: ([str(e) for e in d] if isinstance(d, list) else str(d)) for s, d in diff.items()},
            "symbols": self.symbols,
            "order": self.order,
            "noise_sources": self.noise_sources,
            "covariance": [[str(self.covariance[i, j]) for j in range(len(self.states))]
                           for i in range(len(self.states))],
            "params": {k: str(v) for k, v in self.params.items()},
            "state_map": {k: str(v) for k, v in self.state_map.items()},
            "init": {k: str(v) for k, v in self.init.items()},
            "linear_noise": self.linear_noise,
            "eliminated": {f: {k: str(v) for k, v in m.items()} for f, m in self.eliminated.items()},
            "notes": list(self.notes),
            "assumptions": extra_syms,
            "hypers": [list(h) for h in self.hypers],
            "noise_values": self.noise_values,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, data: str | Mapping) -> SDE:
        """Rebuild an SDE from :meth:`to_json` output (or a dict of the NOTATION schema)."""
        d = json.loads(data) if isinstance(data, str) else dict(data)
        try:
            states = tuple(d["states"])
            assumptions = d.get("assumptions", {})
            names = set(d.get("symbols", [])) | set(states) | set(assumptions) | set(KNOWN)
            for key in ("params", "state_map"):
                for k in d.get(key, {}):
                    names.add(k)

            def P(text):
                return sympify_expr(text, names, assumptions)

            drift_text = d["drift"]
            diff = d["diffusion"]
            r = d.get("noise_sources")
            if r is None:
                r = max([(len(v) if isinstance(v, list) else 1) for v in diff.values()] or [0])
            D = sp.zeros(len(states), r)
            for i, s in enumerate(states):
                v = diff.get(s, "0")
                vals = v if isinstance(v, list) else [v]
                for j, e in enumerate(vals[:r]):
                    D[i, j] = P(e)
            if "covariance" in d:
                C = sp.Matrix([[P(e) for e in row] for row in d["covariance"]])
            else:
                C = (D * D.T).applyfunc(sp.simplify)
            return cls(
                optimizer=d["optimizer"], noise=d["noise"], regime=d["regime"], states=states,
                drift={s: P(drift_text[s]) for s in states}, diffusion_matrix=D, covariance=C,
                tau=P(d["tau"]), order=int(d.get("order", 1)),
                params={k: P(v) for k, v in d.get("params", {}).items()},
                state_map={k: P(v) for k, v in d.get("state_map", {}).items()},
                init={k: P(v) for k, v in d.get("init", {}).items()},
                linear_noise=bool(d.get("linear_noise", True)),
                eliminated={f: {k: P(v) for k, v in m.items()} for f, m in d.get("eliminated", {}).items()},
                notes=tuple(d.get("notes", ())),
                noise_values=d.get("noise_values", {}),
                hypers=tuple(tuple(h) for h in d.get("hypers", ())),
            )
        except KeyError as e:
            raise SdederiveError(f"SDE JSON is missing the key {e.args[0]!r} (see NOTATION.md for the schema)") from None
        except (sp.SympifyError, TypeError, SyntaxError) as e:
            raise SdederiveError(f"SDE JSON has an expression that does not parse: {e}") from None

    # -- numerics -----------------------------------------------------------------------------------
    def lambdify(self, modules: str = "numpy"):
        """``(drift_fn, diffusion_fn, argnames)``: numpy functions of the symbols in ``argnames``
        returning the drift vector and diffusion matrix (states in order)."""
        names = self.symbols
        args = [self._free()[n] for n in names]
        b = sp.lambdify(args, [self.drift[s] for s in self.states], modules=modules)
        D = sp.lambdify(args, self.diffusion_matrix.tolist(), modules=modules)
        return b, D, names

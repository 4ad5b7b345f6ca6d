r"""Batch-size scaling rules computed from an SDE.

When the batch grows `B -> kappa*B` the noise shrinks, `sigma -> sigma/sqrt(kappa)`.  We look
for a power-law map of the discrete hyperparameters

$$
\eta\to\kappa^{a}\eta,\qquad 1-\beta_i\to\kappa^{b_i}(1-\beta_i),\qquad h\to\kappa^{a_h}h,
$$

together with a rescaling of the auxiliary states $s\to\kappa^{p_s}s$ and a time change
$\lambda=\kappa^{\ell}$, such that the new SDE's solution is the old one run $\lambda$
times faster: $X'(t) = S\,X(\lambda t)$.  Written out,

$$
b_s(SX, t/\lambda;\theta') = \lambda\,\kappa^{p_s}\,b_s(X, t;\theta),\qquad
D_s(SX, t/\lambda;\theta') = \lambda^{1/2}\kappa^{p_s}D_s(X, t;\theta).
$$

Substituting the ansatz turns every monomial into a power of `kappa`, so these are *linear*
equations in the exponents: a product adds exponents, a power multiplies them, the terms of a
sum must share one exponent, the argument of `exp`/`erf`/... must have exponent 0, and
`sign` is scale-free.  The solution is unique for the built-ins.  Steps scale as
$k'/k = \tau/(\lambda\tau')$.

When no exact solution exists (the `(grad)**2` term in the second-moment drift of
RMSpropW/AdamW does not scale like `sigma**2`), the solver retries with the high-noise dominant
balance: in a sum that contains noise terms, the noise-free terms are neglected.  The rule then
comes with `exact=False` and the neglected terms listed in `approximations`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy as sp

from sdederive.errors import ScalingRuleError
from sdederive.sde import SDE
from sdederive.symbols import sym

__all__ = ["scaling_rule", "ScalingRule"]

_NOISE_NAMES = ("sigma", "sigma0", "sigma1")


@dataclass
class ScalingRule:
    """A hyperparameter map for `B -> kappa*B` that leaves the SDE invariant up to a time change.

    Attributes
    ----------
    map
        discrete hyperparameter name -> its new value (`{"eta": sqrt(kappa)*eta, ...}`).
    time_change
        `lambda`; the new SDE at time `t` is the old one at `lambda*t`.
    steps
        the new number of steps as a multiple of `k` (`k/kappa`: same epochs).
    state_scaling
        auxiliary state -> factor (`v -> v/kappa` when `v` tracks `sigma**2`).
    exact
        invariance holds exactly; else `approximations` lists the neglected terms.
    exponents
        the solved exponents.
    """

    sde: SDE
    kappa: sp.Symbol
    map: dict = field(default_factory=dict)
    time_change: sp.Expr = sp.S.One
    steps: sp.Expr = sp.S.One
    state_scaling: dict = field(default_factory=dict)
    exact: bool = True
    approximations: list = field(default_factory=list)
    exponents: dict = field(default_factory=dict)
    free: list = field(default_factory=list)
    decays: tuple = ()

    def _fmt(self, name: str, val: sp.Expr) -> str:
        h = sym(name)
        if name in self.decays:
            factor = sp.simplify((1 - val) / (1 - h))
            return f"1 - {sp.sstr(factor)}*(1 - {name})" if factor != 1 else name
        return sp.sstr(val)

    def to_dict(self) -> dict:
        out = {k: self._fmt(k, v) for k, v in self.map.items()}
        out["steps"] = str(self.steps)
        out["time_change"] = str(self.time_change)
        out["state_scaling"] = {k: str(v) for k, v in self.state_scaling.items()}
        out["exact"] = self.exact
        out["approximations"] = list(self.approximations)
        out["optimizer"], out["regime"], out["noise"] = self.sde.optimizer, self.sde.regime, self.sde.noise
        if self.free:
            out["free"] = list(self.free)
        return out

    def __str__(self) -> str:
        k = self.kappa
        lines = [f"Scaling rule for {self.sde.optimizer} ({self.sde.regime}, {self.sde.noise}) when B -> {k}*B:"]
        for name, val in self.map.items():
            lines.append(f"  {name:<6} -> {self._fmt(name, val)}")
        lines.append(f"  steps  -> {self.steps}")
        if self.time_change != 1:
            lines.append(f"  the SDE runs {self.time_change} times faster in its own time (t' = t/{self.time_change})")
        for s, f in self.state_scaling.items():
            if f != 1:
                lines.append(f"  state {s} scales by {f}")
        if self.exact:
            lines.append("  exact: the SDE is invariant")
        else:
            lines.append("  approximate (high-noise dominant balance), neglecting: " + "; ".join(self.approximations))
        for fr in self.free:
            lines.append(f"  free: {fr}")
        return "\n".join(lines)

    __repr__ = __str__

    def latex(self) -> str:
        r"""An aligned LaTeX block: each hyperparameter's new value when $B \to \kappa B$, the steps
        and, where there is one, the time change."""
        from sdederive.sde import _LATEX_NAMES

        def lx(e) -> str:
            e = sp.sympify(e)
            names = {f: _LATEX_NAMES[str(f)] for f in e.free_symbols if str(f) in _LATEX_NAMES}
            return sp.latex(e, symbol_names={**names, self.kappa: r"\kappa"})

        rows = []
        for name, val in self.map.items():
            h = sym(name)
            if name in self.decays:  # 1 - beta -> factor*(1 - beta), as the text form writes it
                factor = sp.simplify((1 - val) / (1 - h))
                rhs = rf"1 - {lx(factor)}\,(1 - {lx(h)})" if factor != 1 else lx(h)
            else:
                rhs = lx(val)
            rows.append(rf"{lx(h)} &\to {rhs}")
        rows.append(rf"k &\to {lx(self.steps)} \quad\text{{(steps)}}")
        if self.time_change != 1:
            rows.append(rf"t' &= t / {lx(self.time_change)}")
        for st, f in self.state_scaling.items():
            if f != 1:
                rows.append(rf"{lx(sym(st))} &\to {lx(f)}\,{lx(sym(st))}")
        return "\\begin{aligned}\n" + " \\\\\n".join(rows) + "\n\\end{aligned}"

    def _repr_latex_(self) -> str:
        """Jupyter: the LaTeX block, rendered."""
        return "$$" + self.latex() + "$$"


class _Inconsistent(Exception):
    pass


class _Exponents:
    """Exponent (power of kappa) of an expression under the ansatz, as a linear form."""

    def __init__(self, base: dict, relax: bool) -> None:
        self.base = base  # symbol -> linear form
        self.relax = relax
        self.constraints: list[tuple[sp.Expr, str]] = []
        self.dropped: list[str] = []

    def _noisy(self, e: sp.Expr) -> bool:
        return any(str(s) in _NOISE_NAMES for s in e.free_symbols)

    def _signal(self, e: sp.Expr) -> bool:
        """A term made of the gradient signal (grad, hess) without noise."""
        names = {str(s) for s in e.free_symbols}
        return bool(names & {"grad", "hess"}) and not self._noisy(e)

    def __call__(self, e: sp.Expr) -> sp.Expr:
        if e.is_Number or e.is_NumberSymbol or not e.free_symbols:
            return sp.S.Zero
        if e.is_Symbol:
            if e not in self.base:
                raise ScalingRuleError(f"symbol {e} has no scaling law (not a hyperparameter, state or noise symbol)")
            return self.base[e]
        if e.is_Add:
            terms = list(e.args)
            if self.relax:
                noisy = [t for t in terms if self._noisy(t)]
                quiet = [t for t in terms if self._signal(t)]
                if noisy and quiet:
                    self.dropped.extend(str(t) for t in quiet)
                    terms = [t for t in terms if t not in quiet]
            exps = [self(t) for t in terms]
            for t, x in zip(terms[1:], exps[1:]):
                self.constraints.append((x - exps[0], f"terms {terms[0]} and {t} of {e}"))
            return exps[0]
        if e.is_Mul:
            return sp.Add(*[self(a) for a in e.args])
        if e.is_Pow:
            b, x = e.args
            if x.free_symbols:
                self.constraints.append((self(b), f"base of {e}"))
                self.constraints.append((self(x), f"exponent of {e}"))
                return sp.S.Zero
            return x * self(b)
        if isinstance(e, sp.sign):
            self(e.args[0])
            return sp.S.Zero
        if isinstance(e, sp.Abs):
            return self(e.args[0])
        if isinstance(e, (sp.Tuple, tuple)):
            for a in e:
                self.constraints.append((self(a), f"{a} in {e}"))
            return sp.S.Zero
        if isinstance(e, (sp.Function, sp.hyper)):
            for a in e.args:
                if getattr(a, "free_symbols", None):
                    if isinstance(a, sp.Tuple):
                        self(a)
                    else:
                        self.constraints.append((self(a), f"argument {a} of {type(e).__name__}"))
            return sp.S.Zero
        raise ScalingRuleError(f"cannot scale the sub-expression {e} ({type(e).__name__})")


def scaling_rule(sde: SDE, kappa: str | sp.Symbol = "kappa") -> ScalingRule:
    """Solve for the hyperparameter map under `B -> kappa*B` (see the module docstring)."""
    kap = sym(kappa) if isinstance(kappa, str) else kappa
    try:
        return _solve(sde, kap, relax=False)
    except _Inconsistent:
        try:
            return _solve(sde, kap, relax=True)
        except _Inconsistent as e:
            raise ScalingRuleError(
                f"no power-law hyperparameter map leaves the {sde.optimizer} SDE ({sde.regime}) invariant when "
                f"B -> kappa*B, even neglecting gradient-signal terms against noise terms: {e.args[0]}."
                + (" The drift depends on grad/sigma through a nonlinear function, which no rescaling of the "
                   "hyperparameters keeps fixed." if "erf" in str(sde.drift) or "hyper" in str(sde.drift) else "")
            ) from None


def _solve(sde: SDE, kap: sp.Symbol, relax: bool) -> ScalingRule:
    eta = sym("eta")
    kinds = {name: kind for name, kind, _ in sde.hypers}
    free_syms = sde._free()
    unknowns: dict[str, sp.Symbol] = {}

    def unk(name: str) -> sp.Symbol:
        if name not in unknowns:
            unknowns[name] = sp.Symbol(f"e_{name}")
        return unknowns[name]

    ell = unk("time")
    base: dict = {eta: unk("eta"), sym("t"): -ell}
    # noise: sigma ~ 1/sqrt(B)
    base[sym("sigma")] = sp.Rational(-1, 2)
    base[sym("sigma1")] = sp.S.Zero
    base[sym("B")] = sp.S.One
    for n in ("grad", "hess", "h", "nu"):
        base[sym(n)] = sp.S.Zero
    base[free_syms.get("x", sym("x"))] = sp.S.Zero
    for s in sde.states[1:]:
        base[free_syms.get(s, sym(s))] = unk("state_" + s)
    # discrete hyperparameters: decays through 1 - beta, others directly
    decay_prim = {}
    for name, kind, _ in sde.hypers:
        if name == "eta":
            continue
        if kind == "decay":
            decay_prim[name] = unk("one_minus_" + name)
        else:
            h = free_syms.get(name)
            if h is not None:
                base[h] = unk(name)
    # the regime's scaled symbols, through their definitions
    helper = _Exponents(dict(base), relax=False)
    for pname, pdef in sde.params.items():
        s = free_syms.get(pname)
        if s is None:
            continue
        d = pdef
        for name, prim in decay_prim.items():
            hs = [f for f in d.free_symbols if str(f) == name]
            if hs:
                H = sp.Dummy(f"one_minus_{name}", positive=True)
                d = d.xreplace({hs[0]: 1 - H})
                helper.base[H] = prim
        for f in d.free_symbols:
            if f not in helper.base and str(f) in (n for n, _, _ in sde.hypers):
                helper.base[f] = unk(str(f))
        base[s] = helper(sp.expand(d) if not d.is_Mul else d)
    for f in free_syms.values():
        if f not in base and str(f) in kinds:
            base[f] = unk(str(f))

    X = _Exponents(base, relax)
    eqs: list[tuple[sp.Expr, str]] = []
    for i, s in enumerate(sde.states):
        p = base[free_syms.get(s, sym(s))] if s != "x" else sp.S.Zero
        b = sde.drift[s]
        if b != 0:
            eqs.append((X(b) - (ell + p), f"drift of {s}"))
        for j in range(sde.diffusion_matrix.shape[1]):
            d = sde.diffusion_matrix[i, j]
            if d != 0:
                eqs.append((X(d) - (ell / 2 + p), f"diffusion of {s}"))
    eqs += X.constraints
    eqs += helper.constraints
    unk_list = list(unknowns.values())
    sol = sp.linsolve([e for e, _ in eqs], unk_list)
    if sol == sp.EmptySet or not sol:
        # name a blocking equation for the message
        for e, why in eqs:
            if not e.free_symbols & set(unk_list) and e != 0:
                raise _Inconsistent(f"{why} would need {e} = 0")
        raise _Inconsistent("the exponent equations have no solution")
    (vals,) = list(sol)
    values = dict(zip(unk_list, vals))
    free = []
    fixes = {}
    for v in values.values():
        for f in v.free_symbols & set(unk_list):
            fixes[f] = sp.S.Zero
            free.append(f"{str(f)[2:]} (unconstrained; set to no change)")
    values = {u: sp.nsimplify(v.subs(fixes)) for u, v in values.items()}

    rule = ScalingRule(sde=sde, kappa=kap, exact=not X.dropped, decays=tuple(decay_prim),
                       approximations=sorted(set(X.dropped)), free=sorted(set(free)))
    rule.exponents = {str(u)[2:]: v for u, v in values.items()}
    a_eta = values[unknowns["eta"]]
    rule.map["eta"] = kap**a_eta * eta
    for name, _kind, _ in sde.hypers:
        if name == "eta":
            continue
        if name in decay_prim:
            b = values.get(decay_prim[name])
            if b is not None and decay_prim[name] in values:
                rule.map[name] = 1 - kap**b * (1 - sym(name))
        elif name in unknowns:
            h = free_syms.get(name) or sym(name)
            rule.map[name] = kap ** values[unknowns[name]] * h
    lam = kap ** values[ell]
    rule.time_change = lam
    q = sp.powsimp(sp.expand(sde.tau)).as_coeff_exponent(eta)[1]  # tau = c*eta**q (q may be fractional)
    rule.steps = sp.simplify(sym("k") * kap ** (-(values[ell] + q * a_eta)))
    for s in sde.states[1:]:
        key = "state_" + s
        if key in unknowns:
            rule.state_scaling[s] = kap ** values[unknowns[key]]
    return rule

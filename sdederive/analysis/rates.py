r"""Convergence bounds from SDEs: Itô's formula, named assumptions, Grönwall.

The papers get their rates the same way, and so does this module:

1. apply the SDE's generator (`sdederive.analysis.ito`) to a Lyapunov function -- the loss for
   `loss_bound`, a (preconditioned) distance to the minimizer for `convex_bound`;
2. bound each term with an inequality licensed by an `Assumptions`
   set (each use is recorded as a `Step`: the bound reads as a proof);
3. integrate: Grönwall's lemma for $\dot F \le -rF + C$
   ($F(t) \le F_0e^{-rt} + \tfrac Cr(1-e^{-rt})$: rate `r`, floor `C/r`), or the
   time average and Jensen for the averaged iterate in the convex case.

Where the terms cannot be closed (no PL inequality, a drift not controlled by the gradient, a
state-dependent preconditioner without a bound on the state) the result is the differential
inequality itself with `closed = False` and a statement of what is missing -- never a rate.

Results on the reference's examples (Compagnoni et al. 2025 §3; `docs/reference/adaptive_sdes.md` §2.3):
SGD under L-smoothness, mu-PL and noise sigma_i: rate `2*mu` (independent of sigma), floor
`eta*L*||sigma||_2^2/(4*mu)`; SignSGD (small signal-to-noise linearization): rate
`2*mu*sqrt(2/pi)/sigma_max`, floor `eta*L*d*sigma_max*sqrt(pi/2)/(4*mu)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy as sp

from sdederive.analysis.assumptions import Assumptions, idx
from sdederive.analysis.ito import generator, x_star
from sdederive.errors import SdederiveError
from sdederive.sde import SDE
from sdederive.symbols import sym

__all__ = ["loss_bound", "convex_bound", "compare", "stationary_loss", "Bound", "Step", "RateComparison"]

t_ = sym("t")
F = sp.Symbol("F", nonnegative=True)          # E[f(X_t)] - f*
F0 = sp.Symbol("F_0", nonnegative=True)       # f(x_0) - f*
G2 = sp.Symbol("|grad f|^2", nonnegative=True)
K = sp.Symbol("K", positive=True)             # number of discrete steps
N = sp.Symbol("N", positive=True)             # sample budget K*B
D2 = sp.Symbol("D_2", positive=True)          # ||x_0 - x*||_2
Dinf = sp.Symbol("D_inf", positive=True)      # sup_t ||x_t - x*||_inf
_LATEX = {F: "F", F0: "F_0", G2: r"|\nabla f|^2", D2: "D_2", Dinf: r"D_\infty"}


def _latex_names(e: sp.Expr) -> dict:
    """LaTeX names: `L_1` -> `\\|L\\|_1`, `sigma_max` -> `\\sigma_{max}`, plus the fixed ones."""
    from sdederive.sde import _LATEX_NAMES

    names = dict(_LATEX)
    for s in e.free_symbols:
        if s in names:
            continue
        if s.name in _LATEX_NAMES:
            names[s] = _LATEX_NAMES[s.name]
            continue
        base, _, p = s.name.rpartition("_")
        if base and p in ("1", "2", "inf"):
            b = sp.latex(sp.Symbol(base))
            sub = r"\infty" if p == "inf" else p
            names[s] = rf"\|{b}\|_{{{sub}}}"
    return names


@dataclass(frozen=True)
class Step:
    """One step of a derived bound: `kind` is `ito`, `inequality` (with the assumption that
    licenses it), `approximation` (not a bound: the result is then not rigorous), `identity`
    or `integration`; `result` is the right-hand side after the step."""

    kind: str
    text: str
    result: sp.Expr | None = None
    assumption: str = ""

    def __str__(self) -> str:
        tag = {"inequality": "<=", "approximation": "~=", "ito": "Ito", "identity": "=",
               "integration": "int"}.get(self.kind, self.kind)
        why = f"  [{self.assumption}]" if self.assumption else ""
        res = f"\n        -> {self.result}" if self.result is not None else ""
        return f"({tag}) {self.text}{why}{res}"


@dataclass
class Bound:
    r"""A derived bound (see the module docstring).

    `inequality`: the differential inequality $\dot F \le \text{rhs}$ (`rhs` here);
    `rate`, `floor`: of the integrated bound, `None` when it does not close;
    `integrated`: right-hand side of $\mathbb E f(X_t) - f^* \le \dots$ (loss bounds) or of
    $\mathbb E f(\bar x_K) - f^* \le \dots$ (convex bounds, in steps `K`);
    `rigorous`: no approximation step was used; `statement`: the conclusion in words.
    """

    optimizer: str
    kind: str
    assumptions: Assumptions
    rhs: sp.Expr
    rate: sp.Expr | None
    floor: sp.Expr | None
    integrated: sp.Expr | None
    steps: list[Step]
    statement: str
    closed: bool
    extra: dict = field(default_factory=dict)

    @property
    def rigorous(self) -> bool:
        return not any(s.kind == "approximation" for s in self.steps)

    def __str__(self) -> str:
        head = f"{self.kind} bound for the {self.optimizer} SDE"
        lines = [head, "  assumptions:"] + [f"    - {a}" for a in self.assumptions.describe()]
        lines += ["  derivation:"] + [f"    {k + 1}. {s}" for k, s in enumerate(self.steps)]
        if self.kind == "loss":
            lines.append(f"  dF/dt <= {self.rhs}    (F = E[f(X_t)] - f*)")
        if self.closed:
            if self.rate is not None:
                lines.append(f"  rate  = {self.rate}")
                lines.append(f"  floor = {self.floor}")
            lines.append(f"  bound: {'E[f(X_t)] - f*' if self.kind == 'loss' else 'E[f(xbar_K)] - f*'} <= "
                         f"{self.integrated}")
        lines.append(f"  {self.statement}")
        if not self.rigorous:
            lines.append("  (uses an approximation step; not a rigorous bound)")
        return "\n".join(lines)

    __repr__ = __str__

    def latex(self) -> str:
        """An aligned LaTeX block: the differential inequality and the integrated bound."""
        names = _latex_names(self.rhs + (self.integrated if self.integrated is not None else 0))
        rows = []
        if self.kind == "loss":
            rows.append(rf"\frac{{d}}{{dt}}\,\mathbb E[f(X_t)-f^*] &\le {sp.latex(self.rhs, symbol_names=names)}")
        if self.closed and self.integrated is not None:
            lhs = r"\mathbb E[f(X_t)] - f^*" if self.kind == "loss" else r"\mathbb E[f(\bar x_K)] - f^*"
            rows.append(rf"{lhs} &\le {sp.latex(self.integrated, symbol_names=names)}")
        return "\\begin{aligned}\n" + " \\\\\n".join(rows) + "\n\\end{aligned}"

    def _repr_latex_(self) -> str:
        """Jupyter: the LaTeX block, rendered."""
        return "$$" + self.latex() + "$$"

    def to_dict(self) -> dict:
        s = (lambda e: None if e is None else str(e))  # noqa: E731
        return {"optimizer": self.optimizer, "kind": self.kind, "closed": self.closed,
                "rigorous": self.rigorous, "rhs": s(self.rhs), "rate": s(self.rate), "floor": s(self.floor),
                "integrated": s(self.integrated), "statement": self.statement,
                "assumptions": self.assumptions.describe(),
                "steps": [{"kind": st.kind, "text": st.text, "assumption": st.assumption,
                           "result": s(st.result)} for st in self.steps]}

    def evaluate(self, **values) -> float:
        """The integrated bound at numbers (names as printed: `mu=`, `L=`, `t=` ...)."""
        if self.integrated is None:
            raise SdederiveError(f"the {self.optimizer} bound does not close; nothing to evaluate")
        e = self.integrated
        subs = {s: values[str(s)] for s in e.free_symbols if str(s) in values}
        missing = sorted(str(s) for s in e.free_symbols if str(s) not in values)
        if missing:
            raise SdederiveError(f"evaluate() needs values for {missing}")
        return float(e.xreplace(subs))


def _as_sde(obj, regime=None) -> SDE:
    if isinstance(obj, SDE):
        return obj
    from sdederive.derivation.engine import derive

    return derive(obj, regime=regime)


def _prep(sde: SDE, A: Assumptions):
    """The SDE's per-coordinate symbols -> the assumptions' indexed ones (sigma -> sigma_i/sqrt(B))."""
    if A.mu in sde.symbols:
        raise SdederiveError(f"the PL constant's name {A.mu!r} is a symbol of the {sde.optimizer} SDE; "
                             f"pick another, e.g. Assumptions(mu='mu_pl')")
    free = sde._free()
    sig = free.get("sigma", sym("sigma"))
    rep = {sig: A.sigma_i() / sp.sqrt(A.B_sym)}
    if "sigma0" in free:
        raise SdederiveError(f"the {sde.optimizer} SDE is in the {sde.regime} regime (sigma0 = sigma*eta); "
                             "rates need the unscaled noise: derive it in the 'sgd' or 'balanced' regime")
    return rep


def _real_atoms(e: sp.Expr) -> sp.Expr:
    """Hypergeometric functions of real arguments are real; tell sympy (for sign checks only)."""
    return e.replace(lambda a: isinstance(a, sp.hyper) and all(x.is_real for x in a.free_symbols),
                     lambda a: sp.Dummy(real=True))


def _nonpos_terms(e: sp.Expr, var: sp.Symbol) -> tuple[sp.Expr, list[sp.Expr]]:
    """Drop the additive terms of `e` that depend on `var` and are provably <= 0.

    Tries the unexpanded form `c * (sum of terms)` first (`eta*(1 - erf(.)**2)`: the structure
    that makes the sign visible to sympy), then the expanded sum."""
    c, inner = e.as_independent(var, as_Add=False)
    for cand, scale in ((inner, c), (sp.expand(e), sp.S.One)):
        if not (scale.is_nonnegative and isinstance(cand, sp.Add)):
            continue
        keep, dropped = [], []
        for term in cand.args:
            (dropped if term.has(var) and _real_atoms(term).is_nonpositive else keep).append(term)
        if dropped:
            return scale * sp.Add(*keep), [scale * t for t in dropped]
    return e, []


def _coord_sum(e: sp.Expr, A: Assumptions) -> sp.Expr:
    """`sum_i e` with the usual names for the sums that have them."""
    s = A.sigma_i()
    Li = A.L_i()
    e = sp.expand(e)
    out = sp.S.Zero
    for term in sp.Add.make_args(e):
        c, dep = term.as_independent(idx, as_Add=False)
        if dep == 1:
            out += A.d * c
            continue
        pw = dep.as_powers_dict()
        ps, pl = pw.get(s, 0), pw.get(Li, 0) if A.anisotropic else 0
        rest = dep / (s**ps * (Li**pl if A.anisotropic else 1))
        if rest != 1:
            out += c * sp.Sum(dep, (idx, 1, A.d))
            continue
        if pl == 0 and ps == 2:
            out += c * A.norm("sigma", "2") ** 2
        elif pl == 0 and ps == 1:
            out += c * A.norm("sigma", "1")
        elif pl == 1 and ps == 0:
            out += c * A.norm("L", "1")
        else:
            out += c * sp.Sum(dep, (idx, 1, A.d))
    return out


def loss_bound(sde, A: Assumptions, regime=None) -> Bound:
    r"""Bound $\mathbb E f(X_t) - f^*$ along the SDE (module docstring).

    `sde`: a derived SDE or an optimizer name (derived in its natural regime, or `regime`).
    """
    sde = _as_sde(sde, regime)
    if not isinstance(A, Assumptions):
        raise SdederiveError(f"A must be an sd.assumptions.Assumptions (e.g. Smooth(pl=True)), got {type(A).__name__}")
    rep = _prep(sde, A)
    grad, hess = sym("grad"), sym("hess")
    gen = generator(sde, "loss")
    steps = [Step("ito", f"Ito's formula on f along dX = b dt + D dW: dE[f]/dt = E[sum_i (b_i d_i f + 1/2 (DD^T)_ii "
                  f"d_ii f)], b = {sde.drift[sde.states[0]]}", gen.summand)]
    svars = [s for s in sde._free().values() if str(s) in sde.states[1:]]
    bx = (gen.drift_part / grad).xreplace(rep)
    # (DD^T)_xx as the product of the diffusion row, not the generator's simplified ito_part:
    # sympy's simplify turns eta*(1 - erf(.)**2) into forms whose nonpositive terms it cannot see
    Qxx = (sde.diffusion_matrix.row(0) * sde.diffusion_matrix.row(0).T)[0, 0].xreplace(rep) \
        if sde.diffusion_matrix.shape[1] else sp.S.Zero
    unbounded = sp.Sum(gen.summand.xreplace(rep), (idx, 1, A.d))  # dF/dt = this, before any bound

    def open_(why: str, rhs: sp.Expr = unbounded) -> Bound:
        return Bound(sde.optimizer, "loss", A, rhs, None, None, None, steps,
                     f"No closed-form rate follows: {why}.", False)

    x = sde._free().get("x", sym("x"))
    if any(bx.has(v) or Qxx.has(v) for v in svars) or bx.has(t_) or Qxx.has(t_):
        return open_(f"the drift or diffusion of x depends on the states {[str(v) for v in svars]} or on t; "
                     "bound them first (e.g. the stationary analysis sd.rates.stationary_loss)")
    if bx.has(x):
        return open_("the drift has a term in x that the gradient does not control (weight decay?)")
    # -- drift term: b_x * d_i f = -a * (d_i f)^2 -----------------------------------------------
    a = -bx / grad
    if a.has(grad):
        if not A.small_snr:
            return open_("the drift is nonlinear in the gradient (e.g. SignSGD's erf) and small_snr=False")
        a0 = sp.simplify(sp.limit(sp.hyperexpand(-bx / grad), grad, 0))
        steps.append(Step("approximation", f"small signal-to-noise ratio |d_i f|/sigma_i: drift b_i = {bx} "
                          f"linearized at d_i f = 0 to -({a0}) d_i f (Compagnoni et al.'s phase 3)",
                          -a0 * grad**2, "small_snr"))
        a = a0
    if not a.is_positive:
        return open_(f"the drift coefficient -b/d_i f = {a} is not positive, so the drift need not decrease f")
    s = A.sigma_i()
    amin = a
    if a.has(s):
        da = sp.diff(a, s)
        if da.is_negative:
            amin = a.xreplace({s: A.sigma_max})
            steps.append(Step("inequality", f"-sum_i {a} (d_i f)^2 <= -{amin} |grad f|^2", -amin * G2,
                              f"sigma_i <= {A.sigma_max} = ||{A.sigma}||_inf, and {a} decreases in sigma_i"))
        else:
            return open_(f"the drift coefficient {a} is not decreasing in sigma_i; no coordinate-free lower bound")
    else:
        steps.append(Step("identity", f"sum_i -({a}) (d_i f)^2 = -({a}) |grad f|^2", -amin * G2))
    # -- Ito term: 1/2 (DD^T)_xx d_ii f ------------------------------------------------------------
    Qb, dropped = _nonpos_terms(Qxx, grad)
    if dropped:
        steps.append(Step("inequality", f"(DD^T)_xx = {Qxx} <= {Qb}: dropped {sp.Add(*dropped)} <= 0", Qb,
                          "the dropped terms are nonpositive"))
    if Qb.has(grad):
        return open_(f"the diffusion {Qb} depends on the gradient in a way this bound does not control",
                     -amin * G2 + sp.Sum(Qb * hess / 2, (idx, 1, A.d)))
    if A.smoothness is None:
        return open_("the Ito correction 1/2 (DD^T)_xx d_ii f needs an upper bound on the curvature (smoothness)",
                     -amin * G2 + sp.Sum(Qb * hess / 2, (idx, 1, A.d)))
    Li = A.L_i()
    C = _coord_sum(Qb * Li / 2, A)
    steps.append(Step("inequality", f"sum_i 1/2 (DD^T)_xx d_ii f <= sum_i 1/2 ({Qb}) {Li} = {C}", C,
                      f"d_ii f <= {Li} ({'anisotropic ' if A.anisotropic else ''}smoothness), (DD^T)_xx >= 0"))
    rhs_open = -amin * G2 + C
    if not A.pl:
        T = sp.Symbol("t", positive=True)
        avg = F0 / (amin * T) + C / amin
        steps.append(Step("integration", "integrate over [0, t] and divide by t (F >= 0)", avg))
        return Bound(sde.optimizer, "loss", A, rhs_open, None, None, None, steps,
                     "No closed-form rate follows: without a PL (or strong convexity) inequality |grad f|^2 is not "
                     "bounded below by f - f*, so the inequality does not close in F. What does follow: "
                     f"(1/t) int_0^t E|grad f(X_s)|^2 ds <= {avg}.", False, {"gradient_average": avg})
    mu = A.mu_sym
    rhs = sp.expand(-2 * mu * amin * F + C)
    steps.append(Step("inequality", f"|grad f|^2 >= 2 {mu} (f - f*)", rhs, f"{mu}-PL"))
    r = sp.simplify(2 * mu * amin)
    floor = sp.simplify(C / r)
    integ = F0 * sp.exp(-r * t_) + floor * (1 - sp.exp(-r * t_))
    steps.append(Step("integration", f"Gronwall: dF/dt <= -r F + C with r = {r}, C = {C}", integ))
    return Bound(sde.optimizer, "loss", A, rhs, r, floor, integ, steps,
                 f"E[f(X_t)] - f* decays at rate {r} to the floor {floor}.", True)


def _choose_eta(bound: sp.Expr, eta: sp.Symbol, cap: sp.Expr | None, steps: list[Step], why: str) -> sp.Expr:
    """`a/eta + b*eta` -> `2 sqrt(ab)`, plus `a*cap` when the step size is capped by `1/cap`."""
    e = sp.expand(bound)
    a = sp.simplify(e.coeff(eta, -1))
    b = sp.simplify(e.coeff(eta, 1))
    rest = sp.simplify(e - a / eta - b * eta)
    if rest.has(eta) or a == 0 or b == 0:
        return bound
    best = 2 * sp.sqrt(a * b) + rest
    if cap is None:
        steps.append(Step("identity", f"eta = sqrt({a}/{b}) minimizes {a}/eta + {b}*eta", best, why))
        return best
    out = sp.expand(a * cap + 2 * sp.sqrt(a * b) + rest)
    steps.append(Step("inequality", f"eta = min(1/{cap}, sqrt({a}/{b})) gives at most {a}*{cap} + 2 sqrt({a}*{b})",
                      out, why))
    return out


def convex_bound(sde, A: Assumptions, regime=None, choose_eta: bool = True) -> Bound:
    r"""Averaged-iterate bound $\mathbb E f(\bar x_K) - f^*$ for convex `f` (in steps `K`).

    Two Lyapunov functions, chosen by the SDE's structure (and refused otherwise):

    * drift $-a\,\partial_i f$ with a constant `a` (SGD): $\varphi = \tfrac12|x-x^*|^2$;
    * accumulator preconditioner, drift $-\partial_i f/P_i$ with $P_i = \epsilon_0 + \sqrt{u_i}$
      and $\dot u_i = (\partial_i f)^2 + \sigma_i^2$ (Adagrad):
      $\varphi = \tfrac12\sum_i P_i (x_i - x^*_i)^2$, the continuous form of the AdaGrad analysis.
    """
    sde = _as_sde(sde, regime)
    rep = _prep(sde, A)
    steps: list[Step] = []
    grad = sym("grad")
    free = sde._free()
    x = free.get("x", sym("x"))
    eta = sym("eta")
    B = A.B_sym
    states = list(sde.states)
    bx = sp.simplify(sp.sympify(sde.drift["x"]))
    if len(states) == 1:
        a = sp.simplify(-bx / grad)
        if a.has(grad) or a.has(x) or not a.is_positive:
            raise SdederiveError(f"convex_bound: the {sde.optimizer} drift {bx} is not -a*grad with a constant a > 0; "
                                 "no Lyapunov template applies (use loss_bound)")
        gen = generator(sde, "dist2")
        steps.append(Step("ito", "Ito's formula on phi = 1/2 |x - x*|^2", gen.summand))
        Q = sp.simplify((2 * gen.ito_part).xreplace(rep))
        if Q.has(grad) or Q.has(x):
            raise SdederiveError(f"convex_bound: the diffusion {Q} of the {sde.optimizer} SDE depends on the state")
        noise = _coord_sum(Q / 2, A)
        steps.append(Step("inequality", f"sum_i (x_i - x*_i) d_i f >= f - f*: dphi/dt <= -{a} F + {noise}",
                          -a * F + noise, "convexity"))
        T = sp.Symbol("T", positive=True)
        avg = D2**2 / (2 * a * T) + noise / a
        steps.append(Step("integration", "integrate over [0, T], phi >= 0, phi(0) = D_2^2/2, and Jensen "
                          "f(xbar) <= average of f", avg))
        tau = sde.tau
        inK = sp.expand(avg.xreplace({T: K * tau}))
        steps.append(Step("identity", f"T = K*tau with tau = {tau}", inK))
        out = inK
        if choose_eta and inK.has(eta):
            cap = A.norm("L", "inf") if A.anisotropic else (A.L_sym if A.smoothness else None)
            out = _choose_eta(inK, eta, cap, steps, "the discrete method needs eta <= 1/L_max for stability "
                              "(a property of the recursion, not of the SDE)")
        return Bound(sde.optimizer, "convex", A, -a * F + noise, None, None, sp.simplify(out) if
                     sp.count_ops(out) < 60 else out, steps, f"E[f(xbar_K)] - f* <= {out}.", True)
    # -- accumulator preconditioner (Adagrad) --------------------------------------------------------
    if len(states) != 2:
        raise SdederiveError(f"convex_bound: no Lyapunov template for the states {states} of {sde.optimizer}")
    u = free.get(states[1], sym(states[1]))
    bu = sp.simplify(sp.sympify(sde.drift[states[1]]))
    P = sp.simplify(-grad / bx)
    sig = free.get("sigma", sym("sigma"))
    if P.has(grad) or sp.simplify(sp.diff(P, u) - 1 / (2 * sp.sqrt(u))) != 0 or sp.simplify(bu - grad**2 - sig**2) != 0:
        raise SdederiveError(f"convex_bound: the {sde.optimizer} SDE is not of the accumulator form "
                             "dx = -grad/(eps0 + sqrt(u)) dt + ..., du = (grad^2 + sigma^2) dt; no template applies")
    xs = x_star
    phi = P * (x - xs) ** 2 / 2
    gen = generator(sde, phi)
    steps.append(Step("ito", f"Ito's formula on phi = sum_i 1/2 P_i (x_i - x*_i)^2, P = {P}", gen.summand))
    steps.append(Step("approximation", f"the noise of {u} (O(eta) relative to its drift) is neglected: {u} is "
                      "treated as a process of bounded variation, u_i(t) = int_0^t (d_i f^2 + sigma_i^2) ds", None,
                      "accumulator averaging"))
    Qxx = sp.simplify(sp.Matrix(sde.diffusion_matrix.row(0)).dot(sp.Matrix(sde.diffusion_matrix.row(0))))
    ito_x = sp.simplify(P * Qxx / 2)
    main = sp.expand(-(x - xs) * grad + bu * sp.diff(phi, u) + ito_x)
    steps.append(Step("identity", "the x- and u-drift terms and the x-diffusion term", main))
    steps.append(Step("inequality", "sum_i (x_i - x*_i) d_i f >= f - f*", None, "convexity"))
    steps.append(Step("inequality", "(x_i - x*_i)^2 <= D_inf^2: sum_i (x_i - x*_i)^2 u_i'/(4 sqrt(u_i)) <= "
                      "D_inf^2/2 sum_i d sqrt(u_i)/dt", None, "iterates in the box ||x - x*||_inf <= D_inf"))
    sq = sp.simplify(ito_x.xreplace({sym("eps0"): 0}) * 2 * sp.sqrt(u) / sig**2) if ito_x.has(sig) else None
    if sq is None or sq.has(u) or sq.has(grad):
        raise SdederiveError(f"convex_bound: unexpected x-diffusion term {ito_x} in the {sde.optimizer} SDE")
    steps.append(Step("inequality", f"{ito_x} <= {sq} sigma_i^2/(2 sqrt(u_i)) <= {sq} sigma_i/(2 sqrt(t))",
                      None, "eps0 >= 0 and u_i(t) >= sigma_i^2 t since u_i' >= sigma_i^2"))
    T = sp.Symbol("T", positive=True)
    eps0 = free.get("eps0", sym("eps0"))
    phi0 = eps0 * D2**2 / 2
    s1 = A.norm("sigma", "1") / sp.sqrt(B)
    L1 = A.total("L")
    a_ = phi0 + (Dinf**2 / 2 + sq) * s1 * sp.sqrt(T)
    steps.append(Step("integration", "integrate over [0, T]: S = int E[f - f*] <= phi(0) + D_inf^2/2 sum_i "
                      f"sqrt(u_i(T)) + {sq} ||sigma||_1 sqrt(T), phi(0) = eps0 |x0 - x*|^2/2",
                      None))
    steps.append(Step("inequality", "sqrt(u_i(T)) <= sqrt(int d_i f^2) + sigma_i sqrt(T)", None, "sqrt(a+b) <= "
                      "sqrt(a) + sqrt(b)"))
    steps.append(Step("inequality", "sum_i sqrt(int d_i f^2) <= sqrt(sum_i L_i) sqrt(sum_i int d_i f^2/L_i) <= "
                      f"sqrt(2 {L1} S)", None, "Cauchy-Schwarz; sum_i (d_i f)^2/L_i <= 2(f - f*) "
                      f"({'anisotropic ' if A.anisotropic else ''}smoothness)"))
    b_ = Dinf**2 / 2 * sp.sqrt(2 * L1)
    Sb = sp.expand(2 * a_ + b_**2)
    steps.append(Step("inequality", f"S <= a + b sqrt(S) implies S <= 2a + b^2, a = {a_}, b = {b_}", Sb))
    avg = sp.expand(Sb / T)
    steps.append(Step("integration", "Jensen: f(xbar_T) - f* <= S/T", avg))
    inK = sp.expand(avg.xreplace({T: K * sde.tau}))
    steps.append(Step("identity", f"T = K*tau with tau = {sde.tau}", inK))
    out = inK
    if choose_eta:
        out = sp.expand(inK.xreplace({eta: Dinf}))
        steps.append(Step("identity", "eta = D_inf (the usual AdaGrad step size)", out))
    return Bound(sde.optimizer, "convex", A, sp.S.Zero, None, None, out, steps,
                 f"E[f(xbar_K)] - f* <= {out}.", True)


@dataclass
class RateComparison:
    """Side-by-side bounds of several optimizers under one assumption set (`budget="samples"`:
    written in the sample budget `N = K*B`)."""

    assumptions: Assumptions
    bounds: dict
    budget: str
    forms: dict

    def __str__(self) -> str:
        w = max(len(k) for k in self.forms)
        lines = [f"bounds under: {'; '.join(self.assumptions.describe())}",
                 f"({'in the sample budget N = K*B' if self.budget == 'samples' else 'in steps K'})"]
        lines += [f"  {k:<{w}} : {v}" for k, v in self.forms.items()]
        return "\n".join(lines)

    __repr__ = __str__

    def latex(self) -> str:
        rows = [rf"\text{{{k}}} &: {sp.latex(v, symbol_names=_latex_names(v))}" for k, v in self.forms.items()]
        return "\\begin{aligned}\n" + " \\\\\n".join(rows) + "\n\\end{aligned}"

    def _repr_latex_(self) -> str:
        """Jupyter: the LaTeX block, rendered."""
        return "$$" + self.latex() + "$$"

    def table(self, values: dict, batch_sizes, budget: float | None = None) -> list[dict]:
        """Numbers at a fixed budget (`N=`) as the batch size grows: one row per `B` with each
        optimizer's bound and the ratios to the first optimizer."""
        names = list(self.forms)
        rows = []
        for b in batch_sizes:
            vals = dict(values)
            vals[self.assumptions.B or "B"] = b
            if budget is not None:
                vals["N"] = budget
            row = {"B": b}
            for n in names:
                e = self.forms[n]
                missing = sorted(str(s) for s in e.free_symbols if str(s) not in vals)
                if missing:
                    raise SdederiveError(f"table() needs values for {missing}")
                row[n] = float(e.xreplace({s: vals[str(s)] for s in e.free_symbols}))
            for n in names[1:]:
                row[f"{names[0]}/{n}"] = row[names[0]] / row[n]
            rows.append(row)
        return rows

    @staticmethod
    def format_table(rows: list[dict]) -> str:
        keys = list(rows[0])
        out = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        for r in rows:
            out.append("| " + " | ".join(f"{r[k]:.4g}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |")
        return "\n".join(out)


def compare(optimizers, A: Assumptions, budget: str = "samples") -> RateComparison:
    """Convex averaged-iterate bounds of several optimizers (`convex_bound`), side by side.

    `budget="samples"` writes them in `N = K*B` (steps `K = N/B`), the fixed-sample-budget
    view of Liu, Pan & Zhang; `"steps"` keeps `K`.
    """
    if budget not in ("samples", "steps"):
        raise SdederiveError(f"budget={budget!r}; allowed: 'samples', 'steps'")
    if A.B is None:
        from dataclasses import replace

        A = replace(A, B="B")
    bounds, forms = {}, {}
    for o in optimizers:
        bd = convex_bound(o, A)
        bounds[str(o)] = bd
        e = bd.integrated
        if budget == "samples":
            e = sp.expand(e.xreplace({K: N / A.B_sym}))
        forms[str(o)] = e
    return RateComparison(A, bounds, budget, forms)


def stationary_loss(sde, regime=None, noise_limit: bool = True) -> dict:
    r"""Stationary expected loss on `f = h*x**2/2` per coordinate (`sdederive.analysis.stationary`) and its
    behaviour as the noise grows: `{"loss": E f, "sigma->oo": limit, "bounded_in_noise": bool}` (with
    `"condition"`, e.g. `"wd > 0"`, when the limit is finite only for positive values of a parameter)."""
    from sdederive.analysis.stationary import stationary

    sde = _as_sde(sde, regime)
    st = stationary(sde)
    out = {"loss": st.loss, "exact": st.exact}
    if noise_limit:
        sig = sde._free().get("sigma", sym("sigma"))
        if st.loss.has(sig):
            lim = sp.limit(st.loss, sig, sp.oo)
            out["sigma->oo"] = lim
            fin = lim.is_finite
            if fin is None:
                # finite once the nonnegative parameters in it are positive (wd > 0, say)?
                nonneg = [q for q in lim.free_symbols if q.is_nonnegative and not q.is_positive]
                pos = {q: sp.Symbol(q.name, positive=True) for q in nonneg}
                if lim.xreplace(pos).is_finite:
                    out["condition"] = " and ".join(f"{q} > 0" for q in sorted(nonneg, key=str))
                    fin = True
            out["bounded_in_noise"] = bool(fin)
        else:
            out["sigma->oo"] = st.loss
            out["bounded_in_noise"] = True
    return out

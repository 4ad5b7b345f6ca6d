r"""Optimal learning rate versus batch size, from the one-step expected loss change.

For an update $\theta \to \theta - \epsilon V$ with a coordinate-wise direction
$V_i = V(g_i)$ of the minibatch gradient $g_i = G_i + \tfrac{\sigma_i}{\sqrt B} z_i$
(`sigma` is the *per-example* standard deviation here, `B` the batch size), the expected loss
change on a quadratic $L(\theta-\epsilon V) = L - \epsilon G^\top V + \tfrac12\epsilon^2 V^\top H V$
is (Lemma 1 of Li et al. 2024, generalizing McCandlish et al. 2018, eq. 2.5)

$$
\mathbb E[\Delta L](\epsilon) = \epsilon\,N(B) - \tfrac12\epsilon^2\,D(B),\qquad
N = \sum_i G_i\,\mathbb E V_i,\qquad
D = \sum_i H_{ii}\,\mathbb E V_i^2 + \sum_{i\ne j} H_{ij}\,\mathbb E V_i\,\mathbb E V_j ,
$$

(coordinates independent given $\theta$; for a direction linear in `g` a full per-example
covariance $\Sigma$ enters as $\operatorname{tr}(H\Sigma)/B$ instead), so
$\epsilon_{opt} = N/D$ and $\Delta L_{opt} = \tfrac12 N\epsilon_{opt}$.

The moments $\mathbb E V_i$, $\mathbb E V_i^2$ are taken by the derivation engine's
expectation machinery (`sign` atoms become `erf` under Gaussian noise, the Student-t CDF under
Student-t noise).  `optimal_lr` then sorts $N$ and $D$ by powers of `B` and
recognizes the two published shapes:

* **McCandlish** (`N` constant, `D = D_0 + D_{-1}/B`, e.g. SGD):
  $\epsilon_{opt} = \epsilon_{max}/(1 + \mathcal B_{noise}/B)$,
  $\epsilon_{max} = N/D_0$, $\mathcal B_{noise} = D_{-1}/D_0 = \operatorname{tr}(H\Sigma)/G^\top H G$.
* **Surge** (`N` $\propto\sqrt B$, `D = D_0 + D_1 B`, sign updates in the small-batch
  regime $B \ll \pi\sigma_i^2/(2G_i^2)$, where $\operatorname{erf}(u)\approx 2u/\sqrt\pi$):
  $\epsilon_{opt} = \epsilon_{max}/\big(\tfrac12(\sqrt{\mathcal B_{noise}/B}+\sqrt{B/\mathcal B_{noise}})\big)$,
  $\mathcal B_{noise} = D_0/D_1 = \pi\sum_i H_{ii}/(2\sum_{i\ne j}\tfrac{G_iG_j}{\sigma_i\sigma_j}H_{ij})$,
  $\epsilon_{max} = N\sqrt{\mathcal B_{noise}}/(2D_0)$ (Li et al. eqs. 2, 14, 16).

Every approximation used (the small-batch linearization) is recorded in `OptimalLR.steps`.
`sgd_noise_scale` and `sign_noise_scale` evaluate the results on numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import sympy as sp

from sdederive.derivation.expectation import Expectation, extract_atoms
from sdederive.errors import SdederiveError
from sdederive.noise import get as get_noise
from sdederive.symbols import sym

__all__ = ["optimal_lr", "OptimalLR", "NoiseScale", "sgd_noise_scale", "sign_noise_scale", "noise_scale"]

# symbols of this module: per-coordinate G_i, sigma_i (per-example), H_ij, dimension d, batch B
B = sp.Symbol("B", positive=True)
eps_sym = sp.Symbol("epsilon", positive=True)
d = sp.Symbol("d", integer=True, positive=True)
i, j = sp.symbols("i j", integer=True, positive=True)
G = sp.IndexedBase("G", real=True)
Sg = sp.IndexedBase("sigma", positive=True)
H = sp.IndexedBase("H", real=True)
_g = sp.Symbol("g", real=True)            # the minibatch gradient coordinate in a user's direction
_gi, _si = sp.Symbol("G_i", real=True), sp.Symbol("sigma_i", positive=True)

_DIRECTIONS = {"sgd": _g, "sign": sp.sign(_g), "signsgd": sp.sign(_g),
               # Adam with beta1 = beta2 = 0 and eps = 0: m/sqrt(v) = g/|g| (Li et al. eq. 29)
               "adam": sp.sign(_g)}


def _direction(direction) -> tuple[str, sp.Expr]:
    if isinstance(direction, str):
        key = direction.lower()
        if key not in _DIRECTIONS:
            raise SdederiveError(
                f"unknown update direction {direction!r}; allowed: {', '.join(sorted(_DIRECTIONS))}, or a sympy "
                "expression in the symbol g (the minibatch gradient coordinate), e.g. sympy.sign(g)"
            )
        return key, _DIRECTIONS[key]
    expr = sp.sympify(direction)
    free = {str(s) for s in expr.free_symbols}
    if free - {"g"}:
        raise SdederiveError(
            f"update direction {expr} has free symbols {sorted(free - {'g'})}; allowed: only g, the minibatch "
            "gradient coordinate (substitute numbers for hyperparameters first)"
        )
    g_any = next((s for s in expr.free_symbols if str(s) == "g"), None)
    return str(expr), expr.xreplace({g_any: _g}) if g_any is not None else expr


def _moments(V: sp.Expr, noise) -> tuple[sp.Expr, sp.Expr]:
    """E[V] and E[V**2] for `g = G_i + sigma_i/sqrt(B) z` (exact, through the engine's atoms)."""
    zc = sym("z")
    gexpr = _gi + _si / sp.sqrt(B) * zc
    rew, atoms = extract_atoms({"V": V.xreplace({_g: gexpr}), "V2": (V**2).xreplace({_g: gexpr})})
    E = Expectation(noise, atoms, {}, 0)
    try:
        e1, e2 = sp.expand(E(rew["V"])), sp.expand(E(rew["V2"]))
    except Exception as exc:  # the engine's ExpectationError names the sub-expression
        raise SdederiveError(f"E[V] of the direction {V}: {exc}") from None
    return sp.simplify(e1), sp.simplify(e2)


def _by_power(e: sp.Expr) -> dict[sp.Rational, sp.Expr]:
    """Split an expression into `{q: c}` with `e = sum c * B**q`; raises if not of that form."""
    out: dict = {}
    for term in sp.Add.make_args(sp.expand(sp.powsimp(sp.expand(e), force=True))):
        c, dep = term.as_independent(B, as_Add=False)
        if dep == 1:
            q = sp.S.Zero
        else:
            base, q = dep.as_base_exp()
            if base != B:
                return {}
        out[q] = out.get(q, sp.S.Zero) + c
    return {q: sp.simplify(c) for q, c in out.items() if c != 0}


@dataclass
class _Coef:
    """`sum_i H_ii diag(G_i, sigma_i) + sum_{i != j} H_ij a(G_i,s_i) a(G_j,s_j)` (`full`: over all i, j)."""

    diag: sp.Expr = sp.S.Zero
    outer: sp.Expr = sp.S.Zero
    full: bool = False

    def expr(self) -> sp.Expr:
        def at(e, k):
            return e.xreplace({_gi: G[k], _si: Sg[k]})

        out = sp.S.Zero
        if self.diag != 0:
            out += sp.Sum(H[i, i] * at(self.diag, i), (i, 1, d))
        if self.outer != 0:
            body = H[i, j] * at(self.outer, i) * at(self.outer, j)
            out += sp.Sum(body if self.full else body * (1 - sp.KroneckerDelta(i, j)), (i, 1, d), (j, 1, d))
        return out

    def value(self, Gv, Sv, Hm) -> float:
        tot = 0.0
        if self.diag != 0:
            f = sp.lambdify((_gi, _si), self.diag, "numpy")
            tot += float(np.sum(np.diag(Hm) * np.broadcast_to(f(Gv, Sv), Gv.shape)))
        if self.outer != 0:
            a = np.broadcast_to(sp.lambdify((_gi, _si), self.outer, "numpy")(Gv, Sv), Gv.shape).astype(float)
            Hoff = Hm if self.full else Hm - np.diag(np.diag(Hm))  # the i != j sum directly: no cancellation
            tot += float(a @ Hoff @ a)
        return tot


@dataclass
class OptimalLR:
    r"""The optimal step of one update direction versus batch size (see the module docstring).

    `mean`, `second`: $\mathbb E V_i$, $\mathbb E V_i^2$ (exact, in `G_i`, `sigma_i`, `B`);
    `numerator`, `denominator`: $N(B)$, $D(B)$ under `approximation`;
    `eps_opt`: $N/D$; `form`: `"mccandlish"`, `"surge"` or `"other"`;
    `B_noise`, `eps_max`: sympy sums over coordinates (`None` for `"other"`);
    `eps_form`: $\epsilon_{opt}$ written in `B_noise`, `eps_max` and `B`;
    `steps`: every identity and approximation used, in order.
    """

    direction: str
    noise: str
    mean: sp.Expr
    second: sp.Expr
    numerator: sp.Expr
    denominator: sp.Expr
    eps_opt: sp.Expr
    form: str
    B_noise: sp.Expr | None
    eps_max: sp.Expr | None
    eps_form: sp.Expr | None
    steps: list[str] = field(default_factory=list)
    _num: dict = field(default_factory=dict, repr=False)
    _den: dict = field(default_factory=dict, repr=False)
    _exact: tuple = field(default=(), repr=False)
    linear: bool = False

    def expected_change(self) -> sp.Expr:
        r"""$\mathbb E[L(\theta) - L(\theta - \epsilon V)] = \epsilon N - \tfrac12\epsilon^2 D$."""
        return eps_sym * self.numerator - eps_sym**2 / 2 * self.denominator

    def __str__(self) -> str:
        lines = [f"Optimal learning rate vs batch size, direction V = {self.direction}, {self.noise} noise",
                 f"  E[V_i]   = {self.mean}", f"  E[V_i^2] = {self.second}",
                 "  E[dL](eps) = eps*N - eps**2/2*D with", f"    N = {self.numerator}", f"    D = {self.denominator}",
                 f"  eps_opt = N/D   ({self.form} form)"]
        if self.B_noise is not None:
            lines += [f"  B_noise = {self.B_noise}", f"  eps_max = {self.eps_max}", f"  eps_opt(B) = {self.eps_form}"]
        lines += ["  steps:"] + [f"    - {s}" for s in self.steps]
        return "\n".join(lines)

    __repr__ = __str__

    def latex(self) -> str:
        bn = sp.Symbol(r"\mathcal{B}_{noise}")
        em = sp.Symbol(r"\epsilon_{max}")
        rows = [rf"\epsilon_{{opt}}(B) &= {sp.latex(self.eps_opt)}"]
        if self.B_noise is not None:
            rows += [rf"\mathcal{{B}}_{{noise}} &= {sp.latex(self.B_noise)}",
                     rf"\epsilon_{{max}} &= {sp.latex(self.eps_max)}",
                     rf"\epsilon_{{opt}}(B) &= {sp.latex(self.eps_form.subs({_BN: bn, _EM: em}))}"]
        return "\\begin{aligned}\n" + " \\\\\n".join(rows) + "\n\\end{aligned}"

    def _repr_latex_(self) -> str:
        """Jupyter: the LaTeX block, rendered."""
        return "$$" + self.latex() + "$$"

    def to_dict(self) -> dict:
        return {"direction": self.direction, "noise": self.noise, "form": self.form,
                "mean": str(self.mean), "second_moment": str(self.second),
                "numerator": str(self.numerator), "denominator": str(self.denominator),
                "eps_opt": str(self.eps_opt), "B_noise": None if self.B_noise is None else str(self.B_noise),
                "eps_max": None if self.eps_max is None else str(self.eps_max),
                "eps_form": None if self.eps_form is None else str(self.eps_form), "steps": list(self.steps)}

    def evaluate(self, G, H, sigma=None, Sigma=None) -> NoiseScale:
        """Numbers for one problem: gradient `G` (d,), Hessian `H` (d, d), per-example noise
        `sigma` (d,) or (for a direction linear in `g`) covariance `Sigma` (d, d)."""
        return NoiseScale(self, *_check_problem(G, H, sigma, Sigma, self.linear))


_BN, _EM = sp.Symbol("B_noise", positive=True), sp.Symbol("eps_max", positive=True)


def _check_problem(Gv, Hm, sigma, Sigma, linear):
    Gv = np.atleast_1d(np.asarray(Gv, dtype=float))
    Hm = np.atleast_2d(np.asarray(Hm, dtype=float))
    d_ = Gv.size
    if Hm.shape != (d_, d_):
        raise SdederiveError(f"H has shape {Hm.shape}; allowed: ({d_}, {d_}) to match G of size {d_}")
    if not np.allclose(Hm, Hm.T):
        raise SdederiveError("H is not symmetric; allowed: a symmetric Hessian")
    if Sigma is not None:
        S = np.atleast_2d(np.asarray(Sigma, dtype=float))
        if S.shape != (d_, d_):
            raise SdederiveError(f"Sigma has shape {S.shape}; allowed: ({d_}, {d_})")
        if not linear and np.any(np.abs(S - np.diag(np.diag(S))) > 0):
            raise SdederiveError("a full covariance Sigma only applies to directions linear in g (sgd); "
                                 "the sign direction needs independent coordinates: pass sigma (per-coordinate std)")
        sig = np.sqrt(np.clip(np.diag(S), 0, None))
    elif sigma is not None:
        sig = np.broadcast_to(np.asarray(sigma, dtype=float), Gv.shape).copy()
        S = np.diag(sig**2)
    else:
        raise SdederiveError("pass the per-example noise: sigma (per-coordinate std) or Sigma (covariance)")
    if np.any(sig < 0) or not np.all(np.isfinite(sig)):
        raise SdederiveError(f"sigma={sig!r} is invalid; allowed: finite values >= 0")
    return Gv, Hm, sig, S


def optimal_lr(direction="sgd", noise="gaussian", approximation: str = "auto", **noise_params) -> OptimalLR:
    r"""Derive $\epsilon_{opt}(B)$, $\mathcal B_{noise}$, $\epsilon_{max}$ for an update direction.

    `direction`: `"sgd"` ($V = g$), `"sign"`/`"signsgd"`, `"adam"` (Adam at
    $\beta_1=\beta_2=0$, $\epsilon=0$, i.e. $\operatorname{sign} g$, Li et al. eq. 29), or a
    sympy expression in the symbol `g`.  `approximation`: `"exact"`, `"small-batch"`
    (leading order of $\mathbb E V_i$ as $B\to0$, Li et al. Theorem 3) or `"auto"`
    (exact when that already has a recognized form, else small-batch).
    """
    if approximation not in ("auto", "exact", "small-batch"):
        raise SdederiveError(f"approximation={approximation!r}; allowed: 'auto', 'exact', 'small-batch'")
    name, V = _direction(direction)
    nm = get_noise(noise, **noise_params)
    e1, e2 = _moments(V, nm)
    steps = [f"E[V_i] = {e1} and E[V_i^2] = {e2} for g_i = G_i + sigma_i/sqrt(B)*z_i, z_i ~ {nm.name} "
             "(sigma_i: per-example std), coordinates independent given theta"]
    dV = sp.diff(V, _g)
    linear = V.has(_g) and not dV.has(_g)
    exact = (e1, e2)

    def structure(m1, m2):
        """`(N, D)` as `{power of B: coefficient}`, or None when `E V_i` is not one power of `B`."""
        p1 = _by_power(m1)
        if len(p1) != 1:
            return None
        (q1, c1), = p1.items()
        num = {q1: sp.expand(_gi * c1)}
        if not m2.has(B):
            # D = sum_i H_ii E V_i^2 + sum_{i != j} H_ij E V_i E V_j: the diagonal of the outer product
            # and -E[V_i]^2 in Var V_i cancel (Li et al. eq. 13)
            den = {sp.S.Zero: _Coef(diag=m2)}
            co = den.setdefault(2 * q1, _Coef())
            co.outer, co.full = c1, False
            return num, den
        var = sp.expand(m2 - m1**2)
        pv = _by_power(var) if var != 0 else {}
        if var != 0 and not pv:
            return None
        den = {q: _Coef(diag=c) for q, c in pv.items()}  # trace term: sum_i H_ii Var V_i
        co = den.setdefault(2 * q1, _Coef())
        co.outer, co.full = c1, True  # E[V]^T H E[V] over all i, j
        return num, den

    st = None
    if approximation in ("auto", "exact"):
        st = structure(e1, e2)
    if st is None and approximation in ("auto", "small-batch"):
        l1 = _leading(e1)
        l2 = _leading(e2)
        steps.append(f"small-batch regime B*G_i^2/sigma_i^2 << 1 (B << pi*sigma_i^2/(2*G_i^2) for Gaussian noise): E[V_i] ~ {l1}, E[V_i^2] ~ {l2} "
                     "(leading order as B -> 0; Li et al. Theorem 3 linearization)")
        st = structure(l1, l2)
    if st is None and approximation == "exact":
        # no power-law structure: N and D with the exact moments, no B_noise
        body1 = e1.xreplace({_gi: G[i], _si: Sg[i]})
        body1j = e1.xreplace({_gi: G[j], _si: Sg[j]})
        Nexpr = sp.Sum(G[i] * body1, (i, 1, d))
        Dexpr = sp.Sum(H[i, i] * e2.xreplace({_gi: G[i], _si: Sg[i]}), (i, 1, d)) + sp.Sum(
            H[i, j] * body1 * body1j * (1 - sp.KroneckerDelta(i, j)), (i, 1, d), (j, 1, d))
        steps.append("E[V_i] is not a power of B: eps_opt = N/D with the exact moments, no B_noise")
        return OptimalLR(name, nm.label, e1, e2, Nexpr, Dexpr, Nexpr / Dexpr, "other", None, None, None, steps,
                         {}, {}, exact, linear)
    if st is None:
        raise SdederiveError(f"the moments of V = {V} do not separate into powers of B "
                             f"(E[V_i] = {e1}); no closed form for eps_opt(B)")
    num, den = st
    if any(not co.full and co.outer != 0 for co in den.values()):
        steps.append("D = sum_i H_ii E[V_i^2] + sum_{i != j} H_ij E[V_i] E[V_j]: the diagonal of the outer "
                     "product cancels against -E[V_i]^2 in Var V_i (Li et al. eq. 13)")
    Nexpr = sum((B**q * sp.Sum(c.xreplace({_gi: G[i], _si: Sg[i]}), (i, 1, d)) for q, c in num.items()), sp.S.Zero)
    if linear:
        steps.append("V is linear in g: a full per-example covariance enters as tr(H Sigma)/B "
                     "(sum_i H_ii sigma_i^2 is its diagonal case)")
    Dexpr = sum((B**q * co.expr() for q, co in den.items()), sp.S.Zero)
    eps_opt = Nexpr / Dexpr
    form, Bn, em, ef = "other", None, None, None
    qs = sorted(den)
    (qn,) = tuple(num) if len(num) == 1 else (None,)
    if qn is not None and len(qs) == 2:
        Ncoef = Nexpr / B**qn
        lo, hi = qs
        Dlo, Dhi = den[lo].expr(), den[hi].expr()
        if qn == 0 and (lo, hi) == (-1, 0):
            form, Bn, em = "mccandlish", Dlo / Dhi, Ncoef / Dhi
            ef = _EM / (1 + _BN / B)
            steps.append("N constant and D = D_0 + D_{-1}/B: eps_opt = eps_max/(1 + B_noise/B) with "
                         "eps_max = N/D_0, B_noise = D_{-1}/D_0 (McCandlish et al. eq. 2.6-2.8)")
        elif qn == sp.Rational(1, 2) and (lo, hi) == (0, 1):
            form, Bn = "surge", Dlo / Dhi
            em = Ncoef * sp.sqrt(Bn) / (2 * Dlo)
            ef = _EM / ((sp.sqrt(_BN / B) + sp.sqrt(B / _BN)) / 2)
            steps.append("N ~ sqrt(B) and D = D_0 + D_1*B: eps_opt = N_0 sqrt(B)/(D_0 + D_1 B) peaks at B = D_0/D_1 "
                         "= B_noise with eps_max = N_0 sqrt(B_noise)/(2 D_0), i.e. eps_opt = eps_max/(0.5*(sqrt(B_noise/B)"
                         " + sqrt(B/B_noise))) (Li et al. eqs. 2, 14, 16)")
    return OptimalLR(name, nm.label, e1, e2, Nexpr, Dexpr, eps_opt, form, Bn, em, ef, steps, num, den, exact, linear)


def _leading(e: sp.Expr) -> sp.Expr:
    """Leading term of `e` as `B -> 0` (through `s = sqrt(B)`)."""
    if not e.has(B):
        return e
    s = sp.Symbol("s_", positive=True)
    es = e.xreplace({B: s**2})
    lead = sp.series(es, s, 0, 3).removeO()
    terms = sp.Add.make_args(sp.expand(lead))
    low = min(terms, key=lambda t: sp.degree(t, s) if t.has(s) else 0)
    pw = sp.degree(low, s) if low.has(s) else 0
    out = sum((t for t in terms if (sp.degree(t, s) if t.has(s) else 0) == pw), sp.S.Zero)
    return sp.simplify(out.xreplace({s: sp.sqrt(B)}))


class NoiseScale:
    """Numbers of an `OptimalLR` on one problem.

    `B_noise`, `eps_max` (`nan` when the form is `"other"`, `inf` for a surge without
    positive off-diagonal curvature), `B_simple = tr(Sigma)/|G|^2`, `dL_max`; `eps_opt(B)`
    from the recognized form, `eps_opt_exact(B)` from the exact moments (the erf for sign
    updates, Li et al. eq. 9), `dL_opt(B)`, `eps_inf` = the `B -> oo` limit of the exact curve.
    """

    def __init__(self, res: OptimalLR, Gv, Hm, sig, S) -> None:
        self.result, self.G, self.H, self.sigma, self.Sigma = res, Gv, Hm, sig, S
        nv = {q: float(np.sum(np.broadcast_to(sp.lambdify((_gi, _si), c, "numpy")(Gv, sig), Gv.shape)))
              for q, c in res._num.items()}
        dv = {q: co.value(Gv, sig, Hm) for q, co in res._den.items()}
        if res.linear and -1 in dv:  # full covariance: a**2 tr(H Sigma) instead of its diagonal (V = a g + c)
            a = sp.diff(res.mean, _gi)
            dv[-1] = float(a**2) * float(np.trace(Hm @ S))
        self._nv, self._dv = nv, dv
        self.B_simple = float(np.trace(S) / (Gv @ Gv)) if Gv @ Gv > 0 else float("inf")
        if res.form == "mccandlish":
            self.B_noise = dv[-1] / dv[0]
            self.eps_max = nv[0] / dv[0]
            self.dL_max = 0.5 * nv[0] * self.eps_max
        elif res.form == "surge":
            (qn,) = nv
            self.B_noise = dv[0] / dv[1] if dv[1] > 0 else float("inf")
            self.eps_max = nv[qn] * np.sqrt(self.B_noise) / (2 * dv[0]) if dv[1] > 0 else float("inf")
            self.dL_max = 0.5 * nv[qn] ** 2 / dv[1] if dv[1] > 0 else float("inf")
        else:
            self.B_noise = self.eps_max = self.dL_max = float("nan")
        e1, e2 = res._exact
        self._e1 = sp.lambdify((_gi, _si, B), e1, ["numpy", "scipy"])
        self._e2 = sp.lambdify((_gi, _si, B), e2, ["numpy", "scipy"])

    def _form_num_den(self, Bv):
        Bv = np.asarray(Bv, dtype=float)
        n = sum(c * Bv**float(q) for q, c in self._nv.items())
        dd = sum(c * Bv**float(q) for q, c in self._dv.items())
        return n, dd

    def eps_opt(self, Bv) -> np.ndarray:
        """The optimal step from the recognized form (McCandlish or surge), vectorized in `B`
        (the exact curve when no form was recognized)."""
        if not self._nv:
            return self.eps_opt_exact(Bv)
        n, dd = self._form_num_den(Bv)
        return n / dd

    def dL_opt(self, Bv) -> np.ndarray:
        n, dd = self._form_num_den(Bv)
        return 0.5 * n * n / dd

    def eps_opt_exact(self, Bv) -> np.ndarray:
        """`N/D` with the exact moments (no small-batch linearization)."""
        Bv = np.atleast_1d(np.asarray(Bv, dtype=float))
        out = np.empty(Bv.shape)
        for k, b in enumerate(Bv):
            m1 = np.broadcast_to(self._e1(self.G, self.sigma, b), self.G.shape).astype(float)
            m2 = np.broadcast_to(self._e2(self.G, self.sigma, b), self.G.shape).astype(float)
            if self.result.linear:
                den = m1 @ self.H @ m1 + np.trace(self.H @ self.Sigma) / b
            else:
                den = np.sum(np.diag(self.H) * m2) + m1 @ (self.H - np.diag(np.diag(self.H))) @ m1
            out[k] = (self.G @ m1) / den
        return out

    @property
    def eps_inf(self) -> float:
        """`lim_{B -> oo}` of the exact curve (Li et al. eq. 17 for sign updates)."""
        with np.errstate(all="ignore"):
            return float(self.eps_opt_exact([1e300])[0])

    def to_dict(self) -> dict:
        return {"form": self.result.form, "B_noise": self.B_noise, "B_simple": self.B_simple,
                "eps_max": self.eps_max, "dL_max": self.dL_max}


def noise_scale(direction, G, H, sigma=None, Sigma=None, noise="gaussian", **kw) -> NoiseScale:
    """`optimal_lr(direction, noise).evaluate(G, H, sigma, Sigma)`."""
    return optimal_lr(direction, noise, **kw).evaluate(G, H, sigma=sigma, Sigma=Sigma)


def sgd_noise_scale(G, H, Sigma) -> NoiseScale:
    r"""McCandlish et al.: `B_noise = tr(H Sigma)/G^T H G`, `eps_max = |G|^2/G^T H G`, `B_simple`;
    `Sigma` is the per-example gradient covariance (the batch covariance is `Sigma/B`)."""
    return noise_scale("sgd", G, H, Sigma=np.atleast_2d(np.asarray(Sigma, dtype=float)))


def sign_noise_scale(mu, sigma, H) -> NoiseScale:
    r"""Li et al. (surge): sign updates with gradient `mu` and per-example std `sigma` (Gaussian)."""
    return noise_scale("sign", mu, H, sigma=sigma)


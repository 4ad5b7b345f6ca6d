"""Composable symbolic gradient transformations, in the spirit of optax.

A transform maps an *update direction* `u` (a sympy expression; the chain starts from the
stochastic gradient `g`) to a new direction, and may own coordinate-wise states that it
updates on the way.  Chaining transforms and finishing with `scale_by_learning_rate`
gives the one-step update `x_{k+1} = x_k + u_final` of an optimizer:

    adam  = chain(scale_by_adam(), scale_by_learning_rate())
    adamw = chain(scale_by_adam(), add_decayed_weights(), scale_by_learning_rate())

Every transform documents its update in its docstring; symbols follow docs/notation.md
(`m` momentum, `v` second moment, `k` the 0-based step counter).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import sympy as sp

from sdederive.errors import SpecError
from sdederive.spec.hyper import Hyper
from sdederive.spec.kinds import StateKind
from sdederive.symbols import KNOWN, sym

__all__ = [
    "StateDecl",
    "Context",
    "Transform",
    "trace",
    "ema",
    "scale_by_rms",
    "scale_by_adam",
    "scale_by_rss",
    "scale_by_sign",
    "scale_by_lion",
    "scale_by_amsgrad",
    "scale_by_belief",
    "scale_by_qhadam",
    "scale_by_adan",
    "clip",
    "add_decayed_weights",
    "scale_by_learning_rate",
    "scale",
]


@dataclass(frozen=True)
class StateDecl:
    """An auxiliary coordinate-wise state.

    `kind` (a `StateKind`; the plain strings are accepted) tells regimes
    how the state scales: `"second_moment"` (an EMA of g**2, rescaled to `u = eta**2 * v` in the
    noise-dominated regime), `"accumulator"` (a running sum of g**2, rescaled likewise in the
    accumulator regime) or `"aux"` (left as is).
    """

    name: str
    init: float = 0.0
    kind: StateKind = StateKind.AUX
    doc: str = ""

    def __post_init__(self) -> None:
        try:
            kind = StateKind(self.kind)
        except ValueError:
            raise SpecError(f"state {self.name!r}: kind {self.kind!r} is unknown; valid kinds: "
                            f"{', '.join(k.value for k in StateKind)}") from None
        object.__setattr__(self, "kind", kind)

    @property
    def symbol(self) -> sp.Symbol:
        """The state's symbol: nonnegative for the kinds that are (second moments, accumulators)."""
        if self.kind.nonnegative and self.name not in KNOWN:
            return sym(self.name, nonnegative=True)
        return sym(self.name)


@dataclass
class Context:
    """What a transform sees: the current parameter `x`, gradient `g`, step counter `k`,
    hyperparameter symbols, and the states' current symbols and already-computed new values."""

    x: sp.Symbol = field(default_factory=lambda: sym("x"))
    g: sp.Symbol = field(default_factory=lambda: sym("g"))
    k: sp.Symbol = field(default_factory=lambda: sym("k"))
    new: dict[str, sp.Expr] = field(default_factory=dict)

    def state(self, decl: StateDecl) -> sp.Symbol:
        return decl.symbol


@dataclass(frozen=True)
class Transform:
    """A gradient transformation: its hyperparameters, states and the map `u -> (u', new states)`."""

    name: str
    hypers: tuple[Hyper, ...]
    states: tuple[StateDecl, ...]
    fn: Callable[[sp.Expr, Context], tuple[sp.Expr, dict[str, sp.Expr]]] = field(compare=False)
    doc: str = ""

    def __call__(self, u: sp.Expr, ctx: Context) -> tuple[sp.Expr, dict[str, sp.Expr]]:
        return self.fn(u, ctx)


def _h(name: str, default, kind: str, doc: str = "") -> Hyper:
    return Hyper(name, default, kind, doc)


def trace(mu: float = 0.9, nesterov: bool = False, state: str = "m") -> Transform:
    r"""Heavy-ball momentum (PyTorch SGD convention, dampening 0).

    $$
    m_{k+1} = \mu m_k + u,\qquad u' = m_{k+1}\ \ (\text{Nesterov: } u' = u + \mu m_{k+1}).
    $$
"""
    hyp = _h("mu", mu, "momentum", "heavy-ball momentum coefficient")
    decl = StateDecl(state, 0.0, "aux", "momentum buffer")

    def fn(u, ctx):
        m_new = hyp.symbol * decl.symbol + u
        return (u + hyp.symbol * m_new if nesterov else m_new), {state: m_new}

    return Transform("trace", (hyp,), (decl,), fn, trace.__doc__)


def ema(decay: float = 0.9, name: str = "beta", state: str = "m", debias: bool = False) -> Transform:
    r"""Exponential moving average of the direction.

    $$
    m_{k+1} = \beta m_k + (1-\beta) u,\qquad u' = m_{k+1}\quad\Big(\text{or } \frac{m_{k+1}}{1-\beta^{k+1}}
    \text{ with debias}\Big).
    $$
"""
    hyp = _h(name, decay, "decay", "EMA decay")
    decl = StateDecl(state, 0.0, "aux", "exponential moving average of the direction")

    def fn(u, ctx):
        b = hyp.symbol
        m_new = b * decl.symbol + (1 - b) * u
        out = m_new / (1 - b ** (ctx.k + 1)) if debias else m_new
        return out, {state: m_new}

    return Transform("ema", (hyp,), (decl,), fn, ema.__doc__)


def scale_by_rms(beta: float = 0.99, eps: float = 1e-8, state: str = "v") -> Transform:
    r"""RMSprop preconditioning (PyTorch: `alpha` is `beta`; the new `v` is used).

    $$
    v_{k+1} = \beta v_k + (1-\beta) u^2,\qquad u' = \frac{u}{\sqrt{v_{k+1}} + \epsilon}.
    $$
"""
    hb, he = _h("beta", beta, "decay", "decay of v"), _h("eps", eps, "eps", "denominator guard")
    decl = StateDecl(state, 0.0, "second_moment", "EMA of squared gradients")

    def fn(u, ctx):
        v_new = hb.symbol * decl.symbol + (1 - hb.symbol) * u**2
        return u / (sp.sqrt(v_new) + he.symbol), {state: v_new}

    return Transform("scale_by_rms", (hb, he), (decl,), fn, scale_by_rms.__doc__)


def scale_by_adam(
    beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8, bias_correction: bool = True
) -> Transform:
    r"""Adam's direction (PyTorch form; eps added after the bias-corrected square root).

    $$
    m_{k+1} = \beta_1 m_k + (1-\beta_1) u,\quad v_{k+1} = \beta_2 v_k + (1-\beta_2) u^2,\quad
    u' = \frac{m_{k+1}/(1-\beta_1^{k+1})}{\sqrt{v_{k+1}/(1-\beta_2^{k+1})} + \epsilon}.
    $$
"""
    h1, h2 = _h("beta1", beta1, "decay", "decay of m"), _h("beta2", beta2, "decay", "decay of v")
    he = _h("eps", eps, "eps", "denominator guard")
    dm = StateDecl("m", 0.0, "aux", "first moment")
    dv = StateDecl("v", 0.0, "second_moment", "second moment")

    def fn(u, ctx):
        b1, b2 = h1.symbol, h2.symbol
        m_new = b1 * dm.symbol + (1 - b1) * u
        v_new = b2 * dv.symbol + (1 - b2) * u**2
        if bias_correction:
            mhat = m_new / (1 - b1 ** (ctx.k + 1))
            vhat = v_new / (1 - b2 ** (ctx.k + 1))
        else:
            mhat, vhat = m_new, v_new
        return mhat / (sp.sqrt(vhat) + he.symbol), {"m": m_new, "v": v_new}

    return Transform("scale_by_adam", (h1, h2, he), (dm, dv), fn, scale_by_adam.__doc__)


def scale_by_rss(eps: float = 1e-10, initial: float = 0.0, state: str = "v") -> Transform:
    r"""Adagrad: root of the running sum of squares (PyTorch `initial_accumulator_value`).

    $$
    v_{k+1} = v_k + u^2,\qquad u' = \frac{u}{\sqrt{v_{k+1}} + \epsilon}.
    $$
"""
    he = _h("eps", eps, "eps", "denominator guard")
    decl = StateDecl(state, float(initial), "accumulator", "sum of squared gradients")

    def fn(u, ctx):
        v_new = decl.symbol + u**2
        return u / (sp.sqrt(v_new) + he.symbol), {state: v_new}

    return Transform("scale_by_rss", (he,), (decl,), fn, scale_by_rss.__doc__)


def scale_by_sign() -> Transform:
    r"""Elementwise sign: $u' = \operatorname{sign}(u)$."""
    return Transform("scale_by_sign", (), (), lambda u, ctx: (sp.sign(u), {}), scale_by_sign.__doc__)


def scale_by_lion(beta1: float = 0.9, beta2: float = 0.99) -> Transform:
    r"""Lion (Chen et al. 2023): sign of an interpolation, then the momentum update.

    $$
    u' = \operatorname{sign}(\beta_1 m_k + (1-\beta_1) u),\qquad m_{k+1} = \beta_2 m_k + (1-\beta_2) u.
    $$

    `beta1` is an interpolation weight (kept fixed by the balanced regime); `beta2` is the EMA
    decay of `m`.
    """
    h1 = _h("beta1", beta1, "interp", "interpolation weight of the update")
    h2 = _h("beta2", beta2, "decay", "decay of m")
    dm = StateDecl("m", 0.0, "aux", "momentum (EMA of gradients)")

    def fn(u, ctx):
        b1, b2, m = h1.symbol, h2.symbol, dm.symbol
        return sp.sign(b1 * m + (1 - b1) * u), {"m": b2 * m + (1 - b2) * u}

    return Transform("scale_by_lion", (h1, h2), (dm,), fn, scale_by_lion.__doc__)


def clip(threshold: float = 1.0) -> Transform:
    r"""Per-coordinate clipping: $u' = \operatorname{clip}(u, -c, c) = \min(\max(u, -c), c)$ (hyperparameter `clip`).

    The expectation engine uses the closed-form truncated moments of the noise (Gaussian and
    Student-t, `sdederive.derivation._clip_moments`), so the clipped gradient's moments exist for every
    Student-t `nu > 0`.  `clip` stays fixed in every regime.
    """
    hc = _h("clip", threshold, "positive", "clipping threshold c")

    def fn(u, ctx):
        c = hc.symbol
        return sp.Min(sp.Max(u, -c), c), {}

    return Transform("clip", (hc,), (), fn, clip.__doc__)


def scale_by_amsgrad(beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8) -> Transform:
    r"""AMSGrad (Reddi, Kale & Kumar 2018, Algorithm 2; no bias correction, `eps` guard as in PyTorch).

    $$
    m_{k+1} = \beta_1 m_k + (1-\beta_1) u,\quad v_{k+1} = \beta_2 v_k + (1-\beta_2) u^2,\quad
    \hat v_{k+1} = \max(\hat v_k, v_{k+1}),\quad u' = \frac{m_{k+1}}{\sqrt{\hat v_{k+1}} + \epsilon}.
    $$

    `vhat` is a running maximum of `v`; the engine derives its limit as the running maximum of
    `v`'s limit (`sdederive._running_max`).
    """
    h1, h2 = _h("beta1", beta1, "decay", "decay of m"), _h("beta2", beta2, "decay", "decay of v")
    he = _h("eps", eps, "eps", "denominator guard")
    dm = StateDecl("m", 0.0, "aux", "first moment")
    dv = StateDecl("v", 0.0, "second_moment", "second moment")
    dh = StateDecl("vhat", 0.0, "second_moment", "running maximum of v")

    def fn(u, ctx):
        b1, b2 = h1.symbol, h2.symbol
        m_new = b1 * dm.symbol + (1 - b1) * u
        v_new = b2 * dv.symbol + (1 - b2) * u**2
        vh_new = sp.Max(dh.symbol, v_new)
        return m_new / (sp.sqrt(vh_new) + he.symbol), {"m": m_new, "v": v_new, "vhat": vh_new}

    return Transform("scale_by_amsgrad", (h1, h2, he), (dm, dv, dh), fn, scale_by_amsgrad.__doc__)


def scale_by_belief(beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-16) -> Transform:
    r"""AdaBelief (Zhuang et al. 2020, Algorithm 2, as in the authors' `adabelief-pytorch` 0.2).

    $$
    m_{k+1} = \beta_1 m_k + (1-\beta_1) u,\quad
    s_{k+1} = \beta_2 s_k + (1-\beta_2)(u - m_{k+1})^2 + \epsilon,\quad
    u' = \frac{m_{k+1}/(1-\beta_1^{k+1})}{\sqrt{s_{k+1}/(1-\beta_2^{k+1})} + \epsilon}.
    $$

    `eps` is added inside `s` every step, so it is *not* rescaled like Adam's guard
    (`eps = eps0/eta` would make `s` diverge): it stays fixed, which
    is the scaling under which the noise-dominated limit exists (`u_s = eta**2*s` gains
    `eta**2*eps = tau*eps` per step).  Its kind is `wd`: nonnegative and never rescaled.  In a balanced regime the limit needs `eps = eps1*eta`
    (a custom Regime with `subs=(("eps", eps1*eta),)`).
    """
    h1, h2 = _h("beta1", beta1, "decay", "decay of m"), _h("beta2", beta2, "decay", "decay of s")
    he = _h("eps", eps, "wd", "added to s every step and to the denominator (never rescaled)")
    dm = StateDecl("m", 0.0, "aux", "first moment")
    ds = StateDecl("s", 0.0, "second_moment", "EMA of the squared deviation (g - m)**2, plus eps")

    def fn(u, ctx):
        b1, b2, e = h1.symbol, h2.symbol, he.symbol
        m_new = b1 * dm.symbol + (1 - b1) * u
        s_new = b2 * ds.symbol + (1 - b2) * (u - m_new) ** 2 + e
        mhat = m_new / (1 - b1 ** (ctx.k + 1))
        shat = s_new / (1 - b2 ** (ctx.k + 1))
        return mhat / (sp.sqrt(shat) + e), {"m": m_new, "s": s_new}

    return Transform("scale_by_belief", (h1, h2, he), (dm, ds), fn, scale_by_belief.__doc__)


def scale_by_qhadam(beta1: float = 0.995, beta2: float = 0.999, nu1: float = 0.7, nu2: float | None = 1.0,
                    eps: float = 1e-8) -> Transform:
    r"""QH-Adam (Ma & Yarats 2019, with bias correction; paper's recommended defaults).

    $$
    u' = \frac{(1-\nu_1) u + \nu_1 \hat m_{k+1}}{\sqrt{(1-\nu_2) u^2 + \nu_2 \hat v_{k+1}} + \epsilon}.
    $$

    `nu2 = 1` (the default, the paper's recommendation) builds the update with `nu2 = 1`
    substituted: the denominator is Adam's and the SDE limit exists.  Any other `nu2` (or `None`:
    symbolic) keeps `nu2` as a hyperparameter; then the square root's argument carries O(1) noise
    as `eta -> 0` and the derivation is refused (see `sdederive.spec.optimizers.qhadam`).
    """
    h1, h2 = _h("beta1", beta1, "decay", "decay of m"), _h("beta2", beta2, "decay", "decay of v")
    hn1 = _h("nu1", nu1, "interp", "weight of the momentum in the numerator")
    he = _h("eps", eps, "eps", "denominator guard")
    general = nu2 is None or float(nu2) != 1.0
    hn2 = _h("nu2", nu2 if nu2 is not None else 1.0, "interp", "weight of v in the denominator")
    dm = StateDecl("m", 0.0, "aux", "first moment")
    dv = StateDecl("v", 0.0, "second_moment", "second moment")

    def fn(u, ctx):
        b1, b2, n1 = h1.symbol, h2.symbol, hn1.symbol
        m_new = b1 * dm.symbol + (1 - b1) * u
        v_new = b2 * dv.symbol + (1 - b2) * u**2
        mhat = m_new / (1 - b1 ** (ctx.k + 1))
        vhat = v_new / (1 - b2 ** (ctx.k + 1))
        den2 = (1 - hn2.symbol) * u**2 + hn2.symbol * vhat if general else vhat
        return ((1 - n1) * u + n1 * mhat) / (sp.sqrt(den2) + he.symbol), {"m": m_new, "v": v_new}

    hyps = (h1, h2, hn1, hn2, he) if general else (h1, h2, hn1, he)
    return Transform("scale_by_qhadam", hyps, (dm, dv), fn, scale_by_qhadam.__doc__)


def scale_by_adan(beta1: float = 0.98, beta2: float = 0.92, beta3: float = 0.99, eps: float = 1e-8) -> Transform:
    r"""Adan (Xie et al. 2022), in the official implementation's convention (`betas = 1 -` the paper's).

    $$
    d_k = u - g_{k-1},\quad m_{k+1} = \beta_1 m_k + (1-\beta_1) u,\quad
    v_{k+1} = \beta_2 v_k + (1-\beta_2) d_k,\quad
    n_{k+1} = \beta_3 n_k + (1-\beta_3)(u + \beta_2 d_k)^2,\\
    u' = \frac{m_{k+1} + \beta_2 v_{k+1}}{\sqrt{n_{k+1}} + \epsilon},\qquad g_k \text{ stored in the state } gp.
    $$

    No bias correction (the paper's Algorithm 1).  The lagged gradient `gp` is a state that holds
    the previous step's noise draw (initialised to 0 here; the official code starts with
    `gp = g_0`, i.e. `d_0 = 0`).
    """
    h1, h2 = _h("beta1", beta1, "decay", "decay of m"), _h("beta2", beta2, "decay", "decay of v (gradient differences)")
    h3 = _h("beta3", beta3, "decay", "decay of n")
    he = _h("eps", eps, "eps", "denominator guard")
    dm = StateDecl("m", 0.0, "aux", "EMA of gradients")
    dv = StateDecl("vd", 0.0, "aux", "EMA of gradient differences")
    dn = StateDecl("n", 0.0, "second_moment", "EMA of squared corrected gradients")
    dg = StateDecl("gp", 0.0, "aux", "previous stochastic gradient g_{k-1}")

    def fn(u, ctx):
        b1, b2, b3 = h1.symbol, h2.symbol, h3.symbol
        d = u - dg.symbol
        m_new = b1 * dm.symbol + (1 - b1) * u
        v_new = b2 * dv.symbol + (1 - b2) * d
        n_new = b3 * dn.symbol + (1 - b3) * (u + b2 * d) ** 2
        out = (m_new + b2 * v_new) / (sp.sqrt(n_new) + he.symbol)
        return out, {"m": m_new, "vd": v_new, "n": n_new, "gp": u}

    return Transform("scale_by_adan", (h1, h2, h3, he), (dm, dv, dn, dg), fn, scale_by_adan.__doc__)


def add_decayed_weights(wd: float = 1e-2) -> Transform:
    r"""Decoupled weight decay (AdamW): $u' = u + w_d\,x$ (before the learning-rate scaling)."""
    hw = _h("wd", wd, "wd", "decoupled weight decay")
    return Transform(
        "add_decayed_weights", (hw,), (), lambda u, ctx: (u + hw.symbol * ctx.x, {}), add_decayed_weights.__doc__
    )


def scale_by_learning_rate(eta: float = 1e-3) -> Transform:
    r"""Descent step: $u' = -\eta\,u$ (the update is then added to `x`)."""
    hl = _h("eta", eta, "lr", "learning rate")
    return Transform(
        "scale_by_learning_rate", (hl,), (), lambda u, ctx: (-hl.symbol * u, {}), scale_by_learning_rate.__doc__
    )


def scale(factor: float, name: str = "scale") -> Transform:
    r"""Multiply by a (named, symbolic) constant: $u' = s\,u$."""
    hs = _h(name, factor, "real", "constant factor")
    return Transform("scale", (hs,), (), lambda u, ctx: (hs.symbol * u, {}), scale.__doc__)

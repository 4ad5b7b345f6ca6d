r"""Asymptotic regimes: how hyperparameters and states scale with the small parameter `eta`.

A regime fixes the time per step `tau` and substitutions that make the one-step increments
small.  Built-ins:

========================  ==========  ============================================================
name                      `tau`     scalings
========================  ==========  ============================================================
`sgd`                   `eta`     every hyperparameter fixed (SME of Li, Tai & E)
`balanced`              `eta`     `1 - beta = rho*eta` for EMA decays (Compagnoni et al. 2025);
                                      second moments modelled without diffusion, as published
`balanced-full`         `eta`     as `balanced` but keeping every state's leading-order noise
`noise-dominated`       `eta**2`  `1 - beta = c*eta**2`, `sigma = sigma0/eta`,
                                      `eps = eps0/eta`, `u = eta**2*v` (Malladi et al. 2022)
`accumulator`           `eta**2`  `eps = eps0/eta`, `u = eta**2*v` for running sums (Adagrad)
========================  ==========  ============================================================

Decays are hyperparameters of kind `decay`; their scaled names are `rho`/`c` with the same
suffix (`beta1 -> rho1`, `c1`); a decay with another name `a` becomes `rho_a`/`c_a`.
Interpolation weights (`interp`, Lion's `beta1`) and heavy-ball `mu` stay fixed.

Define your own with `Regime` and `register`.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from sdederive.errors import RegimeMismatchError, UnknownNameError
from sdederive.symbols import sym

__all__ = ["Regime", "get", "names", "register", "REGIMES"]

_eta = sym("eta")


def scaled_name(hyper: str, prefix: str) -> str:
    """`beta1 -> rho1`, `beta -> rho`, `alpha -> rho_alpha`."""
    if hyper.startswith("beta"):
        return prefix + hyper[4:]
    return f"{prefix}_{hyper}"


@dataclass(frozen=True)
class Regime:
    """An asymptotic regime.

    Attributes
    ----------
    name, doc
        identification.
    tau
        continuous time per step, `c*eta**q` with a constant `c > 0` and a rational `q > 0`
        (`eta`, `2*eta`, `sqrt(eta)`); anything else is refused.
    decay_power
        `p` such that `1 - beta = (scaled)*eta**p` for every `decay` hyperparameter
        (`None`: decays stay fixed).
    decay_prefix
        name prefix of the scaled decays (`"rho"`, `"c"`).
    scale_noise
        `sigma = sigma0/eta`.
    scale_eps
        `eps = eps0/eta`.
    rescale
        state kinds rescaled as `u = eta**2 * v` (the state is renamed `u`; other names
        get a `u_` prefix).
    drop_noise
        state kinds whose (leading-order, `O(sqrt(eta))`) diffusion is left out of the
        model, as in the published SDE; the full local covariance is still computed and kept in
        `SDE.covariance`.
    subs
        extra user substitutions `{hyperparameter name: expression}` applied last.
    """

    name: str
    tau: sp.Expr
    decay_power: int | None = None
    decay_prefix: str = "rho"
    scale_noise: bool = False
    scale_eps: bool = False
    rescale: tuple[str, ...] = ()
    drop_noise: tuple[str, ...] = ()
    subs: tuple[tuple[str, sp.Expr], ...] = ()
    doc: str = ""

    def __post_init__(self) -> None:
        coeff, power, tau = _tau_form(self.name, self.tau)
        object.__setattr__(self, "tau", tau)
        object.__setattr__(self, "_coeff", coeff)
        object.__setattr__(self, "_power", power)

    @property
    def tau_power(self) -> sp.Rational:
        """`q` with `tau = c*eta**q`."""
        return self._power

    @property
    def tau_coeff(self) -> sp.Expr:
        """`c` with `tau = c*eta**q` (positive, free of `eta`)."""
        return self._coeff


def _tau_form(name: str, tau) -> tuple[sp.Expr, sp.Rational, sp.Expr]:
    """`(c, q, c*eta**q)` for a time per step `tau = c*eta**q` with `c > 0` free of `eta` and
    `q > 0` rational; anything else is refused with a `RegimeMismatchError`."""
    allowed = ("allowed: tau = c*eta**q with a constant c > 0 and a rational q > 0, e.g. eta, 2*eta, "
               "eta**2/3, sqrt(eta) (eta = sd.sym('eta'))")
    try:
        tau = sp.sympify(tau)
    except (sp.SympifyError, TypeError) as exc:
        raise RegimeMismatchError(f"regime {name!r}: tau={tau!r} is not an expression; {allowed}") from exc
    if not isinstance(tau, sp.Expr) or not tau.has(_eta):
        hint = ""
        if isinstance(tau, sp.Expr) and any(str(s) == "eta" for s in tau.free_symbols):
            hint = " (its eta is not sd.sym('eta'): build it with sd.sym)"
        raise RegimeMismatchError(f"regime {name!r}: tau={tau} does not depend on eta{hint}; {allowed}")
    c, q = sp.powsimp(sp.expand(tau)).as_coeff_exponent(_eta)
    if isinstance(q, sp.Float):
        q = sp.nsimplify(q, rational=True)
    if not c.has(_eta) and q.is_Rational and q.is_positive and c.is_positive is None and not c.is_number:
        raise RegimeMismatchError(
            f"regime {name!r}: the constant {c} of tau={tau} is not known to be positive; build its symbols with "
            "positive=True (e.g. sd.sym('a', positive=True)); " + allowed
        )
    if c.has(_eta) or not q.is_Rational or not q.is_positive or c.is_positive is not True or not c.is_finite:
        raise RegimeMismatchError(f"regime {name!r}: tau={tau} is not of the form c*eta**q; {allowed}")
    q = sp.Rational(q)
    return c, q, c * _eta**q


_BUILTIN = [
    Regime("sgd", _eta, doc="tau = eta; all hyperparameters fixed (Li, Tai & E's SME clock)."),
    Regime(
        "balanced", _eta, decay_power=1, decay_prefix="rho", drop_noise=("second_moment", "accumulator"),
        doc="tau = eta; 1 - beta = rho*eta (Compagnoni et al. 2025). Second-moment states are modelled "
        "without diffusion, as published; their O(sqrt(eta)) noise is within the order-1 weak error.",
    ),
    Regime(
        "balanced-full", _eta, decay_power=1, decay_prefix="rho",
        doc="tau = eta; 1 - beta = rho*eta, keeping the leading-order noise of every state.",
    ),
    Regime(
        "noise-dominated", _eta**2, decay_power=2, decay_prefix="c", scale_noise=True, scale_eps=True,
        rescale=("second_moment",),
        doc="tau = eta**2; 1 - beta = c*eta**2, sigma = sigma0/eta, eps = eps0/eta, u = eta**2*v "
        "(Malladi, Lyu, Panigrahi & Arora 2022).",
    ),
    Regime(
        "accumulator", _eta**2, scale_eps=True, rescale=("accumulator",), drop_noise=("accumulator",),
        doc="tau = eta**2; eps = eps0/eta; running sums of squares rescaled to u = eta**2*v (Adagrad), modelled "
        "without diffusion: its O(eta) noise (variance rate eta**2) is within the order-1 weak error in tau = eta**2, "
        "and kept it would drive u below 0 from its start near 0.",
    ),
]

REGIMES: dict[str, Regime] = {r.name: r for r in _BUILTIN}


def names() -> list[str]:
    return list(REGIMES)


def register(regime: Regime) -> Regime:
    """Make a user-defined regime available by name (to `sdederive.derive` and the CLI)."""
    REGIMES[regime.name] = regime
    return regime


def get(regime) -> Regime:
    if isinstance(regime, Regime):
        return regime
    key = str(regime).strip().lower().replace("_", "-")
    if key not in REGIMES:
        raise UnknownNameError("regime", regime, REGIMES)
    return REGIMES[key]

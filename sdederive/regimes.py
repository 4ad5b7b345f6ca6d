r"""Asymptotic regimes: how hyperparameters and states scale with the small parameter ``eta``.

A regime fixes the time per step ``tau`` and substitutions that make the one-step increments
small.  Built-ins:

========================  ==========  ============================================================
name                      ``tau``     scalings
========================  ==========  ============================================================
``sgd``                   ``eta``     every hyperparameter fixed (SME of Li, Tai & E)
``balanced``              ``eta``     ``1 - beta = rho*eta`` for EMA decays (Compagnoni et al. 2025);
                                      second moments modelled without diffusion, as published
``balanced-full``         ``eta``     as ``balanced`` but keeping every state's leading-order noise
``noise-dominated``       ``eta**2``  ``1 - beta = c*eta**2``, ``sigma = sigma0/eta``,
                                      ``eps = eps0/eta``, ``u = eta**2*v`` (Malladi et al. 2022)
``accumulator``           ``eta**2``  ``eps = eps0/eta``, ``u = eta**2*v`` for running sums (Adagrad)
========================  ==========  ============================================================

Decays are hyperparameters of kind ``decay``; their scaled names are ``rho``/``c`` with the same
suffix (``beta1 -> rho1``, ``c1``); a decay with another name ``a`` becomes ``rho_a``/``c_a``.
Interpolation weights (``interp``, Lion's ``beta1``) and heavy-ball ``mu`` stay fixed.

Define your own with :class:`Regime` and :func:`register`.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from .errors import UnknownNameError
from .symbols import sym

__all__ = ["Regime", "get", "names", "register", "REGIMES"]

_eta = sym("eta")


def scaled_name(hyper: str, prefix: str) -> str:
    """``beta1 -> rho1``, ``beta -> rho``, ``alpha -> rho_alpha``."""
    if hyper.startswith("beta"):
        return prefix + hyper[4:]
    return f"{prefix}_{hyper}"


@dataclass(frozen=True)
class Regime:
    """An asymptotic regime.

    Attributes
    ----------
    name, doc: identification.
    tau: continuous time per step, an expression in ``eta``.
    decay_power: ``p`` such that ``1 - beta = (scaled)*eta**p`` for every ``decay`` hyperparameter
        (``None``: decays stay fixed).
    decay_prefix: name prefix of the scaled decays (``"rho"``, ``"c"``).
    scale_noise: ``sigma = sigma0/eta``.
    scale_eps: ``eps = eps0/eta``.
    rescale: state kinds rescaled as ``u = eta**2 * v`` (the state is renamed ``u``; other names
        get a ``u_`` prefix).
    drop_noise: state kinds whose (leading-order, ``O(sqrt(eta))``) diffusion is left out of the
        model, as in the published SDE; the full local covariance is still computed and kept in
        :attr:`SDE.covariance`.
    subs: extra user substitutions ``{hyperparameter name: expression}`` applied last.
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
        tau = sp.sympify(self.tau)
        if not tau.has(_eta) or not (tau.subs(_eta, sp.Rational(1, 10**6)) < 1):
            raise ValueError(f"regime {self.name!r}: tau={tau} must be a positive power of eta (small as eta -> 0)")
        object.__setattr__(self, "tau", tau)

    @property
    def tau_power(self) -> sp.Expr:
        """``q`` with ``tau = const*eta**q``."""
        return sp.Poly(self.tau, _eta).monoms()[0][0] if self.tau.is_polynomial(_eta) else sp.S(1)


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
        "accumulator", _eta**2, scale_eps=True, rescale=("accumulator",),
        doc="tau = eta**2; eps = eps0/eta; running sums of squares rescaled to u = eta**2*v (Adagrad).",
    ),
]

REGIMES: dict[str, Regime] = {r.name: r for r in _BUILTIN}


def names() -> list[str]:
    return list(REGIMES)


def register(regime: Regime) -> Regime:
    """Make a user-defined regime available by name (to :func:`sdederive.derive` and the CLI)."""
    REGIMES[regime.name] = regime
    return regime


def get(regime) -> Regime:
    if isinstance(regime, Regime):
        return regime
    key = str(regime).strip().lower().replace("_", "-")
    if key not in REGIMES:
        raise UnknownNameError("regime", regime, REGIMES)
    return REGIMES[key]

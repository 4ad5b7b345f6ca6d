"""The declared roles of an optimizer's states and hyperparameters, as string enums.

The regimes, the derivation engine and the simulators decide how a state or a hyperparameter is
treated from its declared kind, never from its name: a second moment called `s` (AdaBelief) is
rescaled like Adam's `v`, and a decay called `gamma` is scaled like `beta1`.

Both enums subclass `str`, so the old plain strings keep working everywhere: `"decay"`
compares equal to `HyperKind.DECAY`, is accepted wherever a kind is expected, and a kind
prints and serializes as its plain value (`"decay"`).
"""

from __future__ import annotations

from enum import Enum

__all__ = ["StateKind", "HyperKind"]


class _StrKind(str, Enum):
    """A str-valued enum member that prints, formats and hashes like its value."""

    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, spec: str) -> str:
        return str.__format__(str.__str__(self), spec)

    __hash__ = str.__hash__

    @classmethod
    def _missing_(cls, value):
        # accept surrounding spaces and any case ("Second_Moment "), still refusing unknown values
        if isinstance(value, str):
            key = value.strip().lower()
            for m in cls:
                if m.value == key:
                    return m
        return None


class StateKind(_StrKind):
    """How regimes treat an auxiliary state (`StateDecl`).

    `AUX`: left as is (momentum buffers, lagged gradients).
    `SECOND_MOMENT`: an EMA of `g**2`; nonnegative, rescaled to `u = eta**2*v` in the
    noise-dominated regime, its diffusion dropped in the balanced one.
    `ACCUMULATOR`: a running sum of `g**2`; nonnegative, rescaled likewise in the accumulator regime.
    """

    AUX = "aux"
    SECOND_MOMENT = "second_moment"
    ACCUMULATOR = "accumulator"

    @property
    def nonnegative(self) -> bool:
        """States of this kind are nonnegative (sums and averages of squares)."""
        return self in (StateKind.SECOND_MOMENT, StateKind.ACCUMULATOR)


class HyperKind(_StrKind):
    """The role and allowed range of a hyperparameter (`Hyper`).

    `LR` the learning rate (`> 0`); `DECAY` an EMA decay in `[0, 1)` (scaled by the regimes:
    `1 - beta = rho*eta`); `INTERP` an interpolation weight in `[0, 1]` and `MOMENTUM` a
    heavy-ball coefficient in `[0, 1)` (both fixed); `EPS` a denominator guard (`>= 0`,
    `eps = eps0/eta` where a regime scales it); `WD` a weight decay (`>= 0`, never rescaled);
    `REAL` any finite real; `POSITIVE` any value `> 0`.
    """

    LR = "lr"
    DECAY = "decay"
    INTERP = "interp"
    MOMENTUM = "momentum"
    EPS = "eps"
    WD = "wd"
    REAL = "real"
    POSITIVE = "positive"

    @property
    def unit_interval(self) -> bool:
        """Values of this kind lie in `[0, 1]` (decays, interpolation weights, heavy-ball `mu`)."""
        return self in (HyperKind.DECAY, HyperKind.INTERP, HyperKind.MOMENTUM)

"""Hyperparameters of an optimizer spec: symbol, default, role and allowed range."""

from __future__ import annotations

import math
from dataclasses import dataclass

import sympy as sp

from sdederive.errors import HyperparameterError
from sdederive.spec.kinds import HyperKind
from sdederive.symbols import KNOWN, describe, sym

#: reserved names (docs/notation.md) that are hyperparameters; every other reserved name is refused
_HYPER_NAMES = ("eta", "beta", "beta1", "beta2", "mu", "eps", "wd")

__all__ = ["Hyper", "HyperKind", "KINDS", "check_value"]

#: role -> (allowed-range text, predicate).  The role also tells regimes what to scale:
#: ``decay`` parameters (EMA decays of a state) become ``1 - rho*eta`` in the balanced regime and
#: ``1 - c*eta**2`` in the noise-dominated one; ``interp`` (an interpolation weight, Lion's
#: beta1) and ``momentum`` (heavy-ball mu) stay fixed.
KINDS: dict[str, tuple[str, object]] = {
    "lr": ("eta > 0", lambda v: v > 0),
    "decay": ("0 <= value < 1", lambda v: 0 <= v < 1),
    "interp": ("0 <= value <= 1", lambda v: 0 <= v <= 1),
    "momentum": ("0 <= value < 1", lambda v: 0 <= v < 1),
    "eps": ("value >= 0", lambda v: v >= 0),
    "wd": ("value >= 0", lambda v: v >= 0),
    "real": ("any finite real", lambda v: True),
    "positive": ("value > 0", lambda v: v > 0),
}


def check_value(name: str, kind: str, value) -> None:
    """Raise `HyperparameterError` unless `value` is allowed for a hyperparameter of `kind`.

    Symbolic values are always accepted (their range is the symbol's business).
    """
    if isinstance(value, sp.Basic) and not value.is_number:
        return
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise HyperparameterError(
            f"hyperparameter {name}={value!r} is not a number; allowed: {KINDS[kind][0]}"
        ) from None
    if not math.isfinite(v) or not KINDS[kind][1](v):
        raise HyperparameterError(f"hyperparameter {name}={value!r} is out of range; allowed: {KINDS[kind][0]}")


@dataclass(frozen=True)
class Hyper:
    """One hyperparameter: `name` (a NOTATION name where one exists), `default` (PyTorch's where
    one exists), `kind` (a `HyperKind`; its plain string values, the keys
    of `KINDS`, are accepted)."""

    name: str
    default: float | None
    kind: HyperKind = HyperKind.REAL
    doc: str = ""

    def __post_init__(self) -> None:
        try:
            kind = HyperKind(self.kind)
        except ValueError:
            raise HyperparameterError(
                f"hyperparameter kind {self.kind!r} of {self.name!r} is unknown; valid kinds: {sorted(KINDS)}"
            ) from None
        object.__setattr__(self, "kind", kind)
        if self.name in KNOWN and self.name not in _HYPER_NAMES:
            raise HyperparameterError(
                f"hyperparameter name {self.name!r} is reserved: the notation uses it for {describe(self.name)}. "
                f"Give the hyperparameter another name, e.g. {self.name + '_h'!r} (and build its symbol with "
                f"sd.sym({self.name + '_h'!r}) in the update)"
            )
        if self.default is not None:
            check_value(self.name, self.kind, self.default)

    @property
    def symbol(self) -> sp.Symbol:
        """The symbol: the notation's for a reserved name, else positive or nonnegative as the kind says."""
        if self.name in KNOWN:
            return sym(self.name)
        if self.kind in (HyperKind.LR, HyperKind.POSITIVE):
            return sym(self.name, positive=True)
        if self.kind.unit_interval or self.kind in (HyperKind.EPS, HyperKind.WD):
            return sym(self.name, nonnegative=True)
        return sym(self.name)

    def with_default(self, value) -> Hyper:
        check_value(self.name, self.kind, value)
        return Hyper(self.name, None if isinstance(value, sp.Basic) else float(value), self.kind, self.doc)

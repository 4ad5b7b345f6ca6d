"""Exceptions raised for user mistakes.  Each message names the offending value and what is allowed."""

from __future__ import annotations

__all__ = [
    "SdederiveError",
    "UnknownNameError",
    "HyperparameterError",
    "SpecError",
    "NoiseModelError",
    "RegimeMismatchError",
    "ExpectationError",
    "ScalingRuleError",
    "DivergenceError",
    "MemoryLimitError",
]


#: the page that explains the common mistakes; an error class with a ``doc`` anchor points to it
TROUBLESHOOTING = "docs/troubleshooting.md"


class SdederiveError(ValueError):
    """Base class of every error this package raises for bad input.

    Subclasses for the common mistakes set `doc` to an anchor of `docs/troubleshooting.md`;
    the message then ends with a pointer to that section.
    """

    doc: str = ""

    def __str__(self) -> str:
        msg = super().__str__()
        return f"{msg} (see {TROUBLESHOOTING}#{self.doc})" if self.doc else msg

    def __reduce__(self):
        # Exception's default pickling calls ``cls(*self.args)``, which fails for subclasses whose
        # ``__init__`` takes other arguments than the message (UnknownNameError, DivergenceError):
        # a worker's error then becomes a BrokenProcessPool in the driver.  Rebuild from ``args`` and
        # the instance dict instead, without calling ``__init__``.
        return (_restore, (type(self), self.args, dict(self.__dict__)))


def _restore(cls, args, state):
    """Unpickle an `SdederiveError` (see `SdederiveError.__reduce__`)."""
    err = cls.__new__(cls, *args)
    err.args = args
    err.__dict__.update(state)
    return err


class UnknownNameError(SdederiveError, KeyError):
    """An optimizer, noise model or regime name that is not registered."""

    def __init__(self, kind: str, name: object, valid) -> None:
        self.kind, self.name, self.valid = kind, name, sorted(valid)
        head, of, tail = kind.partition(" of ")  # "hyperparameter of sgd" -> "hyperparameters of sgd"
        super().__init__(f"unknown {kind} {name!r}; valid {head}s{of}{tail}: {', '.join(self.valid)}")

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.args[0]


class HyperparameterError(SdederiveError):
    """A hyperparameter that is missing or outside its allowed range."""

    doc = "missing-or-invalid-hyperparameter"


class SpecError(SdederiveError):
    """An optimizer spec that cannot be an optimizer (undefined state, no gradient, ...)."""


class NoiseModelError(SdederiveError):
    """Invalid noise parameters (nu <= 0, sigma < 0, non-PSD Sigma) or a moment that does not exist."""


class RegimeMismatchError(SdederiveError):
    """The optimizer has no limit in the requested regime (a drift or diffusion diverges, a state
    moves O(1) per step and cannot be eliminated, ...)."""

    doc = "wrong-regime"


class ExpectationError(SdederiveError):
    """The update contains a function of the noise whose expectation has no registered rule."""

    doc = "unsupported-nonlinearity"


class ScalingRuleError(SdederiveError):
    """No power-law hyperparameter map leaves the SDE invariant."""


class DivergenceError(SdederiveError):
    """A simulated path became non-finite.  `path` and `step` name the first one (smallest path
    index); `result` holds what was computed up to the chunk in which it happened."""

    doc = "divergence"

    def __init__(self, message: str, path: int | None, step: int, n_diverged: int, result=None) -> None:
        super().__init__(message)
        self.path, self.step, self.n_diverged, self.result = path, step, n_diverged, result


class ExpressionError(SdederiveError):
    """Expression text from a file (an SDE JSON, a custom problem's `f`) that is not in the safe
    expression grammar of `sdederive._safe_expr`: arithmetic, numbers, the allowed names and the
    whitelisted functions, nothing else (the text is never evaluated as Python)."""


__all__ += ["ExpressionError"]


class MemoryLimitError(SdederiveError):
    """A run or problem whose estimated memory exceeds what the machine has available; `needed` and
    `limit` are in bytes."""

    def __init__(self, message: str, needed: float, limit: float) -> None:
        super().__init__(message)
        self.needed, self.limit = needed, limit

"""Errors raised by the validators for bad input.  Each message names the bad value and what is allowed."""

from __future__ import annotations

from sdederive.errors import SdederiveError

__all__ = ["ValidationError", "TooFewPathsError"]


class ValidationError(SdederiveError):
    """Bad input to a validator: non-positive or duplicate step sizes, a horizon shorter than one
    step, an unknown observable, an SDE that does not belong to the optimizer, too few paths to
    resolve a requested tolerance, ..."""


class TooFewPathsError(ValidationError):
    """`paths` cannot resolve the requested tolerance; the message says how many are needed."""

    doc = "too-few-paths"

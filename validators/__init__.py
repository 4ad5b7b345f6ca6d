"""Checks of derived SDEs against the discrete optimizers they approximate.

:func:`onestep_check` runs one discrete step of an optimizer many times from one state and
compares the sample mean and covariance of the increment with the derived ``tau*drift`` and
``tau*covariance`` of :func:`sdederive.derive`.
"""

from .onestep import OneStepResult, onestep_check

__all__ = ["onestep_check", "OneStepResult"]

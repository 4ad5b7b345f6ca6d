"""Checks of derived SDEs against the discrete optimizers they approximate.

:func:`onestep_check` runs one discrete step of an optimizer many times from one state and
compares the sample mean and covariance of the increment with the derived ``tau*drift`` and
``tau*covariance`` of :func:`sdederive.derive`.

:func:`compare` and :func:`weak_order` run the discrete optimizer and its SDE over a time horizon
at several learning rates and measure the weak error ``max_t |E g(x_k) - E g(X_{k tau})|`` with
honest confidence intervals, and its order in ``eta`` (:class:`Comparison`: table, JSON, plots,
atomic reports).  :mod:`validators.testing` turns them into assertions for a test suite
(:func:`assert_weak_order`, :func:`assert_sde_matches`); :mod:`validators.problems` has ready-made
problems (breast-cancer logistic regression, quadratics); :mod:`validators.cli` the
``sdederive validate`` command.  :mod:`validators.checks` holds the papers' predictions as checks
(square-root rule, SignSGD vs SGD, heavy tails, RMSpropW under noise, Adagrad vs SGD at a fixed
sample budget, optimal learning rate vs batch size), each returning a ``CheckResult`` with figures
and pass/fail.
"""

from . import checks, problems, testing
from .compare import Comparison, compare, compare_final, weak_order
from .errors import ValidationError
from .onestep import OneStepResult, onestep_check
from .testing import assert_sde_matches, assert_weak_order

__all__ = [
    "onestep_check", "OneStepResult", "compare", "compare_final", "weak_order", "Comparison", "ValidationError",
    "assert_weak_order", "assert_sde_matches", "problems", "testing", "checks",
]

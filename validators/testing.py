"""Assertions for a user's test suite: an optimizer's SDE matches it, with the expected weak order.

Use them in pytest like any assertion; on failure the `AssertionError` carries the whole
report (the table of weak errors, their confidence intervals, the fitted order, the notes):

    # tests/test_my_optimizer.py
    import sdederive as sd
    from sdederive.validators.testing import assert_sde_matches, assert_weak_order

    def test_sgd_sde_is_weak_order_one():
        problem = sd.Quadratic(h=[1.0], sigma=[0.5], x0=[2.0])
        assert_weak_order("sgd", problem, order=1, tol=0.3, etas=[0.2, 0.1, 0.05], paths=2000, horizon=2.0)

    def test_my_signum_sde_tracks_the_optimizer():
        problem = sd.Quadratic(h=[1.0, 4.0], sigma=[1.0, 1.0], x0=[1.0, 1.0])
        assert_sde_matches(my_signum, problem, tol=1e-2, etas=[0.01], paths=20_000, horizon=1.0)

Both return the `Comparison` when they pass, for further checks.
"""

from __future__ import annotations

from collections.abc import Sequence

from .compare import Comparison, compare, weak_order

__all__ = ["assert_weak_order", "assert_sde_matches"]


def assert_weak_order(optimizer, problem, order: float = 1.0, tol: float = 0.3,
                      etas: Sequence[float] = (0.04, 0.02, 0.01), **kw) -> Comparison:
    r"""Assert that the measured weak order of the SDE is within `tol` of `order`.

    The weak order $\alpha$ is the slope of $\log\max_t|\mathbb E g(x_k) - \mathbb E
    g(X_{k\tau})|$ against $\log\eta$, fitted over the step sizes whose difference is resolved
    by the Monte Carlo confidence interval (`validators.compare.compare`); at least two must
    be resolved.  Keyword arguments go to `weak_order` (`paths`,
    `horizon`, `observables`, `hyper`, `sde`, `seed` ...).  Every observable must pass.

    Raises `AssertionError` with the full report when the order is off or not measurable.
    """
    res = weak_order(optimizer, problem, etas, expected_order=order, order_tol=tol, **kw)
    if not res.passed:
        raise AssertionError(f"weak order of the {res.sde_name} SDE is not {order:g} +- {tol:g}\n{res.table()}")
    return res


def assert_sde_matches(optimizer, problem, tol, etas: Sequence[float] = (0.04, 0.02, 0.01), **kw) -> Comparison:
    r"""Assert that the SDE tracks the optimizer: at every `eta` the upper end of the confidence
    interval of $\max_t|\mathbb E g(x_k) - \mathbb E g(X_{k\tau})|$ is below `tol` (a number
    or `{observable: number}`).

    A pilot run first checks that `paths` can resolve `tol` (else
    `ValidationError` says how many paths are needed), so a pass is not
    an artefact of too few paths.  Keyword arguments go to `compare`.

    Raises `AssertionError` with the full report when the difference is not shown below `tol`.
    """
    res = compare(optimizer, problem, etas, tol=tol, **kw)
    if not res.passed:
        raise AssertionError(f"the {res.sde_name} SDE does not match the discrete optimizer within tol={tol}\n"
                             f"{res.table()}")
    return res

"""Checks of derived SDEs against the discrete optimizers they approximate.

`onestep_check` runs one discrete step of an optimizer many times from one state and
compares the sample mean and covariance of the increment with the derived `tau*drift` and
`tau*covariance` of `sdederive.derive`.

`compare` and `weak_order` run the discrete optimizer and its SDE over a time horizon
at several learning rates and measure the weak error `max_t |E g(x_k) - E g(X_{k tau})|` with
honest confidence intervals, and its order in `eta` (`Comparison`: table, JSON, plots,
atomic reports).  `validators.testing` turns them into assertions for a test suite
(`assert_weak_order`, `assert_sde_matches`); `validators.problems` has ready-made
problems (breast-cancer logistic regression, quadratics); `validators.cli` the
`sdederive validate` command.  `validators.checks` holds the papers' predictions as checks
(square-root rule, SignSGD vs SGD, heavy tails, RMSpropW under noise, Adagrad vs SGD at a fixed
sample budget, optimal learning rate vs batch size), each returning a `CheckResult` with figures
and pass/fail.
"""

import importlib
import sys
import types

# public name -> submodule (imported on first use, PEP 562: ``sdederive validate --help`` builds its parser
# through ``sdederive.validators.cli`` without loading sympy or numba)
_LAZY = {
    "checks": None, "problems": None, "testing": None,
    "Comparison": "compare", "compare": "compare", "compare_final": "compare", "weak_order": "compare",
    "ValidationError": "errors", "OneStepResult": "onestep", "onestep_check": "onestep",
    "assert_sde_matches": "testing", "assert_weak_order": "testing",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    sub = _LAZY[name]
    mod = importlib.import_module(f"{__name__}.{sub or name}")
    value = mod if sub is None else getattr(mod, name)
    globals()[name] = value
    return value


class _Package(types.ModuleType):
    """The package's module type: the import system binds a loaded submodule to the package attribute of its
    name, and `compare` is also a public function of that submodule; as with an eager
    `from .compare import compare`, the attribute stays the function."""

    def __setattr__(self, attr: str, value) -> None:
        if attr == "compare" and isinstance(value, types.ModuleType) and hasattr(value, "compare"):
            value = value.compare
        super().__setattr__(attr, value)


sys.modules[__name__].__class__ = _Package


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "onestep_check", "OneStepResult", "compare", "compare_final", "weak_order", "Comparison", "ValidationError",
    "assert_weak_order", "assert_sde_matches", "problems", "testing", "checks",
]

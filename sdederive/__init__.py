"""sdederive: derive SDE approximations of stochastic optimizers from their update rules.

The public names are imported on first use (PEP 562 module `__getattr__`): `import sdederive` itself
loads neither sympy nor numba, so the command line's `--help` and `list` start at once.  `from
sdederive import derive`, `sd.derive`, `dir(sd)` and `__all__` behave as with eager imports.
"""

from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

# public name -> (module, attribute); attribute None: the module itself
_LAZY: dict[str, tuple[str, str | None]] = {
    "export": ("sdederive.export", None),
    "noise": ("sdederive.noise", None),
    "problems": ("sdederive.problems", None),
    "regimes": ("sdederive.regimes", None),
    "sweep": ("sdederive.sweep", None),
    "validators": ("sdederive.validators", None),
    "assumptions": ("sdederive.analysis.assumptions", None),
    "batchsize": ("sdederive.analysis.batchsize", None),
    "ito": ("sdederive.analysis.ito", None),
    "rates": ("sdederive.analysis.rates", None),
    "optimizers": ("sdederive.spec.optimizers", None),
    "transforms": ("sdederive.spec.transforms", None),
    "ScalingRule": ("sdederive.analysis.scaling", "ScalingRule"),
    "scaling_rule": ("sdederive.analysis.scaling", "scaling_rule"),
    "Stationary": ("sdederive.analysis.stationary", "Stationary"),
    "stationary": ("sdederive.analysis.stationary", "stationary"),
    "clear_cache": ("sdederive.derivation.engine", "clear_cache"),
    "derive": ("sdederive.derivation.engine", "derive"),
    "register_expectation": ("sdederive.derivation.expectation", "register_expectation"),
    **{n: ("sdederive.errors", n) for n in (
        "DivergenceError", "ExpectationError", "HyperparameterError", "NoiseModelError", "RegimeMismatchError",
        "ScalingRuleError", "SdederiveError", "SpecError", "UnknownNameError")},
    "Gaussian": ("sdederive.noise", "Gaussian"),
    "StudentT": ("sdederive.noise", "StudentT"),
    "Custom": ("sdederive.problems", "Custom"),
    "LogisticRegression": ("sdederive.problems", "LogisticRegression"),
    "Quadratic": ("sdederive.problems", "Quadratic"),
    "Regime": ("sdederive.regimes", "Regime"),
    "SDE": ("sdederive.sde", "SDE"),
    "SimulationResult": ("sdederive.simulate.simulator", "SimulationResult"),
    "Simulator": ("sdederive.simulate.simulator", "Simulator"),
    "compile": ("sdederive.simulate.simulator", "compile"),
    "Hyper": ("sdederive.spec.hyper", "Hyper"),
    "Optimizer": ("sdederive.spec.optimizers", "Optimizer"),
    "chain": ("sdederive.spec.optimizers", "chain"),
    "from_update": ("sdederive.spec.optimizers", "from_update"),
    "sym": ("sdederive.symbols", "sym"),
    "symbols": ("sdederive.symbols", "symbols"),
    "HyperKind": ("sdederive.spec.kinds", "HyperKind"),
    "schedules": ("sdederive.spec.schedules", None),
    "scheduled": ("sdederive.spec.schedules", "scheduled"),
    "StateKind": ("sdederive.spec.kinds", "StateKind"),
    "VectorSDE": ("sdederive.sde_vector", "VectorSDE"),
    **{n: ("sdederive.spec.vector", n) for n in (
        "coordinatewise", "dot", "grad_at", "matrix", "minimum", "norm", "vectors")},
}


def __getattr__(name: str):
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'sdederive' has no attribute {name!r}") from None
    mod = importlib.import_module(module)
    value = mod if attr is None else getattr(mod, attr)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


class _Package(types.ModuleType):
    """The package's module type: the import system binds a loaded submodule to the package attribute of its
    name, and `symbols` is also a public function of that submodule; as with an eager
    `from .symbols import symbols`, the attribute stays the function."""

    def __setattr__(self, attr: str, value) -> None:
        if attr == "symbols" and isinstance(value, types.ModuleType) and hasattr(value, "symbols"):
            value = value.symbols
        super().__setattr__(attr, value)


sys.modules[__name__].__class__ = _Package


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "derive", "clear_cache", "SDE", "scaling_rule", "ScalingRule", "stationary", "Stationary", "Optimizer", "chain",
    "from_update", "Hyper", "Regime", "Gaussian", "StudentT", "register_expectation", "sym", "symbols", "noise",
    "optimizers", "regimes", "transforms", "SdederiveError", "UnknownNameError", "HyperparameterError", "SpecError",
    "NoiseModelError", "RegimeMismatchError", "ExpectationError", "ScalingRuleError", "DivergenceError", "compile",
    "Simulator", "SimulationResult", "problems", "Quadratic", "LogisticRegression", "Custom", "__version__",
    "assumptions", "rates", "ito", "batchsize", "sweep", "export",
    "vectors", "norm", "dot", "minimum", "grad_at", "coordinatewise", "matrix", "VectorSDE",
    "StateKind", "HyperKind", "schedules", "scheduled",
]

"""sdederive: derive SDE approximations of stochastic optimizers from their update rules."""

from sdederive import export, noise, problems, regimes, sweep
from sdederive.analysis import assumptions, batchsize, ito, rates
from sdederive.analysis.scaling import ScalingRule, scaling_rule
from sdederive.analysis.stationary import Stationary, stationary
from sdederive.derivation.engine import clear_cache, derive
from sdederive.derivation.expectation import register_expectation
from sdederive.errors import (
    DivergenceError,
    ExpectationError,
    HyperparameterError,
    NoiseModelError,
    RegimeMismatchError,
    ScalingRuleError,
    SdederiveError,
    SpecError,
    UnknownNameError,
)
from sdederive.noise import Gaussian, StudentT
from sdederive.problems import Custom, LogisticRegression, Quadratic
from sdederive.regimes import Regime
from sdederive.sde import SDE
from sdederive.sde_vector import VectorSDE
from sdederive.simulate.simulator import SimulationResult, Simulator, compile
from sdederive.spec import optimizers, transforms
from sdederive.spec.hyper import Hyper
from sdederive.spec.kinds import HyperKind, StateKind
from sdederive.spec.optimizers import Optimizer, chain, from_update
from sdederive.spec.vector import coordinatewise, dot, grad_at, matrix, minimum, norm, vectors
from sdederive.symbols import sym, symbols

__version__ = "0.1.0"


def __getattr__(name: str):
    # sd.validators: imported on first use (it pulls in the comparison and reporting code)
    if name == "validators":
        import importlib

        return importlib.import_module("sdederive.validators")
    raise AttributeError(f"module 'sdederive' has no attribute {name!r}")


__all__ = [
    "derive", "clear_cache", "SDE", "scaling_rule", "ScalingRule", "stationary", "Stationary", "Optimizer", "chain", "from_update", "Hyper", "Regime", "Gaussian",
    "StudentT", "register_expectation", "sym", "symbols", "noise", "optimizers", "regimes", "transforms",
    "SdederiveError", "UnknownNameError", "HyperparameterError", "SpecError", "NoiseModelError",
    "RegimeMismatchError", "ExpectationError", "ScalingRuleError", "DivergenceError", "compile", "Simulator",
    "SimulationResult", "problems", "Quadratic", "LogisticRegression", "Custom", "__version__",
    "assumptions", "rates", "ito", "batchsize", "sweep", "export",
    "vectors", "norm", "dot", "minimum", "grad_at", "coordinatewise", "matrix", "VectorSDE",
]
__all__ += ["StateKind", "HyperKind"]  # the declared roles of states and hyperparameters (sdederive.spec.kinds)

"""sdederive: derive SDE approximations of stochastic optimizers from their update rules."""

from . import assumptions, batchsize, export, ito, noise, optimizers, problems, rates, regimes, sweep, transforms
from .derive import clear_cache, derive
from .errors import (
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
from .expectation import register_expectation
from .hyper import Hyper
from .noise import Gaussian, StudentT
from .optimizers import Optimizer, chain, from_update
from .problems import Custom, LogisticRegression, Quadratic
from .regimes import Regime
from .scaling import ScalingRule, scaling_rule
from .sde import SDE
from .simulate import SimulationResult, Simulator, compile
from .stationary import Stationary, stationary
from .symbols import sym, symbols

__version__ = "0.1.0"

__all__ = [
    "derive", "clear_cache", "SDE", "scaling_rule", "ScalingRule", "stationary", "Stationary", "Optimizer", "chain", "from_update", "Hyper", "Regime", "Gaussian",
    "StudentT", "register_expectation", "sym", "symbols", "noise", "optimizers", "regimes", "transforms",
    "SdederiveError", "UnknownNameError", "HyperparameterError", "SpecError", "NoiseModelError",
    "RegimeMismatchError", "ExpectationError", "ScalingRuleError", "DivergenceError", "compile", "Simulator",
    "SimulationResult", "problems", "Quadratic", "LogisticRegression", "Custom", "__version__",
    "assumptions", "rates", "ito", "batchsize", "sweep", "export",
]

r"""Objective functions the simulators compile into their kernels, one module per kind.

* `Quadratic` (`.quadratic`): $f(x) = \tfrac12 x^\top H x$ with `H = diag(h)` or a dense
  symmetric PSD `H`; gradient noise `g = Hx + \xi` with per-coordinate scale `sigma` (Gaussian or
  Student-t, `xi_i = sigma_i z_i`) or a full Gaussian covariance `Sigma` (`xi = L z`, `L L^T = Sigma`).
* `LogisticRegression` (`.logistic`):
  $f(x) = \frac1n\sum_j \log(1+e^{-y_j a_j^\top x}) + \frac{\lambda}2|x|^2$; the discrete optimizer sees
  real minibatches (`B` examples drawn with replacement), the SDE the per-example gradient covariance
  `Sigma(x)/B` applied through a low-rank factor.
* `Custom` (`.custom`): any `f` written as a sympy expression of `x_0, ..., x_{d-1}`; gradient,
  Hessian diagonal and Hessian-vector product by `sympy.diff`; noise as for `Quadratic`.

Every kind implements `Problem` (`.base`): a typed parameter pack (`ParamLayout`), kernel
fragments for both backends and a numpy reference (`loss`, `grad`, `hvp`, `hess_diag`,
`noise_scale`), generated from one description per kind (`.description`).  A new kind is one module: a
`Problem` subclass with its `code()`, `fields()`, `pack_values()` and (if it has matrices)
`matrices()`.
`from_dict` reads the JSON problem files of the CLI (`.io`).
"""

from __future__ import annotations

from sdederive.problems.base import AbstractProblem, ParamLayout, Problem, ProblemError
from sdederive.problems.custom import Custom
from sdederive.problems.description import Loop, ProblemCode, Unrolled
from sdederive.problems.io import from_dict, load
from sdederive.problems.logistic import LogisticRegression
from sdederive.problems.quadratic import Quadratic

__all__ = ["Problem", "AbstractProblem", "ParamLayout", "Quadratic", "LogisticRegression", "Custom", "from_dict",
           "load", "ProblemError", "ProblemCode", "Loop", "Unrolled"]

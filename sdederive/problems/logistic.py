r"""`LogisticRegression`: $f(x) = \frac1n\sum_j \log(1+e^{-y_j a_j^\top x}) + \frac{\lambda}2|x|^2$.

The discrete optimizer sees real minibatches (`B` examples drawn with replacement), the SDE the
per-example gradient covariance `Sigma(x)/B` applied through the low-rank factor
$\xi = (nB)^{-1/2}\sum_j (\nabla f_j - \nabla f)\,w_j$, `w_j ~ N(0,1)` (never a `d x d`
square root).

This module owns the kind: its data and checks, and its one description (`_code`): gradient, Hessian
diagonal, Hessian-vector product (full batch and, generated from it, on a minibatch), loss, noise scale,
low-rank noise factor and per-example gradient, from which `sdederive.problems.description` prints the
numba and CUDA helpers and evaluates the numpy reference.  The description's sums over the examples are
printed with the examples as the outer loop (one pass over the data per call, the per-example factors
computed once), and `prob_grad` stores the per-example weights `W[ex]` that the Hessian diagonal and the
noise factor read.  The kernels' minibatch gradient is the index drawing of `numba_minibatch_grad` /
`cuda_minibatch_grad` around the generated `prob_mb_accum` and `prob_mb_finish`.
The pack fields are `l2` and `B` (`LogisticRegression.fields`), read at their named offsets.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import sympy as sp
from sympy.codegen.cfunctions import log1p

from sdederive.problems.base import Problem, ProblemError, _as_float_array, _integer, _vec
from sdederive.problems.description import (
    EX,
    GRV,
    IX,
    JX,
    NEX,
    WV,
    Loop,
    ProblemCode,
    V,
    X,
    Z,
    dsum,
    esum,
    mat,
)

__all__ = ["LogisticRegression", "numba_minibatch_grad", "cuda_minibatch_grad"]

_A, _y = mat("A"), mat("y")  # the data (slot PM, n x d) and the labels (slot PY)
_l2, _B = sp.Symbol("l2", real=True), sp.Symbol("B", real=True)


@functools.cache
def _code() -> ProblemCode:
    r"""The one description (`sdederive.problems.description`), with `m_ex = a_ex . x`,
    `s_ex = sigma(-y_ex m_ex) = 1/(1 + e^{y_ex m_ex})` and the per-example weight `w_ex = -y_ex s_ex`
    (`grad f_ex = w_ex a_ex + l2 x`):

    $$
    \nabla f = \tfrac1n \textstyle\sum_{ex} w_{ex} a_{ex} + \lambda x,\quad
    H_{ii} = \tfrac1n \sum_{ex} s(1-s) a_{ex,i}^2 + \lambda,\quad
    H v = \tfrac1n \sum_{ex} s(1-s)(a_{ex}\cdot v)\, a_{ex} + \lambda v,
    $$

    the minibatch noise's std `sqrt(mean_ex (w a - mean w a)**2 / B)` and its low-rank factor
    `xi = (nB)^{-1/2} sum_ex (w_ex a_ex - mean w a) z_ex`; `s(1 - s) = -y w (1 + y w)` for labels +-1
    (the weights stored once per gradient, `W[ex]`, serve the Hessian and the noise)."""
    ex, i, j = EX, IX, JX
    margin = dsum(_A[ex, j] * X[j])
    weight = -_y[ex] / (1 + sp.exp(_y[ex] * margin))
    s = 1 / (1 + sp.exp(_y[ex] * margin))
    mean_wa = GRV[i] - _l2 * X[i]  # the gradient just computed, without its ridge
    return ProblemCode(
        grad=Loop(esum(WV[ex] * _A[ex, i]) / NEX + _l2 * X[i]),
        hess_diag=Loop(esum(-_y[ex] * WV[ex] * (1 + _y[ex] * WV[ex]) * _A[ex, i] ** 2) / NEX + _l2),
        hvp=Loop(esum(s * (1 - s) * dsum(_A[ex, j] * V[j]) * _A[ex, i]) / NEX + _l2 * V[i]),
        loss=esum(sp.Max(-_y[ex] * margin, 0) + log1p(sp.exp(-sp.Abs(_y[ex] * margin)))) / NEX
        + _l2 / 2 * dsum(X[j] ** 2),
        fields=("l2", "B"),
        matrices=(("A", "PM"), ("y", "PY")),
        noise_scale=Loop(sp.S.Zero),
        noise_scale_x=Loop(sp.sqrt(esum((WV[ex] * _A[ex, i] - mean_wa) ** 2) / (NEX * _B))),
        noise_factor=Loop((esum(WV[ex] * Z[ex] * _A[ex, i]) - esum(Z[ex]) * mean_wa) / sp.sqrt(NEX * _B)),
        weights=weight,
        example_grad=weight * _A[ex, i],
        ridge=Loop(_l2 * X[i]),
        # tr Sigma(x) = mean_ex |g_ex - grad f|^2 / B with g_ex - grad f = w a_ex - mean w a (the ridge cancels), so
        # grad tr Sigma = (2/(n B)) sum_ex s(1 - s) (a_ex . (g_ex - grad f)) a_ex (the ridge's and the mean's parts
        # of the example Hessians multiply sum_ex (g_ex - grad f) = 0)
        grad_trace_cov=Loop(2 * esum(-_y[ex] * WV[ex] * (1 + _y[ex] * WV[ex])
                                     * dsum(_A[ex, j] * (WV[ex] * _A[ex, j] - GRV[j] + _l2 * X[j])) * _A[ex, i])
                            / (NEX * _B)),
    )


def numba_minibatch_grad(ind: str) -> list[str]:
    """Kernel lines (numba) for the discrete optimizer's minibatch gradient `G` at `xrow`: `B` indices
    drawn with replacement (Philox stream 1, `sdederive.simulate.rng.philox.draw_indices`), each
    example's term added by the generated `prob_mb_accum`, then `prob_mb_finish` (mean, ridge)."""
    return [
        f"{ind}n_ex, dd = PM.shape",
        f"{ind}Bm = int(PV[P_B])",
        f"{ind}for i in range(d):",
        f"{ind}    G[i] = 0.0",
        f"{ind}draw_indices(IDX, Bm, n_ex, cstep, p, 1, key0, key1)",
        f"{ind}for jb in range(Bm):",
        f"{ind}    prob_mb_accum(xrow, G, IDX[jb], PV, PM, PL, PY, W)",
        f"{ind}prob_mb_finish(xrow, G, Bm, PV, PM, PL, PY, W)",
    ]


def cuda_minibatch_grad(ind: str) -> list[str]:
    """The same minibatch gradient in CUDA C (indices from the same Philox counters, drawn four at a time)."""
    return [
        f"{ind}{{ const int Bm = (int)PV[P_B];",
        f"{ind}  for (int i = 0; i < D; ++i) G[i] = 0;",
        f"{ind}  for (int jb = 0; jb < (Bm + 3) / 4; ++jb) {{",
        f"{ind}    sd_u32 c[4] = {{cstep, (sd_u32)jb, (sd_u32)p, 1u}}; sd_philox4x32(c, key0, key1);",
        f"{ind}    for (int q = 0; q < 4 && 4 * jb + q < Bm; ++q) {{",
        f"{ind}      const int jx = (int)(((sd_u64)c[q] * (sd_u64)NEX) >> 32);",
        f"{ind}      prob_mb_accum(X[0], G, jx, PV, PM, PL, PY, W); }} }}",
        f"{ind}  prob_mb_finish(X[0], G, Bm, PV, PM, PL, PY, W); }}",
    ]


@dataclass(frozen=True, eq=False)
class LogisticRegression(Problem):
    """Binary logistic regression on data `A` (n x d) with labels `y` in {-1, +1}, batch size `B`,
    optional ridge `l2`."""

    A: np.ndarray | None = None
    y: np.ndarray | None = None
    B: int = 1
    l2: float = 0.0

    kind = "logistic"
    noise_varies = True
    minibatch = True

    def __init__(self, A, y, B: int = 1, l2: float = 0.0, x0=None):
        Am = np.ascontiguousarray(_as_float_array("A", A))
        if Am.ndim != 2 or Am.shape[0] < 2 or Am.shape[1] < 1:
            raise ProblemError(f"A must be an (n, d) matrix with n >= 2 examples; got shape {Am.shape}")
        if not np.all(np.isfinite(Am)):
            bad = np.argwhere(~np.isfinite(Am))[0]
            raise ProblemError(f"A has a non-finite entry A[{bad[0]}][{bad[1]}] = {Am[tuple(bad)]}; allowed: finite "
                               "numbers")
        yv = _as_float_array("y", y).ravel()
        if yv.size != Am.shape[0] or not np.all(np.isin(yv, (-1.0, 1.0))):
            raise ProblemError(f"y must hold n={Am.shape[0]} labels in {{-1, +1}}; got {np.unique(yv)[:5]}")
        B = _integer("batch size B", B, 1, 2**31 - 1)  # the kernels hold B in an int
        if isinstance(l2, (bool, np.bool_)) or not isinstance(l2, (int, np.integer, float)) or not np.isfinite(l2) \
                or l2 < 0:
            raise ProblemError(f"l2={l2!r} is invalid; allowed: a finite number >= 0")
        d = Am.shape[1]
        object.__setattr__(self, "x0", _vec("x0", np.zeros(d) if x0 is None else x0, d))
        object.__setattr__(self, "noise", "minibatch")
        object.__setattr__(self, "nu", None)
        object.__setattr__(self, "A", Am)
        object.__setattr__(self, "y", yv)
        object.__setattr__(self, "B", int(B))
        object.__setattr__(self, "l2", float(l2))

    @property
    def n(self) -> int:
        return int(self.A.shape[0])

    @classmethod
    def from_file(cls, path, B: int = 1, l2: float = 0.0, label=None, x0=None) -> LogisticRegression:
        """Data from a `.csv`, `.npz` or `.parquet` file (`sdederive.problems._data.read_dataset`):
        features and a label column coded 0/1 or -1/+1 (`label`: its name or index; by default the
        column named `y`, `label`, `target` or `class`, else the last one)."""
        from sdederive.problems._data import read_dataset

        A, y = read_dataset(path, label=label)
        return cls(A, y, B=B, l2=l2, x0=x0)

    @classmethod
    def synthetic(cls, n: int = 512, d: int = 10, B: int = 8, seed: int = 0, l2: float = 1e-3,
                  scale: np.ndarray | None = None) -> LogisticRegression:
        """Gaussian features (column scales `scale`, default `geomspace(0.3, 3, d)`), labels from a
        logistic model with a random unit `w*`.  `n >= 2` and `d >= 1` integers, `seed` an integer >= 0;
        an `n x d` matrix beyond the memory available is refused before it is drawn (`MemoryLimitError`)."""
        from sdederive.simulate._memory import check_memory

        n, d, seed = (_integer(f"synthetic logistic regression: {name}", v, lo)
                      for name, v, lo in (("n", n, 2), ("d", d, 1), ("seed", seed, 0)))
        # A, its product with w* and the labels, then the problem's own contiguous copy of A
        check_memory(8.0 * (2 * n * d + 3 * n), f"a synthetic logistic regression with n={n}, d={d}",
                     "lower n or d")
        rng = np.random.default_rng(seed)
        sc = np.geomspace(0.3, 3.0, d) if scale is None else _vec("scale", scale, d, nonneg=True)
        A = rng.standard_normal((n, d)) * sc
        w = rng.standard_normal(d)
        w /= np.linalg.norm(w)
        p = 1.0 / (1.0 + np.exp(-A @ w))
        y = np.where(rng.random(n) < p, 1.0, -1.0)
        return cls(A, y, B=B, l2=l2)

    # -- kernel data and code -------------------------------------------------------------------------
    def fields(self) -> tuple:
        return (("l2", 1), ("B", 1))

    def pack_values(self) -> dict:
        return {"l2": self.l2, "B": float(self.B)}

    def matrices(self) -> dict:
        return {"PM": self.A, "PY": self.y}

    def kernel_scalar(self, name: str) -> float | None:
        if name == "B":
            return float(self.B)
        return super().kernel_scalar(name)

    has_noise_factor = True
    correlated = True  # Sigma(x) of the per-example gradients

    def numba_minibatch_grad(self, ind: str) -> list[str]:
        return numba_minibatch_grad(ind)

    def cuda_minibatch_grad(self, ind: str) -> list[str]:
        return cuda_minibatch_grad(ind)

    def hessian_coupling(self) -> str | None:
        return "logistic regression (its Hessian A^T W A/n couples the coordinates)" if self.d > 1 else None

    def code(self) -> ProblemCode:
        return _code()

    def _scalars(self) -> dict:
        return {"n_ex": self.n}

    def fingerprint_data(self) -> str:
        return "logistic"

    # -- numpy reference (the description evaluated; `Problem` has grad, loss, hess_diag, noise_scale) -----------
    def per_example_grads(self, x: np.ndarray) -> np.ndarray:
        """`(n, d)`: gradient of each example's loss (ridge included) at a single `x`: the description's
        `example_grad + ridge` with the example and the coordinate as the two axes."""
        from sdederive.problems.description import _Eval

        pc = self.code()
        ev = _Eval({**self._arrays(), "xv": np.asarray(x, dtype=float)}, {**self._scalars(), "d": self.d}, {"xv"}, 0)
        val = ev(pc.example_grad + pc.ridge.expr, {EX: 0, IX: 1})
        return np.array(np.broadcast_to(val, (self.n, self.d)), dtype=float)

    def hvp(self, x: np.ndarray, v: np.ndarray, idx=None) -> np.ndarray:
        """`H(x) v = mean_j s_j (1 - s_j) (a_j . v) a_j + l2 v` with `s_j = sigma(-y_j a_j . x)`, over all
        examples or the minibatch `idx` (indices, repeats allowed: the HVP of that minibatch's loss)."""
        if idx is None:
            return super().hvp(x, v)
        rows = np.asarray(idx, dtype=np.int64)
        arrays = {**self._arrays(), "A": self.A[rows], "y": self.y[rows]}
        return self._eval("hvp", x, v, arrays=arrays, scalars={"n_ex": int(rows.size)})

    def to_dict(self) -> dict:
        return {"kind": "logistic", "A": self.A.tolist(), "y": self.y.tolist(), "B": self.B, "l2": self.l2,
                "x0": self.x0.tolist()}

r"""`LogisticRegression`: $f(x) = \frac1n\sum_j \log(1+e^{-y_j a_j^\top x}) + \frac{\lambda}2|x|^2$.

The discrete optimizer sees real minibatches (`B` examples drawn with replacement), the SDE the
per-example gradient covariance `Sigma(x)/B` applied through the low-rank factor
$\xi = (nB)^{-1/2}\sum_j (\nabla f_j - \nabla f)\,w_j$, `w_j ~ N(0,1)` (never a `d x d`
square root).

This module owns the kind: its data and checks, its numpy reference (`LogisticRegression.grad`,
`hvp` full-batch or on a minibatch, `noise_scale`), and
its kernel code for both backends, written by hand next to the numpy code (`NUMBA_FRAGMENT`,
`CUDA_FRAGMENT`, and the minibatch gradient of the discrete kernels, `numba_minibatch_grad` and
`cuda_minibatch_grad`).  Unlike the quadratic and custom kinds it is not generated from a
`ProblemCode`: its gradient and noise scale share one pass over the examples
(the per-example weights `W[j]`, reused by the low-rank noise factor), which the loop IR does not express.
The pack fields are `l2` and `B` (`LogisticRegression.fields`), read at their named offsets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sdederive.problems.base import Problem, ProblemError, _as_float_array, _vec

__all__ = ["LogisticRegression", "NUMBA_FRAGMENT", "CUDA_FRAGMENT", "numba_minibatch_grad", "cuda_minibatch_grad"]

# -- numba: gradient (GR), Hessian diagonal (HS), noise scale (SG), loss, HVP (full batch; prob_hvp_idx: of a
# minibatch of indices), low-rank noise factor ------------------------------------------------------------------
# PM = A (n x d), PY = y, PV = pack (l2, B); W = work (>= 2n): the per-example weights -y*s
NUMBA_FRAGMENT = '''
@HELPER
def prob_grad(xv, GR, HS, SG, PV, PM, PL, PY, W, need_hs, need_sg):
    n, d = PM.shape
{offsets}
    l2 = PV[P_l2]
    for i in range(d):
        GR[i] = 0.0
        if need_hs:
            HS[i] = 0.0
        if need_sg:
            SG[i] = 0.0
    for j in range(n):
        mg = 0.0
        for i in range(d):
            mg += PM[j, i] * xv[i]
        mg *= PY[j]
        s = 1.0 / (1.0 + math.exp(mg))
        W[j] = -PY[j] * s
        for i in range(d):
            GR[i] += W[j] * PM[j, i]
        if need_hs:
            w = s * (1.0 - s)
            for i in range(d):
                HS[i] += w * PM[j, i] * PM[j, i]
    for i in range(d):
        GR[i] /= n
    if need_sg:
        B = PV[P_B]
        for j in range(n):
            for i in range(d):
                c = W[j] * PM[j, i] - GR[i]
                SG[i] += c * c
        for i in range(d):
            SG[i] = math.sqrt(SG[i] / (n * B))
    for i in range(d):
        GR[i] += l2 * xv[i]
        if need_hs:
            HS[i] = HS[i] / n + l2

@HELPER
def prob_loss(xv, PV, PM, PL, PY, W):
    n, d = PM.shape
{offsets}
    acc = 0.0
    for j in range(n):
        mg = 0.0
        for i in range(d):
            mg += PM[j, i] * xv[i]
        mg *= -PY[j]
        acc += max(mg, 0.0) + math.log1p(math.exp(-abs(mg)))
    r = 0.0
    for i in range(xv.size):
        r += xv[i] * xv[i]
    return acc / n + 0.5 * PV[P_l2] * r

@HELPER
def prob_hvp(xv, vv, HV, PV, PM, PL, PY, W):
    n, d = PM.shape
{offsets}
    for i in range(d):
        HV[i] = 0.0
    for j in range(n):
        mg = 0.0
        av = 0.0
        for i in range(d):
            mg += PM[j, i] * xv[i]
            av += PM[j, i] * vv[i]
        s = 1.0 / (1.0 + math.exp(PY[j] * mg))
        c = s * (1.0 - s) * av
        for i in range(d):
            HV[i] += c * PM[j, i]
    for i in range(d):
        HV[i] = HV[i] / n + PV[P_l2] * vv[i]

@HELPER
def prob_hvp_idx(xv, vv, HV, IDX, nb, PV, PM, PL, PY, W):
    # the HVP of the minibatch IDX[0:nb] (repeats count as often as drawn), ridge included
    n, d = PM.shape
{offsets}
    for i in range(d):
        HV[i] = 0.0
    for q in range(nb):
        j = IDX[q]
        mg = 0.0
        av = 0.0
        for i in range(d):
            mg += PM[j, i] * xv[i]
            av += PM[j, i] * vv[i]
        s = 1.0 / (1.0 + math.exp(PY[j] * mg))
        c = s * (1.0 - s) * av
        for i in range(d):
            HV[i] += c * PM[j, i]
    for i in range(d):
        HV[i] = HV[i] / nb + PV[P_l2] * vv[i]

@HELPER
def prob_noise0(d, SG, PV, PM, PL, PY, W):
    for i in range(d):
        SG[i] = 0.0

@HELPER
def prob_corr(xv, GR, Z, XI, PV, PM, PL, PY, W):
    # xi = (nB)^(-1/2) sum_j (g_j - gbar) w_j, with g_j - gbar = W[j] a_j - mean_j(W[j] a_j); W and GR from
    # prob_grad at xv
    n_ex, d = PM.shape
{offsets}
    swz = 0.0
    for i in range(d):
        XI[i] = 0.0
    for j in range(n_ex):
        swz += Z[j]
        cw = W[j] * Z[j]
        for i in range(d):
            XI[i] += cw * PM[j, i]
    scl = 1.0 / math.sqrt(n_ex * PV[P_B])
    for i in range(d):
        XI[i] = (XI[i] - swz * (GR[i] - PV[P_l2] * xv[i])) * scl
'''

CUDA_FRAGMENT = r"""
__device__ void prob_grad(const real *xv, real *GR, real *HS, real *SG, const double *PV, const double *PM,
                          const double *PL, const double *PY, real *W, bool need_hs, bool need_sg) {
    const real l2 = (real)PV[P_l2];
    for (int i = 0; i < D; ++i) { GR[i] = 0; if (need_hs) HS[i] = 0; if (need_sg) SG[i] = 0; }
    for (int j = 0; j < NEX; ++j) {
        real mg = 0;
        for (int i = 0; i < D; ++i) mg += (real)PM[j * D + i] * xv[i];
        mg *= (real)PY[j];
        real s = (real)1 / ((real)1 + exp(mg));
        W[j] = -(real)PY[j] * s;
        for (int i = 0; i < D; ++i) GR[i] += W[j] * (real)PM[j * D + i];
        if (need_hs) { real w = s * ((real)1 - s); for (int i = 0; i < D; ++i) HS[i] += w * (real)(PM[j * D + i] * PM[j * D + i]); }
    }
    for (int i = 0; i < D; ++i) GR[i] /= (real)NEX;
    if (need_sg) {
        const real B = (real)PV[P_B];
        for (int j = 0; j < NEX; ++j)
            for (int i = 0; i < D; ++i) { real c = W[j] * (real)PM[j * D + i] - GR[i]; SG[i] += c * c; }
        for (int i = 0; i < D; ++i) SG[i] = sqrt(SG[i] / ((real)NEX * B));
    }
    for (int i = 0; i < D; ++i) { GR[i] += l2 * xv[i]; if (need_hs) HS[i] = HS[i] / (real)NEX + l2; }
}
__device__ real prob_loss(const real *xv, const double *PV, const double *PM, const double *PL, const double *PY,
                          real *W) {
    real acc = 0, r = 0;
    for (int j = 0; j < NEX; ++j) {
        real mg = 0;
        for (int i = 0; i < D; ++i) mg += (real)PM[j * D + i] * xv[i];
        mg *= -(real)PY[j];
        acc += (mg > 0 ? mg : (real)0) + log1p(exp(-fabs(mg)));
    }
    for (int i = 0; i < D; ++i) r += xv[i] * xv[i];
    return acc / (real)NEX + (real)0.5 * (real)PV[P_l2] * r;
}
__device__ void prob_hvp(const real *xv, const real *vv, real *HV, const double *PV, const double *PM,
                         const double *PL, const double *PY, real *W) {
    for (int i = 0; i < D; ++i) HV[i] = 0;
    for (int j = 0; j < NEX; ++j) {
        real mg = 0, av = 0;
        for (int i = 0; i < D; ++i) { mg += (real)PM[j * D + i] * xv[i]; av += (real)PM[j * D + i] * vv[i]; }
        const real s = (real)1 / ((real)1 + exp((real)PY[j] * mg));
        const real c = s * ((real)1 - s) * av;
        for (int i = 0; i < D; ++i) HV[i] += c * (real)PM[j * D + i];
    }
    for (int i = 0; i < D; ++i) HV[i] = HV[i] / (real)NEX + (real)PV[P_l2] * vv[i];
}
__device__ void prob_hvp_idx(const real *xv, const real *vv, real *HV, const int *IDX, int nb, const double *PV,
                             const double *PM, const double *PL, const double *PY, real *W) {
    for (int i = 0; i < D; ++i) HV[i] = 0;
    for (int q = 0; q < nb; ++q) {
        const int j = IDX[q];
        real mg = 0, av = 0;
        for (int i = 0; i < D; ++i) { mg += (real)PM[j * D + i] * xv[i]; av += (real)PM[j * D + i] * vv[i]; }
        const real s = (real)1 / ((real)1 + exp((real)PY[j] * mg));
        const real c = s * ((real)1 - s) * av;
        for (int i = 0; i < D; ++i) HV[i] += c * (real)PM[j * D + i];
    }
    for (int i = 0; i < D; ++i) HV[i] = HV[i] / (real)nb + (real)PV[P_l2] * vv[i];
}
__device__ void prob_noise0(real *SG, const double *PV, const double *PM, const double *PL, const double *PY,
                            real *W) {
    for (int i = 0; i < D; ++i) SG[i] = 0;
}
__device__ void prob_corr(const real *xv, const real *GR, const double *Z, real *XI, const double *PV,
                          const double *PM, const double *PL, const double *PY, real *W) {
    real swz = 0; for (int i = 0; i < D; ++i) XI[i] = 0;
    for (int j = 0; j < NEX; ++j) { swz += (real)Z[j]; real cw = W[j] * (real)Z[j];
        for (int i = 0; i < D; ++i) XI[i] += cw * (real)PM[j * D + i]; }
    const real scl = (real)1 / sqrt((real)NEX * (real)PV[P_B]);
    for (int i = 0; i < D; ++i) XI[i] = (XI[i] - swz * (GR[i] - (real)PV[P_l2] * xv[i])) * scl;
}
"""


def numba_minibatch_grad(ind: str) -> list[str]:
    """Kernel lines (numba) for the discrete optimizer's minibatch gradient `G` at `xrow`: `B` indices
    drawn with replacement (Philox stream 1, `sdederive.simulate.rng.philox.draw_indices`) and the
    gradient averaged over them, plus the ridge term."""
    return [
        f"{ind}n_ex, dd = PM.shape",
        f"{ind}Bm = int(PV[P_B])",
        f"{ind}for i in range(d):",
        f"{ind}    G[i] = 0.0",
        f"{ind}draw_indices(IDX, Bm, n_ex, cstep, p, 1, key0, key1)",
        f"{ind}for jb in range(Bm):",
        f"{ind}    jx = IDX[jb]",
        f"{ind}    mg = 0.0",
        f"{ind}    for i in range(d):",
        f"{ind}        mg += PM[jx, i] * xrow[i]",
        f"{ind}    s = -PY[jx] / (1.0 + math.exp(PY[jx] * mg))",
        f"{ind}    for i in range(d):",
        f"{ind}        G[i] += s * PM[jx, i]",
        f"{ind}for i in range(d):",
        f"{ind}    G[i] = G[i] / Bm + PV[P_l2] * xrow[i]",
    ]


def cuda_minibatch_grad(ind: str) -> list[str]:
    """The same minibatch gradient in CUDA C (indices from the same Philox counters)."""
    return [
        f"{ind}{{ const int Bm = (int)PV[P_B];",
        f"{ind}  for (int i = 0; i < D; ++i) G[i] = 0;",
        f"{ind}  for (int jb = 0; jb < (Bm + 3) / 4; ++jb) {{",
        f"{ind}    sd_u32 c[4] = {{cstep, (sd_u32)jb, (sd_u32)p, 1u}}; sd_philox4x32(c, key0, key1);",
        f"{ind}    for (int q = 0; q < 4 && 4 * jb + q < Bm; ++q) {{",
        f"{ind}      const int jx = (int)(((sd_u64)c[q] * (sd_u64)NEX) >> 32);",
        f"{ind}      real mg = 0; for (int i = 0; i < D; ++i) mg += (real)PM[jx * D + i] * X[0][i];",
        f"{ind}      const real s = -(real)PY[jx] / ((real)1 + exp((real)PY[jx] * mg));",
        f"{ind}      for (int i = 0; i < D; ++i) G[i] += s * (real)PM[jx * D + i]; }} }}",
        f"{ind}  for (int i = 0; i < D; ++i) G[i] = G[i] / (real)Bm + (real)PV[P_l2] * X[0][i]; }}",
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
        if isinstance(B, (bool, np.bool_)) or not isinstance(B, (int, np.integer, float)) or not np.isfinite(B) \
                or int(B) != B or B < 1:
            raise ProblemError(f"batch size B={B!r} is invalid; allowed: an integer >= 1")
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
        logistic model with a random unit `w*`."""
        rng = np.random.default_rng(seed)
        sc = np.geomspace(0.3, 3.0, d) if scale is None else np.asarray(scale, float)
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

    def numba_fragment(self) -> str:
        return NUMBA_FRAGMENT.replace("{offsets}", self.layout().numba_offsets("    "))

    def cuda_fragment(self, real: str) -> str:
        return "\n" + self.layout().c_defines() + "\n" + CUDA_FRAGMENT

    def fingerprint_data(self) -> str:
        return "logistic"

    # -- numpy reference --------------------------------------------------------------------------------
    def margins(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, float) @ self.A.T * self.y

    def loss(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        return np.mean(np.logaddexp(0.0, -self.margins(x)), axis=-1) + 0.5 * self.l2 * np.sum(x * x, axis=-1)

    def per_example_grads(self, x: np.ndarray) -> np.ndarray:
        """`(n, d)`: gradient of each example's loss (ridge included) at a single `x`."""
        s = 1.0 / (1.0 + np.exp(self.margins(x)))  # sigma(-y a.x)
        return -(self.y * s)[:, None] * self.A + self.l2 * np.asarray(x, float)[None, :]

    def grad(self, x: np.ndarray) -> np.ndarray:
        """The full-batch gradient at a single `x`."""
        return self.per_example_grads(x).mean(0)

    def _curvatures(self, x: np.ndarray, idx) -> tuple[np.ndarray, np.ndarray]:
        rows = slice(None) if idx is None else np.asarray(idx, dtype=np.int64)
        A = self.A[rows]
        s = 1.0 / (1.0 + np.exp(np.asarray(x, float) @ A.T * self.y[rows]))
        return A, s * (1.0 - s)

    def hess_diag(self, x: np.ndarray, idx=None) -> np.ndarray:
        """The Hessian's diagonal at a single `x` (full batch, or the examples `idx`)."""
        A, w = self._curvatures(x, idx)
        return (w[:, None] * A * A).mean(0) + self.l2

    def hvp(self, x: np.ndarray, v: np.ndarray, idx=None) -> np.ndarray:
        """`H(x) v = mean_j s_j (1 - s_j) (a_j . v) a_j + l2 v` with `s_j = sigma(-y_j a_j . x)`, over all
        examples or the minibatch `idx` (indices, repeats allowed: the HVP of that minibatch's loss)."""
        A, w = self._curvatures(x, idx)
        v = np.asarray(v, float)
        return ((w * (A @ v))[:, None] * A).mean(0) + self.l2 * v

    def noise_scale(self, x: np.ndarray) -> np.ndarray:
        """Per-coordinate std of a minibatch gradient of `B` examples drawn with replacement, at `x`."""
        G = self.per_example_grads(x)
        return np.sqrt(np.mean((G - G.mean(0)) ** 2, axis=0) / self.B)

    def to_dict(self) -> dict:
        return {"kind": "logistic", "A": self.A.tolist(), "y": self.y.tolist(), "B": self.B, "l2": self.l2,
                "x0": self.x0.tolist()}

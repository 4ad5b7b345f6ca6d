r"""Analysis of a sweep: the optimal learning rate per group with a bootstrap band, and the
McCandlish and surge fits.

`SweepResult.optimal` takes, for each value of `by` (say the batch size `B`), the
`param` (say `eta`) that minimizes the seed-averaged `metric`; the minimum is refined by a
parabola in $\log\eta$ through the grid minimum and its two neighbours.  Its band is a
percentile bootstrap over seeds (resample the seeds with replacement, redo the argmin).  Diverged
cells (NaN metric) count as $+\infty$.

`Optimum.fit_mccandlish` fits $\epsilon(B) = \epsilon_{max}/(1+\mathcal B_{noise}/B)$ and
`Optimum.fit_surge` fits $\epsilon(B) = \epsilon_{max}/(\tfrac12(\sqrt{\mathcal B_{noise}/B}
+ \sqrt{B/\mathcal B_{noise}}))$ by least squares in $\log\epsilon$ (`scipy.optimize.curve_fit`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sdederive.errors import SdederiveError

__all__ = ["SweepResult", "Optimum"]


def _mccandlish(B, log_em, log_bn):
    return log_em - np.log1p(np.exp(log_bn) / B)


def _surge(B, log_em, log_bn):
    bn = np.exp(log_bn)
    return log_em - np.log(0.5 * (np.sqrt(bn / B) + np.sqrt(B / bn)))


@dataclass
class Optimum:
    """`by` values, optimal `param` per value, its bootstrap band, and fits."""

    param: str
    by: str
    metric: str
    groups: np.ndarray
    best: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    fits: dict = field(default_factory=dict)

    def _fit(self, name, f, p0):
        from scipy.optimize import curve_fit

        ok = np.isfinite(self.best) & (self.best > 0)
        if ok.sum() < 3:
            raise SdederiveError(f"{name} fit needs at least 3 groups with a finite optimum, got {int(ok.sum())}")
        pars, cov = curve_fit(f, self.groups[ok].astype(float), np.log(self.best[ok]), p0=p0, maxfev=20000)
        se = np.sqrt(np.diag(cov)) if np.all(np.isfinite(cov)) else np.full(2, np.nan)
        out = {"eps_max": float(np.exp(pars[0])), "B_noise": float(np.exp(pars[1])),
               "log_se": {"eps_max": float(se[0]), "B_noise": float(se[1])},
               "rms_log_residual": float(np.sqrt(np.mean((f(self.groups[ok], *pars) - np.log(self.best[ok])) ** 2)))}
        self.fits[name] = out
        return out

    def fit_mccandlish(self) -> dict:
        """`eps_max`, `B_noise` of `eps_max/(1 + B_noise/B)` (McCandlish et al. eq. 2.6)."""
        return self._fit("mccandlish", _mccandlish, (np.log(np.nanmax(self.best)), np.log(np.median(self.groups))))

    def fit_surge(self) -> dict:
        """`eps_max`, `B_noise` of the surge curve (Li et al. eq. 2)."""
        k = int(np.nanargmax(self.best))
        return self._fit("surge", _surge, (np.log(self.best[k]), np.log(float(self.groups[k]))))

    def to_pandas(self):
        """`by`, the optimal `param` and its bootstrap band, one row per group (`pandas` extra)."""
        from sdederive._tables import pandas

        return pandas().DataFrame({self.by: self.groups, self.param: self.best, "band_lo": self.lo, "band_hi": self.hi})

    def to_latex(self, caption: str | None = None, label: str | None = None) -> str:
        """A booktabs table of the optimum per group for a paper."""
        from sdederive._tables import booktabs, tex_escape

        return booktabs(self.to_pandas(), caption=caption or tex_escape(
            f"Optimal {self.param} ({self.metric}) against {self.by}, with the bootstrap band over seeds."), label=label)

    def table(self) -> str:
        lines = [f"| {self.by} | {self.param} optimal | band |", "|---|---|---|"]
        for g, b, lo, hi in zip(self.groups, self.best, self.lo, self.hi):
            lines.append(f"| {g:g} | {b:.4g} | [{lo:.4g}, {hi:.4g}] |")
        return "\n".join(lines)

    def plot(self, path: str | Path | None = None):
        """Optimum vs `by` on log-log axes with the bootstrap band and the fits made so far; written
        to `path` when given (format from the suffix: PDF, SVG, EPS or PNG).  Returns the
        `matplotlib.figure.Figure`."""
        from sdederive import _figures as F

        if path is not None:
            F.figure_format(path)
        with F.style():
            fig, axes = F.figure()
            ax = axes[0, 0]
            ax.fill_between(self.groups, self.lo, self.hi, alpha=0.3, lw=0, label="bootstrap band (seeds)")
            ax.plot(self.groups, self.best, "o", label=F.math_label(f"optimal {self.param}"))
            Bs = np.geomspace(self.groups.min(), self.groups.max(), 200)
            for name, f in (("mccandlish", _mccandlish), ("surge", _surge)):
                if name in self.fits:
                    ft = self.fits[name]
                    ax.plot(Bs, np.exp(f(Bs, np.log(ft["eps_max"]), np.log(ft["B_noise"]))),
                            label=f"{name}: $B_{{\\rm noise}}={ft['B_noise']:.3g}$")
            F.log_axis(ax, "x")
            F.log_axis(ax, "y")
            ax.set_xlabel(F.math_label(f"${self.by}$" if len(self.by) == 1 else self.by))
            ax.set_ylabel(F.math_label(f"optimal {self.param} ({self.metric})"))
            ax.legend()
        if path is not None:
            F.save(fig, path)
        return fig


class SweepResult:
    """Rows of a finished sweep (one per cell) and what follows from them."""

    def __init__(self, rows: list[dict], wall: float = 0.0, out: Path | None = None) -> None:
        self.rows, self.wall, self.out = rows, wall, out

    def __len__(self) -> int:
        return len(self.rows)

    def to_pandas(self):
        """The rows (one per cell: its settings and results) as a `pandas.DataFrame`."""
        from sdederive._tables import pandas

        return pandas().DataFrame(self.rows)

    def column(self, name: str) -> np.ndarray:
        return np.array([r.get(name) for r in self.rows])

    def where(self, **eq) -> SweepResult:
        return SweepResult([r for r in self.rows if all(r.get(k) == v for k, v in eq.items())], self.wall, self.out)

    def optimal(self, param: str = "eta", by: str = "B", metric: str = "final_loss", n_boot: int = 400,
                seed: int = 0) -> Optimum:
        """The `param` minimizing the seed-averaged `metric` for each `by` value (module docstring)."""
        if not self.rows:
            raise SdederiveError("the sweep has no finished cells")
        for k in (param, by, metric):
            if k not in self.rows[0]:
                raise SdederiveError(f"column {k!r} is not in the sweep results; columns: {sorted(self.rows[0])}")
        groups = np.array(sorted({r[by] for r in self.rows}))
        pvals = np.array(sorted({r[param] for r in self.rows}))
        seeds = sorted({r.get("seed", 0) for r in self.rows})
        M = np.full((len(groups), len(pvals), len(seeds)), np.nan)
        gi = {g: i for i, g in enumerate(groups)}
        pi = {p: i for i, p in enumerate(pvals)}
        si = {s: i for i, s in enumerate(seeds)}
        for r in self.rows:
            v = r[metric]
            M[gi[r[by]], pi[r[param]], si[r.get("seed", 0)]] = np.inf if v is None or not np.isfinite(v) else v
        rng = np.random.default_rng(seed)

        def argmin(Mg):  # Mg: (n_param, n_seed) -> refined optimum of the seed mean
            m = np.nanmean(Mg, axis=1)
            if not np.any(np.isfinite(m)):
                return np.nan
            k = int(np.nanargmin(m))
            if 0 < k < len(pvals) - 1 and np.all(np.isfinite(m[k - 1:k + 2])):
                x = np.log(pvals[k - 1:k + 2])
                a, b, _ = np.polyfit(x, m[k - 1:k + 2], 2)
                if a > 0:
                    return float(np.exp(np.clip(-b / (2 * a), x[0], x[2])))
            return float(pvals[k])

        best = np.array([argmin(M[g]) for g in range(len(groups))])
        boots = np.empty((n_boot, len(groups)))
        for b in range(n_boot):
            pick = rng.integers(0, len(seeds), len(seeds))
            boots[b] = [argmin(M[g][:, pick]) for g in range(len(groups))]
        lo, hi = np.nanpercentile(boots, [2.5, 97.5], axis=0)
        return Optimum(param, by, metric, groups, best, lo, hi)

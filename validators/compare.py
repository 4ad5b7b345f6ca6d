r"""Weak error and weak order of a derived SDE against the discrete optimizer it approximates.

Weak approximation
    The SDE $dX = b\,dt + D\,dW$ of an optimizer with step size $\eta$ is a weak
    approximation of order $\alpha$ on $[0, T]$ when, for test functions $g$,

    $$
    \max_{k\tau \le T} \big|\,\mathbb E\,g(x_k) - \mathbb E\,g(X_{k\tau})\,\big| \le C\,\eta^\alpha,
    $$

    with $\tau$ the regime's time per step (`eta` or `eta**2`).  `compare` measures
    the left-hand side for `g` = the loss, `|x|^2` or a state, on a continuous-time grid common
    to all step sizes, and `weak_order` fits $\alpha$ as the log-log slope of the
    measured weak error against $\eta$.

Simulation
    Both the discrete optimizer and the SDE are compiled once (`sdederive.compile`) and run
    from the same initial point with the same discrete hyperparameters.  The SDE is integrated with
    one integrator step per optimizer step; by default (`scheme="auto"`) with Platen's weak
    order-2 scheme where the SDE allows it (one noise source, uncorrelated noise), else
    Euler–Maruyama.  (Euler–Maruyama with $\Delta t = \tau$ applied to SGD's SDE *is* SGD, so
    it would measure no error at all; the weak order-2 scheme's own error, $O(\tau^2)$, is of
    higher order than the $O(\eta)$ being measured.)  The discrete run and the SDE run of
    one seed use the same Gaussians (`g_k = grad + sigma z_k`, `dW_k = sqrt(tau) z_k`), which
    makes their difference far less noisy than either (for logistic regression the discrete
    optimizer samples real minibatches, and Student-t draws are not the SDE's Gaussians, so the two
    are not coupled).  `substeps > 1` refines the SDE but draws other Gaussians, which breaks the
    coupling (the intervals stay valid, only wider).

Coupling sign
    The derived diffusion is fixed only up to the sign of each Brownian motion (`D D^T` is what
    the derivation determines), and with the first one the SDE may pair its noise with `-z`
    (SGD's `D = +sqrt(eta) sigma` against the discrete `-eta sigma z`): the runs are then
    *anti*-correlated and their difference noisier than either.  `compare` measures the
    correlation of the first step over a few one-path runs and, when it is negative, negates the
    first Brownian motion (column 0 of `D`; the same SDE in law) before the comparison, with a
    note in the report.

Confidence intervals
    The simulator returns only means across paths, so the correlation between the coupled runs
    cannot be estimated path by path.  Instead the `paths` are split into `R = replicates`
    independent batches (seeds derived from `seed`); batch `r` runs `paths/R` coupled paths of
    both and gives the difference of means $d_r(t) = \bar g^{disc}_r(t) - \bar g^{sde}_r(t)$.
    The $d_r$ are i.i.d. with mean $\Delta(t) = \mathbb E g(x_k) - \mathbb E g(X_t)$, so

    $$
    \hat\Delta(t) = \frac1R\sum_r d_r(t), \qquad
    h(t) = t_{R-1,\,1-\gamma}\,\frac{s_d(t)}{\sqrt R},
    $$

    where $s_d$ is the sample standard deviation of the $d_r$ (Student-t interval,
    exact for normal $d_r$, which the central limit theorem makes accurate for batches of
    hundreds of paths).  With `simultaneous=True` (default) $\gamma = (1-\text{level})/(2M)$
    over the $M$ grid points (times x coordinates) of an observable (Bonferroni), so that all
    $M$ intervals hold together with probability at least `level`; otherwise
    $\gamma = (1-\text{level})/2$ (pointwise).  The weak error
    $\hat e = \max_t |\hat\Delta(t)|$ then has the interval

    $$
    \Big[\max_t\big(|\hat\Delta(t)| - h(t)\big)_+,\ \max_t\big(|\hat\Delta(t)| + h(t)\big)\Big],
    $$

    which covers $\max_t|\Delta(t)|$ whenever all pointwise intervals hold.  The difference
    is *resolved* when the lower end is positive (some interval excludes 0); otherwise the report
    says that the difference is below the Monte Carlo resolution $\pm\max_t h(t)$.  A
    floating-point floor $10^{-12}\max(|\bar g^{disc}|, |\bar g^{sde}|)$ is added to
    $h$ in quadrature.  $\hat e$ is biased upwards by the noise (a maximum of noisy
    values), which matters only for barely resolved differences.

Weak order
    The slope of $\log\hat e$ against $\log\eta$ by least squares, over the resolved
    step sizes only (at least two are needed).  Its interval is a percentile bootstrap over the
    replicate batches: each resample redraws the $R$ batches of every step size with
    replacement (step sizes use independent seeds), recomputes $\hat e$ and the slope.  It
    covers Monte Carlo error only: a slope that has not reached its asymptote (step sizes too
    large) is reported as measured.

Tolerance
    With `tol` the comparison passes when the upper end of the weak-error interval is below
    `tol` at every step size **and** the error shrinks at the claimed order `p`
    (`expected_order`, default the SDE's order): with two or more resolved step sizes the lower
    end of the fitted order's interval must exceed `p/2`; with fewer, the resolved step sizes
    must be the largest ones (the error falls below the Monte Carlo resolution as `eta` shrinks).
    One step size cannot show a trend: the report says *inconclusive* and does not pass.  With
    `expected_order` the fitted order must also be within `order_tol` of it.  A pilot run (`R` batches of a tenth of the paths per step size)
    estimates the per-path standard deviation of the difference; if `paths` cannot bring
    $\max_t h(t)$ below `tol/2` a `ValidationError` says how many paths are needed.

Regime check
    Before running, `sdederive.analysis.regime_check.regime_check` measures on the problem the quantities the
    SDE's regime scales (`|grad|/sigma` per coordinate at `x0`; across the step sizes the
    powers of `eta` of `1 - beta` and of `sigma`).  A fixed data set has a fixed `sigma`,
    which the noise-dominated regime (`sigma = sigma0/eta`) does not fit: the weak error then
    need not shrink with `eta`.  A failed check is a `RegimeWarning`
    and a note naming the regimes that fit; `strict=True` refuses.

SVAG
    `svag=L` (Malladi et al. 2022; Li, Malladi & Arora 2021 for SGD) approaches the
    noise-dominated limit on a fixed problem.  At step size `eta` the multiplier is
    `l = L*max(etas)/eta`; the discrete optimizer runs with learning rate `eta` on the
    gradient `g = r1*g1 + r2*g2` of two independent minibatches, `r1,2 = (1 +- sqrt(2 l**2 - 1))/2`
    (`r1 + r2 = 1`, `r1**2 + r2**2 = l**2`: the noise is `l*sigma`), with
    `1 - beta -> (1 - beta)/l**2` for every decay and `eps -> eps*l`.  These maps hold
    `sigma0 = eta*l*sigma`, `c = (1 - beta)/eta**2` and `eps0 = eps*l*eta` at the values of
    the base step size `L*max(etas)`, so every step size approximates the same SDE.  On logistic
    regression the two minibatches are drawn (numpy, `Optimizer.numpy_step`) and the SDE sees
    `Sigma(x)/(B/l**2)`; on a quadratic with Gaussian noise `r1*z1 + r2*z2` is `l*z` in law,
    so the problem's `sigma` is multiplied by `l` (and the runs stay coupled).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path

import numpy as np
import sympy as sp

import sdederive as sd
from sdederive._json import provenance
from sdederive.errors import DivergenceError
from sdederive.problems import LogisticRegression, Problem, Quadratic
from sdederive.sde import SDE
from sdederive.spec import optimizers as opt_mod
from sdederive.symbols import sym

from . import reporting
from .errors import TooFewPathsError, ValidationError

__all__ = ["compare", "weak_order", "Comparison", "compare_final"]

_ETA = sym("eta")
_ALIASES = {"|x|^2": "sqnorm", "x2": "sqnorm", "|x|2": "sqnorm"}
_FLOOR = 1e-12
_SCHEMES = ("auto", "euler", "weak2")


# ------------------------------------------------------------------------------------------------
# the report
# ------------------------------------------------------------------------------------------------


@dataclass
class Comparison:
    """Result of `compare`.

    Per observable (keys of the dicts), arrays follow `etas` (sorted decreasing):

    - `weak_error[obs]`: $\\hat e = \\max_t |\\hat\\Delta(t)|$;
    - `interval[obs]`: `(n_eta, 2)` confidence interval of the weak error;
    - `ci[obs]`: its upper half width, `interval[:, 1] - weak_error`;
    - `resolution[obs]`: $\\max_t h(t)$, the Monte Carlo resolution of the difference;
    - `resolved[obs]`: the interval excludes 0;
    - `t_star[obs]`: the time of the largest difference;
    - `order[obs]`, `order_ci[obs]`: fitted weak order and its bootstrap interval (NaN when
      fewer than two step sizes are resolved);
    - `hyper[i]`: the discrete hyperparameters used at `etas[i]`;
    - `curves[obs][i]`: per step size, arrays over `t` (shape `(n_t, width)`): `disc_mean`,
      `disc_ci`, `sde_mean`, `sde_ci` (pointwise), `diff`, `diff_ci` (as judged).
    """

    optimizer: str
    sde_name: str
    noise: str
    regime: str
    tau: str
    scheme: str
    substeps: int
    problem: str
    d: int
    etas: np.ndarray
    taus: np.ndarray
    t: np.ndarray
    horizon: float
    paths: int
    replicates: int
    paths_per_batch: int
    level: float
    simultaneous: bool
    observables: tuple[str, ...]
    hyper: list
    seed: int
    weak_error: dict
    interval: dict
    ci: dict
    resolution: dict
    resolved: dict
    t_star: dict
    order: dict
    order_ci: dict
    curves: dict
    plot_coord: dict
    tol: dict | None = None
    expected_order: float | None = None
    order_tol: float | None = None
    notes: tuple[str, ...] = ()
    timing: dict = field(default_factory=dict)
    claimed_order: float = 1.0
    regime_check: dict | None = None
    svag: np.ndarray | None = None

    # -- verdict -------------------------------------------------------------------------------
    @property
    def checks(self) -> list[tuple[str, bool, str]]:
        """`(name, passed, message)` for every requested criterion."""
        out = []
        for obs in self.observables:
            if self.tol is not None and obs in self.tol:
                tol = self.tol[obs]
                hi = np.asarray(self.interval[obs])[:, 1]
                bad = [f"eta={e:g}: upper {u:.3g}" for e, u in zip(self.etas, hi) if not u < tol]
                ok = not bad
                msg = (f"weak error of {obs} below tol={tol:g} at every eta (upper {self.level:.0%} bound "
                       f"max {hi.max():.3g})" if ok else
                       f"weak error of {obs} not shown below tol={tol:g}: " + "; ".join(bad))
                out.append((f"tol[{obs}]", ok, msg))
                out.append((f"trend[{obs}]", *self._trend(obs)))
            if self.expected_order is not None:
                a = self.order[obs]
                if not math.isfinite(a):
                    n = int(np.sum(self.resolved[obs]))
                    out.append((f"order[{obs}]", False, f"order of {obs}: not measurable ({n} of {len(self.etas)} "
                                "etas resolved; 2 needed)"))
                else:
                    ok = abs(a - self.expected_order) <= self.order_tol
                    out.append((f"order[{obs}]", ok, f"order of {obs} = {a:.3f}, expected {self.expected_order:g} "
                                f"+- {self.order_tol:g}" + ("" if ok else " -- outside")))
        return out

    def _trend(self, obs: str) -> tuple[bool, str]:
        """The weak error must shrink at the claimed order (see the module docstring, *Tolerance*)."""
        p = self.claimed_order
        if len(self.etas) < 2:
            return False, (f"inconclusive: one eta cannot show that the weak error of {obs} shrinks (order {p:g}); "
                           "give at least two etas (CLI: --etas E1,E2)")
        res = np.asarray(self.resolved[obs], bool)
        a = self.order[obs]
        if math.isfinite(a):
            lo, hi = self.order_ci[obs]
            ok = lo > p / 2
            return ok, (f"weak error of {obs} shrinks with eta: order {a:.3f}, {self.level:.0%} CI [{lo:.3f}, "
                        f"{hi:.3f}], lower bound {'>' if ok else '<='} {p / 2:g} (half the claimed order {p:g})")
        # fewer than two resolved: consistent only when the resolved etas are the largest ones
        k = int(res.sum())
        ok = bool(np.all(res[:k])) if k else True
        return ok, (f"weak error of {obs}: {k} of {len(self.etas)} etas resolved, "
                    + ("the smaller etas below the Monte Carlo resolution (consistent with a shrinking error)"
                       if ok else "a smaller eta resolved where a larger one is not: the error does not shrink"))

    @property
    def passed(self) -> bool | None:
        """All requested criteria hold (`None` when neither `tol` nor `expected_order` was given)."""
        ch = self.checks
        return None if not ch else all(ok for _, ok, _ in ch)

    # -- text ----------------------------------------------------------------------------------
    def _status(self, obs: str, i: int) -> str:
        if self.resolved[obs][i]:
            return "yes"
        return f"no: difference below the Monte Carlo resolution ±{self.resolution[obs][i]:.3g}"

    def order_line(self, obs: str) -> str:
        n = int(np.sum(self.resolved[obs]))
        a = self.order[obs]
        if not math.isfinite(a):
            return (f"weak order ({obs}): not measured: {n} of {len(self.etas)} etas resolved, at least 2 needed")
        lo, hi = self.order_ci[obs]
        return (f"weak order ({obs}): {a:.3f}  {self.level:.0%} CI [{lo:.3f}, {hi:.3f}]  ({n} of {len(self.etas)} "
                "etas resolved; least-squares log-log slope, percentile bootstrap over replicate batches)")

    def to_pandas(self):
        """One row per (observable, eta): `observable, eta, tau, weak_error, ci_lo, ci_hi, t_star,
        resolved, order, order_lo, order_hi` (the order columns repeat the fit over the etas);
        settings in `df.attrs`.  Needs the `pandas` extra."""
        from sdederive._tables import pandas

        rows = []
        for obs in self.observables:
            olo, ohi = self.order_ci[obs]
            for i, eta in enumerate(self.etas):
                lo, hi = self.interval[obs][i]
                rows.append({"observable": obs, "eta": float(eta), "tau": float(self.taus[i]),
                             "weak_error": float(self.weak_error[obs][i]), "ci_lo": float(lo), "ci_hi": float(hi),
                             "t_star": float(self.t_star[obs][i]), "resolved": bool(self.resolved[obs][i]),
                             "order": float(self.order[obs]), "order_lo": float(olo), "order_hi": float(ohi)})
        df = pandas().DataFrame(rows)
        df.attrs.update({"optimizer": self.optimizer, "sde": self.sde_name, "noise": self.noise,
                         "regime": self.regime, "problem": self.problem, "paths": self.paths, "seed": self.seed,
                         "level": self.level})
        return df

    def _repr_html_(self) -> str:
        """Jupyter: the weak-error table (pandas' HTML when pandas is there, else the text report)."""
        import html

        try:
            return f"<p><b>SDE vs discrete {html.escape(self.optimizer)}</b></p>" + self.to_pandas().to_html(index=False)
        except sd.SdederiveError:  # no pandas: the text report
            return f"<pre>{html.escape(self.table())}</pre>"

    def to_latex(self, caption: str | None = None, label: str | None = None) -> str:
        """A booktabs table of the weak errors (one row per observable and eta) for a paper."""
        from sdederive._tables import booktabs, tex_escape

        df = self.to_pandas()[["observable", "eta", "weak_error", "ci_lo", "ci_hi", "resolved"]]
        df = df.rename(columns={"eta": "$\\eta$", "weak_error": "weak error",
                                "ci_lo": f"{self.level:.0%} CI low", "ci_hi": f"{self.level:.0%} CI high"})
        if caption is None:
            caption = tex_escape(f"Weak error of the {self.sde_name} SDE against {self.optimizer} on {self.problem} "
                                 f"({self.paths} paths, {self.level:.0%} confidence intervals).")
        return booktabs(df, caption=caption, label=label).replace("\\$\\textbackslash eta\\$", "$\\eta$")

    def table(self) -> str:
        """The readable report: settings, one row per (observable, eta), the fitted orders, the checks."""
        head = [
            f"SDE vs discrete: {self.optimizer} on {self.problem} (d={self.d}) | SDE: {self.sde_name}, "
            f"{self.noise} noise, regime {self.regime}, tau = {self.tau}, scheme {self.scheme}"
            + (f" x{self.substeps} substeps" if self.substeps > 1 else ""),
            f"  {self.paths} paths in {self.replicates} replicate batches of {self.paths_per_batch} | horizon "
            f"t = {self.t[-1]:g} | {len(self.t) - 1} grid points | {self.level:.0%} CIs "
            + ("simultaneous over the grid (Bonferroni)" if self.simultaneous else "pointwise")
            + self._hyper_text() + f" | seed {self.seed}",
        ]
        rows = [("observable", "eta", "tau", "weak error", f"{self.level:.0%} CI", "t*", "resolved")]
        for obs in self.observables:
            for i, eta in enumerate(self.etas):
                lo, hi = self.interval[obs][i]
                rows.append((obs, f"{eta:g}", f"{self.taus[i]:.4g}", f"{self.weak_error[obs][i]:.4g}",
                             f"[{lo:.3g}, {hi:.3g}]", f"{self.t_star[obs][i]:.4g}", self._status(obs, i)))
        w = [max(len(r[k]) for r in rows) for k in range(6)]
        lines = head + ["  " + "  ".join(f"{r[k]:<{w[k]}}" for k in range(6)) + "  " + r[6] for r in rows]
        if len(self.etas) >= 2:
            lines += ["  " + self.order_line(obs) for obs in self.observables]
        for n in self.notes:
            lines.append(f"  note: {n}")
        for _, ok, msg in self.checks:
            lines.append(f"  {'ok  ' if ok else 'FAIL'} {msg}")
        p = self.passed
        if p is not None:
            failed = [m for _, ok, m in self.checks if not ok]
            lines.append("  PASSED" if p else "  INCONCLUSIVE (not passed)" if all(
                m.startswith("inconclusive") for m in failed) else "  FAILED")
        return "\n".join(lines)

    def _hyper_text(self) -> str:
        if not any(self.hyper):
            return ""
        if all(h == self.hyper[0] for h in self.hyper):
            return f" | hyper {self.hyper[0]}"
        return " | hyper " + "; ".join(f"eta={e:g}: {h}" for e, h in zip(self.etas, self.hyper))

    def __str__(self) -> str:
        return self.table()

    # -- machine-readable ----------------------------------------------------------------------
    def to_dict(self, curves: bool = True, timing: bool = True) -> dict:
        """JSON-ready (NaN as `None`); `curves=False` leaves out the time series, `timing=False` the
        wall times (the one part that differs between two runs with the same seed and versions)."""
        per_obs = {}
        for obs in self.observables:
            entry = {
                "weak_error": self.weak_error[obs], "ci": self.ci[obs], "interval": self.interval[obs],
                "resolution": self.resolution[obs], "resolved": self.resolved[obs], "t_star": self.t_star[obs],
                "order": self.order[obs], "order_ci": list(self.order_ci[obs]),
            }
            if curves:
                entry["curves"] = [{k: v for k, v in cv.items()} for cv in self.curves[obs]]
            per_obs[obs] = entry
        out = {
            "optimizer": self.optimizer, "sde": {"optimizer": self.sde_name, "noise": self.noise,
                                                 "regime": self.regime, "tau": self.tau},
            "scheme": self.scheme, "substeps": self.substeps, "problem": self.problem, "d": self.d,
            "etas": self.etas, "taus": self.taus, "t": self.t, "horizon": self.horizon, "paths": self.paths,
            "replicates": self.replicates, "paths_per_batch": self.paths_per_batch, "level": self.level,
            "simultaneous": self.simultaneous, "observables": list(self.observables), "hyper": self.hyper,
            "seed": self.seed, "tol": self.tol, "expected_order": self.expected_order, "order_tol": self.order_tol,
            "passed": self.passed, "checks": [{"name": n, "passed": ok, "message": m} for n, ok, m in self.checks],
            "results": per_obs, "notes": list(self.notes), "timing": self.timing,
            "claimed_order": self.claimed_order, "regime_check": self.regime_check, "svag": self.svag,
            "provenance": provenance(self.seed),
        }
        if not timing:
            del out["timing"]
        return reporting.json_ready(out)

    def to_json(self, curves: bool = True, timing: bool = True) -> str:
        """`to_dict` as standard JSON, keys sorted; with `timing=False` the same seed and versions
        give the same bytes (`report.json` of `write_report` is written that way)."""
        return reporting.dumps(self.to_dict(curves, timing))

    def plot(self, path: str | Path | None = None):
        """The figure (a `matplotlib.figure.Figure`), written atomically to `path` when given,
        in the format of its suffix (PDF, SVG, EPS, PNG); see `validators.reporting.plot_comparison`."""
        return reporting.plot_comparison(self, path)

    def markdown(self, figure: str | None = "comparison.png") -> str:
        lines = [f"# SDE vs discrete {self.optimizer}", "", "```", self.table(), "```", ""]
        if figure:
            lines += [f"![discrete vs SDE means and weak error]({figure})", ""]
        lines += [f"Weak error: max over the time grid of |E_disc - E_sde|. {self.level:.0%} CIs from {self.replicates} "
                  "independent replicate batches, each running the discrete optimizer and the SDE with the same seed "
                  "(Student-t interval on the per-batch differences of means"
                  + (", Bonferroni over the grid" if self.simultaneous else ", pointwise") + "). Weak order: "
                  "least-squares log-log slope over the resolved etas, percentile bootstrap over the batches.", ""]
        return "\n".join(lines)

    def write_report(self, dirname: str | Path) -> dict[str, Path]:
        """Write `report.json`, `comparison.png` and `report.md` into `dirname` (created if
        needed), each atomically (temporary file in the same directory, then `os.replace`)."""
        d = Path(dirname)
        d.mkdir(parents=True, exist_ok=True)
        out = {"json": reporting.atomic_write_text(d / "report.json", self.to_json(timing=False) + "\n"),
               "png": d / "comparison.png"}
        self.plot(out["png"])
        out["md"] = reporting.atomic_write_text(d / "report.md", self.markdown("comparison.png"))
        return out


# ------------------------------------------------------------------------------------------------
# input checks
# ------------------------------------------------------------------------------------------------


def _check_int(name: str, v, lo: int) -> int:
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lo:
        raise ValidationError(f"{name}={v!r} is invalid; allowed: an integer >= {lo}")
    return int(v)


def _check_positive(name: str, v) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        f = math.nan
    if not math.isfinite(f) or f <= 0:
        raise ValidationError(f"{name}={v!r} is invalid; allowed: a finite number > 0")
    return f


def _check_etas(etas) -> np.ndarray:
    if isinstance(etas, (int, float, np.number)):
        etas = [etas]
    try:
        vals = [float(e) for e in etas]
    except (TypeError, ValueError):
        raise ValidationError(f"etas={etas!r} is invalid; allowed: a list of step sizes > 0") from None
    if not vals:
        raise ValidationError("etas=[] is empty; allowed: one or more step sizes > 0")
    for e in vals:
        if not math.isfinite(e) or e <= 0:
            raise ValidationError(f"eta={e!r} in etas is invalid; allowed: finite step sizes > 0")
    dup = sorted({e for e in vals if vals.count(e) > 1})
    if dup:
        raise ValidationError(f"etas={vals} has duplicates {dup}; allowed: distinct step sizes")
    return np.array(sorted(vals, reverse=True))


def _check_tol(tol, observables) -> dict | None:
    if tol is None:
        return None
    if isinstance(tol, Mapping):
        unknown = [k for k in tol if k not in observables]
        if unknown:
            raise ValidationError(f"tol names observable(s) {unknown} that are not compared; compared: "
                                  f"{list(observables)}")
        items = dict(tol)
    else:
        items = {o: tol for o in observables}
    return {k: _check_positive("tol", v) for k, v in items.items()}


def _valid_observables(outputs: Sequence[str], d: int) -> list[str]:
    return ["loss", "sqnorm (or |x|^2)"] + list(outputs) + [f"{outputs[0]}[i] for 0 <= i < {d}"]


def _parse_observable(name, outputs: Sequence[str], d: int) -> tuple[str, int | None]:
    """`(result key, coordinate or None)`."""
    valid = _valid_observables(outputs, d)
    if not isinstance(name, str):
        raise ValidationError(f"observable {name!r} is not a name; valid observables: {', '.join(valid)}")
    key = _ALIASES.get(name.strip(), name.strip())
    if key in ("loss", "sqnorm") or key in outputs:
        return key, None
    if key.endswith("]") and "[" in key:
        base, idx = key[:-1].split("[", 1)
        if base in outputs:
            try:
                i = int(idx)
            except ValueError:
                i = -1
            if 0 <= i < d:
                return base, i
            raise ValidationError(f"observable {name!r}: coordinate {idx!r} is invalid; allowed: 0 <= i < d = {d}")
    raise ValidationError(f"unknown observable {name!r}; valid observables: {', '.join(valid)}")


# ------------------------------------------------------------------------------------------------
# time grid
# ------------------------------------------------------------------------------------------------


def _common_step(taus: np.ndarray) -> float | None:
    """The least common multiple of the `taus` (as exact fractions), or None when they have none of
    reasonable size (non-rational ratios)."""
    fr = []
    for t in taus:
        f = Fraction(float(t)).limit_denominator(10**9)
        if abs(float(f) - t) > 1e-9 * t:
            return None
        fr.append(f)
    num = 1
    den = 0
    for f in fr:
        num = num * f.numerator // math.gcd(num, f.numerator)
        den = math.gcd(den, f.denominator)
    return num / den


def _grid(etas: np.ndarray, taus: np.ndarray, horizon: float, n_points: int) -> tuple[float, int, list[int], str]:
    """`(dt, n_grid, save_every per eta, note)`: snapshots every `dt = save_every_i*tau_i` (the same
    for every eta), `n_grid` of them after `t = 0`."""
    tmax = float(taus.max())
    if horizon < tmax * (1 - 1e-12):
        raise ValidationError(
            f"horizon={horizon:g} is shorter than one step of the largest eta={etas[int(np.argmax(taus))]:g} "
            f"(tau = {tmax:g}); allowed: horizon >= {tmax:g}")
    L = _common_step(taus)
    if L is None or L > horizon * (1 + 1e-9):
        raise ValidationError(
            f"the etas {etas.tolist()} (tau = {taus.tolist()}) have no common time grid within horizon={horizon:g}: "
            "every grid time must be a whole number of steps for each eta; allowed: etas whose taus are in integer "
            "ratios, e.g. 0.04, 0.02, 0.01 (or a longer horizon)")
    N = int(math.floor(horizon / L * (1 + 1e-12)))
    target = min(n_points, N)
    q = next(k for k in range(target, N + 1) if N % k == 0)
    dt = L * (N // q)
    save = [int(round(dt / t)) for t in taus]
    for s, t in zip(save, taus):
        if abs(s * t - dt) > 1e-9 * dt:  # pragma: no cover - guaranteed by the lcm
            raise ValidationError(f"no common time grid for tau={t:g}")
    note = ""
    if abs(N * L - horizon) > 1e-9 * horizon:
        note = (f"the grid ends at t = {q * dt:g}, the last common multiple of the taus (step {L:g}) "
                f"not beyond horizon={horizon:g}")
    return dt, q, save, note


# ------------------------------------------------------------------------------------------------
# runs and statistics
# ------------------------------------------------------------------------------------------------


def _seed(seed: int, purpose: int, i: int, r: int) -> int:
    """Seed of batch `r` of eta number `i` (`purpose` 0: main runs, 1: pilot), in [0, 2**64)."""
    return int(np.random.SeedSequence([seed, purpose, i, r]).generate_state(1, np.uint64)[0])


def _extract(res, key: str, coord: int | None) -> np.ndarray:
    a = np.asarray(res.mean[key], float)
    if a.ndim == 1:
        a = a[:, None]
    return a[:, coord:coord + 1] if coord is not None else a


def _run_pair(c, n: int, seed: int, substeps: int):
    import warnings

    from sdederive.analysis.regime_check import RegimeWarning

    out = []
    for sim, kw in ((c.disc, {}), (c.sde, {"substeps": substeps})):
        try:
            with warnings.catch_warnings():  # compare's own regime check covers every eta at once
                warnings.simplefilter("ignore", RegimeWarning)
                res = sim.run(paths=n, steps=c.steps, eta=c.eta, hyper=c.hyper, seed=seed, save_every=c.save, **kw)
        except DivergenceError as e:
            raise DivergenceError(f"eta={c.eta:g}: {e}", e.path, e.step, e.n_diverged, e.result) from None
        if res.interrupted:
            raise KeyboardInterrupt
        out.append(res)
    return out


def _batches(c, obs_keys: dict, n: int, seeds: list[int], substeps: int, say=None) -> dict:
    """Per observable: `(disc, sde)` arrays `(R, n_t, width)` of batch means."""
    disc: dict = {o: [] for o in obs_keys}
    sde: dict = {o: [] for o in obs_keys}
    for r, s in enumerate(seeds):
        t0 = time.perf_counter()
        rd, rs = _run_pair(c, n, s, substeps)
        for o, (key, coord) in obs_keys.items():
            disc[o].append(_extract(rd, key, coord))
            sde[o].append(_extract(rs, key, coord))
        if say:
            say(f"  replicate {r + 1}/{len(seeds)}: {n} paths x {c.steps} steps, {time.perf_counter() - t0:.2f}s")
    return {o: (np.array(disc[o]), np.array(sde[o])) for o in obs_keys}


def _quantile(level: float, R: int, M: int, simultaneous: bool) -> float:
    from scipy import stats

    alpha = 1 - level
    return float(stats.t.ppf(1 - alpha / (2 * (M if simultaneous else 1)), R - 1))


def _diff_stats(dd: np.ndarray, ds: np.ndarray, level: float, simultaneous: bool) -> dict:
    """Statistics of one (observable, eta): see the module docstring."""
    R = dd.shape[0]
    d = dd - ds
    D = d.mean(0)
    se = d.std(0, ddof=1) / math.sqrt(R)
    M = d[:, 1:].shape[1] * d.shape[2]
    q = _quantile(level, R, M, simultaneous)
    qp = _quantile(level, R, 1, False)
    scale = np.maximum(np.abs(dd.mean(0)), np.abs(ds.mean(0)))
    h = np.sqrt((q * se) ** 2 + (_FLOOR * scale) ** 2)
    A = np.abs(D)[1:]  # t = 0 is the common deterministic start
    H = h[1:]
    j = np.unravel_index(int(np.argmax(A)), A.shape)
    err = float(A[j])
    lo = float(np.max(np.maximum(A - H, 0.0)))
    hi = float(np.max(A + H))
    return {
        "err": err, "lo": lo, "hi": hi, "resolution": float(H.max()), "resolved": bool(np.any(A > H)),
        "t_index": int(j[0]) + 1, "coord": int(j[1]), "diff": D, "diff_ci": h,
        "disc_mean": dd.mean(0), "disc_ci": qp * dd.std(0, ddof=1) / math.sqrt(R),
        "sde_mean": ds.mean(0), "sde_ci": qp * ds.std(0, ddof=1) / math.sqrt(R),
        "sd_path": d.std(0, ddof=1),  # sd of one batch's mean difference
    }


def _slope(etas: np.ndarray, errs: np.ndarray) -> float:
    return float(np.polyfit(np.log(etas), np.log(errs), 1)[0])


def _order(etas: np.ndarray, diffs: list[np.ndarray], errs: np.ndarray, level: float, n_boot: int,
           rng: np.random.Generator) -> tuple[float, tuple[float, float]]:
    """Least-squares slope and its percentile-bootstrap interval over the replicate batches."""
    a = _slope(etas, errs)
    boots = np.empty((n_boot, len(etas)))
    for i, d in enumerate(diffs):
        R = d.shape[0]
        flat = d[:, 1:].reshape(R, -1)
        idx = rng.integers(0, R, size=(n_boot, R))
        W = np.zeros((n_boot, R))
        np.add.at(W, (np.repeat(np.arange(n_boot), R), idx.ravel()), 1.0)
        boots[:, i] = np.max(np.abs(W @ flat / R), axis=1)
    boots = np.maximum(boots, 1e-300)
    X = np.log(etas) - np.log(etas).mean()
    slopes = (np.log(boots) - np.log(boots).mean(1, keepdims=True)) @ X / (X @ X)
    alpha = 1 - level
    lo, hi = np.quantile(slopes, [alpha / 2, 1 - alpha / 2])
    return a, (float(lo), float(hi))


# ------------------------------------------------------------------------------------------------
# setup
# ------------------------------------------------------------------------------------------------


def _problem(problem) -> Problem:
    if isinstance(problem, Problem):
        return problem
    if isinstance(problem, str):
        from .problems import get

        return get(problem)
    raise ValidationError(f"problem must be a sdederive.problems.Problem or a built-in name; got "
                          f"{type(problem).__name__}")


def _derive_sde(opt, problem: Problem, sde, regime) -> SDE:
    from sdederive.sde_vector import VectorSDE

    if sde is None:
        # multivariate-t problems: the vector engine derives StudentT(nu) as the multivariate t
        noise = sd.StudentT(nu=problem.nu) if problem.noise in ("student-t", "multivariate-t") else "gaussian"
        return sd.derive(opt, noise, regime)
    if not isinstance(sde, (SDE, VectorSDE)):
        raise ValidationError(f"sde must be a sdederive.SDE (from sd.derive); got {type(sde).__name__}")
    if sde.optimizer != opt.name:
        raise ValidationError(f"incompatible optimizer/SDE pair: the SDE was derived for {sde.optimizer!r} but the "
                              f"optimizer is {opt.name!r}; allowed: an SDE of {opt.name!r} (sd.derive({opt.name!r}))")
    if regime is not None and regime != sde.regime:
        raise ValidationError(f"regime={regime!r} differs from the SDE's regime {sde.regime!r}; allowed: "
                              f"{sde.regime!r} or None")
    return sde


def _compile_pair(opt, problem, sde: SDE, backend: str, scheme: str):
    if scheme not in _SCHEMES:
        raise ValidationError(f"scheme={scheme!r} is invalid; allowed: {', '.join(_SCHEMES)}")
    disc = sd.compile(opt, problem, backend=backend, regime=sde.regime)
    if sp.simplify(sp.sympify(disc.tau_expr) - sp.sympify(sde.tau)) != 0:
        raise ValidationError(f"incompatible optimizer/SDE pair: the SDE's time per step is tau = {sde.tau} but "
                              f"{opt.name}'s regime {sde.regime!r} has tau = {disc.tau_expr}")
    if scheme == "auto":
        try:
            sde_sim = sd.compile(sde, problem, backend=backend, scheme="weak2")
            used = "weak2"
        except sd.SdederiveError as e:
            if "weak2" not in str(e):
                raise
            sde_sim = sd.compile(sde, problem, backend=backend, scheme="euler")
            used = "euler"
    else:
        sde_sim = sd.compile(sde, problem, backend=backend, scheme=scheme)
        used = scheme
    return disc, sde_sim, used


def _check_outputs(opt, disc, sde_sim) -> None:
    dout, sout = disc.spec.outputs, sde_sim.spec.outputs
    extra = [s for s in sout if s not in dout]
    if extra or not sout or sout[0] != dout[0]:
        raise ValidationError(f"incompatible optimizer/SDE pair: the SDE reports states {list(sout)} but "
                              f"{opt.name} has states {list(dout)}")


def _coupling(disc_sim, sde_sim, eta: float, hyper: dict, seed: int, n_seeds: int = 8) -> float:
    """Correlation, across seeds and coordinates, of the states after the SDE's first step in the
    discrete and the SDE run of the same seed (one path each; differences between seeds remove the
    means), for the state where it is strongest (`x` of Adam barely moves in one step, `m` does).
    Near +1: coupled; near -1: coupled with the opposite sign of the noise; near 0: independent."""
    import warnings

    from sdederive.analysis.regime_check import RegimeWarning

    k0, _ = sde_sim.initial_state(sde_sim.resolve_hyper(eta, hyper))
    names = [o for o in disc_sim.spec.outputs if o in sde_sim.spec.outputs]
    xs: dict = {("d", o): [] for o in names} | {("s", o): [] for o in names}
    for j in range(n_seeds):
        s = _seed(seed, 2, 0, j)
        for key, sim in (("d", disc_sim), ("s", sde_sim)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RegimeWarning)
                res = sim.run(paths=1, steps=k0 + 1, eta=eta, hyper=hyper, seed=s, save_every=1)
            for o in names:
                xs[key, o].append(np.asarray(res.mean[o][-1], float))
    best = 0.0
    for o in names:
        a = np.diff(np.array(xs["d", o]), axis=0).ravel()
        b = np.diff(np.array(xs["s", o]), axis=0).ravel()
        den = math.sqrt(float(a @ a) * float(b @ b))
        rho = float(a @ b) / den if den > 0 and np.all(np.isfinite([a @ b, den])) else 0.0
        if abs(rho) > abs(best):
            best = rho
    return best


def _flip_first_noise(sde: SDE) -> SDE:
    """The same SDE in law with the first Brownian motion negated (`W -> -W`): column 0 of `D`
    changes sign, `D D^T` does not."""
    D = sp.Matrix(sde.diffusion_matrix)
    D[:, 0] = -D[:, 0]
    return replace(sde, diffusion_matrix=D)


# ------------------------------------------------------------------------------------------------
# entry points
# ------------------------------------------------------------------------------------------------


@dataclass
class _Case:
    """Everything one step size needs: its problem, hyperparameters, compiled pair and grid."""

    eta: float
    tau: float
    problem: Problem
    hyper: dict
    disc: object
    sde: object
    save: int
    steps: int


def _hyper_at(hyper, eta: float) -> dict:
    h = hyper(eta) if callable(hyper) else hyper
    if h is not None and not isinstance(h, Mapping):
        raise ValidationError(f"hyper must be a mapping (or a function of eta returning one); got {h!r}")
    out = {}
    for k, v in dict(h or {}).items():
        try:
            out[str(k)] = float(v)
        except (TypeError, ValueError):
            raise ValidationError(f"hyperparameter {k}={v!r} is not a number") from None
    if "eta" in out:
        raise ValidationError("hyper must not contain 'eta'; give the step sizes as etas=[...]")
    return out


def compare(optimizer, problem, etas: Sequence[float] = (0.04, 0.02, 0.01), paths: int = 20_000,
            horizon: float = 2.0, observables: Sequence[str] | str = ("loss",), hyper=None,
            sde: SDE | None = None, regime: str | None = None, seed: int = 0, replicates: int = 10,
            tol: float | Mapping | None = None, backend: str = "numba", n_points: int = 20, progress: bool = False,
            *, expected_order: float | None = None, order_tol: float = 0.3, scheme: str = "auto",
            substeps: int = 1, level: float = 0.95, simultaneous: bool = True, n_boot: int = 2000,
            pilot: bool = True, svag: float | None = None, strict: bool = False) -> Comparison:
    """Run the discrete optimizer and its SDE to `horizon` (continuous time) at each `eta` and
    measure the weak error of each observable (see the module docstring for the statistics).

    Parameters
    ----------
    optimizer
        built-in name or `sdederive.Optimizer`.
    problem
        a `sdederive.problems.Problem`, a built-in name (`validators.problems`), or a
        function `eta -> Problem` (to hold a scaled quantity fixed, e.g. `sigma = sigma0/eta` in the
        noise-dominated regime).
    etas
        distinct step sizes > 0 whose taus are in integer ratios (a common time grid).
    paths
        total paths per eta and per mode, split into `replicates` batches.
    horizon
        continuous time `T`; every run takes `T/tau` steps.
    observables
        `"loss"`, `"sqnorm"` (`|x|^2`), a state (`"x"`, `"m"`, `"v"`: every coordinate)
        or one coordinate (`"x[0]"`).
    hyper
        discrete hyperparameters other than `eta` (`{"beta1": 0.9}`), or a function `eta -> dict`
        (`lambda eta: {"beta": 1 - 2*eta**2}` holds `c = (1 - beta)/eta**2` fixed).
    sde
        the SDE to test (default `sd.derive(optimizer, regime=regime)` with the problem's noise family).
    regime
        the regime to derive in (default the optimizer's natural one).
    seed
        base seed; batch seeds are derived from it (same seed, same numbers).
    replicates
        number of independent batches `R` (>= 2; 10 or more for useful intervals).
    tol
        pass/fail threshold on the weak error (a number, or `{observable: number}`).
    n_points
        about this many grid times (snapshots) in `(0, T]`.
    progress
        print a line per eta and replicate on stderr.
    expected_order, order_tol
        also require `|order - expected_order| <= order_tol`.
    scheme
        SDE integrator: `"auto"` (weak order 2 where possible), `"euler"` or `"weak2"`.
    substeps
        SDE integrator steps per optimizer step (> 1 loses the coupling).
    level
        confidence level of every interval.
    simultaneous
        Bonferroni over the grid (default) or pointwise intervals.
    n_boot
        bootstrap resamples for the order interval.
    pilot
        with `tol`, check first that `paths` suffices (else `ValidationError`).
    svag
        run the discrete side as SVAG (Malladi et al. 2022) with multiplier `l = svag*max(etas)/eta`
        at each `eta` (see the module docstring): the noise-dominated limit on a fixed data set.
    strict
        refuse (`ValidationError`) when the regime check fails, instead of a
        `RegimeWarning` and a note.
    """
    t_all = time.perf_counter()
    from sdederive.spec import vector as vec_mod

    vector = vec_mod.is_vector(optimizer)
    opt = vec_mod.get(optimizer) if vector else opt_mod.get(optimizer)
    if vector and svag is not None:
        raise ValidationError(f"svag={svag!r}: SVAG is defined for the scalar engine's regimes; {opt.name!r} is a vector "
                              "optimizer (regime 'sgd', 'high-dim' or 'rho-eta'); allowed: svag=None")
    etas_a = _check_etas(etas)
    paths = _check_int("paths", paths, 2)
    R = _check_int("replicates", replicates, 2)
    n_points = _check_int("n_points", n_points, 1)
    substeps = _check_int("substeps", substeps, 1)
    n_boot = _check_int("n_boot", n_boot, 10)
    seed = _check_int("seed", seed, 0)
    horizon = _check_positive("horizon", horizon)
    if not 0 < float(level) < 1:
        raise ValidationError(f"level={level!r} is invalid; allowed: 0 < level < 1")
    if expected_order is not None and (not math.isfinite(float(expected_order)) or order_tol is None
                                       or not float(order_tol) > 0):
        raise ValidationError(f"expected_order={expected_order!r} / order_tol={order_tol!r} are invalid; allowed: a "
                              "finite order and order_tol > 0")
    if expected_order is not None and len(etas_a) < 2:
        raise ValidationError(f"a weak order needs at least 2 etas; got etas={etas_a.tolist()}")
    n = paths // R
    if n < 2:
        raise ValidationError(f"paths={paths} is too few for replicates={R}: each batch needs at least 2 paths; "
                              f"allowed: paths >= {2 * R}")
    if isinstance(observables, str):
        observables = (observables,)
    observables = tuple(observables)
    if not observables:
        raise ValidationError("observables=() is empty; allowed: one or more of loss, sqnorm, x, ...")
    if len(set(observables)) != len(observables):
        raise ValidationError(f"observables={list(observables)} has duplicates")
    tol_d = _check_tol(tol, observables)
    hypers = [_hyper_at(hyper, float(e)) for e in etas_a]
    problems = [_problem(problem(float(e)) if callable(problem) else problem) for e in etas_a]
    prob0 = problems[0]

    sde_obj = _derive_sde(opt, prob0, sde, regime)
    svag_l = _svag_multipliers(svag, etas_a, sde_obj, prob0)
    if svag_l is not None:
        hypers = [_svag_hyper(opt, h, float(e), float(lv)) for h, e, lv in zip(hypers, etas_a, svag_l)]
        if not isinstance(prob0, LogisticRegression):  # Gaussian: r1*g1 + r2*g2 = grad + l*sigma*z in law
            from ._runs import quadratic_like

            problems = [quadratic_like(pr, sigma_factor=float(lv)) for pr, lv in zip(problems, svag_l)]
            prob0 = problems[0]
    disc0, sde0, used = _compile_pair(opt, prob0, sde_obj, backend, scheme)
    _check_outputs(opt, disc0, sde0)
    obs_keys = {o: _parse_observable(o, disc0.spec.outputs, prob0.d) for o in observables}
    for o, (key, _) in obs_keys.items():
        if key not in ("loss", "sqnorm") and key not in sde0.spec.outputs:
            raise ValidationError(f"observable {o!r}: the SDE has no state {key!r}; valid observables: "
                                  f"{', '.join(_valid_observables(sde0.spec.outputs, prob0.d))}")
    tau_f = sp.lambdify(_ETA, sp.sympify(sde_obj.tau), "math")
    taus = np.array([float(tau_f(e)) for e in etas_a])
    dt, q, save, grid_note = _grid(etas_a, taus, horizon, n_points)

    notes = []
    # the vector engine's regimes: every hyperparameter's scaling with eta (1 - beta ~ eta in 'balanced', rho ~ eta
    # in 'rho-eta', the rest fixed); 'high-dim' records its concentration assumption in the SDE's notes
    rc = _regime_check(sde_obj, disc0, problems, etas_a, hypers, svag_l, prob0, strict)
    if not rc.holds:
        notes.append(rc.message)
    if svag_l is not None:
        notes.append(f"SVAG (Malladi et al. 2022): the discrete side runs lr eta with multiplier l = "
                     f"{', '.join(f'{v:g}' for v in svag_l)} (noise l*sigma from r1*g1 + r2*g2, "
                     "r = (1 +- sqrt(2 l**2 - 1))/2, 1 - beta -> (1 - beta)/l**2, eps -> eps*l), which holds "
                     "sigma0, c and eps0 of the SDE fixed")
    if grid_note:
        notes.append(grid_note)
    if paths % R:
        notes.append(f"{R * n} of the {paths} paths used ({R} batches of {n})")
    if isinstance(prob0, LogisticRegression) or prob0.noise in ("student-t", "multivariate-t") or substeps > 1:
        why = ("the discrete optimizer samples minibatches, the SDE Gaussian noise" if isinstance(
            prob0, LogisticRegression) else "Student-t gradient noise vs Gaussian SDE noise"
            if prob0.noise in ("student-t", "multivariate-t") else "substeps > 1 draw other Gaussians")
        notes.append(f"discrete and SDE runs are not coupled ({why})")
    else:
        disc0.resolve_hyper(float(etas_a[0]), hypers[0])
        rho = _coupling(disc0, sde0, float(etas_a[0]), hypers[0], seed)
        if rho < -0.3 and not vector:
            # The kernels feed the same z to g = grad + sigma*z and to dW = sqrt(tau)*z, but the derived
            # diffusion's sign convention may pair the SDE's noise with -z: negate W (same law).
            sde_obj = _flip_first_noise(sde_obj)
            sde0 = sd.compile(sde_obj, prob0, backend=backend, scheme=used)
            rho2 = _coupling(disc0, sde0, float(etas_a[0]), hypers[0], seed)
            notes.append(f"the SDE's first Brownian motion was negated (W -> -W, same law) so that the paths of "
                         f"one seed are positively coupled (first-step correlation {rho:.2f} -> {rho2:.2f})")
        elif rho > 0.3:
            notes.append(f"discrete and SDE runs of a batch share their Gaussians (coupled; first-step correlation "
                         f"{rho:.2f})")
        else:
            notes.append(f"discrete and SDE runs are weakly coupled (first-step correlation {rho:.2f})")
    if used == "euler" and scheme == "auto":
        notes.append("SDE integrated by Euler-Maruyama with dt = tau (the weak order-2 scheme needs one "
                     "uncorrelated noise source); its own O(tau) error is part of the measured difference (for SGD, "
                     "Euler-Maruyama with dt = eta is SGD itself); substeps=k refines it but uncouples the runs")
    notes.extend(sde0.spec.notes)

    cases = []
    for i, e in enumerate(etas_a):
        pr = problems[i]
        if svag_l is not None and isinstance(pr, LogisticRegression):
            dsim = _SvagLogistic(opt, pr, float(svag_l[i]), disc0)
            ssim = sd.compile(sde_obj, _amplified(pr, float(svag_l[i])), backend=backend, scheme=used)
        elif pr is prob0:
            dsim, ssim = disc0, sde0
        else:
            if pr.d != prob0.d or pr.kind != prob0.kind:
                raise ValidationError(f"problem(eta) must keep its kind and dimension across etas; got {pr.kind} "
                                      f"d={pr.d} at eta={e:g} but {prob0.kind} d={prob0.d} at eta={etas_a[0]:g}")
            dsim = sd.compile(opt, pr, backend=backend, regime=sde_obj.regime)
            ssim = sd.compile(sde_obj, pr, backend=backend, scheme=used)
        dsim.resolve_hyper(float(e), hypers[i])  # names and ranges, before any run
        ssim.resolve_hyper(float(e), hypers[i])
        cases.append(_Case(float(e), float(taus[i]), pr, hypers[i], dsim, ssim, save[i], q * save[i]))

    def say(msg: str) -> None:
        if progress:
            sys.stderr.write(f"[compare] {msg}\n")
            sys.stderr.flush()

    if tol_d is not None and pilot:
        _pilot_check(cases, obs_keys, tol_d, q, paths, R, seed, substeps, level, simultaneous, say)

    stats: dict = {o: [] for o in observables}
    diffs: dict = {o: [] for o in observables}
    t_run = time.perf_counter()
    for i, c in enumerate(cases):
        say(f"eta={c.eta:g} ({i + 1}/{len(cases)}): {c.steps} steps, {R} batches of {n} paths")
        seeds = [_seed(seed, 0, i, r) for r in range(R)]
        arrs = _batches(c, obs_keys, n, seeds, substeps, say if progress else None)
        for o in observables:
            dd, ds = arrs[o]
            stats[o].append(_diff_stats(dd, ds, level, simultaneous))
            diffs[o].append(dd - ds)
    t_run = time.perf_counter() - t_run

    rng = np.random.default_rng([seed, 7])
    out: dict = {k: {} for k in ("weak_error", "interval", "ci", "resolution", "resolved", "t_star", "order",
                                 "order_ci", "curves", "plot_coord")}
    t_grid = np.arange(q + 1) * dt
    for o in observables:
        st = stats[o]
        err = np.array([s["err"] for s in st])
        res = np.array([s["resolved"] for s in st])
        out["weak_error"][o] = err
        out["interval"][o] = np.array([[s["lo"], s["hi"]] for s in st])
        out["ci"][o] = out["interval"][o][:, 1] - err
        out["resolution"][o] = np.array([s["resolution"] for s in st])
        out["resolved"][o] = res
        out["t_star"][o] = np.array([t_grid[s["t_index"]] for s in st])
        out["plot_coord"][o] = st[int(np.argmax(err))]["coord"]
        out["curves"][o] = [{k: s[k] for k in ("disc_mean", "disc_ci", "sde_mean", "sde_ci", "diff", "diff_ci")}
                            for s in st]
        if res.sum() >= 2:
            a, ci = _order(etas_a[res], [diffs[o][i] for i in np.flatnonzero(res)], err[res], level, n_boot, rng)
        else:
            a, ci = float("nan"), (float("nan"), float("nan"))
        out["order"][o] = a
        out["order_ci"][o] = ci

    return Comparison(
        optimizer=opt.name, sde_name=sde_obj.optimizer, noise=sde_obj.noise, regime=sde_obj.regime,
        tau=str(sde_obj.tau), scheme=used, substeps=substeps, problem=prob0.kind, d=prob0.d, etas=etas_a,
        taus=taus, t=t_grid, horizon=horizon, paths=paths, replicates=R, paths_per_batch=n, level=float(level),
        simultaneous=bool(simultaneous), observables=observables, hyper=hypers, seed=seed, tol=tol_d,
        expected_order=None if expected_order is None else float(expected_order),
        order_tol=None if expected_order is None else float(order_tol), notes=tuple(notes),
        claimed_order=float(expected_order if expected_order is not None else sde_obj.order),
        regime_check=None if rc is None else rc.to_dict(), svag=None if svag_l is None else svag_l,
        timing={"run_s": t_run, "total_s": time.perf_counter() - t_all}, **out,
    )


def _pilot_check(cases, obs_keys, tol_d, q, paths, R, seed, substeps, level, simultaneous, say) -> None:
    """Estimate from a pilot the paths needed for `max_t h(t) <= tol/2` and refuse too few."""
    n_p = max(2, min(paths // R, max(20, paths // (10 * R))))
    need: dict = {}
    for i, c in enumerate(cases):
        say(f"pilot eta={c.eta:g}: {R} batches of {n_p} paths")
        seeds = [_seed(seed, 1, i, r) for r in range(R)]
        arrs = _batches(c, obs_keys, n_p, seeds, substeps)
        for o, tol in tol_d.items():
            dd, ds = arrs[o]
            st = _diff_stats(dd, ds, level, simultaneous)
            qq = _quantile(level, R, q * dd.shape[2], simultaneous)
            sig = float(np.max(st["sd_path"][1:])) * math.sqrt(n_p)  # per-path sd of the difference
            n_tot = math.ceil((2 * qq * sig / tol) ** 2)
            if n_tot > need.get(o, (0, 0.0))[0]:
                need[o] = (n_tot, c.eta)
    if not need:
        return
    o, (n_tot, eta) = max(need.items(), key=lambda kv: kv[1][0])
    if n_tot > paths:
        raise TooFewPathsError(
            f"paths={paths} is too few to resolve tol={tol_d[o]:g} for {o}: a pilot run estimates that about "
            f"{n_tot} paths are needed at eta={eta:g} for a {level:.0%} CI half width below tol/2 = {tol_d[o] / 2:g}; "
            f"pass paths >= {n_tot} (or a larger tol)")


def _regime_check(sde_obj, disc0, problems, etas_a, hypers, svag_l, prob0, strict: bool):
    """`sdederive.analysis.regime_check.regime_check` over the etas (full discrete hyperparameters; with SVAG on logistic
    regression the noise amplification `l`); a `RegimeWarning`, or with `strict` a refusal."""
    import warnings

    from sdederive.analysis.regime_check import RegimeWarning, regime_check

    full = [disc0.resolve_hyper(float(e), h) for e, h in zip(etas_a, hypers)]
    if svag_l is not None and isinstance(prob0, LogisticRegression):
        problems = [_amplified(pr, float(lv)) for pr, lv in zip(problems, svag_l)]
    rc = regime_check(sde_obj, problems, etas_a, full)
    if not rc.holds:
        if strict:
            raise ValidationError(rc.message + " (strict: refused)")
        warnings.warn(rc.message, RegimeWarning, stacklevel=3)
    return rc


def _svag_multipliers(svag, etas_a: np.ndarray, sde_obj: SDE, prob0: Problem) -> np.ndarray | None:
    if svag is None:
        return None
    L = _check_positive("svag", svag)
    if L < 1:
        raise ValidationError(f"svag={svag!r} is invalid; allowed: a multiplier >= 1 (at the largest eta)")
    from sdederive import regimes

    rg = regimes.REGIMES.get(sde_obj.regime)
    if rg is None or not rg.scale_noise:
        raise ValidationError(f"svag applies to regimes with sigma = sigma0/eta (noise-dominated); the SDE's regime "
                              f"is {sde_obj.regime!r}")
    if not isinstance(prob0, LogisticRegression) and (prob0.noise != "gaussian" or not isinstance(prob0, Quadratic)):
        raise ValidationError(f"svag needs logistic regression (two real minibatches) or a quadratic with Gaussian "
                              f"noise; got a {prob0.kind} problem with {prob0.noise} noise")
    return L * float(etas_a.max()) / etas_a


def _svag_hyper(opt, h: dict, eta: float, lv: float) -> dict:
    """SVAG's maps at multiplier `l`: `1 - beta -> (1 - beta)/l**2` (decays), `eps -> eps*l`."""
    out = dict(h)
    for hp in opt.hypers:
        if hp.kind == "lr":
            continue
        v = out.get(hp.name, hp.default)
        if hp.kind == "decay":
            out[hp.name] = 1.0 - (1.0 - float(v)) / lv**2
        elif hp.kind == "eps":
            out[hp.name] = float(v) * lv
        else:
            raise ValidationError(f"svag: no SVAG map for {opt.name}'s hyperparameter {hp.name!r} (kind {hp.kind}); "
                                  "SVAG maps lr, decays and eps (RMSprop, Adam)")
    return out


def _amplified(pr: LogisticRegression, lv: float) -> LogisticRegression:
    """The SDE's view of SVAG's noise `l*sigma` on logistic regression: the same data with the gradient
    covariance `Sigma(x)/B` taken at the (non-integer) batch `B/l**2`; only the SDE side uses it."""
    out = LogisticRegression(pr.A, pr.y, B=pr.B, l2=pr.l2, x0=pr.x0)
    object.__setattr__(out, "B", pr.B / lv**2)
    return out


class _SvagLogistic:
    """SVAG's discrete run on logistic regression (numpy, vectorised over paths): each step draws two
    independent minibatches of `B` examples (with replacement) and uses `g = r1*g1 + r2*g2`,
    `r = (1 +- sqrt(2 l**2 - 1))/2` (Malladi et al. 2022)."""

    def __init__(self, opt, problem: LogisticRegression, lv: float, disc0):
        self.opt, self.problem, self.l, self._disc0 = opt, problem, lv, disc0
        q = math.sqrt(2 * lv * lv - 1)
        self.r1, self.r2 = (1 + q) / 2, (1 - q) / 2
        self.spec = disc0.spec
        self._step = opt.numpy_step()

    def resolve_hyper(self, eta=None, hyper=None) -> dict:
        return self._disc0.resolve_hyper(eta, hyper)

    def _grad(self, X: np.ndarray, idx: np.ndarray) -> np.ndarray:
        p = self.problem
        a = p.A[idx]  # (paths, B, d)
        yy = p.y[idx]
        mg = np.einsum("pbd,pd->pb", a, X) * yy
        s = 1.0 / (1.0 + np.exp(mg))
        return -np.einsum("pb,pbd->pd", yy * s, a) / idx.shape[1] + p.l2 * X

    def run(self, paths: int, steps: int, eta: float, hyper: dict, seed: int, save_every: int, **_):
        from types import SimpleNamespace

        p = self.problem
        hv = self.resolve_hyper(eta, hyper)
        rng = np.random.default_rng(seed)
        st = {"x": np.tile(p.x0, (paths, 1))}
        for s in self.opt.states:
            st[s.name] = np.full((paths, p.d), float(s.init))
        outs = self.spec.outputs

        def snap():
            return {"loss": p.loss(st["x"]), "sqnorm": np.sum(st["x"] ** 2, axis=1),
                    **{o: st[o] for o in outs}}

        acc = {k: [] for k in ("loss", "sqnorm", *outs)}

        def put():
            for k, v in snap().items():
                acc[k].append(np.mean(v, axis=0))

        put()
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            for k in range(steps):
                i1 = rng.integers(0, p.n, size=(paths, p.B))
                i2 = rng.integers(0, p.n, size=(paths, p.B))
                g = self.r1 * self._grad(st["x"], i1) + self.r2 * self._grad(st["x"], i2)
                st = self._step(st, g, k, hv)
                if not np.all(np.isfinite(st["x"])):
                    bad = int(np.flatnonzero(~np.all(np.isfinite(st["x"]), axis=1))[0])
                    raise DivergenceError(f"SVAG run diverged: path {bad} became non-finite at step {k + 1}",
                                          bad, k + 1, 1, None)
                if (k + 1) % save_every == 0:
                    put()
        return SimpleNamespace(mean={k: np.array(v) for k, v in acc.items()}, interrupted=False)


def compare_final(a, b, key: str = "loss", coord: int | None = None,
                  quantiles: Sequence[float] = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)) -> dict:
    """Compare the per-path final values of two runs beyond two moments (`Simulator.run(...,
    keep_final=True)`): quantiles, the two-sample Kolmogorov-Smirnov statistic and p-value
    (`scipy.stats.ks_2samp`) and the Wasserstein-1 distance (`scipy.stats.wasserstein_distance`).

    `key`: `"loss"` or `"x"` (then `coord` selects a coordinate, default 0).  Diverged paths (NaN)
    are left out.  The KS p-value assumes independent samples: give the two runs different seeds (the
    runs of one seed share their Gaussians).
    """
    from scipy import stats

    vals = []
    for r in (a, b):
        fin = getattr(r, "final", None)
        if not fin:
            raise ValidationError("compare_final needs per-path final values: run with keep_final=True")
        if key not in fin:
            raise ValidationError(f"compare_final: unknown key {key!r}; allowed: {', '.join(fin)}")
        v = np.asarray(fin[key], float)
        if v.ndim == 2:
            c = 0 if coord is None else int(coord)
            if not 0 <= c < v.shape[1]:
                raise ValidationError(f"compare_final: coord={coord!r} is invalid; allowed: 0 <= coord < {v.shape[1]}")
            v = v[:, c]
        v = v[np.isfinite(v)]
        if v.size < 2:
            raise ValidationError(f"compare_final: {v.size} finite final values; at least 2 are needed")
        vals.append(v)
    qs = np.asarray(quantiles, float)
    ks = stats.ks_2samp(vals[0], vals[1])
    return {
        "n": (int(vals[0].size), int(vals[1].size)),
        "mean": (float(vals[0].mean()), float(vals[1].mean())),
        "quantiles": {float(q): (float(x), float(y)) for q, x, y in
                      zip(qs, np.quantile(vals[0], qs), np.quantile(vals[1], qs))},
        "ks": float(ks.statistic), "ks_pvalue": float(ks.pvalue),
        "wasserstein": float(stats.wasserstein_distance(vals[0], vals[1])),
    }


def weak_order(optimizer, problem, etas: Sequence[float] = (0.04, 0.02, 0.01), **kw) -> Comparison:
    """`compare` over at least two step sizes; the fitted weak order is `result.order[obs]`
    (least-squares slope of log weak error against log eta over the resolved step sizes) with its
    bootstrap interval `result.order_ci[obs]`."""
    etas_a = _check_etas(etas)
    if len(etas_a) < 2:
        raise ValidationError(f"a weak order needs at least 2 etas; got etas={etas_a.tolist()}")
    return compare(optimizer, problem, etas_a.tolist(), **kw)

"""Results as tables: `pandas.DataFrame` in long ("tidy") form, and booktabs LaTeX for papers.

pandas is the `pandas` extra (`pip install 'sdederive[pandas]'`); `pandas` names it when
it is missing.  The LaTeX is pandas' own `DataFrame.to_latex` (`\\toprule`, `\\midrule`,
`\\bottomrule`: load `booktabs`), with numbers printed to a fixed number of significant digits.
"""

from __future__ import annotations

import numpy as np

from sdederive.errors import SdederiveError

__all__ = ["pandas", "simulation_frame", "booktabs", "tex_escape"]


def pandas():
    """The pandas module, or an `SdederiveError` naming the extra."""
    try:
        import pandas as pd
    except ImportError as e:
        raise SdederiveError("tables need pandas, which is the 'pandas' extra: pip install 'sdederive[pandas]'") from e
    return pd


def simulation_frame(res):
    """One row per (snapshot, observable, coordinate) of a `SimulationResult`:
    `step, t, observable, coord, mean, var, se, count` (`coord` is `-1` for the scalar
    observables `loss` and `sqnorm`)."""
    pd = pandas()
    se = res.se
    parts = []
    n = len(res.t)
    for name, m in res.mean.items():
        scalar = np.ndim(m) == 1
        cols = {k: np.asarray(a, float).reshape(n, -1) for k, a in (("mean", m), ("var", res.var[name]),
                                                                    ("se", se[name]))}
        for j in range(cols["mean"].shape[1]):
            parts.append(pd.DataFrame({
                "step": np.asarray(res.steps, np.int64), "t": np.asarray(res.t, float), "observable": name,
                "coord": np.full(n, -1 if scalar else j), **{k: c[:, j] for k, c in cols.items()},
                "count": np.asarray(res.count, np.int64)}))
    df = pd.concat(parts, ignore_index=True)
    df.attrs.update({"mode": res.mode, "name": res.name, "paths": res.paths, "seed": res.seed,
                     "diverged": res.diverged, "interrupted": res.interrupted})
    return df


def tex_escape(text: str) -> str:
    """Plain text for LaTeX: the ten special characters escaped (captions built from names like
    `quadratic_diag` and levels like `95%`)."""
    rep = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
           "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
    return "".join(rep.get(ch, ch) for ch in text)


def booktabs(df, caption: str | None = None, label: str | None = None, digits: int = 4) -> str:
    """`df` as a LaTeX `table` with booktabs rules; floats to `digits` significant digits.
    Cells and headers are escaped; `caption` is LaTeX as given (see `tex_escape`)."""
    pandas()
    return df.to_latex(index=False, caption=caption, label=label, float_format=lambda v: f"{v:.{digits}g}",
                       escape=True, position="t")

r"""Update structures the moment expansion cannot see through, handled around `sdederive.derive`.

Running maxima (AMSGrad)
    A state updated as `s' = Max(s, w)` where `w` is the new value of another state `r`
    (`vhat' = max(vhat, v')`) keeps `s_k = max(s_0, r_1, ..., r_k)`.  Where `r` has no diffusion
    at leading order its path converges to the solution of an ODE, and `s` to the running
    maximum of that path:

    $$
    ds = \mathbf 1\{r \ge s\}\,\max(0, b_r)\,dt \qquad (\text{on } s \ge r),
    $$

    with `b_r` the drift of `r`, written `(b + |b|)*(2 + S - S**2)/4` with `S = sign(r - s)`
    (`sign`/`Abs` only, as the JSON schema allows).  The convergence is O(sqrt(eta)) where `r`
    has O(sqrt(eta)) fluctuations (balanced regime: they lift the maximum), O(eta) where they are
    O(eta) (noise-dominated).  This is not the one-step mean at `s = r`
    (`E[max(0, dr)] > max(0, E dr)` when `dr` is noisy), but the one-step mean in the interior
    `s > r` (zero) and the limit of the chain, which lives on `s >= r` and sticks to the
    boundary while `r` grows.  The derivation is done with `s' = s` (and `Max(s, w)` replaced by
    `s` in the other updates: the O(tau) change of `s` within a step enters them beyond leading
    order) and the drift of `s` is then set as above.  Refused when `r` has a modelled diffusion
    (the running maximum of a diffusion is not a state of an Ito SDE with a drift).

Lagged gradients (Adan)
    A state updated as `gp' = (a polynomial in g only)` stores the previous step's gradient; it is
    modelled inside the engine (`sdederive.derivation._lag`: the previous draw as an independent
    copy of the noise, the diffusion as the long-run covariance of the 1-dependent increments).
"""

from __future__ import annotations

import dataclasses

import sympy as sp

from sdederive.errors import ExpectationError, RegimeMismatchError, SdederiveError
from sdederive.symbols import sym

__all__ = ["derive_special"]

_g = sym("g")


def _running_max(opt):
    """`(optimizer with s' = s, [(s_decl, r_decl, Max node)])` for the running-maximum states of `opt`."""
    upd = dict(opt.update)
    found = []
    for s in opt.states:
        e = upd[s.name]
        if not (isinstance(e, (sp.Max, sp.Min)) and len(e.args) == 2 and s.symbol in e.args):
            continue
        w = e.args[1] if e.args[0] == s.symbol else e.args[0]
        if w.has(s.symbol):
            continue
        r = next((r for r in opt.states if r.name != s.name and sp.expand(upd[r.name] - w) == 0), None)
        if r is None:
            continue
        found.append((s, r, e))
    if not found:
        return opt, []
    repl = {e: s.symbol for s, _, e in found}
    new = tuple((name, expr.xreplace(repl)) for name, expr in opt.update)
    opt2 = type(opt)(opt.name, opt.hypers, opt.states, new, opt.natural_regime, opt.doc, opt.transforms)
    return opt2, found


def _sde_symbol(sde, decl) -> tuple[str, sp.Symbol]:
    for name, expr in sde.state_map.items():
        if sp.sympify(expr).has(decl.symbol):
            return name, sym(name, nonnegative=True)
    return decl.name, decl.symbol


def _finish_running_max(sde, found, rg):
    drift = dict(sde.drift)
    notes = list(sde.notes)
    states = list(sde.states)
    for s, r, e in found:
        sn, ss = _sde_symbol(sde, s)
        rn, rs = _sde_symbol(sde, r)
        if rn not in states or sn not in states:
            raise RegimeMismatchError(f"{sde.optimizer}: the running maximum {s.name} = {e} has no SDE state in "
                                      f"regime {rg.name!r}")
        i = states.index(rn)
        D = sde.diffusion_matrix
        if D.shape[1] and any(D[i, j] != 0 for j in range(D.shape[1])):
            raise RegimeMismatchError(
                f"{sde.optimizer}: {s.name} = {e} is the running maximum of {r.name}, which has a diffusion in "
                f"regime {rg.name!r}; the running maximum of a diffusion is not a state of an Ito SDE with a drift. "
                "Use a regime in which it is deterministic at leading order (noise-dominated, balanced)."
            )
        is_max = isinstance(e, sp.Max)
        b = drift[rn]
        # 1{r >= s} * max(0, b), written with sign/Abs only (the NOTATION JSON functions):
        # 1{d >= 0} = (2 + S - S**2)/2 with S = sign(d) (1 at d = 0), max(0, b) = (b + |b|)/2
        S = sp.sign(rs - ss) if is_max else sp.sign(ss - rs)
        drift[sn] = (b + sp.Abs(b) if is_max else b - sp.Abs(b)) * (2 + S - S**2) / 4
        notes.append(
            f"{sn} is the running {'maximum' if is_max else 'minimum'} of {rn} ({s.name}' = {e}): its drift is "
            f"that of the running {'maximum' if is_max else 'minimum'} of {rn}'s limit, valid on "
            f"{sn} {'>=' if is_max else '<='} {rn} (which the chain and the SDE keep); on the boundary the one-step "
            f"mean differs (E[max(0, d{rn})] > max(0, E[d{rn}])) and only the limit of many steps agrees; its "
            "local covariance is set to zero"
        )
    return dataclasses.replace(sde, drift=drift, notes=tuple(notes))


def derive_special(derive_fn, opt, nm, rg, order: int):
    """`derive_fn(opt, nm, rg, order)` with the structures of the module docstring handled."""
    opt2, found = _running_max(opt)
    if found and order != 1:
        raise SdederiveError(f"order={order} is not supported for the running maximum in {opt.name!r}; use order=1")
    try:
        sde = derive_fn(opt2, nm, rg, order)
    except ExpectationError as err:
        if "is not polynomial in the noise" not in str(err):
            raise
        raise ExpectationError(
            f"{opt.name!r} in regime {rg.name!r}: the noise stays O(1) inside a non-polynomial function of an "
            "update (a square root or a power whose argument's noise does not vanish as eta -> 0), so the "
            "one-step mean is an integral over the noise with no closed form here and no Taylor expansion "
            f"applies. ({err.args[0] if err.args else err})"
        ) from err
    if found:
        # the SDE carries the user's optimizer (its update with the Max), not the stand-in derived from:
        # the simulators take the expected first step and the states' kinds from it
        sde = dataclasses.replace(_finish_running_max(sde, found, rg), source=opt)
    return _expand_clip(sde)


def _expand_clip(sde):
    """Closed forms of the clipped-noise moments, held opaque during the derivation (`_clip_moments`)."""
    from sdederive.derivation._clip_moments import ClipMoment, expand_clip_moments

    parts = list(sde.drift.values()) + [sde.diffusion_matrix, sde.covariance]
    if not any(p.has(ClipMoment) for p in parts):
        return sde
    return dataclasses.replace(
        sde, drift={k: expand_clip_moments(v) for k, v in sde.drift.items()},
        diffusion_matrix=expand_clip_moments(sde.diffusion_matrix), covariance=expand_clip_moments(sde.covariance))

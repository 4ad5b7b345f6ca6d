r"""Simulators of vector optimizers and vector SDEs: `sd.compile(sd.derive("sam"), problem)` and
`sd.compile("sam", problem)`.

The kernel is printed from a vector program (`sdederive.simulate.vector_lower`, then
`sdederive.simulate.backends.numba_vector`) with the signature of the scalar kernels, so the
run loop, the snapshots, the divergence reports, Ctrl-C, the memory estimate and the statistics are
`Simulator`'s own.  The state is `x` alone; both modes start from the problem's `x0` and report the
loss, `|x|^2` and `x` on the time axis `t = k*eta`.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import numpy as np
import sympy as sp

from sdederive.errors import SdederiveError, UnknownNameError
from sdederive.problems import Problem
from sdederive.sde_vector import VectorSDE
from sdederive.simulate.backends.base import BackendUnavailableError, KernelSource
from sdederive.simulate.backends.registry import get_backend
from sdederive.simulate.lower import CodegenError
from sdederive.simulate.simulator import Simulator
from sdederive.simulate.vector_lower import DEFAULT_INNER, lower_discrete, lower_sde
from sdederive.spec import vector as V
from sdederive.symbols import sym

__all__ = ["compile_vector", "VectorSimulator", "VectorKernelSpec"]


@dataclass(frozen=True, eq=False)
class VectorKernelSpec:
    """What `Simulator` reads of a kernel spec (the vector kernels have one state, `x`)."""

    mode: str
    name: str
    scalars: tuple
    notes: tuple = ()
    n_inner: int = 0
    states: tuple = ("x",)
    outputs: tuple = ("x",)


class VectorSimulator(Simulator):
    """A compiled vector kernel (see the module docstring)."""

    def _hyper_table(self) -> dict:
        if isinstance(self.obj, VectorSDE):
            return {n: (kind, default) for n, kind, default in self.obj.hypers}
        return {h.name: (h.kind, h.default) for h in self.obj.hypers}

    def initial_state(self, hv: dict, init: dict | None = None):
        """`(0, {"x": x0})`; `init={"x": ...}` overrides the start (the only state)."""
        st = {"x": self.problem.x0.copy()}
        for k, v in dict(init or {}).items():
            if k != "x":
                raise UnknownNameError("state", k, ["x"])
            st["x"] = np.broadcast_to(np.asarray(v, float), (self.problem.d,)).copy()
        return 0, st

    def _n_blocks(self, paths: int) -> int:
        """At most 64 statistics blocks of at least `ROW_BLOCK` paths each (when there are that many): a row
        block never spans two statistics blocks, so this keeps the matrix products `ROW_BLOCK` rows tall."""
        from sdederive.simulate.backends.numba_vector import ROW_BLOCK

        return int(max(1, min(64, paths // ROW_BLOCK)))

    def _disc_init_vector(self) -> dict:
        return {"x": self.problem.x0.copy()}


def _check_law(sde: VectorSDE, problem: Problem) -> None:
    """A Gaussian SDE runs on a Gaussian problem; a Student-t SDE (the multivariate t) on a problem with
    `noise="multivariate-t"` of the same `nu` (a symbolic `nu` takes the problem's)."""
    if sde.noise not in ("gaussian", "student-t") or (sde.noise == "gaussian") != (sde.nu is None):
        raise SdederiveError(f"the SDE of {sde.optimizer} has noise {sde.noise!r} (nu = {sde.nu}); the vector "
                             "simulators run SDEs derived under 'gaussian' or 'student-t' (multivariate) noise")
    if sde.nu is None:
        if problem.noise == "multivariate-t":
            raise SdederiveError(
                f"the SDE of {sde.optimizer} was derived under Gaussian noise but the problem's noise is the "
                f"multivariate Student-t (nu={problem.nu:g}); derive it with noise=sd.StudentT(nu={problem.nu:g}), "
                "or give the problem noise='gaussian'")
        return
    if problem.noise != "multivariate-t":
        raise SdederiveError(
            f"the SDE of {sde.optimizer} was derived under multivariate Student-t noise (nu = {sde.nu}) but the "
            f"problem's noise is {problem.noise!r}; give the problem noise='multivariate-t' and nu"
            + ("" if sde.nu.free_symbols else f"={sde.nu}") + " (or derive the SDE with noise='gaussian')")
    if not sde.nu.free_symbols and abs(float(sde.nu) - problem.nu) > 1e-12 * max(1.0, problem.nu):
        raise SdederiveError(
            f"the SDE of {sde.optimizer} was derived for nu = {sde.nu} but the problem's multivariate Student-t has "
            f"nu = {problem.nu:g}; derive it with noise=sd.StudentT(nu={problem.nu:g}) (or without nu: a symbolic nu "
            "takes the problem's value), or give the problem nu={sde.nu}")
    if sde.nu.free_symbols:  # the derivation's condition for a symbolic nu, "valid for nu > p" in its notes
        for n in sde.notes:
            m = re.search(r"valid for nu > (\d+(?:/\d+)?)\b", n)
            if m and not problem.nu > float(sp.Rational(m.group(1))):
                raise SdederiveError(
                    f"the SDE of {sde.optimizer} (symbolic nu) is valid for nu > {m.group(1)} (its one-step moments are "
                    f"infinite below); the problem has nu = {problem.nu:g}. Allowed: a problem nu > {m.group(1)}")


def compile_vector(obj, problem: Problem, backend: str = "numba", dtype: str = "float64", scheme: str = "euler",
                   regime: str | None = None, inner: int = DEFAULT_INNER) -> VectorSimulator:
    """Compile the discrete vector optimizer or the vector SDE `obj` for `problem` (numba backend)."""
    impl = get_backend(backend)
    if impl.name != "numba":
        raise CodegenError(f"vector kernels ({getattr(obj, 'optimizer', getattr(obj, 'name', obj))!r}) are generated "
                           f"for the numba backend only so far; got backend={backend!r}. Use backend='numba'")
    if scheme != "euler":
        raise SdederiveError(f"scheme={scheme!r}: vector SDEs are simulated with Euler–Maruyama only; use "
                             "scheme='euler'" if isinstance(obj, VectorSDE) else
                             "scheme applies to SDE mode only; the discrete optimizer is its own update rule")
    if problem.noise == "student-t":
        raise SdederiveError(
            f"the problem has noise='student-t' (nu={problem.nu:g}): an independent t for each coordinate, "
            "xi_i = sigma_i t_i, the scalar engine's law. The vector engine and its simulators use Gaussian noise or "
            "the multivariate Student-t xi = sqrt(nu/W) Sigma^(1/2) z (one W ~ chi2_nu per draw, shared by the "
            f"coordinates): give the problem noise='multivariate-t', nu={problem.nu:g} (or noise='gaussian')")
    if isinstance(obj, VectorSDE) and obj.aux_states:
        raise SdederiveError(f"the SDE of {obj.optimizer} has auxiliary vector states {list(obj.aux_states)}; the vector "
                             "simulators handle x alone so far")
    if not isinstance(obj, VectorSDE) and V.get(obj).aux:
        raise SdederiveError(f"the vector optimizer {V.get(obj).name!r} has auxiliary vector states "
                             f"{list(V.get(obj).state_names[1:])}; the vector simulators handle x alone so far")
    if isinstance(obj, VectorSDE):
        _check_law(obj, problem)
    t0 = time.perf_counter()
    if isinstance(obj, VectorSDE):
        prog = lower_sde(obj, problem, inner)
        tau_expr = obj.tau
        notes = tuple(obj.notes)
        mode = "sde"
    else:
        opt = V.get(obj)
        from sdederive.derivation.vector import _REGIMES

        if regime is not None and str(regime).strip().lower().replace("_", "-") not in _REGIMES:
            raise SdederiveError(f"regime={regime!r}: the discrete vector optimizer {opt.name!r} runs on the time axis "
                                 f"t = k*eta of the vector engine's regimes {', '.join(_REGIMES)} (all tau = eta)")
        prog = lower_discrete(opt, problem)
        tau_expr = sym("eta")
        notes = ()
        mode = "discrete"
        obj = opt
    ok, why = impl.available()
    if not ok:  # pragma: no cover - numba is a dependency
        raise BackendUnavailableError(why)
    from sdederive.simulate.backends.numba_vector import generate_vector

    spec = VectorKernelSpec(mode, prog.name, prog.hypers, notes, prog.n_inner)
    text = generate_vector(prog, problem, dtype)
    source = KernelSource(impl.name, text, spec, problem, scheme, dtype)
    handle = impl.build(source)
    return VectorSimulator(spec, problem, impl, dtype, scheme, source, obj, tau_expr, time.perf_counter() - t0,
                           handle=handle)

r"""Simulators of vector optimizers and vector SDEs: `sd.compile(sd.derive("sam"), problem)` and
`sd.compile("sam", problem)`.

The kernel is printed from a vector program (`sdederive.simulate.vector_lower`, then
`sdederive.simulate.backends.numba_vector`, or `cuda_vector` for `backend="cupy"`) with the signature of the
scalar kernels, so the run loop, the snapshots, the divergence reports, Ctrl-C, the memory estimate and the
statistics are `Simulator`'s own.  The state is `x` alone; both modes start from the problem's `x0` and report the
loss, `|x|^2` and `x` on the time axis `t = k*eta`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

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

    _host_text: str | None = None

    @property
    def module(self):
        """The numba module whose `host_loss` and `host_obs` the simulator calls on the host: the kernel's own
        on numba, the float64 numba twin of the program on other backends (`AbstractBackend.host_module`
        would build the scalar kernels' twin)."""
        if self._host is None and self._host_text is not None:
            from sdederive.simulate.backends.numba_backend import _build_host, load_module

            mod = load_module(self._host_text)
            _build_host(mod, self.spec, len(self.spec.states), self.problem.d)
            self._host = mod
        return super().module

    def _n_blocks(self, paths: int) -> int:
        """At most 64 statistics blocks of at least `ROW_BLOCK` paths each (when there are that many): a row
        block never spans two statistics blocks, so this keeps the matrix products `ROW_BLOCK` rows tall."""
        from sdederive.simulate.backends.numba_vector import ROW_BLOCK

        return int(max(1, min(64, paths // ROW_BLOCK)))

    def _disc_init_vector(self) -> dict:
        return {"x": self.problem.x0.copy()}


def compile_vector(obj, problem: Problem, backend: str = "numba", dtype: str = "float64", scheme: str = "euler",
                   regime: str | None = None, inner: int = DEFAULT_INNER) -> VectorSimulator:
    """Compile the discrete vector optimizer or the vector SDE `obj` for `problem` (numba backend: the kernel of
    `numba_vector`; cupy: the CUDA kernel of `cuda_vector`, `BackendUnavailableError` without CuPy or a GPU)."""
    impl = get_backend(backend)
    if impl.name not in ("numba", "cupy"):
        raise CodegenError(f"vector kernels ({getattr(obj, 'optimizer', getattr(obj, 'name', obj))!r}) are generated "
                           f"for the numba and cupy backends only; got backend={backend!r}. Use backend='numba' or "
                           "'cupy'")
    if scheme != "euler":
        raise SdederiveError(f"scheme={scheme!r}: vector SDEs are simulated with Euler–Maruyama only; use "
                             "scheme='euler'" if isinstance(obj, VectorSDE) else
                             "scheme applies to SDE mode only; the discrete optimizer is its own update rule")
    if problem.noise == "student-t":
        raise SdederiveError("the vector engine and its simulators use Gaussian noise g = grad + Sigma^(1/2) z; the "
                             "problem has Student-t noise. Give the problem noise='gaussian'")
    if isinstance(obj, VectorSDE) and obj.aux_states:
        raise SdederiveError(f"the SDE of {obj.optimizer} has auxiliary vector states {list(obj.aux_states)}; the vector "
                             "simulators handle x alone so far")
    if not isinstance(obj, VectorSDE) and V.get(obj).aux:
        raise SdederiveError(f"the vector optimizer {V.get(obj).name!r} has auxiliary vector states "
                             f"{list(V.get(obj).state_names[1:])}; the vector simulators handle x alone so far")
    if isinstance(obj, VectorSDE) and (obj.noise != "gaussian" or obj.nu is not None):
        raise SdederiveError(f"the SDE of {obj.optimizer} was derived under {obj.noise} noise (nu = {obj.nu}); the vector "
                             "simulators draw Gaussian noise only so far (multivariate t needs a chi-square draw shared "
                             "by the coordinates of each sample). Derive it with noise='gaussian' to simulate it")
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
    if not ok:  # no CuPy or no GPU (numba is a dependency)
        raise BackendUnavailableError(why or f"backend {impl.name!r} cannot run here")
    from sdederive.simulate.backends.numba_vector import generate_vector

    spec = VectorKernelSpec(mode, prog.name, prog.hypers, notes, prog.n_inner)
    if impl.name == "cupy":
        from sdederive.simulate.backends.cuda_vector import generate_vector_cuda

        text = generate_vector_cuda(prog, problem, dtype)
    else:
        text = generate_vector(prog, problem, dtype)
    source = KernelSource(impl.name, text, spec, problem, scheme, dtype)
    handle = impl.build(source)
    sim = VectorSimulator(spec, problem, impl, dtype, scheme, source, obj, tau_expr, time.perf_counter() - t0,
                          handle=handle)
    if impl.name != "numba":  # the host's loss and observables: the float64 numba twin (Simulator.module)
        sim._host_text = generate_vector(prog, problem, "float64")
    return sim

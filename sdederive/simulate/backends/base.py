r"""The interface every kernel backend implements, and the registry that names them.

A backend turns a `KernelSpec` into something that advances an ensemble
of paths.  `Simulator` drives every backend through the same five
calls, so `run` never looks at the backend's name:

1. `AbstractBackend.generate` prints the spec (and the problem's fragment) as source text,
   a `KernelSource`;
2. `AbstractBackend.build` compiles it into a handle (cached on disk by content hash);
3. `AbstractBackend.start` moves one run's host arrays where the kernel reads them (a no-op on
   the CPU, the device transfers on a GPU);
4. `AbstractBackend.run_chunk` advances every live path by a block of steps and accumulates the
   snapshot statistics of the save points in that block, per block of paths;
   `AbstractBackend.finish` brings the final states and divergence steps back;
5. `AbstractBackend.reduce` merges the per-block statistics into means and `M2`
   (`merge_blocks`, Chan et al.).

Adding a backend is one module: subclass `AbstractBackend`, set `name`,
and call `register_backend` on the class; `sd.compile(..., backend=name)`, the CLI's
`--backend` choices and the sweep grid's `backend` axis then accept it.  The built-in backends are
listed by module path in `registry`, which imports neither numpy, sympy,
numba nor CuPy, so the CLI can list the choices without them.
"""

from __future__ import annotations

import abc
import hashlib
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np

from sdederive.simulate.backends.registry import backend_names, get_backend, register_backend
from sdederive.simulate.lower import CodegenError

__all__ = ["AbstractBackend", "KernelSource", "RunArrays", "BackendUnavailableError", "register_backend",
           "get_backend", "backend_names", "merge_blocks"]


class BackendUnavailableError(CodegenError):
    """A backend that cannot run here (no CuPy, no CUDA device, no numba); the message says which and what
    to install or use instead."""


@dataclass(frozen=True, eq=False)
class KernelSource:
    """Generated source of one kernel: `text` and what it was generated from (the handle `build`
    compiles needs the sizes: states, coordinates, observables)."""

    backend: str
    text: str
    spec: Any  # KernelSpec
    problem: Any  # Problem
    scheme: str
    dtype: str

    @property
    def key(self) -> str:
        """The first 16 hex digits of the text's SHA-256 (what the on-disk caches are keyed by)."""
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]


@dataclass
class RunArrays:
    """The host arrays and scalars of one run, as `Simulator.run` prepares them.

    `state` `(paths, S, d)` float64 and `DIV` `(paths,)` int64 (-1: alive, else the step it
    diverged at) are the backend's to update; `AbstractBackend.finish` must leave the final values
    in them.  `MEAN`/`M2` `(nblk, n_save + 1, nobs)` and `CNT` `(nblk, n_save + 1)` are the
    per-block snapshot statistics (Welford mean and `M2` over each block's paths): the snapshots of the
    deterministic start are already in them; `AbstractBackend.run_chunk` adds every save point
    `j = k // save_every` with `k_begin < k <= k_end` in the same layout (any split of the paths into
    blocks is fine, as long as it does not depend on the thread count)."""

    state: np.ndarray
    DIV: np.ndarray
    HP: np.ndarray
    PV: np.ndarray
    PM: np.ndarray
    PL: np.ndarray
    PY: np.ndarray
    MEAN: np.ndarray
    M2: np.ndarray
    CNT: np.ndarray
    save_every: int
    substeps: int
    tau: float
    key0: int
    key1: int
    threads: int | None = None
    #: the step the run starts at (0, or 1 where the SDE starts after the first discrete step)
    k_start: int = 0
    #: the backend's own per-run data (device copies, launch shapes), set by :meth:`AbstractBackend.start`
    extra: dict = field(default_factory=dict)

    @property
    def paths(self) -> int:
        return int(self.state.shape[0])


def merge_blocks(n_b: np.ndarray, mean_b: np.ndarray, m2_b: np.ndarray):
    r"""Chan et al.'s combination of per-block statistics, all blocks at once (axis 0):
    $n = \sum_b n_b,\ \bar y = \sum_b n_b \bar y_b / n,\
    M_2 = \sum_b \big(M_{2,b} + n_b (\bar y_b - \bar y)^2\big)$; `n_b` has one axis fewer than
    `mean_b` and `m2_b` (the observables).  One block gives its own mean and `M2` unchanged."""
    n = n_b.sum(0)
    w = n_b[..., None]
    mean = (w * mean_b).sum(0) / np.maximum(n, 1)[..., None]
    return n, mean, (m2_b + w * (mean_b - mean[None]) ** 2).sum(0)


#: the type of what :meth:`AbstractBackend.build` returns (a module, a compiled GPU module, ...)
HandleT = TypeVar("HandleT")


class AbstractBackend(abc.ABC, Generic[HandleT]):
    """A kernel backend (see the module docstring for the order of the calls), generic in the type of its
    compiled handle.

    Instances hold no per-run data (that lives in `RunArrays`), so one instance can serve several
    simulators; `get_backend` returns a new one per call."""

    #: the name ``sd.compile(..., backend=...)`` and the CLI's ``--backend`` take
    name: ClassVar[str]

    @classmethod
    def available(cls) -> tuple[bool, str]:
        """`(True, "")` when this backend can build and run here, else `(False, reason)`, the reason
        precise enough to act on (which package is missing and how to install it, or that no device is
        visible).  Must not raise; the default says yes."""
        return True, ""

    @abc.abstractmethod
    def generate(self, spec, problem, scheme: str, dtype: str) -> KernelSource:
        """The kernel's source for `spec` on `problem` (`scheme` `"euler"` or `"weak2"`, `dtype`
        `"float64"` or `"float32"`).  Pure text generation: no compiler, no device, deterministic (the
        same inputs give the same text, which is the cache key)."""

    @abc.abstractmethod
    def build(self, source: KernelSource) -> HandleT:
        """Compile `source` into a handle `run_chunk` can launch.  Compiled code is cached on disk
        under the text's content hash, written atomically (a reader sees the old entry or the whole new
        one), so a second process loads it instead of compiling again.  Raises
        `BackendUnavailableError` when `available` is false."""

    def start(self, handle: HandleT, run: RunArrays) -> None:
        """Prepare one run before its first chunk: move the host arrays where the kernel reads them and
        keep whatever `run_chunk` needs in `run.extra`.  Default: nothing (the kernel reads the
        host arrays)."""
        return None

    def chunk_end(self, k: int, steps: int, save_every: int, chunk: int) -> int:
        """The step the chunk starting at `k` ends at.  `chunk` is the simulator's proposal (sized to
        `chunk_seconds`); the default takes it, a backend that reduces snapshots on the host between
        launches stops at the next save point instead."""
        return min(steps, k + chunk)

    @abc.abstractmethod
    def run_chunk(self, handle: HandleT, run: RunArrays, k_begin: int, k_end: int) -> None:
        """Advance every live path (`DIV < 0`) from step `k_begin` to `k_end` and add the snapshots
        of the save points in `(k_begin, k_end]` to `run.MEAN`/`run.M2`/`run.CNT` (see
        `RunArrays`).  A path whose state becomes non-finite, or whose observables at a save point
        are non-finite or at least `OBS_LIMIT` (`kernel_support`) in
        magnitude, gets its divergence step in `DIV` and adds nothing from then on.  Returns when the
        work is done (the time of the call is the kernel time `timing["run_s"]`); the random numbers are
        addressed by (path, step, coordinate), so any split of the steps into chunks gives the same
        numbers."""

    def any_diverged(self, run: RunArrays) -> bool:
        """Whether some path has diverged so far (read after every chunk).  Default: the host `DIV`."""
        return bool(np.any(run.DIV >= 0))

    def finish(self, handle: HandleT, run: RunArrays) -> None:
        """After the last chunk (also after an interruption): leave the final states in `run.state` and
        the divergence steps in `run.DIV`.  Default: nothing (the kernel wrote the host arrays)."""
        return None

    def reduce(self, n_b: np.ndarray, mean_b: np.ndarray, m2_b: np.ndarray):
        """`(n, mean, M2)` per snapshot and observable from the per-block `CNT`, `MEAN`, `M2`
        (axis 0 the blocks).  Default: `merge_blocks`."""
        return merge_blocks(n_b, mean_b, m2_b)

    def host_module(self, source: KernelSource, handle: HandleT):
        """A numba module of `source`'s spec and problem with `prob_loss` and `obs`, which the
        simulator calls on the host for the snapshots of the deterministic start and `keep_final`.
        Default: the numba backend's float64 twin of the kernel (built once per call; the simulator keeps
        it)."""
        nb = get_backend("numba")
        twin = nb.generate(source.spec, source.problem, source.scheme, "float64")
        return nb.host_module(twin, nb.build(twin))

r"""The loop vectoriser's width for the Gaussian block filler (and the Student-t filler's vectorised pass), and the
compile that applies it.

LLVM targets AVX-512 CPUs (Skylake-SP and later) with the tuning flag `prefer-256-bit`
(https://reviews.llvm.org/D67259): its loop vectoriser then uses 256-bit `ymm` registers, four doubles a
vector, even where 512-bit `zmm` registers run faster.  `fill_normals`' loop (Philox4x32-10 and the
Box–Muller polynomials, `philox.py`) is such a loop.  Called from a numba function on one core of the Intel Xeon
VM of `docs/benchmarks.md`, float64 normals/s at the vectorisation factor LLVM picks (4), forced 8 and forced 16:

| blocks of 4 normals a row | LLVM (4) | 8 | 16 |
| ---: | ---: | ---: | ---: |
| 25 (a row of d = 100: the kernels' call) | 2.4e8 | 3.2e8 | 2.3e8 |
| 50 | 2.3e8 | 3.6e8 | 4.5e8 |
| 200 | 2.4e8 | 4.3e8 | 4.8e8 |

16 lanes leave 9 of 25 blocks to the scalar remainder loop, 8 lanes one, so the filler is compiled with 8
(`philox.FILLER_WIDTH`: a constant of `philox.py`, so that changing it invalidates numba's on-disk cache of the
filler and, through `philox.SOURCE_HASH`, of every kernel).  Into float32 rows LLVM already picks 8 (`zmm`), and
forcing 8 changes nothing.  The numbers are the same bits at every width: each lane evaluates the same IEEE
operations, none is reassociated or contracted into an FMA (`tests/test_rng.py`).  `bench/bench_normals.py`
measures the table; the kernels gained 1.2x to 1.3x (`docs/benchmarks.md`, 6g).

numba has no per-function switch for this.  Its process-wide one, `NUMBA_CPU_FEATURES=-prefer-256-bit`, would
change every function of the user's process as well, so `wide_loops` sets LLVM's option `-force-vector-width`
for the filler's compiles only, under numba's compiler lock (no other thread compiles meanwhile), and resets it
to 0 (LLVM's own choice) afterwards.  numba compiles a dispatcher for new argument types through its `compile`
method in all three ways it can be asked to (an explicit `compile(sig)`, a call from Python, the typing of a
call from another jitted function such as a kernel), so wrapping that one method covers every compile; a load
from numba's on-disk cache compiles nothing and returns the code compiled at the forced width.  Hosts without
AVX-512, and processes where the user chose numba's target (`NUMBA_CPU_NAME` or `NUMBA_CPU_FEATURES`), keep
LLVM's choice: the width was measured on AVX-512 only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["host_width", "forced_vector_width", "wide_loops"]


def host_width(width: int) -> int:
    """`width` where numba compiles for this host and the host has AVX-512F; else 0 (LLVM's choice)."""
    import llvmlite.binding as ll
    from numba.core import config

    if config.CPU_NAME is not None or config.CPU_FEATURES is not None:
        return 0
    try:
        return width if ll.get_host_cpu_features().get("avx512f", False) else 0
    except RuntimeError:  # llvmlite cannot read the host's features
        return 0


@contextlib.contextmanager
def forced_vector_width(width: int) -> Iterator[None]:
    """Within the block, numba's compiles vectorise loops with `width` lanes (`0`: LLVM's cost model).

    Holds numba's global compiler lock for the block, so no other thread's compile sees the option."""
    import llvmlite.binding as ll
    from numba.core.compiler_lock import global_compiler_lock

    if width < 0 or width & (width - 1):  # LLVM aborts the process on a factor that is not a power of two
        raise ValueError(f"width must be 0 or a power of two, got {width}")
    with global_compiler_lock:
        if width:
            ll.set_option("", f"-force-vector-width={int(width)}")
        try:
            yield
        finally:
            if width:
                ll.set_option("", "-force-vector-width=0")


def wide_loops(width: int):
    """Decorator over `numba.njit`'s dispatcher: every compile of it runs under
    `forced_vector_width(host_width(width))`.  Where that is 0 the dispatcher is returned unchanged."""
    width = host_width(width)

    def wrap(dispatcher):
        if not width:
            return dispatcher
        plain = dispatcher.compile

        def compile(sig):  # noqa: ANN001, ANN202 - numba's own signature
            with forced_vector_width(width):
                return plain(sig)

        compile.__doc__ = plain.__doc__
        dispatcher.compile = compile
        return dispatcher

    return wrap

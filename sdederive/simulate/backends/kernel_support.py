r"""Kernel-independent pieces of the generated numba kernels, compiled once per machine.

Every generated kernel calls these instead of carrying its own copy, so their typing, lowering and
LLVM time is paid once per machine and then loaded from numba's on-disk cache (`cache=True`).
(A small part of a kernel's cold compile: dropping the whole snapshot block, including the calls of
the kernel-specific `prob_loss` and `obs`, saved about 0.1 to 0.6 s in noisy A/B runs.)  They
run once per snapshot, not per step, so the call costs nothing measurable.  Like
`sdederive.simulate.rng.philox`, the file's SHA-256 (`SOURCE_HASH`) is printed into every
generated module: numba's cache of a kernel only tracks the kernel's own file, and the hash makes
an edit here give every kernel a new name.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from numba import njit

__all__ = ["snapshot_add", "SOURCE_HASH", "OBS_LIMIT"]

#: an observable at or above this magnitude (``sqrt`` of the largest double) makes its path diverged:
#: its square, and so the variance across paths, would overflow
OBS_LIMIT = 1.3407807929942596e154

#: SHA-256 of this file (see the module docstring).
SOURCE_HASH = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


@njit(cache=True, nogil=True, error_model="numpy")
def snapshot_add(MEAN, M2, CNT, b, j, OBS, X0):
    r"""Add one path's snapshot to block `b`'s running statistics at save index `j`; returns
    `False` (and adds nothing) when an observable is non-finite or at least `OBS_LIMIT` in
    magnitude (a finite state whose loss overflowed): the kernel then marks the path diverged.

    `OBS[1]` is set to $|x|^2$ from `X0` (the parameter row), then Welford's update over
    the paths of the block, for every observable `o`:
    $n \leftarrow n + 1,\ \delta = y_o - \bar y_o,\ \bar y_o \mathrel{+}= \delta / n,\
    M_{2,o} \mathrel{+}= \delta (y_o - \bar y_o)$.  Blocks are combined on the host (Chan et al.),
    so the result does not depend on which thread ran which block."""
    sq = 0.0
    for i in range(X0.size):
        sq += X0[i] * X0[i]
    OBS[1] = sq
    for o in range(OBS.size):
        if not (abs(OBS[o]) < 1.3407807929942596e154):  # OBS_LIMIT; also False for NaN
            return False
    CNT[b, j] += 1
    cn = CNT[b, j]
    for o in range(OBS.size):
        dl = OBS[o] - MEAN[b, j, o]
        MEAN[b, j, o] += dl / cn
        M2[b, j, o] += dl * (OBS[o] - MEAN[b, j, o])
    return True

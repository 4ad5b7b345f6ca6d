"""The generated vector kernels are the same text in every process: operations are emitted in sympy's canonical
order, not in the order of a set of sympy objects (which follows Python's per-process hash seed), so a kernel
compiled once is found in the on-disk cache by the next process instead of being compiled again."""

from __future__ import annotations

import os
import subprocess
import sys

_CODE = r"""
import hashlib
import numpy as np
import sdederive as sd
from sdederive.simulate.backends.numba_vector import generate_vector
from sdederive.simulate.vector_lower import lower_discrete, lower_sde
from sdederive.spec import vector as V
H = np.array([[2.0, 0.6, -0.3], [0.6, 1.0, 0.4], [-0.3, 0.4, 0.7]])
S = np.array([[0.5, 0.2, -0.1], [0.2, 0.4, 0.15], [-0.1, 0.15, 0.6]])
prob = sd.Quadratic(H=H, Sigma=S, x0=[1.0, -1.0, 2.0])
srcs = [generate_vector(lower_discrete(V.get(n), prob), prob) for n in ("lamb", "sam", "adamw_clip")]
srcs += [generate_vector(lower_sde(sd.derive(n), prob), prob) for n in ("lamb", "adamw_clip")]
print(hashlib.sha1("".join(srcs).encode()).hexdigest())
"""


def test_vector_kernel_sources_do_not_depend_on_the_hash_seed():
    out = set()
    for seed in ("0", "1", "2", "3"):  # LAMB's discrete kernel printed its two norms in either order before
        env = dict(os.environ, PYTHONHASHSEED=seed)
        r = subprocess.run([sys.executable, "-c", _CODE], capture_output=True, text=True, env=env, check=True)
        out.add(r.stdout.strip())
    assert len(out) == 1, out

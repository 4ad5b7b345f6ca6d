"""Fused coordinate-wise loops of the numba vector kernels (`numba_vector.FUSE`): the same numbers, bit for bit,
as one loop per operation, with fewer loops in the source."""

from __future__ import annotations

import numpy as np
import pytest

import sdederive as sd
from sdederive.simulate.backends import numba_vector
from tests.test_vector_simulate import _dense


@pytest.mark.parametrize("target", ["sde-adamw_clip", "discrete-lamb"])
def test_fused_loops_give_the_same_paths(monkeypatch, target):
    mode, name = target.split("-")
    H, S = _dense(d=5, seed=3)
    prob = sd.Quadratic(H=H, Sigma=S, x0=[1.0, -0.5, 0.3, 0.8, -1.2])
    obj = sd.derive(name) if mode == "sde" else name
    out, loops = {}, {}
    for fuse in (False, True):
        monkeypatch.setattr(numba_vector, "FUSE", fuse)
        sim = sd.compile(obj, prob)
        loops[fuse] = sim.source.text.count("for i in range(d):")
        r = sim.run(paths=70, steps=25, seed=7, eta=0.02, keep_final=True)  # 70 paths: two row blocks
        out[fuse] = {k: v.copy() for k, v in r.final.items()}
    assert loops[True] < loops[False] - 3, loops
    for k in out[False]:
        np.testing.assert_array_equal(out[True][k], out[False][k], err_msg=k)

"""bench/bench_growth.py (issue 18's cost-growth tables and roofline) runs end to end at tiny sizes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_growth_benchmark_quick_prints_its_tables():
    """`--quick` exits 0 and prints the three tables; the memory table shows what the issue asks of the
    simulator: the state grows linearly with N (slope 1) and the snapshot statistics do not grow once N >= 64
    (their 64 blocks), and every roofline row has a positive, finite fraction of its bound."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_growth.py"), "--quick"], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    out = p.stdout
    assert "## Run time against N, d and T" in out
    for var in ("N", "d", "T"):
        m = re.search(rf"^  {var}: kernel (-?[\d.]+), end to end (-?[\d.]+) \(", out, re.M)
        assert m, f"no fitted slope for {var}"
        assert 0 < float(m.group(1)) < 2
    assert "## Host memory of one run against N" in out
    assert "snapshot statistics for N >= 64: constant" in out
    assert "STATE slope against N: 1.000" in out
    # the STATE column: N x S x d doubles (quick: d = 20, S = 2 states)
    for n in (10, 100, 1000):
        assert re.search(rf"^\| {n} \| \d+ \| {n * 2 * 20 * 8} \| 320 \|", out, re.M), n
    assert "## Roofline at d = 100" in out
    head = next(ln for ln in out.splitlines() if ln.startswith("| configuration |"))
    cols = [c.strip() for c in head.strip("|").split("|")]
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in out.splitlines()
            if ln.startswith(("| Gaussian-only", "| Student-t", "| minibatch logistic", "| dense H"))]
    assert [r[0].split()[0] for r in rows] == ["Gaussian-only", "Student-t", "minibatch", "dense", "dense"]
    for r in rows:
        assert len(r) == len(cols)
        for name in ("fraction of bound", "fraction of it"):
            assert 0 < float(r[cols.index(name)]) < 100, (r[0], name)

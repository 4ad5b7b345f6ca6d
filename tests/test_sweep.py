"""Sweeps: grids on a local process pool and on a real Dask LocalCluster, Parquet storage, resume
after a killed run, and the surge reproduction (optimal eta vs B peaks at B_noise)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import sdederive as sd
from sdederive import sweep
from sdederive.analysis.batchsize import sign_noise_scale
from sdederive.sweep.cli import surge_problem

D, RHO, C = 20, 0.5, 0.04


def _surge_grid(n_eta=12, seeds=2):
    ns = sign_noise_scale(C * np.ones(D), np.ones(D), (1 - RHO) * np.eye(D) + RHO * np.ones((D, D)))
    return ns, sweep.Grid(optimizer=["signsgd"], eta=ns.eps_max * np.geomspace(0.15, 2.5, n_eta),
                          B=[4, 16, 64, 128, 256, 1024], seed=range(seeds))


def test_grid_cells_and_ids():
    g = sweep.Grid(optimizer=["sgd", "adam"], eta=[0.1, 0.01], seed=range(3))
    cells = g.cells()
    assert len(g) == len(cells) == 12 and len({c["cell_id"] for c in cells}) == 12
    assert sweep.cell_id({"eta": 0.1, "optimizer": "sgd", "seed": 0}) == sweep.cell_id(
        {"seed": np.int64(0), "optimizer": "sgd", "eta": np.float64(0.1)})
    g2 = sweep.Grid.from_dict({"eta": {"geomspace": [1e-3, 1e-1, 3]}, "B": {"pow2": [4, 32]}, "seed": {"range": [0, 2]}})
    assert g2.axes["B"] == [4, 8, 16, 32] and len(g2) == 24
    with pytest.raises(sd.SdederiveError, match="not > 0"):
        sweep.Grid(eta=[0.1, -1])
    with pytest.raises(sd.SdederiveError, match="integer >= 1"):
        sweep.Grid(eta=[0.1], B=[0])
    with pytest.raises(sd.SdederiveError, match="unknown generator 'logspace'"):
        sweep.Grid.from_dict({"eta": {"logspace": [1, 2, 3]}})


def test_surge_sweep_on_a_local_pool(tmp_path):
    """The surge reproduction as a sweep: optimal eta per B follows the exact eq. 9 and peaks at B_noise."""
    ns, grid = _surge_grid()
    res = sweep.run(grid, surge_problem(D, RHO, C), steps=1, paths=2000, out=tmp_path / "r", max_workers=2,
                    progress=False)
    assert len(res) == len(grid)
    opt = res.optimal("eta", by="B")
    exact = ns.eps_opt_exact(opt.groups)
    assert np.all(np.abs(opt.best / exact - 1) < 0.1), (opt.best, exact)
    peak = opt.groups[int(np.argmax(opt.best))]
    assert 64 <= peak <= 256 and ns.B_noise == pytest.approx(103.3, rel=1e-3)
    assert np.all(opt.lo <= opt.best + 1e-12) and np.all(opt.best <= opt.hi + 1e-12)
    fit = opt.fit_surge()
    assert 50 < fit["B_noise"] < 250
    opt.plot(tmp_path / "surge.png")
    assert (tmp_path / "surge.png").stat().st_size > 1000
    files = sorted(p.name for p in (tmp_path / "r").iterdir())
    assert files == ["results.parquet"]  # compacted, no temp files left
    tab = pq.read_table(tmp_path / "r" / "results.parquet")
    assert tab.num_rows == len(grid) and "final_loss" in tab.column_names
    with pytest.raises(sd.SdederiveError, match="already holds results"):
        sweep.run(grid, surge_problem(D, RHO, C), steps=1, paths=2000, out=tmp_path / "r", progress=False)
    again = sweep.run(grid, surge_problem(D, RHO, C), steps=1, paths=2000, out=tmp_path / "r", resume=True,
                      progress=False)
    assert len(again) == len(grid) and again.wall < res.wall  # nothing left to run


def test_dask_local_cluster_gives_the_same_numbers(tmp_path):
    """A real distributed.LocalCluster (scheduler and 2 worker processes on loopback) through
    client.get_executor(): same rows as the local pool (same seeds, same kernels)."""
    distributed = pytest.importorskip("distributed")
    _, grid = _surge_grid(n_eta=4, seeds=1)
    prob = surge_problem(D, RHO, C)
    local = sweep.run(grid, prob, steps=1, paths=500, max_workers=2, progress=False)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        dres = sweep.run(grid, prob, steps=1, paths=500, executor=client.get_executor(), out=tmp_path / "d",
                         progress=False)
    key = lambda r: r["cell_id"]  # noqa: E731
    a = sorted(local.rows, key=key)
    b = sorted(dres.rows, key=key)
    assert [r["cell_id"] for r in a] == [r["cell_id"] for r in b]
    assert np.allclose([r["final_loss"] for r in a], [r["final_loss"] for r in b], rtol=0, atol=0)


def test_resume_after_a_killed_sweep(tmp_path):
    """Kill the driver (SIGKILL) mid-sweep: every part on disk is complete and readable, resume runs only
    the missing cells, and the result equals an uninterrupted run."""
    out = tmp_path / "res"
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import numpy as np
        from sdederive import sweep
        from sdederive.sweep.cli import surge_problem
        if __name__ == "__main__":
            grid = sweep.Grid(optimizer=["signsgd"], eta=np.geomspace(1e-3, 1e-2, 8), B=[4, 64, 1024], seed=[0])
            sweep.run(grid, surge_problem(20, 0.5, 0.04), steps=300, paths=1000, out={str(out)!r}, max_workers=1,
                      progress=False)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("part-*.parquet"))) < 3:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    parts = list(out.glob("part-*.parquet"))
    assert 3 <= len(parts) < 24, len(parts)
    for p in parts:
        assert pq.read_table(p).num_rows == 1  # never a half-written file
    assert not list(out.glob("results.parquet"))
    done = sweep.done_ids(out)
    grid = sweep.Grid(optimizer=["signsgd"], eta=np.geomspace(1e-3, 1e-2, 8), B=[4, 64, 1024], seed=[0])
    res = sweep.run(grid, surge_problem(20, 0.5, 0.04), steps=300, paths=1000, out=out, resume=True, max_workers=2,
                    progress=False)
    assert len(res) == 24 and len(done) >= 3
    ref = sweep.run(grid, surge_problem(20, 0.5, 0.04), steps=300, paths=1000, max_workers=2, progress=False)
    got = {r["cell_id"]: r["final_loss"] for r in res.rows}
    assert all(got[r["cell_id"]] == r["final_loss"] for r in ref.rows)
    leftovers = [p for p in out.iterdir() if p.name != "results.parquet"]
    assert not leftovers, leftovers


def test_cli_sweep(tmp_path, capsys):
    from sdederive.cli.main import main

    toml = tmp_path / "grid.toml"
    toml.write_text(textwrap.dedent("""
        steps = 1
        paths = 1000
        [problem]
        preset = "surge"
        d = 20
        rho = 0.5
        c = 0.04
        [grid]
        optimizer = ["signsgd"]
        eta = {geomspace = [1e-3, 1.5e-2, 8]}
        B = {pow2 = [4, 1024]}
        seed = {range = [0, 2]}
        [analysis]
        fit = "surge"
    """))
    assert main(["sweep", str(toml), "--out", str(tmp_path / "o"), "--workers", "2", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "144 cells" in text and "surge fit: B_noise" in text and (tmp_path / "o" / "optimal.png").exists()
    bad = tmp_path / "bad.toml"
    bad.write_text("steps = 1\n[grid]\neta = [0.1]\n[extra]\n")
    assert main(["sweep", str(bad), "--out", str(tmp_path / "b")]) == 2
    assert "unknown key(s) ['extra']" in capsys.readouterr().err


def test_run_bad_input(tmp_path):
    g = sweep.Grid(eta=[0.1])
    prob = sd.Quadratic(h=[1.0], sigma=[1.0], x0=[1.0])
    with pytest.raises(sd.SdederiveError, match="mode="):
        sweep.run(g, prob, mode="fast", progress=False)
    with pytest.raises(sd.SdederiveError, match="needs out="):
        sweep.run(g, prob, resume=True, progress=False)
    with pytest.raises(sd.SdederiveError, match="no 'eta' axis"):
        sweep.run(sweep.Grid(seed=[0]), prob, progress=False)
    Path(tmp_path).mkdir(exist_ok=True)


def test_script_without_main_guard_gets_a_clear_error(tmp_path):
    """A script calling sd.sweep.run at module level breaks the spawn pool (each worker re-imports the
    script and Python stops the nested start); the error says to add the main guard, not BrokenProcessPool."""
    script = tmp_path / "my_sweep.py"
    script.write_text(textwrap.dedent("""
        import sdederive as sd
        problem = sd.Quadratic(h=[1.0], sigma=[1.0], x0=[1.0])
        grid = sd.sweep.Grid(optimizer=["sgd"], eta=[0.1])
        sd.sweep.run(grid, problem, steps=1, paths=10, max_workers=1, progress=False)
    """))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode != 0
    assert "SdederiveError" in r.stderr and 'if __name__ == "__main__":' in r.stderr, r.stderr[-2000:]
    assert "my_sweep.py" in r.stderr
    # with the guard the same script runs
    body = script.read_text().replace("sd.sweep.run(", "if __name__ == '__main__':\n    sd.sweep.run(")
    script.write_text(body)
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]


def test_compact_removes_the_temporary_files_of_killed_writes(tmp_path):
    """A driver killed between `atomic_write`'s temporary file and its rename leaves `.part-<id>.parquet.<r>.tmp`
    (seen once in CI on test_resume_after_a_killed_sweep); `compact` at the end of the resumed run removes it and
    a stale `.results.parquet.<r>.tmp`, and keeps every finished cell."""
    from sdederive.sweep import store

    out = tmp_path / "res"
    store.write_row(out, {"cell_id": "a1", "final_loss": 1.5})
    store.write_row(out, {"cell_id": "b2", "final_loss": 2.5})
    (out / ".part-c3.parquet.x1y2z3.tmp").write_bytes(b"half a parquet file")
    (out / ".results.parquet.q9w8e7.tmp").write_bytes(b"")
    table = store.compact(out)
    assert sorted(table.column("cell_id").to_pylist()) == ["a1", "b2"]
    assert sorted(p.name for p in out.iterdir()) == ["results.parquet"]

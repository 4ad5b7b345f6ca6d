"""An SDE carries its optimizer, in memory and in JSON (issue 15, point 2).

A user-written Adagrad (``sd.from_update``, another name, its accumulator declared by kind) must
simulate *identically* to the built-in ``adagrad`` (same seed: the same numbers, not merely close),
in discrete and in SDE mode, also after an SDE JSON round trip.  On the old code the JSON dropped the
optimizer: the loaded SDE then had no state kinds and no initial values (the simulators looked the name
up among the built-ins and found nothing), so it started its accumulator at ``u = 0`` at step 0 instead
of at the expected first step; :func:`test_old_json_without_source_loses_the_accumulator_start` shows
that difference on this very set-up, which is what the round-trip test would have measured.

Also: ``Optimizer.to_json``/``from_json`` round trips (every built-in, byte-reproducible), the kinds as
str-enums, ``--spec FILE.py:NAME`` / ``--spec FILE.json`` on the command line (derive, simulate, validate,
sweep) with their error messages, and hostile optimizer JSON, which is refused and runs nothing.
"""

from __future__ import annotations

import json
import re
import textwrap

import numpy as np
import pytest
import sympy as sp

import sdederive as sd
from sdederive.cli.main import main
from sdederive.spec.kinds import HyperKind, StateKind
from sdederive.spec.optimizers import BUILTINS, UNDERIVABLE, Optimizer

ETA, PATHS, STEPS, SEED = 0.05, 64, 30, 7


def _my_adagrad(init: float = 0.0) -> Optimizer:
    """Adagrad written out by hand: the same rule as the built-in, another name, kinds given as strings."""
    x, g, v = sd.symbols("x g v")
    eta, eps = sd.sym("eta"), sd.sym("eps")
    v1 = v + g**2
    return sd.from_update("my_adagrad", {"v": v1, "x": x - eta * g / (sp.sqrt(v1) + eps)},
                          {"eta": (1e-2, "lr"), "eps": (1e-10, "eps")}, init={"v": init},
                          kinds={"v": "accumulator"}, natural_regime="accumulator")


@pytest.fixture(scope="module")
def problem():
    return sd.Quadratic(h=np.array([0.5, 2.0]), sigma=np.array([0.7, 0.3]), x0=np.array([1.0, -1.5]))


def _run(obj, problem):
    return sd.compile(obj, problem).run(eta=ETA, paths=PATHS, steps=STEPS, seed=SEED, save_every=5)


def _assert_identical(a, b):
    np.testing.assert_array_equal(a.t, b.t)
    for key in ("loss", "x"):
        np.testing.assert_array_equal(a.mean[key], b.mean[key])


@pytest.fixture(scope="module")
def builtin_sde_run(problem):
    return _run(sd.derive("adagrad"), problem)


# -- (a), (b): identical simulations -------------------------------------------------------------------------


def test_user_adagrad_simulates_identically_discrete(problem):
    ref, mine = _run(sd.optimizers.get("adagrad"), problem), _run(_my_adagrad(), problem)
    _assert_identical(ref, mine)
    assert np.all(np.diff(mine.mean["v"][:, 0]) > 0)  # the accumulator does accumulate


def test_user_adagrad_simulates_identically_sde(problem, builtin_sde_run):
    mine = sd.derive(_my_adagrad())
    assert mine.source == _my_adagrad() and mine.noise_model == sd.noise.get("gaussian")
    _assert_identical(builtin_sde_run, _run(mine, problem))


def test_user_adagrad_after_json_round_trip_simulates_identically(problem, builtin_sde_run):
    sde = sd.derive(_my_adagrad())
    text = sde.to_json()
    d = json.loads(text)
    assert d["source"]["name"] == "my_adagrad" and d["noise_model"] == {"name": "gaussian", "params": {}}
    back = sd.SDE.from_json(text)
    assert back.source == _my_adagrad()  # kinds, initial values, update rule: all of it
    assert back.source.state_decl("v").kind is StateKind.ACCUMULATOR
    assert back.noise_model == sde.noise_model and back == sde
    assert back.to_json() == text
    _assert_identical(builtin_sde_run, _run(back, problem))
    sim = sd.compile(back, problem)
    k0, st = sim.initial_state(sim.resolve_hyper(ETA))
    assert k0 == 1 and np.all(st["u"] > 0)  # starts at the expected first step, not at u = 0


def test_old_json_without_source_loses_the_accumulator_start(problem, builtin_sde_run):
    """(c) What the old code did: its JSON had no "source", so the loaded SDE knew nothing of the user's
    accumulator.  Such a file still loads, but it simulates differently from the built-in (it starts at
    v = 0, step 0): the round-trip test above would have failed on the old code."""
    d = json.loads(sd.derive(_my_adagrad()).to_json())
    del d["source"], d["noise_model"]
    old = sd.SDE.from_json(d)
    assert old.source is None and old.noise_model is None
    sim = sd.compile(old, problem)
    k0, st = sim.initial_state(sim.resolve_hyper(ETA))
    assert k0 == 0 and np.all(st["u"] == 0)
    res = sim.run(eta=ETA, paths=PATHS, steps=STEPS, seed=SEED, save_every=5)
    assert not np.array_equal(res.mean["loss"], builtin_sde_run.mean["loss"])


def test_nonzero_initial_accumulator_survives_the_json(problem):
    """PyTorch's initial_accumulator_value: the loaded SDE starts from it (old code: from 0)."""
    sde = sd.derive(_my_adagrad(init=0.25))
    back = sd.SDE.from_json(sde.to_json())
    assert back.source.state_decl("v").init == 0.25
    sim = sd.compile(back, problem)
    k0, st = sim.initial_state(sim.resolve_hyper(ETA))
    assert k0 == 0 and np.allclose(st["u"], ETA**2 * 0.25)  # u = eta**2 * v, v(0) = 0.25


# -- Optimizer JSON ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BUILTINS) + sorted(UNDERIVABLE))
def test_every_builtin_round_trips_exactly(name):
    opt = sd.optimizers.get(name)
    text = opt.to_json()
    back = Optimizer.from_json(text)
    assert back == opt and back.transforms == opt.transforms
    assert [s for s, _ in back.update] == [s for s, _ in opt.update]
    assert all(sp.srepr(a) == sp.srepr(b) for (_, a), (_, b) in zip(back.update, opt.update))
    assert back.to_json() == text  # byte-reproducible
    assert list(json.loads(text)) == sorted(json.loads(text))


def test_floats_keep_every_digit():
    x, g = sd.symbols("x g")
    opt = sd.from_update("f3", {"x": x - sd.sym("eta") * 0.30000000000000004 * g},
                         {"eta": (0.1 + 0.2, "lr")})
    back = Optimizer.from_json(opt.to_json())
    assert back == opt and back.hyper["eta"].default == 0.30000000000000004


def test_unserializable_update_is_refused_by_name():
    x, g = sd.symbols("x g")
    opt = sd.from_update("pw", {"x": x - sd.sym("eta") * sp.Piecewise((g, g > 0), (0, True))}, {"eta": (0.1, "lr")})
    with pytest.raises(sd.SpecError, match="update of 'x' cannot be written as JSON: it uses Piecewise"):
        opt.to_json()
    custom = sd.from_update("rg", {"x": x - sd.sym("eta") * g}, {"eta": (0.1, "lr")},
                            natural_regime=sd.regimes.get("sgd"))
    with pytest.raises(sd.SpecError, match="the natural regime .* cannot be written as JSON; allowed: a regime name"):
        custom.to_json()
    with pytest.raises(sd.SdederiveError, match="Piecewise"):
        sd.SDE(optimizer="pw", noise="gaussian", regime="sgd", states=("x",), drift={"x": -sd.sym("grad")},
               diffusion_matrix=sp.zeros(1, 0), covariance=sp.zeros(1, 1), tau=sd.sym("eta"), source=opt).to_json()


def test_student_t_noise_model_round_trips():
    sde = sd.derive("signsgd", "student-t", nu=3)
    d = json.loads(sde.to_json())
    assert d["noise_model"] == {"name": "student-t", "params": {"nu": 3}}
    back = sd.SDE.from_json(d)
    assert back.noise_model == sd.noise.get("student-t", nu=3) and back.source == sd.optimizers.get("signsgd")


# -- kinds ----------------------------------------------------------------------------------------------------


def test_kinds_are_str_enums_that_accept_the_old_strings():
    opt = _my_adagrad()
    assert opt.state_decl("v").kind is StateKind.ACCUMULATOR and opt.state_decl("v").kind == "accumulator"
    assert opt.hyper["eps"].kind is HyperKind.EPS and f"{opt.hyper['eps'].kind}" == "eps"
    assert sd.Hyper("gamma", 0.9, "decay").kind is HyperKind.DECAY
    with pytest.raises(sd.SpecError, match="state 'v': kind 'accumulater' is unknown; valid kinds: aux, "):
        sd.from_update("typo", {"v": sd.sym("v") + sd.sym("g") ** 2, "x": sd.sym("x") - sd.sym("g")}, {},
                       kinds={"v": "accumulater"})


def test_kind_not_name_decides_a_second_moment():
    """A second moment named 'm' (a reserved real name) is declared by kind; the old code special-cased the
    names 'v'/'u' and raised a bare ValueError from the symbol registry for any other reserved name."""
    x, g, m = sd.symbols("x g m")
    b, eta = sd.sym("beta"), sd.sym("eta")
    m1 = b * m + (1 - b) * g**2
    opt = sd.from_update("rms_m", {"m": m1, "x": x - eta * g / sp.sqrt(m1 + sd.sym("eps"))},
                         {"eta": (1e-2, "lr"), "beta": (0.99, "decay"), "eps": (1e-8, "eps")},
                         kinds={"m": "second_moment"}, natural_regime="noise-dominated")
    assert opt.state_decl("m").kind is StateKind.SECOND_MOMENT
    assert Optimizer.from_json(opt.to_json()) == opt


# -- hostile optimizer JSON (e) -------------------------------------------------------------------------------


def _adagrad_dict() -> dict:
    return json.loads(_my_adagrad().to_json())


@pytest.mark.parametrize("expr,msg", [
    ("__import__('os').system('touch {marker}')", "not attribute access"),
    ("__import__('os')", "the function '__import__' is not allowed"),
    ("g**10**10", "exponent .* is too large"),
    ("9**9**9", "too large"),
    ("x.__class__", "attribute access"),
    ("x - eta*g*unknown", "unknown name 'unknown'"),
])
def test_hostile_expression_is_refused_and_runs_nothing(tmp_path, expr, msg):
    marker = tmp_path / "marker"
    d = _adagrad_dict()
    d["update"][-1]["expr"] = expr.format(marker=marker)
    with pytest.raises(sd.SdederiveError, match=msg):
        Optimizer.from_json(json.dumps(d))
    sde = json.loads(sd.derive(_my_adagrad()).to_json())
    sde["source"] = d
    with pytest.raises(sd.SdederiveError, match=msg):
        sd.SDE.from_json(sde)
    assert not marker.exists()


@pytest.mark.parametrize("change,msg", [
    (lambda d: d.update(name="a\nimport os"), "name = .* is not a valid name"),
    (lambda d: d["states"][0].update(kind="second moment!"), "kind 'second moment!' is unknown; allowed: aux"),
    (lambda d: d["hypers"][0].update(kind=["lr"]), "kind .* is unknown"),
    (lambda d: d["hypers"][0].update(default=float("nan")), "finite number"),
    (lambda d: d["states"][0].update(init="0"), "init of state 'v' = 0 is not allowed"),
    (lambda d: d.update(evil=1), "unknown key"),
    (lambda d: d.pop("update"), "missing the key 'update'"),
    (lambda d: d["update"].append({"state": "x", "expr": "x"}), "updated twice"),
    (lambda d: d["update"][0].update(expr=3), "expression string"),
    (lambda d: d.update(hypers=[{"name": "eta", "kind": "lr"}] * 100), "at most 64"),
    (lambda d: d.update(format="something-else"), "format"),
])
def test_bad_optimizer_json_structure(change, msg):
    d = _adagrad_dict()
    change(d)
    with pytest.raises(sd.SdederiveError, match=msg):
        Optimizer.from_json(json.dumps(d))


def test_bad_sde_json_source_and_noise_model():
    base = json.loads(sd.derive(_my_adagrad()).to_json())
    for change, msg in [
        (lambda d: d["source"].update(name="other"), "source is the optimizer 'other'"),
        (lambda d: d.update(noise_model={"name": "student-t", "params": {"nu": -1}}), "nu"),
        (lambda d: d.update(noise_model={"name": "laplace"}), "noise_model name 'laplace' is unknown"),
        (lambda d: d.update(noise_model={"name": "gaussian", "params": {"sigma": "1"}}), "not a finite number"),
        (lambda d: d.update(noise_model={"name": "student-t", "params": {"nu": 3}}), "labelled 'student-t'"),
    ]:
        d = json.loads(json.dumps(base))
        change(d)
        with pytest.raises(sd.SdederiveError, match=msg):
            sd.SDE.from_json(d)


# -- CLI (d) --------------------------------------------------------------------------------------------------

_PY = """
import sympy as sp
import sdederive as sd

x, g, v = sd.symbols("x g v")
eta, eps = sd.sym("eta"), sd.sym("eps")
v1 = v + g**2
my_adagrad = sd.from_update("my_adagrad", {"v": v1, "x": x - eta*g/(sp.sqrt(v1) + eps)},
                            {"eta": (1e-2, "lr"), "eps": (1e-10, "eps")}, kinds={"v": "accumulator"},
                            natural_regime="accumulator")

def make():
    return my_adagrad

three = 3
"""


@pytest.fixture()
def spec_files(tmp_path):
    py = tmp_path / "my_opt.py"
    py.write_text(_PY)
    js = tmp_path / "my_adagrad.json"
    js.write_text(_my_adagrad().to_json())
    return py, js


def _cli(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_derive_spec_py_and_json(capsys, spec_files):
    py, js = spec_files
    expected = json.loads(sd.derive(_my_adagrad()).to_json())
    for spec in (f"{py}:my_adagrad", f"{py}:make", str(js)):
        rc, out, err = _cli(capsys, "derive", "--spec", spec, "--json")
        assert rc == 0 and err == "", err
        d = json.loads(out)
        assert d == expected and d["optimizer"] == "my_adagrad" and d["regime"] == "accumulator"
    # an SDE JSON written by `derive --json` names its optimizer too
    sde_file = py.parent / "sde.json"
    sde_file.write_text(json.dumps(expected))
    rc, out, _ = _cli(capsys, "derive", "--spec", str(sde_file), "--json")
    assert rc == 0 and json.loads(out) == expected


def test_cli_simulate_spec_matches_the_builtin(capsys, spec_files):
    py, js = spec_files
    common = ("--mode", "discrete", "--paths", "16", "--steps", "20", "--seed", "3", "--json")
    rc, out, err = _cli(capsys, "simulate", "adagrad", *common)
    assert rc == 0, err
    ref = json.loads(out)
    for spec in (f"{py}:make", str(js)):
        rc, out, err = _cli(capsys, "simulate", "--spec", spec, *common)
        assert rc == 0, err
        mine = json.loads(out)
        assert mine["name"] == "my_adagrad" and mine["mean"] == ref["mean"]


@pytest.mark.parametrize("args,msg", [
    (["--spec", "{py}"], "names no object; allowed: .*my_opt.py:NAME"),
    (["--spec", "{py}:nope"], "defines no 'nope'; Optimizer objects in it: my_adagrad"),
    (["--spec", "{py}:three"], "three is of type int, not an Optimizer"),
    (["--spec", "{dir}/missing.json"], "the file '.*missing.json' does not exist"),
    (["--spec", "{dir}/missing.py:x"], "the file '.*missing.py' does not exist"),
    (["--spec", "{dir}/bad.json"], "not valid JSON"),
    (["--spec", "{dir}/opt.txt"], "is not allowed; allowed: FILE.json or FILE.py:NAME"),
    (["--spec", "{dir}/raises.py:f"], "running the file raised ZeroDivisionError"),
    (["sgd", "--spec", "{dir}/x.json"], "both OPT \\(sgd\\) and --spec"),
    ([], "no optimizer: give a built-in OPT"),
])
def test_cli_bad_spec_errors(capsys, spec_files, args, msg):
    py, _ = spec_files
    (py.parent / "bad.json").write_text("{not json")
    (py.parent / "raises.py").write_text("1/0\n")
    argv = [a.format(py=py, dir=py.parent) for a in args]
    for cmd in ("derive", "validate"):
        rc, out, err = _cli(capsys, cmd, *argv)
        assert rc == 2 and out == ""
        last = err.strip().splitlines()[-1]
        assert last.startswith("sdederive: error: ") and re.search(msg, last), err
        usage = "both OPT" in msg or "no optimizer" in msg  # a usage error prints the usage first
        assert err.startswith("usage: ") == usage
        assert usage or len(err.strip().splitlines()) == 1, err


def test_cli_hostile_json_spec_runs_nothing(capsys, tmp_path):
    marker = tmp_path / "marker"
    d = _adagrad_dict()
    d["update"][0]["expr"] = f"__import__('pathlib').Path({str(marker)!r}).write_text('x')"
    f = tmp_path / "evil.json"
    f.write_text(json.dumps(d))
    rc, _, err = _cli(capsys, "derive", "--spec", str(f))
    assert rc == 2 and "update of v" in err and "not attribute access" in err
    assert not marker.exists()


def test_sweep_grid_spec_is_json_only_and_relative(capsys, tmp_path):
    (tmp_path / "opt.py").write_text(_PY)
    grid = tmp_path / "sub" / "g.toml"
    grid.parent.mkdir()
    grid.write_text(textwrap.dedent("""
        steps = 2
        paths = 4
        spec = "../opt.py:make"
        [problem]
        kind = "quadratic"
        h = [1.0]
        sigma = [1.0]
        x0 = [1.0]
        [grid]
        eta = [0.1]
    """))
    rc, _, err = _cli(capsys, "sweep", str(grid), "--out", str(tmp_path / "out"), "--workers", "1", "--quiet")
    assert rc == 2 and "Python files are not accepted here" in err
    grid.write_text(grid.read_text().replace('"../opt.py:make"', '"missing.json"'))
    rc, _, err = _cli(capsys, "sweep", str(grid), "--out", str(tmp_path / "out"), "--workers", "1", "--quiet")
    assert rc == 2 and "sub/missing.json' does not exist" in err, err


def test_sweep_file_runs_a_json_spec(capsys, tmp_path, monkeypatch):
    """A sweep file's spec = "x.json" (relative to the sweep file) runs that optimizer; threads instead of
    processes keep the test fast (the process pool is what test_sweep.py covers)."""
    import concurrent.futures as cf

    from sdederive.sweep import load

    monkeypatch.setattr(cf, "ProcessPoolExecutor", lambda max_workers=None, **kw: cf.ThreadPoolExecutor(max_workers))
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "mine.json").write_text(_my_adagrad().to_json())
    grid = tmp_path / "g.toml"
    grid.write_text(textwrap.dedent("""
        steps = 3
        paths = 8
        spec = ["specs/mine.json"]
        [problem]
        kind = "quadratic"
        h = [0.5, 2.0]
        sigma = [0.7, 0.3]
        x0 = [1.0, -1.5]
        [grid]
        optimizer = ["my_adagrad", "adagrad"]
        eta = [0.05]
    """))
    rc, out, err = _cli(capsys, "sweep", str(grid), "--out", str(tmp_path / "out"), "--workers", "1", "--quiet")
    assert rc == 0, err
    rows = {r["optimizer"]: r for r in load(tmp_path / "out").to_pylist()}
    assert set(rows) == {"my_adagrad", "adagrad"}
    assert rows["my_adagrad"]["final_loss"] == rows["adagrad"]["final_loss"]  # the same rule, the same seed


def test_sweep_runs_a_spec_in_process(tmp_path, problem):
    """runner.run with specs: the grid gets the spec's name as its optimizer axis; the row equals the
    built-in's (same seed) because the rule is the same.  A one-worker thread pool keeps it in-process."""
    import concurrent.futures as cf

    from sdederive.sweep import Grid, run

    with cf.ThreadPoolExecutor(1) as ex:
        mine = run(Grid(eta=[0.05]), problem, steps=5, paths=8, executor=ex, specs=[_my_adagrad()], progress=False)
        ref = run(Grid(eta=[0.05], optimizer=["adagrad"]), problem, steps=5, paths=8, executor=ex, progress=False)
    (a,), (b,) = mine.rows, ref.rows
    assert a["optimizer"] == "my_adagrad" and a["final_loss"] == b["final_loss"]
    with pytest.raises(sd.SdederiveError, match="allowed: sdederive Optimizer objects"):
        run(Grid(eta=[0.05]), problem, steps=5, paths=8, specs=["adagrad"], progress=False)

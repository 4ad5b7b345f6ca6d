"""Review of the files users share (problem files, SDE / optimizer JSON, sweep grids and sweep files):
each hostile input below gave a raw traceback, was silently ignored or could exhaust the machine before;
now it is a `SdederiveError` naming the value and what is allowed."""

from __future__ import annotations

import argparse
import json

import pytest

import sdederive as sd
from sdederive.errors import MemoryLimitError, NoiseModelError, SdederiveError
from sdederive.problems import Custom, LogisticRegression, Quadratic, from_dict, load
from sdederive.sweep.grid import Grid

_LONG_INT = "9" * 5000  # beyond Python's 4300-digit limit for int(text): json.loads raised a bare ValueError


# -- JSON text: duplicate keys, long integers, deep nesting -------------------------------------------------------


def test_problem_file_with_a_key_twice_is_refused(tmp_path):
    # json.loads keeps the last "h" silently: the file would simulate h = 100 although it also says h = 1
    f = tmp_path / "p.json"
    f.write_text('{"kind": "quadratic", "h": [1], "sigma": [1], "h": [100], "x0": [1]}')
    with pytest.raises(sd.problems.ProblemError, match="'h' appears twice"):
        load(f)


def test_sde_json_with_a_key_twice_is_refused():
    text = sd.derive("sgd").to_json()
    twice = text.replace('{\n  "optimizer"', '{\n  "tau": "2*eta",\n  "optimizer"', 1)
    assert twice.count('"tau"') == 2
    with pytest.raises(SdederiveError, match="'tau' appears twice"):
        sd.SDE.from_json(twice)
    nested = text.replace('"drift": {', '"drift": {"x": "grad", ', 1)  # a key twice in a nested object
    with pytest.raises(SdederiveError, match="'x' appears twice"):
        sd.SDE.from_json(nested)


def test_optimizer_json_with_a_key_twice_is_refused(tmp_path):
    text = sd.optimizers.get("sgd").to_json()
    twice = "{" + '"name": "other", ' + text.lstrip()[1:]
    with pytest.raises(sd.errors.SpecError, match="'name' appears twice"):
        sd.optimizers.Optimizer.from_json(twice)
    f = tmp_path / "o.json"
    f.write_text(twice)
    from sdederive.cli._common import load_spec

    with pytest.raises(sd.errors.SpecError, match="'name' appears twice"):
        load_spec(str(f))


@pytest.mark.parametrize("reader", ["problem", "sde", "vector_sde", "optimizer", "spec_file"])
def test_integer_with_too_many_digits_is_an_error(tmp_path, reader):
    text = '{"kind": "quadratic", "h": [' + _LONG_INT + '], "sigma": [1], "x0": [1]}'
    f = tmp_path / "x.json"
    f.write_text(text)
    from sdederive.cli._common import load_spec
    from sdederive.sde_vector import VectorSDE

    call = {"problem": lambda: load(f), "sde": lambda: sd.SDE.from_json(text),
            "vector_sde": lambda: VectorSDE.from_json(text),
            "optimizer": lambda: sd.optimizers.Optimizer.from_json(text), "spec_file": lambda: load_spec(str(f))}
    with pytest.raises(SdederiveError, match="too many digits"):
        call[reader]()


def test_problem_file_nested_too_deeply_is_an_error(tmp_path):
    f = tmp_path / "deep.json"
    f.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(sd.problems.ProblemError, match="nested too deeply"):
        load(f)


# -- problem files ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, match", [
    ({"kind": ["quadratic"]}, "unknown problem kind"),
    ({"kind": "logistic", "A": [[1.0, 0.0], [0.0, 1.0]]}, r"needs the field\(s\) \['y'\]"),
    ({"kind": "logistic", "synthetic": [512, 10]}, "'synthetic' must be an object"),
    ({"kind": "logistic", "synthetic": {"n": 16, "d": 2, "rows": 3}}, r"unknown field\(s\) \['rows'\] of 'synthetic'"),
    ({"kind": "logistic", "synthetic": {"n": 16, "d": 2, "B": 4}}, r"unknown field\(s\) \['B'\]"),
    ({"kind": "logistic", "synthetic": {"n": 16, "d": 2, "seed": 1.5}}, "seed=1.5 is invalid"),
    ({"kind": "logistic", "synthetic": {"n": 16, "d": 2, "seed": -1}}, "seed=-1 is invalid"),
    ({"kind": "logistic", "synthetic": {"n": 16, "d": 2.5}}, "d=2.5 is invalid"),
    ({"kind": "logistic", "synthetic": {"n": 1, "d": 2}}, "n=1 is invalid"),
    ({"kind": "logistic", "synthetic": {"n": 16, "d": 2, "l2": 0.1}, "l2": 0.2}, "l2 is given twice"),
    ({"kind": "logistic", "synthetic": {"n": 16, "d": 2}, "A": [[1.0], [2.0]], "y": [1, -1]},
     "either 'synthetic' or 'A' and 'y'"),
    ({"kind": "logistic", "A": [[1.0], [2.0]], "y": [1, -1], "B": 10**400}, "batch size B="),
])
def test_logistic_problem_fields(spec, match):
    with pytest.raises(SdederiveError, match=match):
        from_dict(spec)


def test_synthetic_data_beyond_the_memory_is_refused_before_drawing():
    # 10**7 x 10**6 float64 is 80 TB: numpy's own MemoryError (not an SdederiveError) before
    with pytest.raises(MemoryLimitError, match="n=10000000, d=1000000"):
        from_dict({"kind": "logistic", "synthetic": {"n": 10**7, "d": 10**6}})


def test_synthetic_fields_still_work():
    p = from_dict({"kind": "logistic", "synthetic": {"n": 16, "d": 3, "seed": 2, "l2": 0.5}, "B": 4})
    assert isinstance(p, LogisticRegression) and p.A.shape == (16, 3) and p.B == 4 and p.l2 == 0.5


@pytest.mark.parametrize("make", [
    lambda: Quadratic(h=[1.0, 2.0], sigma=[1.0, 1.0], nu=3),
    lambda: Custom("x_0**2", sigma=[1.0], x0=[1.0], nu=3),
    lambda: from_dict({"kind": "quadratic", "h": [1], "sigma": [1], "noise": "gaussian", "nu": 3}),
])
def test_nu_with_gaussian_noise_is_refused(make):
    # nu had no effect: the problem was Gaussian and the file's nu = 3 was dropped without a word
    with pytest.raises(NoiseModelError, match="nu=3 is given but the noise is Gaussian"):
        make()


def test_custom_problem_dimension_is_bounded():
    # d**2 symbolic Hessian entries: a 200 kB file with x0 of 10**5 zeros would run for hours
    d = 300
    with pytest.raises(sd.problems.ProblemError, match="d = 300 coordinates; allowed: at most"):
        from_dict({"kind": "custom", "f": "x_0**2", "sigma": [1.0] * d, "x0": [0.0] * d})


# -- sweep grids --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("axis, gen, match", [
    ("eta", {"geomspace": [1e-4, 1.0, 10**9]}, "more than the 100000"),
    ("eta", {"linspace": [1e-4, 1.0, 1e12]}, "more than the 100000"),
    ("seed", {"range": [0, 10**12]}, "has 1000000000000 values"),
    ("seed", {"range": [0, 10**30]}, "more than 2\\*\\*63 values"),
    ("B", {"pow2": [1, 10**400]}, "not a finite number"),
])
def test_grid_generators_are_bounded(axis, gen, match):
    with pytest.raises(SdederiveError, match=match):
        Grid.from_dict({"eta": [0.1], axis: gen} if axis != "eta" else {"eta": gen})


def test_grid_cell_count_is_bounded():
    n = 1000  # 1000**3 cells: enumerated in the driver before the first one runs
    with pytest.raises(SdederiveError, match=f"{n**3} cells .*allowed: at most"):
        Grid(eta=[1e-3 * (k + 1) for k in range(n)], seed=range(n), B=range(1, n + 1))


def test_pow2_stays_at_or_below_hi():
    # hi // lo = 2**53 - 1, which float log2 rounds up to 53: the old expansion went one doubling past hi
    lo, hi = 3, 3 * 2**53 - 1
    vals = Grid.from_dict({"eta": [0.1], "B": {"pow2": [lo, hi]}}).axes["B"]
    assert vals[0] == lo and vals[-1] == 3 * 2**52 and len(vals) == 53
    assert max(vals) <= hi


@pytest.mark.parametrize("axes, match", [
    ({"eta": [0.1, 0.2, 0.1]}, "eta has the value\\(s\\) 0.1 more than once"),
    ({"eta": {"geomspace": [1e-3, 1e-3, 3]}}, "more than once"),
    ({"eta": [0.1], "seed": [0, 1, 1]}, "seed has the value\\(s\\) 1 more than once"),
    ({"eta": [0.1], "cell_id": [1, 2]}, "'cell_id' is not allowed"),
])
def test_grid_axes_that_would_repeat_or_hide_cells(axes, match):
    # a repeated value ran, stored and counted one cell twice; a cell_id axis was overwritten by the hash
    with pytest.raises(SdederiveError, match=match):
        Grid.from_dict(axes)


@pytest.mark.parametrize("analysis, match", [
    ('param = "eta"\nby = "B"\nfitt = "surge"', r"unknown key\(s\) \['fitt'\] in \[analysis\]"),
    ('fit = "linear"', "fit='linear'; allowed: 'surge', 'mccandlish'"),
    ("param = 3", "param = 3 .* is not a name"),
])
def test_sweep_analysis_table_checked_before_the_sweep(tmp_path, monkeypatch, analysis, match):
    import sdederive.sweep.runner as runner
    from sdederive.sweep.cli import run_sweep

    def no_run(*a, **k):
        raise AssertionError("the sweep ran before its [analysis] table was checked")

    monkeypatch.setattr(runner, "run", no_run)
    f = tmp_path / "grid.toml"
    f.write_text('steps = 1\npaths = 2\n[problem]\nkind = "quadratic"\nh = [1.0]\nsigma = [1.0]\n'
                 f'[grid]\neta = [0.1]\n[analysis]\n{analysis}\n')
    args = argparse.Namespace(file=str(f), out=str(tmp_path / "out"), resume=False, scheduler=None, workers=1,
                              quiet=True)
    with pytest.raises(SdederiveError, match=match):
        run_sweep(args)


def test_json_still_reads_ordinary_files(tmp_path):
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"kind": "quadratic", "h": [1, 2], "sigma": [1, 1], "x0": [1, 1]}))
    assert load(f).d == 2
    sde = sd.derive("sgd")
    assert sd.SDE.from_json(sde.to_json()) == sde


@pytest.mark.parametrize("name", ["nsgd", "sam", "sgd_nesterov", "clip_sgd"])
def test_vector_sde_json_whose_covariance_disagrees_with_its_diffusion_is_refused(name):
    """A shared vector SDE whose `covariance` was edited apart from its `diffusion` (D D^T != C) is refused, naming
    both; the file as written, and a covariance rewritten into an equal form, still load."""
    import json as _json

    from sdederive.sde_vector import VectorSDE

    text = sd.derive(name).to_json()
    assert VectorSDE.from_json(text).to_json() == text
    d = _json.loads(text)
    for bad in (f"(101/100)*({d['covariance']})", f"{d['covariance']} + eta*grad*transpose(grad)"):
        e = dict(d, covariance=bad)
        with pytest.raises(SdederiveError, match="diffusion D and covariance C of x disagree"):
            VectorSDE.from_json(_json.dumps(e))
    same = dict(d, covariance=f"({d['covariance']})/2 + ({d['covariance']})/2")
    VectorSDE.from_json(_json.dumps(same))


@pytest.mark.parametrize("name, where", [("nsgd", "x"), ("sam", "x"), ("adamw_clip", "m"), ("adamw_clip", "v")])
def test_vector_sde_json_whose_increment_disagrees_with_its_drift_is_refused_at_load(name, where):
    """The sampled noise comes from `increment` (of x, or of an auxiliary state): a file whose increment was edited
    apart from the drift is refused when it is read (before: only when a simulator was built)."""
    import json as _json

    from sdederive.sde_vector import VectorSDE

    d = _json.loads(sd.derive(name).to_json())
    e = _json.loads(_json.dumps(d))
    inc = e["increment"] if where == "x" else e["aux"][where]["increment"]
    inc[0]["coefficient"] = f"(3/2)*({inc[0]['coefficient']})"
    with pytest.raises(SdederiveError, match=f"the increment of {where} does not match its drift"):
        VectorSDE.from_json(_json.dumps(e))
    VectorSDE.from_json(_json.dumps(d))

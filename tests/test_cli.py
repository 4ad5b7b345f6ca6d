"""The command line interface, called in-process through ``sdederive.cli.main.main``."""

from __future__ import annotations

import json

import pytest
import sympy as sp
from sympy.core.function import AppliedUndef
from sympy.parsing.sympy_parser import parse_expr, standard_transformations

import sdederive as sd
from sdederive.cli.main import main

COMMANDS = ["list", "derive", "scaling-rule", "stationary", "tour"]
SCHEMA_KEYS = {"optimizer", "noise", "regime", "tau", "states", "drift", "diffusion", "symbols"}
FUNCTIONS = {"erf": sp.erf, "exp": sp.exp, "sqrt": sp.sqrt, "sign": sp.sign, "Abs": sp.Abs,
             "gamma": sp.gamma, "hyper": sp.hyper, "pi": sp.pi}
# just enough for the parser's own output (numbers, and auto-symbols for names it does not know)
_PARSER_GLOBALS = {"Integer": sp.Integer, "Float": sp.Float, "Rational": sp.Rational,
                   "Symbol": sp.Symbol, "Function": sp.Function}


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def parse_strict(text: str, names) -> sp.Expr:
    """Parse ``text`` knowing only ``names`` (as symbols) and FUNCTIONS; fail on anything else."""
    local = {n: sp.Symbol(n) for n in names}
    local.update(FUNCTIONS)
    expr = parse_expr(text, local_dict=local, global_dict=dict(_PARSER_GLOBALS),
                      transformations=standard_transformations)
    expr = sp.sympify(expr)
    unknown = {str(s) for s in expr.free_symbols} - set(names)
    assert not unknown, f"{text!r} uses names outside `symbols`: {unknown}"
    undefined = {type(f).__name__ for f in expr.atoms(AppliedUndef)}
    assert not undefined, f"{text!r} calls unknown functions {undefined}"
    return expr


def expression_strings(d: dict):
    yield d["tau"]
    for s in d["states"]:
        yield d["drift"][s]
        diff = d["diffusion"][s]
        yield from diff if isinstance(diff, list) else [diff]
    for row in d.get("covariance", []):
        yield from row


# -- list -------------------------------------------------------------------------------------------


def test_list_shows_optimizers_noise_models_and_regimes(capsys):
    rc, out, err = run(capsys, "list")
    assert rc == 0 and err == ""
    for name in sd.optimizers.names():
        line = next(ln for ln in out.splitlines() if ln.strip().startswith(name + " "))
        assert sd.optimizers.get(name).natural_regime in line
    for name in sd.noise.names():
        assert name in out
    for name in sd.regimes.names():
        rg = sd.regimes.get(name)
        assert any(ln.strip().startswith(name + " ") and f"tau = {rg.tau}" in ln for ln in out.splitlines())
    assert ":math:" not in out


# -- derive -----------------------------------------------------------------------------------------


def test_derive_text_is_str_of_sde(capsys):
    rc, out, err = run(capsys, "derive", "sgd")
    assert rc == 0 and err == ""
    assert out.strip() == str(sd.derive("sgd")).strip()
    assert "dx = (-grad) dt + (sqrt(eta)*sigma) dW" in out


def test_derive_latex(capsys):
    rc, out, _ = run(capsys, "derive", "adam", "--latex")
    assert rc == 0
    assert out.strip() == sd.derive("adam").latex().strip()
    assert out.startswith("\\begin{aligned}") and "\\tau" in out


@pytest.mark.parametrize(
    "argv",
    [[name] for name in sd.optimizers.names()]
    + [
        ["signsgd", "--noise", "student-t", "--nu", "3"],
        ["signsgd", "--noise", "student-t"],
        ["sgd", "--noise", "minibatch"],
        ["adamw", "--regime", "balanced-full"],
        ["sgd", "--order", "2"],
    ],
    ids=lambda a: " ".join(a),
)
def test_derive_json_follows_notation_schema(capsys, argv):
    rc, out, err = run(capsys, "derive", *argv, "--json")
    assert rc == 0, err
    d = json.loads(out)
    assert SCHEMA_KEYS <= set(d)
    assert d["optimizer"] == argv[0]
    if "--regime" not in argv:
        assert d["regime"] == sd.optimizers.get(argv[0]).natural_regime
    assert d["states"][0] == "x"
    assert set(d["drift"]) == set(d["states"]) == set(d["diffusion"])
    assert d["symbols"] == sorted(d["symbols"])
    for text in expression_strings(d):
        assert isinstance(text, str)
        parse_strict(text, d["symbols"])


def test_derive_json_round_trips(capsys):
    rc, out, _ = run(capsys, "derive", "adamw", "--json")
    assert rc == 0
    assert sd.SDE.from_json(out) == sd.derive("adamw")


def test_derive_options_reach_derive(capsys):
    rc, out, _ = run(capsys, "derive", "signsgd", "--noise", "student-t", "--nu", "3", "--json")
    assert rc == 0
    d = json.loads(out)
    assert d["noise"] == "student-t" and "nu" not in d["symbols"] and "hyper" in d["drift"]["x"]
    rc, out, _ = run(capsys, "derive", "sgd", "--order", "2", "--json")
    assert rc == 0 and json.loads(out)["order"] == 2 and "hess" in json.loads(out)["symbols"]


# -- scaling-rule and stationary --------------------------------------------------------------------


def test_scaling_rule_adam_square_root(capsys):
    rc, out, err = run(capsys, "scaling-rule", "adam")
    assert rc == 0, err
    assert "sqrt(kappa)" in out
    rc, out, _ = run(capsys, "scaling-rule", "adam", "--json")
    assert rc == 0
    d = json.loads(out)
    k, eta, beta1 = sp.symbols("kappa eta beta1")
    assert sp.simplify(sp.sympify(d["eta"], locals={"eta": eta, "kappa": k}) - sp.sqrt(k) * eta) == 0
    assert sp.simplify(sp.sympify(d["beta1"], locals={"beta1": beta1, "kappa": k}) - (1 - k * (1 - beta1))) == 0
    assert d["steps"] == "k/kappa" and d["exact"] is True


def test_scaling_rule_sgd_linear(capsys):
    rc, out, _ = run(capsys, "scaling-rule", "sgd", "--json")
    assert rc == 0
    assert sp.sympify(json.loads(out)["eta"]) == sp.sympify("kappa*eta")


def test_scaling_rule_without_a_rule_is_a_clean_error(capsys):
    rc, out, err = run(capsys, "scaling-rule", "signsgd")
    assert rc == 2 and out == ""
    assert err.startswith("sdederive: error:") and "signsgd" in err and "Traceback" not in err


def test_stationary_sgd_and_signsgd(capsys):
    rc, out, err = run(capsys, "stationary", "sgd", "--json")
    assert rc == 0, err
    d = json.loads(out)
    assert sp.simplify(sp.sympify(d["loss"]) - sp.sympify("eta*sigma**2/4")) == 0
    rc, out, _ = run(capsys, "stationary", "signsgd")
    assert rc == 0 and "sqrt(pi)" in out and "h*x**2/2" in out


# -- tour -------------------------------------------------------------------------------------------


def test_tour_runs(capsys):
    rc, out, err = run(capsys, "tour")
    assert rc == 0 and err == ""
    for text in ("SDE of sgd", "SDE of signsgd | noise student-t", "SDE of adam | noise gaussian | regime noise-dominated",
                 "SDE of adamw | noise gaussian | regime balanced", "sqrt(kappa)", "E[f]"):
        assert text in out
    assert out.count("\n== ") >= 7


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, bad, valid",
    [
        (["derive", "adamm"], "adamm", ["adam", "sgd", "lion"]),
        (["derive", "sgd", "--noise", "cauchy"], "cauchy", ["gaussian", "student-t", "minibatch"]),
        (["derive", "sgd", "--regime", "fast"], "fast", ["sgd", "balanced", "noise-dominated"]),
        (["derive", "signsgd", "--noise", "student-t", "--nu", "-1"], "-1", ["nu > 0"]),
        (["derive", "signsgd", "--noise", "student-t", "--nu", "many"], "many", ["nu > 0"]),
        (["derive", "sgd", "--nu", "3"], "--nu", ["student-t"]),
        (["derive", "sgd", "--noise", "student-t", "--nu", "1"], "nu=1", ["nu > 1"]),
        (["derive", "adam", "--order", "2"], "order=2", ["tau = eta"]),
        (["scaling-rule", "nadam"], "nadam", ["adam", "adamw"]),
        (["stationary", "sgd", "--regime", "slow"], "slow", ["balanced", "accumulator"]),
        (["derive", "sgd", "--order", "3"], "3", ["1, 2"]),
        (["frobnicate"], "frobnicate", ["derive", "tour"]),
    ],
)
def test_bad_input_exits_2_with_message(capsys, argv, bad, valid):
    rc, out, err = run(capsys, *argv)
    assert rc == 2
    assert out == ""
    last = err.strip().splitlines()[-1]
    assert last.startswith("sdederive: error: ")
    assert bad in last
    for v in valid:
        assert v in last
    assert "Traceback" not in err


def test_missing_arguments_exit_2(capsys):
    for argv in ([], ["derive"], ["derive", "sgd", "--json", "--latex"]):
        rc, _, err = run(capsys, *argv)
        assert rc == 2 and "sdederive: error:" in err and "usage:" in err


# -- help -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_has_an_example(capsys, command):
    argv = ["--help"] if command is None else [command, "--help"]
    rc, out, _ = run(capsys, *argv)
    assert rc == 0
    assert "Example" in out and "sdederive" in out


def test_version(capsys):
    rc, out, _ = run(capsys, "--version")
    assert rc == 0 and sd.__version__ in out


def test_docs_cli_md_is_up_to_date():
    """docs/cli.md is the --help of every command (regenerate with python docs/gen_cli.py)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, str(root / "docs" / "gen_cli.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


# -- start-up: the parser, --help and list import no sympy/numba/scipy --------------------------------

_HEAVY = ("sympy", "numba", "scipy", "numpy", "mpmath")


def _fresh_modules(code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter; the heavy top-level packages it left in ``sys.modules``."""
    import subprocess
    import sys

    probe = code + f"\nimport sys\nprint('HEAVY=' + ','.join(sorted(m for m in {_HEAVY!r} if m in sys.modules)))"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("HEAVY=")][-1]
    return [m for m in line[len("HEAVY="):].split(",") if m]


def test_help_and_list_import_no_sympy_numba_scipy():
    """``sdederive --help``, every command's ``--help`` and ``sdederive list`` build the parser and print from
    the catalog: none of them imports sympy, numba, scipy or numpy (a start of ~0.4 s instead of ~2.5 s on the
    2-core CI machine; the assertion is on sys.modules, not on a time)."""
    cmds = [["--help"], ["list"], *[[c, "--help"] for c in ("derive", "scaling-rule", "stationary", "simulate",
                                                              "rate", "optimal-lr", "validate", "sweep", "tour")]]
    code = ("import contextlib, io\nfrom sdederive.cli.main import main\n"
            f"for argv in {cmds!r}:\n"
            "    with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "        assert main(argv) == 0, argv\n"
            "    assert 'sdederive' in out.getvalue(), argv\n")
    assert _fresh_modules(code) == []


def test_python_m_help_imports_no_sympy():
    """The console entry's module run as ``python -m sdederive.cli.main --help``: after it printed the help and
    exited, sympy was never imported (``-X importtime`` lists every module a process imports)."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "sdederive.cli.main", "--help"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "usage: sdederive" in r.stdout
    imported = {ln.rsplit("|", 1)[-1].strip() for ln in r.stderr.splitlines() if ln.startswith("import time:")}
    assert "sdederive.cli._catalog" in imported  # the module ran (as __main__) and built its parser
    assert not {m for m in imported if m.split(".")[0] in _HEAVY}


def test_import_sdederive_is_lazy_and_complete():
    """``import sdederive`` loads no sympy (PEP 562 ``__getattr__``); every name of ``__all__`` resolves, is
    in ``dir()``, and ``from sdederive import X`` gives the object of the module that defines it."""
    assert _fresh_modules("import sdederive") == []
    from sdederive.derivation.engine import derive
    from sdederive.simulate.simulator import compile as sim_compile
    from sdederive.symbols import symbols

    assert set(sd.__all__) <= set(dir(sd))
    for name in sd.__all__:
        assert getattr(sd, name) is not None, name
    assert sd.derive is derive and sd.compile is sim_compile
    import sdederive.symbols  # noqa: F401 - the submodule bound to the package must not hide the function

    assert sd.symbols is symbols
    with pytest.raises(AttributeError, match="no_such_name"):
        sd.no_such_name  # noqa: B018


def test_cli_catalog_matches_the_registries():
    """The names and one-line descriptions ``--help`` and ``list`` print without sympy are those of the
    registries (regenerate with ``python -m sdederive.cli._catalog > sdederive/cli/_catalog_data.py``)."""
    from sdederive.cli import _catalog

    live = _catalog.live()
    assert live["OPTIMIZERS"] == _catalog.OPTIMIZERS
    assert live["REGIMES"] == _catalog.REGIMES
    assert list(live["NOISES"]) == _catalog.noise_names() == sd.noise.names()
    assert list(live["VALIDATE_PROBLEMS"]) == _catalog.validate_problem_names()
    assert _catalog.optimizer_names() == sd.optimizers.names()
    assert _catalog.regime_names() == sd.regimes.names()


def test_simulate_json_is_the_same_bytes_for_the_same_seed(capsys):
    """`simulate --json` twice with one seed prints the same bytes (the wall-clock times, the one part that
    differs, only with `--timing`); another seed prints other numbers."""
    argv = ["simulate", "sgd", "--mode", "discrete", "--paths", "64", "--steps", "20", "--seed", "5", "--json"]
    outs = []
    for extra in ([], [], ["--timing"], ["--seed", "6"]):
        rc, out, err = run(capsys, *argv, *extra)
        assert rc == 0, err
        outs.append(out)
    assert outs[0] == outs[1] and "timing" not in json.loads(outs[0])
    timed = json.loads(outs[2])
    assert timed["timing"]["run_s"] > 0 and {k: v for k, v in timed.items() if k != "timing"} == json.loads(outs[0])
    assert json.loads(outs[3])["mean"] != json.loads(outs[0])["mean"]

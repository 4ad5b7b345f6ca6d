"""Loading a file never runs code (issue 14), and a damaged kernel cache is rebuilt.

The three reported payloads (an SDE JSON drift, a custom problem's ``f`` in a problem file or a sweep
grid, a line break in an SDE's optimizer name that ends up in a comment of the generated kernel)
each wrote a marker file on the old code; here each must be refused (or stay inert) and no marker may
appear.  A hypothesis test throws generated hostile strings at all three loaders.  The safe parser
must still read back every SDE the engine derives, exactly (``SDE.from_json(sde.to_json()) == sde``).

Part two (issue 14, "major" and "bad input"): every bad-input case of the reviewer's table gives
``sdederive: error: <message naming the value>`` and exit status 2 (CLI, called in-process through
``sdederive.cli.main.main``) or an ``SdederiveError`` subclass (API), and the major cases: a loss that
overflows with a finite state, all paths masked, resume after a change of the fixed settings, grid
validation in the driver, pickling of every error class, Ctrl-C, memory estimates and workers of a
killed driver.  Those tests share one discrete SGD kernel on a 1-d diagonal quadratic.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import importlib.util
import io
import json
import math
import os
import pickle
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import sympy as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sdederive as sd
from sdederive._safe_expr import parse_expr
from sdederive.cli.main import main
from sdederive.errors import DivergenceError, ExpressionError, MemoryLimitError, SdederiveError
from sdederive.problems import ProblemError, from_dict, load
from sdederive.spec import optimizers as O


def _payload(marker: Path) -> str:
    """Python that writes ``marker`` when evaluated."""
    return f"__import__('pathlib').Path({str(marker)!r}).write_text('ran')"


def _sgd_json() -> dict:
    return json.loads(sd.derive("sgd").to_json())


def _run_cli(argv) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(argv)
    return rc, err.getvalue()


# -- the three reported payloads ------------------------------------------------------------------------------

def test_sde_json_drift_payload_is_refused(tmp_path):
    marker = tmp_path / "marker"
    d = _sgd_json()
    d["drift"]["x"] = f"-grad + 0*({_payload(marker)} and 0 or x)"
    with pytest.raises(ExpressionError, match=r"SDE JSON drift of x = .*: and/or is not allowed; allowed: numbers"):
        sd.SDE.from_json(json.dumps(d))
    assert not marker.exists()


@pytest.mark.parametrize("loader", ["load", "simulate", "validate", "sweep"])
def test_custom_problem_payload_is_refused(tmp_path, loader):
    marker = tmp_path / "marker"
    spec = {"kind": "custom", "f": f"x_0**2 + 0*({_payload(marker)} and 0)", "sigma": [1.0], "x0": [1.0]}
    f = tmp_path / "problem.json"
    f.write_text(json.dumps(spec))
    if loader == "load":
        with pytest.raises(ExpressionError, match="f of the custom problem"):
            load(f)
    elif loader == "simulate":
        rc, err = _run_cli(["simulate", "sgd", "--problem", str(f), "--paths", "10", "--steps", "2"])
        assert rc == 2 and err.startswith("sdederive: error: f of the custom problem") and "__import__" in err
    elif loader == "validate":
        rc, err = _run_cli(["validate", "sgd", "--problem", str(f), "--paths", "10"])
        assert rc == 2 and err.startswith("sdederive: error: f of the custom problem")
    else:
        toml = tmp_path / "grid.toml"
        toml.write_text(textwrap.dedent(f"""
            steps = 1
            paths = 10
            [problem]
            kind = "custom"
            f = {json.dumps(spec["f"])}
            sigma = [1.0]
            x0 = [1.0]
            [grid]
            optimizer = ["sgd"]
            eta = [0.1]
        """))
        rc, err = _run_cli(["sweep", str(toml), "--out", str(tmp_path / "out"), "--workers", "1", "--quiet"])
        assert rc == 2 and err.startswith("sdederive: error: f of the custom problem")
    assert not marker.exists()


def test_sde_json_optimizer_name_with_a_line_break_is_refused(tmp_path):
    marker = tmp_path / "marker"
    d = _sgd_json()
    d["optimizer"] = f"sgd\nimport pathlib; pathlib.Path({str(marker)!r}).write_text('x')\n#"
    with pytest.raises(sd.SdederiveError, match="optimizer = .sgd\\\\nimport pathlib.*is not a valid name"):
        sd.SDE.from_json(json.dumps(d))
    assert not marker.exists()


# -- a damaged kernel cache, and a hostile name that reaches the kernel through the API ----------------------

def _corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3] if how == "truncate" else bytes(range(256)) * 3)


def _import_from_disk(path: Path) -> None:
    """Import the cached kernel file the ordinary way (what another tool, or the old loader, would do)."""
    spec = importlib.util.spec_from_file_location(f"fromdisk_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)


def test_damaged_cache_is_rebuilt_and_names_in_comments_stay_comments(tmp_path, monkeypatch):
    """One SGD kernel, compiled once; then its numba index (garbage), its numba data (truncated) and the
    kernel file (binary garbage) are damaged in turn, each time followed by a load as a new process
    would do it (a fresh module): every run works and gives the same numbers as the first.  The SDE's
    optimizer name and note carry a line break and code (from the API: SDE.from_json refuses them):
    they stay inside escaped comments, also when the cached file is imported from disk."""
    monkeypatch.setenv("SDEDERIVE_CACHE", str(tmp_path / "cache"))
    marker = tmp_path / "marker"
    evil = f"sgd\nimport pathlib; pathlib.Path({str(marker)!r}).write_text('x')\n#"
    sde = dataclasses.replace(sd.derive("sgd"), optimizer=evil, notes=(evil,))
    prob = sd.Quadratic(h=[1.0, 3.0], sigma=[1.0, 0.5], x0=[1.0, -1.0])

    def run():
        sim = sd.compile(sde, prob)
        return sim, sim.run(paths=64, steps=8, eta=0.05, seed=3).mean["loss"]

    sim, base = run()
    kfile = Path(sim.module.__file__)
    assert kfile.parent == tmp_path / "cache" / "kernels"
    text = kfile.read_text()
    assert "\nimport pathlib" not in text and "sgd\\nimport pathlib" in text
    _import_from_disk(kfile)
    assert not marker.exists()
    # numba's index and data: beside the kernel, or under NUMBA_CACHE_DIR when that is set
    import numba

    roots = [kfile.parent / "__pycache__"] + ([Path(numba.config.CACHE_DIR)] if numba.config.CACHE_DIR else [])
    for target, how in [("nbi", "garbage"), ("nbc", "truncate"), ("py", "garbage")]:
        f = kfile if target == "py" else next(p for r in roots for p in r.rglob(f"{kfile.stem}.*.{target}"))
        _corrupt(f, how)
        sys.modules.pop(kfile.stem, None)  # the next load is a fresh module, as in a new process
        if target == "py":
            _, again = run()  # the kernel file is rewritten from the source; numba's cache still matches
        else:
            with pytest.warns(RuntimeWarning, match="was damaged"):
                _, again = run()
        np.testing.assert_array_equal(again, base)
    assert kfile.read_text() == text
    assert not marker.exists()


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX mode bits")
def test_cache_folder_must_be_private(tmp_path, monkeypatch):
    from sdederive.simulate.backends.numba_backend import cache_dir

    fresh = tmp_path / "fresh"
    monkeypatch.setenv("SDEDERIVE_CACHE", str(fresh))
    cache_dir()
    for d in (fresh, fresh / "kernels", fresh / "kernels" / "__pycache__"):
        assert stat.S_IMODE(d.stat().st_mode) & 0o077 == 0  # created 0700
    (fresh / "kernels").chmod(0o777)  # sdederive's own subfolder: tightened, not refused
    cache_dir()
    assert stat.S_IMODE((fresh / "kernels").stat().st_mode) & 0o022 == 0
    shared = tmp_path / "shared"
    shared.mkdir()
    monkeypatch.setenv("SDEDERIVE_CACHE", str(shared))
    for mode, who in [(0o777, "everyone"), (0o770, "its group")]:
        shared.chmod(mode)
        with pytest.raises(sd.SdederiveError, match=f"writable by {who}.*pickles"):
            cache_dir()
    monkeypatch.setenv("SDEDERIVE_CACHE_SHARED", "1")
    with pytest.warns(UserWarning, match="group-writable"):
        cache_dir()
    shared.chmod(0o777)
    with pytest.raises(sd.SdederiveError, match="writable by everyone"):
        cache_dir()
    shared.chmod(0o700)
    # the default folder (~/.cache/sdederive) is sdederive's own: a loose one (umask 002) is tightened
    monkeypatch.delenv("SDEDERIVE_CACHE_SHARED")
    monkeypatch.delenv("SDEDERIVE_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    default = tmp_path / "home" / ".cache" / "sdederive"
    default.mkdir(parents=True)
    default.chmod(0o775)
    assert cache_dir() == default
    assert stat.S_IMODE(default.stat().st_mode) == 0o755


# -- hostile strings -----------------------------------------------------------------------------------------

_ATOMS = ["x", "grad", "eta", "x_0", "1", "2.5", "1/2", "pi", "__import__", "__class__", "os", "open", "eval",
          "exec", "getattr", "lambda", "_x", "I", "oo", "zoo", "nan", "Symbol", "S", "sympify", "Function"]
_TEMPLATES = [
    "{a}.{b}", "{a}.__class__.__bases__[0].__subclasses__()", "__import__({q})", "{a}({b})", "{a}[{b}]",
    "(lambda: {a})()", "[{a} for {a} in ({b},)]", "{{{a}: {b}}}", "{a} if {b} else {a}", "({a} := {b})",
    "{a}, {b}", "*{a}", "f'{{{a}}}'", "b'{a}'", "{a}**{b}**{b}**{b}", "9**9**9", "10**10**10", "2**4097",
    "gamma(10**8)", "{a}**(10**6)", "1e999", "sqrt({a}, x=1)", "exp({a})({b})", "{a} < {b}", "not {a}",
    "~{a}", "{a} @ {b}", "{a} // {b}", "{a} % {b}", "{a} & {b}", "{a}\n{b}", "{a};{b}", "...", "None", "True",
    "1j*{a}", "'{a}'", "hyper({a}, {b}, {a})", "DiracDelta({a}, 1000)", "Min()", "{a}({b})" * 3,
    "(" * 120 + "{a}" + ")" * 120, "-" * 3000 + "{a}", "+".join(["{a}"] * 400), "sqrt(" * 150 + "x" + ")" * 150,
    "exp(" + _payload(Path("MARKER")) + ")", "0*(" + _payload(Path("MARKER")) + ")",
    "().__class__.__base__.__subclasses__()[0]", "x.__globals__", "Symbol('x')", "S('exec(1)')",
]


def _hostile():
    fill = st.sampled_from(_ATOMS)
    templated = st.builds(lambda t, a, b, q: t.format(a=a, b=b, q=q), st.sampled_from(_TEMPLATES), fill, fill,
                          st.sampled_from(["'os'", "'pathlib'", "x"]))
    printable = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60)
    anything = st.text(max_size=30)
    # random expression trees mixing allowed and forbidden pieces
    funcs = st.sampled_from(["sqrt", "exp", "gamma", "hyper", "Max", "eval", "getattr", "__import__", "open", "type"])
    trees = st.recursive(fill, lambda sub: st.one_of(
        st.builds(lambda a, op, b: f"({a}){op}({b})", sub, st.sampled_from(["+", "-", "*", "/", "**", "//", "%", "<",
                                                                          " and ", " if 1 else ", "@", "|"]), sub),
        st.builds(lambda f, args: f"{f}({', '.join(args)})", funcs, st.lists(sub, max_size=3)),
        st.builds(lambda a, b: f"({a}).{b}", sub, st.sampled_from(["__class__", "real", "__globals__", "func"])),
        st.builds(lambda a, b: f"({a})[{b}]", sub, sub),
        st.builds(lambda a: f"-({a})", sub)), max_leaves=12)
    return st.one_of(templated, trees, printable, anything)


def _inert(e) -> bool:
    """A sympy expression with plain named symbols and whitelisted functions only."""
    if not isinstance(e, sp.Expr):
        return False
    for f in e.atoms(sp.Function):
        if not isinstance(f, (sp.exp, sp.log, sp.sin, sp.cos, sp.tanh, sp.atan, sp.erf, sp.erfc, sp.sign, sp.Abs,
                              sp.Min, sp.Max, sp.Heaviside, sp.DiracDelta, sp.gamma, sp.hyper)):
            return False
    return all(isinstance(s, sp.Symbol) and s.name.isidentifier() and not s.name.startswith("_")
               for s in e.free_symbols)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_hostile())
def test_hostile_strings_are_errors_or_inert(tmp_path_factory, text):
    marker = tmp_path_factory.getbasetemp() / "hostile_marker"
    text = text.replace("MARKER", str(marker))
    t0 = time.perf_counter()
    # 1. the parser itself, with the SDE loader's names (any identifier) and functions
    try:
        e = parse_expr(text, symbols=lambda n: sd.sym(n), what="drift of x")
        assert _inert(e), (text, e)
    except ExpressionError as err:
        assert "allowed" in str(err)
    # 2. SDE.from_json with the string as the drift; 3. a custom problem with it as f
    d = _sgd_json()
    d["drift"]["x"] = text
    try:
        sd.SDE.from_json(json.dumps(d))
    except sd.SdederiveError:
        pass
    try:
        from_dict({"kind": "custom", "f": text, "sigma": [1.0, 1.0], "x0": [1.0, 1.0]})
    except sd.SdederiveError:
        pass
    assert time.perf_counter() - t0 < 10, f"{text!r} took {time.perf_counter() - t0:.1f} s"
    assert not marker.exists()


def test_named_hostile_cases_name_what_is_wrong():
    r = {"symbols": lambda n: sd.sym(n)}
    cases = {
        "9**9**9": "exponent 387420489 is too large",
        "x.__class__": "attribute access",
        "x[0]": "subscript",
        "(lambda: 1)()": "lambda",
        "[x for x in y]": "comprehension",
        "__x": "the name '__x' is not allowed",
        "exec(x)": "the function 'exec' is not allowed",
        "sqrt(x, y=1)": "keyword arguments",
        "gamma(10**9)": "numeric argument beyond 100",
        "1/0": "division by zero",
        "sqrt(" * 150 + "x" + ")" * 150: "nesting deeper than 100",
        "(" * 250 + "x" + ")" * 250: "too many nested parentheses",
        "x" * 20_001: "at most 20000",
    }
    for text, msg in cases.items():
        with pytest.raises(ExpressionError, match=msg):
            parse_expr(text, **r)


def test_sde_subs_text_is_not_evaluated(tmp_path):
    marker = tmp_path / "marker"
    sde = sd.derive("sgd")
    assert sde.subs(grad="2*x").drift["x"] == -2 * sd.sym("x")
    with pytest.raises(ExpressionError, match="subs: grad"):
        sde.subs(grad=_payload(marker))
    assert not marker.exists()


def test_parser_keeps_exact_numbers_and_long_sums():
    x = sd.sym("x")
    assert parse_expr("1/2*x + 3/4", symbols={"x": x}) == sp.Rational(1, 2) * x + sp.Rational(3, 4)
    assert parse_expr("0.1", symbols={}) == sp.Float("0.1")
    assert parse_expr("2**(1/2)", symbols={}) == sp.sqrt(2)
    assert parse_expr("pi + E", symbols={}) == sp.pi + sp.E
    xs = sp.symbols("x_0:200", real=True)
    f = parse_expr(" + ".join(f"{i + 1}*x_{i}**2" for i in range(200)), symbols={str(s): s for s in xs})
    assert f == sum((i + 1) * xs[i] ** 2 for i in range(200))


# -- every derived SDE reads back exactly -----------------------------------------------------------------

def _supported():
    out = []
    for name in O.names():
        for noise, kw in [("gaussian", {}), ("student-t", {}), ("student-t", {"nu": 3}), ("minibatch", {})]:
            for order in (1, 2):
                out.append((name, noise, kw, order))
    return out


def _reference(text: str, d: dict) -> sp.Expr:
    """sympy's parser with the SDE's names pinned to their canonical symbols (sympy would otherwise read
    ``beta``, ``gamma``, ``B``, ``E`` ... as its functions and constants)."""
    loc = {n: sd.sym(n) for n in set(d["symbols"]) | set(d["states"])}
    return sp.sympify(text, locals=loc)


_FAST = {("sgd", "gaussian", 2), ("signsgd", "student-t", 1), ("adam", "gaussian", 1), ("rmsprop", "student-t", 1),
         ("adagrad", "gaussian", 1), ("sgd_momentum", "student-t", 1), ("signum", "minibatch", 2)}


@pytest.mark.parametrize("name,noise,kw,order", [
    pytest.param(*c, marks=() if (c[0], c[1], c[3]) in _FAST and not c[2] else pytest.mark.slow) for c in _supported()])
def test_every_derived_sde_round_trips(name, noise, kw, order):
    try:
        sde = sd.derive(name, noise, order=order, **kw)
    except sd.SdederiveError:
        return  # not a supported combination (order 2 with tau = eta**2, nu = 3 with E[z**3], ...)
    text = sde.to_json()
    back = sd.SDE.from_json(text)
    assert back == sde
    # the same symbols (with their assumptions) and the same functions
    assert back._free() == sde._free()
    assert {type(f) for e in back._exprs() for f in sp.sympify(e).atoms(sp.Function)} == \
        {type(f) for e in sde._exprs() for f in sp.sympify(e).atoms(sp.Function)}
    # exact, not just equal: the same trees as sympy's own parser builds from the same text (used here
    # only on text this test generated itself, as an independent reference)
    d = json.loads(text)
    texts = [*d["drift"].values(), d["tau"]] + [e for v in d["diffusion"].values() for e in
                                                 (v if isinstance(v, list) else [v])]
    names = set(d["symbols"]) | set(d["states"])
    for t in texts:
        assert sp.srepr(parse_expr(t, symbols=lambda n: sd.sym(n) if n in names else None)) == sp.srepr(_reference(t, d)), t
    for key in ("params", "state_map", "init"):
        a, b = getattr(back, key), getattr(sde, key)
        assert a.keys() == b.keys() and all(sp.simplify(a[k] - b[k]) == 0 for k in a), key
    assert (back.hypers, back.notes, back.noise_values) == (sde.hypers, sde.notes, sde.noise_values)


def test_user_optimizer_with_its_own_names_round_trips():
    """Names outside the notation come back as the same symbols (assumptions from the JSON)."""
    x, g, eta = sd.symbols("x g eta")
    lam, q = sd.sym("lam", positive=True), sd.sym("q")
    opt = sd.from_update("my-opt v2", {"x": x - eta * lam * g - eta * q * x},
                         hypers={"eta": (0.1, "lr"), "lam": (1.0, "positive"), "q": (0.0, "real")})
    sde = sd.derive(opt)
    back = sd.SDE.from_json(sde.to_json())
    assert back == sde and back._free() == sde._free() and back.optimizer == "my-opt v2"
    assert back._free()["lam"] == lam and back._free()["lam"].is_positive


# -- bad input: clear errors -------------------------------------------------------------------------------------

@pytest.mark.parametrize("f,msg", [
    ("x_0**2 +", "f of the custom problem = 'x_0\\*\\*2 \\+': not an expression"),
    ("", "the expression is empty"),
    ("   ", "the expression is empty"),
    ("1j*x_0", "complex number"),
    ("sqrt(-1)*x_0**2", "complex or infinite"),
    ("cosh(x_0)", "the function 'cosh' is not allowed; allowed: .*the variables x_0..x_1 .*exp"),
    ("Abs(x_0)", "the function 'Abs' is not allowed"),
    ("x_0**2 + y", "unknown name 'y'; allowed: .*x_0..x_1"),
    ("(x_0, x_1)", "tuple is not allowed"),
    (["x_0"], "is a list"),
    (None, "is a NoneType"),
])
def test_custom_f_bad_input(f, msg):
    with pytest.raises(sd.SdederiveError, match=msg):
        from_dict({"kind": "custom", "f": f, "sigma": [1.0, 1.0], "x0": [1.0, 1.0]})


def test_custom_f_bad_input_cli(tmp_path):
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"kind": "custom", "f": "cosh(x_0)", "sigma": [1.0], "x0": [1.0]}))
    rc, err = _run_cli(["simulate", "sgd", "--problem", str(f), "--paths", "10", "--steps", "2"])
    assert rc == 2 and err.startswith("sdederive: error: f of the custom problem = 'cosh(x_0)'")
    assert "Traceback" not in err
    with pytest.raises(ProblemError, match="needs the field"):
        from_dict({"kind": "custom", "sigma": [1.0], "x0": [1.0]})
    with pytest.raises(ProblemError, match="not a scalar|Matrix"):
        sd.Custom(sp.Matrix([1, 2]), sigma=[1.0], x0=[1.0])


def test_custom_f_text_still_works():
    p = from_dict({"kind": "custom", "f": "x_0**4/4 + x_1**2/2 + exp(-x_0)", "sigma": [1.0, 1.0], "x0": [1.0, 2.0]})
    x0, x1 = p.xs
    assert p.f == x0**4 / 4 + x1**2 / 2 + sp.exp(-x0)
    np.testing.assert_allclose(p.loss(np.array([1.0, 2.0])), 0.25 + 2.0 + np.exp(-1.0))


@pytest.mark.parametrize("change,msg", [
    (lambda d: d.update(states=[]), "states = \\[\\] must be a non-empty list"),
    (lambda d: d.update(states="x"), "must be a non-empty list"),
    (lambda d: d.update(states=["x", "x"]), "names a state twice"),
    (lambda d: d.update(states=["x y"]), "state 'x y' is not a valid name"),
    (lambda d: d["diffusion"].update(x=0.5), "diffusion of x = 0.5 \\(float\\) is not allowed; allowed: an "
                                              "expression string such as \"0.5\""),
    (lambda d: d.update(order="two"), "order = 'two' is not allowed; allowed: 1 or 2"),
    (lambda d: d.update(order=3), "order = 3 is not allowed"),
    (lambda d: d.update(order=True), "order = True is not allowed"),
    (lambda d: d.update(noise_sources=2), "diffusion of x = .* must be a list of 2 expression strings"),
    (lambda d: d.update(covariance=[["1", "2"]]), "covariance must be a 1x1 list"),
    (lambda d: d["drift"].update(m="0"), "unknown \\['m'\\]"),
    (lambda d: d.update(hypers=[["eta", "lr", -1.0]]), "out of range"),
    (lambda d: d.update(hypers=[["eta", "weird", 1.0]]), "kind 'weird'"),
    (lambda d: d.update(assumptions={"eta": {"real": True}}), "differ from the notation's"),
    (lambda d: d.update(extra=1), "unknown key\\(s\\) \\['extra'\\]"),
    (lambda d: d.update(regime="sgd\r"), "regime = 'sgd\\\\r' is not a valid name"),
])
def test_from_json_bad_structure(change, msg):
    d = _sgd_json()
    change(d)
    with pytest.raises(sd.SdederiveError, match=msg):
        sd.SDE.from_json(json.dumps(d))


def test_from_json_invalid_text():
    with pytest.raises(sd.SdederiveError, match="SDE JSON: not valid JSON: Expecting"):
        sd.SDE.from_json('{"optimizer": "sgd",')
    with pytest.raises(sd.SdederiveError, match="top level must be an object"):
        sd.SDE.from_json("[1, 2]")
    with pytest.raises(sd.SdederiveError, match="expected JSON text or a dict"):
        sd.SDE.from_json(3)


# == part two: silent wrong results, lost work and bad input ========================================

ROOT = Path(__file__).resolve().parents[1]


def run_cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Problem and sweep files of the table, written once."""
    d = tmp_path_factory.mktemp("bad")
    nan = float("nan")
    f = {
        "q1": _write(d / "q1.json", {"kind": "quadratic", "h": [1.0], "sigma": [1.0], "x0": [1.0]}),
        "ragged": _write(d / "ragged.json", {"kind": "quadratic", "h": [1, 2], "Sigma": [[1, 0], [0]], "x0": [1, 1]}),
        "nansigma": _write(d / "nansigma.json", {"kind": "quadratic", "h": [1, 2], "Sigma": [[1, nan], [nan, 1]],
                                                 "x0": [1, 1]}),
        "d25": _write(d / "d25.json", {"kind": "quadratic", "h": 1, "sigma": 1, "d": 2.5}),
        "dm1": _write(d / "dm1.json", {"kind": "quadratic", "h": 1, "sigma": 1, "d": -1}),
        "dabc": _write(d / "dabc.json", {"kind": "quadratic", "h": 1, "sigma": 1, "d": "abc"}),
        "d0": _write(d / "d0.json", {"kind": "quadratic", "h": 1, "sigma": 1, "d": 0}),
        "habc": _write(d / "habc.json", {"kind": "quadratic", "h": "abc", "sigma": 1, "d": 2}),
        "hneg": _write(d / "hneg.json", {"kind": "quadratic", "h": [-1.0, 1.0], "sigma": 1}),
        "Hnpsd": _write(d / "Hnpsd.json", {"kind": "quadratic", "H": [[1, 2], [2, 1]], "sigma": 1}),
        "lognan": _write(d / "lognan.json", {"kind": "logistic", "A": [[1, nan], [0, 1]], "y": [1, -1]}),
        "dir": d,
        "afile": _write(d / "afile.txt", "not a directory"),
    }
    np.savez(d / "p.npz", a=np.arange(100.0))
    f["npz"] = d / "p.npz"
    return f


def _toml(files, name: str, body: str) -> Path:
    p = files["dir"] / f"{name}.toml"
    p.write_text(textwrap.dedent(body))
    return p


_GRID_OK = """
    steps = 1
    paths = 100
    [problem]
    kind = "quadratic"
    h = [1.0]
    sigma = [1.0]
    x0 = [1.0]
    [grid]
    optimizer = ["sgd"]
    eta = [0.1]
"""


def _sweep_file(files, name, *, top="", problem=None, grid=None, paths="100"):
    body = _GRID_OK.replace("paths = 100", f"paths = {paths}")
    if problem is not None:
        body = body.replace('kind = "quadratic"\n    h = [1.0]\n    sigma = [1.0]\n    x0 = [1.0]', problem)
    if grid is not None:
        body = body.replace('optimizer = ["sgd"]\n    eta = [0.1]', grid)
    return _toml(files, name, top + body)


# (argv builder, substrings the error line must contain, substrings it must not contain)
CLI_CASES = {
    "nu-nan": (lambda f: ["derive", "signsgd", "--noise", "student-t", "--nu", "nan"], ["nan", "finite"], []),
    "nu-inf": (lambda f: ["derive", "signsgd", "--noise", "student-t", "--nu", "inf"], ["inf", "finite"], []),
    "nu-1e400": (lambda f: ["derive", "signsgd", "--noise", "student-t", "--nu", "1e400"], ["1e400"], []),
    "optimal-lr-nu-gaussian": (lambda f: ["optimal-lr", "sgd", "--nu", "3"], ["--nu=3", "student-t"], []),
    "problem-dir": (lambda f: ["simulate", "sgd", "--mode", "discrete", "--problem", f["dir"]], ["directory"], []),
    "problem-npz": (lambda f: ["simulate", "sgd", "--mode", "discrete", "--problem", f["npz"]],
                    ["p.npz", "needs arrays 'A'"], []),  # an .npz is read as logistic data
    "ragged-Sigma": (lambda f: ["simulate", "sgd", "--mode", "discrete", "--problem", f["ragged"]],
                     ["Sigma", "ragged"], []),
    "nan-Sigma": (lambda f: ["simulate", "sgd", "--mode", "discrete", "--problem", f["nansigma"]],
                  ["Sigma", "nan", "finite"], ["symmetric"]),
    "d-2.5": (lambda f: ["simulate", "sgd", "--mode", "discrete", "--problem", f["d25"]], ["d=2.5", "integer >= 1"],
              []),
    "d-minus1": (lambda f: ["simulate", "sgd", "--mode", "discrete", "--problem", f["dm1"]], ["d=-1", ">= 1"], []),
    "d-abc": (lambda f: ["simulate", "sgd", "--mode", "discrete", "--problem", f["dabc"]], ["'abc'", "integer"], []),
    "d-0": (lambda f: ["simulate", "sgd", "--mode", "discrete", "--problem", f["d0"]], ["d=0", ">= 1"], []),
    "h-abc": (lambda f: ["simulate", "sgd", "--mode", "discrete", "--problem", f["habc"]], ["h='abc'", "number"], []),
    "h-negative": (lambda f: ["simulate", "sgd", "--mode", "discrete", "--problem", f["hneg"]], ["h", ">= 0", "-1"],
                   []),
    "H-not-psd": (lambda f: ["simulate", "sgd", "--mode", "discrete", "--problem", f["Hnpsd"]],
                  ["H", "positive semi-definite", "-1"], []),
    "logistic-nan-A": (lambda f: ["simulate", "sgd", "--mode", "discrete", "--problem", f["lognan"]],
                       ["A[0][1]", "nan"], ["diverged"]),
    "save-every-0": (lambda f: ["simulate", "sgd", "--mode", "discrete", "--problem", f["q1"], "--save-every", "0"],
                     ["save_every=0", ">= 1"], []),
    "save-every-gt-steps": (lambda f: ["simulate", "sgd", "--mode", "discrete", "--problem", f["q1"], "--steps", "10",
                                       "--save-every", "100"], ["save_every=100", "steps=10"], []),
    "hp-no-name": (lambda f: ["simulate", "sgd", "--mode", "discrete", "--problem", f["q1"], "--hp", "=0.5"],
                   ["'=0.5'", "NAME=VALUE"], []),
    "eta-twice": (lambda f: ["simulate", "sgd", "--mode", "discrete", "--problem", f["q1"], "--steps", "10",
                             "--paths", "2", "--eta", "0.1", "--hp", "eta=0.5"], ["eta=0.1", "eta=0.5"], []),
    "validate-report-file": (lambda f: ["validate", "sgd", "--problem", f["q1"], "--etas", "0.1", "--paths", "200",
                                        "--report", f["afile"]], ["afile.txt", "is a file"], []),
    "validate-report-unwritable": (lambda f: ["validate", "sgd", "--problem", f["q1"], "--etas", "0.1", "--paths",
                                              "200", "--report", f["afile"] / "sub"], ["afile.txt", "cannot be written"],
                                   []),
    # sweeps
    "sweep-two-keys": (lambda f: ["sweep", _sweep_file(f, "twokeys", grid='optimizer = ["sgd"]\n    eta = '
                                                       '{geomspace = [0.1, 1, 3], linspace = [0.1, 1, 3]}'),
                                  "--out", f["dir"] / "o1"], ["eta", "exactly one key"], []),
    "sweep-too-few-args": (lambda f: ["sweep", _sweep_file(f, "fewargs", grid='optimizer = ["sgd"]\n    eta = '
                                                           '{geomspace = [0.1, 1]}'), "--out", f["dir"] / "o2"],
                           ["eta", "geomspace", "2 argument"], []),
    "sweep-pow2-zero": (lambda f: ["sweep", _sweep_file(f, "pow2zero", grid='optimizer = ["sgd"]\n    eta = [0.1]\n'
                                                        '    B = {pow2 = [0, 16]}'), "--out", f["dir"] / "o3"],
                        ["pow2", "[0, 16]", "1 <= lo <= hi"], []),
    "sweep-pow2-reversed": (lambda f: ["sweep", _sweep_file(f, "pow2rev", grid='optimizer = ["sgd"]\n    eta = [0.1]\n'
                                                            '    B = {pow2 = [64, 4]}'), "--out", f["dir"] / "o4"],
                            ["pow2", "[64, 4]"], []),
    "sweep-string-range": (lambda f: ["sweep", _sweep_file(f, "strrange", grid='optimizer = ["sgd"]\n    eta = [0.1]\n'
                                                           '    seed = {range = ["0", "3"]}'), "--out", f["dir"] / "o5"],
                           ["seed", "'0'", "not a finite number"], []),
    "sweep-paths-abc": (lambda f: ["sweep", _sweep_file(f, "pathsabc", paths='"abc"'), "--out", f["dir"] / "o6"],
                        ["paths", "'abc'"], []),
    "sweep-rho-1": (lambda f: ["sweep", _sweep_file(f, "rho1", problem='preset = "surge"\n    d = 4\n    rho = 1.0'),
                               "--out", f["dir"] / "o7"], ["rho=1.0", "< rho < 1"], []),
    "sweep-unknown-preset": (lambda f: ["sweep", _sweep_file(f, "preset", problem='preset = "surg"'), "--out",
                                        f["dir"] / "o8"], ["'surg'", "surge"], ["exactly one of h"]),
    "sweep-workers-minus2": (lambda f: ["sweep", _sweep_file(f, "w"), "--out", f["dir"] / "o9", "--workers", "-2"],
                             ["--workers -2", ">= 1"], []),
    "sweep-workers-0": (lambda f: ["sweep", _sweep_file(f, "w"), "--out", f["dir"] / "o10", "--workers", "0"],
                        ["--workers 0", ">= 1"], []),
    "sweep-grid-mode-bogus": (lambda f: ["sweep", _sweep_file(f, "gmode", grid='optimizer = ["sgd"]\n    eta = [0.1]\n'
                                                              '    mode = ["bogus"]'), "--out", f["dir"] / "o12"],
                              ["mode", "'bogus'", "'sde'"], []),
    "sweep-eta-true": (lambda f: ["sweep", _sweep_file(f, "etatrue", grid='optimizer = ["sgd"]\n    eta = [true]'),
                                  "--out", f["dir"] / "o13"], ["eta", "True", "boolean"], []),
    "sweep-optimizer-typo": (lambda f: ["sweep", _sweep_file(f, "typo", grid='optimizer = ["adamm"]\n    eta = [0.1]'),
                                        "--out", f["dir"] / "o14", "--workers", "1"], ["'adamm'", "adam"], []),
    "sweep-out-file": (lambda f: ["sweep", _sweep_file(f, "outfile"), "--out", f["afile"]], ["afile.txt", "is a file"],
                       []),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_cli_bad_input_exits_2_naming_the_value(capsys, files, case):
    build, want, unwanted = CLI_CASES[case]
    rc, out, err = run_cli(capsys, *build(files))
    assert "Traceback" not in err
    assert rc == 2, (rc, err)
    last = err.strip().splitlines()[-1]
    assert last.startswith("sdederive: error: "), last
    for w in want:
        assert w in last, (w, last)
    for u in unwanted:
        assert u not in last, (u, last)


def test_sweep_out_checked_before_work(files, capsys):
    """``--out`` under a file fails at once: no cell is run (the old code failed after all the work)."""
    t0 = time.perf_counter()
    rc, _, err = run_cli(capsys, "sweep", _sweep_file(files, "outsub"), "--out", files["afile"] / "sub")
    assert rc == 2 and "cannot be written" in err and time.perf_counter() - t0 < 5


# -- API ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    (dict(h=[1.0], sigma=[1.0], d=True), "d=True"),
    (dict(h=1.0, sigma=1.0, d=2.5), "d=2.5"),
    (dict(h=[1.0, -0.5], sigma=1.0), ">= 0"),
    (dict(H=[[1.0, 0.0], [0.0, -1e-3]], sigma=1.0), "positive semi-definite"),
    (dict(H=[[1.0, float("nan")], [float("nan"), 1.0]], sigma=1.0), "non-finite entry H"),
    (dict(h=[1.0, 1.0], Sigma=[[1.0, 0.5], [0.0, 1.0]]), "Sigma must be symmetric"),
    (dict(h=[1.0, 1.0], Sigma=[[1.0, 0.0]]), "Sigma must be a 2x2 matrix"),
    (dict(h=[1.0, 1.0], Sigma=[[1.0, 0.0], [0.0, float("inf")]]), "non-finite entry Sigma"),
    (dict(h="abc", sigma=1.0, d=2), "h='abc'"),
])
def test_quadratic_parameters(kwargs, match):
    with pytest.raises(sd.problems.ProblemError, match=match.replace("[", r"\[").replace("(", r"\(")):
        sd.Quadratic(**kwargs)


def test_psd_check_of_H_with_a_tolerance():
    """H is documented PSD: an indefinite H is refused (the old code simulated it), a singular PSD matrix
    computed in floating point (eigenvalue about -1e-17) is accepted."""
    with pytest.raises(sd.problems.ProblemError, match=r"H is not positive semi-definite \(smallest eigenvalue -1"):
        sd.Quadratic(H=[[0.0, 1.0], [1.0, 0.0]], sigma=1.0)
    v = np.array([1.0, 1.0, 1.0]) / math.sqrt(3)
    H = np.eye(3) - np.outer(v, v)  # projector: eigenvalues 0, 1, 1
    assert abs(np.linalg.eigvalsh(H).min()) < 1e-15
    sd.Quadratic(H=H, sigma=1.0)


def test_logistic_parameters():
    A = np.array([[1.0, 0.0], [0.0, 1.0]])
    with pytest.raises(sd.problems.ProblemError, match=r"A\[1\]\[0\] = inf"):
        sd.LogisticRegression(np.array([[1.0, 0.0], [np.inf, 1.0]]), [1, -1])
    for B in (0, 2.5, "abc", True, float("inf")):
        with pytest.raises(sd.problems.ProblemError, match="batch size B="):
            sd.LogisticRegression(A, [1, -1], B=B)
    with pytest.raises(sd.problems.ProblemError, match="l2='abc'"):
        sd.LogisticRegression(A, [1, -1], l2="abc")


def test_surge_rho_and_grid_generators():
    from sdederive.sweep.cli import surge_problem

    for rho in (1.0, 1.5, -0.5):  # d = 4: allowed -1/3 < rho < 1
        with pytest.raises(SdederiveError, match=f"rho={rho}"):
            surge_problem(4, rho, 0.1)
    surge_problem(4, -0.3, 0.1)
    G = sd.sweep.Grid
    for spec, match in [({"B": {"pow2": [0, 8]}}, "pow2"), ({"B": {"pow2": [8, 2]}}, "pow2"),
                        ({"eta": {"geomspace": [0, 1, 3]}}, "bound <= 0"), ({"eta": {"geomspace": [1, 2, 2.5]}}, "n = 2.5"),
                        ({"seed": {"range": [0, 3, 0]}}, "step 0"), ({"seed": {"range": [3, 0]}}, "is empty"),
                        ({"eta": {"linspace": "0.1"}}, "not a list"), ({"seed": {"range": [0.5, 3]}}, "non-integer"),
                        ({"eta": [float("nan")]}, "not > 0"), ({"seed": [-1]}, "seed"), ({"beta1": ["x"]}, "not a number")]:
        with pytest.raises(SdederiveError, match=match):
            G.from_dict({"eta": [0.1], **spec})


def _all_subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _all_subclasses(sub)


def test_every_error_class_survives_pickling():
    """A worker's error must reach the sweep driver: pickle round trip of an instance of every subclass
    (UnknownNameError and DivergenceError have their own __init__; the old code failed to unpickle them)."""
    import inspect

    import sdederive.validators._runs  # noqa: F401
    import sdederive.validators.errors  # noqa: F401

    import sdederive.simulate.lower  # noqa: F401 - import every module that defines an error class

    classes = [SdederiveError, *_all_subclasses(SdederiveError)]
    names = {c.__name__ for c in classes}
    assert {"UnknownNameError", "DivergenceError", "MemoryLimitError", "ProblemError", "ValidationError",
            "TooFewPathsError", "CheckError", "CodegenError"} <= names
    for cls in classes:
        params = [p for p in inspect.signature(cls.__init__).parameters.values()
                  if p.name != "self" and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                  and p.default is p.empty]
        args = [f"value-{p.name}" for p in params] if params else ["a message naming value 42"]
        e = cls(*args)
        e.extra = [1, 2]
        back = pickle.loads(pickle.dumps(e))
        assert type(back) is cls and str(back) == str(e) and back.args == e.args and back.extra == [1, 2], cls
        assert isinstance(back, SdederiveError)


def test_quadratic_dimension_memory_refused_before_allocation():
    with pytest.raises(MemoryLimitError, match=r"d=1000000000000.*needs about 29.1 TiB"):
        sd.Quadratic(h=1.0, sigma=1.0, d=10**12)


# -- runs: one shared kernel --------------------------------------------------------------------------

# deterministic SGD on f = x^2/2 (sigma = 0): x_k = (1 - eta)^k exactly, an independent reference
Q0 = sd.Quadratic(h=[1.0], sigma=[0.0], x0=[1.0])


@pytest.fixture(scope="module")
def sim():
    return sd.compile("sgd", Q0)


@pytest.mark.parametrize("kw, match", [
    (dict(eta=True), "eta=True"), (dict(threads=0), "threads=0"), (dict(threads=-1), "threads=-1"),
    (dict(steps=10, save_every=20), "save_every=20"), (dict(eta=None, hyper={"eta": True}), "eta=True"),
])
def test_run_arguments(sim, kw, match):
    args = dict(paths=2, steps=10, eta=0.1)
    args.update(kw)
    with pytest.raises(SdederiveError, match=match):
        sim.run(**args)


def test_run_memory_refused_with_figure_and_limit(sim, monkeypatch):
    with pytest.raises(MemoryLimitError, match=r"3000000000000 paths.*needs about .*TiB.*more than the limit"):
        sim.run(paths=3 * 10**12, steps=10, eta=0.1)
    monkeypatch.setenv("SDEDERIVE_MEMORY_LIMIT", str(10**6))
    # 1e5 paths x 2 arrays of 8 bytes = 1.6 MB > 0.8 MB
    with pytest.raises(MemoryLimitError, match="limit of 781 KiB"):
        sim.run(paths=10**5, steps=10, eta=0.1)


def test_overflowing_loss_with_finite_state_is_a_divergence(sim):
    """eta = 2.5: x_k = (-1.5)^k stays finite up to k = 1750, but its loss overflows at k = 877.  The old code
    returned E[loss] = inf (and se = nan) without an error."""
    with np.errstate(over="ignore"):
        x = np.float64(-1.5) ** np.arange(2000)
        k_loss_inf = int(np.flatnonzero(~np.isfinite(0.5 * x * x))[0])
        k_state_inf = int(np.flatnonzero(~np.isfinite(x))[0])
    assert (k_loss_inf, k_state_inf) == (877, 1751)
    with pytest.raises(DivergenceError) as ei:
        sim.run(paths=3, steps=1200, eta=2.5, save_every=100)
    e = ei.value
    assert e.path == 0 and e.step % 100 == 0 and e.step <= 900 and e.n_diverged == 3
    assert f"path 0 became non-finite at step {e.step}" in str(e)


def test_cuda_path_shares_the_overflow_check(request):
    """The CUDA backend (its generated source built on the host with g++, tests/test_cuda_host.py's fake
    CuPy) finds the same path and step as the numba kernel, and masks the same paths."""
    from tests.test_cuda_host import FakeCupy

    fake = FakeCupy(request.getfixturevalue("tmp_path"))
    mp = request.getfixturevalue("monkeypatch")
    mp.setitem(sys.modules, "cupy", fake)
    try:
        cuda = sd.compile("sgd", Q0, backend="cupy")
        with pytest.raises(DivergenceError) as ei:
            cuda.run(paths=3, steps=1200, eta=2.5, save_every=100)
        assert ei.value.path == 0 and ei.value.step % 100 == 0 and ei.value.step <= 900
        res = cuda.run(paths=3, steps=1200, eta=2.5, save_every=100, mask_diverged=True)
        assert res.diverged == 3 and res.count[-1] == 0 and np.isnan(res.mean["loss"][-1])
    finally:
        fake.finish_builds()


def test_masked_overflow_gives_standard_json_and_no_path_left(capsys, files, tmp_path):
    p = _write(tmp_path / "q0.json", Q0.to_dict())
    rc, out, err = run_cli(capsys, "simulate", "sgd", "--mode", "discrete", "--problem", p, "--eta", "2.5",
                           "--steps", "1200", "--save-every", "600", "--paths", "4", "--mask-diverged", "--json")
    assert rc == 0, err

    def refuse(token):
        raise AssertionError(f"non-standard JSON token {token}")

    d = json.loads(out, parse_constant=refuse)
    assert d["mean"]["loss"][0] == 0.5 and d["mean"]["loss"][1:] == [None, None]
    assert d["nonfinite"] is True and d["no_paths_left"] is True and d["count"] == [4, 0, 0] and d["diverged"] == 4
    rc, out, _ = run_cli(capsys, "simulate", "sgd", "--mode", "discrete", "--problem", p, "--eta", "2.5",
                         "--steps", "1200", "--save-every", "600", "--paths", "4", "--mask-diverged")
    assert rc == 0
    rows = out.strip().splitlines()[-2:]
    assert all("no path left" in r for r in rows), out  # the old code printed E[loss] = 0, se = 0
    assert "4 of 4 paths diverged" in out


def test_float32_divergence_found_on_the_step_it_happens():
    """float32: x_k = (-1.5)^k overflows FLT_MAX at k = 219; the old check looked at the float64 value before
    the cast and found it one step late (220)."""
    k = int(np.flatnonzero(1.5 ** np.arange(300.0) > float(np.finfo(np.float32).max))[0])
    assert k == 219
    s32 = sd.compile("sgd", Q0, dtype="float32")
    with pytest.raises(DivergenceError) as ei:
        s32.run(paths=2, steps=300, eta=2.5, save_every=300)
    assert ei.value.step == k


# -- sweeps ---------------------------------------------------------------------------------------------


class _Recording(cf.ThreadPoolExecutor):
    """An in-process executor that counts submissions (no worker processes: the test stays fast)."""

    def __init__(self):
        super().__init__(max_workers=1)
        self.submitted = 0

    def submit(self, *a, **k):
        self.submitted += 1
        return super().submit(*a, **k)


def test_resume_recomputes_when_fixed_settings_change(tmp_path):
    """The old cell_id hashed the grid values only: --resume after changing steps, mode or the problem's h
    returned the old rows."""
    grid = sd.sweep.Grid(optimizer=["sgd"], eta=[0.5])
    prob = sd.Quadratic(h=[1.0], sigma=[0.0], x0=[1.0])
    out = tmp_path / "r"
    with _Recording() as ex:
        base = sd.sweep.run(grid, prob, steps=2, paths=10, executor=ex, out=out, progress=False)
    assert base.rows[0]["final_loss"] == pytest.approx(0.5 * 0.5 ** 4)  # x_2 = (1 - 0.5)^2
    variants = [
        (dict(steps=3), 0.5 * 0.5 ** 6),
        # the SDE's Euler step of size tau = eta is the discrete step when sigma = 0: same number, new row
        (dict(mode="sde"), 0.5 * 0.5 ** 4),
        (dict(problem=sd.Quadratic(h=[0.5], sigma=[0.0], x0=[1.0])), 0.25 * 0.75 ** 4),
    ]
    seen = {b["cell_id"] for b in base.rows}
    for change, expect in variants:
        kw = dict(problem=prob, steps=2, paths=10, mode="discrete")
        kw.update(change)
        with _Recording() as ex:
            res = sd.sweep.run(grid, kw.pop("problem"), executor=ex, out=out, resume=True, progress=False, **kw)
        assert ex.submitted == 1, change  # recomputed, not resumed
        new = [r for r in res.rows if r["cell_id"] not in seen]
        assert len(new) == 1 and new[0]["final_loss"] == pytest.approx(expect, rel=1e-12), change
        assert new[0]["steps"] == kw["steps"] and new[0]["mode"] == kw["mode"]
        seen.add(new[0]["cell_id"])
    with _Recording() as ex:  # unchanged settings: resumed, nothing submitted
        sd.sweep.run(grid, prob, steps=2, paths=10, executor=ex, out=out, resume=True, progress=False)
    assert ex.submitted == 0


def test_grid_validated_in_the_driver_before_any_cell():
    """A typo in the last optimizer of the grid is found before any cell is submitted (the old code ran the
    valid cells and then lost the worker's UnknownNameError to a BrokenProcessPool)."""
    for axes, match in [(dict(optimizer=["sgd", "adamm"]), "'adamm'"), (dict(optimizer=["sgd"], beta9=[0.5]), "'beta9'"),
                        (dict(optimizer=["adam"], beta1=[1.5]), "beta1=1.5"), (dict(optimizer=["sgd"], mode=["bogus"]),
                                                                               "bogus")]:
        with _Recording() as ex, pytest.raises(SdederiveError, match=match):
            sd.sweep.run(sd.sweep.Grid(eta=[0.1], **axes), Q0, steps=1, paths=10, executor=ex, progress=False)
        assert ex.submitted == 0


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                for line in (d / "status").read_text().splitlines():
                    if line.startswith("PPid:") and int(line.split()[1]) == pid:
                        out.append(int(d.name))
            except OSError:
                continue
    return out


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the process table from /proc")
def test_workers_exit_when_the_driver_is_killed(tmp_path):
    """SIGKILL to the driver alone (not its process group): its pool workers exit too (the old ones stayed
    blocked on the task queue forever)."""
    out = tmp_path / "res"
    script = tmp_path / "drv.py"
    script.write_text(textwrap.dedent(f"""
        import numpy as np
        import sdederive as sd
        if __name__ == "__main__":
            grid = sd.sweep.Grid(optimizer=["sgd"], eta=list(np.geomspace(1e-3, 1e-1, 200)))
            sd.sweep.run(grid, sd.Quadratic(h=[1.0], sigma=[1.0], x0=[1.0]), steps=20000, paths=200,
                         out={str(out)!r}, max_workers=2, progress=False)
    """))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, str(script)], env=env)
    kids: list[int] = []
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list(out.glob("part-*.parquet")):
            time.sleep(0.1)
        assert list(out.glob("part-*.parquet")), "the sweep wrote no cell in 120 s"
        kids = _children(proc.pid)
        assert len(kids) >= 2, kids
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 20
        while time.time() < deadline and any(Path(f"/proc/{k}").exists() and not _zombie(k) for k in kids):
            time.sleep(0.1)
        alive = [k for k in kids if Path(f"/proc/{k}").exists() and not _zombie(k)]
        assert not alive, f"workers still running 20 s after the driver was killed: {alive}"
    finally:
        for k in kids:  # the processes this test started (through the driver), by id
            try:
                os.kill(k, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if proc.poll() is None:
            proc.kill()


def _zombie(pid: int) -> bool:
    try:
        return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True


# -- Ctrl-C -------------------------------------------------------------------------------------------


def test_ctrl_c_keeps_the_partial_result_and_exits_130(tmp_path):
    """SIGINT during a long simulate: exit 130, the text says how many steps were completed, and there is no
    traceback (the old code exited 0 and claimed all the steps)."""
    p = _write(tmp_path / "q.json", {"kind": "quadratic", "h": [1.0], "sigma": [1.0], "x0": [1.0]})
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "sdederive.cli.main", "simulate", "sgd", "--mode", "discrete",
                             "--problem", str(p), "--paths", "2000", "--steps", "100000000", "--save-every", "1000",
                             "--eta", "0.01", "--progress"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        # wait for the first progress line on stderr (compile done, run started), then Ctrl-C
        buf = ""
        deadline = time.time() + 120
        while time.time() < deadline and "steps" not in buf:
            buf += proc.stderr.read(1)
        assert "steps" in buf, buf
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = buf + err
    assert proc.returncode == 130, (proc.returncode, err[-500:])
    assert "Traceback" not in err
    head = out.splitlines()[0]
    assert "partial: completed" in head and "of 100000000 steps" in head, head
    done = int(head.split("partial: completed ")[1].split()[0])
    assert 0 < done < 100000000
    rows = [r for r in out.splitlines()[2:] if r.strip() and not r.startswith("note")]
    assert len(rows) == done // 1000 + 1  # every snapshot completed before the interrupt, and no more


def test_ctrl_c_during_compile_no_traceback(capsys, files, monkeypatch):
    import sdederive.simulate.simulator

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(sdederive.simulate.simulator, "compile", interrupted)
    rc, out, err = run_cli(capsys, "simulate", "sgd", "--mode", "discrete", "--problem", files["q1"], "--steps", "10")
    assert rc == 130 and "interrupted" in err and "Traceback" not in err and out == ""


def test_validate_exit_codes_1_and_2(capsys, files):
    """A failed check exits 1 (a weak order of 1 is not within 0.3 of 3); bad input exits 2."""
    argv = ["validate", "sgd", "--problem", files["q1"], "--etas", "0.1,0.05", "--paths", "2000", "--horizon", "0.5",
            "--replicates", "4", "--points", "2"]
    rc, out, err = run_cli(capsys, *argv, "--expected-order", "3")
    assert rc == 1 and "sdederive: error" not in err
    rc, _, err = run_cli(capsys, *argv, "--report", files["afile"])
    assert rc == 2 and "is a file" in err


def test_noise_parameter_of_another_model_is_named():
    """nu= with Gaussian noise: the old code raised a TypeError from the noise constructor."""
    from sdederive.analysis.batchsize import optimal_lr
    from sdederive.errors import NoiseModelError

    with pytest.raises(NoiseModelError, match="'gaussian' takes no parameter nu.*student-t"):
        optimal_lr("sgd", noise="gaussian", nu=3)
    with pytest.raises(NoiseModelError, match="'student-t' takes no parameter Sigma"):
        sd.noise.get("student-t", nu=3, Sigma=[[1.0]])

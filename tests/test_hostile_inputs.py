"""Loading a file never runs code (issue 14), and a damaged kernel cache is rebuilt.

The three reported payloads (an SDE JSON drift, a custom problem's ``f`` in a problem file or a sweep
grid, a line break in an SDE's optimizer name that ends up in a comment of the generated kernel)
each wrote a marker file on the old code; here each must be refused (or stay inert) and no marker may
appear.  A hypothesis test throws generated hostile strings at all three loaders.  The safe parser
must still read back every SDE the engine derives, exactly (``SDE.from_json(sde.to_json()) == sde``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import json
import os
import stat
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
from sdederive import optimizers as O
from sdederive._safe_expr import parse_expr
from sdederive.cli import main
from sdederive.errors import ExpressionError
from sdederive.problems import ProblemError, from_dict, load


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
    pyc = kfile.parent / "__pycache__"
    for target, how in [("nbi", "garbage"), ("nbc", "truncate"), ("py", "garbage")]:
        f = kfile if target == "py" else next(pyc.glob(f"{kfile.stem}.*.{target}"))
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
    from sdederive.codegen.numba_backend import cache_dir

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

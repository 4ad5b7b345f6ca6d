"""The documentation site builds strictly, every page's Python runs, the tutorial notebook executes,
and the common mistakes point to their troubleshooting section."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)

#: packages of the test extra that some pages use (exports, Dask); without them (the test-core extra)
#: the page is skipped with the package's name, in CI (the test extra) it runs
_OPTIONAL = {"jax", "diffrax", "torch", "torchsde", "distributed", "dask", "equinox", "lineax"}

# docs/reference/ holds the project's reference notes (copied, with their own sketches of code): not run
PAGES = sorted([p for p in DOCS.rglob("*.md") if _BLOCK.search(p.read_text()) and "reference" not in p.parts]
               + [ROOT / "README.md"])


def test_site_builds_strictly(tmp_path):
    """mkdocs-material + mkdocstrings with ``strict: true``: a broken link, a missing page or a
    docstring griffe cannot parse fails the build.  The API pages render their docstrings: no reST
    markup (``:math:`` roles, ``.. math::`` directives, ``:func:`` roles, double backticks) is left as
    literal text."""
    pytest.importorskip("mkdocs", reason="the docs tools are in the test extra: pip install -e '.[test]'")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                       cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert r.returncode == 0, r.stdout + r.stderr
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    for name in ("loss_bound", "optimal_lr", "compare", "square_root_rule", "derive"):
        assert name in api
    body = re.sub(r"<(script|code|pre)\b.*?</\1>", "", api, flags=re.S)  # code may show markup on purpose
    for markup in (":math:", ".. math::", ":func:", ":class:", ":meth:", "``"):
        assert markup not in body, f"literal reST markup {markup!r} on the API page: " + \
            body[max(0, body.index(markup) - 200): body.index(markup) + 200]
    assert "arithmatex" in api  # the math is handed to MathJax


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_page_code_runs(page, tmp_path, monkeypatch):
    """Every ```python block of the page runs, in order, in one namespace (files go to a temp dir)."""
    monkeypatch.chdir(tmp_path)
    ns: dict = {"__name__": "__docs__"}
    for k, block in enumerate(_BLOCK.findall(page.read_text())):
        try:
            exec(compile(block, f"{page.name}[block {k}]", "exec"), ns)
        except ModuleNotFoundError as e:
            if (e.name or "").split(".")[0] in _OPTIONAL:
                pytest.skip(f"{page.name} block {k} needs {e.name} (the test extra: pip install -e '.[test]')")
            pytest.fail(f"{page.relative_to(ROOT)} block {k} failed: {type(e).__name__}: {e}\n{block}")
        except Exception as e:  # noqa: BLE001 - report which block of which page failed
            pytest.fail(f"{page.relative_to(ROOT)} block {k} failed: {type(e).__name__}: {e}\n{block}")


def test_quickstart_shows_what_the_tour_prints():
    text = (DOCS / "quickstart.md").read_text()
    shown = re.search(r"```text\n(.*?)```", text, re.S).group(1).strip().splitlines()
    r = subprocess.run([sys.executable, "-m", "sdederive.cli.main", "tour"], capture_output=True, text=True)
    assert r.returncode == 0
    out = r.stdout.splitlines()
    assert out[: len(shown)] == shown


def test_tutorial_notebook_executes(tmp_path):
    """examples/tutorial.ipynb, executed by nbconvert at its reduced size; it asserts the weak order."""
    pytest.importorskip("nbconvert", reason="the docs tools are in the test extra: pip install -e '.[test]'")
    nb = ROOT / "examples" / "tutorial.ipynb"
    r = subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute", str(nb),
                        "--output-dir", str(tmp_path), "--ExecutePreprocessor.timeout=600"],
                       capture_output=True, text=True, env={**os.environ, "SDEDERIVE_NOTEBOOK_QUICK": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    import nbformat

    done = nbformat.read(tmp_path / "tutorial.ipynb", as_version=4)
    latex = [o for c in done.cells if c.cell_type == "code" for o in c.get("outputs", [])
             if "text/latex" in o.get("data", {})]
    assert latex and "\\operatorname{sign}" in latex[1]["data"]["text/latex"]


def _message(fn) -> str:
    import sdederive as sd

    with pytest.raises(sd.SdederiveError) as ei:
        fn()
    return str(ei.value)


def test_common_mistakes_point_to_their_section():
    import numpy as np
    import sympy as sp
    from sdederive.validators import compare

    import sdederive as sd

    anchors = set(re.findall(r"^## (.+)$", (DOCS / "troubleshooting.md").read_text(), re.M))
    slug = {a.lower().replace(" ", "-") for a in anchors}
    x, g = sd.symbols("x g")
    eta = sd.sym("eta")
    tanh_opt = sd.from_update("tanh_sgd", {"x": x - eta * sp.tanh(g)}, hypers={"eta": (0.1, "lr")})
    no_default = sd.from_update("beta_sgd", {"x": x - eta * sd.sym("beta") * g},
                                hypers={"eta": (0.1, "lr"), "beta": (None, "decay")})
    prob = sd.Quadratic(h=[1.0], sigma=[1.0], x0=[1.0])
    cases = {
        "wrong-regime": lambda: sd.derive("adam", regime="sgd"),
        "missing-or-invalid-hyperparameter": lambda: sd.compile(no_default, prob).run(paths=10, steps=2, eta=0.1),
        "unsupported-nonlinearity": lambda: sd.derive(tanh_opt),
        "too-few-paths": lambda: compare("sgd", sd.Quadratic(h=[1.0], sigma=[1.0], x0=[1.0], noise="student-t", nu=5),
                                         etas=[0.1], paths=200, horizon=0.5, tol=1e-4),
        "divergence": lambda: sd.compile(sd.derive("sgd"), sd.Quadratic(h=np.array([30.0]), sigma=[1.0],
                                                                        x0=[1.0])).run(paths=10, steps=2000, eta=0.1),
    }
    for anchor, fn in cases.items():
        assert anchor in slug, anchor
        msg = _message(fn)
        assert msg.endswith(f"(see docs/troubleshooting.md#{anchor})"), (anchor, msg)

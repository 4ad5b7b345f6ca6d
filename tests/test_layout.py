"""The package layout: no import cycles between modules, and nothing imports the repository's
``validators/`` folder under the top-level name that belongs to an unrelated PyPI package.

The import graph is read from the source with :mod:`ast` (module-level imports only: an import
inside a function runs when the function does, after every module has loaded).  An edge goes to the
module named (``from sdederive.spec import optimizers`` is an edge to ``sdederive.spec.optimizers``),
imports under ``if TYPE_CHECKING:`` are not;
the implicit import of a parent package is not an edge, because a package's ``__init__`` only
re-exports its children.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _modules() -> dict[str, Path]:
    out = {}
    for base, prefix in ((ROOT / "sdederive", "sdederive"), (ROOT / "validators", "sdederive.validators")):
        for p in base.rglob("*.py"):
            rel = p.relative_to(base).with_suffix("").parts
            if "validators" in rel and base.name == "sdederive":
                continue  # a development symlink sdederive/validators -> ../validators
            parts = [prefix, *rel]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = p
    return out


def _top_level_imports(path: Path, name: str, is_pkg: bool, known: set[str]) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    pkg = name if is_pkg else name.rpartition(".")[0]
    deps = set()
    for node in tree.body:  # module level only
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue  # for type checkers only: never runs
        if isinstance(node, ast.If | ast.Try):
            body = [n for blk in (getattr(node, "body", []), getattr(node, "orelse", []),
                                  *[h.body for h in getattr(node, "handlers", [])]) for n in blk]
        else:
            body = [node]
        for n in body:
            if isinstance(n, ast.Import):
                deps |= {a.name for a in n.names}
            elif isinstance(n, ast.ImportFrom):
                base = n.module or ""
                if n.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - (n.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                for a in n.names:
                    full = f"{base}.{a.name}"
                    deps.add(full if full in known else base)
    return {d for d in deps if d in known and d != name}


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {m: _top_level_imports(p, m, p.name == "__init__.py", known) for m, p in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_walk_sees_the_package():
    g = _graph()
    assert len(g) > 50
    assert "sdederive.simulate.spec" in g["sdederive.simulate.simulator"]
    assert "sdederive.spec.optimizers" in g["sdederive.derivation.engine"]


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, f"import cycles between modules: {cycles}"


def test_nothing_imports_validators_by_its_top_level_name():
    bad = []
    for folder in ("sdederive", "validators", "tests", "examples", "bench", "docs"):
        for p in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(p.read_text(), str(p))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
                bad += [f"{p.relative_to(ROOT)}:{node.lineno}" for n in names if n.split(".")[0] == "validators"]
    assert not bad, f"import sdederive.validators, not validators: {bad}"

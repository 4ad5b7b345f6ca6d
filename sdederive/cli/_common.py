"""What every `sdederive` subcommand shares (the main CLI, `validate` and `sweep`): the
argparse parser and help formatter, the `NAME=VALUE` list parser, the "Example:" epilog, and
`load_spec`, which reads a user's optimizer for `--spec`.

This module imports nothing from the subcommands, so each of them imports it without a cycle.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import re
import sys
import textwrap

from sdederive.errors import SdederiveError, SpecError

__all__ = ["UsageError", "Parser", "Formatter", "one_line", "kv_list", "examples", "load_spec", "SPEC_HELP"]

#: the help text of ``--spec`` (every subcommand that takes an optimizer)
SPEC_HELP = ("a user-written optimizer instead of OPT: FILE.py:NAME (NAME an Optimizer object or a function of no "
             "arguments returning one; the file is run as Python, so name only files you trust) or FILE.json "
             "(an optimizer JSON, Optimizer.to_json(); read safely, never run)")


class UsageError(Exception):
    """argparse found bad command-line syntax (raised instead of exiting, so main() can return 2)."""

    def __init__(self, message: str, usage: str) -> None:
        super().__init__(message)
        self.usage = usage


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # noqa: D401 - argparse hook
        raise UsageError(message, self.format_usage())


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Fixed width (so docs/cli.md does not depend on the terminal); descriptions wrapped, examples kept."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=28, width=100)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paras = text.split("\n\n")
        return "\n\n".join(p if p.startswith("Example") else textwrap.fill(" ".join(p.split()), width,
                                                                            initial_indent=indent,
                                                                            subsequent_indent=indent)
                             for p in paras)


def one_line(doc: str) -> str:
    """A plain-text summary of an optimizer docstring: its first line without math or code markup."""
    first = (doc or "").strip().splitlines()[0] if (doc or "").strip() else ""
    head, sep, _ = first.partition(": ")
    text = head if sep else first
    text = re.sub(r":math:`([^`]*)`", r"\1", text)
    text = re.sub(r"\$([^$]*)\$", r"\1", text).replace("``", "").replace("`", "")
    return text.rstrip(".")


def kv_list(items, what: str) -> dict:
    out = {}
    for it in items or []:
        if "=" not in it:
            raise SdederiveError(f"{what} {it!r} is not NAME=VALUE (e.g. beta1=0.9)")
        k, v = it.split("=", 1)
        if not k.strip():
            raise SdederiveError(f"{what} {it!r} has no name before '='; allowed: NAME=VALUE (e.g. beta1=0.9)")
        if k.strip() in out:
            raise SdederiveError(f"{what} {k.strip()} is given twice ({it!r}); allowed: each name once")
        try:
            out[k.strip()] = float(v)
        except ValueError:
            raise SdederiveError(f"{what} {it!r}: {v!r} is not a number") from None
    return out


def examples(*lines: str) -> str:
    return "Example:\n" + "\n".join(f"  {line}" for line in lines)


_MAX_SPEC_BYTES = 2_000_000


def load_spec(text: str, what: str = "--spec", *, python: bool = True):
    """The `Optimizer` that `text` names.

    `FILE.json`: an optimizer JSON (`Optimizer.to_json`), parsed safely (nothing in it is run);
    an SDE JSON whose `"source"` holds the optimizer is accepted too.  `FILE.py:NAME` (only with
    `python=True`): the file is *run* as a Python module and `NAME` is an `Optimizer` in it or a
    function of no arguments returning one; this runs the user's own code, as `python FILE.py` would.

    Raises `SpecError` for a missing file, a missing or wrong `NAME`, bad JSON
    or a file that fails to run, naming the file and what is allowed.
    """
    from sdederive.spec.optimizers import Optimizer

    allowed = "FILE.json" + (" or FILE.py:NAME" if python else " (an optimizer JSON)")
    if not isinstance(text, str) or not text.strip():
        raise SpecError(f"{what} {text!r} is empty; allowed: {allowed}")
    text = text.strip()
    if text.lower().endswith(".json"):
        data = _read(text, what)
        from sdederive._json import JSONTextError, loads_strict

        try:
            d = loads_strict(data.decode("utf-8"))
        except (JSONTextError, UnicodeDecodeError) as e:
            raise SpecError(f"{what} {text}: not valid JSON ({e}); allowed: an optimizer JSON "
                            "(Optimizer.to_json())") from None
        if isinstance(d, dict) and "drift" in d and "source" in d:  # an SDE JSON: the optimizer it carries
            d = d["source"]
        try:
            return Optimizer.from_dict(d)
        except SdederiveError as e:
            raise SpecError(f"{what} {text}: {e}") from None
    path, sep, name = text.rpartition(":")
    if not python:
        raise SpecError(f"{what} {text!r} is not allowed; allowed: {allowed} (Python files are not accepted here: "
                        "a shared file could run code)")
    if not sep and text.lower().endswith(".py"):
        raise SpecError(f"{what} {text!r} names no object; allowed: {text}:NAME, NAME an Optimizer (or a function "
                        "of no arguments returning one) defined in the file")
    if not sep or not path.lower().endswith(".py"):
        raise SpecError(f"{what} {text!r} is not allowed; allowed: {allowed}")
    if not name.isidentifier():
        raise SpecError(f"{what} {text!r}: {name!r} is not a Python name; allowed: {path}:NAME with NAME an "
                        "identifier")
    _read(path, what)  # exists, a file, not too large
    mod_name = "_sdederive_spec_" + hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:  # pragma: no cover - a .py path always has a loader
        raise SpecError(f"{what} {path}: cannot be loaded as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module  # dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - the user's code: report whatever it raised, in one line
        sys.modules.pop(mod_name, None)
        raise SpecError(f"{what} {path}: running the file raised {type(e).__name__}: {e}") from None
    if not hasattr(module, name):
        found = sorted(k for k, v in vars(module).items() if isinstance(v, Optimizer) and not k.startswith("_"))
        raise SpecError(f"{what} {text}: {path} defines no {name!r}; Optimizer objects in it: "
                        f"{', '.join(found) or '(none)'}")
    obj = getattr(module, name)
    if callable(obj) and not isinstance(obj, Optimizer):
        try:
            obj = obj()
        except Exception as e:  # noqa: BLE001 - the user's code
            raise SpecError(f"{what} {text}: calling {name}() raised {type(e).__name__}: {e}; allowed: an Optimizer "
                            "or a function of no arguments returning one") from None
    if not isinstance(obj, Optimizer):
        raise SpecError(f"{what} {text}: {name} is of type {type(obj).__name__}, not an Optimizer; allowed: an Optimizer "
                        "(sd.chain, sd.from_update) or a function of no arguments returning one")
    return obj


def _read(path: str, what: str) -> bytes:
    if not os.path.exists(path):
        raise SpecError(f"{what}: the file {path!r} does not exist")
    if not os.path.isfile(path):
        raise SpecError(f"{what}: {path!r} is not a file")
    size = os.path.getsize(path)
    if size > _MAX_SPEC_BYTES:
        raise SpecError(f"{what}: the file {path!r} has {size} bytes; allowed: at most {_MAX_SPEC_BYTES}")
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise SpecError(f"{what}: cannot read {path!r} ({e.strerror})") from None

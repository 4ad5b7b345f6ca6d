"""What every ``sdederive`` subcommand shares (the main CLI, ``validate`` and ``sweep``): the
argparse parser and help formatter, the ``NAME=VALUE`` list parser, the "Example:" epilog.

This module imports nothing from the subcommands, so each of them imports it without a cycle.
"""

from __future__ import annotations

import argparse
import re
import textwrap

from sdederive.errors import SdederiveError

__all__ = ["UsageError", "Parser", "Formatter", "one_line", "kv_list", "examples"]


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
    """A plain-text summary of an optimizer docstring: its first line without RST math markup."""
    first = (doc or "").strip().splitlines()[0] if (doc or "").strip() else ""
    head, sep, _ = first.partition(": ")
    text = head if sep else first
    text = re.sub(r":math:`([^`]*)`", r"\1", text).replace("``", "").replace("`", "")
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

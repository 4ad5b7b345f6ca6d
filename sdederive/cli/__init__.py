"""The ``sdederive`` command line: :mod:`.main` (the commands), :mod:`._common` (what every
subcommand shares)."""

from sdederive.cli.main import build_parser, main

__all__ = ["main", "build_parser"]

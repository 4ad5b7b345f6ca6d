"""The ``sdederive`` command line: :mod:`sdederive.cli.main` (the commands; the console script is its
``main``), :mod:`._common` (what every subcommand shares), :mod:`._catalog` (the names ``--help``
lists, without importing sympy).

Nothing is imported here, so ``python -m sdederive.cli.main`` runs its module once."""

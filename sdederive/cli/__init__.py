"""The `sdederive` command line: `sdederive.cli.main` (the commands; the console script is its
`main`), `._common` (what every subcommand shares), `._catalog` (the names `--help`
lists, without importing sympy).

Nothing is imported here, so `python -m sdederive.cli.main` runs its module once."""

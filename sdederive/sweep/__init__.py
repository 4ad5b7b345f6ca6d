"""Sweeps: grids of simulations (optimizer x learning rate x batch size x seed ...) on any
`concurrent.futures.Executor` (a local process pool, or a Dask cluster through
`client.get_executor()`), stored as Parquet with resume, and analysed (optimal learning rate per
batch size with a bootstrap band, McCandlish and surge fits)."""

import importlib

# public name -> submodule, imported on first use (PEP 562): the CLI's parser imports sdederive.sweep.cli
# without the runner, numpy or pyarrow
_LAZY = {"Optimum": "analysis", "SweepResult": "analysis", "Grid": "grid", "cell_id": "grid", "run": "runner",
         "run_cell": "runner", "with_batch": "runner", "compact": "store", "done_ids": "store", "load": "store"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["Grid", "cell_id", "run", "run_cell", "with_batch", "SweepResult", "Optimum", "load", "done_ids",
           "compact"]

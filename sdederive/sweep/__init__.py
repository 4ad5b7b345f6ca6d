"""Sweeps: grids of simulations (optimizer x learning rate x batch size x seed ...) on any
``concurrent.futures.Executor`` (a local process pool, or a Dask cluster through
``client.get_executor()``), stored as Parquet with resume, and analysed (optimal learning rate per
batch size with a bootstrap band, McCandlish and surge fits)."""

from sdederive.sweep.analysis import Optimum, SweepResult
from sdederive.sweep.grid import Grid, cell_id
from sdederive.sweep.runner import run, run_cell, with_batch
from sdederive.sweep.store import compact, done_ids, load

__all__ = ["Grid", "cell_id", "run", "run_cell", "with_batch", "SweepResult", "Optimum", "load", "done_ids",
           "compact"]

"""Kernel backends: the interface and registry (:mod:`.base`), numba on CPU (:mod:`.numba_backend`, printer
:mod:`.numba_printer`), CUDA on GPU (:mod:`.cuda_backend`, printer :mod:`.cuda_printer`)."""

from sdederive.simulate.backends.base import AbstractBackend, backend_names, get_backend, register_backend

__all__ = ["AbstractBackend", "backend_names", "get_backend", "register_backend"]

"""Kernel backends: the interface (:mod:`.base`) and registry (:mod:`.registry`), numba on CPU
(:mod:`.numba_backend`, printer :mod:`.numba_printer`), CUDA on GPU (:mod:`.cuda_backend`, printer
:mod:`.cuda_printer`).  The registry functions import nothing heavy; ``AbstractBackend`` loads :mod:`.base`
(numpy, sympy) on first use."""

from sdederive.simulate.backends.registry import backend_names, get_backend, register_backend

__all__ = ["AbstractBackend", "backend_names", "get_backend", "register_backend"]


def __getattr__(name: str):
    if name == "AbstractBackend":
        from sdederive.simulate.backends.base import AbstractBackend

        return AbstractBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

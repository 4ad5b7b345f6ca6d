"""Kernel backends: the interface (`.base`) and registry (`.registry`), numba on CPU
(`.numba_backend`, printer `.numba_printer`), CUDA on GPU (`.cuda_backend`, printer
`.cuda_printer`).  The registry functions import nothing heavy; `AbstractBackend` loads `.base`
(numpy, sympy) on first use."""

from sdederive.simulate.backends.registry import backend_names, get_backend, register_backend

__all__ = ["AbstractBackend", "backend_names", "get_backend", "register_backend"]


def __getattr__(name: str):
    if name == "AbstractBackend":
        from sdederive.simulate.backends.base import AbstractBackend

        return AbstractBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

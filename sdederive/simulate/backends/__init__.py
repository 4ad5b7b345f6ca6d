"""Kernel backends: numba on CPU (:mod:`.numba_backend`), CUDA on GPU (:mod:`.cuda_backend`)."""

"""Counter-based random numbers (Philox-4x32-10): the numba version (`.philox`) and the C/CUDA
source (`.philox_c`) give the same bits for the same (seed, step, path, coordinate)."""

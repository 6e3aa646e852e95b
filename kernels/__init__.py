"""Compute kernels (Numba CPU/CUDA, CuPy), installed as `fanova_gpu.kernels`.

Every kernel draws its randomness from the counter-based stream in `rng`, so the CPU, the
GPU and the NumPy references produce the same numbers for the same (key, counter).
"""

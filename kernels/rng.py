"""Counter-based random numbers (SplitMix64), identical in NumPy, Numba CPU and CUDA.

A draw is a pure function of (key, counter): u = finalize(key + (counter + 1) * GAMMA).
Keys are derived by hashing a tuple of integers (seed, stream ids...). No state, so any
element of any mask can be recomputed anywhere, in any order, on any device.
"""

from __future__ import annotations

import numpy as np
from numba import njit

GAMMA = np.uint64(0x9E3779B97F4A7C15)
M1 = np.uint64(0xBF58476D1CE4E5B9)
M2 = np.uint64(0x94D049BB133111EB)
S30, S27, S31, S40 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(40)
INV_2_24 = np.float32(1.0 / (1 << 24))
MASK64 = (1 << 64) - 1


def finalize_py(z: np.uint64) -> np.uint64:
    """SplitMix64 output function (a bijection of uint64); plain Python for device reuse."""
    z = (z ^ (z >> S30)) * M1
    z = (z ^ (z >> S27)) * M2
    return z ^ (z >> S31)


def uniform_py(key: np.uint64, counter: np.uint64) -> np.float32:
    """The counter-th float32 in [0, 1) of stream `key` (24 random bits).

    Self-contained (no calls) so that it compiles unchanged under njit and cuda.jit(device=True).
    """
    z = key + (counter + np.uint64(1)) * GAMMA
    z = (z ^ (z >> S30)) * M1
    z = (z ^ (z >> S27)) * M2
    z = z ^ (z >> S31)
    return np.float32(z >> S40) * INV_2_24


finalize = njit(cache=True, inline="always")(finalize_py)
uniform = njit(cache=True, inline="always")(uniform_py)


def _finalize_int(z: int) -> int:
    z &= MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def derive_key(*ids: int) -> int:
    """Hash a tuple of non-negative integers into a 64-bit stream key (order matters)."""
    h = 0x243F6A8885A308D3
    for x in ids:
        x = int(x)
        if x < 0:
            raise ValueError(f"derive_key: ids must be non-negative integers, got {x}")
        h = _finalize_int(h ^ _finalize_int(x + 0x9E3779B97F4A7C15))
    return h


def uniform_numpy(key: int, counters: np.ndarray) -> np.ndarray:
    """NumPy reference of `uniform` for an array of counters (uint64 arithmetic wraps)."""
    c = np.asarray(counters, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = np.uint64(key) + (c + np.uint64(1)) * GAMMA
        z = (z ^ (z >> S30)) * M1
        z = (z ^ (z >> S27)) * M2
        z = z ^ (z >> S31)
    return (z >> S40).astype(np.float32) * INV_2_24

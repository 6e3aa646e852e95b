"""Inverted-dropout masks for a stack of replicas, drawn from the counter-based stream.

Replica r's mask at (step, layer) is a pure function of its key
    derive_key(MASK_STREAM, seed, kind_code, rate_code, step, layer)
and of the element's position (counter = row * units + unit), so it does not depend on
which other replicas share the stack, on chunking, or on the device. A unit is kept when
u >= p (probability 1 - p) and then scaled by 1 / (1 - p); p = 0 keeps everything at 1.

Three implementations of the same stream: Numba CPU (`fill_masks`; `relu_dropout` and
`mask_mul` fuse it into the training forward), Numba CUDA (`fill_masks_cuda`), and the NumPy
reference `masks_numpy` that the tests compare both against.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .rng import GAMMA, INV_2_24, derive_key, finalize, uniform, uniform_numpy

MASK_STREAM = 0x6D61736B  # "mask": separates mask keys from init / shuffle keys
KIND_CODES = {"input": 0, "activation": 1, "both": 2}


def rate_code(rate: float) -> int:
    """Integer id of a dropout rate for key derivation (micro-units)."""
    return int(round(float(rate) * 1e6))


def base_keys(seeds, kinds, rates) -> np.ndarray:
    """Per-replica partial keys derive_key(MASK_STREAM, seed, kind, rate) -> uint64 [R]."""
    return np.array(
        [derive_key(MASK_STREAM, int(s), KIND_CODES[k], rate_code(p))
         for s, k, p in zip(seeds, kinds, rates, strict=True)],
        dtype=np.uint64,
    )


@njit(cache=True, inline="always")
def _extend(h, x):
    # one round of derive_key's chain: h <- finalize(h ^ finalize(x + GAMMA))
    return finalize(h ^ finalize(x + GAMMA))


@njit(cache=True)
def step_keys(base: np.ndarray, step: int, layer: int) -> np.ndarray:
    """Keys of (step, layer) for every replica: derive_key(..., step, layer) continued."""
    out = np.empty(base.shape[0], dtype=np.uint64)
    s = np.uint64(step)
    lay = np.uint64(layer)
    for r in range(base.shape[0]):
        out[r] = _extend(_extend(base[r], s), lay)
    return out


def step_keys_py(base: np.ndarray, step: int, layer: int) -> np.ndarray:
    """Pure-Python reference of `step_keys` (continues derive_key's hash chain)."""
    from .rng import _finalize_int

    out = []
    for h in np.asarray(base, dtype=np.uint64):
        h = int(h)
        for x in (step, layer):
            h = _finalize_int(h ^ _finalize_int(int(x) + 0x9E3779B97F4A7C15))
        out.append(h)
    return np.array(out, dtype=np.uint64)


def scales(rates: np.ndarray) -> np.ndarray:
    """1 / (1 - p) in float32, computed once in float64 so every implementation agrees."""
    return (1.0 / (1.0 - np.asarray(rates, dtype=np.float64))).astype(np.float32)


@njit(cache=True, parallel=True)
def fill_masks(out: np.ndarray, keys: np.ndarray, rates: np.ndarray, scale: np.ndarray) -> None:
    """out[r, i, j] = scale[r] if uniform(keys[r], i*units + j) >= rates[r] else 0.

    out: float32 [R, n, units]; keys: uint64 [R]; rates, scale: float32 [R].
    """
    R, n, units = out.shape
    for ri in prange(R * n):
        r = ri // n
        i = ri - r * n
        p = rates[r]
        s = scale[r]
        if p == 0:
            for j in range(units):
                out[r, i, j] = 1.0
            continue
        k = keys[r]
        c0 = np.uint64(i) * np.uint64(units)
        for j in range(units):
            u = uniform(k, c0 + np.uint64(j))
            out[r, i, j] = s if u >= p else np.float32(0.0)


@njit(cache=True, parallel=True)
def relu_dropout(z: np.ndarray, bias: np.ndarray, keys: np.ndarray, rates: np.ndarray,
                 scale: np.ndarray) -> None:
    """Fused training forward of bias + ReLU + inverted dropout, in place (no mask tensor).

    z <- relu(z + bias) * mask. The backward pass needs no stored mask: the local derivative
    mask * (z + bias > 0) equals scale * (output > 0), because scale >= 1 and a kept positive
    input stays positive. Same mask stream as `fill_masks`.
    z: float32 [R, n, units] (C-contiguous); bias: [R, units].
    """
    R, n, units = z.shape
    for ri in prange(R * n):
        r = ri // n
        i = ri - r * n
        p = rates[r]
        s = scale[r]
        k = keys[r]
        c0 = np.uint64(i) * np.uint64(units)
        for j in range(units):
            zz = z[r, i, j] + bias[r, j]
            if zz > 0 and (p == 0 or uniform(k, c0 + np.uint64(j)) >= p):
                z[r, i, j] = zz * s
            else:
                z[r, i, j] = 0.0


@njit(cache=True, parallel=True)
def mask_mul(out: np.ndarray, x: np.ndarray, keys: np.ndarray, rates: np.ndarray,
             scale: np.ndarray) -> None:
    """out[r] <- x[r or 0] * mask[r]: input dropout applied to shared ([1, n, d]) or
    per-replica ([R, n, d]) rows, without materialising the mask. out: [R, n, d]."""
    R, n, units = out.shape
    xs = np.int64(0) if x.shape[0] == 1 else np.int64(1)  # row stride of x over replicas
    for ri in prange(R * n):
        r = ri // n
        i = ri - r * n
        rx = np.int64(r) * xs
        p = rates[r]
        s = scale[r]
        k = keys[r]
        c0 = np.uint64(i) * np.uint64(units)
        for j in range(units):
            m = s
            if p != 0:
                if uniform(k, c0 + np.uint64(j)) < p:
                    m = np.float32(0.0)
            out[r, i, j] = x[rx, i, j] * m


def masks_numpy(keys: np.ndarray, rates: np.ndarray, n: int, units: int) -> np.ndarray:
    """NumPy reference of `fill_masks`: float32 [R, n, units]."""
    rates = np.asarray(rates, dtype=np.float32)
    scale = scales(rates)
    counters = np.arange(n * units, dtype=np.uint64)
    out = np.empty((len(keys), n, units), dtype=np.float32)
    for r, k in enumerate(np.asarray(keys, dtype=np.uint64)):
        u = uniform_numpy(int(k), counters).reshape(n, units)
        out[r] = np.where(u >= rates[r], scale[r], np.float32(0.0))
    return out


_CUDA_KERNEL = None
cuda = None  # numba.cuda, imported on first use (optional)


def _cuda_kernel():
    """Compile the CUDA kernel on first use (numba.cuda is optional; the simulator works too)."""
    global _CUDA_KERNEL, cuda  # a module global, so that the CUDA simulator can swap it
    if _CUDA_KERNEL is None:
        import numba.cuda

        from .rng import uniform_py

        cuda = numba.cuda

        uni = cuda.jit(device=True)(uniform_py)

        @cuda.jit
        def kernel(out, keys, rates, scale):
            r, i, j = cuda.grid(3)
            R, n, units = out.shape
            if r < R and i < n and j < units:
                p = rates[r]
                m = scale[r]
                if p != 0:
                    c = np.uint64(i) * np.uint64(units) + np.uint64(j)
                    if uni(keys[r], c) < p:
                        m = np.float32(0.0)
                out[r, i, j] = m

        _CUDA_KERNEL = kernel
    return _CUDA_KERNEL


def fill_masks_cuda(out, keys, rates, scale) -> None:
    """CUDA version of `fill_masks`; arrays are device arrays (or torch CUDA tensors)."""
    from numba import cuda

    kernel = _cuda_kernel()

    def dev(a):
        if isinstance(a, np.ndarray):
            return cuda.to_device(a)
        return cuda.as_cuda_array(a) if hasattr(a, "__cuda_array_interface__") else a

    out_d, keys_d, rates_d, scale_d = (dev(a) for a in (out, keys, rates, scale))
    R, n, units = out_d.shape
    threads = (1, 8, 32)
    blocks = (R, (n + 7) // 8, (units + 31) // 32)
    kernel[blocks, threads](out_d, keys_d, rates_d, scale_d)
    if isinstance(out, np.ndarray):
        out_d.copy_to_host(out)


def _i64(x: int) -> int:
    """The int64 with the same bits as the uint64 x."""
    return x - (1 << 64) if x >= (1 << 63) else x


_GAMMA_I, _M1_I, _M2_I = (_i64(int(c)) for c in (GAMMA, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))


def _srl(z, k: int):
    """Logical right shift of int64 tensors holding uint64 bits."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def uniform_torch(keys, counters):
    """The stream in plain torch int64 ops (wrapping multiply, emulated logical shifts).

    keys: int64 [R] (uint64 bits), counters: int64 [N] -> float32 [R, N]. A fallback for
    CUDA machines without numba.cuda; bit-identical to `uniform_numpy`.
    """
    import torch

    z = keys[:, None] + (counters[None, :] + 1) * _GAMMA_I
    z = (z ^ _srl(z, 30)) * _M1_I
    z = (z ^ _srl(z, 27)) * _M2_I
    z = z ^ _srl(z, 31)
    return _srl(z, 40).to(torch.float32) * float(INV_2_24)


def fill_masks_torch(out, keys, rates, scale) -> None:
    """`fill_masks` with torch ops (any device): out [R, n, units] float32 tensor."""
    import torch

    R, n, units = out.shape
    counters = torch.arange(n * units, dtype=torch.int64, device=out.device)
    u = uniform_torch(keys, counters).view(R, n, units)
    keep = u >= rates.view(R, 1, 1)
    out.copy_(torch.where(keep, scale.view(R, 1, 1), torch.zeros((), device=out.device)))

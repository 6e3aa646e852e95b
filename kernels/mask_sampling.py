"""Monte Carlo Dropout-mask sampling for product-sum functions: Numba CPU, Numba CUDA, NumPy.

Stream layout (shared by every implementation, incl. the CuPy kernel): the keep bit of input
v for sample s at point i is

    keep = uniform(key, (s * n + i) * d + v) >= p_eff,   p_eff = ceil(p * 2^24) / 2^24,

so P(drop) = p_eff exactly (u has 24 random bits) and |p_eff - p| < 6e-8. Bit j of a mask
word is the keep bit of used[j] (the inputs F depends on, at most 64). Each (sample, point)
gives two values of F = sum_t coef_t prod_j g_tj:

    cond = sum_t (coef_t * prod_j (keep ? g_tj(x) : E g_tj))   = E_Z F(x_M, Z_-M), exactly
    zero = sum_t (coef_t * prod_j (keep ? g_tj(x) : g_tj(0)))   = F(x * M)

multiplied left to right and summed in term order (the same float operations everywhere).
The host tabulates each term's two products for every keep pattern of its factors,
ptab [n, T, 2^F, 2] (same multiplication order), so a sample costs one look-up per term.

Moments: samples are split into C contiguous chunks; task (c, i) accumulates, in sample
order, sum cond, sum cond^2, sum zero, sum zero^2, sum cond*zero into partial[c, i, :5]
(float64). The host sums partial over c, so the Numba CPU kernel, the CUDA kernel under the
simulator and the CuPy source built on the host give identical moments (a real GPU may fuse
multiply-adds in Numba CUDA code: equal to float rounding there; mask words stay exact).
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, njit, prange  # numba.cuda imports without a GPU (~0.1 s)

from .rng import uniform, uniform_numpy, uniform_py

N_MOMENTS = 5  # sum cond, sum cond^2, sum zero, sum zero^2, sum cond*zero


def effective_drop(p: float) -> float:
    """The exact drop probability of the test u >= p_eff (a multiple of 2^-24 above p)."""
    if not np.isfinite(p) or not 0.0 <= p <= 1.0:
        raise ValueError(f"p: expected a dropout rate in [0, 1], got {p!r}")
    return math.ceil(p * (1 << 24)) / float(1 << 24)


def chunk_len(n_samples: int, n_chunks: int) -> int:
    return -(-n_samples // n_chunks)


# ------------------------------------------------ device-agnostic bodies (njit and cuda.jit)


def _make_bits(uniform_fn):
    def mask_bits(key, p_eff, s, i, n, d, used):
        """Mask word of sample s at point i (bit j = keep bit of input used[j])."""
        base = (np.uint64(s) * np.uint64(n) + np.uint64(i)) * np.uint64(d)
        bits = np.uint64(0)
        for j in range(used.shape[0]):
            keep = np.uint64(uniform_fn(key, base + used[j]) >= p_eff)  # branch-free
            bits = bits | (keep << np.uint64(j))
        return bits

    return mask_bits


def _evaluate(bits, i, nfac, slot, ptab):
    """(cond, zero) of one mask word at point i: one look-up per term in the flat table."""
    cond = 0.0
    zero = 0.0
    n_terms = nfac.shape[0]
    n_pat = np.uint64(1) << np.uint64(slot.shape[1])  # 2^F patterns per term
    row = np.uint64(i) * np.uint64(n_terms)
    for t in range(n_terms):
        pat = np.uint64(0)
        for j in range(nfac[t]):
            pat = pat | (((bits >> slot[t, j]) & np.uint64(1)) << np.uint64(j))
        k = ((row + np.uint64(t)) * n_pat + pat) * np.uint64(2)
        cond = cond + ptab[k]
        zero = zero + ptab[k + np.uint64(1)]
    return cond, zero


def _make_task(bits_fn, eval_fn):
    def moments_task(task, key, p_eff, n_samples, clen, n, d, used, nfac, slot, ptab, partial):
        """Accumulate chunk c = task // n at point i = task % n into partial[c, i, :]."""
        c = task // n
        i = task - c * n
        s1 = (c + 1) * clen
        if s1 > n_samples:
            s1 = n_samples
        a0 = 0.0
        a1 = 0.0
        a2 = 0.0
        a3 = 0.0
        a4 = 0.0
        for s in range(c * clen, s1):
            bits = bits_fn(key, p_eff, s, i, n, d, used)
            vc, vz = eval_fn(bits, i, nfac, slot, ptab)
            a0 = a0 + vc
            a1 = a1 + vc * vc
            a2 = a2 + vz
            a3 = a3 + vz * vz
            a4 = a4 + vc * vz
        partial[c, i, 0] = a0
        partial[c, i, 1] = a1
        partial[c, i, 2] = a2
        partial[c, i, 3] = a3
        partial[c, i, 4] = a4

    return moments_task


# ---------------------------------------------------------------------------- Numba CPU

_bits_cpu = njit(inline="always")(_make_bits(uniform))
_eval_cpu = njit(inline="always")(_evaluate)
_task_cpu = njit(_make_task(_bits_cpu, _eval_cpu))


@njit(parallel=True, cache=True)
def _moments_cpu(key, p_eff, n_samples, clen, n, d, used, nfac, slot, ptab, partial):
    for task in prange(partial.shape[0] * n):
        _task_cpu(task, key, p_eff, n_samples, clen, n, d, used, nfac, slot, ptab,
                  partial)


@njit(parallel=True, cache=True)
def _values_cpu(key, p_eff, s0, n, d, used, nfac, slot, ptab, cond, zero, bits):
    for task in prange(cond.shape[0] * n):
        s = task // n
        i = task - s * n
        b = _bits_cpu(key, p_eff, s0 + s, i, n, d, used)
        bits[s, i] = b
        vc, vz = _eval_cpu(b, i, nfac, slot, ptab)
        cond[s, i] = vc
        zero[s, i] = vz


# ----------------------------------------------------------------------- inputs and checks


def prepare(enc, gx, mu, g0, d: int) -> dict:
    """Kernel arguments from a checked encoding and factor tables (see theory.factor_tables)."""
    T = enc["coef"].shape[0]
    used = np.unique(np.concatenate(
        [enc["var"][t, : enc["nfac"][t]] for t in range(T)] + [np.zeros(0, np.int32)]
    )).astype(np.uint64)
    if used.shape[0] > 64:
        raise ValueError(f"encoding: expected at most 64 distinct inputs, got {used.shape[0]}")
    if used.shape[0] and int(used.max()) >= d:
        raise ValueError(f"d: expected more than {int(used.max())} inputs, got {d}")
    where = {int(v): j for j, v in enumerate(used)}
    slot = np.zeros(enc["var"].shape, np.uint64)  # [T, F]: bit of each factor's input
    for t in range(T):
        for j in range(enc["nfac"][t]):
            slot[t, j] = where[int(enc["var"][t, j])]
    gx = np.asarray(gx, np.float64)  # [n, T, F]
    n, F = gx.shape[0], gx.shape[2]
    if F > 12:
        raise ValueError(f"encoding: expected at most 12 factors per term, got {F}")
    ptab = np.empty((n, T, 1 << F, 2))  # [n, T, 2^F, (cond, zero)], passed flat
    for t in range(T):
        for pat in range(1 << F):
            pc = np.full(n, float(enc["coef"][t]))
            pz = pc.copy()
            for j in range(enc["nfac"][t]):
                keep = (pat >> j) & 1
                pc = pc * (gx[:, t, j] if keep else mu[t, j])
                pz = pz * (gx[:, t, j] if keep else g0[t, j])
            ptab[:, t, pat, 0] = pc
            ptab[:, t, pat, 1] = pz
    return {"used": used, "coef": np.ascontiguousarray(enc["coef"], np.float64),
            "nfac": np.ascontiguousarray(enc["nfac"], np.int32), "slot": slot,
            "gx": gx, "mu": np.asarray(mu, np.float64), "g0": np.asarray(g0, np.float64),
            "ptab": ptab.reshape(-1), "d": int(d)}


def _check_counts(n_samples: int, n_chunks: int) -> None:
    if isinstance(n_samples, bool) or int(n_samples) < 1:
        raise ValueError(f"samples: expected a positive integer, got {n_samples!r}")
    if isinstance(n_chunks, bool) or int(n_chunks) < 1:
        raise ValueError(f"chunks: expected a positive integer, got {n_chunks!r}")


def default_chunks(n_samples: int, n_points: int, target_tasks: int) -> int:
    """Chunks per point so that chunks x points >= target_tasks (and no chunk is empty)."""
    c = max(1, -(-target_tasks // max(1, n_points)))
    return int(min(c, n_samples))


# ---------------------------------------------------------------------------- entry points


def moments_cpu(key: int, p: float, n_samples: int, args: dict, n_chunks: int | None = None
                ) -> np.ndarray:
    """Numba CPU (parallel over chunks x points): moments [n, 5] of cond and zero values."""
    import numba

    n = args["gx"].shape[0]
    if n_chunks is None:
        n_chunks = default_chunks(n_samples, n, 8 * numba.get_num_threads())
    _check_counts(n_samples, n_chunks)
    partial = np.zeros((n_chunks, n, N_MOMENTS))
    _moments_cpu(np.uint64(key), effective_drop(p), int(n_samples),
                 chunk_len(n_samples, n_chunks), n, args["d"], args["used"],
                 args["nfac"], args["slot"], args["ptab"], partial)
    return partial.sum(axis=0)


def values_cpu(key: int, p: float, s0: int, n_samples: int, args: dict):
    """Per-sample (cond, zero, mask word), each [n_samples, n], for samples s0.. (tests)."""
    n = args["gx"].shape[0]
    cond = np.zeros((n_samples, n))
    zero = np.zeros((n_samples, n))
    bits = np.zeros((n_samples, n), np.uint64)
    _values_cpu(np.uint64(key), effective_drop(p), int(s0), n, args["d"], args["used"],
                args["nfac"], args["slot"], args["ptab"], cond, zero, bits)
    return cond, zero, bits


def values_numpy(key: int, p: float, s0: int, n_samples: int, args: dict):
    """NumPy vectorized reference of the same stream and float operations: [n_samples, n]."""
    n, T = args["gx"].shape[:2]
    d = args["d"]
    p_eff = effective_drop(p)
    s = np.arange(s0, s0 + n_samples, dtype=np.uint64)[:, None]
    base = (s * np.uint64(n) + np.arange(n, dtype=np.uint64)[None, :]) * np.uint64(d)
    keep = [uniform_numpy(key, base + v).astype(np.float64) >= p_eff for v in args["used"]]
    bits = np.zeros((n_samples, n), np.uint64)
    for j, kj in enumerate(keep):
        bits |= kj.astype(np.uint64) << np.uint64(j)
    cond = np.zeros((n_samples, n))
    zero = np.zeros((n_samples, n))
    for t in range(T):
        pc = np.full((n_samples, n), args["coef"][t])
        pz = pc.copy()
        for j in range(args["nfac"][t]):
            kj = keep[args["slot"][t, j]]
            g = args["gx"][None, :, t, j]  # [1, n]
            pc = pc * np.where(kj, g, args["mu"][t, j])
            pz = pz * np.where(kj, g, args["g0"][t, j])
        cond = cond + pc
        zero = zero + pz
    return cond, zero, bits


def moments_from_values(cond: np.ndarray, zero: np.ndarray) -> np.ndarray:
    """Moments [n, 5] from per-sample values [S, n] (float64, NumPy summation order)."""
    return np.stack([cond.sum(0), (cond * cond).sum(0), zero.sum(0), (zero * zero).sum(0),
                     (cond * zero).sum(0)], axis=1)


def moments_numpy(key: int, p: float, n_samples: int, args: dict, block: int = 4096
                  ) -> np.ndarray:
    """NumPy reference of `moments_cpu`, vectorized over blocks of samples x points."""
    n = args["gx"].shape[0]
    _check_counts(n_samples, 1)
    out = np.zeros((n, N_MOMENTS))
    for s0 in range(0, n_samples, block):
        out += moments_from_values(*values_numpy(key, p, s0, min(block, n_samples - s0), args)[:2])
    return out


# ---------------------------------------------------------------------------- Numba CUDA

_CUDA = {}


def cuda_kernels() -> dict:
    """Compile-on-first-use Numba CUDA kernels (also run under NUMBA_ENABLE_CUDASIM=1)."""
    if _CUDA:
        return _CUDA

    bits_dev = cuda.jit(device=True)(_make_bits(cuda.jit(device=True)(uniform_py)))
    eval_dev = cuda.jit(device=True)(_evaluate)
    task_dev = cuda.jit(device=True)(_make_task(bits_dev, eval_dev))

    @cuda.jit
    def moments(key, p_eff, n_samples, clen, n, d, used, nfac, slot, ptab, partial):
        task = cuda.grid(1)
        if task < partial.shape[0] * n:
            task_dev(task, key, p_eff, n_samples, clen, n, d, used, nfac, slot, ptab, partial)

    @cuda.jit
    def values(key, p_eff, s0, n, d, used, nfac, slot, ptab, cond, zero, bits):
        task = cuda.grid(1)
        if task < cond.shape[0] * n:
            s = task // n
            i = task - s * n
            b = bits_dev(key, p_eff, s0 + s, i, n, d, used)
            bits[s, i] = b
            vc, vz = eval_dev(b, i, nfac, slot, ptab)
            cond[s, i] = vc
            zero[s, i] = vz

    _CUDA.update(moments=moments, values=values)
    return _CUDA


def _device_args(args: dict) -> list:
    names = ("used", "nfac", "slot", "ptab")
    return [cuda.to_device(args[k]) for k in names]


def moments_cuda(key: int, p: float, n_samples: int, args: dict, n_chunks: int | None = None,
                 threads: int = 256) -> np.ndarray:
    """Numba CUDA: one thread per (chunk, point); same partial sums as `moments_cpu`."""
    n = args["gx"].shape[0]
    if n_chunks is None:
        n_chunks = default_chunks(n_samples, n, 1 << 17)
    _check_counts(n_samples, n_chunks)
    k = cuda_kernels()["moments"]
    partial = cuda.to_device(np.zeros((n_chunks, n, N_MOMENTS)))
    blocks = -(-(n_chunks * n) // threads)
    used, nfac, slot, ptab = _device_args(args)
    k[blocks, threads](np.uint64(key), effective_drop(p), int(n_samples),
                       chunk_len(n_samples, n_chunks), n, args["d"], used, nfac, slot, ptab,
                       partial)
    return partial.copy_to_host().sum(axis=0)


def values_cuda(key: int, p: float, s0: int, n_samples: int, args: dict, threads: int = 64):
    """Per-sample (cond, zero, mask word) [n_samples, n] from the CUDA kernel (tests)."""
    n = args["gx"].shape[0]
    cond = cuda.to_device(np.zeros((n_samples, n)))
    zero = cuda.to_device(np.zeros((n_samples, n)))
    bits = cuda.to_device(np.zeros((n_samples, n), np.uint64))
    used, nfac, slot, ptab = _device_args(args)
    blocks = -(-(n_samples * n) // threads)
    cuda_kernels()["values"][blocks, threads](
        np.uint64(key), effective_drop(p), int(s0), n, args["d"], used, nfac, slot, ptab,
        cond, zero, bits)
    return cond.copy_to_host(), zero.copy_to_host(), bits.copy_to_host()

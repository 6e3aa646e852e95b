"""CuPy RawKernel version of `mask_sampling`: same counter stream, same float operations.

Its reference is `mask_sampling.values_numpy` (NumPy, same stream): per-sample values and
mask words agree bit for bit (compiled with --fmad=false so no multiply-add is fused).
Importing this module never needs CuPy; the kernels compile on first use where CuPy sees a
device. Without a GPU the tests compile SOURCE as C++ on the host (launch emulated by loops)
and compare it with the NumPy reference and the Numba CPU kernel bit for bit.
"""

from __future__ import annotations

import numpy as np

from .mask_sampling import N_MOMENTS, chunk_len, default_chunks, effective_drop

SOURCE = r"""
typedef unsigned long long u64;

__device__ __forceinline__ float uniform(u64 key, u64 counter) {
    u64 z = key + (counter + 1ULL) * 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z = z ^ (z >> 31);
    return (float)(z >> 40) * (1.0f / 16777216.0f);
}

__device__ __forceinline__ u64 mask_bits(u64 key, double p_eff, long long s, long long i,
                                         long long n, long long d, const u64* used, int n_used) {
    u64 base = ((u64)s * (u64)n + (u64)i) * (u64)d;
    u64 bits = 0ULL;
    for (int j = 0; j < n_used; ++j) {
        u64 keep = ((double)uniform(key, base + used[j]) >= p_eff) ? 1ULL : 0ULL;
        bits |= keep << j;
    }
    return bits;
}

__device__ __forceinline__ void evaluate(u64 bits, long long i, const int* nfac, const u64* slot,
                                         int n_terms, int n_fac, const double* ptab,
                                         double* cond, double* zero) {
    double c = 0.0, z = 0.0;
    u64 n_pat = 1ULL << n_fac;
    u64 row = (u64)i * (u64)n_terms;
    for (int t = 0; t < n_terms; ++t) {
        u64 pat = 0ULL;
        for (int j = 0; j < nfac[t]; ++j)
            pat |= ((bits >> slot[t * n_fac + j]) & 1ULL) << j;
        u64 k = ((row + t) * n_pat + pat) * 2ULL;
        c = c + ptab[k];
        z = z + ptab[k + 1];
    }
    *cond = c;
    *zero = z;
}

extern "C" __global__ void moments(u64 key, double p_eff, long long n_samples, long long clen,
                                   long long n, long long d, const u64* used, int n_used,
                                   const int* nfac, const u64* slot, int n_terms, int n_fac,
                                   const double* ptab, long long n_chunks, double* partial) {
    long long task = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (task >= n_chunks * n) return;
    long long c = task / n, i = task - c * n;
    long long s1 = (c + 1) * clen < n_samples ? (c + 1) * clen : n_samples;
    double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0, a4 = 0.0, vc, vz;
    for (long long s = c * clen; s < s1; ++s) {
        u64 bits = mask_bits(key, p_eff, s, i, n, d, used, n_used);
        evaluate(bits, i, nfac, slot, n_terms, n_fac, ptab, &vc, &vz);
        a0 = a0 + vc; a1 = a1 + vc * vc; a2 = a2 + vz; a3 = a3 + vz * vz; a4 = a4 + vc * vz;
    }
    double* out = partial + (c * n + i) * 5;
    out[0] = a0; out[1] = a1; out[2] = a2; out[3] = a3; out[4] = a4;
}

extern "C" __global__ void values(u64 key, double p_eff, long long s0, long long n_samples,
                                  long long n, long long d, const u64* used, int n_used,
                                  const int* nfac, const u64* slot, int n_terms, int n_fac,
                                  const double* ptab, double* cond, double* zero, u64* bits) {
    long long task = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (task >= n_samples * n) return;
    long long s = task / n, i = task - s * n;
    u64 b = mask_bits(key, p_eff, s0 + s, i, n, d, used, n_used);
    bits[task] = b;
    evaluate(b, i, nfac, slot, n_terms, n_fac, ptab, &cond[task], &zero[task]);
}
"""

_KERNELS: dict = {}


def available() -> bool:
    """True when CuPy is installed and sees a CUDA device."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def _kernels() -> dict:
    if not _KERNELS:
        import cupy

        module = cupy.RawModule(code=SOURCE, options=("--fmad=false",))
        _KERNELS.update(moments=module.get_function("moments"),
                        values=module.get_function("values"))
    return _KERNELS


def _on_device(args: dict) -> tuple:
    import cupy

    return (cupy.asarray(args["used"]), np.int32(args["used"].shape[0]),
            cupy.asarray(args["nfac"]), cupy.asarray(np.ascontiguousarray(args["slot"])),
            np.int32(args["slot"].shape[0]), np.int32(args["slot"].shape[1]),
            cupy.asarray(args["ptab"]))


def moments_cupy(key: int, p: float, n_samples: int, args: dict, n_chunks: int | None = None,
                 threads: int = 256) -> np.ndarray:
    """Moments [n, 5] (as `mask_sampling.moments_cpu`) from the CuPy kernel."""
    import cupy

    n = args["gx"].shape[0]
    if n_chunks is None:
        n_chunks = default_chunks(n_samples, n, 1 << 17)
    partial = cupy.zeros((n_chunks, n, N_MOMENTS))
    blocks = -(-(n_chunks * n) // threads)
    _kernels()["moments"](
        (blocks,), (threads,),
        (np.uint64(key), np.float64(effective_drop(p)), np.int64(n_samples),
         np.int64(chunk_len(n_samples, n_chunks)), np.int64(n), np.int64(args["d"]),
         *_on_device(args), np.int64(n_chunks), partial))
    return cupy.asnumpy(partial).sum(axis=0)


def values_cupy(key: int, p: float, s0: int, n_samples: int, args: dict, threads: int = 256):
    """Per-sample (cond, zero, mask word) [n_samples, n] from the CuPy kernel (tests)."""
    import cupy

    n = args["gx"].shape[0]
    cond = cupy.zeros((n_samples, n))
    zero = cupy.zeros((n_samples, n))
    bits = cupy.zeros((n_samples, n), dtype=cupy.uint64)
    blocks = -(-(n_samples * n) // threads)
    _kernels()["values"](
        (blocks,), (threads,),
        (np.uint64(key), np.float64(effective_drop(p)), np.int64(s0), np.int64(n_samples),
         np.int64(n), np.int64(args["d"]), *_on_device(args), cond, zero, bits))
    return cupy.asnumpy(cond), cupy.asnumpy(zero), cupy.asnumpy(bits)

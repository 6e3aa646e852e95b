"""Mask-sampling kernels: Numba CPU, Numba CUDA (simulator, in a subprocess), CuPy and the
NumPy reference draw the same masks and compute the same per-sample values, bit for bit."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from fanova_gpu.kernels import mask_sampling as ms
from fanova_gpu.kernels import mask_sampling_cupy as msc
from fanova_gpu.kernels.rng import uniform_numpy

from fanova_gpu import theory as th
from fanova_gpu.data import Uniform

D = 6


def random_args(n_points=7, seed=0):
    rng = np.random.default_rng(seed)
    T, F = 5, 3
    enc = {"coef": rng.normal(size=T), "nfac": rng.integers(0, F + 1, T),
           "var": np.array([rng.choice([0, 2, 3, 5], F, replace=False) for _ in range(T)]),
           "kind": rng.integers(0, 6, (T, F)), "a": rng.uniform(0.5, 1.5, (T, F)),
           "c": rng.uniform(-0.3, 0.3, (T, F)), "b": rng.uniform(-0.3, 0.3, (T, F))}
    enc["nfac"][0] = F
    enc = th.check_encoding(enc)
    dist = Uniform(d=D)
    X = dist.sample(n_points, seed=seed + 1)
    return enc, ms.prepare(enc, *th.factor_tables(enc, dist, X), D)


def test_mask_words_follow_the_documented_stream_layout():
    enc, args = random_args()
    key, p, s0, S = 12345, 0.3, 11, 9
    _, _, bits = ms.values_numpy(key, p, s0, S, args)
    n = args["gx"].shape[0]
    used = args["used"]
    assert used.tolist() == [0, 2, 3, 5]
    for s in range(S):
        for i in range(n):
            ctr = ((s0 + s) * n + i) * D + used.astype(np.int64)
            keep = uniform_numpy(key, ctr) >= ms.effective_drop(p)
            assert int(bits[s, i]) == sum(int(k) << j for j, k in enumerate(keep))


def test_per_sample_values_match_direct_evaluation():
    # truth: F evaluated at the masked input, term by term, without the kernels' tables
    enc, args = random_args()
    cond, zero, bits = ms.values_numpy(5, 0.4, 0, 30, args)
    used = args["used"]
    for s in range(0, 30, 7):
        for i in range(args["gx"].shape[0]):
            keep = {int(v): bool((int(bits[s, i]) >> j) & 1) for j, v in enumerate(used)}
            vc = vz = 0.0
            for t in range(len(enc["coef"])):
                pc = pz = enc["coef"][t]
                for j in range(enc["nfac"][t]):
                    k = keep[int(enc["var"][t, j])]
                    pc *= args["gx"][i, t, j] if k else args["mu"][t, j]
                    pz *= args["gx"][i, t, j] if k else args["g0"][t, j]
                vc, vz = vc + pc, vz + pz
            assert cond[s, i] == pytest.approx(vc, rel=1e-13, abs=1e-15)
            assert zero[s, i] == pytest.approx(vz, rel=1e-13, abs=1e-15)


@pytest.mark.parametrize("p", [0.0, 0.25, 0.9])
def test_numba_cpu_equals_numpy_reference_bit_for_bit(p):
    _, args = random_args()
    a = ms.values_cpu(77, p, 3, 200, args)
    b = ms.values_numpy(77, p, 3, 200, args)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x, y)
    # moments: same values, different summation order -> equal to float rounding
    m_cpu = ms.moments_cpu(77, p, 200, args, n_chunks=3)
    m_ref = ms.moments_from_values(*ms.values_numpy(77, p, 0, 200, args)[:2])
    np.testing.assert_allclose(m_cpu, m_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ms.moments_numpy(77, p, 200, args, block=64), m_ref,
                               rtol=1e-12, atol=1e-12)
    # the result does not depend on how samples are chunked (up to rounding)
    np.testing.assert_allclose(ms.moments_cpu(77, p, 200, args, n_chunks=1), m_ref,
                               rtol=1e-12, atol=1e-12)


def test_drop_rate_is_p_eff():
    assert ms.effective_drop(0.5) == 0.5
    assert 0 <= ms.effective_drop(0.1) - 0.1 < 2**-24
    u = uniform_numpy(9, np.arange(1 << 20))
    frac = np.mean(u < ms.effective_drop(0.3))
    assert abs(frac - 0.3) < 5 * np.sqrt(0.3 * 0.7 / (1 << 20))
    with pytest.raises(ValueError, match="p"):
        ms.effective_drop(1.2)


def test_too_many_inputs_is_an_error():
    T = 65
    enc = th.check_encoding({"coef": np.ones(T), "nfac": np.ones(T, int),
                             "var": np.arange(T)[:, None], "kind": np.zeros((T, 1), int),
                             "a": np.ones((T, 1)), "c": np.zeros((T, 1)), "b": np.zeros((T, 1))})
    dist = Uniform(d=T)
    with pytest.raises(ValueError, match="64"):
        ms.prepare(enc, *th.factor_tables(enc, dist, dist.sample(2)), T)


SIM_SCRIPT = textwrap.dedent("""
    import warnings
    import numpy as np
    warnings.simplefilter("ignore")
    from tests.test_mask_kernels import random_args
    from fanova_gpu.kernels import mask_sampling as ms
    _, args = random_args(n_points=3)
    for p in (0.0, 0.35):
        a = ms.values_cuda(21, p, 4, 5, args, threads=8)
        b = ms.values_numpy(21, p, 4, 5, args)
        assert all(np.array_equal(x, y) for x, y in zip(a, b)), "values differ"
        # same chunking -> same partial sums, summed the same way: identical moments
        mc = ms.moments_cuda(21, p, 10, args, n_chunks=4, threads=8)
        mp = ms.moments_cpu(21, p, 10, args, n_chunks=4)
        assert np.array_equal(mc, mp), "moments differ"
    print("SIM-OK")
""")


def test_numba_cuda_kernels_under_the_simulator():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", SIM_SCRIPT], env=env, cwd=root,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "SIM-OK" in out.stdout


def test_cupy_module_imports_without_cupy():
    assert "__global__ void moments" in msc.SOURCE
    assert isinstance(msc.available(), bool)


@pytest.mark.gpu
@pytest.mark.skipif(not msc.available(), reason="CuPy sees no CUDA device")
def test_cupy_kernels_match_numpy_reference():
    _, args = random_args(n_points=33)
    for p in (0.0, 0.3):
        a = msc.values_cupy(5, p, 2, 300, args)
        b = ms.values_numpy(5, p, 2, 300, args)
        for x, y in zip(a, b, strict=True):
            assert np.array_equal(x, y)
        np.testing.assert_allclose(msc.moments_cupy(5, p, 3000, args),
                                   ms.moments_cpu(5, p, 3000, args), rtol=1e-12, atol=1e-12)


def _real_cuda() -> bool:
    from fanova_gpu.verify import cuda_usable

    return cuda_usable()


@pytest.mark.gpu
@pytest.mark.skipif(not _real_cuda(), reason="no CUDA device")
def test_numba_cuda_on_a_gpu_matches_cpu():
    _, args = random_args(n_points=33)
    a = ms.values_cuda(5, 0.3, 2, 300, args)
    b = ms.values_numpy(5, 0.3, 2, 300, args)
    assert np.array_equal(a[2], b[2])  # mask words: integer arithmetic, exact
    # values: a GPU may fuse multiply-adds, so compare to float rounding
    np.testing.assert_allclose(a[0], b[0], rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(a[1], b[1], rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(ms.moments_cuda(5, 0.3, 3000, args, n_chunks=7),
                               ms.moments_cpu(5, 0.3, 3000, args, n_chunks=7),
                               rtol=1e-12, atol=1e-12)


HOST_STUB = """
#define __device__
#define __global__
#define __forceinline__ inline
struct D3 { unsigned x; };
static D3 blockIdx, blockDim, threadIdx;
"""

HOST_DRIVER = """
extern "C" void host_values(int blocks, int threads, u64 key, double p_eff, long long s0,
                            long long n_samples, long long n, long long d, const u64* used,
                            int n_used, const int* nfac, const u64* slot, int n_terms,
                            int n_fac, const double* ptab, double* cond, double* zero,
                            u64* bits) {
    blockDim.x = threads;
    for (int b = 0; b < blocks; ++b)
        for (int t = 0; t < threads; ++t) {
            blockIdx.x = b; threadIdx.x = t;
            values(key, p_eff, s0, n_samples, n, d, used, n_used, nfac, slot, n_terms, n_fac,
                   ptab, cond, zero, bits);
        }
}

extern "C" void host_moments(int blocks, int threads, u64 key, double p_eff,
                             long long n_samples, long long clen, long long n, long long d,
                             const u64* used, int n_used, const int* nfac, const u64* slot,
                             int n_terms, int n_fac, const double* ptab, long long n_chunks,
                             double* partial) {
    blockDim.x = threads;
    for (int b = 0; b < blocks; ++b)
        for (int t = 0; t < threads; ++t) {
            blockIdx.x = b; threadIdx.x = t;
            moments(key, p_eff, n_samples, clen, n, d, used, n_used, nfac, slot, n_terms, n_fac,
                    ptab, n_chunks, partial);
        }
}
"""


def test_cupy_kernel_source_run_on_the_host_matches_numpy(tmp_path):
    """The CuPy kernel's CUDA C, compiled as C++ with the launch emulated by loops."""
    import ctypes
    import shutil

    cxx = shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    src = tmp_path / "k.cpp"
    lib = tmp_path / "k.so"
    src.write_text(HOST_STUB + msc.SOURCE + HOST_DRIVER)
    subprocess.run([cxx, "-O1", "-ffp-contract=off", "-shared", "-fPIC", str(src), "-o",
                    str(lib)], check=True, capture_output=True, timeout=120)
    so = ctypes.CDLL(str(lib))
    _, args = random_args(n_points=5)
    S, s0, key = 40, 3, 99

    def ptr(a):
        return a.ctypes.data_as(ctypes.c_void_p)

    for p in (0.0, 0.35):
        cond = np.zeros((S, 5))
        zero = np.zeros((S, 5))
        bits = np.zeros((S, 5), np.uint64)
        nfac = np.ascontiguousarray(args["nfac"], np.int32)
        slot = np.ascontiguousarray(args["slot"], np.uint64)
        threads = 32
        blocks = -(-(S * 5) // threads)
        so.host_values(ctypes.c_int(blocks), ctypes.c_int(threads), ctypes.c_uint64(key),
                       ctypes.c_double(ms.effective_drop(p)), ctypes.c_longlong(s0),
                       ctypes.c_longlong(S), ctypes.c_longlong(5), ctypes.c_longlong(D),
                       ptr(args["used"]), ctypes.c_int(len(args["used"])), ptr(nfac),
                       ptr(slot), ctypes.c_int(slot.shape[0]), ctypes.c_int(slot.shape[1]),
                       ptr(args["ptab"]), ptr(cond), ptr(zero), ptr(bits))
        ref = ms.values_numpy(key, p, s0, S, args)
        for x, y in zip((cond, zero, bits), ref, strict=True):
            assert np.array_equal(x, y)
        C = 3  # same chunking as the Numba CPU kernel -> identical partial sums
        partial = np.zeros((C, 5, ms.N_MOMENTS))
        so.host_moments(ctypes.c_int(1), ctypes.c_int(32), ctypes.c_uint64(key),
                        ctypes.c_double(ms.effective_drop(p)), ctypes.c_longlong(S),
                        ctypes.c_longlong(ms.chunk_len(S, C)), ctypes.c_longlong(5),
                        ctypes.c_longlong(D), ptr(args["used"]), ctypes.c_int(len(args["used"])),
                        ptr(nfac), ptr(slot), ctypes.c_int(slot.shape[0]),
                        ctypes.c_int(slot.shape[1]), ptr(args["ptab"]), ctypes.c_longlong(C),
                        ptr(partial))
        assert np.array_equal(partial.sum(axis=0), ms.moments_cpu(key, p, S, args, n_chunks=C))

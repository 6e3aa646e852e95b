"""pytest-benchmark suite for mask sampling: `pytest bench/bench_masks.py --benchmark-only`.

Same case as report_masks.py (product-sum d=8, 8 terms, 256 points, p=0.3); compare the
rows' mean times per call, each call drawing `S x 256` mask samples.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fanova_gpu.kernels import mask_sampling as ms  # noqa: E402
from report_masks import KEY, P, moments_torch, setup  # noqa: E402

from fanova_gpu.verify import cuda_usable  # noqa: E402

S = 2_000


@pytest.fixture(scope="module")
def case():
    c = setup()
    ms.moments_cpu(KEY, P, 10, c["args"])  # compile outside the timings
    return c


def test_numpy_reference(benchmark, case):
    benchmark(ms.moments_numpy, KEY, P, S, case["args"])


def test_numba_cpu(benchmark, case):
    benchmark(ms.moments_cpu, KEY, P, S, case["args"])


def test_torch_cpu(benchmark, case):
    benchmark(moments_torch, S, case, "cpu")


@pytest.mark.skipif(not cuda_usable(), reason="no CUDA device")
def test_numba_cuda(benchmark, case):
    benchmark(ms.moments_cuda, KEY, P, S, case["args"])

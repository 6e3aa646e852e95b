"""pytest-benchmark: `sobol` batched over replicas vs one replica at a time, and `grid`.

Run: `pytest bench/bench_sobol.py --benchmark-only`. Sizes are small (16 Glorot 3x32 ReLU nets,
d = 25, K = 3, m = 16, n = 2 base points: 84,034 evaluations per replica); `report_sobol.py`
holds the full table (accuracy against SALib, 140-replica throughput, projections).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import report_sobol as rs  # noqa: E402

import fanova_gpu as fg  # noqa: E402
from fanova_gpu.functions import g_function, random_product_sum  # noqa: E402

R, D = 16, 25
KW = dict(max_order=3, n=2, complements=16, input="torch", dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def net():
    return rs.StackedMLP(rs.glorot_layers(R, D, 32, 3, seed=0))


@pytest.mark.benchmark(group="sobol-replicas")
def test_sobol_batched_replicas(benchmark, net):
    dist = fg.Uniform(d=D)
    res = benchmark.pedantic(fg.decompose, args=(net, dist), kwargs=dict(method="sobol", **KW),
                             rounds=2, iterations=1)
    benchmark.extra_info["evaluations"] = int(res.info["evaluations"] * R)


@pytest.mark.benchmark(group="sobol-replicas")
def test_sobol_one_replica_at_a_time(benchmark, net):
    dist = fg.Uniform(d=D)

    def loop():
        return [fg.decompose(net.select(slice(r, r + 1)), dist, method="sobol", **KW)
                for r in range(R)]

    out = benchmark.pedantic(loop, rounds=2, iterations=1)
    benchmark.extra_info["evaluations"] = int(out[0].info["evaluations"] * R)


@pytest.mark.benchmark(group="sobol-gfunction")
def test_sobol_g_function_k3(benchmark):
    f = g_function(rs.G_A)
    res = benchmark(fg.decompose, f, f.dist, method="sobol", max_order=3, n=500, complements=2)
    benchmark.extra_info["abs_error_V1_V2_V3"] = np.abs(
        res.variance_by_order[:3] - f.variance_by_order(3)[:3]).tolist()


@pytest.mark.benchmark(group="sobol-gfunction")
def test_sobol_g_function_staged_first_moment(benchmark):
    # the design that matches SALib's V_1 error at its budget and adds V_2, V_3 (report_sobol)
    f = g_function(rs.G_A)
    spec = dict(rs.STAGED, share=[0.8, 0.15, 0.05], scrambles=2)
    frac, evals = benchmark(rs.ours_fractions, f, 1024, spec, 0)
    benchmark.extra_info["evaluations"] = int(evals)
    benchmark.extra_info["abs_error_fractions_V1_V2_V3"] = np.abs(
        frac - f.variance_by_order(3)[:3] / f.total_variance).tolist()


@pytest.mark.benchmark(group="grid")
def test_grid_d6_8_nodes(benchmark):
    f = random_product_sum(d=6, orders=[1, 2, 3, 6], seed=0)
    res = benchmark(fg.decompose, f, f.dist, method="grid", max_order=3, nodes=8)
    benchmark.extra_info["grid_points"] = res.info["grid_points"]

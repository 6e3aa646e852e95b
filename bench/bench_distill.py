"""pytest-benchmark: distillation, the paper's way vs batched `distill` (fast profile).

Run: `pytest bench/bench_distill.py --benchmark-only` (or `-k distill`). Sizes are the quick ones
(R = 4 random 3x32 ReLU nets, 5000 rows, d = 25); `report_distill.py` holds the full table.
Held-out R^2 of every stage goes to `extra_info`, so speed is read next to accuracy.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import report_distill as rd  # noqa: E402

import fanova_gpu as fg  # noqa: E402
from fanova_gpu.decompose import distill  # noqa: E402

R, N, D = 4, 5000, 25


@pytest.fixture(scope="module")
def data():
    f = rd.relu_nets(R, D, seed=0)
    dist = fg.Uniform(d=D)
    X, Xe = dist.sample(N, seed=1), dist.sample(N, seed=2)
    return X, f(X), Xe, f(Xe)


@pytest.mark.benchmark(group="distill")
@pytest.mark.parametrize("threads", [None, 1], ids=["default-threads", "1-thread"])
def test_paper_way(benchmark, data, threads):
    X, F, Xe, Fe = data
    out = benchmark.pedantic(rd.paper_way, args=(F, X, Xe), kwargs={"n_jobs": threads},
                             rounds=1, iterations=1)
    benchmark.extra_info["heldout_r2_mean"] = rd.r2(Fe, out["m_eval"]).mean(axis=0).tolist()


@pytest.mark.benchmark(group="distill")
def test_batched_fast(benchmark, data):
    X, F, Xe, Fe = data
    res = benchmark.pedantic(
        distill.decompose, args=(F, X),
        kwargs={"profile": "fast", "X_eval": Xe, "preds_eval": Fe}, rounds=1, iterations=1)
    benchmark.extra_info["heldout_r2_mean"] = res.info["r2"]["eval"].mean(axis=0).tolist()
    benchmark.extra_info["device"] = res.info["device"]

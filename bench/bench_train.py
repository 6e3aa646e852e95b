"""pytest-benchmark: batched training vs the paper's loop vs torch.func vmap.

Run: `pytest bench/bench_train.py --benchmark-only`. Case of report_train.py (R = 140
replicas, 1500 x 25 pure noise, full batch, width 32) at a few steps per call; compare
replica-steps/s = rows' `extra_info["replica_steps"]` / mean time. `report_train.py` holds
the full side-by-side table (both widths, GFLOP/s against the matmul roofline).
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report_train import KINDS, LR, RATES, case, loop_train, vmap_setup  # noqa: E402

import fanova_gpu as fg  # noqa: E402

WIDTH = 32


@pytest.fixture(scope="module")
def data():
    X, y, grid = case(WIDTH)
    fg.train_replicas(X, y, grid, steps=1, lr=LR, device="cpu")  # compile outside timings
    return X, y, grid


def test_loop_paper_way(benchmark, data):
    X, y, _ = data
    sub = [(0, k, p) for k in KINDS for p in RATES]  # 14 replicas, 5 steps each
    benchmark.extra_info["replica_steps"] = len(sub) * 5
    benchmark.pedantic(loop_train, args=(X, y, WIDTH, sub, 5), rounds=3)


def test_vmap_stack_module_state(benchmark, data):
    X, y, grid = data
    step = vmap_setup(X, y, WIDTH, grid)
    step()
    benchmark.extra_info["replica_steps"] = len(grid) * 2

    def two():
        step()
        step()

    benchmark.pedantic(two, rounds=3)


def test_batched_train_replicas(benchmark, data):
    X, y, grid = data
    benchmark.extra_info["replica_steps"] = len(grid) * 10
    benchmark.pedantic(fg.train_replicas, args=(X, y, grid),
                       kwargs=dict(steps=10, lr=LR, device="cpu"), rounds=3)

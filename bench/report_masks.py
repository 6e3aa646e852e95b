"""Mask sampling for Theorem 1: samples per second, NumPy reference vs Numba vs torch (vs GPU).

One "mask sample" = one Dropout mask over the inputs F depends on, drawn for one point, with
both forms of F evaluated (conditional: dropped factors replaced by their mean; zero
imputation) and accumulated (sum, sum of squares) in float64. Function: a random product-sum
on d = 8 inputs, 8 terms of 1-4 factors; 256 points; p = 0.3.

Ways, side by side in one run:
- NumPy: `mask_sampling.moments_numpy`, vectorized over blocks of samples x points (the
  straightforward way; same counter stream and values as the kernels).
- Numba CPU: `mask_sampling.moments_cpu`, njit(parallel=True), all threads and 1 thread.
- torch: the same computation written with torch tensors (torch.rand masks, torch.where per
  factor), the straightforward way on the device torch uses.
- GPU (Numba CUDA, CuPy, torch CUDA): only where a GPU exists.
Each row also checks its answer: the largest |z| of (mean - closed form) / stderr over points.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_info  # noqa: E402
from fanova_gpu.kernels import mask_sampling as ms  # noqa: E402
from fanova_gpu.kernels import mask_sampling_cupy as msc  # noqa: E402

from fanova_gpu import theory  # noqa: E402
from fanova_gpu.functions import random_product_sum  # noqa: E402
from fanova_gpu.verify import cuda_usable  # noqa: E402

P = 0.3
KEY = 20221


def setup(n_points: int = 256, seed: int = 0) -> dict:
    f = random_product_sum(8, orders=[1, 2, 2, 3, 3, 4, 4, 4], seed=seed)
    enc = theory.check_encoding(f.encode())
    X = f.dist.sample(n_points, seed=seed + 1).astype(np.float64)
    gx, mu, g0 = theory.factor_tables(enc, f.dist, X)
    return {"enc": enc, "args": ms.prepare(enc, gx, mu, g0, f.d), "gx": gx, "mu": mu,
            "g0": g0, "truth_c": theory.conditional_form(enc, gx, mu, ms.effective_drop(P)),
            "truth_z": theory.zero_form(enc, gx, g0, ms.effective_drop(P))}


def moments_torch(S: int, case: dict, device: str = "cpu", block: int = 2048, seed: int = 0):
    """The straightforward torch way: masks by torch.rand, products by torch.where."""
    import torch

    enc, args = case["enc"], case["args"]
    gx = torch.as_tensor(case["gx"], device=device)  # [n, T, F]
    n = gx.shape[0]
    gen = torch.Generator(device=device).manual_seed(seed)
    out = torch.zeros((n, 5), dtype=torch.float64, device=device)
    slot = args["slot"].astype(np.int64)
    s_used = args["used"].shape[0]
    for s0 in range(0, S, block):
        b = min(block, S - s0)
        keep = torch.rand((b, n, s_used), generator=gen, device=device) >= P
        cond = torch.zeros((b, n), dtype=torch.float64, device=device)
        zero = torch.zeros_like(cond)
        for t in range(len(enc["coef"])):
            pc = torch.full((b, n), float(enc["coef"][t]), dtype=torch.float64, device=device)
            pz = pc.clone()
            for j in range(enc["nfac"][t]):
                k = keep[:, :, slot[t, j]]
                pc = pc * torch.where(k, gx[:, t, j], float(case["mu"][t, j]))
                pz = pz * torch.where(k, gx[:, t, j], float(case["g0"][t, j]))
            cond = cond + pc
            zero = zero + pz
        out += torch.stack([cond.sum(0), (cond * cond).sum(0), zero.sum(0),
                            (zero * zero).sum(0), (cond * zero).sum(0)], dim=1)
    return out.cpu().numpy()


def _max_z(mom: np.ndarray, S: int, case: dict) -> float:
    zs = []
    for col, truth in ((0, case["truth_c"]), (2, case["truth_z"])):
        mean = mom[:, col] / S
        var = np.maximum(mom[:, col + 1] - mom[:, col] * mean, 0.0) / (S - 1)
        zs.append(np.max(np.abs(mean - truth) / np.sqrt(var / S + 1e-300)))
    return float(max(zs))


def _time(fn, repeat: int) -> float:
    fn()  # warm-up (compiles)
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2]


def report(quick: bool = True) -> dict:
    import numba
    import torch

    case = setup()
    n = case["gx"].shape[0]
    repeat = 3 if quick else 5
    S_ref = 2_000 if quick else 10_000
    S_fast = 40_000 if quick else 400_000
    threads = numba.get_num_threads()
    rows = []

    def row(name, device, S, fn):
        out = {}

        def run():
            out["mom"] = fn(S)

        sec = _time(run, repeat)
        rate = n * S / sec
        rows.append([name, device, S * n, sec, rate, _max_z(out["mom"], S, case)])
        return rate

    ref = row("NumPy vectorized (reference)", "cpu", S_ref,
              lambda S: ms.moments_numpy(KEY, P, S, case["args"]))
    fast = row(f"Numba CPU parallel ({threads} threads)", "cpu", S_fast,
               lambda S: ms.moments_cpu(KEY, P, S, case["args"]))
    numba.set_num_threads(1)
    try:
        one = row("Numba CPU, 1 thread", "cpu", S_fast // 2,
                  lambda S: ms.moments_cpu(KEY, P, S, case["args"]))
    finally:
        numba.set_num_threads(threads)
    tch = row(f"torch ({torch.get_num_threads()} threads)", "cpu", S_ref,
              lambda S: moments_torch(S, case, "cpu"))
    notes = [
        f"Numba CPU parallel / NumPy = {fast / ref:.1f}x (target >= 10x on 2 cores); "
        f"1 thread / NumPy = {one / ref:.1f}x; Numba / torch = {fast / tch:.1f}x.",
        "samples/s = points x masks per second, both forms evaluated and accumulated; "
        "max |z| = largest (estimate - closed form) / stderr over points and both forms "
        "(should stay below ~4-5).",
        "Timings on a shared machine are contended unless re-measured in isolation.",
    ]
    if cuda_usable():
        gpu_S = 2_000_000 if quick else 20_000_000
        g1 = row("Numba CUDA", "cuda", gpu_S,
                 lambda S: ms.moments_cuda(KEY, P, S, case["args"]))
        if msc.available():
            row("CuPy RawKernel", "cuda", gpu_S,
                lambda S: msc.moments_cupy(KEY, P, S, case["args"]))
        if torch.cuda.is_available():
            row("torch", "cuda", S_fast, lambda S: moments_torch(S, case, "cuda", block=8192))
        notes.append(f"Numba CUDA / Numba CPU = {g1 / fast:.0f}x (target >= 1e10 samples/s "
                     "on an H200).")
    else:
        for name in ("Numba CUDA", "CuPy RawKernel", "torch"):
            rows.append([name, "cuda", "not measured (no GPU)", None, None, None])
    return {
        "title": "Mask sampling (Theorem 1 Monte Carlo), product-sum d=8, 8 terms, 256 points",
        "columns": ["way", "device", "mask samples", "seconds", "samples/s", "max |z|"],
        "rows": rows,
        "notes": notes,
        "machine": machine_info(),
    }


if __name__ == "__main__":
    import json

    print(json.dumps(report(quick="--full" not in sys.argv), indent=1, default=str))

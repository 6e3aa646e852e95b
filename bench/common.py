"""Shared helpers for bench reports: machine record and a robust timer."""

from __future__ import annotations

import platform
import time

import torch


def machine_info() -> dict:
    """What the numbers were measured on (recorded in every report)."""
    from fanova_gpu.device import capability_report

    rep = capability_report()
    return {
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": rep["cpu_count"],
        "torch_threads": torch.get_num_threads(),
        "device": rep["auto_device"],
        "gpu": rep["cuda_device_name"],
        "versions": rep["versions"],
    }


def median_time(fn, repeat: int = 3, warmup: int = 1) -> float:
    """Median wall time of fn() in seconds (synchronizing CUDA if in use)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]

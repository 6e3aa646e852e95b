"""Device resolution ("auto" | "cpu" | "cuda") and a report of which fast paths are live.

Asking for CUDA where there is none is an error, never a silent fallback.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Return the torch device that `device` names; `auto` picks CUDA when usable."""
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str) or device.split(":")[0] not in DEVICE_CHOICES:
        raise ValueError(f"device: expected one of {DEVICE_CHOICES} (or 'cuda:N'), got {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} was asked for but torch sees no CUDA device")
    return torch.device(device)


def xgboost_device(device: str | torch.device = "auto") -> str:
    """The XGBoost `device` string for a requested device; errors if CUDA is asked but absent."""
    dev = str(device)
    if dev == "auto":
        return "cuda" if xgboost_has_cuda() and torch.cuda.is_available() else "cpu"
    if dev.startswith("cuda"):
        if not (xgboost_has_cuda() and torch.cuda.is_available()):
            raise ValueError(f"device: {dev!r} was asked for XGBoost but no usable CUDA device")
        return dev
    if dev != "cpu":
        raise ValueError(f"device: expected one of {DEVICE_CHOICES}, got {dev!r}")
    return "cpu"


def xgboost_has_cuda() -> bool:
    try:
        import xgboost

        return bool(xgboost.build_info().get("USE_CUDA", False))
    except Exception:
        return False


def numba_cuda_available() -> bool:
    """True when Numba can launch CUDA kernels (real GPU or the simulator)."""
    try:
        from numba import cuda

        return bool(cuda.is_available())
    except Exception:
        return False


def cupy_available() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def _version(name: str) -> str | None:
    try:
        return importlib.import_module(name).__version__
    except Exception:
        return None


def capability_report() -> dict[str, Any]:
    """Versions and live fast paths; printed by `fanova-gpu info`, stored in manifests."""
    cuda_torch = torch.cuda.is_available()
    return {
        "auto_device": str(resolve_device("auto")),
        "cuda_device_name": torch.cuda.get_device_name(0) if cuda_torch else None,
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "versions": {
            name: _version(name)
            for name in ("torch", "numpy", "xgboost", "numba", "cupy", "pandas", "pyarrow")
        },
        "fast_paths": {
            "torch_cuda": cuda_torch,
            "xgboost_cuda": xgboost_has_cuda() and cuda_torch,
            "numba_cuda": numba_cuda_available(),
            "numba_cudasim": os.environ.get("NUMBA_ENABLE_CUDASIM") == "1",
            "cupy": cupy_available(),
        },
    }

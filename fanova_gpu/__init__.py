"""fanova-gpu: batched training of many MLP replicas and their functional-ANOVA decomposition.

Public names are resolved lazily so that `import fanova_gpu` stays cheap and never needs an
optional accelerator (cupy, numba-cuda).
"""

from __future__ import annotations

import importlib

from .data import Normal, Uniform
from .decompose import EffectSizes, decompose

__version__ = "0.1.0"

# public name -> module that defines it (imported on first use)
_LAZY = {
    "ReplicaGrid": "fanova_gpu.replicas",
    "ReplicaRun": "fanova_gpu.replicas",
    "train_replicas": "fanova_gpu.replicas",
    "verify": "fanova_gpu.verify",
    "theory": "fanova_gpu.theory",
    "functions": "fanova_gpu.functions",
    "data": "fanova_gpu.data",
    "device": "fanova_gpu.device",
    "sweep": "fanova_gpu.sweep",
    "store": "fanova_gpu.store",
}


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        value = module if module.__name__.endswith("." + name) else getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fanova_gpu' has no attribute {name!r}")


__all__ = ["EffectSizes", "Normal", "Uniform", "decompose", *_LAZY]

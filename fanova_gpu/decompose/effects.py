"""EffectSizes: variance of a function split by interaction order, for one or many replicas."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class EffectSizes:
    """Result of `decompose`.

    variance_by_order: [..., K+1] float64; entries 0..K-1 are V_1..V_K, the last is every
        order > K (V_>K). A leading replica axis is present when the input had one.
    total_variance: [...] float64, Var F.
    stderr: same shape as variance_by_order (Monte Carlo methods) or None (exact methods).
    method: name of the method; info: method-specific extras (R^2 per stage, device used,
        per-subset variances, ...).
    """

    variance_by_order: np.ndarray
    total_variance: np.ndarray
    stderr: np.ndarray | None = None
    method: str = ""
    max_order: int = 3
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def fraction_by_order(self) -> np.ndarray:
        """variance_by_order / total_variance (the paper's 'share of variance' per order)."""
        tot = np.asarray(self.total_variance, dtype=np.float64)[..., None]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.asarray(self.variance_by_order, dtype=np.float64) / tot

    @property
    def order_labels(self) -> list[str]:
        return [str(k) for k in range(1, self.max_order + 1)] + [f">{self.max_order}"]

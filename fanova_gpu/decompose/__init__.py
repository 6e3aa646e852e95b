"""decompose(): split a function (or many replicas' predictions) into interaction orders.

One module per method: `grid` (exact, small d), `sobol` (Monte Carlo with standard errors),
`distill` (the paper's XGBoost depth-staged distillation).
"""

from __future__ import annotations

import importlib

from .effects import EffectSizes

METHODS = ("grid", "sobol", "distill")


def decompose(f, dist_or_X, method: str = "sobol", max_order: int = 3, **kwargs) -> EffectSizes:
    """Split F into V_1..V_K and V_>K.

    `f` is a callable [n, d] -> [n] or [R, n] with `dist_or_X` a distribution (grid, sobol,
    distill), or predictions [R, n] with `dist_or_X` the rows X they were made on (distill).
    """
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    if isinstance(max_order, bool) or not isinstance(max_order, int) or max_order < 1:
        raise ValueError(f"max_order: expected a positive integer, got {max_order!r}")
    module = importlib.import_module(f"fanova_gpu.decompose.{method}")
    return module.decompose(f, dist_or_X, max_order=max_order, **kwargs)


__all__ = ["EffectSizes", "METHODS", "decompose"]

"""Input distributions (independent product measures) and the paper's data generators.

Generators are functions of (n, d, seed, noise) returning (X [n, d] float32, y [n] float32).
Real-data loaders live in `loaders.py` (they do I/O); this module is pure.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _check_positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def _check_seed(seed: int | None) -> int | None:
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer or None, got {seed!r}")
    return int(seed)


@dataclass(frozen=True)
class Uniform:
    """X_i ~ Unif(low, high), independent, i = 0..d-1."""

    low: float = -1.0
    high: float = 1.0
    d: int = 25

    def __post_init__(self) -> None:
        _check_positive_int("d", self.d)
        if not (np.isfinite(self.low) and np.isfinite(self.high) and self.high > self.low):
            raise ValueError(
                f"high: expected a finite value above low={self.low!r}, got {self.high!r}"
            )

    def sample(self, n: int, seed: int | None = 0) -> np.ndarray:
        n = _check_positive_int("n", n)
        rng = np.random.default_rng(_check_seed(seed))
        return rng.uniform(self.low, self.high, size=(n, self.d)).astype(np.float32)

    @property
    def mean(self) -> float:
        return 0.5 * (self.low + self.high)

    @property
    def var(self) -> float:
        return (self.high - self.low) ** 2 / 12.0


@dataclass(frozen=True)
class Normal:
    """X_i ~ N(mean, std^2), independent, i = 0..d-1."""

    d: int = 25
    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self) -> None:
        _check_positive_int("d", self.d)
        if not (np.isfinite(self.std) and self.std > 0):
            raise ValueError(f"std: expected a finite positive value, got {self.std!r}")

    def sample(self, n: int, seed: int | None = 0) -> np.ndarray:
        n = _check_positive_int("n", n)
        rng = np.random.default_rng(_check_seed(seed))
        return (self.mean + self.std * rng.standard_normal(size=(n, self.d))).astype(np.float32)

    @property
    def var(self) -> float:
        return self.std**2


def _noise(rng: np.random.Generator, n: int, noise: float) -> np.ndarray:
    if not (np.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise: expected a finite non-negative standard deviation, got {noise!r}")
    return noise * rng.standard_normal(n) if noise > 0 else np.zeros(n)


def _uniform_inputs(n: int, d: int, seed: int | None, min_d: int) -> tuple:
    n = _check_positive_int("n", n)
    d = _check_positive_int("d", d)
    if d < min_d:
        raise ValueError(f"d: this generator uses x0..x{min_d - 1}, expected d >= {min_d}, got {d}")
    rng = np.random.default_rng(_check_seed(seed))
    X = rng.uniform(-1.0, 1.0, size=(n, d))
    return X, rng


def pure_noise(n: int = 1500, d: int = 25, seed: int | None = 0, noise: float = 1.0):
    """Sec. 4.1: X ~ Unif(-1, 1)^d and Y ~ N(0, noise^2) independent of X."""
    X, rng = _uniform_inputs(n, d, seed, 1)
    y = _noise(rng, X.shape[0], noise)
    return X.astype(np.float32), y.astype(np.float32)


def main_effects(n: int = 1500, d: int = 25, seed: int | None = 0, noise: float = 0.1):
    """Sec. 4.5, additive generator: Y = sin(x0) + cos(x1) + noise."""
    X, rng = _uniform_inputs(n, d, seed, 2)
    y = np.sin(X[:, 0]) + np.cos(X[:, 1]) + _noise(rng, X.shape[0], noise)
    return X.astype(np.float32), y.astype(np.float32)


def pair_effect(n: int = 1500, d: int = 25, seed: int | None = 0, noise: float = 0.1):
    """Sec. 4.5, 'pair' generator: Y = sin(x0) cos(x1) + noise (mostly a main effect of x0)."""
    X, rng = _uniform_inputs(n, d, seed, 2)
    y = np.sin(X[:, 0]) * np.cos(X[:, 1]) + _noise(rng, X.shape[0], noise)
    return X.astype(np.float32), y.astype(np.float32)


def triple_effect(n: int = 1500, d: int = 25, seed: int | None = 0, noise: float = 0.1):
    """Sec. 4.5, 'triple' generator: Y = sin(x0) cos(x1) x2 + noise (mostly a pair effect)."""
    X, rng = _uniform_inputs(n, d, seed, 3)
    y = np.sin(X[:, 0]) * np.cos(X[:, 1]) * X[:, 2] + _noise(rng, X.shape[0], noise)
    return X.astype(np.float32), y.astype(np.float32)


def correlated_product(
    n: int = 1500, d: int = 2, seed: int | None = 0, noise: float = 0.0, rho: float = 0.5
):
    """Figure 2 toy: Y = X1 X2 with X ~ N(0, [[1, rho], [rho, 1]]) (extra columns independent)."""
    n = _check_positive_int("n", n)
    d = _check_positive_int("d", d)
    if d < 2:
        raise ValueError(f"d: expected d >= 2, got {d}")
    if not (np.isfinite(rho) and -1.0 < rho < 1.0):
        raise ValueError(f"rho: expected a correlation in (-1, 1), got {rho!r}")
    rng = np.random.default_rng(_check_seed(seed))
    X = rng.standard_normal(size=(n, d))
    X[:, 1] = rho * X[:, 0] + np.sqrt(1.0 - rho**2) * X[:, 1]
    y = X[:, 0] * X[:, 1] + _noise(rng, n, noise)
    return X.astype(np.float32), y.astype(np.float32)


GENERATORS = {
    "pure_noise": pure_noise,
    "main_effects": main_effects,
    "pair_effect": pair_effect,
    "triple_effect": triple_effect,
    "correlated_product": correlated_product,
}


def generate(name: str, **kwargs):
    """Look a generator up by name (for configs and the CLI)."""
    if name not in GENERATORS:
        raise ValueError(f"data.generator: expected one of {sorted(GENERATORS)}, got {name!r}")
    return GENERATORS[name](**kwargs)

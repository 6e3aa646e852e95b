"""Closed forms of the paper's theory: what Dropout should do to each interaction order.

Theorem 1: under Input Dropout (each input kept with probability 1-p) the conditional
expectation of F is sum_u (1-p)^|u| f_u(x), so order k is shrunk by r_p(k) = (1-p)^k and
its variance by (1-p)^(2k) while Cov(F(X), F(X_M, Z_-M)) = sum_k (1-p)^k V_k = S(p).
|H_k| = C(N, k) counts the k-way interactions of N inputs.

For product-sum functions F = sum_t coef_t prod_j g_tj(x_var(t,j)) (the analytic family,
encoded as arrays by `functions.ProductSum.encode()`), both readings of Theorem 1 have closed
forms, since mask bits of distinct inputs are independent:
  conditional form  E_M E_Z F(x_M, Z_-M) = sum_t coef_t prod_j ((1-p) g_tj(x) + p E g_tj)
  zero imputation   E_M F(x * M)         = sum_t coef_t prod_j ((1-p) g_tj(x) + p g_tj(0))
The gap between them is the zero-imputation gap (e.g. -p/3 for x1 x2 + x1^2 - 1/3).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping

import numpy as np
from scipy.special import erf

from .functions import KINDS
from .functions import base as _base

# kind codes of functions.KIND_CODES, evaluated here on arrays: g(x) = base(a x + c) + b
KIND_NAMES = KINDS  # kind codes index this tuple (shared with functions.py)


def _check_p(p: float) -> float:
    if isinstance(p, bool) or not np.isfinite(p) or not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"p: expected a dropout rate in [0, 1], got {p!r}")
    return float(p)


def r_p(k, p: float):
    """Shrinkage factor (1-p)^k of an order-k effect under Dropout rate p (k may be an array)."""
    p = _check_p(p)
    return (1.0 - p) ** np.asarray(k, dtype=np.float64)


def n_interactions(n_inputs: int, k: int) -> int:
    """|H_k| = C(N, k): how many distinct k-way interactions N inputs have."""
    if n_inputs < 0 or k < 0:
        raise ValueError(f"n_inputs, k: expected non-negative integers, got {n_inputs}, {k}")
    return math.comb(n_inputs, k)


def predicted_order_variances(variance_by_order, p: float) -> np.ndarray:
    """Variance of each order of E[F | X*M] (conditional form): (1-p)^(2k) V_k, k = 1..K.

    `variance_by_order` [..., K] holds V_1..V_K (no '> K' column).
    """
    v = np.asarray(variance_by_order, dtype=np.float64)
    k = np.arange(1, v.shape[-1] + 1)
    return v * r_p(2 * k, p)


def predicted_shrinkage(variance_by_order, p: float) -> np.ndarray:
    """S(p) = Cov(F(X), F(X_M, Z_-M)) = sum_k (1-p)^k V_k from V_1..V_K [..., K]."""
    v = np.asarray(variance_by_order, dtype=np.float64)
    k = np.arange(1, v.shape[-1] + 1)
    return (v * r_p(k, p)).sum(axis=-1)


# ---------------------------------------------------------------- product-sum closed forms


def factor_values(code: int, a: float, c: float, b: float, x) -> np.ndarray:
    """g(x) = base(a x + c) + b in float64 for an array x."""
    x = np.asarray(x, dtype=np.float64)
    return _base(int(code), a * x + c) + b


def _antiderivative(code: int, y: float) -> float:
    return float(
        [y * y / 2, y**3 / 3, -math.cos(y), math.sin(y), math.exp(y), y * abs(y) / 2,
         y**4 / 4, y**5 / 5][code]
    )


def factor_mean(code: int, a: float, c: float, b: float, dist) -> float:
    """E g(X_i) in closed form for X_i ~ Uniform(low, high) or Normal(mean, std)."""
    code = int(code)
    _base(code, np.zeros(1))  # validates the code
    if hasattr(dist, "low"):
        lo, hi = a * dist.low + c, a * dist.high + c
        if lo == hi:
            return float(_base(code, np.array(lo))) + b
        return (_antiderivative(code, hi) - _antiderivative(code, lo)) / (hi - lo) + b
    if hasattr(dist, "std"):
        m, s = a * dist.mean + c, abs(a) * dist.std
        damp = math.exp(-s * s / 2)
        if code == 5:
            mean_abs = abs(m) if s == 0 else (
                s * math.sqrt(2 / math.pi) * math.exp(-m * m / (2 * s * s))
                + m * float(erf(m / (s * math.sqrt(2))))
            )
        else:
            mean_abs = 0.0
        s2 = s * s
        return [m, m * m + s2, math.sin(m) * damp, math.cos(m) * damp, math.exp(m + s2 / 2),
                mean_abs, m**3 + 3 * m * s2, m**4 + 6 * m * m * s2 + 3 * s2 * s2][code] + b
    raise ValueError(f"dist: expected a Uniform or Normal distribution, got {dist!r}")


def check_encoding(enc: Mapping) -> dict:
    """Validate a product-sum encoding (coef [T], nfac [T], var/kind/a/c/b [T, F])."""
    need = ("coef", "nfac", "var", "kind", "a", "c", "b")
    missing = [k for k in need if k not in enc]
    if missing:
        raise ValueError(f"encoding: expected keys {need}, missing {missing}")
    out = {
        "coef": np.asarray(enc["coef"], dtype=np.float64).reshape(-1),
        "nfac": np.asarray(enc["nfac"], dtype=np.int32).reshape(-1),
    }
    T = out["coef"].shape[0]
    for k in ("var", "kind"):
        out[k] = np.asarray(enc[k], dtype=np.int32).reshape(T, -1)
    for k in ("a", "c", "b"):
        out[k] = np.asarray(enc[k], dtype=np.float64).reshape(T, -1)
    F = out["var"].shape[1]
    if out["nfac"].shape[0] != T or np.any(out["nfac"] < 0) or np.any(out["nfac"] > F):
        raise ValueError(f"nfac: expected {T} counts in 0..{F}, got {out['nfac']}")
    for t in range(T):
        vs = out["var"][t, : out["nfac"][t]]
        if np.any(vs < 0):
            raise ValueError(f"var: expected non-negative input indices, got {vs} in term {t}")
        if len(set(vs.tolist())) != len(vs):
            raise ValueError(f"var: expected distinct inputs within a term, got {vs} in term {t}")
    return out


def encoding_variables(enc: Mapping) -> np.ndarray:
    """Sorted inputs the encoded function depends on."""
    vs = [enc["var"][t, j] for t in range(len(enc["coef"])) for j in range(enc["nfac"][t])]
    return np.unique(np.asarray(vs, dtype=np.int64))


def factor_tables(enc: Mapping, dist, X) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-factor values at the points, means, and values at 0: gx [n, T, F], mu, g0 [T, F].

    Padding factors (j >= nfac[t]) hold 1.0 everywhere, so they never change a product.
    """
    X = np.asarray(X, dtype=np.float64)
    T, F = enc["var"].shape
    gx = np.ones((X.shape[0], T, F))
    mu = np.ones((T, F))
    g0 = np.ones((T, F))
    for t in range(T):
        for j in range(enc["nfac"][t]):
            args = (enc["kind"][t, j], enc["a"][t, j], enc["c"][t, j], enc["b"][t, j])
            v = enc["var"][t, j]
            if v >= X.shape[1]:
                raise ValueError(f"points: expected at least {v + 1} columns, got {X.shape[1]}")
            gx[:, t, j] = factor_values(*args, X[:, v])
            mu[t, j] = factor_mean(*args, dist)
            g0[t, j] = float(factor_values(*args, np.zeros(1))[0])
    return gx, mu, g0


def _mixed_form(enc: Mapping, gx: np.ndarray, fill: np.ndarray, p: float) -> np.ndarray:
    q = 1.0 - _check_p(p)
    terms = enc["coef"][None, :] * np.prod(q * gx + p * fill[None], axis=2)  # [n, T]
    return terms.sum(axis=1)


def conditional_form(enc: Mapping, gx, mu, p: float) -> np.ndarray:
    """E_M E_Z F(x_M, Z_-M) [n] in closed form (also sum_u (1-p)^|u| f_u(x))."""
    return _mixed_form(enc, gx, mu, p)


def zero_form(enc: Mapping, gx, g0, p: float) -> np.ndarray:
    """E_M F(x * M) [n] in closed form (dropped inputs set to 0)."""
    return _mixed_form(enc, gx, g0, p)


def zero_gap(enc: Mapping, gx, mu, g0, p: float) -> np.ndarray:
    """E_M F(x*M) - sum_u (1-p)^|u| f_u(x) [n]; zero for all x, p when every g(0) = E g."""
    return zero_form(enc, gx, g0, p) - conditional_form(enc, gx, mu, p)


def components_by_order(enc: Mapping, gx, mu) -> np.ndarray:
    """Sum of the order-k fANOVA components at the points, [n, K+1] for k = 0..K (K = F).

    A term coef prod_j g_j has components f_u = coef prod_{j in u} (g_j - mu_j)
    prod_{j not in u} mu_j; this sums them subset by subset.
    """
    out = np.zeros((gx.shape[0], gx.shape[2] + 1))
    for t in range(len(enc["coef"])):
        k = int(enc["nfac"][t])
        for r in range(k + 1):
            for u in itertools.combinations(range(k), r):
                comp = np.full(gx.shape[0], enc["coef"][t])
                for j in range(k):
                    comp = comp * ((gx[:, t, j] - mu[t, j]) if j in u else mu[t, j])
                out[:, r] += comp
    return out


def shrunk_by_components(enc: Mapping, gx, mu, p: float) -> np.ndarray:
    """sum_u (1-p)^|u| f_u(x) [n] from the explicit components (checks `conditional_form`)."""
    comp = components_by_order(enc, gx, mu)
    return comp @ r_p(np.arange(comp.shape[1]), p)


def zero_gap_vanishes(mu, g0, enc: Mapping) -> bool:
    """Sufficient condition for a zero gap at every x and p: g(0) = E g for every factor.

    Then each component f_u vanishes wherever one of its inputs is 0, so F(x*M) =
    sum_{u subset M} f_u(x) mask by mask.
    """
    T = len(enc["coef"])
    return all(np.isclose(g0[t, j], mu[t, j], rtol=0, atol=1e-14)
               for t in range(T) for j in range(enc["nfac"][t]))

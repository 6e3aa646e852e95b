"""Fused element-wise parts of a stacked MLP's training step (the GEMMs stay in torch).

- `head_forward` / `head_backward`: the linear output layer (a batched GEMV, which a GEMM
  library runs at full GEMM cost) fused with the MSE loss, reading the activations once.
- `relu_backward`: gz <- ga * da/dz in place and the bias gradient sum_i gz, in one pass.
The derivative of a hidden layer's output a = relu(z) * mask is scale * (a > 0) (see
`dropout_masks.relu_dropout`), so no mask is stored between the passes.
All arrays C-contiguous float32 except the small per-replica vectors (views are fine).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, parallel=True)
def head_forward(a: np.ndarray, w: np.ndarray, b: np.ndarray, y: np.ndarray, g: np.ndarray,
                 loss: np.ndarray) -> None:
    """out = a @ w + b; loss[r] = mean_i (out - y)^2 (float64); g <- d loss / d out.

    a: [R, n, k], w: [R, k], b: [R], y: [1 or R, n], g: [R, n], loss: float64 [R].
    """
    R, n, k = a.shape
    ys = np.int64(0) if y.shape[0] == 1 else np.int64(1)  # row stride of y over replicas
    c = np.float32(2.0 / n)
    for r in prange(R):
        ry = np.int64(r) * ys
        acc = 0.0
        for i in range(n):
            o = b[r]
            for j in range(k):
                o += a[r, i, j] * w[r, j]
            res = o - y[ry, i]
            acc += np.float64(res) * np.float64(res)
            g[r, i] = res * c
        loss[r] = acc / n


@njit(cache=True, parallel=True)
def head_backward(a: np.ndarray, g: np.ndarray, w: np.ndarray, scale: np.ndarray,
                  gw: np.ndarray, gb: np.ndarray, gz: np.ndarray, gzb: np.ndarray) -> None:
    """Output layer backward, then through the last hidden ReLU/dropout.

    gw[r] = a[r]^T g[r], gb[r] = sum_i g[r, i]; gz[r, i, j] = g[r, i] w[r, j] da/dz with
    da/dz = scale[r] (a[r, i, j] > 0) (the gradient at the last hidden pre-activation) and
    gzb[r] = sum_i gz[r, i] (its bias gradient). Sums in float64.
    a, gz: [R, n, k]; g: [R, n]; w, gw, gzb: [R, k]; gb, scale: [R].
    """
    R, n, k = a.shape
    for r in prange(R):
        acc = np.zeros(k, dtype=np.float64)
        accz = np.zeros(k, dtype=np.float64)
        accb = 0.0
        s = scale[r]
        for i in range(n):
            gi = g[r, i]
            accb += gi
            for j in range(k):
                aij = a[r, i, j]
                acc[j] += aij * gi
                v = gi * w[r, j] * s if aij > 0 else np.float32(0.0)
                gz[r, i, j] = v
                accz[j] += v
        gb[r] = accb
        for j in range(k):
            gw[r, j] = acc[j]
            gzb[r, j] = accz[j]


@njit(cache=True, parallel=True)
def relu_backward(ga: np.ndarray, a: np.ndarray, scale: np.ndarray, gb: np.ndarray) -> None:
    """ga <- ga * scale[r] (a > 0) in place (the gradient at the pre-activation of the layer
    whose output is a); gb[r] = sum_i ga[r, i] (float64). ga, a: [R, n, k]; gb: [R, k]."""
    R, n, k = ga.shape
    for r in prange(R):
        acc = np.zeros(k, dtype=np.float64)
        s = scale[r]
        for i in range(n):
            for j in range(k):
                v = ga[r, i, j] * s if a[r, i, j] > 0 else np.float32(0.0)
                ga[r, i, j] = v
                acc[j] += v
        for j in range(k):
            gb[r, j] = acc[j]

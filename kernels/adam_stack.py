"""One fused Adam step over every stacked parameter tensor of a chunk of replicas.

The parameters, gradients and moments of a chunk live in flat buffers made of blocks, one
per tensor, each block [R, size_k] (replica-major). Per-replica quantities (L2 weight decay,
bias-corrected step size, whether the replica is still training) are looked up by the row.
The update mirrors torch.optim.Adam's single-tensor step (L2 decay coupled as
grad + wd * theta); a frozen replica's parameters and moments are not touched at all.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, parallel=True)
def adam_step(theta: np.ndarray, grad: np.ndarray, m: np.ndarray, v: np.ndarray,
              offsets: np.ndarray, sizes: np.ndarray, active: np.ndarray, wd: np.ndarray,
              step_size: np.ndarray, bc2_sqrt: np.ndarray, beta1: float, beta2: float,
              eps: float) -> None:
    """theta, grad, m, v: float32 flat buffers; block k starts at offsets[k] and holds
    R rows of sizes[k] values. active: bool [R]; wd, step_size (lr / (1 - beta1^t)),
    bc2_sqrt (sqrt(1 - beta2^t)): float32 [R]."""
    R = active.shape[0]
    w1 = np.float32(1.0 - beta1)
    b2 = np.float32(beta2)
    w2 = np.float32(1.0 - beta2)
    e = np.float32(eps)
    K = offsets.shape[0]
    for kr in prange(K * R):
        k = kr // R
        r = kr - k * R
        if not active[r]:
            continue
        start = offsets[k] + r * sizes[k]
        lam = wd[r]
        ss = step_size[r]
        bc = bc2_sqrt[r]
        for i in range(start, start + sizes[k]):
            p = theta[i]
            g = grad[i] + lam * p
            mi = m[i] + w1 * (g - m[i])
            vi = v[i] * b2 + w2 * g * g
            m[i] = mi
            v[i] = vi
            theta[i] = p - ss * (mi / (np.sqrt(vi) / bc + e))

"""Exact fANOVA on a tensor quadrature grid (small d).

F is evaluated once on the full tensor grid of `nodes` points per axis (Gauss-Legendre for
Uniform, probabilists' Gauss-Hermite for Normal). On that grid the fANOVA is a tensor
identity: expand F in a tensor-product basis that is orthonormal under the quadrature weights
with phi_0 = 1 on every axis. Then f_u collects exactly the basis functions whose index is
nonzero on the axes in u, and by Parseval Var f_u = sum of their squared coefficients. Cost:
d mode products (n x n matrix along each axis, d n^(d+1) flops) and d reductions; every
subset's variance comes out as a sum of squares (no cancelling subtractions), so V_>K is
computed, not inferred as total - sum.

Exact (to rounding) when F^2 restricted to each axis is a polynomial of degree < 2*nodes.
"""

from __future__ import annotations

import itertools

import numpy as np

from ..data import Normal, Uniform
from .effects import EffectSizes

MAX_GRID_POINTS = 1 << 24  # 8 nodes ^ 8 dims


def quadrature(dist: Uniform | Normal, nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """1-D nodes and probability weights (sum 1) for one coordinate of `dist`."""
    if isinstance(dist, Uniform):
        x, w = np.polynomial.legendre.leggauss(nodes)
        return dist.low + (dist.high - dist.low) * (x + 1.0) / 2.0, w / 2.0
    if isinstance(dist, Normal):
        x, w = np.polynomial.hermite_e.hermegauss(nodes)
        return dist.mean + dist.std * x, w / w.sum()
    raise ValueError(f"dist: expected fg.Uniform or fg.Normal, got {type(dist).__name__}")


def _to_numpy(y) -> np.ndarray:
    if hasattr(y, "detach"):
        y = y.detach().cpu().numpy()
    return np.asarray(y, dtype=np.float64)


def _call(f, X: np.ndarray):
    """numpy float64 in; an nn.Module gets a float32 torch tensor (what trained nets expect)."""
    import torch

    if isinstance(f, torch.nn.Module):
        with torch.no_grad():
            return f(torch.from_numpy(X.astype(np.float32)))
    return f(X)


def evaluate_grid(f, x: np.ndarray, d: int, chunk: int) -> tuple[np.ndarray, bool]:
    """F on the tensor grid x^d, rows in C order: ([R, nodes^d] float64, f returned [R, n])."""
    nodes = len(x)
    total = nodes**d
    m = 0  # trailing axes enumerated in one block of nodes^m <= chunk rows
    while m < d and nodes ** (m + 1) <= chunk:
        m += 1
    m = max(m, 1)
    tail = x[np.stack(np.unravel_index(np.arange(nodes**m), (nodes,) * m), axis=1)]  # [B, m]
    block = len(tail)
    out, replica_axis = None, False
    for lead in range(total // block):
        X = np.empty((block, d))
        X[:, : d - m] = x[list(np.unravel_index(lead, (nodes,) * (d - m)))] if d > m else 0.0
        X[:, d - m :] = tail
        y = _to_numpy(_call(f, X))
        replica_axis = y.ndim == 2
        if y.ndim == 1:
            y = y[None, :]
        if y.ndim != 2 or y.shape[1] != block:
            raise ValueError(f"f: expected output [n] or [R, n] with n={block}, got {y.shape}")
        if out is None:
            out = np.empty((y.shape[0], total))
        out[:, lead * block : (lead + 1) * block] = y
    return out, replica_axis


def orthonormal_basis(w: np.ndarray) -> np.ndarray:
    """B [n, n] with c = B @ f the coefficients of f in an L2(w)-orthonormal basis, c_0 = mean."""
    sw = np.sqrt(w)
    start = np.eye(len(w))
    start[:, 0] = sw
    Q, _ = np.linalg.qr(start)  # first column is +-sqrt(w)
    O = Q.T * np.sign(Q[0, 0] * sw[0])
    return O * sw[None, :]


def subset_energies(vals: np.ndarray, w: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    """([R, 2^d], [R]): entry u of the first is the sum of squared basis coefficients that are
    nonzero exactly on the axes in u, i.e. Var f_u (entry 0 is mean^2); axis i is bit
    2^(d-1-i). The second is the mean of F.
    """
    R, n = vals.shape[0], len(w)
    B = orthonormal_basis(w)
    C = vals
    for _ in range(d):  # mode product on the leading axis, then rotate it to the end
        C = np.matmul(C.reshape(R, n, -1).transpose(0, 2, 1), B.T)  # [R, M, n]
    mean = C.reshape(R, -1)[:, 0].copy()
    S = C.reshape(R, -1) ** 2
    for _ in range(d):  # per axis: [index 0, sum of the rest], rotated to the end
        S = S.reshape(R, n, -1)
        S = np.stack([S[:, 0], S[:, 1:].sum(axis=1)], axis=2)  # [R, M, 2]
    return S.reshape(R, 2**d), mean


def decompose(
    f,
    dist: Uniform | Normal,
    max_order: int = 3,
    nodes: int = 8,
    return_subsets: bool = False,
    chunk: int = 1 << 16,
) -> EffectSizes:
    """Exact V_1..V_K and V_>K of F under `dist` by tensor quadrature.

    f: callable [n, d] float64 -> [n] or [R, n] (numpy or torch output; a torch nn.Module is
    called with a float32 tensor on the CPU). return_subsets: also give Var f_u for every
    |u| <= max_order in info["subset_variances"] ({u: float or [R] array}).
    """
    if not isinstance(dist, (Uniform, Normal)):
        raise ValueError(f"dist: expected fg.Uniform or fg.Normal, got {type(dist).__name__}")
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
        raise ValueError(f"nodes: expected a positive integer, got {nodes!r}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk: expected a positive integer, got {chunk!r}")
    if isinstance(max_order, bool) or not isinstance(max_order, int) or max_order < 1:
        raise ValueError(f"max_order: expected a positive integer, got {max_order!r}")
    d = dist.d
    if nodes**d > MAX_GRID_POINTS:
        raise ValueError(
            f"dist.d: nodes^d = {nodes}^{d} exceeds the grid limit of {MAX_GRID_POINTS} points; "
            f"expected d <= 8 at 8 nodes (use method='sobol' for larger d)"
        )
    x, w = quadrature(dist, nodes)
    vals, replica_axis = evaluate_grid(f, x, d, chunk)  # [R, nodes^d]
    E, mu = subset_energies(vals, w, d)  # [R, 2^d], [R]
    R = vals.shape[0]
    bits = np.arange(2**d)
    size = np.array([bin(int(b_)).count("1") for b_ in bits])
    vbo = np.zeros((R, max_order + 1))
    for k in range(1, max_order + 1):
        vbo[:, k - 1] = E[:, size == k].sum(axis=1)
    vbo[:, max_order] = E[:, size > max_order].sum(axis=1)
    total = E[:, 1:].sum(axis=1)
    info = {"nodes": nodes, "grid_points": nodes**d, "mean": mu if R > 1 else float(mu[0])}
    if return_subsets:
        ks = range(1, min(max_order, d) + 1)
        order = [u for k in ks for u in itertools.combinations(range(d), k)]
        col = {u: sum(1 << (d - 1 - i) for i in u) for u in order}
        info["subset_variances"] = {
            u: (E[:, col[u]] if R > 1 else float(E[0, col[u]])) for u in order
        }
    if not replica_axis:
        vbo, total = vbo[0], total[0]
    return EffectSizes(
        variance_by_order=vbo,
        total_variance=np.asarray(total),
        stderr=None,
        method="grid",
        max_order=max_order,
        info=info,
    )


"""Numerical checks of the paper's theorems, exact (enumeration) or by Monte Carlo (kernels).

Theorem 1, both readings (see theory.py):
  conditional form  E_M E_Z F(x_M, Z_-M)  -- what the proof supports; must equal the right side
  zero imputation   E_M F(x * M)          -- what a network sees; differs by the 'gap'
  right side        sum_u (1-p)^|u| f_u(x)
Theorem 2: for a model linear in pure-interaction features phi_u, the expected gradient under
input masking is (1-p)^|u| times the unmasked gradient (exactly at theta = 0).
S(p): Cov(F(X), F(X_M, Z_-M)) = sum_k (1-p)^k V_k, for trained networks.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import theory
from .decompose.grid import quadrature
from .kernels import mask_sampling as ms
from .kernels.rng import derive_key, uniform_numpy

FORMS = ("conditional", "zero")
METHODS = ("auto", "exact", "mc")
MC_DEVICES = ("auto", "cpu", "cuda", "cupy", "numpy")
STREAM_THEOREM1, STREAM_THEOREM2 = 1, 2  # derive_key(seed, stream) ids


@dataclass
class Theorem1Report:
    """lhs, rhs [m]: the chosen form of E[Y | X*M] and sum_u (1-p)^|u| f_u(x) at the points.

    ok: every |lhs - rhs| within its tolerance (float precision for exact enumeration,
    z standard errors plus the p_eff bias bound for Monte Carlo). gap = lhs_zero - rhs.
    """

    p: float
    form: str
    method: str
    lhs: np.ndarray
    rhs: np.ndarray
    max_abs_error: float
    tolerance: float
    ok: bool
    lhs_conditional: np.ndarray
    lhs_zero: np.ndarray
    gap: np.ndarray
    errors: np.ndarray
    tolerances: np.ndarray
    stderr_conditional: np.ndarray | None = None
    stderr_zero: np.ndarray | None = None
    samples: int | None = None
    device: str = "cpu"
    info: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- validation


def _check_p(p) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float, np.floating)) or not (
        0.0 <= float(p) <= 1.0
    ):
        raise ValueError(f"p: expected a dropout rate in [0, 1], got {p!r}")
    return float(p)


def _check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")
    return value


def _check_points(points, d: int) -> np.ndarray:
    X = np.asarray(points, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != d or X.shape[0] < 1:
        raise ValueError(f"points: expected an array [m, {d}] with m >= 1, got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        raise ValueError("points: expected finite values")
    return X


def _check_samples(samples) -> int:
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 2:
        raise ValueError(f"samples: expected an integer >= 2, got {samples!r}")
    return int(samples)


def as_product_sum(f, dist) -> dict | None:
    """The checked array encoding of a product-sum function (ProductSum or dict), else None."""
    if isinstance(f, dict):
        return theory.check_encoding(f)
    if hasattr(f, "encode") and hasattr(f, "terms"):
        fdist = getattr(f, "dist", None)
        if fdist is not None and dist is not None and fdist != dist:
            raise ValueError(f"dist: expected the function's own distribution {fdist!r}, "
                             f"got {dist!r}")
        return theory.check_encoding(f.encode())
    return None


def _mc_device(device: str) -> str:
    _check_choice("device", device, MC_DEVICES)
    if device == "auto":
        return "cuda" if cuda_usable() else "cpu"
    if device == "cuda" and not cuda_usable():
        raise ValueError("device: 'cuda' was asked for but Numba sees no CUDA device")
    if device == "cupy":
        from .kernels import mask_sampling_cupy

        if not mask_sampling_cupy.available():
            raise ValueError("device: 'cupy' was asked for but CuPy sees no CUDA device")
    return device


def cuda_usable() -> bool:
    """A real CUDA device for the Numba kernels (the simulator does not count)."""
    import os

    from numba import cuda

    return os.environ.get("NUMBA_ENABLE_CUDASIM") != "1" and bool(cuda.is_available())


# --------------------------------------------------------------------------- Theorem 1


def _mask_table(s: int, p: float) -> tuple[np.ndarray, np.ndarray]:
    """All 2^s keep patterns [2^s, s] (bool) and their probabilities [2^s]."""
    codes = np.arange(1 << s)
    keep = ((codes[:, None] >> np.arange(s)[None, :]) & 1).astype(bool)
    k = keep.sum(axis=1)
    return keep, (1.0 - p) ** k * p ** (s - k)


def _enumerate_product_sum(enc, gx, mu, g0, p: float) -> tuple[np.ndarray, np.ndarray]:
    """Both forms [m] by summing over all 2^s masks of the s inputs F depends on."""
    used = theory.encoding_variables(enc)
    s = used.shape[0]
    m = gx.shape[0]
    if (1 << s) * m * gx.shape[1] * gx.shape[2] > 2e8:
        raise ValueError(f"method: 'exact' needs 2^{s} masks x {m} points, too many; use 'mc'")
    keep, w = _mask_table(s, p)  # [2^s, s], [2^s]
    slot = {int(v): j for j, v in enumerate(used)}
    cond = np.zeros((keep.shape[0], m))
    zero = np.zeros((keep.shape[0], m))
    for t in range(len(enc["coef"])):
        pc = np.full((keep.shape[0], m), enc["coef"][t])
        pz = pc.copy()
        for j in range(enc["nfac"][t]):
            kj = keep[:, slot[int(enc["var"][t, j])], None]  # [2^s, 1]
            pc = pc * np.where(kj, gx[None, :, t, j], mu[t, j])
            pz = pz * np.where(kj, gx[None, :, t, j], g0[t, j])
        cond += pc
        zero += pz
    return w @ cond, w @ zero


def _call(f, X: np.ndarray) -> np.ndarray:
    y = np.asarray(f(X), dtype=np.float64)
    if y.ndim == 2 and y.shape[0] == 1:
        y = y[0]
    if y.shape != (X.shape[0],):
        raise ValueError(f"f: expected a callable [n, d] -> [n], got output shape {y.shape}")
    return y


def conditional_expectations(f, dist, points, variables, nodes: int = 24) -> dict:
    """c_v(x) = E[F | X_v = x_v] [m] for every subset v of `variables`, by tensor quadrature.

    Inputs outside `variables` keep their point values (F is assumed not to depend on them).
    """
    z, w = quadrature(dist, nodes)
    S = tuple(int(v) for v in variables)
    m = points.shape[0]
    if m * (nodes + 1) ** len(S) > 5e7:
        raise ValueError(
            f"variables: the right side of a callable by quadrature needs {m} x "
            f"{nodes + 1}^{len(S)} evaluations, too many; pass variables= (the inputs F "
            "depends on), fewer points or nodes, or a functions.ProductSum")
    out = {}
    for r in range(len(S) + 1):
        for v in itertools.combinations(S, r):
            dropped = [i for i in S if i not in v]
            k = len(dropped)
            X = np.repeat(points, nodes**k, axis=0)  # [m * q^k, d]
            wt = np.ones(1)
            for a, i in enumerate(dropped):
                idx = (np.arange(nodes**k) // nodes ** (k - 1 - a)) % nodes
                X[:, i] = np.tile(z[idx], m)
                wt = np.kron(wt, w)
            out[v] = (_call(f, X).reshape(m, nodes**k) * wt[None, :]).sum(axis=1)
    return out


def moebius_components(c: dict) -> dict:
    """f_u(x) = sum_{v subset u} (-1)^{|u|-|v|} c_v(x) for every u in c (the fANOVA terms)."""
    out = {}
    for u in c:
        f_u = 0.0
        for r in range(len(u) + 1):
            for v in itertools.combinations(u, r):
                f_u = f_u + (-1.0) ** (len(u) - r) * c[v]
        out[u] = f_u
    return out


def components(f, dist, points, variables=None, nodes: int = 24) -> dict:
    """fANOVA components {u: f_u(points) [m]} of a callable, by quadrature and Moebius."""
    d = int(dist.d)
    X = _check_points(points, d)
    S = tuple(range(d)) if variables is None else tuple(int(v) for v in variables)
    return moebius_components(conditional_expectations(f, dist, X, S, nodes))


def _moebius_rhs(c: dict, p: float) -> np.ndarray:
    """sum_u (1-p)^|u| f_u(x), summing the components explicitly."""
    return sum((1.0 - p) ** len(u) * f_u for u, f_u in moebius_components(c).items())


def _enumerate_callable(f, c: dict, points, variables, p: float):
    """Both forms [m] of a callable by summing over all 2^s masks (inner E by quadrature)."""
    S = tuple(int(v) for v in variables)
    cond = 0.0
    zero = 0.0
    for v, cv in c.items():
        w = (1.0 - p) ** len(v) * p ** (len(S) - len(v))
        X0 = points.copy()
        X0[:, [i for i in S if i not in v]] = 0.0
        cond = cond + w * cv
        zero = zero + w * _call(f, X0)
    return cond, zero


def _mc_product_sum(enc, gx, mu, g0, p, samples, seed, device, d):
    """Monte Carlo means and standard errors of both forms [m] from the mask kernels."""
    args = ms.prepare(enc, gx, mu, g0, d)
    key = derive_key(seed, STREAM_THEOREM1)
    if device == "cpu":
        mom = ms.moments_cpu(key, p, samples, args)
    elif device == "cuda":
        mom = ms.moments_cuda(key, p, samples, args)
    elif device == "cupy":
        from .kernels.mask_sampling_cupy import moments_cupy

        mom = moments_cupy(key, p, samples, args)
    else:
        mom = ms.moments_numpy(key, p, samples, args)
    return _mean_se(mom[:, 0], mom[:, 1], samples), _mean_se(mom[:, 2], mom[:, 3], samples)


def _mean_se(s1, s2, n):
    mean = s1 / n
    var = np.maximum(s2 - s1 * mean, 0.0) / (n - 1)
    return mean, np.sqrt(var / n)


def _mc_callable(f, dist, points, p, samples, seed, device, batch: int = 4096):
    """Torch path: masks (and replacement draws Z) in batches on the resolved device."""
    import torch

    from .device import resolve_device

    dev = resolve_device("auto" if device in ("numpy", "cupy") else device)
    gen = torch.Generator(device=dev).manual_seed(int(derive_key(seed, STREAM_THEOREM1) >> 1))
    x = torch.as_tensor(points, dtype=torch.float64, device=dev)  # [m, d]
    m, d = points.shape
    sums = np.zeros((4, m))
    done = 0
    while done < samples:
        b = min(batch, samples - done)
        keep = torch.rand((b, m, d), generator=gen, device=dev, dtype=torch.float64) >= p
        u = torch.rand((b, m, d), generator=gen, device=dev, dtype=torch.float64)
        if hasattr(dist, "low"):
            z = dist.low + (dist.high - dist.low) * u
        else:
            z = dist.mean + dist.std * torch.special.ndtri(u.clamp(1e-300, 1.0 - 1e-16))
        xc = torch.where(keep, x, z).reshape(b * m, d).cpu().numpy()
        xz = torch.where(keep, x, torch.zeros_like(x)).reshape(b * m, d).cpu().numpy()
        vc = _call(f, xc).reshape(b, m)
        vz = _call(f, xz).reshape(b, m)
        sums += np.stack([vc.sum(0), (vc * vc).sum(0), vz.sum(0), (vz * vz).sum(0)])
        done += b
    return _mean_se(sums[0], sums[1], samples), _mean_se(sums[2], sums[3], samples), str(dev)


def theorem1(f, dist, p: float, points, method: str = "auto", form: str = "conditional",
             samples: int = 200_000, seed: int = 0, device: str = "auto", z: float = 5.0,
             nodes: int = 24, variables=None, tolerance: float | None = None
             ) -> Theorem1Report:
    """Check E[Y | X*M] = sum_u (1-p)^|u| f_u(x) at `points` [m, d].

    f: a product-sum (functions.ProductSum or its `encode()` dict: closed-form inner
    expectations, kernels for Monte Carlo) or any callable [n, d] -> [n] of small d (inner
    expectations and components by Gauss quadrature, Monte Carlo by the torch path).
    method: 'exact' (all 2^s masks), 'mc' (samples masks per point, z-sigma tolerance), 'auto'.
    device (Monte Carlo): 'auto' | 'cpu' (Numba) | 'cuda' (Numba CUDA) | 'cupy' | 'numpy'.
    """
    p = _check_p(p)
    _check_choice("method", method, METHODS)
    _check_choice("form", form, FORMS)
    d = int(getattr(dist, "d", 0))
    X = _check_points(points, d)
    enc = as_product_sum(f, dist)
    info: dict[str, Any] = {}
    if enc is not None:
        gx, mu, g0 = theory.factor_tables(enc, dist, X)
        s = theory.encoding_variables(enc).shape[0]
        if hasattr(f, "shrunk"):
            rhs = np.asarray(f.shrunk(X, p), dtype=np.float64)
            info["rhs_source"] = "functions.ProductSum.shrunk (closed form)"
        else:
            rhs = theory.shrunk_by_components(enc, gx, mu, p)
            info["rhs_source"] = "theory.shrunk_by_components (closed form)"
        if method == "auto":
            method = "exact" if s <= 16 else "mc"
    else:
        S = tuple(range(d)) if variables is None else tuple(int(v) for v in variables)
        if any(not 0 <= v < d for v in S) or len(set(S)) != len(S):
            raise ValueError(f"variables: expected distinct input indices in [0, {d}), got {S}")
        if method == "auto":  # the right side needs the quadrature anyway
            method = "exact"
        c = conditional_expectations(f, dist, X, S, nodes)
        rhs = _moebius_rhs(c, p)
        info["rhs_source"] = f"Moebius transform of {nodes}-node Gauss quadrature"
    se_c = se_z = None
    n_samples = None
    dev = "cpu"
    if method == "exact":
        if enc is not None:
            lhs_c, lhs_z = _enumerate_product_sum(enc, gx, mu, g0, p)
            info["inner"] = "closed-form factor means"
        else:
            lhs_c, lhs_z = _enumerate_callable(f, c, X, S, p)
            info["inner"] = f"{nodes}-node Gauss quadrature"
        scale = 1.0 + float(np.max(np.abs(rhs)))
        tols = np.full(X.shape[0], 1e-10 * scale if tolerance is None else tolerance)
    else:
        n_samples = _check_samples(samples)
        dev = _mc_device(device)
        if enc is not None:
            (lhs_c, se_c), (lhs_z, se_z) = _mc_product_sum(enc, gx, mu, g0, p, n_samples, seed,
                                                           dev, d)
            # the kernels drop with probability p_eff = ceil(p 2^24) / 2^24: bound that bias
            pe = ms.effective_drop(p)
            bias_c = np.abs(theory.conditional_form(enc, gx, mu, pe) - rhs)
            bias_z = np.abs(theory.zero_form(enc, gx, g0, pe) - theory.zero_form(enc, gx, g0, p))
            info["p_eff"] = pe
        else:
            (lhs_c, se_c), (lhs_z, se_z), dev = _mc_callable(f, dist, X, p, n_samples, seed, dev)
            bias_c = bias_z = np.zeros(X.shape[0])
        se, bias = (se_c, bias_c) if form == "conditional" else (se_z, bias_z)
        # floor: float rounding of a sum of `samples` values (matters only when se = 0)
        floor = 1e-9 * (1.0 + np.abs(rhs))
        tols = z * se + bias + floor if tolerance is None else np.full(X.shape[0], tolerance)
        info["z"] = z
    lhs = lhs_c if form == "conditional" else lhs_z
    err = np.abs(lhs - rhs)
    return Theorem1Report(
        p=p, form=form, method=method, lhs=lhs, rhs=rhs, max_abs_error=float(err.max()),
        tolerance=float(tols.max()), ok=bool(np.all(err <= tols)), lhs_conditional=lhs_c,
        lhs_zero=lhs_z, gap=lhs_z - rhs, errors=err, tolerances=tols, stderr_conditional=se_c,
        stderr_zero=se_z, samples=n_samples, device=dev, info=info)


# --------------------------------------------------------------------------- Theorem 2

BASES = ("x", "sin", "x2", "cos")  # h(0) = E h for the first two (after centering), not the last


@dataclass
class Theorem2Report:
    """Per order k (rows of `orders`): the masked gradient projected on the unmasked one.

    ratio_exact [K]: <E_M grad_k(X*M), grad_k(X)> / |grad_k(X)|^2 by enumerating all masks;
    ratio_mc, stderr_mc [K]: the same from sampled masks; predicted [K] = (1-p)^k.
    exact_expected: the theory says ratio = (1-p)^k exactly here (theta = 0, h(0) = 0);
    ok: then |ratio_exact - predicted| <= 1e-10 and the MC ratio is within z stderr of it;
    otherwise ok says the MC ratio agrees with the exact one (a measurement, not a claim).
    """

    p: float
    basis: str
    theta_scale: float
    orders: np.ndarray
    predicted: np.ndarray
    ratio_exact: np.ndarray
    ratio_mc: np.ndarray
    stderr_mc: np.ndarray
    residual: np.ndarray
    exact_expected: bool
    max_abs_error: float
    tolerance: float
    ok: bool
    info: dict[str, Any] = field(default_factory=dict)


def _basis(name: str, dist):
    """Mean-zero univariate feature h(x) = base(x) - E base(X) and its value at 0."""
    code = theory.KIND_NAMES.index(name)
    mean = theory.factor_mean(code, 1.0, 0.0, 0.0, dist)

    def h(x):
        return theory.factor_values(code, 1.0, 0.0, 0.0, x) - mean

    return h, float(h(np.zeros(1))[0])


def theorem2(dist, p: float, max_order: int = 3, basis: str = "x", n: int = 2000,
             theta_scale: float = 0.0, samples: int = 2000, seed: int = 0, z: float = 5.0,
             noise: float = 0.1) -> Theorem2Report:
    """Gradient concordance for y_hat = sum_u theta_u phi_u(x), phi_u = prod_{i in u} h(x_i).

    Features: every u of 1..max_order inputs among dist.d (<= 10). Target Y = sum_u beta_u
    phi_u(X) + noise (beta ~ N(0, 1), seeded); theta = theta_scale * N(0, 1). Loss: mean
    squared error / 2. Masks drop each input of each row with probability p, dropped inputs
    set to 0 (what a network sees).
    """
    p = _check_p(p)
    _check_choice("basis", basis, BASES)
    d = int(getattr(dist, "d", 0))
    if not 1 <= d <= 10:
        raise ValueError(f"dist: expected d in 1..10 for mask enumeration, got d={d}")
    if isinstance(max_order, bool) or not 1 <= int(max_order) <= d:
        raise ValueError(f"max_order: expected an integer in 1..{d}, got {max_order!r}")
    samples = _check_samples(samples)
    rng = np.random.default_rng(seed)
    h, h0 = _basis(basis, dist)
    subsets = [u for k in range(1, max_order + 1) for u in itertools.combinations(range(d), k)]
    order = np.array([len(u) for u in subsets])
    X = dist.sample(n, seed=seed).astype(np.float64)  # [n, d]

    def features(Xm):  # [n, d] -> [n, U]
        H = h(Xm)
        return np.stack([np.prod(H[:, list(u)], axis=1) for u in subsets], axis=1)

    Phi = features(X)
    Y = Phi @ rng.standard_normal(len(subsets)) + noise * rng.standard_normal(n)
    theta = theta_scale * rng.standard_normal(len(subsets))

    def grad(P):  # [n, U] masked features -> [U]
        return -(P.T @ (Y - P @ theta)) / n

    g = grad(Phi)
    keep, w = _mask_table(d, p)
    G = sum(wm * grad(features(X * km[None, :])) for km, wm in zip(keep, w, strict=True))
    key = derive_key(seed, STREAM_THEOREM2)
    orders = np.arange(1, max_order + 1)

    def ratios(Gv):  # [..., U] -> [..., K]
        return np.stack([(Gv[..., order == k] @ g[order == k]) / (g[order == k] @ g[order == k])
                         for k in orders], axis=-1)

    r_exact = ratios(G)
    resid = np.array([np.linalg.norm(G[order == k] - r_exact[k - 1] * g[order == k])
                      / np.linalg.norm(g[order == k]) for k in orders])
    per_sample = np.empty((samples, len(orders)))
    pe = ms.effective_drop(p)
    for s in range(samples):  # same stream layout as the kernels: (s * n + i) * d + v
        ctr = (np.uint64(s) * np.uint64(n) + np.arange(n, dtype=np.uint64))[:, None] * np.uint64(d)
        km = uniform_numpy(key, ctr + np.arange(d, dtype=np.uint64)[None, :]) >= pe
        per_sample[s] = ratios(grad(features(X * km)))
    r_mc = per_sample.mean(axis=0)
    se = per_sample.std(axis=0, ddof=1) / math.sqrt(samples)
    pred = (1.0 - p) ** orders
    exact_expected = theta_scale == 0.0 and abs(h0) < 1e-14
    # MC tolerance: z sigma plus the effect of p_eff != p on the ratio (bounded via k q^(k-1))
    bias = orders * (pe - p)
    if exact_expected:
        err_exact = np.abs(r_exact - pred)
        err_mc = np.abs(r_mc - pred)
        ok = bool(np.all(err_exact <= 1e-10) and np.all(err_mc <= z * se + bias + 1e-12))
        max_err, tol = float(max(err_exact.max(), err_mc.max())), float((z * se + bias).max())
    else:
        err_mc = np.abs(r_mc - r_exact)
        ok = bool(np.all(err_mc <= z * se + bias + 1e-12))
        max_err, tol = float(err_mc.max()), float((z * se + bias).max())
    return Theorem2Report(
        p=p, basis=basis, theta_scale=float(theta_scale), orders=orders, predicted=pred,
        ratio_exact=r_exact, ratio_mc=r_mc, stderr_mc=se, residual=resid,
        exact_expected=exact_expected, max_abs_error=max_err, tolerance=tol, ok=ok,
        info={"h(0)": h0, "n": n, "samples": samples, "features": len(subsets), "z": z,
              "subsets": subsets, "X": X, "Y": Y, "theta": theta, "grad": g,
              "grad_masked_exact": G})


# --------------------------------------------------------------------------- S(p)


@dataclass
class ShrinkageReport:
    """S(p) = Cov(F(X), F(X_M, Z_-M)) measured by mask sampling vs sum_k (1-p)^k V_k.

    measured, stderr, predicted, predicted_stderr, zero_imputed (Cov(F(X), F(X*M))),
    zero_stderr: [R] (one per replica).
    predicted counts orders > K at half of (1-p)^(K+1) V_>K, its bound's midpoint; the
    half-width is added to the tolerance.
    """

    p: float
    measured: np.ndarray
    stderr: np.ndarray
    predicted: np.ndarray
    predicted_stderr: np.ndarray
    zero_imputed: np.ndarray
    zero_stderr: np.ndarray
    tolerance: np.ndarray
    ok: bool
    variance_by_order: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


def _as_batched(run_or_f):
    """Callable [n, d] -> [R, n] from a ReplicaRun (its predict) or a callable."""
    fn = run_or_f.predict if hasattr(run_or_f, "predict") else run_or_f
    if not callable(fn):
        raise ValueError(f"run_or_f: expected a ReplicaRun or a callable, got {run_or_f!r}")

    def call(X):
        y = np.asarray(fn(X.astype(np.float32)), dtype=np.float64)
        return y[None] if y.ndim == 1 else y

    return call


def masked_shrinkage(run_or_f, dist, p: float, n: int = 20_000, seed: int = 0,
                     max_order: int = 3, variance_by_order=None, variance_stderr=None,
                     z: float = 5.0, device: str = "auto", n_sobol: int = 1000,
                     **decompose_kwargs) -> ShrinkageReport:
    """Measure S(p) on a trained ensemble (or any callable) and check it against its orders.

    variance_by_order [R, K+1] (and its stderr) default to
    `decompose(f, dist, method='sobol', max_order=K, n=n_sobol)`. Rows X ~ dist, masks drawn
    with a seeded torch generator on `device`, Z ~ dist (seed + 1).
    """
    import torch

    from .decompose import decompose
    from .device import resolve_device

    p = _check_p(p)
    f = _as_batched(run_or_f)
    d = int(dist.d)
    dev = resolve_device(device)
    gen = torch.Generator(device=dev).manual_seed(int(derive_key(seed, 3) >> 1))
    X = dist.sample(n, seed=seed).astype(np.float64)
    keep = (torch.rand((n, d), generator=gen, device=dev, dtype=torch.float64) >= p).cpu().numpy()
    Z = dist.sample(n, seed=seed + 1).astype(np.float64)
    FX = f(X)  # [R, n]
    FM = f(np.where(keep, X, Z))
    F0 = f(X * keep)
    a = FX - FX.mean(axis=1, keepdims=True)
    prod = a * (FM - FM.mean(axis=1, keepdims=True))  # [R, n]
    measured = prod.sum(axis=1) / (n - 1)
    se = prod.std(axis=1, ddof=1) / math.sqrt(n)
    prod0 = a * (F0 - F0.mean(axis=1, keepdims=True))
    zero = prod0.sum(axis=1) / (n - 1)
    zero_se = prod0.std(axis=1, ddof=1) / math.sqrt(n)
    if variance_by_order is None:
        res = decompose(run_or_f.predict if hasattr(run_or_f, "predict") else run_or_f, dist,
                        method="sobol", max_order=max_order, n=n_sobol, seed=seed,
                        device=device, **decompose_kwargs)
        variance_by_order, variance_stderr = res.variance_by_order, res.stderr
    V = np.atleast_2d(np.asarray(variance_by_order, dtype=np.float64))  # [R, K+1]
    Vse = (np.zeros_like(V) if variance_stderr is None
           else np.atleast_2d(np.asarray(variance_stderr, dtype=np.float64)))
    K = V.shape[1] - 1
    q = 1.0 - p
    wk = q ** np.arange(1, K + 1)
    rest = 0.5 * q ** (K + 1) * np.maximum(V[:, K], 0.0)  # orders > K: in [0, 2 * rest]
    predicted = V[:, :K] @ wk + rest
    pred_se = np.sqrt((Vse[:, :K] ** 2) @ wk**2 + (0.5 * q ** (K + 1) * Vse[:, K]) ** 2)
    tol = z * np.sqrt(se**2 + pred_se**2) + rest + 1e-12
    ok = bool(np.all(np.abs(measured - predicted) <= tol))
    return ShrinkageReport(p=p, measured=measured, stderr=se, predicted=predicted,
                           predicted_stderr=pred_se, zero_imputed=zero, zero_stderr=zero_se,
                           tolerance=tol, ok=ok,
                           variance_by_order=V, info={"n": n, "device": str(dev), "z": z})

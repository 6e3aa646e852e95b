"""Batched training of many small MLP replicas as one set of stacked tensors.

A replica is an MLP with `depth` hidden ReLU layers of `width` units and a linear output,
trained with MSE + Adam. All replicas of one width form a stack: weights [R, fan_in, fan_out],
forward with `baddbmm`, one hand-written backward pass, one Adam step for the whole stack.
The loss is the *sum* of replica losses, so gradients never mix, and Adam is elementwise, so
Adam on the stack is exactly per-replica Adam.

A replica's result depends only on its own settings: its initial weights on
(seed, width, depth, d) (the same seed starts from the same weights under every dropout
setting, a paired design), its dropout masks on (seed, kind, rate, step, layer) through the
counter-based stream of `kernels/dropout_masks.py`, its minibatch order on its seed. Hence
training it alone, in any batch, or in any chunk gives the same numbers.

Weight decay is an L2 penalty coupled to Adam exactly as `torch.optim.Adam(weight_decay=wd)`:
wd * theta is added to every gradient (biases included), i.e. (wd / 2) * ||theta||^2 is
added to that replica's loss before Adam's normalisation.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from .device import resolve_device
from .kernels import dropout_masks as dm
from .kernels.rng import derive_key

KINDS = ("input", "activation", "both")
EARLY_STOPPING = (None, "train_loss_rise", "patience")
INIT_STREAM = 0x696E6974  # "init"
SHUFFLE_STREAM = 0x73687566  # "shuf"
SPLIT_STREAM = 0x73706C74  # "splt"


# ----------------------------------------------------------------------------- the grid


def _as_tuple(name: str, values: Any) -> tuple:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        values = [values]
    values = tuple(values)
    if not values:
        raise ValueError(f"{name}: expected at least one value, got an empty list")
    if len(set(values)) != len(values):
        raise ValueError(f"{name}: expected distinct values, got {list(values)!r}")
    return values


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


@dataclass(frozen=True)
class ReplicaGrid:
    """The cartesian product seeds x dropout_kinds x dropout_rates x widths x weight_decays."""

    seeds: Sequence[int] = (0,)
    dropout_rates: Sequence[float] = (0.0,)
    dropout_kinds: Sequence[str] = ("input",)
    widths: Sequence[int] = (32,)
    weight_decays: Sequence[float] = (0.0,)
    depth: int = 3

    def __post_init__(self) -> None:
        seeds = _as_tuple("seeds", self.seeds)
        for s in seeds:
            if not _is_int(s) or s < 0:
                raise ValueError(f"seeds: expected non-negative integers, got {s!r}")
        rates = _as_tuple("dropout_rates", self.dropout_rates)
        for p in rates:
            if not _is_real(p) or not (0.0 <= float(p) < 1.0):
                raise ValueError(f"dropout_rates: expected values in [0, 1), got {p!r}")
        kinds = _as_tuple("dropout_kinds", self.dropout_kinds)
        for k in kinds:
            if k not in KINDS:
                raise ValueError(f"dropout_kinds: expected one of {KINDS}, got {k!r}")
        widths = _as_tuple("widths", self.widths)
        for w in widths:
            if not _is_int(w) or w < 1:
                raise ValueError(f"widths: expected positive integers, got {w!r}")
        decays = _as_tuple("weight_decays", self.weight_decays)
        for wd in decays:
            if not _is_real(wd) or not (math.isfinite(float(wd)) and float(wd) >= 0.0):
                raise ValueError(f"weight_decays: expected finite values >= 0, got {wd!r}")
        if not _is_int(self.depth) or self.depth < 1:
            raise ValueError(f"depth: expected a positive integer, got {self.depth!r}")
        object.__setattr__(self, "seeds", tuple(int(s) for s in seeds))
        object.__setattr__(self, "dropout_rates", tuple(float(p) for p in rates))
        object.__setattr__(self, "dropout_kinds", tuple(str(k) for k in kinds))
        object.__setattr__(self, "widths", tuple(int(w) for w in widths))
        object.__setattr__(self, "weight_decays", tuple(float(wd) for wd in decays))
        object.__setattr__(self, "depth", int(self.depth))

    def __len__(self) -> int:
        return (len(self.seeds) * len(self.dropout_kinds) * len(self.dropout_rates)
                * len(self.widths) * len(self.weight_decays))

    @property
    def configs(self) -> pd.DataFrame:
        """One row per replica, in product order (seed outermost, weight decay innermost)."""
        rows = itertools.product(self.seeds, self.dropout_kinds, self.dropout_rates,
                                 self.widths, self.weight_decays)
        df = pd.DataFrame(rows, columns=["seed", "dropout_kind", "dropout_rate", "width",
                                         "weight_decay"])
        df["depth"] = self.depth
        df.index.name = "replica"
        return df

    def to_dict(self) -> dict[str, Any]:
        return {"seeds": list(self.seeds), "dropout_rates": list(self.dropout_rates),
                "dropout_kinds": list(self.dropout_kinds), "widths": list(self.widths),
                "weight_decays": list(self.weight_decays), "depth": self.depth}


# ----------------------------------------------------------------------------- the model


def layer_shapes(d: int, width: int, depth: int) -> list[tuple[int, int]]:
    """(fan_in, fan_out) of each linear layer: d -> width -> ... -> width -> 1."""
    return [(d if l == 0 else width, 1 if l == depth else width) for l in range(depth + 1)]


def n_params(d: int, width: int, depth: int) -> int:
    return sum(i * o + o for i, o in layer_shapes(d, width, depth))


def param_views(theta: torch.Tensor, d: int, width: int, depth: int) -> list:
    """Views (W [R, in, out], b [R, 1, out]) of each layer into a flat buffer theta [R, P]."""
    R = theta.shape[0]
    views, off = [], 0
    for i, o in layer_shapes(d, width, depth):
        W = theta[:, off:off + i * o].view(R, i, o)
        off += i * o
        b = theta[:, off:off + o].view(R, 1, o)
        off += o
        views.append((W, b))
    return views


def init_params(seed: int, d: int, width: int, depth: int) -> np.ndarray:
    """Glorot-uniform weights, zero biases: flat float32 [P], from (seed, d, width, depth)."""
    rng = np.random.default_rng(derive_key(INIT_STREAM, seed, width, depth, d))
    parts = []
    for i, o in layer_shapes(d, width, depth):
        a = math.sqrt(6.0 / (i + o))
        parts.append(rng.uniform(-a, a, size=(i, o)).astype(np.float32).ravel())
        parts.append(np.zeros(o, dtype=np.float32))
    return np.concatenate(parts)


def forward_eval(theta: torch.Tensor, X: torch.Tensor, d: int, width: int,
                 depth: int) -> torch.Tensor:
    """Predictions without dropout: theta [R, P], X [m, d] -> [R, m]."""
    R = theta.shape[0]
    h = X.expand(R, *X.shape)  # [R, m, d]
    views = param_views(theta, d, width, depth)
    for l, (W, b) in enumerate(views):
        h = torch.baddbmm(b, h, W)  # [R, m, out]
        if l < depth:
            h.clamp_(min=0)
    return h[..., 0]


# ----------------------------------------------------------------------------- masks


class _Masks:
    """Per-replica dropout rates of each mask position and their keys at a given step."""

    def __init__(self, configs: pd.DataFrame, device: torch.device):
        kinds = configs["dropout_kind"].to_numpy()
        rates = configs["dropout_rate"].to_numpy(dtype=np.float64)
        self.base = dm.base_keys(configs["seed"], kinds, rates)  # uint64 [R]
        use_in = np.isin(kinds, ("input", "both"))
        use_act = np.isin(kinds, ("activation", "both"))
        self.in_rates = np.where(use_in, rates, 0.0).astype(np.float32)  # [R]
        self.act_rates = np.where(use_act, rates, 0.0).astype(np.float32)  # [R]
        self.in_scale = dm.scales(self.in_rates)
        self.act_scale = dm.scales(self.act_rates)
        self.any_input = bool(np.any(self.in_rates > 0))
        self.device = device
        if device.type == "cuda":
            self._dev = {name: torch.from_numpy(getattr(self, name)).to(device)
                         for name in ("in_rates", "act_rates", "in_scale", "act_scale")}

    def keys(self, step: int, layer: int) -> np.ndarray:
        return dm.step_keys(self.base, step, layer)

    def input_mask(self, out: torch.Tensor, step: int) -> None:
        """Fill out [R, b, d] with the input-layer masks (layer 0)."""
        keys = self.keys(step, 0)
        if out.is_cuda:
            _fill_cuda(out, keys, self._dev["in_rates"], self._dev["in_scale"])
        else:
            dm.fill_masks(out.numpy(), keys, self.in_rates, self.in_scale)

    def relu_dropout_(self, z: torch.Tensor, D: torch.Tensor, step: int, layer: int) -> None:
        """z [R, b, w] <- relu(z) * mask, D <- mask * (z > 0); hidden layer `layer` (1-based)."""
        keys = self.keys(step, layer)
        if z.is_cuda:
            _fill_cuda(D, keys, self._dev["act_rates"], self._dev["act_scale"])
            D.mul_(z > 0)
            z.mul_(D)
        else:
            dm.relu_dropout_(z.numpy(), D.numpy(), keys, self.act_rates, self.act_scale)


def _fill_cuda(out: torch.Tensor, keys: np.ndarray, rates: torch.Tensor,
               scale: torch.Tensor) -> None:
    if _numba_cuda_ok():
        dm.fill_masks_cuda(out, keys, rates, scale)
    else:
        dm.fill_masks_torch(out, torch.from_numpy(keys.view(np.int64)).to(out.device), rates,
                            scale)


_NUMBA_CUDA: bool | None = None


def _numba_cuda_ok() -> bool:
    global _NUMBA_CUDA
    if _NUMBA_CUDA is None:
        from .device import numba_cuda_available

        _NUMBA_CUDA = numba_cuda_available()
    return _NUMBA_CUDA


# ----------------------------------------------------------------------------- training


@dataclass
class _Chunk:
    """The stacked state of one chunk of replicas of one width (flat parameters [R, P])."""

    theta: torch.Tensor  # [R, P]
    m: torch.Tensor  # [R, P] Adam first moment
    v: torch.Tensor  # [R, P] Adam second moment
    t: np.ndarray  # [R] Adam steps taken (= steps run)


def _adam_step(c: _Chunk, g: torch.Tensor, active: np.ndarray, wd: torch.Tensor | None,
               lr: float, betas: tuple[float, float], eps: float) -> None:
    """One Adam step on the stack; replicas with active == False are left exactly as they are.

    Mirrors torch.optim.Adam's single-tensor update, with per-replica bias corrections.
    """
    b1, b2 = betas
    frozen = np.flatnonzero(~active)
    if len(frozen) == len(active):
        return
    if len(frozen):
        idx = torch.from_numpy(frozen).to(c.theta.device)
        saved = [x.index_select(0, idx) for x in (c.theta, c.m, c.v)]
    if wd is not None:
        g = g.addcmul(c.theta, wd)  # grad + wd * theta  [R, P]
    t = c.t + active  # [R]
    c.m.lerp_(g, 1 - b1)
    c.v.mul_(b2).addcmul_(g, g, value=1 - b2)
    if np.all(t == t[0]):
        step = float(t[0])
        bc1 = 1 - b1**step
        bc2_sqrt = (1 - b2**step) ** 0.5
        denom = (c.v.sqrt() / bc2_sqrt).add_(eps)
        c.theta.addcdiv_(c.m, denom, value=-lr / bc1)
    else:
        tt = np.maximum(t, 1).astype(np.float64)
        step_size = torch.tensor(lr / (1 - b1**tt), dtype=c.theta.dtype,
                                 device=c.theta.device)[:, None]
        bc2_sqrt = torch.tensor((1 - b2**tt) ** 0.5, dtype=c.theta.dtype,
                                device=c.theta.device)[:, None]
        denom = (c.v.sqrt() / bc2_sqrt).add_(eps)
        c.theta.sub_(c.m / denom * step_size)
    if len(frozen):
        for x, s in zip((c.theta, c.m, c.v), saved, strict=True):
            x.index_copy_(0, idx, s)
    c.t = t


class _Trainer:
    """Forward, hand-written backward and buffers for one chunk of same-width replicas."""

    def __init__(self, R: int, b: int, d: int, width: int, depth: int, masks: _Masks,
                 device: torch.device):
        self.R, self.b, self.d, self.width, self.depth = R, b, d, width, depth
        self.masks = masks
        f32 = dict(dtype=torch.float32, device=device)
        self.Z = [torch.empty(R, b, width, **f32) for _ in range(depth)]  # [R, b, w] a_l
        self.D = [torch.empty(R, b, width, **f32) for _ in range(depth)]  # [R, b, w] da/dz
        self.A0 = torch.empty(R, b, d, **f32) if masks.any_input else None  # [R, b, d]
        self.G = torch.empty(R, n_params(d, width, depth), **f32)  # [R, P] gradient

    def step(self, theta: torch.Tensor, Xb: torch.Tensor, yb: torch.Tensor,
             step: int) -> torch.Tensor:
        """Loss [R] (MSE per replica) at theta, and the gradient in self.G.

        Xb: [b, d] shared rows or [R, b, d] per-replica rows; yb: [b] or [R, b].
        """
        R, b, depth = self.R, Xb.shape[-2], self.depth
        views = param_views(theta, self.d, self.width, depth)
        gviews = param_views(self.G, self.d, self.width, depth)
        if self.A0 is not None:
            A0 = self.A0[:, :b] if b != self.A0.shape[1] else self.A0
            self.masks.input_mask(A0, step)
            A0.mul_(Xb)  # [R, b, d]
        else:
            A0 = Xb.expand(R, b, self.d) if Xb.dim() == 2 else Xb
        acts = [A0]
        for l in range(depth):
            W, bias = views[l]
            z = self.Z[l][:, :b] if b != self.b else self.Z[l]
            torch.baddbmm(bias, acts[-1], W, out=z)  # [R, b, w]
            D = self.D[l][:, :b] if b != self.b else self.D[l]
            self.masks.relu_dropout_(z, D, step, l + 1)
            acts.append(z)
        W, bias = views[depth]
        out = torch.baddbmm(bias, acts[-1], W)[..., 0]  # [R, b]
        res = out - yb  # [R, b]
        loss = (res * res).mean(1)  # [R]
        g = (res * (2.0 / b)).unsqueeze(2)  # [R, b, 1]  dLoss/dout
        for l in range(depth, -1, -1):
            gW, gb = gviews[l]
            gW.copy_(torch.bmm(acts[l].transpose(1, 2), g))  # [R, in, out]
            gb.copy_(g.sum(1, keepdim=True))  # [R, 1, out]
            if l > 0:
                ga = torch.bmm(g, views[l][0].transpose(1, 2))  # [R, b, in]
                g = ga.mul_(self.D[l - 1][:, :b] if b != self.b else self.D[l - 1])
        return loss


@dataclass
class ReplicaRun:
    """The result of `train_replicas`: configs, trained parameters, histories, predictions."""

    configs: pd.DataFrame
    d: int
    depth: int
    params: dict[int, np.ndarray]  # width -> float32 [R_w, P]: rows of configs with that width
    history: dict[str, np.ndarray]  # name -> float32 [R, steps] (NaN after a replica stopped)
    recorded: np.ndarray | None = None  # float32 [len(record_at), R, m] predictions on Xq
    record_at: tuple[int, ...] = ()
    device: str = "cpu"
    timings: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def steps_run(self) -> np.ndarray:
        return self.configs["steps_run"].to_numpy()

    def predict(self, Xq: np.ndarray, device: str | torch.device | None = None,
                batch_rows: int = 65536) -> np.ndarray:
        """Predictions of every replica without dropout: Xq [m, d] -> float32 [R, m]."""
        Xq = _check_X("Xq", Xq, self.d)
        dev = resolve_device(device or self.device)
        out = np.empty((len(self.configs), len(Xq)), dtype=np.float32)
        widths = self.configs["width"].to_numpy()
        with torch.no_grad():
            for w, theta in self.params.items():
                rows = np.flatnonzero(widths == w)
                th = torch.from_numpy(theta).to(dev)
                for s in range(0, len(Xq), batch_rows):
                    xq = torch.from_numpy(Xq[s:s + batch_rows]).to(dev)
                    out[rows, s:s + batch_rows] = forward_eval(
                        th, xq, self.d, w, self.depth).cpu().numpy()
        return out

    def state_dict(self) -> dict[str, Any]:
        """Plain containers (numpy arrays, lists, dicts): torch.save / pickle friendly."""
        return {"configs": self.configs.reset_index().to_dict(orient="list"), "d": self.d,
                "depth": self.depth, "params": {int(w): p for w, p in self.params.items()},
                "history": self.history, "recorded": self.recorded,
                "record_at": list(self.record_at), "device": self.device,
                "timings": self.timings, "settings": self.settings}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> ReplicaRun:
        configs = pd.DataFrame(state["configs"]).set_index("replica")
        return cls(configs=configs, d=int(state["d"]), depth=int(state["depth"]),
                   params={int(w): np.asarray(p, dtype=np.float32)
                           for w, p in state["params"].items()},
                   history={k: np.asarray(v) for k, v in state["history"].items()},
                   recorded=state.get("recorded"), record_at=tuple(state.get("record_at", ())),
                   device=state.get("device", "cpu"), timings=dict(state.get("timings", {})),
                   settings=dict(state.get("settings", {})))

    def save(self, path: str) -> None:
        torch.save(self.state_dict(), path)

    @classmethod
    def load(cls, path: str) -> ReplicaRun:
        return cls.from_state_dict(torch.load(path, weights_only=False))


def _check_X(name: str, X: Any, d: int | None = None) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[0] < 1 or X.shape[1] < 1:
        raise ValueError(f"{name}: expected a non-empty 2-D array [n, d], got shape {X.shape}")
    if d is not None and X.shape[1] != d:
        raise ValueError(f"{name}: expected {d} columns (the training inputs'), got {X.shape[1]}")
    if not np.issubdtype(X.dtype, np.number) or not np.all(np.isfinite(X)):
        raise ValueError(f"{name}: expected finite numbers")
    return np.ascontiguousarray(X, dtype=np.float32)


def _bytes_per_replica(n: int, d: int, width: int, depth: int, any_input: bool,
                       minibatch: bool) -> int:
    """Rough working memory of one replica during a training step (float32 bytes, x1.5)."""
    P = n_params(d, width, depth)
    floats = n * (2 * depth + 3) * width + 4 * n + 5 * P
    if any_input or minibatch:
        floats += 2 * n * d
    return int(1.5 * 4 * floats)


def default_max_memory(device: torch.device) -> int:
    """A safe share of free memory: half of free GPU memory, a quarter of available RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(0.5 * free)
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        return int(0.25 * info["MemAvailable"])
    except (OSError, KeyError, ValueError):
        return 2 << 30


def _check_options(steps, lr, batch_size, betas, eps, early_stopping, patience, val_fraction,
                   record_at, max_memory, chunk_size, n) -> None:
    if not _is_int(steps) or steps < 0:
        raise ValueError(f"steps: expected a non-negative integer, got {steps!r}")
    if not _is_real(lr) or not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr: expected a finite positive number, got {lr!r}")
    if batch_size is not None and (not _is_int(batch_size) or batch_size < 1):
        raise ValueError(f"batch_size: expected None (full batch) or a positive integer, "
                         f"got {batch_size!r}")
    if (not isinstance(betas, (tuple, list)) or len(betas) != 2
            or not all(_is_real(b) and 0.0 <= b < 1.0 for b in betas)):
        raise ValueError(f"betas: expected two numbers in [0, 1), got {betas!r}")
    if not _is_real(eps) or not eps > 0:
        raise ValueError(f"eps: expected a positive number, got {eps!r}")
    if early_stopping not in EARLY_STOPPING:
        raise ValueError(f"early_stopping: expected one of {EARLY_STOPPING}, got "
                         f"{early_stopping!r}")
    if patience is not None and (not _is_int(patience) or patience < 1):
        raise ValueError(f"patience: expected a positive integer, got {patience!r}")
    if not _is_real(val_fraction) or not (0.0 < val_fraction < 1.0):
        raise ValueError(f"val_fraction: expected a number in (0, 1), got {val_fraction!r}")
    if early_stopping == "patience" and not (1 <= round(val_fraction * n) < n):
        raise ValueError(f"val_fraction: {val_fraction} of {n} rows leaves an empty split")
    if record_at is not None:
        for t in record_at:
            if not _is_int(t) or not (0 <= t <= steps):
                raise ValueError(f"record_at: expected steps in [0, {steps}], got {t!r}")
    if max_memory is not None and (not _is_real(max_memory) or max_memory <= 0):
        raise ValueError(f"max_memory: expected a positive number of bytes, got {max_memory!r}")
    if chunk_size is not None and (not _is_int(chunk_size) or chunk_size < 1):
        raise ValueError(f"chunk_size: expected a positive integer, got {chunk_size!r}")


def _shuffle_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The row order of one replica's epoch: a function of (seed, epoch) only."""
    return np.random.default_rng(derive_key(SHUFFLE_STREAM, seed, epoch)).permutation(n)


def train_replicas(
    X: np.ndarray,
    y: np.ndarray,
    grid: ReplicaGrid,
    steps: int = 1000,
    lr: float = 1e-3,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    early_stopping: str | None = None,
    patience: int | None = None,
    val_fraction: float = 0.2,
    split_seed: int = 0,
    record_at: Sequence[int] | None = None,
    Xq: np.ndarray | None = None,
    max_memory: float | None = None,
    chunk_size: int | None = None,
    progress: bool = False,
    on_chunk: Any = None,
) -> ReplicaRun:
    """Train every replica of `grid` on (X [n, d], y [n]) and return a ReplicaRun.

    steps: optimizer steps (full batch when batch_size is None, else minibatches drawn from
    each replica's own shuffle of the rows, epoch after epoch). early_stopping:
    "train_loss_rise" stops a replica once its training loss has not improved on its best for
    `patience` steps (default 1: the first rise, the paper's rule); "patience" does the same
    on the loss of a validation split (`val_fraction` of the rows, chosen by `split_seed`,
    default patience 20). A stopped replica is frozen: parameters and Adam state stay exactly
    as they were. record_at: steps t at which predictions on Xq (after t updates) are kept.
    Replicas are trained in chunks that fit `max_memory` bytes (default: a safe share of free
    memory) or of `chunk_size` replicas; chunking never changes results. on_chunk(run_part)
    is called after each finished chunk (for writing results as they come).
    """
    if not isinstance(grid, ReplicaGrid):
        raise ValueError(f"grid: expected a ReplicaGrid, got {type(grid).__name__}")
    X = _check_X("X", X)
    n, d = X.shape
    y = np.asarray(y)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.number) or not np.all(np.isfinite(y)):
        raise ValueError(f"y: expected {n} finite numbers (one per row of X), got shape {y.shape}")
    y = y.astype(np.float32)
    _check_options(steps, lr, batch_size, betas, eps, early_stopping, patience, val_fraction,
                   record_at, max_memory, chunk_size, n)
    record_at = tuple(sorted(set(record_at or ())))
    if record_at and Xq is None:
        raise ValueError("Xq: record_at needs query rows Xq [m, d]")
    Xq = _check_X("Xq", Xq, d) if Xq is not None else None
    dev = resolve_device(device)
    if patience is None:
        patience = 1 if early_stopping == "train_loss_rise" else 20

    # data split for the patience rule: one split shared by all replicas (part of the data)
    if early_stopping == "patience":
        perm = np.random.default_rng(derive_key(SPLIT_STREAM, split_seed)).permutation(n)
        n_val = int(round(val_fraction * n))
        val_rows, train_rows = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    else:
        val_rows, train_rows = None, np.arange(n)
    n_train = len(train_rows)
    b = n_train if batch_size is None else min(int(batch_size), n_train)
    batches_per_epoch = math.ceil(n_train / b)

    Xt = torch.from_numpy(X[train_rows]).to(dev)  # [n_train, d]
    yt = torch.from_numpy(y[train_rows]).to(dev)  # [n_train]
    Xv = torch.from_numpy(X[val_rows]).to(dev) if val_rows is not None else None
    yv = torch.from_numpy(y[val_rows]).to(dev) if val_rows is not None else None
    Xq_t = torch.from_numpy(Xq).to(dev) if Xq is not None else None

    configs = grid.configs
    R_all = len(configs)
    history = {"train_loss": np.full((R_all, steps), np.nan, dtype=np.float32)}
    if early_stopping == "patience":
        history["val_loss"] = np.full((R_all, steps), np.nan, dtype=np.float32)
    recorded = (np.full((len(record_at), R_all, len(Xq)), np.nan, dtype=np.float32)
                if record_at else None)
    steps_run = np.zeros(R_all, dtype=np.int64)
    params: dict[int, np.ndarray] = {}
    budget = float(max_memory) if max_memory is not None else default_max_memory(dev)
    t_start = time.perf_counter()
    n_chunks = 0

    for width in grid.widths:
        rows = np.flatnonzero(configs["width"].to_numpy() == width)
        any_input = bool(np.any(configs.loc[rows, "dropout_kind"].isin(("input", "both"))))
        per = _bytes_per_replica(n_train, d, width, grid.depth, any_input,
                                 batch_size is not None)
        size = chunk_size or max(1, int(budget // per))
        theta_w = np.empty((len(rows), n_params(d, width, grid.depth)), dtype=np.float32)
        for s in range(0, len(rows), size):
            chunk_rows = rows[s:s + size]
            cfg = configs.iloc[chunk_rows]
            out = _train_chunk(cfg, Xt, yt, Xv, yv, Xq_t, d, width, grid.depth, steps, lr,
                               b, batches_per_epoch, betas, eps, early_stopping, patience,
                               record_at, dev, progress)
            theta_w[s:s + len(chunk_rows)] = out["theta"]
            history["train_loss"][chunk_rows] = out["train_loss"]
            if "val_loss" in out:
                history["val_loss"][chunk_rows] = out["val_loss"]
            if recorded is not None:
                recorded[:, chunk_rows] = out["recorded"]
            steps_run[chunk_rows] = out["steps_run"]
            n_chunks += 1
            if on_chunk is not None:
                on_chunk(chunk_rows, out)
        params[width] = theta_w

    configs = configs.copy()
    configs["steps_run"] = steps_run
    settings = dict(steps=steps, lr=lr, batch_size=batch_size, betas=list(betas), eps=eps,
                    early_stopping=early_stopping, patience=patience,
                    val_fraction=val_fraction, split_seed=split_seed, n=n, d=d)
    return ReplicaRun(configs=configs, d=d, depth=grid.depth, params=params, history=history,
                      recorded=recorded, record_at=record_at, device=str(dev),
                      timings={"train_s": time.perf_counter() - t_start,
                               "chunks": float(n_chunks)},
                      settings=settings)


def _train_chunk(cfg: pd.DataFrame, Xt, yt, Xv, yv, Xq, d, width, depth, steps, lr, b,
                 batches_per_epoch, betas, eps, early_stopping, patience, record_at, dev,
                 progress) -> dict[str, Any]:
    """Train one chunk of same-width replicas for `steps` steps; returns numpy results."""
    R = len(cfg)
    n_train = Xt.shape[0]
    seeds = cfg["seed"].to_numpy()
    theta0 = np.stack([init_params(int(s), d, width, depth) for s in seeds])  # [R, P]
    theta = torch.from_numpy(theta0).to(dev)
    chunk = _Chunk(theta=theta, m=torch.zeros_like(theta), v=torch.zeros_like(theta),
                   t=np.zeros(R, dtype=np.int64))
    wd_np = cfg["weight_decay"].to_numpy(dtype=np.float32)
    wd = torch.from_numpy(wd_np[:, None]).to(dev) if np.any(wd_np > 0) else None  # [R, 1]
    masks = _Masks(cfg, dev)
    trainer = _Trainer(R, b, d, width, depth, masks, dev)
    active = np.ones(R, dtype=bool)
    best = np.full(R, np.inf)
    bad = np.zeros(R, dtype=np.int64)
    train_loss = np.full((R, steps), np.nan, dtype=np.float32)
    val_loss = np.full((R, steps), np.nan, dtype=np.float32) if Xv is not None else None
    recorded = (np.full((len(record_at), R, Xq.shape[0]), np.nan, dtype=np.float32)
                if record_at else None)
    rec_index = {t: i for i, t in enumerate(record_at)}
    order = None

    def record(t: int) -> None:
        if recorded is not None and t in rec_index:
            with torch.no_grad():
                recorded[rec_index[t]] = forward_eval(chunk.theta, Xq, d, width,
                                                      depth).cpu().numpy()

    it = range(steps)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=f"width {width}, {R} replicas", leave=False)
    with torch.no_grad():
        for t in it:
            record(t)
            if b == n_train:
                Xb, yb = Xt, yt
            else:
                epoch, k = divmod(t, batches_per_epoch)
                if k == 0:
                    order = torch.from_numpy(np.stack(
                        [_shuffle_order(int(s), epoch, n_train) for s in seeds])).to(dev)
                idx = order[:, k * b:(k + 1) * b]  # [R, b]
                Xb, yb = Xt[idx], yt[idx]  # [R, b, d], [R, b]
            loss = trainer.step(chunk.theta, Xb, yb, t).cpu().numpy()  # [R]
            train_loss[active, t] = loss[active]
            if early_stopping is not None:
                if early_stopping == "patience":
                    vl = ((forward_eval(chunk.theta, Xv, d, width, depth) - yv) ** 2).mean(1)
                    monitored = vl.cpu().numpy().astype(np.float64)
                    val_loss[active, t] = monitored[active]
                else:
                    monitored = loss.astype(np.float64)
                improved = monitored < best
                best = np.where(active & improved, monitored, best)
                bad = np.where(active & ~improved, bad + 1, np.where(active, 0, bad))
                active = active & (bad < patience)
                if not active.any():
                    break
            _adam_step(chunk, trainer.G, active, wd, lr, betas, eps)
        else:
            record(steps)
        if recorded is not None and not active.any():  # stopped early: records are frozen
            for t in record_at:
                if np.isnan(recorded[rec_index[t]]).any():
                    record(t)
    out = {"theta": chunk.theta.cpu().numpy(), "train_loss": train_loss,
           "steps_run": chunk.t.copy()}
    if val_loss is not None:
        out["val_loss"] = val_loss
    if recorded is not None:
        out["recorded"] = recorded
    return out

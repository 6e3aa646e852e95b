"""Batched training of many small MLP replicas as one set of stacked tensors.

A replica is an MLP with `depth` hidden ReLU layers of `width` units and a linear output,
trained with MSE + Adam. All replicas of one width form a stack: weights [R, fan_in, fan_out],
GEMMs with `bmm`, a hand-written backward pass, and one Adam step for the whole stack. The
loss is the *sum* of replica losses, so gradients never mix, and Adam is elementwise, so Adam
on the stack is exactly per-replica Adam. On the CPU the element-wise work (bias, ReLU,
dropout masks, output layer, loss, bias gradients, Adam) runs in fused Numba kernels
(kernels/dropout_masks.py, mlp_head.py, adam_stack.py); on CUDA in plain torch ops.

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
from .kernels import adam_stack as adam
from .kernels import dropout_masks as dm
from .kernels import mlp_head as mh
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
        def checked(name: str, ok, expected: str, cast) -> tuple:
            values = _as_tuple(name, getattr(self, name))
            for v in values:
                if not ok(v):
                    raise ValueError(f"{name}: expected {expected}, got {v!r}")
            return tuple(cast(v) for v in values)

        fields = {
            "seeds": checked("seeds", lambda s: _is_int(s) and s >= 0,
                             "non-negative integers", int),
            "dropout_rates": checked("dropout_rates",
                                     lambda p: _is_real(p) and 0.0 <= float(p) < 1.0,
                                     "values in [0, 1)", float),
            "dropout_kinds": checked("dropout_kinds", lambda k: k in KINDS,
                                     f"one of {KINDS}", str),
            "widths": checked("widths", lambda w: _is_int(w) and w >= 1,
                              "positive integers", int),
            "weight_decays": checked("weight_decays",
                                     lambda wd: _is_real(wd) and math.isfinite(float(wd))
                                     and float(wd) >= 0.0,
                                     "finite values >= 0", float),
        }
        if not _is_int(self.depth) or self.depth < 1:
            raise ValueError(f"depth: expected a positive integer, got {self.depth!r}")
        for name, values in fields.items():
            object.__setattr__(self, name, values)
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


def split_params(theta: torch.Tensor, d: int, width: int, depth: int) -> list[torch.Tensor]:
    """Contiguous per-layer tensors [W_0, b_0, W_1, b_1, ...] from a flat theta [R, P].

    Batched GEMMs need each W_l contiguous over replicas; views into theta are not.
    """
    return [t.contiguous() for pair in param_views(theta, d, width, depth) for t in pair]


def flat_params(params: list[torch.Tensor]) -> torch.Tensor:
    """Inverse of `split_params`: [R, P] in the layout W_0, b_0, W_1, b_1, ..."""
    R = params[0].shape[0]
    return torch.cat([t.reshape(R, -1) for t in params], dim=1)


def forward_eval(params: list[torch.Tensor], X: torch.Tensor, depth: int) -> torch.Tensor:
    """Predictions without dropout: params from `split_params`, X [m, d] -> [R, m]."""
    R = params[0].shape[0]
    h = X.expand(R, *X.shape)  # [R, m, d]
    for l, (W, b) in enumerate(zip(params[::2], params[1::2], strict=True)):
        h = torch.baddbmm(b, h, W)  # [R, m, out]
        if l < depth:
            h.clamp_(min=0)
    return h[..., 0]


# ----------------------------------------------------------------------------- step kernels


class _Ops:
    """The non-GEMM parts of a training step for one chunk, on one backend.

    "numba": fused CPU kernels (masks drawn inside the bias + ReLU / input-scaling loops).
    "torch": plain torch ops with masks from `fill_masks_cuda` or `fill_masks_torch`; used on
    CUDA, and selectable on the CPU so that the tests check this path too.
    Both draw the same masks, so both give the same replica.
    """

    def __init__(self, configs: pd.DataFrame, device: torch.device, backend: str):
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
        self.backend = backend
        if backend == "torch":
            self.t = {name: torch.from_numpy(getattr(self, name)).to(device)
                      for name in ("in_rates", "act_rates", "in_scale", "act_scale")}

    def keys(self, step: int, layer: int) -> np.ndarray:
        return dm.step_keys(self.base, step, layer)

    def _mask(self, out: torch.Tensor, keys: np.ndarray, kind: str) -> None:
        global _NUMBA_CUDA
        rates, scale = self.t[kind + "_rates"], self.t[kind + "_scale"]
        if out.is_cuda and _numba_cuda_ok():
            try:
                dm.fill_masks_cuda(out, keys, rates, scale)
                return
            except Exception:  # e.g. no NVVM for Numba: the torch stream gives the same masks
                _NUMBA_CUDA = False
        keys_t = torch.from_numpy(keys.view(np.int64)).to(out.device)
        dm.fill_masks_torch(out, keys_t, rates, scale)

    def input(self, out: torch.Tensor, x: torch.Tensor, step: int) -> None:
        """out [R, b, d] <- x [1 or R, b, d] * input mask (layer 0)."""
        keys = self.keys(step, 0)
        if self.backend == "numba":
            dm.mask_mul(out.numpy(), x.numpy(), keys, self.in_rates, self.in_scale)
        else:
            self._mask(out, keys, "in")
            out.mul_(x)

    def hidden(self, z: torch.Tensor, bias: torch.Tensor, step: int, layer: int) -> None:
        """z <- relu(z + bias) * mask for hidden layer `layer` >= 1 (in place)."""
        keys = self.keys(step, layer)
        if self.backend == "numba":
            dm.relu_dropout(z.numpy(), bias.numpy(), keys, self.act_rates, self.act_scale)
        else:
            if getattr(self, "_M", None) is None or self._M.shape != z.shape:
                self._M = torch.empty_like(z)  # mask scratch [R, b, w]
            self._mask(self._M, keys, "act")
            z.add_(bias.unsqueeze(1)).clamp_(min=0).mul_(self._M)

    def head_forward(self, a: torch.Tensor, w: torch.Tensor, b: torch.Tensor, y: torch.Tensor,
                     g: torch.Tensor) -> np.ndarray:
        """Linear output + MSE: loss [R] (float64 numpy); g [R, n] <- d loss / d out."""
        if self.backend == "numba":
            loss = np.empty(a.shape[0], dtype=np.float64)
            mh.head_forward(a.numpy(), w.numpy(), b.numpy(), y.numpy(), g.numpy(), loss)
            return loss
        res = torch.bmm(a, w.unsqueeze(2))[..., 0] + b.unsqueeze(1) - y  # [R, n]
        torch.mul(res, 2.0 / a.shape[1], out=g)
        return (res.double() ** 2).mean(1).cpu().numpy()

    def head_backward(self, a, g, w, gw, gb, gz, gzb) -> None:
        """Output-layer grads gw [R, k], gb [R]; gz = g w^T * da/dz [R, n, k], gzb = sum_i gz.

        da/dz of the last hidden layer is scale * (a > 0), see `dropout_masks.relu_dropout`.
        """
        if self.backend == "numba":
            mh.head_backward(a.numpy(), g.numpy(), w.numpy(), self.act_scale, gw.numpy(),
                             gb.numpy(), gz.numpy(), gzb.numpy())
        else:
            gw.copy_(torch.bmm(g.unsqueeze(1), a)[:, 0])
            gb.copy_(g.sum(1))
            s = self.t["act_scale"].view(-1, 1, 1)
            torch.mul(g.unsqueeze(2) * w.unsqueeze(1), s, out=gz)
            gz.mul_(a > 0)
            gzb.copy_(gz.sum(1))

    def relu_backward(self, ga: torch.Tensor, a: torch.Tensor, gb: torch.Tensor) -> None:
        """ga <- ga * scale * (a > 0) (grad at the pre-activation of the layer whose output is
        a); gb [R, k] <- its sum over rows."""
        if self.backend == "numba":
            mh.relu_backward(ga.numpy(), a.numpy(), self.act_scale, gb.numpy())
        else:
            ga.mul_(self.t["act_scale"].view(-1, 1, 1)).mul_(a > 0)
            gb.copy_(ga.sum(1))


_NUMBA_CUDA: bool | None = None


def _numba_cuda_ok() -> bool:
    global _NUMBA_CUDA
    if _NUMBA_CUDA is None:
        from .device import numba_cuda_available

        _NUMBA_CUDA = numba_cuda_available()
    return _NUMBA_CUDA


# ----------------------------------------------------------------------------- training


class _Stack:
    """Flat buffers of one chunk's stacked tensors: block k is tensor k for all R replicas.

    Tensors are W_0 [R, in, out], b_0 [R, 1, out], W_1, b_1, ...; each is a contiguous view
    into the buffer (batched GEMMs need that), and the whole buffer is one array for the
    fused Adam kernel.
    """

    def __init__(self, R: int, d: int, width: int, depth: int, device: torch.device):
        self.shapes = [s for i, o in layer_shapes(d, width, depth) for s in ((i, o), (1, o))]
        self.sizes = np.array([a * b for a, b in self.shapes], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(R * self.sizes)[:-1]]).astype(np.int64)
        self.R, self.total, self.device = R, int(R * self.sizes.sum()), device

    def buffer(self) -> torch.Tensor:
        return torch.zeros(self.total, dtype=torch.float32, device=self.device)

    def views(self, buf: torch.Tensor) -> list[torch.Tensor]:
        return [buf[o:o + self.R * sz].view(self.R, *sh)
                for o, sz, sh in zip(self.offsets, self.sizes, self.shapes, strict=True)]


@dataclass
class _Chunk:
    """Parameters and Adam state of one chunk of same-width replicas."""

    stack: _Stack
    theta_buf: torch.Tensor  # flat, see _Stack
    m_buf: torch.Tensor  # Adam first moments
    v_buf: torch.Tensor  # Adam second moments
    t: np.ndarray  # [R] Adam steps taken (= steps run)

    @property
    def theta(self) -> list[torch.Tensor]:
        return self.stack.views(self.theta_buf)


def _adam_step_fused(c: _Chunk, grad_buf: torch.Tensor, active: np.ndarray, wd: np.ndarray,
                     lr: float, betas: tuple[float, float], eps: float) -> None:
    """Adam on the CPU: one Numba kernel over the flat buffers (frozen replicas untouched)."""
    b1, b2 = betas
    t = c.t + active  # [R]
    tt = np.maximum(t, 1).astype(np.float64)
    step_size = (lr / (1 - b1**tt)).astype(np.float32)
    bc2_sqrt = np.sqrt(1 - b2**tt).astype(np.float32)
    adam.adam_step(c.theta_buf.numpy(), grad_buf.numpy(), c.m_buf.numpy(), c.v_buf.numpy(),
                   c.stack.offsets, c.stack.sizes, active, wd, step_size, bc2_sqrt, b1, b2,
                   eps)
    c.t = t


def _adam_step(c: _Chunk, grads: list[torch.Tensor], active: np.ndarray,
               wd: torch.Tensor | None, lr: float, betas: tuple[float, float],
               eps: float) -> None:
    """One Adam step on the stack; replicas with active == False are left exactly as they are.

    Mirrors torch.optim.Adam's single-tensor update, with per-replica bias corrections.
    """
    b1, b2 = betas
    frozen = np.flatnonzero(~active)
    if len(frozen) == len(active):
        return
    dev = c.theta_buf.device
    theta, ms, vs = (c.stack.views(buf) for buf in (c.theta_buf, c.m_buf, c.v_buf))
    if len(frozen):
        idx = torch.from_numpy(frozen).to(dev)
        saved = [x.index_select(0, idx) for x in (*theta, *ms, *vs)]
    t = c.t + active  # [R]
    uniform_t = bool(np.all(t == t[0]))
    if not uniform_t:
        tt = np.maximum(t, 1).astype(np.float64)
        step_size = torch.tensor(lr / (1 - b1**tt), dtype=torch.float32, device=dev)
        bc2_sqrt = torch.tensor((1 - b2**tt) ** 0.5, dtype=torch.float32, device=dev)
    for p, g, m, v in zip(theta, grads, ms, vs, strict=True):
        if wd is not None:
            g = g.addcmul(p, wd)  # grad + wd * theta
        m.lerp_(g, 1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        if uniform_t:
            step = float(t[0])
            denom = (v.sqrt() / (1 - b2**step) ** 0.5).add_(eps)
            p.addcdiv_(m, denom, value=-lr / (1 - b1**step))
        else:
            shape = (-1,) + (1,) * (p.dim() - 1)
            denom = (v.sqrt() / bc2_sqrt.view(shape)).add_(eps)
            p.sub_(m / denom * step_size.view(shape))
    if len(frozen):
        for x, sv in zip((*theta, *ms, *vs), saved, strict=True):
            x.index_copy_(0, idx, sv)
    c.t = t


class _Trainer:
    """Forward and hand-written backward for one chunk of same-width replicas.

    Buffers are allocated once and reused: A[l] [R, b, in_l] holds layer l's input (A[0] the
    masked inputs, A[l >= 1] the hidden activations after ReLU and dropout; their derivative
    is scale * (A[l] > 0), so no mask is kept). GEMMs run in torch (bmm); bias, ReLU, dropout,
    the output layer and the bias gradients run in fused kernels (`_Ops`).
    """

    def __init__(self, R: int, b: int, d: int, width: int, depth: int, ops: _Ops,
                 stack: _Stack, device: torch.device):
        self.R, self.b, self.d, self.width, self.depth = R, b, d, width, depth
        self.ops = ops
        f32 = dict(dtype=torch.float32, device=device)
        self.A = [torch.empty(R, b, d if l == 0 else width, **f32) for l in range(depth + 1)]
        self.GZ = [torch.empty(R, b, width, **f32) for _ in range(2)]  # grads at z [R, b, w]
        self.g = torch.empty(R, b, **f32)  # d loss / d out [R, b]
        self.G_buf = stack.buffer()  # gradients, flat (see _Stack)
        self.G = stack.views(self.G_buf)
        self.x_fixed = False  # A[0] already holds the (shared, full-batch, unmasked) inputs

    def step(self, params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor, step: int,
             fixed: bool) -> np.ndarray:
        """Loss [R] (MSE per replica, float64) at theta, and the gradient in self.G.

        x: [1 or R, b, d] rows; y: [1 or R, b]; fixed: x is the same every step.
        """
        b, depth, d = x.shape[1], self.depth, self.d
        full = b == self.b
        P = list(zip(params[::2], params[1::2], strict=True))  # (W [R, in, out], b [R, 1, out])
        GP = list(zip(self.G[::2], self.G[1::2], strict=True))
        A = self.A if full else [t[:, :b] for t in self.A]
        GZ = self.GZ if full else [t[:, :b] for t in self.GZ]
        g = self.g if full else self.g[:, :b]
        if not full:  # a short last minibatch: the numba kernels need contiguous arrays
            A, GZ, g = [t.contiguous() for t in A], [t.contiguous() for t in GZ], g.contiguous()
        if self.ops.any_input:
            self.ops.input(A[0], x, step)
        elif not (fixed and self.x_fixed):
            A[0].copy_(x.expand(self.R, b, d))
            self.x_fixed = fixed and full
        for l in range(1, depth + 1):
            W, bias = P[l - 1]
            torch.bmm(A[l - 1], W, out=A[l])  # [R, b, w]
            self.ops.hidden(A[l], bias[:, 0], step, l)
        w_out, b_out = P[depth][0][..., 0], P[depth][1][:, 0, 0]  # [R, w], [R]
        loss = self.ops.head_forward(A[depth], w_out, b_out, y, g)
        gW, gb = GP[depth]
        gb_prev = GP[depth - 1][1][:, 0]  # [R, w]
        self.ops.head_backward(A[depth], g, w_out, gW[..., 0], gb[:, 0, 0], GZ[0], gb_prev)
        for l in range(depth, 0, -1):
            gz = GZ[(depth - l) % 2]  # d loss / d z_l  [R, b, w]
            torch.bmm(A[l - 1].transpose(1, 2), gz, out=GP[l - 1][0])  # [R, in, w]
            if l > 1:
                nxt = GZ[(depth - l + 1) % 2]
                torch.bmm(gz, P[l - 1][0].transpose(1, 2), out=nxt)  # [R, b, w]
                self.ops.relu_backward(nxt, A[l - 1], GP[l - 2][1][:, 0])
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
                th = split_params(torch.from_numpy(theta).to(dev), self.d, w, self.depth)
                for s in range(0, len(Xq), batch_rows):
                    xq = torch.from_numpy(Xq[s:s + batch_rows]).to(dev)
                    out[rows, s:s + batch_rows] = forward_eval(th, xq, self.depth).cpu().numpy()
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
    floats = n * (depth + 2) * width + 4 * n + 5 * P  # activations, 2 grad buffers, state
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
    kernels: str = "auto",
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
    memory) or of `chunk_size` replicas; chunking never changes results. on_chunk(rows, out)
    is called after each finished chunk (for writing results as they come). kernels: "numba"
    (fused CPU kernels), "torch" (plain torch ops, the CUDA path) or "auto".
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
    if kernels not in ("auto", "numba", "torch"):
        raise ValueError(f"kernels: expected 'auto', 'numba' or 'torch', got {kernels!r}")
    if kernels == "numba" and dev.type != "cpu":
        raise ValueError(f"kernels: 'numba' runs on the CPU only, but device is {dev}")
    backend = ("numba" if dev.type == "cpu" else "torch") if kernels == "auto" else kernels
    if not _is_int(split_seed) or split_seed < 0:
        raise ValueError(f"split_seed: expected a non-negative integer, got {split_seed!r}")
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
                               record_at, dev, progress, backend)
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
                 progress, backend) -> dict[str, Any]:
    """Train one chunk of same-width replicas for `steps` steps; returns numpy results."""
    R = len(cfg)
    n_train = Xt.shape[0]
    seeds = cfg["seed"].to_numpy()
    theta0 = np.stack([init_params(int(s), d, width, depth) for s in seeds])  # [R, P]
    stack = _Stack(R, d, width, depth, dev)
    chunk = _Chunk(stack=stack, theta_buf=stack.buffer(), m_buf=stack.buffer(),
                   v_buf=stack.buffer(), t=np.zeros(R, dtype=np.int64))
    for view, p in zip(chunk.theta, split_params(torch.from_numpy(theta0), d, width, depth),
                       strict=True):
        view.copy_(p)
    wd_np = cfg["weight_decay"].to_numpy(dtype=np.float32)
    wd = torch.from_numpy(wd_np[:, None, None]).to(dev) if np.any(wd_np > 0) else None
    ops = _Ops(cfg, dev, backend)
    trainer = _Trainer(R, b, d, width, depth, ops, stack, dev)
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
                recorded[rec_index[t]] = forward_eval(chunk.theta, Xq, depth).cpu().numpy()

    it = range(steps)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=f"width {width}, {R} replicas", leave=False)
    with torch.no_grad():
        for t in it:
            record(t)
            if b == n_train:
                Xb, yb = Xt[None], yt[None]  # [1, n, d], [1, n]
            else:
                epoch, k = divmod(t, batches_per_epoch)
                if k == 0:
                    order = torch.from_numpy(np.stack(
                        [_shuffle_order(int(s), epoch, n_train) for s in seeds])).to(dev)
                idx = order[:, k * b:(k + 1) * b]  # [R, b]
                Xb, yb = Xt[idx], yt[idx]  # [R, b, d], [R, b]
            loss = trainer.step(chunk.theta, Xb, yb, t, fixed=b == n_train)  # [R]
            train_loss[active, t] = loss[active]
            if early_stopping is not None:
                if early_stopping == "patience":
                    vl = ((forward_eval(chunk.theta, Xv, depth) - yv) ** 2).mean(1)
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
            if backend == "numba":
                _adam_step_fused(chunk, trainer.G_buf, active, wd_np, lr, betas, eps)
            else:
                _adam_step(chunk, trainer.G, active, wd, lr, betas, eps)
        else:
            record(steps)
        if recorded is not None and not active.any():  # stopped early: records are frozen
            for t in record_at:
                if np.isnan(recorded[rec_index[t]]).any():
                    record(t)
    out = {"theta": flat_params(chunk.theta).cpu().numpy(), "train_loss": train_loss,
           "steps_run": chunk.t.copy()}
    if val_loss is not None:
        out["val_loss"] = val_loss
    if recorded is not None:
        out["recorded"] = recorded
    return out

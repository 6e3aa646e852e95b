"""The batched trainer against replicas trained alone and against plain torch models."""

import math

import numpy as np
import pytest
import torch
from fanova_gpu.kernels import dropout_masks as dm
from fanova_gpu.kernels.rng import derive_key

import fanova_gpu as fg
from fanova_gpu import replicas as rp

N, D, W = 120, 5, 8


@pytest.fixture(scope="module")
def data():
    return fg.data.main_effects(N, D, seed=0, noise=0.1)


def _rel(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


# ----------------------------------------------------------------------------- grid


def test_grid_is_the_cartesian_product_in_order():
    g = fg.ReplicaGrid(seeds=range(2), dropout_rates=[0.0, 0.5], dropout_kinds=["input", "both"],
                       widths=[4, 8], weight_decays=[0.0, 1e-3])
    cfg = g.configs
    assert len(g) == len(cfg) == 32
    assert list(cfg.columns) == ["seed", "dropout_kind", "dropout_rate", "width", "weight_decay",
                                 "depth"]
    assert cfg.iloc[0].tolist() == [0, "input", 0.0, 4, 0.0, 3]
    assert cfg.iloc[-1].tolist() == [1, "both", 0.5, 8, 1e-3, 3]
    assert len(cfg.drop_duplicates()) == 32


@pytest.mark.parametrize("kwargs,field", [
    (dict(seeds=[-1]), "seeds"),
    (dict(seeds=[0.5]), "seeds"),
    (dict(seeds=[]), "seeds"),
    (dict(seeds=[1, 1]), "seeds"),
    (dict(dropout_rates=[1.0]), "dropout_rates"),
    (dict(dropout_rates=[-0.1]), "dropout_rates"),
    (dict(dropout_rates=["0.5"]), "dropout_rates"),
    (dict(dropout_kinds=["hidden"]), "dropout_kinds"),
    (dict(widths=[0]), "widths"),
    (dict(widths=[3.0]), "widths"),
    (dict(weight_decays=[-1e-4]), "weight_decays"),
    (dict(weight_decays=[float("nan")]), "weight_decays"),
    (dict(depth=0), "depth"),
])
def test_bad_grid_raises_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        fg.ReplicaGrid(**kwargs)


@pytest.mark.parametrize("kwargs,field", [
    (dict(steps=-1), "steps"),
    (dict(lr=0.0), "lr"),
    (dict(batch_size=0), "batch_size"),
    (dict(betas=(0.9, 1.0)), "betas"),
    (dict(early_stopping="loss"), "early_stopping"),
    (dict(early_stopping="patience", patience=0), "patience"),
    (dict(val_fraction=1.0), "val_fraction"),
    (dict(record_at=[11], Xq=np.zeros((2, D))), "record_at"),
    (dict(record_at=[1]), "Xq"),
    (dict(record_at=[1], Xq=np.zeros((2, D + 1))), "Xq"),
    (dict(max_memory=-5), "max_memory"),
    (dict(chunk_size=0), "chunk_size"),
    (dict(device="tpu"), "device"),
    (dict(kernels="cuda"), "kernels"),
    (dict(split_seed=-1), "split_seed"),
])
def test_bad_training_option_raises_naming_the_field(data, kwargs, field):
    X, y = data
    with pytest.raises(ValueError, match=field):
        fg.train_replicas(X, y, fg.ReplicaGrid(), **{"steps": 10, **kwargs})


def test_bad_data_raises_naming_the_field(data):
    X, y = data
    with pytest.raises(ValueError, match="X"):
        fg.train_replicas(X[:, 0], y, fg.ReplicaGrid())
    with pytest.raises(ValueError, match="y"):
        fg.train_replicas(X, y[:-1], fg.ReplicaGrid())
    with pytest.raises(ValueError, match="y"):
        fg.train_replicas(X, np.full(N, np.nan), fg.ReplicaGrid())
    with pytest.raises(ValueError, match="grid"):
        fg.train_replicas(X, y, {"seeds": [0]})


# ----------------------------------------------------------------------------- init


def test_init_is_glorot_uniform_and_paired_across_dropout_settings():
    theta = rp.init_params(3, 25, 64, 3)
    views = rp.param_views(torch.from_numpy(theta[None]), 25, 64, 3)  # (W, b) per layer
    for W, b in views:
        fan_in, fan_out = W.shape[1:]
        a = math.sqrt(6 / (fan_in + fan_out))
        w = W.numpy().ravel()
        assert np.all(np.abs(w) <= a) and np.all(b.numpy() == 0)
        if w.size >= 1000:  # Var U(-a, a) = a^2 / 3; Var of w^2 is a^4 (1/5 - 1/9)
            assert abs(np.mean(w**2) - a**2 / 3) < 5 * a**2 * math.sqrt(4 / 45 / w.size)
    g = fg.ReplicaGrid(seeds=[3], dropout_rates=[0.0, 0.5], dropout_kinds=["input", "both"],
                       widths=[64], weight_decays=[0.0, 0.1])
    X = np.zeros((4, 25), dtype=np.float32)
    run = fg.train_replicas(X, np.zeros(4), g, steps=0, device="cpu")
    assert np.all(run.params[64] == theta)


# ----------------------------------------------------------------------------- invariance


def test_replica_in_batch_of_27_equals_replica_trained_alone(data):
    X, y = data
    grid = fg.ReplicaGrid(seeds=[0, 1, 2], dropout_rates=[0.0, 0.3, 0.6],
                          dropout_kinds=list(rp.KINDS), widths=[W])
    run = fg.train_replicas(X, y, grid, steps=50, lr=1e-2, device="cpu")
    assert len(run.configs) == 27
    P = run.predict(X)
    for r in (4, 14, 26):
        c = run.configs.iloc[r]
        alone = fg.train_replicas(X, y, fg.ReplicaGrid(
            seeds=[int(c.seed)], dropout_rates=[c.dropout_rate], dropout_kinds=[c.dropout_kind],
            widths=[W]), steps=50, lr=1e-2, device="cpu")
        assert _rel(run.params[W][r], alone.params[W][0]) <= 1e-5
        assert _rel(P[r], alone.predict(X)[0]) <= 1e-5
        np.testing.assert_allclose(run.history["train_loss"][r],
                                   alone.history["train_loss"][0], rtol=1e-5)


def test_chunked_equals_unchunked(data):
    X, y = data
    grid = fg.ReplicaGrid(seeds=[0, 1], dropout_rates=[0.0, 0.5], dropout_kinds=["both"],
                          widths=[4, W], weight_decays=[0.0, 1e-2])
    one = fg.train_replicas(X, y, grid, steps=20, lr=1e-2, device="cpu")
    many = fg.train_replicas(X, y, grid, steps=20, lr=1e-2, device="cpu", chunk_size=3)
    tiny = fg.train_replicas(X, y, grid, steps=20, lr=1e-2, device="cpu", max_memory=1)
    assert one.timings["chunks"] == 2  # one stack per width
    assert many.timings["chunks"] == 6 and tiny.timings["chunks"] == 16
    for other in (many, tiny):
        for w in (4, W):
            assert _rel(other.params[w], one.params[w]) <= 1e-5
        np.testing.assert_allclose(other.history["train_loss"], one.history["train_loss"],
                                   rtol=1e-5)


# ----------------------------------------------------------------------------- plain torch


def _torch_reference(X, y, seed, kind, rate, wd, steps, lr, batch_size=None):
    """nn.Sequential + torch.optim.Adam from the same init, the same masks, the same rows."""
    d = X.shape[1]
    theta = rp.init_params(seed, d, W, 3)
    layers, off = [], 0
    for i, o in rp.layer_shapes(d, W, 3):
        lin = torch.nn.Linear(i, o)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(theta[off:off + i * o].reshape(i, o).T))
            off += i * o
            lin.bias.copy_(torch.from_numpy(theta[off:off + o]))
            off += o
        layers.append(lin)
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=wd)
    in_rate = rate if kind in ("input", "both") else 0.0
    act_rate = rate if kind in ("activation", "both") else 0.0
    code = dm.KIND_CODES[kind], round(rate * 1e6)

    def mask(step, layer, p, rows, units):
        key = derive_key(dm.MASK_STREAM, seed, *code, step, layer)
        return torch.from_numpy(dm.masks_numpy(np.array([key], np.uint64),
                                               np.array([p], np.float32), rows, units)[0])

    n = len(X)
    b = n if batch_size is None else batch_size
    per_epoch = math.ceil(n / b)
    losses = []
    for t in range(steps):
        epoch, k = divmod(t, per_epoch)
        rows = rp._shuffle_order(seed, epoch, n)[k * b:(k + 1) * b] if batch_size else slice(None)
        xb, yb = torch.from_numpy(X[rows]), torch.from_numpy(y[rows])
        h = xb * mask(t, 0, in_rate, len(xb), d)
        for l, lin in enumerate(model):
            h = lin(h)
            if l < 3:
                h = torch.relu(h) * mask(t, l + 1, act_rate, len(xb), W)
        loss = ((h[:, 0] - yb) ** 2).mean()
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, np.array(losses)


@pytest.mark.parametrize("kind,rate,wd,batch_size", [
    ("input", 0.4, 0.0, None),
    ("activation", 0.5, 1e-2, None),
    ("both", 0.25, 1e-3, 32),
])
def test_replica_equals_plain_torch_sequential_with_adam(data, kind, rate, wd, batch_size):
    X, y = data
    steps, lr = 25, 1e-2
    model, losses = _torch_reference(X, y, 1, kind, rate, wd, steps, lr, batch_size)
    grid = fg.ReplicaGrid(seeds=[0, 1], dropout_rates=[0.0, rate], dropout_kinds=[kind],
                          widths=[W], weight_decays=[wd])
    run = fg.train_replicas(X, y, grid, steps=steps, lr=lr, batch_size=batch_size, device="cpu")
    r = 3  # seed 1, rate `rate`
    with torch.no_grad():  # eval mode: the same layers, ReLU, no masks
        h = torch.from_numpy(X)
        for l, lin in enumerate(model):
            h = torch.relu(lin(h)) if l < 3 else lin(h)
        want = h[:, 0].numpy()
    assert _rel(run.predict(X)[r], want) <= 1e-5
    np.testing.assert_allclose(run.history["train_loss"][r], losses, rtol=1e-5)


# ----------------------------------------------------------------------------- early stopping


def test_early_stopping_on_training_loss_rise_freezes_exactly(data):
    X, y = data
    grid = fg.ReplicaGrid(seeds=[0, 1], dropout_rates=[0.0, 0.5], dropout_kinds=["both"],
                          widths=[W])
    run = fg.train_replicas(X, y, grid, steps=60, lr=1e-2, device="cpu",
                            early_stopping="train_loss_rise", patience=2)
    hist = run.history["train_loss"]
    stopped = run.steps_run
    assert np.any(stopped < 60)
    for r in range(len(grid)):
        s = stopped[r]
        # the rule itself, replayed on the recorded losses: stop at the first step whose loss
        # has not improved on the best for `patience` (2) steps in a row
        best, bad, stop = np.inf, 0, 60
        for t in range(60):
            if hist[r, t] < best:
                best, bad = hist[r, t], 0
            else:
                bad += 1
            if bad >= 2:
                stop = t
                break
        assert s == stop
        assert np.all(np.isnan(hist[r, s + 1:])) and not np.any(np.isnan(hist[r, :s + 1]))
        c = run.configs.iloc[r]
        alone = fg.train_replicas(X, y, fg.ReplicaGrid(
            seeds=[int(c.seed)], dropout_rates=[c.dropout_rate], dropout_kinds=["both"],
            widths=[W]), steps=int(s), lr=1e-2, device="cpu")
        assert _rel(run.params[W][r], alone.params[W][0]) <= 1e-5


def test_early_stopping_with_patience_on_validation_split(data):
    X, y = data
    grid = fg.ReplicaGrid(seeds=[0, 1, 2], dropout_rates=[0.0], widths=[W])
    run = fg.train_replicas(X, y, grid, steps=80, lr=5e-2, device="cpu",
                            early_stopping="patience", patience=3, val_fraction=0.25)
    s = run.steps_run
    val = run.history["val_loss"]
    for r in range(3):
        if s[r] < 80:  # the best validation loss is 3 steps before the stop
            assert np.nanargmin(val[r]) == s[r] - 3
        alone = fg.train_replicas(X, y, fg.ReplicaGrid(seeds=[r], widths=[W]), steps=int(s[r]),
                                  lr=5e-2, device="cpu", early_stopping="patience",
                                  patience=10**6, val_fraction=0.25)
        assert alone.steps_run[0] == s[r]
        assert _rel(run.params[W][r], alone.params[W][0]) <= 1e-5


# ----------------------------------------------------------------------------- outputs


def test_record_at_equals_runs_stopped_at_those_steps(data, tmp_path):
    X, y = data
    Xq = fg.Uniform(d=D).sample(17, seed=5)
    grid = fg.ReplicaGrid(seeds=[0, 1], dropout_rates=[0.2], dropout_kinds=["activation"],
                          widths=[W])
    run = fg.train_replicas(X, y, grid, steps=12, lr=1e-2, device="cpu", record_at=[0, 5, 12],
                            Xq=Xq)
    assert run.recorded.shape == (3, 2, 17)
    for i, t in enumerate((0, 5, 12)):
        short = fg.train_replicas(X, y, grid, steps=t, lr=1e-2, device="cpu")
        assert _rel(run.recorded[i], short.predict(Xq)) <= 1e-5
    # state round trip
    back = fg.ReplicaRun.from_state_dict(run.state_dict())
    np.testing.assert_array_equal(back.predict(Xq), run.predict(Xq))
    run.save(tmp_path / "run.pt")
    loaded = fg.ReplicaRun.load(tmp_path / "run.pt")
    np.testing.assert_array_equal(loaded.predict(Xq), run.predict(Xq))
    assert loaded.configs.equals(run.configs)


def test_training_reduces_the_loss_on_a_learnable_function(data):
    X, y = data
    run = fg.train_replicas(X, y, fg.ReplicaGrid(seeds=[0, 1], widths=[16]), steps=150,
                            lr=1e-2, device="cpu")
    mse = ((run.predict(X) - y) ** 2).mean(1)
    assert np.all(mse < 0.5 * y.var())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_run_equals_cpu_run(data):
    X, y = data
    grid = fg.ReplicaGrid(seeds=[0, 1], dropout_rates=[0.0, 0.5], dropout_kinds=list(rp.KINDS),
                          widths=[W])
    cpu = fg.train_replicas(X, y, grid, steps=20, lr=1e-2, device="cpu")
    gpu = fg.train_replicas(X, y, grid, steps=20, lr=1e-2, device="cuda")
    assert _rel(gpu.params[W], cpu.params[W]) <= 1e-4


def test_torch_kernels_path_equals_numba_path(data):
    """The plain-torch step (the CUDA path) checked on the CPU against the fused kernels."""
    X, y = data
    grid = fg.ReplicaGrid(seeds=[0, 1], dropout_rates=[0.0, 0.5], dropout_kinds=list(rp.KINDS),
                          widths=[W], weight_decays=[1e-3])
    kw = dict(steps=20, lr=1e-2, device="cpu", batch_size=50)
    for extra in ({}, {"early_stopping": "train_loss_rise", "patience": 3}):
        a = fg.train_replicas(X, y, grid, kernels="numba", **kw, **extra)
        b = fg.train_replicas(X, y, grid, kernels="torch", **kw, **extra)
        np.testing.assert_array_equal(a.steps_run, b.steps_run)
        assert _rel(b.params[W], a.params[W]) <= 1e-5
        np.testing.assert_allclose(b.history["train_loss"], a.history["train_loss"],
                                   rtol=1e-5)


def test_records_after_every_replica_stopped_are_the_frozen_parameters(data):
    X, y = data
    grid = fg.ReplicaGrid(seeds=[0, 1], dropout_rates=[0.5], dropout_kinds=["both"], widths=[W])
    run = fg.train_replicas(X, y, grid, steps=40, lr=1e-2, device="cpu",
                            early_stopping="train_loss_rise", record_at=[0, 39, 40], Xq=X[:9])
    assert np.all(run.steps_run < 39)
    final = run.predict(X[:9])
    np.testing.assert_array_equal(run.recorded[1], final)
    np.testing.assert_array_equal(run.recorded[2], final)

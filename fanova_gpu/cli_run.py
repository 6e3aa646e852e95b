"""`fanova-gpu run [CONFIG.toml] [--out DIR]`: train a grid of replicas and summarise each.

No config: the built-in default, the paper's pure-noise data (Sec. 4.1: 1500 x 25,
X ~ Unif(-1, 1), Y ~ N(0, 1)) and 60 replicas (10 seeds x input/activation Dropout x
p in {0, 0.25, 0.5}, width 32, depth 3) trained full batch with Adam. A TOML config
overrides any of the fields below; unknown or bad fields are errors (exit 2).

    [data]   generator, n, d, seed, noise
    [grid]   seeds, dropout_rates, dropout_kinds, widths, weight_decays, depth
    [train]  steps, lr, batch_size ("full" or an int), betas, eps, early_stopping
             ("none", "train_loss_rise", "patience"), patience, val_fraction, split_seed,
             device, max_memory, chunk_size

With --out DIR the results are written as they finish: manifest.json (resolved config,
versions, device, timings, status), chunks/ (each finished chunk), and at the end
replicas.parquet (one row per replica), history.parquet (loss per replica and step) and
run.pt (the ReplicaRun state, reloadable with ReplicaRun.load).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

DEFAULT_CONFIG: dict[str, dict[str, Any]] = {
    "data": {"generator": "pure_noise", "n": 1500, "d": 25, "seed": 0, "noise": 1.0},
    "grid": {"seeds": list(range(10)), "dropout_rates": [0.0, 0.25, 0.5],
             "dropout_kinds": ["input", "activation"], "widths": [32],
             "weight_decays": [0.0], "depth": 3},
    "train": {"steps": 1000, "lr": 1e-3, "batch_size": "full", "betas": [0.9, 0.999],
              "eps": 1e-8, "early_stopping": "none", "patience": 0, "val_fraction": 0.2,
              "split_seed": 0, "device": "auto", "max_memory": 0, "chunk_size": 0},
}
# 0 for patience / max_memory / chunk_size means "the library's default"


def load_config(path: str | None) -> dict[str, dict[str, Any]]:
    """The default config with the TOML file's fields laid over it (every field checked)."""
    cfg = copy.deepcopy(DEFAULT_CONFIG)
    if path is None:
        return cfg
    with open(path, "rb") as f:
        user = tomllib.load(f)
    for section, fields in user.items():
        if section not in cfg:
            raise ValueError(f"config: unknown section [{section}]; expected one of "
                             f"{sorted(cfg)}")
        if not isinstance(fields, dict):
            raise ValueError(f"config: [{section}] must be a table of fields")
        for key, value in fields.items():
            if key not in cfg[section]:
                raise ValueError(f"config: unknown field '{section}.{key}'; expected one of "
                                 f"{sorted(cfg[section])}")
            cfg[section][key] = value
    return cfg


def build(cfg: dict[str, dict[str, Any]]):
    """(X, y, grid, train kwargs) from a config; raises ValueError naming a bad field."""
    from . import data as data_mod
    from .replicas import ReplicaGrid

    d = dict(cfg["data"])
    gen = d.pop("generator")
    if gen not in data_mod.GENERATORS:
        raise ValueError(f"config field 'data.generator': expected one of "
                         f"{sorted(data_mod.GENERATORS)}, got {gen!r}")
    try:
        X, y = data_mod.GENERATORS[gen](**d)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"config [data]: {exc}") from None
    try:
        grid = ReplicaGrid(**cfg["grid"])
    except (ValueError, TypeError) as exc:
        raise ValueError(f"config [grid]: {exc}") from None
    t = dict(cfg["train"])
    bs = t.pop("batch_size")
    if bs == "full":
        bs = None
    es = t.pop("early_stopping")
    es = None if es == "none" else es
    betas = t.pop("betas")
    kwargs = dict(batch_size=bs, early_stopping=es,
                  betas=tuple(betas) if isinstance(betas, list) else betas)
    for key in ("patience", "max_memory", "chunk_size"):
        v = t.pop(key)
        kwargs[key] = None if v == 0 else v
    kwargs.update(t)
    return X, y, grid, kwargs


def summary(run, X, y) -> Any:
    """One row per replica: its config, steps run, last training loss, fit and variance."""
    import numpy as np

    pred = run.predict(X).astype(np.float64)  # [R, n]
    hist = run.history["train_loss"]  # [R, steps]
    df = run.configs.copy()
    last = np.array([h[~np.isnan(h)][-1] if np.any(~np.isnan(h)) else np.nan for h in hist])
    df["final_train_loss"] = last  # with dropout, at the last step run
    df["train_mse"] = ((pred - y.astype(np.float64)) ** 2).mean(1)  # without dropout
    df["pred_variance"] = pred.var(1)
    return df


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def _write_json(path: Path, obj: Any) -> None:
    _write_atomic(path, lambda p: p.write_text(json.dumps(obj, indent=2, default=str)))


def _history_frame(rows, train_loss):
    import numpy as np
    import pandas as pd

    R, steps = train_loss.shape
    df = pd.DataFrame({"replica": np.repeat(np.asarray(rows), steps),
                       "step": np.tile(np.arange(steps), R),
                       "train_loss": train_loss.ravel()})
    return df.dropna()


def cmd_run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    if args.device is not None:
        cfg["train"]["device"] = args.device
    X, y, grid, kwargs = build(cfg)

    from .device import capability_report, resolve_device
    from .replicas import train_replicas

    device = str(resolve_device(kwargs["device"]))
    out = Path(args.out) if args.out else None
    manifest = {"config": cfg, "device": device, "replicas": len(grid),
                "machine": capability_report(), "status": "running", "chunks_done": 0}
    on_chunk = None
    if out is not None:
        (out / "chunks").mkdir(parents=True, exist_ok=True)
        _write_json(out / "manifest.json", manifest)
        configs = grid.configs

        def on_chunk(rows, res) -> None:  # keep finished work if the run is interrupted
            i = manifest["chunks_done"]
            part = configs.iloc[rows].copy()
            part["steps_run"] = res["steps_run"]
            _write_atomic(out / "chunks" / f"replicas-{i:04d}.parquet", part.to_parquet)
            _write_atomic(out / "chunks" / f"history-{i:04d}.parquet",
                          _history_frame(rows, res["train_loss"]).to_parquet)
            with open(out / "chunks" / f"params-{i:04d}.npy", "wb") as f:
                import numpy as np

                np.save(f, res["theta"])
            manifest["chunks_done"] = i + 1
            _write_json(out / "manifest.json", manifest)

    print(f"fanova-gpu run: {len(grid)} replicas on {X.shape[0]} x {X.shape[1]} "
          f"({cfg['data']['generator']}), {kwargs['steps']} steps, device {device}", flush=True)
    t0 = time.perf_counter()
    try:
        run = train_replicas(X, y, grid, on_chunk=on_chunk, progress=args.progress, **kwargs)
    except KeyboardInterrupt:
        if out is not None:  # finished chunks are already on disk; say where the run stopped
            manifest["status"] = "interrupted"
            _write_json(out / "manifest.json", manifest)
            print(f"interrupted: {manifest['chunks_done']} finished chunk(s) kept in "
                  f"{out}/chunks/", file=sys.stderr)
        return 130
    seconds = time.perf_counter() - t0
    df = summary(run, X, y)

    import pandas as pd

    with pd.option_context("display.max_rows", None, "display.width", 120,
                           "display.float_format", "{:.4g}".format):
        print(df.to_string())
        print()
        agg = df.groupby(["dropout_kind", "dropout_rate", "width"])[
            ["train_mse", "pred_variance"]].mean()
        print("mean over seeds:")
        print(agg.to_string())
    rs = len(grid) * kwargs["steps"] / max(seconds, 1e-9)
    print(f"\ntrained in {seconds:.1f} s ({rs:,.0f} replica-steps/s) on {device}")

    if out is not None:
        df.to_parquet(out / "replicas.parquet")
        _history_frame(df.index, run.history["train_loss"]).to_parquet(
            out / "history.parquet")
        run.save(out / "run.pt")
        manifest.update(status="done", timings={"train_s": seconds,
                                                "replica_steps_per_s": rs})
        _write_json(out / "manifest.json", manifest)
        print(f"results in {out}/")
    return 0


def register_cli(sub) -> None:
    p = sub.add_parser("run", help="the main job: train a grid of replicas (default: "
                                   "the paper's pure-noise experiment)")
    p.add_argument("config", nargs="?", default=None, help="TOML config (see the docs)")
    p.add_argument("--out", default=None, help="results folder (written as chunks finish)")
    p.add_argument("--device", default=None, help="auto | cpu | cuda (overrides the config)")
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    p.set_defaults(func=cmd_run)

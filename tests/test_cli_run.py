"""`fanova-gpu run`: a tiny config end to end, results folder contents, and bad configs."""

import json

import numpy as np
import pandas as pd
import pytest

import fanova_gpu as fg
from fanova_gpu.cli import main
from fanova_gpu.cli_run import DEFAULT_CONFIG, load_config

TINY = """
[data]
n = 150
d = 4
seed = 3
[grid]
seeds = [0, 1]
dropout_rates = [0.0, 0.5]
dropout_kinds = ["input"]
widths = [8]
[train]
steps = 15
lr = 0.01
chunk_size = 2
device = "cpu"
"""


def test_default_config_is_the_pure_noise_experiment():
    cfg = load_config(None)
    assert cfg == DEFAULT_CONFIG
    assert cfg["data"] == {"generator": "pure_noise", "n": 1500, "d": 25, "seed": 0,
                           "noise": 1.0}
    assert len(fg.ReplicaGrid(**cfg["grid"])) == 60


def test_run_tiny_config_writes_results(tmp_path, capsys):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "4 replicas on 150 x 4" in text and "pred_variance" in text

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["chunks_done"] == 2
    assert manifest["device"] == "cpu" and manifest["config"]["train"]["steps"] == 15
    assert len(list((out / "chunks").glob("replicas-*.parquet"))) == 2

    df = pd.read_parquet(out / "replicas.parquet")
    assert len(df) == 4 and np.all(df["steps_run"] == 15)
    hist = pd.read_parquet(out / "history.parquet")
    assert len(hist) == 4 * 15
    # the summary against predictions recomputed from the saved parameters
    X, y = fg.data.pure_noise(150, 4, seed=3)
    run = fg.ReplicaRun.load(out / "run.pt")
    pred = run.predict(X).astype(np.float64)
    np.testing.assert_allclose(df["pred_variance"], pred.var(1), rtol=1e-6)
    np.testing.assert_allclose(df["train_mse"], ((pred - y) ** 2).mean(1), rtol=1e-6)
    # the same replicas trained through the library
    lib = fg.train_replicas(X, y, fg.ReplicaGrid(seeds=[0, 1], dropout_rates=[0.0, 0.5],
                                                 widths=[8]), steps=15, lr=0.01, device="cpu")
    np.testing.assert_allclose(run.params[8], lib.params[8], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("text,field", [
    ("[train]\nstepz = 3\n", "train.stepz"),
    ("[model]\nwidth = 3\n", "model"),
    ("[grid]\ndropout_rates = [1.5]\n", "dropout_rates"),
    ("[grid]\ndropout_kinds = ['hidden']\n", "dropout_kinds"),
    ("[train]\nsteps = -4\n", "steps"),
    ("[train]\nbatch_size = 'half'\n", "batch_size"),
    ("[data]\ngenerator = 'mnist'\n", "data.generator"),
    ("[data]\nn = 0\n", "n"),
    ("[train]\ndevice = 'tpu'\n", "device"),
    ("[train\n", ""),  # not TOML
])
def test_bad_config_exits_2_naming_the_field(tmp_path, capsys, text, field):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert main(["run", str(path)]) == 2
    assert field in capsys.readouterr().err


def test_missing_config_file_exits_2(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.toml")]) == 2
    assert "nope.toml" in capsys.readouterr().err


def test_interrupted_run_keeps_finished_chunks(tmp_path, capsys, monkeypatch):
    """Ctrl-C after the first of two chunks: that chunk stays on disk, the manifest says so."""
    import fanova_gpu.replicas as replicas

    real = replicas.train_replicas

    def interrupted_after_first_chunk(*args, on_chunk=None, **kwargs):
        def first_then_stop(rows, res):
            on_chunk(rows, res)
            raise KeyboardInterrupt

        return real(*args, on_chunk=first_then_stop, **kwargs)

    monkeypatch.setattr(replicas, "train_replicas", interrupted_after_first_chunk)
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out)]) == 130
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["chunks_done"] == 1
    part = pd.read_parquet(out / "chunks" / "replicas-0000.parquet")
    assert len(part) == 2 and np.all(part["steps_run"] == 15)
    assert "1 finished chunk(s) kept" in capsys.readouterr().err

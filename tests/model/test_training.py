"""CVAE-M2 training as a process: kill it with SIGKILL, start it again, and it ends where an
uninterrupted run ends (CPU, same seed); early stopping and the unlabelled objective run."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from scenesearch import methods, storage, train
from scenesearch.methods import cvae_m2

pytestmark = pytest.mark.slow

EPOCHS = 8


def _train_cmd(images, out):
    return [
        sys.executable, "-m", "scenesearch.cli", "train", "--preset", "smoke", "--images", str(images), "--out", str(out),
        "--set", f"train.epochs={EPOCHS}", "--set", "train.patience=100", "--method", "cvae_m2", "--variant", "cvae1",
    ]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}  # the same kernels in both runs


def _weights(folder):
    return torch.load(folder / "cvae1" / "network.pt", weights_only=True)


def test_sigkill_then_rerun_ends_with_the_weights_of_an_uninterrupted_run(tmp_path, smoke_preprocessed):
    images = smoke_preprocessed["images"]
    straight = subprocess.run(_train_cmd(images, tmp_path / "straight"), env=_env(), capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-2000:]

    killed_dir = tmp_path / "killed"
    checkpoint = killed_dir / "cvae1" / "checkpoint" / "last.pt"
    proc = subprocess.Popen(_train_cmd(images, killed_dir), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not checkpoint.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL, "the training ended before it could be killed"
    epoch_at_kill = torch.load(checkpoint, weights_only=True)["epoch"]
    assert 1 <= epoch_at_kill < EPOCHS
    assert not (killed_dir / "cvae1" / "network.pt").exists()

    resumed = subprocess.run(_train_cmd(images, killed_dir), env=_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads(resumed.stdout[resumed.stdout.index("{"):])["cvae1"]
    assert summary["resumed_from_epoch"] == epoch_at_kill and summary["epochs_run"] == EPOCHS

    a, b = _weights(tmp_path / "straight"), _weights(killed_dir)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    history = json.loads((killed_dir / "cvae1" / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1))


def _with(cfg, train_cfg=None, **cvae):
    """`cfg` with other train settings and cvae_m2 fields."""
    sec = {**cfg.methods["cvae_m2"], **cvae}
    return dataclasses.replace(cfg, train=train_cfg or cfg.train, methods={**cfg.methods, "cvae_m2": sec})


def _fit(cfg, images, out):
    return train.run(cfg, "cvae1", methods.Inputs(images=str(images)), str(out), progress=False)


def test_a_checkpoint_of_another_configuration_is_not_resumed(tmp_path, smoke_preprocessed, smoke_cfg):
    cfg = _with(smoke_cfg, dataclasses.replace(smoke_cfg.train, epochs=1))
    images = smoke_preprocessed["images"]
    assert _fit(cfg, images, tmp_path / "m").metrics["resumed_from_epoch"] == 0
    again = _fit(cfg, images, tmp_path / "m")
    assert again.metrics["resumed_from_epoch"] == 1 and again.metrics["epochs_run"] == 1  # nothing left to do
    assert _fit(_with(cfg, beta=1.0), images, tmp_path / "m").metrics["resumed_from_epoch"] == 0


def test_early_stopping_and_the_unlabelled_objective(tmp_path, smoke_preprocessed, smoke_cfg):
    cfg = _with(smoke_cfg, dataclasses.replace(smoke_cfg.train, epochs=30, patience=1, lr=1e-2), unlabelled=True)
    r = _fit(cfg, smoke_preprocessed["images"], tmp_path / "m")
    assert r.metrics["n_unlabelled_images"] > 0
    history = json.loads((tmp_path / "m" / "history.json").read_text())
    assert r.metrics["epochs_run"] < 30 and r.metrics["epochs_run"] == r.metrics["best_epoch"] + 1  # stopped early
    assert "train_unlabelled_loss" in history[0]
    # the kept weights are those of the best epoch: encoding again gives the saved embeddings
    record = train.read_record(tmp_path / "m")
    net = cvae_m2.load_network(tmp_path / "m", record["meta"])
    import numpy as np

    images = storage.read_array(smoke_preprocessed["images"] / "images.npy")
    np.testing.assert_allclose(cvae_m2.encode_all(net, images[:8]), storage.read_array(tmp_path / "m" / "embeddings.npy")[:8], rtol=1e-5, atol=1e-5)


def test_test_labels_never_reach_the_training_set(smoke_preprocessed):
    index = storage.read_table(smoke_preprocessed["images"] / "index.parquet").to_pydict()
    images = storage.read_array(smoke_preprocessed["images"] / "images.npy", mmap=True)
    data, classes = cvae_m2.training_data(images, index, unlabelled=True)
    n_train = sum(1 for s, f in zip(index["split"], index["flip"]) if s == "train" and not f)
    assert int((data.labels >= 0).sum()) == n_train
    assert data.images.dtype == torch.uint8 and len(classes) == 4


def test_training_data_carries_each_rows_mask_and_render_flag(smoke_preprocessed):
    index = storage.read_table(smoke_preprocessed["images"] / "index.parquet").to_pydict()
    images = storage.read_array(smoke_preprocessed["images"] / "images.npy", mmap=True)
    masks = storage.read_array(smoke_preprocessed["images"] / "masks.npy", mmap=True)
    assert masks.shape == (len(images), 1, *images.shape[2:]) and masks.dtype.name == "uint8"
    data, _ = cvae_m2.training_data(images, index, unlabelled=True, masks=masks)
    assert data.masks.shape == (len(data.labels), 1, *images.shape[2:])
    n_scene_rows = sum(1 for s, f, d in zip(index["split"], index["flip"], index["domain"]) if not f and d == "scene" and s in ("train", "val", "test"))
    assert int(data.is_render.sum()) == n_scene_rows > 0
    renders, photos = data.is_render, ~data.is_render
    assert (data.masks[photos] == 255).all()  # query images: all foreground
    assert (data.masks[renders] == 0).any() and (data.masks[renders] == 255).any()
    # the masks sit on their own images: where a render is uncovered it shows the white background
    uncovered = (data.masks[renders] == 0).expand(-1, 3, -1, -1)
    assert (data.images[renders][uncovered] == 255).all()
    assert cvae_m2.training_data(images, index)[0].masks is None  # no masks given: none (the loop takes them as 255)

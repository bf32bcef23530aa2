"""The train step: fit one CVAE-M2 architecture on the preprocessed images, encode every image.

Reads the preprocess output (``images.npy`` + ``index.parquet``). Trains on the unflipped
images of the train split (scene renders and query photos, with labels; flips are drawn on the
fly), optionally adds the val/test images without labels (the M2 unlabelled objective), and
stops early on the validation mAP. Writes to the output folder:

- ``network.pt``   the best weights (a state dict; ``load_network`` rebuilds the module)
- ``meta.json``    architecture, classes, image size, training summary
- ``encodings.npy`` (N, 2d + C) float32: [mu | logvar | logits] of every index row
- ``index.parquet`` the rows of ``encodings.npy`` (a copy of the preprocess index)
- ``history.json`` per-epoch metrics
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from scenesearch import storage
from scenesearch.config import RunConfig
from scenesearch.errors import DataError
from scenesearch.features.vgg import resolve_device
from scenesearch.models import build_model
from scenesearch.models.train import TrainData, TrainResult, config_hash, train
from scenesearch.preprocess import to_uint8


def load_training_data(preprocessed_dir: str, unlabelled: bool = False) -> tuple[TrainData, list[str]]:
    """Unflipped train-split images as uint8 with class ids; val/test images unlabelled if asked.

    Test labels are never read into the training set: unlabelled rows get -1.
    """
    src = Path(preprocessed_dir)
    images = storage.read_array(src / "images.npy", mmap=True)
    index = storage.read_table(src / "index.parquet").to_pydict()
    split, flip, label = (np.asarray(index[c]) for c in ("split", "flip", "label"))
    train_rows = np.flatnonzero((split == "train") & ~flip)
    if len(train_rows) == 0:
        raise DataError("no training image: the train split is empty")
    classes = sorted(set(label[train_rows].tolist()))
    rows, ids = list(train_rows), [classes.index(c) for c in label[train_rows]]
    if unlabelled:
        extra = np.flatnonzero(np.isin(split, ["val", "test"]) & ~flip)
        rows += list(extra)
        ids += [-1] * len(extra)
    x = np.asarray(images[np.asarray(rows)])
    if not np.isfinite(x).all():
        raise DataError(f"{src / 'images.npy'} holds NaN or infinite pixels")
    pixels = torch.from_numpy(to_uint8(x))
    return TrainData(pixels, torch.tensor(ids, dtype=torch.long)), classes


@torch.inference_mode()
def encode_all(model: torch.nn.Module, images: np.ndarray, batch_size: int = 256, device: torch.device | str = "cpu") -> np.ndarray:
    """[mu | logvar | logits] of every image (N, 3, H, W) in [0, 1], batched on `device`."""
    model.eval()
    out = [model(torch.from_numpy(np.array(images[i : i + batch_size], dtype=np.float32)).to(device)).float().cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(out).numpy()


def split_encodings(enc: torch.Tensor, latent: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mu, logvar, logits) from rows [mu | logvar | logits] of any leading shape."""
    return enc[..., :latent], enc[..., latent : 2 * latent], enc[..., 2 * latent :]


def model_distances(enc: np.ndarray, index: dict, latent: int, alpha: float, device: torch.device | str = "cpu"):
    """(RetrievalInputs of the encodings, (Q, S) CVAE distances) for every query against every scene."""
    from scenesearch.retrieval import arrange, cvae_scene_distances

    inputs = arrange(enc, index)
    q = split_encodings(torch.from_numpy(inputs.query_feats).to(device), latent)
    s = split_encodings(torch.from_numpy(inputs.scene_feats).to(device), latent)
    return inputs, cvae_scene_distances(*q, *s, alpha=alpha).cpu().numpy()


def make_validator(images: np.ndarray, index: dict, classes: list[str], latent: int, alpha: float, k: int, device) -> Callable:
    """Validation metrics of a model: q(y|x) accuracy on val images, mAP of val queries vs all scenes."""
    from scenesearch.evaluation import retrieval_metrics

    split, flip, label = (np.asarray(index[c]) for c in ("split", "flip", "label"))
    val_rows = np.flatnonzero((split == "val") & ~flip & np.isin(label, classes))
    val_targets = np.array([classes.index(c) for c in label[val_rows]])

    def validate(model) -> dict[str, float]:
        enc = encode_all(model, images, device=device)
        metrics: dict[str, float] = {}
        if len(val_rows):
            pred = enc[val_rows, 2 * latent :].argmax(1)
            metrics["val_accuracy"] = float((pred == val_targets).mean())
        inputs, d = model_distances(enc, index, latent, alpha, device)
        q_split = np.asarray(inputs.queries["split"])
        if (q_split == "val").any():
            m = retrieval_metrics(d[q_split == "val"], np.asarray(inputs.queries["label"])[q_split == "val"], np.asarray(inputs.scenes["label"]), k=k)
            metrics["val_mAP"] = float(m["mAP"])
        return metrics

    return validate


@dataclass
class TrainStepResult:
    architecture: str
    out_dir: str
    train: TrainResult
    n_train: int
    n_unlabelled: int
    n_params: int
    classes: list[str] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        t = self.train
        return {
            "epochs_run": t.epochs_run,
            "best_epoch": t.best_epoch,
            "best_val_metric": t.best_metric,
            "train_images_per_s": t.images_per_s,
            "n_train_images": self.n_train,
            "n_unlabelled_images": self.n_unlabelled,
            "n_parameters": self.n_params,
            "resumed_from_epoch": t.resumed_from,
        }


def run(
    preprocessed_dir: str,
    out_dir: str,
    architecture: str,
    cfg: RunConfig,
    checkpoint_dir: str | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    progress: bool = True,
) -> TrainStepResult:
    """Train `architecture`, keep its best epoch, encode every preprocessed image; see the module doc.

    Args:
        checkpoint_dir: where `last.pt` lives (default `<out_dir>/checkpoint`); a second call
            with the same folder and config resumes from it.
    """
    src, dst = Path(preprocessed_dir), Path(out_dir)
    data, classes = load_training_data(preprocessed_dir, cfg.train.unlabelled)
    images = storage.read_array(src / "images.npy", mmap=True)
    index = storage.read_table(src / "index.parquet").to_pydict()
    size = int(images.shape[-1])
    model = build_model(architecture, len(classes), size, cfg.train.decoder_variance, cfg.features.weights, cfg.seed)
    device = resolve_device(cfg.train.device, "train.device")
    validate = make_validator(images, index, classes, model.latent, cfg.retrieve.alpha, cfg.evaluate.k, device)
    has_val_queries = bool(np.any((np.asarray(index["split"]) == "val") & (np.asarray(index["domain"]) == "query")))
    run_hash = config_hash(cfg.train, {"architecture": architecture, "seed": cfg.seed, "classes": classes, "n": len(data.labels), "weights": cfg.features.weights})
    result = train(
        model,
        data,
        cfg.train,
        checkpoint_dir or str(dst / "checkpoint"),
        cfg.seed,
        run_hash,
        validate=validate,
        monitor="val_mAP" if has_val_queries else "val_accuracy",
        on_epoch=on_epoch,
        progress=progress,
    )
    enc = encode_all(model, images, device=device)
    dst.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, buf)
    storage.write_bytes(dst / "network.pt", buf.getvalue())
    storage.write_array(dst / "encodings.npy", enc.astype(np.float32))
    storage.write_bytes(dst / "index.parquet", storage.read_bytes(src / "index.parquet"))
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    meta = {
        **model.config(),
        "classes": classes,
        "alpha": cfg.retrieve.alpha,
        "seed": cfg.seed,
        "weights": cfg.features.weights if model.spec.vgg_encoder else "n/a",
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "precision": result.precision,
        "device": result.device,
        "run_hash": run_hash,
    }
    storage.write_bytes(dst / "meta.json", json.dumps(meta, indent=2).encode())
    storage.write_bytes(dst / "history.json", json.dumps(result.history, indent=2).encode())
    n_unlabelled = int((data.labels < 0).sum())
    return TrainStepResult(architecture, str(dst), result, len(data.labels) - n_unlabelled, n_unlabelled, n_params, classes)


def first_query_image(preprocessed_dir: str) -> np.ndarray:
    """One query photo as (H, W, 3) uint8 (the MLflow input example); a render if there is none."""
    src = Path(preprocessed_dir)
    index = storage.read_table(src / "index.parquet").to_pydict()
    rows = [i for i, (d, f) in enumerate(zip(index["domain"], index["flip"])) if d == "query" and not f] or [0]
    x = np.asarray(storage.read_array(src / "images.npy", mmap=True)[rows[0]])
    return to_uint8(x.transpose(1, 2, 0))


def read_meta(model_dir: str | Path) -> dict:
    return json.loads(storage.read_bytes(Path(model_dir) / "meta.json"))


def load_network(model_dir: str | Path):
    """The trained CVAE from a train-step folder (weights loaded with weights_only=True)."""
    meta = read_meta(model_dir)
    model = build_model(meta["architecture"], meta["n_classes"], meta["image_size"], meta["decoder_variance"], "none", meta["seed"])
    state = torch.load(io.BytesIO(storage.read_bytes(Path(model_dir) / "network.pt")), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()

"""The features step: VGG16 multi-layer descriptors of every preprocessed image, then PCA.

PCA (scikit-learn) is fitted on the training split only and applied to everything. Outputs:
``features.npy`` (N, d) float32 with row i matching row i of ``index.parquet`` (copied over),
and ``pca.npz`` (mean, components, explained_variance_ratio) so a query can be projected later.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.decomposition import PCA

from scenesearch import storage
from scenesearch.config import FeaturesConfig
from scenesearch.errors import DataError
from scenesearch.features.vgg import build_descriptor, extract, resolve_device


def fit_pca(x: np.ndarray, train_mask: np.ndarray, dim: int, seed: int = 0) -> PCA:
    """Fit PCA on the rows where `train_mask` holds; dim is capped by the training rows and columns.

    Raises:
        DataError: no training rows.
    """
    train = x[train_mask]
    if len(train) < 2:
        raise DataError(f"PCA needs at least 2 training images, got {len(train)}")
    n = min(dim, len(train), x.shape[1])
    return PCA(n_components=n, random_state=seed, svd_solver="randomized" if n < min(train.shape) // 2 else "full").fit(train)


@dataclass(frozen=True)
class FeaturesResult:
    n_images: int
    dim: int
    weights: str
    device: str
    images_per_s: float
    explained_variance: float
    shard_seconds: float = 0.0  # the slowest descriptor shard (merge only)

    def metrics(self) -> dict[str, float]:
        return {"feature_dim": self.dim, "features_images_per_s": self.images_per_s, "pca_explained_variance": self.explained_variance}


def describe(preprocessed_dir: str, cfg: FeaturesConfig, seed: int = 0, shard: int = 0, n_shards: int = 1) -> tuple[np.ndarray, float, str]:
    """VGG16 descriptors of the contiguous block `shard` of `n_shards` of the images.

    Returns:
        (descriptors (n, 5376) float32, images per second, device name).
    """
    from scenesearch.sharding import block

    images = storage.read_array(Path(preprocessed_dir) / "images.npy", mmap=True)
    rows = block(len(images), shard, n_shards)
    device = resolve_device(cfg.device)
    model = build_descriptor(cfg.weights, seed)
    start = time.perf_counter()
    desc = extract(model, torch.from_numpy(np.array(images[rows], dtype=np.float32)), cfg.batch_size, device, cfg.input_size).numpy()
    return desc, (rows.stop - rows.start) / max(time.perf_counter() - start, 1e-9), str(device)


def write_descriptors(out_dir: str, desc: np.ndarray, rate: float, device: str) -> None:
    storage.write_array(Path(out_dir) / "descriptors.npy", desc)
    storage.write_bytes(Path(out_dir) / "describe.json", json.dumps({"images_per_s": rate, "device": device, "n_images": len(desc)}).encode())


def finish(preprocessed_dir: str, desc: np.ndarray, out_dir: str, cfg: FeaturesConfig, seed: int, rate: float, device: str) -> FeaturesResult:
    """Fit PCA on the train rows of the descriptors, write features.npy, index.parquet, pca.npz.

    Raises:
        DataError: the descriptors do not match the images one to one.
    """
    src, dst = Path(preprocessed_dir), Path(out_dir)
    index = storage.read_table(src / "index.parquet")
    if len(desc) != index.num_rows:
        raise DataError(f"{len(desc)} descriptors for {index.num_rows} images: a descriptor shard is missing")
    train = np.asarray(index.column("split").to_pylist()) == "train"
    pca = fit_pca(desc, train, cfg.pca_dim, seed)
    feats = pca.transform(desc).astype(np.float32)
    dst.mkdir(parents=True, exist_ok=True)
    storage.write_array(dst / "features.npy", feats)
    with storage.atomic_path(dst / "pca.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, mean=pca.mean_, components=pca.components_, explained_variance_ratio=pca.explained_variance_ratio_)
    storage.write_bytes(dst / "index.parquet", storage.read_bytes(src / "index.parquet"))
    return FeaturesResult(len(feats), feats.shape[1], cfg.weights, device, rate, float(pca.explained_variance_ratio_.sum()))


def merge(preprocessed_dir: str, shard_dirs: list[str], out_dir: str, cfg: FeaturesConfig, seed: int = 0) -> FeaturesResult:
    """Join descriptor shards (in shard order = image order), then `finish`."""
    desc = np.concatenate([storage.read_array(Path(d) / "descriptors.npy") for d in shard_dirs])
    stats = [json.loads(storage.read_bytes(Path(d) / "describe.json")) for d in shard_dirs]
    rate = sum(s["images_per_s"] for s in stats)  # shards run side by side on a cluster
    slowest = max(s["n_images"] / max(s["images_per_s"], 1e-9) for s in stats)
    return dataclasses.replace(finish(preprocessed_dir, desc, out_dir, cfg, seed, rate, stats[0]["device"]), shard_seconds=slowest)


def run(preprocessed_dir: str, out_dir: str, cfg: FeaturesConfig, seed: int = 0) -> FeaturesResult:
    """Extract descriptors, fit PCA on the train split, write features.npy, index.parquet, pca.npz."""
    desc, rate, device = describe(preprocessed_dir, cfg, seed)
    return finish(preprocessed_dir, desc, out_dir, cfg, seed, rate, device)

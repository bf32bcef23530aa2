"""The features step: VGG16 multi-layer descriptors of every preprocessed image, then PCA.

PCA (scikit-learn) is fitted on the training split only and applied to everything. Outputs:
``features.npy`` (N, d) float32 with row i matching row i of ``index.parquet`` (copied over),
and ``pca.npz`` (mean, components, explained_variance_ratio) so a query can be projected later.
"""

from __future__ import annotations

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

    def metrics(self) -> dict[str, float]:
        return {"feature_dim": self.dim, "features_images_per_s": self.images_per_s, "pca_explained_variance": self.explained_variance}


def run(preprocessed_dir: str, out_dir: str, cfg: FeaturesConfig, seed: int = 0) -> FeaturesResult:
    """Extract descriptors, fit PCA on the train split, write features.npy, index.parquet, pca.npz."""
    src, dst = Path(preprocessed_dir), Path(out_dir)
    images = torch.from_numpy(storage.read_array(src / "images.npy"))
    index = storage.read_table(src / "index.parquet")
    train = np.asarray(index.column("split").to_pylist()) == "train"
    device = resolve_device(cfg.device)
    model = build_descriptor(cfg.weights, seed)
    start = time.perf_counter()
    desc = extract(model, images, cfg.batch_size, device, cfg.input_size).numpy()
    rate = len(images) / max(time.perf_counter() - start, 1e-9)
    pca = fit_pca(desc, train, cfg.pca_dim, seed)
    feats = pca.transform(desc).astype(np.float32)
    dst.mkdir(parents=True, exist_ok=True)
    storage.write_array(dst / "features.npy", feats)
    with storage.atomic_path(dst / "pca.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, mean=pca.mean_, components=pca.components_, explained_variance_ratio=pca.explained_variance_ratio_)
    storage.write_bytes(dst / "index.parquet", storage.read_bytes(src / "index.parquet"))
    return FeaturesResult(len(feats), feats.shape[1], cfg.weights, str(device), rate, float(pca.explained_variance_ratio_.sum()))

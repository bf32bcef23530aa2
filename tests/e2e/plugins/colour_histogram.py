"""A retrieval method added through the registry alone: this module and a preset, nothing else.

`colour_histogram` is the classic CBIR colour descriptor: a joint RGB histogram of each image
(bins per channel configurable), compared by min-view chi-squared distance. It consumes the
preprocessed images and the k-means clusters (it reports how many clusters the similarity step
found, so the test sees that input arrive). The e2e test names it in a preset's `plugins`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scenesearch import storage
from scenesearch.errors import ConfigError
from scenesearch.methods import FitContext, Fitted, Method, MethodConfig


@dataclass(frozen=True)
class HistogramConfig(MethodConfig):
    bins: int = 4  # per channel: bins**3 cells

    def validate(self, prefix: str) -> None:
        if not 2 <= self.bins <= 16:
            raise ConfigError(f"{prefix}.bins must be in [2, 16], got {self.bins}")


def histograms(images: np.ndarray, bins: int) -> np.ndarray:
    """(N, 3, H, W) in [0, 1] -> (N, bins**3) normalised joint colour histograms."""
    q = np.clip((np.asarray(images) * bins).astype(np.int64), 0, bins - 1)  # (N, 3, H, W)
    cells = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]  # (N, H, W)
    out = np.stack([np.bincount(c.ravel(), minlength=bins**3) for c in cells]).astype(np.float32)
    return out / out.sum(axis=1, keepdims=True)


class HistogramRetriever:
    def __init__(self, meta: dict):
        self.bins, self.image_size = int(meta["bins"]), int(meta["image_size"])

    def embed(self, images):
        import torch

        return torch.from_numpy(histograms(images.numpy(), self.bins))

    def score(self, queries, gallery):
        q, g = queries[:, None, None, :].double(), gallery[None].double()  # (Q, 1, 1, k), (1, S, V, k)
        chi2 = ((q - g) ** 2 / (q + g + 1e-12)).sum(-1)  # (Q, S, V)
        return chi2.amin(dim=2).float()


def fit(ctx: FitContext) -> Fitted:
    images = storage.read_array(Path(ctx.inputs.need("images", "colour_histogram")) / "images.npy", mmap=True)
    clusters = storage.read_table(Path(ctx.inputs.need("clusters", "colour_histogram")) / "clusters.parquet")
    n_clusters = len(set(clusters.column("cluster").to_pylist()))
    emb = np.concatenate([histograms(images[i : i + 256], ctx.config.bins) for i in range(0, len(images), 256)])
    meta = {"bins": ctx.config.bins, "image_size": int(images.shape[-1])}
    (ctx.out_dir / "histogram.json").write_text(json.dumps(meta))
    return Fitted(emb, meta, metrics={"n_clusters_seen": n_clusters}, params={"bins": str(ctx.config.bins)})


def load(folder: Path, meta: dict) -> HistogramRetriever:
    return HistogramRetriever(json.loads((Path(folder) / "histogram.json").read_text()))


METHOD = Method(
    name="colour_histogram",
    summary="joint RGB histogram, min-view chi-squared distance (a test plugin)",
    config=HistogramConfig,
    consumes=("images", "clusters"),
    fit=fit,
    load=load,
)

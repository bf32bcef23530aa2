"""Post-processing any descriptor method can take (vgg_baseline's options, pooled's variant names):

* whitening, L2 -> whitening -> L2, learned on the train split only (`scenesearch.whitening`):
  ``pca`` (unsupervised PCA-whitening) or ``learned`` (Radenović et al.'s from same-class pairs of
  train queries and renders);
* query expansion at query time (`scenesearch.rerank`): ``average`` (AQE, Chum et al.) or ``alpha``
  (alpha-QE, weights = similarity^alpha);
* diffusion re-ranking (Iscen et al. 2017), truncated to the query's nearest views.

Without query expansion and diffusion the gallery is searched through `scenesearch.index`
(``retrieve.index``); query expansion and diffusion find their neighbours by brute force.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scenesearch import storage
from scenesearch.errors import ConfigError
from scenesearch.methods.base import MethodConfig

WHITEN = ("none", "pca", "learned")
QUERY_EXPANSION = ("none", "average", "alpha")
WHITENING_FILE = "whitening.npz"


@dataclass(frozen=True)
class PostConfig(MethodConfig):
    """The settings of the post-processing steps (``methods.<name>.*``); which steps run is a `Post`."""

    whiten_dim: int = 0  # components kept by the whitening; 0: all above the eigenvalue floor
    whiten_shrinkage: float = 1.0  # eigenvalues^(-s/2): 1 full whitening, 0 a PCA rotation only
    qe_n: int = 5  # query expansion: gallery views averaged into the query
    qe_alpha: float = 3.0  # alpha-QE: weight of a view = similarity^alpha
    diffusion_k: int = 10  # neighbours per view in the affinity graph
    diffusion_truncate: int = 200  # views diffused over per query: memory O(truncate^2), not O(gallery^2)
    diffusion_alpha: float = 0.99
    diffusion_gamma: float = 3.0  # affinities are similarities^gamma

    def validate(self, prefix: str) -> None:
        if not isinstance(self.whiten_dim, int) or self.whiten_dim < 0:
            raise ConfigError(f"{prefix}.whiten_dim must be an integer >= 0, got {self.whiten_dim!r}")
        for name in ("qe_n", "diffusion_k", "diffusion_truncate"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{prefix}.{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if not 0.0 <= self.whiten_shrinkage <= 1.0:
            raise ConfigError(f"{prefix}.whiten_shrinkage must be in [0, 1], got {self.whiten_shrinkage}")
        if not 0.0 < self.diffusion_alpha < 1.0:
            raise ConfigError(f"{prefix}.diffusion_alpha must be in (0, 1), got {self.diffusion_alpha}")
        for name in ("qe_alpha", "diffusion_gamma"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{prefix}.{name} must be > 0, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class Post:
    """Which post-processing steps run."""

    whiten: str = "none"  # none | pca | learned
    query_expansion: str = "none"  # none | average | alpha
    diffusion: bool = False

    def params(self) -> dict[str, str]:
        return {"whiten": self.whiten, "query_expansion": self.query_expansion, "diffusion": str(self.diffusion).lower()}


def check(post: Post, prefix: str) -> None:
    """ConfigError naming the field of a bad choice."""
    if post.whiten not in WHITEN:
        raise ConfigError(f"{prefix}.whiten must be one of {list(WHITEN)}, got {post.whiten!r}")
    if post.query_expansion not in QUERY_EXPANSION:
        raise ConfigError(f"{prefix}.query_expansion must be one of {list(QUERY_EXPANSION)}, got {post.query_expansion!r}")


def train_rows(index: dict) -> np.ndarray:
    """Rows the whitening may learn from: the train split (queries and renders)."""
    return np.asarray(index["split"]) == "train"


def fit_whitening(kind: str, cfg: PostConfig, x: np.ndarray, index: dict, seed: int):
    """The whitening `kind` (pca | learned) fitted on the train rows of `x` (N, d); None for none.

    Learned whitening pairs every labelled train row with another train row of its class (labels
    the method may not see are blank in its index, so unseen classes never enter).
    """
    from scenesearch import whitening

    if kind == "none":
        return None
    train = train_rows(index)
    dim = cfg.whiten_dim or None
    if kind == "pca":
        return whitening.pca_whitening(x[train], dim=dim, shrinkage=cfg.whiten_shrinkage)
    labels = np.asarray(index["label"])[train]
    pairs = whitening.same_class_pairs(labels, np.random.default_rng(seed), per_row=1)
    return whitening.learned_whitening(x[train], pairs, dim=dim)


def save_whitening(out_dir: Path, w) -> None:
    if w is not None:
        storage.write_bytes(Path(out_dir) / WHITENING_FILE, w.to_bytes())


def load_whitening(folder: Path, post: Post):
    from scenesearch.whitening import Whitening

    return Whitening.from_bytes(storage.read_bytes(Path(folder) / WHITENING_FILE)) if post.whiten != "none" else None


def meta(post: Post, cfg: PostConfig, run) -> dict:
    """What a retriever needs to score as configured (kept in the model's method.json)."""
    return {"post": dataclasses.asdict(post), "post_config": dataclasses.asdict(cfg), "index": run.retrieve.index, "index_k": run.retrieve.index_k}


class Scorer:
    """Scores queries (Q, d) against views (S, V, d) of one descriptor: query expansion, then
    diffusion or a search of the views (`scenesearch.index`), min over each scene's views."""

    def __init__(self, meta: dict):
        self.post = Post(**meta["post"])
        self.cfg = dict(meta["post_config"])
        self.index, self.index_k = meta.get("index", "exact-numpy"), int(meta.get("index_k", 1000))

    def __call__(self, queries, gallery):
        from scenesearch import index, rerank

        c = self.cfg
        if self.post.query_expansion != "none":
            alpha = 0.0 if self.post.query_expansion == "average" else float(c["qe_alpha"])
            queries = rerank.query_expansion(queries, gallery, n=int(c["qe_n"]), alpha=alpha)
        if self.post.diffusion:
            return rerank.diffusion_distances(queries, gallery, k=int(c["diffusion_k"]), truncate=int(c["diffusion_truncate"]),
                                              alpha=float(c["diffusion_alpha"]), gamma=float(c["diffusion_gamma"]))
        return index.min_view_distances(queries, gallery, kind=self.index, k=self.index_k)

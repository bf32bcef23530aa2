"""The features step: VGG16 multi-layer descriptors of every preprocessed image, then PCA.

PCA (scikit-learn) is fitted on the training split only and applied to everything. Outputs:
``features.npy`` (N, d) float32 with row i matching row i of ``index.parquet`` (copied over),
and ``pca.npz`` (mean, components, explained_variance_ratio) so a query can be projected later.

With ``weights: selfsup`` the step first trains the VGG16 backbone without labels
(`pretrain`, scenesearch.features.selfsup) and extracts the descriptors with it; the output then
also holds ``backbone.pt`` (a torchvision VGG16 state dict, what `resolve_weights` points the
methods at) and ``selfsup.json`` (the training stats). Sharded: `pretrain` once, `describe` each
shard with ``weights=<pretrain out>/backbone.pt``, then `merge` with ``backbone_dir``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from scenesearch import storage
from scenesearch.config import AugmentConfig, FeaturesConfig
from scenesearch.errors import ConfigError, DataError

if TYPE_CHECKING:
    from sklearn.decomposition import PCA

# Importing this package imports no torch or scikit-learn (config validation imports it for these
# names); the functions that run a network or fit PCA import those libraries themselves.
MAPS = {"pool4": 23, "conv5_3": 29}  # VGG16 conv maps kept for the pooling methods: name -> index in .features
SELFSUP = "selfsup"  # features.weights trained by the features step itself
POOLINGS = ("mac", "spoc", "gem", "rmac")  # the global poolings of `scenesearch.features.pooling`

BACKBONE_FILE = "backbone.pt"  # weights: selfsup, the trained torchvision VGG16 state dict
SELFSUP_FILE = "selfsup.json"  # its training stats (SelfSupStats)
MAPS_FILE = "maps.json"  # keep_maps: the input size and weights of <map>.npy (pool4.npy, conv5_3.npy)


def fit_pca(x: np.ndarray, train_mask: np.ndarray, dim: int, seed: int = 0) -> PCA:
    """Fit PCA on the rows where `train_mask` holds; dim is capped by the training rows and columns.

    Raises:
        DataError: no training rows.
    """
    train = x[train_mask]
    if len(train) < 2:
        raise DataError(f"PCA needs at least 2 training images, got {len(train)}")
    from sklearn.decomposition import PCA

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
    selfsup: dict | None = None  # weights: selfsup, the pretraining stats (SelfSupStats.to_dict)

    def metrics(self) -> dict[str, float]:
        out = {"feature_dim": self.dim, "features_images_per_s": self.images_per_s, "pca_explained_variance": self.explained_variance}
        if self.selfsup:
            s = self.selfsup
            out.update({"selfsup_epochs": s["epochs"], "selfsup_images": s["n_images"], "selfsup_first_loss": s["first_loss"], "selfsup_final_loss": s["final_loss"],
                        "selfsup_chance_loss": s["chance_loss"], "selfsup_final_top1": s["final_top1"], "selfsup_seconds": s["seconds"],
                        "selfsup_images_per_s": s["images_per_s"]})
        return out


def resolve_weights(weights: str, features_dir: str | None) -> str:
    """What to pass to `build_descriptor` for the option `features.weights`: ``selfsup`` becomes the
    features step's ``<features_dir>/backbone.pt``; none, imagenet and paths are returned as they are.

    Raises:
        ConfigError: selfsup without a features folder.
    """
    if weights != SELFSUP:
        return weights
    if not features_dir:
        raise ConfigError("features.weights=selfsup: the trained weights are the features step's backbone.pt, but no features output folder was given")
    return str(Path(features_dir) / BACKBONE_FILE)


def pretrain(preprocessed_dir: str, out_dir: str, cfg: FeaturesConfig, seed: int = 0, augment: AugmentConfig | None = None,
             render_background: tuple[float, float, float] = (1.0, 1.0, 1.0), progress: bool = True) -> dict:
    """Train the VGG16 backbone without labels (weights: selfsup) and write backbone.pt and selfsup.json.

    It trains on every scene render and the query images of the train split, unflipped, with
    their alpha masks from ``masks.npy`` when the preprocess step wrote one.

    Args:
        preprocessed_dir: the preprocess output (images.npy, index.parquet, maybe masks.npy).
        out_dir: where backbone.pt and selfsup.json go.
        cfg: the features section (its selfsup and device fields).
        seed: seeds the init, the order and the views.
        augment: the run's train.augment (the two views); None: the defaults.
        render_background: the run's render.background.

    Returns:
        The training stats (SelfSupStats.to_dict), also written to selfsup.json.
    """
    import io

    import torch

    from scenesearch.domains import SCENE
    from scenesearch.features.selfsup import train_backbone, training_rows
    from scenesearch.features.vgg import resolve_device

    src, dst = Path(preprocessed_dir), Path(out_dir)
    index = storage.read_table(src / "index.parquet")
    domain = np.asarray(index.column("domain").to_pylist())
    rows = training_rows(domain, np.asarray(index.column("split").to_pylist()), np.asarray(index.column("flip").to_pylist(), dtype=bool))
    rows = np.flatnonzero(rows)
    c = cfg.selfsup
    if c.max_images and len(rows) > c.max_images:
        rows = np.sort(np.random.default_rng(seed).choice(rows, c.max_images, replace=False))
    images = storage.read_array(src / "images.npy", mmap=True)
    masks = storage.read_array(src / "masks.npy", mmap=True)[rows] if storage.exists(src / "masks.npy") else None
    vgg, stats = train_backbone(np.array(images[rows], dtype=np.float32), masks, domain[rows] == SCENE, c, seed,
                                resolve_device(cfg.device), augment, render_background, progress=progress)
    buf = io.BytesIO()
    torch.save(vgg.state_dict(), buf)
    storage.write_bytes(dst / BACKBONE_FILE, buf.getvalue())
    storage.write_bytes(dst / SELFSUP_FILE, json.dumps(stats.to_dict()).encode())
    return stats.to_dict()


def describe(preprocessed_dir: str, cfg: FeaturesConfig, seed: int = 0, shard: int = 0, n_shards: int = 1,
             weights: str | None = None) -> tuple[np.ndarray, float, str, dict[str, np.ndarray]]:
    """VGG16 descriptors of the contiguous block `shard` of `n_shards` of the images.

    Args:
        weights: overrides cfg.weights; with selfsup, the path of `pretrain`'s backbone.pt.

    Returns:
        (descriptors (n, 5376) float32, images per second, device name, and with cfg.keep_maps the
        conv maps {pool4, conv5_3} (n, 512, h, w) float16, else {}).

    Raises:
        ConfigError: cfg.weights is selfsup and `weights` does not name the trained backbone.
    """
    import torch

    from scenesearch.features.vgg import build_descriptor, extract_maps, resolve_device
    from scenesearch.sharding import block

    images = storage.read_array(Path(preprocessed_dir) / "images.npy", mmap=True)
    rows = block(len(images), shard, n_shards)
    device = resolve_device(cfg.device)
    model = build_descriptor(weights or cfg.weights, seed)
    start = time.perf_counter()
    desc, maps = extract_maps(model, torch.from_numpy(np.array(images[rows], dtype=np.float32)), cfg.batch_size, device, cfg.input_size,
                              keep_maps=cfg.keep_maps)
    for name, m in maps.items():
        if not torch.isfinite(m).all():
            raise DataError(f"the VGG16 {name} maps overflow float16 (largest {m.float().abs().max():.3g}); set features.keep_maps: false")
    return desc.numpy(), (rows.stop - rows.start) / max(time.perf_counter() - start, 1e-9), str(device), {k: v.numpy() for k, v in maps.items()}


def write_descriptors(out_dir: str, desc: np.ndarray, rate: float, device: str, maps: dict[str, np.ndarray] | None = None) -> None:
    storage.write_array(Path(out_dir) / "descriptors.npy", desc)
    for name, m in (maps or {}).items():
        storage.write_array(Path(out_dir) / f"{name}.npy", m)
    storage.write_bytes(Path(out_dir) / "describe.json", json.dumps({"images_per_s": rate, "device": device, "n_images": len(desc)}).encode())


def write_maps(out_dir: str, maps: dict[str, np.ndarray], cfg: FeaturesConfig) -> None:
    """The kept conv maps and maps.json (what produced them), for `read_maps`."""
    for name, m in maps.items():
        storage.write_array(Path(out_dir) / f"{name}.npy", m)
    storage.write_bytes(Path(out_dir) / MAPS_FILE, json.dumps({"input_size": cfg.input_size, "weights": cfg.weights, "maps": sorted(maps)}).encode())


def read_maps(features_dir: str, name: str, input_size: int) -> np.ndarray | None:
    """The features step's kept conv map `name` (memory-mapped float16) when it kept maps at
    `input_size`, else None (the caller computes them)."""
    path = Path(features_dir) / MAPS_FILE
    if not storage.exists(path):
        return None
    info = json.loads(storage.read_bytes(path))
    if info["input_size"] != input_size or name not in info["maps"]:
        return None
    return storage.read_array(Path(features_dir) / f"{name}.npy", mmap=True)


def finish(preprocessed_dir: str, desc: np.ndarray, out_dir: str, cfg: FeaturesConfig, seed: int, rate: float, device: str,
           selfsup: dict | None = None, maps: dict[str, np.ndarray] | None = None) -> FeaturesResult:
    """Fit PCA on the train rows of the descriptors, write features.npy, index.parquet, pca.npz
    (and the kept conv maps with maps.json).

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
    if maps:
        write_maps(out_dir, maps, cfg)
    storage.write_bytes(dst / "index.parquet", storage.read_bytes(src / "index.parquet"))
    return FeaturesResult(len(feats), feats.shape[1], cfg.weights, device, rate, float(pca.explained_variance_ratio_.sum()), selfsup=selfsup)


def merge(preprocessed_dir: str, shard_dirs: list[str], out_dir: str, cfg: FeaturesConfig, seed: int = 0,
          backbone_dir: str | None = None) -> FeaturesResult:
    """Join descriptor shards (in shard order = image order), then `finish`.

    Args:
        backbone_dir: weights selfsup: `pretrain`'s output, whose backbone.pt and selfsup.json
            are copied into `out_dir` (the shards must have been described with that backbone.pt).

    Raises:
        ConfigError: weights selfsup without `backbone_dir`.
    """
    selfsup = None
    if cfg.weights == SELFSUP:
        if not backbone_dir:
            raise ConfigError("features.weights=selfsup: merging the shards needs the pretrained backbone's folder (backbone_dir), but none was given")
        selfsup = _copy_backbone(backbone_dir, out_dir)
    desc = np.concatenate([storage.read_array(Path(d) / "descriptors.npy") for d in shard_dirs])
    maps = {name: np.concatenate([storage.read_array(Path(d) / f"{name}.npy") for d in shard_dirs]) for name in MAPS} if cfg.keep_maps else None
    stats = [json.loads(storage.read_bytes(Path(d) / "describe.json")) for d in shard_dirs]
    rate = sum(s["images_per_s"] for s in stats)  # shards run side by side on a cluster
    slowest = max(s["n_images"] / max(s["images_per_s"], 1e-9) for s in stats)
    return dataclasses.replace(finish(preprocessed_dir, desc, out_dir, cfg, seed, rate, stats[0]["device"], selfsup, maps), shard_seconds=slowest)


def run(preprocessed_dir: str, out_dir: str, cfg: FeaturesConfig, seed: int = 0, augment: AugmentConfig | None = None,
        render_background: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> FeaturesResult:
    """Extract descriptors, fit PCA on the train split, write features.npy, index.parquet, pca.npz.

    With weights selfsup, `pretrain` first (into `out_dir`) with `augment` (the run's train.augment)
    and `render_background` (render.background), then describe with its backbone.pt.
    """
    selfsup, weights = None, None
    if cfg.weights == SELFSUP:
        selfsup = pretrain(preprocessed_dir, out_dir, cfg, seed, augment, render_background)
        weights = resolve_weights(SELFSUP, out_dir)
    desc, rate, device, maps = describe(preprocessed_dir, cfg, seed, weights=weights)
    return finish(preprocessed_dir, desc, out_dir, cfg, seed, rate, device, selfsup, maps)


def _copy_backbone(backbone_dir: str, out_dir: str) -> dict:
    """Copy backbone.pt and selfsup.json from `pretrain`'s folder into the features output; the stats."""
    src, dst = Path(backbone_dir), Path(out_dir)
    stats = storage.read_bytes(src / SELFSUP_FILE)
    if src != dst:
        storage.write_bytes(dst / BACKBONE_FILE, storage.read_bytes(src / BACKBONE_FILE))
        storage.write_bytes(dst / SELFSUP_FILE, stats)
    return json.loads(stats)

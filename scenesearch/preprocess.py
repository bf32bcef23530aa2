"""Preprocessing: 64x64, values in [0, 1], horizontal flips; one function for renders and query images.

The step writes ``images.npy`` (N, 3, size, size) float32, ``masks.npy`` (N, 1, size, size) uint8
and ``index.parquet`` with one row per image: item_id, label, domain, split, class_split, view (-1
for query images), flip. Row i of the index describes image i and mask i: first every render,
then the query images of every domain (photo, sketch) in manifest order, each followed by its flip.

A render's mask is its coverage from the render step (0 background .. 255 scene), resized and
flipped exactly like its image; it is what training composites new backgrounds through
(`scenesearch.augment`). A query image's mask is 255 everywhere (a photo is all foreground:
nothing to composite), and so is a render's from a views.parquet of before masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from scenesearch import storage
from scenesearch.config import PreprocessConfig
from scenesearch.domains import SCENE, SEEN
from scenesearch.io import decode_image, decode_mask, write_rejected
from scenesearch.errors import DataError, ItemError

INDEX_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("label", pa.string()),
        ("domain", pa.string()),
        ("split", pa.string()),
        ("class_split", pa.string()),
        ("view", pa.int32()),
        ("flip", pa.bool_()),
    ]
)


def resize_image(img: np.ndarray, size: int = 64) -> torch.Tensor:
    """uint8 (H, W, C) array -> float32 (C, size, size) tensor in [0, 1], resized with antialiasing.

    Bit for bit what torchvision's v2 ToImage -> Resize(antialias=True) -> ToDtype(float32,
    scale=True) gives a uint8 image (tests/unit/test_preprocess.py compares them), without
    importing torchvision, which costs every query and every task about 1.5 s.

    Raises:
        TypeError: the array is not uint8.
    """
    if img.dtype != np.uint8:
        raise TypeError(f"preprocess takes uint8 images, got {img.dtype}")
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)  # (C, H, W) uint8
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    return x.to(torch.float32).mul_(1.0 / 255)


def preprocess_images(images: list[np.ndarray], size: int = 64, flips: bool = True) -> torch.Tensor:
    """Resize and scale a list of uint8 RGB images; with flips, each image is followed by its mirror.

    Args:
        images: (H, W, 3) uint8 arrays of any size.
        size: output side.
        flips: append the horizontal flip of each image right after it.

    Returns:
        (len(images) * (2 if flips else 1), 3, size, size) float32 tensor in [0, 1].
    """
    out = []
    for img in images:
        x = resize_image(img, size)
        out.append(x)
        if flips:
            out.append(x.flip(-1))
    return torch.stack(out) if out else torch.empty((0, 3, size, size))


def preprocess_masks(masks: list[np.ndarray | None], size: int = 64, flips: bool = True) -> np.ndarray:
    """Resize masks exactly as `preprocess_images` resizes images; with flips, each followed by its mirror.

    Args:
        masks: (H, W) uint8 arrays of any size, or None for an image without a mask (all 255).
        size: output side.
        flips: append the horizontal flip of each mask right after it.

    Returns:
        (len(masks) * (2 if flips else 1), 1, size, size) uint8.
    """
    per = 2 if flips else 1
    out = np.full((len(masks) * per, 1, size, size), 255, dtype=np.uint8)
    for i, m in enumerate(masks):
        if m is not None:
            x = to_uint8(preprocess_images([m[..., None]], size, flips).numpy())  # the images' own resize, one channel
            out[i * per : (i + 1) * per] = x
    return out


@dataclass(frozen=True)
class PreprocessResult:
    n_images: int
    n_rejected: int

    def metrics(self) -> dict[str, float]:
        return {"n_images": self.n_images, "n_preprocess_rejected": self.n_rejected}


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Preprocessed pixels in [0, 1] back to uint8 (rounded, clipped); any layout."""
    return np.clip(np.rint(np.asarray(x, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def run(manifest_dir: str, views_dir: str, out_dir: str, cfg: PreprocessConfig) -> PreprocessResult:
    """Preprocess every render and every query image (every domain but scenes).

    Args:
        manifest_dir: the ingest output (manifest.parquet).
        views_dir: the render output (views.parquet).
        out_dir: where images.npy, masks.npy, index.parquet and rejected.parquet go.
        cfg: output size and flips.

    Returns:
        Counts of images written and of query images rejected.

    Raises:
        DataError: nothing could be preprocessed.
    """
    manifest = {r["item_id"]: r for r in storage.read_table(Path(manifest_dir) / "manifest.parquet").to_pylist()}
    views = storage.read_table(Path(views_dir) / "views.parquet").to_pylist()
    sources: list[tuple[dict, int, np.ndarray, np.ndarray | None]] = []  # (manifest row, view, image, mask)
    rejected = []
    for v in views:
        mask = decode_mask(v["item_id"], v["mask"]) if v.get("mask") is not None else None  # views of before masks: None
        sources.append((manifest[v["item_id"]], v["view"], decode_image(v["item_id"], v["png"]), mask))
    for r in manifest.values():
        if r["domain"] == SCENE:
            continue
        try:
            sources.append((r, -1, decode_image(r["item_id"], storage.read_bytes(r["uri"])), None))
        except (ItemError, DataError) as e:
            rejected.append((r["uri"], str(e)))
    if not sources:
        raise DataError("nothing to preprocess: no rendered view and no readable query image")
    images = preprocess_images([s[2] for s in sources], cfg.size, cfg.flips).numpy()
    masks = preprocess_masks([s[3] for s in sources], cfg.size, cfg.flips)
    flips = (False, True) if cfg.flips else (False,)
    index = [
        {
            "item_id": r["item_id"],
            "label": r["label"],
            "domain": r["domain"],
            "split": r["split"],
            "class_split": r.get("class_split") or SEEN,  # manifests from before class splits: every class seen
            "view": view,
            "flip": f,
        }
        for r, view, _, _ in sources
        for f in flips
    ]
    storage.write_array(Path(out_dir) / "images.npy", images)
    storage.write_array(Path(out_dir) / "masks.npy", masks)
    storage.write_table(Path(out_dir) / "index.parquet", pa.Table.from_pylist(index, schema=INDEX_SCHEMA))
    write_rejected(Path(out_dir) / "rejected.parquet", rejected)
    return PreprocessResult(len(index), len(rejected))

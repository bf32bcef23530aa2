"""What the methods over VGG16 conv maps share (pooled, siamese_gem, triplet_gem): the maps of
every index row and, for a served model, of a new image.

A method's own ``input_size`` (0: ``features.input_size``) sets the map size: conv5_3 is 4x4 at 64 px
and 14x14 at 224. When the features step kept its maps (``features.keep_maps``) at that size they
are read from its output; otherwise the method runs the VGG16 trunk itself on the preprocessed
images (logged, since on a CPU that costs about as much as the features step).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from scenesearch.methods.base import FitContext, read_array_rows

log = logging.getLogger(__name__)


def input_size(ctx: FitContext) -> int:
    return int(ctx.config.input_size) or ctx.run.features.input_size


def lazy_trunk(ctx: FitContext):
    """() -> the run's VGG16 descriptor (`vgg_baseline.build_trunk`), built on the first call only:
    with kept maps and random-init weights a fit needs none."""
    import functools

    from scenesearch.methods.vgg_baseline import build_trunk

    return functools.cache(lambda: build_trunk(ctx))


def row_maps(ctx: FitContext, name: str, trunk) -> np.ndarray:
    """The conv map `name` (pool4 | conv5_3) of every row of ctx.index: (N, 512, h, w) float16;
    `trunk()` (see `lazy_trunk`) computes them when the features step kept none at this size."""
    import torch

    from scenesearch.features import read_maps
    from scenesearch.features.vgg import conv_maps, resolve_device

    size, folder = input_size(ctx), ctx.inputs.features
    kept = read_maps(folder, name, size) if folder else None
    if kept is not None and len(kept) == ctx.index.num_rows:
        return kept
    log.info("%s: computing VGG16 %s maps at %d px (the features step kept none at this size: features.keep_maps)", ctx.entry.key, name, size)
    images = read_array_rows(ctx.inputs.images, "images.npy", ctx.index)
    f = ctx.run.features
    return conv_maps(trunk(), torch.from_numpy(np.asarray(images, dtype=np.float32)), name, f.batch_size, resolve_device(f.device), size,
                     progress=ctx.progress).numpy()


def fit_meta(ctx: FitContext, trunk) -> dict:
    """Save the trunk's weights (`vgg_baseline.save_weights`); the meta with this method's input size."""
    from scenesearch.methods.vgg_baseline import save_weights

    meta = save_weights(ctx, trunk)
    meta["input_size"] = input_size(ctx)
    return meta


class Trunk:
    """The frozen VGG16 trunk of a model folder: images -> conv maps, for a served model."""

    def __init__(self, folder: Path, meta: dict):
        self.folder, self.meta = Path(folder), meta
        self.image_size = int(meta["image_size"])
        self._net = None

    @property
    def net(self):
        if self._net is None:
            from scenesearch.methods.vgg_baseline import load_descriptor

            self._net = load_descriptor(self.folder, self.meta)
        return self._net

    def maps(self, images, name: str):
        """(B, 3, H, W) in [0, 1] -> (B, 512, h, w) float32 maps on the CPU."""
        import torch

        from scenesearch.features.vgg import conv_maps

        return conv_maps(self.net, images, name, int(self.meta["batch_size"]), torch.device("cpu"), int(self.meta["input_size"])).float()


def batches(x: np.ndarray, size: int = 256):
    """Row blocks of a (possibly memory-mapped float16) array as float32 tensors."""
    import torch

    for start in range(0, len(x), size):
        yield start, torch.from_numpy(np.asarray(x[start : start + size], dtype=np.float32))

"""What `siamese_gem` and `triplet_gem` share: fine-tuning VGG16's conv5 block + GeM (learnable p)
for retrieval on tuples with hard negatives (Radenović, Tolias & Chum, TPAMI 2018).

Anchors are train queries (every domain, both flips) and train renders; the positive is a render
of the anchor's class (query-render and render-render pairs); the negative the hardest other-class
render of a pool re-drawn and re-embedded by the current network every epoch
(`scenesearch.models.feature_train.MinedPairData`). The network takes pool4 maps, so conv1..conv4
stay frozen and a CPU trains it on the features step's kept maps (`features.keep_maps`); on a GPU
the loop runs under bf16 autocast (``train.precision``). Training, checkpoint/resume, per-epoch
metrics and early stopping on val mAP are the descriptor-pair loop's (`_descriptors.fit_pairs`).
A served model runs the frozen trunk to pool4 on the image, then the fine-tuned network.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from scenesearch.errors import ConfigError
from scenesearch.methods import _descriptors, _maps
from scenesearch.methods.base import FitContext, Fitted, MethodConfig


@dataclass(frozen=True)
class FineTuneConfig(MethodConfig):
    input_size: int = 0  # VGG16 input side; 0: features.input_size (then the features step's kept maps are used)
    margin: float = 0.7  # contrastive: negatives pushed beyond it; triplet: alpha
    p: float = 3.0  # GeM's initial exponent, learnt with the network
    tuples: int = 256  # (anchor, positive, mined negative) tuples per epoch
    pool_size: int = 1000  # renders the hardest negatives are mined from, re-drawn every epoch
    epochs: int = 4  # overrides train.epochs (0: train.epochs): a short schedule on a CPU
    lr: float = 1e-4  # overrides train.lr (0: train.lr); fine-tuning wants a small step

    def validate(self, prefix: str) -> None:
        if self.input_size != 0 and self.input_size < 32:
            raise ConfigError(f"{prefix}.input_size must be 0 (features.input_size) or >= 32, got {self.input_size}")
        _descriptors.positive(self, prefix, "margin", "tuples", "pool_size")
        if not self.p >= 1.0:
            raise ConfigError(f"{prefix}.p must be >= 1, got {self.p}")
        for name in ("epochs", "lr"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{prefix}.{name} must be >= 0 (0: the train section's), got {getattr(self, name)}")


class Head:
    """One network for queries and renders; min-view cosine distance."""

    def __init__(self, net, meta: dict):
        self.net = net

    def embed_queries(self, x):
        return self.net(x).float().cpu()

    embed_renders = embed_queries

    def score(self, queries, gallery):
        from scenesearch.distances import min_view_cosine_distances

        return min_view_cosine_distances(queries, gallery)


def build(meta: dict, init=None):
    """The GeMNet; its conv5 block copied from `init` (a VGGDescriptor) when given, else untrained."""
    import copy

    from torchvision.models import vgg16

    from scenesearch.features.vgg import MAPS
    from scenesearch.models.feature_nets import GeMNet

    features = init.features if init is not None else vgg16(weights=None).features
    return GeMNet(copy.deepcopy(features[MAPS["pool4"] + 1 : MAPS["conv5_3"] + 1]), float(meta["config"]["p"]))


def pool4_rows(ctx: FitContext, trunk):
    import torch

    maps = _maps.row_maps(ctx, "pool4", trunk)
    return torch.from_numpy(maps.copy() if not maps.flags.writeable else maps), _maps.fit_meta(ctx, trunk)


def pool4_encoder(folder: Path, meta: dict):
    trunk = _maps.Trunk(folder, meta)
    return (lambda images: trunk.maps(images, "pool4")), trunk.image_size


def fit(ctx: FitContext, step: Callable) -> Fitted:
    from scenesearch.models.feature_train import mined

    c, f = ctx.config, ctx.run.features
    trunk = _maps.lazy_trunk(ctx)
    init = trunk()  # one VGG16: the fine-tuned block's start, and the maps and saved weights when they need it

    def hook(data, model):
        out = mined(data, c.tuples, c.pool_size)
        out.model = model
        return out

    fitted = _descriptors.fit_pairs(ctx, lambda meta: build(meta, init), Head, step, rows=lambda ctx: pool4_rows(ctx, trunk), data_hook=hook)
    fitted.params.update(input_size=str(_maps.input_size(ctx)), trainable="conv5_1..conv5_3 + GeM p", weights=f.weights)
    return fitted


def load(folder: Path, meta: dict):
    return _descriptors.PairRetriever(folder, meta, build, Head, encoder=pool4_encoder)

"""`triplet`: the triplet-network baseline over the VGG descriptors (the zero-shot SBIR papers'
triplet network, on descriptors instead of a CNN).

The `siamese` two-branch head, trained with max(0, d(a, p) - d(a, n) + alpha): anchor a query,
positive a render of its class, negative the hardest in the batch (the render of another class
closest to the anchor, among the batch's positives and negatives; `scenesearch.losses`). Seen
classes only in a zero-shot split. Score: min-view cosine distance.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from scenesearch.methods import _descriptors
from scenesearch.methods.base import FitContext, Fitted, Method
from scenesearch.methods.siamese import EmbeddingHead, SiameseConfig, build


@dataclass(frozen=True)
class TripletConfig(SiameseConfig):
    margin: float = 0.2  # alpha


def triplet_step(net, batch, margin: float):
    import torch

    from scenesearch import losses

    a, p, n = net.query(batch.query), net.render(batch.render), net.render(batch.neg_render)
    loss = losses.hardest_negative_triplet(a, p, torch.cat([p, n]), batch.label, torch.cat([batch.label, batch.neg_label]), margin)
    return {"loss": loss}


def fit(ctx: FitContext) -> Fitted:
    margin = ctx.config.margin
    return _descriptors.fit_pairs(ctx, build, EmbeddingHead, lambda net, batch: triplet_step(net, batch, margin))


def load(folder: Path, meta: dict):
    return _descriptors.PairRetriever(folder, meta, build, EmbeddingHead)


METHOD = Method(
    name="triplet",
    summary="triplet baseline: two MLP branches over the descriptors, hardest-negative triplet loss, min-view cosine distance",
    config=TripletConfig,
    consumes=("features",),
    fit=fit,
    load=load,
    trains=True,
)

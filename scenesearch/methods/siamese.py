"""`siamese`: a two-branch metric-learning baseline over the VGG descriptors (the zero-shot SBIR
papers' siamese network, on descriptors instead of a CNN).

One small MLP per domain (queries, renders) into a shared L2-normalised space, trained on every
example's positive pair (query, render of its class) and negative pair (query, render of another
class) with the contrastive loss delta * d + (1 - delta) * max(0, m - d) (`scenesearch.losses`).
Seen classes only in a zero-shot split. Score: min over the scene's views of the cosine distance
(monotone in the Euclidean distance of unit vectors). `triplet` shares the head.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from scenesearch.methods import _descriptors
from scenesearch.methods.base import FitContext, Fitted, Method


@dataclass(frozen=True)
class SiameseConfig(_descriptors.PairMethodConfig):
    dim: int = 64  # embedding width
    margin: float = 1.0  # m: negatives are pushed to at least this distance (unit vectors: at most 2)
    dropout: float = 0.1

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        _descriptors.positive(self, prefix, "dim", "margin")
        if not 0.0 <= self.dropout < 1.0:
            from scenesearch.errors import ConfigError

            raise ConfigError(f"{prefix}.dropout must be in [0, 1), got {self.dropout}")


class EmbeddingHead:
    """Queries through the query branch, renders through the render branch; min-view cosine distance."""

    def __init__(self, net, meta: dict):
        self.net = net

    def embed_queries(self, x):
        return self.net.query(x).float().cpu()

    def embed_renders(self, x):
        return self.net.render(x).float().cpu()

    def score(self, queries, gallery):
        from scenesearch.distances import min_view_cosine_distances

        return min_view_cosine_distances(queries, gallery)


def build(meta: dict):
    from scenesearch.models.feature_nets import TwoBranchHead

    c = meta["config"]
    return TwoBranchHead(int(meta["d"]), int(c["hidden"]), int(c["dim"]), float(c["dropout"]))


def contrastive_step(net, batch, margin: float):
    from scenesearch import losses

    q = net.query(batch.query)
    pos = losses.contrastive(losses.l2(q, net.render(batch.render)), batch.label == batch.label, margin)
    neg = losses.contrastive(losses.l2(q, net.render(batch.neg_render)), batch.label == batch.neg_label, margin)
    return {"loss": 0.5 * (pos + neg), "positive": pos, "negative": neg}


def fit(ctx: FitContext) -> Fitted:
    margin = ctx.config.margin
    return _descriptors.fit_pairs(ctx, build, EmbeddingHead, lambda net, batch: contrastive_step(net, batch, margin))


def load(folder: Path, meta: dict):
    return _descriptors.PairRetriever(folder, meta, build, EmbeddingHead)


METHOD = Method(
    name="siamese",
    summary="siamese baseline: two MLP branches over the descriptors, contrastive loss, min-view cosine distance",
    config=SiameseConfig,
    consumes=("features",),
    fit=fit,
    load=load,
    trains=True,
)

"""`triplet_gem`: VGG16 conv5 + GeM fine-tuned with the triplet loss max(0, d(a, p) - d(a, n) + alpha)
on tuples whose negative is the hardest other-class render of a re-mined pool (Radenović et al.;
`scenesearch.methods._finetune`). Score: min-view cosine distance."""

from __future__ import annotations

from dataclasses import dataclass

from scenesearch.methods import _finetune
from scenesearch.methods.base import FitContext, Fitted, Method


@dataclass(frozen=True)
class TripletGeMConfig(_finetune.FineTuneConfig):
    margin: float = 0.1  # alpha (Radenović et al.'s triplet margin)


def triplet_step(net, batch, margin: float):
    from scenesearch import losses

    a = net(batch.query)
    loss = losses.triplet(losses.l2(a, net(batch.render)), losses.l2(a, net(batch.neg_render)), margin)
    return {"loss": loss}


def fit(ctx: FitContext) -> Fitted:
    margin = ctx.config.margin
    return _finetune.fit(ctx, lambda net, batch: triplet_step(net, batch, margin))


METHOD = Method(
    name="triplet_gem",
    summary="VGG16 conv5 + GeM fine-tuned, triplet loss with mined hard negatives, min-view cosine distance",
    config=TripletGeMConfig,
    consumes=("features",),
    fit=fit,
    load=_finetune.load,
    trains=True,
)

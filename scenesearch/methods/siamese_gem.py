"""`siamese_gem`: VGG16 conv5 + GeM fine-tuned with the contrastive loss on tuples with mined hard
negatives (Radenović et al.; `scenesearch.methods._finetune`): delta * d + (1 - delta) * max(0, m - d)
over the (anchor, positive) and (anchor, hardest negative) pairs. Score: min-view cosine distance."""

from __future__ import annotations

from dataclasses import dataclass

from scenesearch.methods import _finetune
from scenesearch.methods.base import FitContext, Fitted, Method
from scenesearch.methods.siamese import contrastive_step


@dataclass(frozen=True)
class SiameseGeMConfig(_finetune.FineTuneConfig):
    margin: float = 0.7


def fit(ctx: FitContext) -> Fitted:
    margin = ctx.config.margin
    return _finetune.fit(ctx, lambda net, batch: contrastive_step(net, batch, margin))


METHOD = Method(
    name="siamese_gem",
    summary="VGG16 conv5 + GeM fine-tuned, contrastive loss with mined hard negatives, min-view cosine distance",
    config=SiameseGeMConfig,
    consumes=("features",),
    fit=fit,
    load=_finetune.load,
    trains=True,
)

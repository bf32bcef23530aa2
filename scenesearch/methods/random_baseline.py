"""`random`: chance level. Every query gets an independent random ranking of the scenes (seeded).

It learns nothing and cannot answer a query image, so it is scored and reported but never served.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scenesearch.methods.base import FitContext, Fitted, Method, MethodConfig


@dataclass(frozen=True)
class RandomConfig(MethodConfig):
    pass


class RandomRetriever:
    image_size = 0

    def __init__(self, seed: int):
        self.seed = seed

    def embed(self, images):
        import torch

        return torch.zeros((len(images), 1))

    def score(self, queries, gallery):
        import torch

        from scenesearch.evaluation.metrics import random_distances

        return torch.from_numpy(random_distances(len(queries), len(gallery), self.seed))


def fit(ctx: FitContext) -> Fitted:
    return Fitted(np.zeros((ctx.index.num_rows, 1), np.float32), {"seed": ctx.run.seed})


def load(folder: Path, meta: dict) -> RandomRetriever:
    return RandomRetriever(int(meta["seed"]))


METHOD = Method(
    name="random",
    summary="chance level: a seeded random ranking per query",
    config=RandomConfig,
    consumes=(),
    fit=fit,
    load=load,
    serves=False,
)

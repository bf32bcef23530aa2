"""`zs_cvae`: the generative zero-shot CVAE of Yelamarthi et al. (ECCV 2018) over VGG descriptors.

Training pairs a query descriptor x_q (photo or sketch) with a render descriptor x_img of a scene
of the same seen class; encoder q(z | x_img, x_q), conditional prior p(z | x_q), decoder
p(x_img | z, x_q), and the regressor f_NN mapping a generated image descriptor back to its query:
loss = KL(q || p) - log p(x_img | z, x_q) + lam * ||f_NN(x_img_hat) - x_q||^2
(`scenesearch.models.feature_nets.ZeroShotGenerator`).

Retrieval: a query draws `n_samples` latents from p(z | x_q) (the same seeded draws for every
query), decodes them into image descriptors and clusters those into `n_centres` k-means centres
(scikit-learn); D(x_q, S) = min over the views v of S and the centres c of 1 - cos(c, f(v)).
A query row's embedding is its centres (K * d); a render row's is its own descriptor followed by
zeros to the same width (only its first d values are read).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from scenesearch.errors import ConfigError
from scenesearch.methods import _descriptors
from scenesearch.methods.base import FitContext, Fitted, Method


@dataclass(frozen=True)
class ZSCVAEConfig(_descriptors.PairMethodConfig):
    latent: int = 32
    lam: float = 1.0  # weight of the regulariser ||f_NN(x_img_hat) - x_q||^2
    n_samples: int = 100  # latents drawn from the prior per query at retrieval
    n_centres: int = 5  # k-means centres of the generated descriptors

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        _descriptors.positive(self, prefix, "latent", "n_samples", "n_centres")
        if self.lam < 0:
            raise ConfigError(f"{prefix}.lam must be >= 0, got {self.lam}")
        if self.n_centres > self.n_samples:
            raise ConfigError(f"{prefix}.n_centres ({self.n_centres}) must not exceed {prefix}.n_samples ({self.n_samples})")


def kmeans_centres(samples: np.ndarray, k: int, seed: int) -> np.ndarray:
    """(B, N, d) generated descriptors -> (B, k, d) k-means centres per query (scikit-learn, seeded)."""
    from sklearn.cluster import KMeans

    return np.stack([KMeans(n_clusters=k, n_init=1, random_state=seed).fit(s).cluster_centers_ for s in samples]).astype(np.float32)


def centre_distances(centres, gallery):
    """D[q, s] = min over centres c of query q and views v of scene s of 1 - cos(c, v).

    Args:
        centres: (Q, K, d); gallery: (S, V, d).

    Returns:
        (Q, S) float32 tensor.
    """
    from scenesearch.distances import min_view_cosine_distances

    return min_view_cosine_distances(centres.reshape(-1, centres.shape[-1]), gallery).view(centres.shape[0], centres.shape[1], -1).amin(dim=1)


class GenerativeHead:
    """Query -> k-means centres of its generated image descriptors; render -> its own descriptor."""

    def __init__(self, net, meta: dict):
        import torch

        c = meta["config"]
        self.net, self.k, self.d, self.seed = net, int(c["n_centres"]), int(meta["d"]), int(meta["seed"])
        self.eps = torch.randn(int(c["n_samples"]), net.latent, generator=torch.Generator().manual_seed(self.seed))

    def embed_queries(self, x):
        import torch

        samples = self.net.generate(x, self.eps.to(x.device)).float().cpu().numpy()
        return torch.from_numpy(kmeans_centres(samples, self.k, self.seed).reshape(len(x), self.k * self.d))

    def embed_renders(self, x):
        import torch

        return torch.cat([x.float().cpu(), torch.zeros(len(x), (self.k - 1) * self.d)], dim=1)

    def score(self, queries, gallery):
        return centre_distances(queries.float().view(len(queries), self.k, self.d), gallery[..., : self.d].float())


def build(meta: dict, adversarial: bool = False):
    from scenesearch.models.feature_nets import ZeroShotGenerator

    c = meta["config"]
    return ZeroShotGenerator(int(meta["d"]), int(c["latent"]), int(c["hidden"]), adversarial=adversarial)


def fit(ctx: FitContext, adversarial: bool = False) -> Fitted:
    lam = ctx.config.lam
    return _descriptors.fit_pairs(ctx, partial(build, adversarial=adversarial), GenerativeHead, lambda net, batch: net.losses(batch, lam))


def load(folder: Path, meta: dict, adversarial: bool = False):
    return _descriptors.PairRetriever(folder, meta, partial(build, adversarial=adversarial), GenerativeHead)


METHOD = Method(
    name="zs_cvae",
    summary="zero-shot CVAE (Yelamarthi et al. 2018): generated image descriptors of a query, k-means centres, min cosine distance",
    config=ZSCVAEConfig,
    consumes=("features",),
    fit=fit,
    load=load,
    trains=True,
)

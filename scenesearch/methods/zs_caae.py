"""`zs_caae`: the adversarial variant of the zero-shot CVAE (Yelamarthi et al., ECCV 2018).

As `zs_cvae`, with the KL term replaced by an adversarial one: a deterministic encoder
E(x_img, x_q) -> z, the prior N(0, I) and a discriminator D on z. The encoder and decoder minimise
-log p(x_img | z, x_q) + log(1 - D(E(x_img, x_q))) + lam * ||f_NN(x_img_hat) - x_q||^2; D maximises
log D(z_prior) + log(1 - D(E(x_img, x_q))) with its own optimiser. Retrieval decodes prior draws
with the query and scores like `zs_cvae` (k-means centres, min cosine distance).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from scenesearch.methods import zs_cvae
from scenesearch.methods.base import FitContext, Fitted, Method
from scenesearch.methods.zs_cvae import ZSCVAEConfig


@dataclass(frozen=True)
class ZSCAAEConfig(ZSCVAEConfig):
    pass


def fit(ctx: FitContext) -> Fitted:
    return zs_cvae.fit(ctx, adversarial=True)


def load(folder: Path, meta: dict):
    return zs_cvae.load(folder, meta, adversarial=True)


METHOD = Method(
    name="zs_caae",
    summary="zero-shot adversarial autoencoder (CAAE, Yelamarthi et al. 2018): a latent discriminator instead of the KL term",
    config=ZSCAAEConfig,
    consumes=("features",),
    fit=fit,
    load=load,
    trains=True,
)

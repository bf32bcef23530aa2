"""`parallel_vae`: parallel VAEs with semantic preservation for zero-shot retrieval (a draft on
zero-shot SBIR) over the VGG descriptors f = [fc7, GAP(conv5), GAP(conv4), GAP(conv3)] + PCA.

Encoders E_s^img (structure), E_a^img (appearance), E^q (query); decoders D^q, D^img and the
semantic decoder S (`scenesearch.models.feature_nets.ParallelVAE`). z_q = E_s^img(f_img),
z_img = [E_a^img(f_img), E^q(f_q)], f_q_hat = D^q(z_q), f_img_hat = D^img(z_img, f_q), s_hat = S(f_img_hat):

    loss = l1 (-ELBO_q) + l2 (-ELBO_img, prior p(z_img | f_q)) + l3 ||f_q_hat - f_q|| + l4 ||f_img_hat - f_img||
         + l5 |cos(E_s^img(f_img), E_a^img(f_img))|
         + l6 (1/2 d(E_s^img(f_img), E^q(f_q+)) + 1/2 max(0, m - d(E_s^img(f_img), E^q(f_q-))))
         + l7 ||s_hat - s||^2

The draft's "1 - D_cosine" term is read as pushing the structure and appearance codes apart; the
form chosen is |cos|, zero when they are orthogonal. f_q+ is the pair's query (same class), f_q- a
query of another class; codes are the encoders' means. Without semantics.csv the l7 term is off
(the run log and the MLflow param ``semantics`` say so).

Retrieval: a query decodes `n_samples` f_img_hat from p(z_img | f_q) (seeded draws) and averages
them; score = min over the scene's views of
omega * (1 - cos(f_img_hat, f_view)) + (1 - omega) * (1 - cos(E^q(f_q), E_s^img(f_view))).
Embeddings: a query row is [f_img_hat, E^q(f_q)], a render row [f_view, E_s^img(f_view)].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from scenesearch.errors import ConfigError
from scenesearch.methods import _descriptors
from scenesearch.methods.base import FitContext, Fitted, Method


@dataclass(frozen=True)
class ParallelVAEConfig(_descriptors.PairMethodConfig):
    latent: int = 32  # of each encoder (z_img is twice as wide)
    lambdas: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)  # l1..l7
    margin: float = 1.0  # m of the l6 term, a Euclidean distance between codes
    omega: float = 0.5  # weight of the generated-descriptor distance in the score
    n_samples: int = 16  # f_img_hat decoded and averaged per query

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        _descriptors.positive(self, prefix, "latent", "n_samples", "margin")
        if len(self.lambdas) != 7 or any(v < 0 for v in self.lambdas):
            raise ConfigError(f"{prefix}.lambdas must be seven weights >= 0 (l1..l7), got {list(self.lambdas)}")
        if not 0.0 <= self.omega <= 1.0:
            raise ConfigError(f"{prefix}.omega must be in [0, 1], got {self.omega}")


def weighted_view_distances(queries, gallery, d: int, omega: float, chunk: int = 128):
    """D[q, s] = min over views v of omega * (1 - cos(a_q, a_v)) + (1 - omega) * (1 - cos(b_q, b_v)),
    with rows [a (d) | b]. queries (Q, w), gallery (S, V, w) -> (Q, S) float32."""
    import torch

    def unit(x):
        return torch.nn.functional.normalize(x[..., :d].float(), dim=-1), torch.nn.functional.normalize(x[..., d:].float(), dim=-1)

    qa, qb = unit(queries)
    ga, gb = unit(gallery)
    out = torch.empty((len(queries), len(gallery)), dtype=torch.float32)
    for s0 in range(0, len(gallery), chunk):
        sim = omega * torch.einsum("qd,svd->qsv", qa, ga[s0 : s0 + chunk]) + (1 - omega) * torch.einsum("qd,svd->qsv", qb, gb[s0 : s0 + chunk])
        out[:, s0 : s0 + chunk] = 1.0 - sim.amax(dim=2)
    return out


class ParallelHead:
    def __init__(self, net, meta: dict):
        import torch

        c = meta["config"]
        self.net, self.d, self.omega = net, int(meta["d"]), float(c["omega"])
        self.eps = torch.randn(int(c["n_samples"]), 2 * net.latent, generator=torch.Generator().manual_seed(int(meta["seed"])))

    def embed_queries(self, x):
        import torch

        generated = self.net.generate(x, self.eps.to(x.device)).mean(dim=1)
        return torch.cat([generated, self.net.enc_query(x)[0]], dim=1).float().cpu()

    def embed_renders(self, x):
        import torch

        return torch.cat([x, self.net.enc_structure(x)[0]], dim=1).float().cpu()

    def score(self, queries, gallery):
        return weighted_view_distances(queries, gallery, self.d, self.omega)


def build(meta: dict):
    from scenesearch.models.feature_nets import ParallelVAE

    c = meta["config"]
    return ParallelVAE(int(meta["d"]), int(c["latent"]), int(c["hidden"]), int(meta["n_semantics"]))


def fit(ctx: FitContext) -> Fitted:
    c = ctx.config
    return _descriptors.fit_pairs(ctx, build, ParallelHead, lambda net, batch: net.losses(batch, tuple(c.lambdas), c.margin), semantics=True)


def load(folder: Path, meta: dict):
    return _descriptors.PairRetriever(folder, meta, build, ParallelHead)


METHOD = Method(
    name="parallel_vae",
    summary="parallel VAEs with semantic preservation: generated image descriptors + structure codes, min over views",
    config=ParallelVAEConfig,
    consumes=("features", "semantics"),
    fit=fit,
    load=load,
    trains=True,
)

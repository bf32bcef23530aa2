"""Networks over VGG descriptors (the features step's PCA-projected f = [fc7, GAP conv5/4/3]):
the zero-shot CVAE and CAAE (Yelamarthi et al., ECCV 2018), the parallel VAEs with semantic
preservation, and the two-branch embedding heads of the siamese and triplet baselines.

Every network here takes descriptors scaled by `scale_descriptors` (unit L2 norm times sqrt(d),
so a coordinate is about 1) and returns a dict of per-row loss terms from ``losses(batch)``; the
methods in `scenesearch.methods` weight, train and score them. A batch is a `PairBatch`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from scenesearch import losses

LOGVAR_RANGE = (-8.0, 6.0)  # clamp of every predicted log-variance: keeps exp() finite early in training


def scale_descriptors(x: torch.Tensor) -> torch.Tensor:
    """Rows at unit L2 norm times sqrt(d): cosine geometry kept, coordinates about 1 for the MSE terms."""
    return torch.nn.functional.normalize(x.float(), dim=-1) * math.sqrt(x.shape[-1])


@dataclass
class PairBatch:
    """Training rows, all (B, d) scaled descriptors: a query (photo or sketch) and a render of the
    same class, a render of another class and a query of another class; class ids (B,) of the pair
    and of the negatives, and the pair class's semantics vector (B, s) when the dataset has one."""

    query: torch.Tensor
    render: torch.Tensor
    neg_render: torch.Tensor
    neg_query: torch.Tensor
    label: torch.Tensor
    neg_label: torch.Tensor
    semantics: torch.Tensor | None = None


def mlp(sizes: list[int], out_activation: bool = False, dropout: float = 0.0) -> nn.Sequential:
    """Linear layers with LeakyReLU between them (and after the last with `out_activation`)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or out_activation:
            layers.append(nn.LeakyReLU(0.2))
            if dropout:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class Gaussian(nn.Module):
    """x -> (mu, logvar) of a diagonal Gaussian, through one hidden layer."""

    def __init__(self, d_in: int, hidden: int, d_out: int):
        super().__init__()
        self.body = mlp([d_in, hidden], out_activation=True)
        self.mu, self.logvar = nn.Linear(hidden, d_out), nn.Linear(hidden, d_out)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.mu(h), self.logvar(h).clamp(*LOGVAR_RANGE)


def sample(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """The reparameterised draw mu + sigma * eps."""
    return mu + torch.randn_like(mu) * (0.5 * logvar).exp()


# --------------------------------------------------------------------------------------------
# zero-shot CVAE / CAAE (Yelamarthi et al.)
# --------------------------------------------------------------------------------------------

class ZeroShotGenerator(nn.Module):
    """Generates image descriptors from a query descriptor.

    CVAE (``adversarial=False``): encoder q(z | x_img, x_q), conditional prior p(z | x_q), decoder
    p(x_img | z, x_q) (unit-variance Gaussian), regressor f_NN(x_img_hat) -> x_q.
    loss = KL(q || p) - log p(x_img | z, x_q) + lam * ||f_NN(x_img_hat) - x_q||^2.
    CAAE (``adversarial=True``): a deterministic encoder E(x_img, x_q) -> z, the prior N(0, I)
    and a discriminator D on z; the KL term becomes the encoder's adversarial term
    log(1 - D(E(x))) (`losses.encoder_adversarial`), D trained by `discriminator_loss`.
    """

    def __init__(self, d: int, latent: int, hidden: int, adversarial: bool = False):
        super().__init__()
        self.d, self.latent, self.adversarial = d, latent, adversarial
        if adversarial:
            self.encoder = mlp([2 * d, hidden, hidden, latent])
            self.discriminator = mlp([latent, hidden, 1])
        else:
            self.encoder = Gaussian(2 * d, hidden, latent)
            self.prior = Gaussian(d, hidden, latent)
        self.decoder = mlp([latent + d, hidden, hidden, d])
        self.regressor = mlp([d, hidden, d])

    def decode(self, z: torch.Tensor, x_q: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.cat([z, x_q], dim=-1))

    def losses(self, b: PairBatch, lam: float) -> dict[str, torch.Tensor]:
        joint = torch.cat([b.render, b.query], dim=-1)
        if self.adversarial:
            z = self.encoder(joint)
            latent_term = losses.encoder_adversarial(self.discriminator(z).squeeze(-1))
        else:
            mu, logvar = self.encoder(joint)
            z = sample(mu, logvar)
            latent_term = losses.gaussian_kl(mu, logvar, *self.prior(b.query))
        x_hat = self.decode(z, b.query)
        rec = losses.gaussian_nll(b.render, x_hat)
        reg = (self.regressor(x_hat) - b.query).square().sum(dim=-1)
        return {"loss": latent_term + rec + lam * reg, "latent": latent_term, "rec": rec, "reg": reg}

    def discriminator_loss(self, b: PairBatch) -> torch.Tensor:
        """CAAE only: D's loss on prior samples against (detached) encodings; mean."""
        with torch.no_grad():
            z = self.encoder(torch.cat([b.render, b.query], dim=-1))
        prior = torch.randn_like(z)
        return losses.discriminator_loss(self.discriminator(prior).squeeze(-1), self.discriminator(z).squeeze(-1)).mean()

    def generate(self, x_q: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """(B, d) queries and (N, latent) standard-normal draws -> (B, N, d) generated image descriptors.

        The same draws for every query, so a query's descriptors do not depend on its batch.
        """
        b, n = len(x_q), len(eps)
        if self.adversarial:
            z = eps.unsqueeze(0).expand(b, n, -1)
        else:
            mu, logvar = self.prior(x_q)
            z = mu.unsqueeze(1) + (0.5 * logvar).exp().unsqueeze(1) * eps.unsqueeze(0)
        return self.decode(z.reshape(b * n, -1), x_q.repeat_interleave(n, dim=0)).view(b, n, -1)


# --------------------------------------------------------------------------------------------
# parallel VAEs with semantic preservation
# --------------------------------------------------------------------------------------------

class ParallelVAE(nn.Module):
    """The draft's parallel VAEs. E_s^img (structure), E_a^img (appearance) and E^q (query) encode
    to `latent` each; D^q decodes a query descriptor from the structure code, D^img an image
    descriptor from z_img = [appearance, query code] and the query, S the class semantics from a
    generated image descriptor; p(z_img | f_q) is a learned conditional prior.
    """

    def __init__(self, d: int, latent: int, hidden: int, n_semantics: int = 0):
        super().__init__()
        self.d, self.latent = d, latent
        self.enc_structure = Gaussian(d, hidden, latent)
        self.enc_appearance = Gaussian(d, hidden, latent)
        self.enc_query = Gaussian(d, hidden, latent)
        self.dec_query = mlp([latent, hidden, d])
        self.prior_image = Gaussian(d, hidden, 2 * latent)
        self.dec_image = mlp([2 * latent + d, hidden, hidden, d])
        self.semantic = mlp([d, hidden, n_semantics]) if n_semantics else None

    def losses(self, b: PairBatch, lam: tuple[float, ...], margin: float) -> dict[str, torch.Tensor]:
        """lam = (l1..l7); the l7 term is 0 without semantics."""
        l1, l2_, l3, l4, l5, l6, l7 = lam
        mu_s, lv_s = self.enc_structure(b.render)
        mu_a, lv_a = self.enc_appearance(b.render)
        mu_q, lv_q = self.enc_query(b.query)
        # query branch: z_q = E_s^img(f_img) decodes the query descriptor (ELBO against N(0, I))
        f_q_hat = self.dec_query(sample(mu_s, lv_s))
        elbo_q = losses.gaussian_nll(b.query, f_q_hat) + losses.gaussian_kl(mu_s, lv_s)
        # image branch: z_img = [E_a^img(f_img), E^q(f_q)], prior p(z_img | f_q)
        mu_img, lv_img = torch.cat([mu_a, mu_q], dim=-1), torch.cat([lv_a, lv_q], dim=-1)
        f_img_hat = self.dec_image(torch.cat([sample(mu_img, lv_img), b.query], dim=-1))
        elbo_img = losses.gaussian_nll(b.render, f_img_hat) + losses.gaussian_kl(mu_img, lv_img, *self.prior_image(b.query))
        rec_q, rec_img = losses.l2(f_q_hat, b.query), losses.l2(f_img_hat, b.render)
        # "1 - D_cosine" read as pushing structure and appearance apart: |cos| is 0 when they are orthogonal
        disentangle = torch.nn.functional.cosine_similarity(mu_s, mu_a, dim=-1, eps=1e-8).abs()
        # structure code of the render near its class's query code, at least `margin` from another class's
        neg_q, _ = self.enc_query(b.neg_query)
        align = 0.5 * losses.l2(mu_s, mu_q) + 0.5 * (margin - losses.l2(mu_s, neg_q)).clamp_min(0.0)
        terms = {"elbo_q": elbo_q, "elbo_img": elbo_img, "rec_q": rec_q, "rec_img": rec_img, "disentangle": disentangle, "align": align}
        if self.semantic is not None and b.semantics is not None:
            terms["semantic"] = (self.semantic(f_img_hat) - b.semantics).square().sum(dim=-1)
        loss = l1 * elbo_q + l2_ * elbo_img + l3 * rec_q + l4 * rec_img + l5 * disentangle + l6 * align
        if "semantic" in terms:
            loss = loss + l7 * terms["semantic"]
        return {"loss": loss, **terms}

    def generate(self, x_q: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """(B, d) queries and (N, 2 * latent) standard-normal draws -> (B, N, d) image descriptors from p(z_img | f_q)."""
        b, n = len(x_q), len(eps)
        mu, logvar = self.prior_image(x_q)
        z = mu.unsqueeze(1) + (0.5 * logvar).exp().unsqueeze(1) * eps.unsqueeze(0)
        return self.dec_image(torch.cat([z, x_q.unsqueeze(1).expand(b, n, -1)], dim=-1))


# --------------------------------------------------------------------------------------------
# siamese / triplet heads
# --------------------------------------------------------------------------------------------

class TwoBranchHead(nn.Module):
    """One small MLP per domain (queries, renders) into a shared L2-normalised embedding space."""

    def __init__(self, d: int, hidden: int, dim: int, dropout: float = 0.0):
        super().__init__()
        self.query_head = mlp([d, hidden, dim], dropout=dropout)
        self.render_head = mlp([d, hidden, dim], dropout=dropout)

    def query(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.query_head(x), dim=-1)

    def render(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.render_head(x), dim=-1)


class GeMNet(nn.Module):
    """VGG16's conv5 block (conv5_1..conv5_3 with their ReLUs, trainable) + GeM with a learnable p +
    L2, over pool4 maps (B, 512, h, w): the network the *_gem methods fine-tune (Radenović et al.;
    conv1..conv4 stay frozen so a CPU can train it on the features step's kept maps). One branch for
    queries and renders alike."""

    def __init__(self, conv5: nn.Module, p: float = 3.0):
        super().__init__()
        from scenesearch.features.pooling import GeM

        self.block = conv5
        self.gem = GeM(p)
        self.block.requires_grad_(True)

    def forward(self, pool4: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.gem(self.block(pool4.float())), dim=-1)  # kept maps are float16

    query = render = forward

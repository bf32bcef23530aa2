"""CVAE-M2: the semi-supervised conditional VAE of Kingma et al. (2014), model M2.

Encoder: q(z|x) = Normal(mu(x), diag exp(logvar(x))) over R^d and q(y|x) = Categorical(softmax(logits(x))).
Decoder: p(x|z,y) = Normal(sigmoid(decoder(z, onehot(y))), exp(logvar_x)) over [0,1]^{3xHxW}, with
one learned log-variance (``scalar``) or one per pixel and channel (``pixel``).

Loss of a labelled image: -ELBO(x, y) + beta * CE(q(y|x), y), where
-ELBO = -log p(x|z,y) (one reparameterised z) + KL(q(z|x) || N(0, I)) - log p(y), p(y) uniform.
Unlabelled images (optional): sum_y q(y|x) (-ELBO(x, y)) - H(q(y|x)).
All terms are sums over dimensions, per image, in nats.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenesearch.models import ArchSpec

LOG_2PI = math.log(2 * math.pi)
# The decoder variance is learned; bounding it keeps a near-perfect pixel from driving the
# likelihood to infinity (variance collapse) and a bad start from drowning the KL.
LOGVAR_X_RANGE = (-9.0, 2.0)


# --------------------------------------------------------------------------------------------
# closed forms (also used by retrieval and checked against Monte-Carlo estimates in the tests)
# --------------------------------------------------------------------------------------------

def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)) per row: (B, d) -> (B,)."""
    return 0.5 * (logvar.exp() + mu.square() - 1.0 - logvar).sum(dim=-1)


def gaussian_cross_entropy(mu_p: torch.Tensor, logvar_p: torch.Tensor, mu_q: torch.Tensor, logvar_q: torch.Tensor) -> torch.Tensor:
    """H(p, q) = -E_p[log q] of diagonal Gaussians, summed over the last dim (broadcasting)."""
    return 0.5 * (LOG_2PI + logvar_q + (logvar_p.exp() + (mu_p - mu_q).square()) / logvar_q.exp()).sum(dim=-1)


def gaussian_nll(x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """-log N(x; mean, exp(logvar)) summed over all but the first dim: (B, ...) -> (B,)."""
    nll = 0.5 * (LOG_2PI + logvar + (x - mean).square() * torch.exp(-logvar))
    return nll.flatten(1).sum(dim=1)


# --------------------------------------------------------------------------------------------
# the network
# --------------------------------------------------------------------------------------------

def _stage(cin: int, cout: int, convs: int, bn: bool, transpose: bool) -> nn.Sequential:
    """One resolution step: a stride-2 (transposed) conv, then `convs - 1` 3x3 convs."""
    first = nn.ConvTranspose2d(cin, cout, 4, 2, 1) if transpose else nn.Conv2d(cin, cout, 4, 2, 1)
    layers: list[nn.Module] = [first]
    for _ in range(convs - 1):
        layers += [nn.BatchNorm2d(cout) if bn else nn.Identity(), nn.LeakyReLU(0.2), nn.Conv2d(cout, cout, 3, 1, 1)]
    layers += [nn.BatchNorm2d(cout) if bn else nn.Identity(), nn.LeakyReLU(0.2)]
    return nn.Sequential(*layers)


class CVAE(nn.Module):
    """Encoder q(z|x), q(y|x) and decoder p(x|z,y); images (B, 3, H, W) in [0, 1]."""

    def __init__(self, architecture: str, spec: ArchSpec, n_classes: int, image_size: int, decoder_variance: str = "scalar", weights: str = "none", seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.architecture, self.spec, self.n_classes, self.image_size = architecture, spec, n_classes, image_size
        self.latent = spec.latent
        self.decoder_variance = decoder_variance
        if spec.vgg_encoder:
            from scenesearch.features.vgg import IMAGENET_MEAN, IMAGENET_STD, build_descriptor

            # conv1_1 .. conv5_3 + ReLU (without the last pool): frozen, from the features step's weights
            self.trunk = build_descriptor(weights, seed).features[:30].requires_grad_(False)
            self.register_buffer("vgg_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
            self.register_buffer("vgg_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
            trunk_out = 512 * (image_size // 16) ** 2
        else:
            chans = (3, *spec.channels)
            self.trunk = nn.Sequential(*[_stage(a, b, spec.convs_per_stage, spec.batch_norm, False) for a, b in zip(chans[:-1], chans[1:])])
            trunk_out = spec.channels[-1] * (image_size // 2 ** len(spec.channels)) ** 2
        self.enc_fc = nn.Sequential(nn.Flatten(), nn.Linear(trunk_out, spec.hidden), nn.LeakyReLU(0.2))
        self.head_mu = nn.Linear(spec.hidden, spec.latent)
        self.head_logvar = nn.Linear(spec.hidden, spec.latent)
        self.head_logits = nn.Linear(spec.hidden, n_classes)

        self.start = image_size // 2 ** len(spec.channels)
        self.dec_fc = nn.Sequential(
            nn.Linear(spec.latent + n_classes, spec.hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(spec.hidden, spec.channels[-1] * self.start**2),
            nn.LeakyReLU(0.2),
        )
        back = spec.channels[::-1]
        stages = [_stage(a, b, spec.convs_per_stage, spec.batch_norm, True) for a, b in zip(back[:-1], back[1:])]
        stages.append(nn.ConvTranspose2d(back[-1], 3, 4, 2, 1))  # last stage straight to pixel means
        self.dec = nn.Sequential(*stages)
        shape = (1,) if decoder_variance == "scalar" else (3, image_size, image_size)
        self.logvar_x = nn.Parameter(torch.full(shape, -3.0))

    def config(self) -> dict:
        """What `build_model` needs to rebuild this network (saved beside its weights)."""
        return {
            "architecture": self.architecture,
            "n_classes": self.n_classes,
            "image_size": self.image_size,
            "decoder_variance": self.decoder_variance,
            "latent": self.latent,
        }

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mu, logvar, logits) of q(z|x) and q(y|x)."""
        if self.spec.vgg_encoder:
            x = (x - self.vgg_mean) / self.vgg_std
        h = self.enc_fc(self.trunk(x))
        return self.head_mu(h), self.head_logvar(h).clamp(-10.0, 10.0), self.head_logits(h)

    def decode(self, z: torch.Tensor, y_onehot: torch.Tensor) -> torch.Tensor:
        """Mean of p(x|z,y) in (0, 1)."""
        h = self.dec_fc(torch.cat([z, y_onehot.to(z.dtype)], dim=1)).view(-1, self.spec.channels[-1], self.start, self.start)
        return torch.sigmoid(self.dec(h))

    def decoder_logvar(self) -> torch.Tensor:
        return self.logvar_x.clamp(*LOGVAR_X_RANGE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's outputs as one tensor [mu | logvar | logits] (B, 2d + C): what retrieval needs."""
        mu, logvar, logits = self.encode(x)
        return torch.cat([mu, logvar, logits], dim=1)

    def neg_elbo(self, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(-log p(x|z,y) with one reparameterised z, KL(q(z|x) || N(0, I))) per image; `x` is the
        reconstruction target (the encoder may have seen an augmented version of it)."""
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        mean = self.decode(z, F.one_hot(y, self.n_classes)).float()
        return gaussian_nll(x.float(), mean, self.decoder_logvar().float()), kl_to_standard_normal(mu.float(), logvar.float())

    def labelled_loss(self, x: torch.Tensor, y: torch.Tensor, beta: float, target: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Per-batch means of the M2 labelled loss and its terms (nats per image); the decoder
        reconstructs `target` (default: `x`)."""
        mu, logvar, logits = self.encode(x)
        rec, kl = self.neg_elbo(x if target is None else target, mu, logvar, y)
        ce = F.cross_entropy(logits.float(), y, reduction="none")
        log_prior = -math.log(self.n_classes)  # uniform p(y)
        loss = rec + kl - log_prior + beta * ce
        return {"loss": loss.mean(), "rec": rec.mean(), "kl": kl.mean(), "ce": ce.mean(), "correct": (logits.argmax(1) == y).float().sum()}

    def unlabelled_loss(self, x: torch.Tensor, target: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Per-batch mean of sum_y q(y|x) (-ELBO(x, y)) - H(q(y|x)): one decoder pass per class."""
        mu, logvar, logits = self.encode(x)
        x = x if target is None else target
        log_q = F.log_softmax(logits.float(), dim=1)
        q = log_q.exp()
        per_class = []
        for c in range(self.n_classes):
            rec, kl = self.neg_elbo(x, mu, logvar, torch.full((len(x),), c, dtype=torch.long, device=x.device))
            per_class.append(rec + kl + math.log(self.n_classes))
        expected = (q * torch.stack(per_class, dim=1)).sum(dim=1)
        entropy = -(q * log_q).sum(dim=1)
        return {"loss": (expected - entropy).mean()}

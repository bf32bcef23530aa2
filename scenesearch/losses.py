"""Loss terms shared by the methods that learn over descriptors (zero-shot CVAE/CAAE, parallel VAEs,
siamese and triplet heads) and by CNN fine-tuning: tensors in, tensor out, no state.

Each returns the per-row values (shape (B,)) unless it says "mean"; the methods weight and
average them. Distances are Euclidean unless named otherwise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used, so loading a config never pays for it
    import torch


def gaussian_kl(mu_q: torch.Tensor, logvar_q: torch.Tensor, mu_p: torch.Tensor | None = None, logvar_p: torch.Tensor | None = None) -> torch.Tensor:
    """KL(N(mu_q, exp(logvar_q)) || N(mu_p, exp(logvar_p))) of diagonal Gaussians, summed over the last axis.

    Without `mu_p`/`logvar_p` the prior is N(0, I).
    """
    import torch

    if mu_p is None:
        mu_p = torch.zeros_like(mu_q)
    if logvar_p is None:
        logvar_p = torch.zeros_like(logvar_q)
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p).square()) / logvar_p.exp() - 1.0).sum(dim=-1)


def gaussian_nll(x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """-log N(x; mean, I) without its constant: 0.5 * ||x - mean||^2 (a unit-variance decoder)."""
    return 0.5 * (x - mean).square().sum(dim=-1)


def l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """||a - b|| over the last axis."""
    return (a - b).square().sum(dim=-1).clamp_min(1e-12).sqrt()


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - cos(a, b) over the last axis."""
    import torch

    return 1.0 - torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-8)


def contrastive(d: torch.Tensor, same: torch.Tensor, margin: float) -> torch.Tensor:
    """delta * d + (1 - delta) * max(0, m - d): pulls same-class pairs together, pushes the others
    to at least the margin (Hadsell et al. 2006, as the zero-shot SBIR baselines write it).

    Args:
        d: (B,) distances of the pairs; same: (B,) 1 for a same-class pair, 0 otherwise.
    """
    same = same.to(d.dtype)
    return same * d + (1.0 - same) * (margin - d).clamp_min(0.0)


def triplet(d_ap: torch.Tensor, d_an: torch.Tensor, margin: float) -> torch.Tensor:
    """max(0, d(a, p) - d(a, n) + alpha)."""
    return (d_ap - d_an + margin).clamp_min(0.0)


def hardest_negative_triplet(
    anchors: torch.Tensor, positives: torch.Tensor, candidates: torch.Tensor, anchor_labels: torch.Tensor, candidate_labels: torch.Tensor, margin: float
) -> torch.Tensor:
    """The triplet loss of each anchor with its positive and the hardest negative in the batch:
    the candidate of another class closest to the anchor.

    Args:
        anchors, positives: (B, e), row i's positive is positives[i].
        candidates: (M, e) with labels (M,); anchors' labels (B,).

    Returns:
        (B,) losses; 0 for an anchor with no candidate of another class.
    """
    import torch

    d = torch.cdist(anchors, candidates)  # (B, M)
    d = d.masked_fill(anchor_labels.view(-1, 1) == candidate_labels.view(1, -1), float("inf"))
    d_an = d.amin(dim=1)
    has_negative = torch.isfinite(d_an)
    return torch.where(has_negative, triplet(l2(anchors, positives), torch.where(has_negative, d_an, 0.0), margin), 0.0)


def discriminator_loss(prior_logits: torch.Tensor, encoded_logits: torch.Tensor) -> torch.Tensor:
    """-(log D(z_prior) + log(1 - D(E(x)))) of a latent discriminator D (logits in, probabilities
    by sigmoid): what D minimises, i.e. it maximises log D(z_prior) + log(1 - D(E(x)))."""
    import torch.nn.functional as F

    return F.softplus(-prior_logits) + F.softplus(encoded_logits)


def encoder_adversarial(encoded_logits: torch.Tensor) -> torch.Tensor:
    """log(1 - D(E(x))), what the encoder minimises (the minimax form, as Yelamarthi et al. write
    it): log(1 - sigmoid(l)) = -softplus(l)."""
    import torch.nn.functional as F

    return -F.softplus(encoded_logits)

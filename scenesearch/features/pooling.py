"""Global pooling of a CNN feature map into one descriptor: MAC, SPoC, GeM and R-MAC.

Plain functions over a (B, C, H, W) tensor returning (B, C), not normalised (the methods
normalise, whiten and normalise again, `scenesearch.whitening`). References: MAC and R-MAC
(Tolias, Sicre & Jégou, ICLR 2016), SPoC (Babenko & Lempitsky, ICCV 2015), GeM (Radenović,
Tolias & Chum, TPAMI 2018). On VGG16's conv5_3 the map is 4x4 at a 64 px input and 14x14 at 224.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenesearch.features import POOLINGS

OVERLAP = 0.4  # R-MAC: wanted overlap of neighbouring regions (Tolias et al.)


def mac(x: torch.Tensor) -> torch.Tensor:
    """Maximum activation of convolutions: the max of each channel over the map."""
    return x.amax(dim=(-2, -1))


def spoc(x: torch.Tensor) -> torch.Tensor:
    """Sum-pooled convolutional features, as the mean of each channel (the sum up to the map size)."""
    return x.mean(dim=(-2, -1))


def gem(x: torch.Tensor, p: float | torch.Tensor = 3.0, eps: float = 1e-6) -> torch.Tensor:
    """Generalised mean: (mean of clamp(x, eps)^p)^(1/p); p = 1 is SPoC, p -> inf approaches MAC.

    `p` may be a learnable scalar tensor (`GeM`)."""
    return x.clamp(min=eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


def rmac_regions(height: int, width: int, levels: int = 3) -> list[tuple[int, int, int, int]]:
    """The R-MAC regions (top, left, size, size) of an H x W map: the whole map, then at level
    l = 1..L squares of side floor(2 min(H, W) / (l + 1)) on a grid whose neighbours overlap by about
    40 %; the long side gets the extra regions that best match that overlap (Tolias et al.). Regions of
    different levels may coincide (level 1 of a square map is the whole map); each counts, as in the
    authors' implementation (cnnimageretrieval-pytorch)."""
    w = min(height, width)
    steps = torch.arange(2, 8, dtype=torch.float64)  # candidate region counts along the long side
    b = (max(height, width) - w) / (steps - 1)
    extra = int(torch.argmin(torch.abs((w * w - w * b) / (w * w) - OVERLAP)).item()) + 1
    extra_w = extra if height < width else 0
    extra_h = extra if height > width else 0
    out = [(0, 0, height, width)]
    for level in range(1, levels + 1):
        size = math.floor(2 * w / (level + 1))
        if size == 0:
            continue
        half = math.floor(size / 2 - 1)

        def starts(extent: int, n: int) -> list[int]:
            step = 0.0 if n == 1 else (extent - size) / (n - 1)
            return [math.floor(half + i * step) - half for i in range(n)]

        for top in starts(height, level + extra_h):
            for left in starts(width, level + extra_w):
                out.append((top, left, size, size))
    return out


def region_maxima(x: torch.Tensor, levels: int = 3) -> torch.Tensor:
    """(B, R, C): the max of each channel in every R-MAC region (`rmac_regions`), whole map first."""
    regions = rmac_regions(x.shape[-2], x.shape[-1], levels)
    return torch.stack([mac(x[..., t : t + h, l : l + w]) for t, l, h, w in regions], dim=1)


def rmac(x: torch.Tensor, levels: int = 3, eps: float = 1e-6) -> torch.Tensor:
    """Regional MAC: the sum of the L2-normalised region maxima (without the per-region whitening,
    which the `pooled` method learns on the train split: `scenesearch.methods.pooled`)."""
    return F.normalize(region_maxima(x, levels), dim=-1, eps=eps).sum(dim=1)


def pool(x: torch.Tensor, name: str, p: float = 3.0, levels: int = 3) -> torch.Tensor:
    """The pooling called `name` (one of POOLINGS) of (B, C, H, W) maps."""
    if name == "mac":
        return mac(x)
    if name == "spoc":
        return spoc(x)
    if name == "gem":
        return gem(x, p)
    if name == "rmac":
        return rmac(x, levels)
    raise ValueError(f"unknown pooling {name!r}; known: {', '.join(POOLINGS)}")


class GeM(nn.Module):
    """GeM pooling with a learnable exponent p (Radenović et al. fine-tune it with the network)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gem(x.float(), self.p.clamp(min=1.0), self.eps)  # p below 1 would reward the weakest activations

"""Self-supervised VGG16 weights (``features.weights: selfsup``): SimCLR on the dataset's own images.

No labels are read. Each image is randomised twice by the domain-randomisation augmenter
(scenesearch.augment: renders get a random background through their alpha mask and a random
geometry, query photos only the photometric ops) and mirrored at random; the VGG16 conv trunk
(conv1_1 .. conv5_3 + ReLU, the layers the descriptor taps) followed by GAP and a small projection
head maps both views, and NT-Xent pulls the two views of an image together against the other
images of the batch.

VGG16 has no batch norm, and trained from scratch without it the trunk either barely moves
(lr 3e-4) or dies (lr 1e-3: every embedding the same, the loss at chance) in the few hundred steps a
CPU affords. So the trunk trains with a BatchNorm2d after every conv (as torchvision's vgg16_bn),
its statistics are then re-estimated on clean images at the descriptor's input size, and each
batch norm is folded into the conv before it: what comes out is a plain torchvision VGG16 state
dict, exact in eval mode. fc6 / fc7 keep their seeded random init (the same as ``weights: none``):
fc7 stays a fixed random projection of the trained conv5_3 maps (training fc6, 102 M parameters,
costs three times the time on a CPU). The projection head is dropped after training.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from scenesearch.config import AugmentConfig, SelfSupConfig
from scenesearch.errors import DataError
from scenesearch.features.vgg import IMAGENET_MEAN, IMAGENET_STD, TAPS

log = logging.getLogger(__name__)

WARMUP_FRACTION = 0.05  # of the steps, linear warm-up before the cosine decay
GRAD_CLIP = 5.0  # clip the occasional large step early in training
STATS_IMAGES = 256  # clean images that re-estimate the batch-norm statistics before folding


# --------------------------------------------------------------------------------------------
# loss and schedule (plain functions)
# --------------------------------------------------------------------------------------------

def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent (SimCLR's normalised temperature-scaled cross entropy) of two views of a batch.

    Row i of `z1` and row i of `z2` are the positive pair; the other 2B - 2 rows are negatives.
    The mean over all 2B anchors, so the loss is symmetric in (z1, z2).

    Args:
        z1, z2: (B, d) projections of the two views, B >= 2 (not necessarily normalised).
        temperature: divides the cosine similarities.

    Returns:
        Scalar loss; log(2B - 1) when every similarity is equal.
    """
    b = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)  # (2B, d)
    sim = z @ z.T / temperature  # (2B, 2B)
    sim = sim.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), float("-inf"))  # an anchor is not its own negative
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(b)]).to(z.device)  # the other view
    return F.cross_entropy(sim, target)


def lr_at(step: int, total: int, base: float) -> float:
    """Linear warm-up over the first WARMUP_FRACTION of the steps, then cosine decay to 0."""
    warmup = max(1, int(WARMUP_FRACTION * total))
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


# --------------------------------------------------------------------------------------------
# modules
# --------------------------------------------------------------------------------------------

def with_batch_norm(features: nn.Sequential) -> nn.Sequential:
    """The layers of `features` with a fresh BatchNorm2d after every conv (the convs are shared, not copied)."""
    layers: list[nn.Module] = []
    for layer in features:
        layers.append(layer)
        if isinstance(layer, nn.Conv2d):
            layers.append(nn.BatchNorm2d(layer.out_channels))
    return nn.Sequential(*layers)


@torch.no_grad()
def fold_batch_norm(trunk: nn.Sequential) -> None:
    """Fold each eval-mode BatchNorm2d of `trunk` into the conv before it, in place, and make it an identity.

    conv then BN computes g * (W x + b - mu) / sqrt(var + eps) + beta, so the conv becomes
    W' = W * s, b' = (b - mu) * s + beta with s = g / sqrt(var + eps) per output channel.
    """
    layers = list(trunk)
    for conv, bn in zip(layers, layers[1:]):
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C,)
            conv.weight.mul_(scale.view(-1, 1, 1, 1))
            conv.bias.copy_((conv.bias - bn.running_mean) * scale + bn.bias)
            bn.reset_parameters()  # weight 1, bias 0 ...
            bn.running_var.fill_(1.0 - bn.eps)  # ... and statistics making it an exact identity in eval mode


class ContrastiveNet(nn.Module):
    """VGG16 conv trunk (to conv5_3 + ReLU, a batch norm after each conv) -> GAP -> MLP projection head.

    Input (B, 3, H, W) in [0, 1]. The head batch-normalises its input too: the GAP(conv5_3) of a
    randomly initialised VGG16 is nearly the same vector for every image (pairwise cosine ~0.99).
    """

    def __init__(self, vgg: nn.Module, hidden_dim: int, projection_dim: int):
        super().__init__()
        self.trunk = with_batch_norm(vgg.features[: TAPS["conv5_3"] + 1])  # its convs are `vgg`'s
        self.head = nn.Sequential(
            nn.BatchNorm1d(512, affine=False),
            nn.Linear(512, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, projection_dim),
        )
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def __repr__(self) -> str:
        return f"ContrastiveNet(trunk=vgg16 conv1_1..conv5_3 + BN, head=BN-512->{self.head[1].out_features}-BN-ReLU->{self.head[4].out_features})"

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk((x - self.mean) / self.std).mean(dim=(2, 3))  # the descriptor's normalisation; (B, 512)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))  # (B, projection_dim)


@torch.no_grad()
def refresh_statistics(net: ContrastiveNet, images: torch.Tensor, size: int, batch_size: int, device: torch.device) -> None:
    """Re-estimate the trunk's batch-norm statistics on clean `images` at input side `size`
    (what the descriptor will see), as a plain average over the batches."""
    bns = [m for m in net.trunk if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average
    net.trunk.train()
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(device, torch.float32)
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        net.embed(x)
    net.trunk.eval()


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SelfSupStats:
    n_images: int  # images trained on (each seen as two views per epoch)
    n_renders: int
    epochs: int
    steps: int
    input_size: int
    first_loss: float  # mean NT-Xent of the first epoch
    final_loss: float  # of the last epoch
    chance_loss: float  # log(2B - 1): the loss of embeddings that tell nothing apart
    final_top1: float  # last epoch: share of views whose most similar other view is their pair
    seconds: float
    images_per_s: float  # views through forward + backward per second
    device: str
    precision: str  # fp32 | bf16
    history: list[dict] = field(default_factory=list)  # per epoch: epoch, loss, top1, seconds

    def to_dict(self) -> dict:
        return asdict(self)


def training_rows(domain: np.ndarray, split: np.ndarray, flip: np.ndarray) -> np.ndarray:
    """Rows the backbone trains on: every scene render (the unlabelled gallery) and the query images
    of the train split, unflipped (the augmenter flips); a boolean mask. Labels are not read."""
    from scenesearch.domains import SCENE

    return ((domain == SCENE) | (split == "train")) & ~flip


def _views(augmenter: Callable, x: torch.Tensor, alpha: torch.Tensor | None, is_render: torch.Tensor, size: int) -> torch.Tensor:
    """One random view of each image: the augmenter, a random mirror (it does not mirror; the
    gallery holds every view's mirror, so the descriptor should not care), resized to `size`."""
    v = augmenter(x, alpha, is_render).clamp(0.0, 1.0)  # (B, 3, H, W)
    mirror = (torch.rand(len(v)) < 0.5).to(v.device).view(-1, 1, 1, 1)
    v = torch.where(mirror, v.flip(-1), v)
    if v.shape[-1] != size:
        v = F.interpolate(v, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return v


def train_backbone(
    images: np.ndarray | torch.Tensor,
    masks: np.ndarray | torch.Tensor | None,
    is_render: np.ndarray | torch.Tensor,
    cfg: SelfSupConfig,
    seed: int = 0,
    device: torch.device | str = "cpu",
    augment: AugmentConfig | None = None,
    render_background: tuple[float, float, float] = (1.0, 1.0, 1.0),
    augmenter: Callable | None = None,
    progress: bool = True,
    stats_size: int | None = None,
) -> tuple[nn.Module, SelfSupStats]:
    """Train a seeded VGG16's conv trunk with NT-Xent over two augmented views of each image.

    Deterministic on a CPU for a seed: the init, the shuffling and the augmenter draw from a forked
    torch RNG seeded with `seed` (the caller's global RNG state is left as it was).

    Args:
        images: (N, 3, H, W) float in [0, 1].
        masks: (N, 1, H, W) alpha, uint8 (255 = object) or float in [0, 1]; None: all opaque.
        is_render: (N,) bool, True for scene renders (they get every augmenter op).
        cfg: the features.selfsup section.
        seed: seeds the VGG16 init (the same as ``weights: none`` with this seed), the order and the views.
        device: where to train.
        augment: the augmenter's settings (the run's train.augment; None: its defaults), with
            cfg.augment_p as the chance of each op.
        render_background: the renders' background colour (render.background).
        augmenter: called as augmenter(x, alpha, is_render) -> views; None: scenesearch.augment.Augmenter.
        progress: show a progress bar.
        stats_size: input side of the batch-norm statistics before folding (features.input_size);
            None: cfg.input_size.

    Returns:
        (the plain torchvision VGG16 on the CPU in eval mode, batch norms folded into its convs,
        fc6 / fc7 untouched; training stats).

    Raises:
        DataError: fewer than 2 images.
    """
    from torchvision.models import vgg16
    from tqdm import tqdm

    device = torch.device(device)
    images = torch.as_tensor(images)
    is_render = torch.as_tensor(np.asarray(is_render), dtype=torch.bool)
    if masks is not None:
        masks = torch.as_tensor(masks)
    n = len(images)
    if n < 2:
        raise DataError(f"self-supervised pretraining needs at least 2 images, got {n}")
    batch = min(cfg.batch_size, n)
    steps_per_epoch = sum(1 for s in range(0, n, batch) if n - s >= 2)
    total = steps_per_epoch * cfg.epochs
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    history: list[dict] = []
    start = time.perf_counter()
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        vgg = vgg16(weights=None)  # the same init as build_descriptor("none", seed)
        net = ContrastiveNet(vgg, cfg.hidden_dim, cfg.projection_dim).to(device)
        if augmenter is None:
            from scenesearch.augment import Augmenter

            augmenter = Augmenter(replace(augment or AugmentConfig(), p=cfg.augment_p), render_background)
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        order = torch.Generator().manual_seed(seed)
        step = 0
        bar = tqdm(total=total, desc="selfsup", unit="step", disable=not progress)
        for epoch in range(cfg.epochs):
            net.train()
            t0, losses, hits, seen = time.perf_counter(), [], 0, 0
            perm = torch.randperm(n, generator=order)
            for s in range(0, n, batch):
                idx = perm[s : s + batch]
                if len(idx) < 2:
                    continue
                x = images[idx].to(device, torch.float32)  # (b, 3, H, W)
                alpha = None if masks is None else _alpha(masks[idx]).to(device)  # (b, 1, H, W)
                r = is_render[idx].to(device)
                v = torch.cat([_views(augmenter, x, alpha, r, cfg.input_size), _views(augmenter, x, alpha, r, cfg.input_size)])  # (2b, 3, s, s)
                for group in opt.param_groups:
                    group["lr"] = lr_at(step, total, cfg.lr)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    z = net(v).float()  # (2b, projection_dim)
                loss = nt_xent(z[: len(idx)], z[len(idx) :], cfg.temperature)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(net.parameters(), GRAD_CLIP)
                opt.step()
                losses.append(float(loss.detach()))
                hits += _pair_hits(z.detach(), len(idx))
                seen += 2 * len(idx)
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
            history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "top1": hits / max(seen, 1), "seconds": time.perf_counter() - t0})
            log.info("selfsup epoch %d/%d: NT-Xent %.4f, pair top-1 %.3f (%.0f s)", epoch + 1, cfg.epochs, history[-1]["loss"], history[-1]["top1"], history[-1]["seconds"])
        bar.close()
        stats_rows = torch.randperm(n, generator=order)[:STATS_IMAGES]
        refresh_statistics(net, images[stats_rows], stats_size or cfg.input_size, batch, device)
    fold_batch_norm(net.trunk)
    seconds = time.perf_counter() - start
    vgg = vgg.cpu().eval()
    stats = SelfSupStats(
        n_images=n,
        n_renders=int(is_render.sum()),
        epochs=cfg.epochs,
        steps=step,
        input_size=cfg.input_size,
        first_loss=history[0]["loss"],
        final_loss=history[-1]["loss"],
        chance_loss=math.log(2 * batch - 1),
        final_top1=history[-1]["top1"],
        seconds=seconds,
        images_per_s=2 * n * cfg.epochs / max(seconds, 1e-9),
        device=str(device),
        precision="bf16" if bf16 else "fp32",
        history=history,
    )
    return vgg, stats


def _alpha(m: torch.Tensor) -> torch.Tensor:
    """uint8 masks (255 = opaque) or floats in [0, 1] -> float32 in [0, 1]."""
    return m.float() / 255.0 if m.dtype == torch.uint8 else m.float()


def _pair_hits(z: torch.Tensor, b: int) -> int:
    """How many of the 2b views have their pair as the most similar other view."""
    z = F.normalize(z, dim=1)
    sim = (z @ z.T).fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(b)]).to(z.device)
    return int((sim.argmax(1) == target).sum())

"""The networks and losses of scene mixing (LORBMS: Zbinden, "Learning Object Representations by
Mixing Scenes", University of Bern, 2019; after Hu et al., "Disentangling Factors of Variation by
Mixing Them", CVPR 2018).

An encoder maps a 64x64 image to a feature map whose four spatial quadrants are four feature
blocks (the "4 object assumption"). For a reference image and four similar images (k-means
candidates), a mask of four bits picks per quadrant the reference's block (0) or the block of the
similar image of that quadrant (1); the generator renders the mixed map into an image. Encoding
that image again and putting the reference's own blocks back where they were swapped out ("undo")
must give the reference again: the 2x autoencoder. The discriminator judges real vs generated and,
as a second head, predicts the mask bits of a generated image.

Quadrant order everywhere: 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

N_QUADRANTS = 4


@dataclass(frozen=True)
class Sizes:
    """Widths of the three networks; the feature map is (feature_channels, size/8, size/8)."""

    channels: tuple[int, ...] = (16, 32, 64)  # encoder / discriminator conv widths (each halves the side)
    feature_channels: int = 32
    image_size: int = 64

    def __post_init__(self):
        side = self.image_size // 2 ** len(self.channels)
        if side < 2 or side % 2 or self.image_size % 2 ** len(self.channels):
            raise ValueError(f"image size {self.image_size} with {len(self.channels)} stride-2 layers leaves a {side}-pixel map; it must be even and >= 2")


def _downsampling(channels: tuple[int, ...]) -> list[nn.Module]:
    """Stride-2 4x4 convs from RGB through `channels` (batch norm after all but the first), LeakyReLU 0.2."""
    layers, c = [], 3
    for i, w in enumerate(channels):
        layers += [nn.Conv2d(c, w, 4, 2, 1), *([nn.BatchNorm2d(w)] if i > 0 else []), nn.LeakyReLU(0.2, inplace=True)]
        c = w
    return layers


class Encoder(nn.Module):
    """(B, 3, S, S) in [0, 1] -> (B, feature_channels, S/8, S/8)."""

    def __init__(self, sizes: Sizes):
        super().__init__()
        self.net = nn.Sequential(*_downsampling(sizes.channels), nn.Conv2d(sizes.channels[-1], sizes.feature_channels, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * 2 - 1)


class Generator(nn.Module):
    """(B, feature_channels, S/8, S/8) -> (B, 3, S, S) in [0, 1]."""

    def __init__(self, sizes: Sizes):
        super().__init__()
        widths = list(reversed(sizes.channels))
        layers: list[nn.Module] = [nn.Conv2d(sizes.feature_channels, widths[0], 3, 1, 1), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)]
        for c_in, c_out in zip(widths, widths[1:]):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        layers += [nn.ConvTranspose2d(widths[-1], 3, 4, 2, 1), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.net(f)


class Discriminator(nn.Module):
    """Real/fake logit and four mask-bit logits of (B, 3, S, S) images; `features` is the pooled
    last conv layer (what the linear probe reads)."""

    def __init__(self, sizes: Sizes):
        super().__init__()
        self.body = nn.Sequential(*_downsampling(sizes.channels))
        c, side = sizes.channels[-1], sizes.image_size // 2 ** len(sizes.channels)
        self.adv = nn.Linear(c * side * side, 1)
        self.cls = nn.Linear(c * side * side, N_QUADRANTS)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.flatten(self.body(x * 2 - 1), 1)
        return self.adv(h)[:, 0], self.cls(h)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C) spatial mean of the last conv layer, followed by per-quadrant means: (B, 5C)."""
        h = self.body(x * 2 - 1)
        return torch.cat([h.mean(dim=(2, 3)), pool_quadrants(h)], dim=1)


class LORBMS(nn.Module):
    """Encoder, generator and discriminator in one module (one state dict, one checkpoint)."""

    def __init__(self, sizes: Sizes):
        super().__init__()
        self.sizes = sizes
        self.encoder, self.generator, self.discriminator = Encoder(sizes), Generator(sizes), Discriminator(sizes)
        self.architecture = "scene_mixing"  # the progress bar's name

    def config(self) -> dict:
        return {**asdict(self.sizes), "channels": list(self.sizes.channels)}

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The retrieval feature: the encoder's four quadrant blocks, each mean-pooled, (B, 4C)."""
        return pool_quadrants(self.encoder(x))


# --------------------------------------------------------------------------------------------
# mixing
# --------------------------------------------------------------------------------------------

def quadrant_masks(bits: torch.Tensor, side: int) -> torch.Tensor:
    """(B, 4) bits -> (B, 1, side, side) float map, each quadrant filled with its bit."""
    h = side // 2
    b = bits.float().view(-1, 1, 2, 2)  # rows: top (0, 1), bottom (2, 3)
    return b.repeat_interleave(h, dim=2).repeat_interleave(h, dim=3)


def mix(ref: torch.Tensor, others: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """The mixed feature map: per quadrant j, `ref`'s block where bit j is 0, else the block of
    `others[:, j]` (the similar image of quadrant j).

    Args:
        ref: (B, C, H, W). others: (B, 4, C, H, W), or (B, C, H, W) for one map giving every
            quadrant. bits: (B, 4) in {0, 1}.
    """
    if others.dim() == ref.dim():
        others = others.unsqueeze(1).expand(-1, N_QUADRANTS, *others.shape[1:])
    side = ref.shape[-1]
    out = ref
    for j in range(N_QUADRANTS):
        m = quadrant_masks(F.one_hot(torch.full((len(bits),), j, device=bits.device), N_QUADRANTS) * bits, side).to(ref.dtype)
        out = out * (1 - m) + others[:, j] * m
    return out


def pool_quadrants(f: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 4C): the spatial mean of each quadrant, in quadrant order."""
    h, w = f.shape[-2] // 2, f.shape[-1] // 2
    blocks = [f[..., :h, :w], f[..., :h, w:], f[..., h:, :w], f[..., h:, w:]]
    return torch.cat([b.mean(dim=(2, 3)) for b in blocks], dim=1)


def random_bits(n: int, generator: torch.Generator) -> torch.Tensor:
    """(n, 4) uniformly drawn masks (all 16 patterns, 0000 included: then the mixed image is the
    reference's plain reconstruction)."""
    return torch.randint(0, 2, (n, N_QUADRANTS), generator=generator)


@dataclass(frozen=True)
class LossWeights:
    rec: float = 1.0
    adv: float = 0.01
    cls: float = 0.1
    quadrants: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)  # lambda_j of the four mask bits
    cycle: bool = True  # the second (cycle) reconstruction term of L_rec
    p: int = 1  # the norm of the reconstruction terms (1 or 2), as a per-pixel mean


def reconstruction(x: torch.Tensor, y: torch.Tensor, p: int) -> torch.Tensor:
    """Per-pixel mean of |x - y|^p, averaged over the batch (the ||.||_p terms of L_rec, normalised by the pixel count)."""
    d = (x - y).abs()
    return (d if p == 1 else d.pow(p)).mean()


def mask_loss(logits: torch.Tensor, bits: torch.Tensor, quadrants: tuple[float, ...]) -> torch.Tensor:
    """L_cls = sum_j lambda_j * BCE(logit_j, bit_j), each BCE a batch mean."""
    per_bit = F.binary_cross_entropy_with_logits(logits.float(), bits.float(), reduction="none").mean(dim=0)  # (4,)
    return (per_bit * torch.tensor(quadrants, dtype=per_bit.dtype, device=per_bit.device)).sum()


def forward_mix(model: LORBMS, ref: torch.Tensor, others: torch.Tensor, bits: torch.Tensor) -> dict[str, torch.Tensor]:
    """One mixing pass: the reference's direct reconstruction, the mixed image and the cycle's
    reconstruction of the reference.

    Args:
        ref: (B, 3, S, S). others: (B, 4, 3, S, S), the similar image of each quadrant. bits: (B, 4).
    """
    b = len(ref)
    f_all = model.encoder(torch.cat([ref, others.flatten(0, 1)]))
    f_ref, f_oth = f_all[:b], f_all[b:].view(b, N_QUADRANTS, *f_all.shape[1:])
    decoded = model.generator(torch.cat([f_ref, mix(f_ref, f_oth, bits)]))
    direct, mixed = decoded[:b], decoded[b:]
    f_mixed = model.encoder(mixed)
    cycle = model.generator(mix(f_mixed, f_ref, bits))  # undo: the reference's blocks back where they were swapped out
    return {"direct": direct, "mixed": mixed, "cycle": cycle}


def generator_loss(ref: torch.Tensor, out: dict[str, torch.Tensor], adv_logits: torch.Tensor, cls_logits: torch.Tensor,
                   bits: torch.Tensor, w: LossWeights) -> dict[str, torch.Tensor]:
    """L_G = rec * L_rec + adv * L_adv^G + cls * L_cls, with
    L_rec = ||I_ref - Î_ref||_p + ||I_ref - I'_ref||_p (the second only with `cycle`),
    L_adv^G = BCE(D(mixed), 1) and L_cls the mask-bit loss on the mixed image."""
    rec = reconstruction(ref, out["direct"], w.p)
    if w.cycle:
        rec = rec + reconstruction(ref, out["cycle"], w.p)
    adv = F.binary_cross_entropy_with_logits(adv_logits.float(), torch.ones_like(adv_logits, dtype=torch.float32))
    cls = mask_loss(cls_logits, bits, w.quadrants)
    return {"loss": w.rec * rec + w.adv * adv + w.cls * cls, "rec": rec, "adv": adv, "cls": cls}


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, cls_logits: torch.Tensor, bits: torch.Tensor,
                       w: LossWeights) -> dict[str, torch.Tensor]:
    """-[log D(real) + log(1 - D(fake))] as two BCE means, plus cls * L_cls of the mask head on the
    (detached) mixed images; `accuracy` is the share of real and fake judged right."""
    real = F.binary_cross_entropy_with_logits(real_logits.float(), torch.ones_like(real_logits, dtype=torch.float32))
    fake = F.binary_cross_entropy_with_logits(fake_logits.float(), torch.zeros_like(fake_logits, dtype=torch.float32))
    cls = mask_loss(cls_logits, bits, w.quadrants)
    accuracy = torch.cat([(real_logits > 0), (fake_logits < 0)]).float().mean()
    bit_accuracy = ((cls_logits > 0).long() == bits.long()).float().mean()
    return {"loss": real + fake + w.cls * cls, "adv": real + fake, "cls": cls, "accuracy": accuracy.detach(), "bit_accuracy": bit_accuracy.detach()}


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MixData:
    """The unflipped training images as uint8 (N, 3, S, S) and, per image, its candidates: positions
    into `images` (K columns, -1 padding). References are the images with at least one candidate."""

    images: torch.Tensor
    candidates: torch.Tensor  # (N, K) int64

    def references(self) -> torch.Tensor:
        return torch.nonzero(self.candidates[:, 0] >= 0).flatten()

    def draw(self, refs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(B, 4) positions: for each reference, one of its candidates per quadrant (uniformly, with replacement)."""
        n = (self.candidates[refs] >= 0).sum(dim=1)  # (B,) >= 1
        pick = (torch.rand(len(refs), N_QUADRANTS, generator=generator) * n[:, None]).long()
        return torch.gather(self.candidates[refs], 1, pick)


def as_float(images: torch.Tensor, rows: torch.Tensor, device) -> torch.Tensor:
    return images[rows].to(device).float().div_(255.0)


def sample_grid(model: LORBMS, data: MixData, refs: torch.Tensor, others: torch.Tensor, bits: torch.Tensor, device) -> torch.Tensor:
    """One row per reference: the reference, its four similar images, the mask (white: swapped in),
    the mixed image and the cycle reconstruction; (3, H, W) in [0, 1] for an image logger."""
    from torchvision.utils import make_grid

    model.eval()
    with torch.no_grad():
        ref = as_float(data.images, refs, device)
        oth = as_float(data.images, others.flatten(), device).view(len(refs), N_QUADRANTS, *ref.shape[1:])
        out = forward_mix(model, ref, oth, bits.to(device))
    mask = quadrant_masks(bits, ref.shape[-1]).to(device).expand(-1, 3, -1, -1) * 0.8 + 0.1
    tiles = torch.stack([ref, *oth.unbind(1), mask, out["mixed"], out["cycle"]], dim=1)  # (B, 8, 3, S, S)
    return make_grid(tiles.flatten(0, 1).float().cpu(), nrow=tiles.shape[1], padding=2, pad_value=1.0)


def train(model: LORBMS, data: MixData, cfg, weights: LossWeights, checkpoint_dir: str, seed: int, run_hash: str, lr: float, batch_size: int,
          on_epoch=None, on_grid=None, grid_rows: int = 6, progress: bool = False):
    """Train `model` in place for `cfg.epochs` (a TrainConfig: device, precision); checkpoint every
    epoch (a killed run resumes where it stopped). The weights of the last epoch are kept: nothing
    unsupervised tells a better epoch apart.

    Args:
        on_epoch: (epoch, metrics) after every epoch. on_grid: (epoch, (3, H, W) image) after every epoch.

    Returns:
        scenesearch.models.train.TrainResult.
    """
    import contextlib
    import math
    import time

    from tqdm import tqdm

    from scenesearch.errors import DataError
    from scenesearch.models.train import CHECKPOINT, end_epoch, finish, optimise, prepare, resume, write_checkpoint

    device, precision, autocast_dtype = prepare(model, cfg, seed)
    gen_params = [*model.encoder.parameters(), *model.generator.parameters()]
    opt_g = torch.optim.Adam(gen_params, lr=lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(model.discriminator.parameters(), lr=lr, betas=(0.5, 0.999))
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    order = torch.Generator().manual_seed(seed)
    refs_all = data.references()
    if len(refs_all) == 0:
        raise DataError("scene mixing found no training image with a similar candidate; check the similarity step's candidates.parquet")
    fixed = torch.Generator().manual_seed(seed + 1)  # the grid shows the same tuples every epoch
    g_refs = refs_all[torch.randperm(len(refs_all), generator=fixed)[:grid_rows]]
    g_others, g_bits = data.draw(g_refs, fixed), random_bits(len(g_refs), fixed)
    optimizers = {"opt_g": opt_g, "opt_d": opt_d}
    ckpt = f"{checkpoint_dir.rstrip('/')}/{CHECKPOINT}"
    state, resumed_from = resume(ckpt, run_hash, model, optimizers, scaler, order)
    rates, epoch = [], state["epoch"]
    amp = (lambda: torch.autocast(device.type, dtype=autocast_dtype)) if autocast_dtype else contextlib.nullcontext
    while epoch < cfg.epochs:
        epoch += 1
        model.train()
        perm = refs_all[torch.randperm(len(refs_all), generator=order)]
        sums: dict[str, float] = {}
        t0, n_seen = time.perf_counter(), 0
        n_batches = math.ceil(len(perm) / batch_size)
        for b in tqdm(range(n_batches), desc=f"lorbms epoch {epoch}", unit="batch", disable=not progress, leave=False):
            refs = perm[b * batch_size : (b + 1) * batch_size]
            others = data.draw(refs, order)
            bits = random_bits(len(refs), order).to(device)
            ref = as_float(data.images, refs, device)
            oth = as_float(data.images, others.flatten(), device).view(len(refs), N_QUADRANTS, *ref.shape[1:])
            with amp():
                out = forward_mix(model, ref, oth, bits)
                real_adv, _ = model.discriminator(ref)
                fake_adv, fake_cls = model.discriminator(out["mixed"].detach())
                d = discriminator_loss(real_adv, fake_adv, fake_cls, bits, weights)
            optimise(d["loss"], opt_d, scaler)
            with amp():
                adv, cls = model.discriminator(out["mixed"])
                g = generator_loss(ref, out, adv, cls, bits, weights)
            if not (torch.isfinite(g["loss"]) and torch.isfinite(d["loss"])):
                raise DataError(f"the scene-mixing losses became non-finite at epoch {epoch}; lower methods.lorbms.lr")
            optimise(g["loss"], opt_g, scaler)
            for k, v in (*((f"g_{k}", v) for k, v in g.items()), *((f"d_{k}", v) for k, v in d.items())):
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(refs)
            n_seen += len(refs)
        seconds = time.perf_counter() - t0
        rates.append(n_seen / max(seconds, 1e-9))
        metrics = {k: v / n_seen for k, v in sums.items()}
        metrics.update({"train_images_per_s": rates[-1], "epoch_seconds": seconds})
        # no early stopping and the last epoch kept: monitor the epoch number itself
        end_epoch(state, epoch, {**metrics, "epoch": float(epoch), "train_loss": metrics["g_loss"]}, "epoch", cfg.epochs + 1, model)
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        if on_grid is not None:
            on_grid(epoch, sample_grid(model, data, g_refs, g_others, g_bits, device))
        write_checkpoint(ckpt, state, run_hash, model, optimizers, scaler, order)
    return finish(model, state, False, resumed_from, rates, precision, device)

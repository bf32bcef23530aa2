"""Domain randomisation of training images: renders made to look like photos, on the training device.

A render is clean: one scene, centred, on the render background (white), lit one way. A query
photo shows its object on a background, with clutter, framed and lit every which way. `Augmenter`
randomises what should not matter, so a network trained on renders learns to ignore it:

    geometry    scale, shift (parts may leave the frame: a partial crop) and a small in-plane
                rotation of the premultiplied render and its alpha together (renders only)
    background  the render composited through its alpha onto a random background (renders
                only): a solid colour, a linear gradient, low-frequency value noise, stripes or
                checkers, or a zoomed-in crop of another image of the batch (clutter)
    light       a directional shading ramp across the image and an intensity change
    colour      brightness, contrast, saturation and hue as v2.ColorJitter draws them (one set
                of factors per image, batched: `colour_jitter`) and a per-channel colour cast
    blur        a Gaussian blur, sigma per image (v2.GaussianBlur's kernel, batched: `gaussian_blur`)
    noise       Gaussian pixel noise
    jpeg        v2.JPEG compression (on the CPU)

They run in that order (geometry before compositing, so what it uncovers is background), each
op of ``AugmentConfig.ops`` on each image with probability ``p``. Query photos (``is_render``
False) only get the photometric ops (light, colour, blur, noise, jpeg): a photo already has its
background and framing, and has no mask to composite with.

Compositing is premultiplied: a render pixel is x = a * c + (1 - a) * b_r with coverage a, colour
c and render background b_r, so fg = x - (1 - a) * b_r = a * c and the new pixel is
fg + (1 - a) * background; where a == 1 the output is x exactly.

Randomness: every parameter is drawn from torch's global CPU generator (and the pixel noise from
the batch device's global generator), so ``torch.manual_seed(s)`` fixes the output; the training
loop seeds it and keeps its state in its checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms import v2

from scenesearch.config import AugmentConfig

GEOMETRIC = ("geometry", "background")  # renders only
PHOTOMETRIC = ("light", "colour", "blur", "noise", "jpeg")
ORDER = GEOMETRIC + PHOTOMETRIC  # the order ops run in, whatever the order of AugmentConfig.ops
BACKGROUND_KINDS = ("solid", "gradient", "value_noise", "pattern", "pool")
COLOUR_CAST = 0.1  # colour: largest per-channel gain change of the cast (a white balance off by up to 10%)
POOL_ZOOM = (0.3, 0.8)  # pool backgrounds: the crop's side, share of the other image (a zoomed-in part)


# ---------------------------------------------------------------- compositing


def premultiply(x: Tensor, alpha: Tensor, render_background: Sequence[float] | Tensor = (1.0, 1.0, 1.0)) -> Tensor:
    """The render's foreground alone: fg = x - (1 - alpha) * render_background.

    Args:
        x: (B, 3, H, W) renders in [0, 1].
        alpha: (B, 1, H, W) coverage in [0, 1].
        render_background: the colour the renders were drawn on, RGB in [0, 1].

    Returns:
        (B, 3, H, W) premultiplied colour (alpha * colour).
    """
    return x - (1.0 - alpha) * _rgb(render_background, x)


def over(fg: Tensor, alpha: Tensor, background: Tensor) -> Tensor:
    """Premultiplied `fg` with coverage `alpha` over `background` (B, 3, H, W) or (3,)/(1, 3, 1, 1)."""
    return fg + (1.0 - alpha) * background


def composite(x: Tensor, alpha: Tensor, background: Tensor, render_background: Sequence[float] | Tensor = (1.0, 1.0, 1.0)) -> Tensor:
    """Put renders onto new backgrounds through their alpha.

    Args:
        x: (B, 3, H, W) renders in [0, 1], drawn on `render_background`.
        alpha: (B, 1, H, W) coverage in [0, 1].
        background: (B, 3, H, W) new backgrounds (or anything that broadcasts).
        render_background: RGB in [0, 1].

    Returns:
        (B, 3, H, W): equal to x exactly where alpha == 1 and to `background` where alpha == 0.
    """
    return over(premultiply(x, alpha, render_background), alpha, background)


def _rgb(colour: Sequence[float] | Tensor, like: Tensor) -> Tensor:
    return torch.as_tensor(colour, dtype=like.dtype).to(like.device).view(1, 3, 1, 1)


# ---------------------------------------------------------------- backgrounds


def random_backgrounds(
    n: int,
    size: int | tuple[int, int],
    device: torch.device | str = "cpu",
    pool: Tensor | None = None,
    exclude: Tensor | None = None,
) -> Tensor:
    """`n` random backgrounds, each of one kind drawn uniformly from `BACKGROUND_KINDS`.

    solid: one colour; gradient: a linear ramp between two colours; value_noise: low-frequency value
    noise (two octaves of random colour grids, smoothly upsampled); pattern: stripes or
    checkers of two colours at a random angle and frequency; pool (only with `pool`): a
    zoomed-in, possibly mirrored crop of a random image of the pool. Colours are random RGB
    pulled towards grey by a random amount, as most of the world is.

    Args:
        n: how many.
        size: side, or (H, W).
        device: where they are made.
        pool: (P, 3, H', W') images in [0, 1] to crop "pool" backgrounds from, e.g. the batch
            (used when P >= 2).
        exclude: (n,) pool rows: background i never comes from pool row exclude[i] (its own image).

    Returns:
        (n, 3, H, W) float32 in [0, 1].
    """
    h, w = (size, size) if isinstance(size, int) else size
    kinds = BACKGROUND_KINDS if pool is not None and len(pool) > 1 else BACKGROUND_KINDS[:-1]
    kind = torch.randint(len(kinds), (n,))
    out = torch.empty((n, 3, h, w), device=device)
    for k, name in enumerate(kinds):
        rows = torch.nonzero(kind == k).flatten()
        if not len(rows):
            continue
        if name == "pool":
            # without `exclude`, a random row is left out: the pick stays uniform over the pool
            own = exclude[rows] if exclude is not None else torch.randint(len(pool), (len(rows),))
            out[rows.to(device)] = _pool_backgrounds(pool, (h, w), own).to(device=device, dtype=out.dtype)
        else:
            out[rows.to(device)] = _MAKERS[name](len(rows), h, w).to(device)
    return out


def _colours(n: int) -> Tensor:
    """(n, 3) RGB in [0, 1], desaturated towards their grey by a random share."""
    c = torch.rand(n, 3)
    grey = c.mean(dim=1, keepdim=True)
    return grey + (c - grey) * torch.rand(n, 1)


def _coords(h: int, w: int) -> tuple[Tensor, Tensor]:
    """Pixel centres in [-1, 1]: u (1, 1, 1, W) across, v (1, 1, H, 1) down."""
    u = (torch.arange(w) + 0.5) / w * 2 - 1
    v = (torch.arange(h) + 0.5) / h * 2 - 1
    return u.view(1, 1, 1, w), v.view(1, 1, h, 1)


def _along(n: int, h: int, w: int) -> Tensor:
    """(n, 1, H, W) position along a random direction, in [-1, 1] over the image."""
    theta = torch.rand(n) * 2 * math.pi
    u, v = _coords(h, w)
    return (torch.cos(theta).view(n, 1, 1, 1) * u + torch.sin(theta).view(n, 1, 1, 1) * v) / math.sqrt(2)


def _solid(n: int, h: int, w: int) -> Tensor:
    return _colours(n).view(n, 3, 1, 1).expand(n, 3, h, w).clone()


def _gradient(n: int, h: int, w: int) -> Tensor:
    c0, c1 = _colours(n).view(n, 3, 1, 1), _colours(n).view(n, 3, 1, 1)
    t = (0.5 + _along(n, h, w) * (0.5 + torch.rand(n, 1, 1, 1))).clamp(0, 1)  # a steeper ramp saturates at the ends
    return c0 + (c1 - c0) * t


def _value_noise(n: int, h: int, w: int) -> Tensor:
    coarse = F.interpolate(_colour_grid(n, 3), (h, w), mode="bicubic", align_corners=False)
    fine = F.interpolate(_colour_grid(n, 6), (h, w), mode="bicubic", align_corners=False)
    mix = torch.rand(n, 1, 1, 1)
    return (mix * coarse + (1 - mix) * fine).clamp(0, 1)


def _colour_grid(n: int, g: int) -> Tensor:
    """(n, 3, g, g): per image, g x g colours around a base colour."""
    base = _colours(n).view(n, 3, 1, 1)
    return (base + (torch.rand(n, 3, g, g) - 0.5) * torch.rand(n, 1, 1, 1)).clamp(0, 1)


def _pattern(n: int, h: int, w: int) -> Tensor:
    c0, c1 = _colours(n).view(n, 3, 1, 1), _colours(n).view(n, 3, 1, 1)
    freq = (2 + torch.rand(n) * 8).view(n, 1, 1, 1)  # cycles across the image
    phase = torch.rand(n, 1, 1, 1)
    theta = torch.rand(n) * math.pi
    u, v = _coords(h, w)
    cos, sin = torch.cos(theta).view(n, 1, 1, 1), torch.sin(theta).view(n, 1, 1, 1)
    a = torch.frac((cos * u + sin * v) * freq / 2 + phase) < 0.5
    b = torch.frac((-sin * u + cos * v) * freq / 2 + phase) < 0.5
    checker = (torch.rand(n) < 0.5).view(n, 1, 1, 1)
    t = torch.where(checker, a ^ b, a).float()
    return c0 + (c1 - c0) * t


_MAKERS = {"solid": _solid, "gradient": _gradient, "value_noise": _value_noise, "pattern": _pattern}


def _pool_backgrounds(pool: Tensor, size: tuple[int, int], exclude: Tensor) -> Tensor:
    """A zoomed-in, randomly placed and mirrored crop of a random pool image per row (never row `exclude`)."""
    n = len(exclude)
    pick = (exclude + torch.randint(1, len(pool), (n,))) % len(pool)  # any row but its own
    zoom = POOL_ZOOM[0] + torch.rand(n) * (POOL_ZOOM[1] - POOL_ZOOM[0])
    shift = (torch.rand(n, 2) * 2 - 1) * (1 - zoom).unsqueeze(1)  # the crop stays inside the image
    mirror = torch.where(torch.rand(n) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, :, 2] = zoom * mirror, zoom, shift
    src = pool[pick.to(pool.device)].float()
    grid = F.affine_grid(theta.to(src.device), [n, 3, *size], align_corners=False)
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)


# ---------------------------------------------------------------- geometry


def affine_matrices(scale: Tensor, shift: Tensor, angle_deg: Tensor, size: tuple[int, int]) -> Tensor:
    """`F.affine_grid` matrices that scale by `scale`, turn by `angle_deg` and move by `shift`.

    Args:
        scale: (B,) new size, share of the old (below 1 shrinks).
        shift: (B, 2) translation (x, y) in normalised coordinates (2 = the frame's side).
        angle_deg: (B,) counter-clockwise rotation on screen.
        size: (H, W), so the rotation is one in pixels on a non-square image.

    Returns:
        (B, 2, 3): output normalised coordinates -> input normalised coordinates.
    """
    h, w = size
    a = torch.deg2rad(angle_deg)
    cos, sin = torch.cos(a), torch.sin(a)
    # output pixel q = s R p + t, so p = R^-1 (q - t) / s; in normalised coordinates n = D^-1 q, D = diag(W, H) / 2
    inv = torch.stack([torch.stack([cos, -sin * h / w], -1), torch.stack([sin * w / h, cos], -1)], -2) / scale.view(-1, 1, 1)
    return torch.cat([inv, -(inv @ shift.unsqueeze(-1))], dim=-1)


def warp(fg: Tensor, alpha: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
    """Resample premultiplied `fg` and its `alpha` together by `theta`; outside the image both are 0."""
    both = torch.cat([fg, alpha], dim=1)
    grid = F.affine_grid(theta.to(both), list(both.shape), align_corners=False)
    out = F.grid_sample(both, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[:, :3], out[:, 3:]


def random_geometry(fg: Tensor, alpha: Tensor, cfg: AugmentConfig) -> tuple[Tensor, Tensor]:
    """A random scale in ``cfg.scale``, shift up to ``cfg.translate`` of the side and turn up to ``cfg.rotate_deg``."""
    n, size = len(fg), tuple(fg.shape[-2:])
    lo, hi = cfg.scale
    scale = lo + torch.rand(n) * (hi - lo)
    shift = (torch.rand(n, 2) * 2 - 1) * (2 * cfg.translate)
    angle = (torch.rand(n) * 2 - 1) * cfg.rotate_deg
    return warp(fg, alpha, affine_matrices(scale, shift, angle, size))


# ---------------------------------------------------------------- photometric ops


def shade(x: Tensor, strength: Tensor, gain: Tensor, angle: Tensor) -> Tensor:
    """Light from one side: x * gain * (1 + strength * ramp), ramp in [-1, 1] along direction `angle` (radians)."""
    n, h, w = len(x), x.shape[-2], x.shape[-1]
    u, v = _coords(h, w)
    ramp = (torch.cos(angle).view(n, 1, 1, 1) * u + torch.sin(angle).view(n, 1, 1, 1) * v) / math.sqrt(2)
    factor = gain.view(n, 1, 1, 1) * (1 + strength.view(n, 1, 1, 1) * ramp)
    return (x * factor.to(x)).clamp(0, 1)


def random_light(x: Tensor, light: float) -> Tensor:
    """`shade` with strength in [0, light] and gain in [1 - light / 2, 1 + light / 2]."""
    n = len(x)
    return shade(x, torch.rand(n) * light, 1 + (torch.rand(n) - 0.5) * light, torch.rand(n) * 2 * math.pi)


def colour_cast(x: Tensor, strength: float = COLOUR_CAST) -> Tensor:
    """Each channel of each image scaled by its own gain in [1 - strength, 1 + strength]."""
    gains = 1 + (torch.rand(len(x), 3, 1, 1) * 2 - 1) * strength
    return (x * gains.to(x)).clamp(0, 1)


def add_noise(x: Tensor, std_range: tuple[float, float]) -> Tensor:
    """Gaussian pixel noise, std per image uniform in `std_range` (the noise itself drawn on x's device)."""
    lo, hi = std_range
    std = (lo + torch.rand(len(x)) * (hi - lo)).view(-1, 1, 1, 1).to(x)
    return (x + torch.randn(x.shape, device=x.device, dtype=x.dtype) * std).clamp(0, 1)


def gaussian_blur(x: Tensor, sigma: Tensor) -> Tensor:
    """Separable Gaussian blur with one sigma per image (v2.GaussianBlur's kernel, batched).

    Args:
        x: (B, C, H, W).
        sigma: (B,) standard deviations in pixels (> 0).

    Returns:
        (B, C, H, W); edges reflected, kernel side 2 * ceil(3 * max sigma) + 1 (at most what the image allows).
    """
    n, c, h, w = x.shape
    k = blur_kernel_size(float(sigma.max()), (h, w))
    if k == 1:
        return x
    t = torch.arange(k, dtype=torch.float32) - k // 2
    kernel = torch.exp(-0.5 * (t.view(1, k) / sigma.view(n, 1).clamp_min(1e-3)) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).to(x).repeat_interleave(c, dim=0)  # (B * C, k)
    y = F.pad(x.reshape(1, n * c, h, w), (k // 2, k // 2, k // 2, k // 2), mode="reflect")
    y = F.conv2d(y, kernel.view(n * c, 1, 1, k), groups=n * c)
    y = F.conv2d(y, kernel.view(n * c, 1, k, 1), groups=n * c)
    return y.view(n, c, h, w)


def blur_kernel_size(sigma_max: float, size: tuple[int, int]) -> int:
    """Odd kernel side covering +-3 sigma, no wider than reflect padding allows (half the side < the side)."""
    k = 2 * math.ceil(3 * max(sigma_max, 1e-3)) + 1
    return max(1, min(k, 2 * min(size) - 1))


def random_blur(x: Tensor, sigma_range: tuple[float, float]) -> Tensor:
    """`gaussian_blur` with sigma per image uniform in `sigma_range`."""
    lo, hi = sigma_range
    return gaussian_blur(x, lo + torch.rand(len(x)) * (hi - lo))


_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)
_GREY = torch.tensor([0.299, 0.587, 0.114])  # the weights of torchvision's rgb_to_grayscale


def colour_jitter(x: Tensor, brightness: Tensor, contrast: Tensor, saturation: Tensor, hue: Tensor, order: Sequence[int] = (0, 1, 2, 3)) -> Tensor:
    """v2.ColorJitter with its own factors per image, batched.

    Brightness, contrast and saturation follow torchvision's adjust_* (blend with black, the
    image's mean grey, its grey image; clamped); the hue turns the colour by ``hue * 360``
    degrees around the grey axis in YIQ space (torchvision turns it in HSV: the same idea, and
    a 3x3 matrix per image instead of a per-pixel conversion).

    Args:
        x: (B, 3, H, W) in [0, 1].
        brightness, contrast, saturation: (B,) factors (1 = unchanged).
        hue: (B,) in [-0.5, 0.5] (0 = unchanged).
        order: the order of the four adjustments (0 brightness, 1 contrast, 2 saturation, 3 hue).

    Returns:
        (B, 3, H, W) in [0, 1].
    """
    n = len(x)
    grey_w = _GREY.to(x).view(1, 3, 1, 1)
    for op in order:
        if op == 0:
            x = (x * brightness.to(x).view(n, 1, 1, 1)).clamp(0, 1)
        elif op == 1:
            mean = (x * grey_w).sum(dim=1, keepdim=True).mean(dim=(2, 3), keepdim=True)
            c = contrast.to(x).view(n, 1, 1, 1)
            x = (c * x + (1 - c) * mean).clamp(0, 1)
        elif op == 2:
            grey = (x * grey_w).sum(dim=1, keepdim=True)
            s = saturation.to(x).view(n, 1, 1, 1)
            x = (s * x + (1 - s) * grey).clamp(0, 1)
        elif op == 3:
            a = hue * 2 * math.pi
            cos, sin, one, zero = torch.cos(a), torch.sin(a), torch.ones(n), torch.zeros(n)
            turn = torch.stack([torch.stack([one, zero, zero], -1), torch.stack([zero, cos, -sin], -1), torch.stack([zero, sin, cos], -1)], -2)
            m = (_YIQ_TO_RGB @ turn @ _RGB_TO_YIQ).to(x)  # (B, 3, 3)
            x = torch.einsum("nij,njhw->nihw", m, x).clamp(0, 1)
    return x


def random_colour(x: Tensor, cfg: AugmentConfig) -> Tensor:
    """`colour_jitter` with factors drawn as v2.ColorJitter draws them, in one random order, then a `colour_cast`."""
    n = len(x)

    def factor(amount: float) -> Tensor:
        return 1 + (torch.rand(n) * 2 - 1) * amount

    order = torch.randperm(4).tolist()
    hue = (torch.rand(n) * 2 - 1) * cfg.hue
    return colour_cast(colour_jitter(x, factor(cfg.brightness), factor(cfg.contrast), factor(cfg.saturation), hue, order))


# ---------------------------------------------------------------- the augmenter


class Augmenter:
    """Domain randomisation of a batch, as ``AugmentConfig`` says (see the module docstring)."""

    def __init__(self, cfg: AugmentConfig, render_background: Sequence[float] = (1.0, 1.0, 1.0)):
        self.cfg = cfg
        self.ops = tuple(op for op in ORDER if op in cfg.ops)
        self.render_background = tuple(float(c) for c in render_background)
        self.jpeg = v2.JPEG(quality=tuple(int(q) for q in cfg.jpeg_quality))

    def __repr__(self) -> str:
        return f"Augmenter(ops={list(self.ops)}, p={self.cfg.p})"

    def __call__(self, x: Tensor, alpha: Tensor | None, is_render: Tensor) -> Tensor:
        """Augment a batch.

        Args:
            x: (B, 3, H, W) float in [0, 1] on any device.
            alpha: (B, 1, H, W) float coverage in [0, 1], or None (= all 1).
            is_render: (B,) bool: renders get every op, query photos only the photometric ones.

        Returns:
            (B, 3, H, W) in [0, 1] on x's device and dtype; x itself when no op is configured.
        """
        if not self.ops or len(x) == 0:
            return x
        n, size = len(x), tuple(x.shape[-2:])
        is_render = torch.as_tensor(is_render, dtype=torch.bool).cpu().view(n)
        # which images each op touches: one draw per configured op, whatever the batch holds
        chosen = {op: torch.rand(n) < self.cfg.p for op in self.ops}
        for op in GEOMETRIC:
            if op in chosen:
                chosen[op] &= is_render
        out = x
        none = torch.zeros(n, dtype=torch.bool)
        move, place = chosen.get("geometry", none), chosen.get("background", none)
        if (move | place).any():
            # renders only: premultiply, move fg and alpha together, then composite (onto the
            # render background where only moved, so what the move uncovered stays as it was drawn)
            rows = torch.nonzero(move | place).flatten()
            r, m, p = rows.to(x.device), move[rows].to(x.device), place[rows]
            a = torch.ones_like(x[r, :1]) if alpha is None else alpha[r].to(x)
            fg = premultiply(x[r], a, self.render_background)
            if m.any():
                fg[m], a[m] = random_geometry(fg[m], a[m], self.cfg)
            bg = _rgb(self.render_background, x).expand(len(rows), 3, *size).clone()
            if p.any():
                bg[p.to(x.device)] = random_backgrounds(int(p.sum()), size, x.device, pool=x, exclude=rows[p]).to(x)
            out = x.clone()
            out[r] = over(fg, a, bg).clamp(0, 1)
        for op in PHOTOMETRIC:
            if op in chosen and chosen[op].any():
                rows = torch.nonzero(chosen[op]).flatten()
                out = out.clone() if out is x else out
                out[rows.to(x.device)] = self._photometric(op, out[rows.to(x.device)])
        return out

    def _photometric(self, op: str, x: Tensor) -> Tensor:
        cfg = self.cfg
        if op == "light":
            return random_light(x, cfg.light)
        if op == "colour":
            return random_colour(x, cfg)
        if op == "blur":
            return random_blur(x, cfg.blur_sigma).clamp(0, 1)  # the normalised kernel can overshoot 1 by a rounding error
        if op == "noise":
            return add_noise(x, cfg.noise_std)
        if op == "jpeg":
            q = (x * 255).round_().clamp_(0, 255).to(torch.uint8).cpu()  # v2.JPEG encodes uint8 on the CPU
            return torch.stack([self.jpeg(img) for img in q]).to(x.device).to(x.dtype).div_(255)
        raise ValueError(f"unknown augmentation op '{op}'; the ops are {', '.join(ORDER)}")

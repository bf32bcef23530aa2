"""Domain randomisation: compositing keeps the foreground exactly, seeds fix the output, photos are
never moved or composited, no op is the identity, and the output stays a batch of images."""

import dataclasses

import pytest
import torch

from scenesearch.augment import (
    PHOTOMETRIC,
    Augmenter,
    colour_jitter,
    composite,
    gaussian_blur,
    random_backgrounds,
)
from scenesearch.config import AUGMENT_OPS, AugmentConfig

SIZE = 32


def _batch(n=8, seed=0):
    """Renders: a sharp pattern on white with a mask: a square of full coverage and an antialiased rim."""
    g = torch.Generator().manual_seed(seed)
    alpha = torch.zeros(n, 1, SIZE, SIZE)
    alpha[:, :, 8:24, 8:24] = 1.0
    alpha[:, :, 7, 8:24] = 0.5
    colour = torch.rand(n, 3, SIZE, SIZE, generator=g)
    x = alpha * colour + (1 - alpha) * 1.0  # drawn on white
    return x, alpha


def test_composite_keeps_covered_pixels_and_puts_the_background_elsewhere():
    x, alpha = _batch()
    background = torch.rand(len(x), 3, SIZE, SIZE)
    out = composite(x, alpha, background, (1.0, 1.0, 1.0))
    full, empty = alpha.expand_as(x) == 1, alpha.expand_as(x) == 0
    assert torch.equal(out[full], x[full])  # bit for bit
    torch.testing.assert_close(out[empty], background[empty])
    rim = alpha.expand_as(x) == 0.5
    torch.testing.assert_close(out[rim], (x[rim] - 0.5) + 0.5 * background[rim])  # premultiplied: the white share is replaced


def test_composite_undoes_a_non_white_render_background():
    x, alpha = _batch()
    grey = x - (1 - alpha) * 0.5  # the same foreground drawn on grey instead of white
    background = torch.rand(len(x), 3, SIZE, SIZE)
    torch.testing.assert_close(composite(grey, alpha, background, (0.5, 0.5, 0.5)), composite(x, alpha, background))


@pytest.mark.parametrize("pool", [False, True])
def test_random_backgrounds_are_images_in_range(pool):
    torch.manual_seed(0)
    x, _ = _batch(6)
    bg = random_backgrounds(40, (SIZE, SIZE + 8), "cpu", pool=x if pool else None, exclude=torch.arange(40) % 6 if pool else None)
    assert bg.shape == (40, 3, SIZE, SIZE + 8) and bg.dtype == torch.float32
    assert bg.min() >= 0 and bg.max() <= 1
    spread = bg.flatten(2).std(2).amax(1)  # per image: the largest per-channel spread
    assert spread.max() > 0.05 and (spread == 0).any()  # textures and solid colours


def test_same_seed_same_output_another_seed_differs():
    x, alpha = _batch()
    is_render = torch.tensor([True, False] * 4)
    aug = Augmenter(AugmentConfig())
    torch.manual_seed(3)
    a = aug(x, alpha, is_render)
    torch.manual_seed(3)
    b = aug(x, alpha, is_render)
    torch.manual_seed(4)
    c = aug(x, alpha, is_render)
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 0.1


def test_photos_are_never_moved_or_composited():
    """With the photometric ops turned off, a query photo comes back untouched while renders change."""
    x, alpha = _batch()
    is_render = torch.tensor([True, False] * 4)
    aug = Augmenter(AugmentConfig(ops=("background", "geometry"), p=1.0))
    torch.manual_seed(0)
    out = aug(x, alpha, is_render)
    assert torch.equal(out[~is_render], x[~is_render])
    assert ((out[is_render] - x[is_render]).abs().flatten(1).amax(1) > 0.1).all()


def test_a_render_covered_everywhere_keeps_its_pixels_under_background_only():
    x, _ = _batch()
    aug = Augmenter(AugmentConfig(ops=("background",), p=1.0))
    torch.manual_seed(0)
    assert torch.equal(aug(x, None, torch.ones(len(x), dtype=torch.bool)), x)  # alpha None: all foreground


def test_photos_get_the_photometric_ops():
    x, alpha = _batch()
    photos = torch.zeros(len(x), dtype=torch.bool)
    torch.manual_seed(0)
    out = Augmenter(AugmentConfig(ops=PHOTOMETRIC, p=1.0))(x, alpha, photos)
    assert ((out - x).abs().flatten(1).amax(1) > 0.05).all()


@pytest.mark.parametrize("cfg", [AugmentConfig(ops=()), AugmentConfig(p=0.0)])
def test_no_op_is_the_identity(cfg):
    x, alpha = _batch()
    torch.manual_seed(0)
    assert torch.equal(Augmenter(cfg)(x, alpha, torch.ones(len(x), dtype=torch.bool)), x)


@pytest.mark.parametrize("op", AUGMENT_OPS + ("all",))
def test_output_is_a_batch_of_images_in_range(op):
    x, alpha = _batch()
    cfg = AugmentConfig(p=1.0) if op == "all" else AugmentConfig(ops=(op,), p=1.0)
    torch.manual_seed(0)
    out = Augmenter(cfg)(x, alpha, torch.tensor([True, False] * 4))
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_stays_on_the_cuda_device():
    x, alpha = _batch()
    torch.manual_seed(0)
    out = Augmenter(AugmentConfig(p=1.0))(x.cuda(), alpha.cuda(), torch.ones(len(x), dtype=torch.bool).cuda())
    assert out.device.type == "cuda" and out.shape == x.shape and 0 <= out.min() and out.max() <= 1


def test_geometry_moves_and_shrinks_the_mask_with_the_render():
    """Premultiplied fg and alpha move together: where the scene went, its colours went too."""
    x, alpha = _batch()
    cfg = dataclasses.replace(AugmentConfig(ops=("geometry",), p=1.0), scale=(0.5, 0.5), translate=0.0, rotate_deg=0.0)
    torch.manual_seed(0)
    out = Augmenter(cfg)(x, alpha, torch.ones(len(x), dtype=torch.bool))
    drawn = (out < 0.999).any(dim=1)  # not the white background
    assert drawn[:, 12:20, 12:20].float().mean() > 0.8 and not drawn[:, :10].any() and not drawn[:, 22:].any()  # the 16x16 square is now 8x8 in the middle


def test_blur_and_colour_jitter_match_torchvision():
    from torchvision.transforms.v2 import functional as TF

    x, _ = _batch(2)
    torch.testing.assert_close(gaussian_blur(x, torch.tensor([1.2, 1.2])), TF.gaussian_blur(x, [9, 9], [1.2, 1.2]))
    ones = torch.ones(2)
    got = colour_jitter(x, ones * 1.3, ones * 0.7, ones * 1.4, ones * 0.0, order=(0, 1, 2))
    want = TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(x, 1.3), 0.7), 1.4)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(colour_jitter(x, ones, ones, ones, ones * 0.0), x, atol=1e-5, rtol=0)

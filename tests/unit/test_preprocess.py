import numpy as np
import torch

from scenesearch.preprocess import preprocess_images


def test_shapes_range_and_flips():
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (100, 80, 3), dtype=np.uint8), rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)]
    x = preprocess_images(imgs, size=64, flips=True)
    assert x.shape == (4, 3, 64, 64) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert torch.equal(x[1], torch.flip(x[0], dims=[2]))  # the flip follows its image
    # an image already at 64x64 is only rescaled to [0, 1]
    assert torch.allclose(x[2], torch.from_numpy(imgs[1]).permute(2, 0, 1).float() / 255)


def test_without_flips():
    x = preprocess_images([np.zeros((10, 10, 3), np.uint8)], size=32, flips=False)
    assert x.shape == (1, 3, 32, 32)

"""VGG16 descriptor, weights loading and PCA fitted on the training split only."""

import numpy as np
import pytest
import torch

from scenesearch.errors import ConfigError
from scenesearch.features import fit_pca
from scenesearch.features.vgg import DESCRIPTOR_DIM, build_descriptor, extract


@pytest.fixture(scope="module")
def model():
    return build_descriptor("none", seed=0)


def test_descriptor_shape_blocks_and_determinism(model):
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    f = extract(model, x, batch_size=2, device=torch.device("cpu"), input_size=32, progress=False)
    assert f.shape == (3, DESCRIPTOR_DIM)
    blocks = torch.split(f, [4096, 512, 512, 256], dim=1)
    for b in blocks:  # each block is L2-normalised
        assert torch.allclose(b.norm(dim=1), torch.ones(3), atol=1e-4)
    again = extract(build_descriptor("none", seed=0), x, 3, torch.device("cpu"), 32, progress=False)
    assert torch.allclose(f, again, atol=1e-5)  # the seeded random init is reproducible
    assert model.meta["weights"] == "none"


def test_state_dict_path_is_loaded_with_weights_only(tmp_path, model):
    from torchvision.models import vgg16

    torch.manual_seed(123)
    net = vgg16(weights=None)
    path = tmp_path / "vgg16.pth"
    torch.save(net.state_dict(), path)
    loaded = build_descriptor(str(path))
    assert loaded.meta["weights"] == str(path)
    assert torch.equal(loaded.features[0].weight, net.features[0].weight)


def test_bad_weights_name_the_option(tmp_path):
    with pytest.raises(ConfigError, match="features.weights=.*cannot load a state dict"):
        build_descriptor(str(tmp_path / "missing.pth"))
    bad = tmp_path / "bad.pth"
    torch.save({"foo": torch.zeros(1)}, bad)
    with pytest.raises(ConfigError, match="not a VGG16 state dict"):
        build_descriptor(str(bad))


def test_pca_is_fitted_on_train_rows_only():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 20))
    train = np.zeros(60, bool)
    train[:40] = True
    pca = fit_pca(x, train, dim=5, seed=0)
    assert np.allclose(pca.mean_, x[:40].mean(0))
    x2 = x.copy()
    x2[40:] += 100.0  # changing the non-training rows must not change the projection
    pca2 = fit_pca(x2, train, dim=5, seed=0)
    assert np.allclose(np.abs(pca.components_), np.abs(pca2.components_))


def test_pca_dim_is_capped_by_training_rows():
    x = np.random.default_rng(0).normal(size=(10, 50))
    assert fit_pca(x, np.arange(10) < 6, dim=128).n_components_ == 6

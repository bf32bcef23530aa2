"""MAC, SPoC, GeM and R-MAC against hand computations on small maps."""

import math

import pytest
import torch

from scenesearch.features import pooling


@pytest.fixture
def x():
    # (1, 2, 2, 2): channel 0 is 1 2 / 3 4, channel 1 is 0 0 / 0 8
    return torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 8.0]]]])


def test_mac_spoc_gem_by_hand(x):
    torch.testing.assert_close(pooling.mac(x), torch.tensor([[4.0, 8.0]]))
    torch.testing.assert_close(pooling.spoc(x), torch.tensor([[2.5, 2.0]]))
    # GeM p=3: ((1 + 8 + 27 + 64) / 4)^(1/3); the zeros are clamped at eps, so channel 1 is (512 / 4)^(1/3)
    torch.testing.assert_close(pooling.gem(x, p=3.0), torch.tensor([[25.0 ** (1 / 3), 128.0 ** (1 / 3)]]))


def test_gem_spans_spoc_to_mac():
    x = torch.rand(3, 5, 4, 4) + 0.01
    torch.testing.assert_close(pooling.gem(x, p=1.0), pooling.spoc(x))
    big = pooling.gem(x.double(), p=200.0)
    assert torch.all(big <= pooling.mac(x.double()) + 1e-9) and torch.allclose(big, pooling.mac(x.double()), rtol=0.02)
    assert torch.all(pooling.gem(x, p=3.0) > pooling.spoc(x))  # between the two


def test_rmac_regions_of_the_64px_map_follow_tolias():
    # conv5_3 at 64 px is 4x4: the whole map; level 1 is the whole map again; level 2: 2x2 squares of
    # side floor(8/3) = 2 at 0 and 2; level 3: 3x3 squares of side 2 at 0, 1, 2 (overlap 50 %)
    expected = [(0, 0, 4, 4), (0, 0, 4, 4)] + [(t, l, 2, 2) for t in (0, 2) for l in (0, 2)] + [(t, l, 2, 2) for t in (0, 1, 2) for l in (0, 1, 2)]
    assert pooling.rmac_regions(4, 4, 3) == expected


def test_rmac_regions_of_the_224px_map_and_a_wide_map_stay_inside():
    regions = pooling.rmac_regions(14, 14, 3)
    assert regions[0] == (0, 0, 14, 14)
    assert regions[1] == (0, 0, 14, 14) and {s for _, _, s, _ in regions[2:]} == {9, 7}  # floor(28/3), floor(28/4)
    assert len(regions) == 1 + 1 + 4 + 9
    wide = pooling.rmac_regions(6, 10, 3)
    assert wide[0] == (0, 0, 6, 10)
    for t, l, h, w in wide:
        assert 0 <= t and t + h <= 6 and 0 <= l and l + w <= 10
    assert len({l for _, l, _, _ in wide[1:]}) > len({t for t, _, _, _ in wide[1:]})  # more regions along the long side


def test_rmac_is_the_sum_of_normalised_region_maxima():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 4, 4)
    want = torch.zeros(2, 3)
    for t, l, h, w in pooling.rmac_regions(4, 4, 3):
        m = x[:, :, t : t + h, l : l + w].reshape(2, 3, -1).max(dim=2).values
        want += m / m.norm(dim=1, keepdim=True)
    torch.testing.assert_close(pooling.rmac(x, 3), want)
    assert pooling.region_maxima(x, 3).shape == (2, 15, 3)
    # one level of a square map: the whole map twice, so R-MAC is twice the normalised MAC
    torch.testing.assert_close(pooling.rmac(x, 1), 2 * torch.nn.functional.normalize(pooling.mac(x), dim=1))


def test_learnable_gem_gets_a_gradient_for_p():
    layer = pooling.GeM(3.0)
    layer(torch.rand(2, 4, 3, 3) + 0.1).sum().backward()
    assert layer.p.grad is not None and math.isfinite(layer.p.grad.item()) and layer.p.grad.item() != 0.0


def test_pool_by_name_and_unknown_name():
    x = torch.rand(1, 2, 4, 4)
    for name in pooling.POOLINGS:
        assert pooling.pool(x, name).shape == (1, 2)
    with pytest.raises(ValueError, match="unknown pooling 'sum'"):
        pooling.pool(x, "sum")

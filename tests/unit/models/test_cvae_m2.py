"""CVAE-M2: closed forms against Monte-Carlo estimates, the retrieval distance against a per-pair
loop, shapes of every architecture, and the loss going down on a tiny batch."""

import math

import pytest
import torch
import torch.nn.functional as F

from scenesearch.errors import ConfigError
from scenesearch.models import ARCHITECTURES, build_model
from scenesearch.models.cvae_m2 import gaussian_cross_entropy, gaussian_nll, kl_to_standard_normal
from scenesearch.methods.cvae_m2 import cvae_scene_distances


def _normal(mu, logvar):
    return torch.distributions.Normal(mu, torch.exp(0.5 * logvar))


def test_kl_matches_monte_carlo():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g) * 0.5
    z = _normal(mu, logvar).sample((200_000,))
    mc = (_normal(mu, logvar).log_prob(z) - _normal(torch.zeros_like(mu), torch.zeros_like(mu)).log_prob(z)).sum(-1).mean(0)
    torch.testing.assert_close(kl_to_standard_normal(mu, logvar), mc, rtol=0.02, atol=0.02)


def test_gaussian_cross_entropy_matches_monte_carlo():
    g = torch.Generator().manual_seed(1)
    mp, lp, mq, lq = (torch.randn(2, 5, generator=g) * s for s in (1.0, 0.5, 1.0, 0.5))
    z = _normal(mp, lp).sample((200_000,))
    mc = -_normal(mq, lq).log_prob(z).sum(-1).mean(0)
    torch.testing.assert_close(gaussian_cross_entropy(mp, lp, mq, lq), mc, rtol=0.01, atol=0.02)
    # H(p, p) is the entropy of p
    torch.testing.assert_close(gaussian_cross_entropy(mp, lp, mp, lp), _normal(mp, lp).entropy().sum(-1))


def test_gaussian_nll_is_the_negative_log_density():
    x, mean, logvar = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4), torch.tensor([-2.0])
    expected = -_normal(mean, logvar.expand_as(mean)).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(gaussian_nll(x, mean, logvar), expected)


def _loop_distances(q_mu, q_lv, q_lo, s_mu, s_lv, s_lo, alpha):
    """The definition, one (query, scene, render) triple at a time."""
    out = torch.empty(len(q_mu), len(s_mu), dtype=torch.float64)
    for i in range(len(q_mu)):
        for j in range(len(s_mu)):
            best = math.inf
            for r in range(s_mu.shape[1]):
                hz = gaussian_cross_entropy(q_mu[i], q_lv[i], s_mu[j, r], s_lv[j, r]) + gaussian_cross_entropy(s_mu[j, r], s_lv[j, r], q_mu[i], q_lv[i])
                lp, lq = F.log_softmax(q_lo[i], -1), F.log_softmax(s_lo[j, r], -1)
                hy = -(lp.exp() * lq).sum() - (lq.exp() * lp).sum()
                best = min(best, float(hz + alpha * hy))
            out[i, j] = best
    return out


@pytest.mark.parametrize("max_elements", [1 << 24, 7])  # one block; many tiny blocks over queries and scenes
def test_cvae_scene_distances_match_a_per_pair_loop(max_elements):
    g = torch.Generator().manual_seed(2)
    Q, S, V, d, C = 5, 4, 13, 6, 3
    q = (torch.randn(Q, d, generator=g, dtype=torch.float64), torch.randn(Q, d, generator=g, dtype=torch.float64) * 0.7, torch.randn(Q, C, generator=g, dtype=torch.float64) * 3)
    s = (torch.randn(S, V, d, generator=g, dtype=torch.float64), torch.randn(S, V, d, generator=g, dtype=torch.float64) * 0.7, torch.randn(S, V, C, generator=g, dtype=torch.float64) * 3)
    got = cvae_scene_distances(*q, *s, alpha=12288.0, max_elements=max_elements)
    assert got.shape == (Q, S) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), _loop_distances(*q, *s, 12288.0), rtol=1e-6, atol=1e-3)


def test_cvae_distances_survive_confident_logits_and_prefer_the_same_class():
    # one-hot-like logits would give log 0 without log-softmax
    q_mu, q_lv = torch.zeros(1, 2), torch.zeros(1, 2)
    q_lo = torch.tensor([[200.0, -200.0]])
    s_mu, s_lv = torch.zeros(2, 13, 2), torch.zeros(2, 13, 2)
    s_lo = torch.tensor([[200.0, -200.0], [-200.0, 200.0]]).view(2, 1, 2).expand(2, 13, 2)
    d = cvae_scene_distances(q_mu, q_lv, q_lo, s_mu, s_lv, s_lo)
    assert torch.isfinite(d).all() and d[0, 0] < d[0, 1]
    torch.testing.assert_close(d[0, 0], torch.tensor(2 * 2 * 0.5 * (math.log(2 * math.pi) + 1)))  # H_s of N(0,1) with itself


@pytest.mark.parametrize("name", [n for n in ARCHITECTURES if n != "cvae_vgg"])
def test_every_architecture_encodes_and_decodes(name):
    net = build_model(name, n_classes=4, image_size=32)
    x = torch.rand(2, 3, 32, 32)
    mu, logvar, logits = net.encode(x)
    assert mu.shape == (2, ARCHITECTURES[name].latent) and logvar.shape == mu.shape and logits.shape == (2, 4)
    assert net.decode(mu, F.one_hot(torch.tensor([0, 3]), 4)).shape == x.shape
    assert net(x).shape == (2, 2 * ARCHITECTURES[name].latent + 4)


def test_cvae_vgg_freezes_its_trunk():
    net = build_model("cvae_vgg", n_classes=3, image_size=32)
    assert not any(p.requires_grad for p in net.trunk.parameters())
    assert all(p.requires_grad for p in net.head_mu.parameters())
    assert net(torch.rand(1, 3, 32, 32)).shape == (1, 2 * 64 + 3)


def test_image_size_must_halve_cleanly():
    with pytest.raises(ConfigError, match="multiple of 16"):
        build_model("cvae2", n_classes=2, image_size=40)


@pytest.mark.parametrize("variance", ["scalar", "pixel"])
def test_loss_decreases_on_a_tiny_batch(variance):
    torch.manual_seed(0)
    net = build_model("cvae1", n_classes=2, image_size=16, decoder_variance=variance)
    x = torch.rand(8, 3, 16, 16)
    y = torch.tensor([0, 1] * 4)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    losses = []
    for _ in range(60):
        out = net.labelled_loss(x, y, beta=10.0)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert losses[-1] < losses[0] - 0.1 * abs(losses[0])
    assert net.labelled_loss(x, y, beta=10.0)["correct"].item() == 8  # it fits 8 labels


def test_unlabelled_loss_is_the_expected_labelled_loss_minus_entropy():
    torch.manual_seed(0)
    net = build_model("cvae1", n_classes=3, image_size=16)
    x = torch.rand(4, 3, 16, 16)
    value = net.unlabelled_loss(x)["loss"]
    assert torch.isfinite(value)
    value.backward()  # gradients reach the classifier head through q(y|x)
    assert net.head_logits.weight.grad.abs().sum() > 0


def _tiny_data(n=16, size=16):
    from scenesearch.models.train import TrainData

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    masks = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    masks[:, :, 4:12, 4:12] = 255
    images = torch.where(masks.bool(), images, torch.full_like(images, 255))  # renders on white
    is_render = torch.arange(n) % 4 != 0  # every fourth image a photo
    return TrainData(images, torch.arange(n) % 2, masks, is_render)


def _train_tiny(tmp_path, data, augment, seed=0):
    import dataclasses

    from scenesearch.config import AugmentConfig, TrainConfig
    from scenesearch.models.train import train

    cfg = TrainConfig(epochs=2, patience=5, batch_size=8, device="cpu", augment=augment or AugmentConfig(ops=()))
    net = build_model("cvae1", n_classes=2, image_size=16)
    result = train(net, data, cfg, tmp_path, seed, run_hash=str(dataclasses.astuple(cfg.augment)), beta=10.0, progress=False)
    return net, result


def test_training_augments_reproducibly_and_only_when_asked(tmp_path):
    from scenesearch.config import AugmentConfig

    data = _tiny_data()
    a, ra = _train_tiny(tmp_path / "a", data, AugmentConfig())
    b, _ = _train_tiny(tmp_path / "b", data, AugmentConfig())
    plain, rp = _train_tiny(tmp_path / "c", data, None)
    assert all("augment_seconds" in h for h in ra.history) and not any("augment_seconds" in h for h in rp.history)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k  # the same seed, the same augmented batches
    assert any(not torch.equal(v, plain.state_dict()[k]) for k, v in a.state_dict().items())


def test_train_data_checks_masks_and_render_flags():
    from scenesearch.errors import DataError
    from scenesearch.models.train import TrainData

    d = _tiny_data()
    assert TrainData(d.images, d.labels).masks is None  # both optional
    with pytest.raises(DataError, match="training masks must be a uint8"):
        TrainData(d.images, d.labels, d.masks[:, :, :8])
    with pytest.raises(DataError, match="is_render must be a bool"):
        TrainData(d.images, d.labels, d.masks, d.is_render.long())

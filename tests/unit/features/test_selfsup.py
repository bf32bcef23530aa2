"""Self-supervised VGG16 weights: NT-Xent, the trainer, the features step's selfsup path and its config."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from scenesearch import config
from scenesearch.config import SelfSupConfig
from scenesearch.errors import ConfigError
from scenesearch.features import resolve_weights
from scenesearch.features.selfsup import fold_batch_norm, nt_xent, train_backbone, training_rows, with_batch_norm
from scenesearch.features.vgg import build_descriptor

TINY = SelfSupConfig(epochs=1, batch_size=3, lr=1e-3, input_size=32, hidden_dim=16, projection_dim=8)


def _hand_nt_xent(z1, z2, t):
    """NT-Xent written out anchor by anchor."""
    z = [[c / math.sqrt(sum(c * c for c in v)) for c in v] for v in z1 + z2]
    b, total = len(z1), 0.0
    for i in range(2 * b):
        pos = (i + b) % (2 * b)
        sims = {j: sum(a * c for a, c in zip(z[i], z[j])) / t for j in range(2 * b) if j != i}
        total += -math.log(math.exp(sims[pos]) / sum(math.exp(s) for s in sims.values()))
    return total / (2 * b)


def test_nt_xent_matches_a_hand_computation_and_is_symmetric():
    z1, z2 = [[1.0, 0.0], [0.0, 2.0]], [[3.0, 1.0], [-1.0, 1.0]]
    a, b = torch.tensor(z1), torch.tensor(z2)
    assert float(nt_xent(a, b, 0.5)) == pytest.approx(_hand_nt_xent(z1, z2, 0.5), rel=1e-5)
    assert float(nt_xent(a, b, 0.5)) == pytest.approx(float(nt_xent(b, a, 0.5)), rel=1e-6)
    same = torch.ones(4, 3)  # all views alike: nothing tells the pair from the negatives
    assert float(nt_xent(same, same, 0.1)) == pytest.approx(math.log(2 * 4 - 1), rel=1e-5)


def test_nt_xent_is_low_when_pairs_match():
    z = torch.eye(4)
    assert float(nt_xent(z, z, 0.1)) < 0.01 < float(nt_xent(z, z.roll(1, 0), 0.1))


def test_folding_the_batch_norms_keeps_the_output():
    from torch import nn

    torch.manual_seed(0)
    convs = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1), nn.ReLU())
    trunk = with_batch_norm(convs)
    assert [type(m).__name__ for m in trunk] == ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d", "ReLU"]
    for bn in (trunk[1], trunk[4]):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.2, 0.2)
    trunk.eval()
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        before = trunk(x)
        fold_batch_norm(trunk)
        assert torch.allclose(convs(x), before, atol=1e-5)  # the plain convs alone now compute it
        assert torch.allclose(trunk(x), before, atol=1e-5)  # and the batch norms are identities


def test_training_rows_are_renders_and_train_queries_unflipped():
    domain = np.array(["scene", "scene", "photo", "photo", "photo", "sketch"])
    split = np.array(["test", "test", "train", "train", "val", "train"])
    flip = np.array([False, True, False, True, False, False])
    assert training_rows(domain, split, flip).tolist() == [True, False, True, False, False, True]


def _identity(x, alpha, is_render):
    return x  # the flip of `_views` still makes the two views differ


@pytest.fixture(scope="module")
def tiny():
    g = torch.Generator().manual_seed(0)
    return torch.rand(6, 3, 32, 32, generator=g), (torch.rand(6, 1, 32, 32, generator=g) * 255).to(torch.uint8), torch.tensor([True] * 4 + [False] * 2)


@pytest.fixture(scope="module")
def trained(tiny):
    images, masks, is_render = tiny
    return train_backbone(images, masks, is_render, TINY, seed=0, augmenter=_identity, progress=False)


def test_one_epoch_changes_the_trunk_only_and_reports(trained, tiny):
    from torchvision.models import vgg16

    vgg, stats = trained
    torch.manual_seed(0)
    init = vgg16(weights=None)  # what weights: none builds with seed 0
    assert not torch.equal(vgg.features[0].weight, init.features[0].weight)
    assert torch.equal(vgg.classifier[0].weight, init.classifier[0].weight)  # fc6 / fc7 stay the seeded init
    assert stats.steps == 2 and stats.n_images == 6 and stats.n_renders == 4
    assert stats.chance_loss == pytest.approx(math.log(5))
    assert math.isfinite(stats.final_loss) and len(stats.history) == 1


def test_training_is_deterministic_and_leaves_the_global_rng(trained, tiny):
    images, masks, is_render = tiny
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    again, stats = train_backbone(images, masks, is_render, TINY, seed=0, augmenter=_identity, progress=False)
    assert torch.equal(torch.random.get_rng_state(), before)
    for (name, a), b in zip(trained[0].state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    assert stats.final_loss == trained[1].final_loss
    other, _ = train_backbone(images, masks, is_render, TINY, seed=1, augmenter=_identity, progress=False)
    assert not torch.equal(other.features[0].weight, again.features[0].weight)


def test_real_augmenter_runs_with_and_without_masks(tiny):
    images, masks, is_render = tiny
    cfg = SelfSupConfig(epochs=1, batch_size=6, input_size=32, hidden_dim=16, projection_dim=8)
    for m in (masks, None):
        _, stats = train_backbone(images, m, is_render, cfg, seed=0, progress=False)
        assert stats.steps == 1 and math.isfinite(stats.final_loss)


def test_backbone_state_dict_loads_as_a_descriptor(trained, tmp_path):
    path = tmp_path / "backbone.pt"
    torch.save(trained[0].state_dict(), path)
    desc = build_descriptor(resolve_weights("selfsup", str(tmp_path)))
    assert torch.equal(desc.features[0].weight, trained[0].features[0].weight)


def test_selfsup_needs_the_features_folder():
    assert resolve_weights("none", None) == "none"
    assert resolve_weights("/w/vgg.pth", None) == "/w/vgg.pth"
    with pytest.raises(ConfigError, match="features.weights=selfsup.*no features output folder"):
        resolve_weights("selfsup", None)
    with pytest.raises(ConfigError, match="features.weights=selfsup.*backbone.pt"):
        build_descriptor("selfsup")


def test_features_step_with_selfsup_writes_the_backbone_and_reports(smoke_preprocessed, smoke_cfg, tmp_path):
    import dataclasses
    import json

    from scenesearch import features

    ss = dataclasses.replace(smoke_cfg.features.selfsup, epochs=1, batch_size=16, max_images=32, hidden_dim=16, projection_dim=8)
    cfg = dataclasses.replace(smoke_cfg.features, weights="selfsup", selfsup=ss)
    images = str(smoke_preprocessed["images"])
    result = features.run(images, str(tmp_path / "f"), cfg, smoke_cfg.seed, smoke_cfg.train.augment)
    assert result.weights == "selfsup"
    m = result.metrics()
    assert m["selfsup_epochs"] == 1 and m["selfsup_images"] == 32 and m["selfsup_seconds"] > 0
    assert json.loads((tmp_path / "f" / features.SELFSUP_FILE).read_text())["steps"] == 2
    desc = build_descriptor(resolve_weights("selfsup", str(tmp_path / "f")))
    none = build_descriptor("none", smoke_cfg.seed)
    assert not torch.equal(desc.features[0].weight, none.features[0].weight)
    # sharded: describe with the trained backbone, merge copies it; the same features as the whole run
    dirs = []
    for i in range(2):
        d = str(tmp_path / f"s{i}")
        features.write_descriptors(d, *features.describe(images, cfg, smoke_cfg.seed, i, 2, weights=resolve_weights("selfsup", str(tmp_path / "f"))))
        dirs.append(d)
    with pytest.raises(ConfigError, match="backbone_dir"):
        features.merge(images, dirs, str(tmp_path / "m"), cfg, smoke_cfg.seed)
    merged = features.merge(images, dirs, str(tmp_path / "m"), cfg, smoke_cfg.seed, backbone_dir=str(tmp_path / "f"))
    assert merged.metrics()["selfsup_final_loss"] == m["selfsup_final_loss"]
    assert (tmp_path / "m" / features.BACKBONE_FILE).read_bytes() == (tmp_path / "f" / features.BACKBONE_FILE).read_bytes()
    assert np.allclose(np.load(tmp_path / "m" / "features.npy"), np.load(tmp_path / "f" / "features.npy"), atol=1e-4)
    with pytest.raises(ConfigError, match="selfsup"):
        features.describe(images, cfg, smoke_cfg.seed)  # a shard without the trained weights
    # vgg_baseline serves with the trained backbone: a query embeds to its features row
    from scenesearch import methods, storage, train
    from scenesearch.methods import vgg_baseline

    run = dataclasses.replace(smoke_cfg, features=cfg)
    folder = train.run(run, "vgg_baseline", methods.Inputs(images=images, features=str(tmp_path / "f")), str(tmp_path / "t"), progress=False).out_dir
    meta = json.loads((Path(folder) / "method.json").read_text())["meta"]
    assert meta["weights"] == "selfsup"
    row = int(np.flatnonzero(np.asarray(storage.read_table(tmp_path / "f" / "index.parquet").column("domain").to_pylist()) != "scene")[0])
    query = torch.from_numpy(np.load(smoke_preprocessed["images"] / "images.npy")[[row]])
    served = vgg_baseline.load(Path(folder), meta).embed(query).numpy()
    assert np.allclose(served, np.load(tmp_path / "f" / "features.npy")[[row]], atol=1e-4)


@pytest.mark.parametrize(
    "override, message",
    [
        ("features.selfsup.epochs=0", "features.selfsup.epochs must be > 0"),
        ("features.selfsup.batch_size=1", "features.selfsup.batch_size must be >= 2"),
        ("features.selfsup.temperature=0", "features.selfsup.temperature must be > 0"),
        ("features.selfsup.input_size=16", "features.selfsup.input_size must be >= 32"),
        ("features.selfsup.max_images=-1", "features.selfsup.max_images must be 0"),
        ("features.selfsup.weight_decay=-1", "features.selfsup.weight_decay must be >= 0"),
        ("features.selfsup.lr=0", "features.selfsup.lr must be > 0"),
        ("features.selfsup.augment_p=1.5", "features.selfsup.augment_p must be in"),
        ("features.selfsup.precision=fp16", "features.selfsup.precision must be one of"),
        ("features.selfsup.foo=1", "unknown config field features.selfsup.foo"),
    ],
)
def test_selfsup_config_names_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        config.load("default", [override])


def test_selfsup_preset_loads():
    cfg = config.load("selfsup")
    assert cfg.features.weights == "selfsup" and "selfsup" in config.WEIGHTS_CHOICES
    assert cfg.methods == config.load("default").methods

import pytest

from scenesearch import config
from scenesearch.errors import ConfigError


@pytest.mark.parametrize("preset", ["default", "smoke", "full"])
def test_presets_load_and_validate(preset):
    cfg = config.load(preset)
    assert cfg.name == preset
    assert config.from_json(cfg.to_json()) == cfg


@pytest.mark.parametrize(
    "override, message",
    [
        ("features.pca_dim=-1", "features.pca_dim must be > 0, got -1"),
        ("features.device=tpu", "features.device must be one of auto, cpu, cuda; got 'tpu'"),
        ("render.size=abc", "render.size must be an integer, got 'abc'"),
        ("render.foo=1", "unknown config field render.foo"),
        ("train.architectures=[cvae1]", "unknown config field train.architectures"),
        ("methods=[cvae1]", "methods must be a mapping"),
        ("data.split_fractions=[0.5, 0.5, 0.5]", "data.split_fractions must be three non-negative numbers summing to 1"),
        ("render.render_size=100", "render.render_size must be a multiple of render.size"),
        ("seed=-3", "seed must be >= 0, got -3"),
    ],
)
def test_bad_fields_are_named(override, message):
    with pytest.raises(ConfigError) as e:
        config.load("default", [override])
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_the_champion_metric_follows_the_split_unless_set():
    assert config.load("smoke").registry_metric() == "test_mAP"
    assert config.load("smoke", ["data.split=zero_shot"]).registry_metric() == "test_unseen_mAP"
    assert config.load("smoke", ["data.split=zero_shot", "registry.metric=test_mAP"]).registry_metric() == "test_mAP"
    # the default preset judges on its hard photos, not on the easy renders beside them
    assert config.load("default").registry_metric() == "test_photo_mAP"


def test_override_applies():
    cfg = config.load("default", ["features.pca_dim=64", "evaluate.splits=[test]"])
    assert cfg.features.pca_dim == 64 and cfg.evaluate.splits == ("test",)


def test_unknown_preset_lists_known():
    with pytest.raises(ConfigError, match="unknown preset 'nope'; known presets: default, full, mixing, nano, selfsup, smoke, zeroshot"):
        config.load("nope")


def test_flat_has_dotted_scalars():
    flat = config.load("default").flat()
    assert flat["features.weights"] == "none"
    assert flat["methods.cvae_m2.variants"] == "cvae1"

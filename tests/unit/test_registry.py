"""Promotion rules of the model registry: better, worse, other dataset, no champion; by hand with --force."""

import math

import pytest

from scenesearch import registry, tracking
from scenesearch.errors import ScenesearchError

FP = "fp-aaa"


@pytest.mark.parametrize(
    "value, fingerprint, champion, promote, words",
    [
        (0.5, FP, None, True, "no champion"),
        (0.6, FP, {"test_mAP": "0.500000", "dataset_fingerprint": FP}, True, "beats"),
        (0.4, FP, {"test_mAP": "0.500000", "dataset_fingerprint": FP}, False, "does not beat"),
        (0.5, FP, {"test_mAP": "0.500000", "dataset_fingerprint": FP}, False, "ties the champion's: a tie keeps the champion"),
        # the same score as the champion's, which its tag stores to 6 decimals: still a tie (it was "beats")
        (0.4169421, FP, {"test_mAP": f"{0.4169421:.6f}", "dataset_fingerprint": FP}, False, "ties the champion's"),
        (0.4169426, FP, {"test_mAP": f"{0.4169421:.6f}", "dataset_fingerprint": FP}, True, "test_mAP 0.416943 beats the champion's 0.416942"),
        (0.9, "fp-bbb", {"test_mAP": "0.500000", "dataset_fingerprint": FP}, False, "another dataset"),
        (math.nan, FP, None, False, "nan"),
        (0.1, FP, {"dataset_fingerprint": FP}, True, "has no test_mAP"),
    ],
)
def test_decide(value, fingerprint, champion, promote, words):
    d = registry.decide("test_mAP", value, fingerprint, champion)
    assert d.promote is promote and words in d.reason


def _version(c, name, value, fingerprint=FP):
    try:
        c.create_registered_model(name)
    except Exception:
        pass
    # other test_* metrics are tagged too (alphabetically before test_mAP): promotion must read test_mAP
    tags = {"test_DCG": f"{1 - value:.6f}", "test_mAP": f"{value:.6f}", "dataset_fingerprint": fingerprint}
    return str(c.create_model_version(name, source="file:///nowhere", tags=tags).version)


def test_champion_moves_only_to_better_versions_and_by_hand(mlflow_uri):
    c = tracking.client(mlflow_uri)
    name = "m"
    v1 = _version(c, name, 0.5)
    assert registry.apply(c, name, v1, registry.decide("test_mAP", 0.5, FP, registry.champion_tags(c, name))) == "champion"
    v2 = _version(c, name, 0.4)
    assert registry.apply(c, name, v2, registry.decide("test_mAP", 0.4, FP, registry.champion_tags(c, name))) == "challenger"
    assert str(c.get_model_version_by_alias(name, "champion").version) == v1
    assert c.get_model_version(name, v2).tags["promotion"].startswith("challenger: test_mAP 0.400000 does not beat")

    with pytest.raises(ScenesearchError, match=f"version {v2} was not promoted: test_mAP 0.400000 does not beat the champion's 0.500000"):
        registry.promote(mlflow_uri, name, v2)
    v3 = _version(c, name, 0.7, fingerprint="fp-other")
    with pytest.raises(ScenesearchError, match="another dataset"):
        registry.promote(mlflow_uri, name, v3)
    assert registry.promote(mlflow_uri, name, v2, force=True).reason == "promoted by hand with --force"
    assert str(c.get_model_version_by_alias(name, "champion").version) == v2
    v4 = _version(c, name, 0.45)
    assert "beats" in registry.promote(mlflow_uri, name, v4).reason
    assert str(c.get_model_version_by_alias(name, "champion").version) == v4
    with pytest.raises(ScenesearchError, match="has no version 99"):
        registry.promote(mlflow_uri, name, "99")


def test_promote_cli_says_one_sentence(mlflow_uri, capsys):
    from scenesearch.cli import main

    c = tracking.client(mlflow_uri)
    v = _version(c, "scenesearch", 0.3)
    judged_on = ["--set", "registry.metric=test_mAP"]  # the default preset judges on test_photo_mAP, which these versions lack
    assert main(["promote", "--version", "1"]) == 1
    assert "test_photo_mAP" in capsys.readouterr().err
    assert main(["promote", "--version", str(v), *judged_on]) == 0
    assert str(c.get_model_version_by_alias("scenesearch", "champion").version) == v
    assert main(["promote", "--version", "7", *judged_on]) == 1
    assert capsys.readouterr().err.strip().endswith("registered model 'scenesearch' has no version 7 in " + mlflow_uri)

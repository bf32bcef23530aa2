"""A loaded model's pinned requirements are compared with this environment by name (serving.load)."""

from importlib import metadata

from scenesearch import serving


def test_requirement_mismatches_name_each_missing_or_other_version(tmp_path):
    numpy = metadata.version("numpy")
    req = tmp_path / "requirements.txt"
    req.write_text(f"mlflow=={metadata.version('mlflow')}\nnumpy==0.0.1\nno-such-package-xyz==1.0\n-r other.txt\ntorch>=2\n\n")
    assert serving.requirement_mismatches(req) == [
        f"it requires numpy==0.0.1, this environment has {numpy}",
        "it requires no-such-package-xyz==1.0, which is not installed",
    ]
    assert serving.requirement_mismatches(tmp_path / "absent.txt") == []


def test_the_pins_a_model_is_logged_with_match_this_environment(tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text("\n".join(serving.pip_requirements()) + "\n")
    assert len(req.read_text().splitlines()) == len(serving.SERVING_PACKAGES)
    assert serving.requirement_mismatches(req) == []

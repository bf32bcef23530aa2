"""FID / IS through torchmetrics with a randomly initialised torch-fidelity InceptionV3 written by
the test (nothing is downloaded), and the Fréchet distance in a given embedding against scipy."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from scenesearch.errors import ConfigError
from scenesearch.evaluation import fidelity

N = 4  # Inception at 299 px is slow on a CPU


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    """torch-fidelity's InceptionV3 state dict, random but with BatchNorm statistics of real inputs
    (else the activations vanish), saved as float16 to halve the file."""
    import torch_fidelity.feature_extractor_inceptionv3 as m

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(m, "load_state_dict_from_url", lambda *a, **k: None)
        mp.setattr(m.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, *a, **k: None)
        torch.manual_seed(0)
        net = m.FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"])
    for bn in net.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.reset_running_stats()
            bn.momentum = None  # cumulative: the statistics of this one batch
    net.train()
    with torch.no_grad():
        net((torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8))
    path = tmp_path_factory.mktemp("inception") / "inception.pt"
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in net.state_dict().items()}, path)
    return str(path)


def _images(n, seed, shift=0.0):
    x = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    return (x * 0.5 + shift).clamp(0, 1)


def _linear(dim=4, seed=0):
    w = torch.randn(3 * 32 * 32, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (lambda x: x.double().flatten(1) @ w), dim


@pytest.mark.slow  # InceptionV3 at 299 px on a CPU: about a minute here
def test_measure_with_inception_weights_gives_fid_and_is(inception_weights):
    real, shifted = _images(N, 0), _images(N, 1, shift=0.25)  # brighter, not saturated: the random net's logits stay finite
    embed, dim = _linear()
    out = fidelity.measure(real, shifted, inception_weights, embed, dim)
    assert set(out.metrics) == {"fid", "is_mean", "is_std", "fid_vgg"} and out.skipped == ""
    assert all(math.isfinite(v) for k, v in out.metrics.items() if k != "is_std")
    assert math.isnan(out.metrics["is_std"])  # 4 images are one split of the score: no spread to report
    assert out.metrics["fid"] > 0 and out.metrics["fid_vgg"] > 0 and out.metrics["is_mean"] >= 1 - 1e-6
    same = fidelity.inception_scores(real, real, inception_weights, splits=1)
    assert abs(same["fid"]) < 1e-3 * out.metrics["fid"]


@pytest.mark.slow
def test_the_inception_score_is_that_of_the_given_images(inception_weights):
    """IS with one split, by hand from the logits of the same extractor on the images as uint8."""
    from torchmetrics.image.fid import NoTrainInceptionV3

    fake = _images(N, 2, shift=0.25)
    got = fidelity.inception_scores(_images(2, 3), fake, inception_weights, splits=1)
    net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["logits_unbiased"], feature_extractor_weights_path=inception_weights)
    u8 = (fake * 255).round().to(torch.uint8)

    def score(images):
        with torch.no_grad():
            logits = net(images).double().numpy()
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        return math.exp(np.mean(np.sum(p * (np.log(p) - np.log(p.mean(0))), axis=1)))

    want = score(u8)
    assert want > 1 + 1e-4  # the random network tells these images apart
    # the value the images get after uint8 * 255 wraps around (256 - x): what a double conversion computes
    wrapped = score(u8 * 255)
    assert got["is_mean"] == pytest.approx(want, rel=1e-3), f"IS {got['is_mean']} is not that of the images ({want}); of 256 - x: {wrapped}"


def test_measure_without_weights_reports_fid_vgg_only_and_says_why():
    embed, dim = _linear()
    out = fidelity.measure(_images(20, 0), _images(20, 1, 0.3), "", embed, dim)
    assert set(out.metrics) == {"fid_vgg"} and math.isfinite(out.metrics["fid_vgg"])
    assert "not computed" in out.skipped and "fid_vgg" in out.skipped


def test_frechet_in_is_the_closed_form_frechet_distance():
    embed, dim = _linear(dim=5, seed=1)
    real, fake = _images(40, 4), _images(30, 5, shift=0.2)
    a, b = embed(real).numpy(), embed(fake).numpy()
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False, ddof=1), np.cov(b, rowvar=False, ddof=1)  # torchmetrics: unbiased covariances
    want = float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real))
    got = fidelity.frechet_in(embed, dim, real, fake, batch_size=16)
    assert got == pytest.approx(want, rel=1e-3)
    assert fidelity.frechet_in(embed, dim, real, real) == pytest.approx(0, abs=1e-6 * want)


def test_weights_that_are_not_a_state_dict_name_the_option(tmp_path):
    pickled = tmp_path / "pickled.pt"
    torch.save({"a": "x"}, pickled)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    for path in (pickled, garbage, tmp_path / "missing.pt"):
        with pytest.raises(ConfigError, match="evaluate.inception_weights"):
            fidelity.checked_weights(str(path), str(tmp_path / "out"))
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(2)}, good)
    (tmp_path / "out").mkdir()
    copy = fidelity.checked_weights(str(good), str(tmp_path / "out"))
    assert torch.equal(torch.load(copy, weights_only=True)["w"], torch.ones(2))

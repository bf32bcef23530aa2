"""Realism of generated images: FID and Inception Score through torchmetrics (torch-fidelity's
InceptionV3), or, without Inception weights, the Fréchet distance in the project's VGG descriptor
space, named ``fid_vgg`` everywhere: it is not FID and is never reported as FID.

Inception weights come from ``evaluate.inception_weights`` (a local path or an s3:// URI holding
torch-fidelity's ``pt_inception-2015-12-05`` state dict). They are read with
``torch.load(weights_only=True)`` first (a plain state dict, no pickled code), then handed to the
library, which would otherwise download them.
"""

from __future__ import annotations

import io
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from scenesearch import storage
from scenesearch.errors import ConfigError

log = logging.getLogger(__name__)
NO_INCEPTION = "evaluate.inception_weights is not set and the Inception weights cannot be downloaded here"


@dataclass
class Fidelity:
    """What was measured; the reason in `skipped` says why FID / IS are absent."""

    metrics: dict[str, float] = field(default_factory=dict)  # fid, is_mean, is_std (with Inception) or fid_vgg
    skipped: str = ""


def _batches(x: torch.Tensor, size: int):
    for i in range(0, len(x), size):
        yield x[i : i + size]


def checked_weights(uri: str, tmp_dir: str) -> str:
    """A local copy of the Inception state dict at `uri`, verified to be plain tensors.

    Raises:
        ConfigError: missing or not a loadable state dict, naming the option.
    """
    try:
        state = torch.load(io.BytesIO(storage.read_bytes(uri)), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - whatever the file is, the user gets one sentence naming the option
        raise ConfigError(f"evaluate.inception_weights={uri}: cannot load a state dict from it ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"evaluate.inception_weights={uri}: not a state dict of tensors")
    path = Path(tmp_dir) / "inception.pt"
    torch.save(state, path)
    return str(path)


def inception(weights_path: str, features: str):
    """torch-fidelity's InceptionV3 (torchmetrics' NoTrainInceptionV3) with the given weights."""
    from torchmetrics.image.fid import NoTrainInceptionV3

    try:
        return NoTrainInceptionV3(name="inception-v3-compat", features_list=[features], feature_extractor_weights_path=weights_path)
    except RuntimeError as e:
        raise ConfigError(f"evaluate.inception_weights: not torch-fidelity's InceptionV3 state dict ({str(e).splitlines()[0]})") from None


def inception_scores(real: torch.Tensor, fake: torch.Tensor, weights_uri: str, batch_size: int = 64, splits: int = 10) -> dict[str, float]:
    """FID (2048-d pool features) of `fake` against `real` and the Inception Score of `fake`
    (mean and SD over splits of at least 32 images; is_std is NaN below 64, one split).

    Args:
        real, fake: (N, 3, H, W) float in [0, 1] (resized to 299 inside the library).
    """
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.inception import InceptionScore

    with tempfile.TemporaryDirectory() as tmp:
        path = checked_weights(weights_uri, tmp)
        fid = FrechetInceptionDistance(feature=2048, normalize=True, feature_extractor_weights_path=path)
        # splits of at least 32 images (IS over one image is 1 by construction)
        score = InceptionScore(feature=inception(path, "logits_unbiased"), normalize=False, splits=max(1, min(splits, len(fake) // 32)))
    with torch.inference_mode():
        for b in _batches(real, batch_size):
            fid.update(b.float(), real=True)
        for b in _batches(fake, batch_size):
            fid.update(b.float(), real=False)
            # uint8 made here (rounded): its normalize=True would multiply uint8 by 255 again with a custom extractor
            score.update((b.float().clamp(0, 1) * 255).round().to(torch.uint8))
        is_mean, is_std = score.compute()
        return {"fid": float(fid.compute()), "is_mean": float(is_mean), "is_std": float(is_std)}


class _Embedder(torch.nn.Module):
    """Wraps an images -> (B, d) function as the feature module torchmetrics' FID takes."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], dim: int):
        super().__init__()
        self.fn, self.num_features = fn, dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x).double()


def frechet_in(embed: Callable[[torch.Tensor], torch.Tensor], dim: int, real: torch.Tensor, fake: torch.Tensor, batch_size: int = 64) -> float:
    """The Fréchet distance between the Gaussians fitted to embed(real) and embed(fake), computed by
    torchmetrics' FID with `embed` as its feature extractor (fid_vgg with the VGG descriptor)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    fid = FrechetInceptionDistance(feature=_Embedder(embed, dim), normalize=True)
    with torch.inference_mode():
        for b in _batches(real, batch_size):
            fid.update(b.float(), real=True)
        for b in _batches(fake, batch_size):
            fid.update(b.float(), real=False)
        return float(fid.compute())


def measure(real: torch.Tensor, fake: torch.Tensor, inception_weights: str, vgg_embed: Callable[[torch.Tensor], torch.Tensor], vgg_dim: int,
            batch_size: int = 64) -> Fidelity:
    """FID and IS with Inception weights, and fid_vgg always (the two are different numbers on
    different scales: fid_vgg compares runs of this project only)."""
    out = Fidelity()
    out.metrics["fid_vgg"] = frechet_in(vgg_embed, vgg_dim, real, fake, batch_size)
    if inception_weights:
        out.metrics.update(inception_scores(real, fake, inception_weights, batch_size))
    else:
        out.skipped = f"FID and IS not computed: {NO_INCEPTION}; fid_vgg is the Fréchet distance in the VGG16 descriptor space instead"
        log.warning(out.skipped)
    return out


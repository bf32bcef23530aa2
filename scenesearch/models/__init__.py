"""Learned retrieval models. CVAE-M2 (Pérez Rey et al., SHREC 2019) first.

`ARCHITECTURES` names every network the train step can build; it is plain data so that
validating a config never imports torch. `build_model` turns a name into a network.

| name     | encoder stages (stride 2)      | convs/stage | batch norm | latent d | hidden |
|----------|--------------------------------|-------------|------------|----------|--------|
| cvae1    | 32, 64, 128                    | 1           | no         | 16       | 256    |
| cvae2    | 32, 64, 128, 256               | 1           | no         | 32       | 512    |
| cvae3    | 64, 128, 256, 512              | 1           | yes        | 64       | 512    |
| cvae4    | 64, 128, 256, 512              | 2           | yes        | 128      | 1024   |
| cvae_vgg | VGG16 conv1_1..conv5_3, frozen | -           | -          | 64       | 512    |

The decoders mirror the encoders (transposed convolutions). Parameter counts at 64x64 with 10
classes are in the README (`python -m scenesearch.models` prints them).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ArchSpec:
    channels: tuple[int, ...]  # encoder stage widths; the decoder runs them backwards
    convs_per_stage: int
    batch_norm: bool
    latent: int
    hidden: int
    vgg_encoder: bool = False  # the encoder trunk is VGG16's frozen convolutional part


ARCHITECTURES: dict[str, ArchSpec] = {
    "cvae1": ArchSpec((32, 64, 128), 1, False, 16, 256),
    "cvae2": ArchSpec((32, 64, 128, 256), 1, False, 32, 512),
    "cvae3": ArchSpec((64, 128, 256, 512), 1, True, 64, 512),
    "cvae4": ArchSpec((64, 128, 256, 512), 2, True, 128, 1024),
    "cvae_vgg": ArchSpec((32, 64, 128, 256), 1, False, 64, 512, vgg_encoder=True),
}


def build_model(architecture: str, n_classes: int, image_size: int, decoder_variance: str = "scalar", weights: str = "none", seed: int = 0):
    """A CVAE-M2 network by name (see the table above).

    Args:
        weights: VGG16 weights for ``cvae_vgg`` (the features step's option: none, imagenet, a path).

    Raises:
        ConfigError: unknown name, or an image size the network cannot halve often enough.
    """
    from scenesearch.models.cvae_m2 import CVAE

    from scenesearch.errors import ConfigError

    if architecture not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture '{architecture}'; known: {', '.join(ARCHITECTURES)}")
    spec = ARCHITECTURES[architecture]
    if image_size % (2 ** len(spec.channels)) or image_size < 2 ** len(spec.channels):
        raise ConfigError(f"{architecture} halves the image {len(spec.channels)} times, so the image size must be a multiple of {2 ** len(spec.channels)}, got {image_size}")
    return CVAE(architecture, spec, n_classes, image_size, decoder_variance, weights, seed)

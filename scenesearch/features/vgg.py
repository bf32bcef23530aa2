"""VGG16 multi-layer descriptor f = [fc7, GAP(conv5_3), GAP(conv4_3), GAP(conv3_3)].

Each block is L2-normalised before concatenation so the 4096-d fc7 does not drown the conv
blocks (4096 + 512 + 512 + 256 = 5376 dims). Weights: ``none`` (seeded random init),
``imagenet`` (torchvision's weights enum: works where the file is cached in $TORCH_HOME or
downloadable), or a state-dict path loaded with ``torch.load(weights_only=True)``. The option
``selfsup`` is trained by the features step (scenesearch.features.selfsup) and reaches
`build_descriptor` as the path of its backbone.pt (scenesearch.features.resolve_weights).
"""

from __future__ import annotations

import io
import logging

import torch
import torch.nn.functional as F
from torch import nn

from scenesearch.errors import ConfigError
from scenesearch.features import MAPS, SELFSUP

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision vgg16().features indices of the ReLUs after conv3_3, conv4_3, conv5_3
TAPS = {"conv3_3": 15, "conv4_3": 22, "conv5_3": 29}
# MAPS (in the package, light to import): the conv maps the methods over feature maps start from:
# pool4 (the input of the conv5 block, which the *_gem methods fine-tune) and conv5_3 after its
# ReLU (what pooled pools). SELFSUP: features.weights trained by the features step itself.
MAP_CHANNELS = 512
DESCRIPTOR_DIM = 4096 + 512 + 512 + 256


class VGGDescriptor(nn.Module):
    """Frozen VGG16 returning the multi-layer descriptor; input (B, 3, H, W) in [0, 1]."""

    def __init__(self, vgg: nn.Module, weights_name: str):
        super().__init__()
        self.features = vgg.features
        self.avgpool = vgg.avgpool
        self.fc = vgg.classifier[:5]  # fc6, relu, dropout, fc7, relu -> fc7 activations
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.meta = {"architecture": "vgg16", "weights": weights_name, "dim": DESCRIPTOR_DIM, "taps": ["fc7", "conv5_3", "conv4_3", "conv3_3"]}
        self.eval().requires_grad_(False)

    def __repr__(self) -> str:
        return f"VGGDescriptor(weights={self.meta['weights']!r}, dim={DESCRIPTOR_DIM})"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_maps(x)[0]

    def forward_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(descriptors (B, 5376), {pool4, conv5_3} conv maps (B, 512, h, w)) in one pass."""
        x = (x - self.mean) / self.std
        pooled, maps = {}, {}
        for i, layer in enumerate(self.features):
            x = layer(x)
            for name, idx in TAPS.items():
                if i == idx:
                    pooled[name] = x.mean(dim=(2, 3))  # GAP: (B, C)
            for name, idx in MAPS.items():
                if i == idx:
                    maps[name] = x
        fc7 = self.fc(torch.flatten(self.avgpool(x), 1))  # (B, 4096)
        blocks = [fc7, pooled["conv5_3"], pooled["conv4_3"], pooled["conv3_3"]]
        return torch.cat([F.normalize(b, dim=1) for b in blocks], dim=1), maps  # (B, 5376)

    def maps(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """The conv map `name` (a key of MAPS) of images (B, 3, H, W) in [0, 1], without the rest."""
        x = (x - self.mean) / self.std
        return self.features[: MAPS[name] + 1](x)

    def conv5(self, pool4: torch.Tensor) -> torch.Tensor:
        """conv5_3 (after its ReLU) from pool4 maps: the conv5 block alone."""
        return self.features[MAPS["pool4"] + 1 : MAPS["conv5_3"] + 1](pool4)


def build_descriptor(weights: str = "none", seed: int = 0) -> VGGDescriptor:
    """Build the descriptor network.

    Args:
        weights: ``none``, ``imagenet`` or a path to a VGG16 state dict (``selfsup``: the path of
            the features step's backbone.pt, see scenesearch.features.resolve_weights).
        seed: seeds the random init when weights is ``none``.

    Raises:
        ConfigError: the weights cannot be obtained, in one sentence naming the option.
    """
    from torchvision.models import VGG16_Weights, vgg16

    if weights == "none":
        torch.manual_seed(seed)
        log.warning("features.weights: none — VGG16 is randomly initialised (seed %d), not pretrained", seed)
        return VGGDescriptor(vgg16(weights=None), "none")
    if weights == "imagenet":
        try:
            return VGGDescriptor(vgg16(weights=VGG16_Weights.IMAGENET1K_V1), "imagenet")
        except Exception as e:  # no cached file and no network
            raise ConfigError(
                f"features.weights=imagenet: the VGG16 ImageNet weights are neither cached in $TORCH_HOME nor downloadable ({type(e).__name__}); "
                "pass a local state-dict path or use 'none'"
            ) from None
    if weights == SELFSUP:
        raise ConfigError(
            "features.weights=selfsup names weights the features step trains: build the descriptor from its backbone.pt "
            "(scenesearch.features.resolve_weights(weights, features_dir))"
        )
    from scenesearch import storage

    try:
        state = torch.load(io.BytesIO(storage.read_bytes(weights)), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(f"features.weights={weights}: cannot load a state dict from it ({e})") from None
    model = vgg16(weights=None)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ConfigError(f"features.weights={weights}: not a VGG16 state dict ({str(e).splitlines()[0]})") from None
    return VGGDescriptor(model, weights)


def resolve_device(name: str, field: str = "features.device") -> torch.device:
    """auto: CUDA when present, else the CPU; `field` names the config option in the error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{field}=cuda but no CUDA device is available; use auto or cpu")
    return torch.device(name)


def resize(x: torch.Tensor, input_size: int) -> torch.Tensor:
    """Square images to the network's input side (antialiased bilinear), unchanged when they match."""
    if x.shape[-1] == input_size:
        return x
    return F.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False, antialias=True)


@torch.inference_mode()
def extract(model: VGGDescriptor, images: torch.Tensor, batch_size: int, device: torch.device, input_size: int, progress: bool = True) -> torch.Tensor:
    """Descriptors of (N, 3, H, W) images in [0, 1], batched on `device`; (N, 5376) float32 on the CPU."""
    return extract_maps(model, images, batch_size, device, input_size, progress, keep_maps=False)[0]


@torch.inference_mode()
def extract_maps(model: VGGDescriptor, images: torch.Tensor, batch_size: int, device: torch.device, input_size: int, progress: bool = True,
                 keep_maps: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Descriptors (N, 5376) float32 and, with `keep_maps`, the MAPS conv maps (N, 512, h, w) as
    float16 (half the memory; their values are ReLU activations of modest range), on the CPU."""
    from tqdm import tqdm

    model = model.to(device)
    out, maps = [], {name: [] for name in MAPS} if keep_maps else {}
    for start in tqdm(range(0, len(images), batch_size), desc="features", unit="batch", disable=not progress):
        x = resize(images[start : start + batch_size].to(device, non_blocking=True), input_size)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            desc, m = model.forward_maps(x)
        out.append(desc.float().cpu())
        for name in maps:
            maps[name].append(m[name].to(torch.float16).cpu())
    side = input_size // 16
    return (torch.cat(out) if out else torch.empty((0, DESCRIPTOR_DIM)),
            {n: torch.cat(v) if v else torch.empty((0, MAP_CHANNELS, side, side), dtype=torch.float16) for n, v in maps.items()})


@torch.inference_mode()
def conv_maps(model: VGGDescriptor, images: torch.Tensor, name: str, batch_size: int, device: torch.device, input_size: int,
              progress: bool = False) -> torch.Tensor:
    """The conv map `name` (pool4 or conv5_3) of (N, 3, H, W) images: (N, 512, h, w) float16 on the CPU."""
    from tqdm import tqdm

    model = model.to(device)
    out = []
    for start in tqdm(range(0, len(images), batch_size), desc=name, unit="batch", disable=not progress):
        x = resize(images[start : start + batch_size].to(device, non_blocking=True), input_size)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out.append(model.maps(x, name).to(torch.float16).cpu())
    side = input_size // 16
    return torch.cat(out) if out else torch.empty((0, MAP_CHANNELS, side, side), dtype=torch.float16)

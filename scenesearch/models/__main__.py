"""`python -m scenesearch.models`: the architecture table with parameter counts (64x64, 10 classes)."""

from scenesearch.models import ARCHITECTURES, build_model

for name, spec in ARCHITECTURES.items():
    net = build_model(name, n_classes=10, image_size=64)
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    total = sum(p.numel() for p in net.parameters())
    print(f"{name:9s} latent {spec.latent:4d}  trainable {trainable:>11,d}  total {total:>11,d}")

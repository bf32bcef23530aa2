"""`vgg_baseline`: the VGG16 multi-layer descriptor + PCA of the features step, min-view cosine distance.

D(x*, S) = min over the views v of S (and their flips) of 1 - cos(f(x*), f(v)), f the PCA-projected
descriptor. Nothing is learned here (the PCA is the features step's); `fit` copies the PCA and
records the descriptor's weights so that a served model embeds a new query image the same way.
With ``features.weights: none`` the descriptor is rebuilt from its seed (a fixed random init);
with real weights their state dict is saved in the model folder (``selfsup``: the backbone the
features step trained, its backbone.pt).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scenesearch import storage
from scenesearch.methods.base import FitContext, Fitted, Method, MethodConfig, read_array_rows

DESCRIPTOR_FILE = "descriptor.pt"


@dataclass(frozen=True)
class VGGBaselineConfig(MethodConfig):
    pass


class VGGRetriever:
    """Embeds images with the VGG16 descriptor and the saved PCA; scores by min-view cosine distance."""

    def __init__(self, folder: Path, meta: dict):
        self.folder, self.meta = Path(folder), meta
        self.image_size = int(meta["image_size"])
        self._net = None
        pca = np.load(io.BytesIO(storage.read_bytes(self.folder / "pca.npz")))  # a local folder or s3://
        self.mean, self.components = pca["mean"].astype(np.float32), pca["components"].astype(np.float32)

    def _descriptor(self):
        if self._net is None:
            import torch

            from torchvision.models import vgg16

            from scenesearch.features.vgg import VGGDescriptor, build_descriptor

            saved = self.folder / DESCRIPTOR_FILE
            if storage.exists(saved):  # real weights (imagenet, a path, selfsup) travel with the model
                self._net = VGGDescriptor(vgg16(weights=None), self.meta["weights"])
                self._net.load_state_dict(torch.load(io.BytesIO(storage.read_bytes(saved)), map_location="cpu", weights_only=True))
            else:
                self._net = build_descriptor(self.meta["weights"], int(self.meta["seed"]))
        return self._net

    def embed(self, images):
        import torch

        from scenesearch.features.vgg import extract

        desc = extract(self._descriptor(), images, int(self.meta["batch_size"]), torch.device("cpu"), int(self.meta["input_size"]), progress=False).numpy()
        return torch.from_numpy((desc - self.mean) @ self.components.T)  # sklearn PCA.transform (no whitening)

    def score(self, queries, gallery):
        from scenesearch.distances import min_view_cosine_distances

        return min_view_cosine_distances(queries, gallery)


def save_descriptor(ctx: FitContext, method: str) -> tuple[np.ndarray, dict]:
    """Copy what embeds a new query image like the features step into ctx.out_dir (its PCA, and the
    VGG16 state dict unless the weights are a seeded random init) and read the descriptors.

    Shared by every method over the descriptors: their retrievers embed a query with `VGGRetriever`
    built from the returned meta and the same folder.

    Returns:
        (descriptors (N, d) float32 of ctx.index's rows, meta for `VGGRetriever`).
    """
    folder = ctx.inputs.need("features", method)
    feats = read_array_rows(folder, "features.npy", ctx.index)
    storage.write_bytes(ctx.out_dir / "pca.npz", storage.read_bytes(Path(folder) / "pca.npz"))
    f = ctx.run.features
    if f.weights != "none":
        import torch

        from scenesearch.features import resolve_weights
        from scenesearch.features.vgg import build_descriptor

        buf = io.BytesIO()
        torch.save(build_descriptor(resolve_weights(f.weights, folder), ctx.run.seed).state_dict(), buf)
        storage.write_bytes(ctx.out_dir / DESCRIPTOR_FILE, buf.getvalue())
    meta = {"weights": f.weights, "seed": ctx.run.seed, "input_size": f.input_size, "batch_size": f.batch_size, "image_size": ctx.run.preprocess.size}
    return feats.astype(np.float32), meta


def fit(ctx: FitContext) -> Fitted:
    feats, meta = save_descriptor(ctx, "vgg_baseline")
    return Fitted(feats, meta, params={"weights": meta["weights"], "feature_dim": str(feats.shape[1])})


def load(folder: Path, meta: dict) -> VGGRetriever:
    return VGGRetriever(folder, meta)


METHOD = Method(
    name="vgg_baseline",
    summary="VGG16 multi-layer descriptor + PCA, min-view cosine distance",
    config=VGGBaselineConfig,
    consumes=("features",),
    fit=fit,
    load=load,
)

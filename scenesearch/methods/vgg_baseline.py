"""`vgg_baseline`: the VGG16 multi-layer descriptor + PCA of the features step, min-view cosine distance.

D(x*, S) = min over the views v of S (and their flips) of 1 - cos(f(x*), f(v)), f the PCA-projected
descriptor. Nothing is learned here (the PCA is the features step's); `fit` copies the PCA and
records the descriptor's weights so that a served model embeds a new query image the same way.
Options (`scenesearch.methods._post`): ``whiten`` (pca | learned, fitted on the train split),
``query_expansion`` (average | alpha) and ``diffusion``.
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
from scenesearch.methods import _post
from scenesearch.methods.base import FitContext, Fitted, Method, read_array_rows

DESCRIPTOR_FILE = "descriptor.pt"


@dataclass(frozen=True)
class VGGBaselineConfig(_post.PostConfig):
    whiten: str = "none"  # none | pca | learned (L2 -> whitening -> L2, fitted on the train split)
    query_expansion: str = "none"  # none | average (AQE) | alpha (alpha-QE)
    diffusion: bool = False  # re-rank by diffusion over the gallery views

    def post(self) -> _post.Post:
        return _post.Post(self.whiten, self.query_expansion, bool(self.diffusion))

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        _post.check(self.post(), prefix)


def load_descriptor(folder: Path, meta: dict):
    """The VGG16 descriptor a model folder was fitted with: its saved state dict (real weights travel
    with the model) or, for weights none, the seeded random init rebuilt."""
    import torch

    from torchvision.models import vgg16

    from scenesearch.features.vgg import VGGDescriptor, build_descriptor

    saved = Path(folder) / DESCRIPTOR_FILE
    if storage.exists(saved):
        net = VGGDescriptor(vgg16(weights=None), meta["weights"])
        net.load_state_dict(torch.load(io.BytesIO(storage.read_bytes(saved)), map_location="cpu", weights_only=True))
        return net
    return build_descriptor(meta["weights"], int(meta["seed"]))


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
            self._net = load_descriptor(self.folder, self.meta)
        return self._net

    def embed(self, images):
        import torch

        from scenesearch.features.vgg import extract

        desc = extract(self._descriptor(), images, int(self.meta["batch_size"]), torch.device("cpu"), int(self.meta["input_size"]), progress=False).numpy()
        return torch.from_numpy((desc - self.mean) @ self.components.T)  # sklearn PCA.transform (no whitening)

    def score(self, queries, gallery):
        from scenesearch.distances import min_view_cosine_distances

        return min_view_cosine_distances(queries, gallery)


def build_trunk(ctx: FitContext):
    """The VGG16 descriptor network of the run's ``features.weights`` (selfsup: the features step's backbone)."""
    from scenesearch.features import resolve_weights
    from scenesearch.features.vgg import build_descriptor

    return build_descriptor(resolve_weights(ctx.run.features.weights, ctx.inputs.features or None), ctx.run.seed)


def save_weights(ctx: FitContext, trunk=None) -> dict:
    """Write the VGG16 state dict into ctx.out_dir unless the weights are a seeded random init
    (`load_descriptor` rebuilds those); the meta `load_descriptor` and `VGGRetriever` read.
    `trunk`: a caller's () -> the descriptor it builds once (`build_trunk`), else built here."""
    f = ctx.run.features
    if f.weights != "none":
        import torch

        buf = io.BytesIO()
        torch.save((trunk() if trunk is not None else build_trunk(ctx)).state_dict(), buf)
        storage.write_bytes(ctx.out_dir / DESCRIPTOR_FILE, buf.getvalue())
    return {"weights": f.weights, "seed": ctx.run.seed, "input_size": f.input_size, "batch_size": f.batch_size, "image_size": ctx.run.preprocess.size}


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
    return feats.astype(np.float32), save_weights(ctx)


class BaselineRetriever(VGGRetriever):
    """VGGRetriever with the configured whitening, query expansion and diffusion."""

    def __init__(self, folder: Path, meta: dict):
        super().__init__(folder, meta)
        self.whitening = _post.load_whitening(folder, _post.Post(**meta["post"])) if "post" in meta else None
        self.scorer = _post.Scorer(meta) if "post" in meta else None

    def embed(self, images):
        import torch

        x = super().embed(images)
        return x if self.whitening is None else torch.from_numpy(self.whitening.apply(x.numpy()))

    def score(self, queries, gallery):
        return super().score(queries, gallery) if self.scorer is None else self.scorer(queries, gallery)


def fit(ctx: FitContext) -> Fitted:
    feats, meta = save_descriptor(ctx, "vgg_baseline")
    post = ctx.config.post()
    w = _post.fit_whitening(post.whiten, ctx.config, feats, ctx.index.to_pydict(), ctx.run.seed)
    _post.save_whitening(ctx.out_dir, w)
    meta.update(_post.meta(post, ctx.config, ctx.run))
    params = {"weights": meta["weights"], "feature_dim": str(feats.shape[1]), **post.params(), "index": ctx.run.retrieve.index}
    return Fitted(feats if w is None else w.apply(feats), meta, params=params)


def load(folder: Path, meta: dict) -> BaselineRetriever:
    return BaselineRetriever(folder, meta)


METHOD = Method(
    name="vgg_baseline",
    summary="VGG16 multi-layer descriptor + PCA, min-view cosine distance",
    config=VGGBaselineConfig,
    consumes=("features",),
    fit=fit,
    load=load,
    requirements=("scipy", "faiss-cpu"),  # diffusion (scipy CG) and retrieve.index flat / ivfpq
)

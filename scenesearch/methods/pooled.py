"""`pooled`: off-the-shelf VGG16 conv5_3 maps pooled into one descriptor: MAC, SPoC, GeM, R-MAC
(`scenesearch.features.pooling`), with optional whitening, query expansion and diffusion.

Each variant is one row of the report, named ``<pooling>[_pw|_lw][_aqe|_alphaqe][_dfs]``:

* ``pw``: L2 -> PCA-whitening -> L2 learned on the train split; for R-MAC the whitening is learned on
  the regions and applied to each region before the sum (Tolias et al.);
* ``lw``: the learned whitening of Radenović et al. from same-class train pairs (for R-MAC on the
  summed descriptor);
* ``aqe`` / ``alphaqe``: average / alpha query expansion; ``dfs``: diffusion re-ranking.

Their settings are the method's fields (`scenesearch.methods._post.PostConfig`). Nothing is trained:
fit pools every row's maps (the features step's when it kept them at this input size) and fits the
whitening; the served model runs the VGG16 trunk on a new image and applies the same steps.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scenesearch import storage
from scenesearch.distances import unit_rows
from scenesearch.errors import ConfigError
from scenesearch.features import POOLINGS
from scenesearch.methods import _maps, _post
from scenesearch.methods.base import FitContext, Fitted, Method

TOKENS = {
    "pw": ("whiten", "pca"),
    "lw": ("whiten", "learned"),
    "aqe": ("query_expansion", "average"),
    "alphaqe": ("query_expansion", "alpha"),
    "dfs": ("diffusion", True),
}
REGION_WHITENING_FILE = "region_whitening.npz"


def parse(variant: str, prefix: str = "methods.pooled") -> tuple[str, _post.Post]:
    """(pooling, Post) of a variant name; ConfigError naming the variant otherwise."""
    pooling, *options = variant.split("_")
    if pooling not in POOLINGS:
        raise ConfigError(f"{prefix}.variants: '{variant}' must start with one of {', '.join(POOLINGS)}")
    chosen: dict = {}
    for token in options:
        if token not in TOKENS:
            raise ConfigError(f"{prefix}.variants: '{variant}' has the unknown option '{token}'; options: {', '.join(TOKENS)}")
        field, value = TOKENS[token]
        if field in chosen:
            raise ConfigError(f"{prefix}.variants: '{variant}' sets {field} twice")
        chosen[field] = value
    return pooling, _post.Post(**chosen)


@dataclass(frozen=True)
class PooledConfig(_post.PostConfig):
    variants: tuple[str, ...] = ("mac", "spoc", "gem", "rmac")
    input_size: int = 0  # VGG16 input side; 0: features.input_size (then the features step's kept maps are used)
    p: float = 3.0  # GeM exponent
    levels: int = 3  # R-MAC scales

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        if not self.variants:
            raise ConfigError(f"{prefix}.variants must name at least one pooled descriptor, e.g. [mac, gem_pw]")
        if len(set(self.variants)) != len(self.variants):
            raise ConfigError(f"{prefix}.variants must not repeat a name, got {list(self.variants)}")
        for v in self.variants:
            parse(v, prefix)
        if self.input_size != 0 and self.input_size < 32:
            raise ConfigError(f"{prefix}.input_size must be 0 (features.input_size) or >= 32, got {self.input_size}")
        if not self.p >= 1.0:
            raise ConfigError(f"{prefix}.p must be >= 1, got {self.p}")
        if not isinstance(self.levels, int) or self.levels < 1:
            raise ConfigError(f"{prefix}.levels must be an integer >= 1, got {self.levels!r}")


def describe(maps, pooling: str, p: float, levels: int, region_whitening=None) -> np.ndarray:
    """(B, 512) float32 descriptors of (B, 512, h, w) float32 maps; R-MAC with `region_whitening`
    whitens each L2-normalised region before the sum."""
    import torch
    import torch.nn.functional as F

    from scenesearch.features import pooling as P

    if pooling != "rmac" or region_whitening is None:
        return P.pool(maps, pooling, p, levels).numpy().astype(np.float32)
    regions = P.region_maxima(maps, levels)  # (B, R, C)
    b, r, c = regions.shape
    white = region_whitening.apply(regions.reshape(b * r, c).numpy())  # L2 -> whiten -> L2 per region
    return F.normalize(torch.from_numpy(white.reshape(b, r, -1)).sum(dim=1), dim=1).numpy().astype(np.float32)


def finish(desc: np.ndarray, whitening) -> np.ndarray:
    """The embedding of pooled descriptors: L2 -> whitening -> L2, or L2 alone without whitening."""
    return (unit_rows(desc) if whitening is None else whitening.apply(desc)).astype(np.float32)


def _all_rows(maps: np.ndarray, fn) -> np.ndarray:
    return np.concatenate([fn(x) for _, x in _maps.batches(maps)]) if len(maps) else np.zeros((0, 512), np.float32)


def fit(ctx: FitContext) -> Fitted:
    from scenesearch.features.pooling import region_maxima
    from scenesearch.whitening import pca_whitening

    c, variant = ctx.config, ctx.entry.variant
    pooling, post = parse(variant)
    trunk = _maps.lazy_trunk(ctx)
    maps = _maps.row_maps(ctx, "conv5_3", trunk)
    meta = _maps.fit_meta(ctx, trunk)
    index = ctx.index.to_pydict()
    region_w = None
    if pooling == "rmac" and post.whiten == "pca":  # Tolias et al.: whiten the regions, then sum
        train = np.flatnonzero(_post.train_rows(index))
        regions = _all_rows(maps[train], lambda x: region_maxima(x, c.levels).reshape(-1, x.shape[1]).numpy())
        region_w = pca_whitening(regions, dim=c.whiten_dim or None, shrinkage=c.whiten_shrinkage)
        storage.write_bytes(ctx.out_dir / REGION_WHITENING_FILE, region_w.to_bytes())
        post_global = dataclasses.replace(post, whiten="none")
    else:
        post_global = post
    desc = _all_rows(maps, lambda x: describe(x, pooling, c.p, c.levels, region_w))
    w = _post.fit_whitening(post_global.whiten, c, desc, index, ctx.run.seed)
    _post.save_whitening(ctx.out_dir, w)
    emb = finish(desc, w)
    meta.update(_post.meta(post_global, c, ctx.run), pooling=pooling, p=c.p, levels=c.levels, region_whitening=region_w is not None)
    params = {"pooling": pooling, "input_size": str(meta["input_size"]), "map": f"conv5_3 {maps.shape[2]}x{maps.shape[3]}",
              "weights": meta["weights"], **post.params(), "index": ctx.run.retrieve.index}
    return Fitted(emb, meta, metrics={"descriptor_dim": float(emb.shape[1])}, params=params)


class PooledRetriever:
    """VGG16 trunk -> conv5_3 -> pooling -> whitening; scored by `_post.Scorer`."""

    def __init__(self, folder: Path, meta: dict):
        from scenesearch.whitening import Whitening

        self.meta = meta
        self.trunk = _maps.Trunk(folder, meta)
        self.image_size = self.trunk.image_size
        self.region_w = Whitening.from_bytes(storage.read_bytes(Path(folder) / REGION_WHITENING_FILE)) if meta["region_whitening"] else None
        self.whitening = _post.load_whitening(folder, _post.Post(**meta["post"]))
        self.scorer = _post.Scorer(meta)

    def embed(self, images):
        import torch

        m = self.meta
        desc = describe(self.trunk.maps(images, "conv5_3"), m["pooling"], float(m["p"]), int(m["levels"]), self.region_w)
        return torch.from_numpy(finish(desc, self.whitening))

    def score(self, queries, gallery):
        return self.scorer(queries, gallery)


def load(folder: Path, meta: dict) -> PooledRetriever:
    return PooledRetriever(folder, meta)


METHOD = Method(
    name="pooled",
    summary="VGG16 conv5_3 pooled (MAC, SPoC, GeM, R-MAC), optional whitening, query expansion, diffusion; min-view cosine",
    config=PooledConfig,
    consumes=("features",),
    fit=fit,
    load=load,
    variants=lambda config: tuple(config.variants),
    requirements=("scipy", "faiss-cpu"),  # diffusion (scipy CG) and retrieve.index flat / ivfpq
)

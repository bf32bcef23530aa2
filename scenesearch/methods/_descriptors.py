"""What the methods that learn over VGG descriptors share (zs_cvae, zs_caae, parallel_vae, siamese,
triplet): fit = train a small network on query-render descriptor pairs (`scenesearch.models.feature_train`),
embed every row, save; load = the VGG descriptor of `vgg_baseline` (so a served model embeds a new
query image as the features step did) followed by the network.

A method supplies a *head*: ``embed_queries(x)`` and ``embed_renders(x)`` map scaled descriptors
(B, d) to embeddings of one common width w, and ``score(queries (Q, w), gallery (S, V, w))`` gives
(Q, S) distances. Retrieval here is asymmetric: a query row and a render row are embedded by
different functions (a generative method turns a query into generated image descriptors), so fit
embeds each index row by its domain, and a `Retriever.embed` call embeds query images.
"""

from __future__ import annotations

import dataclasses
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from scenesearch import storage
from scenesearch.domains import is_query
from scenesearch.errors import ConfigError
from scenesearch.methods.base import FitContext, Fitted, MethodConfig

log = logging.getLogger(__name__)
NETWORK_FILE = "network.pt"


@dataclass(frozen=True)
class PairMethodConfig(MethodConfig):
    """Fields every descriptor-pair method has (``methods.<name>.*``)."""

    hidden: int = 256  # width of the hidden layers
    per_query: int = 8  # training examples drawn per train query and epoch (each with a fresh render and negatives)

    def validate(self, prefix: str) -> None:
        for name in ("hidden", "per_query"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{prefix}.{name} must be an integer >= 1, got {getattr(self, name)!r}")


def positive(cfg: Any, prefix: str, *names: str) -> None:
    """ConfigError naming the first of `names` that is not > 0."""
    for name in names:
        if not getattr(cfg, name) > 0:
            raise ConfigError(f"{prefix}.{name} must be > 0, got {getattr(cfg, name)!r}")


class Head(Protocol):
    def embed_queries(self, x): ...

    def embed_renders(self, x): ...

    def score(self, queries, gallery): ...


def row_layout(index: dict) -> tuple[np.ndarray, np.ndarray]:
    """(query rows (Q,), scene view rows (S, V)) of an index, in the order of `scenesearch.gallery.arrange`."""
    from scenesearch.gallery import arrange

    n = len(index["item_id"])
    a = arrange(np.arange(n).reshape(n, 1), index)
    return a.query_feats[:, 0], a.scene_feats[..., 0]


def embed_rows(head: Head, feats, index: dict, batch: int = 1024) -> np.ndarray:
    """(N, w) float32: query rows (every domain, both flips) by ``embed_queries``, the others by ``embed_renders``."""
    import torch

    query = np.vectorize(is_query, otypes=[bool])(np.asarray(index["domain"]))
    out = None
    with torch.no_grad():
        for mask, fn in ((query, head.embed_queries), (~query, head.embed_renders)):
            rows = np.flatnonzero(mask)
            for i in range(0, len(rows), batch):
                e = fn(feats[torch.from_numpy(rows[i : i + batch])]).float().cpu().numpy()
                if out is None:
                    out = np.zeros((len(feats), e.shape[1]), np.float32)
                out[rows[i : i + batch]] = e
    return out


def validator(make_head: Callable[[Any], Head], feats, index: dict, k: int) -> Callable | None:
    """val_mAP of a model: its val-split queries (labelled, unflipped) against the whole gallery;
    None when the split has no val query."""
    import torch

    from scenesearch.evaluation import retrieval_metrics

    q_rows, s_rows = row_layout(index)
    split, label = np.asarray(index["split"]), np.asarray(index["label"])
    q_rows = q_rows[(split[q_rows] == "val") & (label[q_rows] != "")]
    if len(q_rows) == 0:
        return None
    q_labels, s_labels = label[q_rows], label[s_rows[:, 0]]
    q_feats, s_feats = feats[torch.from_numpy(q_rows)], feats[torch.from_numpy(s_rows.reshape(-1))]

    def validate(model) -> dict[str, float]:
        head = make_head(model)
        q = head.embed_queries(q_feats.to(next(model.parameters()).device)).float().cpu()
        g = head.embed_renders(s_feats.to(next(model.parameters()).device)).float().cpu()
        d = head.score(q, g.view(*s_rows.shape, -1)).numpy()
        return {"val_mAP": float(retrieval_metrics(d, q_labels, s_labels, k=k)["mAP"])}

    return validate


def descriptor_rows(ctx: FitContext) -> tuple[Any, dict]:
    """The default training inputs: the VGG descriptors of every row, scaled, and their meta
    (`vgg_baseline.save_descriptor` writes what a served model needs to embed like them)."""
    import torch

    from scenesearch.methods.vgg_baseline import save_descriptor
    from scenesearch.models.feature_nets import scale_descriptors

    descriptors, meta = save_descriptor(ctx, ctx.entry.method)
    return scale_descriptors(torch.from_numpy(descriptors)), meta


def fit_pairs(
    ctx: FitContext,
    build: Callable[[dict], Any],
    make_head: Callable[[Any, dict], Head],
    step: Callable[[Any, Any], dict],
    semantics: bool = False,
    rows: Callable[[FitContext], tuple[Any, dict]] = descriptor_rows,
    data_hook: Callable[[Any, Any], Any] | None = None,
) -> Fitted:
    """Train a descriptor-pair method and write its folder: network.pt beside the descriptor files.

    Args:
        build: meta -> the untrained network (meta holds ``d``, ``n_semantics``, ``config``, ``seed``).
        make_head: (network, meta) -> its Head.
        step: (network, PairBatch) -> per-row loss terms with "loss".
        semantics: the method can use the class semantics vectors (when the dataset has them).
        rows: ctx -> (the network's input (N, ...) for every index row, meta); default the descriptors.
        data_hook: (PairData, network) -> the data to train on (e.g. with negatives mined by the network).
    """
    import torch

    from scenesearch.data.ingest import read_semantics
    from scenesearch.models.feature_train import pair_data, train_pairs
    from scenesearch.models.train import config_hash

    name, run = ctx.entry.method, ctx.run
    feats, meta = rows(ctx)
    index = ctx.index.to_pydict()
    sem = read_semantics(ctx.inputs.semantics) if semantics and ctx.inputs.semantics else None
    data = pair_data(feats, index, sem)
    if semantics and data.semantics is None:
        log.warning("%s: the dataset has no semantics.csv, so the semantic term is off", name)
    config = dataclasses.asdict(ctx.config)
    meta.update(d=int(feats.shape[1]), n_semantics=int(data.semantics.shape[1]) if data.semantics is not None else 0, config=config, classes=data.classes)
    torch.manual_seed(run.seed)
    model = build(meta)
    if data_hook is not None:
        data = data_hook(data, model)
    validate = validator(lambda m: make_head(m, meta), feats, index, run.evaluate.k)
    run_hash = config_hash(run.train, {"method": name, "config": config, "seed": run.seed, "classes": data.classes, "n": len(data.query_rows),
                                       "weights": run.features.weights, "d": meta["d"], "n_semantics": meta["n_semantics"]})
    train_cfg = dataclasses.replace(run.train, **{k: getattr(ctx.config, k) for k in ("epochs", "lr") if getattr(ctx.config, k, 0)})
    result = train_pairs(model, data, step, train_cfg, ctx.checkpoint_dir, run.seed, run_hash, getattr(ctx.config, "per_query", 1), validate,
                         on_epoch=ctx.on_epoch, progress=ctx.progress, name=name)
    model.cpu()
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    storage.write_bytes(ctx.out_dir / NETWORK_FILE, buf.getvalue())
    emb = embed_rows(make_head(model, meta), feats, index)
    meta.update(best_epoch=result.best_epoch, epochs_run=result.epochs_run, device=result.device, precision=result.precision, run_hash=run_hash)
    metrics = {
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "best_val_metric": result.best_metric,
        "train_pairs_per_s": result.images_per_s,
        "n_train_queries": len(data.query_rows),
        "n_train_renders": len(data.render_rows),
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "resumed_from_epoch": result.resumed_from,
    }
    params = {"classes": ",".join(data.classes), "device": result.device, "precision": result.precision}
    if semantics:
        params["semantics"] = f"{meta['n_semantics']} attributes" if meta["n_semantics"] else "none (no semantics.csv: the semantic term is off)"
    return Fitted(emb, meta, metrics, params, result.history)


def descriptor_encoder(folder: Path, meta: dict) -> tuple[Callable, int]:
    """(images -> scaled VGG descriptors + PCA, the image size): how `descriptor_rows` inputs are made
    from a new image."""
    from scenesearch.methods.vgg_baseline import VGGRetriever
    from scenesearch.models.feature_nets import scale_descriptors

    descriptor = VGGRetriever(folder, meta)
    return (lambda images: scale_descriptors(descriptor.embed(images))), descriptor.image_size


class PairRetriever:
    """A loaded descriptor-pair method: its inputs made from the image (`encoder`: the VGG descriptor
    + PCA, scaled, by default), then the head's query embedding."""

    def __init__(self, folder: Path, meta: dict, build: Callable[[dict], Any], make_head: Callable[[Any, dict], Head],
                 encoder: Callable[[Path, dict], tuple[Callable, int]] = descriptor_encoder):
        import torch

        self.encode, self.image_size = encoder(folder, meta)
        net = build(meta)
        net.load_state_dict(torch.load(io.BytesIO(storage.read_bytes(Path(folder) / NETWORK_FILE)), map_location="cpu", weights_only=True))
        self.head = make_head(net.eval(), meta)

    def embed(self, images):
        import torch

        with torch.no_grad():
            return self.head.embed_queries(self.encode(images)).float()

    def score(self, queries, gallery):
        return self.head.score(queries, gallery)

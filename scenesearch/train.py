"""The train step: fit one configured (method, variant) and write its model folder.

Every method goes through here, whether it learns weights (CVAE-M2) or only prepares itself
(a baseline). The model folder holds:

- ``method.json``   method, variant, key, the method's config section, plugins and its `meta`
- ``embeddings.npy`` (N, d) float32: the method's embedding of every index row
- ``index.parquet`` the rows of ``embeddings.npy`` (the preprocess index)
- ``history.json``  per-epoch metrics (empty for methods that do not train)
- ``report.md``     only when the method reports tables of its own (`Fitted.report`); the retrieve
  and evaluate steps carry it into the run's report
- ``query_crops.npy`` (C - 1, Q, d) float32, only with ``retrieve.crop_scales`` and a method that
  embeds query images (it ``serves``): crops 1..C-1 of every query (`scenesearch.crops`), in the
  query order of `scenesearch.gallery.arrange`; crop 0 is the query's row of ``embeddings.npy``
- the method's own files (network.pt, pca.npz, ...) and, for training methods, ``checkpoint/``

`scenesearch.retrieval` scores from these folders, `scenesearch.serving` logs them as MLflow
models, `scenesearch.registry` registers them.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from scenesearch import crops, methods, storage
from scenesearch.config import RunConfig
from scenesearch.domains import UNSEEN
from scenesearch.errors import DataError
from scenesearch.gallery import arrange

METHOD_FILE = "method.json"
CROPS_FILE = "query_crops.npy"
REPORT_FILE = "report.md"


@dataclass
class TrainResult:
    entry: methods.Entry
    out_dir: str
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)


def training_index(table: pa.Table) -> pa.Table:
    """The index a method sees while it fits: labels of unseen classes (zero-shot split) blanked.

    Their images are still embedded (they are queries and gallery scenes at test time); only
    their labels stay out of training.
    """
    if "class_split" not in table.column_names:
        return table
    unseen = pc.equal(table["class_split"], UNSEEN)
    labels = pc.if_else(unseen, pa.scalar("", pa.string()), table["label"])
    return table.set_column(table.column_names.index("label"), "label", labels)


def run(
    cfg: RunConfig,
    key: str,
    inputs: methods.Inputs,
    out_dir: str,
    checkpoint_dir: str | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    progress: bool = True,
    log_image: Callable[[str, object, int], None] | None = None,
) -> TrainResult:
    """Fit the configured entry `key` (a variant's or a method's name) and write its model folder.

    Args:
        inputs: the step outputs the method consumes.
        checkpoint_dir: where a training method checkpoints (default ``<out_dir>/checkpoint``); a
            second call with the same folder and config resumes from it.
        on_epoch: receives (epoch, metrics) after every training epoch, e.g. to log to MLflow.
        log_image: receives (key, (3, H, W) image in [0, 1], step) for images a method shows per epoch.

    Raises:
        ConfigError: `key` is not configured. DataError: an input is missing or the method's
            embeddings do not cover the index.
    """
    entry = methods.entry(cfg, key)
    method = methods.get(entry.method)
    # the rows to embed: the preprocess index, which every task has (the images input is always given)
    table = storage.read_table(Path(inputs.need("images", entry.method)) / "index.parquet")
    dst = Path(out_dir)
    if not storage.is_remote(dst):
        dst.mkdir(parents=True, exist_ok=True)
    # the method sees the run's settings but not which classes are unseen (nor their labels: ctx.index)
    seen_only = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, unseen_classes=()))
    ctx = methods.FitContext(entry, seen_only, inputs, training_index(table), dst, checkpoint_dir or str(dst / "checkpoint"), on_epoch, progress,
                               log_image)
    fitted = method.fit(ctx)
    emb = np.asarray(fitted.embeddings, dtype=np.float32)
    if emb.ndim != 2 or len(emb) != table.num_rows:
        raise DataError(f"method {entry.method} embedded {emb.shape} for {table.num_rows} index rows; expected one row per image")
    if not np.isfinite(emb).all():
        raise DataError(f"method {entry.method} ({key}) produced NaN or infinite embeddings")
    storage.write_array(dst / "embeddings.npy", emb)
    storage.write_table(dst / "index.parquet", table)
    storage.write_bytes(dst / "history.json", json.dumps(fitted.history, indent=2).encode())
    if fitted.report:
        storage.write_bytes(dst / REPORT_FILE, (fitted.report.rstrip() + "\n").encode())
    record = {
        "method": entry.method,
        "variant": entry.variant,
        "key": entry.key,
        "config": dataclasses.asdict(entry.config),
        "plugins": list(cfg.plugins),
        "seed": cfg.seed,
        "meta": fitted.meta,
        # the crops retrieval and serving apply: none for a method that cannot embed a query image
        "retrieve": {"crop_scales": list(cfg.retrieve.crop_scales) if entry.serves else [], "crop_reduce": cfg.retrieve.crop_reduce},
    }
    storage.write_bytes(dst / METHOD_FILE, json.dumps(record, indent=2, default=str).encode())
    metrics = dict(fitted.metrics)
    if cfg.retrieve.crop_scales:
        metrics["n_query_crops"] = crops.n_crops(record["retrieve"]["crop_scales"])
        if record["retrieve"]["crop_scales"]:
            embed_query_crops(dst, inputs.images, table.to_pydict(), emb.shape[1], cfg.train.batch_size)
    return TrainResult(entry, str(dst), metrics, dict(fitted.params))


def query_rows(index: dict) -> np.ndarray:
    """The index rows of the queries, in the order `arrange` gives them (row i of its query_feats)."""
    n = len(index["item_id"])
    return arrange(np.arange(n).reshape(n, 1), index).query_feats[:, 0]


def embed_query_crops(model_dir: Path, images_dir: str, index: dict, dim: int, batch_size: int) -> None:
    """Write ``query_crops.npy``: the crops 1..C-1 of every query image, embedded by the method
    reloaded from its model folder (as serving embeds them) with the folder's crop settings.

    Raises:
        DataError: the images do not match the index, or the method's embed has another width
            than its embeddings.
    """
    import torch

    record, retriever = load(model_dir)
    images = storage.read_array(Path(images_dir) / "images.npy", mmap=True)
    if len(images) != len(index["item_id"]):
        raise DataError(f"{images_dir}/images.npy has {len(images)} rows for {len(index['item_id'])} index rows; rerun preprocess")
    x = torch.from_numpy(np.ascontiguousarray(images[query_rows(index)], dtype=np.float32))  # (Q, 3, H, W)
    with torch.inference_mode():
        out = crops.embed_crops(retriever, x, record["retrieve"]["crop_scales"], batch_size, whole=False).numpy().astype(np.float32)
    if out.shape[2] != dim or not np.isfinite(out).all():
        raise DataError(f"method {record['method']} embedded query crops as {out.shape} (non-finite or not {dim} wide like its embeddings)")
    storage.write_array(model_dir / CROPS_FILE, out)


def read_record(model_dir: str | Path) -> dict:
    """method.json of a model folder.

    Raises:
        DataError: the folder holds no model.
    """
    path = Path(model_dir) / METHOD_FILE
    if not storage.exists(path):
        raise DataError(f"{model_dir} is not a model folder (no {METHOD_FILE}); run `scenesearch train` first")
    return json.loads(storage.read_bytes(path))


def load(model_dir: str | Path, plugins: tuple[str, ...] | list[str] = ()) -> tuple[dict, methods.Retriever]:
    """(method.json, the loaded Retriever) of a model folder; its method's plugins are imported."""
    record = read_record(model_dir)
    methods.load_plugins(tuple(plugins) or tuple(record.get("plugins", ())))
    return record, methods.get(record["method"]).load(Path(model_dir), record["meta"])

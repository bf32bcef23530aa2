"""The train step: fit one configured (method, variant) and write its model folder.

Every method goes through here, whether it learns weights (CVAE-M2) or only prepares itself
(a baseline). The model folder holds:

- ``method.json``   method, variant, key, the method's config section, plugins and its `meta`
- ``embeddings.npy`` (N, d) float32: the method's embedding of every index row
- ``index.parquet`` the rows of ``embeddings.npy`` (the preprocess index)
- ``history.json``  per-epoch metrics (empty for methods that do not train)
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

from scenesearch import methods, storage
from scenesearch.config import RunConfig
from scenesearch.domains import UNSEEN
from scenesearch.errors import DataError

METHOD_FILE = "method.json"


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
) -> TrainResult:
    """Fit the configured entry `key` (a variant's or a method's name) and write its model folder.

    Args:
        inputs: the step outputs the method consumes.
        checkpoint_dir: where a training method checkpoints (default ``<out_dir>/checkpoint``); a
            second call with the same folder and config resumes from it.
        on_epoch: receives (epoch, metrics) after every training epoch, e.g. to log to MLflow.

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
    ctx = methods.FitContext(entry, seen_only, inputs, training_index(table), dst, checkpoint_dir or str(dst / "checkpoint"), on_epoch, progress)
    fitted = method.fit(ctx)
    emb = np.asarray(fitted.embeddings, dtype=np.float32)
    if emb.ndim != 2 or len(emb) != table.num_rows:
        raise DataError(f"method {entry.method} embedded {emb.shape} for {table.num_rows} index rows; expected one row per image")
    if not np.isfinite(emb).all():
        raise DataError(f"method {entry.method} ({key}) produced NaN or infinite embeddings")
    storage.write_array(dst / "embeddings.npy", emb)
    storage.write_table(dst / "index.parquet", table)
    storage.write_bytes(dst / "history.json", json.dumps(fitted.history, indent=2).encode())
    record = {
        "method": entry.method,
        "variant": entry.variant,
        "key": entry.key,
        "config": dataclasses.asdict(entry.config),
        "plugins": list(cfg.plugins),
        "seed": cfg.seed,
        "meta": fitted.meta,
    }
    storage.write_bytes(dst / METHOD_FILE, json.dumps(record, indent=2, default=str).encode())
    return TrainResult(entry, str(dst), dict(fitted.metrics), dict(fitted.params))


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

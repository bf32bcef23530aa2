"""The retrieve step: a (queries x scenes) distance matrix per configured method and variant.

Reads the model folders of the train step (scenesearch.train), loads each method through the
registry and lets it score its own embeddings: queries against every scene's views (and, when the
train step embedded test-time query crops, each crop, a scene keeping its min or mean distance over
them: `scenesearch.crops`). Writes
``distances_<key>.npy`` (Q, S) float32 per entry, plus ``queries.parquet`` and ``scenes.parquet``
(the row and column order of the matrices: item_id, label, split, domain, class_split), and
``report_<key>.md`` for a model folder that holds a method report (train.REPORT_FILE).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from scenesearch import storage
from scenesearch.crops import n_crops, score_crops
from scenesearch.errors import DataError
from scenesearch.gallery import RetrievalInputs, read_folder


@dataclass(frozen=True)
class RetrieveResult:
    keys: tuple[str, ...]
    n_queries: int
    n_scenes: int

    def metrics(self) -> dict[str, float]:
        return {"n_queries": self.n_queries, "n_scenes": self.n_scenes}


def score_folder(model_dir: str | Path, plugins: tuple[str, ...] = ()) -> tuple[dict, RetrievalInputs, np.ndarray]:
    """(method.json, arranged embeddings, (Q, S) distances) of one model folder.

    The query crops of ``query_crops.npy`` are scored when method.json records crop scales (a
    folder trained without them scores its whole-image embeddings only, as before).

    Raises:
        DataError: the recorded crops are missing or do not match the queries, or the method
            scored a matrix of the wrong shape or with non-finite values.
    """
    import torch

    from scenesearch import train

    record, retriever = train.load(model_dir, plugins)
    inputs = read_folder(model_dir)
    queries, gallery = torch.from_numpy(inputs.query_feats), torch.from_numpy(inputs.scene_feats)
    retrieve = record.get("retrieve") or {}
    scales = retrieve.get("crop_scales") or []
    if scales:
        others = torch.from_numpy(read_query_crops(model_dir, scales, inputs.query_feats.shape))
        d = score_crops(retriever, torch.cat([queries[None], others]), gallery, retrieve["crop_reduce"])
    else:
        d = torch.as_tensor(retriever.score(queries, gallery))
    d = d.cpu().numpy().astype(np.float32)
    if d.shape != (len(inputs.query_feats), len(inputs.scene_feats)) or not np.isfinite(d).all():
        raise DataError(f"method {record['method']} ({record['key']}) scored a {d.shape} matrix with non-finite values or the wrong shape")
    return record, inputs, d


def read_query_crops(model_dir: str | Path, scales: list[float], query_shape: tuple[int, int]) -> np.ndarray:
    """``query_crops.npy`` of a model folder, (C - 1, Q, d), checked against its queries.

    Raises:
        DataError: the file is missing or has another shape than the scales and the queries ask for.
    """
    from scenesearch import train

    path = Path(model_dir) / train.CROPS_FILE
    if not storage.exists(path):
        raise DataError(f"{model_dir} records query crops but holds no {train.CROPS_FILE}; rerun `scenesearch train`")
    x = storage.read_array(path)
    expected = (n_crops(scales) - 1, *query_shape)
    if x.shape != expected:
        raise DataError(f"{path} holds {x.shape} crop embeddings, expected {expected} (crops x queries x dim); rerun `scenesearch train`")
    return x.astype(np.float32, copy=False)


def run(model_dirs: list[str], out_dir: str, plugins: tuple[str, ...] = ()) -> RetrieveResult:
    """Score every model folder; see the module doc.

    Raises:
        DataError: no model, two folders with one key, or folders that embedded other queries or scenes.
    """
    from scenesearch import train

    if not model_dirs:
        raise DataError("retrieve needs at least one model folder from the train step")
    dst = Path(out_dir)
    keys: list[str] = []
    first: RetrievalInputs | None = None
    for d in model_dirs:
        record, inputs, dist = score_folder(d, plugins)
        if record["key"] in keys:
            raise DataError(f"two model folders are both named '{record['key']}'")
        if first is None:
            first = inputs
        elif inputs.queries["item_id"] != first.queries["item_id"] or inputs.scenes["item_id"] != first.scenes["item_id"]:
            raise DataError(f"the {record['key']} model embedded other queries or scenes than {keys[0]}; train them on the same dataset")
        storage.write_array(dst / f"distances_{record['key']}.npy", dist)
        report = Path(d) / train.REPORT_FILE
        if storage.exists(report):
            storage.write_bytes(dst / f"report_{record['key']}.md", storage.read_bytes(report))
        keys.append(record["key"])
    storage.write_table(dst / "queries.parquet", pa.table(first.queries))
    storage.write_table(dst / "scenes.parquet", pa.table(first.scenes))
    return RetrieveResult(tuple(keys), len(first.query_feats), len(first.scene_feats))

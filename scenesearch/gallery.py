"""Rows of a step's index arranged for retrieval: unflipped query images, and per scene all its views.

Every method embeds every row of the preprocess index (query images of each domain, and each
scene's views with their flips); `arrange` turns those rows into the (Q, d) queries and the
(S, V, d) gallery that a method's ``score`` takes, with the columns reports need.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scenesearch.domains import SCENE, SEEN, is_query
from scenesearch.errors import DataError

COLUMNS = ("item_id", "label", "split", "domain", "class_split")


@dataclass(frozen=True)
class RetrievalInputs:
    """Embeddings arranged for retrieval: query rows and, per scene, all its view rows."""

    query_feats: np.ndarray  # (Q, d)
    scene_feats: np.ndarray  # (S, V, d)
    queries: dict  # columns COLUMNS, one entry per query
    scenes: dict  # columns COLUMNS, one entry per scene


def arrange(features: np.ndarray, index: dict) -> RetrievalInputs:
    """Split embedding rows into unflipped query images and per-scene view stacks (manifest order).

    Args:
        features: (N, d), row i embeds index row i.
        index: columns item_id, label, split, domain, flip (class_split optional: "seen" if absent).

    Raises:
        DataError: no queries, no scenes, or scenes with different view counts.
    """
    n = len(index["item_id"])
    if len(features) != n:
        raise DataError(f"{len(features)} embeddings for {n} index rows")
    domain = np.asarray(index["domain"])
    flip = np.asarray(index["flip"])
    q_rows = np.flatnonzero(np.vectorize(is_query, otypes=[bool])(domain) & ~flip) if n else np.array([], int)
    s_rows = np.flatnonzero(domain == SCENE)
    if len(q_rows) == 0 or len(s_rows) == 0:
        raise DataError(f"retrieval needs queries and scenes, got {len(q_rows)} queries and {len(s_rows)} scene views")
    ids = np.asarray(index["item_id"])
    scene_ids, first = np.unique(ids[s_rows], return_index=True)
    scene_ids = scene_ids[np.argsort(first)]  # keep the manifest's order
    groups = [s_rows[ids[s_rows] == sid] for sid in scene_ids]
    if len({len(g) for g in groups}) != 1:
        raise DataError("every scene must have the same number of views for retrieval")
    columns = {c: np.asarray(index[c]) if c in index else np.full(n, SEEN) for c in COLUMNS}

    def cols(rows: np.ndarray) -> dict:
        return {c: columns[c][rows].tolist() for c in COLUMNS}

    return RetrievalInputs(features[q_rows], np.stack([features[g] for g in groups]), cols(q_rows), cols(np.array([g[0] for g in groups])))


def read_folder(model_dir) -> RetrievalInputs:
    """A model folder's embeddings (embeddings.npy + index.parquet, local or s3://), arranged."""
    from pathlib import Path

    from scenesearch import storage

    emb = storage.read_array(Path(model_dir) / "embeddings.npy")
    return arrange(emb, storage.read_table(Path(model_dir) / "index.parquet").to_pydict())

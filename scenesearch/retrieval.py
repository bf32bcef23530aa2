"""Retrieval: a (queries x scenes) distance matrix per method, and the retrieve step.

Methods are a registry (name -> function of the step's inputs); a new method is one entry.
The VGG baseline scores a query against a scene as the smallest cosine distance between the
query descriptor and any of the scene's views (and their flips).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import pyarrow as pa

from scenesearch import storage
from scenesearch.errors import DataError

if TYPE_CHECKING:  # torch is imported where it is used, so loading a config never pays for it
    import torch


def min_view_cosine_distances(queries: torch.Tensor, scenes: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """D[q, s] = min over views v of 1 - cos(queries[q], scenes[s, v]).

    Args:
        queries: (Q, d).
        scenes: (S, V, d); every scene has the same number of views V.
        chunk: scenes per block, bounding memory at Q * chunk * V floats.

    Returns:
        (Q, S) float32 tensor on the inputs' device.
    """
    import torch
    q = torch.nn.functional.normalize(queries.float(), dim=1)
    s = torch.nn.functional.normalize(scenes.float(), dim=2)
    out = torch.empty((len(q), len(s)), dtype=torch.float32, device=q.device)
    for start in range(0, len(s), chunk):
        block = s[start : start + chunk]  # (c, V, d)
        sims = torch.einsum("qd,cvd->qcv", q, block)  # (Q, c, V)
        out[:, start : start + chunk] = 1.0 - sims.amax(dim=2)
    return out


@dataclass(frozen=True)
class RetrievalInputs:
    """Features arranged for retrieval: query rows and, per scene, all its view rows."""

    query_feats: np.ndarray  # (Q, d)
    scene_feats: np.ndarray  # (S, V, d)
    queries: dict  # columns item_id, label, split
    scenes: dict  # columns item_id, label, split


def arrange(features: np.ndarray, index: dict) -> RetrievalInputs:
    """Split the feature rows into unflipped query photos and per-scene view stacks.

    Raises:
        DataError: no queries, no scenes, or scenes with different view counts.
    """
    domain = np.asarray(index["domain"])
    flip = np.asarray(index["flip"])
    q_rows = np.flatnonzero((domain == "query") & ~flip)
    s_rows = np.flatnonzero(domain == "scene")
    if len(q_rows) == 0 or len(s_rows) == 0:
        raise DataError(f"retrieval needs queries and scenes, got {len(q_rows)} queries and {len(s_rows)} scene views")
    ids = np.asarray(index["item_id"])
    scene_ids, first = np.unique(ids[s_rows], return_index=True)
    scene_ids = scene_ids[np.argsort(first)]  # keep the manifest's order
    groups = [s_rows[ids[s_rows] == sid] for sid in scene_ids]
    if len({len(g) for g in groups}) != 1:
        raise DataError("every scene must have the same number of views for retrieval")

    def cols(rows: np.ndarray) -> dict:
        return {c: np.asarray(index[c])[rows].tolist() for c in ("item_id", "label", "split")}

    return RetrievalInputs(features[q_rows], np.stack([features[g] for g in groups]), cols(q_rows), cols(np.array([g[0] for g in groups])))


def vgg_baseline(inputs: RetrievalInputs, seed: int) -> np.ndarray:
    import torch

    return min_view_cosine_distances(torch.from_numpy(inputs.query_feats), torch.from_numpy(inputs.scene_feats)).numpy()


def random_baseline(inputs: RetrievalInputs, seed: int) -> np.ndarray:
    from scenesearch.evaluation import random_distances

    return random_distances(len(inputs.query_feats), len(inputs.scene_feats), seed)


METHODS: dict[str, Callable[[RetrievalInputs, int], np.ndarray]] = {
    "vgg_baseline": vgg_baseline,
    "random": random_baseline,
}


@dataclass(frozen=True)
class RetrieveResult:
    methods: tuple[str, ...]
    n_queries: int
    n_scenes: int

    def metrics(self) -> dict[str, float]:
        return {"n_queries": self.n_queries, "n_scenes": self.n_scenes}


def run(features_dir: str, out_dir: str, methods: tuple[str, ...], seed: int = 0) -> RetrieveResult:
    """Write distances_<method>.npy (Q, S), queries.parquet and scenes.parquet (row order of the matrix)."""
    src, dst = Path(features_dir), Path(out_dir)
    inputs = arrange(storage.read_array(src / "features.npy"), storage.read_table(src / "index.parquet").to_pydict())
    for name in methods:
        if name not in METHODS:
            raise DataError(f"unknown retrieval method '{name}'; known: {', '.join(sorted(METHODS))}")
        storage.write_array(dst / f"distances_{name}.npy", METHODS[name](inputs, seed).astype(np.float32))
    storage.write_table(dst / "queries.parquet", pa.table(inputs.queries))
    storage.write_table(dst / "scenes.parquet", pa.table(inputs.scenes))
    return RetrieveResult(tuple(methods), len(inputs.query_feats), len(inputs.scene_feats))

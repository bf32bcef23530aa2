"""Visual similarity detection: k-means (scikit-learn) over render features.

Gives each render a cluster id and a list of "sufficiently similar" candidate scenes (the
nearest renders of other scenes in the same cluster, by cosine similarity), and measures how
well clusters match classes (purity, NMI, ARI). Scene mixing (LORBMS) draws its pairs from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from scenesearch import storage
from scenesearch.config import SimilarityConfig
from scenesearch.errors import DataError

CLUSTERS_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("view", pa.int32()),
        ("flip", pa.bool_()),
        ("label", pa.string()),
        ("cluster", pa.int32()),
        ("neighbours", pa.list_(pa.string())),
    ]
)


def cluster_purity(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Fraction of items whose label is the majority label of their cluster."""
    _, y = np.unique(labels, return_inverse=True)
    _, c = np.unique(clusters, return_inverse=True)
    table = np.zeros((c.max() + 1, y.max() + 1), dtype=np.int64)
    np.add.at(table, (c, y), 1)
    return float(table.max(axis=1).sum() / len(labels))


def kmeans(x: np.ndarray, n_clusters: int, seed: int = 0) -> np.ndarray:
    """Cluster ids of L2-normalised rows (k-means on the sphere approximates cosine clustering)."""
    if len(x) < n_clusters:
        raise DataError(f"k-means needs at least {n_clusters} items, got {len(x)}")
    xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return KMeans(n_clusters=n_clusters, n_init=4, random_state=seed).fit_predict(xn).astype(np.int32)


def similar_candidates(x: np.ndarray, clusters: np.ndarray, item_ids: np.ndarray, k: int) -> list[list[str]]:
    """For each row, up to k distinct other items in its cluster, most cosine-similar first."""
    xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    out: list[list[str]] = [[] for _ in range(len(x))]
    for c in np.unique(clusters):
        rows = np.flatnonzero(clusters == c)
        order = np.argsort(-(xn[rows] @ xn[rows].T), axis=1, kind="stable")  # (n_c, n_c), one cluster at a time
        for i, r in enumerate(rows):
            seen: list[str] = []
            for j in order[i]:
                other = item_ids[rows[j]]
                if other != item_ids[r] and other not in seen:
                    seen.append(other)
                    if len(seen) == k:
                        break
            out[r] = seen
    return out


@dataclass(frozen=True)
class SimilarityResult:
    n_clusters: int
    purity: float
    nmi: float
    ari: float

    def metrics(self) -> dict[str, float]:
        return {"kmeans_purity": self.purity, "kmeans_nmi": self.nmi, "kmeans_ari": self.ari, "kmeans_clusters": self.n_clusters}


def run(features_dir: str, out_dir: str, cfg: SimilarityConfig, seed: int = 0) -> SimilarityResult:
    """Cluster the render features; write clusters.parquet."""
    src = Path(features_dir)
    feats = storage.read_array(src / "features.npy")
    index = storage.read_table(src / "index.parquet").to_pydict()
    rows = np.flatnonzero(np.asarray(index["domain"]) == "scene")
    if len(rows) == 0:
        raise DataError("similarity needs rendered scenes, found none in the features")
    labels = np.asarray(index["label"])[rows]
    item_ids = np.asarray(index["item_id"])[rows]
    k = cfg.n_clusters or len(np.unique(labels))
    clusters = kmeans(feats[rows], k, seed)
    neighbours = similar_candidates(feats[rows], clusters, item_ids, cfg.n_neighbours)
    table = {
        "item_id": item_ids.tolist(),
        "view": np.asarray(index["view"])[rows].tolist(),
        "flip": np.asarray(index["flip"])[rows].tolist(),
        "label": labels.tolist(),
        "cluster": clusters.tolist(),
        "neighbours": neighbours,
    }
    storage.write_table(Path(out_dir) / "clusters.parquet", pa.Table.from_pydict(table, schema=CLUSTERS_SCHEMA))
    return SimilarityResult(k, cluster_purity(labels, clusters), float(normalized_mutual_info_score(labels, clusters)), float(adjusted_rand_score(labels, clusters)))

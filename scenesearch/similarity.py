"""Visual similarity detection: k-means (scikit-learn or FAISS) over render features.

Gives each render a cluster id and a list of "sufficiently similar" candidate scenes (the
nearest renders of other scenes in the same cluster, by cosine similarity), and measures how
well clusters match classes (purity, NMI, ARI): ``clusters.parquet``.

Scene mixing (LORBMS, `scenesearch.methods.lorbms`) draws its image tuples from
``candidates.parquet``: the unflipped train-split images (renders and query photos) clustered
by k-means on their descriptors, and for each one the images of other items in its cluster that
may replace its quadrants, most similar first. No label is read for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from scenesearch import storage
from scenesearch.config import KMEANS_BACKENDS, SimilarityConfig
from scenesearch.distances import unit_rows
from scenesearch.errors import ConfigError, DataError

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
CANDIDATES_FILE = "candidates.parquet"
CANDIDATES_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),  # row of the features (= preprocess) index
        ("item_id", pa.string()),
        ("domain", pa.string()),
        ("view", pa.int32()),
        ("cluster", pa.int32()),
        ("candidates", pa.list_(pa.int64())),  # index rows of other items of the cluster, most similar first
    ]
)


def cluster_purity(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Fraction of items whose label is the majority label of their cluster."""
    _, y = np.unique(labels, return_inverse=True)
    _, c = np.unique(clusters, return_inverse=True)
    table = np.zeros((c.max() + 1, y.max() + 1), dtype=np.int64)
    np.add.at(table, (c, y), 1)
    return float(table.max(axis=1).sum() / len(labels))


def kmeans(x: np.ndarray, n_clusters: int, seed: int = 0, backend: str = "sklearn") -> np.ndarray:
    """Cluster ids of L2-normalised rows (k-means on the sphere approximates cosine clustering).

    Args:
        x: (n, d) features.
        n_clusters: k.
        seed: seeds the initialisations.
        backend: "sklearn" (KMeans, 4 k-means++ initialisations) or "faiss" (faiss.Kmeans from 4
            k-means++ initialisations, 100 iterations each, the lowest-inertia one kept; it fits on a
            seeded sample of at most 256 rows per cluster, then assigns every row to its nearest
            centroid, which is what makes it fast on large galleries).

    Returns:
        (n,) int32 cluster ids in [0, n_clusters).

    Raises:
        ConfigError: backend is not one of KMEANS_BACKENDS.
        DataError: fewer rows than clusters.
    """
    if backend not in KMEANS_BACKENDS:
        raise ConfigError(f"similarity.backend must be one of {', '.join(KMEANS_BACKENDS)}; got '{backend}'")
    if len(x) < n_clusters:
        raise DataError(f"k-means needs at least {n_clusters} items, got {len(x)}")
    xn = unit_rows(x)
    if backend == "sklearn":
        return KMeans(n_clusters=n_clusters, n_init=4, random_state=seed).fit_predict(xn).astype(np.int32)
    return _faiss_kmeans(np.ascontiguousarray(xn, dtype=np.float32), n_clusters, seed)


def _faiss_kmeans(x: np.ndarray, n_clusters: int, seed: int, n_init: int = 4, niter: int = 100) -> np.ndarray:
    """(n,) int32 nearest-centroid ids of FAISS k-means on (n, d) float32 rows, best of n_init runs.

    FAISS seeds its centroids with random rows, which often leaves two centroids in one blob and
    none in another (nredo does not fix that at few clusters); k-means++ seeding, as scikit-learn
    does, avoids it.
    """
    import faiss
    from sklearn.cluster import kmeans_plusplus

    rng = np.random.default_rng(seed)
    n_fit = min(len(x), 256 * n_clusters)  # FAISS's own default sample size
    fit = x if n_fit == len(x) else x[np.sort(rng.choice(len(x), n_fit, replace=False))]
    best, best_inertia = None, np.inf
    for run in range(n_init):
        init, _ = kmeans_plusplus(fit, n_clusters, random_state=seed + run)
        # min_points_per_centroid=1: small galleries are fine here, and FAISS would print a warning to stderr
        km = faiss.Kmeans(x.shape[1], n_clusters, niter=niter, seed=seed + run, min_points_per_centroid=1, max_points_per_centroid=n_fit)
        km.train(fit, init_centroids=np.ascontiguousarray(init, dtype=np.float32))
        dist, _ = km.index.search(fit, 1)
        if dist.sum() < best_inertia:
            best, best_inertia = km, float(dist.sum())
    _, ids = best.index.search(x, 1)  # (n, 1) nearest centroid
    return ids[:, 0].astype(np.int32)


def similar_candidates(x: np.ndarray, clusters: np.ndarray, item_ids: np.ndarray, k: int) -> list[list[str]]:
    """For each row, up to k distinct other items in its cluster, most cosine-similar first."""
    xn = unit_rows(x)
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


def image_candidates(x: np.ndarray, clusters: np.ndarray, items: np.ndarray, k: int) -> list[np.ndarray]:
    """For each row, up to k rows of its cluster that belong to another item, most cosine-similar first.

    Other views of the same scene (or the same photo) are never candidates: a quadrant swapped
    in from them would teach the mixing nothing.

    Args:
        x: (n, d) descriptors. clusters: (n,) cluster ids. items: (n,) the item each row shows.

    Returns:
        n int64 arrays of row positions into `x`.
    """
    xn = unit_rows(x)
    out: list[np.ndarray] = [np.zeros(0, np.int64)] * len(x)
    for c in np.unique(clusters):
        rows = np.flatnonzero(clusters == c)
        sims = xn[rows] @ xn[rows].T  # (n_c, n_c), one cluster at a time
        sims[items[rows][:, None] == items[rows][None, :]] = -np.inf  # itself and its own item's other rows
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        for i, r in enumerate(rows):
            keep = order[i][np.isfinite(sims[i, order[i]])]
            out[r] = rows[keep].astype(np.int64)
    return out


def candidates_table(feats: np.ndarray, index: dict, cfg: SimilarityConfig, n_clusters: int, seed: int) -> pa.Table:
    """`image_candidates` over the unflipped train-split rows of a features index (renders and
    queries alike), clustered by k-means into `n_clusters`; empty when the split has too few rows."""
    split, flip = np.asarray(index["split"]), np.asarray(index["flip"])
    rows = np.flatnonzero((split == "train") & ~flip)
    if len(rows) < max(n_clusters, 2):
        return CANDIDATES_SCHEMA.empty_table()
    clusters = kmeans(feats[rows], n_clusters, seed, cfg.backend)
    items = np.asarray([f"{d}/{i}" for d, i in zip(np.asarray(index["domain"])[rows], np.asarray(index["item_id"])[rows])])
    cands = image_candidates(feats[rows], clusters, items, cfg.n_candidates)
    return pa.Table.from_pydict(
        {
            "row": rows.astype(np.int64).tolist(),
            "item_id": np.asarray(index["item_id"])[rows].tolist(),
            "domain": np.asarray(index["domain"])[rows].tolist(),
            "view": np.asarray(index["view"])[rows].tolist(),
            "cluster": clusters.tolist(),
            "candidates": [rows[c].tolist() for c in cands],
        },
        schema=CANDIDATES_SCHEMA,
    )


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
    clusters = kmeans(feats[rows], k, seed, cfg.backend)
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
    storage.write_table(Path(out_dir) / CANDIDATES_FILE, candidates_table(feats, index, cfg, k, seed))
    return SimilarityResult(k, cluster_purity(labels, clusters), float(normalized_mutual_info_score(labels, clusters)), float(adjusted_rand_score(labels, clusters)))

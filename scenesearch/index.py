"""Searching gallery views by cosine similarity: exact NumPy, FAISS flat, or FAISS IVF-PQ.

The descriptor methods score a query against a scene by its most similar view. Exact scoring
touches every view of every scene; on large galleries an index over the views answers "the k most
similar views" instead, and a scene's distance comes from its views among those k.

Kinds (`retrieve.index`, INDEX_CHOICES in scenesearch.config):
  exact-numpy  brute force: one matmul per block of queries plus argpartition; exact.
  flat         faiss.IndexFlatIP: brute force in FAISS's BLAS kernels; exact.
  ivfpq        faiss.IndexIVFPQ (inner product): an inverted file of nlist k-means cells, each view
               stored as m one-byte product-quantiser codes; approximate, nprobe cells searched per
               query. Optionally re-ranks a shortlist of rerank * k candidates with the raw vectors
               (faiss.IndexRefineFlat), which keeps a float copy of every view.

Rows are L2-normalised inside, so inner product is cosine similarity. faiss and torch are
imported where they are used: importing this module costs neither.
"""

from __future__ import annotations

import logging
import math
import os
from typing import TYPE_CHECKING

import numpy as np

from scenesearch.config import INDEX_CHOICES
from scenesearch.distances import unit_rows
from scenesearch.errors import ConfigError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DEFAULT_NPROBE = 32
MAX_TRAIN_ROWS = 100_000  # IVF-PQ trains on a seeded sample of at most this many views
MIN_POINTS_PER_CENTROID = 39  # FAISS's own minimum: fewer training rows per cell give poor k-means
PQ_CENTROIDS = 256  # 8-bit codes
EXACT_BLOCK_ELEMENTS = 1 << 26  # exact-numpy: queries x rows similarities per block (256 MiB float32)
NO_VIEW_DISTANCE = 2.0  # the largest cosine distance: scenes with no view among the found ones


def _normalise(x: np.ndarray) -> np.ndarray:
    """Rows of x as contiguous float32 with unit L2 norm (zero rows stay zero)."""
    return np.ascontiguousarray(unit_rows(np.asarray(x, dtype=np.float32)))


def _check_kind(kind: str) -> None:
    if kind not in INDEX_CHOICES:
        raise ConfigError(f"retrieve.index must be one of {', '.join(INDEX_CHOICES)}; got '{kind}'")


def _faiss():
    """The faiss module, its OpenMP threads set from the environment.

    OMP_NUM_THREADS wins when set (FAISS reads it itself); otherwise the CPUs this process may run
    on (a container's cpuset can be smaller than os.cpu_count(), and oversubscribing it makes
    FAISS's OpenMP loops much slower).
    """
    import faiss

    if "OMP_NUM_THREADS" not in os.environ and hasattr(os, "sched_getaffinity"):
        faiss.omp_set_num_threads(len(os.sched_getaffinity(0)))
    return faiss


def default_nlist(n: int) -> int:
    """About 4 * sqrt(n) inverted-file cells, at most one per 39 training rows."""
    train = min(n, MAX_TRAIN_ROWS)
    return max(1, min(int(round(4 * math.sqrt(n))), train // MIN_POINTS_PER_CENTROID))


def default_m(d: int) -> int:
    """Sub-quantisers for d dimensions: the largest divisor of d that is <= min(64, d // 8), at least 1."""
    target = max(1, min(64, d // 8))
    return max(m for m in range(1, target + 1) if d % m == 0)


class ViewIndex:
    """The k most cosine-similar rows of a fixed set of (n, d) views, for a batch of queries.

    Args:
        views: (n, d) rows (any float dtype); normalised and copied to float32 inside.
        kind: one of INDEX_CHOICES.
        seed: seeds the training sample and FAISS's k-means (coarse cells and PQ codebooks).
        nprobe: ivfpq: cells searched per query.
        nlist: ivfpq: inverted-file cells (default `default_nlist(n)`).
        m: ivfpq: sub-quantisers, must divide d (default `default_m(d)`).
        rerank: ivfpq: if > 0, re-score the top rerank * k PQ candidates with the raw vectors
            (exact similarities, and a float copy of the views kept in memory).

    `kind` is the kind actually built: ivfpq falls back to flat, with a logged warning, when there
    are too few views to train it.

    Raises:
        ConfigError: kind is not one of INDEX_CHOICES.
        ValueError: m does not divide d.
    """

    def __init__(
        self,
        views: np.ndarray,
        kind: str = "flat",
        seed: int = 0,
        nprobe: int = DEFAULT_NPROBE,
        nlist: int | None = None,
        m: int | None = None,
        rerank: int = 0,
    ) -> None:
        _check_kind(kind)
        x = _normalise(views)  # (n, d)
        self.n, self.d = x.shape
        self.nlist, self.m, self.nprobe, self.rerank = 0, 0, nprobe, rerank
        self.train_rows = 0
        self._refine = None  # ivfpq with rerank > 0: IndexRefineFlat over the IVF index, holding the raw views
        if kind == "ivfpq":
            self.nlist = nlist or default_nlist(self.n)
            self.m = m or default_m(self.d)
            if self.d % self.m:
                raise ValueError(f"ivfpq needs m dividing d = {self.d}, got m = {self.m}")
            needed = max(MIN_POINTS_PER_CENTROID * self.nlist, MIN_POINTS_PER_CENTROID * PQ_CENTROIDS)
            if self.n < needed:
                log.warning(
                    "ivfpq needs at least %d views to train %d cells and %d-code quantisers, got %d: using flat (exact) search",
                    needed, self.nlist, PQ_CENTROIDS, self.n,
                )
                kind, self.nlist, self.m, self.rerank = "flat", 0, 0, 0
        self.kind = kind
        if kind == "exact-numpy":
            self._x = x
        elif kind == "flat":
            faiss = _faiss()
            self._index = faiss.IndexFlatIP(self.d)
            self._index.add(x)
        else:
            self._build_ivfpq(x, seed)

    def _build_ivfpq(self, x: np.ndarray, seed: int) -> None:
        faiss = _faiss()
        self._quantizer = faiss.IndexFlatIP(self.d)  # kept: the IVF index points into it
        ivf = faiss.IndexIVFPQ(self._quantizer, self.d, self.nlist, self.m, 8, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.seed = seed  # coarse k-means
        ivf.pq.cp.seed = seed  # product-quantiser k-means
        ivf.nprobe = self.nprobe
        self._ivf = ivf
        rng = np.random.default_rng(seed)
        self.train_rows = min(self.n, MAX_TRAIN_ROWS)
        sample = x if self.train_rows == self.n else x[np.sort(rng.choice(self.n, self.train_rows, replace=False))]
        ivf.train(sample)
        ivf.add(x)
        self._index = ivf
        if self.rerank > 0:
            # the refine index copies the raw views; the IVF index above answers when rerank is set to 0
            self._refine = faiss.IndexRefineFlat(ivf, faiss.swig_ptr(x))
            self._refine.k_factor = float(self.rerank)
            self._index = self._refine

    def set_nprobe(self, nprobe: int) -> None:
        """Cells searched per query from now on (ivfpq; no effect on exact kinds)."""
        self.nprobe = nprobe
        if self.kind == "ivfpq":
            self._ivf.nprobe = nprobe

    def set_rerank(self, rerank: int) -> None:
        """Re-rank rerank * k PQ candidates exactly from now on, or 0 for PQ similarities alone.

        Raises:
            ValueError: rerank > 0 on an index built without a raw copy (rerank = 0 at build).
        """
        if self.kind != "ivfpq":
            return
        if rerank > 0 and self._refine is None:
            raise ValueError("this ivfpq index keeps no raw views to re-rank with: build it with rerank > 0")
        if rerank > 0:
            self._refine.k_factor = float(rerank)
        self._index = self._refine if rerank > 0 else self._ivf
        self.rerank = rerank

    def nbytes(self) -> int:
        """Bytes the stored views take: raw float32 for exact kinds; codes, ids and centroids for ivfpq
        (plus the raw copy when re-ranking)."""
        raw = self.n * self.d * 4
        if self.kind != "ivfpq":
            return raw
        codes = self.n * (self.m + 8)  # one byte per sub-quantiser plus an int64 id per view
        tables = self.nlist * self.d * 4 + PQ_CENTROIDS * self.d * 4
        return codes + tables + (raw if self._refine is not None else 0)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k most similar views of each query, most similar first.

        Args:
            queries: (Q, d) rows; normalised inside.
            k: views per query, > 0.

        Returns:
            (sims (Q, k) float32 cosine similarities, ids (Q, k) int64 view rows); where fewer than
            k views were found (k > n, or ivfpq's probed cells hold fewer) ids are -1 and sims -inf.
            ivfpq sims are PQ approximations unless rerank > 0.

        Raises:
            ValueError: k < 1, or the queries are not (Q, d).
        """
        if k < 1:
            raise ValueError(f"index search needs k >= 1, got {k}")
        if np.ndim(queries) != 2 or np.shape(queries)[1] != self.d:
            raise ValueError(f"index queries must be (Q, {self.d}), got {tuple(np.shape(queries))}")
        q = _normalise(queries)
        if self.kind == "exact-numpy":
            return self._search_exact(q, k)
        _faiss()
        sims, ids = self._index.search(q, k)
        sims[ids < 0] = -np.inf  # FAISS pads with -FLT_MAX
        return sims.astype(np.float32, copy=False), ids.astype(np.int64, copy=False)

    def _search_exact(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        kk = min(k, self.n)
        sims = np.full((len(q), k), -np.inf, dtype=np.float32)
        ids = np.full((len(q), k), -1, dtype=np.int64)
        block = max(1, EXACT_BLOCK_ELEMENTS // max(self.n, 1))
        for start in range(0, len(q), block):
            s = q[start : start + block] @ self._x.T  # (b, n)
            top = np.argpartition(-s, kk - 1, axis=1)[:, :kk] if kk < self.n else np.broadcast_to(np.arange(self.n), (len(s), self.n))
            top_s = np.take_along_axis(s, top, axis=1)
            order = np.argsort(-top_s, axis=1, kind="stable")
            sims[start : start + block, :kk] = np.take_along_axis(top_s, order, axis=1)
            ids[start : start + block, :kk] = np.take_along_axis(top, order, axis=1)
        return sims, ids


def build_index(views: np.ndarray, kind: str, seed: int = 0, nprobe: int = DEFAULT_NPROBE, **kwargs) -> ViewIndex:
    """A ViewIndex of `kind` over (n, d) views; kwargs go to ViewIndex (nlist, m, rerank).

    Raises:
        ConfigError: kind is not one of INDEX_CHOICES.
    """
    return ViewIndex(views, kind, seed=seed, nprobe=nprobe, **kwargs)


def min_view_distances(queries: torch.Tensor, gallery: torch.Tensor, kind: str = "exact-numpy", k: int = 1000, seed: int = 0, nprobe: int = DEFAULT_NPROBE) -> torch.Tensor:
    """D[q, s] = 1 - max over views v of cos(queries[q], gallery[s, v]), through an index.

    exact-numpy is `scenesearch.distances.min_view_cosine_distances`, exact over every view.
    flat / ivfpq search the top min(k, S*V) views per query; a scene's distance comes from its
    views among those (re-scored exactly, so ivfpq's codes only decide which views are found;
    when ivfpq misses a scene's best view its distance is above the exact one), and a scene with
    none of them gets 2.0, the largest cosine distance: such scenes rank last, tied. With flat,
    every found scene's distance is exact, and with k >= S*V so is the whole result.

    Args:
        queries: (Q, d).
        gallery: (S, V, d); every scene has V views.
        kind: one of INDEX_CHOICES (`retrieve.index`).
        k: views searched per query (`retrieve.index_k`).
        seed, nprobe: for ivfpq, see ViewIndex.

    Returns:
        (Q, S) float32 tensor on the queries' device, lower is closer.

    Raises:
        ConfigError: kind is unknown or k < 1.
    """
    import torch

    from scenesearch.distances import min_view_cosine_distances

    _check_kind(kind)
    if kind == "exact-numpy":
        return min_view_cosine_distances(queries, gallery)
    if k < 1:
        raise ConfigError(f"retrieve.index_k must be >= 1, got {k}")
    n_s, n_v, d = gallery.shape
    views = _normalise(gallery.detach().float().cpu().numpy().reshape(n_s * n_v, d))  # (S*V, d)
    q = _normalise(queries.detach().float().cpu().numpy())  # (Q, d)
    index = ViewIndex(views, kind, seed=seed, nprobe=nprobe)
    _, ids = index.search(q, min(k, n_s * n_v))  # (Q, k')
    best = np.full((len(q), n_s), -np.inf, dtype=np.float32)  # (Q, S) max similarity of a found view
    block = max(1, (1 << 24) // (ids.shape[1] * d))  # re-scoring gathers (b, k', d) floats
    for start in range(0, len(q), block):
        found = ids[start : start + block]  # (b, k')
        rows, cols = np.nonzero(found >= 0)
        sims = np.einsum("nd,nd->n", q[start + rows], views[found[rows, cols]])
        np.maximum.at(best, (start + rows, found[rows, cols] // n_v), sims)
    dist = np.where(np.isfinite(best), 1.0 - best, NO_VIEW_DISTANCE).astype(np.float32)
    return torch.from_numpy(dist).to(queries.device)

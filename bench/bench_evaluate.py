"""Time retrieval_metrics on 10,000 queries x 10,000 scenes against a per-query loop.

Run: PYTHONPATH=. .venv/bin/python bench/bench_evaluate.py

Prints figures only; asserts nothing. The loop baseline is timed on a subset of queries
and extrapolated linearly to all queries (each query costs the same: one row sort).
"""

from __future__ import annotations

import math
import resource
import sys
import time
import tracemalloc

import numpy as np

from scenesearch.evaluation import random_distances, retrieval_metrics

N_QUERIES = 10_000
N_GALLERY = 10_000
N_CLASSES = 100
SEED = 0
K = 200
LOOP_SUBSET = 200


def loop_metrics(
    distances: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray, k: int
) -> dict[str, float]:
    """Per-query loop baseline: NumPy inside each query, a Python loop over queries.

    Args:
        distances: (Q, S) distances.
        query_labels: (Q,) int labels.
        gallery_labels: (S,) int labels.
        k: cut-off of P@K and mAP@K.

    Returns:
        The metric means over queries with at least one relevant item.
    """
    n_gallery = distances.shape[1]
    ranks = np.arange(1, n_gallery + 1, dtype=np.float64)
    discount = np.ones(n_gallery)
    discount[1:] = 1.0 / np.log2(ranks[1:])
    ideal = np.cumsum(discount)
    e_cut = min(32, n_gallery)
    rows: list[list[float]] = []
    for q in range(distances.shape[0]):
        rel = gallery_labels[np.argsort(distances[q], kind="stable")] == query_labels[q]
        r = int(rel.sum())
        if r == 0:
            continue
        cum = np.cumsum(rel)
        p, rec = cum[e_cut - 1] / e_cut, cum[e_cut - 1] / r
        prec = cum / ranks
        n_k = int(cum[min(k, n_gallery) - 1])
        rows.append(
            [
                float(rel[0]),
                cum[r - 1] / r,
                cum[min(2 * r, n_gallery) - 1] / r,
                2 * p * rec / (p + rec) if p + rec > 0 else 0.0,
                float(discount[rel].sum() / ideal[r - 1]),
                float(prec[rel].sum() / r),
                n_k / k,
                float(prec[:k][rel[:k]].sum() / n_k) if n_k else 0.0,
            ]
        )
    names = ["NN", "FT", "ST", "E", "DCG", "mAP", f"P@{k}", f"mAP@{k}"]
    return dict(zip(names, np.mean(np.array(rows), axis=0).tolist()))


def main() -> None:
    """Build the random baseline, time both implementations and print the figures."""
    rng = np.random.default_rng(SEED)
    gallery_labels = rng.integers(0, N_CLASSES, N_GALLERY)
    query_labels = rng.integers(0, N_CLASSES, N_QUERIES)
    distances = random_distances(N_QUERIES, N_GALLERY, seed=SEED)
    print(
        f"retrieval_metrics: {N_QUERIES} queries x {N_GALLERY} scenes, {N_CLASSES} classes, "
        f"random {distances.dtype} distances (seed {SEED}, "
        f"{distances.nbytes / 2**20:.0f} MiB), k={K}"
    )
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}")

    start = time.perf_counter()
    result = retrieval_metrics(distances, query_labels, gallery_labels, k=K)
    vectorised_s = time.perf_counter() - start
    print(f"vectorised, all {N_QUERIES} queries: {vectorised_s:.2f} s (measured)")
    print("  " + ", ".join(f"{name}={value:.4f}" for name, value in result.items()
                          if isinstance(value, float)))

    # A second run under tracemalloc: NumPy reports its buffers to it, so the peak is the
    # working memory on top of the distances, which already exist when tracing starts.
    tracemalloc.start()
    retrieval_metrics(distances, query_labels, gallery_labels, k=K)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"  peak traced memory above the input: {peak / 2**20:.0f} MiB (measured, 2nd run)")
    maxrss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(f"  process max RSS: {maxrss_kib / 2**10:.0f} MiB (includes the input)")

    subset = slice(0, LOOP_SUBSET)
    start = time.perf_counter()
    loop = loop_metrics(distances[subset], query_labels[subset], gallery_labels, K)
    loop_subset_s = time.perf_counter() - start
    start = time.perf_counter()
    vec_subset = retrieval_metrics(distances[subset], query_labels[subset], gallery_labels, k=K)
    vec_subset_s = time.perf_counter() - start
    loop_full_s = loop_subset_s * N_QUERIES / LOOP_SUBSET
    max_diff = max(abs(vec_subset[name] - value) for name, value in loop.items())
    print(
        f"per-query loop, {LOOP_SUBSET} queries: {loop_subset_s:.2f} s (measured); "
        f"vectorised on the same {LOOP_SUBSET}: {vec_subset_s:.2f} s (measured), "
        f"ratio {loop_subset_s / vec_subset_s:.1f}x"
    )
    print(f"  max |loop - vectorised| over the metrics on that subset: {max_diff:.2e}")
    print(
        f"per-query loop, all {N_QUERIES} queries: {loop_full_s:.1f} s "
        f"(EXTRAPOLATED x{N_QUERIES // LOOP_SUBSET} from {LOOP_SUBSET} queries)"
    )
    ratio = loop_full_s / vectorised_s if vectorised_s > 0 else math.inf
    print(
        f"speed-up of vectorised over the loop: {ratio:.1f}x "
        "(extrapolated loop / measured vectorised)"
    )


if __name__ == "__main__":
    main()

import logging

import numpy as np
import pytest
import torch

from scenesearch.distances import min_view_cosine_distances
from scenesearch.errors import ConfigError
from scenesearch.index import ViewIndex, build_index, min_view_distances


def clustered(n, d=128, n_clusters=100, rank=8, spread=0.5, noise=0.1, seed=0):
    """(n, d) unit rows: cluster centres on the sphere, a few directions of spread per cluster, noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    basis = rng.standard_normal((n_clusters, rank, d)) / np.sqrt(d)
    draw = np.random.default_rng(seed + 1)
    labels = draw.integers(0, n_clusters, n)
    x = centres[labels] + np.einsum("nr,nrd->nd", draw.standard_normal((n, rank)) * spread, basis[labels])
    x += draw.standard_normal((n, d)) * noise / np.sqrt(d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def recall(found, truth):
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


@pytest.fixture(scope="module")
def clustered_20k():
    x = clustered(20_200)
    return x[:20_000], x[20_000:]  # views, 200 queries from the same clusters


def test_flat_equals_exact():
    rng = np.random.default_rng(0)
    views, queries = rng.standard_normal((3000, 32)), rng.standard_normal((50, 32))
    s_exact, i_exact = ViewIndex(views, "exact-numpy").search(queries, 20)
    s_flat, i_flat = ViewIndex(views, "flat").search(queries, 20)
    assert s_flat.dtype == np.float32 and i_flat.dtype == np.int64 and i_flat.shape == (50, 20)
    assert np.array_equal(i_exact, i_flat)
    np.testing.assert_allclose(s_exact, s_flat, atol=1e-5)
    brute = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ (views / np.linalg.norm(views, axis=1, keepdims=True)).T
    np.testing.assert_allclose(s_exact[:, 0], brute.max(axis=1), atol=1e-5)  # rows are normalised inside


def test_fewer_views_than_k_pads_with_minus_one():
    views = np.random.default_rng(0).standard_normal((5, 8))
    for kind in ("exact-numpy", "flat"):
        sims, ids = ViewIndex(views, kind).search(views[:2], 8)
        assert (ids[:, 5:] == -1).all() and np.isneginf(sims[:, 5:]).all()
        assert sorted(ids[0, :5]) == [0, 1, 2, 3, 4] and ids[0, 0] == 0


def test_min_view_distances_flat_equals_exact():
    g = torch.Generator().manual_seed(0)
    queries, gallery = torch.randn((30, 16), generator=g), torch.randn((40, 7, 16), generator=g)
    exact = min_view_cosine_distances(queries, gallery)
    assert torch.equal(min_view_distances(queries, gallery, "exact-numpy"), exact)
    flat = min_view_distances(queries, gallery, "flat", k=40 * 7)
    assert flat.dtype == torch.float32 and flat.shape == (30, 40)
    torch.testing.assert_close(flat, exact, atol=1e-5, rtol=0)


def test_scenes_without_a_found_view_rank_last():
    g = torch.Generator().manual_seed(1)
    queries, gallery = torch.randn((10, 16), generator=g), torch.randn((50, 4, 16), generator=g)
    exact = min_view_cosine_distances(queries, gallery)
    d = min_view_distances(queries, gallery, "flat", k=5)  # at most 5 of the 50 scenes found per query
    found = d < 2.0
    assert (found.sum(dim=1) <= 5).all() and (found.sum(dim=1) >= 1).all()
    assert (d[~found] == 2.0).all()
    torch.testing.assert_close(d[found], exact[found], atol=1e-5, rtol=0)  # found scenes: their best view is among the top 5
    assert torch.equal(d.argmin(dim=1), exact.argmin(dim=1))


def test_ivfpq_recall_against_exact(clustered_20k):
    views, queries = clustered_20k
    _, truth = ViewIndex(views, "exact-numpy").search(queries, 10)
    index = ViewIndex(views, "ivfpq", seed=0, rerank=4)
    assert index.kind == "ivfpq" and index.nlist == 512 and index.m == 16
    sims, ids = index.search(queries, 10)  # re-ranked: measured 0.994
    assert recall(ids, truth) >= 0.95
    again = ViewIndex(views, "ivfpq", seed=0, rerank=4).search(queries, 10)
    assert np.array_equal(ids, again[1]) and np.array_equal(sims, again[0])  # seeded k-means
    index.set_rerank(0)
    assert recall(index.search(queries, 10)[1], truth) >= 0.7  # PQ codes alone: measured 0.76 (0.54 with nprobe 1)
    assert index.nbytes() > views.nbytes  # the re-ranking copy is counted


def test_ivfpq_falls_back_to_flat_on_few_views(caplog):
    views = np.random.default_rng(0).standard_normal((500, 16))
    with caplog.at_level(logging.WARNING, logger="scenesearch.index"):
        index = build_index(views, "ivfpq")
    assert index.kind == "flat"
    assert "ivfpq needs at least" in caplog.text and "using flat" in caplog.text


def test_unknown_kind_names_the_field():
    with pytest.raises(ConfigError, match="retrieve.index"):
        ViewIndex(np.zeros((4, 4)), "hnsw")
    with pytest.raises(ConfigError, match="retrieve.index.*exact-numpy, flat, ivfpq"):
        min_view_distances(torch.zeros((1, 4)), torch.zeros((2, 2, 4)), "hnsw")


def test_importing_the_module_imports_neither_faiss_nor_torch():
    import subprocess
    import sys

    code = "import sys, scenesearch.index; print('faiss' in sys.modules, 'torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split() == ["False", "False"]

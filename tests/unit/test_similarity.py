import numpy as np

from scenesearch.similarity import cluster_purity, kmeans, similar_candidates


def test_separable_clusters_are_pure():
    rng = np.random.default_rng(0)
    centres = np.eye(4) * 10
    x = np.concatenate([c + rng.normal(0, 0.1, (20, 4)) for c in centres])
    labels = np.repeat(["a", "b", "c", "d"], 20)
    clusters = kmeans(x, 4, seed=0)
    assert cluster_purity(labels, clusters) == 1.0
    assert np.array_equal(clusters, kmeans(x, 4, seed=0))  # seeded


def test_purity_by_hand():
    labels = np.array(["a", "a", "b", "b", "b"])
    clusters = np.array([0, 0, 0, 1, 1])
    assert cluster_purity(labels, clusters) == 4 / 5


def test_candidates_stay_in_cluster_and_exclude_self():
    x = np.array([[1, 0], [0.9, 0.1], [0.8, 0.2], [0, 1], [0.1, 0.9]], dtype=float)
    clusters = np.array([0, 0, 0, 1, 1])
    ids = np.array(["s1", "s1", "s2", "s3", "s4"])  # two rows are views of the same scene
    out = similar_candidates(x, clusters, ids, k=5)
    assert out[0] == ["s2"] and out[2] == ["s1"] and out[3] == ["s4"]


def test_backends_agree_on_separated_blobs():
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng(1)
    centres = rng.standard_normal((6, 16)) * 10
    x = np.concatenate([c + rng.normal(0, 0.1, (30, 16)) for c in centres])
    labels = np.repeat(np.arange(6), 30)
    by_sklearn = kmeans(x, 6, seed=0, backend="sklearn")
    by_faiss = kmeans(x, 6, seed=0, backend="faiss")
    assert by_faiss.dtype == by_sklearn.dtype == np.int32 and by_faiss.shape == by_sklearn.shape == (180,)
    assert set(by_faiss.tolist()) == set(range(6))
    for clusters in (by_sklearn, by_faiss):
        assert cluster_purity(labels, clusters) == 1.0 and adjusted_rand_score(labels, clusters) == 1.0
    assert np.array_equal(by_faiss, kmeans(x, 6, seed=0, backend="faiss"))  # seeded


def test_unknown_backend_names_the_field():
    import pytest

    from scenesearch.errors import ConfigError

    with pytest.raises(ConfigError, match="similarity.backend"):
        kmeans(np.eye(4), 2, backend="cuml")


def _cosine(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_image_candidates_by_hand():
    from scenesearch.similarity import image_candidates

    rng = np.random.default_rng(3)
    x = rng.normal(size=(9, 5))
    clusters = np.array([0, 0, 0, 1, 0, 1, 0, 1, 0])
    items = np.array(["a", "a", "b", "c", "c", "d", "e", "d", "f"])  # rows 0/1 and 5/7 are one item each
    for k in (1, 3, 10):
        out = image_candidates(x, clusters, items, k)
        assert len(out) == len(x)
        for r in range(len(x)):
            pool = [j for j in range(len(x)) if clusters[j] == clusters[r] and items[j] != items[r]]
            want = sorted(pool, key=lambda j: -_cosine(x[r], x[j]))[:k]
            assert out[r].dtype == np.int64 and out[r].tolist() == want, (k, r)
            assert r not in out[r] and len(out[r]) <= k
            assert all(items[j] != items[r] and clusters[j] == clusters[r] for j in out[r])
    # row 3 (item c, cluster 1): only row 5 and 7 (item d) are another item there
    assert sorted(image_candidates(x, clusters, items, 10)[3].tolist()) == [5, 7]
    # an item alone in its cluster has no candidate
    assert image_candidates(x, np.array([0, 0, 1, 2, 2, 2, 2, 2, 2]), np.array(["a", "a", "b", "c", "d", "e", "f", "g", "h"]), 4)[2].tolist() == []


def _index(n=40, seed=0):
    rng = np.random.default_rng(seed)
    feats = np.concatenate([rng.normal(size=(n // 2, 6)) + 8 * np.eye(6)[0], rng.normal(size=(n - n // 2, 6)) + 8 * np.eye(6)[1]])
    index = {
        "item_id": [f"s{i // 2}" for i in range(n)],  # two views per item
        "domain": ["scene" if i % 4 < 2 else "photo" for i in range(n)],
        "view": [i % 2 for i in range(n)],
        "split": ["test" if i % 5 == 4 else "train" for i in range(n)],
        "flip": [i % 3 == 2 for i in range(n)],
        "label": [f"class{i % 3}" for i in range(n)],
    }
    return feats, index


def test_candidates_table_uses_the_unflipped_train_rows_and_their_index_positions():
    from scenesearch.config import SimilarityConfig
    from scenesearch.similarity import CANDIDATES_SCHEMA, candidates_table

    feats, index = _index()
    table = candidates_table(feats, index, SimilarityConfig(n_candidates=4), 2, 0)
    assert table.schema == CANDIDATES_SCHEMA
    t = table.to_pydict()
    allowed = [i for i in range(len(feats)) if index["split"][i] == "train" and not index["flip"][i]]
    assert t["row"] == allowed
    for r, item, dom, view, cands in zip(t["row"], t["item_id"], t["domain"], t["view"], t["candidates"]):
        assert (item, dom, view) == (index["item_id"][r], index["domain"][r], index["view"][r])
        assert len(cands) <= 4 and set(cands) <= set(allowed)
        assert all(f"{index['domain'][c]}/{index['item_id'][c]}" != f"{dom}/{item}" for c in cands)
    cluster = dict(zip(t["row"], t["cluster"]))
    assert all(cluster[c] == cluster[r] for r, cands in zip(t["row"], t["candidates"]) for c in cands)
    assert len(set(t["cluster"])) == 2 and any(t["candidates"])
    # too few rows for the clusters: an empty table of the same schema
    assert candidates_table(feats, index, SimilarityConfig(), len(allowed) + 1, 0).num_rows == 0


def test_the_candidates_read_no_label():
    from scenesearch.config import SimilarityConfig
    from scenesearch.similarity import candidates_table

    feats, index = _index(seed=1)
    cfg = SimilarityConfig(n_candidates=3)
    a = candidates_table(feats, index, cfg, 3, 0)
    shuffled = {**index, "label": list(np.random.default_rng(0).permutation(index["label"]))}
    blank = {**index, "label": [""] * len(feats)}
    assert a.equals(candidates_table(feats, shuffled, cfg, 3, 0))
    assert a.equals(candidates_table(feats, blank, cfg, 3, 0))
    del blank["label"]
    assert a.equals(candidates_table(feats, blank, cfg, 3, 0))

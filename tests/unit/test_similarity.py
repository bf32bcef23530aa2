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

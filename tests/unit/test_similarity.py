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

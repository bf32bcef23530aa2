import numpy as np
import pytest

from scenesearch.errors import DataError
from scenesearch.whitening import Whitening, learned_whitening, pca_whitening, same_class_pairs


def _l2n(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _anisotropic(rng, n, d=6):
    # offset mean so L2-normalised rows keep a full-rank, strongly anisotropic covariance
    scales = np.array([3.0, 1.0, 0.3, 0.1, 0.03, 0.01])[:d]
    return rng.normal(size=(n, d)) * scales + np.r_[2.0, 1.0, np.zeros(d - 2)]


def _whitened_before_l2(w, x):
    return (_l2n(x) - w.mean) @ w.projection.T


def test_pca_whitening_gives_identity_covariance_on_train_rows():
    rng = np.random.default_rng(0)
    x = _anisotropic(rng, 2000)
    assert np.ptp(np.linalg.eigvalsh(np.cov(_l2n(x).T))) > 1e-3  # the input is far from white
    w = pca_whitening(x)
    assert w.kind == "pca" and w.projection.shape == (6, 6)
    cov = np.cov(_whitened_before_l2(w, x).T)
    np.testing.assert_allclose(cov, np.eye(6), atol=1e-3)


def test_partial_shrinkage_leaves_variance_lambda_to_one_minus_s():
    rng = np.random.default_rng(1)
    x = _anisotropic(rng, 2000)
    lam = np.linalg.eigvalsh(np.cov(_l2n(x).T))[::-1]
    cov = np.cov(_whitened_before_l2(pca_whitening(x, shrinkage=0.5), x).T)
    np.testing.assert_allclose(np.diag(cov), lam**0.5, rtol=1e-3)
    np.testing.assert_allclose(cov - np.diag(np.diag(cov)), 0.0, atol=1e-4)


def test_fit_depends_only_on_train_rows_and_apply_uses_train_mean():
    rng = np.random.default_rng(2)
    train = _anisotropic(rng, 500)
    test = rng.normal(size=(300, 6)) * 100.0 - 50.0  # nothing like train
    w = pca_whitening(train)
    mean, projection = w.mean.copy(), w.projection.copy()
    np.testing.assert_allclose(mean, _l2n(train).mean(axis=0), atol=1e-6)
    assert not np.allclose(mean, _l2n(test).mean(axis=0), atol=0.1)

    out = w.apply(test)
    expected = _l2n((_l2n(test) - _l2n(train).mean(axis=0)) @ projection.T)
    np.testing.assert_allclose(out, expected, atol=1e-4)
    np.testing.assert_array_equal(w.mean, mean)  # apply leaves the fit untouched
    np.testing.assert_array_equal(w.projection, projection)
    # the same train rows give the same fit whatever else exists; adding test rows changes it
    np.testing.assert_allclose(pca_whitening(train.copy()).projection, projection, atol=1e-5)
    assert not np.allclose(pca_whitening(np.vstack([train, test])).mean, mean, atol=0.01)


def test_dead_channels_are_dropped_and_outputs_stay_finite():
    rng = np.random.default_rng(3)
    x = np.abs(rng.normal(size=(200, 8)))
    x[:, 5:] = 0.0  # dead ReLU channels
    w = pca_whitening(x)
    assert w.projection.shape == (5, 8)  # only the live directions survive the floor
    assert np.isfinite(w.projection).all() and np.abs(w.projection).max() < 1e3
    probe = np.abs(rng.normal(size=(10, 8)))  # dead channels wake up at test time
    probe[0] = 0.0  # and an all-zero descriptor
    out = w.apply(probe)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(np.linalg.norm(out[1:], axis=1), 1.0, atol=1e-5)
    lw = learned_whitening(x, same_class_pairs(np.repeat(list("abcd"), 50), rng))
    assert np.isfinite(lw.projection).all() and np.isfinite(lw.apply(probe)).all()


def test_dim_caps_components_and_n_minus_one_caps_default():
    rng = np.random.default_rng(4)
    assert pca_whitening(_anisotropic(rng, 300), dim=3).projection.shape == (3, 6)
    assert pca_whitening(rng.normal(size=(4, 6))).projection.shape[0] == 3


def test_shrinkage_zero_is_a_rotation_of_the_centred_rows():
    rng = np.random.default_rng(5)
    x = _anisotropic(rng, 400)
    centred = _l2n(_l2n(x) - _l2n(x).mean(axis=0))
    w0 = pca_whitening(x, shrinkage=0.0)
    np.testing.assert_allclose(w0.projection @ w0.projection.T, np.eye(6), atol=1e-5)
    out = w0.apply(x)
    np.testing.assert_allclose(out @ out.T, centred @ centred.T, atol=1e-4)  # cosines preserved
    full = pca_whitening(x).apply(x)
    assert not np.allclose(full @ full.T, centred @ centred.T, atol=1e-2)  # whitening changes them


def _nuisance_toy(rng, codes, per_class=5):
    """Near-unit vectors: a large nuisance angle in (e0, e1), a small class code in e2..e7."""
    theta = rng.uniform(-1.0, 1.0, size=len(codes) * per_class)
    r = 0.1
    x = np.zeros((len(theta), 8))
    x[:, 0] = np.sqrt(1 - r**2) * np.cos(theta)
    x[:, 1] = np.sqrt(1 - r**2) * np.sin(theta)
    x[:, 2:] = r * np.repeat(codes, per_class, axis=0)
    x += rng.normal(scale=0.005, size=x.shape)
    return x, np.repeat([f"c{i}" for i in range(len(codes))], per_class)


def _nn_accuracy(x, labels):
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    return float((labels[sims.argmax(axis=1)] == labels).mean())


def test_learned_whitening_removes_the_nuisance_axis():
    rng = np.random.default_rng(6)
    codes = _l2n(rng.normal(size=(20, 6)))
    train, train_labels = _nuisance_toy(rng, codes)
    test, test_labels = _nuisance_toy(rng, codes)  # same classes, fresh nuisance angles
    w = learned_whitening(train, same_class_pairs(train_labels, rng, per_row=4))
    assert w.kind == "learned"
    plain = _nn_accuracy(_l2n(test), test_labels)
    learned = _nn_accuracy(w.apply(test), test_labels)
    assert plain < 0.5  # the nuisance angle dominates the raw cosine
    assert learned > 0.95
    assert _nn_accuracy(pca_whitening(train).apply(test), test_labels) < learned
    # reduced to 6 of 8 dims, Lw must keep the class code and drop the whitened nuisance
    reduced = learned_whitening(train, same_class_pairs(train_labels, rng), dim=6)
    assert reduced.projection.shape == (6, 8)
    assert _nn_accuracy(reduced.apply(test), test_labels) > 0.95


def test_learned_whitening_whitens_pair_differences_and_decorrelates_rows():
    rng = np.random.default_rng(12)
    x = _anisotropic(rng, 300)
    labels = np.repeat(list("abcdefghij"), 30)
    pairs = same_class_pairs(labels, rng, per_row=3, anchors=np.arange(0, 300, 2))  # mean over anchors only
    eps = 1e-6
    w = learned_whitening(x, pairs, eps=eps)
    xn = _l2n(x)
    diff = xn[pairs[:, 0]] - xn[pairs[:, 1]]
    scatter = diff.T @ diff / len(diff)
    scatter += eps * np.trace(scatter) / 6 * np.eye(6)
    p = w.projection.astype(np.float64)
    np.testing.assert_allclose(p @ scatter @ p.T, np.eye(6), atol=1e-3)
    np.testing.assert_allclose(w.mean, xn[pairs[:, 0]].mean(axis=0), atol=1e-6)
    z = (xn - w.mean) @ p.T
    moment = z.T @ z / len(z)
    np.testing.assert_allclose(moment - np.diag(np.diag(moment)), 0.0, atol=1e-3 * moment.max())
    assert (np.diff(np.diag(moment)) <= 1e-6 * moment.max()).all()  # strongest first


def test_learned_whitening_rejects_bad_pairs():
    x = np.random.default_rng(7).normal(size=(10, 4))
    with pytest.raises(DataError, match="no matching pairs"):
        learned_whitening(x, np.zeros((0, 2), dtype=int))
    with pytest.raises(DataError, match="index 10"):
        learned_whitening(x, np.array([[0, 10]]))
    with pytest.raises(DataError, match="index -1"):
        learned_whitening(x, np.array([[-1, 2]]))


def test_pca_whitening_rejects_too_few_rows_and_non_finite_input():
    with pytest.raises(DataError, match="at least 2 rows"):
        pca_whitening(np.ones((1, 4)))
    x = np.random.default_rng(8).normal(size=(10, 4))
    x[3, 2] = np.nan
    with pytest.raises(DataError, match="non-finite"):
        pca_whitening(x)
    with pytest.raises(ValueError, match="shrinkage"):
        pca_whitening(np.random.default_rng(8).normal(size=(10, 4)), shrinkage=1.5)


def test_same_class_pairs_stay_in_class_and_skip_self_and_unlabelled():
    labels = np.array(["a", "a", "a", "b", "b", "", "c", "", "a", "b"])
    pairs = same_class_pairs(labels, np.random.default_rng(9), per_row=2)
    assert pairs.dtype == np.int64 and pairs.shape[1] == 2
    assert (pairs[:, 0] != pairs[:, 1]).all()
    assert (labels[pairs[:, 0]] == labels[pairs[:, 1]]).all()
    assert (labels[pairs.ravel()] != "").all()
    counts = {int(a): int((pairs[:, 0] == a).sum()) for a in np.unique(pairs[:, 0])}
    # a: 4 rows -> 2 partners each; b: 3 rows -> 2; c: alone -> none
    assert counts == {0: 2, 1: 2, 2: 2, 3: 2, 4: 2, 8: 2, 9: 2}
    assert len({tuple(p) for p in pairs}) == len(pairs)  # partners distinct per anchor
    again = same_class_pairs(labels, np.random.default_rng(9), per_row=2)
    np.testing.assert_array_equal(pairs, again)  # seeded
    many = same_class_pairs(labels, np.random.default_rng(9), per_row=10)
    assert (many[:, 0] == 0).sum() == 3  # capped at the class size minus one


def test_same_class_pairs_anchors_restrict_the_first_column():
    labels = np.array(["a", "a", "b", "b", "", "a"])
    pairs = same_class_pairs(labels, np.random.default_rng(10), anchors=np.array([0, 2, 4]))
    assert pairs[:, 0].tolist() == [0, 2]  # the unlabelled anchor is skipped
    assert labels[pairs[0, 1]] == "a" and pairs[1, 1] == 3


def test_to_bytes_round_trip():
    rng = np.random.default_rng(11)
    x = _anisotropic(rng, 100)
    pairs = same_class_pairs(np.repeat(list("ab"), 50), rng)
    for w in (pca_whitening(x, dim=4), learned_whitening(x, pairs)):
        back = Whitening.from_bytes(w.to_bytes())
        assert back.kind == w.kind
        np.testing.assert_array_equal(back.mean, w.mean)
        np.testing.assert_array_equal(back.projection, w.projection)
        np.testing.assert_array_equal(back.apply(x), w.apply(x))
    with pytest.raises(DataError, match="not a valid whitening"):
        Whitening.from_bytes(b"not an npz")

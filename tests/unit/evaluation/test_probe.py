"""The linear probe: separable classes are found, random labels stay at chance, seeds and shares."""

import numpy as np
import pytest

from scenesearch.errors import DataError
from scenesearch.evaluation import probe as lp


def _blobs(n_per_class=40, seed=0, spread=0.3):
    rng = np.random.default_rng(seed)
    centres = np.array([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 3.0]])
    y = np.repeat(np.arange(3), n_per_class)
    return centres[y] + rng.normal(0, spread, (len(y), 3)), y


def test_separable_classes_are_found_and_random_labels_stay_near_chance():
    (xtr, ytr), (xte, yte) = _blobs(seed=0), _blobs(seed=1)
    assert lp.probe_accuracy(xtr, ytr, xte, yte) == 1.0
    rng = np.random.default_rng(2)
    noise_tr, noise_te = rng.normal(size=(600, 8)), rng.normal(size=(600, 8))
    acc = lp.probe_accuracy(noise_tr, rng.integers(0, 3, 600), noise_te, rng.integers(0, 3, 600))
    assert abs(acc - 1 / 3) < 0.08


def test_subsample_is_seeded_sorted_and_of_the_share():
    a, b, c = lp.subsample(100, 0.8, 0), lp.subsample(100, 0.8, 0), lp.subsample(100, 0.8, 1)
    assert len(a) == 80 and len(set(a)) == 80 and np.all(np.diff(a) > 0)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(lp.subsample(7, 1.0, 3), np.arange(7))


def test_probe_mean_and_sd_are_those_of_its_seeds():
    (xtr, ytr), (xte, yte) = _blobs(seed=0, spread=1.6), _blobs(seed=1, spread=1.6)
    seen = []

    def features(seed):
        seen.append(seed)
        return xtr, xte

    row = lp.probe("blobs", features, ytr, yte, [0, 1, 2, 3], 0.5)
    assert seen == [0, 1, 2, 3] and len(row.accuracies) == 4
    assert row.mean == pytest.approx(np.mean(row.accuracies)) and row.sd == pytest.approx(np.std(row.accuracies, ddof=1))
    assert row.sd > 0  # each seed fits on its own half of the train rows
    text = lp.format_rows([row], "### probe")
    assert f"| blobs | {100 * row.mean:.1f}% ± {100 * row.sd:.1f} | 4 |" in text


def test_one_class_or_nan_features_are_one_sentence():
    x, y = _blobs()
    with pytest.raises(DataError, match="needs two classes"):
        lp.probe_accuracy(x, np.zeros(len(y), int), x, y)
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        lp.probe_accuracy(bad, y, x, y)

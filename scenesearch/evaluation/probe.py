"""Linear probe: how linearly separable the classes are in a frozen feature space.

Standardised features -> scikit-learn logistic regression fitted on the train split's labels ->
accuracy on the test split. Each seed fits on its own seeded share of the train rows, so the
spread over seeds is that of the training sample (and of the features, where a row draws them
per seed: a random encoder re-initialised).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from scenesearch.errors import DataError


@dataclass(frozen=True)
class ProbeRow:
    name: str
    accuracies: tuple[float, ...]

    @property
    def mean(self) -> float:
        return float(np.mean(self.accuracies))

    @property
    def sd(self) -> float:
        return float(np.std(self.accuracies, ddof=1)) if len(self.accuracies) > 1 else 0.0


def subsample(n: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted positions of a seeded `fraction` of n rows (all of them at fraction 1)."""
    if fraction >= 1.0:
        return np.arange(n)
    k = max(1, int(round(n * fraction)))
    return np.sort(np.random.default_rng(seed).choice(n, k, replace=False))


def probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, seed: int = 0, max_iter: int = 2000) -> float:
    """Test accuracy of a logistic regression on standardised train features.

    Raises:
        DataError: fewer than two classes, no test row, or non-finite features.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(train_y)) < 2 or len(test_y) == 0:
        raise DataError(f"the linear probe needs two classes in the train split and a test row; got {len(np.unique(train_y))} classes, {len(test_y)} test rows")
    if not (np.isfinite(train_x).all() and np.isfinite(test_x).all()):
        raise DataError("the linear probe's features hold NaN or infinite values")
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, random_state=seed))
    clf.fit(train_x, train_y)
    return float((clf.predict(test_x) == test_y).mean())


def probe(name: str, features: Callable[[int], tuple[np.ndarray, np.ndarray]], train_y: np.ndarray, test_y: np.ndarray, seeds: list[int],
          fraction: float) -> ProbeRow:
    """Mean and SD of `probe_accuracy` over seeds; `features(seed)` gives (train, test) rows."""
    accs = []
    for s in seeds:
        tr, te = features(s)
        keep = subsample(len(tr), fraction, s)
        accs.append(probe_accuracy(tr[keep], train_y[keep], te, test_y, s))
    return ProbeRow(name, tuple(accs))


def format_rows(rows: list[ProbeRow], title: str) -> str:
    """A Markdown table: feature, test accuracy mean ± SD, seeds."""
    lines = [title, "", "| features | test accuracy (mean ± SD) | seeds |", "|---|---|---|"]
    lines += [f"| {r.name} | {100 * r.mean:.1f}% ± {100 * r.sd:.1f} | {len(r.accuracies)} |" for r in rows]
    return "\n".join(lines)

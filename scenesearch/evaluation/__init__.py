"""Retrieval metrics and report figures."""

from scenesearch.evaluation.metrics import (
    per_class_metrics,
    pr_curve,
    random_distances,
    retrieval_metrics,
)
from scenesearch.evaluation.plots import plot_gallery, plot_pr_curves

__all__ = [
    "per_class_metrics",
    "plot_gallery",
    "plot_pr_curves",
    "pr_curve",
    "random_distances",
    "retrieval_metrics",
]

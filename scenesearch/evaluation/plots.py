"""Figures for evaluation reports: precision-recall curves and top-k galleries.

Uses the object API (``matplotlib.figure.Figure``) rather than pyplot, so importing this
module selects no backend and figures never enter pyplot's global registry.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

__all__ = ["plot_gallery", "plot_pr_curves"]

_CORRECT = "tab:green"
_WRONG = "tab:red"
_QUERY = "black"


def _save_atomic(fig: Figure, path: str | os.PathLike[str]) -> None:
    """Write ``fig`` as PNG through the one atomic writer (local or s3://): whole or not at all."""
    from scenesearch import storage

    with storage.atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")


def plot_pr_curves(
    curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | os.PathLike[str]
) -> None:
    """Draw one precision-recall line per method and save the figure as PNG.

    Args:
        curves: method name -> (recall, precision), e.g. the output of ``pr_curve``.
        path: destination PNG; written atomically (temporary file, then rename).

    Raises:
        ValueError: curves is empty, or a recall and precision array differ in length.
    """
    if not curves:
        raise ValueError("curves is empty; pass at least one method's (recall, precision).")
    fig = Figure(figsize=(6.0, 5.0), dpi=100)
    ax = fig.add_subplot()
    for name, (recall, precision) in curves.items():
        recall = np.asarray(recall, dtype=np.float64)
        precision = np.asarray(precision, dtype=np.float64)
        if recall.shape != precision.shape:
            raise ValueError(
                f"curve {name!r} has {recall.size} recall and {precision.size} precision values."
            )
        ax.plot(recall, precision, marker="o", markersize=3, label=name)
    ax.set_xlabel("Recall")
    ax.set_ylabel("Precision")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.05)
    ax.set_title("Precision-recall (interpolated)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right")
    fig.tight_layout()
    _save_atomic(fig, path)


def _show(ax: Axes, image: np.ndarray, title: str, color: str) -> None:
    ax.imshow(image, cmap="gray" if np.ndim(image) == 2 else None)
    # Ticks off but spines kept: axis("off") would hide the coloured border too.
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(color)
        spine.set_linewidth(4)
    ax.set_title(title, color=color, fontsize=8)


def plot_gallery(
    query_images: Sequence[np.ndarray],
    ranked_images: Sequence[Sequence[np.ndarray]],
    query_labels: Sequence[Hashable],
    ranked_labels: Sequence[Sequence[Hashable]],
    path: str | os.PathLike[str],
    max_cols: int = 6,
    title: str | None = None,
    query_notes: Sequence[str] | None = None,
) -> None:
    """Draw a top-k gallery: per row a query image followed by its top-ranked renders.

    Ranked images whose label differs from the query's get a red border and a red title
    ending in "wrong"; the others get green ones.

    Args:
        query_images: Q images, each (H, W, 3) uint8.
        ranked_images: per query, its ranked render images (best first), each (H, W, 3) uint8.
        query_labels: Q labels.
        ranked_labels: per query, the labels of its ranked images, aligned with ranked_images.
        path: destination PNG; written atomically (temporary file, then rename).
        max_cols: most ranked images shown per row; the query column comes in addition.
        title: a heading over the grid (which method ranked these).
        query_notes: per query, a note shown after its label (e.g. its domain).

    Raises:
        ValueError: no queries, sequences of different lengths, or max_cols < 1.
    """
    n_rows = len(query_images)
    if n_rows == 0:
        raise ValueError("query_images is empty; a gallery needs at least one query.")
    if not len(ranked_images) == len(query_labels) == len(ranked_labels) == n_rows:
        raise ValueError(
            f"query_images, ranked_images, query_labels and ranked_labels must have equal "
            f"lengths, got {n_rows}, {len(ranked_images)}, {len(query_labels)} and "
            f"{len(ranked_labels)}."
        )
    if max_cols < 1:
        raise ValueError(f"max_cols must be at least 1, got {max_cols}.")
    for row, (images, labels) in enumerate(zip(ranked_images, ranked_labels)):
        if len(images) != len(labels):
            raise ValueError(
                f"query {row} has {len(images)} ranked images but {len(labels)} ranked labels."
            )
    n_ranked = max(1, min(max_cols, max(len(images) for images in ranked_images)))
    n_cols = 1 + n_ranked
    # Constrained layout reserves room for each title, so rows never overlap.
    fig = Figure(figsize=(1.8 * n_cols, 2.1 * n_rows), dpi=100, layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    if title:
        fig.suptitle(title, fontsize=10)
    for row in range(n_rows):
        note = f" ({query_notes[row]})" if query_notes and query_notes[row] else ""
        _show(axes[row, 0], query_images[row], f"query: {query_labels[row]}{note}", _QUERY)
        shown = list(zip(ranked_images[row], ranked_labels[row]))[:n_ranked]
        for col, (image, label) in enumerate(shown, start=1):
            wrong = label != query_labels[row]
            title = f"#{col} {label}" + (" wrong" if wrong else "")
            _show(axes[row, col], image, title, _WRONG if wrong else _CORRECT)
        for col in range(len(shown) + 1, n_cols):
            axes[row, col].set_axis_off()
    _save_atomic(fig, path)

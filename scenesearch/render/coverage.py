"""How much of each rendered view the scene covers, and which views are blank.

Pure NumPy over a (V, H, W, 3) uint8 stack of views. A blank view is a problem, not an image:
the render step rejects a scene with any blank view (most often a flat scene modelled Z up,
seen edge-on from the sides; see ``render.up_axis``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from scenesearch.errors import ItemError

# A pixel is drawn when some channel differs from the background by more than this many levels:
# the slack covers the GL's own rounding of the float clear colour to 8 bits (off by one at most).
LEVEL_TOLERANCE = 2


def background_levels(background: Sequence[float]) -> np.ndarray:
    """The background colour as the framebuffer stores it: (3,) uint8 from floats in [0, 1]."""
    return np.round(np.clip(np.asarray(background, dtype=np.float64), 0.0, 1.0) * 255).astype(np.uint8)


def drawn_share(views: np.ndarray, background: Sequence[float], level_tolerance: int = LEVEL_TOLERANCE) -> np.ndarray:
    """Share of each view's pixels where the scene was drawn.

    Args:
        views: (V, H, W, 3) uint8.
        background: the clear colour, floats in [0, 1] (``render.background``).
        level_tolerance: a pixel counts as drawn when some channel is more than this many levels away from the background.

    Returns:
        (V,) float64 in [0, 1].
    """
    diff = np.abs(views.astype(np.int16) - background_levels(background).astype(np.int16)).max(axis=-1)  # (V, H, W)
    return (diff > level_tolerance).mean(axis=(1, 2))


def blank_views(views: np.ndarray, background: Sequence[float], level_tolerance: int = LEVEL_TOLERANCE) -> list[int]:
    """Indices of the views that show nothing of the scene.

    A view is blank when fewer pixels than one image row (W, i.e. 64 of 4096 = 1.6% at 64x64)
    differ from the background. The tolerance is for what a scene seen edge-on still leaves
    after the box-filter downsampling: anti-aliased specks, a partial line (a floor plan with
    low objects on it, seen from its side, draws under 1%); such a view shows nothing a
    retriever can use. A real view is far above it: every view is framed on the scene's
    bounding sphere, and the embedded benchmark's views cover at least 13% of their pixels.

    Args:
        views: (V, H, W, 3) uint8.
        background: the clear colour, floats in [0, 1].
        level_tolerance: see `drawn_share`.

    Returns:
        The 0-based view numbers, ascending (the ``view`` column of views.parquet); empty when every view shows the scene.

    Raises:
        ValueError: `views` is not a (V, H, W, 3) stack.
    """
    if views.ndim != 4 or views.shape[-1] != 3:
        raise ValueError(f"views must be (V, H, W, 3), got shape {views.shape}")
    min_share = 1.0 / views.shape[1]  # one row of H x W pixels
    return [int(i) for i in np.flatnonzero(drawn_share(views, background, level_tolerance) < min_share)]


def check_not_blank(views: np.ndarray, name: str, background: Sequence[float], up_axis: str) -> None:
    """Reject a scene that is blank (nothing drawn) in any view.

    Args:
        views: (V, H, W, 3) uint8, as rendered.
        name: how the reason names the scene (its item_id, e.g. scenes/x/y.obj).
        background: the clear colour the views were drawn on.
        up_axis: the axis the file was taken to have up ("y" or "z"), for the reason.

    Raises:
        ItemError: "scenes/x/y.obj: views 4, 10 of 13 are blank (nothing drawn) with its Y axis up; check render.up_axis".
    """
    blank = blank_views(views, background)
    if blank:
        which = f"views {', '.join(map(str, blank))}" if len(blank) > 1 else f"view {blank[0]}"
        verb = "are" if len(blank) > 1 else "is"
        raise ItemError(
            f"{name}: {which} of {len(views)} {verb} blank (nothing drawn) with its {up_axis.upper()} axis up; check render.up_axis"
        )

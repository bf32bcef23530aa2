"""Test-time query crops: embed a query whole and as crops at several scales, keep a scene's best distance.

A query photo often shows the scene small and off-centre on a background. Each scale s in (0, 1)
of ``retrieve.crop_scales`` adds five crops of side s * H (the four corners and the centre), each
resized back to the input size; the whole image is always crop 0, so C = 1 + 5 * len(scales)
embeddings per query. A scene's distance to the query is the min (or the mean) of its C
distances (``retrieve.crop_reduce``). With no scales nothing changes: one embedding per query.

Only methods that embed a query image take crops: those whose registry entry ``serves`` (a
method that cannot answer a query image, like ``random``, is scored on the whole image only).
The four corners and the centre cover every pixel for s >= 0.5; a smaller scale leaves bands
between the corners uncovered (by design: a small crop is meant to zoom, not to tile).

Plain functions: tensors in, tensors out, no I/O. `embed_crops` and `score_crops` are the two
halves of `score_with_crops`, which serving uses whole; the train step stores the embeddings of
`embed_crops` and the retrieve step scores them with `score_crops`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import torch

    from scenesearch.methods import Retriever

REDUCE_CHOICES = ("min", "mean")


def n_crops(scales: Sequence[float]) -> int:
    """Crops per query, the whole image included: 1 + 5 * len(scales)."""
    return 1 + 5 * len(scales)


def crop_boxes(size: int | tuple[int, int], scales: Sequence[float]) -> list[tuple[int, int, int, int]]:
    """The crop boxes of an image, the whole image first.

    Args:
        size: the image side, or (height, width).
        scales: each s in (0, 1) adds five boxes of s * height by s * width (rounded half up, so
            that s = 0.5 covers an odd side too; at least one pixel): top-left, top-right,
            bottom-left, bottom-right, centre.

    Returns:
        1 + 5 * len(scales) boxes (top, left, height, width).
    """
    height, width = (size, size) if isinstance(size, int) else size
    boxes = [(0, 0, height, width)]
    for s in scales:
        h, w = max(1, int(s * height + 0.5)), max(1, int(s * width + 0.5))
        bottom, right = height - h, width - w
        boxes += [(0, 0, h, w), (0, right, h, w), (bottom, 0, h, w), (bottom, right, h, w), (bottom // 2, right // 2, h, w)]
    return boxes


def crop_images(x: "torch.Tensor", scales: Sequence[float], out_size: int) -> "torch.Tensor":
    """Every crop of a batch, each resized (antialiased, bilinear) to out_size.

    Args:
        x: (B, 3, H, W) images.
        scales: see `crop_boxes`.
        out_size: side of the returned crops.

    Returns:
        (C, B, 3, out_size, out_size), C = 1 + 5 * len(scales); crop 0 is the whole image (x itself
        when H = W = out_size).
    """
    import torch
    from torchvision.transforms.v2 import functional as TF

    boxes = crop_boxes((x.shape[-2], x.shape[-1]), scales)
    return torch.stack([TF.resized_crop(x, top, left, h, w, [out_size, out_size], antialias=True) for top, left, h, w in boxes])


def reduce_distances(d: "torch.Tensor", how: str) -> "torch.Tensor":
    """(C, Q, S) distances of C crops per query -> (Q, S): the min or the mean over the crops.

    Raises:
        ValueError: `how` is not min or mean.
    """
    if how == "min":
        return d.min(dim=0).values
    if how == "mean":
        return d.mean(dim=0)
    raise ValueError(f"crop_reduce must be one of {', '.join(REDUCE_CHOICES)}, got '{how}'")


def embed_crops(retriever: "Retriever", x: "torch.Tensor", scales: Sequence[float], batch_size: int = 256, whole: bool = True) -> "torch.Tensor":
    """Embed the crops of a batch of preprocessed query images.

    Args:
        retriever: a loaded method that embeds images (`Retriever.embed`).
        x: (B, 3, S, S) float in [0, 1], S = retriever.image_size.
        scales: see `crop_boxes`.
        batch_size: at most this many crops per `embed` call (at least the C crops of one image).
        whole: include crop 0 (the whole image); False gives crops 1..C-1 only.

    Returns:
        (C, B, d) float32, or (C - 1, B, d) when not `whole`.
    """
    import torch

    c = n_crops(scales)
    first = 0 if whole else 1
    step = max(1, batch_size // c)  # images per call: their C crops fill one batch
    out = []
    for start in range(0, len(x), step):
        crops = crop_images(x[start : start + step], scales, retriever.image_size)[first:]  # (C', b, 3, S, S)
        emb = torch.as_tensor(retriever.embed(crops.flatten(0, 1))).float()  # (C' * b, d)
        out.append(emb.reshape(crops.shape[0], crops.shape[1], -1))
    if not out:
        return torch.empty((c - first, 0, 0))
    return torch.cat(out, dim=1)


def score_crops(retriever: "Retriever", queries: "torch.Tensor", gallery: "torch.Tensor", how: str) -> "torch.Tensor":
    """(C, Q, d) crop embeddings against the (S, V, d) gallery -> (Q, S) distances reduced over the crops."""
    import torch

    return reduce_distances(torch.stack([torch.as_tensor(retriever.score(q, gallery)) for q in queries]), how)


def score_with_crops(
    retriever: "Retriever", x: "torch.Tensor", gallery: "torch.Tensor", scales: Sequence[float], how: str = "min", batch_size: int = 256
) -> "torch.Tensor":
    """(Q, S) distances of preprocessed query images to the gallery, over the query's crops.

    With no scales this is exactly ``retriever.score(retriever.embed(x), gallery)``: one embedding
    per query, in one `embed` call.

    Args:
        x: (Q, 3, S, S) float in [0, 1], S = retriever.image_size.
        gallery: (S, V, d) per-scene view embeddings.
        scales, how: ``retrieve.crop_scales`` and ``retrieve.crop_reduce``.
        batch_size: crops per `embed` call (see `embed_crops`).
    """
    import torch

    if not scales:
        return torch.as_tensor(retriever.score(retriever.embed(x), gallery))
    return score_crops(retriever, embed_crops(retriever, x, scales, batch_size), gallery, how)

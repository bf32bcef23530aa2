"""Distance functions shared by methods: tensors in, tensor out, no state, no I/O (and `unit_rows`,
the NumPy row normalisation every cosine computation here starts from)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where it is used, so loading a config never pays for it
    import torch


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm; all-zero rows stay zero instead of becoming NaN."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def min_view_cosine_distances(queries: torch.Tensor, scenes: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """D[q, s] = min over views v of 1 - cos(queries[q], scenes[s, v]).

    Args:
        queries: (Q, d).
        scenes: (S, V, d); every scene has the same number of views V.
        chunk: scenes per block, bounding memory at Q * chunk * V floats.

    Returns:
        (Q, S) float32 tensor on the inputs' device.
    """
    import torch

    q = torch.nn.functional.normalize(queries.float(), dim=1)
    s = torch.nn.functional.normalize(scenes.float(), dim=2)
    out = torch.empty((len(q), len(s)), dtype=torch.float32, device=q.device)
    for start in range(0, len(s), chunk):
        block = s[start : start + chunk]  # (c, V, d)
        sims = torch.einsum("qd,cvd->qcv", q, block)  # (Q, c, V)
        out[:, start : start + chunk] = 1.0 - sims.amax(dim=2)
    return out

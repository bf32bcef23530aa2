"""Re-ranking of image-to-scene distances: query expansion and manifold diffusion.

Tensors in, tensor out, like scenesearch.distances. The gallery is (S, V, d): S scenes of V
views; a scene's plain distance to a query is its min-view cosine distance. Both methods work
on the flattened S * V views and bound memory by chunks (query expansion) or by the
per-query truncation (diffusion), never by the gallery squared.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from scenesearch.distances import min_view_cosine_distances

if TYPE_CHECKING:  # torch is imported where it is used, so loading a config never pays for it
    import torch

__all__ = ["diffusion_distances", "expanded_distances", "query_expansion"]

# diffused distances of scenes reached by the truncation lie in [0, _IN_SCALE]; the others
# get 1 + cosine distance in [1, 3], so the two groups never interleave
_IN_SCALE = 0.999


def query_expansion(
    queries: torch.Tensor, gallery: torch.Tensor, n: int = 5, alpha: float = 0.0, chunk: int = 1024
) -> torch.Tensor:
    """Expand each query with its n most cosine-similar gallery views (AQE / α-QE).

    q' = L2(q + Σ_i w_i v_i) over the top-n of the flattened S * V views, with q and v_i
    L2-normalised and the query weighted 1; w_i = 1 for alpha = 0 (average query expansion)
    and w_i = max(cos(q, v_i), 0)^alpha otherwise (α-QE, Radenović et al.).

    Args:
        queries: (Q, d).
        gallery: (S, V, d).
        n: views added per query; 0 returns the normalised queries; capped at S * V.
        alpha: weight exponent, >= 0.
        chunk: queries per block, bounding memory at chunk * S * V similarities.

    Returns:
        (Q, d) float32 L2-normalised expanded queries on the inputs' device.

    Raises:
        ValueError: n < 0, alpha < 0 or chunk < 1.
    """
    import torch

    if n < 0:
        raise ValueError(f"n must be >= 0, got {n!r}.")
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha!r}.")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk!r}.")
    q = torch.nn.functional.normalize(queries.float(), dim=1)
    views = torch.nn.functional.normalize(gallery.float().reshape(-1, gallery.shape[-1]), dim=1)  # (N, d)
    n = min(n, len(views))
    if n == 0:
        return q
    out = torch.empty_like(q)
    for start in range(0, len(q), chunk):
        qc = q[start : start + chunk]  # (c, d)
        sims, idx = (qc @ views.T).topk(n, dim=1)  # (c, n)
        weights = torch.ones_like(sims) if alpha == 0 else sims.clamp_min(0.0).pow(alpha)
        expanded = qc + torch.einsum("cn,cnd->cd", weights, views[idx])
        out[start : start + chunk] = torch.nn.functional.normalize(expanded, dim=1)
    return out


def expanded_distances(
    queries: torch.Tensor, gallery: torch.Tensor, n: int = 5, alpha: float = 0.0
) -> torch.Tensor:
    """Min-view cosine distances of the expanded queries (query expansion, then re-query).

    Args:
        queries: (Q, d).
        gallery: (S, V, d).
        n: views added per query (see query_expansion); 0 gives the plain distances.
        alpha: weight exponent (see query_expansion).

    Returns:
        (Q, S) float32 distances on the inputs' device.
    """
    return min_view_cosine_distances(query_expansion(queries, gallery, n=n, alpha=alpha), gallery)


def _check_diffusion(
    k: int, truncate: int, alpha: float, gamma: float, query_k: int, max_iter: int, tol: float
) -> None:
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k!r}.")
    if truncate < 1:
        raise ValueError(f"truncate must be >= 1, got {truncate!r}.")
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must be in [0, 1), got {alpha!r}.")
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma!r}.")
    if query_k < 1:
        raise ValueError(f"query_k must be >= 1, got {query_k!r}.")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter!r}.")
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol!r}.")


def diffusion_distances(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    k: int = 10,
    truncate: int = 200,
    alpha: float = 0.99,
    gamma: float = 3.0,
    query_k: int = 10,
    max_iter: int = 20,
    tol: float = 1e-6,
    chunk: int = 64,
) -> torch.Tensor:
    """Distances after truncated diffusion on the view manifold (Iscen et al., CVPR 2017).

    Per query, on its T = min(truncate, S * V) most cosine-similar views:
      1. A_ij = max(cos(v_i, v_j), 0)^gamma, kept only when i and j are mutual k-nearest
         neighbours among the T (symmetrised with A = min(A, Aᵀ) after the per-row k-NN
         mask, the reciprocal graph of Iscen et al.); zero diagonal.
      2. S = D^-1/2 A D^-1/2 with D the degrees; isolated views get a zero row.
      3. y_i = max(cos(q, v_i), 0)^gamma on the query's query_k nearest of the T, else 0.
      4. f solves (I - alpha S) f = y by conjugate gradients (x0 = y, max_iter steps,
         relative tolerance tol); negative round-off is clipped to 0.
      5. A scene's score is the max of f over its views among the T.

    Mapping to distances (smaller is closer, all finite):
      - scenes with a view among the T: _IN_SCALE * (1 - score / max score) in [0, 0.999],
        so descending score; 0.999 for all of them when max score is 0;
      - the other scenes: 1 + plain min-view cosine distance, in [1, 3], after all the
        former and in cosine order.

    Args:
        queries: (Q, d).
        gallery: (S, V, d).
        k: neighbours per view in the graph; 0 gives no edges (f = y).
        truncate: views per query; memory is chunk * truncate^2, not (S * V)^2.
        alpha: diffusion weight in [0, 1); 0 gives f = y.
        gamma: similarity exponent, > 0.
        query_k: views that receive the query's initial mass, >= 1.
        max_iter: conjugate-gradient iterations, >= 1.
        tol: conjugate-gradient relative tolerance, > 0.
        chunk: queries whose T x T graphs are built at once.

    Returns:
        (Q, S) float32 distances on the inputs' device.

    Raises:
        ValueError: a parameter out of the range stated above.
    """
    import numpy as np
    import torch
    from scipy.sparse.linalg import cg

    _check_diffusion(k, truncate, alpha, gamma, query_k, max_iter, tol)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk!r}.")
    n_scenes, n_views = gallery.shape[0], gallery.shape[1]
    q = torch.nn.functional.normalize(queries.float(), dim=1)
    views = torch.nn.functional.normalize(gallery.float().reshape(-1, gallery.shape[-1]), dim=1)  # (N, d)
    out = min_view_cosine_distances(q, gallery) + 1.0  # (Q, S); rows overwritten where reached
    n_total = len(views)
    if n_total == 0 or len(q) == 0:
        return out
    t = min(truncate, n_total)
    kk = min(k, t - 1)
    qk = min(query_k, t)
    eye = np.eye(t)
    for start in range(0, len(q), chunk):
        qc = q[start : start + chunk]  # (c, d)
        sims, idx = (qc @ views.T).topk(t, dim=1)  # (c, T), descending
        local = views[idx]  # (c, T, d)
        aff = torch.einsum("ctd,cud->ctu", local, local).clamp_min(0.0).pow(gamma)  # (c, T, T)
        aff.diagonal(dim1=1, dim2=2).zero_()
        if kk > 0:
            mask = torch.zeros_like(aff)
            mask.scatter_(2, aff.topk(kk, dim=2).indices, 1.0)
            aff = aff * mask
            aff = torch.minimum(aff, aff.transpose(1, 2))  # mutual k-NN
        else:
            aff = torch.zeros_like(aff)
        deg = aff.sum(dim=2)  # (c, T)
        dinv = torch.where(deg > 0, deg.clamp_min(1e-30).rsqrt(), torch.zeros_like(deg))
        norm = dinv[:, :, None] * aff * dinv[:, None, :]
        y = sims.clamp_min(0.0).pow(gamma)
        y[:, qk:] = 0.0  # topk is sorted, so the first qk are the query's nearest
        norm_np = norm.double().cpu().numpy()
        y_np = y.double().cpu().numpy()
        scene_np = (idx // n_views).cpu().numpy()  # (c, T) scene of each truncated view
        block = out[start : start + chunk].cpu().numpy().copy()  # (c, S) float32
        for b in range(len(qc)):
            if alpha == 0.0 or not y_np[b].any():
                f = y_np[b]
            else:
                # scipy >= 1.14 (the lock pins 1.17) names the relative tolerance rtol
                f, _ = cg(eye - alpha * norm_np[b], y_np[b], x0=y_np[b], rtol=tol, maxiter=max_iter)
            f = np.maximum(f, 0.0)
            score = np.full(n_scenes, -1.0)
            np.maximum.at(score, scene_np[b], f)
            reached = score >= 0
            top = score[reached].max()
            mapped = _IN_SCALE * (1.0 - score[reached] / top) if top > 0 else _IN_SCALE
            block[b, reached] = mapped
        out[start : start + chunk] = torch.from_numpy(block).to(out.device)
    return out

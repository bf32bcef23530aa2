import numpy as np
import pytest
import torch

from scenesearch.distances import min_view_cosine_distances
from scenesearch.evaluation import retrieval_metrics
from scenesearch.rerank import diffusion_distances, expanded_distances, query_expansion


def _sphere(theta, phi=0.0):
    """Unit vectors in 3-d at longitude theta, latitude phi."""
    theta = np.asarray(theta, dtype=float)
    phi = np.broadcast_to(np.asarray(phi, dtype=float), theta.shape)
    return np.stack([np.cos(theta) * np.cos(phi), np.sin(theta) * np.cos(phi), np.sin(phi)], axis=-1)


def _t(x):
    return torch.tensor(np.asarray(x), dtype=torch.float32)


def _map(dist, query_labels, gallery_labels):
    return retrieval_metrics(np.asarray(dist), query_labels, gallery_labels)["mAP"]


def _random(seed, q=5, s=7, v=3, d=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(q, d, generator=g), torch.randn(s, v, d, generator=g)


# --- query expansion -----------------------------------------------------------------------


def _chain_toy():
    """Query at the start of a chain of its class's views; a distractor just behind it."""
    chain = _sphere(np.arange(0.05, 0.8, 0.1)).reshape(4, 2, 3)  # 4 scenes x 2 views
    distractor = _sphere([-0.45, -0.5], 0.1).reshape(1, 2, 3)
    gallery = _t(np.concatenate([chain, distractor]))
    return _t(_sphere([0.0])), gallery, ["chain"], ["chain"] * 4 + ["other"]


@pytest.mark.parametrize("alpha", [0.0, 3.0])
def test_query_expansion_fixes_a_chain_that_plain_cosine_gets_wrong(alpha):
    queries, gallery, q_labels, g_labels = _chain_toy()
    plain = min_view_cosine_distances(queries, gallery)
    assert _map(plain, q_labels, g_labels) < 1.0  # the distractor beats the far chain scene
    expanded = expanded_distances(queries, gallery, n=3, alpha=alpha)
    assert _map(expanded, q_labels, g_labels) == 1.0


def test_average_and_alpha_expansion_match_their_formulas():
    queries, gallery = _random(0)
    q = torch.nn.functional.normalize(queries, dim=1).numpy()
    views = torch.nn.functional.normalize(gallery.reshape(-1, 8), dim=1).numpy()
    sims = q @ views.T
    top = np.argsort(-sims, axis=1)[:, :4]
    for alpha in (0.0, 3.0):
        w = np.ones_like(sims) if alpha == 0 else np.maximum(sims, 0) ** alpha
        expected = q + np.einsum("qn,qnd->qd", np.take_along_axis(w, top, 1), views[top])
        expected /= np.linalg.norm(expected, axis=1, keepdims=True)
        got = query_expansion(queries, gallery, n=4, alpha=alpha, chunk=2)
        np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)
    # alpha = 0 is average query expansion, and any alpha > 0 weights differently here
    aqe = query_expansion(queries, gallery, n=4)
    np.testing.assert_allclose(query_expansion(queries, gallery, n=4, alpha=0.0).numpy(), aqe.numpy())
    assert not torch.allclose(query_expansion(queries, gallery, n=4, alpha=1.0), aqe, atol=1e-3)


def test_no_expansion_is_plain_cosine_and_shapes_hold():
    queries, gallery = _random(1)
    plain = min_view_cosine_distances(queries, gallery)
    torch.testing.assert_close(expanded_distances(queries, gallery, n=0), plain)
    for n in (1, 5, 1000):  # 1000 > S * V is capped
        d = expanded_distances(queries, gallery, n=n, alpha=1.0)
        assert d.shape == (5, 7) and d.dtype == torch.float32 and torch.isfinite(d).all()
    assert not torch.allclose(expanded_distances(queries, gallery, n=1), plain)


# --- diffusion -----------------------------------------------------------------------------


def _arc_toy():
    """An arc class (6 scenes x 4 views) and a tight blob class (3 scenes) off the arc."""
    rng = np.random.default_rng(0)
    arc = _sphere(np.linspace(0.0, 1.2, 24)).reshape(6, 4, 3)
    blob = _sphere(rng.normal(0.0, 0.02, 12), 0.6 + rng.normal(0.0, 0.02, 12)).reshape(3, 4, 3)
    queries = _t(_sphere([-0.05, 1.25]))  # one query near each end of the arc
    return queries, _t(np.concatenate([arc, blob])), ["arc", "arc"], ["arc"] * 6 + ["blob"] * 3


@pytest.mark.parametrize("k, query_k", [(5, 3), (10, 10)])
def test_diffusion_follows_the_arc_where_plain_cosine_jumps_to_the_blob(k, query_k):
    queries, gallery, q_labels, g_labels = _arc_toy()
    plain = min_view_cosine_distances(queries, gallery)
    assert _map(plain, q_labels, g_labels) < 1.0  # the blob is closer than the far arc
    diffused = diffusion_distances(queries, gallery, k=k, query_k=query_k)
    assert _map(diffused, q_labels, g_labels) == 1.0


def _reference_diffusion(queries, gallery, k, alpha, gamma, query_k):
    """Dense numpy Iscen et al. over all views, solved exactly, mapped as documented."""
    s, v, d = gallery.shape
    q = torch.nn.functional.normalize(queries, dim=1).double().numpy()
    views = torch.nn.functional.normalize(gallery.reshape(-1, d), dim=1).double().numpy()
    plain = min_view_cosine_distances(queries, gallery).double().numpy()
    aff = np.maximum(views @ views.T, 0) ** gamma
    np.fill_diagonal(aff, 0)
    keep = np.zeros_like(aff, dtype=bool)
    for i, row in enumerate(aff):
        keep[i, np.argsort(-row)[:k]] = True
    aff = np.where(keep & keep.T, aff, 0.0)
    deg = aff.sum(1)
    dinv = np.where(deg > 0, 1 / np.sqrt(np.where(deg > 0, deg, 1)), 0)
    norm = dinv[:, None] * aff * dinv[None, :]
    out = np.empty_like(plain)
    for b, qv in enumerate(q):
        sims = views @ qv
        y = np.zeros_like(sims)
        near = np.argsort(-sims)[:query_k]
        y[near] = np.maximum(sims[near], 0) ** gamma
        f = np.maximum(np.linalg.solve(np.eye(len(y)) - alpha * norm, y), 0)
        score = f.reshape(s, v).max(1)
        out[b] = 0.999 * (1 - score / score.max())
    return out


def test_diffusion_matches_a_dense_exact_solve():
    queries, gallery = _random(2, q=3, s=6, v=3, d=4)
    expected = _reference_diffusion(queries, gallery, k=4, alpha=0.9, gamma=3.0, query_k=3)
    got = diffusion_distances(
        queries, gallery, k=4, truncate=1000, alpha=0.9, query_k=3, max_iter=200, tol=1e-12
    )
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-4)


@pytest.mark.parametrize("setting", [{"alpha": 0.0}, {"k": 0}])
def test_diffusion_without_a_graph_ranks_like_plain_cosine(setting):
    queries, gallery = _random(3)
    queries, gallery = queries.abs(), gallery.abs()  # positive cosines, so gamma keeps the order
    plain = min_view_cosine_distances(queries, gallery)
    d = diffusion_distances(queries, gallery, truncate=21, query_k=21, **setting)
    np.testing.assert_array_equal(np.argsort(d.numpy(), 1), np.argsort(plain.numpy(), 1))
    assert (d < 1).all()


def test_diffusion_shapes_range_and_truncation_extremes():
    queries, gallery = _random(4)
    queries[0] = 0.0  # a zero descriptor must not produce NaN
    plain = min_view_cosine_distances(queries, gallery)
    for truncate in (1, 5, 10_000):  # 10_000 > S * V = 21
        d = diffusion_distances(queries, gallery, truncate=truncate)
        assert d.shape == (5, 7) and d.dtype == torch.float32 and torch.isfinite(d).all()
        reached = d < 1
        assert (d[reached] >= 0).all() and (d[reached] <= 0.999 + 1e-6).all()
        # scenes outside the truncation keep their cosine order, behind every reached scene
        torch.testing.assert_close(d[~reached], plain[~reached] + 1)
        assert (reached.sum(1) <= truncate).all()
    d1 = diffusion_distances(queries[1:], gallery, truncate=1)
    assert (d1.argmin(1) == plain[1:].argmin(1)).all()  # the nearest view's scene leads
    assert (d1.min(1).values == 0).all() and ((d1 < 1).sum(1) == 1).all()


def test_diffusion_is_chunk_invariant_and_rejects_bad_parameters():
    queries, gallery = _random(5)
    torch.testing.assert_close(
        diffusion_distances(queries, gallery, chunk=1), diffusion_distances(queries, gallery, chunk=64)
    )
    with pytest.raises(ValueError, match="alpha"):
        diffusion_distances(queries, gallery, alpha=1.0)
    with pytest.raises(ValueError, match="truncate"):
        diffusion_distances(queries, gallery, truncate=0)

"""Tests of scenesearch.evaluation: hand-checked values and a per-query Python reference."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from scenesearch.evaluation import (
    per_class_metrics,
    plot_gallery,
    plot_pr_curves,
    pr_curve,
    random_distances,
    retrieval_metrics,
)
from scenesearch.evaluation.metrics import _stable_order

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def reference_query(row: np.ndarray, label, gallery_labels, k: int) -> dict[str, float] | None:
    """Every metric of one query, written out rank by rank; None when R = 0."""
    order = np.argsort(row, kind="stable")
    rel = [1 if gallery_labels[j] == label else 0 for j in order]
    s = len(rel)
    r = sum(rel)
    if r == 0:
        return None
    cum = []
    running = 0
    for g in rel:
        running += g
        cum.append(running)
    e_cut = min(32, s)
    p = cum[e_cut - 1] / e_cut
    rec = cum[e_cut - 1] / r
    dcg = sum(g * (1.0 if i == 1 else 1.0 / math.log2(i)) for i, g in enumerate(rel, start=1))
    ideal = sum(1.0 if i == 1 else 1.0 / math.log2(i) for i in range(1, r + 1))
    ap = sum(cum[i - 1] / i for i in range(1, s + 1) if rel[i - 1]) / r
    top_k = [i for i in range(1, min(k, s) + 1) if rel[i - 1]]
    ap_k = sum(cum[i - 1] / i for i in top_k) / len(top_k) if top_k else 0.0
    return {
        "NN": float(rel[0]),
        "FT": cum[r - 1] / r,
        "ST": cum[min(2 * r, s) - 1] / r,
        "E": 2 * p * rec / (p + rec) if p + rec > 0 else 0.0,
        "DCG": dcg / ideal,
        "mAP": ap,
        f"P@{k}": cum[min(k, s) - 1] / k,
        f"mAP@{k}": ap_k,
    }


def reference_metrics(distances, query_labels, gallery_labels, k):
    rows = [
        reference_query(distances[q], query_labels[q], gallery_labels, k)
        for q in range(len(query_labels))
    ]
    kept = [m for m in rows if m is not None]
    out = {name: sum(m[name] for m in kept) / len(kept) for name in kept[0]}
    out["n_queries"] = len(kept)
    out["n_queries_without_relevant"] = len(rows) - len(kept)
    return out


def reference_pr(distances, query_labels, gallery_labels):
    """11-point interpolated precision, scanning every rank of every query."""
    curves = []
    for q, label in enumerate(query_labels):
        order = np.argsort(distances[q], kind="stable")
        rel = [gallery_labels[j] == label for j in order]
        r = sum(rel)
        if r == 0:
            continue
        points = []  # (recall numerator hits, precision) at every rank
        hits = 0
        for i, g in enumerate(rel, start=1):
            hits += g
            points.append((hits, hits / i))
        # recall >= t/10  <=>  10 * hits >= t * R, in integers to avoid rounding.
        curves.append(
            [max(p for h, p in points if 10 * h >= t * r) for t in range(11)]
        )
    return np.mean(np.array(curves), axis=0)


def random_case(seed: int, dtype=np.float64):
    rng = np.random.default_rng(seed)
    n_q, n_s = 50, 80
    # Rounded to one decimal so that most rows contain many ties.
    distances = np.round(rng.random((n_q, n_s)), 1).astype(dtype)
    distances[0, :10] = np.inf
    gallery_labels = [f"c{c}" for c in rng.integers(0, 5, n_s)]
    # Class c5 never occurs in the gallery: those queries have R = 0.
    query_labels = [f"c{c}" for c in rng.integers(0, 6, n_q)]
    return distances, query_labels, gallery_labels


# Tiny case. Gallery: 0:a 1:b 2:a 3:b 4:b, S = 5 (< 32, so E uses min(32, S) = 5).
TINY_GALLERY = ["a", "b", "a", "b", "b"]
TINY_QUERIES = ["a", "b"]
TINY_DISTANCES = np.array(
    [
        # Query a: order 0,1,3,4,2 -> G = 1,0,0,0,1, R = 2.
        [0.1, 0.2, 0.5, 0.3, 0.4],
        # Query b: 0, 1 and 4 tie at 0.3 and stay in gallery order: order 2,0,1,4,3
        # -> G = 0,0,1,1,1, R = 3.
        [0.3, 0.3, 0.1, 0.9, 0.3],
    ]
)


def test_tiny_ranking_hand_computed():
    m = retrieval_metrics(TINY_DISTANCES, TINY_QUERIES, TINY_GALLERY, k=3)
    # NN: query a 1, query b 0.
    assert m["NN"] == pytest.approx(0.5)
    # FT: a: 1 relevant in top 2 / 2 = 1/2; b: 1 in top 3 / 3 = 1/3.
    assert m["FT"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    # ST: a: 1 in top 4 / 2 = 1/2; b: 3 in top 6 (all 5) / 3 = 1.
    assert m["ST"] == pytest.approx((1 / 2 + 1) / 2)
    # E over top min(32, 5) = 5: a: P = 2/5, R = 1, E = 0.8 / 1.4 = 4/7;
    # b: P = 3/5, R = 1, E = 1.2 / 1.6 = 3/4.
    assert m["E"] == pytest.approx((4 / 7 + 3 / 4) / 2)
    # DCG: a: (1 + 1/log2 5) / (1 + 1/log2 2) ;
    # b: (1/log2 3 + 1/log2 4 + 1/log2 5) / (1 + 1/log2 2 + 1/log2 3).
    dcg_a = (1 + 1 / math.log2(5)) / 2
    dcg_b = (1 / math.log2(3) + 0.5 + 1 / math.log2(5)) / (2 + 1 / math.log2(3))
    assert m["DCG"] == pytest.approx((dcg_a + dcg_b) / 2)
    # AP: a: (1/1 + 2/5) / 2 = 0.7; b: (1/3 + 2/4 + 3/5) / 3 = 43/90.
    assert m["mAP"] == pytest.approx((0.7 + 43 / 90) / 2)
    # P@3: a: 1/3; b: 1/3.
    assert m["P@3"] == pytest.approx(1 / 3)
    # mAP@3: a: P(1) / 1 = 1; b: P(3) / 1 = 1/3.
    assert m["mAP@3"] == pytest.approx((1 + 1 / 3) / 2)
    assert m["n_queries"] == 2
    assert m["n_queries_without_relevant"] == 0


def test_tiny_ranking_pr_curve_hand_computed():
    recall, precision = pr_curve(TINY_DISTANCES, TINY_QUERIES, TINY_GALLERY)
    np.testing.assert_allclose(recall, np.linspace(0, 1, 11))
    # a: precision 1 at recall 1/2, 2/5 at recall 1 -> 1 up to 0.5, then 0.4.
    a = [1.0] * 6 + [0.4] * 5
    # b: 1/3 at recall 1/3, 1/2 at 2/3, 3/5 at 1 -> suffix maximum 0.6 everywhere.
    b = [0.6] * 11
    np.testing.assert_allclose(precision, (np.array(a) + np.array(b)) / 2)


def test_default_k_keys_and_p_at_k_divides_by_k_when_gallery_is_smaller():
    m = retrieval_metrics(TINY_DISTANCES, TINY_QUERIES, TINY_GALLERY)
    assert set(m) == {
        "NN", "FT", "ST", "E", "DCG", "mAP", "P@200", "mAP@200",
        "n_queries", "n_queries_without_relevant",
    }
    # a: 2 / 200; b: 3 / 200, although S = 5.
    assert m["P@200"] == pytest.approx((2 / 200 + 3 / 200) / 2)
    # With K >= S, mAP@K is the full AP.
    assert m["mAP@200"] == pytest.approx(m["mAP"])


def test_perfect_ranking_gives_one_and_reversed_gives_nn_zero():
    # Two classes of 32 items so that E (top 32) and P@32 can both reach 1.
    gallery = ["x"] * 32 + ["y"] * 32
    queries = ["x", "y"]
    perfect = np.array([[0.0] * 32 + [1.0] * 32, [1.0] * 32 + [0.0] * 32])
    m = retrieval_metrics(perfect, queries, gallery, k=32)
    for name in ("NN", "FT", "ST", "E", "DCG", "mAP", "P@32", "mAP@32"):
        assert m[name] == pytest.approx(1.0), name
    reversed_ = retrieval_metrics(-perfect, queries, gallery, k=32)
    assert reversed_["NN"] == 0.0
    assert reversed_["FT"] == 0.0


def test_stable_ties_rank_in_gallery_order():
    gallery = ["b", "a", "b"]
    # All equal: order 0,1,2 -> the relevant item sits at rank 2.
    m = retrieval_metrics(np.zeros((1, 3)), ["a"], gallery, k=1)
    assert m["NN"] == 0.0
    assert m["mAP"] == pytest.approx(1 / 2)
    # Tie only between items 1 and 2 after item 0: still gallery order.
    m = retrieval_metrics(np.array([[0.5, 0.7, 0.7]]), ["b"], gallery, k=1)
    assert m["mAP"] == pytest.approx((1 / 1 + 2 / 3) / 2)


# float64 of rounded decimals takes the tie-fixing path; float64 holding float32 values
# and the narrower dtypes take the packed-key path.
@pytest.mark.parametrize(
    "dtypes", [[np.float16], [np.float32], [np.float64], [np.float32, np.float64]]
)
def test_stable_order_matches_stable_argsort(dtypes):
    rng = np.random.default_rng(3)
    values = np.round(rng.normal(size=(20, 40)), 1)
    values[:, :5] = [np.inf, -np.inf, 0.0, -0.0, np.inf]
    values[5] = 1.0
    chunk = values
    for dtype in dtypes:
        chunk = chunk.astype(dtype)
    expected = np.argsort(chunk, axis=1, kind="stable")
    np.testing.assert_array_equal(_stable_order(chunk), expected)


def test_query_without_relevant_items_is_skipped_and_counted():
    distances = np.vstack([TINY_DISTANCES, [[0.1, 0.2, 0.3, 0.4, 0.5]]])
    m = retrieval_metrics(distances, TINY_QUERIES + ["z"], TINY_GALLERY, k=3)
    tiny = retrieval_metrics(TINY_DISTANCES, TINY_QUERIES, TINY_GALLERY, k=3)
    assert m["n_queries"] == 2
    assert m["n_queries_without_relevant"] == 1
    for name in ("NN", "FT", "ST", "E", "DCG", "mAP", "P@3", "mAP@3"):
        assert m[name] == pytest.approx(tiny[name])


def test_no_query_with_relevant_items_raises():
    with pytest.raises(ValueError, match="relevant"):
        retrieval_metrics(np.zeros((2, 3)), ["z", "w"], ["a", "b", "c"])


def test_nan_raises_with_count():
    distances = TINY_DISTANCES.copy()
    distances[0, 1] = np.nan
    distances[1, 4] = np.nan
    with pytest.raises(ValueError, match=r"2 NaN"):
        retrieval_metrics(distances, TINY_QUERIES, TINY_GALLERY)


def test_inf_is_allowed_and_ranks_last():
    distances = np.array([[np.inf, 0.2, 0.1]])
    m = retrieval_metrics(distances, ["a"], ["a", "b", "b"], k=1)
    assert m["mAP"] == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    ("distances", "query_labels", "gallery_labels", "match"),
    [
        (np.zeros(5), ["a"], ["a"] * 5, "2-D"),
        (np.zeros((1, 2, 3)), ["a"], ["a"] * 2, "2-D"),
        (np.zeros((2, 5)), ["a"], ["a"] * 5, "query_labels"),
        (np.zeros((2, 5)), ["a", "b"], ["a"] * 4, "gallery_labels"),
    ],
)
def test_wrong_shapes_raise(distances, query_labels, gallery_labels, match):
    with pytest.raises(ValueError, match=match):
        retrieval_metrics(distances, query_labels, gallery_labels)


def test_bad_k_raises():
    with pytest.raises(ValueError, match="k must"):
        retrieval_metrics(TINY_DISTANCES, TINY_QUERIES, TINY_GALLERY, k=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", [10, 200])
def test_vectorised_equals_reference(dtype, k):
    distances, query_labels, gallery_labels = random_case(seed=1, dtype=dtype)
    expected = reference_metrics(distances, query_labels, gallery_labels, k)
    # A chunk size that does not divide Q exercises the chunk boundaries.
    got = retrieval_metrics(distances, query_labels, gallery_labels, k=k, chunk_size=7)
    assert expected["n_queries_without_relevant"] > 0
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, rel=1e-12, abs=1e-12), name


def test_per_class_equals_reference():
    distances, query_labels, gallery_labels = random_case(seed=2)
    k = 10
    got = per_class_metrics(distances, query_labels, gallery_labels, k=k, chunk_size=16)
    assert [row["label"] for row in got] == sorted(set(query_labels))
    for row in got:
        idx = [q for q, label in enumerate(query_labels) if label == row["label"]]
        per_query = [
            reference_query(distances[q], row["label"], gallery_labels, k) for q in idx
        ]
        kept = [m for m in per_query if m is not None]
        assert row["n_queries"] == len(kept)
        assert row["n_queries_without_relevant"] == len(idx) - len(kept)
        for name in ("NN", "FT", "ST", "E", "DCG", "mAP", f"P@{k}", f"mAP@{k}"):
            if kept:
                want = sum(m[name] for m in kept) / len(kept)
                assert row[name] == pytest.approx(want, rel=1e-12, abs=1e-12), name
            else:
                assert math.isnan(row[name])


def test_per_class_labels_of_mixed_types_keep_first_appearance_order():
    rows = per_class_metrics(np.zeros((2, 2)), [2, "a"], ["a", 2], k=1)
    assert [row["label"] for row in rows] == [2, "a"]


def test_pr_curve_equals_reference():
    distances, query_labels, gallery_labels = random_case(seed=4)
    recall, precision = pr_curve(distances, query_labels, gallery_labels, chunk_size=9)
    np.testing.assert_allclose(recall, np.arange(11) / 10)
    np.testing.assert_allclose(
        precision, reference_pr(distances, query_labels, gallery_labels), rtol=1e-12
    )
    assert np.all(np.diff(precision) <= 1e-12)


def test_random_distances_deterministic():
    a = random_distances(4, 6, seed=7)
    assert a.shape == (4, 6)
    np.testing.assert_array_equal(a, random_distances(4, 6, seed=7))
    assert not np.array_equal(a, random_distances(4, 6, seed=8))


def test_plot_pr_curves_writes_png(tmp_path: Path):
    recall, precision = pr_curve(TINY_DISTANCES, TINY_QUERIES, TINY_GALLERY)
    out = tmp_path / "pr.png"
    plot_pr_curves({"model": (recall, precision), "random": (recall, recall[::-1])}, out)
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert [p.name for p in tmp_path.iterdir()] == ["pr.png"]


def test_plot_gallery_writes_png(tmp_path: Path):
    rng = np.random.default_rng(0)

    def image() -> np.ndarray:
        return rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)

    out = tmp_path / "gallery.png"
    plot_gallery(
        query_images=[image(), image()],
        ranked_images=[[image() for _ in range(8)], [image() for _ in range(3)]],
        query_labels=["a", "b"],
        ranked_labels=[["a", "b", "a", "a", "b", "a", "a", "a"], ["b", "b", "a"]],
        path=out,
        max_cols=6,
    )
    assert out.stat().st_size > 0
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert [p.name for p in tmp_path.iterdir()] == ["gallery.png"]


def test_the_gallery_shows_each_query_domain_in_turn(tmp_path, monkeypatch):
    from scenesearch.config import EvaluateConfig
    from scenesearch.evaluation import step

    labels = ["a", "a", "b", "b", "c", "c"]
    queries = {"item_id": [f"q{i}" for i in range(6)], "label": labels, "domain": ["photo", "photo_easy"] * 3, "split": ["test"] * 6}
    scenes = {"item_id": ["s0", "s1"], "label": ["a", "b"]}
    thumbs = {**{(f"q{i}", -1): np.zeros((4, 4, 3), np.uint8) for i in range(6)}, **{(s, 0): np.zeros((4, 4, 3), np.uint8) for s in scenes["item_id"]}}
    shown = {}
    monkeypatch.setattr(step, "plot_gallery", lambda q, r, ql, rl, path, title, query_notes: shown.update(labels=ql, notes=query_notes))
    step._gallery(np.zeros((6, 2)), queries, scenes, np.ones(6, bool), thumbs, EvaluateConfig(gallery_queries=3), tmp_path / "g.png", "t")
    assert shown == {"labels": ["a", "b", "c"], "notes": ["photo", "photo_easy", "photo"]}


def test_the_gallery_marks_unseen_class_queries(tmp_path, monkeypatch):
    from scenesearch.config import EvaluateConfig
    from scenesearch.evaluation import step

    queries = {"item_id": ["q0", "q1"], "label": ["a", "b"], "domain": ["sketch", "sketch"], "split": ["test"] * 2, "class_split": ["seen", "unseen"]}
    scenes = {"item_id": ["s0", "s1"], "label": ["a", "b"]}
    thumbs = {**{(q, -1): np.zeros((4, 4, 3), np.uint8) for q in queries["item_id"]}, **{(s, 0): np.zeros((4, 4, 3), np.uint8) for s in scenes["item_id"]}}
    shown = {}
    monkeypatch.setattr(step, "plot_gallery", lambda q, r, ql, rl, path, title, query_notes: shown.update(notes=query_notes))
    step._gallery(np.zeros((2, 2)), queries, scenes, np.ones(2, bool), thumbs, EvaluateConfig(gallery_queries=2), tmp_path / "g.png", "t")
    assert shown["notes"] == ["", "unseen class"]  # one domain: not named; the unseen class is

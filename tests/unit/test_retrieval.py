import numpy as np
import pytest
import torch

from scenesearch.errors import DataError
from scenesearch.distances import min_view_cosine_distances
from scenesearch.gallery import arrange


def test_matches_a_direct_loop_and_is_chunk_invariant():
    g = torch.Generator().manual_seed(0)
    q, s = torch.randn(7, 5, generator=g), torch.randn(11, 4, 5, generator=g)
    expected = torch.tensor([[min(1 - torch.nn.functional.cosine_similarity(q[i], s[j, v], dim=0).item() for v in range(4)) for j in range(11)] for i in range(7)])
    for chunk in (1, 3, 256):
        assert torch.allclose(min_view_cosine_distances(q, s, chunk=chunk), expected, atol=1e-5)


def test_arrange_groups_views_per_scene():
    index = {
        "item_id": ["s1", "s1", "s2", "s2", "q1", "q1"],
        "label": ["a", "a", "b", "b", "a", "a"],
        "split": ["train"] * 4 + ["test"] * 2,
        "domain": ["scene"] * 4 + ["photo"] * 2,
        "flip": [False, True, False, True, False, True],
    }
    feats = np.arange(12, dtype=np.float32).reshape(6, 2)
    r = arrange(feats, index)
    assert r.scene_feats.shape == (2, 2, 2) and r.query_feats.shape == (1, 2)  # the query's flip is not a query
    assert r.scenes["item_id"] == ["s1", "s2"] and r.queries["label"] == ["a"]
    assert r.queries["domain"] == ["photo"] and r.queries["class_split"] == ["seen"]  # absent column: every class seen
    with pytest.raises(DataError, match="retrieval needs queries and scenes"):
        arrange(feats[:4], {k: v[:4] for k, v in index.items()})


def test_recorded_query_crops_must_be_there_and_match_the_queries(tmp_path):
    from scenesearch import storage
    from scenesearch.retrieval import read_query_crops

    with pytest.raises(DataError, match="records query crops but holds no query_crops.npy"):
        read_query_crops(tmp_path, [0.5], (3, 4))
    storage.write_array(tmp_path / "query_crops.npy", np.zeros((5, 2, 4), np.float32))  # 2 queries, not 3
    with pytest.raises(DataError, match=r"holds \(5, 2, 4\) crop embeddings, expected \(5, 3, 4\)"):
        read_query_crops(tmp_path, [0.5], (3, 4))
    assert read_query_crops(tmp_path, [0.5], (2, 4)).shape == (5, 2, 4)

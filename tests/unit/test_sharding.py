"""Sharded render and descriptors, joined by their merge steps, equal the unsharded steps."""

import dataclasses

import numpy as np
import pytest

from scenesearch import features, sharding, storage
from scenesearch.errors import ConfigError
from scenesearch.render import step as render


@pytest.mark.parametrize("n, shards", [(10, 3), (2, 5), (0, 2), (7, 1)])
def test_blocks_cover_every_row_once_in_order(n, shards):
    rows = [i for s in range(shards) for i in range(n)[sharding.block(n, s, shards)]]
    assert rows == list(range(n))
    sizes = [len(range(n)[sharding.block(n, s, shards)]) for s in range(shards)]
    assert max(sizes) - min(sizes) <= 1


def test_a_shard_out_of_range_is_named():
    with pytest.raises(ConfigError, match="shard 3 is not in 0..2"):
        sharding.block(10, 3, 3)


def test_render_shards_merge_into_the_unsharded_views(tmp_path, smoke_preprocessed, smoke_cfg):
    manifest = str(smoke_preprocessed["manifest"])
    dirs = [str(tmp_path / f"s{i}") for i in range(3)]
    for i, d in enumerate(dirs):
        render.run(manifest, d, smoke_cfg.render, i, 3)
    merged = render.merge(dirs, str(tmp_path / "merged"))
    whole = storage.read_table(smoke_preprocessed["views"] / "views.parquet")
    got = storage.read_table(tmp_path / "merged" / "views.parquet")
    assert got.column("item_id").to_pylist() == whole.column("item_id").to_pylist()
    assert got.column("view").to_pylist() == whole.column("view").to_pylist()
    assert merged.n_views == whole.num_rows and merged.n_scenes == 16


def test_descriptor_shards_merge_into_the_unsharded_features(tmp_path, smoke_preprocessed, smoke_cfg):
    images = str(smoke_preprocessed["images"])
    whole = features.run(images, str(tmp_path / "whole"), smoke_cfg.features, smoke_cfg.seed)
    dirs = [str(tmp_path / f"d{i}") for i in range(2)]
    for i, d in enumerate(dirs):
        features.write_descriptors(d, *features.describe(images, smoke_cfg.features, smoke_cfg.seed, i, 2))
    merged = features.merge(images, dirs, str(tmp_path / "merged"), smoke_cfg.features, smoke_cfg.seed)
    assert merged.n_images == whole.n_images and merged.dim == whole.dim
    a = storage.read_array(tmp_path / "whole" / "features.npy")
    b = storage.read_array(tmp_path / "merged" / "features.npy")
    np.testing.assert_allclose(np.abs(a), np.abs(b), rtol=1e-3, atol=1e-3)  # PCA components are defined up to sign


def test_kept_conv_maps_merge_into_the_unsharded_maps(tmp_path, smoke_preprocessed, smoke_cfg):
    cfg = dataclasses.replace(smoke_cfg.features, keep_maps=True)
    images = str(smoke_preprocessed["images"])
    features.run(images, str(tmp_path / "whole"), cfg, smoke_cfg.seed)
    dirs = [str(tmp_path / f"d{i}") for i in range(2)]
    for i, d in enumerate(dirs):
        features.write_descriptors(d, *features.describe(images, cfg, smoke_cfg.seed, i, 2))
    features.merge(images, dirs, str(tmp_path / "merged"), cfg, smoke_cfg.seed)
    n = storage.read_table(smoke_preprocessed["images"] / "index.parquet").num_rows
    side = cfg.input_size // 16
    for name, shape in (("pool4", (n, 512, side, side)), ("conv5_3", (n, 512, side, side))):
        a = features.read_maps(str(tmp_path / "whole"), name, cfg.input_size)
        b = features.read_maps(str(tmp_path / "merged"), name, cfg.input_size)
        assert a.shape == shape and a.dtype == np.float16 and np.isfinite(a).all()
        np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), rtol=1e-2, atol=1e-3)
    assert features.read_maps(str(tmp_path / "whole"), "conv5_3", 64) is None  # kept at another size: the method computes its own


def test_a_missing_descriptor_shard_is_named(tmp_path, smoke_preprocessed, smoke_cfg):
    images = str(smoke_preprocessed["images"])
    d = str(tmp_path / "d0")
    features.write_descriptors(d, *features.describe(images, smoke_cfg.features, smoke_cfg.seed, 0, 4))
    from scenesearch.errors import DataError

    with pytest.raises(DataError, match="a descriptor shard is missing"):
        features.merge(images, [d], str(tmp_path / "m"), smoke_cfg.features, smoke_cfg.seed)

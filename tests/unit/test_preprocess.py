import numpy as np
import pytest
import torch

from scenesearch.preprocess import preprocess_images


def test_shapes_range_and_flips():
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (100, 80, 3), dtype=np.uint8), rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)]
    x = preprocess_images(imgs, size=64, flips=True)
    assert x.shape == (4, 3, 64, 64) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert torch.equal(x[1], torch.flip(x[0], dims=[2]))  # the flip follows its image
    # an image already at 64x64 is only rescaled to [0, 1]
    assert torch.allclose(x[2], torch.from_numpy(imgs[1]).permute(2, 0, 1).float() / 255)


def test_the_resize_is_torchvisions_bit_for_bit():
    """preprocess resizes without torchvision (its import is slow) and must give exactly what
    torchvision's v2 pipeline gave every image the models were trained and evaluated on."""
    from torchvision.transforms import v2

    from scenesearch.preprocess import resize_image

    rng = np.random.default_rng(0)
    for h, w, c in [(64, 64, 3), (480, 640, 3), (33, 47, 3), (16, 16, 3), (100, 30, 1), (7, 900, 3), (1, 1, 3)]:
        img = rng.integers(0, 256, (h, w, c), dtype=np.uint8)
        for size in (32, 64, 224):
            expected = v2.Compose([v2.ToImage(), v2.Resize((size, size), antialias=True), v2.ToDtype(torch.float32, scale=True)])(img)
            assert torch.equal(resize_image(img, size), expected), (h, w, c, size)
    with pytest.raises(TypeError, match="uint8"):
        resize_image(np.zeros((8, 8, 3), np.float32), 8)


def test_without_flips():
    x = preprocess_images([np.zeros((10, 10, 3), np.uint8)], size=32, flips=False)
    assert x.shape == (1, 3, 32, 32)


def test_run_preprocesses_every_query_domain_and_keeps_class_split(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from scenesearch import config, domains, preprocess, storage
    from scenesearch.data import ingest

    rng = np.random.default_rng(0)
    pictures = {name: rng.integers(0, 256, (20, 20, 3), dtype=np.uint8) for name in ("render", "photo", "sketch", "bad")}
    for name in ("photo", "sketch"):
        (tmp_path / f"{name}.png").write_bytes(storage.png_bytes(pictures[name]))
    (tmp_path / "bad.png").write_bytes(b"broken")
    rows = [
        ("scenes/a/s.glb", domains.SCENE, domains.SEEN, "train", "s.glb"),
        ("queries/a/q.png", "photo", domains.SEEN, "val", "photo.png"),
        ("queries/b/x.png", "photo", domains.UNSEEN, "test", "bad.png"),
        ("sketches/b/k.png", "sketch", domains.UNSEEN, "test", "sketch.png"),
    ]
    manifest = [
        {"item_id": i, "label": i.split("/")[1], "domain": d, "split": s, "class_split": c, "uri": str(tmp_path / f), "sha256": i}
        for i, d, c, s, f in rows
    ]
    (tmp_path / "m").mkdir()
    pq.write_table(pa.Table.from_pylist(manifest, schema=ingest.MANIFEST_SCHEMA), tmp_path / "m" / "manifest.parquet")
    (tmp_path / "v").mkdir()
    views = [{"item_id": "scenes/a/s.glb", "view": 0, "png": storage.png_bytes(pictures["render"])}]
    pq.write_table(pa.Table.from_pylist(views), tmp_path / "v" / "views.parquet")  # the render step's columns

    result = preprocess.run(str(tmp_path / "m"), str(tmp_path / "v"), str(tmp_path / "out"), config.PreprocessConfig(size=16))
    index = pq.read_table(tmp_path / "out" / "index.parquet").to_pandas()
    assert list(index.columns) == ["item_id", "label", "domain", "split", "class_split", "view", "flip"]
    assert index.item_id.tolist() == ["scenes/a/s.glb"] * 2 + ["queries/a/q.png"] * 2 + ["sketches/b/k.png"] * 2
    assert index.domain.tolist() == [domains.SCENE] * 2 + ["photo"] * 2 + ["sketch"] * 2
    assert index.class_split.tolist() == [domains.SEEN] * 4 + [domains.UNSEEN] * 2
    assert index.view.tolist() == [0, 0, -1, -1, -1, -1] and index.flip.tolist() == [False, True] * 3
    assert result.n_images == 6 and result.n_rejected == 1
    images = np.load(tmp_path / "out" / "images.npy")
    np.testing.assert_array_equal(images[4], preprocess_images([pictures["sketch"]], size=16, flips=False)[0].numpy())


def _run_with_masks(tmp_path, with_mask_column: bool):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from scenesearch import config, domains, preprocess, storage
    from scenesearch.data import ingest

    rng = np.random.default_rng(1)
    photo = rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)
    (tmp_path / "photo.png").write_bytes(storage.png_bytes(photo))
    manifest = [
        {"item_id": "scenes/a/s.glb", "label": "a", "domain": domains.SCENE, "split": "train", "class_split": domains.SEEN, "uri": "unused", "sha256": "s"},
        {"item_id": "queries/a/q.png", "label": "a", "domain": "photo", "split": "train", "class_split": domains.SEEN, "uri": str(tmp_path / "photo.png"), "sha256": "q"},
    ]
    (tmp_path / "m").mkdir()
    pq.write_table(pa.Table.from_pylist(manifest, schema=ingest.MANIFEST_SCHEMA), tmp_path / "m" / "manifest.parquet")
    renders = rng.integers(0, 256, (2, 40, 40, 3), dtype=np.uint8)
    masks = np.zeros((2, 40, 40), np.uint8)
    masks[0, 5:30, 2:20] = 255  # off-centre, so a flip moves it
    masks[0, 4, 2:20] = 128
    masks[1, 10:40, 25:38] = 255
    views = [{"item_id": "scenes/a/s.glb", "view": v, "png": storage.png_bytes(renders[v]), **({"mask": storage.png_bytes(masks[v])} if with_mask_column else {})} for v in range(2)]
    (tmp_path / "v").mkdir()
    pq.write_table(pa.Table.from_pylist(views), tmp_path / "v" / "views.parquet")
    preprocess.run(str(tmp_path / "m"), str(tmp_path / "v"), str(tmp_path / "out"), config.PreprocessConfig(size=16))
    index = pq.read_table(tmp_path / "out" / "index.parquet").to_pandas()
    return index, np.load(tmp_path / "out" / "masks.npy"), np.load(tmp_path / "out" / "images.npy"), renders, masks


def test_masks_align_with_the_index_rows(tmp_path):
    from scenesearch.preprocess import preprocess_masks, to_uint8

    index, got, images, renders, masks = _run_with_masks(tmp_path, with_mask_column=True)
    assert got.shape == (len(index), 1, 16, 16) and got.dtype == np.uint8 and len(images) == len(index)
    assert index.view.tolist() == [0, 0, 1, 1, -1, -1] and index.flip.tolist() == [False, True] * 3
    # resized exactly like the images: a mask equal to an image's red channel comes out as that channel
    red = preprocess_masks([np.ascontiguousarray(renders[0, ..., 0])], size=16, flips=False)[0, 0]
    np.testing.assert_array_equal(red, to_uint8(images[0, 0]))
    for row in range(4):  # renders: their own mask, flipped with their image
        want = preprocess_masks([masks[index.view[row]]], size=16, flips=False)[0]
        np.testing.assert_array_equal(got[row], want[..., ::-1] if index.flip[row] else want)
    assert got[0, 0, :, :8].mean() > got[0, 0, :, 8:].mean() and got[1, 0, :, 8:].mean() > got[1, 0, :, :8].mean()  # the flip moved it
    assert (got[index.domain == "photo"] == 255).all()  # a photo is all foreground


def test_views_without_masks_give_masks_of_255(tmp_path):
    index, got, _, _, _ = _run_with_masks(tmp_path, with_mask_column=False)
    assert got.shape == (len(index), 1, 16, 16) and (got == 255).all()

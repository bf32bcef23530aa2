"""Test-time query crops (scenesearch.crops): the boxes and their resizing, the reduction over
crops, and the crops through the train step, the retrieve step and serving, which must agree."""

import dataclasses
import json
import shutil
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from scenesearch import crops, methods, retrieval, serving, storage, train
from scenesearch.preprocess import preprocess_images, to_uint8

# --------------------------------------------------------------------------------------------
# ops
# --------------------------------------------------------------------------------------------


def _covered(size, boxes) -> np.ndarray:
    mask = np.zeros(size, bool)
    for top, left, h, w in boxes:
        mask[top : top + h, left : left + w] = True
    return mask


@pytest.mark.parametrize("size", [32, 33, 64, (31, 40)])
@pytest.mark.parametrize("scales", [(), (0.5,), (0.75, 0.5), (0.9, 0.6, 0.51)])
def test_crop_boxes_whole_first_five_per_scale_and_each_scale_covers_the_image(size, scales):
    boxes = crops.crop_boxes(size, scales)
    hw = (size, size) if isinstance(size, int) else size
    assert len(boxes) == crops.n_crops(scales) == 1 + 5 * len(scales)
    assert boxes[0] == (0, 0, *hw)
    for i, s in enumerate(scales):
        five = boxes[1 + 5 * i : 6 + 5 * i]
        assert {(h, w) for _, _, h, w in five} == {(int(s * hw[0] + 0.5), int(s * hw[1] + 0.5))}
        assert all(top >= 0 and left >= 0 and top + h <= hw[0] and left + w <= hw[1] for top, left, h, w in five)
        assert _covered(hw, five).all()  # the union of a scale's boxes is the whole image


def test_a_scale_under_one_half_zooms_without_tiling():
    five = crops.crop_boxes(30, (0.3,))[1:]
    mask = _covered((30, 30), five)
    assert mask[15, 15] and mask[0, 0] and mask[29, 29] and not mask[15, 0]  # centre and corners only


def test_crop_images_resizes_every_crop_and_keeps_the_whole_image_first():
    x = torch.rand(2, 3, 20, 20, generator=torch.Generator().manual_seed(0))
    out = crops.crop_images(x, (0.5, 0.8), 20)
    assert out.shape == (11, 2, 3, 20, 20)
    assert torch.equal(out[0], x)
    # the top-left crop of scale 0.5 is the top-left quarter, upsampled
    quarter = torch.nn.functional.interpolate(x[:, :, :10, :10], size=(20, 20), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(out[1], quarter)
    assert crops.crop_images(x, (0.5,), 8).shape == (6, 2, 3, 8, 8)


def test_reduce_distances_by_hand():
    d = torch.tensor([[[1.0, 4.0], [2.0, 0.0]], [[3.0, 2.0], [0.5, 6.0]]])  # (C=2, Q=2, S=2)
    assert torch.equal(crops.reduce_distances(d, "min"), torch.tensor([[1.0, 2.0], [0.5, 0.0]]))
    assert torch.equal(crops.reduce_distances(d, "mean"), torch.tensor([[2.0, 3.0], [1.25, 3.0]]))
    with pytest.raises(ValueError, match="crop_reduce must be one of min, mean, got 'max'"):
        crops.reduce_distances(d, "max")


class MeanColour:
    """A toy method: embeds an image as its mean colour; a scene's distance is its nearest view's (L2)."""

    image_size = 16

    def __init__(self):
        self.calls = []

    def embed(self, images):
        self.calls.append(len(images))
        return images.mean(dim=(2, 3))

    def score(self, queries, gallery):
        return torch.cdist(queries[:, None, None], gallery[None]).squeeze(2).min(dim=-1).values  # (Q, S)


def test_score_with_crops_without_scales_is_one_plain_embed_and_score():
    g = torch.Generator().manual_seed(1)
    x, gallery = torch.rand(5, 3, 16, 16, generator=g), torch.rand(4, 2, 3, generator=g)
    r = MeanColour()
    assert torch.equal(crops.score_with_crops(r, x, gallery, (), "min", batch_size=2), r.score(r.embed(x), gallery))
    assert r.calls == [5, 5]


def test_score_with_crops_is_the_reduced_distance_of_every_crop_in_any_batch_size():
    g = torch.Generator().manual_seed(2)
    x, gallery = torch.rand(5, 3, 16, 16, generator=g), torch.rand(4, 2, 3, generator=g)
    r = MeanColour()
    all_crops = crops.crop_images(x, (0.5,), 16)
    per_crop = torch.stack([r.score(r.embed(c), gallery) for c in all_crops])  # (6, 5, 4)
    for how in ("min", "mean"):
        expected = per_crop.min(dim=0).values if how == "min" else per_crop.mean(dim=0)
        for batch in (1, 12, 1000):
            r.calls.clear()
            torch.testing.assert_close(crops.score_with_crops(r, x, gallery, (0.5,), how, batch), expected)
            assert max(r.calls) <= max(batch, 6) and sum(r.calls) == 30
    assert (per_crop.min(dim=0).values <= per_crop[0]).all()
    assert crops.embed_crops(r, x, (0.5,), whole=False).shape == (5, 5, 3)


# --------------------------------------------------------------------------------------------
# train step -> retrieve step -> serving, on a hand-made preprocess folder and a toy plugin method
# --------------------------------------------------------------------------------------------

TOY_METHOD = '''
    from dataclasses import dataclass
    from pathlib import Path

    import numpy as np
    import torch

    from scenesearch.methods import Fitted, Method, MethodConfig


    @dataclass(frozen=True)
    class C(MethodConfig):
        pass


    class MeanColour:
        image_size = 16

        def embed(self, images):
            return images.mean(dim=(2, 3))

        def score(self, queries, gallery):
            return torch.cdist(queries[:, None, None], gallery[None]).squeeze(2).min(dim=-1).values


    def fit(ctx):
        images = torch.from_numpy(np.load(Path(ctx.inputs.need("images", "mean_colour")) / "images.npy"))
        return Fitted(MeanColour().embed(images).numpy(), {})


    METHOD = Method("mean_colour", "mean colour, nearest view", C, ("images",), fit, lambda folder, meta: MeanColour())
'''

# queries interleaved with scene views, so that arrange's query order is not the row order
ROWS = [("q0", "photo", 0, False), ("q0", "photo", 0, True), ("s0", "scene", 0, False), ("s0", "scene", 1, False),
        ("q1", "photo", 0, False), ("q1", "photo", 0, True), ("s1", "scene", 0, False), ("s1", "scene", 1, False),
        ("q2", "photo", 0, False), ("q2", "photo", 0, True), ("s2", "scene", 0, False), ("s2", "scene", 1, False)]
QUERY_ROWS = [0, 4, 8]


@pytest.fixture
def toy(tmp_path, smoke_cfg, monkeypatch):
    """A preprocess folder of 3 queries (and their flips) and 3 scenes of 2 views at 16 px, and the
    toy method as a plugin. Pixels are multiples of 1/255, so a query survives serving's uint8 input."""
    (tmp_path / "mean_colour_method.py").write_text(textwrap.dedent(TOY_METHOD))
    monkeypatch.syspath_prepend(str(tmp_path))
    images = tmp_path / "images"
    rng = np.random.default_rng(0)
    storage.write_array(images / "images.npy", (rng.integers(0, 256, (len(ROWS), 3, 16, 16)) / 255).astype(np.float32))
    storage.write_table(images / "index.parquet", {
        "item_id": [r[0] for r in ROWS], "label": ["a", "a", "a", "a", "b", "b", "b", "b", "c", "c", "c", "c"],
        "domain": [r[1] for r in ROWS], "split": ["test"] * len(ROWS), "class_split": ["seen"] * len(ROWS),
        "view": [r[2] for r in ROWS], "flip": [r[3] for r in ROWS]})
    cfg = dataclasses.replace(smoke_cfg, methods={"mean_colour": {}, "random": {}}, plugins=("mean_colour_method",))

    def fit(key, scales=(), reduce="min", name=None):
        c = dataclasses.replace(cfg, retrieve=dataclasses.replace(cfg.retrieve, crop_scales=scales, crop_reduce=reduce))
        return train.run(c, key, methods.Inputs(images=str(images)), str(tmp_path / (name or key)), progress=False)

    return SimpleNamespace(fit=fit, images=storage.read_array(images / "images.npy"), root=tmp_path)


def _serve(model_dir, dst):
    """The pyfunc of serving.log_model, loaded from a folder as MLflow would hand it over."""
    shutil.copytree(model_dir, dst)
    np.savez(dst / "gallery.npz", **serving.build_gallery(model_dir))
    model = serving.SceneRetrievalModel()
    model.load_context(SimpleNamespace(artifacts={"model": str(dst)}))
    return model


def _served_distances(model, images) -> np.ndarray:
    frame = model.predict(None, to_uint8(images.transpose(0, 2, 3, 1)), params={"top_k": len(model.scene_ids)})
    order = {s: j for j, s in enumerate(model.scene_ids)}
    d = np.zeros((len(images), len(order)), np.float32)
    d[frame["query"].to_numpy(), frame["scene_id"].map(order).to_numpy()] = frame["distance"].to_numpy()
    return d


@pytest.mark.parametrize("reduce", ["min", "mean"])
def test_the_train_step_embeds_query_crops_that_retrieval_and_serving_score_alike(toy, reduce):
    plain = toy.fit("mean_colour", name="plain")
    result = toy.fit("mean_colour", (0.5, 0.75), reduce)
    folder = toy.root / "mean_colour"
    record = train.read_record(folder)
    assert record["retrieve"] == {"crop_scales": [0.5, 0.75], "crop_reduce": reduce}
    assert result.metrics["n_query_crops"] == 11 and "n_query_crops" not in plain.metrics
    # crops 1..10 of each query, in arrange's query order, as the method embeds them
    stored = storage.read_array(folder / train.CROPS_FILE)
    assert stored.shape == (10, 3, 3) and stored.dtype == np.float32
    np.testing.assert_array_equal(train.query_rows(storage.read_table(folder / "index.parquet").to_pydict()), QUERY_ROWS)
    x = torch.from_numpy(toy.images[QUERY_ROWS])
    expected = crops.crop_images(x, (0.5, 0.75), 16).mean(dim=(3, 4))  # (11, 3, 3): the toy embed
    np.testing.assert_allclose(stored, expected[1:].numpy(), rtol=1e-6)
    # retrieve: the whole image's distance and every crop's, reduced
    _, arranged, d = retrieval.score_folder(folder)
    _, _, d_plain = retrieval.score_folder(toy.root / "plain")
    gallery = torch.from_numpy(arranged.scene_feats)
    per_crop = torch.stack([MeanColour().score(q, gallery) for q in expected]).numpy()
    np.testing.assert_allclose(d, per_crop.min(0) if reduce == "min" else per_crop.mean(0), rtol=1e-5)
    np.testing.assert_allclose(d_plain, per_crop[0], rtol=1e-5)
    assert not np.allclose(d, d_plain)
    # serving answers a query image with the same distances as the retrieve step
    model = _serve(folder, toy.root / "served")
    assert model.crop_scales == (0.5, 0.75) and model.crop_reduce == reduce
    np.testing.assert_allclose(_served_distances(model, toy.images[QUERY_ROWS]), d, rtol=1e-5, atol=1e-6)


def test_without_crops_the_folder_retrieval_and_serving_are_as_before(toy):
    toy.fit("mean_colour", (0.5,))
    toy.fit("mean_colour")  # the same folder again without crops: the stale crops file is ignored
    folder = toy.root / "mean_colour"
    assert train.read_record(folder)["retrieve"]["crop_scales"] == []
    record, retriever = train.load(folder)
    _, arranged, d = retrieval.score_folder(folder)
    q, gallery = torch.from_numpy(arranged.query_feats), torch.from_numpy(arranged.scene_feats)
    np.testing.assert_array_equal(d, retriever.score(q, gallery).numpy())
    model = _serve(folder, toy.root / "served")
    x = preprocess_images(list(to_uint8(toy.images[QUERY_ROWS].transpose(0, 2, 3, 1))), 16, flips=False)
    np.testing.assert_array_equal(_served_distances(model, toy.images[QUERY_ROWS]), retriever.score(retriever.embed(x), gallery).numpy().astype(np.float32))


def test_a_method_that_cannot_embed_a_query_is_scored_whole(toy):
    result = toy.fit("random", (0.5,))
    folder = toy.root / "random"
    assert train.read_record(folder)["retrieve"]["crop_scales"] == [] and result.metrics["n_query_crops"] == 1
    assert not (folder / train.CROPS_FILE).exists()
    record, arranged, d = retrieval.score_folder(folder)
    assert d.shape == (3, 3) and json.loads((folder / train.METHOD_FILE).read_text())["method"] == "random"


# --------------------------------------------------------------------------------------------
# a real method on the smoke data
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke_features(tmp_path_factory, smoke_preprocessed, smoke_cfg):
    from scenesearch import features

    out = tmp_path_factory.mktemp("features")
    features.run(str(smoke_preprocessed["images"]), str(out), smoke_cfg.features, smoke_cfg.seed)
    return out


def test_vgg_baseline_crops_on_the_smoke_data(tmp_path, smoke_cfg, smoke_preprocessed, smoke_features):
    cfg = dataclasses.replace(smoke_cfg, retrieve=dataclasses.replace(smoke_cfg.retrieve, crop_scales=(0.6,)))
    inputs = methods.Inputs(images=str(smoke_preprocessed["images"]), features=str(smoke_features))
    result = train.run(cfg, "vgg_baseline", inputs, str(tmp_path / "m"), progress=False)
    assert result.metrics["n_query_crops"] == 6
    _, arranged, d = retrieval.score_folder(tmp_path / "m")
    stored = storage.read_array(tmp_path / "m" / train.CROPS_FILE)
    assert stored.shape == (5, *arranged.query_feats.shape)
    # the stored crops belong to the queries in arrange's order: embedding them again gives the same distances
    index = storage.read_table(tmp_path / "m" / "index.parquet").to_pydict()
    rows = train.query_rows(index)[:3]
    _, retriever = train.load(tmp_path / "m")
    x = torch.from_numpy(storage.read_array(smoke_preprocessed["images"] / "images.npy")[rows])
    again = crops.score_with_crops(retriever, x, torch.from_numpy(arranged.scene_feats), (0.6,), "min").numpy()
    np.testing.assert_allclose(again, d[:3], rtol=1e-4, atol=1e-4)
    plain = retriever.score(torch.from_numpy(arranged.query_feats), torch.from_numpy(arranged.scene_feats)).numpy()
    assert (d <= plain + 1e-6).all() and (d < plain - 1e-6).any()

"""Expectations on the generated embedded benchmark and its manifest."""

import csv
import dataclasses

import numpy as np
import pyarrow.parquet as pq
import pytest

from scenesearch import domains
from scenesearch.data import ingest
from scenesearch.data.generate import OBJECT_FORMATS, as_scene_mesh, easy_query_photo, generate, query_photo_with_mask
from scenesearch.data.synthetic_scenes import CLASS_ATTRIBUTE_NAMES, OBJECT_CLASSES, SCENE_CLASSES, build_scene
from scenesearch.errors import ConfigError


@pytest.fixture(scope="module")
def mixed_cfg(smoke_cfg):
    """Two scene classes and two object classes, with easy queries: every object format once, a .jpg query."""
    data = dataclasses.replace(
        smoke_cfg.data, n_classes=2, n_object_classes=2, scenes_per_class=len(OBJECT_FORMATS), queries_per_class=4, easy_queries=True
    )
    return dataclasses.replace(smoke_cfg, data=data)


@pytest.fixture(scope="module")
def mixed_dataset(tmp_path_factory, mixed_cfg):
    root = tmp_path_factory.mktemp("mixed") / "bench"
    generate(root, mixed_cfg.data, mixed_cfg.seed)
    return root


def test_layout_formats_and_manifest(smoke_dataset, smoke_cfg, tmp_path):
    files = [p.relative_to(smoke_dataset).as_posix() for p in smoke_dataset.rglob("*") if p.is_file()]
    exts = {f.rsplit(".", 1)[1] for f in files if f.startswith("scenes/")}
    assert {"glb", "obj", "skp"} <= exts
    result = ingest.run(str(smoke_dataset), str(tmp_path / "m"), smoke_cfg.data, smoke_cfg.seed)
    assert result.n_rejected == 0
    n = smoke_cfg.data
    assert result.n_scenes == n.n_classes * n.scenes_per_class
    assert result.n_queries == n.n_classes * n.queries_per_class
    m = pq.read_table(tmp_path / "m" / "manifest.parquet").to_pandas()
    assert m.item_id.is_unique and m.sha256.is_unique
    for (_, _), group in m.groupby(["label", "domain"]):
        assert "train" in set(group.split)  # every class trains in both domains
    assert set(m.domain) == {domains.SCENE, "photo"} and set(m.class_split) == {domains.SEEN}
    assert set(m[m.domain == "photo"].split) == {"train", "val", "test"}
    assert set(ingest.read_semantics(tmp_path / "m")) == set(m.label)


def test_generation_is_deterministic(tmp_path, smoke_cfg):
    # one object class and easy queries too; four queries so one hard query is a .jpg
    small = dataclasses.replace(smoke_cfg.data, n_classes=2, scenes_per_class=2, queries_per_class=4, n_object_classes=1, easy_queries=True)
    a, b = tmp_path / "a", tmp_path / "b"
    generate(a, small, seed=5)
    generate(b, small, seed=5)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


def test_generate_refuses_a_folder_it_did_not_write(tmp_path, smoke_cfg):
    import pytest

    from scenesearch.errors import DataError

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("keep me")
    with pytest.raises(DataError, match="was not made by `scenesearch generate`"):
        generate(tmp_path / "mine", smoke_cfg.data)
    assert (tmp_path / "mine" / "precious.txt").read_text() == "keep me"


def test_semantics_csv_describes_every_class(smoke_dataset, smoke_cfg):
    with open(smoke_dataset / "semantics.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["class", *CLASS_ATTRIBUTE_NAMES] and 8 <= len(CLASS_ATTRIBUTE_NAMES) <= 16
    assert [r[0] for r in rows[1:]] == list(SCENE_CLASSES[: smoke_cfg.data.n_classes])
    vectors = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    assert np.isfinite(vectors).all() and len(np.unique(vectors, axis=0)) == len(vectors)  # no two classes alike
    assert ((vectors > 0).sum(axis=1) > 1).all()  # not one-hot
    assert not np.isin(vectors, (0.0, 1.0)).all()  # graded, not only binary


def test_every_generator_class_has_attributes():
    from scenesearch.data.synthetic_scenes import CLASS_ATTRIBUTES

    assert list(CLASS_ATTRIBUTES) == list(SCENE_CLASSES + OBJECT_CLASSES)
    assert all(len(v) == len(CLASS_ATTRIBUTE_NAMES) for v in CLASS_ATTRIBUTES.values())
    assert len(set(CLASS_ATTRIBUTES.values())) == len(CLASS_ATTRIBUTES)  # no two classes alike


def test_too_many_object_classes_is_a_config_error(tmp_path, smoke_cfg):
    too_many = dataclasses.replace(smoke_cfg.data, n_object_classes=len(OBJECT_CLASSES) + 1)
    with pytest.raises(ConfigError, match="data.n_object_classes"):
        generate(tmp_path / "b", too_many)
    assert not (tmp_path / "b").exists()


def test_object_classes_are_written_ingested_and_described(mixed_dataset, mixed_cfg, tmp_path):
    n = mixed_cfg.data
    classes = list(SCENE_CLASSES[: n.n_classes] + OBJECT_CLASSES[: n.n_object_classes])
    for label in OBJECT_CLASSES[: n.n_object_classes]:
        files = sorted(p.name for p in (mixed_dataset / "scenes" / label).iterdir())
        assert {f.rsplit(".", 1)[1] for f in files} >= set(OBJECT_FORMATS)  # and the OBJs' companions
        assert sum(f.rsplit(".", 1)[1] in OBJECT_FORMATS for f in files) == n.scenes_per_class
    result = ingest.run(str(mixed_dataset), str(tmp_path / "m"), n, mixed_cfg.seed)
    assert result.n_rejected == 0
    assert result.n_scenes == len(classes) * n.scenes_per_class
    m = pq.read_table(tmp_path / "m" / "manifest.parquet").to_pandas()
    assert sorted(set(m.label)) == sorted(classes)
    assert set(ingest.read_semantics(tmp_path / "m")) == set(classes)
    with open(mixed_dataset / "semantics.csv", newline="") as f:
        assert [r[0] for r in list(csv.reader(f))[1:]] == classes


def test_easy_queries_are_a_parallel_photo_easy_domain(mixed_dataset, mixed_cfg, tmp_path):
    n = mixed_cfg.data
    for label in SCENE_CLASSES[: n.n_classes] + OBJECT_CLASSES[: n.n_object_classes]:
        hard = sorted(p for p in (mixed_dataset / "queries" / label).iterdir())
        easy = sorted(p for p in (mixed_dataset / "easy_queries" / label).iterdir())
        assert [p.stem for p in hard] == [p.stem for p in easy] == [f"{label}_q{j:03d}" for j in range(n.queries_per_class)]
        assert {p.suffix for p in easy} == {".png"} and {p.suffix for p in hard} == {".png", ".jpg"}
    ingest.run(str(mixed_dataset), str(tmp_path / "m"), n, mixed_cfg.seed)
    m = pq.read_table(tmp_path / "m" / "manifest.parquet").to_pandas()
    assert set(m.domain) == {domains.SCENE, "photo", "photo_easy"}
    counts = m.groupby("domain").size()
    assert counts["photo"] == counts["photo_easy"] == (n.n_classes + n.n_object_classes) * n.queries_per_class
    assert all(item.startswith("easy_queries/") for item in m[m.domain == "photo_easy"].item_id)


def _near_white(image: np.ndarray) -> float:
    return float((image[..., :3] > 235).all(axis=-1).mean())


def test_hard_queries_differ_from_the_renders_as_photos_do():
    """Gallery renders are the scene framed by its bounding sphere on white; hard query photos put a
    smaller, off-centre scene on a background that fills the frame. Easy queries sit in between."""
    from scenesearch.render import get_renderer
    from scenesearch.render.camera import view_rig

    rng = np.random.default_rng(0)
    white, coverage, offset = {"gallery": [], "hard": [], "easy": []}, {"gallery": [], "hard": []}, {"gallery": [], "hard": []}
    for label in ("bedroom", "street", "chair", "car"):
        scene = as_scene_mesh(build_scene(label, rng))
        centre, radius = scene.bounding_sphere()
        render = get_renderer(128, 256).render(scene, view_rig(centre, radius)[:1], alpha=True)[0]
        masks = [("gallery", render[..., 3] / 255.0, render)]
        for _ in range(4):
            photo, mask = query_photo_with_mask(scene, rng)
            assert photo.shape == (128, 128, 3) and photo.dtype == np.uint8 and mask.shape == (128, 128)
            masks.append(("hard", mask, photo))
            white["easy"].append(_near_white(easy_query_photo(scene, rng)))
        for kind, mask, image in masks:
            white[kind].append(_near_white(image))
            coverage[kind].append(mask.mean())
            ys, xs = np.nonzero(mask > 0.5)
            offset[kind].append(np.hypot(ys.mean() - 63.5, xs.mean() - 63.5) / 128 if len(ys) else 0.5)
    assert np.mean(white["gallery"]) > 0.3
    assert np.mean(white["hard"]) < 0.05 and np.mean(white["easy"]) < 0.05
    assert np.mean(coverage["hard"]) < 0.6 * np.mean(coverage["gallery"])
    assert np.mean(offset["hard"]) > 2 * np.mean(offset["gallery"])


def test_hard_queries_are_a_function_of_the_rng():
    scene = as_scene_mesh(build_scene("chair", np.random.default_rng(1)))
    first = [query_photo_with_mask(scene, np.random.default_rng(7))[0] for _ in range(2)]
    assert first[0].tobytes() == first[1].tobytes()
    other = query_photo_with_mask(scene, np.random.default_rng(8))[0]
    assert other.tobytes() != first[0].tobytes()


def test_the_marker_tells_whether_a_folder_matches_the_settings(tmp_path, smoke_cfg):
    import dataclasses

    from scenesearch.data.generate import is_current, was_generated

    small = dataclasses.replace(smoke_cfg.data, n_classes=1, scenes_per_class=1, queries_per_class=1)
    generate(tmp_path / "b", small, seed=3)
    assert was_generated(tmp_path / "b") and is_current(tmp_path / "b", small, 3)
    assert not is_current(tmp_path / "b", small, 4)
    assert not is_current(tmp_path / "b", dataclasses.replace(small, easy_queries=True), 3)
    (tmp_path / "b" / ingest.GENERATED_MARKER).write_text("seed=3\n")  # an older generator's marker
    assert not is_current(tmp_path / "b", small, 3)
    assert not was_generated(tmp_path)

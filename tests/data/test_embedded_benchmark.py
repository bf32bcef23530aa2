"""Expectations on the generated embedded benchmark and its manifest."""

import csv

import numpy as np
import pyarrow.parquet as pq

from scenesearch import domains
from scenesearch.data import ingest
from scenesearch.data.generate import generate
from scenesearch.data.synthetic_scenes import CLASS_ATTRIBUTE_NAMES, SCENE_CLASSES


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
    import dataclasses

    small = dataclasses.replace(smoke_cfg.data, n_classes=2, scenes_per_class=2, queries_per_class=2)
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

    assert list(CLASS_ATTRIBUTES) == list(SCENE_CLASSES)
    assert all(len(v) == len(CLASS_ATTRIBUTE_NAMES) for v in CLASS_ATTRIBUTES.values())
    assert len(set(CLASS_ATTRIBUTES.values())) == len(SCENE_CLASSES)

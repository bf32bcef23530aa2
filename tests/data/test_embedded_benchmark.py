"""Expectations on the generated embedded benchmark and its manifest."""

import pyarrow.parquet as pq

from scenesearch.data import ingest
from scenesearch.data.generate import generate


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
    assert set(m[m.domain == "query"].split) == {"train", "val", "test"}


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

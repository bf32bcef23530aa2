"""Ingest: every kind of bad input becomes a rejects row with a reason, and the good items go through.

Also: query domains (photos, sketches), zero-shot class splits and the semantics.csv side information.
"""

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import trimesh
from PIL import Image

from scenesearch import config, domains, storage
from scenesearch.data import ingest
from scenesearch.errors import DataError, ItemError


def _box(colour=(200, 40, 40, 255), size=(1, 2, 3)) -> trimesh.Trimesh:
    m = trimesh.creation.box(size)
    m.visual.face_colors = colour
    return m


def _png(arr: np.ndarray, mode=None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def _write(root: Path, rel: str, data: bytes) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)


@pytest.fixture
def messy(tmp_path) -> Path:
    """Two good classes, plus one file or class for each kind of bad input."""
    root = tmp_path / "ds"
    rng = np.random.default_rng(0)
    for cls, colour in (("red", (200, 40, 40, 255)), ("blue", (40, 40, 200, 255))):
        for i in range(3):
            _write(root, f"scenes/{cls}/s{i}.glb", _box(colour, (1 + i, 2, 3)).export(file_type="glb"))
            _write(root, f"queries/{cls}/q{i}.png", _png(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)))
    good_glb = _box().export(file_type="glb")
    nan_mesh = _box()
    nan_mesh.vertices[0] = [np.nan, 0, 0]
    flat = trimesh.Trimesh(vertices=np.zeros((3, 3)), faces=[[0, 1, 2]], process=False)
    bad = {
        "scenes/red/empty.glb": b"",
        "scenes/red/truncated.glb": good_glb[: len(good_glb) // 2],
        "scenes/red/garbage.obj": b"this is not an obj file\x00\x01",
        "scenes/red/nofaces.ply": trimesh.PointCloud(np.random.default_rng(1).random((5, 3))).export(file_type="ply"),
        "scenes/red/nan.ply": nan_mesh.export(file_type="ply"),
        "scenes/red/flat.ply": flat.export(file_type="ply"),
        "scenes/red/notes.txt": b"hello",
        "scenes/red/zdup.glb": (root / "scenes/red/s0.glb").read_bytes(),
        "scenes/red/with space.glb": _box(size=(5, 5, 5)).export(file_type="glb"),
        "scenes/red/caf\u00e9.glb": _box(size=(6, 5, 5)).export(file_type="glb"),
        "queries/blue/broken.png": b"\x89PNG\r\n\x1a\nnot really",
        "queries/blue/photo.gif": _png(np.zeros((8, 8, 3), np.uint8)),
        "scenes/onlyscenes/a.glb": _box(size=(7, 1, 1)).export(file_type="glb"),
        "queries/onlyqueries/a.png": _png(np.full((8, 8, 3), 7, np.uint8)),
        "stray.bin": b"x",
    }
    for rel, data in bad.items():
        _write(root, rel, data)
    # images in other modes are converted, not rejected
    _write(root, "queries/red/grey.png", _png(np.full((8, 8), 100, np.uint8)))
    _write(root, "queries/red/rgba.png", _png(np.full((8, 8, 4), 100, np.uint8)))
    _write(root, "queries/red/deep.png", _png(np.full((8, 8), 40000, np.uint16)))
    pal = Image.new("P", (8, 8))
    buf = io.BytesIO()
    pal.save(buf, format="PNG")
    _write(root, "queries/red/palette.png", buf.getvalue())
    return root


def test_bad_files_are_rejected_with_reasons_and_good_ones_kept(messy, tmp_path):
    out = tmp_path / "out"
    result = ingest.run(str(messy), str(out), config.DataConfig(), seed=0)
    manifest = pq.read_table(out / "manifest.parquet").to_pandas()
    rejected = dict(pq.read_table(out / "rejected.parquet").to_pandas()[["uri", "reason"]].values)
    reasons = {Path(u).relative_to(messy).as_posix(): r for u, r in rejected.items()}

    expected = {
        "scenes/red/empty.glb": "the file is empty",
        "scenes/red/truncated.glb": "cannot parse",
        "scenes/red/garbage.obj": "",  # either unparsable or without faces: both are fine
        "scenes/red/nofaces.ply": "no faces",
        "scenes/red/nan.ply": "NaN or infinite",
        "scenes/red/flat.ply": "degenerate",
        "scenes/red/notes.txt": "unsupported scene extension '.txt'",
        "scenes/red/zdup.glb": "duplicate of scenes/red/s0.glb",
        "scenes/red/with space.glb": "spaces or non-ASCII",
        "scenes/red/caf\u00e9.glb": "spaces or non-ASCII",
        "queries/blue/broken.png": "cannot be decoded",
        "queries/blue/photo.gif": "unsupported image extension '.gif'",
        "scenes/onlyscenes/a.glb": "class 'onlyscenes' has no queries",
        "queries/onlyqueries/a.png": "class 'onlyqueries' has no scenes",
        "stray.bin": "is outside the folders scenes/, queries/, easy_queries/, sketches/",
    }
    assert set(reasons) == set(expected)
    for rel, fragment in expected.items():
        assert fragment in reasons[rel], (rel, reasons[rel])
        assert "\n" not in reasons[rel]
    assert reasons["scenes/red/garbage.obj"].startswith("scenes/red/garbage.obj:")

    assert list(manifest.columns) == ["item_id", "label", "domain", "split", "class_split", "uri", "sha256"]
    assert set(manifest.domain) == {domains.SCENE, "photo"} and set(manifest.class_split) == {domains.SEEN}
    assert result.n_scenes == 6 and result.n_queries == 10 and result.n_classes == 2
    assert {"queries/red/grey.png", "queries/red/rgba.png", "queries/red/deep.png", "queries/red/palette.png"} <= set(manifest.item_id)
    assert set(manifest.split) <= {"train", "val", "test"}


def test_unreadable_file_is_rejected(messy, tmp_path, monkeypatch):
    # Tests run as root, where chmod 000 does not stop reads; simulate the OS refusing instead.
    target = str(messy / "scenes/red/s1.glb")
    real = storage.read_bytes

    def refuse(uri):
        if str(uri) == target:
            raise DataError(f"cannot read {uri}: Permission denied")
        return real(uri)

    monkeypatch.setattr(storage, "read_bytes", refuse)
    monkeypatch.setattr(ingest.os, "access", lambda p, mode: str(p) != target)
    ingest.run(str(messy), str(tmp_path / "out"), config.DataConfig())
    rejected = pq.read_table(tmp_path / "out" / "rejected.parquet").to_pydict()
    assert "scenes/red/s1.glb is not readable (permission denied)" in rejected["reason"]


def test_splits_are_deterministic_and_per_class(messy, tmp_path):
    a = ingest.run(str(messy), str(tmp_path / "a"), config.DataConfig(), seed=3)
    b = ingest.run(str(messy), str(tmp_path / "b"), config.DataConfig(), seed=3)
    c = ingest.run(str(messy), str(tmp_path / "c"), config.DataConfig(), seed=4)
    assert a.fingerprint == b.fingerprint
    assert a.fingerprint != c.fingerprint  # another seed, another split
    m = pq.read_table(tmp_path / "a" / "manifest.parquet").to_pandas()
    # 3 scenes at 0.6/0.2/0.2: one in each split, so a small class still has val and test items
    counts = m[m.domain == "scene"].groupby(["label", "split"]).size().unstack(fill_value=0)
    assert (counts[["train", "val", "test"]] == 1).all().all()


@pytest.mark.parametrize(
    "n, fractions, expected",
    [
        (10, (0.6, 0.2, 0.2), [6, 2, 2]),
        (3, (0.6, 0.2, 0.2), [1, 1, 1]),
        (4, (0.6, 0.2, 0.2), [2, 1, 1]),
        (2, (0.6, 0.2, 0.2), [1, 1, 0]),  # too few for three splits: largest remainders, ties in split order
        (5, (0.5, 0.5, 0.0), [3, 2, 0]),  # a zero fraction gets nothing
        (1, (0.5, 0.5, 0.0), [1, 0, 0]),
        (0, (0.6, 0.2, 0.2), [0, 0, 0]),
    ],
)
def test_split_counts(n, fractions, expected):
    assert ingest.split_counts(n, fractions) == expected


def test_splits_csv_is_honoured(messy, tmp_path):
    (messy / "splits.csv").write_text("path,split\nscenes/red/s0.glb,test\nqueries/red/q0.png,val\n")
    ingest.run(str(messy), str(tmp_path / "out"), config.DataConfig())
    m = pq.read_table(tmp_path / "out" / "manifest.parquet").to_pandas().set_index("item_id")
    assert m.loc["scenes/red/s0.glb", "split"] == "test" and m.loc["queries/red/q0.png", "split"] == "val"


def test_bad_split_name_names_the_line(messy, tmp_path):
    (messy / "splits.csv").write_text("path,split\nscenes/red/s0.glb,holdout\n")
    with pytest.raises(DataError, match=r"splits.csv line 2: split must be one of train, val, test, got 'holdout'"):
        ingest.run(str(messy), str(tmp_path / "out"), config.DataConfig())


def test_classes_txt_filters(messy, tmp_path):
    (messy / "classes.txt").write_text("red\n")
    ingest.run(str(messy), str(tmp_path / "out"), config.DataConfig())
    m = pq.read_table(tmp_path / "out" / "manifest.parquet").to_pandas()
    assert set(m.label) == {"red"}


def test_nothing_usable_stops_with_one_sentence(tmp_path):
    root = tmp_path / "ds"
    _write(root, "scenes/a/x.glb", b"")
    _write(root, "queries/a/x.png", b"")
    with pytest.raises(DataError, match=r"^no usable scene or query in .* \(2 files rejected: .*\)$"):
        ingest.run(str(root), str(tmp_path / "out"), config.DataConfig())


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        ingest.run(str(tmp_path / "nope"), str(tmp_path / "out"), config.DataConfig())


@pytest.mark.parametrize(
    "args, message",
    [
        (["ingest", "--data", "/nonexistent/root", "--out", "OUT"], "scenesearch ingest: dataset root /nonexistent/root does not exist or is not a folder\n"),
        (["ingest", "--data", ".", "--out", "OUT", "--set", "data.split_fractions=[1, 1, 1]"], "scenesearch ingest: data.split_fractions must be three"),
    ],
)
def test_cli_failures_are_one_sentence_without_traceback(tmp_path, args, message):
    args = [a.replace("OUT", str(tmp_path / "out")) for a in args]
    p = subprocess.run([sys.executable, "-m", "scenesearch.cli", *args], capture_output=True, text=True)
    assert p.returncode == 1
    assert p.stderr.startswith(message) or message in p.stderr
    assert "Traceback" not in p.stderr


def test_decode_image_converts_modes():
    assert ingest.decode_image("a.png", _png(np.full((4, 4), 65535, np.uint16))).max() == 255
    with pytest.raises(ItemError, match="the file is empty"):
        ingest.decode_image("a.png", b"")



# ---------------------------------------------------------------- query domains


def _tiny(root: Path, classes=("a", "b", "c", "d"), n=5, photos=True) -> Path:
    """n scenes and (with photos) n query photos per class; every file distinct, also across calls."""
    rng = np.random.default_rng(sum(map(ord, "".join(classes))))
    for cls in classes:
        for i in range(n):
            _write(root, f"scenes/{cls}/s{i}.glb", _box(size=(1 + sum(map(ord, cls)) / 100, 1 + i, 1)).export(file_type="glb"))
            if photos:
                _write(root, f"queries/{cls}/q{i}.png", _png(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)))
    return root


def _manifest(out: Path):
    return pq.read_table(out / "manifest.parquet").to_pandas()


def test_sketches_are_ingested_as_their_own_domain(tmp_path):
    root = _tiny(tmp_path / "ds", classes=("a", "b"))
    rng = np.random.default_rng(2)
    _write(root, "sketches/a/k0.png", _png(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)))
    _write(root, "sketches/a/k1.jpg", b"not a jpeg")
    result = ingest.run(str(root), str(tmp_path / "out"), config.DataConfig())
    m = _manifest(tmp_path / "out").set_index("item_id")
    assert m.loc["sketches/a/k0.png", "domain"] == "sketch" and m.loc["queries/a/q0.png", "domain"] == "photo"
    assert result.n_queries == 11 and result.n_rejected == 1
    rejected = pq.read_table(tmp_path / "out" / "rejected.parquet").to_pydict()["reason"]
    assert rejected == ["sketches/a/k1.jpg: the image cannot be decoded (unknown or corrupt image format)"]


def test_a_class_with_only_sketches_and_scenes_is_kept(tmp_path):
    root = _tiny(tmp_path / "ds", classes=("a",))
    _tiny(root, classes=("sk",), photos=False)
    _tiny(root, classes=("lonely",), photos=False)
    _write(root, "sketches/sk/k0.png", _png(np.full((8, 8, 3), 9, np.uint8)))
    ingest.run(str(root), str(tmp_path / "out"), config.DataConfig())
    m = _manifest(tmp_path / "out")
    assert set(m.label) == {"a", "sk"}
    assert set(m[m.label == "sk"].domain) == {domains.SCENE, "sketch"}
    reasons = pq.read_table(tmp_path / "out" / "rejected.parquet").to_pydict()["reason"]
    assert reasons and all(r.endswith("class 'lonely' has no queries or sketches") for r in reasons)


def test_photo_only_splits_are_unchanged(smoke_dataset, smoke_cfg, tmp_path):
    """The smoke benchmark's fingerprint (ids, checksums, labels, splits), re-recorded when the hard query photos
    came in: a change to the split rules or to the item ids must show up here, not go unnoticed."""
    result = ingest.run(str(smoke_dataset), str(tmp_path / "m"), smoke_cfg.data, smoke_cfg.seed)
    assert result.fingerprint == "83ae39f0ed4194ba"
    assert result.n_unseen_classes == 0 and result.metrics()["n_unseen_classes"] == 0


# ---------------------------------------------------------------- zero-shot splits


def _zero_shot(**kw) -> config.DataConfig:
    return config.DataConfig(split="zero_shot", **kw)


def _check_zero_shot(m, unseen: set[str]) -> None:
    assert set(m[m.class_split == domains.UNSEEN].label) == unseen
    assert set(m[m.split.isin(["train", "val"])].label).isdisjoint(unseen)  # never trained or tuned on
    assert (m[m.label.isin(unseen)].split == "test").all()
    for _, group in m[~m.label.isin(unseen)].groupby(["label", "domain"]):
        assert set(group.class_split) == {domains.SEEN} and set(group.split) == {"train", "val", "test"}


def test_zero_shot_by_names(tmp_path):
    root = _tiny(tmp_path / "ds")
    (root / "splits.csv").write_text("path,split\nscenes/b/s0.glb,train\n")  # ignored for an unseen class
    result = ingest.run(str(root), str(tmp_path / "out"), _zero_shot(unseen_classes=("b", "d")))
    _check_zero_shot(_manifest(tmp_path / "out"), {"b", "d"})
    assert result.n_unseen_classes == 2 and result.metrics()["n_unseen_classes"] == 2


def test_zero_shot_by_table(tmp_path):
    root = _tiny(tmp_path / "ds")
    (root / "class_splits.csv").write_text("class,split\na,seen\nb,seen\nc,unseen\nd,seen\nextra,unseen\n")
    ingest.run(str(root), str(tmp_path / "out"), _zero_shot())
    _check_zero_shot(_manifest(tmp_path / "out"), {"c"})


def test_zero_shot_by_fraction_is_seeded_and_leaves_seen_splits_as_in_items_mode(tmp_path):
    root = _tiny(tmp_path / "ds")
    runs = {name: ingest.run(str(root), str(tmp_path / name), cfg, seed) for name, cfg, seed in (
        ("a", _zero_shot(unseen_fraction=0.5), 7), ("b", _zero_shot(unseen_fraction=0.5), 7), ("items", config.DataConfig(), 7))}  # fmt: skip
    a, b, items = (_manifest(tmp_path / name) for name in runs)
    unseen = set(a[a.class_split == domains.UNSEEN].label)
    assert len(unseen) == 2 and runs["a"].n_unseen_classes == 2
    _check_zero_shot(a, unseen)
    assert runs["a"].fingerprint == runs["b"].fingerprint
    seen_rows = lambda m: m[~m.label.isin(unseen)].set_index("item_id").split.sort_index()  # noqa: E731
    assert seen_rows(a).equals(seen_rows(items))
    # the draw depends on the seed and the class names only
    draws = {frozenset(ingest.unseen_classes(["d", "c", "b", "a"], _zero_shot(), str(root), s)) for s in range(20)}
    assert ingest.unseen_classes(["a", "b", "c", "d"], _zero_shot(), str(root), 3) == ingest.unseen_classes(["d", "b", "c", "a"], _zero_shot(), str(root), 3)
    assert len(draws) > 1 and all(len(d) == 1 for d in draws)  # round(0.25 * 4) = 1


@pytest.mark.parametrize("fraction, n_classes, expected", [(0.01, 4, 1), (0.99, 4, 3), (0.5, 2, 1), (0.25, 10, 2)])
def test_zero_shot_fraction_keeps_both_sides(tmp_path, fraction, n_classes, expected):
    classes = [f"c{i}" for i in range(n_classes)]
    assert len(ingest.unseen_classes(classes, _zero_shot(unseen_fraction=fraction), str(tmp_path))) == expected


@pytest.mark.parametrize(
    "table, cfg, message",
    [
        (None, _zero_shot(unseen_classes=("b", "zebra")), r"^data.unseen_classes names 'zebra', not a class of the dataset \(classes: a, b, c, d\)$"),
        (None, _zero_shot(unseen_classes=("a", "b", "c", "d")), r"^data.unseen_classes makes every class unseen; leave at least one seen class to train on$"),
        ("klass,split\na,seen\n", _zero_shot(), r"class_splits.csv must have the header 'class,split'$"),
        ("class,split\na,seen\nb,holdout\n", _zero_shot(), r"class_splits.csv line 3: split must be one of seen, unseen, got 'holdout'$"),
        ("class,split\na,seen\n,unseen\n", _zero_shot(), r"class_splits.csv line 3: the class name is empty$"),
        ("class,split\na,seen\nb,unseen\na,unseen\n", _zero_shot(), r"class_splits.csv line 4: class 'a' is listed again \(first on line 2\)$"),
        ("class,split\na,seen\nb,unseen\n", _zero_shot(), r"class_splits.csv has no row for the classes 'c', 'd'$"),
        ("class,split\na,seen\nb,seen\nc,seen\nd,seen\n", _zero_shot(), r"class_splits.csv marks no class of the dataset unseen$"),
    ],
)
def test_bad_zero_shot_choices_are_one_sentence(tmp_path, table, cfg, message):
    root = _tiny(tmp_path / "ds", n=3)
    if table is not None:
        (root / "class_splits.csv").write_text(table)
    with pytest.raises(DataError, match=message):
        ingest.run(str(root), str(tmp_path / "out"), cfg)
    assert not (tmp_path / "out" / "manifest.parquet").exists()


def test_zero_shot_needs_two_classes(tmp_path):
    with pytest.raises(DataError, match="^a zero-shot split needs at least two classes, the dataset has 1$"):
        ingest.run(str(_tiny(tmp_path / "ds", classes=("a",))), str(tmp_path / "out"), _zero_shot())


# ---------------------------------------------------------------- semantics.csv


def test_semantics_csv_becomes_semantics_parquet(tmp_path):
    root = _tiny(tmp_path / "ds", classes=("b", "a"), n=3)
    (root / "semantics.csv").write_text("\ufeffclass,indoor,size\nb, 1 ,0.25\n\nzebra,3,4\na,0,-1.5e2\n")  # BOM, spaces, a blank line, an extra class
    ingest.run(str(root), str(tmp_path / "out"), config.DataConfig())
    table = pq.read_table(tmp_path / "out" / "semantics.parquet")
    assert table.schema.field("class").type == "string" and str(table.schema.field("vector").type) == "list<element: float>"
    assert table.column("class").to_pylist() == ["a", "b"]  # the dataset's classes, sorted
    sem = ingest.read_semantics(tmp_path / "out")
    assert set(sem) == {"a", "b"} and sem["a"].dtype == np.float32
    np.testing.assert_array_equal(sem["a"], [0.0, -150.0])
    np.testing.assert_array_equal(sem["b"], [1.0, 0.25])


def test_without_semantics_csv_there_is_no_semantics_parquet(tmp_path):
    ingest.run(str(_tiny(tmp_path / "ds", n=3)), str(tmp_path / "out"), config.DataConfig())
    assert not (tmp_path / "out" / "semantics.parquet").exists()
    assert ingest.read_semantics(tmp_path / "out") is None


@pytest.mark.parametrize(
    "text, message",
    [
        ("", r"line 1: the header must start with 'class' \(class,v1,...,vn\), got nothing$"),
        ("name,x\na,1\nb,2\n", r"line 1: the header must start with 'class' \(class,v1,...,vn\), got unknown column 'name'$"),
        ("class\na\nb\n", r"line 1: the header has no value column after 'class' \(class,v1,...,vn\)$"),
        ("class,x,\na,1,2\nb,2,3\n", r"line 1: column 3 of the header has no name$"),
        ("class,x,x\na,1,2\nb,2,3\n", r"line 1: column 'x' appears twice in the header$"),
        ("class,x,y\na,1,2\nb,2\n", r"line 3: 2 fields, but the header has 3$"),
        ("class,x,y\na,1,2\nb,2,3,4\n", r"line 3: 4 fields, but the header has 3$"),
        ("class,x,y\na,1,2\nb,2,big\n", r"line 3: column 'y' must be a number, got 'big'$"),
        ("class,x,y\na,1,\nb,2,3\n", r"line 2: column 'y' must be a number, got ''$"),
        ("class,x,y\na,nan,2\nb,2,3\n", r"line 2: column 'x' must be a finite float32 number, got 'nan'$"),
        ("class,x,y\na,1,-inf\nb,2,3\n", r"line 2: column 'y' must be a finite float32 number, got '-inf'$"),
        ("class,x,y\na,1,1e39\nb,2,3\n", r"line 2: column 'y' must be a finite float32 number, got '1e39'$"),
        ("class,x,y\na,1,2\nb,2,3\na,3,4\n", r"line 4: class 'a' is listed again \(first on line 2\)$"),
        ("class,x,y\na,1,2\n,2,3\n", r"line 3: the class name is empty$"),
        ("class,x,y\na,1,2\n", r"semantics.csv has no row for the class 'b'$"),
    ],
)
def test_bad_semantics_csv_is_one_sentence_naming_file_and_line(tmp_path, text, message):
    root = _tiny(tmp_path / "ds", classes=("a", "b"), n=3)
    (root / "semantics.csv").write_text(text)
    with pytest.raises(DataError, match=message) as e:
        ingest.run(str(root), str(tmp_path / "out"), config.DataConfig())
    assert str(e.value).startswith(str(root.resolve() / "semantics.csv")) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()

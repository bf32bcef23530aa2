"""Ingest: every kind of bad input becomes a rejects row with a reason, and the good items go through."""

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import trimesh
from PIL import Image

from scenesearch import config, storage
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
        "stray.bin": "outside scenes/ and queries/",
    }
    assert set(reasons) == set(expected)
    for rel, fragment in expected.items():
        assert fragment in reasons[rel], (rel, reasons[rel])
        assert "\n" not in reasons[rel]
    assert reasons["scenes/red/garbage.obj"].startswith("scenes/red/garbage.obj:")

    assert sorted(manifest.columns) == sorted(["item_id", "label", "domain", "split", "uri", "sha256"])
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

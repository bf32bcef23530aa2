"""Ingest against hostile datasets: every broken file gets a one-line reason, none reaches the manifest.

The corpus is built by bench/hostile_corpus.py (`build`), smaller here; the unit cases pin each
family: meshes (header counts that lie, truncation at every cut point, bad OBJ indices,
degenerate faces), images (truncation, headers that promise more rows than the data holds,
the pixel budget, broken EXIF), names, links and special files, and the peak memory of ingest.
"""

import importlib.util
import io
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import trimesh
from PIL import Image, ImageFile, ImageOps

from scenesearch import config, storage
from scenesearch.data import ingest
from scenesearch.errors import ConfigError, ItemError
from scenesearch.io import decode_image
from scenesearch.render.mesh import load_mesh

_spec = importlib.util.spec_from_file_location("hostile_corpus", Path(__file__).parents[3] / "bench" / "hostile_corpus.py")
hc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hc)

# An OBJ has no counts: one cut right after a line break is a valid, shorter OBJ.
UNDETECTABLE = {"truncated_obj_at_line_break"}


def _reject(fn, *args, **kw) -> str:
    with pytest.raises(ItemError) as e:
        fn(*args, **kw)
    reason = str(e.value)
    assert "\n" not in reason and "\r" not in reason
    return reason


# ------------------------------------------------------------------ the corpus, end to end


def test_hostile_corpus_rejects_every_broken_file_with_a_one_line_reason(tmp_path):
    root, out = tmp_path / "ds", tmp_path / "out"
    expect = hc.build(root, cuts=6, big_side=0)
    ingest.run(str(root), str(out), config.DataConfig())
    table = hc.score(root, out, expect)
    for family, row in table.items():
        assert row["silent"] == 0, family
        assert row["good_lost"] == 0, family
        if family not in UNDETECTABLE:
            assert row["wrongly_kept"] == 0, family
            assert row["rejected"] == row["tried"] - row["good_kept"] - row["good_lost"], family
    reasons = {Path(r["uri"]).name: r["reason"] for r in pq.read_table(out / "rejected.parquet").to_pylist()}
    for reason in reasons.values():
        assert "\n" not in reason and "\r" not in reason and reason.isprintable(), reason
    assert "8000x8000" in reasons["bomb_budget.png"] and "data.max_image_pixels" in reasons["bomb_budget.png"]
    assert "queries/alpha/link_outside.png is a symbolic link to a file outside" in reasons["link_outside.png"]


# ------------------------------------------------------------------ meshes


@pytest.mark.parametrize("ext,kw", [("ply", {"encoding": "ascii"}), ("ply", {"encoding": "binary"}), ("off", {}), ("obj", {}), ("stl", {}), ("glb", {})])
def test_a_mesh_cut_anywhere_is_rejected(ext, kw):
    data = hc._mesh_bytes(ext, (1, 2, 3), **kw)
    load_mesh(f"x.{ext}", data)  # whole: fine
    step = max(1, len(data) // 120)
    for cut in range(1, len(data), step):
        if ext == "obj" and data[cut - 1 : cut] == b"\n":
            continue  # a shorter valid OBJ (see UNDETECTABLE)
        _reject(load_mesh, f"x.{ext}", data[:cut])


@pytest.mark.parametrize("old,new", [(b"element vertex 8", b"element vertex 7"), (b"element vertex 8", b"element vertex 9"), (b"element face 12", b"element face 11"), (b"element face 12", b"element face 13")])
def test_an_ascii_ply_whose_header_lies_about_counts_is_rejected(old, new):
    data = hc._mesh_bytes("ply", encoding="ascii").replace(old, new)
    assert "header declares" in _reject(load_mesh, "lie.ply", data)


@pytest.mark.parametrize("counts", [b"7 12 0", b"9 12 0", b"8 11 0", b"8 13 0"])
def test_an_off_whose_header_lies_about_counts_is_rejected(counts):
    data = hc._mesh_bytes("off").replace(b"8 12 0", counts)
    assert "header declares" in _reject(load_mesh, "lie.off", data)


@pytest.mark.parametrize(
    "face,problem",
    [(b"f 0 1 2", "index 0"), (b"f 1 2 9", "beyond"), (b"f -1 -2 -9", "before the first vertex"), (b"f 1 -2 3", "mixes"), (b"f 1/1 2/2 -1/3", "mixes")],
)
def test_obj_faces_with_bad_indices_are_rejected_not_wrapped(face, problem):
    verts = b"v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\n"
    # trimesh itself wraps index 0 to the last vertex and accepts mixed faces
    reason = _reject(load_mesh, "bad.obj", verts + face + b"\n")
    assert problem in reason and "bad.obj line 5" in reason


def test_obj_relative_indices_used_consistently_pass():
    mesh = load_mesh("rel.obj", b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf -3 -2 -1\nv 0 0 1\nf -4 -3 -1\n")
    assert mesh.n_triangles == 2


@pytest.mark.parametrize("ext", ["obj", "ply", "off", "stl", "glb"])
def test_a_mesh_whose_faces_all_have_zero_area_is_rejected(ext):
    flat = trimesh.Trimesh(np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0], [0, 1, 0]], float), [[0, 1, 2], [0, 0, 3]], process=False)
    data = flat.export(file_type=ext)
    assert "degenerate (zero area)" in _reject(load_mesh, f"flat.{ext}", data.encode() if isinstance(data, str) else data)


# ------------------------------------------------------------------ images


@pytest.mark.parametrize("fmt,kw", [("PNG", {}), ("PNG", {"interlace": 1}), ("JPEG", {}), ("JPEG", {"progressive": True})])
def test_an_image_cut_anywhere_is_rejected(fmt, kw, monkeypatch):
    data = hc._encode(hc._image(3, 32), fmt, **kw)
    decode_image("x", data)
    for cut in range(1, len(data), max(1, len(data) // 150)):
        _reject(decode_image, "x", data[:cut])
    # a library that switches PIL to padding cut images does not fool it
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    _reject(decode_image, "x", data[: len(data) * 2 // 3])


@pytest.mark.parametrize("size", [(48, 96), (48, 49), (96, 48)])
def test_a_header_that_promises_more_pixels_than_the_data_holds_is_rejected(size):
    png, jpeg = hc._encode(hc._image(4), "PNG"), hc._encode(hc._image(5), "JPEG")
    reason = _reject(decode_image, "tall.png", hc._png_with_size(png, *size))
    # PIL pads a taller image; a wider one usually breaks its row filters first
    assert ("ends early" if size[0] == 48 else "tall.png") in reason
    # libjpeg makes the missing blocks up (grey or padding) and PIL keeps them
    assert "ends before its last rows" in _reject(decode_image, "tall.jpg", hc._jpeg_with_size(jpeg, *size))


def test_the_pixel_budget_is_checked_from_the_header_before_decoding(monkeypatch):
    png = hc._encode(hc._image(6), "PNG")
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded before the size check"))
    reason = _reject(decode_image, "q/a/big.png", hc._png_with_size(png, 9000, 5000), max_pixels=40_000_000)
    assert "q/a/big.png" in reason and "9000x5000" in reason and "data.max_image_pixels" in reason


def test_a_header_bomb_is_rejected_without_a_budget():
    assert "cannot be decoded" in _reject(decode_image, "bomb.png", hc._png_with_size(hc._encode(hc._image(7), "PNG"), 100_000, 100_000))


def test_max_image_pixels_is_validated():
    assert config.DataConfig().max_image_pixels == 40_000_000
    with pytest.raises(ConfigError, match=r"data\.max_image_pixels must be >= 1"):
        config.DataConfig(max_image_pixels=0).validate()


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_an_image_with_broken_exif_is_kept_unrotated(monkeypatch):
    data = hc._broken_exif_jpeg(0)
    assert decode_image("exif.jpg", data).shape == (48, 48, 3)

    def broken(im, *a, **k):
        raise SyntaxError("corrupt EXIF")

    monkeypatch.setattr(ImageOps, "exif_transpose", broken)
    assert decode_image("exif.jpg", data).shape == (48, 48, 3)


def test_16_bit_grey_scales_like_before():
    grey = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, format="PNG")
    got = decode_image("g.png", buf.getvalue())[..., 0]
    assert np.array_equal(got, (grey.astype(np.float64) * 255 / 65535).round().astype(np.uint8))


# ------------------------------------------------------------------ names, links, special files


@pytest.mark.parametrize("bad", ["tab\tx", "new\nline", "del\x7fx", "cr\rx", "sep\u2028x", "pct%20", "hash#1", "what?", "back\\slash", 'dq"x', "sq'x"])
def test_names_that_break_a_reason_or_a_uri_are_rejected_on_one_line(tmp_path, bad):
    root = tmp_path / "ds"
    for cls in ("a",):
        (root / "scenes" / cls).mkdir(parents=True)
        (root / "scenes" / cls / "s.glb").write_bytes(hc._mesh_bytes("glb"))
        (root / "queries" / cls).mkdir(parents=True)
        (root / "queries" / cls / "q.png").write_bytes(hc._encode(hc._image(1), "PNG"))
        (root / "queries" / cls / f"{bad}.png").write_bytes(hc._encode(hc._image(2), "PNG"))
    rows, rejected = ingest.scan(str(root))
    assert [r["item_id"] for r in rows] == ["queries/a/q.png", "scenes/a/s.glb"]
    [(uri, reason)] = rejected
    assert reason.isprintable() and ascii(f"queries/a/{bad}.png") in reason


def test_spaces_and_non_ascii_keep_todays_rule(tmp_path):
    assert ingest._name_problem("queries/a/caf\u00e9 x.png") is None
    assert not ingest._clean_name("queries/a/caf\u00e9 x.png")


def _alarm(seconds: int):
    def fail(*_):
        raise TimeoutError("the listing blocked (a FIFO was opened?)")

    signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)


def test_list_dataset_follows_only_links_to_regular_files_inside_the_root(tmp_path):
    root = tmp_path / "r"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f.png").write_bytes(b"x")
    (tmp_path / "outside.png").write_bytes(b"y")
    os.symlink("f.png", root / "d" / "ok.png")
    os.symlink("nowhere", root / "d" / "dangling.png")
    os.symlink("loop.png", root / "d" / "loop.png")
    os.symlink(str(tmp_path / "outside.png"), root / "d" / "out.png")
    os.symlink(".", root / "d" / "dir.png")
    os.mkfifo(root / "d" / "fifo.png")
    os.symlink("fifo.png", root / "d" / "to_fifo.png")
    (root / "d" / "empty.png").mkdir()
    sock = root / "d" / "s.png"
    if len(str(sock)) < 100:
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(sock))
        s.close()
    _alarm(10)
    try:
        files, skipped = storage.list_dataset(root)
    finally:
        signal.alarm(0)
    assert files == ["d/f.png", "d/ok.png"]
    why = dict(skipped)
    assert "dangling" in why["d/dangling.png"] and "looping" in why["d/loop.png"]
    assert "outside the dataset root" in why["d/out.png"] and "to a folder" in why["d/dir.png"]
    assert "FIFO" in why["d/fifo.png"] and "FIFO" in why["d/to_fifo.png"] and "empty folder" in why["d/empty.png"]
    if sock.exists():
        assert "socket" in why["d/s.png"]
    assert {"d/f.png", "d/ok.png"} <= set(storage.list_files(root))  # list_files itself is unchanged for its other callers


# ------------------------------------------------------------------ memory


_BASELINE = "import resource, sys; from scenesearch.config import DataConfig; from scenesearch.data import ingest; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
_INGEST = (
    "import resource, sys; from scenesearch.config import DataConfig; from scenesearch.data import ingest; "
    "ingest.run(sys.argv[1], sys.argv[2], DataConfig()); print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
)


@pytest.mark.slow
def test_ingest_of_hostile_images_stays_below_1_gib_peak_rss(tmp_path):
    root, out = tmp_path / "ds", tmp_path / "out"
    expect = hc.build(root, cuts=2, big_side=6000, specials=False)
    base = int(subprocess.run(hc.clean_child([sys.executable, "-c", _BASELINE]), capture_output=True, text=True, check=True).stdout.split()[-1])
    done = subprocess.run(hc.clean_child([sys.executable, "-c", _INGEST, str(root), str(out)]), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    peak = int(done.stdout.split()[-1])  # KiB on Linux
    assert (peak - base) * 1024 < 1 << 30, f"ingest peaked {(peak - base) / 1024:.0f} MiB above the interpreter"
    table = hc.score(root, out, expect)
    assert table["large_legal"]["good_kept"] == 2 and table["pixel_bomb"]["wrongly_kept"] == 0

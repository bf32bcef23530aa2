"""A hostile dataset for ingest: files broken the way real files break, beside good ones.

Builds, in the documented layout (scenes/, queries/ per class), truncations at many cut points
per format, header counts that lie, bad OBJ indices, degenerate faces, bad names, links,
special files, pixel bombs and broken EXIF, plus good files; runs `scenesearch.data.ingest.run`
on it in a child process and prints, per family, the files tried, rejected with a reason,
wrongly kept (should be 0) and good files kept, and the child's peak RSS.

    python bench/hostile_corpus.py [--cuts 24] [--big-side 6000] [--keep DIR]

The corpus builders are plain functions (`build`) so that tests can make a smaller corpus.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import zlib
from collections import defaultdict
from pathlib import Path

import numpy as np

REJECT, KEEP = "reject", "keep"
CLASSES = ("alpha", "beta")


def _box(size=(1.0, 2.0, 3.0)):
    import trimesh

    m = trimesh.creation.box(size)
    m.visual.face_colors = (200, 60, 60, 255)
    return m


def _mesh_bytes(ext: str, size=(1.0, 2.0, 3.0), **kw) -> bytes:
    data = _box(size).export(file_type=ext, **kw)
    return data.encode() if isinstance(data, str) else data


def _image(seed: int, side: int = 48) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:side, :side]
    img = np.stack([(x * 5 + seed) % 256, (y * 3) % 256, (x + y) % 256], -1).astype(np.uint8)
    return np.clip(img.astype(int) + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)


def _encode(arr: np.ndarray, fmt: str, **kw) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png_with_size(png: bytes, width: int, height: int) -> bytes:
    """The PNG with its IHDR dimensions replaced (CRC fixed): a header that lies."""
    body = b"IHDR" + struct.pack(">II", width, height) + png[24:29]
    return png[:12] + body + struct.pack(">I", zlib.crc32(body)) + png[33:]


def _jpeg_with_size(jpeg: bytes, width: int, height: int) -> bytes:
    i = jpeg.find(b"\xff\xc0")
    return jpeg[: i + 5] + struct.pack(">HH", height, width) + jpeg[i + 9 :]


def _cuts(n: int, count: int) -> list[int]:
    """`count` cut points spread evenly over 1..n-1."""
    return sorted({int(round(c)) for c in np.linspace(1, n - 1, count)})


def _broken_exif_jpeg(seed: int) -> bytes:
    """A good JPEG whose EXIF block is corrupt: an IFD entry whose offset points far past the block."""
    from PIL import Image

    im = Image.fromarray(_image(seed))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate
    good = io.BytesIO()
    im.save(good, format="JPEG", exif=exif.tobytes())
    data = bytearray(good.getvalue())
    at = data.find(b"Exif\x00\x00")
    # Corrupt the TIFF header: the first IFD offset now points beyond the segment.
    data[at + 10 : at + 14] = b"\xff\xff\xff\x7f" if data[at + 6 : at + 8] == b"MM" else b"\x7f\xff\xff\xff"
    return bytes(data)


def build(root: Path, cuts: int = 24, big_side: int = 6000, specials: bool = True) -> dict[str, tuple[str, str]]:
    """Write the corpus under `root`.

    Args:
        root: the dataset root to create.
        cuts: cut points per truncated format.
        big_side: side of the large-but-legal images (a 16-bit PNG and an RGB JPEG); 0 leaves them out.
        specials: also make links, FIFOs and sockets.

    Returns:
        {relative path: (family, expected "reject" or "keep")}.
    """
    expect: dict[str, tuple[str, str]] = {}

    def put(rel: str, data: bytes, family: str, want: str) -> None:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        expect[rel] = (family, want)

    # Good files: both classes get scenes of every format and queries, so they are kept.
    n = 0
    for ci, cls in enumerate(CLASSES):
        for ext in ("glb", "obj", "ply", "off", "stl"):
            put(f"scenes/{cls}/good_{ext}.{ext}", _mesh_bytes(ext, (1 + ci, 2, 3 + n % 3)), "good", KEEP)
            n += 1
        put(f"scenes/{cls}/good_ascii.ply", _mesh_bytes("ply", (2 + ci, 1, 1), encoding="ascii"), "good", KEEP)
        put(f"scenes/{cls}/good_relative.obj", b"v 0 0 0\nv 1 0 0\nv 0 1 %d\nf -3 -2 -1\nv 0 0 1\nf -4 -3 -1\n" % (ci + 1), "good", KEEP)
        for q in range(3):
            put(f"queries/{cls}/good_{q}.png", _encode(_image(10 * ci + q), "PNG"), "good", KEEP)
            put(f"queries/{cls}/good_{q}.jpg", _encode(_image(10 * ci + q + 5), "JPEG", quality=90), "good", KEEP)
        put(f"queries/{cls}/exif_broken.jpg", _broken_exif_jpeg(ci), "broken_exif", KEEP)
    cls = CLASSES[0]

    # Truncations at many cut points per format.
    sources = {
        "ply_ascii": ("ply", _mesh_bytes("ply", (1, 1, 2), encoding="ascii")),
        "ply_binary": ("ply", _mesh_bytes("ply", (1, 1, 3), encoding="binary")),
        "off": ("off", _mesh_bytes("off", (1, 2, 2))),
        "obj": ("obj", _mesh_bytes("obj", (2, 2, 1))),
        "stl": ("stl", _mesh_bytes("stl", (3, 1, 1))),
        "glb": ("glb", _mesh_bytes("glb", (3, 2, 1))),
        "png": ("png", _encode(_image(99), "PNG")),
        "png_interlaced": ("png", _encode(_image(98), "PNG", interlace=1)),
        "jpeg": ("jpg", _encode(_image(97), "JPEG", quality=92)),
        "jpeg_progressive": ("jpg", _encode(_image(96), "JPEG", progressive=True)),
    }
    for kind, (ext, data) in sources.items():
        folder = "scenes" if ext in ("ply", "off", "obj", "stl", "glb") else "queries"
        for c in _cuts(len(data), cuts):
            family = f"truncated_{kind}"
            if kind == "obj" and data[c - 1 : c] == b"\n":
                family = "truncated_obj_at_line_break"  # a shorter, valid OBJ: no count to contradict
            put(f"{folder}/{cls}/cut_{kind}_{c}.{ext}", data[:c], family, REJECT)

    # Header counts that lie.
    ply = _mesh_bytes("ply", (1, 3, 1), encoding="ascii")
    off = _mesh_bytes("off", (1, 3, 2))
    for d in (-3, -1, 1, 4):
        put(f"scenes/{cls}/lie_v{d}.ply", ply.replace(b"element vertex 8", b"element vertex %d" % (8 + d)), "count_lie_ply", REJECT)
        put(f"scenes/{cls}/lie_f{d}.ply", ply.replace(b"element face 12", b"element face %d" % (12 + d)), "count_lie_ply", REJECT)
        put(f"scenes/{cls}/lie_v{d}.off", off.replace(b"8 12 0", b"%d 12 0" % (8 + d)), "count_lie_off", REJECT)
        put(f"scenes/{cls}/lie_f{d}.off", off.replace(b"8 12 0", b"8 %d 0" % (12 + d)), "count_lie_off", REJECT)

    # OBJ indices trimesh wraps or drops.
    verts = b"v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\n"
    for i, face in enumerate((b"f 0 1 2", b"f 1 2 0", b"f 1 2 5", b"f 1 2 99", b"f -1 -2 -5", b"f 1 -2 3", b"f -1 2 3", b"f 1/1 2/2 -1/3")):
        put(f"scenes/{cls}/index_{i}.obj", verts + b"f 1 2 3\n" + face + b"\n", "obj_bad_index", REJECT)

    # Every face degenerate (zero area), per format.
    import trimesh

    flat = trimesh.Trimesh(np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0], [0, 1, 0]], float), [[0, 1, 2], [0, 0, 3], [1, 3, 3]], process=False)
    for ext in ("obj", "ply", "off", "stl", "glb"):
        data = flat.export(file_type=ext)
        put(f"scenes/{cls}/degenerate.{ext}", data.encode() if isinstance(data, str) else data, "degenerate_faces", REJECT)

    # Image headers that promise more than the data holds, and bombs within the header.
    png, jpeg = _encode(_image(50), "PNG"), _encode(_image(51), "JPEG")
    for i, (w, h) in enumerate(((48, 96), (96, 48), (48, 49))):
        put(f"queries/{cls}/tall_{i}.png", _png_with_size(png, w, h), "header_lies_png", REJECT)
        put(f"queries/{cls}/tall_{i}.jpg", _jpeg_with_size(jpeg, w, h), "header_lies_jpeg", REJECT)
    put(f"queries/{cls}/bomb.png", _png_with_size(png, 100_000, 100_000), "pixel_bomb", REJECT)
    put(f"queries/{cls}/bomb_budget.png", _png_with_size(png, 8000, 8000), "pixel_bomb", REJECT)
    put(f"queries/{cls}/bomb.jpg", _jpeg_with_size(jpeg, 65_000, 65_000), "pixel_bomb", REJECT)
    if big_side:
        from PIL import Image

        grey = np.tile(np.arange(big_side, dtype=np.uint16) * 7, (big_side, 1))
        buf = io.BytesIO()
        Image.fromarray(grey).save(buf, format="PNG", compress_level=1)
        put(f"queries/{CLASSES[1]}/large_16bit.png", buf.getvalue(), "large_legal", KEEP)
        rgb = np.zeros((big_side, big_side, 3), np.uint8)
        rgb[:, :, 0] = np.arange(big_side) % 256
        put(f"queries/{CLASSES[1]}/large.jpg", _encode(rgb, "JPEG", quality=70), "large_legal", KEEP)
        wide = _png_with_size(png, big_side * 2, big_side)  # 72 MP at 6000: above the budget, below PIL's limit
        put(f"queries/{cls}/bomb_wide.png", wide, "pixel_bomb", REJECT)

    # Names that would break a one-line reason or a URI.
    for i, bad in enumerate(("tab\there", "new\nline", "del\x7f", "cr\rx", "esc\x1b[31m", "sep\u2028x", "pct%20", "hash#1", "what?", "back\\slash", 'dq"x', "sq'x")):
        put(f"queries/{cls}/{bad}_{i}.png", _encode(_image(200 + i), "PNG"), "bad_names", REJECT)

    if specials:
        outside = root.parent / f"{root.name}-outside.png"
        outside.write_bytes(_encode(_image(300), "PNG"))
        store = root / "extra" / "real.png"
        put("extra/real.png", _encode(_image(301), "PNG"), "links", REJECT)  # outside the folders
        links = {
            f"queries/{cls}/link_ok.png": ("../../extra/real.png", KEEP),
            f"queries/{cls}/link_dangling.png": ("nowhere.png", REJECT),
            f"queries/{cls}/link_loop.png": ("link_loop.png", REJECT),
            f"queries/{cls}/link_outside.png": (str(outside), REJECT),
            f"queries/{cls}/link_dir.png": ("..", REJECT),
            f"queries/{cls}/link_fifo.png": ("fifo.png", REJECT),
            "scenes/linked_folder": (f"{CLASSES[1]}", REJECT),
        }
        assert store.exists()
        for rel, (target, want) in links.items():
            os.symlink(target, root / rel)
            expect[rel] = ("links", want)
        os.mkfifo(root / f"queries/{cls}/fifo.png")
        expect[f"queries/{cls}/fifo.png"] = ("special_files", REJECT)
        (root / f"queries/{cls}/folder.png").mkdir()
        expect[f"queries/{cls}/folder.png"] = ("special_files", REJECT)
        (root / f"scenes/{cls}/folder.glb").mkdir()
        put(f"scenes/{cls}/folder.glb/inner.glb", _mesh_bytes("glb", (5, 1, 1)), "special_files", REJECT)
        sock_path = root / f"queries/{cls}/sock.png"
        if len(str(sock_path)) < 100:  # AF_UNIX paths are limited to ~108 bytes
            s = socket.socket(socket.AF_UNIX)
            s.bind(str(sock_path))
            s.close()
            expect[f"queries/{cls}/sock.png"] = ("special_files", REJECT)
    return expect


_CHILD = """
import json, resource, sys
from scenesearch.config import DataConfig
from scenesearch.data import ingest
from scenesearch import storage
import pyarrow.parquet as pq
if sys.argv[1] != "baseline":
    ingest.run(sys.argv[1], sys.argv[2], DataConfig())
print(json.dumps({"maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def clean_child(argv: list[str]) -> list[str]:
    """`argv` run from a small shell that forks it, not straight from this process.

    Linux carries a process's peak RSS across fork and exec into the child's ru_maxrss, so a
    child started from a big parent reports the parent's peak; a child of `sh` starts from sh's.
    """
    return ["sh", "-c", '"$@"; exit $?', "sh", *argv]


def run_ingest(root: Path, out: Path) -> tuple[int, int]:
    """Ingest `root` into `out` in a child process; (peak RSS of the ingest child, of a baseline child that only imports) in KiB."""
    figures = []
    for arg in ("baseline", str(root)):
        done = subprocess.run(clean_child([sys.executable, "-c", _CHILD, arg, str(out)]), capture_output=True, text=True, timeout=600)
        if done.returncode:
            raise RuntimeError(done.stderr[-2000:])
        figures.append(json.loads(done.stdout.strip().splitlines()[-1])["maxrss_kb"])
    return figures[1], figures[0]


def score(root: Path, out: Path, expect: dict[str, tuple[str, str]]) -> dict[str, dict[str, int]]:
    """Per family: tried, rejected (with a one-line reason), wrongly kept, good kept, good lost."""
    import pyarrow.parquet as pq

    kept = {r["item_id"] for r in pq.read_table(out / "manifest.parquet").to_pylist()}
    rejected = {}
    base = str(root.resolve())
    for r in pq.read_table(out / "rejected.parquet").to_pylist():
        rejected[os.path.relpath(r["uri"], base).replace(os.sep, "/")] = r["reason"]
    table: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for rel, (family, want) in sorted(expect.items()):
        row = table[family]
        row["tried"] += 1
        reason = rejected.get(rel)
        if want == REJECT:
            if reason and "\n" not in reason and "\r" not in reason:
                row["rejected"] += 1
            if rel in kept:
                row["wrongly_kept"] += 1
            if not reason and rel not in kept:
                row["silent"] += 1  # neither kept nor given a reason
        else:
            row["good_kept" if rel in kept else "good_lost"] += 1
    return table


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cuts", type=int, default=24, help="cut points per truncated format")
    ap.add_argument("--big-side", type=int, default=6000, help="side of the large legal images (0: none)")
    ap.add_argument("--keep", help="build the corpus in this folder instead of a temporary one")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hc-") as tmp:
        base = Path(args.keep) if args.keep else Path(tmp)
        root, out = base / "ds", base / "out"
        expect = build(root, cuts=args.cuts, big_side=args.big_side)
        peak, baseline = run_ingest(root, out)
        table = score(root, out, expect)
    cols = ("tried", "rejected", "wrongly_kept", "silent", "good_kept", "good_lost")
    print(f"{'family':30s} " + " ".join(f"{c:>12s}" for c in cols))
    for family, row in sorted(table.items()):
        print(f"{family:30s} " + " ".join(f"{row.get(c, 0):12d}" for c in cols))
    total = {c: sum(r.get(c, 0) for r in table.values()) for c in cols}
    print(f"{'TOTAL':30s} " + " ".join(f"{total[c]:12d}" for c in cols))
    print(f"peak RSS of ingest: {peak / 1024:.0f} MiB ({(peak - baseline) / 1024:.0f} MiB above a child that only imports, {baseline / 1024:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

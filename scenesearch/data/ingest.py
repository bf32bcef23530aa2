"""The ingest step: read a dataset in the documented layout, validate every file, split, write the manifest.

The root is a local folder or an ``s3://bucket/prefix`` URI; every file is listed and read through
`scenesearch.storage`, and the manifest's ``uri`` column holds each file's full path or S3 URI.

Layout::

    <root>/scenes/<class>/<name>.<obj|glb|gltf|ply|off|stl|skp>   3D scenes (OBJ's .mtl and textures beside)
    <root>/queries/<class>/<name>.<png|jpg|jpeg>                   query images
    <root>/splits.csv    optional: path,split  (path relative to root; split in train/val/test)
    <root>/classes.txt   optional: one class name per line; other classes are rejected

Outputs ``manifest.parquet`` (item_id, label, domain, split, uri, sha256) and ``rejected.parquet``
(uri, reason). A bad file becomes one rejects row and never stops the good ones.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from scenesearch import storage
from scenesearch.config import DataConfig
from scenesearch.errors import DataError, ItemError
from scenesearch.io import decode_image, write_rejected
from scenesearch.render.mesh import MESH_EXTENSIONS, load_mesh

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
# Files that may sit beside scenes without being scenes: OBJ materials, textures, glTF buffers.
COMPANION_EXTENSIONS = (".mtl", ".png", ".jpg", ".jpeg", ".bin")
SPLITS = ("train", "val", "test")
GENERATED_MARKER = ".scenesearch-generated"  # written by `scenesearch generate` at the root
METADATA_FILES = ("splits.csv", "classes.txt", GENERATED_MARKER)
DOMAINS = {"scenes": "scene", "queries": "query"}

MANIFEST_SCHEMA = pa.schema(
    [("item_id", pa.string()), ("label", pa.string()), ("domain", pa.string()), ("split", pa.string()), ("uri", pa.string()), ("sha256", pa.string())]
)


@dataclass(frozen=True)
class IngestResult:
    n_scenes: int
    n_queries: int
    n_classes: int
    n_rejected: int
    fingerprint: str

    def metrics(self) -> dict[str, float]:
        return {"n_scenes": self.n_scenes, "n_queries": self.n_queries, "n_classes": self.n_classes, "n_rejected": self.n_rejected}


def run(root: str, out_dir: str, cfg: DataConfig, seed: int = 0) -> IngestResult:
    """Scan, validate and split a dataset; write manifest.parquet and rejected.parquet to out_dir.

    Raises:
        DataError: the root is missing, or nothing usable is left.
    """
    rows, rejected = scan(root)
    rows, rejected = _drop_one_sided_classes(rows, rejected)
    if not rows:
        reasons = "; ".join(sorted({r for _, r in rejected})[:3])
        raise DataError(f"no usable scene or query in {root} ({len(rejected)} files rejected{': ' + reasons if reasons else ''})")
    splits_file = storage.join(_root(root), "splits.csv")
    given = read_splits(splits_file) if storage.exists(splits_file) else {}
    assign_splits(rows, cfg.split_fractions, seed, given)
    manifest = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    storage.write_table(Path(out_dir) / "manifest.parquet", manifest)
    write_rejected(Path(out_dir) / "rejected.parquet", rejected)
    return IngestResult(
        n_scenes=sum(r["domain"] == "scene" for r in rows),
        n_queries=sum(r["domain"] == "query" for r in rows),
        n_classes=len({r["label"] for r in rows}),
        n_rejected=len(rejected),
        fingerprint=fingerprint(manifest),
    )


def scan(root: str) -> tuple[list[dict], list[tuple[str, str]]]:
    """Validate every file under root. Returns (good rows without split, [(uri, reason)])."""
    base = _root(root)
    files = storage.list_files(base)
    allowed = _read_classes(storage.join(base, "classes.txt"))
    rows: list[dict] = []
    rejected: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    for rel in files:
        uri = storage.join(base, rel)
        parts = rel.split("/")
        if parts[0] not in DOMAINS:
            if rel not in METADATA_FILES:
                rejected.append((uri, f"{rel} is outside scenes/ and queries/"))
            continue
        domain = DOMAINS[parts[0]]
        ext = Path(rel).suffix.lower()
        if domain == "scene" and ext in COMPANION_EXTENSIONS:
            continue
        try:
            if len(parts) != 3:
                raise ItemError(f"{rel} is not at {parts[0]}/<class>/<file>")
            label = parts[1]
            if not _clean_name(rel):
                raise ItemError(f"{rel} has spaces or non-ASCII letters in its name")
            if allowed is not None and label not in allowed:
                raise ItemError(f"{rel}: class '{label}' is not listed in classes.txt")
            data = _read(uri, rel)
            digest = storage.sha256(data)
            if digest in seen:
                raise ItemError(f"{rel} is a duplicate of {seen[digest]}")
            check_item(rel, data, domain, uri)
        except ItemError as e:
            rejected.append((uri, str(e)))
            continue
        seen[digest] = rel
        rows.append({"item_id": rel, "label": label, "domain": domain, "split": "", "uri": uri, "sha256": digest})
    return rows, rejected


def check_item(rel: str, data: bytes, domain: str, uri: str | None = None) -> None:
    """Load a scene or decode an image fully.

    Raises:
        ItemError: with the reason in one sentence.
    """
    ext = Path(rel).suffix.lower()
    if domain == "scene":
        if ext not in MESH_EXTENSIONS:
            raise ItemError(f"{rel}: unsupported scene extension '{ext}' (supported: {', '.join(MESH_EXTENSIONS)})")
        load_mesh(uri or rel, data, name=rel)
    else:
        if ext not in IMAGE_EXTENSIONS:
            raise ItemError(f"{rel}: unsupported image extension '{ext}' (supported: {', '.join(IMAGE_EXTENSIONS)})")
        decode_image(rel, data)


def _root(root: str) -> str:
    """The dataset root as manifest URIs start: an absolute local path, or a normalised s3:// URI."""
    return storage.join(root) if storage.is_remote(root) else str(Path(root).resolve())


def _read(uri: str, rel: str) -> bytes:
    try:
        return storage.read_bytes(uri)
    except DataError as e:
        if storage.is_remote(uri):
            raise ItemError(f"{rel} cannot be read ({e})") from None
        if not os.access(uri, os.R_OK):
            raise ItemError(f"{rel} is not readable (permission denied)") from None
        raise ItemError(f"{rel} cannot be read") from None


def _clean_name(rel: str) -> bool:
    return rel.isascii() and " " not in rel


def _read_classes(path: str) -> set[str] | None:
    if not storage.exists(path):
        return None
    return {line.strip() for line in _read_text(path).splitlines() if line.strip()}


def _read_text(path: str | os.PathLike) -> str:
    """A metadata file (splits.csv, classes.txt) as text; UTF-8, with or without Excel's byte-order mark.

    Raises:
        DataError: the file is not UTF-8 text.
    """
    try:
        return storage.read_bytes(path).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text") from None


def _drop_one_sided_classes(rows: list[dict], rejected: list) -> tuple[list[dict], list]:
    """A class with scenes but no queries (or the reverse) cannot be evaluated: reject its items."""
    domains = defaultdict(set)
    for r in rows:
        domains[r["label"]].add(r["domain"])
    keep = []
    for r in rows:
        have = domains[r["label"]]
        if len(have) == 2:
            keep.append(r)
        else:
            missing = "queries" if "scene" in have else "scenes"
            rejected.append((r["uri"], f"{r['item_id']}: class '{r['label']}' has no {missing}"))
    return keep, rejected


def read_splits(path: str | os.PathLike) -> dict[str, str]:
    """splits.csv (a local path or an S3 URI) -> {relative path: split}.

    Raises:
        DataError: a bad header or an unknown split name, naming the line.
    """
    out = {}
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    if reader.fieldnames is None or not {"path", "split"} <= set(reader.fieldnames):
        raise DataError(f"{path} must have the header 'path,split'")
    for i, row in enumerate(reader, start=2):
        if row["split"] not in SPLITS:
            raise DataError(f"{path} line {i}: split must be one of {', '.join(SPLITS)}, got '{row['split']}'")
        out[row["path"].strip()] = row["split"]
    return out


def assign_splits(rows: list[dict], fractions: tuple[float, float, float], seed: int, given: dict[str, str]) -> None:
    """Set row['split'] in place: from splits.csv where listed, else a seeded per-(domain, class) split.

    The shuffle of each group is seeded from (seed, domain, class), so adding a class never
    reshuffles another.
    """
    groups = defaultdict(list)
    for r in rows:
        if r["item_id"] in given:
            r["split"] = given[r["item_id"]]
        else:
            groups[(r["domain"], r["label"])].append(r)
    for (domain, label), items in sorted(groups.items()):
        items.sort(key=lambda r: r["item_id"])
        key = int.from_bytes(hashlib.sha256(f"{seed}/{domain}/{label}".encode()).digest()[:8], "little")
        order = np.random.default_rng(key).permutation(len(items))
        counts = split_counts(len(items), fractions)
        names = np.repeat(np.array(SPLITS), counts)
        for rank, idx in enumerate(order):
            items[idx]["split"] = str(names[rank])


def split_counts(n: int, fractions: tuple[float, float, float]) -> list[int]:
    """Items per split: largest-remainder rounding of n * fractions.

    A split with fraction 0 gets nothing; every other split gets at least one item when n allows
    (taken from the largest split), so small classes still have val and test items.
    """
    exact = np.asarray(fractions, dtype=np.float64) * n
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    wanted = np.flatnonzero(np.asarray(fractions) > 0)
    if n >= len(wanted):
        for i in wanted:
            if counts[i] == 0:
                counts[np.argmax(counts)] -= 1
                counts[i] = 1
    return counts.tolist()


def fingerprint(manifest: pa.Table) -> str:
    """A short content hash of the dataset: ids, checksums, labels and splits, order-independent."""
    rows = sorted(zip(*(manifest.column(c).to_pylist() for c in ("item_id", "sha256", "label", "split"))))
    return hashlib.sha256(repr(rows).encode()).hexdigest()[:16]

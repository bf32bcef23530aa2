"""The ingest step: read a dataset in the documented layout, validate every file, split, write the manifest.

The root is a local folder or an ``s3://bucket/prefix`` URI; every file is listed and read through
`scenesearch.storage`, and the manifest's ``uri`` column holds each file's full path or S3 URI.

Layout::

    <root>/scenes/<class>/<name>.<obj|glb|gltf|ply|off|stl|skp>   3D scenes (OBJ's .mtl and textures beside)
    <root>/queries/<class>/<name>.<png|jpg|jpeg>                   query photos (domain photo)
    <root>/sketches/<class>/<name>.<png|jpg|jpeg>                  query sketches (domain sketch)
    <root>/splits.csv        optional: path,split  (path relative to root; split in train/val/test)
    <root>/classes.txt       optional: one class name per line; other classes are rejected
    <root>/class_splits.csv  optional: class,split  (split in seen/unseen; read by zero-shot splits)
    <root>/semantics.csv     optional: class,v1,...,vn  one row of numbers per class (side information)

Only regular files are read: a symbolic link is followed only when it resolves to a regular file
inside the root; other links, FIFOs, sockets, devices and empty folders are rejected with a reason
(`storage.list_dataset`), as are names with control characters or ``% # ? \\ " '`` (reasons show
such names escaped, on one line). Meshes whose text contradicts itself (header counts, OBJ
indices), truncated files, meshes without a face of non-zero area, and images that are cut,
whose header promises more pixels than the data holds, or that exceed ``data.max_image_pixels``
are rejected; an image whose only fault is a broken EXIF block is kept, unrotated.

A class is kept when it has scenes and at least one query image of any domain. With
``data.split = items`` every item is split train/val/test by the fractions, per (domain, class);
with ``zero_shot`` the classes are first divided into seen and unseen (`unseen_classes`): unseen
classes go wholly to test, seen ones are split per item as before.

Outputs ``manifest.parquet`` (item_id, label, domain, split, class_split, uri, sha256),
``rejected.parquet`` (uri, reason) and, when the root has semantics.csv, ``semantics.parquet``
(class, vector: one float32 list per class of the dataset). A bad file becomes one rejects row and
never stops the good ones; a bad metadata file stops the step with one sentence naming its line.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from scenesearch import storage
from scenesearch.config import DataConfig
from scenesearch.domains import FOLDERS, SCENE, SEEN, UNSEEN, is_query
from scenesearch.errors import DataError, ItemError
from scenesearch.io import decode_image, write_rejected
from scenesearch.render.mesh import MESH_EXTENSIONS, load_mesh

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
# Files that may sit beside scenes without being scenes: OBJ materials, textures, glTF buffers.
COMPANION_EXTENSIONS = (".mtl", ".png", ".jpg", ".jpeg", ".bin")
SPLITS = ("train", "val", "test")
CLASS_SPLITS = (SEEN, UNSEEN)
GENERATED_MARKER = ".scenesearch-generated"  # written by `scenesearch generate` at the root
METADATA_FILES = ("splits.csv", "classes.txt", "class_splits.csv", "semantics.csv", GENERATED_MARKER)
# Photos keep the split seed key they had when they were the only query domain ("query"), so
# existing datasets keep their splits; every other domain is keyed by its own name.
_SPLIT_SEED_DOMAIN = {"photo": "query"}

MANIFEST_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("label", pa.string()),
        ("domain", pa.string()),
        ("split", pa.string()),
        ("class_split", pa.string()),
        ("uri", pa.string()),
        ("sha256", pa.string()),
    ]
)
SEMANTICS_SCHEMA = pa.schema([("class", pa.string()), ("vector", pa.list_(pa.float32()))])


@dataclass(frozen=True)
class IngestResult:
    n_scenes: int
    n_queries: int  # query images of every domain
    n_classes: int
    n_rejected: int
    fingerprint: str
    n_unseen_classes: int = 0

    def metrics(self) -> dict[str, float]:
        return {
            "n_scenes": self.n_scenes,
            "n_queries": self.n_queries,
            "n_classes": self.n_classes,
            "n_unseen_classes": self.n_unseen_classes,
            "n_rejected": self.n_rejected,
        }


def run(root: str, out_dir: str, cfg: DataConfig, seed: int = 0) -> IngestResult:
    """Scan, validate and split a dataset; write manifest.parquet, rejected.parquet (and semantics.parquet) to out_dir.

    Args:
        root: the dataset root, a local folder or an s3:// URI.
        out_dir: the output folder (local or s3://).
        cfg: split mode, fractions and, for zero-shot splits, the unseen classes.
        seed: seeds the item splits and the draw of unseen classes.

    Returns:
        Counts and the dataset fingerprint.

    Raises:
        DataError: the root is missing, nothing usable is left, or a metadata file
            (splits.csv, class_splits.csv, semantics.csv) or data.unseen_classes is bad.
    """
    base = _root(root)
    semantics_file = storage.join(base, "semantics.csv")
    semantics = read_semantics_csv(semantics_file) if storage.exists(semantics_file) else None
    rows, rejected = scan(root, max_image_pixels=cfg.max_image_pixels)
    rows, rejected = _drop_one_sided_classes(rows, rejected)
    if not rows:
        reasons = "; ".join(sorted({r for _, r in rejected})[:3])
        raise DataError(f"no usable scene or query in {root} ({len(rejected)} files rejected{': ' + reasons if reasons else ''})")
    classes = sorted({r["label"] for r in rows})
    unseen = unseen_classes(classes, cfg, base, seed) if cfg.split == "zero_shot" else set()
    semantics_rows = semantics_table(semantics, classes, semantics_file) if semantics is not None else None
    splits_file = storage.join(base, "splits.csv")
    given = read_splits(splits_file) if storage.exists(splits_file) else {}
    for r in rows:
        r["class_split"] = UNSEEN if r["label"] in unseen else SEEN
    assign_splits([r for r in rows if r["class_split"] == SEEN], cfg.split_fractions, seed, given)
    for r in rows:
        if r["class_split"] == UNSEEN:
            r["split"] = "test"  # whatever splits.csv says: an unseen class never reaches training
    manifest = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    storage.write_table(Path(out_dir) / "manifest.parquet", manifest)
    write_rejected(Path(out_dir) / "rejected.parquet", rejected)
    if semantics_rows is not None:
        storage.write_table(Path(out_dir) / "semantics.parquet", semantics_rows)
    return IngestResult(
        n_scenes=sum(r["domain"] == SCENE for r in rows),
        n_queries=sum(is_query(r["domain"]) for r in rows),
        n_classes=len(classes),
        n_rejected=len(rejected),
        fingerprint=fingerprint(manifest),
        n_unseen_classes=len(unseen),
    )


def scan(root: str, max_image_pixels: int | None = None) -> tuple[list[dict], list[tuple[str, str]]]:
    """Validate every file under root.

    Entries that are not regular files (links that do not resolve to a file inside the root,
    FIFOs, sockets, empty folders: see `storage.list_dataset`) and files whose names could not
    be shown on one line or in a URI (`_name_problem`) are rejected before anything is read.

    Args:
        root: the dataset root, a local folder or an s3:// URI.
        max_image_pixels: refuse query images above this many pixels (from the header, before decoding).

    Returns:
        (good rows without split and class_split, [(uri, reason)] of the rejected files).

    Raises:
        DataError: the root is missing.
    """
    base = _root(root)
    files, skipped = storage.list_dataset(base)
    allowed = _read_classes(storage.join(base, "classes.txt"))
    rows: list[dict] = []
    rejected: list[tuple[str, str]] = [(storage.join(base, rel), reason) for rel, reason in skipped]
    seen: dict[str, str] = {}
    for rel in files:
        uri = storage.join(base, rel)
        problem = _name_problem(rel)
        if problem:
            rejected.append((uri, problem))
            continue
        parts = rel.split("/")
        if parts[0] not in FOLDERS:
            if rel not in METADATA_FILES:
                rejected.append((uri, f"{rel} is outside the folders {', '.join(f + '/' for f in FOLDERS)}"))
            continue
        domain = FOLDERS[parts[0]]
        ext = Path(rel).suffix.lower()
        if domain == SCENE and ext in COMPANION_EXTENSIONS:
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
            check_item(rel, data, domain, uri, max_image_pixels=max_image_pixels)
        except ItemError as e:
            rejected.append((uri, str(e)))
            continue
        seen[digest] = rel
        rows.append({"item_id": rel, "label": label, "domain": domain, "split": "", "uri": uri, "sha256": digest})
    return rows, rejected


def check_item(rel: str, data: bytes, domain: str, uri: str | None = None, max_image_pixels: int | None = None) -> None:
    """Load a scene or decode a query image (any query domain) fully.

    Args:
        rel: the file's path relative to the root, which reasons name.
        data: the file's bytes.
        domain: the item's domain (scene, or a query domain).
        uri: where the file is, for an OBJ's or glTF's sibling files.
        max_image_pixels: refuse images above this many pixels, from the header.

    Raises:
        ItemError: with the reason in one sentence.
    """
    ext = Path(rel).suffix.lower()
    if domain == SCENE:
        if ext not in MESH_EXTENSIONS:
            raise ItemError(f"{rel}: unsupported scene extension '{ext}' (supported: {', '.join(MESH_EXTENSIONS)})")
        load_mesh(uri or rel, data, name=rel)
    else:
        if ext not in IMAGE_EXTENSIONS:
            raise ItemError(f"{rel}: unsupported image extension '{ext}' (supported: {', '.join(IMAGE_EXTENSIONS)})")
        decode_image(rel, data, max_pixels=max_image_pixels)


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


# Characters that break a URI (%, #, ?), a Windows path (backslash) or a quoted reason.
UNSAFE_NAME_CHARACTERS = "%#?\\\"'"


def _name_problem(rel: str) -> str | None:
    """Why a relative path cannot be ingested, or None: control or other unprintable characters, or URI-breaking ones.

    The reason shows the name escaped (`storage.shown`), so that it stays one line.
    """
    if not rel.isprintable():  # tab, newline, DEL, C1 controls, line and paragraph separators
        return f"{storage.shown(rel)} has control or unprintable characters in its name"
    bad = sorted({c for c in rel if c in UNSAFE_NAME_CHARACTERS})
    if bad:
        return f"{ascii(rel)} has characters that break URIs or quoting in its name ({' '.join(bad)})"
    return None


def _clean_name(rel: str) -> bool:
    return rel.isascii() and " " not in rel


def _read_classes(path: str) -> set[str] | None:
    if not storage.exists(path):
        return None
    return {line.strip() for line in _read_text(path).splitlines() if line.strip()}


def _read_text(path: str | os.PathLike) -> str:
    """A metadata file (splits.csv, classes.txt, ...) as text; UTF-8, with or without Excel's byte-order mark.

    Raises:
        DataError: the file is not UTF-8 text.
    """
    try:
        return storage.read_bytes(path).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text") from None


def _drop_one_sided_classes(rows: list[dict], rejected: list) -> tuple[list[dict], list]:
    """A class without scenes, or without a query image of any domain, cannot be evaluated: reject its items."""
    domains = defaultdict(set)
    for r in rows:
        domains[r["label"]].add(r["domain"])
    keep = []
    for r in rows:
        have = domains[r["label"]]
        if SCENE in have and any(is_query(d) for d in have):
            keep.append(r)
        else:
            missing = "queries or sketches" if SCENE in have else "scenes"
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


def read_class_splits(path: str | os.PathLike) -> dict[str, str]:
    """class_splits.csv (a local path or an S3 URI) -> {class: seen | unseen}.

    Args:
        path: the file; header ``class,split``, one row per class.

    Returns:
        The split of every listed class.

    Raises:
        DataError: a bad header, an empty or repeated class, or a split other than seen/unseen, naming the line.
    """
    out: dict[str, str] = {}
    lines: dict[str, int] = {}
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    if reader.fieldnames is None or not {"class", "split"} <= {f.strip() for f in reader.fieldnames}:
        raise DataError(f"{path} must have the header 'class,split'")
    for row in reader:
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
        cls, split, i = row["class"], row["split"], reader.line_num
        if not cls:
            raise DataError(f"{path} line {i}: the class name is empty")
        if cls in lines:
            raise DataError(f"{path} line {i}: class '{cls}' is listed again (first on line {lines[cls]})")
        if split not in CLASS_SPLITS:
            raise DataError(f"{path} line {i}: split must be one of {', '.join(CLASS_SPLITS)}, got '{split}'")
        out[cls], lines[cls] = split, i
    return out


def unseen_classes(classes: list[str], cfg: DataConfig, root: str, seed: int = 0) -> set[str]:
    """The unseen classes of a zero-shot split.

    From data.unseen_classes by name, else from ``<root>/class_splits.csv``, else a seeded draw of
    round(data.unseen_fraction * n) classes (at least 1, at most n - 1) from the sorted class
    names, seeded from the seed alone, so that file order never changes the draw.

    Args:
        classes: the dataset's classes (those kept after validation).
        cfg: reads data.unseen_classes and data.unseen_fraction.
        root: the dataset root (local or s3://), where class_splits.csv may sit.
        seed: seeds the draw.

    Returns:
        A non-empty set of classes that leaves at least one class seen.

    Raises:
        DataError: fewer than two classes, an unknown class in data.unseen_classes, a bad or
            incomplete class_splits.csv, or a choice that leaves no class seen or none unseen.
    """
    if len(classes) < 2:
        raise DataError(f"a zero-shot split needs at least two classes, the dataset has {len(classes)}")
    table = storage.join(root, "class_splits.csv")
    if cfg.unseen_classes:
        unknown = [c for c in cfg.unseen_classes if c not in classes]
        if unknown:
            raise DataError(f"data.unseen_classes names {', '.join(map(repr, unknown))}, not a class of the dataset (classes: {', '.join(classes)})")
        unseen, source = set(cfg.unseen_classes), "data.unseen_classes"
    elif storage.exists(table):
        given = read_class_splits(table)
        missing = [c for c in classes if c not in given]
        if missing:
            raise DataError(f"{table} has no row for the class{'es' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}")
        unseen, source = {c for c in classes if given[c] == UNSEEN}, str(table)
        if not unseen:
            raise DataError(f"{table} marks no class of the dataset unseen")
    else:
        n = min(max(round(cfg.unseen_fraction * len(classes)), 1), len(classes) - 1)
        key = int.from_bytes(hashlib.sha256(f"{seed}/unseen_classes".encode()).digest()[:8], "little")
        return set(np.random.default_rng(key).choice(sorted(classes), size=n, replace=False).tolist())
    if len(unseen) == len(classes):
        raise DataError(f"{source} makes every class unseen; leave at least one seen class to train on")
    return unseen


def read_semantics_csv(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """semantics.csv (a local path or an S3 URI) -> {class: float32 vector}.

    Args:
        path: the file; header ``class,v1,...,vn`` (any distinct names after ``class``), one row
            of n numbers per class.

    Returns:
        Every listed class's vector, (n,) float32.

    Raises:
        DataError: naming the line: a bad header (first column not 'class', an empty or repeated
            column name), a row with more or fewer fields than the header, an empty or repeated
            class, a value that is not a number, or one that is NaN, infinite or beyond float32.
    """
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))
    header = [h.strip() for h in next(reader, [])]
    if not header or header[0] != "class":
        got = f"unknown column '{header[0]}'" if header else "nothing"
        raise DataError(f"{path} line 1: the header must start with 'class' (class,v1,...,vn), got {got}")
    if len(header) < 2:
        raise DataError(f"{path} line 1: the header has no value column after 'class' (class,v1,...,vn)")
    for k, name in enumerate(header):
        if not name:
            raise DataError(f"{path} line 1: column {k + 1} of the header has no name")
        if name in header[:k]:
            raise DataError(f"{path} line 1: column '{name}' appears twice in the header")
    out: dict[str, np.ndarray] = {}
    lines: dict[str, int] = {}
    limit = float(np.finfo(np.float32).max)
    for row in reader:
        i = reader.line_num
        if not any(v.strip() for v in row):
            continue  # blank line
        if len(row) != len(header):
            raise DataError(f"{path} line {i}: {len(row)} fields, but the header has {len(header)}")
        cls = row[0].strip()
        if not cls:
            raise DataError(f"{path} line {i}: the class name is empty")
        if cls in lines:
            raise DataError(f"{path} line {i}: class '{cls}' is listed again (first on line {lines[cls]})")
        values = []
        for name, text in zip(header[1:], row[1:]):
            try:
                value = float(text)
            except ValueError:
                raise DataError(f"{path} line {i}: column '{name}' must be a number, got '{text.strip()}'") from None
            if not math.isfinite(value) or abs(value) > limit:
                raise DataError(f"{path} line {i}: column '{name}' must be a finite float32 number, got '{text.strip()}'")
            values.append(value)
        out[cls], lines[cls] = np.asarray(values, dtype=np.float32), i
    return out


def semantics_table(semantics: dict[str, np.ndarray], classes: list[str], path: str | os.PathLike) -> pa.Table:
    """The semantics.parquet table: the dataset's classes in sorted order with their vectors.

    Classes of semantics.csv that are not in the dataset are left out.

    Args:
        semantics: from `read_semantics_csv`.
        classes: the dataset's classes.
        path: semantics.csv, for the error message.

    Returns:
        A table with SEMANTICS_SCHEMA, one row per class.

    Raises:
        DataError: a class of the dataset has no row, naming it.
    """
    missing = [c for c in sorted(classes) if c not in semantics]
    if missing:
        raise DataError(f"{path} has no row for the class{'es' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}")
    names = sorted(classes)
    return pa.Table.from_pydict({"class": names, "vector": [semantics[c].tolist() for c in names]}, schema=SEMANTICS_SCHEMA)


def read_semantics(manifest_dir: str | os.PathLike) -> dict[str, np.ndarray] | None:
    """The class side information that ingest wrote beside the manifest.

    Args:
        manifest_dir: the ingest output folder (local or s3://).

    Returns:
        {class: (n,) float32 vector} for every class of the dataset, or None when the dataset
        had no semantics.csv.
    """
    path = storage.join(manifest_dir, "semantics.parquet")
    if not storage.exists(path):
        return None
    table = storage.read_table(path)
    return {c: np.asarray(v, dtype=np.float32) for c, v in zip(table.column("class").to_pylist(), table.column("vector").to_pylist())}


def assign_splits(rows: list[dict], fractions: tuple[float, float, float], seed: int, given: dict[str, str]) -> None:
    """Set row['split'] in place: from splits.csv where listed, else a seeded per-(domain, class) split.

    The shuffle of each group is seeded from (seed, domain, class), so adding a class never
    reshuffles another (photos use the key "query", see _SPLIT_SEED_DOMAIN).

    Args:
        rows: manifest rows (item_id, label, domain); only these are split.
        fractions: train, val, test shares, for `split_counts`.
        seed: the run's seed.
        given: {item_id: split} from splits.csv, taken as is.
    """
    groups = defaultdict(list)
    for r in rows:
        if r["item_id"] in given:
            r["split"] = given[r["item_id"]]
        else:
            groups[(r["domain"], r["label"])].append(r)
    for (domain, label), items in sorted(groups.items()):
        items.sort(key=lambda r: r["item_id"])
        key_domain = _SPLIT_SEED_DOMAIN.get(domain, domain)
        key = int.from_bytes(hashlib.sha256(f"{seed}/{key_domain}/{label}".encode()).digest()[:8], "little")
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

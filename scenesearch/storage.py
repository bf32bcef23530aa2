"""All file access goes through here: reads by URI, atomic writes, Parquet and NumPy tables.

Local paths today; ``s3://`` URIs are routed through ``pyarrow.fs`` in one place
(`_filesystem`) so that remote storage is a change to this module alone.
Every write goes to a temporary name in the destination folder and is renamed when whole,
so a killed step never leaves a half-written artifact under the final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from scenesearch.errors import DataError


def is_remote(uri: str) -> bool:
    return "://" in str(uri) and not str(uri).startswith("file://")


def _local(uri: str | os.PathLike) -> Path:
    s = str(uri)
    if is_remote(s):
        raise DataError(f"remote URI {s} is not supported yet; use a local path")
    return Path(s.removeprefix("file://"))


def exists(uri: str | os.PathLike) -> bool:
    return _local(uri).exists()


def read_bytes(uri: str | os.PathLike) -> bytes:
    """Read a whole file.

    Raises:
        DataError: missing or unreadable file, naming it.
    """
    path = _local(uri)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"file not found: {path}") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None


def list_files(root: str | os.PathLike) -> list[str]:
    """Every regular file below `root` as sorted POSIX paths relative to it.

    Raises:
        DataError: the root is missing or not a folder.
    """
    base = _local(root)
    if not base.is_dir():
        raise DataError(f"dataset root {base} does not exist or is not a folder")
    return sorted(p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file())


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    `suffix` ends the temporary name, for writers that pick a format from it.
    """
    dest = _local(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix, dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, dest)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_table(path: str | os.PathLike, table: pa.Table | dict) -> None:
    """Write a Parquet table atomically; a dict of columns is converted first."""
    if isinstance(table, dict):
        table = pa.table(table)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_table(path: str | os.PathLike) -> pa.Table:
    path = _local(path)
    if not path.is_file():
        raise DataError(f"table not found: {path}")
    return pq.read_table(path)


def write_array(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)


def read_array(path: str | os.PathLike, mmap: bool = False) -> np.ndarray:
    path = _local(path)
    if not path.is_file():
        raise DataError(f"array not found: {path}")
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


def png_bytes(image: np.ndarray) -> bytes:
    """Encode an (H, W, 3) uint8 image as PNG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()

"""All file access goes through here: reads by URI, atomic writes, Parquet and NumPy tables.

Two kinds of location: local paths (``file://`` allowed) and ``s3://bucket/prefix`` URIs.
S3 is reached with boto3, whose client is built in one place (`_s3_client`) from the standard
AWS chain: endpoint from ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (``MLFLOW_S3_ENDPOINT_URL``
as a fallback for MinIO setups), region from ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` / the
config file, credentials from boto3's default chain. pathlib folds ``s3://b/k`` to ``s3:/b/k``;
both spellings are accepted, so callers may join an S3 URI with ``Path(...) / name``.

Writes are atomic. Locally every write goes to a temporary name in the destination folder and is
renamed when whole. On S3 the file is written to a local temporary file and uploaded when the
block succeeds: a single PUT, or a multipart upload above `MULTIPART_THRESHOLD`, and S3 makes an
object visible only once its PUT or CompleteMultipartUpload has succeeded, so no temporary key
is needed and a failed block or upload leaves nothing under the final key.

Errors are one sentence naming the URI (DataError); credentials never appear in them.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
import posixpath
import tempfile
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from scenesearch.errors import DataError

MULTIPART_THRESHOLD = 64 * 1024 * 1024  # bytes; larger uploads go in parts (S3's minimum part is 5 MiB)
CONNECT_TIMEOUT_S = 3  # a wrong endpoint should fail in seconds, not minutes
MAX_ATTEMPTS = 3  # first try plus two retries (botocore's "standard" mode: throttling, 5xx, connection errors)
ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL")
# The environment that decides which client to build; a change of any of them builds a new one.
_CLIENT_VARIABLES = ENDPOINT_VARIABLES + (
    "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
)
_DENIED = {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "AllAccessDisabled"}
_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}


# ---------------------------------------------------------------- locations


def is_s3(uri: str | os.PathLike) -> bool:
    return str(uri).startswith("s3:/")


def is_remote(uri: str | os.PathLike) -> bool:
    s = str(uri)
    return is_s3(s) or ("://" in s and not s.startswith("file://"))


def join(root: str | os.PathLike, *parts: str) -> str:
    """`root` joined with relative POSIX parts: an ``s3://`` URI for S3, else a local path string."""
    if is_s3(root):
        bucket, key = _s3_parts(root)
        return "s3://" + posixpath.join(bucket, key, *parts).rstrip("/")
    return str(Path(_local(root), *parts))


def _local(uri: str | os.PathLike) -> Path:
    s = str(uri)
    if is_remote(s):
        raise DataError(f"{s}: only local paths and s3:// URIs are supported")
    return Path(s.removeprefix("file://"))


def _s3_parts(uri: str | os.PathLike) -> tuple[str, str]:
    """``s3://bucket/a/b`` (or pathlib's ``s3:/bucket/a/b``) -> ("bucket", "a/b")."""
    bucket, _, key = str(uri).removeprefix("s3:").lstrip("/").partition("/")
    if not bucket:
        raise DataError(f"{uri}: an S3 URI needs a bucket (s3://bucket/prefix)")
    return bucket, key.strip("/")


def _s3_uri(uri: str | os.PathLike) -> str:
    bucket, key = _s3_parts(uri)
    return f"s3://{bucket}/{key}".rstrip("/")


# ---------------------------------------------------------------- the S3 client


def s3_endpoint() -> str | None:
    """The S3 endpoint from the environment, or None for AWS's own (or the AWS config file's)."""
    return next((os.environ[v] for v in ENDPOINT_VARIABLES if os.environ.get(v)), None)


def _s3_client():
    """The boto3 S3 client for the current environment (one per endpoint and credential set)."""
    env = repr([os.environ.get(v) for v in _CLIENT_VARIABLES])
    return _build_s3_client(hashlib.sha256(env.encode()).hexdigest())  # the cache key holds no secret


@functools.lru_cache(maxsize=8)
def _build_s3_client(env_key: str):
    import boto3
    from botocore.config import Config

    session = boto3.session.Session()  # credentials: env, profile, config files, container/instance roles
    endpoint = s3_endpoint()
    region = os.environ.get("AWS_REGION") or session.region_name or "us-east-1"
    config = Config(
        region_name=region,
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=60,
        retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
        # MinIO and other self-hosted endpoints serve buckets by path, not as subdomains
        s3={"addressing_style": "path"} if endpoint else None,
    )
    return session.client("s3", endpoint_url=endpoint, config=config)


def _arrow_s3():
    """pyarrow's S3 filesystem with the endpoint, region and credentials boto3 resolved."""
    env = repr([os.environ.get(v) for v in _CLIENT_VARIABLES])
    return _build_arrow_s3(hashlib.sha256(env.encode()).hexdigest())


@functools.lru_cache(maxsize=8)
def _build_arrow_s3(env_key: str):
    import boto3
    from pyarrow import fs

    creds = boto3.session.Session().get_credentials()  # the chain boto3 resolves (env, profile, role)
    frozen = creds.get_frozen_credentials() if creds is not None else None
    endpoint = urlsplit(s3_endpoint()) if s3_endpoint() else None
    return fs.S3FileSystem(
        access_key=frozen.access_key if frozen else None,
        secret_key=frozen.secret_key if frozen else None,
        session_token=frozen.token if frozen else None,
        region=_s3_client().meta.region_name,
        endpoint_override=endpoint.netloc if endpoint else None,
        scheme=endpoint.scheme if endpoint else "https",
        connect_timeout=CONNECT_TIMEOUT_S,
        retry_strategy=fs.AwsStandardS3RetryStrategy(max_attempts=MAX_ATTEMPTS),
    )


def _transfer_config():
    from boto3.s3.transfer import TransferConfig

    # s3transfer raises parts below S3's 5 MiB minimum to 5 MiB
    return TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_THRESHOLD, max_concurrency=4)


def _s3_error(uri: str, error: BaseException, what: str = "file") -> DataError:
    """One sentence for a failed S3 request, naming the URI; never the request's credentials or signature."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError, PartialCredentialsError

    bucket, _ = _s3_parts(uri)
    endpoint = redact_url(s3_endpoint() or "AWS S3")
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", "")) or str(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        if code == "NoSuchBucket":
            return DataError(f"{uri}: the S3 bucket '{bucket}' does not exist at {endpoint}")
        if code in _NOT_FOUND:
            return DataError(f"{what} not found: {uri}")
        if code in _DENIED:
            return DataError(f"{uri}: access denied by {endpoint} ({code}); check the S3 credentials and the bucket's permissions")
        return DataError(f"{uri}: the S3 request failed ({code or type(error).__name__})")
    if isinstance(error, (NoCredentialsError, PartialCredentialsError)):
        return DataError(f"{uri}: no S3 credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)")
    if isinstance(error, EndpointConnectionError):  # also covers connect timeouts
        return DataError(f"{uri}: cannot connect to the S3 endpoint {endpoint}; check the endpoint URL (AWS_ENDPOINT_URL or MLFLOW_S3_ENDPOINT_URL) and the network")
    return DataError(f"{uri}: the S3 request failed ({type(error).__name__})")


def redact_url(url: str) -> str:
    """An endpoint URL without any user:password part."""
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl() if parts.netloc else url


@contextlib.contextmanager
def _s3_errors(uri: str, what: str = "file") -> Iterator[None]:
    """Translate boto3's exceptions for `uri` into DataError, dropping the original (and its traceback)."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except S3UploadFailedError as e:  # boto3 wraps the ClientError of an upload
        raise _s3_error(uri, e.__context__ or e, what) from None
    except (BotoCoreError, ClientError) as e:
        raise _s3_error(uri, e, what) from None


# ---------------------------------------------------------------- reads


def exists(uri: str | os.PathLike) -> bool:
    """True for a file or a folder (on S3: a key, or a prefix with keys below it)."""
    if not is_s3(uri):
        return _local(uri).exists()
    uri = _s3_uri(uri)
    bucket, key = _s3_parts(uri)
    from botocore.exceptions import ClientError

    client = _s3_client()
    with _s3_errors(uri):
        try:
            if key:
                client.head_object(Bucket=bucket, Key=key)
                return True
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") not in _NOT_FOUND:
                raise
        try:
            listing = client.list_objects_v2(Bucket=bucket, Prefix=f"{key}/" if key else "", MaxKeys=1)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") == "NoSuchBucket":
                return False
            raise
        return listing.get("KeyCount", 0) > 0


def read_bytes(uri: str | os.PathLike, what: str = "file") -> bytes:
    """Read a whole file.

    Raises:
        DataError: missing or unreadable file (or an unreachable or refusing S3 endpoint), naming it.
    """
    if is_s3(uri):
        uri = _s3_uri(uri)
        bucket, key = _s3_parts(uri)
        with _s3_errors(uri, what):
            return _s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
    path = _local(uri)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{what} not found: {path}") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None


def list_files(root: str | os.PathLike) -> list[str]:
    """Every regular file below `root` as sorted POSIX paths relative to it (on S3: every key under the prefix).

    Raises:
        DataError: the root is missing, not a folder, or (on S3) holds no keys.
    """
    if is_s3(root):
        uri = _s3_uri(root)
        bucket, key = _s3_parts(uri)
        prefix = f"{key}/" if key else ""
        files = []
        with _s3_errors(uri):
            for page in _s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                files.extend(o["Key"][len(prefix) :] for o in page.get("Contents", []) if not o["Key"].endswith("/"))
        if not files:
            raise DataError(f"dataset root {uri} does not exist (no objects under it)")
        return sorted(files)
    base = _local(root)
    if not base.is_dir():
        raise DataError(f"dataset root {base} does not exist or is not a folder")
    return sorted(p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file())


def list_dataset(root: str | os.PathLike) -> tuple[list[str], list[tuple[str, str]]]:
    """Every usable file below `root`, and a reason for every entry that is not used.

    The rule for a local root: regular files are used; a symbolic link is followed only when it
    resolves to a regular file inside the root (a link to a folder, a dangling or looping link, a
    link leading outside the root are not); folders are walked without following links; FIFOs,
    sockets and devices are never opened; an empty or unlistable folder is reported too, so
    nothing below the root is ignored silently. S3 has no links or special objects: every key is
    used, as `list_files` lists them.

    Args:
        root: a local folder or an s3:// prefix.

    Returns:
        (sorted relative POSIX paths of the files to read, [(relative path, reason)] of the rest).

    Raises:
        DataError: the root is missing, not a folder, or (on S3) holds no keys.
    """
    if is_s3(root):
        return list_files(root), []
    base = _local(root)
    if not base.is_dir():
        raise DataError(f"dataset root {base} does not exist or is not a folder")
    real_base = os.path.realpath(base)
    files: list[str] = []
    skipped: list[tuple[str, str]] = []
    pending = [""]
    while pending:
        rel_dir = pending.pop()
        try:
            with os.scandir(base / rel_dir if rel_dir else base) as it:
                entries = list(it)
        except OSError as e:
            skipped.append((rel_dir, f"{shown(rel_dir)} is a folder that cannot be listed ({e.strerror or type(e).__name__})"))
            continue
        if not entries and rel_dir:
            skipped.append((rel_dir, f"{shown(rel_dir)} is an empty folder"))
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            reason = _entry_problem(entry, rel, real_base)
            if reason == "folder":
                pending.append(rel)
            elif reason:
                skipped.append((rel, reason))
            else:
                files.append(rel)
    return sorted(files), sorted(skipped)


def _entry_problem(entry: os.DirEntry, rel: str, real_base: str) -> str | None:
    """None for a usable file, "folder" for a folder to walk, else the reason the entry is skipped (stat only: nothing is opened)."""
    import stat

    try:
        mode = entry.stat(follow_symlinks=False).st_mode
    except OSError as e:
        return f"{shown(rel)} cannot be examined ({e.strerror or type(e).__name__})"
    if stat.S_ISDIR(mode):
        return "folder"
    if stat.S_ISREG(mode):
        return None
    if not stat.S_ISLNK(mode):
        return f"{shown(rel)} is {_special_kind(mode)}, not a regular file"
    try:
        target = os.path.realpath(entry.path, strict=True)
    except (OSError, RuntimeError) as e:  # RuntimeError: a loop, on Pythons before 3.13
        looping = isinstance(e, RuntimeError) or getattr(e, "errno", None) == 40
        return f"{shown(rel)} is a {'looping' if looping else 'dangling'} symbolic link"
    if os.path.commonpath([real_base, target]) != real_base:
        return f"{shown(rel)} is a symbolic link to a file outside the dataset root"
    try:
        target_mode = os.stat(target).st_mode
    except OSError as e:
        return f"{shown(rel)} is a symbolic link whose target cannot be examined ({e.strerror or type(e).__name__})"
    if stat.S_ISDIR(target_mode):
        return f"{shown(rel)} is a symbolic link to a folder (links are followed only to regular files)"
    if not stat.S_ISREG(target_mode):
        return f"{shown(rel)} is a symbolic link to {_special_kind(target_mode)}, not a regular file"
    return None


def _special_kind(mode: int) -> str:
    import stat

    for test, kind in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return kind
    return "a special file"


def shown(rel: str) -> str:
    """A relative path as it can appear in a one-line reason: as is when printable, else quoted with escapes."""
    return rel if rel.isprintable() else ascii(rel)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_table(path: str | os.PathLike) -> pa.Table:
    """A Parquet table; from S3 through pyarrow's own S3 filesystem (ranged, column-wise reads)."""
    if is_s3(path):
        bucket, key = _s3_parts(path)
        try:
            return pq.read_table(f"{bucket}/{key}", filesystem=_arrow_s3())
        except OSError:  # any failure: boto3's read names it in one sentence without credentials
            return pq.read_table(pa.BufferReader(read_bytes(path, what="table")))
    path = _local(path)
    if not path.is_file():
        raise DataError(f"table not found: {path}")
    return pq.read_table(path)


def read_array(path: str | os.PathLike, mmap: bool = False) -> np.ndarray:
    """Load a .npy array; `mmap` maps a local file (an S3 object is always read whole)."""
    if is_s3(path):
        return np.load(io.BytesIO(read_bytes(path, what="array")), allow_pickle=False)
    path = _local(path)
    if not path.is_file():
        raise DataError(f"array not found: {path}")
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


# ---------------------------------------------------------------- writes


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a local temporary path; put it at `path` only if the block succeeds.

    Locally the file sits beside `path` and is renamed onto it; for an ``s3://`` destination it
    is uploaded (see the module docstring for why that is atomic). `suffix` ends the temporary
    name, for writers that pick a format from it.

    Raises:
        DataError: the upload failed (missing bucket, access denied, endpoint unreachable).
    """
    if is_s3(path):
        uri = _s3_uri(path)
        fd, tmp = tempfile.mkstemp(prefix=".scenesearch-upload.", suffix=suffix)
    else:
        dest = _local(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix, dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if is_s3(path):
            bucket, key = _s3_parts(uri)
            with _s3_errors(uri):
                _s3_client().upload_file(str(tmp_path), bucket, key, Config=_transfer_config())
        else:
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


def write_array(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)


def png_bytes(image: np.ndarray) -> bytes:
    """Encode an (H, W, 3) uint8 image as PNG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


@contextlib.contextmanager
def local_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on the local file `path` (created if missing) for the block.

    Processes on one machine that share a file (a SQLite store, a generated dataset) take it
    around their critical section; the OS releases it when a holder dies, even by SIGKILL.
    """
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)

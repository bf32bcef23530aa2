"""S3 storage against a moto server on loopback: round trips, atomic and multipart writes, ingest and render from s3://, errors."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import boto3
import numpy as np
import pyarrow as pa
import pytest

from scenesearch import config, storage
from scenesearch.data import ingest
from scenesearch.errors import DataError

SECRET = "zq9-DISTINCTIVE-secret-Xy7"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]



@pytest.fixture
def s3_env(moto_url, tmp_path, monkeypatch):
    """The standard AWS variables pointing at the moto server; no host config files leak in."""
    for var in ("AWS_ENDPOINT_URL_S3", "MLFLOW_S3_ENDPOINT_URL", "AWS_REGION", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    return moto_url


@pytest.fixture
def bucket(s3_env):
    """A fresh bucket per test (the server lives for the session) and an independent boto3 client."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=s3_env, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_bucket(Bucket=name)
    return name, client


def _keys(client, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", []))


def test_round_trips_of_bytes_tables_and_arrays(bucket):
    name, client = bucket
    root = f"s3://{name}/run"
    storage.write_bytes(f"{root}/a.json", b'{"x": 1}')
    assert storage.read_bytes(f"{root}/a.json") == b'{"x": 1}'
    assert client.get_object(Bucket=name, Key="run/a.json")["Body"].read() == b'{"x": 1}'

    table = pa.table({"item_id": ["a", "b"], "png": [b"\x89PNG", b""]})
    storage.write_table(Path(root) / "t.parquet", table)  # pathlib folds s3:// to s3:/; storage takes both
    assert storage.read_table(f"{root}/t.parquet").equals(table)
    # tables come through pyarrow's own S3 filesystem, configured from the same AWS chain
    import pyarrow.parquet as pq

    assert pq.read_table(f"{root.removeprefix('s3://')}/t.parquet", filesystem=storage._arrow_s3()).equals(table)

    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    storage.write_array(f"{root}/x.npy", array)
    np.testing.assert_array_equal(storage.read_array(f"{root}/x.npy", mmap=True), array)

    assert storage.exists(f"{root}/x.npy") and storage.exists(root) and storage.exists(f"s3://{name}")
    assert not storage.exists(f"{root}/nope.npy") and not storage.exists(f"s3://{name}/ru")
    assert not storage.exists("s3://no-such-bucket-anywhere/x")
    with pytest.raises(DataError, match=f"table not found: s3://{name}/run/missing.parquet"):
        storage.read_table(f"{root}/missing.parquet")


def test_list_files_is_recursive_relative_and_sorted(bucket):
    name, client = bucket
    for key in ("ds/b.txt", "ds/a/z.png", "ds/a/y/x.obj", "ds/empty/", "ds2/other.txt", "top.txt"):
        client.put_object(Bucket=name, Key=key, Body=b"" if key.endswith("/") else b"x")
    assert storage.list_files(f"s3://{name}/ds") == ["a/y/x.obj", "a/z.png", "b.txt"]
    assert storage.list_files(f"s3://{name}/ds/") == ["a/y/x.obj", "a/z.png", "b.txt"]
    assert storage.list_files(f"s3://{name}")[:3] == ["ds/a/y/x.obj", "ds/a/z.png", "ds/b.txt"]
    with pytest.raises(DataError, match=f"dataset root s3://{name}/missing does not exist"):
        storage.list_files(f"s3://{name}/missing")


def test_failed_block_leaves_no_key_and_no_temp_file(bucket):
    name, client = bucket
    with pytest.raises(RuntimeError):
        with storage.atomic_path(f"s3://{name}/out/model.npz", suffix=".npz") as tmp:
            tmp.write_bytes(b"half")
            assert tmp.suffix == ".npz"
            raise RuntimeError("killed mid-write")
    assert not tmp.exists()
    assert _keys(client, name) == []
    assert client.list_multipart_uploads(Bucket=name).get("Uploads", []) == []


def test_large_object_goes_up_in_parts(bucket, monkeypatch):
    name, client = bucket
    monkeypatch.setattr(storage, "MULTIPART_THRESHOLD", 1024 * 1024)
    data = np.random.default_rng(0).bytes(6 * 1024 * 1024)  # above the threshold: parts of 5 MiB (S3's minimum) + 1 MiB
    storage.write_bytes(f"s3://{name}/big.bin", data)
    storage.write_bytes(f"s3://{name}/small.bin", b"tiny")
    assert client.head_object(Bucket=name, Key="big.bin")["ETag"].strip('"').endswith("-2")  # a multipart ETag counts its parts
    assert "-" not in client.head_object(Bucket=name, Key="small.bin")["ETag"]
    assert storage.read_bytes(f"s3://{name}/big.bin") == data
    assert client.list_multipart_uploads(Bucket=name).get("Uploads", []) == []


def test_mlflow_endpoint_variable_is_a_fallback(bucket, monkeypatch, s3_env):
    name, client = bucket
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3_env)
    storage.write_bytes(f"s3://{name}/k", b"v")
    assert storage.read_bytes(f"s3://{name}/k") == b"v"


def test_splits_and_classes_files_are_read_from_s3(bucket):
    name, client = bucket
    client.put_object(Bucket=name, Key="ds/splits.csv", Body="\ufeffpath,split\nscenes/a/x.glb,val\n".encode())  # Excel's BOM too
    client.put_object(Bucket=name, Key="ds/classes.txt", Body=b"a\nb\n\n")
    client.put_object(Bucket=name, Key="bad/splits.csv", Body=b"path,split\nscenes/a/x.glb,holdout\n")
    assert ingest.read_splits(f"s3://{name}/ds/splits.csv") == {"scenes/a/x.glb": "val"}
    assert ingest._read_classes(f"s3://{name}/ds/classes.txt") == {"a", "b"}
    assert ingest._read_classes(f"s3://{name}/ds/none.txt") is None
    with pytest.raises(DataError, match=f"s3://{name}/bad/splits.csv line 2: split must be one of"):
        ingest.read_splits(f"s3://{name}/bad/splits.csv")


def _upload(client, bucket: str, local_root: Path, prefix: str) -> None:
    for path in sorted(p for p in local_root.rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(local_root).as_posix()}")


def test_ingest_and_render_from_s3_match_local(bucket, smoke_dataset, smoke_cfg, tmp_path):
    from scenesearch.render import load_mesh
    from scenesearch.render import step as render_step

    name, client = bucket
    _upload(client, name, smoke_dataset, "datasets/smoke")
    remote = ingest.run(f"s3://{name}/datasets/smoke", f"s3://{name}/runs/ingest", smoke_cfg.data, smoke_cfg.seed)
    local = ingest.run(str(smoke_dataset), str(tmp_path / "ingest"), smoke_cfg.data, smoke_cfg.seed)
    assert remote == local  # counts and the fingerprint (ids, checksums, labels, splits)

    s3_rows = storage.read_table(f"s3://{name}/runs/ingest/manifest.parquet").to_pylist()
    local_rows = storage.read_table(tmp_path / "ingest" / "manifest.parquet").to_pylist()
    drop_uri = lambda rows: [{k: v for k, v in r.items() if k != "uri"} for r in rows]  # noqa: E731
    assert drop_uri(s3_rows) == drop_uri(local_rows)
    assert all(r["uri"] == f"s3://{name}/datasets/smoke/{r['item_id']}" for r in s3_rows)

    # Render one OBJ (its .mtl and texture are fetched from S3 beside it) and one GLB, from S3 and locally.
    picks = {}
    for r in s3_rows:
        ext = Path(r["item_id"]).suffix
        if r["domain"] == "scene" and ext in (".obj", ".glb"):
            picks.setdefault(ext, r["item_id"])
    obj = load_mesh(f"s3://{name}/datasets/smoke/{picks['.obj']}")
    assert len(np.unique(obj.colours, axis=0)) > 1  # the .mtl beside it was found: not one plain grey
    for rows, manifest_dir in ((s3_rows, f"s3://{name}/runs/pick"), (local_rows, tmp_path / "pick")):
        storage.write_table(Path(manifest_dir) / "manifest.parquet", pa.Table.from_pylist([r for r in rows if r["item_id"] in picks.values()]))
    result = render_step.run(f"s3://{name}/runs/pick", f"s3://{name}/runs/render", smoke_cfg.render)
    render_step.run(str(tmp_path / "pick"), str(tmp_path / "render"), smoke_cfg.render)
    assert result.n_scenes == 2 and result.n_rejected == 0
    s3_views = storage.read_table(f"s3://{name}/runs/render/views.parquet")
    assert s3_views.num_rows == 2 * smoke_cfg.render.n_views
    assert s3_views.equals(storage.read_table(tmp_path / "render" / "views.parquet"))  # same pixels: textures resolved alike


def _assert_one_clean_sentence(error: BaseException, *fragments: str) -> None:
    text = str(error)
    assert "\n" not in text and "Traceback" not in text
    for fragment in fragments:
        assert fragment in text, (fragment, text)
    assert error.__cause__ is None and error.__suppress_context__  # raised `from None`: boto3's exception is dropped


def test_missing_bucket_is_one_sentence(s3_env, tmp_path):
    uri = "s3://no-such-bucket-here/data"
    with pytest.raises(DataError) as e:
        ingest.run(uri, str(tmp_path / "out"), config.DataConfig())
    _assert_one_clean_sentence(e.value, uri, "bucket 'no-such-bucket-here' does not exist")
    with pytest.raises(DataError, match="does not exist"):
        storage.write_bytes(f"{uri}/x", b"x")


@pytest.fixture
def iam_auth(moto_url):
    """Switch the moto server to checking credentials (unknown keys are refused), and back afterwards."""

    def reset(count: str) -> None:
        request = urllib.request.Request(f"{moto_url}/moto-api/reset-auth", data=count.encode(), headers={"Content-Type": "text/plain"})
        urllib.request.urlopen(request, timeout=5).close()

    reset("0")
    yield
    reset("inf")


def test_denied_request_names_the_uri_and_hides_the_secret(bucket, iam_auth, monkeypatch, tmp_path, caplog):
    import logging

    name, _ = bucket
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIADISTINCTIVEKEYID1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    uri = f"s3://{name}/data"
    with pytest.raises(DataError) as e:
        ingest.run(uri, str(tmp_path / "out"), config.DataConfig())
    _assert_one_clean_sentence(e.value, uri, "access denied")
    with pytest.raises(DataError) as upload:
        storage.write_bytes(f"{uri}/x.bin", b"x")
    _assert_one_clean_sentence(upload.value, f"{uri}/x.bin", "access denied")
    for text in (str(e.value), repr(e.value), str(upload.value), caplog.text):
        assert SECRET not in text
    assert "botocore" in caplog.text  # the debug logs were captured, and hold no secret either


def test_wrong_endpoint_fails_in_seconds(s3_env, monkeypatch, tmp_path):
    closed = f"http://127.0.0.1:{_free_port()}"  # nothing listens there: connection refused
    monkeypatch.setenv("AWS_ENDPOINT_URL", closed)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    start = time.monotonic()
    with pytest.raises(DataError) as e:
        ingest.run("s3://bucket/data", str(tmp_path / "out"), config.DataConfig())
    assert time.monotonic() - start < 15
    _assert_one_clean_sentence(e.value, "s3://bucket/data", f"cannot connect to the S3 endpoint {closed}")
    assert SECRET not in str(e.value)


def test_cli_prints_one_line_without_traceback(s3_env, tmp_path):
    env = {**os.environ, "AWS_ENDPOINT_URL": s3_env, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": SECRET}
    proc = subprocess.run(
        [sys.executable, "-m", "scenesearch.cli", "ingest", "--data", "s3://no-such-bucket-cli/data", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("scenesearch ingest:")]
    assert len(errors) == 1 and "s3://no-such-bucket-cli/data" in errors[0]
    assert "Traceback" not in proc.stderr and SECRET not in proc.stderr + proc.stdout


def test_model_folders_on_s3_train_score_and_evaluate(bucket, smoke_preprocessed, smoke_cfg, tmp_path):
    """The train step writes a model folder to s3://, retrieve scores from there, evaluate lists the distances there."""
    import dataclasses

    import torch

    from scenesearch import features, methods, retrieval, train
    from scenesearch.evaluation import step as evaluate

    name, _ = bucket
    feats = tmp_path / "features"
    features.run(str(smoke_preprocessed["images"]), str(feats), smoke_cfg.features, smoke_cfg.seed)
    inputs = methods.Inputs(images=str(smoke_preprocessed["images"]), features=str(feats))
    cfg = dataclasses.replace(smoke_cfg, methods={"vgg_baseline": {}, "random": {}})
    remote = [train.run(cfg, key, inputs, f"s3://{name}/models/{key}", progress=False).out_dir for key in ("vgg_baseline", "random")]
    assert not Path("s3:").exists()  # no local folder named like the URI
    local = train.run(cfg, "vgg_baseline", inputs, str(tmp_path / "vgg"), progress=False).out_dir
    assert retrieval.run(remote, f"s3://{name}/rankings").keys == ("vgg_baseline", "random")
    retrieval.run([local], str(tmp_path / "r-local"))
    np.testing.assert_array_equal(storage.read_array(f"s3://{name}/rankings/distances_vgg_baseline.npy"), storage.read_array(tmp_path / "r-local" / "distances_vgg_baseline.npy"))
    _, retriever = train.load(f"s3://{name}/models/vgg_baseline")  # the PCA is read from the bucket
    images = torch.from_numpy(storage.read_array(smoke_preprocessed["images"] / "images.npy")[:2])
    assert tuple(retriever.embed(images).shape) == (2, storage.read_array(feats / "features.npy").shape[1])
    r = evaluate.run(f"s3://{name}/rankings", str(smoke_preprocessed["manifest"]), str(smoke_preprocessed["views"]), str(smoke_preprocessed["images"]), str(tmp_path / "e"), smoke_cfg.evaluate)
    assert set(r.metrics) == {"vgg_baseline", "random"}

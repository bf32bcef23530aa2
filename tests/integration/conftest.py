"""A tracking server like the cluster's, on loopback: PostgreSQL, a moto S3 bucket, `mlflow server`.

Session fixtures start each service once, on a free 127.0.0.1 port, with its log in a file;
a failing test shows the tail of every log. PostgreSQL refuses to run as root, so when the
tests do (CI does), initdb and postgres run as the unprivileged `postgres` user (created by
Debian's package; `nobody` otherwise) over a temporary folder that user owns. Every process
started here is killed at teardown.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from server_runs import credentials, newest_parent, output, start_run, wait_for_step  # tests/integration/server_runs.py

BIN = Path(sys.executable).parent
LOGS: dict[str, Path] = {}  # service -> log file, shown when a test fails


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(ready, proc: subprocess.Popen | None, what: str, timeout: float = 120.0) -> None:
    """Poll `ready()` until it is true; fail naming `what` if `proc` dies or time runs out."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what} exited with code {proc.returncode} before it was ready")
        if time.monotonic() > deadline:
            pytest.fail(f"{what} was not ready after {timeout:.0f} s")
        time.sleep(0.2)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def stop_group(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
    """Send `sig` to the process group `proc` leads, wait for it, then SIGKILL whatever is left."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # workers the leader left behind
    except ProcessLookupError:
        pass
    proc.wait()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and LOGS:
        for name, path in LOGS.items():
            text = path.read_text(errors="replace") if path.exists() else "(no log)"
            report.sections.append((f"{name} log ({path}), last 60 lines", "\n".join(text.splitlines()[-60:])))


# ---------------------------------------------------------------- PostgreSQL

def postgres_bindir() -> Path:
    """Debian's server binaries (/usr/lib/postgresql/<version>/bin, newest first), else initdb on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]), reverse=True)
    if found:
        return Path(found[0]).parent
    if shutil.which("initdb"):
        return Path(shutil.which("initdb")).parent
    pytest.fail("PostgreSQL is not installed: `make test` installs it (mk/testdeps.mk), or apt-get install postgresql")


def unprivileged_user() -> pwd.struct_passwd | None:
    """None when we are not root; else the account postgres runs as."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    pytest.fail("running as root and neither a `postgres` nor a `nobody` account exists to run PostgreSQL as")


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory):
    """`postgresql://mlflow@127.0.0.1:PORT/mlflow`: a throwaway cluster, TCP on loopback, its socket in its folder."""
    try:
        # SQLAlchemy 2.1 opens postgresql:// (the cluster's URI) with psycopg 3, not psycopg2.
        import psycopg
    except ImportError:
        pytest.fail("psycopg is not installed in the venv: `make setup` installs it from requirements.lock")
    bindir = postgres_bindir()
    user = unprivileged_user()
    log_path = tmp_path_factory.mktemp("postgres") / "postgres.log"
    LOGS["postgres"] = log_path
    # Not under pytest's tmp folder: that one is private to root, and postgres may not be.
    home = Path(tempfile.mkdtemp(prefix="scenesearch-pg-"))
    data, sock = home / "data", home / "sock"
    sock.mkdir()
    as_user: list[str] = []
    if user is not None:
        for p in (home, sock):
            os.chown(p, user.pw_uid, user.pw_gid)
        as_user = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", "--"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")} | {"LC_ALL": "C"}
    port = free_port()

    def ready() -> bool:
        cmd = [str(bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow", "-d", "postgres"]
        return subprocess.run(cmd, env=env).returncode == 0

    proc = None
    log = open(log_path, "wb")
    try:
        init = subprocess.run(
            as_user + [str(bindir / "initdb"), "-D", str(data), "-U", "mlflow", "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync"],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )
        if init.returncode != 0:
            pytest.fail(f"initdb failed (exit {init.returncode}); see {log_path}")
        # postgres in the foreground (setpriv execs, so this pid is the postmaster): SIGINT is a fast shutdown.
        proc = subprocess.Popen(
            as_user + [str(bindir / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port), "-k", str(sock)],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        wait_until(ready, proc, "postgres", timeout=60)
        with psycopg.connect(host="127.0.0.1", port=port, user="mlflow", dbname="postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE mlflow")
        yield f"postgresql://mlflow@127.0.0.1:{port}/mlflow"
    finally:
        if proc is not None:
            stop_group(proc, signal.SIGINT)
        log.close()
        shutil.rmtree(home, ignore_errors=True)


# ---------------------------------------------------------------- S3 (moto)

class ArtifactBucket:
    """The moto S3 bucket the tracking server stores artifacts in, seen through boto3."""

    name = "scenesearch-mlflow"
    prefix = "mlflow"  # artifacts live under s3://<name>/<prefix>/<experiment id>/...

    def __init__(self, url: str):
        import boto3

        self.url = url
        self.client = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                                   aws_access_key_id="testing", aws_secret_access_key="testing")

    @property
    def destination(self) -> str:
        return f"s3://{self.name}/{self.prefix}"

    def key_prefix(self, uri: str) -> str:
        """The key prefix an artifact URI handed out by the server (mlflow-artifacts:/... or s3://...) stands for."""
        if uri.startswith("mlflow-artifacts:"):
            return f"{self.prefix}/{uri.removeprefix('mlflow-artifacts:').strip('/')}/"
        if uri.startswith(f"s3://{self.name}/"):
            return uri.removeprefix(f"s3://{self.name}/").rstrip("/") + "/"
        raise AssertionError(f"artifact URI {uri} is neither served by the tracking server nor in {self.destination}")

    def files(self, uri: str) -> set[str]:
        """The object keys under the artifact URI `uri`, relative to it."""
        prefix, keys = self.key_prefix(uri), set()
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix):
            keys |= {o["Key"].removeprefix(prefix) for o in page.get("Contents", [])}
        return keys

    def read(self, uri: str, path: str) -> bytes:
        return self.client.get_object(Bucket=self.name, Key=self.key_prefix(uri) + path)["Body"].read()


@pytest.fixture(scope="session")
def s3(moto_url):
    """The artifact bucket, made on the session's moto S3 server (tests/conftest.py::moto_url)."""
    bucket = ArtifactBucket(moto_url)
    bucket.client.create_bucket(Bucket=bucket.name)
    return bucket


# ---------------------------------------------------------------- mlflow server

class TrackingServer:
    """`mlflow server` over the PostgreSQL store with artifacts proxied to the moto bucket; stop and start on one port."""

    def __init__(self, backend_uri: str, bucket: ArtifactBucket, log_path: Path):
        self.backend_uri, self.bucket, self.log_path = backend_uri, bucket, log_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, "the server is already running"
        wait_until(lambda: not port_open(self.port), None, f"port {self.port} to be free", timeout=30)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))} | {
            "MLFLOW_S3_ENDPOINT_URL": self.bucket.url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "MLFLOW_DISABLE_TELEMETRY": "true",
        }
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== mlflow server start {time.strftime('%H:%M:%S')} =====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [str(BIN / "mlflow"), "server",
                 "--backend-store-uri", self.backend_uri,
                 "--artifacts-destination", self.bucket.destination, "--serve-artifacts",
                 "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )
        wait_until(lambda: http_ok(f"{self.url}/health"), self.proc, "mlflow server", timeout=timeout)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Signal the server's whole process group (a pod's kill or a crash) and wait until its port is closed."""
        if self.proc is not None:
            stop_group(self.proc, sig)
        wait_until(lambda: not port_open(self.port), None, "the stopped mlflow server's port to close", timeout=30)

    def restart(self, sig: int = signal.SIGTERM) -> None:
        self.stop(sig)
        self.start()


@pytest.fixture(scope="session")
def tracking_server(postgres_url, s3, tmp_path_factory):
    """A running TrackingServer; tests that stop it leave it running again."""
    log_path = tmp_path_factory.mktemp("mlflow-server") / "mlflow-server.log"
    LOGS["mlflow server"] = log_path
    server = TrackingServer(postgres_url, s3, log_path)
    try:
        server.start()
        yield server
    finally:
        if server.proc is not None:
            stop_group(server.proc)


# ---------------------------------------------------------------- pipeline runs against the server

class CutAndRerun:
    """What `cut_and_rerun` saw: the folder, both runs' parent ids, the credentials, the cut run's outputs."""

    def __init__(self, cwd: Path, secrets: dict[str, str]):
        self.cwd, self.secrets = cwd, secrets
        self.cut_id = self.rerun_id = ""
        self.cut_exit: int | None = None
        self.cut_output = self.rerun_output = ""
        self.written: list[Path] = []  # what the cut run's finished tasks wrote, as it stood after the cut
        self.cut_status_before_rerun = ""


@pytest.fixture(scope="session")
def cut_and_rerun(tmp_path_factory, nano_dataset, tracking_server):
    """One nano run on the server, cut off from it for longer than its retries once preprocess has
    finished (tracking.http_retries=2), then, with the server back, a rerun in the same folder. Both
    run with a cluster's credentials in their environment (which must never reach an output).
    The recovery claims are in test_outages.py, the server-side records and the credential scan of
    the rerun in test_tracking_server.py."""
    from mlflow.tracking import MlflowClient

    cwd = tmp_path_factory.mktemp("cut")
    seen = CutAndRerun(cwd, credentials())
    c = MlflowClient(tracking_server.url)
    short = ["--set", "tracking.http_retries=2", "--set", "tracking.http_backoff_factor=1"]
    t0 = int(time.time() * 1000)
    p = start_run(cwd, nano_dataset, tracking_server.url, *short, name="cut", env=seen.secrets)
    wait_for_step(c, "scenesearch-nano", "preprocess", "FINISHED", p, t0)
    cut = newest_parent(c, "scenesearch-nano")
    assert cut.info.start_time > t0
    seen.cut_id = cut.info.run_id
    tracking_server.stop()
    try:
        seen.cut_exit = p.wait(timeout=600)
    finally:
        tracking_server.start()
    seen.cut_output = output(cwd, "cut")
    seen.written = list((cwd / "runs" / "kfp").rglob("*.parquet")) + list((cwd / "runs" / "kfp").rglob("*.npy"))
    seen.cut_status_before_rerun = c.get_run(seen.cut_id).info.status
    p = start_run(cwd, nano_dataset, tracking_server.url, name="rerun", env=seen.secrets)
    assert p.wait(timeout=900) == 0, output(cwd, "rerun")[-3000:]
    seen.rerun_output = output(cwd, "rerun")
    seen.rerun_id = newest_parent(c, "scenesearch-nano").info.run_id
    return seen

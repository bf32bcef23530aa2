"""Shared fixtures: a small generated dataset (session-scoped) and an isolated MLflow store."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("TORCH_HOME", str(ROOT / ".cache" / "torch"))
os.environ.setdefault("XDG_CACHE_HOME", str(ROOT / ".cache"))
os.environ.setdefault("MESA_SHADER_CACHE_DIR", str(ROOT / ".cache" / "mesa"))


# Under pytest-xdist (`make test` runs two workers), the tests that share a session-scoped DAG run
# or server must run on one worker, or each worker would start its own: every module named here
# is one unit of work with the others of its group; any other test is a unit of its own.
# (xdist's `--dist loadgroup` marks tests by rewriting `item._nodeid`, which pytest 9 no longer
# reads, so the grouping is done here, by module.)
XDIST_GROUPS = {
    "tests/e2e/test_dag.py": "e2e",  # smoke_run, served
    "tests/e2e/test_serving_hostile.py": "e2e",
    "tests/e2e/test_concurrent.py": "nano",  # nano_pair
    "tests/e2e/test_kill.py": "nano",
    "tests/integration/test_outages.py": "server",  # PostgreSQL, moto_url, tracking_server, cut_and_rerun
    "tests/integration/test_tracking_server.py": "server",
    "tests/unit/test_storage_s3.py": "server",
}


def xdist_unit(nodeid: str) -> str:
    """The unit of work a test belongs to: its module's group, else the test itself."""
    return XDIST_GROUPS.get(nodeid.split("::", 1)[0], nodeid)


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class SharedFixtureScheduling(LoadScopeScheduling):
        """xdist's load-scope scheduling with `xdist_unit` as the scope: a node gets a new unit
        once it has at most two tests left, so a group runs while the other node takes the rest."""

        def _split_scope(self, nodeid: str) -> str:
            return xdist_unit(nodeid)

    return SharedFixtureScheduling(config, log)


@pytest.fixture(scope="session")
def smoke_cfg():
    from scenesearch import config

    return config.load("smoke")


@pytest.fixture(scope="session")
def smoke_dataset(tmp_path_factory, smoke_cfg):
    """The embedded benchmark at the smoke preset's size, generated once per test session."""
    from scenesearch.data.generate import generate

    root = tmp_path_factory.mktemp("data") / "smoke"
    generate(root, smoke_cfg.data, smoke_cfg.seed)
    return root


@pytest.fixture(scope="session")
def nano_dataset(tmp_path_factory):
    """The embedded benchmark at the nano preset's size (the runs that test outages and recovery)."""
    from scenesearch import config
    from scenesearch.data.generate import generate

    cfg = config.load("nano")
    root = tmp_path_factory.mktemp("data") / "nano"
    generate(root, cfg.data, cfg.seed)
    return root


@pytest.fixture(scope="session")
def moto_url(tmp_path_factory):
    """The session's one moto S3 server, on a free loopback port (storage tests make their own
    buckets on it; the tracking server of tests/integration keeps its artifacts there). Its users
    are one XDIST_GROUPS group, so under pytest-xdist it starts on one worker only."""
    moto = Path(sys.executable).with_name("moto_server")
    if not moto.exists():
        pytest.fail("moto_server is not installed: `make setup` installs moto[server] from requirements.lock")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/moto-api/data.json", timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"moto_server did not start on {url}; its log is {log.name}")
            time.sleep(0.1)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture(scope="session")
def smoke_preprocessed(tmp_path_factory, smoke_dataset, smoke_cfg):
    """The smoke dataset ingested, rendered and preprocessed once per session: {manifest, views, images} folders."""
    from scenesearch import preprocess
    from scenesearch.data import ingest
    from scenesearch.render import step as render

    out = tmp_path_factory.mktemp("preprocessed")
    dirs = {name: out / name for name in ("manifest", "views", "images")}
    ingest.run(str(smoke_dataset), str(dirs["manifest"]), smoke_cfg.data, smoke_cfg.seed)
    render.run(str(dirs["manifest"]), str(dirs["views"]), smoke_cfg.render)
    preprocess.run(str(dirs["manifest"]), str(dirs["views"]), str(dirs["images"]), smoke_cfg.preprocess)
    return dirs


def check_pipeline_run(client, parent_id: str) -> dict[str, str]:
    """Assert that a pipeline run finished with its steps and that each metric was recorded once per step.

    Two runs writing into each other, or a retried call logging twice, show up as a second value
    of a metric at the same step. Returns {step: child run id}.
    """
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED", parent.data.tags.get("error")
    children = client.search_runs([parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'", max_results=1000)
    # one run per step (tag step) and one per method (tag method_key, the evaluate step's)
    for tag in ("step", "method_key"):
        names = [r.data.tags[tag] for r in children if tag in r.data.tags]
        assert len(names) == len(set(names)), f"a {tag} ran twice under {parent_id}: {sorted(names)}"
    steps = [r.data.tags["step"] for r in children if "step" in r.data.tags]
    assert {"ingest", "render", "preprocess", "features", "evaluate", "register"} <= set(steps)
    for run in [parent, *children]:
        assert run.info.status == "FINISHED", (run.info.run_name, run.info.status)
        for key in run.data.metrics:
            history = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert len(history) == len(set(history)), f"{run.info.run_name}: metric {key} recorded twice at a step: {history}"
    return {r.data.tags["step"]: r.info.run_id for r in children if "step" in r.data.tags}


@pytest.fixture
def pipeline_run_check():
    """`check_pipeline_run` for tests of runs that were killed, cut off from the server, or ran at once."""
    return check_pipeline_run

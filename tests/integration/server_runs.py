"""Helpers for the tests that run the DAG against the tracking server (conftest.py and the tests import them)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

# The nano preset: every step and task kind of a run, at the smallest size (the server, not the
# training, is under test).
NANO = ["--preset", "nano"]


def start_run(cwd: Path, dataset: Path, uri: str, *args: str, name: str = "run", env: dict | None = None) -> subprocess.Popen:
    """`scenesearch run` (nano) against `uri` in the background; its output in <cwd>/<name>.log."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | (env or {}) | {"MLFLOW_TRACKING_URI": uri}
    with open(cwd / f"{name}.log", "w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "scenesearch.cli", "run", *NANO, *args, "--data", str(dataset), "--workdir", str(cwd / "runs")],
            cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )


def output(cwd: Path, name: str = "run") -> str:
    return (cwd / f"{name}.log").read_text()


def wait_for_step(client, experiment: str, step: str, status: str, proc: subprocess.Popen, since_ms: int, timeout: float = 600.0) -> None:
    """Until `step`'s run, started after `since_ms` (this test's run, not an earlier one's), has `status`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before {step} was {status}"
        exp = client.get_experiment_by_name(experiment)
        if exp is not None:
            runs = client.search_runs([exp.experiment_id], filter_string=f"tags.step = '{step}' and attributes.start_time > {since_ms}", order_by=["attributes.start_time DESC"], max_results=1)
            if runs and runs[0].info.status == status:
                return
        time.sleep(0.5)
    pytest.fail(f"{step} was not {status} within {timeout:.0f} s")


def newest_parent(client, experiment: str):
    from scenesearch import tracking

    exp = client.get_experiment_by_name(experiment)
    return next(r for r in client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"]) if tracking.PARENT_TAG not in r.data.tags)


def credentials() -> dict[str, str]:
    """Credentials as a cluster's pods hold them (infra's Secret): S3 keys and MLflow's auth variables."""
    import uuid

    return {
        "AWS_ACCESS_KEY_ID": "AKIA" + uuid.uuid4().hex[:16].upper(),
        "AWS_SECRET_ACCESS_KEY": uuid.uuid4().hex + uuid.uuid4().hex[:8],
        "AWS_SESSION_TOKEN": "tok-" + uuid.uuid4().hex,
        "MLFLOW_TRACKING_USERNAME": "user-" + uuid.uuid4().hex[:8],
        "MLFLOW_TRACKING_PASSWORD": "pw-" + uuid.uuid4().hex,
        "MLFLOW_TRACKING_TOKEN": "bearer-" + uuid.uuid4().hex,
    }

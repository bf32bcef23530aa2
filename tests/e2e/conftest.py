"""The e2e fixtures: one uninterrupted `scenesearch run --preset smoke`, shared by every module of
the session (the DAG checks, and the kill tests' reference metrics)."""

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class SmokeRun:
    cwd: Path
    stdout: str
    uri: str
    env: dict
    dataset: Path


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, smoke_dataset):
    """`scenesearch run --preset smoke` once, in a fresh folder with the default (SQLite) store."""
    cwd = tmp_path_factory.mktemp("run")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # exercise the default store
    p = subprocess.run(
        [sys.executable, "-m", "scenesearch.cli", "run", "--preset", "smoke", "--data", str(smoke_dataset), "--workdir", str(cwd / "runs")],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=900,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    uri = f"sqlite:///{cwd / 'mlruns.db'}"
    return SmokeRun(cwd, p.stdout, uri, {**env, "MLFLOW_TRACKING_URI": uri}, smoke_dataset)

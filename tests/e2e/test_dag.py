"""The compiled DAG executed by kfp.local on the smoke preset, checked through the MLflow run it produced."""

import os
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow


def test_scenesearch_run_executes_the_dag_and_logs_to_mlflow(tmp_path, smoke_dataset):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # exercise the default store
    p = subprocess.run(
        [sys.executable, "-m", "scenesearch.cli", "run", "--preset", "smoke", "--data", str(smoke_dataset), "--workdir", str(tmp_path / "runs")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    out = p.stdout
    assert "[test queries]" in out and "vgg_baseline" in out and "random" in out
    assert "Open the MLflow UI with: make ui" in out
    assert (tmp_path / "runs" / "kfp").is_dir()

    c = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    exp = c.get_experiment_by_name("scenesearch-smoke")
    assert exp.artifact_location == (tmp_path / "mlartifacts").as_uri()
    parents = [r for r in c.search_runs([exp.experiment_id]) if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.info.run_name.startswith("smoke-")
    assert parent.info.run_id in out
    params = parent.data.params
    for key in ("git_commit", "dataset_fingerprint", "seed", "weights_used", "features.weights", "render.n_views", "data.root"):
        assert key in params, key
    assert params["weights_used"] == "none"
    assert {"vgg_baseline.test_mAP", "random.test_mAP", "kmeans_nmi", "n_scenes", "render_seconds"} <= set(parent.data.metrics)
    children = c.search_runs([exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert {r.data.tags.get("step") for r in children} >= {"ingest", "render", "preprocess", "features", "similarity", "retrieve", "evaluate"}
    assert {a.path for a in c.list_artifacts(parent.info.run_id)} >= {"pr_curve.png", "gallery.png", "per_class.csv", "rejected.parquet"}


def test_run_with_a_missing_root_fails_in_one_sentence(tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "scenesearch.cli", "run", "--preset", "smoke", "--data", str(tmp_path / "nope")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert p.returncode == 1
    assert p.stderr.strip().splitlines()[-1] == f"scenesearch run: dataset root {tmp_path / 'nope'} does not exist"
    assert "Traceback" not in p.stderr

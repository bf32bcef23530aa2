"""The compiled DAG executed by kfp.local on the smoke preset, checked through the MLflow run it
produced; then the registered champion answers queries (pyfunc, the query CLI, a served request)."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow
MODEL = "models:/scenesearch-smoke@champion"


@dataclass
class SmokeRun:
    cwd: Path
    stdout: str
    uri: str
    env: dict
    dataset: Path


@pytest.fixture(scope="module")
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


def test_scenesearch_run_executes_the_dag_and_logs_to_mlflow(smoke_run):
    tmp_path, out = smoke_run.cwd, smoke_run.stdout
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
    assert {"vgg_baseline.test_mAP", "random.test_mAP", "cvae1.test_mAP", "kmeans_nmi", "n_scenes", "render_seconds"} <= set(parent.data.metrics)
    children = c.search_runs([exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert {r.data.tags.get("step") for r in children} >= {"ingest", "render", "preprocess", "features", "similarity", "train_cvae1", "retrieve", "evaluate", "register"}
    assert {a.path for a in c.list_artifacts(parent.info.run_id)} >= {"pr_curve.png", "gallery.png", "per_class.csv", "rejected.parquet", "comparison.md"}
    assert "cvae1" in out.split("[test queries]")[1]  # the CVAE's row in the printed comparison table

    champion = c.get_model_version_by_alias("scenesearch-smoke", "champion")
    assert champion.tags["dataset_fingerprint"] == params["dataset_fingerprint"]
    assert float(champion.tags["test_mAP"]) == pytest.approx(parent.data.metrics["cvae1.test_mAP"], abs=1e-6)
    assert params["registered.cvae1"] == f"scenesearch-smoke/{champion.version} (champion)"


def _query_images(dataset: Path) -> list[Path]:
    return sorted((dataset / "queries").rglob("*.png"))[:2]


def test_the_champion_loads_as_pyfunc_and_ranks_every_scene(smoke_run):
    import mlflow

    from scenesearch.io import decode_image

    mlflow.set_tracking_uri(smoke_run.uri)
    model = mlflow.pyfunc.load_model(MODEL)
    images = [decode_image(p.name, p.read_bytes()) for p in _query_images(smoke_run.dataset)]
    frame = model.predict(np.stack(images), params={"top_k": 16})
    assert list(frame.columns) == ["query", "rank", "scene_id", "label", "distance"]
    assert len(frame) == 2 * 16 and frame.groupby("query").scene_id.nunique().tolist() == [16, 16]  # every scene once
    for _, group in frame.groupby("query"):
        assert group["rank"].tolist() == list(range(1, 17)) and group["distance"].is_monotonic_increasing
    # the same answer as the retrieve step's distance matrix for these queries
    again = model.predict(images[0][None], params={"top_k": 3})
    assert again.scene_id.tolist() == frame[frame["query"] == 0].scene_id.tolist()[:3]


def test_query_cli_answers_from_the_champion_and_names_bad_images(smoke_run):
    good = _query_images(smoke_run.dataset)
    bad = smoke_run.cwd / "broken.png"
    bad.write_bytes(b"not a png")
    cmd = [sys.executable, "-m", "scenesearch.cli", "query", "--preset", "smoke", "--top-k", "3"]
    p = subprocess.run([*cmd, "--json", *map(str, good)], cwd=smoke_run.cwd, env=smoke_run.env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    answers = json.loads(p.stdout)
    assert [a["image"] for a in answers] == list(map(str, good))
    assert all(len(a["results"]) == 3 and {"rank", "scene_id", "label", "distance"} <= set(a["results"][0]) for a in answers)

    p = subprocess.run([*cmd, *map(str, good), str(bad)], cwd=smoke_run.cwd, env=smoke_run.env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert f"{bad}: " in p.stdout and "  1  " in p.stdout  # the good images are still answered
    assert p.stderr.strip().splitlines()[-1] == "scenesearch query: 1 of 3 query images could not be read (see above)"

    p = subprocess.run([*cmd, "--model", "models:/nope@champion", str(good[0])], cwd=smoke_run.cwd, env=smoke_run.env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith("scenesearch query: cannot load the model models:/nope@champion")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mlflow_models_serve_answers_one_request(smoke_run):
    from scenesearch.io import decode_image

    port = _free_port()
    log = (smoke_run.cwd / "serve.log").open("w")
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", MODEL, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        # the scoring server runs `uvicorn` from PATH: the venv's, as after `source .venv/bin/activate`
        cwd=smoke_run.cwd, env={**smoke_run.env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, (smoke_run.cwd / "serve.log").read_text()[-3000:]
                time.sleep(0.5)
        image = decode_image("q", _query_images(smoke_run.dataset)[0].read_bytes())
        body = json.dumps({"inputs": image[None].tolist(), "params": {"top_k": 4}}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": "application/json"})
        predictions = json.loads(urllib.request.urlopen(req, timeout=60).read())["predictions"]
        assert [p["rank"] for p in predictions] == [1, 2, 3, 4]
        assert all(p["query"] == 0 and p["scene_id"] and p["distance"] >= 0 for p in predictions)
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_run_with_a_missing_root_fails_in_one_sentence(tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "scenesearch.cli", "run", "--preset", "smoke", "--data", str(tmp_path / "nope")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert p.returncode == 1
    assert p.stderr.strip().splitlines()[-1] == f"scenesearch run: dataset root {tmp_path / 'nope'} does not exist"
    assert "Traceback" not in p.stderr

"""The compiled DAG executed by kfp.local on the smoke preset, checked through the MLflow run it
produced; then the registered champion answers queries (pyfunc, the query CLI, a served request)."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow
MODEL = "models:/scenesearch-smoke@champion"


def test_scenesearch_run_executes_the_dag_and_logs_to_mlflow(smoke_run):
    from scenesearch.tracking import ui_command

    tmp_path, out = smoke_run.cwd, smoke_run.stdout
    assert "[test queries]" in out and "vgg_baseline" in out and "random" in out
    assert f"Open the MLflow UI with: {ui_command(smoke_run.uri)}" in out and "--backend-store-uri " + smoke_run.uri in out  # the store it used
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
    # what the MLflow UI's runs table shows: a model-training experiment, the dataset, the models
    assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"
    assert [d.dataset.digest for d in parent.inputs.dataset_inputs] == [params["dataset_fingerprint"]]
    assert len(parent.outputs.model_outputs) == 2  # cvae1 and vgg_baseline; random serves nothing
    assert {"test_vgg_baseline_mAP", "test_random_mAP", "test_cvae1_mAP", "test_cvae1_photo_mAP", "kmeans_nmi", "n_scenes", "render_seconds"} <= set(parent.data.metrics)
    children = c.search_runs([exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    steps = {"ingest", "render", "preprocess", "features", "similarity", "train_cvae1", "train_vgg_baseline", "train_random", "retrieve", "evaluate", "register"}
    assert {r.data.tags.get("step") for r in children} >= steps
    for r in children:
        if r.data.tags.get("step", "").startswith("train_") or r.data.tags.get("method_key"):
            assert [d.dataset.digest for d in r.inputs.dataset_inputs] == [params["dataset_fingerprint"]], r.info.run_name
    assert {a.path for a in c.list_artifacts(parent.info.run_id)} >= {"pr_curve.png", "gallery_cvae1.png", "gallery_vgg_baseline.png", "per_class.csv", "rejected.parquet", "comparison.md"}
    table = out.split("[test queries]")[1]
    assert "cvae1" in table and f"{parent.data.metrics['test_cvae1_mAP']:.3f}" in table  # the printed table is the logged result

    champion = c.get_model_version_by_alias("scenesearch-smoke", "champion")
    key = champion.tags["key"]
    assert champion.tags["dataset_fingerprint"] == params["dataset_fingerprint"] and champion.tags["method"] in ("cvae_m2", "vgg_baseline")
    assert float(champion.tags["test_mAP"]) == pytest.approx(parent.data.metrics[f"test_{key}_mAP"], abs=1e-6)
    assert params[f"registered.{key}"] == f"scenesearch-smoke/{champion.version} (champion)"
    assert parent.data.metrics[f"test_{key}_mAP"] >= max(parent.data.metrics["test_cvae1_mAP"], parent.data.metrics["test_vgg_baseline_mAP"])


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


def _run_smoke(cwd: Path, dataset: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in (env or os.environ).items() if k != "MLFLOW_TRACKING_URI"}
    cmd = [sys.executable, "-m", "scenesearch.cli", "run", "--data", str(dataset), "--workdir", str(cwd / "runs"), *extra]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def test_a_method_added_through_the_registry_alone_runs_through_the_dag_the_registry_and_query(tmp_path, smoke_dataset):
    """A plugin module (tests/e2e/plugins/colour_histogram.py) and a preset naming it: no other edit."""
    plugins = Path(__file__).parent / "plugins"
    preset = tmp_path / "histogram.yaml"
    smoke = (Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml").read_text()
    preset.write_text(smoke.split("methods:")[0] + "methods:\n  colour_histogram:\n    bins: 4\n  random: {}\nplugins: [colour_histogram]\n" + smoke.split("random: {}\n")[1])
    env = {**os.environ, "PYTHONPATH": f"{plugins}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    p = _run_smoke(tmp_path, smoke_dataset, "--config", str(preset), env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "colour_histogram" in p.stdout.split("[test queries]")[1]

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("scenesearch-smoke")
    parent = next(r for r in c.search_runs([exp.experiment_id]) if "mlflow.parentRunId" not in r.data.tags)
    assert 0.0 <= parent.data.metrics["test_colour_histogram_mAP"] <= 1.0
    trained = next(r for r in c.search_runs([exp.experiment_id], filter_string="tags.step = 'train_colour_histogram'"))
    assert trained.data.metrics["n_clusters_seen"] == 4  # the k-means clusters reached the method (one per class)
    champion = c.get_model_version_by_alias("scenesearch-smoke", "champion")
    assert champion.tags["method"] == "colour_histogram" and champion.tags["variant"] == "-"

    # `scenesearch query` answers from it in a process that has no PYTHONPATH to the plugin: the model carries its code
    image = _query_images(smoke_dataset)[0]
    q = subprocess.run(
        [sys.executable, "-m", "scenesearch.cli", "query", "--config", str(preset), "--top-k", "3", "--json", str(image)],
        cwd=tmp_path, env={**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "MLFLOW_TRACKING_URI": uri}, capture_output=True, text=True, timeout=300,
    )
    assert q.returncode == 1 and "plugins: cannot import the method module 'colour_histogram'" in q.stderr  # the config's plugin must be importable ...
    q = subprocess.run(
        [sys.executable, "-m", "scenesearch.cli", "query", "--preset", "smoke", "--top-k", "3", "--json", str(image)],
        cwd=tmp_path, env={**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "MLFLOW_TRACKING_URI": uri}, capture_output=True, text=True, timeout=300,
    )
    assert q.returncode == 0, q.stderr[-2000:]  # ... but the served model needs no PYTHONPATH: it ships the plugin
    answer = json.loads(q.stdout)[0]
    assert [r["rank"] for r in answer["results"]] == [1, 2, 3] and all(r["distance"] >= 0 for r in answer["results"])


def test_zero_shot_split_trains_on_seen_classes_and_reports_unseen_metrics(tmp_path, smoke_dataset):
    p = _run_smoke(tmp_path, smoke_dataset, "--preset", "smoke", "--set", "data.split=zero_shot", "--set", "data.unseen_classes=[street]")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "[test unseen queries]" in p.stdout and "[test seen queries]" in p.stdout and "[test generalised queries]" in p.stdout
    assert "[zero-shot: unseen-class test queries" in p.stdout
    c = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    exp = c.get_experiment_by_name("scenesearch-smoke")
    parent = next(r for r in c.search_runs([exp.experiment_id]) if "mlflow.parentRunId" not in r.data.tags)
    for key in ("cvae1", "vgg_baseline", "random"):
        assert 0.0 <= parent.data.metrics[f"test_{key}_unseen_mAP"] <= 1.0 and f"test_{key}_seen_mAP" in parent.data.metrics
    # the CVAE's classifier knows only the seen classes: the unseen class's label never reached training
    trained = next(r for r in c.search_runs([exp.experiment_id], filter_string="tags.step = 'train_cvae1'"))
    assert "street" not in trained.data.params["classes"].split(",") and len(trained.data.params["classes"].split(",")) == 3
    report = next((tmp_path / "runs" / "kfp").glob("scenesearch-*/evaluate/report/metrics.json"))
    metrics = json.loads(report.read_text())
    assert metrics["cvae1"]["test_unseen_mAP"] == pytest.approx(parent.data.metrics["test_cvae1_unseen_mAP"])
    assert not any(k.startswith("val_unseen") for k in metrics["cvae1"])  # unseen classes are all in the test split
    # the champion is chosen on the unseen classes' mAP, what zero-shot retrieval is judged on
    versions = c.search_model_versions("name='scenesearch-smoke'")
    assert len(versions) == 2 and all("test_unseen_mAP" in v.tags for v in versions)
    second = max(versions, key=lambda v: int(v.version))
    assert "test_unseen_mAP" in second.tags["promotion"]



def test_selfsup_weights_train_the_backbone_once_and_every_shard_and_method_uses_it(tmp_path, smoke_dataset):
    """features.weights=selfsup: a pretrain task before the describe shards (the smoke preset has two),
    its backbone in the features output, and vgg_baseline's served descriptor built from it."""
    import torch

    p = _run_smoke(tmp_path, smoke_dataset, "--preset", "smoke", "--set", "features.weights=selfsup",
                   "--set", "features.selfsup.epochs=1", "--set", "features.selfsup.max_images=64")
    assert p.returncode == 0, p.stderr[-3000:]
    c = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    exp = c.get_experiment_by_name("scenesearch-smoke")
    parent = next(r for r in c.search_runs([exp.experiment_id]) if "mlflow.parentRunId" not in r.data.tags)
    assert parent.data.params["weights_used"] == "selfsup"
    pretrained = next(r for r in c.search_runs([exp.experiment_id], filter_string="tags.step = 'pretrain'"))
    assert pretrained.data.metrics["selfsup_epochs"] == 1
    root = next((tmp_path / "runs" / "kfp").glob("scenesearch-*"))
    backbone = torch.load(next(root.glob("features/**/backbone.pt")), weights_only=True)
    served = torch.load(next(root.glob("for-loop-*/train/model/descriptor.pt")), weights_only=True)
    # the baseline's descriptor carries the trained conv weights (its own names, same tensors)
    trained = [v for k, v in backbone.items() if k.startswith("features.")]
    assert trained and any(torch.equal(trained[0], v) for v in served.values())


def test_zero_shot_sketch_and_photo_run_trains_descriptor_methods_and_answers_a_sketch(tmp_path, smoke_cfg):
    """The zero-shot protocol end to end on a smoke-sized benchmark with sketches: the descriptor
    methods train as their own branches on seen classes, the zero-shot table is printed per
    domain, every serving method is registered and a registered zs_cvae answers a sketch."""
    import dataclasses

    from scenesearch.data.generate import generate

    data = tmp_path / "data"
    generate(data, dataclasses.replace(smoke_cfg.data, sketch_queries=True), smoke_cfg.seed)
    assert len(list((data / "sketches" / "street").glob("*.png"))) == smoke_cfg.data.queries_per_class
    preset = tmp_path / "zs.yaml"
    smoke = (Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml").read_text()
    methods = ("methods:\n  zs_cvae:\n    n_samples: 12\n    n_centres: 3\n  parallel_vae: {}\n  triplet: {}\n  vgg_baseline: {}\n  random: {}\n"
               # a CBIR baseline (a variant with learned whitening and query expansion) and a fine-tuned CNN beside them
               "  pooled:\n    variants: [gem_lw_aqe]\n    whiten_dim: 8\n  triplet_gem:\n    epochs: 2\n    tuples: 32\n    pool_size: 40\n")
    preset.write_text(smoke.split("methods:")[0] + methods + smoke.split("random: {}\n")[1])
    p = _run_smoke(tmp_path, data, "--config", str(preset), "--set", "data.split=zero_shot", "--set", "data.unseen_classes=[street]")
    assert p.returncode == 0, p.stderr[-3000:]
    table = p.stdout.split("[zero-shot: unseen-class test queries")[1]
    assert "photo" in table and "sketch" in table and all(m in table for m in ("zs_cvae", "parallel_vae", "triplet", "vgg_baseline", "random", "gem_lw_aqe", "triplet_gem"))
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("scenesearch-smoke")
    parent = next(r for r in c.search_runs([exp.experiment_id]) if "mlflow.parentRunId" not in r.data.tags)
    for key in ("zs_cvae", "parallel_vae", "triplet", "triplet_gem"):
        for group in ("unseen_sketch", "unseen_photo", "generalised_sketch"):
            assert 0.0 <= parent.data.metrics[f"test_{key}_{group}_mAP"] <= 1.0, (key, group)
        trained = next(r for r in c.search_runs([exp.experiment_id], filter_string=f"tags.step = 'train_{key}'"))
        assert "street" not in trained.data.params["classes"].split(",")
        assert len(c.get_metric_history(trained.info.run_id, "val_mAP")) == trained.data.metrics["epochs_run"]  # per-epoch metrics
    # the smoke dataset's semantics.csv reaches parallel_vae's semantic term
    pv = next(r for r in c.search_runs([exp.experiment_id], filter_string="tags.step = 'train_parallel_vae'"))
    assert pv.data.params["semantics"].endswith("attributes") and "train_semantic" in pv.data.metrics
    versions = {v.tags["method"]: v for v in c.search_model_versions("name='scenesearch-smoke'")}
    assert set(versions) == {"zs_cvae", "parallel_vae", "triplet", "vgg_baseline", "pooled", "triplet_gem"}
    sketch = sorted((data / "sketches" / "street").glob("*.png"))[0]
    q = subprocess.run(
        [sys.executable, "-m", "scenesearch.cli", "query", "--preset", "smoke", "--model", f"models:/scenesearch-smoke/{versions['zs_cvae'].version}",
         "--top-k", "3", "--json", str(sketch)],
        cwd=tmp_path, env={**os.environ, "MLFLOW_TRACKING_URI": uri}, capture_output=True, text=True, timeout=300,
    )
    assert q.returncode == 0, q.stderr[-2000:]
    answer = json.loads(q.stdout)[0]
    assert [r["rank"] for r in answer["results"]] == [1, 2, 3] and all(r["distance"] >= 0 for r in answer["results"])


def test_scene_mixing_runs_unsupervised_through_the_dag_and_shows_its_grids_probe_and_fid_vgg(tmp_path, smoke_dataset):
    """lorbms through KFP and MLflow: per-epoch losses and grids of mixed scenes in its train run,
    its retrieval row, and its report (linear probe, fid_vgg and why no FID) printed at the end."""
    preset = tmp_path / "mixing.yaml"
    smoke = (Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml").read_text()
    methods = ("methods:\n  lorbms:\n    channels: [4, 8, 8]\n    feature_channels: 4\n    epochs: 2\n    batch_size: 16\n"
               "    probe_seeds: 2\n    finetune_epochs: 1\n    fidelity_images: 16\n    grid_rows: 3\n  random: {}\n")
    preset.write_text(smoke.split("methods:")[0].replace("similarity:\n", "similarity:\n  n_clusters: 3\n") + methods + smoke.split("random: {}\n")[1])
    p = _run_smoke(tmp_path, smoke_dataset, "--config", str(preset))
    assert p.returncode == 0, p.stderr[-3000:]
    out = p.stdout
    assert "lorbms" in out.split("[test queries]")[1]
    report = out.split("### lorbms: linear probe")[1]
    for row in ("random encoder", "LORBMS encoder (frozen)", "LORBMS encoder (fine-tuned, 1 epochs)", "LORBMS discriminator (frozen)", "VGG16 descriptor + PCA (weights: none)"):
        assert row in report, row
    assert "fid_vgg" in report and "FID and IS not computed: evaluate.inception_weights is not set" in report

    c = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    exp = c.get_experiment_by_name("scenesearch-smoke")
    run = next(r for r in c.search_runs([exp.experiment_id], filter_string="tags.step = 'train_lorbms'"))
    assert [m.step for m in c.get_metric_history(run.info.run_id, "d_accuracy")] == [1, 2]
    assert {"g_rec", "g_adv", "g_cls", "d_loss", "d_bit_accuracy", "probe_encoder_mean", "probe_vgg_sd", "fid_vgg"} <= set(run.data.metrics)
    assert "fid" not in run.data.metrics and "FID and IS not computed" in run.data.params["fid"]
    images = [a.path for a in c.list_artifacts(run.info.run_id, "images")]
    grids = [p for p in images if "mixed_scenes" in p and p.endswith(".png")]
    assert len(grids) == 2, images  # one grid of mixed scenes per epoch
    assert "report.md" in {a.path for a in c.list_artifacts(run.info.run_id)}
    parent = next(r for r in c.search_runs([exp.experiment_id]) if "mlflow.parentRunId" not in r.data.tags)
    assert "report_lorbms.md" in {a.path for a in c.list_artifacts(parent.info.run_id)}

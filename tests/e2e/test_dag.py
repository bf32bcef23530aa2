"""The compiled DAG executed by kfp.local, checked through the MLflow run it produced; then the
registered models answer queries (pyfunc, the query CLI, a served request).

Every test here reads the session's one shared run (`smoke_run`, tests/e2e/e2e.yaml): the smoke
sizes with a zero-shot split (street unseen) and sketch queries, selfsup weights, and one method
of each family, a plugin among them. Before, each of these claims ran a DAG of its own.
"""

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow
TRAINED = {"cvae1", "vgg_baseline", "random", "colour_histogram", "zs_cvae", "parallel_vae", "triplet", "gem_lw_aqe", "triplet_gem", "lorbms"}


def _client(run) -> MlflowClient:
    return MlflowClient(run.uri)


def _experiment(run):
    return _client(run).get_experiment_by_name("scenesearch-smoke")


def _parent(run):
    c = _client(run)
    parents = [r for r in c.search_runs([_experiment(run).experiment_id]) if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    return parents[0]


def _step(run, step: str):
    return next(iter(_client(run).search_runs([_experiment(run).experiment_id], filter_string=f"tags.step = '{step}'")))


def _pipeline_root(run) -> Path:
    return next((run.cwd / "runs" / "kfp").glob("scenesearch-*"))


def _model_dir(run, key: str) -> Path:
    """The train task's model folder of the entry `key` (its method.json names it)."""
    for d in _pipeline_root(run).glob("for-loop-*/train/model"):
        if json.loads((d / "method.json").read_text()).get("key") == key:
            return d
    raise AssertionError(f"no model folder for {key}")


def _query_images(dataset: Path, folder: str = "queries") -> list[Path]:
    return sorted((dataset / folder).rglob("*.png"))[:2]


# ------------------------------------------------------------------------------------------
# the run, its MLflow records and its printed tables
# ------------------------------------------------------------------------------------------


def test_scenesearch_run_executes_the_dag_and_logs_to_mlflow(smoke_run):
    from scenesearch.tracking import ui_command

    tmp_path, out = smoke_run.cwd, smoke_run.stdout
    assert "[test queries]" in out and "vgg_baseline" in out and "random" in out
    assert f"Open the MLflow UI with: {ui_command(smoke_run.uri)}" in out and "--backend-store-uri " + smoke_run.uri in out  # the store it used
    assert (tmp_path / "runs" / "kfp").is_dir()

    c = _client(smoke_run)
    exp = _experiment(smoke_run)
    assert exp.artifact_location == (tmp_path / "mlartifacts").as_uri()
    parent = _parent(smoke_run)
    assert parent.info.status == "FINISHED" and parent.info.run_name.startswith("smoke-")
    assert parent.info.run_id in out
    params = parent.data.params
    for key in ("git_commit", "dataset_fingerprint", "seed", "weights_used", "features.weights", "render.n_views", "data.root"):
        assert key in params, key
    # what the MLflow UI's runs table shows: a model-training experiment, the dataset, the models
    assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"
    assert [d.dataset.digest for d in parent.inputs.dataset_inputs] == [params["dataset_fingerprint"]]
    assert len(parent.outputs.model_outputs) == len(TRAINED) - 1  # every method but random serves a model
    assert {"test_vgg_baseline_mAP", "test_random_mAP", "test_cvae1_mAP", "test_cvae1_photo_mAP", "kmeans_nmi", "n_scenes", "render_seconds"} <= set(parent.data.metrics)
    children = c.search_runs([exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'", max_results=1000)
    steps = {"ingest", "render", "preprocess", "pretrain", "features", "similarity", "retrieve", "evaluate", "register"} | {f"train_{k}" for k in TRAINED}
    assert {r.data.tags.get("step") for r in children} >= steps
    for r in children:
        if r.data.tags.get("step", "").startswith("train_") or r.data.tags.get("method_key"):
            assert [d.dataset.digest for d in r.inputs.dataset_inputs] == [params["dataset_fingerprint"]], r.info.run_name
    assert {a.path for a in c.list_artifacts(parent.info.run_id)} >= {"pr_curve.png", "gallery_cvae1.png", "gallery_vgg_baseline.png", "per_class.csv", "rejected.parquet", "comparison.md"}
    table = out.split("[test queries]")[1]
    assert all(key in table for key in TRAINED) and f"{parent.data.metrics['test_cvae1_mAP']:.3f}" in table  # the printed table is the logged result


def test_every_serving_method_is_registered_and_the_champion_is_the_best_on_unseen_classes(smoke_run):
    """Zero-shot retrieval is judged on the unseen classes: the champion is chosen on test_unseen_mAP."""
    c = _client(smoke_run)
    parent = _parent(smoke_run)
    m, params = parent.data.metrics, parent.data.params
    versions = smoke_run.versions()
    assert set(versions) == smoke_run.serving
    for v in versions.values():
        assert {"method", "variant", "key", "dataset_fingerprint", "git_commit", "test_unseen_mAP"} <= set(v.tags)
        assert v.tags["dataset_fingerprint"] == params["dataset_fingerprint"]
        assert float(v.tags["test_unseen_mAP"]) == pytest.approx(m[f"test_{v.tags['key']}_unseen_mAP"], abs=1e-6)
    first = min(versions.values(), key=lambda v: int(v.version))
    assert all("test_unseen_mAP" in v.tags["promotion"] for v in versions.values() if v is not first)
    champion = c.get_model_version_by_alias(smoke_run.model_name, "champion")
    key = champion.tags["key"]
    assert params[f"registered.{key}"] == f"{smoke_run.model_name}/{champion.version} (champion)"
    assert m[f"test_{key}_unseen_mAP"] == max(m[f"test_{v.tags['key']}_unseen_mAP"] for v in versions.values())
    # the plugin is registered as itself, with no variant
    assert versions["colour_histogram"].tags["variant"] == "-"


def test_zero_shot_split_trains_on_seen_classes_and_reports_unseen_metrics(smoke_run):
    out = smoke_run.stdout
    assert "[test unseen queries]" in out and "[test seen queries]" in out and "[test generalised queries]" in out
    parent = _parent(smoke_run)
    for key in TRAINED:
        assert 0.0 <= parent.data.metrics[f"test_{key}_unseen_mAP"] <= 1.0 and f"test_{key}_seen_mAP" in parent.data.metrics
    # the CVAE's classifier knows only the seen classes: the unseen class's label never reached training
    trained = _step(smoke_run, "train_cvae1")
    assert "street" not in trained.data.params["classes"].split(",") and len(trained.data.params["classes"].split(",")) == 3
    metrics = json.loads((_pipeline_root(smoke_run) / "evaluate" / "report" / "metrics.json").read_text())
    assert metrics["cvae1"]["test_unseen_mAP"] == pytest.approx(parent.data.metrics["test_cvae1_unseen_mAP"])
    assert not any(k.startswith("val_unseen") for k in metrics["cvae1"])  # unseen classes are all in the test split


def test_the_zero_shot_table_per_domain_and_the_descriptor_methods_trained_on_seen_classes(smoke_run):
    """The zero-shot protocol with sketches: the descriptor methods train as their own branches on
    seen classes with per-epoch metrics, and the zero-shot table is printed per query domain."""
    table = smoke_run.stdout.split("[zero-shot: unseen-class test queries")[1]
    assert "photo" in table and "sketch" in table and all(key in table for key in TRAINED)
    parent = _parent(smoke_run)
    c = _client(smoke_run)
    for key in ("zs_cvae", "parallel_vae", "triplet", "triplet_gem"):
        for group in ("unseen_sketch", "unseen_photo", "generalised_sketch"):
            assert 0.0 <= parent.data.metrics[f"test_{key}_{group}_mAP"] <= 1.0, (key, group)
        trained = _step(smoke_run, f"train_{key}")
        assert "street" not in trained.data.params["classes"].split(",")
        assert len(c.get_metric_history(trained.info.run_id, "val_mAP")) == trained.data.metrics["epochs_run"]  # per-epoch metrics
    # the dataset's semantics.csv reaches parallel_vae's semantic term
    pv = _step(smoke_run, "train_parallel_vae")
    assert pv.data.params["semantics"].endswith("attributes") and "train_semantic" in pv.data.metrics


def test_selfsup_weights_train_the_backbone_once_and_every_shard_and_method_uses_it(smoke_run):
    """features.weights=selfsup: a pretrain task before the describe shards (two here), its backbone
    in the features output, and vgg_baseline's served descriptor built from it."""
    assert _parent(smoke_run).data.params["weights_used"] == "selfsup"
    assert _step(smoke_run, "pretrain").data.metrics["selfsup_epochs"] == 1
    root = _pipeline_root(smoke_run)
    backbone = torch.load(next(root.glob("features/**/backbone.pt")), weights_only=True)
    served = torch.load(_model_dir(smoke_run, "vgg_baseline") / "descriptor.pt", weights_only=True)
    # the baseline's descriptor carries the trained conv weights (its own names, same tensors)
    trained = [v for k, v in backbone.items() if k.startswith("features.")]
    assert trained and any(torch.equal(trained[0], v) for v in served.values())


def test_scene_mixing_runs_unsupervised_through_the_dag_and_shows_its_grids_probe_and_fid_vgg(smoke_run):
    """lorbms through KFP and MLflow: per-epoch losses and grids of mixed scenes in its train run,
    its retrieval row, and its report (linear probe, fid_vgg and why no FID) printed at the end."""
    report = smoke_run.stdout.split("### lorbms: linear probe")[1]
    for row in ("random encoder", "LORBMS encoder (frozen)", "LORBMS encoder (fine-tuned, 1 epochs)", "LORBMS discriminator (frozen)", "VGG16 descriptor + PCA (weights: selfsup)"):
        assert row in report, row
    assert "fid_vgg" in report and "FID and IS not computed: evaluate.inception_weights is not set" in report
    c = _client(smoke_run)
    run = _step(smoke_run, "train_lorbms")
    assert [m.step for m in c.get_metric_history(run.info.run_id, "d_accuracy")] == [1, 2]
    assert {"g_rec", "g_adv", "g_cls", "d_loss", "d_bit_accuracy", "probe_encoder_mean", "probe_vgg_sd", "fid_vgg"} <= set(run.data.metrics)
    assert "fid" not in run.data.metrics and "FID and IS not computed" in run.data.params["fid"]
    images = [a.path for a in c.list_artifacts(run.info.run_id, "images")]
    grids = [p for p in images if "mixed_scenes" in p and p.endswith(".png")]
    assert len(grids) == 2, images  # one grid of mixed scenes per epoch
    assert "report.md" in {a.path for a in c.list_artifacts(run.info.run_id)}
    assert "report_lorbms.md" in {a.path for a in c.list_artifacts(_parent(smoke_run).info.run_id)}


def test_a_method_added_through_the_registry_alone_runs_through_the_dag_the_registry_and_query(smoke_run):
    """A plugin module (tests/e2e/plugins/colour_histogram.py) named in the config: no other edit.
    Its model answers `scenesearch query` in a process with no PYTHONPATH to it: the model carries its code."""
    trained = _step(smoke_run, "train_colour_histogram")
    assert trained.data.metrics["n_clusters_seen"] == 3  # the k-means clusters reached the method (similarity.n_clusters)
    image = _query_images(smoke_run.dataset)[0]
    version = smoke_run.versions()["colour_histogram"].version
    query = [sys.executable, "-m", "scenesearch.cli", "query", "--top-k", "3", "--json", str(image)]
    q = subprocess.run([*query, "--config", str(smoke_run.config)], cwd=smoke_run.cwd, env=smoke_run.env, capture_output=True, text=True, timeout=300)
    assert q.returncode == 1 and "plugins: cannot import the method module 'colour_histogram'" in q.stderr  # the config's plugin must be importable ...
    q = subprocess.run([*query, "--preset", "smoke", "--model", f"models:/{smoke_run.model_name}/{version}"], cwd=smoke_run.cwd, env=smoke_run.env, capture_output=True, text=True, timeout=300)
    assert q.returncode == 0, q.stderr[-2000:]  # ... but the served model needs no PYTHONPATH: it ships the plugin
    answer = json.loads(q.stdout)[0]
    assert [r["rank"] for r in answer["results"]] == [1, 2, 3] and all(r["distance"] >= 0 for r in answer["results"])


# ------------------------------------------------------------------------------------------
# the registered models answer queries
# ------------------------------------------------------------------------------------------


def test_the_champion_loads_as_pyfunc_and_ranks_every_scene(smoke_run):
    import mlflow

    from scenesearch.io import decode_image

    n_scenes = int(_parent(smoke_run).data.metrics["n_scenes"])
    mlflow.set_tracking_uri(smoke_run.uri)
    model = mlflow.pyfunc.load_model(f"models:/{smoke_run.model_name}@champion")
    images = [decode_image(p.name, p.read_bytes()) for p in _query_images(smoke_run.dataset)]
    frame = model.predict(np.stack(images), params={"top_k": n_scenes})
    assert list(frame.columns) == ["query", "rank", "scene_id", "label", "distance"]
    assert len(frame) == 2 * n_scenes and frame.groupby("query").scene_id.nunique().tolist() == [n_scenes, n_scenes]  # every scene once
    for _, group in frame.groupby("query"):
        assert group["rank"].tolist() == list(range(1, n_scenes + 1)) and group["distance"].is_monotonic_increasing
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


def test_a_registered_zero_shot_model_answers_a_sketch(smoke_run):
    sketch = sorted((smoke_run.dataset / "sketches" / "street").glob("*.png"))[0]
    version = smoke_run.versions()["zs_cvae"].version
    q = subprocess.run(
        [sys.executable, "-m", "scenesearch.cli", "query", "--preset", "smoke", "--model", f"models:/{smoke_run.model_name}/{version}", "--top-k", "3", "--json", str(sketch)],
        cwd=smoke_run.cwd, env=smoke_run.env, capture_output=True, text=True, timeout=300,
    )
    assert q.returncode == 0, q.stderr[-2000:]
    answer = json.loads(q.stdout)[0]
    assert [r["rank"] for r in answer["results"]] == [1, 2, 3] and all(r["distance"] >= 0 for r in answer["results"])


def test_mlflow_models_serve_answers_one_request(smoke_run, served):
    from scenesearch.io import decode_image

    image = decode_image("q", _query_images(smoke_run.dataset)[0].read_bytes())
    body = json.dumps({"inputs": image[None].tolist(), "params": {"top_k": 4}}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{served.port}/invocations", data=body, headers={"Content-Type": "application/json"})
    predictions = json.loads(urllib.request.urlopen(req, timeout=60).read())["predictions"]
    assert [p["rank"] for p in predictions] == [1, 2, 3, 4]
    assert all(p["query"] == 0 and p["scene_id"] and p["distance"] >= 0 for p in predictions)


def test_run_with_a_missing_root_fails_in_one_sentence(tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "scenesearch.cli", "run", "--preset", "smoke", "--data", str(tmp_path / "nope")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert p.returncode == 1
    assert p.stderr.strip().splitlines()[-1] == f"scenesearch run: dataset root {tmp_path / 'nope'} does not exist"
    assert "Traceback" not in p.stderr

"""Every component called through `.python_func` in DAG order, logging into a real MLflow store."""

import json
import subprocess
import sys

import pytest
from kfp.dsl import Artifact, Dataset, Metrics, Model
from mlflow.tracking import MlflowClient

from components.evaluate import evaluate
from components.features import features
from components.ingest import ingest
from components.preprocess import preprocess
from components.register import register
from components.render import render
from components.retrieve import retrieve
from components.similarity import similarity
from components.start_run import start_run
from components.train import train

STEPS = {"ingest", "render", "preprocess", "features", "similarity", "train_cvae1", "retrieve", "evaluate", "register"}


def _artifact(cls, tmp_path, name):
    return cls(name=name, uri=str(tmp_path / name), metadata={})


def test_components_chain_and_log_to_mlflow(tmp_path, smoke_dataset, smoke_cfg, mlflow_uri):
    cfg = smoke_cfg.to_json()
    run_artifact = _artifact(Artifact, tmp_path, "run")
    run_id = start_run.python_func(config_json=cfg, run_name="components-test", git_commit="abc123", run=run_artifact)
    common = {"config_json": cfg, "parent_run_id": run_id}
    manifest, views, images, feats, clusters, rankings, report = (
        _artifact(Dataset, tmp_path, n) for n in ("manifest", "views", "images", "features", "clusters", "rankings", "report")
    )
    sim_metrics, eval_metrics = _artifact(Metrics, tmp_path, "sim_metrics"), _artifact(Metrics, tmp_path, "eval_metrics")

    fingerprint = ingest.python_func(data_root=str(smoke_dataset), manifest=manifest, **common)
    render.python_func(manifest=manifest, views=views, **common)
    preprocess.python_func(manifest=manifest, views=views, images=images, **common)
    features.python_func(images=images, features=feats, **common)
    similarity.python_func(features=feats, clusters=clusters, metrics=sim_metrics, **common)
    model = _artifact(Model, tmp_path, "model")
    train.python_func(images=images, architecture="cvae1", model=model, config_json=cfg, run=run_artifact)
    retrieve.python_func(features=feats, models=[model], rankings=rankings, **common)
    evaluate.python_func(rankings=rankings, manifest=manifest, views=views, images=images, report=report, metrics=eval_metrics, **common)
    register.python_func(fingerprint=fingerprint, report=report, models=[model], **common)

    assert manifest.metadata["fingerprint"] == fingerprint and manifest.metadata["n_scenes"] == 16
    assert views.metadata["n_views"] == 16 * 13
    assert {"kmeans_purity", "kmeans_nmi", "kmeans_ari"} <= set(sim_metrics.metadata)
    assert "vgg_baseline.test_mAP" in eval_metrics.metadata and "cvae1.test_mAP" in eval_metrics.metadata
    assert model.metadata["architecture"] == "cvae1" and model.metadata["epochs_run"] >= 1

    c = MlflowClient(mlflow_uri)
    parent = c.get_run(run_id)
    assert parent.info.status == "FINISHED"
    p = parent.data.params
    assert p["git_commit"] == "abc123" and p["dataset_fingerprint"] == fingerprint and p["seed"] == "0"
    assert p["weights_used"] == "none" and p["features.pca_dim"] == "16"
    m = parent.data.metrics
    for method in ("vgg_baseline", "random", "cvae1"):
        for key in ("NN", "FT", "ST", "E", "DCG", "mAP", "P_at_10", "mAP_at_10"):
            assert 0.0 <= m[f"{method}.test_{key}"] <= 1.0
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["vgg_baseline"]["test_mAP"] == pytest.approx(m["vgg_baseline.test_mAP"])

    children = c.search_runs([parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{run_id}'")
    assert {r.data.tags.get("step") for r in children} - {None} == STEPS
    assert all(r.info.status == "FINISHED" for r in children)
    methods = {r.data.tags.get("method"): r for r in children if r.data.tags.get("method")}
    assert set(methods) == {"vgg_baseline", "random", "cvae1"}
    assert methods["vgg_baseline"].data.metrics["test_mAP"] == pytest.approx(m["vgg_baseline.test_mAP"])
    trained = next(r for r in children if r.data.tags.get("step") == "train_cvae1")
    history = c.get_metric_history(trained.info.run_id, "train_loss")
    assert [h.step for h in history] == list(range(1, model.metadata["epochs_run"] + 1))  # one point per epoch
    assert {"val_mAP", "val_accuracy", "train_kl", "train_rec", "train_ce"} <= set(trained.data.metrics)

    # registered with its test metrics and the champion alias (no champion existed)
    champion = c.get_model_version_by_alias("scenesearch-smoke", "champion")
    assert champion.tags["architecture"] == "cvae1" and champion.tags["dataset_fingerprint"] == fingerprint
    assert float(champion.tags["test_mAP"]) == pytest.approx(m["cvae1.test_mAP"], abs=1e-6)
    assert champion.tags["git_commit"] == "abc123"
    artifacts = {a.path for a in c.list_artifacts(run_id)}
    assert {"pr_curve.png", "gallery.png", "comparison.md", "per_class.csv", "rejected.parquet", "metrics.json"} <= artifacts


def test_a_failing_step_marks_the_runs_failed_with_its_sentence(tmp_path, smoke_cfg, mlflow_uri):
    cfg = smoke_cfg.to_json()
    run_id = start_run.python_func(config_json=cfg, run_name="fails", git_commit="x", run=_artifact(Artifact, tmp_path, "run"))
    with pytest.raises(SystemExit) as e:
        ingest.python_func(config_json=cfg, parent_run_id=run_id, data_root=str(tmp_path / "missing"), manifest=_artifact(Dataset, tmp_path, "m"))
    assert e.value.code == 1
    parent = MlflowClient(mlflow_uri).get_run(run_id)
    assert parent.info.status == "FAILED"
    assert parent.data.tags["error"] == f"ingest: dataset root {tmp_path / 'missing'} does not exist or is not a folder"


def test_pipeline_compiles_with_every_step(tmp_path, smoke_cfg):
    import dataclasses

    import yaml

    from pipelines.scenesearch_pipeline import compile_pipeline

    path = compile_pipeline(smoke_cfg, tmp_path / "p.yaml")
    spec = yaml.safe_load(path.read_text())
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {"start-run", "ingest", "render", "preprocess", "features", "similarity", "for-loop-2", "retrieve", "evaluate", "register"}
    assert tasks["evaluate"]["dependentTasks"] == sorted(["ingest", "preprocess", "render", "retrieve", "start-run"])
    assert tasks["register"]["dependentTasks"] == sorted(["evaluate", "for-loop-2", "ingest", "similarity", "start-run"])
    loop = tasks["for-loop-2"]
    assert loop["parameterIterator"]["items"]["raw"] == '["cvae1"]'
    assert "train" in spec["components"]["comp-for-loop-2"]["dag"]["tasks"]
    assert all(t.get("cachingOptions", {}) == {} for t in tasks.values())  # caching off everywhere
    executors = spec["deploymentSpec"]["executors"]
    assert all(e["container"]["image"] for e in executors.values())
    assert not any("accelerator" in e["container"].get("resources", {}) for e in executors.values())

    gpu = dataclasses.replace(smoke_cfg, features=dataclasses.replace(smoke_cfg.features, device="cuda"))
    gpu_spec = yaml.safe_load(compile_pipeline(gpu, tmp_path / "gpu.yaml").read_text())
    res = gpu_spec["deploymentSpec"]["executors"]["exec-features"]["container"]["resources"]
    assert res["accelerator"]["resourceCount"] == "1" and res["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert "accelerator" not in gpu_spec["deploymentSpec"]["executors"]["exec-train"]["container"].get("resources", {})

    gpu_train = dataclasses.replace(smoke_cfg, train=dataclasses.replace(smoke_cfg.train, gpu=True, architectures=("cvae1", "cvae2")))
    spec = yaml.safe_load(compile_pipeline(gpu_train, tmp_path / "gpu_train.yaml").read_text())
    res = spec["deploymentSpec"]["executors"]["exec-train"]["container"]["resources"]
    assert res["accelerator"]["resourceCount"] == "1" and res["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert spec["root"]["dag"]["tasks"]["for-loop-2"]["parameterIterator"]["items"]["raw"] == '["cvae1", "cvae2"]'


def test_components_import_only_stdlib_and_kfp_at_module_level():
    """Compiling needs only kfp: the heavy libraries are imported inside the component bodies."""
    code = (
        "import sys, importlib\n"
        "for m in ['start_run','ingest','render','preprocess','features','similarity','train','retrieve','evaluate','register']:\n"
        "    importlib.import_module('components.' + m)\n"
        "heavy = [m for m in ('torch', 'mlflow', 'moderngl', 'trimesh', 'sklearn', 'scenesearch') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert p.stdout.strip() == ""

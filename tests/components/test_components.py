"""Every component called through `.python_func` in DAG order, logging into a real MLflow store."""

import json
import subprocess
import sys

import pytest
from kfp.dsl import Artifact, Dataset, Metrics, Model
from mlflow.tracking import MlflowClient

from components.evaluate import evaluate
from components.features import describe, features
from components.ingest import ingest
from components.preprocess import preprocess
from components.register import register
from components.render import render, render_shard
from components.retrieve import retrieve
from components.similarity import similarity
from components.start_run import start_run
from components.train import train

STEPS = {"ingest", "render", "preprocess", "features", "similarity", "train_cvae1", "train_vgg_baseline", "train_random", "retrieve", "evaluate", "register"}


def _artifact(cls, tmp_path, name):
    return cls(name=name, uri=str(tmp_path / name), metadata={})


def test_components_chain_and_log_to_mlflow(tmp_path, smoke_dataset, smoke_cfg, mlflow_uri):
    cfg = smoke_cfg.to_json()
    run_artifact = _artifact(Artifact, tmp_path, "run")
    from scenesearch import methods

    run_id = start_run.python_func(config_json=cfg, run_name="components-test", git_commit="abc123", shape=methods.shape(smoke_cfg), run=run_artifact)
    common = {"config_json": cfg, "parent_run_id": run_id}
    manifest, views, images, feats, clusters, rankings, report = (
        _artifact(Dataset, tmp_path, n) for n in ("manifest", "views", "images", "features", "clusters", "rankings", "report")
    )
    sim_metrics, eval_metrics = _artifact(Metrics, tmp_path, "sim_metrics"), _artifact(Metrics, tmp_path, "eval_metrics")

    fingerprint = ingest.python_func(data_root=str(smoke_dataset), manifest=manifest, **common)
    # smoke runs two shards: render and describe each block, then the merges join them
    view_shards = [_artifact(Dataset, tmp_path, f"views-{i}") for i in range(2)]
    for i, shard in enumerate(view_shards):
        render_shard.python_func(config_json=cfg, shard=i, manifest=manifest, views=shard)
    render.python_func(shards=view_shards, views=views, **common)
    preprocess.python_func(manifest=manifest, views=views, images=images, **common)
    desc_shards = [_artifact(Dataset, tmp_path, f"desc-{i}") for i in range(2)]
    for i, shard in enumerate(desc_shards):
        describe.python_func(config_json=cfg, shard=i, images=images, descriptors=shard)
    features.python_func(images=images, descriptors=desc_shards, features=feats, **common)
    similarity.python_func(features=feats, clusters=clusters, metrics=sim_metrics, **common)
    models = {key: _artifact(Model, tmp_path, f"model-{key}") for key in ("cvae1", "random", "vgg_baseline")}
    for key, model in models.items():
        train.python_func(key=key, images=images, features=feats, model=model, config_json=cfg, run=run_artifact)
    model = models["cvae1"]
    retrieve.python_func(models=list(models.values()), rankings=rankings, **common)
    evaluate.python_func(rankings=rankings, manifest=manifest, views=views, images=images, report=report, metrics=eval_metrics, **common)
    register.python_func(fingerprint=fingerprint, report=report, models=list(models.values()), **common)

    assert manifest.metadata["fingerprint"] == fingerprint and manifest.metadata["n_scenes"] == 16
    assert views.metadata["n_views"] == 16 * 13 and [v.metadata["n_views"] for v in view_shards] == [8 * 13, 8 * 13]
    assert sum(d.metadata["n_images"] for d in desc_shards) == images.metadata["n_images"]
    assert {"kmeans_purity", "kmeans_nmi", "kmeans_ari"} <= set(sim_metrics.metadata)
    assert "test_vgg_baseline_mAP" in eval_metrics.metadata and "test_cvae1_photo_mAP" in eval_metrics.metadata
    assert model.metadata["key"] == "cvae1" and model.metadata["method"] == "cvae_m2" and model.metadata["epochs_run"] >= 1
    assert models["random"].metadata["model_uri"] == "" and models["vgg_baseline"].metadata["model_uri"].startswith("models:/")

    c = MlflowClient(mlflow_uri)
    parent = c.get_run(run_id)
    assert parent.info.status == "FINISHED"
    p = parent.data.params
    assert p["git_commit"] == "abc123" and p["dataset_fingerprint"] == fingerprint and p["seed"] == "0"
    assert p["weights_used"] == "none" and p["features.pca_dim"] == "16"
    m = parent.data.metrics
    for method in ("vgg_baseline", "random", "cvae1"):
        for key in ("NN", "FT", "ST", "E", "DCG", "mAP", "P_at_10", "mAP_at_10"):
            assert 0.0 <= m[f"test_{method}_{key}"] <= 1.0
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["vgg_baseline"]["test_mAP"] == pytest.approx(m["test_vgg_baseline_mAP"])

    children = c.search_runs([parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{run_id}'")
    assert {r.data.tags.get("step") for r in children} - {None} == STEPS
    assert all(r.info.status == "FINISHED" for r in children)
    per_method = {r.data.tags.get("method_key"): r for r in children if r.data.tags.get("method_key")}
    assert set(per_method) == {"vgg_baseline", "random", "cvae1"}
    assert per_method["vgg_baseline"].data.metrics["test_mAP"] == pytest.approx(m["test_vgg_baseline_mAP"])
    trained = next(r for r in children if r.data.tags.get("step") == "train_cvae1")
    history = c.get_metric_history(trained.info.run_id, "train_loss")
    assert [h.step for h in history] == list(range(1, model.metadata["epochs_run"] + 1))  # one point per epoch
    assert {"val_mAP", "val_accuracy", "train_kl", "train_rec", "train_ce"} <= set(trained.data.metrics)

    # registered with its test metrics and the champion alias (no champion existed)
    versions = c.search_model_versions("name='scenesearch-smoke'")
    assert sorted(v.tags["key"] for v in versions) == ["cvae1", "vgg_baseline"]  # random cannot answer a query image: not registered
    for v in versions:
        assert {"method", "variant", "key", "dataset_fingerprint", "git_commit", "test_mAP"} <= set(v.tags)
        assert v.tags["dataset_fingerprint"] == fingerprint and v.tags["git_commit"] == "abc123"
        assert float(v.tags["test_mAP"]) == pytest.approx(m[f"test_{v.tags['key']}_mAP"], abs=1e-6)
    champion = c.get_model_version_by_alias("scenesearch-smoke", "champion")
    best = max(("cvae1", "vgg_baseline"), key=lambda k: (m[f"test_{k}_mAP"], k == "cvae1"))  # cvae1 registers first, so it wins a tie
    assert champion.tags["key"] == best
    artifacts = {a.path for a in c.list_artifacts(run_id)}
    assert {"pr_curve.png", "gallery_cvae1.png", "gallery_vgg_baseline.png", "comparison.md", "per_class.csv", "rejected.parquet", "metrics.json"} <= artifacts


def test_a_failing_step_marks_the_runs_failed_with_its_sentence(tmp_path, smoke_cfg, mlflow_uri):
    cfg = smoke_cfg.to_json()
    from scenesearch import methods

    run_id = start_run.python_func(config_json=cfg, run_name="fails", git_commit="x", shape=methods.shape(smoke_cfg), run=_artifact(Artifact, tmp_path, "run"))
    with pytest.raises(SystemExit) as e:
        ingest.python_func(config_json=cfg, parent_run_id=run_id, data_root=str(tmp_path / "missing"), manifest=_artifact(Dataset, tmp_path, "m"))
    assert e.value.code == 1
    parent = MlflowClient(mlflow_uri).get_run(run_id)
    assert parent.info.status == "FAILED"
    assert parent.data.tags["error"] == f"ingest: dataset root {tmp_path / 'missing'} does not exist or is not a folder"


def test_start_run_refuses_a_config_that_disagrees_with_the_compiled_shape(tmp_path, smoke_cfg, mlflow_uri, capsys):
    import dataclasses

    from scenesearch import methods

    compiled = methods.shape(smoke_cfg)  # cvae1, random, vgg_baseline
    other = dataclasses.replace(smoke_cfg, methods={"random": {}})
    with pytest.raises(SystemExit) as e:
        start_run.python_func(config_json=other.to_json(), run_name="x", git_commit="x", shape=compiled, run=_artifact(Artifact, tmp_path, "run"))
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith('scenesearch start: the config asks for the DAG {"methods":[["random"') and err.endswith("compile it again with this config")
    more_shards = dataclasses.replace(smoke_cfg, cluster=dataclasses.replace(smoke_cfg.cluster, shards=3))
    with pytest.raises(SystemExit):
        start_run.python_func(config_json=more_shards.to_json(), run_name="x", git_commit="x", shape=compiled, run=_artifact(Artifact, tmp_path, "run"))
    assert '"shards":3' in capsys.readouterr().err
    assert MlflowClient(mlflow_uri).search_experiments(filter_string="name = 'scenesearch-smoke'") == []  # refused before any run was opened


def _compile(tmp_path, cfg, name="p.yaml"):
    import yaml

    from pipelines.scenesearch_pipeline import compile_pipeline

    pipeline, platform = yaml.safe_load_all(compile_pipeline(cfg, tmp_path / name).read_text())  # IR, then the Kubernetes part
    return {**pipeline, **platform}


def _loops(spec):
    """{task inside a ParallelFor: (loop task name, items)} of the root DAG."""
    tasks = spec["root"]["dag"]["tasks"]
    out = {}
    for name, t in tasks.items():
        if "parameterIterator" in t:
            inner = spec["components"][t["componentRef"]["name"]]["dag"]["tasks"]
            out.update({n: (name, t["parameterIterator"]["items"]["raw"]) for n in inner})
    return out


def test_pipeline_compiles_with_every_step_and_the_fan_outs(tmp_path, smoke_cfg):
    import dataclasses

    spec = _compile(tmp_path, smoke_cfg)
    tasks = spec["root"]["dag"]["tasks"]
    loops = _loops(spec)
    assert {"start-run", "ingest", "render", "preprocess", "features", "similarity", "retrieve", "evaluate", "register"} <= set(tasks)
    assert loops["render-shard"][1] == loops["describe"][1] == "[0, 1]"  # smoke: two shards
    assert loops["train"][1] == '["cvae1", "random", "vgg_baseline"]'  # one branch per configured (method, variant)
    assert tasks["render"]["dependentTasks"] == sorted([loops["render-shard"][0], "start-run"])
    assert tasks["features"]["dependentTasks"] == sorted([loops["describe"][0], "preprocess", "start-run"])
    assert tasks["register"]["dependentTasks"] == sorted(["evaluate", loops["train"][0], "ingest", "similarity", "start-run"])
    train_inputs = spec["components"][spec["root"]["dag"]["tasks"][loops["train"][0]]["componentRef"]["name"]]["dag"]["tasks"]["train"]["inputs"]["artifacts"]
    assert set(train_inputs) == {"images", "features", "run"}  # only what the loop's methods consume (no clusters, no semantics)
    assert tasks["evaluate"]["dependentTasks"] == sorted(["ingest", "preprocess", "render", "retrieve", "start-run"])

    executors = spec["deploymentSpec"]["executors"]
    containers = {name.removeprefix("exec-"): e["container"] for name, e in executors.items()}
    from scenesearch.tracking import git_commit

    tag = git_commit()[:7]  # the images `make images` builds from this checkout
    assert containers["render-shard"]["image"] == f"scenesearch/render:{tag}"
    assert {c["image"] for n, c in containers.items() if n != "render-shard"} == {f"scenesearch/base:{tag}"}
    assert not any("accelerator" in c.get("resources", {}) for c in containers.values())
    assert all(c["resources"]["resourceCpuRequest"] == "1" and c["resources"]["resourceMemoryRequest"] == "4Gi" for c in containers.values())
    # the images carry kfp: no task installs packages first (kfp.local would run such tasks one at a time)
    assert not [n for n, c in containers.items() if "pip install" in " ".join(c["command"] + c.get("args", []))]
    assert all("kfp.dsl.executor_main" in " ".join(c["command"]) for c in containers.values())

    # caching: only the shard tasks, which log nothing to MLflow; retries everywhere
    def all_tasks():
        yield from tasks.items()
        for comp in spec["components"].values():
            yield from comp.get("dag", {}).get("tasks", {}).items()

    for name, t in all_tasks():
        if "componentRef" in t and not name.startswith("for-loop"):
            assert t.get("cachingOptions", {}).get("enableCache", False) is (name in ("render-shard", "describe")), name
            assert t["retryPolicy"]["maxRetryCount"] == 2 and t["retryPolicy"]["backoffDuration"] == "30s", name

    # every executor reads the MLflow URI and S3 credentials from infra/'s ConfigMap and Secret
    k8s = spec["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(k8s) == set(executors)
    for e in k8s.values():
        assert e["configMapAsEnv"][0]["configMapName"] == "scenesearch-env" and e["secretAsEnv"][0]["secretName"] == "scenesearch-s3"
        assert "nodeSelector" not in e and "tolerations" not in e

    gpu = dataclasses.replace(
        smoke_cfg,
        features=dataclasses.replace(smoke_cfg.features, device="cuda"),
        methods={**smoke_cfg.methods, "cvae_m2": {"variants": ["cvae1", "cvae2"], "gpu": True}},
        cluster=dataclasses.replace(smoke_cfg.cluster, image_registry="reg.example/team", image_tag="abc1234", gpu_node_selector=("pool=gpu",), shards=3, cache=False, retries=0),
    )
    spec = _compile(tmp_path, gpu, "gpu.yaml")
    containers = {name.removeprefix("exec-"): e["container"] for name, e in spec["deploymentSpec"]["executors"].items()}
    for name in ("describe", "train-2"):  # train-2: the GPU loop's task; the CPU loop keeps the baselines
        res = containers[name]["resources"]
        assert res["accelerator"]["resourceCount"] == "1" and res["accelerator"]["resourceType"] == "nvidia.com/gpu", name
        assert containers[name]["image"] == "reg.example/team/scenesearch/gpu:abc1234" and res["resourceMemoryRequest"] == "16Gi"
        k8s = spec["platforms"]["kubernetes"]["deploymentSpec"]["executors"][f"exec-{name}"]
        assert k8s["nodeSelector"]["labels"] == {"pool": "gpu"}
        assert k8s["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert "accelerator" not in containers["features"].get("resources", {}) and "accelerator" not in containers["train"].get("resources", {})
    assert containers["render-shard"]["image"] == "reg.example/team/scenesearch/render:abc1234"
    loops = _loops(spec)
    assert loops["describe"][1] == "[0, 1, 2]" and loops["train"][1] == '["random", "vgg_baseline"]' and loops["train-2"][1] == '["cvae1", "cvae2"]'
    assert not any(t.get("cachingOptions", {}).get("enableCache") for c in spec["components"].values() for t in c.get("dag", {}).get("tasks", {}).values())
    assert not any("retryPolicy" in t for t in spec["root"]["dag"]["tasks"].values())


def test_a_branch_gets_the_inputs_its_methods_consume(tmp_path, smoke_cfg, monkeypatch):
    """The plugin of tests/e2e consumes images and clusters: its loop is wired to similarity, the other one is not."""
    import dataclasses
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "e2e" / "plugins"))
    cfg = dataclasses.replace(smoke_cfg, methods={"colour_histogram": {"gpu": True}, "random": {}}, plugins=("colour_histogram",))
    spec = _compile(tmp_path, cfg)
    loops = _loops(spec)
    tasks = spec["root"]["dag"]["tasks"]
    inner = {n: spec["components"][tasks[loop]["componentRef"]["name"]]["dag"]["tasks"][n] for n, (loop, _) in loops.items() if n.startswith("train")}
    assert loops["train"][1] == '["random"]' and loops["train-2"][1] == '["colour_histogram"]'
    assert set(inner["train"]["inputs"]["artifacts"]) == {"images", "run"}  # random consumes nothing but the rows
    assert set(inner["train-2"]["inputs"]["artifacts"]) == {"images", "clusters", "run"}
    assert "similarity" in tasks[loops["train-2"][0]]["dependentTasks"] and "similarity" not in tasks[loops["train"][0]]["dependentTasks"]


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

"""The scenesearch DAG: wiring only. Compile with `python -m pipelines.scenesearch_pipeline [preset]`.

    start_run -> ingest -> render_shard x N -> render -> preprocess [-> pretrain] -> describe x N -> features -> similarity
    (pretrain: only with features.weights selfsup, the backbone every describe shard then uses)
    train x (method, variant)  [ParallelFor; one loop for CPU branches, one for GPU branches]
        <- preprocess (always), features / similarity clusters / ingest semantics (when a method consumes them)
    train -> retrieve -> evaluate -> register (closes the MLflow parent run)

The branches come from the config's `methods` at compile time (`scenesearch.methods.entries`);
start_run refuses a run whose config asks for other branches than the pipeline was compiled for.

The same function runs under kfp.local (pipelines/local.py) and compiles to IR YAML for a
cluster. Everything a cluster needs at compile time (images, GPUs, node placement, retries,
resources, caching) comes from the config's `cluster` section; kfp.local ignores it except
for the shard count.
"""


import sys
from pathlib import Path

from kfp import compiler, dsl, kubernetes
from kfp.dsl import Dataset

from components.evaluate import evaluate
from components.features import describe, features, pretrain
from components.ingest import ingest
from components.preprocess import preprocess
from components.register import register
from components.render import render, render_shard
from components.retrieve import retrieve
from components.similarity import similarity
from components.start_run import start_run
from components.train import train
from scenesearch import config as config_lib
from scenesearch import methods
from scenesearch.config import RunConfig

# What pipeline pods read from infra/'s ConfigMap and Secret (see infra/README.md).
ENV_KEYS = ("MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL", "AWS_DEFAULT_REGION")
SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def place(task: dsl.PipelineTask, cfg: RunConfig, image: str, gpu: bool = False, cache: bool = False) -> dsl.PipelineTask:
    """Image, resources, GPU placement, retries, environment and caching of one task."""
    from scenesearch.tracking import git_commit

    c = cfg.cluster
    task.set_container_image(c.image("gpu" if gpu else image, git_commit()))
    task.set_cpu_request(c.gpu_cpu_request if gpu else c.cpu_request).set_memory_request(c.gpu_memory_request if gpu else c.memory_request)
    if gpu:
        task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
        for item in c.gpu_node_selector:
            kubernetes.add_node_selector(task, *item.split("="))
        for item in c.gpu_tolerations:
            key_value, _, effect = item.rpartition(":")
            key, sep, value = key_value.partition("=")
            kubernetes.add_toleration(task, key=key, operator="Equal" if sep else "Exists", value=value or None, effect=effect)
    if c.retries:
        task.set_retry(c.retries, backoff_duration="30s", backoff_factor=2.0)
    if c.env_config_map:
        kubernetes.use_config_map_as_env(task, c.env_config_map, {k: k for k in ENV_KEYS}, optional=True)
    if c.env_secret:
        kubernetes.use_secret_as_env(task, c.env_secret, {k: k for k in SECRET_KEYS}, optional=True)
    # Tasks that log into the run's MLflow parent are never cached: a cached one would leave a hole there.
    task.set_caching_options(cache and c.cache)
    return task


def run_arguments(cfg: RunConfig, data_root: str, run_name: str) -> dict[str, str]:
    """The pipeline's run arguments, the same for a local run and a cluster submission."""
    from scenesearch.tracking import git_commit

    return {"config_json": cfg.to_json(), "data_root": data_root, "run_name": run_name, "git_commit": git_commit()}


def make_pipeline(cfg: RunConfig):
    """The pipeline function with `cfg` as its default config parameter and its branches."""
    shards = list(range(cfg.cluster.shards))
    features_gpu = cfg.features.device == "cuda"
    selfsup = cfg.features.weights == "selfsup"
    entries = methods.entries(cfg)
    shape = methods.shape(cfg)

    @dsl.pipeline(name="scenesearch", description="Image-based 3D scene retrieval: render, features, train every configured method, retrieve, evaluate, register in MLflow.")
    def scenesearch(config_json: str = cfg.to_json(), data_root: str = cfg.data.root, run_name: str = cfg.name, git_commit: str = "unknown") -> Dataset:
        run = place(start_run(config_json=config_json, run_name=run_name, git_commit=git_commit, shape=shape), cfg, "base")
        common = {"config_json": config_json, "parent_run_id": run.outputs["Output"]}
        ing = place(ingest(data_root=data_root, **common), cfg, "base")
        with dsl.ParallelFor(items=shards, parallelism=len(shards)) as shard:
            rs = place(render_shard(config_json=config_json, shard=shard, manifest=ing.outputs["manifest"]), cfg, "render", cache=True)
        ren = place(render(shards=dsl.Collected(rs.outputs["views"]), **common), cfg, "base")
        pre = place(preprocess(manifest=ing.outputs["manifest"], views=ren.outputs["views"], **common), cfg, "base")
        backbone = {}
        if selfsup:  # one backbone for every shard, trained before any of them describes
            pt = place(pretrain(images=pre.outputs["images"], **common), cfg, "base", gpu=features_gpu)
            backbone = {"backbone": pt.outputs["backbone"]}
        with dsl.ParallelFor(items=shards, parallelism=len(shards)) as shard:
            ds = place(describe(config_json=config_json, shard=shard, images=pre.outputs["images"], **backbone), cfg, "base", gpu=features_gpu, cache=True)
        fea = place(features(images=pre.outputs["images"], descriptors=dsl.Collected(ds.outputs["descriptors"]), **backbone, **common), cfg, "base")
        sim = place(similarity(features=fea.outputs["features"], **common), cfg, "base")
        optional = {"features": fea.outputs["features"], "clusters": sim.outputs["clusters"], "semantics": ing.outputs["manifest"]}
        collected = {}
        for gpu, name in ((False, "models"), (True, "gpu_models")):
            group = [e for e in entries if e.gpu == gpu]
            if not group:
                continue
            consumed = {c for e in group for c in e.consumes}
            wired = {k: v for k, v in optional.items() if k in consumed}
            with dsl.ParallelFor(items=[e.key for e in group], parallelism=len(group)) as key:
                # the parent run id crosses into the loop as an artifact (see components/start_run.py)
                tr = place(train(key=key, images=pre.outputs["images"], config_json=config_json, run=run.outputs["run"], **wired), cfg, "base", gpu=gpu)
            collected[name] = tr

        def models() -> dict:  # a fresh Collected per consumer: KFP cannot share one between two tasks
            return {name: dsl.Collected(task.outputs["model"]) for name, task in collected.items()}

        ret = place(retrieve(**models(), **common), cfg, "base")
        ev = place(
            evaluate(rankings=ret.outputs["rankings"], manifest=ing.outputs["manifest"], views=ren.outputs["views"], images=pre.outputs["images"], **common),
            cfg,
            "base",
        )
        reg = place(register(report=ev.outputs["report"], fingerprint=ing.outputs["Output"], **models(), **common), cfg, "base")
        reg.after(sim)  # register closes the parent MLflow run: every other task must be done by then
        return ev.outputs["report"]

    return scenesearch


def compile_pipeline(cfg: RunConfig, path) -> Path:
    """Write the pipeline's IR YAML to `path`."""
    from scenesearch import storage

    path = Path(path)
    with storage.atomic_path(path, suffix=".yaml") as tmp:  # the compiler picks the format from the suffix
        compiler.Compiler().compile(make_pipeline(cfg), str(tmp))
    return path


if __name__ == "__main__":
    preset = sys.argv[1] if len(sys.argv) > 1 else "default"
    out = compile_pipeline(config_lib.load(preset), Path("dist") / f"scenesearch_{preset}.yaml")
    print(out)

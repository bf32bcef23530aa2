"""The scenesearch DAG: wiring only. Compile with `python -m pipelines.scenesearch_pipeline [preset]`.

    start_run -> ingest -> render -> preprocess -> features -> similarity ----------------\\
                                                \\            \\-> retrieve -> evaluate -> register
                                                 \\-> train (one task per architecture) -/

The same function runs under kfp.local (pipelines/local.py) and compiles to IR YAML for a
cluster. Resource requests that must be known at compile time come from the preset.
"""


import sys
from pathlib import Path

from kfp import compiler, dsl

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
from scenesearch import config as config_lib
from scenesearch.config import RunConfig


def make_pipeline(cfg: RunConfig):
    """The pipeline function with `cfg` as its default config parameter."""

    @dsl.pipeline(name="scenesearch", description="Image-based 3D scene retrieval: render, features, train CVAE-M2, retrieve, evaluate, register in MLflow.")
    def scenesearch(config_json: str = cfg.to_json(), data_root: str = cfg.data.root, run_name: str = cfg.name, git_commit: str = "unknown"):
        run = start_run(config_json=config_json, run_name=run_name, git_commit=git_commit)
        common = {"config_json": config_json, "parent_run_id": run.outputs["Output"]}
        ing = ingest(data_root=data_root, **common)
        ren = render(manifest=ing.outputs["manifest"], **common)
        pre = preprocess(manifest=ing.outputs["manifest"], views=ren.outputs["views"], **common)
        fea = features(images=pre.outputs["images"], **common)
        if cfg.features.device == "cuda":
            fea.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
        sim = similarity(features=fea.outputs["features"], **common)
        with dsl.ParallelFor(items=list(cfg.train.architectures), parallelism=len(cfg.train.architectures)) as architecture:
            tr = train(images=pre.outputs["images"], architecture=architecture, config_json=config_json, run=run.outputs["run"])
            if cfg.train.gpu:
                tr.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
            tr.set_caching_options(False)
        ret = retrieve(features=fea.outputs["features"], models=dsl.Collected(tr.outputs["model"]), **common)
        ev = evaluate(
            rankings=ret.outputs["rankings"],
            manifest=ing.outputs["manifest"],
            views=ren.outputs["views"],
            images=pre.outputs["images"],
            **common,
        )
        reg = register(report=ev.outputs["report"], models=dsl.Collected(tr.outputs["model"]), fingerprint=ing.outputs["Output"], **common)
        reg.after(sim)  # register closes the parent MLflow run: every other task must be done by then
        # Every task logs into this run's MLflow parent, so a cached task would leave a hole in it.
        for task in (run, ing, ren, pre, fea, sim, ret, ev, reg):
            task.set_caching_options(False)

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

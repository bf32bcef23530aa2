from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE)
def train(config_json: str, run: Input[Artifact], architecture: str, images: Input[Dataset], model: Output[Model]):
    """Train one CVAE-M2 architecture, encode every image, log it as an MLflow model.

    Runs inside a ParallelFor, so the parent run id comes from start_run's `run` artifact.
    """
    import json
    import os

    from scenesearch import config, storage, tracking
    from scenesearch.models import serving, step

    cfg = config.from_json(config_json)
    parent_run_id = run.metadata["run_id"]
    with tracking.step_run(cfg, parent_run_id, f"train_{architecture}") as task_run:
        root = cfg.train.checkpoint_root.rstrip("/")
        checkpoints = f"{root}/{parent_run_id}/{architecture}" if root else None  # a retry of this task resumes there
        result = step.run(images.path, model.path, architecture, cfg, checkpoints, on_epoch=lambda e, m: task_run.log_metrics(m, step=e))
        task_run.log_params({"architecture": architecture, "classes": ",".join(result.classes), "precision": result.train.precision, "device": result.train.device})
        task_run.log_metrics(result.metrics())
        task_run.log_artifacts([os.path.join(model.path, "history.json"), os.path.join(model.path, "meta.json")])
        tags = {"method": "cvae_m2", "architecture": architecture, "git_commit": task_run.parent_tag("git_commit")}
        logged = serving.log_model(model.path, task_run.run_id, tracking.resolve_uri(cfg.tracking.tracking_uri), step.first_query_image(images.path), cfg.registry.top_k, tags)
        storage.write_bytes(os.path.join(model.path, "mlflow.json"), json.dumps({"architecture": architecture, "model_uri": logged.model_uri, "model_id": logged.model_id, "run_id": task_run.run_id}).encode())
    model.metadata.update({**result.metrics(), "architecture": architecture, "model_uri": logged.model_uri})

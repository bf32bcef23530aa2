from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components.image import component


@component
def train(
    config_json: str,
    run: Input[Artifact],
    key: str,
    images: Input[Dataset],
    model: Output[Model],
    features: Input[Dataset] = None,
    clusters: Input[Dataset] = None,
    semantics: Input[Dataset] = None,
):
    """Fit one configured (method, variant): train it if it learns (checkpointed, per-epoch metrics),
    embed every image, and log it as an MLflow model if it can answer a query image.

    Runs inside a ParallelFor, so the parent run id comes from start_run's `run` artifact. The
    optional inputs are wired only when a method of the loop consumes them (`semantics` is the ingest
    output, which holds semantics.parquet).
    """
    import os

    from scenesearch import config, methods, registry, serving, tracking
    from scenesearch import train as step
    from scenesearch.cli import task_edge

    with task_edge(f"train {key}"):
        cfg = config.from_json(config_json)
        parent_run_id = run.metadata["run_id"]
        inputs = methods.Inputs(
            images=images.path,
            features=features.path if features else "",
            clusters=clusters.path if clusters else "",
            semantics=semantics.path if semantics else "",
        )
        with tracking.step_run(cfg, parent_run_id, f"train_{key}") as task_run:
            entry = methods.entry(cfg, key)
            root = cfg.train.checkpoint_root.rstrip("/")
            checkpoints = f"{root}/{parent_run_id}/{key}" if root else None  # a retry of this task resumes there
            result = step.run(cfg, key, inputs, model.path, checkpoints, on_epoch=lambda e, m: task_run.log_metrics(m, step=e),
                              log_image=task_run.log_image)
            task_run.log_params({"method": entry.method, "variant": entry.variant or "-", **result.params})
            task_run.log_metrics(result.metrics)
            task_run.log_artifacts([os.path.join(model.path, f) for f in ("history.json", "method.json", step.REPORT_FILE)])  # missing files are skipped
            # logged into this run, so the runs table's Models column shows it here
            tags = registry.version_tags(step.read_record(model.path), {}, task_run.parent_tag("git_commit"))
            uri = serving.log_folder(model.path, task_run.run_id, tracking.resolve_uri(cfg.tracking.tracking_uri), images.path, cfg.registry.top_k, tags, entry.serves)["model_uri"]
    model.metadata.update({**result.metrics, "key": key, "method": entry.method, "variant": entry.variant, "model_uri": uri})

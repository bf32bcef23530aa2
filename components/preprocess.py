from kfp.dsl import Dataset, Input, Output

from components.image import component


@component
def preprocess(config_json: str, parent_run_id: str, manifest: Input[Dataset], views: Input[Dataset], images: Output[Dataset]):
    """Renders and query images -> 64x64 float images in [0, 1] with flips."""
    from scenesearch import config, preprocess as step, tracking
    from scenesearch.cli import task_edge

    with task_edge("preprocess"):
        cfg = config.from_json(config_json)
        with tracking.step_run(cfg, parent_run_id, "preprocess") as run:
            result = step.run(manifest.path, views.path, images.path, cfg.preprocess)
            run.log_metrics(result.metrics())
    images.metadata.update(result.metrics())

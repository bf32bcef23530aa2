from kfp.dsl import Dataset, Input, Metrics, Output

from components.image import component


@component
def evaluate(
    config_json: str,
    parent_run_id: str,
    rankings: Input[Dataset],
    manifest: Input[Dataset],
    views: Input[Dataset],
    images: Input[Dataset],
    report: Output[Dataset],
    metrics: Output[Metrics],
):
    """SHREC metrics per method, split and query group; plots, galleries and tables."""
    from scenesearch import config, tracking
    from scenesearch.cli import task_edge
    from scenesearch.evaluation import step

    with task_edge("evaluate"):
        cfg = config.from_json(config_json)
        with tracking.step_run(cfg, parent_run_id, "evaluate") as run:
            result = step.run(rankings.path, manifest.path, views.path, images.path, report.path, cfg.evaluate)
            fingerprint, data_root = run.parent_param("dataset_fingerprint"), run.parent_param("data_root")
            for key, values in result.metrics.items():
                child = run.child(f"method: {key}", {"method_key": key})
                child.log_params({"method_key": key})
                child.log_metrics(values)
                tracking.log_dataset(run.client, child.run_id, tracking.dataset_name(data_root), fingerprint, data_root, "evaluation")
                child.finish()
            run.log_metrics({"n_rejected_total": result.n_rejected})
            run.log_metrics(result.flat_metrics(), parent=True)
            run.log_artifacts(result.artifacts, parent=True)
    for k, v in result.flat_metrics().items():
        metrics.log_metric(k, v)

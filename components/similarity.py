from kfp.dsl import Dataset, Input, Metrics, Output

from components.image import component


@component
def similarity(config_json: str, parent_run_id: str, features: Input[Dataset], clusters: Output[Dataset], metrics: Output[Metrics]):
    """k-means similarity detection over render features; purity / NMI / ARI against the labels.
    Its clusters feed the training branches of the methods that consume them."""
    from scenesearch import config, similarity as step, tracking
    from scenesearch.cli import task_edge

    with task_edge("similarity"):
        cfg = config.from_json(config_json)
        with tracking.step_run(cfg, parent_run_id, "similarity") as run:
            result = step.run(features.path, clusters.path, cfg.similarity, cfg.seed)
            run.log_metrics(result.metrics())
            run.log_metrics(result.metrics(), parent=True)
    for k, v in result.metrics().items():
        metrics.log_metric(k, v)

from typing import List

from kfp.dsl import Dataset, Input, Model, Output

from components.image import component


@component
def retrieve(config_json: str, parent_run_id: str, rankings: Output[Dataset], models: Input[List[Model]] = None, gpu_models: Input[List[Model]] = None):
    """A (queries x scenes) distance matrix per trained (method, variant), each scored by its method."""
    from scenesearch import config, retrieval as step, tracking
    from scenesearch.cli import task_edge

    with task_edge("retrieve"):
        cfg = config.from_json(config_json)
        with tracking.step_run(cfg, parent_run_id, "retrieve") as run:
            folders = [m.path for m in (models or [])] + [m.path for m in (gpu_models or [])]
            result = step.run(folders, rankings.path, cfg.plugins)
            run.log_metrics(result.metrics())
            run.log_params({"methods": ",".join(result.keys)})
    rankings.metadata.update(result.metrics())

from typing import List

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE)
def retrieve(config_json: str, parent_run_id: str, features: Input[Dataset], models: Input[List[Model]], rankings: Output[Dataset]):
    """A (queries x scenes) distance matrix per configured baseline and per trained model."""
    from scenesearch import config, retrieval as step, tracking

    cfg = config.from_json(config_json)
    with tracking.step_run(cfg, parent_run_id, "retrieve") as run:
        result = step.run(features.path, rankings.path, cfg.retrieve.methods, cfg.seed, [m.path for m in models], cfg.retrieve.alpha)
        run.log_metrics(result.metrics())
        run.log_params({"methods": ",".join(result.methods)})
    rankings.metadata.update(result.metrics())

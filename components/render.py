from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE)
def render(config_json: str, parent_run_id: str, manifest: Input[Dataset], views: Output[Dataset]):
    """13 views of every scene (OpenGL through EGL) -> views.parquet."""
    from scenesearch import config, tracking
    from scenesearch.render import step

    cfg = config.from_json(config_json)
    with tracking.step_run(cfg, parent_run_id, "render") as run:
        result = step.run(manifest.path, views.path, cfg.render)
        run.log_metrics(result.metrics())
        run.log_params({"gl_renderer": result.gl_renderer})
    views.metadata.update(result.metrics())

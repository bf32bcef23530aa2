from typing import List

from kfp.dsl import Dataset, Input, Output

from components.image import component


@component
def render_shard(config_json: str, shard: int, manifest: Input[Dataset], views: Output[Dataset]):
    """13 views of one block of the scenes (OpenGL through EGL). Logs nothing, so it can be cached."""
    from scenesearch import config
    from scenesearch.cli import task_edge
    from scenesearch.render import step

    with task_edge(f"render shard {shard}"):
        cfg = config.from_json(config_json)
        result = step.run(manifest.path, views.path, cfg.render, shard, cfg.cluster.shards)
    views.metadata.update({**result.metrics(), "shard": shard})


@component
def render(config_json: str, parent_run_id: str, shards: Input[List[Dataset]], views: Output[Dataset]):
    """Join the render shards into one views.parquet (manifest order)."""
    from scenesearch import config, tracking
    from scenesearch.cli import task_edge
    from scenesearch.render import step

    with task_edge("render"):
        cfg = config.from_json(config_json)
        with tracking.step_run(cfg, parent_run_id, "render") as run:
            result = step.merge([s.path for s in shards], views.path)
            run.log_metrics({**result.metrics(), "n_shards": len(shards), "slowest_shard_seconds": result.seconds})
            run.log_params({"gl_renderer": result.gl_renderer})
    views.metadata.update(result.metrics())

from kfp import dsl

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE)
def start_run(config_json: str, run_name: str, git_commit: str) -> str:
    """Open the pipeline's parent MLflow run; returns its id for every later step."""
    from scenesearch import config, tracking

    return tracking.start_parent(config.from_json(config_json), run_name, git_commit)

from kfp import dsl
from kfp.dsl import Artifact, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE)
def start_run(config_json: str, run_name: str, git_commit: str, run: Output[Artifact]) -> str:
    """Open the pipeline's parent MLflow run; returns its id for every later step.

    The id is also written to the `run` artifact: tasks inside a ParallelFor read it there,
    because kfp.local 2.17 replaces upstream parameter outputs with the loop item inside a loop.
    """
    from scenesearch import config, tracking

    run_id = tracking.start_parent(config.from_json(config_json), run_name, git_commit)
    with open(run.path, "w") as f:
        f.write(run_id)
    run.metadata["run_id"] = run_id
    return run_id

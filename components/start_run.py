from kfp.dsl import Artifact, Output

from components.image import component


@component
def start_run(config_json: str, run_name: str, git_commit: str, shape: str, run: Output[Artifact]) -> str:
    """Validate the config against the compiled DAG, open the pipeline's parent MLflow run; returns its id.

    `shape` is the methods' DAG shape the pipeline was compiled for: a config asking for other
    branches is refused before any work. The id is also written to the `run` artifact: tasks
    inside a ParallelFor read it there, because kfp.local 2.17 replaces upstream parameter
    outputs with the loop item inside a loop.
    """
    from scenesearch import config, methods, tracking
    from scenesearch.cli import task_edge
    from scenesearch.errors import ConfigError

    with task_edge("start"):
        cfg = config.from_json(config_json)
        if methods.shape(cfg) != shape:
            raise ConfigError(f"the config asks for the DAG {methods.shape(cfg)} but this pipeline was compiled for {shape}; compile it again with this config")
        run_id = tracking.start_parent(cfg, run_name, git_commit)
    with open(run.path, "w") as f:
        f.write(run_id)
    run.metadata["run_id"] = run_id
    return run_id

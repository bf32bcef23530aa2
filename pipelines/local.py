"""Run the compiled DAG on this machine with kfp.local (subprocess runner, current environment).

The DAG that runs here is the one that compiles for a cluster: `make_pipeline(cfg)` is called
under `kfp.local.init`, which executes each task as a subprocess and chains its artifacts
under `<workdir>/kfp`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from scenesearch import recovery, storage, tracking
from scenesearch.config import RunConfig
from scenesearch.errors import ScenesearchError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalRun:
    tracking_uri: str
    experiment_id: str
    run_id: str
    run_name: str
    status: str
    metrics: dict[str, dict[str, float]]  # the evaluate report: entry key -> {metric_key: value}
    step_seconds: dict[str, float]
    pipeline_root: str
    report_dir: str


def run_local(cfg: RunConfig, data_root: str, workdir: str | Path, run_name: str | None = None) -> LocalRun:
    """Execute the pipeline locally; results come from the pipeline root (the evaluate report),
    step timings and the run's identity from its MLflow parent run.

    First the store is checked (`tracking.check_store`) and what killed runs left on it is
    recovered (`scenesearch.recovery.recover`); the tasks get this process's `tracking.driver_id` so that the next run
    can tell whether this one was killed.

    Raises:
        ScenesearchError: a task failed; the message is the failing step's own sentence.
        TrackingError: the store is unreachable at the start, or stopped answering.
    """
    import kfp.local

    from pipelines.scenesearch_pipeline import make_pipeline, run_arguments

    uri = tracking.resolve_uri(cfg.tracking.tracking_uri)
    # Tasks are separate processes: pin the store so each of them logs to the same place.
    cfg = dataclasses.replace(cfg, tracking=dataclasses.replace(cfg.tracking, tracking_uri=uri))
    tracking.apply_retry_policy(cfg.tracking)
    tracking.check_store(uri)
    # The parent run is found by its name: two runs started in the same second must not share one.
    run_name = run_name or f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    with tracking.tracking_calls(uri, "recovering killed runs"):
        for note in recovery.recover(cfg, uri, run_name):
            log.warning("recovered: %s", note)
    os.environ[tracking.DRIVER_ENV] = tracking.driver_id()
    root = Path(workdir).resolve() / "kfp"
    kfp.local.init(runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    # The subprocess runner warns that the components name a container image; locally that is by design.
    warnings.filterwarnings("ignore", message="You may be attemping to run a task that uses custom", category=RuntimeWarning)
    # ... and that the cluster settings (resources, retries, Kubernetes placement) do nothing here.
    warnings.filterwarnings("ignore", message=".*have no effect in the current local runner", category=UserWarning)
    pipeline = make_pipeline(cfg)
    data_root = data_root if storage.is_remote(data_root) else str(Path(data_root).resolve())
    report_dir, failure = "", None
    try:
        report_dir = pipeline(**run_arguments(cfg, data_root, run_name)).output.path
    except RuntimeError as e:  # kfp.local reports a failed task this way
        failure = e
    except BaseException as e:  # Ctrl-C: close the runs now rather than at the next run
        recovery.close_run(uri, cfg.tracking.experiment, run_name, f"interrupted ({type(e).__name__}) while its pipeline ran")
        raise
    with tracking.tracking_calls(uri, "the pipeline ended, but its MLflow run cannot be read"):
        parent = _parent(uri, cfg.tracking.experiment, run_name)
    if failure is not None or parent.info.status != "FINISHED":
        raise ScenesearchError(parent.data.tags.get("error") or f"the pipeline failed ({failure})")
    metrics = json.loads(storage.read_bytes(Path(report_dir) / "metrics.json"))
    return LocalRun(uri, parent.info.experiment_id, parent.info.run_id, run_name, parent.info.status, metrics, _step_seconds(uri, parent), str(root), report_dir)


def _parent(uri: str, experiment: str, run_name: str):
    c = tracking.client(uri)
    exp = c.get_experiment_by_name(experiment)
    runs = c.search_runs([exp.experiment_id], filter_string=f"attributes.run_name = '{run_name}'") if exp else []
    parents = [r for r in runs if tracking.PARENT_TAG not in r.data.tags]
    if not parents:
        raise ScenesearchError(f"the pipeline failed before opening its MLflow run '{run_name}'; see the task logs above")
    return parents[0]


def _step_seconds(uri: str, parent) -> dict[str, float]:
    c = tracking.client(uri)
    children = c.search_runs([parent.info.experiment_id], filter_string=f"tags.`{tracking.PARENT_TAG}` = '{parent.info.run_id}'")
    steps = {r.data.tags.get("step"): r.data.metrics.get("step_seconds", float("nan")) for r in children if r.data.tags.get("step")}
    # the shard tasks log nothing themselves (they are cacheable); their merge records the slowest
    steps.update({f"{r.data.tags['step']} shards": r.data.metrics["slowest_shard_seconds"] for r in children if "slowest_shard_seconds" in r.data.metrics})
    return steps

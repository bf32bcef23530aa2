"""MLflow bookkeeping: one parent run per pipeline run, one nested child run per step or method.

Steps run in separate processes (KFP tasks), so runs are addressed by id through
``MlflowClient`` rather than the fluent API's process-global "active run". Nothing here runs
on import; the tracking URI comes from the config, else $MLFLOW_TRACKING_URI, else a SQLite
store ``mlruns.db`` with artifacts in ``mlartifacts/`` under the current directory.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from scenesearch.config import RunConfig
from scenesearch.errors import ScenesearchError

PARENT_TAG = "mlflow.parentRunId"
MAX_PARAM_LEN = 6000


def resolve_uri(configured: str = "") -> str:
    """The tracking URI to use: config, then $MLFLOW_TRACKING_URI, then ./mlruns.db (absolute)."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlruns.db'}"


def git_commit() -> str:
    """$SCENESEARCH_GIT_COMMIT (set in images), else `git rev-parse HEAD` (+'-dirty'), else 'unknown'."""
    if os.environ.get("SCENESEARCH_GIT_COMMIT"):
        return os.environ["SCENESEARCH_GIT_COMMIT"]
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def client(uri: str):
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def ensure_experiment(c, name: str, uri: str) -> str:
    """The experiment's id, creating it (with a local artifact root beside a SQLite store) if needed."""
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    try:
        return c.create_experiment(name, artifact_location=location)
    except Exception:  # created meanwhile by a concurrent task
        return c.get_experiment_by_name(name).experiment_id


def _params(c, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        c.log_batch(run_id, params=items[i : i + 100])


def log_metrics(c, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
    for i in range(0, len(items), 500):
        c.log_batch(run_id, metrics=items[i : i + 500])


def start_parent(cfg: RunConfig, run_name: str, commit: str) -> str:
    """Create the pipeline's parent run with the whole config, commit and seed as params; return its id."""
    uri = resolve_uri(cfg.tracking.tracking_uri)
    c = client(uri)
    exp = ensure_experiment(c, cfg.tracking.experiment, uri)
    run = c.create_run(exp, run_name=run_name, tags={"preset": cfg.name, "git_commit": commit})
    _params(c, run.info.run_id, {**cfg.flat(), "git_commit": commit})
    return run.info.run_id


def finish_parent(cfg: RunConfig, run_id: str, status: str = "FINISHED") -> None:
    client(resolve_uri(cfg.tracking.tracking_uri)).set_terminated(run_id, status)


class StepRun:
    """Handle of a running child run: log a step's params, metrics and artifact files."""

    def __init__(self, c, run_id: str, parent_id: str):
        self.client, self.run_id, self.parent_id = c, run_id, parent_id

    def log_params(self, params: dict[str, Any], parent: bool = False) -> None:
        _params(self.client, self.parent_id if parent else self.run_id, params)

    def log_metrics(self, metrics: dict[str, float], parent: bool = False, step: int = 0) -> None:
        log_metrics(self.client, self.parent_id if parent else self.run_id, metrics, step)

    def parent_tag(self, key: str, default: str = "unknown") -> str:
        return self.client.get_run(self.parent_id).data.tags.get(key, default)

    def log_artifacts(self, paths: list[str], parent: bool = False, artifact_path: str | None = None) -> None:
        for p in paths:
            if Path(p).is_file():
                self.client.log_artifact(self.parent_id if parent else self.run_id, p, artifact_path)

    def child(self, name: str, tags: dict[str, str] | None = None) -> "StepRun":
        """A sibling run under the same parent (one per retrieval method, say), finished at once by the caller."""
        run = self.client.create_run(self._experiment(), run_name=name, tags={PARENT_TAG: self.parent_id, **(tags or {})})
        return StepRun(self.client, run.info.run_id, self.parent_id)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)

    def _experiment(self) -> str:
        return self.client.get_run(self.parent_id).info.experiment_id


@contextlib.contextmanager
def step_run(cfg: RunConfig, parent_id: str, step: str) -> Iterator[StepRun]:
    """A nested child run for one step; a failure marks the child and the parent FAILED and re-raises."""
    c = client(resolve_uri(cfg.tracking.tracking_uri))
    exp = c.get_run(parent_id).info.experiment_id
    run = c.create_run(exp, run_name=step, tags={PARENT_TAG: parent_id, "step": step})
    handle = StepRun(c, run.info.run_id, parent_id)
    start = time.perf_counter()
    try:
        yield handle
    except ScenesearchError as e:
        # A user-facing failure: record the sentence where the CLI and the MLflow UI find it,
        # print it, and exit non-zero without a traceback.
        for rid in (run.info.run_id, parent_id):
            c.set_tag(rid, "error", f"{step}: {e}")
            c.set_terminated(rid, "FAILED")
        print(f"scenesearch {step}: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    except BaseException as e:
        for rid in (run.info.run_id, parent_id):
            c.set_tag(rid, "error", f"{step}: {type(e).__name__}: {e}"[:5000])
            c.set_terminated(rid, "FAILED")
        raise
    handle.log_metrics({"step_seconds": time.perf_counter() - start})
    handle.log_metrics({f"{step}_seconds": time.perf_counter() - start}, parent=True)
    c.set_terminated(run.info.run_id, "FINISHED")


@contextlib.contextmanager
def untracked_step(step: str) -> Iterator[None]:
    """For cacheable shard tasks, which log nothing (a cached task cannot log into a new run):
    a user-facing failure prints its sentence (the task log; `scenesearch run` repeats it) and exits 1."""
    try:
        yield
    except ScenesearchError as e:
        print(f"scenesearch {step}: {e}", file=sys.stderr)
        raise SystemExit(1) from None

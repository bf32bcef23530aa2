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
import time
from pathlib import Path
from typing import Any, Iterator

from scenesearch.config import RunConfig
from scenesearch.errors import ScenesearchError

PARENT_TAG = "mlflow.parentRunId"
MAX_PARAM_LEN = 6000
# The experiment kind MLflow's UI reads from this experiment tag (mlflow 3.17's bundle,
# mlflow/server/js/build/static/js/main.*.js: `e.find(e=>"mlflow.experimentKind"===e.key)`), with
# the values of its ExperimentKind enum: CUSTOM_MODEL_DEVELOPMENT="custom_model_development" is
# "Machine learning", GENAI_DEVELOPMENT="genai_development" is "GenAI apps & agents".
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND_ML = "custom_model_development"
# In 3.17 that tag alone does not pick the page: the sidebar's GenAI / Machine learning switch does
# (localStorage "mlflow.workflowType_v1", default "genai"), and a `workflowType` URL parameter
# overrides it. Links into the runs table therefore carry workflowType=machine_learning.
WORKFLOW_TYPE_ML = "machine_learning"
DATASET_CONTEXT_TAG = "mlflow.data.context"  # mlflow.utils.mlflow_tags.MLFLOW_DATASET_CONTEXT


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
        tag_experiment(c, exp.experiment_id)
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    try:
        experiment_id = c.create_experiment(name, artifact_location=location)
    except Exception:  # created meanwhile by a concurrent task
        experiment_id = c.get_experiment_by_name(name).experiment_id
    tag_experiment(c, experiment_id)
    return experiment_id


def tag_experiment(c, experiment_id: str) -> None:
    """Mark the experiment as model training (not GenAI), so MLflow's UI treats it as a runs experiment.

    Idempotent: the tag is written only when it is missing or different.

    Args:
        c: an ``MlflowClient``.
        experiment_id: the experiment to tag.
    """
    exp = c.get_experiment(experiment_id)
    if exp.lifecycle_stage == "active" and exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND_ML:
        c.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND_ML)


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


def log_dataset(c, run_id: str, name: str, digest: str, source: str, context: str = "training", extra: dict | None = None) -> None:
    """Record the dataset as an MLflow dataset input of the run (the runs table's Dataset column).

    Idempotent: MLflow keeps one dataset per (experiment, name, digest) and one input per run.

    Args:
        c: an ``MlflowClient``.
        run_id: the run that used the dataset.
        name: the dataset's name (e.g. the preset's dataset).
        digest: our dataset fingerprint.
        source: the data root, a local path, ``file://`` URI or ``s3://`` URI.
        context: what the run used it for ("training", "evaluation", ...), shown beside the name.
        extra: counts and the like (JSON-serialisable), stored as the dataset's profile.
    """
    import json

    from mlflow.entities import Dataset, DatasetInput, InputTag

    source_type, uri = _dataset_source(source)
    dataset = Dataset(
        name=name,
        digest=digest,
        source_type=source_type,
        source=json.dumps({"uri": uri}),  # the UI reads the "uri" key of local and s3 sources
        profile=json.dumps(extra, sort_keys=True, default=str) if extra else None,
    )
    c.log_inputs(run_id, datasets=[DatasetInput(dataset, tags=[InputTag(DATASET_CONTEXT_TAG, context)])])


def _dataset_source(source: str) -> tuple[str, str]:
    """("s3", "s3://bucket/key") or ("local", "file:///abs/path") for a data root."""
    s = str(source)
    if s.startswith("s3:/"):  # pathlib folds s3://b/k to s3:/b/k
        return "s3", "s3://" + s.removeprefix("s3:").lstrip("/")
    return "local", Path(s.removeprefix("file://")).resolve().as_uri()


def link_model(c, run_id: str, model_id: str, step: int = 0) -> None:
    """Make a logged model (the ``model_id`` of ``mlflow.pyfunc.log_model``) an output model of the run.

    ``log_model`` inside ``mlflow.start_run(run_id=...)`` (or with ``run_id``) already links its model
    (mlflow/models/model.py, ``Model.log``: ``client.log_outputs(run_id, [LoggedModelOutput(...)])``),
    but ``log_outputs`` adds a row per call; this adds the link only when the run lacks it, so it is
    safe to call either way and more than once (e.g. for a model logged into another run).

    Args:
        c: an ``MlflowClient``.
        run_id: the run whose Models column should show the model.
        model_id: the logged model's id (``m-...``).
        step: the step it was logged at.
    """
    from mlflow.entities import LoggedModelOutput

    outputs = c.get_run(run_id).outputs
    if outputs is not None and any(o.model_id == model_id for o in outputs.model_outputs):
        return
    c.log_outputs(run_id, [LoggedModelOutput(model_id, step)])


def dataset_name(data_root: str) -> str:
    """The name a dataset goes by in MLflow: the last part of its root (``embedded`` for data/embedded)."""
    return str(data_root).rstrip("/").rpartition("/")[2] or str(data_root)


def link_run_outputs(c, parent_id: str, model_dirs: list[str], fingerprint: str) -> None:
    """After training: every method's run gets the dataset as its input, and the parent run lists
    every logged model among its outputs (each stays logged in its own train run)."""
    import json

    from scenesearch import storage

    data_root = c.get_run(parent_id).data.params.get("data_root", "unknown")
    for d in model_dirs:
        path = Path(d) / "mlflow.json"
        if not storage.exists(path):
            continue
        record = json.loads(storage.read_bytes(path))
        log_dataset(c, record["run_id"], dataset_name(data_root), fingerprint, data_root, "training")
        if record.get("model_id"):
            link_model(c, parent_id, record["model_id"])


def _repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def ui_command(tracking_uri: str) -> str:
    """The shell command that opens the MLflow UI on the store `tracking_uri` actually uses.

    ``make ui`` for the Makefile's store (``<repo>/mlruns.db``); ``mlflow ui`` on the store for another
    SQLite file or database (artifacts are found through each experiment's artifact location,
    ``mlartifacts/`` beside the file); for an ``http(s)://`` tracking server, its address.

    Args:
        tracking_uri: e.g. ``resolve_uri(cfg.tracking.tracking_uri)``.

    Returns:
        One line to show the user.
    """
    import shlex
    import sys

    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri} in a browser"
    store = tracking_uri
    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri.removeprefix("sqlite:///")).resolve()
        if path == _repo_root() / "mlruns.db":
            return "make ui"
        store = f"sqlite:///{path}"
    elif "://" not in tracking_uri or tracking_uri.startswith("file://"):  # a local FileStore folder
        store = Path(tracking_uri.removeprefix("file://")).resolve().as_uri()
    exe = Path(sys.executable).parent / "mlflow"
    mlflow = shlex.quote(str(exe)) if exe.is_file() else "mlflow"
    return (
        f"MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false {mlflow} ui --backend-store-uri {shlex.quote(store)}"
        " --host 127.0.0.1 --port 5000 --workers 1"
    )


def runs_page_url(base_url: str, experiment_id: str, run_id: str | None = None) -> str:
    """The UI address of an experiment's runs table, or of one run, in the Machine learning view.

    Routes of mlflow 3.17's UI (a hash router): ``#/experiments/<id>/runs`` and
    ``#/experiments/<id>/runs/<run id>``; ``workflowType=machine_learning`` keeps the UI off its
    GenAI default (see WORKFLOW_TYPE_ML).

    Args:
        base_url: e.g. ``http://127.0.0.1:5000``.
        experiment_id: the experiment.
        run_id: a run to open instead of the table.
    """
    page = f"#/experiments/{experiment_id}/runs" + (f"/{run_id}" if run_id else "")
    return f"{base_url.rstrip('/')}/{page}?workflowType={WORKFLOW_TYPE_ML}"


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

    def parent_param(self, key: str, default: str = "unknown") -> str:
        return self.client.get_run(self.parent_id).data.params.get(key, default)

    def log_artifacts(self, paths: list[str], parent: bool = False, artifact_path: str | None = None) -> None:
        for p in paths:
            if Path(p).is_file():
                self.client.log_artifact(self.parent_id if parent else self.run_id, p, artifact_path)

    def log_image(self, key: str, image: Any, step: int) -> None:
        """A (3, H, W) float image in [0, 1] (tensor or array) under `key` at `step`: MLflow's image
        log, shown per step in the run's Artifacts and in the image grid of the runs table."""
        import numpy as np

        arr = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image, dtype=np.float32)
        self.client.log_image(self.run_id, (np.clip(arr, 0, 1).transpose(1, 2, 0) * 255).round().astype(np.uint8), key=key, step=step)

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
        # A user-facing failure: record the sentence where the CLI and the MLflow UI find it;
        # the task's edge (scenesearch.cli.task_edge) prints it and exits non-zero.
        for rid in (run.info.run_id, parent_id):
            c.set_tag(rid, "error", f"{step}: {e}")
            c.set_terminated(rid, "FAILED")
        raise
    except BaseException as e:
        for rid in (run.info.run_id, parent_id):
            c.set_tag(rid, "error", f"{step}: {type(e).__name__}: {e}"[:5000])
            c.set_terminated(rid, "FAILED")
        raise
    handle.log_metrics({"step_seconds": time.perf_counter() - start})
    handle.log_metrics({f"{step}_seconds": time.perf_counter() - start}, parent=True)
    c.set_terminated(run.info.run_id, "FINISHED")

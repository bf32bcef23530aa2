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

from scenesearch.config import RunConfig, TrackingConfig
from scenesearch.errors import ScenesearchError, TrackingError

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
# Who drives a local pipeline run: `scenesearch run` puts host:pid:start-ticks in the environment of
# its tasks and start_run tags the parent with it, so a later run can tell a killed run from a live one.
DRIVER_ENV = "SCENESEARCH_DRIVER"
DRIVER_TAG = "scenesearch.driver"
ENDED_TAG = "scenesearch.ended"  # why a run was closed by another run than itself


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


def redact(uri: str) -> str:
    """A tracking URI fit for a log line or a param: no user:password part."""
    from scenesearch.storage import redact_url

    return redact_url(uri) if "://" in uri and not uri.startswith("sqlite:") else uri


def apply_retry_policy(t: TrackingConfig) -> None:
    """Set MLflow's HTTP retry policy from the config (it reads the environment on every call; tasks inherit it)."""
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(t.http_retries)
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = str(t.http_backoff_factor)
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(t.http_timeout_s)


def check_store(uri: str, attempts: int = 3) -> None:
    """Before any work: the tracking store answers, in one sentence if not.

    A server must answer ``/health`` (any reply below 500 counts: an auth proxy's 401 is a live
    server); a SQLite file's folder must be writable, and the store is opened once under a lock
    beside the file, so two runs that start together on a new store do not both create its tables.
    Any other store (a database URL) must answer one search.

    Args:
        uri: the resolved tracking URI.
        attempts: tries of the server's /health, one second apart.

    Raises:
        TrackingError: naming the store and what failed.
    """
    import urllib.error
    import urllib.request

    from scenesearch import storage

    shown = redact(uri)
    if uri.startswith(("http://", "https://")):
        reason = ""
        for i in range(attempts):
            try:
                with urllib.request.urlopen(shown.rstrip("/") + "/health", timeout=5):
                    return
            except urllib.error.HTTPError as e:
                if e.code < 500:
                    return
                reason = f"HTTP {e.code}"
            except (OSError, ValueError) as e:
                reason = _reason(e)
            if i + 1 < attempts:
                time.sleep(1.0)
        raise TrackingError(f"the MLflow tracking server {shown} is not reachable ({reason}); start it, or point tracking.tracking_uri or $MLFLOW_TRACKING_URI at a running one")
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TrackingError(f"the MLflow store {path} cannot be created ({e.strerror or e})") from None
        if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
            raise TrackingError(f"the MLflow store {path} is not writable")
        with storage.local_lock(path.with_name(path.name + ".lock")):
            _open(uri, f"the MLflow store {path}")
        return
    _open(uri, f"the MLflow tracking store {shown}")


def _open(uri: str, what: str) -> None:
    try:
        client(uri).search_experiments(max_results=1)
    except Exception as e:  # noqa: BLE001 - drivers and MLflow raise many types for "cannot open"
        raise TrackingError(f"{what} cannot be opened ({_reason(e)})") from None


def _reason(e: BaseException) -> str:
    """The first line of an exception, for a one-sentence message (an OSError's own words, without its errno)."""
    e = getattr(e, "reason", None) or e  # urllib's URLError wraps the OSError
    text = (e.strerror if isinstance(e, OSError) and e.strerror else str(e)).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


def unreachable(e: BaseException) -> str | None:
    """Why the tracking server did not answer, when `e` (or what it was raised from) says so; else None.

    MLflow's client has already retried (``tracking.http_retries``) by the time it raises.
    """
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = str(e)
        if type(e).__name__ in ("ConnectionError", "ConnectTimeout", "ReadTimeout", "MaxRetryError", "NewConnectionError", "ConnectionRefusedError"):
            break
        if "Max retries exceeded" in text or "Connection refused" in text or "Failed to establish a new connection" in text:
            break
        e = e.__cause__ or e.__context__
    else:  # the chain ended (or looped) without a connection failure
        return None
    text = str(e)
    for known in ("Connection refused", "timed out", "too many 5", "Name or service not known", "Connection reset"):
        if known in text:
            return known.replace("too many 5", "server errors (5xx)")
    return type(e).__name__


@contextlib.contextmanager
def tracking_calls(uri: str, what: str) -> Iterator[None]:
    """MLflow calls whose failure to reach the server becomes one TrackingError sentence naming the server (after `what`, if given)."""
    try:
        yield
    except Exception as e:
        reason = unreachable(e)
        if reason is None:
            raise
        retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
        raise TrackingError(
            (f"{what}: " if what else "") + f"the MLflow tracking server {redact(uri)} did not answer after {retries} retries ({reason});"
            " outputs already written stay on disk, run again once the server is back"
        ) from None


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
        return f"open {redact(tracking_uri)} in a browser"
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
    apply_retry_policy(cfg.tracking)
    tags = {"preset": cfg.name, "git_commit": commit}
    if os.environ.get(DRIVER_ENV):
        tags[DRIVER_TAG] = os.environ[DRIVER_ENV]
    with tracking_calls(uri, ""):
        c = client(uri)
        exp = ensure_experiment(c, cfg.tracking.experiment, uri)
        run = c.create_run(exp, run_name=run_name, tags=tags)
        params = {**cfg.flat(), "git_commit": commit}
        params["tracking.tracking_uri"] = redact(str(params.get("tracking.tracking_uri", "")))
        _params(c, run.info.run_id, params)
    return run.info.run_id


def finish_parent(cfg: RunConfig, run_id: str, status: str = "FINISHED") -> None:
    uri = resolve_uri(cfg.tracking.tracking_uri)
    with tracking_calls(uri, "closing the parent run"):
        client(uri).set_terminated(run_id, status)


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
    """A nested child run for one step; a failure marks the child and the parent FAILED and re-raises.

    A tracking server that stops answering (after MLflow's retries) fails the step with one
    TrackingError sentence; the runs are then left for the next run's `close_stale_runs`.
    """
    uri = resolve_uri(cfg.tracking.tracking_uri)
    apply_retry_policy(cfg.tracking)
    with tracking_calls(uri, ""):  # the task's edge names the step
        c = client(uri)
        exp = c.get_run(parent_id).info.experiment_id
        run = c.create_run(exp, run_name=step, tags={PARENT_TAG: parent_id, "step": step})
    handle = StepRun(c, run.info.run_id, parent_id)
    start = time.perf_counter()
    try:
        yield handle
    except BaseException as e:
        if unreachable(e) is not None:
            with tracking_calls(uri, ""):
                raise
        # A user-facing failure: record the sentence where the CLI and the MLflow UI find it;
        # the task's edge (scenesearch.cli.task_edge) prints it and exits non-zero.
        message = f"{step}: {e}" if isinstance(e, ScenesearchError) else f"{step}: {type(e).__name__}: {e}"[:5000]
        status = "FAILED" if isinstance(e, Exception) else "KILLED"  # Ctrl-C, or the task told to exit
        with contextlib.suppress(Exception):  # best effort: the step's own error is the one to show
            for rid in (run.info.run_id, parent_id):
                c.set_tag(rid, "error", message)
                c.set_terminated(rid, status)
        raise
    with tracking_calls(uri, ""):
        handle.log_metrics({"step_seconds": time.perf_counter() - start})
        handle.log_metrics({f"{step}_seconds": time.perf_counter() - start}, parent=True)
        c.set_terminated(run.info.run_id, "FINISHED")


# --------------------------------------------------------------------------------------------
# Runs that a killed process left open
# --------------------------------------------------------------------------------------------


def driver_id() -> str:
    """This process as host:pid:start-ticks (the start time tells a reused pid from the original)."""
    import socket

    return f"{socket.gethostname()}:{os.getpid()}:{_start_ticks(os.getpid())}"


def _start_ticks(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rpartition(")")[2].split()[19]  # field 22, starttime; the name in () may hold spaces
    except (OSError, IndexError):
        return "0"


def driver_alive(driver: str) -> bool:
    """Whether the process a `driver_id` names still runs; True when it ran on another host (unknowable here)."""
    import socket

    try:
        host, pid_text, ticks = driver.rsplit(":", 2)
        pid = int(pid_text)
    except ValueError:
        return True
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return ticks == "0" or _start_ticks(pid) in (ticks, "0")


def close_stale_runs(uri: str, experiment: str, by: str) -> list[str]:
    """Close the runs of `experiment` that killed processes left RUNNING; returns one line per run closed.

    A parent run is stale when the `scenesearch run` that drove it (its DRIVER_TAG) ran on this
    host and is gone; a child run is stale when its parent is no longer RUNNING. Each is marked
    KILLED with ENDED_TAG saying why and by whom. Parents of runs submitted to a cluster carry no
    driver tag and are left alone (KFP marks its own failed runs).

    Args:
        uri: the tracking URI.
        experiment: the experiment's name (nothing to do when it does not exist yet).
        by: who closes them (the new run's name), for the tag.
    """
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return []
    running = c.search_runs([exp.experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=5000)
    parents = {r.info.run_id: r for r in running if PARENT_TAG not in r.data.tags}
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    notes, closed = [], set()
    for rid, r in parents.items():
        driver = r.data.tags.get(DRIVER_TAG, "")
        if driver and not driver_alive(driver):
            why = f"ended without closing: its scenesearch run process ({driver}) is gone (killed, or cut off from the tracking server); closed by run {by} at {stamp}"
            c.set_tag(rid, ENDED_TAG, why)
            c.set_terminated(rid, "KILLED")
            closed.add(rid)
            notes.append(f"run {r.info.run_name} ({rid}): KILLED, {why}")
    for r in running:
        parent = r.data.tags.get(PARENT_TAG)
        if parent is None or (parent in parents and parent not in closed):
            continue
        why = f"ended without closing: its pipeline run {parent} had ended; closed by run {by} at {stamp}"
        c.set_tag(r.info.run_id, ENDED_TAG, why)
        c.set_terminated(r.info.run_id, "KILLED")
        notes.append(f"step run {r.info.run_name} ({r.info.run_id}): KILLED, {why}")
    return notes

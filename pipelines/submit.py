"""Submit the pipeline to a Kubeflow Pipelines cluster with `kfp.Client`, and optionally wait for it.

The run is the pipeline that `scenesearch compile` writes: `compile_pipeline(cfg)` compiles
`make_pipeline(cfg)` to a temporary YAML file, which `kfp.Client.create_run_from_pipeline_package`
sends inline (the create-run request carries the whole pipeline spec; nothing is uploaded as a
named pipeline). The run gets the arguments the local runner passes: the config as JSON, the
dataset root, the run name (also the MLflow parent run's name) and the git commit.

Authentication is kfp.Client's own:

* `host` given (or $KF_PIPELINES_ENDPOINT, which kfp reads): requests go there, with
  ``Authorization: Bearer <existing_token>`` when a token is given (e.g. a Kubernetes service
  account token for a multi-user deployment), else without credentials (a port-forward);
* no host: kfp uses the in-cluster service account when running in a pod, else the kubeconfig
  (current context or `kube_context`) and reaches the API through the Kubernetes API server's
  service proxy.

Every failure to reach or use the API (connection refused, unknown host, TLS, HTTP 401/403/404,
a timeout while watching, a run that ends other than SUCCEEDED) is a ScenesearchError with one
sentence; a token never appears in it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import kfp

from scenesearch import storage
from scenesearch.config import RunConfig
from scenesearch.errors import ScenesearchError

log = logging.getLogger(__name__)

TIMEOUT_S = 24 * 3600  # how long `watch` waits by default
POLL_S = 10.0  # seconds between two state requests while watching
TERMINAL_STATES = ("SUCCEEDED", "SKIPPED", "FAILED", "CANCELED")  # V2beta1RuntimeState values a run stays in
UI_ENDPOINT_ENV = "KF_PIPELINES_UI_ENDPOINT"  # kfp's own: the UI address when it differs from the API's
API_ENDPOINT_ENV = "KF_PIPELINES_ENDPOINT"  # kfp's own: the API address when no host is passed


@dataclass(frozen=True)
class SubmitResult:
    run_id: str
    url: str  # the run's page in the KFP UI; empty when no UI address is known (kubeconfig access)
    run_name: str
    experiment: str
    experiment_id: str
    state: str  # as the server reported it: at creation (usually PENDING) or, when watched, the final one

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


def submit(
    cfg: RunConfig,
    host: str | None = None,
    *,
    data_root: str | None = None,
    experiment: str | None = None,
    run_name: str | None = None,
    namespace: str | None = None,
    existing_token: str | None = None,
    kube_context: str | None = None,
    ssl_ca_cert: str | None = None,
    watch: bool = False,
    timeout_s: float = TIMEOUT_S,
    poll_s: float | None = None,
    on_submitted: Callable[[SubmitResult], None] | None = None,
) -> SubmitResult:
    """Compile the pipeline for `cfg`, create a run of it on the KFP API at `host`, optionally wait.

    Args:
        cfg: the run's config; baked into the spec as the parameter defaults and passed as config_json.
        host: the KFP API (and UI) address, e.g. http://localhost:8080 through a port-forward of
            svc/ml-pipeline-ui; None: $KF_PIPELINES_ENDPOINT, else in-cluster or kubeconfig access.
        data_root: the dataset root the cluster's ingest task reads (default cfg.data.root;
            normally an s3:// URI there).
        experiment: the KFP experiment, found or created by name (default cfg.tracking.experiment).
        run_name: the KFP run's display name and the MLflow parent run's name (default <preset>-<time>).
        namespace: the KFP (profile) namespace of a multi-user deployment.
        existing_token: a bearer token for the API.
        kube_context: the kubeconfig context, when no host is given.
        ssl_ca_cert: a CA bundle to verify the host's TLS certificate with.
        watch: wait until the run reaches a terminal state.
        timeout_s: how long to wait when watching.
        poll_s: seconds between state requests when watching (default POLL_S).
        on_submitted: called with the created run before waiting (the CLI prints its URL there).

    Returns:
        The run's id, UI URL, names and state.

    Raises:
        ScenesearchError: the API could not be reached or refused a request, the run did not end
            SUCCEEDED (when watching), or the wait timed out.
    """
    from pipelines.scenesearch_pipeline import compile_pipeline, run_arguments

    data_root = data_root or cfg.data.root
    if not storage.is_remote(data_root):
        log.warning("data root %s is a local path: the cluster's pods must see it there (normally an s3:// URI)", data_root)
    experiment = experiment or cfg.tracking.experiment
    run_name = run_name or f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    arguments = run_arguments(cfg, data_root, run_name)
    host = _normalise_host(host or os.environ.get(API_ENDPOINT_ENV))
    with tempfile.TemporaryDirectory(prefix="scenesearch-submit-") as tmp:
        package = compile_pipeline(cfg, Path(tmp) / "scenesearch.yaml")  # before any request: a bad pipeline sends nothing
        client = connect(host, existing_token=existing_token, kube_context=kube_context, ssl_ca_cert=ssl_ca_cert)
        with _api_errors(host, existing_token, "submitting the run"), _quiet():
            created = client.create_run_from_pipeline_package(
                str(package), arguments=arguments, run_name=run_name, experiment_name=experiment, namespace=namespace, enable_caching=None
            )
    run = created.run_info
    if not created.run_id:
        raise ScenesearchError(f"{_where(host)} accepted the run but answered no run id; is it the Kubeflow Pipelines API (a login page answers like this)?")
    result = SubmitResult(created.run_id, run_url(host, created.run_id), run_name, experiment, run.experiment_id or "", run.state or "")
    if on_submitted is not None:
        on_submitted(result)
    if not watch:
        return result
    state = wait(client, result, host, existing_token, timeout_s, POLL_S if poll_s is None else poll_s)
    return dataclasses.replace(result, state=state)


def connect(host: str | None, *, existing_token: str | None = None, kube_context: str | None = None, ssl_ca_cert: str | None = None):
    """A kfp.Client for `host` (see the module docstring for how it authenticates), checked with one health request.

    The profile namespace is not given to the client: kfp.Client's `namespace` is also where it
    looks for the KFP service through the kubeconfig; `submit` passes it with the run instead.
    """
    if host is None:
        if existing_token:  # kfp sends a token only to an explicit host; without one it would go to http://localhost
            raise ScenesearchError("a KFP token needs a host (--host or $KFP_HOST); through the kubeconfig, its own credentials are used")
        if not _kube_access(kube_context):
            raise ScenesearchError("no KFP host given (--host, $KFP_HOST or $KF_PIPELINES_ENDPOINT) and no usable kubeconfig or in-cluster service account")
    with _api_errors(host, existing_token, "connecting"), _quiet():
        return _Client(host=host, existing_token=existing_token or None, kube_context=kube_context, ssl_ca_cert=ssl_ca_cert)


def wait(client, result: SubmitResult, host: str | None, token: str | None, timeout_s: float, poll_s: float) -> str:
    """Poll the run until it reaches a terminal state; return SUCCEEDED, raise for any other end.

    Our own loop rather than kfp's `wait_for_run_completion`, whose finish states miss CANCELED
    (a cancelled run would be waited on until the timeout) and which logs every poll.
    """
    deadline = time.monotonic() + timeout_s
    state, error = "", ""
    try:
        while True:
            with _api_errors(host, token, f"watching run {result.run_id}"), _quiet():
                run = client.get_run(result.run_id)
            if (run.state or "") != state:
                state = run.state or ""
                log.info("run %s: %s", result.run_id, state or "(no state yet)")
            if state in TERMINAL_STATES:
                error = (getattr(run.error, "message", None) or "") if run.error else ""
                break
            if time.monotonic() + poll_s > deadline:
                raise ScenesearchError(f"run {result.run_id} is still {state or 'pending'} after {timeout_s:g} s; it goes on on the cluster: {_link(result)}")
            time.sleep(poll_s)
    except KeyboardInterrupt:
        raise ScenesearchError(f"stopped watching run {result.run_id} ({state or 'pending'}); it goes on on the cluster: {_link(result)}") from None
    if state != "SUCCEEDED":
        reason = f": {_one_line(error)}" if error else ""
        raise ScenesearchError(f"run {result.run_id} ended {state}{reason} (see {_link(result)})")
    return state


def run_url(host: str | None, run_id: str) -> str:
    """The run's page in the KFP UI: $KF_PIPELINES_UI_ENDPOINT (as kfp reads it), else the host."""
    ui = (os.environ.get(UI_ENDPOINT_ENV) or host or "").rstrip("/")
    if ui and "://" not in ui:
        ui = "http://" + ui  # as kfp links a UI address without a scheme
    return f"{ui}/#/runs/details/{run_id}" if ui else ""


class _Client(kfp.Client):
    """kfp.Client whose health check (made by its constructor) is one request.

    kfp's own retries an HTTP error five times, 5 s apart, and logs each with a traceback, so a
    401 would take 25 s to surface; here the first answer decides.
    """

    def get_kfp_healthz(self, sleep_duration: int = 5):
        return self._healthz_api.healthz_service_get_healthz()


def _kube_access(context: str | None) -> bool:
    """Whether kfp can find the API without a host: an in-cluster service account or a kubeconfig."""
    import kubernetes

    try:
        kubernetes.config.load_incluster_config()
        return True
    except Exception:
        pass
    try:
        kubernetes.config.load_kube_config(client_configuration=kubernetes.client.Configuration(), context=context)
        return True
    except Exception:
        return False


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Keep kfp's prints ("Experiment details: ...", "Run details: ...") and version warning off
    stdout, and urllib3's "Retrying ..." warnings off stderr (the failure becomes one sentence)."""
    out = io.StringIO()
    pool_log = logging.getLogger("urllib3.connectionpool")
    level = pool_log.level
    pool_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(out):
            warnings.filterwarnings("ignore", message="This client only works with Kubeflow Pipeline")
            yield
    finally:
        pool_log.setLevel(level)
        for line in out.getvalue().splitlines():
            log.debug("kfp: %s", line)


@contextlib.contextmanager
def _api_errors(host: str | None, token: str | None, doing: str) -> Iterator[None]:
    """Turn what kfp_server_api and urllib3 raise into one ScenesearchError sentence without the token."""
    import kfp_server_api
    import urllib3

    where = _where(host)
    try:
        yield
    except kfp_server_api.ApiException as e:
        if e.status == 0:  # kfp_server_api's wrapping of a TLS failure
            msg = f"TLS to {where} failed while {doing} ({_one_line(e.reason)}); pass the cluster's CA bundle or check the address"
        elif e.status in (401, 403):
            hint = "the token was refused" if token else "pass a token with --token or $KFP_TOKEN"
            msg = f"{where} refused the request while {doing} (HTTP {e.status} {e.reason}): {hint}"
        elif e.status == 404:
            msg = f"{where} answered HTTP 404 while {doing}; is it the Kubeflow Pipelines 2.x API or UI address?"
        else:
            msg = f"{where} answered HTTP {e.status} {e.reason} while {doing}{_server_message(e.body)}"
        raise ScenesearchError(_scrub(msg, token)) from None
    except urllib3.exceptions.HTTPError as e:
        cause = getattr(e, "reason", None) or e
        if isinstance(cause, urllib3.exceptions.SSLError):
            what = f"TLS failed ({_one_line(cause)}); pass the cluster's CA bundle or check the address"
        elif isinstance(cause, urllib3.exceptions.NameResolutionError):
            what = "the host name does not resolve"
        elif isinstance(cause, urllib3.exceptions.NewConnectionError):
            what = "the connection was refused or could not be opened"
        elif isinstance(cause, urllib3.exceptions.TimeoutError):
            what = "the connection timed out"
        else:
            what = _one_line(type(cause).__name__)
        raise ScenesearchError(_scrub(f"cannot reach {where} while {doing}: {what}", token)) from None
    except ValueError as e:  # kfp: several experiments with one name; an unusable host string
        raise ScenesearchError(_scrub(f"{where} while {doing}: {_one_line(str(e))}", token)) from None


def _normalise_host(host: str | None) -> str | None:
    """Without a trailing slash, and https:// when no scheme is given (kfp's own default, without its warning)."""
    host = (host or "").strip().rstrip("/")
    if host and "://" not in host:
        host = "https://" + host
    return host or None


def _where(host: str | None) -> str:
    return f"the KFP API at {host}" if host else "the KFP API (through the kubeconfig)"


def _link(result: SubmitResult) -> str:
    return result.url or f"run id {result.run_id}"


def _server_message(body) -> str:
    """': <message>' from a KFP error body ({"error"/"message": ...}), or ''."""
    import json

    try:
        data = json.loads(body) if body else {}
    except (TypeError, ValueError):
        return ""
    text = (data.get("message") or data.get("error") or "") if isinstance(data, dict) else ""
    return f": {_one_line(text)}" if text else ""


def _one_line(text, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _scrub(text: str, token: str | None) -> str:
    return text.replace(token, "<token>") if token else text

"""`scenesearch submit` against a recording stand-in for the Kubeflow Pipelines API.

This checks the contract with the KFP API, not a cluster: the server below (http.server on
127.0.0.1, one thread) implements just the v2beta1 REST endpoints that kfp.Client calls to
submit and watch a run, answers with minimal valid JSON, and records every request. The tests
assert what the real kfp.Client sends: the health check, the experiment looked up by name and
created when missing, the create-run body with the whole pipeline spec (the one `scenesearch
compile` writes) and the runtime parameters, the bearer token; and what the CLI makes of the
answers: the run's URL, the final state with --watch, one sentence and exit 1 on failures.
Whether a real KFP backend accepts and executes the spec is not checked here.
"""

from __future__ import annotations

import http.server
import json
import shutil
import socket
import subprocess
import threading
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
API = "/apis/v2beta1"
TOKEN = "tok-3f9a2c7e51"  # a recognisable value, to check that it never appears in output
# DAG tasks every submitted spec must hold (a subset: sharded fan-out may add tasks around them).
REQUIRED_TASKS = {"start-run", "ingest", "render", "preprocess", "features", "similarity", "train", "retrieve", "evaluate", "register"}


class FakeKFP:
    """A recording stand-in for the KFP v2beta1 API (healthz, experiments, runs)."""

    def __init__(self, states=("SUCCEEDED",), require_token: str | None = None, experiments=(), run_error: str = ""):
        self.requests: list[dict] = []
        self.experiments = [{"experiment_id": f"exp-{i}", "display_name": name, "namespace": ""} for i, name in enumerate(experiments)]
        self.runs: dict[str, dict] = {}
        self.states = list(states)  # what successive GET /runs/{id} answer; the last one repeats
        self.require_token = require_token
        self.run_error = run_error
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                fake._handle(self, "GET")

            def do_POST(self):
                fake._handle(self, "POST")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def calls(self, method: str, path: str) -> list[dict]:
        return [r for r in self.requests if r["method"] == method and r["path"] == API + path]

    def _handle(self, h, method: str) -> None:
        url = urlsplit(h.path)
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        self.requests.append(
            {"method": method, "path": url.path, "query": parse_qs(url.query), "headers": {k.lower(): v for k, v in h.headers.items()}, "body": json.loads(raw) if raw else None}
        )
        if self.require_token and h.headers.get("Authorization") != f"Bearer {self.require_token}":
            return self._reply(h, 401, {"error": "Unauthorized", "code": 16, "message": "Unauthorized"})
        status, body = self._route(method, url.path, parse_qs(url.query), json.loads(raw) if raw else None)
        self._reply(h, status, body)

    def _route(self, method, path, query, body):
        if method == "GET" and path == f"{API}/healthz":
            return 200, {"multi_user": False}
        if method == "GET" and path == f"{API}/experiments":
            wanted = [p["stringValue"] for p in json.loads(query["filter"][0])["predicates"] if p["key"] == "display_name"]
            found = [e for e in self.experiments if e["display_name"] in wanted]
            return 200, ({"experiments": found, "total_size": len(found)} if found else {})
        if method == "POST" and path == f"{API}/experiments":
            exp = {**body, "experiment_id": str(uuid.uuid4()), "storage_state": "AVAILABLE"}
            self.experiments.append(exp)
            return 200, exp
        if method == "POST" and path == f"{API}/runs":
            run = {**body, "run_id": str(uuid.uuid4()), "state": "PENDING", "storage_state": "AVAILABLE"}
            self.runs[run["run_id"]] = run
            return 200, run
        if method == "GET" and path.startswith(f"{API}/runs/") and path.rsplit("/", 1)[1] in self.runs:
            run = dict(self.runs[path.rsplit("/", 1)[1]])
            run["state"] = self.states.pop(0) if len(self.states) > 1 else self.states[0]
            if run["state"] == "FAILED" and self.run_error:
                run["error"] = {"code": 2, "message": self.run_error}
            return 200, run
        return 404, {"error": "Not Found", "code": 5, "message": f"no route {method} {path}"}

    @staticmethod
    def _reply(h, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)


@pytest.fixture(autouse=True)
def _isolated_kfp(monkeypatch, tmp_path):
    """No kfp context file, endpoint variables or token from the machine running the tests."""
    import kfp

    from pipelines import submit

    monkeypatch.setattr(kfp.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp-context.json"))
    for var in ("KFP_HOST", "KFP_TOKEN", "KF_PIPELINES_ENDPOINT", "KF_PIPELINES_UI_ENDPOINT", "KF_PIPELINES_DEFAULT_EXPERIMENT_NAME", "KF_PIPELINES_OVERRIDE_EXPERIMENT_NAME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(submit, "POLL_S", 0.01)


def _main(capsys, *argv):
    from scenesearch.cli import main

    code = main(["submit", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _result(out: str) -> dict:
    return json.loads(out[out.index("{"):])


def _task_names(spec: dict, in_loop: bool = False) -> set[str]:
    """Task names in the root DAG and the DAGs nested in it, '-N' suffixes dropped; with
    `in_loop`, only those of tasks inside a ParallelFor (a for-loop DAG)."""
    names, seen = set(), set()

    def walk(dag: dict, looped: bool) -> None:
        for name, task in dag.get("tasks", {}).items():
            base, _, n = name.rpartition("-")
            if looped or not in_loop:
                names.add(base if n.isdigit() and base else name)
            ref = task.get("componentRef", {}).get("name")
            if ref and ref not in seen and "dag" in spec["components"].get(ref, {}):
                seen.add(ref)
                walk(spec["components"][ref]["dag"], looped or "iteratorPolicy" in task or "parameterIterator" in task)

    walk(spec["root"]["dag"], False)
    return names


def _split_spec(sent: dict) -> tuple[dict, dict]:
    """(pipeline spec, platform spec) as kfp sends them: the bare spec, or both under their names."""
    if "pipeline_spec" in sent:
        return sent["pipeline_spec"], sent.get("platform_spec", {})
    return sent, {}


def test_submit_sends_the_compiled_spec_and_parameters(capsys, tmp_path):
    from pipelines.scenesearch_pipeline import compile_pipeline
    from scenesearch import config, tracking

    full = config.load("full")
    with FakeKFP() as kfp_api:
        code, out, err = _main(capsys, "--preset", "full", "--host", kfp_api.url, "--token", TOKEN, "--data", "s3://datasets/full", "--run-name", "full-test")

    assert code == 0, err
    # The client's calls, in order: health, the experiment by name (absent), its creation, the run.
    assert [(r["method"], r["path"].removeprefix(API)) for r in kfp_api.requests] == [
        ("GET", "/healthz"), ("GET", "/experiments"), ("POST", "/experiments"), ("POST", "/runs"),
    ]
    assert all(r["headers"].get("authorization") == f"Bearer {TOKEN}" for r in kfp_api.requests)
    predicates = json.loads(kfp_api.requests[1]["query"]["filter"][0])["predicates"]
    assert {"key": "display_name", "operation": 1, "stringValue": "scenesearch-full"} in predicates
    experiment = kfp_api.requests[2]["body"]
    assert experiment["display_name"] == "scenesearch-full"

    create = kfp_api.calls("POST", "/runs")[0]["body"]
    run_id = next(iter(kfp_api.runs))
    assert create["display_name"] == "full-test" and create["experiment_id"] == kfp_api.experiments[0]["experiment_id"]
    # The spec sent is the one `scenesearch compile` writes for the same preset.
    spec, platform = _split_spec(create["pipeline_spec"])
    docs = list(yaml.safe_load_all(compile_pipeline(full, tmp_path / "compiled.yaml").read_text()))
    assert spec == docs[0] and platform == ({k: v for d in docs[1:] for k, v in d.items()})
    assert REQUIRED_TASKS <= _task_names(spec), sorted(_task_names(spec))
    assert "train" in _task_names(spec, in_loop=True)  # one train task per architecture
    params = create["runtime_config"]["parameters"]
    assert {"config_json", "data_root", "run_name", "git_commit"} <= set(params)
    assert config.from_json(params["config_json"]) == full
    assert params["data_root"] == "s3://datasets/full" and params["run_name"] == "full-test"
    assert params["git_commit"] == tracking.git_commit()
    assert set(params) <= set(spec["root"]["inputDefinitions"]["parameters"])  # every argument is a pipeline parameter

    url = f"{kfp_api.url}/#/runs/details/{run_id}"
    assert url in out.splitlines()[0]
    assert _result(out) == {
        "run_id": run_id, "url": url, "run_name": "full-test", "experiment": "scenesearch-full",
        "experiment_id": create["experiment_id"], "state": "PENDING",
    }
    assert TOKEN not in out + err


def test_existing_experiment_is_reused_and_no_token_sends_no_header(capsys):
    with FakeKFP(experiments=["team-runs"]) as kfp_api:
        code, out, err = _main(capsys, "--preset", "smoke", "--host", kfp_api.url + "/", "--experiment", "team-runs", "--namespace", "team-a", "--data", "s3://d/smoke")

    assert code == 0, err
    assert kfp_api.calls("GET", "/experiments")[0]["query"]["namespace"] == ["team-a"]
    assert not kfp_api.calls("POST", "/experiments")
    assert kfp_api.calls("POST", "/runs")[0]["body"]["experiment_id"] == "exp-0"
    assert all("authorization" not in r["headers"] for r in kfp_api.requests)
    run_id = next(iter(kfp_api.runs))
    assert _result(out)["url"] == f"{kfp_api.url}/#/runs/details/{run_id}"  # no doubled slash from the trailing one
    assert kfp_api.calls("POST", "/runs")[0]["body"]["display_name"].startswith("smoke-")


def test_watch_polls_until_succeeded(capsys):
    with FakeKFP(states=("PENDING", "RUNNING", "RUNNING", "SUCCEEDED")) as kfp_api:
        code, out, err = _main(capsys, "--preset", "smoke", "--host", kfp_api.url, "--data", "s3://d/smoke", "--watch")

    assert code == 0, err
    run_id = next(iter(kfp_api.runs))
    assert len(kfp_api.calls("GET", f"/runs/{run_id}")) == 4
    assert f"run {run_id} finished: SUCCEEDED" in out
    assert _result(out)["state"] == "SUCCEEDED"


@pytest.mark.parametrize("state", ["FAILED", "CANCELED"])
def test_watch_failed_run_exits_1_with_one_sentence(capsys, state):
    with FakeKFP(states=("RUNNING", state), run_error="task train-cvae1 failed:\nexit code 1") as kfp_api:
        code, out, err = _main(capsys, "--preset", "smoke", "--host", kfp_api.url, "--token", TOKEN, "--data", "s3://d/smoke", "--watch")

    run_id = next(iter(kfp_api.runs))
    assert code == 1
    assert f"{kfp_api.url}/#/runs/details/{run_id}" in out  # printed as soon as the run was created
    sentence = [line for line in err.splitlines() if line.startswith("scenesearch submit:")]
    assert len(sentence) == 1 and f"run {run_id} ended {state}" in sentence[0]
    if state == "FAILED":
        assert "task train-cvae1 failed: exit code 1" in sentence[0]
    assert "Traceback" not in err and TOKEN not in out + err


def test_watch_timeout_is_one_sentence(capsys):
    with FakeKFP(states=("RUNNING",)) as kfp_api:
        code, out, err = _main(capsys, "--preset", "smoke", "--host", kfp_api.url, "--data", "s3://d/smoke", "--watch", "--timeout", "0.05")

    assert code == 1
    assert "is still RUNNING after 0.05 s; it goes on on the cluster" in err and "Traceback" not in err


def test_connection_refused_is_one_sentence_without_the_token(capsys):
    with socket.socket() as s:  # a port that was free a moment ago and has no listener now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, out, err = _main(capsys, "--preset", "smoke", "--host", f"http://127.0.0.1:{port}", "--token", TOKEN, "--data", "s3://d/smoke")

    assert code == 1 and out == ""
    assert err.strip().splitlines() == [f"scenesearch submit: cannot reach the KFP API at http://127.0.0.1:{port} while connecting: the connection was refused or could not be opened"]


@pytest.mark.parametrize("token", [None, "wrong-" + TOKEN])
def test_refused_token_is_one_sentence_at_once(capsys, token):
    with FakeKFP(require_token=TOKEN) as kfp_api:
        code, out, err = _main(capsys, "--preset", "smoke", "--host", kfp_api.url, *(["--token", token] if token else []), "--data", "s3://d/smoke")

    assert code == 1 and out == ""
    assert len(kfp_api.requests) == 1  # one health request decides; no retries, no run created
    hint = "the token was refused" if token else "pass a token with --token or $KFP_TOKEN"
    assert err.strip().splitlines() == [f"scenesearch submit: the KFP API at {kfp_api.url} refused the request while connecting (HTTP 401 Unauthorized): {hint}"]
    assert TOKEN not in err


def test_token_from_environment(capsys, monkeypatch):
    with FakeKFP(require_token=TOKEN) as kfp_api:
        monkeypatch.setenv("KFP_HOST", kfp_api.url)
        monkeypatch.setenv("KFP_TOKEN", TOKEN)
        code, out, err = _main(capsys, "--preset", "smoke", "--data", "s3://d/smoke")

    assert code == 0, err
    assert kfp_api.calls("POST", "/runs") and TOKEN not in out + err


@pytest.mark.parametrize(
    "argv, sentence",
    [
        ([], "no KFP host given (--host, $KFP_HOST or $KF_PIPELINES_ENDPOINT) and no usable kubeconfig or in-cluster service account"),
        (["--token", TOKEN], "a KFP token needs a host (--host or $KFP_HOST); through the kubeconfig, its own credentials are used"),
    ],
)
def test_without_host_or_kubeconfig_is_one_sentence(capsys, monkeypatch, tmp_path, argv, sentence):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    code, out, err = _main(capsys, "--preset", "smoke", "--data", "s3://d/smoke", *argv)

    assert code == 1 and out == ""
    assert err.strip().splitlines() == [f"scenesearch submit: {sentence}"]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_submit_needs_a_host_and_calls_the_cli():
    missing = subprocess.run(["make", "-s", "submit", "KFP_HOST="], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0
    assert missing.stderr.splitlines()[0] == "make submit needs KFP_HOST, the Kubeflow Pipelines address, e.g. make submit KFP_HOST=http://localhost:8080 PRESET=full"
    dry = subprocess.run(["make", "-n", "submit", "KFP_HOST=http://kfp.example:8080", "PRESET=full"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert ".venv/bin/scenesearch submit --preset full --host http://kfp.example:8080" in dry.stdout

"""Screenshots of the MLflow UI on a store: the experiment's runs table and its latest parent run.

Starts `mlflow ui` (job execution off, one worker) on a free loopback port against the store,
waits for /health, and has headless Chromium render three pages into PNGs:

    runs.png            #/experiments/<id>/runs: the table as the runs link opens it (child runs
                        folded under their parent; the Dataset column)
    runs_by_METRIC.png  the same table sorted by METRIC (--metric, default test_mAP), which lists
                        child runs flat: the Models column shows a model on the run that logged it
    parent_run.png      #/experiments/<id>/runs/<parent run id>: datasets, child runs, logged models

Every address carries workflowType=machine_learning (see scenesearch.tracking.WORKFLOW_TYPE_ML).
Each page gets a fresh browser profile in which the MLflow Assistant side panel, which the UI
opens by itself on a first visit from localhost, is already closed, as a user would close it.
The server is stopped afterwards. With --demo, a small store is built first (a parent run, a few
child runs with metrics, a dataset input and a linked model) under OUT/demo/, so the check needs
no pipeline run.

Usage: python infra/tools/ui_screenshot.py [--store URI] [--experiment NAME] [--metric KEY] [--out DIR] [--demo]
"""

from __future__ import annotations

import argparse
import http.server
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
SERVER_WAIT_S = 90
SHOT_TIMEOUT_S = 120
WINDOW = "1600,1000"
# localStorage of the UI's origin before its first visit (keys as its bundle writes them:
# `${key}_v${version}`, JSON values): the Assistant panel closed and not auto-opened again.
SEED_PAGE = b"""<!doctype html><script>
localStorage.setItem("mlflow.assistant.panelOpen_v1", "false");
localStorage.setItem("mlflow.assistant.fab.autoOpenedOnFirstLoad_v1", "true");
document.write("seeded");
</script>"""


class CheckError(Exception):
    """A one-sentence reason the screenshots could not be taken."""


def find_chromium() -> str:
    """The Chromium executable ($CHROMIUM, else the first of CHROMIUM_NAMES on PATH)."""
    for name in ([os.environ["CHROMIUM"]] if os.environ.get("CHROMIUM") else []) + list(CHROMIUM_NAMES):
        path = shutil.which(name)
        if path:
            return path
    raise CheckError("chromium not found; install it with apt-get install chromium")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mlflow_exe() -> str:
    beside = Path(sys.executable).parent / "mlflow"
    exe = str(beside) if beside.is_file() else shutil.which("mlflow")
    if not exe:
        raise CheckError("mlflow not found; run make setup first")
    return exe


def build_demo_store(root: Path) -> tuple[str, str]:
    """A fresh SQLite store under `root` with one pipeline-shaped parent run; (uri, experiment name)."""
    import mlflow

    from scenesearch import tracking

    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    uri = f"sqlite:///{root / 'mlruns.db'}"
    name = "scenesearch-demo"
    c = tracking.client(uri)
    exp = tracking.ensure_experiment(c, name, uri)
    data_root, fingerprint = str(root / "data" / "embedded"), "3f9c2a1b7e55"
    counts = {"scenes": 120, "views": 1440, "classes": 8, "queries": 40}

    parent = c.create_run(exp, run_name="demo-pipeline", tags={"preset": "smoke", "git_commit": "demo"}).info.run_id
    c.log_param(parent, "preset", "smoke")
    tracking.log_dataset(c, parent, "embedded", fingerprint, data_root, extra=counts)
    methods = {"cvae1": 0.612, "cvae2": 0.574, "siamese": 0.538}
    tracking.log_metrics(c, parent, {f"test_{m}_mAP": v for m, v in methods.items()})

    for step in ("ingest", "render", "features"):
        rid = c.create_run(exp, run_name=step, tags={tracking.PARENT_TAG: parent, "step": step}).info.run_id
        tracking.log_metrics(c, rid, {"step_seconds": 1.5})
        c.set_terminated(rid, "FINISHED")

    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input: list[str], params=None) -> list[str]:
            return model_input

    mlflow.set_tracking_uri(uri)
    for method, value in methods.items():
        rid = c.create_run(exp, run_name=f"train-{method}", tags={tracking.PARENT_TAG: parent, "step": "train", "method": method}).info.run_id
        c.log_param(rid, "method", method)
        tracking.log_dataset(c, rid, "embedded", fingerprint, data_root, extra=counts)
        tracking.log_metrics(c, rid, {"test_mAP": value, f"test_{method}_mAP": value})
        if method == "cvae1":
            with mlflow.start_run(run_id=rid):
                model_id = mlflow.pyfunc.log_model(name="model", python_model=Echo(), pip_requirements=["mlflow"]).model_id
            tracking.link_model(c, rid, model_id)  # already linked by log_model: a no-op
            tracking.link_model(c, parent, model_id)  # the parent row shows the pipeline's model too
        c.set_terminated(rid, "FINISHED")
    c.set_terminated(parent, "FINISHED")
    return uri, name


def latest_parent(c, experiment_id: str) -> str:
    """The most recently started run of the experiment that is not a child run."""
    for run in c.search_runs([experiment_id], order_by=["attributes.start_time DESC"], max_results=500):
        if "mlflow.parentRunId" not in run.data.tags:
            return run.info.run_id
    raise CheckError(f"experiment {experiment_id} has no parent run; run make run first")


def start_ui(store: str, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    cmd = [mlflow_exe(), "ui", "--backend-store-uri", store, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(log, "wb") as out:
        # its own session, so that stopping it stops its workers too
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(server: subprocess.Popen, base_url: str, log: Path) -> None:
    deadline = time.monotonic() + SERVER_WAIT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise CheckError(f"mlflow ui exited with status {server.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"{base_url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise CheckError(f"mlflow ui did not answer on {base_url} within {SERVER_WAIT_S} s; see {log}")


def stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def chromium_args(chromium: str, profile: Path) -> list[str]:
    return [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={profile}"]


def seed_profile(chromium: str, profile: Path, port: int) -> None:
    """Write SEED_PAGE's localStorage into `profile` for http://127.0.0.1:`port` (before the UI takes the port)."""

    class Seed(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Cache-Control", "no-store")  # else the browser would show it in place of the UI
            self.end_headers()
            self.wfile.write(SEED_PAGE)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", port), Seed)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cmd = chromium_args(chromium, profile) + ["--virtual-time-budget=2000", "--dump-dom", f"http://127.0.0.1:{port}/seed"]
        dom = subprocess.run(cmd, capture_output=True, text=True, timeout=SHOT_TIMEOUT_S).stdout
    except subprocess.TimeoutExpired:
        dom = ""
    finally:
        server.shutdown()
        server.server_close()
    if "seeded" not in dom:
        raise CheckError("chromium could not prepare its profile (it rendered no page from 127.0.0.1)")


def screenshot(chromium: str, seeded: Path, url: str, png: Path) -> None:
    """Render `url` in headless Chromium, in a copy of the `seeded` profile, into `png`."""
    png.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        profile = Path(tmp) / "profile"
        shutil.copytree(seeded, profile, symlinks=True, ignore=shutil.ignore_patterns("Singleton*"))
        cmd = chromium_args(chromium, profile) + [f"--window-size={WINDOW}", "--virtual-time-budget=15000", f"--screenshot={png}", url]
        try:
            subprocess.run(cmd, capture_output=True, timeout=SHOT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise CheckError(f"chromium took over {SHOT_TIMEOUT_S} s on {url}") from None
    if not png.is_file() or png.stat().st_size == 0:
        raise CheckError(f"chromium wrote no screenshot of {url}")


def take(store: str, experiment: str, metric: str, out: Path) -> list[Path]:
    """Screenshots of `experiment`'s runs table and latest parent run on `store`, into `out`."""
    from scenesearch import tracking

    chromium = find_chromium()
    if store.startswith("sqlite:///") and not Path(store.removeprefix("sqlite:///")).is_file():
        raise CheckError(f"no MLflow store at {store.removeprefix('sqlite:///')}; run make run first, or pass --demo")
    c = tracking.client(store)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        raise CheckError(f"the store {store} has no experiment {experiment!r}; pass --experiment")
    parent = latest_parent(c, exp.experiment_id)

    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base_url, log = f"http://127.0.0.1:{port}", out / "mlflow_ui.log"
    runs = tracking.runs_page_url(base_url, exp.experiment_id)
    sort = urllib.parse.urlencode({"orderByKey": f"metrics.`{metric}`", "orderByAsc": "false"})
    shots = [
        (runs, out / "runs.png"),
        (f"{runs}&{sort}", out / f"runs_by_{metric}.png"),
        (tracking.runs_page_url(base_url, exp.experiment_id, parent), out / "parent_run.png"),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        seeded = Path(tmp) / "seeded"
        seed_profile(chromium, seeded, port)
        server = start_ui(store, port, log)
        try:
            wait_for(server, base_url, log)
            for url, png in shots:
                screenshot(chromium, seeded, url, png)
                print(f"{png}  <- {url}")
        finally:
            stop(server)
    return [png for _, png in shots]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default=f"sqlite:///{REPO / 'mlruns.db'}", help="tracking store (default: the Makefile's mlruns.db)")
    ap.add_argument("--experiment", default="scenesearch", help="experiment name (default: scenesearch)")
    ap.add_argument("--metric", default="test_mAP", help="metric of the sorted runs table (default: test_mAP)")
    ap.add_argument("--out", default=str(REPO / "runs" / "ui_shots"), help="folder for the PNGs (default: runs/ui_shots)")
    ap.add_argument("--demo", action="store_true", help="build a small demo store under OUT/demo and screenshot it")
    args = ap.parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    out = Path(args.out).resolve()
    try:
        find_chromium()  # before building anything
        store, experiment = build_demo_store(out / "demo") if args.demo else (args.store, args.experiment)
        take(store, experiment, args.metric, out)
    except CheckError as e:
        print(f"ui_screenshot: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

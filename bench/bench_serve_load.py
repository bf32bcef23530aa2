"""Bounded load test of `mlflow models serve` on loopback: latency percentiles, throughput, errors.

Run: .venv/bin/python bench/bench_serve_load.py [--requests 400] [--clients 8] [--batch 8] [--batch-requests 80]

Setup (its seconds are printed, it is not a figure): the smoke preset's dataset, ingest, render,
preprocess and features (32x32), `vgg_baseline` fitted with `scenesearch.train.run` (nothing is
learned: the cheapest servable method), logged with `scenesearch.serving.log_model` into a
temporary SQLite MLflow store, then `mlflow models serve -m <model> --env-manager local
-h 127.0.0.1 -p <free port> --workers 1`: ONE uvicorn worker, so the figures are those of one
process (requests beyond the first queue in it).

Figures: --clients threads (http.client, one keep-alive connection each) share --requests POSTs of
one query image each (a query photo of the dataset, decoded once, `{"inputs": ..., "params":
{"top_k": 5}}`), after 5 warm-up requests; per-request latency p50 / p99 / max, throughput
(requests / wall seconds of the whole run) and the number of errors (any non-200 or a body without
predictions: must be 0). Then the same with a batch of --batch images per request (--batch 0: skip).
Output is printed and appended to bench/results/serve_load.txt with the command line and date.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _var, _sub in (("TORCH_HOME", "torch"), ("XDG_CACHE_HOME", ""), ("MESA_SHADER_CACHE_DIR", "mesa")):
    os.environ.setdefault(_var, str(ROOT / ".cache" / _sub) if _sub else str(ROOT / ".cache"))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

TOP_K = 5
RESULTS = ROOT / "bench" / "results" / "serve_load.txt"


def build_model(work: Path) -> dict:
    """Smoke data -> features -> vgg_baseline -> logged MLflow model; returns its URI, the store and query files."""
    from scenesearch import config, features, methods, preprocess, serving, tracking, train
    from scenesearch.data import ingest
    from scenesearch.data.generate import generate
    from scenesearch.render import step as render

    uri = f"sqlite:///{work / 'mlruns.db'}"
    cfg = config.load("smoke", [f"tracking.tracking_uri={uri}"])
    dataset = work / "data"
    generate(dataset, cfg.data, cfg.seed)
    dirs = {name: work / name for name in ("manifest", "views", "images", "features", "model")}
    ingest.run(str(dataset), str(dirs["manifest"]), cfg.data, cfg.seed)
    render.run(str(dirs["manifest"]), str(dirs["views"]), cfg.render)
    preprocess.run(str(dirs["manifest"]), str(dirs["views"]), str(dirs["images"]), cfg.preprocess)
    features.run(str(dirs["images"]), str(dirs["features"]), cfg.features, cfg.seed)
    inputs = methods.Inputs(images=str(dirs["images"]), features=str(dirs["features"]))
    train.run(cfg, "vgg_baseline", inputs, str(dirs["model"]), progress=False)
    client = tracking.client(uri)
    run = client.create_run(tracking.ensure_experiment(client, "bench-serve", uri), run_name="bench_serve_load")
    logged = serving.log_model(dirs["model"], run.info.run_id, uri, serving.first_query_image(str(dirs["images"])), cfg.registry.top_k)
    client.set_terminated(run.info.run_id)
    return {"uri": uri, "model_uri": logged.model_uri, "queries": sorted((dataset / "queries").glob("*/*.png"))}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_uri: str, tracking_uri: str, log_path: Path, timeout: float = 240.0) -> tuple[subprocess.Popen, int]:
    """`mlflow models serve` with one worker on a free loopback port, in its own process group; waits for /ping."""
    port = free_port()
    bindir = Path(sys.executable).parent
    # the scoring server runs `uvicorn` from PATH: the venv's; the store is found via the env
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "MLFLOW_TRACKING_URI": tracking_uri}
    cmd = [str(bindir / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "--workers", "1"]
    log = log_path.open("w")
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    deadline = time.time() + timeout
    while True:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/ping")
            if c.getresponse().status == 200:
                return server, port
        except OSError:
            pass
        if server.poll() is not None or time.time() > deadline:
            stop_server(server)
            raise RuntimeError(f"mlflow models serve did not come up:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.5)


def stop_server(server: subprocess.Popen) -> None:
    """SIGTERM the server's process group (mlflow -> uvicorn -> worker), SIGKILL if it lingers."""
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=20)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=10)


def post(conn: http.client.HTTPConnection, body: bytes) -> tuple[int, bytes]:
    conn.request("POST", "/invocations", body=body, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    return r.status, r.read()


def load(port: int, body: bytes, expect_rows: int, requests: int, clients: int) -> dict:
    """`requests` POSTs of `body` shared by `clients` threads; latencies (s), wall seconds, errors."""
    lock, latencies, errors = threading.Lock(), [], []
    remaining = [requests]

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                if remaining[0] == 0:
                    break
                remaining[0] -= 1
            t0 = time.perf_counter()
            try:
                status, data = post(conn, body)
                ok = status == 200 and len(json.loads(data)["predictions"]) == expect_rows
            except (OSError, ValueError, KeyError, http.client.HTTPException) as e:
                status, ok = repr(e), False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            dt = time.perf_counter() - t0
            with lock:
                latencies.append(dt)
                if not ok:
                    errors.append(status)
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"latencies": latencies, "wall": time.perf_counter() - t0, "errors": errors}


def row(name: str, r: dict, images_per_request: int) -> str:
    lat = sorted(r["latencies"])
    p99 = lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))]
    rps = len(lat) / r["wall"]
    return (
        f"  {name:26s} {len(lat):8d} {1e3 * statistics.median(lat):8.1f} {1e3 * p99:8.1f} {1e3 * lat[-1]:8.1f} "
        f"{rps:8.1f} {rps * images_per_request:8.1f} {len(r['errors']):6d}"
    )


def main(argv: list[str] | None = None) -> None:
    import numpy as np
    import torch

    import _machine
    from scenesearch.io import decode_image

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8, help="images per request of the batch run (0: skip it)")
    parser.add_argument("--batch-requests", type=int, default=80)
    args = parser.parse_args(argv)

    lines = [f"$ .venv/bin/python bench/bench_serve_load.py {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip()
             + f"   # {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%MZ}"]

    def say(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    say(_machine.header(torch))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        built = build_model(work)
        t1 = time.perf_counter()
        server, port = start_server(built["model_uri"], built["uri"], work / "serve.log")
        t2 = time.perf_counter()
        try:
            image = decode_image("q", built["queries"][0].read_bytes())
            say(f"setup: smoke data + vgg_baseline + log_model {t1 - t0:.1f} s; `mlflow models serve --env-manager local --workers 1` up in {t2 - t1:.1f} s on 127.0.0.1:{port}")
            say(f"query: {image.shape[1]}x{image.shape[0]} photo, top_k {TOP_K}; {args.clients} client threads (http.client keep-alive), 1 server worker")
            one = json.dumps({"inputs": image[None].tolist(), "params": {"top_k": TOP_K}}).encode()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            for _ in range(5):  # warm-up: first predict imports torchvision, builds the net
                assert post(conn, one)[0] == 200
            conn.close()
            say(f"\n  {'run':26s} {'requests':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'max ms':>8s} {'req/s':>8s} {'img/s':>8s} {'errors':>6s}")
            r = load(port, one, TOP_K, args.requests, args.clients)
            say(row("1 image / request", r, 1))
            failed = list(r["errors"])
            if args.batch:
                batch = json.dumps({"inputs": np.repeat(image[None], args.batch, 0).tolist(), "params": {"top_k": TOP_K}}).encode()
                rb = load(port, batch, TOP_K * args.batch, args.batch_requests, args.clients)
                say(row(f"{args.batch} images / request", rb, args.batch))
                failed += rb["errors"]
            say(f"  errors: {len(failed)}{' ' + repr(failed[:5]) if failed else ''}; 1-min load at the end {_machine.load_average()}")
        finally:
            stop_server(server)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:
        f.write("\n".join(lines) + "\n\n")
    if failed:
        raise SystemExit(f"{len(failed)} requests failed")


if __name__ == "__main__":
    main()

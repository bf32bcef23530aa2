"""Query latency of a logged CVAE model: load time (cold and warm), predict for one image and a batch, `scenesearch query` end to end.

Run: .venv/bin/python bench/bench_query.py [--epochs 2] [--calls 50] [--batch 32] [--batch-calls 20]
                                           [--cold-runs 3] [--cli-runs 3]

Setup (its seconds are printed, it is not a figure): the smoke preset's dataset
(`scenesearch.data.generate.generate`), ingest, render and preprocess (32x32, the preset's
size), cvae1 trained for --epochs epochs with `scenesearch.train.run`, logged with
`scenesearch.serving.log_model` into a temporary SQLite MLflow store (artifacts beside it)
and registered as a version of `scenesearch-smoke` with the alias champion
(`scenesearch.registry.register`), the model `scenesearch query --preset smoke` asks for.
The gallery is the smoke preset's 16 scenes x 13 views; the query is a query photo of the
dataset (a PNG file), decoded to uint8 once.

Figures:
- cold: a fresh Python process (`python -c pass` timed on its own) imports
  `scenesearch.serving` (MLflow), then torch, then calls
  `serving.load("models:/scenesearch-smoke@champion", uri)`, imports `scenesearch.preprocess`
  (torchvision, which the first predict would import), predicts once, loads again (warm) and
  predicts again, prints the time and exits (interpreter shutdown: from that last line to the
  process being gone, seen by the parent); median over --cold-runs processes. The model's files sit in the OS page
  cache (just written), so "cold" means a cold process, not a cold disk.
- predict, in this process after a load and 3 warm-up calls: `model.predict(image[None],
  params={"top_k": 5})`, median and p90 over --calls calls; then its parts, each timed the same
  way by calling what `SceneRetrievalModel.predict` calls: MLflow's pyfunc wrapper (input schema
  check), `preprocess_images`, the network, `cvae_scene_distances`, top-k + DataFrame.
- predict on a batch of --batch images (the dataset's query photos, repeated): median over
  --batch-calls calls, and per image.
- CLI: wall time of `scenesearch query --preset smoke --tracking-uri URI --top-k 5 IMAGE` as a
  subprocess (Python start, imports, load, decode, predict, print), median over --cli-runs,
  with the load time the command logs itself, set beside the same steps from the cold processes
  to say which part dominates.
Prints figures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _var, _sub in (("TORCH_HOME", "torch"), ("XDG_CACHE_HOME", ""), ("MESA_SHADER_CACHE_DIR", "mesa")):
    os.environ.setdefault(_var, str(ROOT / ".cache" / _sub) if _sub else str(ROOT / ".cache"))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

MODEL_NAME = "scenesearch-smoke"  # registry.name of the smoke preset
MODEL_URI = f"models:/{MODEL_NAME}@champion"
TOP_K = 5


def ms(seconds: float) -> str:
    return f"{1e3 * seconds:.1f} ms"


def quantiles(times: list[float]) -> tuple[float, float]:
    """(median, p90) of a list of seconds."""
    ordered = sorted(times)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]


def timed(fn, calls: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


# ------------------------------------------------------------------------------------------
# setup: a trained, logged, registered model
# ------------------------------------------------------------------------------------------


def build_model(work: Path, epochs: int) -> dict:
    """Generate, ingest, render, preprocess, train cvae1, log and register it; returns paths and seconds."""
    from scenesearch import config, preprocess, registry, tracking
    from scenesearch.data import ingest
    from scenesearch.data.generate import generate
    from scenesearch import methods, serving, train
    from scenesearch.render import step as render

    uri = f"sqlite:///{work / 'mlruns.db'}"
    cfg = config.load("smoke", [f"train.epochs={epochs}", f"tracking.tracking_uri={uri}"])
    seconds = {}
    t0 = time.perf_counter()
    dataset = work / "data"
    generate(dataset, cfg.data, cfg.seed)
    dirs = {name: work / name for name in ("manifest", "views", "images", "model")}
    ingest.run(str(dataset), str(dirs["manifest"]), cfg.data, cfg.seed)
    render.run(str(dirs["manifest"]), str(dirs["views"]), cfg.render)
    preprocess.run(str(dirs["manifest"]), str(dirs["views"]), str(dirs["images"]), cfg.preprocess)
    seconds["data"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    result = train.run(cfg, "cvae1", methods.Inputs(images=str(dirs["images"])), str(dirs["model"]), progress=False)
    seconds["train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    client = tracking.client(uri)
    run = client.create_run(tracking.ensure_experiment(client, "bench-query", uri), run_name="bench_query")
    tags = registry.version_tags(train.read_record(dirs["model"]), {}, "bench")
    logged = serving.log_model(dirs["model"], run.info.run_id, uri, serving.first_query_image(str(dirs["images"])), cfg.registry.top_k, tags)
    client.set_terminated(run.info.run_id)
    reg = registry.register(client, cfg.registry.name, logged.model_uri, "val_metric", result.metrics["best_val_metric"], "bench", tags)
    seconds["log"] = time.perf_counter() - t0
    queries = sorted((dataset / "queries").glob("*/*.png"))
    return {"uri": uri, "queries": queries, "seconds": seconds, "epochs": result.metrics["epochs_run"], "version": reg.version, "alias": reg.alias}


# ------------------------------------------------------------------------------------------
# cold process
# ------------------------------------------------------------------------------------------


def cold_child(uri: str, image_path: str) -> None:
    """In a fresh process: the import, load and predict times, as one JSON line."""
    t0 = time.perf_counter()
    from scenesearch import serving

    t1 = time.perf_counter()
    import torch  # noqa: F401

    t2 = time.perf_counter()
    model = serving.load(MODEL_URI, uri)
    t3 = time.perf_counter()
    import scenesearch.preprocess  # noqa: F401 - torchvision: the first predict imports it

    t4 = time.perf_counter()
    from scenesearch.io import decode_image

    image = decode_image(image_path, Path(image_path).read_bytes())[None]
    t5 = time.perf_counter()
    model.predict(image, params={"top_k": TOP_K})
    t6 = time.perf_counter()
    serving.load(MODEL_URI, uri)
    t7 = time.perf_counter()
    model.predict(image, params={"top_k": TOP_K})
    t8 = time.perf_counter()
    figures = {"import_serving": t1 - t0, "import_torch": t2 - t1, "load": t3 - t2, "import_preprocess": t4 - t3}
    print(json.dumps({**figures, "predict_first": t6 - t5, "load_warm": t7 - t6, "predict_second": t8 - t7, "end_wall": time.time()}), flush=True)


def wall(cmd: list[str], env: dict) -> tuple[float, subprocess.CompletedProcess]:
    """Wall seconds of a subprocess; the completed process carries `ended` (time.time() when it was gone)."""
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - t0
    p.ended = time.time()
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ''}")
    return elapsed, p


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2, help="cvae1 training epochs (default 2)")
    parser.add_argument("--calls", type=int, default=50, help="timed one-image predict calls (default 50)")
    parser.add_argument("--batch", type=int, default=32, help="images in the batch figure (default 32)")
    parser.add_argument("--batch-calls", type=int, default=20, help="timed batch predict calls (default 20)")
    parser.add_argument("--cold-runs", type=int, default=3, help="fresh processes for the cold load (default 3)")
    parser.add_argument("--cli-runs", type=int, default=3, help="runs of the query CLI (default 3)")
    parser.add_argument("--cold-child", nargs=2, help=argparse.SUPPRESS)  # internal: tracking URI, image path
    args = parser.parse_args(argv)
    if args.cold_child:
        cold_child(*args.cold_child)
        return

    import numpy as np
    import torch

    import _machine

    print(_machine.header(torch))
    with tempfile.TemporaryDirectory(prefix="bench_query_") as tmp:
        work = Path(tmp)
        setup = build_model(work, args.epochs)
        uri, image_path = setup["uri"], str(setup["queries"][0])
        s = setup["seconds"]
        print(
            f"setup: smoke dataset + ingest/render/preprocess {s['data']:.1f} s, cvae1 {setup['epochs']} epochs {s['train']:.1f} s, "
            f"log_model + register {s['log']:.1f} s; {MODEL_URI} is version {setup['version']} ({setup['alias']})"
        )
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri}

        # cold: fresh processes
        start_times = [wall([sys.executable, "-c", "pass"], env)[0] for _ in range(args.cold_runs)]
        cold = []
        for _ in range(args.cold_runs):
            p = wall([sys.executable, __file__, "--cold-child", uri, image_path], env)[1]
            figures = json.loads(p.stdout.strip().splitlines()[-1])
            cold.append({**figures, "exit": p.ended - figures.pop("end_wall")})  # interpreter shutdown
        med = {k: statistics.median(c[k] for c in cold) for k in cold[0]}
        print(f"\ncold process (median of {args.cold_runs} fresh processes; model files in the OS page cache):")
        print(f"  python start (python -c pass)             {ms(statistics.median(start_times))}")
        print(f"  import scenesearch.serving (MLflow)        {ms(med['import_serving'])}")
        print(f"  import torch                               {ms(med['import_torch'])}")
        print(f"  serving.load({MODEL_URI}), cold {ms(med['load'])}")
        print(f"  import scenesearch.preprocess (torchvision) {ms(med['import_preprocess'])}")
        print(f"  first predict, one image                   {ms(med['predict_first'])}")
        print(f"  serving.load again in that process (warm)  {ms(med['load_warm'])}")
        print(f"  second predict, one image                  {ms(med['predict_second'])}")
        print(f"  interpreter exit (last line printed -> process gone) {ms(med['exit'])}")

        # warm: this process
        from scenesearch.io import decode_image
        from scenesearch import serving
        from scenesearch.methods.cvae_m2 import cvae_scene_distances, split_encodings
        from scenesearch.preprocess import preprocess_images

        model = serving.load(MODEL_URI, uri)
        py = model.unwrap_python_model()
        image = decode_image(image_path, Path(image_path).read_bytes())[None]  # (1, H, W, 3) uint8
        params = {"top_k": TOP_K}
        n_scenes, n_views = py.gallery.shape[:2]
        net, size = py.retriever.network, py.retriever.image_size
        print(f"\npredict, warm model in this process: query {image.shape[2]}x{image.shape[1]} PNG (decoded once), top_k {TOP_K}, gallery {n_scenes} scenes x {n_views} views, network {net.architecture} at {size}x{size}")
        one = timed(lambda: model.predict(image, params=params), args.calls)
        med1, p90 = quantiles(one)
        print(f"  one image, pyfunc predict: median {ms(med1)}, p90 {ms(p90)} ({args.calls} calls)")

        latent, alpha = py.retriever.latent, py.retriever.alpha
        x = preprocess_images(list(image), size, flips=False)
        with torch.inference_mode():
            q = split_encodings(net(x).float(), latent)
            g = split_encodings(py.gallery, latent)
            d = cvae_scene_distances(*q, *g, alpha=alpha)

        def network():
            with torch.inference_mode():
                net(x)

        def distances():
            with torch.inference_mode():
                cvae_scene_distances(*q, *g, alpha=alpha)

        def topk_frame():
            dist, idx = torch.topk(d, TOP_K, dim=1, largest=False, sorted=True)
            import pandas as pd

            rows = [{"query": 0, "rank": r + 1, "scene_id": py.scene_ids[j], "label": py.labels[j], "distance": float(dist[0, r])} for r, j in enumerate(idx[0].tolist())]
            pd.DataFrame(rows, columns=["query", "rank", "scene_id", "label", "distance"])

        parts = {
            "SceneRetrievalModel.predict (no MLflow wrapper)": lambda: py.predict(None, image, params),
            "  preprocess_images": lambda: preprocess_images(list(image), size, flips=False),
            "  network forward": network,
            "  cvae_scene_distances": distances,
            "  top-k + DataFrame": topk_frame,
        }
        part_med = {}
        for name, fn in parts.items():
            part_med[name] = quantiles(timed(fn, args.calls))[0]
            print(f"  {name:48s} median {ms(part_med[name])}")
        wrapper = med1 - part_med["SceneRetrievalModel.predict (no MLflow wrapper)"]
        print(f"  MLflow pyfunc wrapper (schema check, params), by difference: {ms(wrapper)}")
        inner = {k.strip(): v for k, v in part_med.items() if k.startswith("  ")}
        top = max(inner, key=inner.get)
        print(f"  largest part of a one-image predict: {top} ({100 * inner[top] / med1:.0f}% of the pyfunc median)")

        photos = [decode_image(str(p), p.read_bytes()) for p in setup["queries"]]
        shapes = {ph.shape for ph in photos}
        if len(shapes) == 1:
            batch = np.stack([photos[i % len(photos)] for i in range(args.batch)])
            times = timed(lambda: model.predict(batch, params=params), args.batch_calls)
            medb, p90b = quantiles(times)
            print(f"  batch of {args.batch} ({len(photos)} distinct photos, repeated): median {ms(medb)}, p90 {ms(p90b)} ({args.batch_calls} calls); {ms(medb / args.batch)} per image, {args.batch * med1 / medb:.1f}x the one-image rate")
        else:
            print(f"  batch: not measured: the query photos have different sizes {sorted(shapes)}")

        # the CLI, end to end
        exe = Path(sys.executable).parent / "scenesearch"
        cli = [str(exe)] if exe.exists() else [sys.executable, "-m", "scenesearch.cli"]
        cmd = [*cli, "query", "--preset", "smoke", "--tracking-uri", uri, "--top-k", str(TOP_K), image_path]
        runs = []
        for _ in range(args.cli_runs):
            seconds, p = wall(cmd, env)
            logged = re.search(r"loaded in ([0-9.]+) s", p.stderr)
            runs.append((seconds, float(logged.group(1)) if logged else float("nan")))
        cli_total = statistics.median(r[0] for r in runs)
        py_start = statistics.median(start_times)
        print(f"\n`scenesearch query --preset smoke --top-k {TOP_K} IMAGE` (subprocess, median of {args.cli_runs}): {cli_total:.2f} s wall")
        print(
            "  runs: " + ", ".join(f"{t:.2f} s" for t, _ in runs)
            + "; the load each logged (torch import included): " + ", ".join(f"{l:.2f} s" for _, l in runs)
        )
        shares = {
            "python start": py_start,
            "imports (MLflow, torch, torchvision)": med["import_serving"] + med["import_torch"] + med["import_preprocess"],
            "model load": med["load"],
            "first predict": med["predict_first"],
            "interpreter exit": med["exit"],
        }
        print(
            "  the same steps in the cold processes above: " + " + ".join(f"{k} {v:.2f} s" for k, v in shares.items())
            + f" = {sum(shares.values()):.2f} s; the CLI's other {cli_total - sum(shares.values()):.2f} s: argument parsing, config, decode, printing, and noise"
        )
        top = max(shares, key=shares.get)
        print(
            f"  dominant part: {top}, {shares[top]:.2f} s = {100 * shares[top] / cli_total:.0f}% of the CLI's wall time; "
            f"a warm one-image predict is {ms(med1)} ({100 * med1 / cli_total:.2f}%)"
        )
        print(f"  1-min load at the end: {_machine.load_average()}")


if __name__ == "__main__":
    main()

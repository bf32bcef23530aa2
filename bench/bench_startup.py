"""Start-up costs: what a user and every KFP task pay before any work, beside `python -c pass`.

Run: .venv/bin/python bench/bench_startup.py [--runs 5] [--model URI] [--tracking-uri URI] [--image PNG]
                                             [--install-kfp]

Figures (median over --runs fresh processes; `python -c pass` is timed in the same run and every
figure is also given as a multiple of it):
- `scenesearch --help`, and `import scenesearch.cli`;
- config: load and validate every preset (`config.load` + `methods.check`, what every subcommand
  and every task does first), with the heavy modules that left in `sys.modules`;
- task fixed cost: one task run by kfp.local's SubprocessRunner (as `scenesearch run` does),
  declared like the project's components (`components.image.component`); the time from the
  call to the first line of the component's body (`empty`), and to the point where the body has
  parsed its config and opened its MLflow step run on a SQLite store (`preamble`, what every
  logging task does before its own work). With --install-kfp the probe is declared with kfp's
  default instead (a `pip install kfp` step in its command, under kfp.local's install lock), as
  the components were before they named `install_kfp_package=False`;
- `scenesearch query` cold (a fresh process: imports, registry lookup, model load, decode,
  predict, print) on --model (default: the champion of `make run`'s store, ./mlruns.db, model
  `scenesearch`), with the load time the command logs itself.

To compare with another tree, run this file with PYTHONPATH naming that tree's root (its
`scenesearch`, `components` and `pipelines` are then imported, in this process and the tasks).
Prints figures only; asserts nothing.
"""


import argparse
import functools
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
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # after PYTHONPATH: another tree named there wins

HEAVY = ("torch", "torchvision", "sklearn", "mlflow", "kfp", "moderngl", "trimesh")
PRESETS = ("default", "smoke", "nano", "full", "zeroshot", "mixing", "selfsup")


def wall(cmd: list[str], runs: int) -> tuple[float, list[subprocess.CompletedProcess]]:
    """Median wall seconds of `cmd` as a fresh process over `runs` runs (each must exit 0).

    Run from a neutral folder: `python -c` and `-m` put the working folder first on sys.path,
    which would shadow a tree named in PYTHONPATH."""
    times, done = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=tempfile.gettempdir())
        times.append(time.perf_counter() - t0)
        if p.returncode != 0:
            raise SystemExit(f"{' '.join(cmd[:4])} ... failed:\n{p.stderr[-2000:]}")
        done.append(p)
    return statistics.median(times), done


def row(name: str, seconds: float, base: float, note: str = "") -> None:
    print(f"  {name:<44} {seconds:7.2f} s  {seconds / base:6.1f}x python -c pass  {note}")


CONFIG_CODE = f"""
import sys
from scenesearch import config, methods
for p in {PRESETS!r}:
    try:
        cfg = config.load(p)
    except Exception:
        continue  # a preset this tree does not have
    methods.check(cfg)
print(','.join(m for m in {HEAVY!r} if m in sys.modules))
"""


def task_costs(runs: int, install_kfp: bool) -> dict[str, list[float]]:
    """Seconds from calling a one-task pipeline to its body's first line / to its body's own work."""
    import kfp.local
    from kfp import dsl

    from scenesearch import config, tracking

    if install_kfp:
        from components.image import BASE_IMAGE

        component = functools.partial(dsl.component, base_image=BASE_IMAGE)
    else:
        from components.image import component

    @component
    def probe(config_json: str, parent_run_id: str, preamble: bool) -> str:
        import json
        import time

        first = time.time()
        ready = first
        if preamble:
            from scenesearch import config, tracking
            from scenesearch.cli import task_edge

            with task_edge("probe"):
                cfg = config.from_json(config_json)
                with tracking.step_run(cfg, parent_run_id, "probe"):
                    ready = time.time()
        return json.dumps({"first": first, "ready": ready})

    work = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    uri = f"sqlite:///{work / 'mlruns.db'}"
    cfg = config.load("smoke", [f"tracking.tracking_uri={uri}"])
    parent = tracking.start_parent(cfg, "bench-startup", "bench")
    kfp.local.init(runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=str(work / "kfp"))
    import logging
    import warnings

    logging.getLogger().setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    out: dict[str, list[float]] = {"empty": [], "preamble": []}
    for _ in range(runs):
        for kind in ("empty", "preamble"):
            t0 = time.time()
            task = probe(config_json=cfg.to_json(), parent_run_id=parent, preamble=kind == "preamble")
            stamps = json.loads(task.output)
            out[kind].append(stamps["first" if kind == "empty" else "ready"] - t0)
    tracking.finish_parent(cfg, parent)
    return out


def query_cold(args, base: float) -> None:
    uri = args.tracking_uri or f"sqlite:///{ROOT / 'mlruns.db'}"
    model = args.model or "models:/scenesearch@champion"
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        print(f"  scenesearch query cold: no store at {uri} (run `make run` first, or name --tracking-uri and --model)")
        return
    image = args.image or str(next((ROOT / "data" / "embedded" / "queries").rglob("*.png"), ""))
    if not image:
        print("  scenesearch query cold: no query image (name one with --image)")
        return
    cmd = [sys.executable, "-m", "scenesearch.cli", "query", "--tracking-uri", uri, "--model", model, "--top-k", "5", image]
    seconds, done = wall(cmd, args.runs)
    loads = [float(m.group(1)) for p in done for m in [re.search(r"loaded in ([0-9.]+) s", p.stderr)] if m]
    note = f"(model load as logged: {statistics.median(loads):.2f} s)" if loads else ""
    ranked = next((line for line in done[0].stdout.splitlines() if "ranked by" in line), "")
    row(f"scenesearch query cold {ranked[ranked.find('(ranked'):]}", seconds, base, note)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--model", help="MLflow model URI for the query figure (default: models:/scenesearch@champion)")
    ap.add_argument("--tracking-uri", help="its store (default: sqlite:///<repo>/mlruns.db, where make run logs)")
    ap.add_argument("--image", help="a query image (default: the first of data/embedded/queries)")
    ap.add_argument("--install-kfp", action="store_true", help="declare the task probe with kfp's default pip install step")
    args = ap.parse_args()

    import platform

    import scenesearch
    from _machine import load_average  # bench/ is this script's folder

    print(f"bench_startup: scenesearch from {Path(scenesearch.__file__).parent}; {os.cpu_count()} CPUs, "
          f"1-min load {load_average()}, python {platform.python_version()}")
    py = sys.executable
    base, _ = wall([py, "-c", "pass"], args.runs)
    print(f"  {'python -c pass':<44} {base:7.2f} s")
    row("scenesearch --help", wall([py, "-m", "scenesearch.cli", "--help"], args.runs)[0], base)
    row("import scenesearch.cli", wall([py, "-c", "import scenesearch.cli"], args.runs)[0], base)
    seconds, done = wall([py, "-c", CONFIG_CODE], args.runs)
    row("config: load + validate every preset", seconds, base, f"heavy modules imported: {done[0].stdout.strip() or 'none'}")
    costs = task_costs(args.runs, args.install_kfp)
    how = "kfp's default declaration (pip install kfp)" if args.install_kfp else "components.image.component"
    row("task: call -> body's first line", statistics.median(costs["empty"]), base, f"({how})")
    row("task: call -> config + MLflow step run open", statistics.median(costs["preamble"]), base, f"({how})")
    query_cold(args, base)


if __name__ == "__main__":
    main()

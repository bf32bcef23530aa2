"""The `scenesearch` command: one subcommand per DAG step, `run` for the whole DAG, `generate`.

Every subcommand is a thin caller of a library step. Failures print one sentence on stderr
and exit 1; bad usage exits 2 (argparse).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Iterator

from scenesearch.errors import ScenesearchError


@contextlib.contextmanager
def task_edge(step: str) -> Iterator[None]:
    """The edge of a KFP task (and of this CLI): a user-facing failure prints its one sentence on
    stderr and exits 1 without a traceback. The library below raises; only the edges print or exit."""
    try:
        yield
    except ScenesearchError as e:
        print(f"scenesearch {step}: {e}", file=sys.stderr)
        raise SystemExit(1) from None


def _config(args):
    """The run config of a command, every method section validated at the start."""
    from scenesearch import config, methods

    cfg = config.load(args.config or args.preset, args.set)
    methods.check(cfg)
    return cfg


def cmd_generate(args) -> dict:
    from scenesearch.data.generate import generate

    cfg = _config(args)
    r = generate(args.out, cfg.data, cfg.seed)
    return {"root": r.root, "n_scenes": r.n_scenes, "n_queries": r.n_queries}


def cmd_ingest(args) -> dict:
    from scenesearch.data import ingest

    cfg = _config(args)
    r = ingest.run(args.data, args.out, cfg.data, cfg.seed)
    return {**r.metrics(), "fingerprint": r.fingerprint}


def cmd_render(args) -> dict:
    from scenesearch.render import step

    return step.run(args.manifest, args.out, _config(args).render).metrics()


def cmd_preprocess(args) -> dict:
    from scenesearch import preprocess

    return preprocess.run(args.manifest, args.views, args.out, _config(args).preprocess).metrics()


def cmd_features(args) -> dict:
    from scenesearch import features

    cfg = _config(args)
    r = features.run(args.images, args.out, cfg.features, cfg.seed, cfg.train.augment, cfg.render.background)
    return {**r.metrics(), "weights": r.weights, "device": r.device}


def cmd_similarity(args) -> dict:
    from scenesearch import similarity

    cfg = _config(args)
    return similarity.run(args.features, args.out, cfg.similarity, cfg.seed).metrics()


def cmd_retrieve(args) -> dict:
    from scenesearch import retrieval

    cfg = _config(args)
    r = retrieval.run(args.models, args.out, cfg.plugins)
    return {**r.metrics(), "methods": list(r.keys)}


def cmd_evaluate(args) -> dict:
    from scenesearch.evaluation import step

    cfg = _config(args)
    r = step.run(args.rankings, args.manifest, args.views, args.images, args.out, cfg.evaluate)
    print(step.format_report(r.metrics, cfg.evaluate.splits, cfg.evaluate.k))
    return {"metrics": r.metrics, "n_rejected": r.n_rejected}


def cmd_train(args) -> dict:
    from scenesearch import methods, train

    cfg = _config(args)
    chosen = [e for e in methods.entries(cfg) if (not args.method or e.method in args.method) and (not args.variant or e.variant in args.variant)]
    if not chosen:
        raise ScenesearchError(f"no configured method matches --method {args.method or '*'} --variant {args.variant or '*'}; configured: {', '.join(e.key for e in methods.entries(cfg))}")
    inputs = methods.Inputs(images=args.images, features=args.features or "", clusters=args.clusters or "", semantics=args.manifest or "")
    return {e.key: train.run(cfg, e.key, inputs, str(Path(args.out) / e.key)).metrics for e in chosen}


def cmd_register(args) -> dict:
    """Register model folders trained by `scenesearch train`: each is logged as an MLflow model first."""
    from scenesearch import methods, registry, serving, storage, tracking, train
    from scenesearch.data.ingest import fingerprint

    cfg = _config(args)
    uri = tracking.resolve_uri(args.tracking_uri or cfg.tracking.tracking_uri)
    fp = fingerprint(storage.read_table(Path(args.manifest) / "manifest.parquet"))
    c = tracking.client(uri)
    exp = tracking.ensure_experiment(c, cfg.tracking.experiment, uri)
    commit = tracking.git_commit()
    for d in args.models:
        record = train.read_record(d)
        methods.load_plugins(tuple(record.get("plugins", ())))
        if not storage.exists(Path(d) / "mlflow.json"):  # trained by `scenesearch train`: log it first
            run = c.create_run(exp, run_name=f"register {record['key']}", tags={"step": "register", "git_commit": commit})
            serving.log_folder(d, run.info.run_id, uri, args.images, cfg.registry.top_k, registry.version_tags(record, {}, commit), methods.get(record["method"]).serves)
            c.set_terminated(run.info.run_id)
    done = registry.run(args.models, args.report, fp, uri, args.name or cfg.registry.name, cfg.registry_metric(), commit)
    return {r.key: {"version": r.version, "alias": r.alias, "reason": r.reason} for r in done}


def cmd_methods(args) -> dict:
    from scenesearch import methods

    cfg = _config(args)
    configured = {e.key: {"method": e.method, "variant": e.variant, "trains": e.trains, "gpu": e.gpu} for e in methods.entries(cfg)}
    return {"registered": methods.describe(), "configured": configured}


def cmd_promote(args) -> dict:
    from scenesearch import registry, tracking

    cfg = _config(args)
    name = args.name or cfg.registry.name
    decision = registry.promote(tracking.resolve_uri(args.tracking_uri or cfg.tracking.tracking_uri), name, args.version, args.force, cfg.registry_metric())
    return {"model": name, "version": args.version, "alias": registry.CHAMPION, "reason": decision.reason}


def cmd_query(args) -> None:
    from scenesearch import serving, tracking

    cfg = _config(args)
    uri = tracking.resolve_uri(args.tracking_uri or cfg.tracking.tracking_uri)
    model_uri = args.model or f"models:/{cfg.registry.name}@champion"
    answers = serving.query_files(model_uri, uri, args.images, args.top_k)
    if args.json:
        print(json.dumps([a.to_dict() for a in answers], indent=2))
    else:
        for a in answers:
            print(a.format())
    failed = [a for a in answers if a.error]
    if failed:
        raise ScenesearchError(f"{len(failed)} of {len(answers)} query images could not be read (see above)")


def cmd_run(args) -> dict:
    from pipelines.local import run_local
    from scenesearch import storage, tracking
    from scenesearch.evaluation.step import format_report, method_reports

    cfg = _config(args)
    data_root = args.data or cfg.data.root
    t0 = time.perf_counter()
    from scenesearch.data.generate import generate, is_current, was_generated

    tracking.check_store(tracking.resolve_uri(cfg.tracking.tracking_uri))  # before any work
    own = cfg.data.generate and args.data is None and not storage.is_remote(data_root)
    # Two runs started together must not both write the embedded benchmark: one does, the other waits.
    with storage.local_lock(Path(data_root).resolve().parent / f".{Path(data_root).name}.lock") if own else contextlib.nullcontext():
        if not storage.exists(data_root):
            if not own:
                raise ScenesearchError(f"dataset root {data_root} does not exist")
            print(f"generating the embedded benchmark at {data_root} ...", file=sys.stderr)
            generate(data_root, cfg.data, cfg.seed)
        elif own and was_generated(data_root) and not is_current(data_root, cfg.data, cfg.seed):
            # our own folder, from other settings or an older generator: the run must see what the config says
            print(f"regenerating the embedded benchmark at {data_root} (made from other settings) ...", file=sys.stderr)
            generate(data_root, cfg.data, cfg.seed)
    gen_seconds = time.perf_counter() - t0
    run = run_local(cfg, data_root, args.workdir)
    print("\n== scenesearch run finished ==")
    order = ["ingest", "render", "preprocess", "features", "similarity", "train", "retrieve", "evaluate", "register"]
    steps = sorted(run.step_seconds.items(), key=lambda kv: next((i for i, o in enumerate(order) if kv[0].startswith(o)), len(order)))
    print(f"step seconds: generate {gen_seconds:.1f}, " + ", ".join(f"{k} {v:.1f}" for k, v in steps) + f"; total {time.perf_counter() - t0:.1f}")
    print(format_report(run.metrics, cfg.evaluate.splits, cfg.evaluate.k))
    for report in method_reports(run.report_dir):
        print("\n" + report.rstrip())
    print(f"MLflow: {tracking.redact(run.tracking_uri)}  experiment '{cfg.tracking.experiment}' ({run.experiment_id}), run '{run.run_name}' ({run.run_id})")
    print(f"KFP pipeline root: {run.pipeline_root}  (report: {run.report_dir})")
    command = tracking.ui_command(run.tracking_uri)
    base = tracking.redact(run.tracking_uri) if command.startswith("open ") else "http://127.0.0.1:5000"
    print(f"Open the MLflow UI with: {command}")
    print(f"  then the runs of this experiment: {tracking.runs_page_url(base, run.experiment_id)}")
    return {"run_id": run.run_id, "metrics": run.metrics, "step_seconds": run.step_seconds}


def cmd_compile(args) -> dict:
    from pipelines.scenesearch_pipeline import compile_pipeline

    cfg = _config(args)
    return {"path": str(compile_pipeline(cfg, args.out or f"dist/scenesearch_{cfg.name}.yaml"))}


def cmd_submit(args) -> dict:
    from pipelines.submit import submit

    cfg = _config(args)

    def submitted(r) -> None:
        print(f"submitted run {r.run_id} ({r.run_name}) to experiment '{r.experiment}': {r.url or 'set KF_PIPELINES_UI_ENDPOINT for its UI link'}", flush=True)

    r = submit(
        cfg, args.host or None, data_root=args.data, experiment=args.experiment, run_name=args.run_name, namespace=args.namespace,
        existing_token=args.token or None, kube_context=args.kube_context, ssl_ca_cert=args.ca_cert, watch=args.watch,
        timeout_s=args.timeout, on_submitted=submitted,
    )
    if args.watch:
        print(f"run {r.run_id} finished: {r.state}")
    return r.to_dict()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scenesearch", description="Image-based 3D scene retrieval as one Kubeflow Pipelines DAG.")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, fn, help: str, optional: tuple[str, ...] = (), **paths: str):
        """A subcommand with the shared config options and one --flag per folder it reads or writes."""
        sp = sub.add_parser(name, help=help, description=help)
        sp.add_argument("--preset", default="default", help="configs/<preset>.yaml (default, smoke, nano, full, selfsup, zeroshot, mixing)")
        sp.add_argument("--config", help="a YAML config file instead of a preset")
        sp.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help="override one config field")
        for flag, text in paths.items():
            sp.add_argument(f"--{flag}", required=flag not in optional, help=text)
        sp.set_defaults(fn=fn)
        return sp

    add("generate", cmd_generate, "write the embedded synthetic benchmark in the dataset layout", out="dataset root to create")
    add("ingest", cmd_ingest, "validate and split a dataset; write manifest.parquet and rejected.parquet", data="dataset root", out="output folder")
    add("render", cmd_render, "render 13 views of every scene in a manifest", manifest="ingest output folder", out="output folder")
    add("preprocess", cmd_preprocess, "64x64 images in [0,1] with flips", manifest="ingest output folder", views="render output folder", out="output folder")
    add("features", cmd_features, "VGG16 multi-layer descriptors + PCA", images="preprocess output folder", out="output folder")
    add("similarity", cmd_similarity, "k-means similarity detection", features="features output folder", out="output folder")
    rt = add("retrieve", cmd_retrieve, "distance matrices per trained method (model folders of `scenesearch train`)", out="output folder")
    rt.add_argument("--models", nargs="+", required=True, metavar="DIR", help="model folders written by `scenesearch train`")
    add(
        "evaluate", cmd_evaluate, "SHREC metrics, tables and plots", rankings="retrieve output folder", manifest="ingest output folder",
        views="render output folder", images="preprocess output folder", out="output folder",
    )
    r = add("run", cmd_run, "run the whole DAG locally with kfp.local and log it to MLflow", optional=("data",), data="dataset root (default: the preset's data.root)")
    r.add_argument("--workdir", default="runs", help="where the local pipeline root lives")
    t = add(
        "train", cmd_train, "fit configured methods (no MLflow): one model folder per (method, variant) under --out",
        images="preprocess output folder", out="output folder", features="features output folder (methods that consume it)",
        clusters="similarity output folder (methods that consume it)", manifest="ingest output folder (class semantics)",
        optional=("features", "clusters", "manifest"),
    )
    t.add_argument("--method", action="append", help="method name (repeatable; default: every configured method)")
    t.add_argument("--variant", action="append", help="variant name (repeatable; default: every configured variant)")
    rg = add(
        "register", cmd_register, "log and register model folders of `scenesearch train` with their evaluate report",
        report="evaluate output folder", manifest="ingest output folder (the dataset fingerprint)", images="preprocess output folder (the input example)",
    )
    rg.add_argument("--models", nargs="+", required=True, metavar="DIR", help="model folders written by `scenesearch train`")
    rg.add_argument("--name", help="registered model name (default: registry.name)")
    rg.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlruns.db)")
    add("methods", cmd_methods, "list the registered retrieval methods and the configured ones")
    pr = add("promote", cmd_promote, "make a registered model version the champion (if it beats the current one)")
    pr.add_argument("--version", required=True, help="model version number")
    pr.add_argument("--name", help="registered model name (default: registry.name)")
    pr.add_argument("--force", action="store_true", help="promote even if it does not beat the champion")
    pr.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlruns.db)")
    q = add("query", cmd_query, "rank the scenes for query images with a registered model of any method (the champion by default)")
    q.add_argument("images", nargs="+", metavar="IMAGE", help="query image files (PNG/JPEG)")
    q.add_argument("--model", help="MLflow model URI (default: models:/<registry.name>@champion)")
    q.add_argument("--top-k", type=int, default=5, help="scenes per query (default 5)")
    q.add_argument("--json", action="store_true", help="print JSON instead of a table")
    q.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlruns.db)")
    add("compile", cmd_compile, "write the pipeline IR YAML", optional=("out",), out="output path (default dist/scenesearch_<preset>.yaml)")
    sb = add("submit", cmd_submit, "compile the pipeline and start a run of it on Kubeflow Pipelines", optional=("data",), data="dataset root the cluster reads (default: the preset's data.root; normally an s3:// URI)")
    sb.add_argument("--host", default=os.environ.get("KFP_HOST"), help="KFP API/UI address, e.g. http://localhost:8080 (default: $KFP_HOST; none: kubeconfig)")
    sb.add_argument("--token", default=os.environ.get("KFP_TOKEN"), help="bearer token for the KFP API (default: $KFP_TOKEN, which keeps it out of the process list)")
    sb.add_argument("--kube-context", help="kubeconfig context, used when no host is given (default: the current one)")
    sb.add_argument("--ca-cert", help="CA bundle to verify the host's TLS certificate")
    sb.add_argument("--namespace", help="KFP namespace (profile) of a multi-user deployment")
    sb.add_argument("--experiment", help="KFP experiment, created when missing (default: tracking.experiment)")
    sb.add_argument("--run-name", help="KFP run name, also the MLflow parent run's (default: <preset>-<time>)")
    sb.add_argument("--watch", action="store_true", help="wait for the run to finish and exit 1 unless it SUCCEEDED")
    sb.add_argument("--timeout", type=float, default=24 * 3600, help="seconds --watch waits (default 86400)")
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        result = args.fn(args)
    except ScenesearchError as e:
        print(f"scenesearch {args.command}: {e}", file=sys.stderr)
        return 1
    if result is not None and args.command != "run":
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Measure scenesearch on the external corpus: the whole DAG, as a user runs it, then one table.

Run:
    .venv/bin/python bench/external_corpus.py --out data/external      # once: build the corpus
    .venv/bin/python bench/external.py --data data/external [--preset default] [--set section.field=value ...]

It runs ``scenesearch run --preset P --data ROOT --workdir W --set tracking.tracking_uri=...
--set tracking.experiment=...`` as a subprocess (the command is printed first), with its own
MLflow store and KFP pipeline root under --workdir (default /tmp/scenesearch-external), so the
project's mlruns.db and runs/ are untouched. Every --set is passed through, e.g. for an
ablation ``--set train.augment.ops=[]``. Then it reads the evaluate step's metrics.json and prints,
per method, test mAP, test NN (P@1), val mAP, val NN and query counts, plus the chance level: the
expected mAP and NN of a uniformly random ranking, computed per query from the gallery that
retrieve scored (E[AP] = (R-1)/(N-1) + H_N (N-R) / (N (N-1)) for R relevant scenes out of N,
E[NN] = R/N), averaged like the metrics. The random method is one draw of that. With a zero-shot
split (data.split zero_shot: the metrics carry ``test_unseen_mAP``) it also prints the zero-shot
table: per method and query domain, the unseen protocol (unseen-class queries against the
unseen-class scenes) P@k, mAP@k, NN and mAP, then the generalised mAP and NN (the same queries
against the whole gallery), with the chance level of both settings from the same galleries.
Prints figures only.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# print order; methods not named here follow, sorted
METHOD_ORDER = ("cvae1", "zs_cvae", "zs_caae", "parallel_vae", "siamese", "triplet", "vgg_baseline", "random")
UNSEEN, GENERALISED = "unseen", "generalised"  # scenesearch.domains.UNSEEN, scenesearch.evaluation.step.GENERALISED


def expected_random(relevant: np.ndarray, n: int) -> tuple[float, float]:
    """Mean expected AP and NN of a uniformly random ranking of n scenes, per query with `relevant` relevant ones.

    Queries without a relevant scene are skipped, as the evaluation does.
    """
    r = relevant[relevant > 0].astype(np.float64)
    if len(r) == 0 or n < 2:
        return float("nan"), float("nan")
    h = float(np.sum(1.0 / np.arange(1, n + 1)))
    ap = (r - 1) / (n - 1) + h * (n - r) / (n * (n - 1))
    return float(ap.mean()), float((r / n).mean())


def chance(rankings: Path, splits: tuple[str, ...]) -> dict[str, tuple[float, float, int]]:
    """{split: (E[mAP], E[NN], n_queries)} from retrieve's queries.parquet and scenes.parquet."""
    import pyarrow.parquet as pq

    q = pq.read_table(rankings / "queries.parquet").to_pydict()
    s = pq.read_table(rankings / "scenes.parquet").to_pydict()
    labels, counts = np.unique(np.asarray(s["label"]), return_counts=True)
    per_class = dict(zip(labels.tolist(), counts.tolist()))
    out = {}
    for split in splits:
        rel = np.array([per_class.get(lab, 0) for lab, sp in zip(q["label"], q["split"]) if sp == split])
        out[split] = (*expected_random(rel, len(s["label"])), len(rel))
    return out


def zero_shot_chance(rankings: Path, split: str, domains: list[str]) -> dict[tuple[str, str], tuple[float, float, int]]:
    """{(setting, domain): (E[mAP], E[NN], n_queries)} for the unseen-class `split` queries: setting
    "unseen" against the scenes whose class_split is unseen, "generalised" against every scene;
    domain "" is every query domain together."""
    import pyarrow.parquet as pq

    q = pq.read_table(rankings / "queries.parquet").to_pydict()
    s = pq.read_table(rankings / "scenes.parquet").to_pydict()
    s_label, s_cls = np.asarray(s["label"]), np.asarray(s["class_split"])
    q_label, q_split, q_dom, q_cls = (np.asarray(q[c]) for c in ("label", "split", "domain", "class_split"))
    out = {}
    for setting, gallery in ((UNSEEN, s_cls == UNSEEN), (GENERALISED, np.ones(len(s_label), bool))):
        labels, counts = np.unique(s_label[gallery], return_counts=True)
        per_class = dict(zip(labels.tolist(), counts.tolist()))
        for d in ["", *domains]:
            mask = (q_split == split) & (q_cls == UNSEEN) & ((q_dom == d) if d else True)
            rel = np.array([per_class.get(lab, 0) for lab in q_label[mask].tolist()])
            out[(setting, d)] = (*expected_random(rel, int(gallery.sum())), int(mask.sum()))
    return out


def zero_shot_domains(metrics: dict[str, dict[str, float]], split: str) -> list[str]:
    """The query domains of the unseen group in a metrics.json (test_unseen_<domain>_mAP)."""
    pat = re.compile(rf"^{split}_{UNSEEN}_(.+)_mAP$")
    return sorted({m.group(1) for vals in metrics.values() for key in vals if (m := pat.match(key))})


def zero_shot_table(metrics: dict[str, dict[str, float]], odds: dict[tuple[str, str], tuple[float, float, int]], split: str, domains: list[str]) -> str:
    """Per method and query domain ("all" first when there are several): the unseen protocol's P@k,
    mAP@k, NN, mAP, the generalised mAP and NN and the query count; then the chance rows (E[NN],
    E[mAP] of the unseen protocol, E[mAP], E[NN] of the generalised setting)."""
    ks = sorted({int(m.group(1)) for vals in metrics.values() for key in vals if (m := re.match(rf"^{split}_{UNSEEN}_P_at_(\d+)$", key))})
    k = ks[0] if ks else 0
    names = [f"P_at_{k}", f"mAP_at_{k}", "NN", "mAP"]
    head = (f"{'method':<16}{'domain':<8}{f'P@{k}':>10}{f'mAP@{k}':>10}{'NN':>10}{'mAP':>10}{'gen. mAP':>10}{'gen. NN':>10}{'q':>6}")
    rows = [f"[zero-shot: unseen-class {split} queries against the unseen-class scenes; gen.: against the whole gallery]", head, "-" * len(head)]
    keys = [m for m in METHOD_ORDER if m in metrics] + sorted(m for m in metrics if m not in METHOD_ORDER)
    shown = domains if len(domains) == 1 else ["", *domains]  # one domain: its rows repeat the "all" ones
    nan = float("nan")
    for m in keys:
        vals = metrics[m]
        for d in shown:
            dom = f"_{d}" if d else ""
            cells = [vals.get(f"{split}_{UNSEEN}{dom}_{n}", nan) for n in names]
            cells += [vals.get(f"{split}_{GENERALISED}{dom}_mAP", nan), vals.get(f"{split}_{GENERALISED}{dom}_NN", nan)]
            n_q = int(vals.get(f"{split}_{UNSEEN}{dom}_n_queries", 0))
            rows.append(f"{m:<16}{d or 'all':<8}" + "".join(f"{v:>10.3f}" for v in cells) + f"{n_q:>6}")
    for d in shown:
        u, g = odds.get((UNSEEN, d), (nan, nan, 0)), odds.get((GENERALISED, d), (nan, nan, 0))
        rows.append(f"{'chance (E[.])':<16}{d or 'all':<8}{'':>10}{'':>10}{u[1]:>10.3f}{u[0]:>10.3f}{g[0]:>10.3f}{g[1]:>10.3f}{u[2]:>6}")
    return "\n".join(rows)


def run_dag(cmd: list[str], log: Path, verbose: bool) -> tuple[int, str]:
    """Run the command, logging all its output; echo task starts/ends, errors and the final report
    (everything with `verbose`). Returns (exit code, the whole output)."""
    lines, done = [], False
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    with open(log, "w") as f, subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as p:
        for line in p.stdout:
            f.write(line)
            lines.append(line)
            done = done or line.startswith("== scenesearch run finished")
            if verbose or done or _ECHO.search(line):
                sys.stdout.write(line.rsplit("\r", 1)[-1])  # a progress bar: its last state only
                sys.stdout.flush()
        rc = p.wait()
    return rc, "".join(lines)


_ECHO = re.compile(r"Executing task|finished with status|Traceback|Error|^scenesearch ")


def training(pipeline: Path) -> list[str]:
    """One line per trained model folder: epochs run, best epoch and its val mAP, last train accuracy."""
    out = []
    for h in sorted(pipeline.glob("**/train/model/history.json")):
        hist = json.loads(h.read_text())
        if not hist:
            continue
        key = json.loads((h.parent / "method.json").read_text()).get("key", h.parent.parent.parent.name)
        best = max(hist, key=lambda e: e.get("val_mAP", float("-inf")))
        curve = " ".join(f"{e.get('val_mAP', float('nan')):.3f}" for e in hist)
        # a classifier's accuracy where the method has one (cvae_m2), its training loss otherwise
        last = hist[-1]
        fit = f"train accuracy at the end {last['train_accuracy']:.2f}" if "train_accuracy" in last else f"train loss at the end {last.get('train_loss', float('nan')):.4g}"
        out.append(f"{key}: {len(hist)} epochs, best epoch {best['epoch']} (val mAP {best.get('val_mAP', float('nan')):.3f}), {fit}; val mAP per epoch: {curve}")
    return out


def table(metrics: dict[str, dict[str, float]], odds: dict[str, tuple[float, float, int]]) -> str:
    """One row per method, then the chance row: test mAP, test NN, val mAP, val NN."""
    head = f"{'method':<16}{'test mAP':>10}{'test NN':>10}{'val mAP':>10}{'val NN':>10}{'test q':>8}{'val q':>8}"
    rows = [head, "-" * len(head)]
    keys = [k for k in METHOD_ORDER if k in metrics] + sorted(k for k in metrics if k not in METHOD_ORDER)
    for k in keys:
        m = metrics[k]
        rows.append(
            f"{k:<16}{m.get('test_mAP', float('nan')):>10.3f}{m.get('test_NN', float('nan')):>10.3f}"
            f"{m.get('val_mAP', float('nan')):>10.3f}{m.get('val_NN', float('nan')):>10.3f}"
            f"{int(m.get('test_n_queries', 0)):>8}{int(m.get('val_n_queries', 0)):>8}"
        )
    t, v = odds.get("test", (float("nan"),) * 2 + (0,)), odds.get("val", (float("nan"),) * 2 + (0,))
    rows.append(f"{'chance (E[.])':<16}{t[0]:>10.3f}{t[1]:>10.3f}{v[0]:>10.3f}{v[1]:>10.3f}{t[2]:>8}{v[2]:>8}")
    return "\n".join(rows)


def per_class(report: Path, split: str = "test") -> str:
    """Per-class mAP of every method on one split, from the report's per_class.csv (empty if absent)."""
    path = report / "per_class.csv"
    if not path.is_file():
        return ""
    with open(path) as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == split]
    methods = [k for k in METHOD_ORDER if any(r["method"] == k for r in rows)] + sorted({r["method"] for r in rows} - set(METHOD_ORDER))
    classes = sorted({r["label"] for r in rows})
    value = {(r["method"], r["label"]): float(r["mAP"]) for r in rows}
    width = max(14, *(len(m) + 2 for m in methods))  # a long variant name (rmac_pw_alphaqe) keeps its column
    out = [f"{split} mAP per class".ljust(18) + "".join(f"{m:>{width}}" for m in methods)]
    for c in classes:
        out.append(f"{c:<18}" + "".join(f"{value.get((m, c), float('nan')):>{width}.3f}" for m in methods))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run the scenesearch DAG on the external corpus and print test/val mAP, NN and chance per method.")
    p.add_argument("--data", default="data/external", help="the corpus root (bench/external_corpus.py --out)")
    p.add_argument("--preset", default="default", help="scenesearch preset (default: default)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help="config override passed to scenesearch run (repeatable)")
    p.add_argument("--workdir", default="/tmp/scenesearch-external", help="KFP pipeline root, MLflow store and log live here")
    p.add_argument("--experiment", default="external", help="MLflow experiment name in that store")
    p.add_argument("--verbose", action="store_true", help="echo all of scenesearch run's output (it is always in the log)")
    args = p.parse_args(argv)

    data = Path(args.data).resolve()
    if not (data / "scenes").is_dir():
        print(f"no corpus at {data}: build it with .venv/bin/python bench/external_corpus.py --out {args.data}", file=sys.stderr)
        return 1
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    store = f"sqlite:///{work / 'mlruns.db'}"
    exe = Path(sys.executable).parent / "scenesearch"
    cmd = [str(exe) if exe.exists() else "scenesearch", "run", "--preset", args.preset, "--data", str(data), "--workdir", str(work),
           "--set", f"tracking.tracking_uri={store}", "--set", f"tracking.experiment={args.experiment}"]
    for s in args.set:
        cmd += ["--set", s]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log = work / f"run-{stamp}.log"
    print("command: " + shlex.join(cmd), flush=True)
    t0 = time.perf_counter()
    rc, out = run_dag(cmd, log, args.verbose)
    seconds = time.perf_counter() - t0
    if rc != 0:
        print(f"\nscenesearch run failed (exit {rc}) after {seconds:.0f} s; log: {log}", file=sys.stderr)
        return rc
    found = re.findall(r"\(report: (.+?)\)\s*$", out, flags=re.M)
    if not found:
        print(f"\nno report path in the output of scenesearch run; log: {log}", file=sys.stderr)
        return 1
    report = Path(found[-1])
    metrics = json.loads((report / "metrics.json").read_text())
    rankings = next(report.parent.parent.glob("retrieve/**/queries.parquet")).parent
    odds = chance(rankings, ("test", "val"))
    run = re.findall(r"^MLflow: (\S+)\s+experiment '(.+?)' \((\S+)\), run '(.+?)' \((\w+)\)", out, flags=re.M)
    print("\n== scenesearch on the external corpus ==")
    print("command: " + shlex.join(cmd))
    print(f"corpus: {data}   wall clock: {seconds:.0f} s   log: {log}")
    if run:
        uri, exp, exp_id, name, run_id = run[-1]
        print(f"MLflow: {uri} experiment '{exp}' ({exp_id}), run '{name}' ({run_id}); report: {report}")
    print(table(metrics, odds))
    for split in ("test", "val"):
        if any(f"{split}_{UNSEEN}_mAP" in vals for vals in metrics.values()):
            domains = zero_shot_domains(metrics, split)
            print("\n" + zero_shot_table(metrics, zero_shot_chance(rankings, split, domains), split, domains) + "\n")
    for line in training(report.parent.parent):
        print(line)
    classes = per_class(report)
    if classes:
        print("\n" + classes)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The evaluate step: metrics per method and query split, per-class tables, PR curves, a gallery.

Writes to out_dir: metrics.json ({method: {split_metric: value}}), comparison.csv and
comparison.md (one row per method), per_class.csv, pr_curve.png, gallery.png and
rejected.parquet (every reject of every earlier step, with its reason).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from scenesearch import storage
from scenesearch.config import EvaluateConfig
from scenesearch.io import REJECTED_SCHEMA, decode_image
from scenesearch.errors import DataError
from scenesearch.evaluation.metrics import per_class_metrics, pr_curve, retrieval_metrics
from scenesearch.evaluation.plots import plot_gallery, plot_pr_curves
from scenesearch.preprocess import preprocess_images, to_uint8


def metric_key(split: str, name: str) -> str:
    """MLflow-safe metric name: test_mAP, test_P_at_200 (MLflow forbids '@')."""
    return f"{split}_{name.replace('@', '_at_')}"


@dataclass
class EvaluateResult:
    metrics: dict[str, dict[str, float]]  # method -> {metric_key: value}
    n_rejected: int
    artifacts: list[str] = field(default_factory=list)

    def flat_metrics(self) -> dict[str, float]:
        """`method.metric` keys: one parent run shows every method side by side."""
        return {f"{m}.{k}": v for m, d in self.metrics.items() for k, v in d.items()}


def split_mask(splits: np.ndarray, split: str) -> np.ndarray:
    return np.ones(len(splits), bool) if split == "all" else splits == split


def run(
    retrieval_dir: str,
    manifest_dir: str,
    views_dir: str,
    reject_dirs: list[str],
    out_dir: str,
    cfg: EvaluateConfig,
) -> EvaluateResult:
    """Evaluate every method's distance matrix found in retrieval_dir."""
    src, dst = Path(retrieval_dir), Path(out_dir)
    queries = storage.read_table(src / "queries.parquet").to_pydict()
    scenes = storage.read_table(src / "scenes.parquet").to_pydict()
    q_labels, q_splits, s_labels = np.asarray(queries["label"]), np.asarray(queries["split"]), np.asarray(scenes["label"])
    methods = sorted(p.stem.removeprefix("distances_") for p in src.glob("distances_*.npy"))
    results: dict[str, dict[str, float]] = {}
    class_rows, curves = [], {}
    report_split = cfg.splits[-1]
    for method in methods:
        d = storage.read_array(src / f"distances_{method}.npy")
        results[method] = {}
        for split in cfg.splits:
            mask = split_mask(q_splits, split)
            if not mask.any():  # e.g. classes too small for a val split: report the others
                continue
            try:
                m = retrieval_metrics(d[mask], q_labels[mask], s_labels, k=cfg.k)
            except ValueError as e:  # no query of this split has a scene of its class left
                raise DataError(f"cannot evaluate the {split} queries: {e}") from None
            results[method].update({metric_key(split, k): float(v) for k, v in m.items()})
            if split == report_split:
                for row in per_class_metrics(d[mask], q_labels[mask], s_labels, k=cfg.k):
                    class_rows.append({"method": method, "split": split, **row})
                curves[method] = pr_curve(d[mask], q_labels[mask], s_labels)
    if not any(results.values()):
        raise DataError(f"no query in the evaluated splits ({', '.join(cfg.splits)})")
    dst.mkdir(parents=True, exist_ok=True)
    artifacts = [
        _write_json(dst / "metrics.json", results),
        _write_comparison(dst, results),
        _write_csv(dst / "per_class.csv", class_rows),
    ]
    if curves:
        plot_pr_curves(curves, dst / "pr_curve.png")
        artifacts.append(str(dst / "pr_curve.png"))
    gallery_method = next((m for m in methods if m != "random"), None)
    mask = split_mask(q_splits, report_split)
    if gallery_method is not None and mask.any():
        artifacts.append(
            _gallery(storage.read_array(src / f"distances_{gallery_method}.npy"), queries, scenes, mask, manifest_dir, views_dir, cfg, dst / "gallery.png")
        )
    n_rejected = _merge_rejects([manifest_dir, views_dir, *reject_dirs], dst / "rejected.parquet")
    artifacts.append(str(dst / "rejected.parquet"))
    return EvaluateResult(results, n_rejected, artifacts)


def _write_json(path: Path, obj) -> str:
    storage.write_bytes(path, json.dumps(obj, indent=2, sort_keys=True).encode())
    return str(path)


def _write_csv(path: Path, rows: list[dict]) -> str:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    storage.write_bytes(path, buf.getvalue().encode())
    return str(path)


def _write_comparison(dst: Path, results: dict[str, dict[str, float]]) -> str:
    """comparison.csv and a Markdown table of the same numbers (methods as rows)."""
    keys = sorted({k for d in results.values() for k in d})
    _write_csv(dst / "comparison.csv", [{"method": m, **{k: d.get(k, float("nan")) for k in keys}} for m, d in results.items()])
    lines = ["| method | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    lines += [f"| {m} | " + " | ".join(f"{d.get(k, float('nan')):.3f}" for k in keys) + " |" for m, d in results.items()]
    storage.write_bytes(dst / "comparison.md", ("\n".join(lines) + "\n").encode())
    return str(dst / "comparison.md")


def format_table(results: dict[str, dict[str, float]], split: str, k: int) -> str:
    """A terminal table of one split's metrics, one row per method."""
    names = ["NN", "FT", "ST", "E", "DCG", "mAP", f"P@{k}", f"mAP@{k}"]
    header = f"{'method':<14}" + "".join(f"{n:>10}" for n in names)
    rows = [f"{m:<14}" + "".join(f"{d.get(metric_key(split, n), float('nan')):>10.3f}" for n in names) for m, d in results.items()]
    return "\n".join([f"[{split} queries]", header, *rows])


def _gallery(d, queries, scenes, mask, manifest_dir, views_dir, cfg: EvaluateConfig, path: Path) -> str:
    """Top-k renders (view 0) for one query of each class in the reported split, wrong class marked."""
    manifest = {r["item_id"]: r for r in storage.read_table(Path(manifest_dir) / "manifest.parquet").to_pylist()}
    views = storage.read_table(Path(views_dir) / "views.parquet").to_pydict()
    first_view = {i: p for i, v, p in zip(views["item_id"], views["view"], views["png"]) if v == 0}
    chosen, seen = [], set()
    for i in np.flatnonzero(mask):
        if queries["label"][i] not in seen and len(chosen) < cfg.gallery_queries:
            seen.add(queries["label"][i])
            chosen.append(i)
    q_imgs, ranked_imgs, ranked_labels = [], [], []
    for i in chosen:
        raw = decode_image(queries["item_id"][i], storage.read_bytes(manifest[queries["item_id"][i]]["uri"]))
        q_imgs.append(to_uint8(preprocess_images([raw], 64, flips=False)[0].permute(1, 2, 0).numpy()))
        top = np.argsort(d[i], kind="stable")[: cfg.gallery_top]
        ranked_imgs.append([decode_image(scenes["item_id"][j], first_view[scenes["item_id"][j]]) for j in top])
        ranked_labels.append([scenes["label"][j] for j in top])
    plot_gallery(q_imgs, ranked_imgs, [queries["label"][i] for i in chosen], ranked_labels, path)
    return str(path)


def _merge_rejects(dirs: list[str], path: Path) -> int:
    tables = [storage.read_table(Path(d) / "rejected.parquet") for d in dirs if (Path(d) / "rejected.parquet").is_file()]
    merged = pa.concat_tables(tables) if tables else pa.Table.from_pylist([], schema=REJECTED_SCHEMA)
    storage.write_table(path, merged)
    return merged.num_rows

"""The evaluate step: metrics per method, query split and query group, per-class tables, PR curves, galleries.

Metric keys are ``<split>[_<group>]_<metric>``: ``test_mAP`` (every test query against the whole
gallery), per query domain ``test_photo_mAP``, ``test_sketch_mAP``; with a zero-shot split also
``test_unseen_mAP`` (unseen-class queries against the unseen-class scenes: the zero-shot papers'
number), ``test_generalised_mAP`` (unseen-class queries against the whole gallery: generalised
zero-shot), ``test_seen_mAP`` (seen classes against seen scenes, for reference) and their
per-domain keys (``test_unseen_sketch_mAP``). Writes to out_dir: metrics.json ({key: {metric_key: value}}),
comparison.csv and comparison.md (one row per method), per_class.csv, pr_curve.png,
gallery_<key>.png per method (its top-k for one query of each class) and
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
from scenesearch.domains import SEEN, UNSEEN
from scenesearch.errors import DataError
from scenesearch.evaluation.metrics import per_class_metrics, pr_curve, retrieval_metrics
from scenesearch.evaluation.plots import plot_gallery, plot_pr_curves
from scenesearch.io import REJECTED_SCHEMA
from scenesearch.preprocess import to_uint8


GENERALISED = "generalised"  # the group of unseen-class queries against the whole gallery


def metric_key(split: str, name: str, group: tuple[str, ...] = ()) -> str:
    """MLflow-safe metric name: test_mAP, test_photo_P_at_200, test_unseen_mAP (MLflow forbids '@')."""
    return "_".join([split, *group, name.replace("@", "_at_")])


@dataclass
class EvaluateResult:
    metrics: dict[str, dict[str, float]]  # entry key -> {metric_key: value}
    n_rejected: int
    groups: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)  # (split, group) reported
    artifacts: list[str] = field(default_factory=list)

    def flat_metrics(self) -> dict[str, float]:
        """``<split>_<key>_<metric>`` (test_cvae1_mAP): one parent run compares every method at a glance."""
        out = {}
        for key, values in self.metrics.items():
            for k, v in values.items():
                split, _, rest = k.partition("_")
                out[f"{split}_{key}_{rest}"] = v
        return out


def split_mask(splits: np.ndarray, split: str) -> np.ndarray:
    return np.ones(len(splits), bool) if split == "all" else splits == split


def query_groups(queries: dict, scenes: dict, split: str) -> list[tuple[tuple[str, ...], np.ndarray, np.ndarray]]:
    """(group, query mask, scene mask) for every group reported in `split` (see the module doc)."""
    q_split, q_dom = np.asarray(queries["split"]), np.asarray(queries["domain"])
    q_cls, s_cls = np.asarray(queries["class_split"]), np.asarray(scenes["class_split"])
    base, every = split_mask(q_split, split), np.ones(len(s_cls), bool)
    groups = [((), base, every)] + [((d,), base & (q_dom == d), every) for d in sorted(set(q_dom[base].tolist()))]
    if (s_cls == UNSEEN).any():
        for cs in (UNSEEN, SEEN):
            mask = base & (q_cls == cs)
            groups.append(((cs,), mask, s_cls == cs))
            groups += [((cs, d), mask & (q_dom == d), s_cls == cs) for d in sorted(set(q_dom[mask].tolist()))]
        # generalised zero-shot: unseen-class queries against the whole gallery (seen scenes compete)
        mask = base & (q_cls == UNSEEN)
        groups.append(((GENERALISED,), mask, every))
        groups += [((GENERALISED, d), mask & (q_dom == d), every) for d in sorted(set(q_dom[mask].tolist()))]
    return [g for g in groups if g[1].any() and g[2].any()]


def run(retrieval_dir: str, manifest_dir: str, views_dir: str, images_dir: str, out_dir: str, cfg: EvaluateConfig) -> EvaluateResult:
    """Evaluate every entry's distance matrix found in retrieval_dir.

    Args:
        images_dir: the preprocess output (the galleries show its images; its rejects are merged).

    Raises:
        DataError: no query in the evaluated splits, or a split whose queries have no relevant scene.
    """
    src, dst = Path(retrieval_dir), Path(out_dir)
    queries = storage.read_table(src / "queries.parquet").to_pydict()
    scenes = storage.read_table(src / "scenes.parquet").to_pydict()
    q_labels, s_labels = np.asarray(queries["label"]), np.asarray(scenes["label"])
    keys = sorted(f.removeprefix("distances_").removesuffix(".npy") for f in storage.list_files(src) if f.startswith("distances_") and f.endswith(".npy"))
    distances = {key: storage.read_array(src / f"distances_{key}.npy") for key in keys}
    results: dict[str, dict[str, float]] = {}
    reported: list[tuple[str, tuple[str, ...]]] = []
    class_rows, curves = [], {}
    report_split = cfg.splits[-1]
    for key, d in distances.items():
        results[key] = {}
        for split in cfg.splits:
            for group, qm, sm in query_groups(queries, scenes, split):
                try:
                    m = retrieval_metrics(d[qm][:, sm], q_labels[qm], s_labels[sm], k=cfg.k)
                except ValueError as e:  # no query of this group has a scene of its class left
                    raise DataError(f"cannot evaluate the {' '.join((split, *group))} queries: {e}") from None
                results[key].update({metric_key(split, k, group): float(v) for k, v in m.items()})
                if (split, group) not in reported:
                    reported.append((split, group))
                if split == report_split and not group:
                    for row in per_class_metrics(d[qm], q_labels[qm], s_labels, k=cfg.k):
                        class_rows.append({"method": key, "split": split, **row})
                    curves[key] = pr_curve(d[qm], q_labels[qm], s_labels)
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
    mask = split_mask(np.asarray(queries["split"]), report_split)
    if mask.any():
        thumbs = _thumbnails(images_dir)
        for key in keys:
            value = results[key].get(metric_key(report_split, "mAP"), float("nan"))
            title = f"{key}: top {cfg.gallery_top} scenes for {report_split} queries (mAP {value:.3f})"
            path = dst / f"gallery_{key}.png"
            _gallery(distances[key], queries, scenes, mask, thumbs, cfg, path, title)
            artifacts.append(str(path))
    n_rejected = _merge_rejects([manifest_dir, views_dir, images_dir], dst / "rejected.parquet")
    artifacts.append(str(dst / "rejected.parquet"))
    for name in _report_files(src):  # the methods' own tables
        storage.write_bytes(dst / name, storage.read_bytes(src / name))
        artifacts.append(str(dst / name))
    return EvaluateResult(results, n_rejected, reported, artifacts)


def _report_files(folder: Path) -> list[str]:
    """Names of the methods' own reports (``report_<key>.md``, written by retrieve) in a folder, by key."""
    return sorted(f for f in storage.list_files(folder) if f.startswith("report_") and f.endswith(".md"))


def method_reports(report_dir: str | Path) -> list[str]:
    """The methods' own reports in an evaluate output folder, by key."""
    return [storage.read_bytes(Path(report_dir) / f).decode() for f in _report_files(Path(report_dir))]


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


def format_table(results: dict[str, dict[str, float]], split: str, k: int, group: tuple[str, ...] = ()) -> str:
    """A terminal table of one split's (and group's) metrics, one row per method."""
    names = ["NN", "FT", "ST", "E", "DCG", "mAP", f"P@{k}", f"mAP@{k}"]
    header = f"{'method':<14}" + "".join(f"{n:>10}" for n in names)
    rows = [f"{m:<14}" + "".join(f"{d.get(metric_key(split, n, group), float('nan')):>10.3f}" for n in names) for m, d in results.items()]
    return "\n".join([f"[{' '.join((split, *group))} queries]", header, *rows])


def report_groups(results: dict[str, dict[str, float]], splits: tuple[str, ...]) -> list[tuple[str, tuple[str, ...]]]:
    """The (split, group) pairs present in a metrics.json, in print order."""
    found = set()
    for values in results.values():
        for key in values:
            for split in splits:
                if key == f"{split}_mAP":
                    found.add((split, ()))
                elif key.startswith(f"{split}_") and key.endswith("_mAP"):
                    found.add((split, tuple(key[len(split) + 1 : -len("_mAP")].split("_"))))
    return sorted(found, key=lambda sg: (splits.index(sg[0]), len(sg[1]), sg[1]))


def format_report(results: dict[str, dict[str, float]], splits: tuple[str, ...], k: int) -> str:
    """Every table worth printing: per split, its zero-shot groups, and its domains when there are
    several; with a zero-shot split last the zero-shot summary (`format_zero_shot`)."""
    groups = report_groups(results, splits)
    domains = {g[-1] for _, g in groups if g and g[-1] not in (SEEN, UNSEEN, GENERALISED)}
    shown = [(s, g) for s, g in groups if not g or len(domains) > 1 or g[-1] not in domains]  # one domain: its table repeats the split's
    tables = [format_table(results, s, k, g) for s, g in shown]
    if any((splits[-1], (UNSEEN,)) == sg for sg in groups):
        tables.append(format_zero_shot(results, splits[-1], k, sorted(domains)))
    return "\n".join(tables)


def format_zero_shot(results: dict[str, dict[str, float]], split: str, k: int, domains: list[str]) -> str:
    """The zero-shot papers' table: per query domain, unseen-class queries against the unseen-class
    gallery (P@k, mAP@k, NN, mAP), then the generalised mAP (against the whole gallery)."""
    names = [f"P@{k}", f"mAP@{k}", "NN", "mAP"]
    domains = domains or [""]
    head1 = f"{'':<14}" + "".join(f"{d or 'all':^{10 * (len(names) + 1)}}" for d in domains)
    head2 = f"{'method':<14}" + "".join("".join(f"{n:>10}" for n in names) + f"{'gen. mAP':>10}" for _ in domains)
    rows = []
    for m, vals in results.items():
        cells = []
        for d in domains:
            dom = (d,) if d else ()
            cells += [vals.get(metric_key(split, n, (UNSEEN, *dom)), float("nan")) for n in names]
            cells.append(vals.get(metric_key(split, "mAP", (GENERALISED, *dom)), float("nan")))
        rows.append(f"{m:<14}" + "".join(f"{v:>10.3f}" for v in cells))
    return "\n".join([f"[zero-shot: unseen-class {split} queries against the unseen-class scenes; gen.: against the whole gallery]", head1, head2, *rows])


def _thumbnails(images_dir: str) -> dict[tuple[str, int], np.ndarray]:
    """The preprocessed unflipped image of every query (view -1) and every scene's view 0, as uint8 (H, W, 3)."""
    src = Path(images_dir)
    index = storage.read_table(src / "index.parquet").to_pydict()
    images = storage.read_array(src / "images.npy", mmap=True)
    rows = [i for i, (v, f) in enumerate(zip(index["view"], index["flip"])) if v in (-1, 0) and not f]
    return {(index["item_id"][i], index["view"][i]): to_uint8(np.asarray(images[i]).transpose(1, 2, 0)) for i in rows}


def _gallery(d, queries, scenes, mask, thumbs, cfg: EvaluateConfig, path: Path, title: str) -> str:
    """Top-k renders (view 0) for one query of each class in the reported split, wrong class marked;
    with several query domains the classes take them in turn, so each domain is seen."""
    rows = np.flatnonzero(mask)
    domain = np.asarray(queries["domain"])
    domains = sorted(set(domain[rows].tolist()))
    chosen = []
    for k, label in enumerate(dict.fromkeys(np.asarray(queries["label"])[rows].tolist())):
        if len(chosen) == cfg.gallery_queries:
            break
        of_class = [i for i in rows if queries["label"][i] == label]
        chosen.append(next((i for i in of_class if domain[i] == domains[k % len(domains)]), of_class[0]))
    q_imgs, ranked_imgs, ranked_labels = [], [], []
    for i in chosen:
        q_imgs.append(thumbs[(queries["item_id"][i], -1)])
        top = np.argsort(d[i], kind="stable")[: cfg.gallery_top]
        ranked_imgs.append([thumbs[(scenes["item_id"][j], 0)] for j in top])
        ranked_labels.append([scenes["label"][j] for j in top])
    unseen = np.asarray(queries.get("class_split", [SEEN] * len(domain))) == UNSEEN  # absent: an index from before zero-shot splits

    def note(i: int) -> str:  # the query's domain when there are several, and whether its class is unseen
        parts = [str(domain[i])] if len(domains) > 1 else []
        return ", ".join(parts + ["unseen class"] if unseen[i] else parts)

    notes = [note(i) for i in chosen]
    notes = notes if any(notes) else None
    plot_gallery(q_imgs, ranked_imgs, [queries["label"][i] for i in chosen], ranked_labels, path, title=title, query_notes=notes)
    return str(path)


def _merge_rejects(dirs: list[str], path: Path) -> int:
    tables = [storage.read_table(Path(d) / "rejected.parquet") for d in dirs if storage.exists(Path(d) / "rejected.parquet")]
    merged = pa.concat_tables(tables) if tables else pa.Table.from_pylist([], schema=REJECTED_SCHEMA)
    storage.write_table(path, merged)
    return merged.num_rows

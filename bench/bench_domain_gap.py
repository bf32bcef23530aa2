"""The domain-gap table: every method on the hard and the easy query photos, with and without domain randomisation.

Run: .venv/bin/python bench/bench_domain_gap.py [--preset default] [--data ROOT] [--set section.field=value ...]
                                                [--workdir /tmp/domain_gap] [--arms aug,noaug]

Each arm is one whole `scenesearch run` (kfp.local, the preset's DAG) on the same dataset:
``aug`` with the preset's `train.augment`, ``noaug`` with `train.augment.ops=[]`; further arms
(``crops``: `retrieve.crop_scales=[0.6]`, ``crops_aug``) add test-time crops. The MLflow store is
a SQLite file under --workdir, so the project's own store is left alone. Without --data the
preset's embedded benchmark is generated under --workdir.

Printed per arm and method: test mAP and NN (P@1) over every test query, over the hard photos
(domain photo) and over the easy renders (photo_easy, when the dataset has them), the val mAP
of the hard photos, the training seconds, and the chance level (the random method's figures and
the expected mAP / NN of a uniformly random ranking, `external.chance`). Asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]
for var, sub in (("TORCH_HOME", "torch"), ("XDG_CACHE_HOME", ""), ("MESA_SHADER_CACHE_DIR", "mesa")):
    os.environ.setdefault(var, str(ROOT / ".cache" / sub))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

ARMS = {
    "aug": [],
    "noaug": ["train.augment.ops=[]"],
    "crops": ["retrieve.crop_scales=[0.6]"],
    "crops_noaug": ["retrieve.crop_scales=[0.6]", "train.augment.ops=[]"],
}


def chance_level(report_dir: str) -> tuple[float, float]:
    """(E[mAP], E[NN]) of a uniformly random ranking of the test queries (bench/external.py's formula),
    from the rankings that retrieve scored in the run whose evaluate report is `report_dir`."""
    from external import chance

    pipeline = Path(report_dir).parents[1]
    rankings = next(pipeline.glob("retrieve/**/queries.parquet")).parent
    return chance(rankings, ("test",))["test"][:2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="default")
    ap.add_argument("--data", default=None, help="dataset root (default: generate the preset's benchmark)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    ap.add_argument("--workdir", default="/tmp/domain_gap")
    ap.add_argument("--arms", default="aug,noaug", help=f"comma-separated, from {', '.join(ARMS)}")
    args = ap.parse_args()

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlruns.db'}"
    from pipelines.local import run_local
    from scenesearch import config
    from scenesearch.data.generate import generate, is_current

    base = config.load(args.preset, args.overrides)
    data_root = args.data or str(work / "data")
    if args.data is None and not is_current(data_root, base.data, base.seed):
        generate(data_root, base.data, base.seed)
    print(f"dataset: {data_root}; preset {args.preset}; overrides {args.overrides or 'none'}")
    rows, odds = [], (float("nan"), float("nan"))
    for arm in args.arms.split(","):
        cfg = config.load(args.preset, [*args.overrides, *ARMS[arm], f"tracking.experiment=domain-gap-{arm}"])
        t0 = time.perf_counter()
        run = run_local(cfg, data_root, str(work / f"wd_{arm}"))
        seconds = time.perf_counter() - t0
        odds = chance_level(run.report_dir)
        for key, m in run.metrics.items():
            train_s = run.step_seconds.get(f"train_{key}", float("nan"))
            rows.append((arm, key, m, train_s, seconds))
    print(f"\nchance level of the test queries (a random ranking): E[mAP] {odds[0]:.3f}, E[NN] {odds[1]:.3f}\n")
    cols = [("test_mAP", "all mAP"), ("test_NN", "all NN"), ("test_photo_mAP", "hard mAP"), ("test_photo_NN", "hard NN"),
            ("test_photo_easy_mAP", "easy mAP"), ("test_photo_easy_NN", "easy NN"), ("val_photo_mAP", "val hard mAP")]
    print("| arm | method | " + " | ".join(c[1] for c in cols) + " | train s | run s |")
    print("|---|---|" + "---|" * (len(cols) + 2))
    for arm, key, m, train_s, seconds in rows:
        cells = [f"{m[c]:.3f}" if c in m else "-" for c, _ in cols]
        print(f"| {arm} | {key} | " + " | ".join(cells) + f" | {train_s:.0f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()

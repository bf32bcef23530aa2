"""Does the M2 unlabelled objective help? Train cvae1 on the default preset twice, without and
with the val/test images added unlabelled (`train.unlabelled`), and print the test mAP of each.

    .venv/bin/python bench/bench_unlabelled.py [--images PREPROCESSED_DIR] [--epochs 20]

Without --images it builds the default preset's data in a temporary folder (about a minute).
"""

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np

from scenesearch import config
from scenesearch.evaluation import retrieval_metrics
from scenesearch import methods, retrieval, train


def build(tmp: Path, cfg) -> Path:
    from scenesearch import preprocess
    from scenesearch.data import generate, ingest
    from scenesearch.render import step as render

    generate.generate(tmp / "data", cfg.data, cfg.seed)
    ingest.run(str(tmp / "data"), str(tmp / "manifest"), cfg.data, cfg.seed)
    render.run(str(tmp / "manifest"), str(tmp / "views"), cfg.render)
    preprocess.run(str(tmp / "manifest"), str(tmp / "views"), str(tmp / "images"), cfg.preprocess)
    return tmp / "images"


def test_map(model_dir: Path, cfg) -> dict[str, float]:
    _, inputs, d = retrieval.score_folder(model_dir)
    split = np.asarray(inputs.queries["split"])
    out = {}
    for s in ("val", "test"):
        m = retrieval_metrics(d[split == s], np.asarray(inputs.queries["label"])[split == s], np.asarray(inputs.scenes["label"]), k=cfg.evaluate.k)
        out[f"{s}_mAP"] = float(m["mAP"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", help="a preprocess output folder of the default preset")
    ap.add_argument("--epochs", type=int, default=20)
    args = ap.parse_args()
    cfg = config.load("default", [f"train.epochs={args.epochs}"])
    with tempfile.TemporaryDirectory() as tmp:
        images = Path(args.images) if args.images else build(Path(tmp), cfg)
        print(f"cvae1, default preset, at most {args.epochs} epochs, early stopping on val mAP (patience {cfg.train.patience})")
        for unlabelled in (False, True):
            c = dataclasses.replace(cfg, methods={**cfg.methods, "cvae_m2": {**cfg.methods["cvae_m2"], "unlabelled": unlabelled}})
            t0 = time.perf_counter()
            r = train.run(c, "cvae1", methods.Inputs(images=str(images)), str(Path(tmp) / f"m{int(unlabelled)}"), progress=False).metrics
            m = test_map(Path(tmp) / f"m{int(unlabelled)}", c)
            print(
                f"unlabelled={str(unlabelled):5s}  extra images {r['n_unlabelled_images']:4d}  epochs {r['epochs_run']:2d} (best {r['best_epoch']:2d})  "
                f"val mAP {m['val_mAP']:.3f}  test mAP {m['test_mAP']:.3f}  {time.perf_counter() - t0:.0f} s"
            )


if __name__ == "__main__":
    main()

"""Descriptor quality with features.weights none vs selfsup: vgg_baseline-style retrieval per query domain.

Run: .venv/bin/python bench/bench_selfsup.py --images PREPROCESS_DIR --out /tmp/selfsup [--preset selfsup]
                                            [--set section.field=value ...]

PREPROCESS_DIR is a preprocess step output (images.npy, masks.npy, index.parquet), e.g. from the
KFP pipeline root of a default run. For each of weights none and the preset's weights (selfsup:
the features step pretrains VGG16 first) it runs the features step into --out/<weights>, then
scores every query against every scene by the min-view cosine distance of the PCA features
(what vgg_baseline does) and prints mAP / NN per domain and split, the chance mAP (20 random
rankings) and the features step's seconds and pretraining stats. Prints figures only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]
for var, sub in (("TORCH_HOME", "torch"), ("XDG_CACHE_HOME", ""), ("MESA_SHADER_CACHE_DIR", "mesa")):
    os.environ.setdefault(var, str(ROOT / ".cache" / sub))


def score(out: Path) -> dict:
    import numpy as np
    import torch

    from scenesearch import storage
    from scenesearch.distances import min_view_cosine_distances
    from scenesearch.evaluation import retrieval_metrics
    from scenesearch.gallery import arrange

    inp = arrange(storage.read_array(out / "features.npy"), storage.read_table(out / "index.parquet").to_pydict())
    d = min_view_cosine_distances(torch.from_numpy(inp.query_feats), torch.from_numpy(inp.scene_feats)).numpy()
    ql, sl = np.asarray(inp.queries["label"]), np.asarray(inp.scenes["label"])
    qs, qd = np.asarray(inp.queries["split"]), np.asarray(inp.queries["domain"])
    rng = np.random.default_rng(0)
    rows = {}
    for dom in sorted(set(qd.tolist())):
        for split in ("train", "val", "test"):
            m = (qd == dom) & (qs == split)
            if m.any():
                res = retrieval_metrics(d[m], ql[m], sl, k=200)
                chance = np.mean([retrieval_metrics(rng.random((m.sum(), len(sl))), ql[m], sl, k=200)["mAP"] for _ in range(20)])
                rows[f"{dom}/{split}"] = {"mAP": round(float(res["mAP"]), 3), "NN": round(float(res["NN"]), 3), "chance_mAP": round(float(chance), 3), "n": int(m.sum())}
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", required=True, help="a preprocess output folder")
    ap.add_argument("--out", default="/tmp/selfsup")
    ap.add_argument("--preset", default="selfsup")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    args = ap.parse_args()
    from scenesearch import config, features

    for weights in ("none", None):
        cfg = config.load(args.preset, args.overrides + ([f"features.weights={weights}"] if weights else []))
        out = Path(args.out) / cfg.features.weights
        t = time.perf_counter()
        r = features.run(args.images, str(out), cfg.features, cfg.seed, cfg.train.augment, cfg.render.background)
        print(f"weights {cfg.features.weights}: features step {time.perf_counter() - t:.0f} s {json.dumps(r.metrics())}")
        for k, v in score(out).items():
            print(f"  {k:<18} mAP {v['mAP']:.3f}  NN {v['NN']:.3f}  chance mAP {v['chance_mAP']:.3f}  ({v['n']} queries)")


if __name__ == "__main__":
    main()

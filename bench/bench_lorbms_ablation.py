"""The LORBMS loss ablation (the thesis has it): lambda_adv = 0, lambda_cls = 0 and no cycle term
against the full loss, after the same number of epochs; linear-probe accuracy and fid_vgg for each.

Run: .venv/bin/python bench/bench_lorbms_ablation.py --run runs/kfp/<pipeline run> [--preset mixing] [--out /tmp/lorbms_ablation]
                                                     [--set section.field=value ...]

--run is the KFP pipeline root of a `make run PRESET=mixing` run (its preprocess, features and
similarity outputs are reused, so every arm trains on the same images and candidates). Each arm
is `scenesearch.train.run` of one variant of the preset's lorbms section (no MLflow). Prints the
table and writes it to bench/results/lorbms_ablation.txt. Figures only, no pass/fail.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]
for var, sub in (("TORCH_HOME", "torch"), ("XDG_CACHE_HOME", ""), ("MESA_SHADER_CACHE_DIR", "mesa")):
    os.environ.setdefault(var, str(ROOT / ".cache" / sub))

ARMS = ("lorbms", "lorbms_noadv", "lorbms_nocls", "lorbms_nocycle")


def step_output(run: Path, step: str, name: str) -> str:
    found = sorted(run.glob(f"**/{step}/{name}"))
    if not found:
        raise SystemExit(f"{run} holds no {step}/{name} output; pass the pipeline root of a mixing run")
    return str(found[0])


def main() -> None:
    import torch

    from bench._machine import header
    from scenesearch import config, methods, train

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, type=Path, help="KFP pipeline root of a mixing run (runs/kfp/scenesearch-...)")
    ap.add_argument("--preset", default="mixing")
    ap.add_argument("--out", type=Path, default=Path("/tmp/lorbms_ablation"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    args = ap.parse_args()
    cfg = config.load(args.preset, args.overrides)
    section = dict(cfg.methods.get("lorbms") or {})
    cfg = dataclasses.replace(cfg, methods={"lorbms": {**section, "variants": list(ARMS)}})
    inputs = methods.Inputs(images=step_output(args.run, "preprocess", "images"), features=step_output(args.run, "features", "features"),
                            clusters=step_output(args.run, "similarity", "clusters"))
    print(header(torch))
    rows = []
    for arm in ARMS:
        t0 = time.perf_counter()
        m = train.run(cfg, arm, inputs, str(args.out / arm), checkpoint_dir=str(args.out / arm / "checkpoint"), progress=False).metrics
        rows.append((arm, m, time.perf_counter() - t0))
        print(f"{arm}: done in {rows[-1][2]:.0f} s", flush=True)
    epochs = int(rows[0][1]["epochs_run"])
    lines = [f"LORBMS ablation, preset {args.preset}, {epochs} epochs each, seed {cfg.seed}, {int(rows[0][1]['n_train_images'])} training images",
             f"{'arm':<16}{'encoder probe':>18}{'disc. probe':>16}{'random enc.':>16}{'fid_vgg':>10}{'train s':>9}"]
    for arm, m, _ in rows:
        def pm(k):
            return f"{100 * m[f'probe_{k}_mean']:.1f}±{100 * m[f'probe_{k}_sd']:.1f}%"
        lines.append(f"{arm:<16}{pm('encoder'):>18}{pm('discriminator'):>16}{pm('random'):>16}{m.get('fid_vgg', float('nan')):>10.2f}{m['train_seconds']:>9.0f}")
    text = "\n".join([header(torch), *lines])
    print(text)
    out = ROOT / "bench" / "results" / "lorbms_ablation.txt"
    out.write_text(text + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Images per second of our VGG16 descriptor extraction against a bare torch loop, on the CPU.

Run: .venv/bin/python bench/bench_features.py [--n 256] [--n-224 32] [--batch-size 32] [--repeats 2]

Ours: `scenesearch.features.vgg.build_descriptor("none", 0)` then
  `extract(model, images, batch_size=32, device=cpu, input_size=S, progress=False)`: the
  multi-layer descriptor (fc7 + GAP of conv5_3, conv4_3, conv3_3, each L2-normalised).
Bare: what one writes by hand over the very same modules (`features`, `avgpool`,
  `classifier[:5]`, same random weights, same batch size) under `torch.inference_mode()`: a
  plain `for` over batches doing the ImageNet normalisation and returning fc7 only.
Images: N random (3, S, S) in [0, 1] (seed 0), generated at the input size so neither side
resizes. Each side gets one warm-up batch; each figure is the best of --repeats passes, the two
sides alternating. The 224x224 figure (the README quotes it) is one pass each on --n-224 images
after a --warmup-224-image warm-up, to stay within ~2 minutes on 2 cores.
torch.set_num_threads(2). Prints figures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _var, _sub in (("TORCH_HOME", "torch"), ("XDG_CACHE_HOME", ""), ("MESA_SHADER_CACHE_DIR", "mesa")):
    os.environ.setdefault(_var, str(ROOT / ".cache" / _sub) if _sub else str(ROOT / ".cache"))
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from scenesearch.features.vgg import build_descriptor, extract  # noqa: E402

TARGET_RATIO = 0.8


def bare_extract(model, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The hand-written baseline: normalise, features, avgpool, classifier[:5] -> fc7 (N, 4096)."""
    features, avgpool, fc = model.features, model.avgpool, model.fc  # fc is vgg.classifier[:5]
    mean, std = model.mean, model.std
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = (images[start : start + batch_size] - mean) / std
            out.append(fc(torch.flatten(avgpool(features(x)), 1)))
    return torch.cat(out)


def compare(model, n: int, size: int, batch_size: int, repeats: int, seed: int, warmup: int | None = None) -> dict:
    """Time ours and bare on the same n random images of side `size` after a warm-up call each.

    warmup: images in the warm-up call (default: one full batch).
    """
    images = torch.rand((n, 3, size, size), generator=torch.Generator().manual_seed(seed))
    cpu = torch.device("cpu")
    warm = images[: min(warmup or batch_size, n)]
    extract(model, warm, batch_size=batch_size, device=cpu, input_size=size, progress=False)
    bare_extract(model, warm, batch_size)
    runners = {
        "ours": lambda: extract(model, images, batch_size=batch_size, device=cpu, input_size=size, progress=False),
        "bare": lambda: bare_extract(model, images, batch_size),
    }
    best = {name: math.inf for name in runners}
    outputs = {}
    for _ in range(repeats):
        for name, fn in runners.items():
            start = time.perf_counter()
            outputs[name] = fn()
            best[name] = min(best[name], time.perf_counter() - start)
    # same network: our descriptor's first block is the L2-normalised fc7 the bare loop returns
    fc7_diff = float((outputs["ours"][:, :4096] - F.normalize(outputs["bare"], dim=1)).abs().max())
    return {
        "ours": n / best["ours"],
        "bare": n / best["bare"],
        "ours_dim": outputs["ours"].shape[1],
        "bare_dim": outputs["bare"].shape[1],
        "fc7_diff": fc7_diff,
    }


def report(tag: str, r: dict, target: bool) -> None:
    ratio = r["ours"] / r["bare"]
    print(f"{tag} ours: {r['ours']:7.2f} images/s ({r['ours_dim']}-d descriptor)")
    print(f"{tag} bare: {r['bare']:7.2f} images/s ({r['bare_dim']}-d fc7)")
    line = f"{tag} ratio ours/bare: {ratio:.2f}x"
    if target:
        line += f"; target >= {TARGET_RATIO}x: {'MET' if ratio >= TARGET_RATIO else 'NOT MET'}"
    print(line)
    print(f"{tag} check: max |ours fc7 block - normalised bare fc7| = {r['fc7_diff']:.2e}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="images at --input-size (default 256)")
    parser.add_argument("--input-size", type=int, default=64, help="side of the main comparison (default 64)")
    parser.add_argument("--n-224", type=int, default=32, help="images for the 224x224 figure; 0 skips it (default 32)")
    parser.add_argument("--warmup-224", type=int, default=4, help="images in the 224x224 warm-up call (default 4: a full batch costs ~20 s on 2 cores)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="timed passes of each side; the best is reported (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    model = build_descriptor("none", 0)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; VGG16 random init (seed 0); "
        f"batch {args.batch_size}; best of {args.repeats}, one warm-up batch each (224x224: one pass after a {args.warmup_224}-image warm-up)"
    )
    r = compare(model, args.n, args.input_size, args.batch_size, args.repeats, args.seed)
    report(f"[{args.input_size}x{args.input_size}, N={args.n}]", r, target=True)
    if args.n_224 > 0:
        r = compare(model, args.n_224, 224, args.batch_size, 1, args.seed, warmup=args.warmup_224)
        report(f"[224x224, N={args.n_224}]", r, target=False)


if __name__ == "__main__":
    main()

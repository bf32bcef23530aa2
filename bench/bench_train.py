"""Training images per second of the CVAE-M2 networks: fp32 on the CPU; on CUDA, fp32 against mixed precision.

Run: .venv/bin/python bench/bench_train.py [--batches 8] [--vgg-batches 2] [--warmup 2] [--arch cvae1 ...]
                                           [--cuda-batches 50] [--cuda-warmup 5] [--threads N]

One step is what the training loop (`scenesearch.models.train.train`) does per batch: cut a
batch from uint8 images resident on the device and mirror a random half (the loop's `_batch`),
`model.labelled_loss` (autocast when mixed), the finite-loss check, zero_grad, backward through
the GradScaler, the Adam step, and the `.item()` reads of the loss terms that the loop makes every
batch (a sync point it pays on a GPU). Batch 64 at 64x64, 10 classes, random pixels and labels
(seed 0), Adam lr 1e-3 (TrainConfig's default) and beta 1000 (methods.cvae_m2.beta's default). The loop's CPU setting
(`torch.use_deterministic_algorithms(True, warn_only=True)`) is on for the CPU figures.

Each figure: --warmup steps untimed, then --batches timed steps (--vgg-batches for cvae_vgg,
whose frozen VGG16 trunk is slow on a CPU); images/s = timed images / timed seconds, plus the
median, fastest and slowest step (the spread shows contention on a shared machine).
On CUDA (when `torch.cuda.is_available()`) each architecture runs three times from the same
initial weights, in the same process, one after the other: fp32 (torch's default TF32 settings,
printed), bf16 autocast, fp16 autocast + GradScaler (steps the scaler skipped are counted); the
ratios are mixed / fp32 of that same run. The loss of the first step of each precision (same
weights, batch and noise seed) is printed as a sanity check.
Prints figures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TORCH_HOME", str(ROOT / ".cache" / "torch"))
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

import torch  # noqa: E402

import _machine  # noqa: E402
from scenesearch.config import TrainConfig  # noqa: E402
from scenesearch.methods.cvae_m2 import CVAEConfig  # noqa: E402
from scenesearch.models import ARCHITECTURES, build_model  # noqa: E402
from scenesearch.models.train import _batch  # noqa: E402

N_CLASSES = 10
IMAGE_SIZE = 64
BATCH = 64
POOL = 4 * BATCH  # images resident on the device; batches are drawn from them like the loop does
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def make_data(device: torch.device, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(POOL, 3, 64, 64) uint8 random pixels and (POOL,) labels on `device`."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (POOL, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, N_CLASSES, (POOL,), generator=g)
    return images.to(device), labels.to(device)


def run_steps(arch: str, device: torch.device, precision: str, warmup: int, batches: int, seed: int) -> dict:
    """Build `arch` afresh (seeded), run warmup + timed training steps, return the figures."""
    cfg = TrainConfig()
    images, labels = make_data(device, seed)
    model = build_model(arch, N_CLASSES, IMAGE_SIZE, seed=seed).to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    dtype = PRECISIONS[precision]
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    order = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the reparameterisation noise (CPU and CUDA generators)

    def step() -> tuple[float, bool]:
        idx = torch.randint(0, POOL, (BATCH,), generator=order).to(device)
        flip = torch.rand(BATCH, generator=order) < 0.5
        x = _batch(images, idx, flip, device)
        with torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
            out = model.labelled_loss(x, labels[idx], CVAEConfig().beta)
            loss = out["loss"]
        if not torch.isfinite(loss):
            raise RuntimeError(f"{arch} {precision}: the loss became {loss.item()}")
        optimizer.zero_grad(set_to_none=True)
        scale = scaler.get_scale() if scaler.is_enabled() else 1.0
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        skipped = scaler.is_enabled() and scaler.get_scale() < scale  # the scaler backs off on a skipped step
        values = [out[k].item() for k in ("loss", "rec", "kl", "ce")]
        out["correct"].item()
        return values[0], skipped

    first_loss = math.nan
    for i in range(warmup):
        loss, _ = step()
        if i == 0:
            first_loss = loss
    times, n_skipped = [], 0
    for _ in range(batches):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss, skipped = step()  # .item() inside already waits for the GPU
        times.append(time.perf_counter() - t0)
        n_skipped += skipped
    return {
        "images_per_s": batches * BATCH / sum(times),
        "median_ms": 1e3 * sorted(times)[len(times) // 2],
        "fastest_ms": 1e3 * min(times),
        "slowest_ms": 1e3 * max(times),
        "first_loss": first_loss,
        "skipped": n_skipped,
        "params": sum(p.numel() for p in params),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", action="append", choices=list(ARCHITECTURES), help="architecture (repeatable; default: all)")
    parser.add_argument("--batches", type=int, default=8, help="timed CPU steps per architecture (default 8)")
    parser.add_argument("--vgg-batches", type=int, default=2, help="timed CPU steps for cvae_vgg (default 2)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed CPU steps first (default 2; 1 for cvae_vgg)")
    parser.add_argument("--cuda-batches", type=int, default=50, help="timed CUDA steps per architecture and precision (default 50)")
    parser.add_argument("--cuda-warmup", type=int, default=5, help="untimed CUDA steps first (default 5)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's own)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    archs = args.arch or list(ARCHITECTURES)
    if args.threads:
        torch.set_num_threads(args.threads)

    print(_machine.header(torch))
    print(f"training step: batch {BATCH}, {IMAGE_SIZE}x{IMAGE_SIZE}, {N_CLASSES} classes, labelled_loss + backward + Adam, random pixels (seed {args.seed})")

    cpu = torch.device("cpu")
    print(f"\nCPU fp32 (deterministic algorithms on, as the loop sets on a CPU); warm-up {args.warmup} steps (1 for cvae_vgg)")
    print(f"{'arch':9s} {'trainable':>11s} {'steps':>5s} {'images/s':>9s} {'median':>9s} {'fastest':>9s} {'slowest':>9s}")
    torch.use_deterministic_algorithms(True, warn_only=True)
    for arch in archs:
        vgg = ARCHITECTURES[arch].vgg_encoder
        n, w = (args.vgg_batches, min(args.warmup, 1)) if vgg else (args.batches, args.warmup)
        r = run_steps(arch, cpu, "fp32", w, n, args.seed)
        print(f"{arch:9s} {r['params']:>11,d} {n:>5d} {r['images_per_s']:>9.1f} {r['median_ms']:>7.0f}ms {r['fastest_ms']:>7.0f}ms {r['slowest_ms']:>7.0f}ms")
    torch.use_deterministic_algorithms(False)
    print(f"  1-min load after the CPU runs: {_machine.load_average()}")

    if not torch.cuda.is_available():
        print("\nCUDA: not measured: no CUDA device was present (torch.cuda.is_available() is False), so the mixed-precision comparison (fp32 vs bf16 vs fp16) was not run")
        return

    gpu = torch.device("cuda")
    bf16_ok = torch.cuda.is_bf16_supported()
    print(
        f"\nCUDA {torch.cuda.get_device_name(0)}: warm-up {args.cuda_warmup}, timed {args.cuda_batches} steps each; "
        f"TF32 matmul {torch.backends.cuda.matmul.allow_tf32}, TF32 cuDNN {torch.backends.cudnn.allow_tf32}, cudnn.benchmark {torch.backends.cudnn.benchmark}"
    )
    print(f"{'arch':9s} {'precision':9s} {'images/s':>9s} {'median':>9s} {'fastest':>9s} {'slowest':>9s} {'vs fp32':>8s} {'1st loss':>10s} {'skipped':>7s}")
    for arch in archs:
        base = None
        for precision in PRECISIONS:
            if precision == "bf16" and not bf16_ok:
                print(f"{arch:9s} {precision:9s} not measured: this GPU has no bf16")
                continue
            r = run_steps(arch, gpu, precision, args.cuda_warmup, args.cuda_batches, args.seed)
            base = base or r["images_per_s"]
            skipped = str(r["skipped"]) if precision == "fp16" else "-"
            print(
                f"{arch:9s} {precision:9s} {r['images_per_s']:>9.1f} {r['median_ms']:>7.1f}ms {r['fastest_ms']:>7.1f}ms {r['slowest_ms']:>7.1f}ms "
                f"{r['images_per_s'] / base:>7.2f}x {r['first_loss']:>10.1f} {skipped:>7s}"
            )
        torch.cuda.empty_cache()
    print(f"peak CUDA memory allocated (largest run): {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()

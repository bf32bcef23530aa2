"""Time cvae_scene_distances on 2,000 queries x 1,000 scenes x 13 views (d = 128) against a loop over scenes.

Run: .venv/bin/python bench/bench_distances.py [--queries 2000] [--scenes 1000] [--views 13] [--latent 128]
                                               [--classes 10] [--loop-scenes 50] [--loop-repeats 3] [--repeats 3] [--no-memory]

Ours: `scenesearch.methods.cvae_m2.cvae_scene_distances` (one matmul per (queries x renders) block of
  at most `max_elements`), in its default float64 and with dtype=float32.
Loop: what one writes by hand from the closed forms: for each scene, H_s of every query against
  its 13 views by broadcasting, (Q, 1, d) against (1, V, d), with
  `scenesearch.models.cvae_m2.gaussian_cross_entropy` both ways plus alpha times the symmetrised
  categorical cross-entropy from `log_softmax`, then the min over views; float64.
Encodings: random, seeded (seed 0): mu ~ N(0, 1), logvar ~ U(-4, 1), logits ~ N(0, 3^2),
  float32 like the model's outputs; alpha = 12288 (64 * 64 * 3, the default).

The loop is timed on the first --loop-scenes scenes, best of --loop-repeats passes, and
extrapolated linearly to all scenes (every scene costs the same); ours is timed on that same
slice too, alternating with it, and both are compared there (max abs and relative difference,
same nearest scene). The loop is memory-bound (every op makes a (Q, V, d) float64 temporary), so
its passes vary more than ours on a shared machine: every pass is printed. Ours at full size is
the best of --repeats calls: float64 (default), float32, and float64 with smaller blocks
(the other max_elements of 2^20, 2^22, 2^24), alternating.

Peak memory: torch's CPU allocations are invisible to tracemalloc, so each variant runs in a
fresh subprocess that builds the same inputs, warms up on 2 queries x 2 scenes, resets the
kernel's peak-RSS mark to the current RSS (writing 5 to /proc/self/clear_refs), reads VmRSS,
makes one call and reads the peak (VmHWM); the figure is the peak resident set above the
resident set before the call (every temporary the call touched). Not `ru_maxrss`: a child
started by fork + exec inherits its parent's peak in it, which hides everything below the
parent's own peak.
Prints figures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TORCH_HOME", str(ROOT / ".cache" / "torch"))
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

import torch  # noqa: E402

import _machine  # noqa: E402
from scenesearch.models.cvae_m2 import gaussian_cross_entropy  # noqa: E402
from scenesearch.methods.cvae_m2 import cvae_scene_distances  # noqa: E402

ALPHA = 64 * 64 * 3
DEFAULT_MAX_ELEMENTS = inspect.signature(cvae_scene_distances).parameters["max_elements"].default
MEMORY_MAX_ELEMENTS = (1 << 20, 1 << 22, 1 << 24)


def make_inputs(n_q: int, n_s: int, n_v: int, d: int, c: int, seed: int) -> tuple[torch.Tensor, ...]:
    """(q_mu, q_logvar, q_logits, s_mu, s_logvar, s_logits): (Q, d), (Q, d), (Q, C), (S, V, d), (S, V, d), (S, V, C) float32."""
    g = torch.Generator().manual_seed(seed)

    def encodings(*lead: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu = torch.randn((*lead, d), generator=g)
        logvar = torch.rand((*lead, d), generator=g) * 5.0 - 4.0
        logits = torch.randn((*lead, c), generator=g) * 3.0
        return mu, logvar, logits

    return (*encodings(n_q), *encodings(n_s, n_v))


def loop_distances(q_mu, q_logvar, q_logits, s_mu, s_logvar, s_logits, alpha: float = ALPHA) -> torch.Tensor:
    """The straightforward baseline: a Python loop over scenes, broadcasting inside; float64.

    Returns:
        (Q, S) float32, like cvae_scene_distances.
    """
    f64 = torch.float64
    q_mu, q_lv = q_mu.to(f64)[:, None, :], q_logvar.to(f64)[:, None, :]  # (Q, 1, d)
    log_pq = torch.log_softmax(q_logits.to(f64), dim=-1)[:, None, :]  # (Q, 1, C)
    out = torch.empty((len(q_mu), len(s_mu)), dtype=torch.float32)
    for s in range(len(s_mu)):
        mu, lv = s_mu[s].to(f64)[None], s_logvar[s].to(f64)[None]  # (1, V, d)
        log_ps = torch.log_softmax(s_logits[s].to(f64), dim=-1)[None]  # (1, V, C)
        gauss = gaussian_cross_entropy(q_mu, q_lv, mu, lv) + gaussian_cross_entropy(mu, lv, q_mu, q_lv)  # (Q, V)
        categorical = -(log_pq.exp() * log_ps).sum(dim=-1) - (log_ps.exp() * log_pq).sum(dim=-1)  # (Q, V)
        out[:, s] = (gauss + alpha * categorical).amin(dim=1).float()
    return out


def interleaved(runners: dict, repeats: int) -> tuple[dict[str, list[float]], dict]:
    """Wall times of each runner over `repeats` rounds, the runners alternating; the last outputs."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    outputs = {}
    for _ in range(repeats):
        for name, fn in runners.items():
            start = time.perf_counter()
            outputs[name] = fn()
            times[name].append(time.perf_counter() - start)
    return times, outputs


def differences(ref: torch.Tensor, other: torch.Tensor) -> str:
    """Max abs and relative difference and the share of queries with the same nearest scene."""
    ref, other = ref.double(), other.double()
    abs_diff = (ref - other).abs()
    rel = (abs_diff / ref.abs().clamp_min(1e-12)).max().item()
    same = (ref.argmin(dim=1) == other.argmin(dim=1)).double().mean().item()
    return f"max abs diff {abs_diff.max().item():.3g}, max rel diff {rel:.2e}, same nearest scene for {100 * same:.2f}% of queries"


# ------------------------------------------------------------------------------------------
# peak memory: one fresh process per variant
# ------------------------------------------------------------------------------------------


def child(spec: dict) -> None:
    """Run one variant in this (fresh) process and print its figures as one JSON line."""
    inputs = make_inputs(spec["queries"], spec["scenes"], spec["views"], spec["latent"], spec["classes"], spec["seed"])
    dtype = getattr(torch, spec["dtype"])
    if spec["kind"] == "loop":
        inputs = (*inputs[:3], *(t[: spec["loop_scenes"]] for t in inputs[3:]))
        fn = lambda *x: loop_distances(*x)  # noqa: E731
    else:
        fn = lambda *x: cvae_scene_distances(*x, max_elements=spec["max_elements"], dtype=dtype)  # noqa: E731
    fn(*(t[:2] for t in inputs))  # warm-up: lazy initialisation, thread pools
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS (Linux >= 4.0)
    before = proc_status_kib("VmRSS")
    start = time.perf_counter()
    fn(*inputs)
    seconds = time.perf_counter() - start
    peak = proc_status_kib("VmHWM")
    print(json.dumps({"peak_growth_mib": (peak - before) / 1024, "peak_rss_mib": peak / 1024, "seconds": seconds}))


def proc_status_kib(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure_memory(spec: dict) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    p = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


def block_elements(n_q: int, n_s: int, n_v: int, max_elements: int) -> tuple[int, int]:
    """(q_block, s_block) exactly as cvae_scene_distances chooses them."""
    q_block = max(1, min(n_q, max_elements // n_v))
    return q_block, max(1, max_elements // (q_block * n_v))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--scenes", type=int, default=1000)
    parser.add_argument("--views", type=int, default=13)
    parser.add_argument("--latent", type=int, default=128, help="d (default 128)")
    parser.add_argument("--classes", type=int, default=10, help="C (default 10)")
    parser.add_argument("--loop-scenes", type=int, default=50, help="scenes the loop is timed on, then extrapolated (default 50)")
    parser.add_argument("--loop-repeats", type=int, default=3, help="passes of the loop over those scenes; the best is reported (default 3)")
    parser.add_argument("--repeats", type=int, default=3, help="full-size calls of each variant; the best is reported (default 3)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's own)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: one memory variant as JSON
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        child(json.loads(args.child))
        return

    n_q, n_s, n_v, d, c = args.queries, args.scenes, args.views, args.latent, args.classes
    k = 5 * d + 2 * c  # width of the matmul features
    print(_machine.header(torch))
    print(
        f"cvae_scene_distances: {n_q} queries x {n_s} scenes x {n_v} views, d={d}, C={c}, alpha={ALPHA}; "
        f"random float32 encodings (seed {args.seed}); {n_q * n_s * n_v / 1e6:.0f}M query-view pairs, "
        f"matmul width {k} ({2 * n_q * n_s * n_v * k / 1e9:.0f} GFLOP)"
    )
    inputs = make_inputs(n_q, n_s, n_v, d, c, args.seed)
    for dtype in (torch.float64, torch.float32):  # warm-up: lazy initialisation, thread pools
        cvae_scene_distances(*(t[:2] for t in inputs), dtype=dtype)
        loop_distances(*(t[:2] for t in inputs))

    # full size: ours, float64 (default) and float32, and float64 with smaller blocks
    runners = {
        "float64": lambda: cvae_scene_distances(*inputs),
        "float32": lambda: cvae_scene_distances(*inputs, dtype=torch.float32),
    }
    for e in MEMORY_MAX_ELEMENTS:
        if e != DEFAULT_MAX_ELEMENTS:
            runners[f"float64, max_elements=2^{e.bit_length() - 1}"] = lambda e=e: cvae_scene_distances(*inputs, max_elements=e)
    times, out = interleaved(runners, args.repeats)
    best = {name: min(t) for name, t in times.items()}
    print(f"\nours, all {n_s} scenes, best of {args.repeats} calls (the variants alternating):")
    for name, t in times.items():
        e = DEFAULT_MAX_ELEMENTS if name in ("float64", "float32") else int(2 ** int(name.rsplit("^", 1)[1]))
        q_block, s_block = block_elements(n_q, n_s, n_v, e)
        n_blocks = math.ceil(n_q / q_block) * math.ceil(n_s / s_block)
        label = f"{name}, max_elements=2^{e.bit_length() - 1} (default)" if e == DEFAULT_MAX_ELEMENTS else name
        print(
            f"  {label:38s} {best[name]:.2f} s (measured; calls {', '.join(f'{x:.2f}' for x in t)}), "
            f"{2 * n_q * n_s * n_v * k / best[name] / 1e9:.1f} GFLOP/s, {n_blocks} blocks of {q_block} queries x {min(s_block, n_s)} scenes"
        )
    print(f"  float32 against float64: {differences(out['float64'], out['float32'])}")

    # the slice: the loop, and ours on the same scenes
    m = min(args.loop_scenes, n_s)
    sliced = (*inputs[:3], *(t[:m] for t in inputs[3:]))
    times, out_slice = interleaved(
        {
            "loop": lambda: loop_distances(*sliced),
            "float64": lambda: cvae_scene_distances(*sliced),
            "float32": lambda: cvae_scene_distances(*sliced, dtype=torch.float32),
        },
        args.loop_repeats,
    )
    best_slice = {name: min(t) for name, t in times.items()}
    loop_s = best_slice["loop"]
    print(f"\nloop over scenes, first {m} scenes: {loop_s:.2f} s (measured, best of {args.loop_repeats} passes: {', '.join(f'{x:.2f}' for x in times['loop'])} s)")
    print(f"  ours on the same {m} scenes: float64 {best_slice['float64']:.3f} s, float32 {best_slice['float32']:.3f} s (measured, best of {args.loop_repeats}, alternating with the loop)")
    print(f"  ratio loop / ours on the slice: {loop_s / best_slice['float64']:.1f}x (float64), {loop_s / best_slice['float32']:.1f}x (float32)")
    print(f"  ours float64 against the loop: {differences(out_slice['loop'], out_slice['float64'])}")
    print(f"  ours float32 against the loop: {differences(out_slice['loop'], out_slice['float32'])}")
    loop_full = loop_s * n_s / m
    extrapolated = "measured" if m == n_s else f"EXTRAPOLATED x{n_s / m:g} from {m} scenes"
    print(f"loop over scenes, all {n_s} scenes: {loop_full:.1f} s ({extrapolated})")
    print(
        f"speed-up of ours over the loop at full size: {loop_full / best['float64']:.1f}x (float64), "
        f"{loop_full / best['float32']:.1f}x (float32) (extrapolated loop / measured ours)"
    )
    print(f"  1-min load after the timings: {_machine.load_average()}")

    if args.no_memory:
        return
    base = {"queries": n_q, "scenes": n_s, "views": n_v, "latent": d, "classes": c, "seed": args.seed}
    fixed_mib = n_s * n_v * k * 8 / 2**20
    print(
        f"\npeak memory, one fresh process per variant (peak RSS during one call above the RSS before it, after a tiny warm-up call); "
        f"inputs {sum(t.numel() for t in inputs) * 4 / 2**20:.1f} MiB float32, built before"
    )
    print(f"  every variant of ours also holds the scene-side matmul features, S*V*(5d+2C) = {n_s * n_v}x{k}: {fixed_mib:.0f} MiB in float64 ({fixed_mib / 2:.0f} MiB in float32)")
    print(f"  {'variant':24s} {'max_elements':>12s} {'blocks':>6s} {'block':>15s} {'peak growth':>12s} {'seconds':>8s}")
    variants = [("ours float64", {"kind": "ours", "dtype": "float64", "max_elements": e}) for e in MEMORY_MAX_ELEMENTS]
    variants.append(("ours float64, one block", {"kind": "ours", "dtype": "float64", "max_elements": n_q * n_s * n_v}))
    variants.append(("ours float32", {"kind": "ours", "dtype": "float32", "max_elements": DEFAULT_MAX_ELEMENTS}))
    variants.append((f"loop, first {m} scenes", {"kind": "loop", "dtype": "float64", "max_elements": 0, "loop_scenes": m}))
    growth = {}
    for label, spec in variants:
        r = measure_memory({**base, **spec})
        e = spec["max_elements"]
        if spec["kind"] == "ours":
            qb, sb = block_elements(n_q, n_s, n_v, e)
            blocks = str(math.ceil(n_q / qb) * math.ceil(n_s / sb))
            elems = qb * min(sb, n_s) * n_v
            block = f"{elems * getattr(torch, spec['dtype']).itemsize / 2**20:.0f} MiB"
            size = f"2^{e.bit_length() - 1}" if e & (e - 1) == 0 else f"{e:,d}"
            if spec["dtype"] == "float64" and e in MEMORY_MAX_ELEMENTS:
                growth[elems] = r["peak_growth_mib"]
        else:
            size, blocks, block = "-", "-", f"{n_q * n_v * d * 8 / 2**20:.0f} MiB a temp"
        print(f"  {label:24s} {size:>12s} {blocks:>6s} {block:>15s} {r['peak_growth_mib']:>8.0f} MiB {r['seconds']:>8.2f}")
    print("  (seconds: that one call in a fresh process, first touch of every page included)")
    if len(growth) >= 2:
        (e0, g0), (e1, g1) = min(growth.items()), max(growth.items())
        slope = (g1 - g0) * 2**20 / (e1 - e0)
        print(
            f"  peak growth rises {slope:.1f} bytes per block element between the smallest and the default block "
            f"(a float64 block is 8 bytes per element); extrapolated to a zero block: {g0 - slope * e0 / 2**20:.0f} MiB"
        )


if __name__ == "__main__":
    main()

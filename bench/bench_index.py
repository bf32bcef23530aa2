"""Time searching 10^5 and 10^6 gallery views (d = 128, 512) for the top 100 by cosine: exact NumPy, FAISS flat, FAISS IVF-PQ.

Run: .venv/bin/python bench/bench_index.py [--sizes 100000 1000000] [--dims 128 512] [--queries 1000]
                                           [--numpy-queries 1000] [--k 100] [--nprobes 8 16 32 64 128]
                                           [--reranks 2 4 8] [--spread 0.5] [--noise 0.2] [--seed 0]

Kinds (`scenesearch.index.ViewIndex`, `retrieve.index`):
  exact-numpy  the peer: brute force, one float32 matmul per block of queries (2^26 similarities)
               plus argpartition and a sort of the top k; exact.
  flat         faiss.IndexFlatIP; exact, so its ids are the ground truth of every recall figure
               (checked against exact-numpy on the queries both ran).
  ivfpq        faiss.IndexIVFPQ, inner product, nlist = default_nlist(n) cells trained on a seeded
               sample of <= 100,000 views, m = default_m(d) 8-bit sub-quantisers; swept over nprobe,
               with PQ similarities alone (rerank 0) and with exact re-ranking of the top
               rerank * k PQ candidates (faiss.IndexRefineFlat, which keeps a float copy of the views).
Plain k-NN on single descriptors: no diffusion, query expansion or other re-ranking.

Views: a clustered mixture on the unit sphere, so structure exists like real descriptors: 1000
  cluster centres uniform on the sphere; each cluster spans 16 random directions (Gaussian,
  norm about 1 each) with N(0, 0.5^2 / 16) coefficients (an offset of norm about 0.5 from the
  centre; --spread), plus isotropic Gaussian noise of norm about 0.2 (--noise); every row then
  L2-normalised; rows per cluster multinomial (uniform). Queries: fresh draws
  from the same mixture. float32, seeded (--seed).
Figures: queries/s = queries / wall seconds of one search call over all of them (after a warm-up
  on 10 queries); exact-numpy searches the first --numpy-queries queries only. recall@k =
  |found top k ∩ exact top k| / k, averaged over queries. build = wall seconds from the raw rows to
  a searchable index (normalising, training, adding). Memory: peak resident set growth during the
  build (the kernel's peak-RSS mark reset to the current RSS before, via /proc/self/clear_refs)
  and resident growth kept after it, beside ViewIndex.nbytes(): raw float32 views, or for ivfpq
  codes + ids + centroid tables (+ the raw copy when re-ranking).
Prints figures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

import faiss  # noqa: E402
import numpy as np  # noqa: E402

import _machine  # noqa: E402
from scenesearch.index import ViewIndex, default_m, default_nlist  # noqa: E402

N_CLUSTERS, RANK = 1000, 16
GOAL_SPEEDUP, GOAL_RECALL = 10.0, 0.9


def clustered_views(n: int, d: int, seed: int, n_queries: int, spread: float = 0.5, noise: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """(views (n, d), queries (n_queries, d)) float32 unit rows from the mixture in the module docstring."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((N_CLUSTERS, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    basis = (rng.standard_normal((N_CLUSTERS, RANK, d)) / np.sqrt(d)).astype(np.float32)

    def draw(m: int, r: np.random.Generator, shuffle: bool) -> np.ndarray:
        out = np.empty((m, d), dtype=np.float32)
        counts = r.multinomial(m, np.full(N_CLUSTERS, 1.0 / N_CLUSTERS))
        start = 0
        for c, n_c in enumerate(counts):  # one cluster's rows at a time bounds the temporaries
            z = r.standard_normal((n_c, RANK), dtype=np.float32) * (spread / np.sqrt(RANK))
            jitter = r.standard_normal((n_c, d), dtype=np.float32) * (noise / np.sqrt(d))
            out[start : start + n_c] = centres[c] + z @ basis[c] + jitter
            start += n_c
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out[r.permutation(m)] if shuffle else out

    # views stay grouped by cluster (no kind depends on their order; a shuffle would copy 2 GB)
    return draw(n, rng, False), draw(n_queries, np.random.default_rng(seed + 1), True)


def proc_status_kib(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def build(views: np.ndarray, kind: str, **kwargs) -> tuple[ViewIndex, float, float, float]:
    """(index, build seconds, peak RSS growth MiB, kept RSS growth MiB)."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS (Linux >= 4.0)
    before = proc_status_kib("VmRSS")
    start = time.perf_counter()
    index = ViewIndex(views, kind, **kwargs)
    seconds = time.perf_counter() - start
    gc.collect()
    return index, seconds, (proc_status_kib("VmHWM") - before) / 1024, (proc_status_kib("VmRSS") - before) / 1024


def timed_search(index: ViewIndex, queries: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """(ids (Q, k), queries per second of one call), after a warm-up on 10 queries."""
    index.search(queries[:10], k)
    start = time.perf_counter()
    _, ids = index.search(queries, k)
    return ids, len(queries) / (time.perf_counter() - start)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(np.intersect1d(f, t)) / k for f, t in zip(found, truth)]))


def header() -> str:
    try:
        from threadpoolctl import threadpool_info

        blas = ", ".join(f"{i['internal_api']} {i['num_threads']} threads" for i in threadpool_info() if i["user_api"] == "blas")
    except ImportError:
        blas = "BLAS threads unknown"
    return (
        f"machine: {os.cpu_count()} CPUs ({platform.machine()}), 1-min load {_machine.load_average()}; python {platform.python_version()}, "
        f"numpy {np.__version__} ({blas}), faiss {faiss.__version__} ({faiss.omp_get_max_threads()} OpenMP threads)"
    )


def run_case(n: int, d: int, args: argparse.Namespace) -> dict:
    k = args.k
    t0 = time.perf_counter()
    views, queries = clustered_views(n, d, args.seed, args.queries, args.spread, args.noise)
    nq_np = min(args.numpy_queries, len(queries))
    print(f"\n=== n = {n:,d} views, d = {d}, {len(queries)} queries, k = {k} (views generated in {time.perf_counter() - t0:.1f} s; {views.nbytes / 2**20:.0f} MiB float32)")
    print(f"  {'kind':34s} {'build s':>8s} {'peak MiB':>9s} {'kept MiB':>9s} {'nbytes MiB':>10s} {'queries/s':>10s} {'recall@' + str(k):>10s} {'x numpy':>8s}")

    def row(label, b_s, peak, kept, nbytes, qps, rec, ratio):
        f = lambda v, spec: format(v, spec) if v is not None else format("-", ">" + spec.split(".")[0])  # noqa: E731
        print(f"  {label:34s} {f(b_s, '8.1f')} {f(peak, '9.0f')} {f(kept, '9.0f')} {f(nbytes, '10.0f')} {qps:10.1f} {f(rec, '10.3f')} {f(ratio, '8.1f')}")

    index, b_s, peak, kept = build(views, "exact-numpy")
    ids_np, qps_np = timed_search(index, queries[:nq_np], k)
    row(f"exact-numpy ({nq_np} queries)", b_s, peak, kept, index.nbytes() / 2**20, qps_np, 1.0, 1.0)
    del index
    index, b_s, peak, kept = build(views, "flat")
    truth, qps_flat = timed_search(index, queries, k)
    sims, _ = index.search(queries, k)
    row("flat (IndexFlatIP)", b_s, peak, kept, index.nbytes() / 2**20, qps_flat, 1.0, qps_flat / qps_np)
    del index
    agree = recall(ids_np, truth[:nq_np])
    rerank_max = max(args.reranks) if args.reranks else 0
    index, b_s, peak, kept = build(views, "ivfpq", seed=args.seed, rerank=rerank_max)
    raw_mib = n * d * 4 / 2**20
    codes_mib = index.nbytes() / 2**20 - (raw_mib if rerank_max else 0)
    print(
        f"  ivfpq: nlist {index.nlist}, m {index.m} x 8 bits ({index.m} B/view codes + 8 B id), trained on {index.train_rows:,d} views; "
        f"one build (with the raw copy{' for re-ranking' if rerank_max else ''}): {b_s:.1f} s, peak +{peak:.0f} MiB, kept +{kept:.0f} MiB"
    )
    best = None
    for rerank in [0, *sorted(args.reranks)]:
        index.set_rerank(rerank)
        mib = codes_mib + (raw_mib if rerank else 0)
        for nprobe in args.nprobes:
            index.set_nprobe(nprobe)
            ids, qps = timed_search(index, queries, k)
            rec = recall(ids, truth)
            label = f"ivfpq nprobe {nprobe}" + (f", rerank {rerank}x{k}" if rerank else "")
            row(label, None, None, None, mib, qps, rec, qps / qps_np)
            if rec >= GOAL_RECALL and (best is None or qps > best[1]):
                best = (label, qps, rec, mib)
    del index
    print(f"  flat against exact-numpy on {nq_np} queries: recall@{k} {agree:.4f} (1.0 = same top {k})")
    print(f"  exact cosine of a query's 1st / 10th / {k}th view, mean over queries: {sims[:, 0].mean():.3f} / {sims[:, min(9, k - 1)].mean():.3f} / {sims[:, -1].mean():.3f}")
    print(f"  memory: raw float32 views {raw_mib:.0f} MiB; ivfpq codes + ids + centroids {codes_mib:.0f} MiB ({raw_mib / codes_mib:.1f}x smaller); re-ranking adds the raw copy")
    if best:
        label, qps, rec, mib = best
        met = "MET" if qps / qps_np >= GOAL_SPEEDUP else "NOT met"
        print(f"  fastest ivfpq at recall@{k} >= {GOAL_RECALL}: {label}: {qps:.0f} q/s = {qps / qps_np:.1f}x exact-numpy (recall {rec:.3f}, {mib:.0f} MiB) -> goal {GOAL_SPEEDUP:.0f}x {met}")
    else:
        print(f"  no ivfpq setting reached recall@{k} >= {GOAL_RECALL} -> goal NOT met")
    print(f"  1-min load after the case: {_machine.load_average()}")
    return {"n": n, "d": d, "best": best, "qps_np": qps_np}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--numpy-queries", type=int, default=1000, help="queries the exact NumPy peer searches (default 1000)")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--nprobes", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    parser.add_argument("--reranks", type=int, nargs="*", default=[2, 4, 8], help="ivfpq shortlist factors to re-rank exactly (default 2 4 8; none: PQ only)")
    parser.add_argument("--spread", type=float, default=0.5, help="norm of a view's offset from its cluster centre (default 0.5; larger is harder)")
    parser.add_argument("--noise", type=float, default=0.2, help="norm of the isotropic noise (default 0.2)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    print(header())
    print(
        f"views: {N_CLUSTERS} clusters on the sphere, offsets of norm ~{args.spread} along {RANK} directions per cluster, noise norm ~{args.noise}; "
        f"ivfpq defaults: nlist = default_nlist(n) (e.g. {default_nlist(10**6)} at 10^6), m = default_m(d) (e.g. {default_m(128)} at d=128, {default_m(512)} at d=512)"
    )
    results = [run_case(n, d, args) for n in args.sizes for d in args.dims]
    print(f"\ngoal: ivfpq >= {GOAL_SPEEDUP:.0f}x exact-numpy queries/s at recall@{args.k} >= {GOAL_RECALL} (on 10^6 views)")
    for r in results:
        b = r["best"]
        verdict = "no setting reached the recall" if b is None else f"{b[0]}: {b[1] / r['qps_np']:.1f}x at recall {b[2]:.3f}, {b[3]:.0f} MiB"
        met = b is not None and b[1] / r["qps_np"] >= GOAL_SPEEDUP
        print(f"  n {r['n']:>9,d}, d {r['d']:>3d}: {'MET' if met else 'NOT met'} ({verdict})")


if __name__ == "__main__":
    main()

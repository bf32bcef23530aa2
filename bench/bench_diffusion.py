"""Diffusion re-ranking: seconds per query and peak memory against the gallery size.

Run: .venv/bin/python bench/bench_diffusion.py [--views 1300 13000 130000 1300000] [--dim 128] [--queries 20]
                                              [--truncate 200] [--dense-max 6500]

Ours: `scenesearch.rerank.diffusion_distances` (truncated to the query's `--truncate` nearest views,
k = 10, gamma = 3, alpha = 0.99, CG). Peers in the same run: the plain min-view cosine scorer
(`scenesearch.distances.min_view_cosine_distances`, what diffusion adds to) and, up to
`--dense-max` views, diffusion over the whole gallery graph (k-NN affinity of every view, sparse,
one CG solve per query on the n x n system: what the truncation avoids; building its k-NN graph
needs the n x n similarities, done here in blocks).
Gallery: `--views` / 13 scenes x 13 views, d = `--dim`, a clustered mixture on the sphere (seed 0):
100 unit centres, views = centre + Gaussian noise of norm about 0.35, normalised; queries drawn the same way.
Peak memory: the resident-set peak (VmHWM) above the resident set before the call, after resetting
the peak mark (writing 5 to /proc/self/clear_refs). Prints figures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TORCH_HOME", str(ROOT / ".cache" / "torch"))
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

import numpy as np  # noqa: E402
import torch  # noqa: E402

import _machine  # noqa: E402
from scenesearch.distances import min_view_cosine_distances  # noqa: E402
from scenesearch.rerank import diffusion_distances  # noqa: E402

VIEWS = 13


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    return 0


def measure(fn):
    """(seconds, peak bytes above the resident set before the call, result)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    before = _status("VmRSS:")
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, max(_status("VmHWM:") - before, 0), out


def make(n: int, d: int, centres: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    x = centres[rng.integers(len(centres), size=n)] + rng.normal(0, 0.35 / np.sqrt(d), (n, d)).astype(np.float32)
    return torch.from_numpy((x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32))


def dense_diffusion(queries: torch.Tensor, gallery: torch.Tensor, k: int = 10, alpha: float = 0.99, gamma: float = 3.0) -> np.ndarray:
    """Diffusion over the whole gallery's mutual k-NN graph (the untruncated form): view scores (Q, n)."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import cg

    v = torch.nn.functional.normalize(gallery.reshape(-1, gallery.shape[-1]), dim=1)
    n = len(v)
    rows, cols, vals = [], [], []
    for start in range(0, n, 2048):  # k-NN of every view, in blocks of the n x n similarities
        s = v[start : start + 2048] @ v.T
        s[torch.arange(len(s)), torch.arange(start, start + len(s))] = -1.0
        top = s.topk(k, dim=1)
        rows.append(np.repeat(np.arange(start, start + len(s)), k))
        cols.append(top.indices.reshape(-1).numpy())
        vals.append(top.values.clamp_min(0).pow(gamma).reshape(-1).numpy())
    a = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    a = a.minimum(a.T)  # mutual neighbours, as ours
    deg = np.asarray(a.sum(axis=1)).ravel()
    inv = sp.diags(np.where(deg > 0, 1 / np.sqrt(np.maximum(deg, 1e-12)), 0.0))
    system = sp.identity(n) - alpha * (inv @ a @ inv)
    out = []
    for q in torch.nn.functional.normalize(queries, dim=1):
        s = (v @ q).numpy()
        y = np.zeros(n)
        top = np.argsort(-s)[:k]
        y[top] = np.maximum(s[top], 0) ** gamma
        out.append(cg(system, y, x0=y, rtol=1e-6, maxiter=20)[0])
    return np.stack(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--views", type=int, nargs="+", default=[1300, 13000, 130000, 1300000])
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--queries", type=int, default=20)
    p.add_argument("--truncate", type=int, default=200)
    p.add_argument("--dense-max", type=int, default=6500)
    a = p.parse_args()
    print(_machine.header(torch))
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(100, a.dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    queries = make(a.queries, a.dim, centres, rng)
    print(f"{a.queries} queries, d = {a.dim}, truncate {a.truncate}, k 10, gamma 3, alpha 0.99; per query seconds (peak MB above the start)")
    print("| gallery views | diffusion (ours, truncated) | plain cosine | ratio | diffusion over the whole graph |")
    print("|---|---|---|---|---|")
    for n in a.views:
        gallery = make(n, a.dim, centres, rng).reshape(n // VIEWS, VIEWS, a.dim)
        diffusion_distances(queries[:2], gallery[:50], truncate=a.truncate)  # warm-up
        t_d, m_d, _ = measure(lambda: diffusion_distances(queries, gallery, truncate=a.truncate))
        t_p, m_p, _ = measure(lambda: min_view_cosine_distances(queries, gallery))
        dense = "skipped (n > --dense-max)"
        if n <= a.dense_max:
            t_g, m_g, _ = measure(lambda: dense_diffusion(queries, gallery))
            dense = f"{t_g / a.queries:.4f} s ({m_g / 2**20:.0f} MB)"
        print(f"| {n:,} | {t_d / a.queries:.4f} s ({m_d / 2**20:.0f} MB) | {t_p / a.queries:.5f} s ({m_p / 2**20:.0f} MB) | "
              f"{t_d / max(t_p, 1e-12):.1f}x | {dense} |", flush=True)


if __name__ == "__main__":
    main()

"""Retrieval: a (queries x scenes) distance matrix per method, and the retrieve step.

Methods are a registry (name -> function of the step's inputs); a new method is one entry.
The VGG baseline scores a query against a scene as the smallest cosine distance between the
query descriptor and any of the scene's views (and their flips).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import pyarrow as pa

from scenesearch import storage
from scenesearch.errors import DataError

if TYPE_CHECKING:  # torch is imported where it is used, so loading a config never pays for it
    import torch


def min_view_cosine_distances(queries: torch.Tensor, scenes: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """D[q, s] = min over views v of 1 - cos(queries[q], scenes[s, v]).

    Args:
        queries: (Q, d).
        scenes: (S, V, d); every scene has the same number of views V.
        chunk: scenes per block, bounding memory at Q * chunk * V floats.

    Returns:
        (Q, S) float32 tensor on the inputs' device.
    """
    import torch
    q = torch.nn.functional.normalize(queries.float(), dim=1)
    s = torch.nn.functional.normalize(scenes.float(), dim=2)
    out = torch.empty((len(q), len(s)), dtype=torch.float32, device=q.device)
    for start in range(0, len(s), chunk):
        block = s[start : start + chunk]  # (c, V, d)
        sims = torch.einsum("qd,cvd->qcv", q, block)  # (Q, c, V)
        out[:, start : start + chunk] = 1.0 - sims.amax(dim=2)
    return out


def cvae_scene_distances(
    q_mu: torch.Tensor,
    q_logvar: torch.Tensor,
    q_logits: torch.Tensor,
    s_mu: torch.Tensor,
    s_logvar: torch.Tensor,
    s_logits: torch.Tensor,
    alpha: float = 12288.0,
    max_elements: int = 1 << 22,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """D(x*, S) = min over renders r of H_s(q(z|x*), q(z|x_r)) + alpha * H_s(q(y|x*), q(y|x_r)).

    H_s(p, q) = H(p, q) + H(q, p), the symmetrised cross-entropy. For diagonal Gaussians every
    pairwise term is a product of per-row features, so one matmul per block gives the whole
    (queries x renders) block: H_s = 0.5 * (A @ B^T + c_a + c_b + 2 d log 2 pi) with
    A = [v_a, 1/v_a, m_a^2, -2 m_a/v_a, -2 m_a],  B = [1/v_b, v_b + m_b^2, 1/v_b, m_b, m_b/v_b],
    c = sum(logvar + m^2/v); the categorical term adds [p_a, log p_a] @ [log p_b, p_b]^T
    (log-softmax, so never log 0). The expansion of (m_a - m_b)^2 cancels, so the default
    dtype is float64.

    Args:
        q_mu, q_logvar: (Q, d); q_logits: (Q, C).
        s_mu, s_logvar: (S, V, d); s_logits: (S, V, C) with V renders per scene (13, or 26 with flips).
        alpha: weight of the class term (64*64*3 in the paper: the pixel count).
        max_elements: bound on the (queries x renders) block held at once.
        dtype: compute dtype (default float64).

    Returns:
        (Q, S) tensor (float32) on the inputs' device.
    """
    import torch

    dtype = dtype or torch.float64
    n_q, (n_s, n_v, d) = len(q_mu), s_mu.shape

    def moments(mu, logvar, logits):
        mu, logvar = mu.to(dtype), logvar.to(dtype)
        log_p = torch.log_softmax(logits.to(dtype), dim=-1)
        v, inv = logvar.exp(), torch.exp(-logvar)
        return mu, v, inv, log_p, log_p.exp(), 0.5 * (logvar + mu.square() * inv).sum(dim=-1)

    # the query side only needs A, the scene side only B: never build the other (it is the big one for scenes)
    mu, v, inv, log_p, p, qc = moments(q_mu, q_logvar, q_logits)
    qa = torch.cat([0.5 * v, 0.5 * inv, 0.5 * mu.square(), -mu * inv, -mu, -alpha * p, -alpha * log_p], dim=-1)  # (Q, k)
    mu, v, inv, log_p, p, sc = moments(s_mu.reshape(n_s * n_v, d), s_logvar.reshape(n_s * n_v, d), s_logits.reshape(n_s * n_v, -1))
    sb = torch.cat([inv, v + mu.square(), inv, mu, mu * inv, log_p, p], dim=-1).view(n_s, n_v, -1)
    del mu, v, inv, log_p, p
    sc = sc.view(n_s, n_v)
    out = torch.empty((n_q, n_s), dtype=torch.float32, device=q_mu.device)
    q_block = max(1, min(n_q, max_elements // n_v))
    s_block = max(1, max_elements // (q_block * n_v))
    for q0 in range(0, n_q, q_block):
        a, ca = qa[q0 : q0 + q_block], qc[q0 : q0 + q_block]
        for s0 in range(0, n_s, s_block):
            b, cb = sb[s0 : s0 + s_block], sc[s0 : s0 + s_block]  # (c, V, k), (c, V)
            block = torch.einsum("qk,cvk->qcv", a, b) + cb.unsqueeze(0)  # (q, c, V)
            out[q0 : q0 + q_block, s0 : s0 + s_block] = (block.amin(dim=2) + ca.unsqueeze(1) + d * LOG_2PI).float()
    return out


LOG_2PI = 1.8378770664093453  # log(2 pi); the constant of both Gaussian cross-entropies


@dataclass(frozen=True)
class RetrievalInputs:
    """Features arranged for retrieval: query rows and, per scene, all its view rows."""

    query_feats: np.ndarray  # (Q, d)
    scene_feats: np.ndarray  # (S, V, d)
    queries: dict  # columns item_id, label, split
    scenes: dict  # columns item_id, label, split


def arrange(features: np.ndarray, index: dict) -> RetrievalInputs:
    """Split the feature rows into unflipped query photos and per-scene view stacks.

    Raises:
        DataError: no queries, no scenes, or scenes with different view counts.
    """
    domain = np.asarray(index["domain"])
    flip = np.asarray(index["flip"])
    q_rows = np.flatnonzero((domain == "query") & ~flip)
    s_rows = np.flatnonzero(domain == "scene")
    if len(q_rows) == 0 or len(s_rows) == 0:
        raise DataError(f"retrieval needs queries and scenes, got {len(q_rows)} queries and {len(s_rows)} scene views")
    ids = np.asarray(index["item_id"])
    scene_ids, first = np.unique(ids[s_rows], return_index=True)
    scene_ids = scene_ids[np.argsort(first)]  # keep the manifest's order
    groups = [s_rows[ids[s_rows] == sid] for sid in scene_ids]
    if len({len(g) for g in groups}) != 1:
        raise DataError("every scene must have the same number of views for retrieval")

    def cols(rows: np.ndarray) -> dict:
        return {c: np.asarray(index[c])[rows].tolist() for c in ("item_id", "label", "split")}

    return RetrievalInputs(features[q_rows], np.stack([features[g] for g in groups]), cols(q_rows), cols(np.array([g[0] for g in groups])))


def vgg_baseline(inputs: RetrievalInputs, seed: int) -> np.ndarray:
    import torch

    return min_view_cosine_distances(torch.from_numpy(inputs.query_feats), torch.from_numpy(inputs.scene_feats)).numpy()


def random_baseline(inputs: RetrievalInputs, seed: int) -> np.ndarray:
    from scenesearch.evaluation import random_distances

    return random_distances(len(inputs.query_feats), len(inputs.scene_feats), seed)


METHODS: dict[str, Callable[[RetrievalInputs, int], np.ndarray]] = {
    "vgg_baseline": vgg_baseline,
    "random": random_baseline,
}


@dataclass(frozen=True)
class RetrieveResult:
    methods: tuple[str, ...]
    n_queries: int
    n_scenes: int

    def metrics(self) -> dict[str, float]:
        return {"n_queries": self.n_queries, "n_scenes": self.n_scenes}


def run(features_dir: str, out_dir: str, methods: tuple[str, ...], seed: int = 0, model_dirs: list[str] = (), alpha: float = 12288.0) -> RetrieveResult:
    """Write distances_<method>.npy (Q, S) per baseline and per trained model (named by its
    architecture), queries.parquet and scenes.parquet (row order of the matrices).

    Args:
        model_dirs: train-step folders (encodings.npy + index.parquet + meta.json).

    Raises:
        DataError: unknown method, or a model encoded other images than the features step saw.
    """
    from scenesearch.models.step import model_distances, read_meta

    src, dst = Path(features_dir), Path(out_dir)
    inputs = arrange(storage.read_array(src / "features.npy"), storage.read_table(src / "index.parquet").to_pydict())
    for name in methods:
        if name not in METHODS:
            raise DataError(f"unknown retrieval method '{name}'; known: {', '.join(sorted(METHODS))}")
        storage.write_array(dst / f"distances_{name}.npy", METHODS[name](inputs, seed).astype(np.float32))
    names = list(methods)
    for d in model_dirs:
        meta = read_meta(d)
        enc = storage.read_array(Path(d) / "encodings.npy")
        model_inputs, dist = model_distances(enc, storage.read_table(Path(d) / "index.parquet").to_pydict(), meta["latent"], alpha)
        if model_inputs.queries["item_id"] != inputs.queries["item_id"] or model_inputs.scenes["item_id"] != inputs.scenes["item_id"]:
            raise DataError(f"the {meta['architecture']} model encoded other queries or scenes than the features step; retrain it on this dataset")
        storage.write_array(dst / f"distances_{meta['architecture']}.npy", dist.astype(np.float32))
        names.append(meta["architecture"])
    storage.write_table(dst / "queries.parquet", pa.table(inputs.queries))
    storage.write_table(dst / "scenes.parquet", pa.table(inputs.scenes))
    return RetrieveResult(tuple(names), len(inputs.query_feats), len(inputs.scene_feats))

"""Training over descriptor pairs: the loop of every method that learns on the features step's output
(zero-shot CVAE/CAAE, parallel VAEs, siamese, triplet).

A training example is a labelled train-split query (photo or sketch, either flip) with a render
of a scene of its class, a render of another class and a query of another class, drawn afresh
each epoch (``per_query`` examples per query) from a seeded generator. Only rows whose label the
method may see enter (`scenesearch.train.training_index` blanks unseen classes' labels), so in a
zero-shot split unseen classes never reach training. The loop checkpoints every epoch (model,
optimisers, RNG states, best weights, history) with the same resume and early-stopping rules as
`scenesearch.models.train`, whose checkpoint helpers it shares.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from scenesearch.config import TrainConfig
from scenesearch.domains import SCENE, is_query
from scenesearch.errors import DataError
from scenesearch.models.feature_nets import PairBatch
from scenesearch.models.train import CHECKPOINT, TrainResult, end_epoch, finish, optimise, prepare, resume, write_checkpoint

log = logging.getLogger(__name__)


@dataclass
class PairData:
    """Descriptors (N, d) of every index row and the rows training may use, by class id."""

    feats: torch.Tensor
    classes: list[str]
    query_rows: torch.Tensor  # (Q,) train queries of a class that has train renders
    query_labels: torch.Tensor
    render_rows: torch.Tensor  # (R,) train renders, sorted by class
    render_labels: torch.Tensor
    semantics: torch.Tensor | None = None  # (C, s) the classes' semantics vectors, standardised

    def __post_init__(self):
        self._render_groups = _groups(self.render_rows, self.render_labels, len(self.classes))
        self._query_groups = _groups(self.query_rows, self.query_labels, len(self.classes))

    def sample(self, generator: torch.Generator, per_query: int) -> tuple[torch.Tensor, ...]:
        """One epoch's examples in a random order: (query, render, neg_render, neg_query) row ids and
        (label, neg_label) class ids, each (per_query * Q,)."""
        q = self.query_rows.repeat(per_query)
        label = self.query_labels.repeat(per_query)
        perm = torch.randperm(len(q), generator=generator)
        q, label = q[perm], label[perm]
        n_cls = len(self.classes)
        neg_label = (label + 1 + (torch.rand(len(q), generator=generator) * (n_cls - 1)).long().clamp_max(n_cls - 2)) % n_cls
        render = _pick(*self._render_groups, label, generator)
        neg_render = _pick(*self._render_groups, neg_label, generator)
        neg_query = _pick(*self._query_groups, neg_label, generator)
        return q, render, neg_render, neg_query, label, neg_label

    def batch(self, rows: tuple[torch.Tensor, ...], device: torch.device) -> PairBatch:
        q, r, nr, nq, label, neg_label = rows
        f = self.feats
        sem = self.semantics[label].to(device) if self.semantics is not None else None
        return PairBatch(f[q].to(device), f[r].to(device), f[nr].to(device), f[nq].to(device), label.to(device), neg_label.to(device), sem)


def hardest_negatives(anchors: torch.Tensor, anchor_labels: torch.Tensor, pool: torch.Tensor, pool_labels: torch.Tensor) -> torch.Tensor:
    """(A,) the index in `pool` of each anchor's hardest negative: the pool item of another class
    closest to it (Euclidean; unit-norm embeddings rank as by cosine); -1 where the pool holds none."""
    d = torch.cdist(anchors.float(), pool.float())
    d = d.masked_fill(anchor_labels.view(-1, 1) == pool_labels.view(1, -1), float("inf"))
    best = d.argmin(dim=1)
    return torch.where(torch.isfinite(d.gather(1, best.view(-1, 1))).view(-1), best, -1)


@dataclass
class MinedPairData(PairData):
    """Training tuples for fine-tuning a CNN (Radenović et al.): anchors are train queries and
    renders, the positive a render of the anchor's class, the negative the hardest other-class render
    of a pool of `pool_size` renders drawn and embedded afresh by the current model every epoch.
    Set `model` (rows' inputs -> embeddings) before sampling."""

    tuples: int = 512  # tuples per epoch
    pool_size: int = 1000
    model: torch.nn.Module | None = None

    @torch.no_grad()
    def embed(self, rows: torch.Tensor, batch: int = 256) -> torch.Tensor:
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        out = []
        for i in range(0, len(rows), batch):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                out.append(self.model(self.feats[rows[i : i + batch]].to(device)).float().cpu())
        self.model.train(was_training)
        return torch.cat(out)

    def sample(self, generator: torch.Generator, per_query: int) -> tuple[torch.Tensor, ...]:
        n = len(self.query_rows)
        pick = torch.randperm(n, generator=generator)[: self.tuples] if self.tuples <= n else torch.randint(n, (self.tuples,), generator=generator)
        q, label = self.query_rows[pick], self.query_labels[pick]
        render = _pick(*self._render_groups, label, generator)
        pool = torch.randperm(len(self.render_rows), generator=generator)[: self.pool_size]
        pool_rows, pool_labels = self.render_rows[pool], self.render_labels[pool]
        idx = hardest_negatives(self.embed(q), label, self.embed(pool_rows), pool_labels)
        n_cls = len(self.classes)  # an anchor whose class fills the pool gets a random other-class render
        fallback = (label + 1 + (torch.rand(len(q), generator=generator) * (n_cls - 1)).long().clamp_max(n_cls - 2)) % n_cls
        neg_label = torch.where(idx >= 0, pool_labels[idx.clamp_min(0)], fallback)
        neg_render = torch.where(idx >= 0, pool_rows[idx.clamp_min(0)], _pick(*self._render_groups, fallback, generator))
        neg_query = _pick(*self._query_groups, neg_label, generator)
        return q, render, neg_render, neg_query, label, neg_label


def mined(data: PairData, tuples: int, pool_size: int) -> MinedPairData:
    """`data` with every train render also an anchor (render-render pairs beside query-render ones)."""
    return MinedPairData(data.feats, data.classes, torch.cat([data.query_rows, data.render_rows]), torch.cat([data.query_labels, data.render_labels]),
                         data.render_rows, data.render_labels, data.semantics, tuples=tuples, pool_size=pool_size)


def _groups(rows: torch.Tensor, labels: torch.Tensor, n_classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    order = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels, minlength=n_classes)
    offsets = torch.cumsum(counts, 0) - counts
    return rows[order], offsets, counts


def _pick(rows: torch.Tensor, offsets: torch.Tensor, counts: torch.Tensor, cls: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A uniformly drawn row of class cls[i] for every i (every class has rows)."""
    u = torch.rand(len(cls), generator=generator)
    return rows[offsets[cls] + (u * counts[cls]).long().clamp_max(counts[cls] - 1)]


def pair_data(feats: torch.Tensor, index: dict, semantics: dict[str, np.ndarray] | None = None) -> PairData:
    """The training rows of an index (a method's ctx.index: unseen classes' labels already blanked).

    Args:
        feats: (N, d) scaled descriptors, row i of the index.
        semantics: {class: vector}; its vectors of the training classes are standardised per attribute.

    Raises:
        DataError: fewer than two classes with both train queries and train renders (the losses
            need a negative class), or a training class missing from `semantics`.
    """
    split, label, domain = (np.asarray(index[c]) for c in ("split", "label", "domain"))
    usable = (split == "train") & (label != "")
    queries = usable & np.vectorize(is_query, otypes=[bool])(domain) if len(domain) else usable
    renders = usable & (domain == SCENE)
    classes = sorted(set(label[queries].tolist()) & set(label[renders].tolist()))
    if len(classes) < 2:
        raise DataError(f"training over query-render pairs needs two classes with train queries and train renders, found {len(classes)} ({', '.join(classes) or 'none'})")
    ids = {c: i for i, c in enumerate(classes)}
    q_rows = np.flatnonzero(queries & np.isin(label, classes))
    r_rows = np.flatnonzero(renders & np.isin(label, classes))
    sem = None
    if semantics is not None:
        missing = [c for c in classes if c not in semantics]
        if missing:
            raise DataError(f"semantics.parquet has no vector for the training class {missing[0]!r}")
        m = np.stack([semantics[c] for c in classes]).astype(np.float32)
        sem = torch.from_numpy((m - m.mean(0)) / np.where(m.std(0) > 0, m.std(0), 1.0))
    as_ids = lambda rows: torch.tensor([ids[c] for c in label[rows]], dtype=torch.long)  # noqa: E731
    return PairData(feats, classes, torch.from_numpy(q_rows), as_ids(q_rows), torch.from_numpy(r_rows), as_ids(r_rows), sem)


def train_pairs(
    model: torch.nn.Module,
    data: PairData,
    step: Callable[[torch.nn.Module, PairBatch], dict[str, torch.Tensor]],
    cfg: TrainConfig,
    checkpoint_dir: str | Path,
    seed: int,
    run_hash: str,
    per_query: int = 8,
    validate: Callable[[torch.nn.Module], dict[str, float]] | None = None,
    monitor: str = "val_mAP",
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    progress: bool = True,
    name: str = "model",
) -> TrainResult:
    """Train `model` in place on `data` and leave it holding its best validation epoch's weights.

    Args:
        step: (model, batch) -> per-row loss terms, "loss" among them (averaged here). A model with
            a ``discriminator`` (the CAAE) also gets its own Adam, stepped after the rest on
            ``model.discriminator_loss(batch)``.
        validate: after every epoch, in eval mode; returns metrics including `monitor` (higher is
            better). Without it the training loss is monitored.
        run_hash: a checkpoint under `checkpoint_dir` is resumed only if it carries this hash.

    Raises:
        DataError: the loss became NaN or infinite.
    """
    from tqdm import tqdm

    device, precision, autocast_dtype = prepare(model, cfg, seed)
    disc = getattr(model, "discriminator", None)
    disc_ids = {id(p) for p in disc.parameters()} if disc is not None else set()
    optimizer = torch.optim.Adam([p for p in model.parameters() if id(p) not in disc_ids], lr=cfg.lr, weight_decay=cfg.weight_decay)
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.lr, betas=(0.5, 0.999)) if disc is not None else None
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    order = torch.Generator().manual_seed(seed)
    ckpt_path = f"{str(checkpoint_dir).rstrip('/')}/{CHECKPOINT}"

    optimizers = {"optimizer": optimizer, **({"optimizer_d": opt_d} if opt_d is not None else {})}
    state, resumed_from = resume(ckpt_path, run_hash, model, optimizers, scaler, order)
    rates = []
    epoch = state["epoch"]
    stopped_early = state["bad_epochs"] >= cfg.patience
    while epoch < cfg.epochs and not stopped_early:
        epoch += 1
        model.train()
        rows = data.sample(order, per_query)
        n, t0 = len(rows[0]), time.perf_counter()
        sums: dict[str, float] = {}
        n_batches = math.ceil(n / cfg.batch_size)
        bar = tqdm(range(n_batches), desc=f"{name} epoch {epoch}", unit="batch", disable=not progress, leave=False)
        for b in bar:
            sl = slice(b * cfg.batch_size, (b + 1) * cfg.batch_size)
            batch = data.batch(tuple(r[sl] for r in rows), device)
            with torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext():
                terms = {k: v.float().mean() for k, v in step(model, batch).items()}
            loss = terms["loss"]
            if not torch.isfinite(loss):
                raise DataError(f"the training loss of {name} became {loss.item()} at epoch {epoch}; lower train.lr")
            optimise(loss, optimizer, scaler)
            if opt_d is not None:
                opt_d.zero_grad(set_to_none=True)  # the encoder's step left gradients in D
                d_loss = model.discriminator_loss(batch)
                d_loss.backward()
                opt_d.step()
                terms["disc"] = d_loss.detach()
            m = len(batch.label)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v.item() * m
            bar.set_postfix(loss=f"{loss.item():.3g}")
        seconds = time.perf_counter() - t0
        rates.append(n / max(seconds, 1e-9))
        metrics = {f"train_{k}": v / n for k, v in sums.items()}
        metrics.update({"train_pairs_per_s": rates[-1], "epoch_seconds": seconds})
        if validate is not None:
            model.eval()
            with torch.no_grad():
                metrics.update(validate(model))
        stopped_early = end_epoch(state, epoch, metrics, monitor, cfg.patience, model)
        log.info("%s epoch %d: %s", name, epoch, ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        write_checkpoint(ckpt_path, state, run_hash, model, optimizers, scaler, order)
    return finish(model, state, stopped_early, resumed_from, rates, precision, device)

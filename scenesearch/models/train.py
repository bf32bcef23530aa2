"""The training loop: mixed precision on CUDA, checkpoint every epoch, resume, early stopping.

The whole training set is one uint8 tensor on the device (with its masks when augmenting);
batches are cut from a seeded permutation, flipped on the fly and, when ``train.augment.ops`` is
not empty, domain-randomised by `scenesearch.augment.Augmenter` (renders composited onto new
backgrounds through their masks, moved, relit; query photos relit only). Validation sees the
clean images. Every epoch ends with an atomic checkpoint holding the
model, optimiser, grad scaler, every RNG state, the best weights so far and the history, so a
killed run started again with the same arguments continues where it stopped and ends with the
same weights as a run that was never killed (on a CPU, where kernels are deterministic).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from scenesearch import storage
from scenesearch.augment import Augmenter
from scenesearch.config import TrainConfig
from scenesearch.errors import DataError
from scenesearch.features.vgg import resolve_device

log = logging.getLogger(__name__)
CHECKPOINT = "last.pt"


@dataclass
class TrainData:
    """Unflipped uint8 images (N, 3, H, W) with class ids; -1 marks an image used without its label.

    For augmentation: `masks` (N, 1, H, W) uint8, each image's coverage (0 background .. 255
    foreground; None: all 255), `is_render` (N,) bool, True for scene renders (None: no render),
    and `render_background`, the colour the renders were drawn on.
    """

    images: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor | None = None
    is_render: torch.Tensor | None = None
    render_background: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise DataError(f"training images must be a uint8 (N, 3, H, W) tensor, got {self.images.dtype} {tuple(self.images.shape)}")
        if len(self.labels) != len(self.images):
            raise DataError(f"{len(self.images)} training images but {len(self.labels)} labels")
        n, _, h, w = self.images.shape
        if self.masks is not None and (self.masks.dtype != torch.uint8 or tuple(self.masks.shape) != (n, 1, h, w)):
            raise DataError(f"training masks must be a uint8 {(n, 1, h, w)} tensor, got {self.masks.dtype} {tuple(self.masks.shape)}")
        if self.is_render is not None and (self.is_render.dtype != torch.bool or tuple(self.is_render.shape) != (n,)):
            raise DataError(f"is_render must be a bool ({n},) tensor, got {self.is_render.dtype} {tuple(self.is_render.shape)}")
        if not (self.labels >= 0).any():
            raise DataError("no labelled training image: the train split is empty")


@dataclass
class TrainResult:
    epochs_run: int  # epochs trained in total (including those before a resume)
    best_epoch: int
    best_metric: float
    stopped_early: bool
    resumed_from: int  # epoch of the checkpoint this call resumed from, 0 if none
    images_per_s: float
    precision: str
    device: str
    history: list[dict] = field(default_factory=list)


def resolve_precision(name: str, device: torch.device) -> str:
    """auto: bf16 autocast on CUDA (fp16 where bf16 is missing), fp32 on a CPU."""
    if device.type != "cuda":
        if name in ("bf16", "fp16"):
            log.warning("train.precision=%s needs CUDA; training in fp32 on %s", name, device)
        return "fp32"
    if name == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return name


def config_hash(cfg: TrainConfig, extra: dict) -> str:
    """Identifies a training run; a checkpoint is resumed only by a run with the same hash."""
    keys = {k: v for k, v in cfg.__dict__.items() if k not in ("checkpoint_root", "device", "epochs", "patience")}
    return hashlib.sha256(json.dumps({**keys, **extra}, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, payload: dict) -> None:
    buf = io.BytesIO()
    torch.save(payload, buf)
    storage.write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path) -> dict | None:
    if not storage.exists(path):
        return None
    try:
        # Our own file, with RNG states and optimiser state: plain tensors and containers only.
        return torch.load(io.BytesIO(storage.read_bytes(path)), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a damaged checkpoint must not block a fresh start
        log.warning("ignoring the unreadable checkpoint %s (%s); training from scratch", path, e)
        return None


def prepare(model: torch.nn.Module, cfg: TrainConfig, seed: int) -> tuple[torch.device, str, torch.dtype | None]:
    """Start a training run: seed torch, deterministic kernels on a CPU, the model on its device.

    Returns:
        (device, precision name, autocast dtype or None for fp32).
    """
    device = resolve_device(cfg.device, "train.device")
    precision = resolve_precision(cfg.precision, device)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(seed)
    model.to(device)
    return device, precision, {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def optimise(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    """One step on `loss` through the grad scaler (a no-op scaler outside fp16)."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def resume(path: str, run_hash: str, model: torch.nn.Module, optimizers: dict, scaler, order: torch.Generator) -> tuple[dict, int]:
    """The loop state to start from: the checkpoint at `path` loaded into the model, optimisers
    (by name), grad scaler and RNGs when it carries `run_hash`, else a fresh state.

    Returns:
        (state, epoch resumed from or 0); state holds epoch, best_metric, best_epoch, best_state,
        bad_epochs, history.
    """
    state = {"epoch": 0, "best_metric": -math.inf, "best_epoch": 0, "best_state": None, "bad_epochs": 0, "history": []}
    ckpt = load_checkpoint(path)
    if ckpt is None:
        return state, 0
    if ckpt.get("run_hash") != run_hash:
        log.warning("the checkpoint %s belongs to another configuration; training from scratch", path)
        return state, 0
    model.load_state_dict(ckpt["model"])
    for name, opt in optimizers.items():
        opt.load_state_dict(ckpt[name])
    scaler.load_state_dict(ckpt["scaler"])
    order.set_state(ckpt["rng"]["order"])
    _set_rng_state(ckpt["rng"])
    state = {k: ckpt[k] for k in state}
    state["history"] = json.loads(ckpt["history"])
    log.info("resuming %s from the checkpoint of epoch %d", path, state["epoch"])
    return state, state["epoch"]


def end_epoch(state: dict, epoch: int, metrics: dict[str, float], monitor: str, patience: int, model: torch.nn.Module) -> bool:
    """Record an epoch in `state` (best weights when `monitor` improved, else one more bad epoch;
    without `monitor` in metrics the negated training loss); True when training should stop."""
    value = metrics.get(monitor, -metrics["train_loss"])
    if value > state["best_metric"]:
        state.update(best_metric=value, best_epoch=epoch, bad_epochs=0, best_state=copy.deepcopy(_cpu_state(model)))
    else:
        state["bad_epochs"] += 1
    state["epoch"] = epoch
    state["history"].append({"epoch": epoch, **metrics})
    return state["bad_epochs"] >= patience


def write_checkpoint(path: str, state: dict, run_hash: str, model: torch.nn.Module, optimizers: dict, scaler, order: torch.Generator) -> None:
    """The atomic end-of-epoch checkpoint that `resume` reads."""
    save_checkpoint(
        path,
        {
            **{k: v for k, v in state.items() if k != "history"},
            "history": json.dumps(state["history"]),
            "run_hash": run_hash,
            "model": _cpu_state(model),
            **{name: opt.state_dict() for name, opt in optimizers.items()},
            "scaler": scaler.state_dict(),
            "rng": {**_rng_state(), "order": order.get_state()},
        },
    )


def finish(model: torch.nn.Module, state: dict, stopped_early: bool, resumed_from: int, rates: list[float], precision: str, device) -> TrainResult:
    """Load the best epoch's weights into `model` (eval mode) and summarise the run."""
    if state["best_state"] is not None:
        model.load_state_dict(state["best_state"])
    model.eval()
    return TrainResult(
        epochs_run=state["epoch"],
        best_epoch=state["best_epoch"],
        best_metric=float(state["best_metric"]),
        stopped_early=stopped_early,
        resumed_from=resumed_from,
        images_per_s=float(sum(rates) / len(rates)) if rates else float("nan"),
        precision=precision,
        device=str(device),
        history=state["history"],
    )


def train(
    model: torch.nn.Module,
    data: TrainData,
    cfg: TrainConfig,
    checkpoint_dir: str | Path,
    seed: int,
    run_hash: str,
    beta: float,
    validate: Callable[[torch.nn.Module], dict[str, float]] | None = None,
    monitor: str = "val_mAP",
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    progress: bool = True,
    reconstruct_clean: bool = True,
) -> TrainResult:
    """Train `model` in place and leave it holding the weights of its best validation epoch.

    Args:
        validate: called after every epoch on the model in eval mode; returns metrics that
            include `monitor` (higher is better). Without it the training loss is monitored.
        run_hash: a checkpoint under `checkpoint_dir` is resumed only if it carries this hash.
        beta: weight of the classifier's cross-entropy in the M2 labelled loss.
        on_epoch: receives (epoch, metrics) after every epoch, e.g. to log to MLflow.
        reconstruct_clean: with augmentation, the decoder's target is the image before it (a
            denoising objective: the latent need not describe the random background); else the
            augmented input itself.

    Raises:
        DataError: no labelled image, or the loss became NaN.
    """
    from tqdm import tqdm

    device, precision, autocast_dtype = prepare(model, cfg, seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    order = torch.Generator().manual_seed(seed)  # batch order and flips, separate from the sampling noise

    images = data.images.to(device)
    labels = data.labels.to(device)
    augment = Augmenter(cfg.augment, data.render_background) if cfg.augment.ops else None
    masks = data.masks.to(device) if augment is not None and data.masks is not None else None
    is_render = data.is_render if data.is_render is not None else torch.zeros(len(data.labels), dtype=torch.bool)

    spent = {"augment": 0.0}  # seconds augmenting this epoch

    def batch(idx: torch.Tensor, flip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(input, reconstruction target): rows `idx` as float, the flagged ones mirrored, then
        augmented (masks mirrored alike); the target is the image before augmentation when
        `reconstruct_clean`, else None (the input itself)."""
        x = _batch(images, idx, flip, device)
        if augment is None:
            return x, None
        t = time.perf_counter()
        x_aug = augment(x, _batch(masks, idx, flip, device) if masks is not None else None, is_render[idx.cpu()])
        spent["augment"] += time.perf_counter() - t
        return x_aug, (x if reconstruct_clean else None)

    labelled = torch.nonzero(data.labels >= 0).flatten()
    unlabelled = torch.nonzero(data.labels < 0).flatten()
    ckpt_path = f"{str(checkpoint_dir).rstrip('/')}/{CHECKPOINT}"  # a folder or an s3:// prefix

    state, resumed_from = resume(ckpt_path, run_hash, model, {"optimizer": optimizer}, scaler, order)
    rates = []
    epoch = state["epoch"]
    stopped_early = state["bad_epochs"] >= cfg.patience
    while epoch < cfg.epochs and not stopped_early:
        epoch += 1
        model.train()
        sums: dict[str, float] = {}
        n_seen, correct, t0 = 0, 0.0, time.perf_counter()
        spent["augment"] = 0.0
        perm = labelled[torch.randperm(len(labelled), generator=order)]
        u_perm = unlabelled[torch.randperm(len(unlabelled), generator=order)] if len(unlabelled) else unlabelled
        n_batches = math.ceil(len(perm) / cfg.batch_size)
        u_size = math.ceil(len(u_perm) / n_batches) if len(u_perm) else 0
        bar = tqdm(range(n_batches), desc=f"{getattr(model, 'architecture', 'model')} epoch {epoch}", unit="batch", disable=not progress, leave=False)
        for b in bar:
            idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            flip = torch.rand(len(idx), generator=order) < 0.5
            x, target = batch(idx, flip)
            u_idx = u_perm[b * u_size : (b + 1) * u_size] if u_size else u_perm[:0]
            u_x, u_target = batch(u_idx, torch.rand(len(u_idx), generator=order) < 0.5) if len(u_idx) else (None, None)
            with torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext():
                out = model.labelled_loss(x, labels[idx], beta, target=target)
                loss = out["loss"]
                if u_x is not None:
                    u_out = model.unlabelled_loss(u_x, target=u_target)
                    loss = loss + u_out["loss"] * len(u_idx) / len(idx)
                    sums["unlabelled"] = sums.get("unlabelled", 0.0) + u_out["loss"].item() * len(u_idx)
            if not torch.isfinite(loss):
                raise DataError(f"the training loss became {loss.item()} at epoch {epoch}; lower train.lr or check the images for NaN")
            optimise(loss, optimizer, scaler)
            for k in ("loss", "rec", "kl", "ce"):
                sums[k] = sums.get(k, 0.0) + out[k].item() * len(idx)
            correct += out["correct"].item()
            n_seen += len(idx)
            bar.set_postfix(loss=f"{out['loss'].item():.1f}")
        seconds = time.perf_counter() - t0
        rates.append(n_seen / max(seconds, 1e-9))
        metrics = {f"train_{k}": v / n_seen for k, v in sums.items() if k != "unlabelled"}
        if "unlabelled" in sums:
            metrics["train_unlabelled_loss"] = sums["unlabelled"] / max(len(u_perm), 1)
        metrics.update({"train_accuracy": correct / n_seen, "train_images_per_s": rates[-1], "epoch_seconds": seconds})
        if augment is not None:
            metrics["augment_seconds"] = spent["augment"]
        if validate is not None:
            model.eval()
            with torch.no_grad():
                metrics.update(validate(model))
        stopped_early = end_epoch(state, epoch, metrics, monitor, cfg.patience, model)
        log.info("epoch %d: %s", epoch, ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        write_checkpoint(ckpt_path, state, run_hash, model, {"optimizer": optimizer}, scaler, order)
    return finish(model, state, stopped_early, resumed_from, rates, precision, device)

def _batch(images: torch.Tensor, idx: torch.Tensor, flip: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 rows (images or masks) -> float [0, 1], the flagged ones mirrored left-right."""
    x = images[idx].float().div_(255.0)
    flip = flip.to(device)
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def _cpu_state(model: torch.nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

"""`cvae_m2`: semi-supervised conditional VAE scene retrieval (Kingma et al. 2014, model M2; Pérez Rey
et al., SHREC 2019). Variants are the networks of `scenesearch.models` (cvae1..cvae4, cvae_vgg).

fit: train the variant on the unflipped train-split images (scene renders and query images, with
labels; flips drawn on the fly), optionally the val/test images without labels (the M2 unlabelled
objective), early stopping on the validation mAP; checkpoint every epoch under ctx.checkpoint_dir.
With ``train.augment`` the training batches are domain-randomised (`scenesearch.augment`): renders
composited onto new backgrounds through the preprocess step's masks.npy, moved and relit, query
images relit; validation and the embeddings use the clean images.
Embedding of an image: the encoder's [mu | logvar | logits] (2d + C).
Score: D(x*, S) = min over the renders r of S of H_s(q(z|x*), q(z|x_r)) + alpha * H_s(q(y|x*), q(y|x_r)).

Files in the model folder: network.pt (the best weights, a state dict).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from scenesearch import storage
from scenesearch.domains import SCENE
from scenesearch.errors import ConfigError, DataError
from scenesearch.methods.base import FitContext, Fitted, Method, MethodConfig

if TYPE_CHECKING:
    import torch

NETWORK_FILE = "network.pt"
LOG_2PI = 1.8378770664093453  # log(2 pi); the constant of both Gaussian cross-entropies


@dataclass(frozen=True)
class CVAEConfig(MethodConfig):
    variants: tuple[str, ...] = ("cvae1",)  # cvae1..cvae4, cvae_vgg: one DAG training branch each
    beta: float = 1000.0  # weight of the cross-entropy of q(y|x) against the label (nats per image)
    decoder_variance: str = "scalar"  # scalar | pixel: the learned variance of p(x|z,y)
    unlabelled: bool = False  # add val/test images without their labels (the M2 unlabelled objective)
    alpha: float = 12288.0  # 64 * 64 * 3, the pixel count (as in the paper): weight of the class term
    # with train.augment: the decoder reconstructs the image before augmentation (clean), so the
    # latent need not describe the random background, or the augmented input (input)
    reconstruct: str = "clean"

    def validate(self, prefix: str) -> None:
        from scenesearch.models import ARCHITECTURES  # plain data: no torch

        if not self.variants:
            raise ConfigError(f"{prefix}.variants must name at least one of {', '.join(ARCHITECTURES)}")
        for v in self.variants:
            if v not in ARCHITECTURES:
                raise ConfigError(f"{prefix}.variants must be among {', '.join(ARCHITECTURES)}; got '{v}'")
        if len(set(self.variants)) != len(self.variants):
            raise ConfigError(f"{prefix}.variants must not repeat a name, got {list(self.variants)}")
        if self.beta < 0 or self.alpha < 0:
            raise ConfigError(f"{prefix}.beta and {prefix}.alpha must be >= 0, got {self.beta} and {self.alpha}")
        if self.reconstruct not in ("clean", "input"):
            raise ConfigError(f"{prefix}.reconstruct must be one of clean, input; got '{self.reconstruct}'")
        if self.decoder_variance not in ("scalar", "pixel"):
            raise ConfigError(f"{prefix}.decoder_variance must be one of scalar, pixel; got '{self.decoder_variance}'")


# --------------------------------------------------------------------------------------------
# the distance
# --------------------------------------------------------------------------------------------

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


def split_encodings(enc: torch.Tensor, latent: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mu, logvar, logits) from rows [mu | logvar | logits] of any leading shape."""
    return enc[..., :latent], enc[..., latent : 2 * latent], enc[..., 2 * latent :]


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------

def training_data(
    images: np.ndarray,
    index: dict,
    unlabelled: bool = False,
    masks: np.ndarray | None = None,
    render_background: tuple[float, float, float] = (1.0, 1.0, 1.0),
):
    """Unflipped train-split images as uint8 with class ids; val/test images unlabelled if asked.

    Only train rows are read with their labels (test labels never enter the training set, nor do
    unseen classes of a zero-shot split: they are never in the train split). Unlabelled rows get -1.
    Each row also carries its mask (row i of `masks`, the preprocess step's masks.npy; None: all
    255) and whether it is a scene render (the index domain), for augmentation.

    Returns:
        (TrainData, classes): classes sorted, class id i is classes[i].

    Raises:
        DataError: no training image, or NaN pixels.
    """
    import torch

    from scenesearch.models.train import TrainData
    from scenesearch.preprocess import to_uint8

    split, flip, label = (np.asarray(index[c]) for c in ("split", "flip", "label"))
    train_rows = np.flatnonzero((split == "train") & ~flip & (label != ""))
    if len(train_rows) == 0:
        raise DataError("no training image: the train split is empty")
    classes = sorted(set(label[train_rows].tolist()))
    rows, ids = list(train_rows), [classes.index(c) for c in label[train_rows]]
    if unlabelled:
        extra = np.flatnonzero(np.isin(split, ["val", "test"]) & ~flip)
        rows += list(extra)
        ids += [-1] * len(extra)
    rows = np.asarray(rows)
    x = np.asarray(images[rows])
    if not np.isfinite(x).all():
        raise DataError("the preprocessed images hold NaN or infinite pixels")
    if masks is not None and len(masks) != len(images):
        raise DataError(f"masks.npy has {len(masks)} rows for {len(images)} images; rerun preprocess")
    m = torch.from_numpy(np.array(masks[rows], dtype=np.uint8)) if masks is not None else None
    is_render = torch.from_numpy(np.asarray(index["domain"])[rows] == SCENE)
    data = TrainData(torch.from_numpy(to_uint8(x)), torch.tensor(ids, dtype=torch.long), m, is_render, tuple(render_background))
    return data, classes


def encode_all(model, images: np.ndarray, batch_size: int = 256, device="cpu") -> np.ndarray:
    """[mu | logvar | logits] of every image (N, 3, H, W) in [0, 1], batched on `device`."""
    import torch

    model.eval()
    with torch.inference_mode():
        out = [model(torch.from_numpy(np.array(images[i : i + batch_size], dtype=np.float32)).to(device)).float().cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(out).numpy()


def make_validator(images: np.ndarray, index: dict, classes: list[str], latent: int, alpha: float, k: int, device) -> Callable:
    """Validation metrics of a model: q(y|x) accuracy on val images, mAP of val queries vs all scenes."""
    import torch

    from scenesearch.evaluation import retrieval_metrics
    from scenesearch.gallery import arrange

    split, flip, label = (np.asarray(index[c]) for c in ("split", "flip", "label"))
    val_rows = np.flatnonzero((split == "val") & ~flip & np.isin(label, classes))
    val_targets = np.array([classes.index(c) for c in label[val_rows]])

    def validate(model) -> dict[str, float]:
        enc = encode_all(model, images, device=device)
        metrics: dict[str, float] = {}
        if len(val_rows):
            metrics["val_accuracy"] = float((enc[val_rows, 2 * latent :].argmax(1) == val_targets).mean())
        inputs = arrange(enc, index)
        q = split_encodings(torch.from_numpy(inputs.query_feats).to(device), latent)
        s = split_encodings(torch.from_numpy(inputs.scene_feats).to(device), latent)
        d = cvae_scene_distances(*q, *s, alpha=alpha).cpu().numpy()
        q_split = np.asarray(inputs.queries["split"])
        if (q_split == "val").any():
            m = retrieval_metrics(d[q_split == "val"], np.asarray(inputs.queries["label"])[q_split == "val"], np.asarray(inputs.scenes["label"]), k=k)
            metrics["val_mAP"] = float(m["mAP"])
        return metrics

    return validate


def fit(ctx: FitContext) -> Fitted:
    import torch

    from scenesearch.features.vgg import resolve_device
    from scenesearch.models import ARCHITECTURES, build_model
    from scenesearch.models.train import config_hash, train

    c, run, arch = ctx.config, ctx.run, ctx.entry.variant
    src = Path(ctx.inputs.need("images", "cvae_m2"))
    images = storage.read_array(src / "images.npy", mmap=True)
    # masks.npy is read only when augmenting; a preprocess output of before has none (masks of 255)
    masks = storage.read_array(src / "masks.npy", mmap=True) if run.train.augment.ops and storage.exists(src / "masks.npy") else None
    index = ctx.index.to_pydict()
    data, classes = training_data(images, index, c.unlabelled, masks, tuple(run.render.background))
    weights = run.features.weights
    if ARCHITECTURES[arch].vgg_encoder:  # cvae_vgg's frozen trunk: with selfsup, the features step's trained backbone
        from scenesearch.features import resolve_weights

        weights = resolve_weights(weights, ctx.inputs.features or None)
    model = build_model(arch, len(classes), int(images.shape[-1]), c.decoder_variance, weights, run.seed)
    device = resolve_device(run.train.device, "train.device")
    validate = make_validator(images, index, classes, model.latent, c.alpha, run.evaluate.k, device)
    has_val_queries = bool(np.any((np.asarray(index["split"]) == "val") & (np.asarray(index["domain"]) != SCENE)))
    run_hash = config_hash(run.train, {"architecture": arch, "seed": run.seed, "classes": classes, "n": len(data.labels), "weights": run.features.weights,
                                       "beta": c.beta, "decoder_variance": c.decoder_variance, "unlabelled": c.unlabelled,
                                       **({"masks": masks is not None, "reconstruct": c.reconstruct} if run.train.augment.ops else {}),
                                       # another pretrained backbone must not resume this checkpoint
                                       **({"selfsup": run.features.selfsup} if weights != run.features.weights else {})})
    result = train(model, data, run.train, ctx.checkpoint_dir, run.seed, run_hash, beta=c.beta, validate=validate,
                   monitor="val_mAP" if has_val_queries else "val_accuracy", on_epoch=ctx.on_epoch, progress=ctx.progress,
                   reconstruct_clean=c.reconstruct == "clean")
    enc = encode_all(model, images, device=device)
    buf = io.BytesIO()
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, buf)
    storage.write_bytes(ctx.out_dir / NETWORK_FILE, buf.getvalue())
    n_unlabelled = int((data.labels < 0).sum())
    meta = {
        **model.config(),
        "classes": classes,
        "alpha": c.alpha,
        "seed": run.seed,
        "weights": run.features.weights if model.spec.vgg_encoder else "n/a",
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "precision": result.precision,
        "device": result.device,
        "run_hash": run_hash,
    }
    metrics = {
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "best_val_metric": result.best_metric,
        "train_images_per_s": result.images_per_s,
        "n_train_images": len(data.labels) - n_unlabelled,
        "n_unlabelled_images": n_unlabelled,
        "n_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "resumed_from_epoch": result.resumed_from,
    }
    params = {"architecture": arch, "classes": ",".join(classes), "precision": result.precision, "device": result.device}
    return Fitted(enc.astype(np.float32), meta, metrics, params, result.history)


# --------------------------------------------------------------------------------------------
# loading and scoring
# --------------------------------------------------------------------------------------------

def load_network(folder: str | Path, meta: dict):
    """The trained CVAE from a model folder (weights loaded with weights_only=True)."""
    import torch

    from scenesearch.models import build_model

    model = build_model(meta["architecture"], meta["n_classes"], meta["image_size"], meta["decoder_variance"], "none", meta["seed"])
    state = torch.load(io.BytesIO(storage.read_bytes(Path(folder) / NETWORK_FILE)), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


class CVAERetriever:
    def __init__(self, network, meta: dict):
        self.network, self.latent, self.alpha = network, int(meta["latent"]), float(meta["alpha"])
        self.image_size = int(meta["image_size"])

    def embed(self, images):
        import torch

        with torch.inference_mode():
            return self.network(images.float()).float()

    def score(self, queries, gallery):
        return cvae_scene_distances(*split_encodings(queries, self.latent), *split_encodings(gallery, self.latent), alpha=self.alpha)


def load(folder: Path, meta: dict) -> CVAERetriever:
    return CVAERetriever(load_network(folder, meta), meta)


def variants(config: CVAEConfig) -> tuple[str, ...]:
    return tuple(config.variants)


METHOD = Method(
    name="cvae_m2",
    summary="semi-supervised conditional VAE (M2): symmetrised cross-entropy of q(z|x) and q(y|x), min over views",
    config=CVAEConfig,
    consumes=("images", "features"),  # features: the selfsup backbone that cvae_vgg's trunk loads
    fit=fit,
    load=load,
    trains=True,
    variants=variants,
)

"""`lorbms`: learning object representations by mixing scenes (Zbinden 2019), unsupervised.

fit: train the quadrant-mixing GAN of `scenesearch.models.lorbms` on the unflipped train-split
images (scene renders and query photos, no label read), each reference mixed with the k-means
candidates of the similarity step (candidates.parquet); per epoch every loss, the discriminator's
accuracies and a grid of mixed scenes go to MLflow. Checkpoint every epoch, resumable.
Embedding of an image: the encoder's four quadrant blocks, each mean-pooled (4C); score: min over
the views of the cosine distance, as the descriptor baselines.

After training, two measurements go to the method's report (printed at the end of a run, logged
with the model) and its metrics:

* the linear probe (`scenesearch.evaluation.probe`): frozen features of a randomly initialised
  encoder, the LORBMS encoder, its discriminator and the VGG16 descriptor (its weights named), and
  the LORBMS encoder fine-tuned with a linear head, each -> accuracy on the test split, mean ± SD
  over ``probe_seeds`` (labels are read here, after training, for this measurement only);
* realism of the mixed scenes (`scenesearch.evaluation.fidelity`): FID and IS with
  ``evaluate.inception_weights``, and fid_vgg (the Fréchet distance in the VGG16 descriptor space).

Variants ablate the generator's loss: ``lorbms`` plus ``_noadv`` (lambda_adv = 0), ``_nocls``
(lambda_cls = 0), ``_nocycle`` (no cycle reconstruction term), combinable (``lorbms_noadv_nocls``).
Files in the model folder: network.pt (encoder, generator, discriminator), grid.png (the last
epoch's mixed scenes).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scenesearch import storage
from scenesearch.errors import ConfigError, DataError
from scenesearch.methods.base import FitContext, Fitted, Method, MethodConfig, read_array_rows

log = logging.getLogger(__name__)
NETWORK_FILE = "network.pt"
ABLATIONS = ("noadv", "nocls", "nocycle")


@dataclass(frozen=True)
class LORBMSConfig(MethodConfig):
    variants: tuple[str, ...] = ("lorbms",)  # lorbms[_noadv][_nocls][_nocycle]: one training branch each
    channels: tuple[int, ...] = (16, 32, 64)  # conv widths of the encoder and discriminator (mirrored by the generator)
    feature_channels: int = 32  # C of the (C, 8, 8) feature map: four (C, 4, 4) quadrant blocks
    epochs: int = 8  # overrides train.epochs (the GAN's own schedule)
    batch_size: int = 64
    lr: float = 1.0e-3  # Adam (beta1 0.5) for both players (2e-4 left the reconstructions grey after 8 epochs here)
    lambda_rec: float = 1.0
    lambda_adv: float = 0.05
    lambda_cls: float = 0.1
    quadrant_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)  # lambda_j of the four mask bits in L_cls
    rec_norm: int = 1  # p of the reconstruction terms: 1 or 2
    max_images: int = 0  # a seeded sample of the training images (0: all)
    grid_rows: int = 6  # references in the per-epoch grid of mixed scenes
    probe_seeds: int = 3
    probe_fraction: float = 0.8  # the share of train rows each probe seed fits on
    finetune_epochs: int = 3  # the fine-tuned-encoder probe row (0: skip it)
    finetune_lr: float = 3.0e-4
    fidelity_images: int = 512  # real and mixed images compared by FID / fid_vgg (0: skip)

    def validate(self, prefix: str) -> None:
        if not self.variants or len(set(self.variants)) != len(self.variants):
            raise ConfigError(f"{prefix}.variants must name at least one variant, none twice; got {list(self.variants)}")
        for v in self.variants:
            ablations(v, prefix)
        for name in ("feature_channels", "epochs", "batch_size", "probe_seeds", "grid_rows"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{prefix}.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_images", "finetune_epochs", "fidelity_images"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{prefix}.{name} must be >= 0, got {getattr(self, name)}")
        if not 1 <= len(self.channels) <= 5 or min(self.channels) < 1:
            raise ConfigError(f"{prefix}.channels must be 1-5 positive widths (each layer halves the image side), got {list(self.channels)}")
        if len(self.quadrant_weights) != 4 or min(self.quadrant_weights) < 0:
            raise ConfigError(f"{prefix}.quadrant_weights must be four weights >= 0, got {list(self.quadrant_weights)}")
        if min(self.lambda_rec, self.lambda_adv, self.lambda_cls) < 0 or self.lr <= 0 or self.finetune_lr <= 0:
            raise ConfigError(f"{prefix}: the lambdas must be >= 0 and the learning rates > 0")
        if self.rec_norm not in (1, 2):
            raise ConfigError(f"{prefix}.rec_norm must be 1 or 2, got {self.rec_norm}")
        if not 0 < self.probe_fraction <= 1:
            raise ConfigError(f"{prefix}.probe_fraction must be in (0, 1], got {self.probe_fraction}")


def ablations(variant: str, prefix: str = "methods.lorbms") -> set[str]:
    """The ablations a variant name asks for: lorbms[_noadv][_nocls][_nocycle].

    Raises:
        ConfigError: another name.
    """
    parts = variant.split("_")
    if parts[0] != "lorbms" or not set(parts[1:]) <= set(ABLATIONS) or len(set(parts[1:])) != len(parts[1:]):
        raise ConfigError(f"{prefix}.variants: '{variant}' is not lorbms followed by any of _{', _'.join(ABLATIONS)}")
    return set(parts[1:])


def loss_weights(c: LORBMSConfig, variant: str):
    from scenesearch.models.lorbms import LossWeights

    off = ablations(variant)
    return LossWeights(rec=c.lambda_rec, adv=0.0 if "noadv" in off else c.lambda_adv, cls=0.0 if "nocls" in off else c.lambda_cls,
                       quadrants=tuple(c.quadrant_weights), cycle="nocycle" not in off, p=c.rec_norm)


def sizes(c: LORBMSConfig, image_size: int):
    """The networks' Sizes for images of `image_size`.

    Raises:
        ConfigError: the layers leave no even feature map of at least 2x2 on this image size.
    """
    from scenesearch.models.lorbms import Sizes

    try:
        return Sizes(tuple(c.channels), c.feature_channels, image_size)
    except ValueError as e:
        raise ConfigError(f"methods.lorbms.channels: {e}") from None


def mixing_data(images: np.ndarray, index: dict, clusters_dir: str, max_images: int, seed: int):
    """(MixData, index rows of its images): the candidates table's images as uint8 with their
    candidates as positions among them.

    Raises:
        DataError: the candidates were written for another index, or none exist.
    """
    import torch

    from scenesearch.models.lorbms import MixData
    from scenesearch.preprocess import to_uint8
    from scenesearch.similarity import CANDIDATES_FILE

    path = Path(clusters_dir) / CANDIDATES_FILE
    if not storage.exists(path):
        raise DataError(f"{path} is missing: rerun the similarity step (it writes the scene-mixing candidates)")
    table = storage.read_table(path).to_pydict()
    rows = np.asarray(table["row"], dtype=np.int64)
    if len(rows) == 0:
        raise DataError(f"{path} holds no candidates: the train split has too few images to cluster")
    if rows.max() >= len(images) or [index["item_id"][r] for r in rows] != table["item_id"]:
        raise DataError(f"{path} was written for another dataset than these images; rerun the similarity step")
    keep = np.arange(len(rows))
    if max_images and max_images < len(rows):
        keep = np.sort(np.random.default_rng(seed).choice(len(rows), max_images, replace=False))
    pos = {int(r): i for i, r in enumerate(rows[keep])}
    cands = [[pos[c] for c in table["candidates"][k] if c in pos] for k in keep]
    width = max(1, max((len(c) for c in cands), default=1))
    padded = torch.full((len(keep), width), -1, dtype=torch.long)
    for i, c in enumerate(cands):
        padded[i, : len(c)] = torch.tensor(c, dtype=torch.long)
    x = np.asarray(images[rows[keep]])
    if not np.isfinite(x).all():
        raise DataError("the preprocessed images hold NaN or infinite pixels")
    return MixData(torch.from_numpy(to_uint8(x)), padded), rows[keep]


def embed_all(fn, images: np.ndarray, device, batch_size: int = 256) -> np.ndarray:
    """fn over (N, 3, S, S) images in [0, 1], batched, in eval mode; (N, d) float32."""
    import torch

    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            out.append(fn(torch.from_numpy(np.array(images[i : i + batch_size], dtype=np.float32)).to(device)).float().cpu())
    return torch.cat(out).numpy()


def probe_rows(index: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(train rows, train class ids, test rows, test class ids, classes): unflipped labelled images
    of the train and test splits (test rows of classes absent from train are left out)."""
    split, flip, label = (np.asarray(index[c]) for c in ("split", "flip", "label"))
    tr = np.flatnonzero((split == "train") & ~flip & (label != ""))
    classes = sorted(set(label[tr].tolist()))
    te = np.flatnonzero((split == "test") & ~flip & np.isin(label, classes))
    ids = {c: i for i, c in enumerate(classes)}
    return tr, np.array([ids[c] for c in label[tr]]), te, np.array([ids[c] for c in label[te]]), classes


def finetune_accuracy(model, images: np.ndarray, tr, ytr, te, yte, n_classes: int, epochs: int, lr: float, seed: int, fraction: float, device) -> float:
    """Test accuracy of a copy of the encoder fine-tuned with a linear head on its pooled quadrant
    features (cross-entropy on a seeded `fraction` of the train rows, random flips)."""
    import copy

    import torch
    import torch.nn.functional as F

    from scenesearch.evaluation.probe import subsample
    from scenesearch.models.lorbms import pool_quadrants

    torch.manual_seed(seed)
    enc = copy.deepcopy(model.encoder).to(device).train()
    head = torch.nn.Linear(4 * model.sizes.feature_channels, n_classes).to(device)
    opt = torch.optim.Adam([*enc.parameters(), *head.parameters()], lr=lr)
    keep = subsample(len(tr), fraction, seed)
    x_all = torch.from_numpy(np.asarray(images[tr[keep]], dtype=np.float32))
    y_all = torch.from_numpy(ytr[keep]).long()
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(x_all), generator=g)
        for i in range(0, len(perm), 64):
            idx = perm[i : i + 64]
            x = x_all[idx].to(device)
            flip = (torch.rand(len(idx), generator=g) < 0.5).to(device)
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
            loss = F.cross_entropy(head(pool_quadrants(enc(x))), y_all[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    enc.eval()
    logits = embed_all(lambda x: head(pool_quadrants(enc(x))), images[te], device)
    return float((logits.argmax(1) == yte).mean())


def vgg_embedder(ctx: FitContext):
    """(images -> the features step's descriptor + PCA, its width, the weights' name): fid_vgg's space."""
    import torch

    from scenesearch.features.vgg import resize
    from scenesearch.methods.vgg_baseline import build_trunk

    pca = np.load(io.BytesIO(storage.read_bytes(Path(ctx.inputs.need("features", "lorbms")) / "pca.npz")))
    mean, comps = torch.from_numpy(pca["mean"].astype(np.float32)), torch.from_numpy(pca["components"].astype(np.float32))
    net = build_trunk(ctx)
    size = ctx.run.features.input_size
    return (lambda x: (net(resize(x.float(), size)) - mean) @ comps.T), int(comps.shape[0]), ctx.run.features.weights


def mixed_images(model, data, n: int, seed: int, device):
    """(real references, their mixed images) for `n` seeded references, each with at least one
    quadrant swapped (a mask of 0000 is a reconstruction, not a mixed scene)."""
    import torch

    from scenesearch.models.lorbms import N_QUADRANTS, as_float, forward_mix, random_bits

    g = torch.Generator().manual_seed(seed)
    refs_all = data.references()
    refs = refs_all[torch.randperm(len(refs_all), generator=g)[:n]]
    bits = random_bits(len(refs), g)
    none = bits.sum(1) == 0
    bits[none, torch.randint(0, N_QUADRANTS, (int(none.sum()),), generator=g)] = 1
    others = data.draw(refs, g)
    model.eval()
    real, fake = [], []
    with torch.no_grad():
        for i in range(0, len(refs), 128):
            r = as_float(data.images, refs[i : i + 128], device)
            o = as_float(data.images, others[i : i + 128].flatten(), device).view(len(r), N_QUADRANTS, *r.shape[1:])
            real.append(r.cpu())
            fake.append(forward_mix(model, r, o, bits[i : i + 128].to(device))["mixed"].float().cpu())
    return torch.cat(real), torch.cat(fake)


def to_png(image) -> bytes:
    """(3, H, W) float in [0, 1] -> PNG bytes."""
    from PIL import Image

    arr = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def fit(ctx: FitContext) -> Fitted:
    import torch

    from scenesearch.evaluation import fidelity
    from scenesearch.evaluation.probe import ProbeRow, format_rows, probe
    from scenesearch.features.vgg import resolve_device
    from scenesearch.models.lorbms import LORBMS, train
    from scenesearch.models.train import config_hash

    c, run, variant = ctx.config, ctx.run, ctx.entry.variant
    src = Path(ctx.inputs.need("images", "lorbms"))
    images = storage.read_array(src / "images.npy", mmap=True)
    index = ctx.index.to_pydict()
    data, rows = mixing_data(images, index, ctx.inputs.need("clusters", "lorbms"), c.max_images, run.seed)
    image_size = int(images.shape[-1])
    weights = loss_weights(c, variant)
    torch.manual_seed(run.seed)
    model = LORBMS(sizes(c, image_size))
    tcfg = dataclasses.replace(run.train, epochs=c.epochs, batch_size=c.batch_size, lr=c.lr)
    section = {k: v for k, v in dataclasses.asdict(c).items() if k not in ("gpu", "variants", "epochs")}
    run_hash = config_hash(tcfg, {"method": "lorbms", "variant": variant, "seed": run.seed, "n": len(rows), **section})
    last_grid = {}

    def on_grid(epoch: int, image) -> None:
        last_grid["png"] = image
        if ctx.log_image is not None:
            ctx.log_image("mixed_scenes", image, epoch)

    t0 = time.perf_counter()
    result = train(model, data, tcfg, weights, ctx.checkpoint_dir, run.seed, run_hash, c.lr, c.batch_size, ctx.on_epoch, on_grid, c.grid_rows, ctx.progress)
    train_seconds = time.perf_counter() - t0
    device = resolve_device(run.train.device, "train.device")
    model.eval()
    emb = embed_all(model.embed, images, device)
    buf = io.BytesIO()
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, buf)
    storage.write_bytes(ctx.out_dir / NETWORK_FILE, buf.getvalue())
    if last_grid:
        storage.write_bytes(ctx.out_dir / "grid.png", to_png(last_grid["png"]))

    # the linear probe (labels are read from here on, for the measurement only)
    t1 = time.perf_counter()
    tr, ytr, te, yte, classes = probe_rows(index)
    seeds = [run.seed + s for s in range(c.probe_seeds)]
    vgg_feats = read_array_rows(ctx.inputs.need("features", "lorbms"), "features.npy", ctx.index)

    def random_encoder(seed: int):
        torch.manual_seed(10_000 + seed)
        fresh = LORBMS(sizes(c, image_size)).to(device).eval()
        f = embed_all(fresh.embed, images[np.concatenate([tr, te])], device)
        return f[: len(tr)], f[len(tr) :]

    d_feats = embed_all(model.discriminator.features, images[np.concatenate([tr, te])], device)
    table: list[ProbeRow] = [
        probe("random encoder (same architecture, untrained)", random_encoder, ytr, yte, seeds, c.probe_fraction),
        probe("LORBMS encoder (frozen)", lambda s: (emb[tr], emb[te]), ytr, yte, seeds, c.probe_fraction),
    ]
    if c.finetune_epochs:
        accs = [finetune_accuracy(model, images, tr, ytr, te, yte, len(classes), c.finetune_epochs, c.finetune_lr, s, c.probe_fraction, device) for s in seeds]
        table.append(ProbeRow(f"LORBMS encoder (fine-tuned, {c.finetune_epochs} epochs)", tuple(accs)))
    table += [
        probe("LORBMS discriminator (frozen)", lambda s: (d_feats[: len(tr)], d_feats[len(tr) :]), ytr, yte, seeds, c.probe_fraction),
        probe(f"VGG16 descriptor + PCA (weights: {run.features.weights})", lambda s: (vgg_feats[tr], vgg_feats[te]), ytr, yte, seeds, c.probe_fraction),
    ]
    probe_seconds = time.perf_counter() - t1
    chance = float(np.bincount(yte).max() / len(yte))
    report = [format_rows(table, f"### {ctx.entry.key}: linear probe ({len(classes)} classes, {len(tr)} train / {len(te)} test images; "
                                 f"majority class {100 * chance:.1f}%)")]
    metrics: dict[str, float] = {}
    for key, row in zip(("random", "encoder", "finetuned", "discriminator", "vgg") if c.finetune_epochs else ("random", "encoder", "discriminator", "vgg"), table):
        metrics[f"probe_{key}_mean"], metrics[f"probe_{key}_sd"] = row.mean, row.sd

    # realism of the mixed scenes
    params = {"loss_weights": str(dataclasses.asdict(weights)), "precision": result.precision, "device": result.device}
    if c.fidelity_images:
        t2 = time.perf_counter()
        real, fake = mixed_images(model, data, c.fidelity_images, run.seed, device)
        embed, dim, vgg_weights = vgg_embedder(ctx)
        fid = fidelity.measure(real, fake, run.evaluate.inception_weights, embed, dim)
        metrics.update(fid.metrics)
        lines = [f"fid_vgg {fid.metrics['fid_vgg']:.4g} (Fréchet distance in the VGG16 descriptor + PCA space, weights: {vgg_weights}; "
                 f"{len(real)} references vs {len(fake)} mixed scenes; not FID)"]
        if fid.skipped:
            lines.append(fid.skipped)
            params["fid"] = fid.skipped
        else:
            lines.append(f"FID {fid.metrics['fid']:.2f}, IS {fid.metrics['is_mean']:.2f} ± {fid.metrics['is_std']:.2f} (Inception weights: {run.evaluate.inception_weights})")
        report += ["", f"### {ctx.entry.key}: mixed scenes", "", *[f"- {line}" for line in lines]]
        metrics["fidelity_seconds"] = time.perf_counter() - t2
    report += ["", f"Training: {result.epochs_run} epochs, {len(rows)} images ({int((data.candidates[:, 0] >= 0).sum())} with candidates), "
                   f"{train_seconds:.0f} s on {result.device} ({result.precision}); probe {probe_seconds:.0f} s."]
    metrics.update({"epochs_run": result.epochs_run, "train_images_per_s": result.images_per_s, "n_train_images": len(rows),
                    "train_seconds": train_seconds, "probe_seconds": probe_seconds, "resumed_from_epoch": result.resumed_from,
                    "n_parameters": sum(p.numel() for p in model.parameters())})
    meta = {**model.config(), "seed": run.seed, "precision": result.precision, "device": result.device, "run_hash": run_hash}
    return Fitted(emb.astype(np.float32), meta, metrics, params, result.history, report="\n".join(report))


# --------------------------------------------------------------------------------------------
# loading and scoring
# --------------------------------------------------------------------------------------------

class LORBMSRetriever:
    def __init__(self, model, image_size: int):
        self.model, self.image_size = model, image_size

    def embed(self, images):
        import torch

        with torch.inference_mode():
            return self.model.embed(images.float()).float()

    def score(self, queries, gallery):
        from scenesearch.distances import min_view_cosine_distances

        return min_view_cosine_distances(queries, gallery)


def load(folder: Path, meta: dict) -> LORBMSRetriever:
    import torch

    from scenesearch.models.lorbms import LORBMS, Sizes

    model = LORBMS(Sizes(tuple(meta["channels"]), int(meta["feature_channels"]), int(meta["image_size"])))
    model.load_state_dict(torch.load(io.BytesIO(storage.read_bytes(Path(folder) / NETWORK_FILE)), map_location="cpu", weights_only=True))
    return LORBMSRetriever(model.eval(), int(meta["image_size"]))


def variants(config: LORBMSConfig) -> tuple[str, ...]:
    return tuple(config.variants)


METHOD = Method(
    name="lorbms",
    summary="scene mixing (LORBMS): quadrant-mixing GAN over k-means-similar images; its encoder's pooled quadrant features, min over views",
    config=LORBMSConfig,
    consumes=("images", "features", "clusters"),  # features: the VGG descriptor of the probe and fid_vgg
    fit=fit,
    load=load,
    trains=True,
    variants=variants,
)

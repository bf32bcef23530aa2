"""One typed configuration for a whole run: a frozen dataclass per step under RunConfig.

Presets are YAML files in ``configs/`` (``default``, ``smoke``, ``full``). Loading validates
every field once, at the start, and a bad value raises ConfigError naming the field, e.g.
``features.pca_dim must be an integer > 0, got -1``. Importing this module has no side effects.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from scenesearch.errors import ConfigError

PRESETS_DIR = Path(__file__).resolve().parent.parent / "configs"
# or a path / s3:// URI to a state dict; selfsup: trained by the features step itself (features.selfsup)
WEIGHTS_CHOICES = ("none", "imagenet", "selfsup")
DEVICE_CHOICES = ("auto", "cpu", "cuda")
PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16")
# Domain randomisation (scenesearch.augment): "background" composites a render onto a random
# background through its alpha mask and "geometry" moves / scales / crops it (renders only); the
# photometric rest also applies to query photos of the train split.
AUGMENT_OPS = ("background", "geometry", "light", "colour", "blur", "noise", "jpeg")
CROP_REDUCE_CHOICES = ("min", "mean")
INDEX_CHOICES = ("exact-numpy", "flat", "ivfpq")  # scenesearch.index
KMEANS_BACKENDS = ("sklearn", "faiss")


@dataclass(frozen=True)
class DataConfig:
    """Where the dataset is and how to split it; also the embedded benchmark's size."""

    root: str = "data/embedded"
    generate: bool = True  # generate the embedded benchmark at `root` when it is absent
    n_classes: int = 10
    scenes_per_class: int = 10
    query_scenes_per_class: int = 2  # held-out scenes the query photos are rendered from
    queries_per_class: int = 10
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)  # train, val, test
    # items: every class in every split (per-item split) | zero_shot: classes are seen or unseen;
    # unseen classes go wholly to the test split and never reach training
    split: str = "items"
    unseen_classes: tuple[str, ...] = ()  # zero_shot: these classes are unseen (else <root>/class_splits.csv, else the fraction)
    unseen_fraction: float = 0.25  # zero_shot: this share of the classes, drawn with the seed
    # embedded benchmark: classes of single objects (one model per scene, like most model
    # collections) beside the n_classes scene classes
    n_object_classes: int = 0
    # embedded benchmark: also write the clean, centred query renders of before as the domain
    # photo_easy (folder easy_queries/), beside the hard photos in queries/
    easy_queries: bool = False
    # embedded benchmark: also write hand-like line drawings of the held-out scenes as the domain
    # sketch (folder sketches/)
    sketch_queries: bool = False
    # ingest refuses query images above this many pixels, read from the header before decoding:
    # 40 MP holds any camera photo, and decoded (3 bytes a pixel, plus PIL's 4-byte copy) stays
    # near 300 MB, well inside ingest's 1 GB; PIL's own bomb limit (~89.5 MP) is twice that
    max_image_pixels: int = 40_000_000

    def validate(self) -> None:
        _positive(self, "n_classes", "scenes_per_class", "query_scenes_per_class", "queries_per_class")
        if self.max_image_pixels < 1:
            raise ConfigError(f"data.max_image_pixels must be >= 1, got {self.max_image_pixels}")
        if self.n_object_classes < 0:
            raise ConfigError(f"data.n_object_classes must be >= 0, got {self.n_object_classes}")
        if len(self.split_fractions) != 3 or any(f < 0 for f in self.split_fractions) or abs(sum(self.split_fractions) - 1) > 1e-6:
            raise ConfigError(f"data.split_fractions must be three non-negative numbers summing to 1, got {list(self.split_fractions)}")
        _choice(self.split, ("items", "zero_shot"), "data.split")
        if not 0.0 < self.unseen_fraction < 1.0:
            raise ConfigError(f"data.unseen_fraction must be in (0, 1), got {self.unseen_fraction}")
        if len(set(self.unseen_classes)) != len(self.unseen_classes):
            raise ConfigError(f"data.unseen_classes must not repeat a class, got {list(self.unseen_classes)}")


@dataclass(frozen=True)
class RenderConfig:
    """13 views: view 0 the scene's own camera (or a canonical front-elevated view), 1..12 a circle."""

    size: int = 64  # output size of each view
    render_size: int = 128  # drawn at this size, then area-downsampled to `size`
    n_views: int = 13
    elevation_deg: float = 30.0  # of the circling views
    fov_deg: float = 45.0
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    up_axis: str = "auto"  # auto (decided per file: SketchUp and Z-extent cues) | y | z

    def validate(self) -> None:
        _positive(self, "size", "render_size", "n_views")
        _choice(self.up_axis, ("auto", "y", "z"), "render.up_axis")
        if self.render_size % self.size:
            raise ConfigError(f"render.render_size must be a multiple of render.size ({self.size}), got {self.render_size}")
        if not 1.0 <= self.fov_deg <= 120.0:
            raise ConfigError(f"render.fov_deg must be in [1, 120], got {self.fov_deg}")
        _unit_colour(self.background, "render.background")


@dataclass(frozen=True)
class PreprocessConfig:
    size: int = 64
    flips: bool = True  # add the horizontal flip of every image

    def validate(self) -> None:
        _positive(self, "size")


@dataclass(frozen=True)
class SelfSupConfig:
    """Contrastive (SimCLR, NT-Xent) pretraining of the VGG16 backbone on the dataset's own images,
    without labels, for ``features.weights: selfsup`` (scenesearch.features.selfsup)."""

    epochs: int = 6
    batch_size: int = 32  # images per step; each brings two views, the other 2 * (batch - 1) views are its negatives
    lr: float = 1e-3  # Adam, warm-up then cosine; the trunk trains with batch norms (folded into its convs after)
    weight_decay: float = 1e-6
    temperature: float = 0.2  # of the NT-Xent softmax
    projection_dim: int = 128  # output of the projection head on GAP(conv5_3) (dropped after training)
    hidden_dim: int = 512  # of the projection head
    input_size: int = 32  # training input side; the descriptors are still extracted at features.input_size
    max_images: int = 0  # train on at most this many images (a seeded sample); 0: all of them
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on a CPU | fp32 | bf16 (autocast, also on a CPU)
    # the views come from train.augment with this chance per op instead of train.augment.p: from
    # scratch, at 0.8 the two views share too little for a few hundred steps to learn from
    augment_p: float = 0.5

    def validate(self) -> None:
        _choice(self.precision, ("auto", "fp32", "bf16"), "features.selfsup.precision")
        if not 0.0 <= self.augment_p <= 1.0:
            raise ConfigError(f"features.selfsup.augment_p must be in [0, 1], got {self.augment_p}")
        for name in ("epochs", "lr", "temperature", "projection_dim", "hidden_dim"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"features.selfsup.{name} must be > 0, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise ConfigError(f"features.selfsup.batch_size must be >= 2 (NT-Xent needs negatives), got {self.batch_size}")
        if self.weight_decay < 0:
            raise ConfigError(f"features.selfsup.weight_decay must be >= 0, got {self.weight_decay}")
        if self.input_size < 32:
            raise ConfigError(f"features.selfsup.input_size must be >= 32 (VGG16 pools five times), got {self.input_size}")
        if self.max_images < 0 or self.max_images == 1:
            raise ConfigError(f"features.selfsup.max_images must be 0 (all) or >= 2, got {self.max_images}")


@dataclass(frozen=True)
class FeaturesConfig:
    """VGG16 multi-layer descriptor [fc7, GAP(conv5_3), GAP(conv4_3), GAP(conv3_3)] + PCA."""

    weights: str = "none"  # none | imagenet | selfsup (trained here first, see selfsup) | a state-dict path or s3:// URI
    input_size: int = 64  # VGG input side; 224 is the ImageNet size, ~8x slower on a CPU
    batch_size: int = 32
    device: str = "auto"
    pca_dim: int = 128
    # also write the VGG16 conv maps (pool4 and conv5_3, float16) beside the descriptors, so the methods
    # over conv maps (pooled, siamese_gem, triplet_gem) at this input size start from them
    keep_maps: bool = False
    selfsup: SelfSupConfig = field(default_factory=SelfSupConfig)  # used with weights: selfsup only

    def validate(self) -> None:
        self.selfsup.validate()
        _positive(self, "input_size", "batch_size", "pca_dim")
        if self.input_size < 32:
            raise ConfigError(f"features.input_size must be >= 32 (VGG16 pools five times), got {self.input_size}")
        _choice(self.device, DEVICE_CHOICES, "features.device")
        if not self.weights:
            raise ConfigError(f"features.weights must be one of {list(WEIGHTS_CHOICES)} or a path, got ''")


@dataclass(frozen=True)
class SimilarityConfig:
    """k-means over render features; 0 clusters means one per class."""

    n_clusters: int = 0
    n_neighbours: int = 10
    backend: str = "sklearn"  # k-means by scikit-learn or by FAISS (faster on large galleries)
    n_candidates: int = 8  # per train-split image: the images of its cluster scene mixing may swap in (candidates.parquet)

    def validate(self) -> None:
        if self.n_clusters < 0:
            raise ConfigError(f"similarity.n_clusters must be >= 0 (0 = number of classes), got {self.n_clusters}")
        _positive(self, "n_neighbours", "n_candidates")
        _choice(self.backend, KMEANS_BACKENDS, "similarity.backend")


@dataclass(frozen=True)
class AugmentConfig:
    """Domain randomisation of training images, on the fly on the training device (scenesearch.augment)."""

    ops: tuple[str, ...] = AUGMENT_OPS  # [] turns it off
    # Measured on the embedded benchmark: stronger settings (p 0.8, scale from 0.45, blur to 1.5,
    # noise to 0.06, JPEG from 30) leave cvae1 at chance for its first ~6 epochs; these learn in 2-3
    p: float = 0.5  # chance that each op applies to an image
    scale: tuple[float, float] = (0.6, 1.0)  # geometry: the render's new size, share of the frame
    translate: float = 0.3  # geometry: largest shift, share of the frame side (parts may leave it)
    rotate_deg: float = 10.0  # geometry: largest in-plane rotation
    brightness: float = 0.4  # colour: v2.ColorJitter factors
    contrast: float = 0.4
    saturation: float = 0.5
    hue: float = 0.05
    light: float = 0.6  # light: strength of a random directional shading ramp and intensity change
    blur_sigma: tuple[float, float] = (0.1, 1.0)
    noise_std: tuple[float, float] = (0.0, 0.04)
    jpeg_quality: tuple[int, int] = (50, 95)

    def validate(self) -> None:
        for op in self.ops:
            _choice(op, AUGMENT_OPS, "train.augment.ops")
        if len(set(self.ops)) != len(self.ops):
            raise ConfigError(f"train.augment.ops must not repeat an op, got {list(self.ops)}")
        if not 0.0 <= self.p <= 1.0:
            raise ConfigError(f"train.augment.p must be in [0, 1], got {self.p}")
        _range(self.scale, "train.augment.scale", 0.05, 2.0)
        _range(self.blur_sigma, "train.augment.blur_sigma", 0.0, 10.0)
        _range(self.noise_std, "train.augment.noise_std", 0.0, 1.0)
        _range(self.jpeg_quality, "train.augment.jpeg_quality", 1, 100)
        for name in ("translate", "brightness", "contrast", "saturation", "light"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"train.augment.{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.hue <= 0.5:
            raise ConfigError(f"train.augment.hue must be in [0, 0.5], got {self.hue}")
        if not 0.0 <= self.rotate_deg <= 180.0:
            raise ConfigError(f"train.augment.rotate_deg must be in [0, 180], got {self.rotate_deg}")


@dataclass(frozen=True)
class TrainConfig:
    """Shared settings of every method that trains (one DAG branch per configured method variant)."""

    epochs: int = 30  # at most; early stopping usually ends sooner
    patience: int = 5  # epochs without a better validation metric before stopping
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    device: str = "auto"  # auto: CUDA when the task has it, else the CPU
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU | fp32 | bf16 | fp16 (grad scaler)
    checkpoint_root: str = ""  # empty: beside the model output; else <root>/<parent run id>/<key>, so a retried task resumes
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def validate(self) -> None:
        self.augment.validate()
        _positive(self, "epochs", "patience", "batch_size", "lr")
        if self.weight_decay < 0:
            raise ConfigError(f"train.weight_decay must be >= 0, got {self.weight_decay}")
        _choice(self.device, DEVICE_CHOICES, "train.device")
        _choice(self.precision, PRECISION_CHOICES, "train.precision")


@dataclass(frozen=True)
class RetrieveConfig:
    """How a query image is embedded: whole, or also as test-time crops (scenesearch.crops)."""

    # each scale s in [0.5, 1) adds five s-sized crops (four corners and the centre) resized to the full
    # input; the whole image is always one of the crops. []: the whole image only
    crop_scales: tuple[float, ...] = ()
    crop_reduce: str = "min"  # a scene's distance to the query: min | mean over the crops
    # how the descriptor methods search the gallery views (scenesearch.index): exact-numpy (brute force in
    # memory), flat (FAISS exact inner product) or ivfpq (FAISS inverted lists + product quantisation)
    index: str = "exact-numpy"
    index_k: int = 1000  # flat / ivfpq: views searched per query; scenes with none of them rank last

    def validate(self) -> None:
        _choice(self.crop_reduce, CROP_REDUCE_CHOICES, "retrieve.crop_reduce")
        _choice(self.index, INDEX_CHOICES, "retrieve.index")
        _positive(self, "index_k")
        for s in self.crop_scales:
            # below 0.5 the five crops leave bands uncovered between the corners
            if not 0.5 <= s < 1.0:
                raise ConfigError(f"retrieve.crop_scales must hold numbers in [0.5, 1) (the whole image is always used), got {list(self.crop_scales)}")
        if len(set(self.crop_scales)) != len(self.crop_scales):
            raise ConfigError(f"retrieve.crop_scales must not repeat a scale, got {list(self.crop_scales)}")


@dataclass(frozen=True)
class EvaluateConfig:
    k: int = 200  # cutoff of P@K and mAP@K
    splits: tuple[str, ...] = ("val", "test")  # query splits reported
    gallery_queries: int = 6  # queries shown in the top-k gallery image
    gallery_top: int = 5
    # torch-fidelity's InceptionV3 state dict (a local path or s3://) for FID / IS of generated
    # images; empty: not computed (fid_vgg, in the VGG descriptor space, is reported instead)
    inception_weights: str = ""

    def validate(self) -> None:
        _positive(self, "k", "gallery_queries", "gallery_top")
        if not self.splits:
            raise ConfigError("evaluate.splits must name at least one of train, val, test, all")
        for s in self.splits:
            _choice(s, ("train", "val", "test", "all"), "evaluate.splits")


@dataclass(frozen=True)
class TrackingConfig:
    tracking_uri: str = ""  # empty: $MLFLOW_TRACKING_URI, else sqlite:///mlruns.db in the project
    experiment: str = "scenesearch"
    # A tracking server that stops answering mid-run: MLflow's client retries each call this many
    # times, sleeping backoff_factor * 2^(n-1) s between tries (capped at 120 s): with 7 and 2,
    # about 4 minutes, MLflow's own defaults. Then the step fails in one sentence.
    http_retries: int = 7
    http_backoff_factor: int = 2
    http_timeout_s: int = 120  # one call's timeout

    def validate(self) -> None:
        if not self.experiment:
            raise ConfigError("tracking.experiment must be a non-empty name")
        if self.http_retries < 0:
            raise ConfigError(f"tracking.http_retries must be >= 0, got {self.http_retries}")
        if self.http_backoff_factor < 0:
            raise ConfigError(f"tracking.http_backoff_factor must be >= 0, got {self.http_backoff_factor}")
        _positive(self, "http_timeout_s")


@dataclass(frozen=True)
class RegistryConfig:
    """The MLflow model registry: one registered model, `champion` on the best version."""

    name: str = "scenesearch"
    metric: str = ""  # higher is better, compared only on the same dataset fingerprint; "": test_mAP, test_unseen_mAP with a zero-shot split
    top_k: int = 10  # default number of scenes a served model returns

    def validate(self) -> None:
        if not self.name or "/" in self.name or ":" in self.name:
            raise ConfigError(f"registry.name must be a non-empty name without '/' or ':', got '{self.name}'")
        _positive(self, "top_k")


@dataclass(frozen=True)
class ClusterConfig:
    """How the DAG runs on Kubernetes. kfp.local uses `shards` and ignores the rest."""

    shards: int = 1  # render and VGG descriptors fan out over this many ParallelFor tasks
    image_registry: str = ""  # e.g. registry.example.com/team; empty: local names scenesearch/<kind>
    image_tag: str = ""  # empty: the git commit of the checkout that compiles (what `make images` tags)
    cache: bool = True  # cache the deterministic shard tasks by their inputs
    retries: int = 2  # retries of every task, exponential backoff from 30 s (transient I/O, preemption)
    cpu_request: str = "1"
    memory_request: str = "4Gi"
    gpu_cpu_request: str = "4"  # tasks with a GPU (descriptors, training)
    gpu_memory_request: str = "16Gi"
    gpu_node_selector: tuple[str, ...] = ()  # label=value pairs for tasks with a GPU
    gpu_tolerations: tuple[str, ...] = ("nvidia.com/gpu:NoSchedule",)  # key[=value]:Effect
    env_config_map: str = "scenesearch-env"  # MLFLOW_TRACKING_URI, AWS_ENDPOINT_URL... (infra/); empty: none
    env_secret: str = "scenesearch-s3"  # AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (infra/); empty: none

    def validate(self) -> None:
        _positive(self, "shards")
        if self.retries < 0:
            raise ConfigError(f"cluster.retries must be >= 0, got {self.retries}")
        if any(c in self.image_tag for c in ":/@ "):
            raise ConfigError(f"cluster.image_tag must be a plain tag without ':', '/', '@' or spaces, got '{self.image_tag}'")
        for item in self.gpu_node_selector:
            if item.count("=") != 1 or not all(item.split("=")):
                raise ConfigError(f"cluster.gpu_node_selector entries look like label=value, got '{item}'")
        for item in self.gpu_tolerations:
            key, sep, effect = item.rpartition(":")
            if not sep or not key or effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
                raise ConfigError(f"cluster.gpu_tolerations entries look like key[=value]:NoSchedule|PreferNoSchedule|NoExecute, got '{item}'")

    def image(self, kind: str, commit: str = "unknown") -> str:
        """The image of a task kind (base, render, gpu) for this run; `commit` tags it when image_tag is empty."""
        if kind not in ("base", "render", "gpu"):
            raise ConfigError(f"unknown image kind '{kind}'; known: base, render, gpu")
        sha = commit.removesuffix("-dirty")
        tag = self.image_tag or (sha[:7] if sha != "unknown" else "latest")
        return "/".join(p for p in (self.image_registry.rstrip("/"), "scenesearch") if p) + f"/{kind}:{tag}"


@dataclass(frozen=True)
class RunConfig:
    name: str = "default"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    similarity: SimilarityConfig = field(default_factory=SimilarityConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    retrieve: RetrieveConfig = field(default_factory=RetrieveConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    # The retrieval methods that run, each with its own section (methods.<name>.*): validated by
    # the method itself through scenesearch.methods, so this module imports no method.
    methods: dict[str, Any] = field(default_factory=dict)
    plugins: tuple[str, ...] = ()  # extra modules defining a METHOD (third-party methods)

    def registry_metric(self) -> str:
        """The metric that decides the champion: registry.metric, else the split's headline mAP
        (the unseen classes' with a zero-shot split: what zero-shot retrieval is judged on)."""
        return self.registry.metric or ("test_unseen_mAP" if self.data.split == "zero_shot" else "test_mAP")

    def validate(self) -> "RunConfig":
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        for name, sec in self.methods.items():
            if not isinstance(name, str) or not isinstance(sec, dict):
                raise ConfigError(f"methods.{name} must be a mapping of that method's fields (or {{}}), got {sec!r}")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                value.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def flat(self) -> dict[str, Any]:
        """Dotted keys to scalar values, for MLflow params."""
        out: dict[str, Any] = {}

        def walk(prefix: str, d: dict) -> None:
            for k, v in d.items():
                if isinstance(v, dict):
                    walk(f"{prefix}{k}.", v)
                else:
                    out[f"{prefix}{k}"] = ",".join(map(str, v)) if isinstance(v, (list, tuple)) else v

        walk("", self.to_dict())
        return out


# --------------------------------------------------------------------------------------------
# building from dicts, presets and overrides
# --------------------------------------------------------------------------------------------

def from_dict(data: dict[str, Any]) -> RunConfig:
    """Build and validate a RunConfig; unknown keys and wrong types name the field.

    Raises:
        ConfigError: on the first bad field.
    """
    return _build(RunConfig, data, "").validate()


def from_json(text: str) -> RunConfig:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"config JSON is not valid: {e}") from None
    return from_dict(data)


def load(preset_or_path: str = "default", overrides: list[str] | None = None) -> RunConfig:
    """Load a preset by name (``configs/<name>.yaml``) or a YAML file path, then apply overrides.

    Args:
        preset_or_path: preset name or path to a YAML file.
        overrides: ``section.field=value`` strings, values parsed as YAML (``features.pca_dim=64``).

    Raises:
        ConfigError: unknown preset, unreadable file, bad override or bad field.
    """
    path = Path(preset_or_path)
    if not path.suffix:
        path = PRESETS_DIR / f"{preset_or_path}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
            raise ConfigError(f"unknown preset '{preset_or_path}'; known presets: {', '.join(known)}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}' must look like section.field=value")
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': {p} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return from_dict(data)


def build_section(cls: type, data: Any, prefix: str) -> Any:
    """Build the dataclass `cls` from a mapping with the same checks as the whole config
    (a method's section uses it); `prefix` names the fields in errors, e.g. ``methods.cvae_m2.``."""
    return _build(cls, data, prefix)


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config field {prefix}{unknown[0]}; known fields: {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{prefix}{name}")
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, name: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, f"{name}.")
    origin = typing.get_origin(tp)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a mapping, got {value!r}")
        return {k: ({} if v is None else v) for k, v in value.items()}
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, name) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{name} must have {len(args)} items, got {len(value)}")
        return tuple(_coerce(a, v, name) for a, v in zip(args, value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        return value
    return value


def _positive(cfg: Any, *names: str) -> None:
    section = type(cfg).__name__.replace("Config", "").lower()
    for n in names:
        v = getattr(cfg, n)
        if v <= 0:
            raise ConfigError(f"{section}.{n} must be > 0, got {v}")


def _choice(value: str, choices: tuple[str, ...], name: str) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got '{value}'")


def _range(pair: tuple, name: str, lo: float, hi: float) -> None:
    if not lo <= pair[0] <= pair[1] <= hi:
        raise ConfigError(f"{name} must be [low, high] with {lo} <= low <= high <= {hi}, got {list(pair)}")


def _unit_colour(rgb: tuple[float, ...], name: str) -> None:
    if any(not 0.0 <= c <= 1.0 for c in rgb):
        raise ConfigError(f"{name} must hold three numbers in [0, 1], got {list(rgb)}")

"""The method interface: what every retrieval method declares and implements.

A method is one module in this package (or a plugin module named in the config's ``plugins``)
that defines ``METHOD = Method(...)``. The train, retrieve, evaluate, register and serve steps
and ``scenesearch query`` reach it through the registry (`scenesearch.methods.get`) by name;
nothing outside the method's module names it.

A method:

* declares its config section ``methods.<name>.*`` as a frozen dataclass (a `MethodConfig`
  subclass with ``validate(prefix)``), parsed and validated by the registry, so
  `scenesearch.config` never imports a method;
* declares the step outputs it consumes (`CONSUMABLE`): preprocessed images, VGG descriptors,
  k-means clusters, class semantics;
* may have variants (CVAE-M2's architectures): one DAG training branch per (method, variant);
* ``fit(ctx) -> Fitted``: trains (checkpointed under ``ctx.checkpoint_dir``, resumable) or just
  prepares, writes whatever it needs to reload itself into ``ctx.out_dir``, and embeds every
  row of ``ctx.index`` (queries and every gallery view);
* ``load(folder, meta) -> Retriever``: rebuilds itself from that folder, for retrieval and
  serving; a `Retriever` embeds query images and scores queries against the gallery.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

import numpy as np
import pyarrow as pa

from scenesearch.errors import ConfigError, DataError

if TYPE_CHECKING:  # torch is imported where it is used, so validating a config never pays for it
    import torch

    from scenesearch.config import RunConfig

CONSUMABLE = ("images", "features", "clusters", "semantics")


@dataclass(frozen=True)
class MethodConfig:
    """Fields every method's config section has; a method subclasses it with its own."""

    gpu: bool = False  # request one NVIDIA GPU for this method's training task on a cluster

    def validate(self, prefix: str) -> None:
        """Raise ConfigError naming the field (``prefix`` is ``methods.<name>``)."""


@dataclass(frozen=True)
class Entry:
    """One configured (method, variant): one training branch of the DAG, one row of every report."""

    method: str
    variant: str  # "" for a method without variants
    key: str  # the variant's name, else the method's: names the model folder, metrics and distances
    trains: bool
    serves: bool
    gpu: bool
    consumes: tuple[str, ...]
    config: Any  # the method's validated section methods.<name> (its own MethodConfig dataclass)


@dataclass(frozen=True)
class Inputs:
    """Step output folders a method may read; empty when the method does not consume it."""

    images: str = ""  # preprocess: images.npy (N, 3, H, W) float32 in [0, 1] + index.parquet (always given: the rows to embed)
    features: str = ""  # features: features.npy (N, d) + index.parquet + pca.npz
    clusters: str = ""  # similarity: clusters.parquet
    semantics: str = ""  # ingest: semantics.parquet, when the dataset has semantics.csv

    def need(self, name: str, method: str) -> str:
        """The folder of input `name`, or a DataError naming what is missing."""
        value = getattr(self, name)
        if not value:
            raise DataError(f"method {method} needs the {name} step's output, but it was not given")
        return value


@dataclass(frozen=True)
class FitContext:
    """Everything `fit` gets. ``index`` is the rows to embed, with the labels that training must not
    see (unseen classes of a zero-shot split) blanked to ""; a method reads labels from it only, never
    from the index files of its input folders (they keep the true labels for evaluation)."""

    entry: Entry
    run: "RunConfig"
    inputs: Inputs
    index: pa.Table  # preprocess index columns: item_id, label, domain, split, class_split, view, flip
    out_dir: Path
    checkpoint_dir: str
    on_epoch: Callable[[int, dict[str, float]], None] | None = None
    progress: bool = False
    # (key, (3, H, W) float image in [0, 1], step): an image the method shows per epoch (MLflow's image log)
    log_image: Callable[[str, Any, int], None] | None = None

    @property
    def config(self) -> Any:
        """The method's own config section (``entry.config``)."""
        return self.entry.config


@dataclass
class Fitted:
    """What `fit` returns; the train step writes embeddings and meta beside the method's files."""

    embeddings: np.ndarray  # (N, d) float32: row i embeds row i of ctx.index
    meta: dict[str, Any]  # JSON: whatever `load` needs besides the method's files (image size, ...)
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    report: str = ""  # Markdown the method adds to the run's report (its own tables); printed at the end of a run


class Retriever(Protocol):
    """A loaded method: embeds query images, scores queries against the gallery.

    Retrieval may be asymmetric: `fit` may embed query rows and scene views by different functions
    (a generative method turns a query into generated image descriptors) as long as both have one
    width; `embed` is the query side, what a served model applies to a new image.
    """

    image_size: int  # side of the preprocessed square images `embed` takes

    def embed(self, images: "torch.Tensor") -> "torch.Tensor":
        """(B, 3, image_size, image_size) float in [0, 1] -> (B, d) float32."""

    def score(self, queries: "torch.Tensor", gallery: "torch.Tensor") -> "torch.Tensor":
        """(Q, d) query rows and (S, V, d) per-scene view rows -> (Q, S) distances (lower is closer)."""


def _no_variants(config: Any) -> tuple[str, ...]:
    return ("",)


@dataclass(frozen=True)
class Method:
    """A registry entry; see the module docstring."""

    name: str
    summary: str
    config: type  # a frozen MethodConfig subclass
    consumes: tuple[str, ...]
    fit: Callable[[FitContext], Fitted]
    load: Callable[[Path, dict], Retriever]
    trains: bool = False  # True: fit learns weights (checkpointed, per-epoch metrics); one DAG branch per variant
    serves: bool = True  # False: it cannot answer a query image (not logged as an MLflow model)
    variants: Callable[[Any], tuple[str, ...]] = _no_variants

    requirements: tuple[str, ...] = ()  # extra packages its served model imports (pinned from this environment)

    def __post_init__(self):
        unknown = sorted(set(self.consumes) - set(CONSUMABLE))
        if unknown:
            raise ConfigError(f"method {self.name} consumes unknown inputs {unknown}; known: {', '.join(CONSUMABLE)}")
        if not (dataclasses.is_dataclass(self.config) and issubclass(self.config, MethodConfig)):
            raise ConfigError(f"method {self.name}: config must be a frozen dataclass subclassing MethodConfig")


# --------------------------------------------------------------------------------------------
# small helpers for method modules
# --------------------------------------------------------------------------------------------

def read_array_rows(folder: str, name: str, index: pa.Table) -> np.ndarray:
    """`folder/name` (an .npy with one row per index row), checked against the index length.

    Raises:
        DataError: the row counts differ.
    """
    from scenesearch import storage

    x = storage.read_array(Path(folder) / name)
    if len(x) != index.num_rows:
        raise DataError(f"{Path(folder) / name} has {len(x)} rows for {index.num_rows} images; rerun the step that wrote it")
    return x


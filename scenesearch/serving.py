"""Any servable method's model folder as an MLflow model that answers queries: images in, top-k scenes out.

One logged MLflow model per (method, variant) holds
- the model folder of the train step (``method.json`` and the method's own files: weights, PCA...),
- the gallery: every scene's id, label and embedded views (``gallery.npz``),
- the scenesearch package (and any plugin module) as code,
and a ``python_function`` flavour (`SceneRetrievalModel`, the same class for every method) whose
``predict`` takes a batch of RGB uint8 images (B, H, W, 3) of any size, preprocesses them as the
pipeline does, lets the method embed and score them (whole, and as the test-time crops recorded
in method.json: `scenesearch.crops`), and returns one row per (query, rank):
scene id, class, distance. It loads with ``mlflow.pyfunc.load_model("models:/scenesearch@champion")``
and serves with ``mlflow models serve --env-manager local``.

Bad input (another shape or dtype, values outside [0, 255] for ints or [0, 1] for floats, NaN, an
empty batch, more than MAX_BATCH images, images over MAX_QUERY_PIXELS or under MIN_SIDE) raises
`BadQuery`, which the scoring server answers with HTTP 400 and its one-sentence message. Over
HTTP, MLflow parses the JSON into the signature's uint8 before predict sees it: it rejects values
outside [0, 255], NaN and strings itself (400), but truncates in-range floats silently (0.5 -> 0),
so send integer pixels.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from scenesearch.errors import ItemError

try:  # the pyfunc base class; mlflow is a dependency, but keep the module importable for type checks
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover
    PythonModel, INVALID_PARAMETER_VALUE = object, None

    class MlflowException(Exception):  # noqa: N818 - MLflow's name
        def __init__(self, message, error_code=None):
            super().__init__(message)
            self.message = message

log = logging.getLogger(__name__)
PACKAGE_DIR = Path(__file__).resolve().parent  # scenesearch/, shipped with the model as code
SERVING_PACKAGES = ("mlflow", "torch", "torchvision", "numpy", "pandas", "pillow", "pyarrow", "scikit-learn", "pyyaml")
# What the train step writes that serving does not need (the gallery is rebuilt as gallery.npz)
NOT_SERVED = ("embeddings.npy", "index.parquet", "checkpoint", "mlflow.json", "history.json", "query_crops.npy")
CROP_BATCH = 256  # crops per embed call when a query is also embedded as crops
# What one predict call (one HTTP request) accepts; more is a 400 naming the limit, not an
# out-of-memory worker. A batch is one (B, H, W, 3) array, so all its images share one size.
MAX_BATCH = 64  # images per call
MAX_QUERY_PIXELS = 50_000_000  # height x width of one image (a 48-megapixel photo fits); also applied to query files
MIN_SIDE = 8  # pixels: smaller is not a photo (and breaks the resize)


class BadQuery(MlflowException, ItemError):
    """The query input is unusable (shape, dtype, range, size, batch); one sentence naming the problem.

    An MlflowException with INVALID_PARAMETER_VALUE, so `mlflow models serve` answers HTTP 400
    with this message (any other exception from predict becomes a 400 with a generic message),
    and an ItemError, so `query_files` reports it against the one image.
    """

    def __init__(self, message: str):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


def pip_requirements(extra: tuple[str, ...] = ()) -> list[str]:
    """Exact pins of what predict imports, from this environment (so MLflow never infers them);
    `extra`: a method's own requirements (`Method.requirements`)."""
    return [f"{p}=={metadata.version(p)}" for p in dict.fromkeys((*SERVING_PACKAGES, *extra))]


def build_gallery(model_dir: str | Path) -> dict[str, np.ndarray]:
    """Scene ids, labels and per-view embeddings (S, V, d) from a model folder."""
    from scenesearch.gallery import read_folder

    inputs = read_folder(model_dir)
    return {"scene_ids": np.array(inputs.scenes["item_id"]), "labels": np.array(inputs.scenes["label"]), "embeddings": inputs.scene_feats.astype(np.float32)}


class SceneRetrievalModel(PythonModel):
    """pyfunc for every method: (B, H, W, 3) uint8 images -> DataFrame(query, rank, scene_id, label, distance)."""

    def load_context(self, context):
        import torch

        from scenesearch import methods

        folder = Path(context.artifacts["model"])
        record = json.loads((folder / "method.json").read_text())
        methods.load_plugins(tuple(record.get("plugins", ())))
        self.method, self.key = record["method"], record["key"]
        self.retriever = methods.get(record["method"]).load(folder, record["meta"])
        g = np.load(folder / "gallery.npz", allow_pickle=False)
        self.scene_ids, self.labels = g["scene_ids"].tolist(), g["labels"].tolist()
        self.gallery = torch.from_numpy(g["embeddings"])
        self.default_top_k = int(record.get("top_k", 10))
        retrieve = record.get("retrieve") or {}  # absent in folders trained before test-time crops: none
        self.crop_scales, self.crop_reduce = tuple(retrieve.get("crop_scales") or ()), retrieve.get("crop_reduce", "min")

    def predict(self, context, model_input, params=None):
        import pandas as pd
        import torch

        from scenesearch.crops import score_with_crops
        from scenesearch.preprocess import preprocess_images

        images = _as_images(model_input)
        top_k = _top_k(params, self.default_top_k, len(self.scene_ids))
        x = preprocess_images(list(images), self.retriever.image_size, flips=False)
        with torch.inference_mode():
            d = score_with_crops(self.retriever, x, self.gallery, self.crop_scales, self.crop_reduce, CROP_BATCH)
        dist, idx = torch.topk(d, top_k, dim=1, largest=False, sorted=True)
        rows = [
            {"query": qi, "rank": r + 1, "scene_id": self.scene_ids[j], "label": self.labels[j], "distance": float(dist[qi, r])}
            for qi in range(len(images))
            for r, j in enumerate(idx[qi].tolist())
        ]
        return pd.DataFrame(rows, columns=["query", "rank", "scene_id", "label", "distance"])


def _top_k(params: dict | None, default: int, n_scenes: int) -> int:
    """The requested top_k (default: the logged one), at most the gallery's size; BadQuery if not a positive integer."""
    value = (params or {}).get("top_k")
    if value is None:
        return min(default, n_scenes)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise BadQuery(f"top_k must be a positive integer, got {value!r}")
    return min(int(value), n_scenes)


def _as_images(model_input) -> np.ndarray:
    """The pyfunc input as (B, H, W, 3) uint8: uint8 as is, ints in [0, 255] and floats in [0, 1] converted.

    Nothing is clipped: values outside those ranges are an error, as are other shapes, dtypes,
    NaN, an empty batch and more than MAX_BATCH images or MAX_QUERY_PIXELS pixels.

    Raises:
        BadQuery: naming the problem.
    """
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):  # a served tensor sometimes arrives as a one-column frame
        model_input = model_input.iloc[:, 0].to_numpy() if model_input.shape[1] == 1 else model_input.to_numpy()
        if len(model_input) and model_input.dtype == object:
            model_input = _stack(list(model_input))
    try:
        x = np.asarray(model_input)
    except ValueError:  # numpy refuses ragged nested lists
        raise BadQuery("the images of a batch must all have the same shape (batch, height, width, 3); got ragged lists") from None
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_) or np.issubdtype(x.dtype, np.complexfloating):
        raise BadQuery(f"expected numeric RGB pixels (uint8 in [0, 255] or floats in [0, 1]), got dtype {x.dtype}")
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3:
        raise BadQuery(f"expected RGB images shaped (batch, height, width, 3), got an array of shape {x.shape}")
    _check_size(x.shape)
    if x.dtype == np.uint8:
        return x
    if np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(x).all():
            raise BadQuery("the pixels contain NaN or infinite values")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0 or hi > 1:
            raise BadQuery(f"float pixels must lie in [0, 1] (send uint8 for [0, 255]), got values in [{lo:.4g}, {hi:.4g}]")
        from scenesearch.preprocess import to_uint8

        return to_uint8(x)
    lo, hi = int(x.min()), int(x.max())
    if lo < 0 or hi > 255:
        raise BadQuery(f"integer pixels must lie in [0, 255], got values in [{lo}, {hi}]")
    return x.astype(np.uint8)


def _stack(images: list) -> np.ndarray:
    shapes = {np.shape(i) for i in images}
    if len(shapes) > 1:
        raise BadQuery(f"the images of a batch must all have the same shape, got {len(shapes)} shapes: {sorted(shapes)[:3]}")
    return np.stack(images)


def _check_size(shape: tuple) -> None:
    """BadQuery unless a (B, H, W, 3) batch has 1..MAX_BATCH images of MIN_SIDE..MAX_QUERY_PIXELS."""
    b, h, w = shape[:3]
    if b == 0:
        raise BadQuery("the batch is empty: send at least one image")
    if b > MAX_BATCH:
        raise BadQuery(f"the batch has {b} images, more than the {MAX_BATCH} one call accepts: split it")
    if h < MIN_SIDE or w < MIN_SIDE:
        raise BadQuery(f"the images are {w}x{h} pixels, smaller than the {MIN_SIDE}x{MIN_SIDE} minimum")
    if h * w > MAX_QUERY_PIXELS:
        raise BadQuery(f"the images are {w}x{h} pixels, more than the {MAX_QUERY_PIXELS:,} a query image may have")


def signature(top_k: int):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
        outputs=Schema([ColSpec("long", "query"), ColSpec("long", "rank"), ColSpec("string", "scene_id"), ColSpec("string", "label"), ColSpec("double", "distance")]),
        params=ParamSchema([ParamSpec("top_k", "long", top_k)]),
    )


@dataclass(frozen=True)
class LoggedModel:
    model_uri: str  # models:/m-... of the logged model
    model_id: str


def _code_paths(plugins: list[str]) -> list[str]:
    """The scenesearch package plus each plugin's top-level module or package (MLflow puts them on sys.path)."""
    paths = [str(PACKAGE_DIR)]
    for name in plugins:
        top = importlib.import_module(name.split(".")[0])
        origin = Path(top.__file__)
        paths.append(str(origin.parent if origin.name == "__init__.py" else origin))
    return list(dict.fromkeys(paths))


def log_model(model_dir: str | Path, run_id: str, tracking_uri: str, example: np.ndarray, top_k: int = 10, tags: dict | None = None) -> LoggedModel:
    """Log a model folder of the train step as an MLflow model in run `run_id` (see the module doc).

    Args:
        example: one query image (H, W, 3) uint8: the input example.
    """
    import mlflow

    from scenesearch import methods, storage, train

    record = train.read_record(model_dir)
    methods.load_plugins(tuple(record.get("plugins", ())))
    requirements = pip_requirements(methods.get(record["method"]).requirements)
    mlflow.set_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        for rel in storage.list_files(model_dir):  # a local folder or an s3:// prefix
            if rel.split("/")[0] not in NOT_SERVED:
                (folder / rel).parent.mkdir(parents=True, exist_ok=True)
                (folder / rel).write_bytes(storage.read_bytes(storage.join(str(model_dir), rel)))
        (folder / "method.json").write_text(json.dumps({**record, "top_k": top_k}, indent=2))
        np.savez(folder / "gallery.npz", **build_gallery(model_dir))
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=SceneRetrievalModel(),
                artifacts={"model": str(folder)},
                code_paths=_code_paths(record.get("plugins", [])),
                signature=signature(top_k),
                input_example=(example[None].astype(np.uint8), {"top_k": min(3, top_k)}),
                pip_requirements=requirements,
                tags={k: str(v) for k, v in (tags or {}).items()},
            )
    return LoggedModel(info.model_uri, info.model_id)


def log_folder(model_dir: str | Path, run_id: str, tracking_uri: str, images_dir: str | Path, top_k: int, tags: dict, serves: bool) -> dict:
    """Log a model folder in run `run_id` when its method serves, and record the outcome in the
    folder's ``mlflow.json`` (key, run id, model URI and id; empty URI when not served), which the
    register step reads. Returns that record."""
    from scenesearch import storage, train

    record = {"key": train.read_record(model_dir)["key"], "model_uri": "", "model_id": "", "run_id": run_id}
    if serves:
        logged = log_model(model_dir, run_id, tracking_uri, first_query_image(images_dir), top_k, tags)
        record.update(model_uri=logged.model_uri, model_id=logged.model_id)
    storage.write_bytes(Path(model_dir) / "mlflow.json", json.dumps(record).encode())
    return record


def first_query_image(images_dir: str | Path) -> np.ndarray:
    """One preprocessed query image as (H, W, 3) uint8 (the MLflow input example); a render if there is none."""
    from scenesearch import storage
    from scenesearch.domains import is_query
    from scenesearch.preprocess import to_uint8

    src = Path(images_dir)
    index = storage.read_table(src / "index.parquet").to_pydict()
    rows = [i for i, (d, f) in enumerate(zip(index["domain"], index["flip"])) if is_query(d) and not f] or [0]
    x = np.asarray(storage.read_array(src / "images.npy", mmap=True)[rows[0]])
    return to_uint8(x.transpose(1, 2, 0))


def load(model_uri: str, tracking_uri: str | None = None):
    """The pyfunc model at `model_uri` (models:/name@alias, models:/name/3, runs:/..., a path).

    MLflow's own check of a model's requirements against this environment maps every installed
    distribution to its modules (about 2 s here, on every load); the model pins each of its
    packages exactly (`pip_requirements`), so they are compared by name instead, one warning per
    difference (`requirement_mismatches`), and the Python version likewise.
    """
    import platform

    import mlflow
    from mlflow.artifacts import download_artifacts

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    local = Path(download_artifacts(artifact_uri=model_uri))
    for mismatch in requirement_mismatches(local / "requirements.txt"):
        log.warning("model %s: %s", model_uri, mismatch)
    model = mlflow.pyfunc.load_model(str(local), suppress_warnings=True)
    logged = model.metadata.flavors.get("python_function", {}).get("python_version", "")
    if logged and logged.split(".")[:2] != platform.python_version().split(".")[:2]:
        log.warning("model %s was logged with Python %s; this is Python %s", model_uri, logged, platform.python_version())
    return model


def requirement_mismatches(requirements: str | Path) -> list[str]:
    """One sentence per `name==version` line of a model's requirements.txt that this environment
    does not match (a package missing, or another version); other lines are not checked."""
    if not Path(requirements).exists():
        return []
    out = []
    for line in Path(requirements).read_text().splitlines():
        name, sep, wanted = line.strip().partition("==")
        if not sep or not name or name.startswith(("-", "#")):
            continue
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            out.append(f"it requires {name}=={wanted}, which is not installed")
            continue
        if have != wanted:
            out.append(f"it requires {name}=={wanted}, this environment has {have}")
    return out


@dataclass
class Answer:
    """The ranked scenes for one query image, or why the image could not be used."""

    image: str
    results: list[dict]
    error: str = ""
    ranked_by: str = ""  # the method (and variant) that ranked them

    def to_dict(self) -> dict:
        if self.error:
            return {"image": self.image, "error": self.error}
        return {"image": self.image, "ranked_by": self.ranked_by, "results": self.results}

    def format(self) -> str:
        if self.error:
            return f"{self.image}: {self.error}"
        lines = [f"{self.image}  (ranked by {self.ranked_by})"] + [f"  {r['rank']:>3}  {r['scene_id']:<40} {r['label']:<14} {r['distance']:.4g}" for r in self.results]
        return "\n".join(lines)


def query_files(model_uri: str, tracking_uri: str, paths: list[str], top_k: int) -> list[Answer]:
    """Rank the scenes for each image file with the model at `model_uri`; a bad image gets an error, not an exception.

    Raises:
        ScenesearchError: the model cannot be loaded, or top_k < 1.
    """
    import time

    from scenesearch import storage
    from scenesearch.io import decode_image
    from scenesearch.errors import ScenesearchError

    if top_k < 1:
        raise ScenesearchError(f"--top-k must be >= 1, got {top_k}")
    t0 = time.perf_counter()
    try:
        model = load(model_uri, tracking_uri)
    except Exception as e:  # noqa: BLE001 - MLflow raises many types for "not there"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ScenesearchError(f"cannot load the model {model_uri} from {tracking_uri} ({first}); run `make run` first or pass --model") from None
    log_load = time.perf_counter() - t0
    served = model.unwrap_python_model()
    ranked_by = served.method if served.key == served.method else f"{served.method} {served.key}"
    answers = []
    for p in paths:
        try:
            image = decode_image(p, storage.read_bytes(p), max_pixels=MAX_QUERY_PIXELS, budget="the query image limit")  # from the header
            _check_size(image[None].shape)
        except BadQuery as e:  # the size checks do not know the file name
            answers.append(Answer(p, [], e.message if e.message.startswith(f"{p}: ") else f"{p}: {e.message}"))
            continue
        except ScenesearchError as e:
            answers.append(Answer(p, [], str(e)))
            continue
        frame = model.predict(image[None], params={"top_k": top_k})
        answers.append(Answer(p, frame.drop(columns=["query"]).to_dict("records"), ranked_by=ranked_by))
    log.info("model %s loaded in %.2f s", model_uri, log_load)
    return answers

"""The embedded benchmark: procedural scenes written as real mesh files, plus query "photos".

Gallery scenes go to ``scenes/<class>/``: the ``n_classes`` scene classes as a mix of GLB, OBJ(+MTL)
and SketchUp files, then the ``n_object_classes`` object classes (single models, no ground) as a
mix of OBJ, GLB, PLY, OFF and STL, the formats model collections use (OFF and STL carry no colour).

Query photos (``queries/<class>/``, domain photo) are made to differ from the gallery's clean renders
the way real photos do. Each is a render of a *held-out* scene of the same class (never in the
gallery), under another light, that is shrunk and placed off-centre (now and then partly out of
the frame) and composited through the renderer's coverage mask onto a background filling the
frame: a gradient, a procedural texture (value noise, stripes, checkers, blotches) or blurred
"clutter" (a render from inside another class's scene under a sky). Then a colour cast, gamma,
blur, sensor noise and JPEG compression; every fourth photo is stored as a .jpg. With
``easy_queries`` the clean query of before (the held-out scene framed by its bounding sphere,
lit differently, on a plain colour, slightly blurred and noisy) of the same scene goes to
``easy_queries/<class>/`` (domain photo_easy) under the same file stem, and with ``sketch_queries``
a hand-like line drawing of it (`scenesearch.data.sketch.sketch_query`: its visible edges from
another viewpoint, drawn as pencil strokes) goes to ``sketches/<class>/`` (domain sketch) likewise.

``semantics.csv`` holds each class's attributes (`CLASS_ATTRIBUTES`: what its builder places, and
how big the scene is). Everything is a function of the seed.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scenesearch import storage
from scenesearch.config import DataConfig
from scenesearch.data.ingest import GENERATED_MARKER
from scenesearch.data.sketch import sketch_query
from scenesearch.data.synthetic_scenes import (
    CLASS_ATTRIBUTE_NAMES,
    CLASS_ATTRIBUTES,
    OBJECT_CLASSES,
    SCENE_CLASSES,
    build_scene,
    write_scene,
)
from scenesearch.errors import ConfigError, DataError

PHOTO_SIZE = 128
OBJECT_FORMATS = ("obj", "glb", "ply", "off", "stl")
# Bumped whenever the generator's output changes, so a folder written by an older one is redone.
GENERATOR_VERSION = 3  # 2: hard query photos, object classes, easy queries; 3: sketch queries
JPEG_QUERY_EVERY = 4  # the 4th, 8th, ... hard query of a class is stored as .jpg, the others as .png


def scene_format(index: int) -> str:
    """File format of the index-th gallery scene of a scene class: one SketchUp file per class, then OBJ and GLB."""
    return "skp" if index == 0 else ("obj" if index % 3 == 1 else "glb")


def object_format(index: int) -> str:
    """File format of the index-th gallery model of an object class: OBJ, GLB, PLY, OFF, STL in turn."""
    return OBJECT_FORMATS[index % len(OBJECT_FORMATS)]


def query_format(index: int) -> str:
    """File format of the index-th hard query photo of a class (easy queries are always PNG)."""
    return "jpg" if index % JPEG_QUERY_EVERY == JPEG_QUERY_EVERY - 1 else "png"


@dataclass(frozen=True)
class GenerateResult:
    root: str
    n_scenes: int
    n_queries: int  # hard query photos (domain photo); easy ones and sketches are as many again when written


def generate(root: str | os.PathLike, cfg: DataConfig, seed: int = 0) -> GenerateResult:
    """Write the embedded benchmark to `root` (built in a temporary folder, renamed when whole).

    Each class draws from its own generator, so a class's files do not depend on how many other
    classes are generated, and the hard queries do not depend on ``cfg.easy_queries`` or
    ``cfg.sketch_queries`` (each of those domains has its own generator too).

    Raises:
        ConfigError: more scene or object classes asked for than the generator knows.
        DataError: `root` holds files that the generator did not write.
    """
    from tqdm import tqdm

    if cfg.n_classes > len(SCENE_CLASSES):
        raise ConfigError(f"data.n_classes must be <= {len(SCENE_CLASSES)} for the embedded benchmark, got {cfg.n_classes}")
    if cfg.n_object_classes > len(OBJECT_CLASSES):
        raise ConfigError(f"data.n_object_classes must be <= {len(OBJECT_CLASSES)} for the embedded benchmark, got {cfg.n_object_classes}")
    root = Path(root)
    # Only a folder carrying the generator's marker may be regenerated in place.
    if root.exists() and any(root.iterdir()) and not (root / GENERATED_MARKER).is_file():
        raise DataError(f"{root} exists and was not made by `scenesearch generate`; choose an empty or new folder")
    # (label, per-class seed, gallery format): scene classes keep the seeds they always had.
    classes = [(label, [seed, ci], scene_format) for ci, label in enumerate(SCENE_CLASSES[: cfg.n_classes])]
    classes += [(label, [seed, ci, 1], object_format) for ci, label in enumerate(OBJECT_CLASSES[: cfg.n_object_classes])]
    query_every = max(1, math.ceil(cfg.queries_per_class / cfg.query_scenes_per_class))
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    n_scenes = n_queries = 0
    try:
        for label, class_seed, file_format in tqdm(classes, desc="generate", unit="class"):
            rng = np.random.default_rng(class_seed)
            easy_rng = np.random.default_rng([*class_seed, 2])
            sketch_rng = np.random.default_rng([*class_seed, 3])
            clutter = tuple(c for c in SCENE_CLASSES if c != label)
            folders = ("scenes", "queries", *(("easy_queries",) if cfg.easy_queries else ()), *(("sketches",) if cfg.sketch_queries else ()))
            for folder in folders:
                (tmp / folder / label).mkdir(parents=True)
            for i in range(cfg.scenes_per_class):
                write_scene(build_scene(label, rng), tmp / "scenes" / label / f"{label}_{i:03d}.{file_format(i)}")
                n_scenes += 1
            for j in range(cfg.queries_per_class):
                if j % query_every == 0:
                    held_out = as_scene_mesh(build_scene(label, rng))  # a new scene, never written to the gallery
                photo = query_photo(held_out, rng, clutter)
                ext = query_format(j)
                (tmp / "queries" / label / f"{label}_q{j:03d}.{ext}").write_bytes(_encode(photo, ext))
                n_queries += 1
                if cfg.easy_queries:
                    easy = easy_query_photo(held_out, easy_rng)
                    (tmp / "easy_queries" / label / f"{label}_q{j:03d}.png").write_bytes(storage.png_bytes(easy))
                if cfg.sketch_queries:
                    sketch = sketch_query(held_out, sketch_rng, PHOTO_SIZE)
                    (tmp / "sketches" / label / f"{label}_q{j:03d}.png").write_bytes(storage.png_bytes(sketch))
        (tmp / "semantics.csv").write_text(semantics_csv(tuple(label for label, _, _ in classes)))
        (tmp / GENERATED_MARKER).write_text(stamp(cfg, seed))
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return GenerateResult(str(root), n_scenes, n_queries)


def stamp(cfg: DataConfig, seed: int) -> str:
    """What a generated folder was made from (the marker's text): generator version, seed and sizes."""
    fields = ("n_classes", "scenes_per_class", "query_scenes_per_class", "queries_per_class", "n_object_classes", "easy_queries", "sketch_queries")
    return json.dumps({"generator": GENERATOR_VERSION, "seed": seed, **{f: getattr(cfg, f) for f in fields}}, sort_keys=True) + "\n"


def was_generated(root: str | os.PathLike) -> bool:
    """True when `root` is a local folder that `generate` wrote (it carries the marker)."""
    return not str(root).startswith("s3://") and (Path(root) / GENERATED_MARKER).is_file()


def is_current(root: str | os.PathLike, cfg: DataConfig, seed: int) -> bool:
    """True when `root` holds a benchmark generated from these settings by this generator version."""
    marker = Path(root) / GENERATED_MARKER
    return marker.is_file() and marker.read_text() == stamp(cfg, seed)


def semantics_csv(classes: tuple[str, ...]) -> str:
    """The benchmark's semantics.csv: header ``class,<attribute>,...``, one row of CLASS_ATTRIBUTES per class.

    Args:
        classes: the generated classes, in order.

    Returns:
        The file's text.
    """
    lines = [",".join(("class", *CLASS_ATTRIBUTE_NAMES))]
    lines += [",".join((c, *(f"{v:g}" for v in CLASS_ATTRIBUTES[c]))) for c in classes]
    return "\n".join(lines) + "\n"


def _encode(image: np.ndarray, ext: str) -> bytes:
    return storage.png_bytes(image) if ext == "png" else _jpeg_bytes(image, 92)


def _jpeg_bytes(image: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# Query photos
# --------------------------------------------------------------------------------------------


def as_scene_mesh(mesh):
    """A built trimesh as the renderer's SceneMesh, read back from GLB as a gallery file would be.

    Args:
        mesh: a trimesh.Trimesh (e.g. from `build_scene`) or an already converted SceneMesh.
    """
    from scenesearch.render.mesh import SceneMesh, load_mesh

    if isinstance(mesh, SceneMesh):
        return mesh
    buf = io.BytesIO()
    mesh.export(buf, file_type="glb")
    return load_mesh("query.glb", buf.getvalue())


def easy_query_photo(mesh, rng: np.random.Generator) -> np.ndarray:
    """The clean query (domain photo_easy): the scene framed by its bounding sphere from a random
    viewpoint, other lighting, a plain background colour, mild blur and noise.

    Args:
        mesh: a trimesh.Trimesh or SceneMesh.
        rng: the only source of variation.

    Returns:
        (PHOTO_SIZE, PHOTO_SIZE, 3) uint8.
    """
    from PIL import Image, ImageFilter

    from scenesearch.render import get_renderer
    from scenesearch.render.camera import fit_distance, orbit_eye
    from scenesearch.render.gl import Lighting
    from scenesearch.render.mesh import Camera

    scene = as_scene_mesh(mesh)
    centre, radius = scene.bounding_sphere()
    fov = float(rng.uniform(35, 60))
    distance = fit_distance(radius, fov) * float(rng.uniform(0.75, 1.3))
    eye = orbit_eye(centre, distance, float(rng.uniform(0, 360)), float(rng.uniform(8, 55)))
    target = centre + rng.normal(0, 0.08 * radius, 3)
    light = Lighting(
        direction=tuple(rng.normal(0, 1, 3) * [1, 0.3, 1] + [0, 1, 0]),
        ambient=float(rng.uniform(0.2, 0.5)),
        diffuse=float(rng.uniform(0.5, 0.9)),
        background=tuple(rng.uniform(0.3, 0.95, 3)),
    )
    img = get_renderer(PHOTO_SIZE, PHOTO_SIZE * 2).render(scene, [Camera(tuple(eye), tuple(target), fov_deg=fov)], light)[0]
    img = np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.2)))), dtype=np.float64)
    img += rng.normal(0, rng.uniform(2, 8), img.shape)  # sensor noise
    return np.clip(img, 0, 255).round().astype(np.uint8)


def query_photo(mesh, rng: np.random.Generator, clutter_classes: Sequence[str] = SCENE_CLASSES) -> np.ndarray:
    """A hard query photo of a scene (domain photo): see `query_photo_with_mask`.

    Returns:
        (PHOTO_SIZE, PHOTO_SIZE, 3) uint8.
    """
    return query_photo_with_mask(mesh, rng, clutter_classes)[0]


def query_photo_with_mask(
    mesh, rng: np.random.Generator, clutter_classes: Sequence[str] = SCENE_CLASSES
) -> tuple[np.ndarray, np.ndarray]:
    """A hard query photo of a scene, and where in it the scene is.

    Steps: render the scene with its coverage under a random light (on black, so the colour is
    already premultiplied by coverage); shrink it to 35-85% of the frame and place it at random
    (along each axis a third of the time letting up to 35% of it leave the frame); composite it onto a random
    background (`_background`); then colour cast and gamma, blur, sensor noise and a JPEG round
    trip at quality 25-90.

    Args:
        mesh: a trimesh.Trimesh or SceneMesh.
        rng: the only source of variation; the same state gives the same bytes.
        clutter_classes: scene classes the "clutter" backgrounds are built from (not the query's own).

    Returns:
        (photo, mask): (PHOTO_SIZE, PHOTO_SIZE, 3) uint8 and (PHOTO_SIZE, PHOTO_SIZE) float32, the
        scene's coverage of each pixel in [0, 1] before blur.
    """
    from PIL import Image, ImageFilter

    from scenesearch.render import get_renderer
    from scenesearch.render.camera import fit_distance, orbit_eye
    from scenesearch.render.gl import Lighting
    from scenesearch.render.mesh import Camera

    size = PHOTO_SIZE
    scene = as_scene_mesh(mesh)
    # 1. The scene under another light, with its coverage.
    centre, radius = scene.bounding_sphere()
    fov = float(rng.uniform(30, 60))
    eye = orbit_eye(centre, fit_distance(radius, fov) * float(rng.uniform(0.9, 1.15)), float(rng.uniform(0, 360)), float(rng.uniform(3, 60)))
    light = Lighting(
        direction=tuple(rng.normal(0, 1, 3) * [1, 0.5, 1] + [0, 0.7, 0]),
        ambient=float(rng.uniform(0.12, 0.5)),
        diffuse=float(rng.uniform(0.45, 1.05)),
        background=(0.0, 0.0, 0.0),  # uncovered pixels are black: rgb is premultiplied by alpha
    )
    camera = Camera(tuple(eye), tuple(centre + rng.normal(0, 0.05 * radius, 3)), fov_deg=fov)
    rgba = get_renderer(size, size * 2).render(scene, [camera], light, alpha=True)[0].astype(np.float32) / 255.0  # (H, W, 4)
    # 2. Shrink and place it; the placement is by the scene's own box, not by the frame.
    side = max(8, round(size * float(rng.uniform(0.35, 0.85))))
    small = np.stack([_resize(rgba[..., c], side) for c in range(4)], axis=-1)
    small[..., 3] = np.clip(small[..., 3], 0.0, 1.0)
    rows, cols = np.nonzero(small[..., 3] > 0.02)
    if len(rows) == 0:  # nothing drawn: keep the frame
        rows, cols = np.array([0, side - 1]), np.array([0, side - 1])
    top, left = _placement(rng, rows.min(), rows.max() + 1, size), _placement(rng, cols.min(), cols.max() + 1, size)
    layer = np.zeros((size, size, 4), dtype=np.float32)
    _paste(layer, small, top, left)
    # 3. Composite onto a background filling the frame.
    background = _background(rng, size, clutter_classes)
    alpha = layer[..., 3:]
    img = layer[..., :3] * 255.0 + (1.0 - alpha) * background
    # 4. The camera: colour cast (white balance), exposure and gamma, blur, noise, JPEG.
    gain = rng.uniform(0.8, 1.2, 3) * float(rng.uniform(0.85, 1.15))
    img = 255.0 * (np.clip(img * gain, 0.0, 255.0) / 255.0) ** float(rng.uniform(0.8, 1.25))
    img = np.clip(img, 0, 255).round().astype(np.uint8)
    img = np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(float(rng.uniform(0.2, 1.4)))), dtype=np.float32)
    img += rng.normal(0.0, float(rng.uniform(1.0, 9.0)), img.shape).astype(np.float32)
    img = np.clip(img, 0, 255).round().astype(np.uint8)
    with Image.open(io.BytesIO(_jpeg_bytes(img, int(rng.integers(25, 91))))) as decoded:
        img = np.asarray(decoded.convert("RGB"))
    return img, layer[..., 3].copy()


def _resize(channel: np.ndarray, side: int) -> np.ndarray:
    """One float channel resized to side x side (area-like antialiasing when shrinking)."""
    from PIL import Image

    return np.asarray(Image.fromarray(channel.astype(np.float32)).resize((side, side), Image.Resampling.BILINEAR, reducing_gap=2.0))


def _placement(rng: np.random.Generator, lo: int, hi: int, size: int) -> int:
    """Offset of a layer whose content spans [lo, hi) so that the content lands in a random spot of
    the frame; a third of the time up to 35% of the content may fall outside."""
    extent = hi - lo
    slack = int(0.35 * extent) if rng.random() < 1 / 3 else 0
    start = int(rng.integers(-slack, max(-slack, size - extent + slack) + 1))
    return start - lo



def _paste(canvas: np.ndarray, layer: np.ndarray, top: int, left: int) -> None:
    """Copy `layer` into `canvas` with its corner at (top, left), clipped to the canvas."""
    h, w = layer.shape[:2]
    H, W = canvas.shape[:2]
    y0, x0, y1, x1 = max(0, top), max(0, left), min(H, top + h), min(W, left + w)
    if y0 < y1 and x0 < x1:
        canvas[y0:y1, x0:x1] = layer[y0 - top : y1 - top, x0 - left : x1 - left]


# --------------------------------------------------------------------------------------------
# Backgrounds: (size, size, 3) float32 in 0..255, drawn from the rng
# --------------------------------------------------------------------------------------------


def _colour(rng: np.random.Generator) -> np.ndarray:
    """A random, mostly muted colour (photographic scenes are rarely saturated or white)."""
    base = rng.uniform(0.0, 1.0, 3)
    grey = base.mean()
    colour = grey + (base - grey) * rng.uniform(0.1, 0.8)
    return np.clip(colour / max(colour.max(), 1e-6) * rng.uniform(40.0, 225.0), 0.0, 255.0).astype(np.float32)


def _mix(t: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(H, W) weights in [0, 1] -> (H, W, 3) blend from colour a to colour b."""
    return a + t[..., None] * (b - a)


def _coords(size: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    return x, y


def _linear_gradient(rng: np.random.Generator, size: int) -> np.ndarray:
    x, y = _coords(size)
    angle = rng.uniform(0, 2 * math.pi)
    t = x * math.cos(angle) + y * math.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    return _mix(t, _colour(rng), _colour(rng))


def _radial_gradient(rng: np.random.Generator, size: int) -> np.ndarray:
    x, y = _coords(size)
    cx, cy = rng.uniform(-0.2, 1.2, 2)
    t = np.hypot(x - cx, y - cy)
    t = np.clip(t / max(float(t.max()), 1e-6), 0.0, 1.0) ** float(rng.uniform(0.6, 1.8))
    return _mix(t, _colour(rng), _colour(rng))


def _value_noise(rng: np.random.Generator, size: int, octaves: int) -> np.ndarray:
    """Fractal value noise in [0, 1]: random grids upsampled bicubically, halving amplitude per octave."""
    total = np.zeros((size, size), dtype=np.float32)
    cells, amplitude, norm = int(rng.integers(2, 6)), 1.0, 0.0
    for _ in range(octaves):
        grid = rng.uniform(0.0, 1.0, (cells + 1, cells + 1)).astype(np.float32)
        total += amplitude * _upsample(grid, size)
        norm += amplitude
        cells, amplitude = cells * 2, amplitude * 0.5
    total /= norm
    return (total - total.min()) / max(float(total.max() - total.min()), 1e-6)


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(grid.astype(np.float32)).resize((size, size), Image.Resampling.BICUBIC))


def _noise_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    t = _value_noise(rng, size, int(rng.integers(1, 5)))
    a, b, c = _colour(rng), _colour(rng), _colour(rng)
    return np.where(t[..., None] < 0.5, _mix(np.clip(2 * t, 0, 1), a, b), _mix(np.clip(2 * t - 1, 0, 1), b, c))


def _stripes(rng: np.random.Generator, size: int) -> np.ndarray:
    x, y = _coords(size)
    angle = rng.uniform(0, math.pi)
    u = (x * math.cos(angle) + y * math.sin(angle)) * size / rng.uniform(4.0, 24.0)
    t = 0.5 + 0.5 * np.sin(2 * math.pi * u + rng.uniform(0, 2 * math.pi))
    t = 0.5 + 0.5 * np.tanh((t - 0.5) * rng.uniform(1.0, 12.0))  # from soft waves to hard stripes
    return _mix(t.astype(np.float32), _colour(rng), _colour(rng))


def _checkers(rng: np.random.Generator, size: int) -> np.ndarray:
    x, y = _coords(size)
    angle, cell = rng.uniform(0, math.pi / 2), rng.uniform(6.0, 28.0) / size
    squash = rng.uniform(0.4, 1.0)  # a floor seen at a slant
    u = (x * math.cos(angle) - y * math.sin(angle)) / cell
    v = (x * math.sin(angle) + y * math.cos(angle)) / (cell * squash)
    t = ((np.floor(u) + np.floor(v)) % 2).astype(np.float32)
    return _mix(t, _colour(rng), _colour(rng))


def _blotches(rng: np.random.Generator, size: int) -> np.ndarray:
    x, y = _coords(size)
    img = np.broadcast_to(_colour(rng), (size, size, 3)).copy()
    for _ in range(int(rng.integers(4, 20))):
        cx, cy = rng.uniform(-0.1, 1.1, 2)
        r = rng.uniform(0.04, 0.3)
        w = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r)) * rng.uniform(0.5, 1.0)
        img = img + w[..., None] * (_colour(rng) - img)
    return img


def _clutter(rng: np.random.Generator, size: int, classes: Sequence[str]) -> np.ndarray:
    """A render from inside a random scene of another class under a sky gradient, defocused."""
    from PIL import Image, ImageFilter

    from scenesearch.render import get_renderer
    from scenesearch.render.camera import fit_distance, orbit_eye
    from scenesearch.render.gl import Lighting
    from scenesearch.render.mesh import Camera

    scene = as_scene_mesh(build_scene(str(classes[int(rng.integers(len(classes)))]), rng))
    centre, radius = scene.bounding_sphere()
    fov = float(rng.uniform(50, 75))
    eye = orbit_eye(centre, fit_distance(radius, fov) * float(rng.uniform(0.3, 0.7)), float(rng.uniform(0, 360)), float(rng.uniform(5, 35)))
    target = centre + rng.normal(0, 0.25 * radius, 3) * [1, 0.2, 1]
    light = Lighting(direction=tuple(rng.normal(0, 1, 3) * [1, 0.3, 1] + [0, 1, 0]), ambient=float(rng.uniform(0.25, 0.5)), background=(0.0, 0.0, 0.0))
    rgba = get_renderer(size, size).render(scene, [Camera(tuple(eye), tuple(target), fov_deg=fov)], light, alpha=True)[0].astype(np.float32)
    _, y = _coords(size)
    sky = _mix(y, np.array([120, 160, 215], dtype=np.float32) * rng.uniform(0.7, 1.1), np.array([215, 220, 225], dtype=np.float32) * rng.uniform(0.8, 1.05))
    img = rgba[..., :3] + (1.0 - rgba[..., 3:] / 255.0) * sky
    img = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(float(rng.uniform(1.0, 3.5))))
    return np.asarray(img, dtype=np.float32)


_BACKGROUNDS = (_linear_gradient, _radial_gradient, _noise_texture, _stripes, _checkers, _blotches)
CLUTTER_SHARE = 0.3  # of the backgrounds that are clutter renders (when clutter classes are given)


def _background(rng: np.random.Generator, size: int, clutter_classes: Sequence[str]) -> np.ndarray:
    """A random background filling the frame: (size, size, 3) float32 in 0..255."""
    if clutter_classes and rng.random() < CLUTTER_SHARE:
        img = _clutter(rng, size, clutter_classes)
    else:
        img = _BACKGROUNDS[int(rng.integers(len(_BACKGROUNDS)))](rng, size)
    return np.clip(img, 0.0, 255.0).astype(np.float32)

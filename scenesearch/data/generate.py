"""The embedded benchmark: procedural scenes written as real mesh files, plus query "photos".

Gallery scenes go to ``scenes/<class>/`` as a mix of GLB, OBJ(+MTL) and SketchUp files.
Query photos are renders of *held-out* scenes of the same class (never in the gallery) from
random viewpoints with a domain shift: other lighting, background colour, camera distance,
height and field of view, sensor noise and blur. ``semantics.csv`` holds each class's attributes
(`CLASS_ATTRIBUTES`: what its builder places, and how big the scene is). Everything is a function
of the seed.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scenesearch import storage
from scenesearch.config import DataConfig
from scenesearch.data.ingest import GENERATED_MARKER
from scenesearch.data.synthetic_scenes import CLASS_ATTRIBUTE_NAMES, CLASS_ATTRIBUTES, SCENE_CLASSES, build_scene, write_scene
from scenesearch.errors import ConfigError, DataError

PHOTO_SIZE = 128


def scene_format(index: int) -> str:
    """File format of the index-th gallery scene of a class: one SketchUp file per class, then OBJ and GLB."""
    return "skp" if index == 0 else ("obj" if index % 3 == 1 else "glb")


@dataclass(frozen=True)
class GenerateResult:
    root: str
    n_scenes: int
    n_queries: int


def generate(root: str | os.PathLike, cfg: DataConfig, seed: int = 0) -> GenerateResult:
    """Write the embedded benchmark to `root` (built in a temporary folder, renamed when whole).

    Raises:
        ConfigError: more classes asked for than the generator knows.
        DataError: `root` holds files that the generator did not write.
    """
    from tqdm import tqdm

    if cfg.n_classes > len(SCENE_CLASSES):
        raise ConfigError(f"data.n_classes must be <= {len(SCENE_CLASSES)} for the embedded benchmark, got {cfg.n_classes}")
    root = Path(root)
    # Only a folder carrying the generator's marker may be regenerated in place.
    if root.exists() and any(root.iterdir()) and not (root / GENERATED_MARKER).is_file():
        raise DataError(f"{root} exists and was not made by `scenesearch generate`; choose an empty or new folder")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    n_scenes = n_queries = 0
    try:
        for ci, label in enumerate(tqdm(SCENE_CLASSES[: cfg.n_classes], desc="generate", unit="class")):
            rng = np.random.default_rng([seed, ci])
            (tmp / "scenes" / label).mkdir(parents=True)
            (tmp / "queries" / label).mkdir(parents=True)
            for i in range(cfg.scenes_per_class):
                write_scene(build_scene(label, rng), tmp / "scenes" / label / f"{label}_{i:03d}.{scene_format(i)}")
                n_scenes += 1
            for j in range(cfg.queries_per_class):
                if j % max(1, math.ceil(cfg.queries_per_class / cfg.query_scenes_per_class)) == 0:
                    held_out = build_scene(label, rng)  # a new scene, never written to the gallery
                photo = query_photo(held_out, rng)
                (tmp / "queries" / label / f"{label}_q{j:03d}.png").write_bytes(storage.png_bytes(photo))
                n_queries += 1
        (tmp / "semantics.csv").write_text(semantics_csv(SCENE_CLASSES[: cfg.n_classes]))
        (tmp / GENERATED_MARKER).write_text(f"seed={seed}\n")
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return GenerateResult(str(root), n_scenes, n_queries)


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


def query_photo(mesh, rng: np.random.Generator) -> np.ndarray:
    """A domain-shifted render of a trimesh scene: (PHOTO_SIZE, PHOTO_SIZE, 3) uint8."""
    import io

    from PIL import Image, ImageFilter

    from scenesearch.render import get_renderer
    from scenesearch.render.camera import fit_distance, orbit_eye
    from scenesearch.render.gl import Lighting
    from scenesearch.render.mesh import Camera, load_mesh

    buf = io.BytesIO()
    mesh.export(buf, file_type="glb")
    scene = load_mesh("query.glb", buf.getvalue())
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

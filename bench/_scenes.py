"""Benchmark scenes shared by the bench scripts: deterministic, face-coloured trimesh scenes.

Uses the project's procedural scene builders (`scenesearch.data.synthetic_scenes`) when they
import, else falls back to a small local builder (coloured boxes, cylinders and spheres on a
ground slab). Scenes are written as GLB files so the "including load" figures go through
`scenesearch.render.load_mesh` exactly like the render step does.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def _fallback_scene(rng: np.random.Generator):
    """A ground slab plus 10-40 coloured primitives; per-face uint8 RGBA colours."""
    import trimesh

    parts = []
    ground = trimesh.creation.box(extents=(20.0, 0.2, 20.0))
    ground.apply_translation((0.0, -0.1, 0.0))
    ground.visual.face_colors = (110, 150, 90, 255)
    parts.append(ground)
    for _ in range(int(rng.integers(10, 41))):
        kind = rng.integers(3)
        size = rng.uniform(0.5, 3.0)
        if kind == 0:
            part = trimesh.creation.box(extents=rng.uniform(0.5, 3.0, 3))
        elif kind == 1:
            part = trimesh.creation.cylinder(radius=size / 2, height=size * 1.5, sections=12)
            part.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, (1, 0, 0)))
        else:
            part = trimesh.creation.icosphere(subdivisions=2, radius=size / 2)
        lo = part.bounds[0]
        part.apply_translation((rng.uniform(-8, 8) - 0.0, -lo[1], rng.uniform(-8, 8)))
        part.visual.face_colors = (*rng.integers(30, 240, 3), 255)
        parts.append(part)
    return trimesh.util.concatenate(parts)


def scene_source() -> str:
    """Which builder `build_scenes` uses."""
    try:
        import scenesearch.data.synthetic_scenes  # noqa: F401

        return "scenesearch.data.synthetic_scenes"
    except Exception as e:  # not written yet, or broken: the benches must still run
        return f"bench/_scenes.py fallback ({type(e).__name__}: {e})"


def build_scenes(n: int, seed: int = 0) -> list:
    """n face-coloured trimesh scenes, cycling through the scene classes; deterministic in seed."""
    try:
        from scenesearch.data.synthetic_scenes import SCENE_CLASSES, build_scene
    except Exception:
        return [_fallback_scene(np.random.default_rng([seed, i])) for i in range(n)]
    return [build_scene(SCENE_CLASSES[i % len(SCENE_CLASSES)], np.random.default_rng([seed, i])) for i in range(n)]


def write_glbs(meshes: list, directory: str | os.PathLike) -> list[Path]:
    """Write each mesh as scene_XXX.glb (trimesh's GLB exporter keeps the colours as vertex colours)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, mesh in enumerate(meshes):
        path = directory / f"scene_{i:03d}.glb"
        path.write_bytes(mesh.export(file_type="glb"))
        paths.append(path)
    return paths

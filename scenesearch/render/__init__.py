"""Rendering: 13 views per scene with a real OpenGL rasteriser (see gl.py), and the render step.

Public: `render_views(path, size=64)`, `run(manifest_dir, out_dir, cfg)`; meshes are turned Y up
by `orient_mesh` (``render.up_axis``) and blank views found by `blank_views` (coverage.py).
With ``alpha=True`` a view comes with its coverage mask as a fourth channel (RGBA).
"""

from __future__ import annotations

import os

import numpy as np

from scenesearch.render.camera import view_rig
from scenesearch.render.coverage import blank_views
from scenesearch.render.gl import Lighting, Renderer
from scenesearch.render.mesh import Camera, SceneMesh, detect_up_axis, load_mesh, orient_mesh, to_y_up

_RENDERERS: dict[tuple[int, int], Renderer] = {}


def get_renderer(size: int, render_size: int) -> Renderer:
    """One Renderer per size per process: building the program and framebuffer costs milliseconds."""
    key = (size, render_size)
    if key not in _RENDERERS:
        _RENDERERS[key] = Renderer(size, render_size)
    return _RENDERERS[key]


def render_mesh_views(
    mesh: SceneMesh,
    size: int = 64,
    render_size: int | None = None,
    n_views: int = 13,
    elevation_deg: float = 30.0,
    fov_deg: float = 45.0,
    lighting: Lighting = Lighting(),
    alpha: bool = False,
) -> np.ndarray:
    """Render the multi-view rig of an already loaded mesh.

    Returns:
        (n_views, size, size, 3) uint8, or (..., 4) RGBA with `alpha`: the share of each pixel the
        mesh covers (0 background, 255 mesh), area-downsampled like the colour.
    """
    centre, radius = mesh.bounding_sphere()
    cameras = view_rig(centre, radius, n_views, elevation_deg, fov_deg, predefined=mesh.camera)
    return get_renderer(size, render_size or size * 2).render(mesh, cameras, lighting, alpha=alpha)


def render_views(
    path: str | os.PathLike,
    size: int = 64,
    render_size: int | None = None,
    n_views: int = 13,
    up_axis: str = "auto",
    alpha: bool = False,
) -> np.ndarray:
    """Render a scene file from 13 viewpoints.

    View 0 is the file's saved camera when it has one (SketchUp scenes, glTF cameras), else a
    canonical front-elevated view; views 1..12 circle the scene at 30 degree azimuth steps.

    Args:
        path: a scene file (OBJ, glTF/GLB, PLY, OFF, STL, SKP).
        size: output side in pixels.
        render_size: drawing side before area downsampling (default 2 * size).
        n_views: views in the rig.
        up_axis: the file's up axis, "auto", "y" or "z" (see `orient_mesh`).
        alpha: add each view's coverage mask as a fourth channel.

    Returns:
        (n_views, size, size, 3) uint8 array, or (..., 4) RGBA with `alpha`.

    Raises:
        ItemError: the file cannot be loaded as a usable mesh.
        RenderError: no OpenGL context can be created.
        ValueError: an unknown `up_axis`.
    """
    mesh, _ = orient_mesh(load_mesh(path), str(path), up_axis)
    return render_mesh_views(mesh, size, render_size, n_views, alpha=alpha)


__all__ = [
    "Camera",
    "Lighting",
    "Renderer",
    "SceneMesh",
    "blank_views",
    "detect_up_axis",
    "load_mesh",
    "orient_mesh",
    "render_mesh_views",
    "render_views",
    "to_y_up",
    "view_rig",
]

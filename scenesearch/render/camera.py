"""Camera matrices and the 13-view rig (view 0: the scene's own or a canonical view; 1..12: a circle).

Pure NumPy, column-vector convention (clip = P @ V @ world), returned as float32 4x4.
"""

from __future__ import annotations

import math

import numpy as np

from scenesearch.render.mesh import Camera

CANONICAL_ELEVATION_DEG = 20.0  # view 0 when the file has no camera: in front (+Z), raised


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """World-to-camera matrix; the camera looks down its -Z."""
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    f = target - eye
    f /= max(np.linalg.norm(f), 1e-12)
    s = np.cross(f, up)
    if np.linalg.norm(s) < 1e-9:  # looking along `up`: pick any perpendicular side vector
        s = np.cross(f, [1.0, 0.0, 0.0] if abs(f[0]) < 0.9 else [0.0, 0.0, 1.0])
    s /= np.linalg.norm(s)
    u = np.cross(s, f)
    m = np.eye(4)
    m[0, :3], m[1, :3], m[2, :3] = s, u, -f
    m[:3, 3] = -m[:3, :3] @ eye
    return m.astype(np.float32)


def perspective(fov_y_deg: float, aspect: float, near: float, far: float) -> np.ndarray:
    t = 1.0 / math.tan(math.radians(fov_y_deg) / 2)
    m = np.zeros((4, 4))
    m[0, 0], m[1, 1] = t / aspect, t
    m[2, 2] = (far + near) / (near - far)
    m[2, 3] = 2 * far * near / (near - far)
    m[3, 2] = -1.0
    return m.astype(np.float32)


def orbit_eye(centre: np.ndarray, distance: float, azimuth_deg: float, elevation_deg: float) -> np.ndarray:
    """A point on the sphere around `centre`; azimuth 0 is +Z (the scene's front), Y up."""
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    return np.asarray(centre) + distance * np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])


def fit_distance(radius: float, fov_deg: float) -> float:
    """Distance at which a sphere of `radius` just fills the vertical field of view."""
    return radius / math.sin(math.radians(fov_deg) / 2)


def view_rig(
    centre: np.ndarray,
    radius: float,
    n_views: int = 13,
    elevation_deg: float = 30.0,
    fov_deg: float = 45.0,
    predefined: Camera | None = None,
) -> list[Camera]:
    """The multi-view rig: view 0 predefined (or canonical), then n_views-1 views at equal azimuth steps.

    With 13 views the circle has 30 degree steps, the multi-view CNN convention.
    """
    distance = fit_distance(radius, fov_deg)
    if predefined is not None:
        first = predefined
    else:
        first = Camera(tuple(orbit_eye(centre, distance, 0.0, CANONICAL_ELEVATION_DEG)), tuple(centre), fov_deg=fov_deg)
    step = 360.0 / max(n_views - 1, 1)
    circle = [
        Camera(tuple(orbit_eye(centre, distance, i * step, elevation_deg)), tuple(centre), fov_deg=fov_deg)
        for i in range(n_views - 1)
    ]
    return [first, *circle]


def view_projection(camera: Camera, centre: np.ndarray, radius: float, aspect: float = 1.0) -> np.ndarray:
    """P @ V for a camera, with near/far planes bracketing the scene's bounding sphere."""
    dist = float(np.linalg.norm(np.asarray(camera.eye) - centre))
    near = max(dist - radius * 1.05, radius * 1e-3)
    far = dist + radius * 1.05
    return perspective(camera.fov_deg, aspect, near, far) @ look_at(camera.eye, camera.target, camera.up)

"""Deterministic procedural 3D scenes for the embedded retrieval benchmark.

Every scene class has its own builder: a small function that places coloured primitives
(trimesh boxes, cylinders, cones, icospheres, capsules and 3-sided "prisms" for gable roofs)
into one shared part list. Classes differ by layout, object types and palette, so an image
retriever can tell them apart; counts, sizes, positions, rotations, colours and optional parts
are drawn from the caller's ``numpy.random.Generator``, so scenes of one class vary while the
same seed always gives byte-identical geometry.

Object classes (`OBJECT_CLASSES`: chair, car, boat, house, ...) are single models without a ground,
like the entries of most model collections; their builders reuse the scenes' part helpers with
random proportions, colours and optional parts. `build_scene` builds either kind.

Conventions: metres, Y up, the ground in the XZ plane with its top at y=0 (an object stands on
y=0), and the front of the scene facing +Z (indoor rooms have no front wall and no ceiling, so a
camera on +Z looking towards -Z sees inside). Scenes span roughly 5-60 m, objects 0.5-15 m; all
stay well under 30k faces.

Besides the builders the module writes scenes in any format the benchmark ingests (GLB, OBJ+MTL,
PLY, STL, OFF and SketchUp .skp); reading them back is the renderer's job (scenesearch.render.mesh).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Sequence

import numpy as np
import openskp
import trimesh
from PIL import Image

RGB = tuple[int, int, int]
Vec3 = Sequence[float]

_INCH = 0.0254  # openskp's writer works in inches; our meshes are in metres
_GROUND_THICKNESS = 0.2
# Tessellation of round primitives: coarse, because small benchmark renders cannot show more
# and openskp's writer costs about 0.1 ms per triangle.
_DEFAULT_DETAIL = {"box": 0, "cylinder": 10, "cone": 10, "sphere": 1, "capsule": 6, "prism": 3}


# --------------------------------------------------------------------------------------------
# Placing coloured primitives
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _unit_primitive(shape: str, detail: int) -> tuple[np.ndarray, np.ndarray]:
    """One primitive fitted to the unit cell [-0.5, 0.5] x [0, 1] x [-0.5, 0.5], Y up.

    Fitting every shape to the same cell lets callers size any part by its bounding box and
    anchor it at its bottom centre, the natural point to stand things on the ground.

    Args:
        shape: "box", "cylinder", "cone", "sphere", "capsule" or "prism" (a triangular prism
            with its ridge along Z and the apex at the top, i.e. a gable roof).
        detail: sections of round shapes, icosphere subdivisions or capsule rings.

    Returns:
        (vertices, faces), read-only, cached per (shape, detail).
    """
    if shape == "box":
        mesh = trimesh.creation.box()
    elif shape in ("cylinder", "prism"):
        mesh = trimesh.creation.cylinder(radius=0.5, height=1.0, sections=3 if shape == "prism" else detail)
    elif shape == "cone":
        mesh = trimesh.creation.cone(radius=0.5, height=1.0, sections=detail)
    elif shape == "sphere":
        mesh = trimesh.creation.icosphere(subdivisions=detail)
    elif shape == "capsule":
        mesh = trimesh.creation.capsule(height=1.0, radius=0.5, count=[detail, detail])
    else:
        raise ValueError(f"unknown primitive shape {shape!r}")
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    if shape == "prism":
        # Keep the axis on Z (ridges run along the part's depth); turn one corner to +Y.
        vertices = vertices @ _rotation(roll=math.pi / 2).T
    else:
        # trimesh builds round shapes around +Z; stand them up: (x, y, z) -> (x, z, -y).
        vertices = vertices[:, [0, 2, 1]] * np.array([1.0, 1.0, -1.0])
    lo, hi = vertices.min(axis=0), vertices.max(axis=0)
    vertices = (vertices - np.array([(lo[0] + hi[0]) / 2, lo[1], (lo[2] + hi[2]) / 2])) / (hi - lo)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    vertices.setflags(write=False)
    faces.setflags(write=False)
    return vertices, faces


def _rotation(yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """3x3 rotation: roll about Z, then pitch about X, then yaw about Y (radians).

    A positive yaw turns the part's +Z (its front) towards +X.
    """
    cy, sy, cp, sp, cr, sr = (math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch), math.cos(roll), math.sin(roll))
    ry = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]])
    rz = np.array([[cr, -sr, 0.0], [sr, cr, 0.0], [0.0, 0.0, 1.0]])
    return ry @ rx @ rz


def _affine(at: Vec3, rotation: np.ndarray, scale: Vec3 = (1.0, 1.0, 1.0)) -> np.ndarray:
    """4x4 matrix that scales, then rotates, then moves to `at`."""
    matrix = np.eye(4)
    matrix[:3, :3] = rotation * np.asarray(scale, dtype=np.float64)  # scales the columns
    matrix[:3, 3] = at
    return matrix


def _facing(frm: Sequence[float], to: Sequence[float]) -> float:
    """Yaw that turns a part's front (+Z) from point `frm` towards point `to` (x, z pairs)."""
    return math.atan2(to[0] - frm[0], to[1] - frm[1])


class _Group:
    """A local frame (position + yaw) in which parts are placed; nests via `group`."""

    def __init__(self, scene: _SceneParts, matrix: np.ndarray) -> None:
        self._scene = scene
        self._matrix = matrix

    @property
    def rng(self) -> np.random.Generator:
        """The scene's random generator (the only source of variation)."""
        return self._scene._rng

    def tint(self, rgb: RGB, spread: int = 12) -> RGB:
        """`rgb` with a random per-channel offset of up to +-`spread`, so repeated parts differ."""
        offset = self.rng.integers(-spread, spread + 1, size=3)
        return tuple(int(c) for c in np.clip(np.asarray(rgb) + offset, 0, 255))

    def group(self, at: Vec3 = (0.0, 0.0, 0.0), yaw: float = 0.0, scale: Vec3 = (1.0, 1.0, 1.0)) -> _Group:
        """A child frame at `at` (in this frame) turned by `yaw` and stretched by `scale` along its axes.

        A non-uniform `scale` changes an object's proportions (a wider chair, a longer car); parts
        turned inside such a frame shear slightly, which small renders do not show.
        """
        return _Group(self._scene, self._matrix @ _affine(at, _rotation(yaw), scale))

    def add(
        self,
        shape: str,
        size: Vec3,
        at: Vec3,
        color: RGB,
        *,
        yaw: float = 0.0,
        pitch: float = 0.0,
        roll: float = 0.0,
        detail: int | None = None,
    ) -> None:
        """Place one primitive whose bounding box has `size` and whose bottom centre is `at`.

        Args:
            shape: a `_unit_primitive` shape name.
            size: (width x, height y, depth z) in metres, all > 0.
            at: bottom centre in this frame; rotations turn about this point.
            color: RGB 0-255 for all of the part's faces.
            yaw, pitch, roll: rotation of the part (see `_rotation`).
            detail: overrides the shape's default tessellation.
        """
        local = _affine(at, _rotation(yaw, pitch, roll), size)
        self._scene.append(shape, _DEFAULT_DETAIL[shape] if detail is None else detail, self._matrix @ local, color)

    def beam(
        self,
        start: Vec3,
        end: Vec3,
        width: float,
        color: RGB,
        *,
        depth: float | None = None,
        shape: str = "box",
        detail: int | None = None,
    ) -> None:
        """Place a part stretched from `start` to `end` (rails, cables, arches, logs, wheels).

        The cross-section is `width` across the beam horizontally and `depth` (default: width)
        in the remaining direction, so horizontal boxes keep a flat top. A cone points from
        `start` (its base) to `end`.
        """
        start, end = np.asarray(start, dtype=np.float64), np.asarray(end, dtype=np.float64)
        axis_y = end - start
        length = float(np.linalg.norm(axis_y))
        axis_y /= length
        reference = np.array([0.0, 0.0, 1.0]) if abs(axis_y[1]) > 0.99 else np.array([0.0, 1.0, 0.0])
        axis_x = np.cross(axis_y, reference)
        axis_x /= np.linalg.norm(axis_x)
        rotation = np.column_stack([axis_x, axis_y, np.cross(axis_x, axis_y)])
        local = _affine(start, rotation, (width, length, width if depth is None else depth))
        self._scene.append(shape, _DEFAULT_DETAIL[shape] if detail is None else detail, self._matrix @ local, color)


class _SceneParts(_Group):
    """The root frame of one scene: collects every placed part, then merges them into a mesh."""

    def __init__(self, rng: np.random.Generator) -> None:
        super().__init__(self, np.eye(4))
        self._rng = rng
        self._vertices: list[np.ndarray] = []
        self._faces: list[np.ndarray] = []
        self._colors: list[np.ndarray] = []
        self._n_vertices = 0

    def append(self, shape: str, detail: int, matrix: np.ndarray, color: RGB) -> None:
        """Transform one unit primitive by `matrix` and store it with its colour."""
        unit_vertices, unit_faces = _unit_primitive(shape, detail)
        self._vertices.append(unit_vertices @ matrix[:3, :3].T + matrix[:3, 3])
        self._faces.append(unit_faces + self._n_vertices)
        self._colors.append(np.repeat(np.array([[*color, 255]], dtype=np.uint8), len(unit_faces), axis=0))
        self._n_vertices += len(unit_vertices)

    def to_mesh(self) -> trimesh.Trimesh:
        """All parts as one mesh with per-face colours (vertices are not merged across parts)."""
        return trimesh.Trimesh(
            vertices=np.concatenate(self._vertices),
            faces=np.concatenate(self._faces),
            face_colors=np.concatenate(self._colors),
            process=False,
        )


def _scatter(
    rng: np.random.Generator,
    count: int,
    half_x: float,
    half_z: float,
    min_distance: float,
    allowed: Callable[[float, float], bool] = lambda x, z: True,
    taken: Sequence[tuple[float, float]] = (),
) -> list[tuple[float, float]]:
    """Up to `count` random (x, z) points in a rectangle, at least `min_distance` apart.

    Rejection sampling with a fixed number of tries, so the result (possibly fewer points in a
    crowded area) depends on the generator alone.

    Args:
        rng: the scene's generator.
        count: points wanted.
        half_x, half_z: the rectangle is [-half_x, half_x] x [-half_z, half_z].
        min_distance: minimum spacing between returned points and from `taken`.
        allowed: extra predicate, e.g. "not on the path".
        taken: points already occupied.

    Returns:
        The accepted points in drawing order.
    """
    points = [tuple(p) for p in taken]
    n_taken = len(points)
    for _ in range(count * 30):
        if len(points) - n_taken >= count:
            break
        x, z = float(rng.uniform(-half_x, half_x)), float(rng.uniform(-half_z, half_z))
        if not allowed(x, z):
            continue
        if points and (np.hypot(*(np.array(points) - (x, z)).T) < min_distance).any():
            continue
        points.append((x, z))
    return points[n_taken:]


# --------------------------------------------------------------------------------------------
# Palettes (base colours; every use is tinted)
# --------------------------------------------------------------------------------------------

_GREEN_LEAF = ((46, 110, 48), (60, 130, 55), (34, 90, 40), (85, 140, 60))
_TRUNK = (95, 65, 40)
_ROCK = (120, 118, 112)
_ASPHALT = (52, 52, 56)
_CONCRETE = (165, 163, 158)
_WATER = (40, 95, 160)
_WHITE_PAINT = (235, 235, 230)
_GLASS = (40, 55, 75)
_CAR_COLORS = ((200, 200, 205), (25, 25, 30), (150, 152, 158), (170, 30, 30), (30, 60, 140), (235, 235, 235), (40, 90, 60))
_FACADES = ((150, 70, 50), (190, 170, 140), (130, 130, 135), (210, 205, 195), (110, 80, 60), (175, 110, 80))
_WALL_PAINT = ((225, 215, 195), (200, 215, 225), (215, 200, 215), (230, 225, 210), (190, 210, 190))
_WOOD = ((150, 105, 65), (120, 80, 50), (185, 145, 100))
_FABRIC = ((160, 40, 50), (40, 70, 140), (60, 120, 100), (200, 170, 60), (120, 60, 130))
_FLOWERS = ((210, 40, 60), (240, 200, 40), (140, 60, 180), (240, 120, 170), (250, 250, 250))


def _pick(g: _Group, palette: Sequence[RGB], spread: int = 12) -> RGB:
    """A tinted random entry of `palette`."""
    return g.tint(palette[int(g.rng.integers(len(palette)))], spread)


# --------------------------------------------------------------------------------------------
# Shared objects (each builds in its own frame: origin on the ground, front towards +Z)
# --------------------------------------------------------------------------------------------


def _ground(g: _Group, width: float, depth: float, color: RGB, at: Vec3 = (0.0, 0.0, 0.0)) -> None:
    """The ground slab: top face at the frame's y=0."""
    g.add("box", (width, _GROUND_THICKNESS, depth), (at[0], at[1] - _GROUND_THICKNESS, at[2]), color)


def _paint(g: _Group, width: float, depth: float, at: Vec3, color: RGB, yaw: float = 0.0) -> None:
    """A flat marking (road, path, line) lying just above `at` so it never z-fights the ground."""
    g.add("box", (width, 0.02, depth), (at[0], at[1] + 0.005, at[2]), color, yaw=yaw)


def _conifer(g: _Group, height: float) -> None:
    """Trunk plus two or three stacked cones."""
    g.add("cylinder", (0.07 * height, 0.3 * height, 0.07 * height), (0, 0, 0), g.tint(_TRUNK), detail=6)
    green = _pick(g, _GREEN_LEAF[:3], 10)
    tiers = int(g.rng.integers(2, 4))
    for i in range(tiers):
        width = 0.5 * height * (1.0 - 0.25 * i)
        g.add("cone", (width, 0.5 * height, width), (0, 0.2 * height + i * 0.2 * height, 0), green, detail=8)


def _round_tree(g: _Group, height: float) -> None:
    """Trunk plus an ellipsoid crown."""
    g.add("cylinder", (0.07 * height, 0.5 * height, 0.07 * height), (0, 0, 0), g.tint(_TRUNK), detail=6)
    crown = 0.55 * height * float(g.rng.uniform(0.8, 1.2))
    g.add("sphere", (crown, 0.6 * height, crown), (0, 0.38 * height, 0), _pick(g, _GREEN_LEAF, 14))


def _lamp_post(g: _Group, height: float = 4.5) -> None:
    """Pole with an arm reaching towards +Z and a lamp head."""
    dark = g.tint((45, 48, 52), 6)
    g.add("cylinder", (0.14, height, 0.14), (0, 0, 0), dark, detail=6)
    g.beam((0, height - 0.1, 0), (0, height - 0.1, 1.0), 0.08, dark)
    g.add("box", (0.35, 0.15, 0.5), (0, height - 0.3, 1.0), g.tint((245, 235, 170), 6))


def _bench(g: _Group, wood: RGB | None = None, metal: RGB | None = None) -> None:
    """Park bench: seat, back rest and two supports; sitters face +Z (default colours: tinted wood and dark metal)."""
    wood = g.tint(_WOOD[0]) if wood is None else wood
    metal = g.tint((50, 50, 55), 5) if metal is None else metal
    for x in (-0.7, 0.7):
        g.add("box", (0.08, 0.42, 0.45), (x, 0, 0), metal)
    g.add("box", (1.7, 0.07, 0.5), (0, 0.42, 0), wood)
    g.add("box", (1.7, 0.4, 0.06), (0, 0.5, -0.24), wood, pitch=-0.15)


def _chair(g: _Group, color: RGB) -> None:
    """Four-legged chair; whoever sits faces +Z."""
    for x in (-0.19, 0.19):
        for z in (-0.19, 0.19):
            g.add("box", (0.04, 0.45, 0.04), (x, 0, z), color)
    g.add("box", (0.46, 0.05, 0.46), (0, 0.45, 0), color)
    g.add("box", (0.46, 0.5, 0.05), (0, 0.5, -0.21), color)


def _table(g: _Group, width: float, depth: float, color: RGB, height: float = 0.74) -> None:
    """Rectangular table on four legs."""
    for sx in (-1, 1):
        for sz in (-1, 1):
            g.add("box", (0.06, height - 0.04, 0.06), (sx * (width / 2 - 0.08), 0, sz * (depth / 2 - 0.08)), color)
    g.add("box", (width, 0.04, depth), (0, height - 0.04, 0), color)


def _car(g: _Group, color: RGB) -> None:
    """Car about 4.2 m long, driving towards +Z."""
    g.add("box", (1.8, 0.65, 4.2), (0, 0.3, 0), color)
    g.add("box", (1.6, 0.5, 2.1), (0, 0.95, -0.2), g.tint(_GLASS, 6))
    g.add("box", (1.62, 0.06, 2.0), (0, 1.45, -0.2), color)
    tyre = g.tint((20, 20, 22), 3)
    for z in (-1.35, 1.35):
        g.beam((-0.95, 0.34, z), (0.95, 0.34, z), 0.68, tyre, shape="cylinder", detail=8)


def _boat(g: _Group, length: float, color: RGB) -> None:
    """Hull, pointed bow towards +Z, cabin and, for sailing boats, a mast and sail."""
    width = 0.35 * length
    g.add("box", (width, 1.0, 0.8 * length), (0, -0.4, -0.1 * length), color)
    g.beam((0, 0.1, 0.3 * length), (0, 0.1, 0.5 * length), width, color, depth=1.0, shape="cone", detail=4)
    g.add("box", (0.7 * width, 0.2, 0.8 * length), (0, 0.6, -0.1 * length), g.tint((240, 240, 235), 5))
    if g.rng.random() < 0.5:
        g.add("box", (0.6 * width, 1.0, 0.3 * length), (0, 0.6, -0.15 * length), g.tint((245, 245, 240), 5))
    else:
        mast = 0.9 * length
        g.add("cylinder", (0.12, mast, 0.12), (0, 0.6, 0.05 * length), g.tint((200, 200, 200), 5), detail=6)
        # A prism's triangle spans its X and Y: turned by 90 degrees it stands in the boat's plane.
        g.add("prism", (0.5 * length, 0.85 * mast, 0.04), (0, 0.9, -0.2 * length), g.tint((245, 245, 235), 5), yaw=math.pi / 2)


def _building(g: _Group, width: float, depth: float, height: float, color: RGB) -> None:
    """Block with a window grid and a door on its +Z facade and a flat or gabled roof."""
    g.add("box", (width, height, depth), (0, 0, 0), color)
    floors, columns = max(1, int((height - 1.0) / 3.0)), max(1, int(width / 2.6))
    for floor in range(floors):
        for column in range(columns):
            x = (column + 0.5) * width / columns - width / 2
            lit = g.rng.random() < 0.12
            window = g.tint((230, 210, 140) if lit else _GLASS, 8)
            g.add("box", (1.1, 1.4, 0.08), (x, 1.2 + 3.0 * floor, depth / 2), window)
    g.add("box", (1.2, 2.2, 0.1), (0, 0, depth / 2), g.tint((70, 50, 35), 8))
    if height < 9 and g.rng.random() < 0.6:
        _gable_roof(g, width + 0.3, depth + 0.3, (0, height, 0), g.tint((90, 60, 50), 10), ridge_along_x=g.rng.random() < 0.5)
    else:
        g.add("box", (width + 0.2, 0.4, depth + 0.2), (0, height, 0), g.tint((90, 90, 95), 8))


def _gable_roof(g: _Group, width: float, depth: float, at: Vec3, color: RGB, ridge_along_x: bool) -> None:
    """A triangular-prism roof covering width x depth; its height follows the span it crosses."""
    if ridge_along_x:  # the prism's ridge runs along its own Z: turn it and swap the footprint
        g.add("prism", (depth, 0.4 * depth, width), at, color, yaw=math.pi / 2)
    else:
        g.add("prism", (width, 0.4 * width, depth), at, color)


def _room_shell(g: _Group, width: float, depth: float, height: float, floor: RGB, wall: RGB) -> None:
    """Floor plus back (-Z) and side walls; no front wall or ceiling so +Z cameras see in."""
    _ground(g, width, depth, floor)
    g.add("box", (width, height, 0.15), (0, 0, -depth / 2 - 0.075), wall)
    for side in (-1, 1):
        g.add("box", (0.15, height, depth), (side * (width / 2 + 0.075), 0, 0), wall)


def _potted_plant(g: _Group, height: float = 1.0) -> None:
    """Pot with a round bush on top."""
    g.add("cylinder", (0.35 * height, 0.35 * height, 0.35 * height), (0, 0, 0), g.tint((170, 90, 60)), detail=8)
    g.add("sphere", (0.6 * height, 0.7 * height, 0.6 * height), (0, 0.3 * height, 0), _pick(g, _GREEN_LEAF))


# --------------------------------------------------------------------------------------------
# Scene builders, one per class
# --------------------------------------------------------------------------------------------


def _build_bedroom(p: _SceneParts) -> None:
    """Room with a bed against the back wall, nightstand + lamp, wardrobe, optional rug/window."""
    rng = p.rng
    width, depth, height = rng.uniform(4.0, 6.0), rng.uniform(4.0, 5.5), rng.uniform(2.5, 3.0)
    _room_shell(p, width, depth, height, p.tint(_WOOD[2], 15), _pick(p, _WALL_PAINT, 8))
    side = rng.choice([-1, 1])
    bed_w, bed_l = rng.uniform(1.4, 1.9), rng.uniform(2.0, 2.2)
    bed = p.group((side * (width / 2 - bed_w / 2 - rng.uniform(0.1, 0.8)), 0, -depth / 2 + bed_l / 2 + 0.05))
    frame = _pick(p, _WOOD)
    bed.add("box", (bed_w, 0.3, bed_l), (0, 0, 0), frame)
    bed.add("box", (bed_w + 0.1, 1.1, 0.08), (0, 0, -bed_l / 2), frame)
    bed.add("box", (bed_w - 0.08, 0.2, bed_l - 0.08), (0, 0.3, 0), p.tint((240, 238, 230), 5))
    bed.add("box", (bed_w + 0.04, 0.06, 0.62 * bed_l), (0, 0.5, 0.19 * bed_l), _pick(p, _FABRIC, 20))
    n_pillows = 1 if bed_w < 1.6 else 2
    for i in range(n_pillows):
        x = (i + 0.5) * bed_w / n_pillows - bed_w / 2
        bed.add("capsule", (0.8 * bed_w / n_pillows, 0.16, 0.38), (x, 0.5, -bed_l / 2 + 0.3), p.tint((250, 250, 245), 4))
    # Nightstand and lamp on the open side of the bed (towards the room centre).
    stand = bed.group((-side * (bed_w / 2 + 0.35), 0, -bed_l / 2 + 0.3))
    stand.add("box", (0.45, 0.55, 0.4), (0, 0, 0), frame)
    stand.add("cylinder", (0.1, 0.3, 0.1), (0, 0.55, 0), p.tint((200, 190, 170)), detail=6)
    stand.add("cone", (0.34, 0.28, 0.34), (0, 0.8, 0), p.tint((245, 225, 170)), detail=10)
    # Wardrobe against the opposite side wall, doors towards the room.
    wardrobe_w = rng.uniform(1.2, 2.0)
    wardrobe = p.group((-side * (width / 2 - 0.32), 0, rng.uniform(-depth / 2 + wardrobe_w / 2 + 0.1, 0.5)), yaw=side * math.pi / 2)
    wood = _pick(p, _WOOD)
    wardrobe.add("box", (wardrobe_w, 2.1, 0.6), (0, 0, 0), wood)
    for sx in (-1, 1):
        wardrobe.add("box", (wardrobe_w / 2 - 0.06, 1.95, 0.03), (sx * wardrobe_w / 4, 0.08, 0.3), p.tint(wood, 15))
        wardrobe.add("cylinder", (0.04, 0.3, 0.04), (sx * 0.08, 0.95, 0.33), p.tint((200, 200, 200), 5), detail=6)
    if rng.random() < 0.7:
        _paint(p, rng.uniform(1.6, 2.6), rng.uniform(1.2, 1.8), (rng.uniform(-0.5, 0.5), 0, rng.uniform(0.3, depth / 2 - 1.0)), _pick(p, _FABRIC, 25))
    if rng.random() < 0.7:
        window = p.group((-side * rng.uniform(0.0, width / 4), 1.0, -depth / 2))
        window.add("box", (1.3, 1.2, 0.06), (0, 0, 0), p.tint((245, 245, 245), 5))
        window.add("box", (1.15, 1.05, 0.08), (0, 0.075, 0), p.tint((170, 205, 235), 8))


def _build_kitchen(p: _SceneParts) -> None:
    """Tiled floor, counter run with sink and stove, wall cabinets, fridge, table and chairs."""
    rng = p.rng
    width, depth, height = rng.uniform(4.5, 6.5), rng.uniform(4.0, 5.5), rng.uniform(2.6, 2.9)
    _room_shell(p, width, depth, height, p.tint((120, 120, 120)), _pick(p, _WALL_PAINT, 8))
    # Chequered tiles: the floor pattern is a cue no other room has.
    tile = rng.uniform(0.5, 0.7)
    light, dark = p.tint((230, 228, 220), 6), p.tint((60, 60, 65), 10)
    nx, nz = int(width / tile), int(depth / tile)
    for i in range(nx):
        for k in range(nz):
            x, z = (i + 0.5) * width / nx - width / 2, (k + 0.5) * depth / nz - depth / 2
            _paint(p, width / nx, depth / nz, (x, 0, z), light if (i + k) % 2 == 0 else dark)
    fridge_side = rng.choice([-1, 1])
    fridge = p.group((fridge_side * (width / 2 - 0.45), 0, -depth / 2 + 0.4))
    steel = p.tint((215, 215, 215) if rng.random() < 0.5 else (170, 172, 176), 6)
    fridge.add("box", (0.8, 1.9, 0.7), (0, 0, 0), steel)
    fridge.add("box", (0.78, 0.02, 0.72), (0, 1.25, 0), p.tint((90, 90, 90), 5))
    fridge.beam((0.3, 0.9, 0.38), (0.3, 1.6, 0.38), 0.04, p.tint((60, 60, 60), 5))
    cabinet, top = _pick(p, _WOOD + ((235, 235, 230), (60, 90, 120)), 10), p.tint((70, 70, 75), 15)
    n_units = int((width - 1.0) / 0.6)
    x0 = -fridge_side * width / 2  # the run starts at the wall opposite the fridge
    sink_unit, stove_unit = rng.choice(n_units, size=2, replace=False)
    for i in range(n_units):
        x = x0 + fridge_side * (0.3 + 0.6 * i)
        unit = p.group((x, 0, -depth / 2 + 0.3))
        unit.add("box", (0.58, 0.86, 0.6), (0, 0, 0), cabinet)
        unit.add("box", (0.5, 0.7, 0.02), (0, 0.08, 0.3), p.tint(cabinet, 10))
        unit.add("box", (0.6, 0.04, 0.64), (0, 0.86, 0.02), top)
        if i == sink_unit:
            unit.add("box", (0.45, 0.02, 0.38), (0, 0.9, 0.02), p.tint((150, 155, 160), 5))
            unit.beam((0, 0.9, -0.22), (0, 1.2, -0.15), 0.04, p.tint((200, 200, 205), 5))
        elif i == stove_unit:
            unit.add("box", (0.56, 0.02, 0.54), (0, 0.9, 0.02), p.tint((25, 25, 25), 3))
            for bx in (-0.13, 0.13):
                for bz in (-0.12, 0.14):
                    unit.add("cylinder", (0.17, 0.015, 0.17), (bx, 0.92, bz), p.tint((80, 80, 80), 5), detail=8)
            unit.add("box", (0.6, 0.45, 0.45), (0, 1.65, -0.05), p.tint((180, 180, 185), 6))
        elif rng.random() < 0.75:
            unit.add("box", (0.58, 0.7, 0.35), (0, 1.5, -0.12), cabinet)
    table_w = rng.uniform(1.2, 1.8)
    table = p.group((rng.uniform(-0.5, 0.5), 0, rng.uniform(0.2, 0.8)), yaw=rng.uniform(-0.2, 0.2))
    table_color = _pick(p, _WOOD)
    if rng.random() < 0.5:
        _table(table, table_w, 0.9, table_color)
        seats = [(x, z) for x in (-table_w / 4, table_w / 4) for z in (-0.75, 0.75)]
    else:
        table.add("cylinder", (0.1, 0.72, 0.1), (0, 0, 0), table_color, detail=8)
        table.add("cylinder", (table_w * 0.7, 0.04, table_w * 0.7), (0, 0.72, 0), table_color, detail=16)
        seat_r = 0.35 * table_w + 0.45
        seats = [(seat_r * math.sin(a), seat_r * math.cos(a)) for a in np.linspace(0, 2 * math.pi, 5)[:-1]]
    chair_color = _pick(p, _WOOD + _FABRIC[:2])
    for x, z in seats:
        if rng.random() < 0.85:
            _chair(table.group((x, 0, z), yaw=_facing((x, z), (0, 0))), chair_color)
    if rng.random() < 0.7:
        table.beam((0, height, 0), (0, 1.8, 0), 0.02, p.tint((30, 30, 30), 3))
        table.add("cone", (0.45, 0.3, 0.45), (0, 1.6, 0), _pick(p, _FABRIC, 20), detail=12)


def _build_office(p: _SceneParts) -> None:
    """Open-plan office: grid of desks with monitors and swivel chairs, whiteboard, cabinets, plants."""
    rng = p.rng
    width, depth, height = rng.uniform(7.0, 10.0), rng.uniform(6.0, 9.0), rng.uniform(2.8, 3.2)
    _room_shell(p, width, depth, height, p.tint((95, 105, 120), 10), p.tint((225, 225, 220), 6))
    p.add("box", (rng.uniform(2.0, 3.5), 1.2, 0.05), (rng.uniform(-1.5, 1.5), 0.9, -depth / 2), p.tint((250, 250, 250), 3))
    rows, columns = int(rng.integers(2, 4)), int(rng.integers(2, 5))
    desk_color, chair_color = _pick(p, ((230, 230, 225), _WOOD[2], (120, 120, 125))), _pick(p, ((30, 30, 35), (40, 60, 130), (150, 40, 40)))
    spacing_x, spacing_z = (width - 1.5) / columns, (depth - 2.5) / rows
    for r in range(rows):
        for c in range(columns):
            if rng.random() < 0.1:
                continue  # an empty slot keeps desk grids from looking identical
            desk = p.group(((c + 0.5) * spacing_x - (width - 1.5) / 2, 0, (r + 0.5) * spacing_z - depth / 2 + 0.8), yaw=math.pi)
            desk.add("box", (1.4, 0.04, 0.7), (0, 0.72, 0), desk_color)
            for sx in (-1, 1):
                desk.add("box", (0.04, 0.72, 0.66), (sx * 0.66, 0, 0), desk_color)
            for m in range(1 if rng.random() < 0.6 else 2):
                mx = 0.0 if m == 0 else 0.45
                desk.add("box", (0.55, 0.34, 0.03), (mx - 0.2 * m, 0.9, -0.2), p.tint((20, 20, 25), 4))
                desk.add("box", (0.06, 0.16, 0.06), (mx - 0.2 * m, 0.76, -0.22), p.tint((40, 40, 40), 4))
            desk.add("box", (0.45, 0.02, 0.15), (0, 0.76, 0.05), p.tint((60, 60, 60), 5))
            if rng.random() < 0.85:
                chair = desk.group((rng.uniform(-0.2, 0.2), 0, 0.65), yaw=math.pi + rng.uniform(-0.6, 0.6))
                chair.add("cylinder", (0.6, 0.06, 0.6), (0, 0, 0), p.tint((40, 40, 40), 4), detail=5)
                chair.add("cylinder", (0.07, 0.42, 0.07), (0, 0.06, 0), p.tint((90, 90, 90), 4), detail=6)
                chair.add("box", (0.5, 0.08, 0.48), (0, 0.46, 0), chair_color)
                chair.add("box", (0.48, 0.55, 0.06), (0, 0.55, -0.22), chair_color)
    cabinet_side = rng.choice([-1, 1])
    for i in range(int(rng.integers(2, 5))):
        cab = p.group((cabinet_side * (width / 2 - 0.25), 0, -depth / 2 + 0.5 + 0.55 * i), yaw=-cabinet_side * math.pi / 2)
        cab.add("box", (0.5, 1.3, 0.45), (0, 0, 0), p.tint((140, 145, 150), 6))
        for d in range(3):
            cab.add("box", (0.3, 0.03, 0.03), (0, 0.3 + 0.4 * d, 0.23), p.tint((60, 60, 60), 4))
    for corner in (-1, 1):
        if rng.random() < 0.7:
            _potted_plant(p.group((corner * (width / 2 - 0.5), 0, depth / 2 - 0.6)), rng.uniform(0.9, 1.4))


def _build_street(p: _SceneParts) -> None:
    """Road running along Z between raised sidewalks and two rows of buildings; lamps, cars."""
    rng = p.rng
    length, road_w, walk_w = rng.uniform(36.0, 48.0), rng.uniform(7.0, 10.0), rng.uniform(2.5, 3.5)
    _ground(p, road_w + 2 * walk_w + 24.0, length, p.tint((110, 110, 105), 8))
    _paint(p, road_w, length, (0, 0, 0), p.tint(_ASPHALT, 6))
    line_color = p.tint((235, 235, 235) if rng.random() < 0.6 else (235, 200, 50), 6)
    for z in np.arange(-length / 2 + 1.0, length / 2 - 1.0, 4.0):
        _paint(p, 0.15, 2.0, (0, 0.02, z), line_color)
    if rng.random() < 0.6:  # zebra crossing near the front
        for x in np.arange(-road_w / 2 + 0.5, road_w / 2 - 0.3, 0.9):
            _paint(p, 0.5, 3.0, (x, 0.02, length / 2 - 5.0), p.tint(_WHITE_PAINT, 4))
    lamp_spacing = rng.uniform(9.0, 13.0)
    for side in (-1, 1):
        curb = side * (road_w / 2 + walk_w / 2)
        p.add("box", (walk_w, 0.15, length), (curb, 0, 0), p.tint(_CONCRETE, 8))
        z = -length / 2
        while z < length / 2 - 4.0:  # buildings fill the street front gap-free but irregularly
            bw = min(rng.uniform(5.0, 10.0), length / 2 - z)
            depth, height = rng.uniform(6.0, 10.0), rng.uniform(6.0, 24.0)
            _building(p.group((side * (road_w / 2 + walk_w + depth / 2), 0, z + bw / 2), yaw=-side * math.pi / 2), bw - 0.3, depth, height, _pick(p, _FACADES, 15))
            z += bw + rng.uniform(0.0, 1.0)
        for lz in np.arange(-length / 2 + 3.0, length / 2, lamp_spacing):
            _lamp_post(p.group((side * (road_w / 2 + 0.4), 0.15, lz), yaw=-side * math.pi / 2))
        if rng.random() < 0.4:
            for tz in np.arange(-length / 2 + 3.0 + lamp_spacing / 2, length / 2, lamp_spacing):
                _round_tree(p.group((side * (road_w / 2 + walk_w * 0.6), 0.15, tz)), rng.uniform(4.0, 6.0))
    for lane in (-1, 1):
        for _, z in _scatter(rng, int(rng.integers(1, 4)), 0.1, length / 2 - 4.0, 6.0):
            _car(p.group((lane * road_w / 4, 0, z), yaw=0.0 if lane > 0 else math.pi), _pick(p, _CAR_COLORS, 10))


def _build_forest(p: _SceneParts) -> None:
    """Dense mixed trees on mossy ground with bushes, rocks, fallen logs and maybe a dirt path."""
    rng = p.rng
    half = rng.uniform(15.0, 20.0)
    _ground(p, 2 * half, 2 * half, p.tint((70, 95, 45), 12))
    path_x = None
    if rng.random() < 0.5:
        amplitude, phase = rng.uniform(1.0, 4.0), rng.uniform(0, 2 * math.pi)

        def path_x(z: float) -> float:
            return amplitude * math.sin(z / 6.0 + phase)

        zs = np.linspace(-half, half, 13)
        dirt = p.tint((120, 95, 60), 8)
        for z0, z1 in zip(zs[:-1], zs[1:]):
            _paint(p, 1.8, (z1 - z0) * 1.15, ((path_x(z0) + path_x(z1)) / 2, 0, (z0 + z1) / 2), dirt, yaw=math.atan2(path_x(z1) - path_x(z0), z1 - z0))
    off_path = (lambda x, z: abs(x - path_x(z)) > 2.0) if path_x else (lambda x, z: True)
    conifer_share = rng.uniform(0.4, 0.95)
    trees = _scatter(rng, int(rng.integers(35, 70)), half - 1.0, half - 1.0, 2.2, off_path)
    for x, z in trees:
        tree = p.group((x, 0, z), yaw=rng.uniform(0, 2 * math.pi))
        (_conifer if rng.random() < conifer_share else _round_tree)(tree, rng.uniform(5.0, 14.0))
    for x, z in _scatter(rng, int(rng.integers(8, 20)), half - 1.0, half - 1.0, 1.0, off_path, trees):
        s = rng.uniform(0.6, 1.6)
        p.add("sphere", (s * 1.4, s, s * 1.2), (x, -0.1, z), _pick(p, _GREEN_LEAF, 15), yaw=rng.uniform(0, math.pi))
    for x, z in _scatter(rng, int(rng.integers(3, 10)), half - 1.0, half - 1.0, 1.0, off_path, trees):
        s = rng.uniform(0.5, 2.0)
        p.add("sphere", (s * 1.3, s * 0.7, s), (x, -0.2, z), p.tint(_ROCK, 15), yaw=rng.uniform(0, math.pi))
    for x, z in _scatter(rng, int(rng.integers(0, 4)), half - 3.0, half - 3.0, 3.0, off_path, trees):
        a, length = rng.uniform(0, math.pi), rng.uniform(3.0, 6.0)
        d = (0.5 * length * math.sin(a), 0.5 * length * math.cos(a))
        p.beam((x - d[0], 0.25, z - d[1]), (x + d[0], 0.25, z + d[1]), 0.5, p.tint(_TRUNK, 10), shape="cylinder", detail=8)


def _build_bridge(p: _SceneParts) -> None:
    """River along Z between raised banks, crossed along X by an arch, suspension or beam bridge."""
    rng = p.rng
    river_w, length, bank_w = rng.uniform(14.0, 24.0), rng.uniform(26.0, 34.0), rng.uniform(8.0, 11.0)
    bank_h, deck_w = rng.uniform(1.5, 3.0), rng.uniform(6.0, 9.0)
    deck_y = bank_h + rng.uniform(3.0, 7.0)
    _ground(p, river_w + 2 * bank_w, length, p.tint(_WATER, 12))
    for side in (-1, 1):
        p.add("box", (bank_w, bank_h, length), (side * (river_w + bank_w) / 2, 0, 0), p.tint((85, 125, 60), 12))
        for x, z in _scatter(rng, int(rng.integers(2, 6)), bank_w / 2 - 1.0, length / 2 - 1.0, 3.0, lambda x, z: abs(z) > deck_w):
            _round_tree(p.group((side * (river_w + bank_w) / 2 + x, bank_h, z)), rng.uniform(4.0, 7.0))
    span = river_w + 2 * bank_w - 2.0
    stone, steel = p.tint((150, 140, 125), 10), _pick(p, ((170, 45, 35), (225, 225, 220), (90, 95, 100), (60, 110, 80)), 10)
    for side in (-1, 1):  # embankments lift the road from the bank to the deck
        p.add("box", (bank_w - 1.0, deck_y - bank_h, deck_w), (side * (river_w + bank_w - 1.0) / 2, bank_h, 0), stone)
    p.add("box", (span, 0.6, deck_w), (0, deck_y - 0.6, 0), p.tint((130, 130, 130), 8))
    _paint(p, span, deck_w - 1.2, (0, deck_y, 0), p.tint(_ASPHALT, 6))
    for z in (-deck_w / 2 + 0.1, deck_w / 2 - 0.1):
        p.beam((-span / 2, deck_y + 1.0, z), (span / 2, deck_y + 1.0, z), 0.1, steel)
        for x in np.arange(-span / 2 + 0.5, span / 2, 2.0):
            p.add("box", (0.08, 1.0, 0.08), (x, deck_y, z), steel)
    kind = rng.choice(["arch", "suspension", "beam"])
    if kind == "arch":
        half_span, rise = river_w / 2 + 0.5, deck_y - 0.5
        xs = np.linspace(-half_span, half_span, 15)
        ys = rise * (1.0 - (xs / half_span) ** 2)
        for z in (-deck_w / 2 + 0.5, deck_w / 2 - 0.5):
            for i in range(len(xs) - 1):
                p.beam((xs[i], ys[i], z), (xs[i + 1], ys[i + 1], z), 0.6, steel)
            for x, y in zip(xs[2:-2:2], ys[2:-2:2]):
                p.beam((x, y, z), (x, deck_y - 0.6, z), 0.25, steel)
    elif kind == "suspension":
        tower_h = deck_y + rng.uniform(8.0, 14.0)
        tower_x = river_w / 2 - 1.0
        cable_z = (-deck_w / 2 - 0.2, deck_w / 2 + 0.2)
        for tx in (-tower_x, tower_x):
            for z in cable_z:
                p.add("box", (0.9, tower_h, 0.9), (tx, -0.5, z), steel)
            p.beam((tx, tower_h - 1.0, cable_z[0]), (tx, tower_h - 1.0, cable_z[1]), 0.8, steel)
        xs = np.linspace(-tower_x, tower_x, 17)
        sag = deck_y + 1.5 + (tower_h - deck_y - 1.5) * (xs / tower_x) ** 2
        for z in cable_z:
            for side in (-1, 1):
                p.beam((side * span / 2, deck_y, z), (side * tower_x, tower_h, z), 0.15, steel)
            for i in range(len(xs) - 1):
                p.beam((xs[i], sag[i], z), (xs[i + 1], sag[i + 1], z), 0.15, steel)
            for x, y in zip(xs[1:-1], sag[1:-1]):
                p.beam((x, deck_y, z), (x, y, z), 0.05, steel)
    else:
        n_piers = int(rng.integers(1, 4))
        for x in np.linspace(-river_w / 2, river_w / 2, n_piers + 2)[1:-1]:
            for z in (-deck_w / 3, deck_w / 3):
                p.add("cylinder", (1.2, deck_y + 0.5, 1.2), (x, -0.5, z), stone)
            p.add("box", (1.6, 0.8, deck_w), (x, deck_y - 1.4, 0), stone)
    if rng.random() < 0.4:
        _boat(p.group((rng.uniform(-river_w / 4, river_w / 4), 0, rng.uniform(6.0, length / 2 - 5.0))), rng.uniform(4.0, 7.0), _pick(p, ((240, 240, 240), (180, 40, 40), (40, 70, 150))))


def _build_harbour(p: _SceneParts) -> None:
    """Quay with warehouses at the back, wooden piers reaching into the water, moored boats, buoys."""
    rng = p.rng
    width, depth, quay_d = rng.uniform(36.0, 44.0), rng.uniform(30.0, 36.0), rng.uniform(8.0, 11.0)
    quay_h = rng.uniform(1.0, 1.6)
    _ground(p, width, depth, p.tint(_WATER, 12))
    quay_z = -depth / 2 + quay_d
    p.add("box", (width, quay_h, quay_d), (0, 0, -depth / 2 + quay_d / 2), p.tint(_CONCRETE, 10))
    x = -width / 2 + rng.uniform(0.5, 3.0)
    while x < width / 2 - 6.0:
        w = rng.uniform(6.0, 11.0)
        shed = p.group((x + w / 2, quay_h, -depth / 2 + quay_d * 0.45))
        shed_color = _pick(p, ((170, 60, 45), (60, 90, 140), (200, 190, 160), (120, 125, 130)), 12)
        shed_h = rng.uniform(4.0, 7.0)
        shed.add("box", (w, shed_h, quay_d * 0.6), (0, 0, 0), shed_color)
        _gable_roof(shed, w + 0.2, quay_d * 0.6 + 0.2, (0, shed_h, 0), p.tint((90, 90, 95), 10), ridge_along_x=w > quay_d * 0.6)
        shed.add("box", (w * 0.4, shed_h * 0.6, 0.1), (0, 0, quay_d * 0.3), p.tint((60, 60, 60), 8))
        x += w + rng.uniform(1.0, 4.0)
    for bx in np.arange(-width / 2 + 2.0, width / 2 - 1.0, rng.uniform(3.0, 5.0)):
        p.add("capsule", (0.35, 0.6, 0.35), (bx, quay_h, quay_z - 0.4), p.tint((40, 40, 45), 5))
    wood = p.tint((125, 95, 65), 10)
    n_piers = int(rng.integers(2, 5))
    pier_xs = np.linspace(-width / 2, width / 2, n_piers + 2)[1:-1] + rng.uniform(-1.0, 1.0, n_piers)
    for px in pier_xs:
        pier_l = rng.uniform(10.0, depth - quay_d - 4.0)
        p.add("box", (3.0, 0.25, pier_l), (px, quay_h - 0.25, quay_z + pier_l / 2), wood)
        for pz in np.arange(quay_z + 2.0, quay_z + pier_l, 3.0):
            for sx in (-1.4, 1.4):
                p.add("cylinder", (0.3, quay_h + 0.8, 0.3), (px + sx, -0.8, pz), p.tint((90, 70, 50), 6), detail=6)
        for pz in np.arange(quay_z + 3.0, quay_z + pier_l - 2.0, rng.uniform(6.0, 9.0)):
            side = rng.choice([-1, 1])
            if rng.random() < 0.75:
                boat_l = rng.uniform(5.0, 9.0)
                _boat(p.group((px + side * (1.5 + 0.2 * boat_l), 0, pz), yaw=rng.choice([0.0, math.pi])), boat_l, _pick(p, ((245, 245, 245), (180, 40, 40), (40, 70, 150), (40, 110, 80)), 10))
    for x, z in _scatter(rng, int(rng.integers(2, 6)), width / 2 - 2.0, depth / 2 - 1.0, 4.0, lambda x, z: z > quay_z + 2.0 and np.abs(pier_xs - x).min() > 4.0):
        p.add("sphere", (0.9, 0.9, 0.9), (x, -0.3, z), _pick(p, ((220, 40, 30), (240, 200, 30))))
    if rng.random() < 0.5:  # dockside crane
        crane = p.group((rng.uniform(-width / 3, width / 3), quay_h, quay_z - 2.5))
        yellow = p.tint((230, 180, 30), 10)
        for sx in (-2.0, 2.0):
            for sz in (-1.5, 1.5):
                crane.beam((sx, 0, sz), (sx * 0.4, 12.0, sz * 0.4), 0.5, yellow)
        crane.add("box", (2.5, 2.0, 2.5), (0, 12.0, 0), yellow)
        crane.beam((0, 13.5, -2.0), (0, 15.5, 14.0), 0.6, yellow)


def _build_tower(p: _SceneParts) -> None:
    """One tall segmented tower (round or square) on a plaza, with a few low buildings and trees."""
    rng = p.rng
    half = rng.uniform(15.0, 20.0)
    _ground(p, 2 * half, 2 * half, p.tint((175, 170, 160), 10))
    total_h, base_r, n_seg = rng.uniform(30.0, 60.0), rng.uniform(3.0, 6.0), int(rng.integers(4, 9))
    shape = "cylinder" if rng.random() < 0.6 else "box"
    colors = [_pick(p, ((200, 200, 205), (180, 60, 50), (220, 210, 190), (110, 120, 140)), 10) for _ in range(2)]
    tower = p.group((rng.uniform(-3.0, 3.0), 0, rng.uniform(-5.0, 0.0)), yaw=rng.uniform(0, math.pi / 2))
    y, seg_h = 0.0, total_h / n_seg
    for i in range(n_seg):
        radius = base_r * (1.0 - 0.55 * i / n_seg)
        tower.add(shape, (2 * radius, seg_h, 2 * radius), (0, y, 0), colors[i % 2], detail=12)
        tower.add(shape, (2 * radius + 0.6, 0.4, 2 * radius + 0.6), (0, y + seg_h - 0.2, 0), p.tint((80, 80, 85), 8), detail=12)
        y += seg_h
    if rng.random() < 0.7:  # observation pod
        pod_y = total_h * rng.uniform(0.6, 0.85)
        tower.add("sphere", (base_r * 2.2, base_r * 1.0, base_r * 2.2), (0, pod_y, 0), p.tint((60, 80, 110), 10), detail=2)
    top_r = base_r * 0.45
    tower.add("cone", (2 * top_r, rng.uniform(4.0, 9.0), 2 * top_r), (0, total_h, 0), colors[1], detail=12)
    tower.beam((0, total_h + 3.0, 0), (0, total_h + rng.uniform(8.0, 14.0), 0), 0.2, p.tint((200, 200, 200), 5), shape="cylinder", detail=6)
    sites = _scatter(rng, int(rng.integers(3, 7)), half - 4.0, half - 4.0, 8.0, lambda x, z: math.hypot(x, z + 3.0) > base_r + 7.0)
    for x, z in sites:
        _building(p.group((x, 0, z), yaw=_facing((x, z), (0, half))), rng.uniform(4.0, 8.0), rng.uniform(4.0, 8.0), rng.uniform(3.0, 8.0), _pick(p, _FACADES, 12))
    for x, z in _scatter(rng, int(rng.integers(4, 10)), half - 1.0, half - 1.0, 3.0, lambda x, z: math.hypot(x, z + 3.0) > base_r + 3.0, sites):
        _round_tree(p.group((x, 0, z)), rng.uniform(4.0, 7.0))


def _build_park(p: _SceneParts) -> None:
    """Lawn with crossing paths around a fountain, benches, round trees, flower beds and lamps."""
    rng = p.rng
    half = rng.uniform(16.0, 20.0)
    _ground(p, 2 * half, 2 * half, p.tint((95, 160, 70), 12))
    path_w, turn = rng.uniform(2.0, 3.0), rng.uniform(-0.4, 0.4)
    gravel = p.tint((205, 185, 140), 10)
    park = p.group(yaw=turn)
    for yaw in (0.0, math.pi / 2):
        _paint(park, path_w, 2 * half, (0, 0, 0), gravel, yaw=yaw)
    basin_d = rng.uniform(4.5, 7.0)
    ring_r = basin_d / 2 + 1.5
    for a in np.linspace(0, 2 * math.pi, 17)[:-1]:  # paved ring around the fountain
        _paint(park, 2 * math.pi * ring_r / 16 + 0.3, path_w, (ring_r * math.sin(a), 0.005, ring_r * math.cos(a)), gravel, yaw=a)
    stone, water = p.tint((180, 175, 165), 8), p.tint((90, 160, 210), 10)
    park.add("cylinder", (basin_d, 0.6, basin_d), (0, 0, 0), stone, detail=20)
    park.add("cylinder", (basin_d - 0.5, 0.05, basin_d - 0.5), (0, 0.55, 0), water, detail=20)
    park.add("cylinder", (0.5, 1.6, 0.5), (0, 0.6, 0), stone, detail=10)
    park.add("cylinder", (1.8, 0.25, 1.8), (0, 2.0, 0), stone, detail=14)
    park.add("cone", (0.9, rng.uniform(0.8, 1.8), 0.9), (0, 2.2, 0), water, detail=10)
    for a in np.linspace(0, 2 * math.pi, int(rng.integers(4, 9)) + 1)[:-1] + math.pi / 4:
        r = ring_r + path_w / 2 + 0.6
        _bench(park.group((r * math.sin(a), 0, r * math.cos(a)), yaw=a + math.pi))
    pond = None
    if rng.random() < 0.4:  # small pond in one quadrant
        pond = (float(rng.choice([-1, 1])) * half / 2, float(rng.choice([-1, 1])) * half / 2, rng.uniform(4.0, 7.0))
        p.add("cylinder", (pond[2], 0.05, pond[2] * 0.7), (pond[0], 0.01, pond[1]), water, detail=16)

    def on_path(x: float, z: float) -> bool:  # world (x, z) -> the turned park frame
        lx, lz = math.cos(turn) * x - math.sin(turn) * z, math.sin(turn) * x + math.cos(turn) * z
        in_pond = pond is not None and math.hypot(x - pond[0], z - pond[1]) < pond[2] / 2 + 1.5
        return in_pond or min(abs(lx), abs(lz)) < path_w / 2 + 1.5 or math.hypot(lx, lz) < ring_r + path_w

    trees = _scatter(rng, int(rng.integers(8, 20)), half - 1.5, half - 1.5, 4.0, lambda x, z: not on_path(x, z))
    for x, z in trees:
        _round_tree(p.group((x, 0, z)), rng.uniform(4.0, 8.0))
    for x, z in _scatter(rng, int(rng.integers(2, 5)), half - 2.5, half - 2.5, 3.0, lambda x, z: not on_path(x, z), trees):
        bed = p.group((x, 0, z), yaw=rng.uniform(0, math.pi))
        bed.add("box", (2.4, 0.25, 1.4), (0, 0, 0), p.tint((100, 70, 45), 8))
        color = _pick(p, _FLOWERS, 10)
        for fx in (-0.8, 0.0, 0.8):
            for fz in (-0.35, 0.35):
                bed.add("sphere", (0.5, 0.4, 0.5), (fx, 0.2, fz), color)
    for a in np.linspace(0, 2 * math.pi, 5)[:-1] + rng.uniform(0, 0.3):
        r = rng.uniform(ring_r + 4.0, half - 2.0)
        _lamp_post(park.group((r * math.sin(a) + path_w / 2 + 0.3, 0, r * math.cos(a))), rng.uniform(3.5, 4.5))


def _build_parking_lot(p: _SceneParts) -> None:
    """Asphalt with painted stall lines in double rows, many parked cars, lamp posts, maybe a store."""
    rng = p.rng
    width, depth = rng.uniform(30.0, 40.0), rng.uniform(30.0, 36.0)
    _ground(p, width, depth, p.tint(_ASPHALT, 6))
    stall_w, stall_d, aisle = rng.uniform(2.4, 2.8), 5.0, rng.uniform(6.0, 7.5)
    n_double = int(rng.integers(1, 3))
    n_stalls = int((width - 4.0) / stall_w)
    occupancy = rng.uniform(0.4, 0.9)
    line = p.tint(_WHITE_PAINT, 5) if rng.random() < 0.7 else p.tint((235, 200, 50), 6)
    block = 2 * stall_d + aisle
    z0 = -(n_double * block) / 2 + aisle / 2
    for b in range(n_double):
        spine = z0 + b * block + stall_d
        island = p.tint(_CONCRETE, 8)
        p.add("box", (n_stalls * stall_w, 0.15, 0.6), (0, 0, spine), island)
        for x in np.linspace(-n_stalls * stall_w / 2 + 3.0, n_stalls * stall_w / 2 - 3.0, 3):
            _lamp_post(p.group((x, 0.15, spine)), rng.uniform(5.0, 7.0))
        for row_side in (-1, 1):
            row_z = spine + row_side * stall_d / 2
            for i in range(n_stalls + 1):
                _paint(p, 0.12, stall_d - 0.4, (i * stall_w - n_stalls * stall_w / 2, 0, row_z), line)
            for i in range(n_stalls):
                if rng.random() < occupancy:
                    x = (i + 0.5) * stall_w - n_stalls * stall_w / 2
                    facing = math.pi if row_side > 0 else 0.0
                    if rng.random() < 0.3:
                        facing += math.pi  # some drivers reverse in
                    car = p.group((x + rng.uniform(-0.15, 0.15), 0, row_z + rng.uniform(-0.2, 0.2)), yaw=facing + rng.uniform(-0.08, 0.08))
                    _car(car, _pick(p, _CAR_COLORS, 10))
    if n_double == 1 and rng.random() < 0.6:  # store building at the back, where the rows leave room
        store_w = rng.uniform(14.0, width - 6.0)
        p.add("box", (store_w, rng.uniform(4.0, 6.0), 6.0), (rng.uniform(-3.0, 3.0), 0, -depth / 2 + 3.0), _pick(p, ((200, 195, 185), (150, 60, 50), (90, 110, 140)), 10))
        p.add("box", (store_w * 0.6, 2.4, 0.1), (0, 0, -depth / 2 + 6.0), p.tint(_GLASS, 8))
    for x in (-width / 2 + 0.8, width / 2 - 0.8):
        if rng.random() < 0.6:
            for z in np.arange(-depth / 2 + 8.0, depth / 2 - 1.0, 6.0):
                _round_tree(p.group((x, 0, z)), rng.uniform(3.5, 5.5))


def _build_stadium(p: _SceneParts) -> None:
    """Striped pitch with markings and goals inside an oval of tiered stands, floodlight masts."""
    rng = p.rng
    pitch_l, pitch_w = rng.uniform(22.0, 28.0), rng.uniform(14.0, 18.0)
    a, b = pitch_l / 2 + rng.uniform(3.0, 5.0), pitch_w / 2 + rng.uniform(3.0, 5.0)
    n_tiers = int(rng.integers(4, 8))
    outer = max(a, b) + n_tiers + 6.0
    _ground(p, 2 * outer, 2 * outer, p.tint((120, 120, 115), 8))
    greens = (p.tint((60, 140, 60), 8), p.tint((80, 165, 75), 8))
    n_stripes = int(rng.integers(6, 12))
    for i in range(n_stripes):  # mowing stripes: the strongest cue of a sports pitch
        x = (i + 0.5) * pitch_l / n_stripes - pitch_l / 2
        _paint(p, pitch_l / n_stripes, pitch_w, (x, 0, 0), greens[i % 2])
    white = p.tint(_WHITE_PAINT, 4)
    for z in (-pitch_w / 2, pitch_w / 2):
        _paint(p, pitch_l, 0.15, (0, 0.02, z), white)
    for x in (-pitch_l / 2, 0.0, pitch_l / 2):
        _paint(p, 0.15, pitch_w, (x, 0.02, 0), white)
    for t in np.linspace(0, 2 * math.pi, 17)[:-1]:
        _paint(p, 0.9, 0.15, (2.0 * math.sin(t), 0.02, 2.0 * math.cos(t)), white, yaw=t)
    for x in (-pitch_l / 2, pitch_l / 2):
        for z in (-1.8, 1.8):
            p.add("box", (0.12, 2.2, 0.12), (x, 0, z), white)
        p.beam((x, 2.2, -1.86), (x, 2.2, 1.86), 0.12, white)
    if rng.random() < 0.5:  # running track between pitch and stands
        track = p.tint((170, 80, 60), 10)
        for t in np.linspace(0, 2 * math.pi, 33)[:-1]:
            ta, tb = a - 1.3, b - 1.3
            _paint(p, 2.2, 2 * math.pi * max(ta, tb) / 32 * 1.1, (ta * math.cos(t), 0, tb * math.sin(t)), track, yaw=math.atan2(-ta * math.sin(t), tb * math.cos(t)))
    seat_colors = [_pick(p, ((180, 30, 40), (30, 60, 160), (230, 200, 40), (40, 130, 70), (230, 230, 230), (120, 40, 120)), 10) for _ in range(2)]
    n_seg = int(rng.integers(28, 40))
    front_tiers = int(rng.integers(1, 3))  # a low stand on the +Z side keeps the pitch visible
    for t in np.linspace(0, 2 * math.pi, n_seg + 1)[:-1]:
        tiers = front_tiers if math.sin(t) > 0.5 else n_tiers
        for k in range(tiers):
            ex, ez = (a + k) * math.cos(t), (b + k) * math.sin(t)
            seg_len = 2 * math.pi * max(a + k, b + k) / n_seg * 1.05
            p.add("box", (seg_len, 0.8 * (k + 1), 1.0), (ex, 0, ez), seat_colors[(k // 2) % 2], yaw=math.atan2(ex * (b + k) ** 2, ez * (a + k) ** 2))
    if rng.random() < 0.5:  # roof over the back stand
        roof_y = 0.8 * n_tiers + 2.5
        p.add("box", (2 * a, 0.3, n_tiers + 1.5), (0, roof_y, -(b + n_tiers / 2)), p.tint((200, 200, 205), 6), pitch=-0.12)
        for x in np.linspace(-a + 1.0, a - 1.0, 5):
            p.beam((x, 0, -(b + n_tiers)), (x, roof_y, -(b + n_tiers)), 0.3, p.tint((150, 150, 155), 6))
    mast_h = 0.8 * n_tiers + rng.uniform(8.0, 14.0)
    for sx in (-1, 1):
        for sz in (-1, 1):
            mx, mz = sx * (a + n_tiers + 1.5) * 0.75, sz * (b + n_tiers + 1.5) * 0.75
            mast = p.group((mx, 0, mz), yaw=_facing((mx, mz), (0, 0)))
            mast.add("cylinder", (0.5, mast_h, 0.5), (0, 0, 0), p.tint((160, 160, 165), 5), detail=8)
            mast.add("box", (3.0, 1.8, 0.4), (0, mast_h, 0.2), p.tint((250, 245, 200), 5), pitch=0.3)


def _build_farm(p: _SceneParts) -> None:
    """Red barn with gable roof, silos, crop fields in rows, fenced paddock with cows, hay bales."""
    rng = p.rng
    half = rng.uniform(17.0, 21.0)
    _ground(p, 2 * half, 2 * half, p.tint((130, 165, 80), 12))
    barn_w, barn_d, barn_h = rng.uniform(8.0, 12.0), rng.uniform(10.0, 14.0), rng.uniform(5.0, 7.0)
    barn_x = rng.choice([-1, 1]) * rng.uniform(4.0, 9.0)
    barn = p.group((barn_x, 0, -half + barn_d / 2 + 2.0))
    red = p.tint((165, 40, 35), 15)
    barn.add("box", (barn_w, barn_h, barn_d), (0, 0, 0), red)
    barn.add("prism", (barn_w + 0.4, barn_w * rng.uniform(0.35, 0.5), barn_d + 0.4), (0, barn_h, 0), p.tint((70, 65, 60), 10))
    barn.add("box", (barn_w * 0.4, barn_h * 0.7, 0.1), (0, 0, barn_d / 2), p.tint((240, 240, 235), 5))
    barn.add("box", (barn_w * 0.35, barn_h * 0.6, 0.12), (0, 0.2, barn_d / 2), p.tint((130, 30, 28), 8))
    for i in range(int(rng.integers(1, 4))):
        silo_d, silo_h = rng.uniform(3.0, 4.0), rng.uniform(8.0, 13.0)
        silo = barn.group((-np.sign(barn_x) * (barn_w / 2 + 2.5 + i * (silo_d + 0.5)), 0, -barn_d / 4))
        metal = p.tint((185, 190, 195), 10)
        silo.add("cylinder", (silo_d, silo_h, silo_d), (0, 0, 0), metal, detail=14)
        silo.add("sphere", (silo_d, silo_d * 0.7, silo_d), (0, silo_h - silo_d * 0.35, 0), p.tint(metal, 10))
    # Crop field on the other side: long parallel rows on bare soil.
    field_w, field_d = rng.uniform(10.0, 15.0), rng.uniform(12.0, 18.0)
    field = p.group((-np.sign(barn_x) * (half - field_w / 2 - 1.0), 0, half - field_d / 2 - 1.0))
    _paint(field, field_w, field_d, (0, 0, 0), p.tint((115, 80, 50), 8))
    crop = _pick(p, ((70, 140, 50), (200, 170, 60), (110, 160, 60)), 10)
    for x in np.arange(-field_w / 2 + 0.5, field_w / 2, rng.uniform(0.9, 1.4)):
        field.add("box", (0.45, rng.uniform(0.3, 0.8), field_d - 0.6), (x, 0, 0), crop)
    # Fenced paddock in front of the barn with a few cows.
    pad_w, pad_d = rng.uniform(10.0, 14.0), rng.uniform(8.0, 11.0)
    paddock = p.group((np.sign(barn_x) * (pad_w / 2 + 0.5), 0, rng.uniform(2.0, half - pad_d / 2 - 1.0)))
    fence = p.tint((235, 235, 230) if rng.random() < 0.5 else (130, 100, 70), 8)
    corners = [(-pad_w / 2, -pad_d / 2), (pad_w / 2, -pad_d / 2), (pad_w / 2, pad_d / 2), (-pad_w / 2, pad_d / 2)]
    for (x0, z0), (x1, z1) in zip(corners, corners[1:] + corners[:1]):
        for y in (0.5, 1.0):
            paddock.beam((x0, y, z0), (x1, y, z1), 0.08, fence, depth=0.12)
        for t in np.linspace(0.0, 1.0, max(2, int(math.hypot(x1 - x0, z1 - z0) / 2.5)) + 1)[:-1]:
            paddock.add("box", (0.14, 1.2, 0.14), (x0 + t * (x1 - x0), 0, z0 + t * (z1 - z0)), fence)
    for x, z in _scatter(rng, int(rng.integers(2, 6)), pad_w / 2 - 1.5, pad_d / 2 - 1.5, 2.5):
        cow = paddock.group((x, 0, z), yaw=rng.uniform(0, 2 * math.pi))
        hide = p.tint((240, 240, 235), 5) if rng.random() < 0.6 else p.tint((90, 60, 40), 10)
        cow.add("box", (0.7, 0.7, 1.6), (0, 0.6, 0), hide)
        cow.add("box", (0.4, 0.4, 0.5), (0, 1.1, 0.9), p.tint((30, 30, 30), 5))
        for lx in (-0.25, 0.25):
            for lz in (-0.6, 0.6):
                cow.add("box", (0.12, 0.6, 0.12), (lx, 0, lz), hide)
    for x, z in _scatter(rng, int(rng.integers(3, 9)), half - 2.0, half - 2.0, 2.0, lambda x, z: abs(x - barn_x) > barn_w and z < 0.0):
        r = rng.uniform(0.6, 0.8)
        yaw = rng.uniform(0, math.pi)
        d = (0.6 * math.sin(yaw), 0.6 * math.cos(yaw))
        p.beam((x - d[0], r, z - d[1]), (x + d[0], r, z + d[1]), 2 * r, p.tint((215, 180, 90), 10), shape="cylinder", detail=10)
    for x, z in _scatter(rng, int(rng.integers(3, 8)), half - 1.0, half - 1.0, 4.0, lambda x, z: (abs(x) > half * 0.7 or z < -half * 0.6) and abs(x - barn_x) > barn_w / 2 + 2.0):
        _round_tree(p.group((x, 0, z)), rng.uniform(5.0, 8.0))


# --------------------------------------------------------------------------------------------
# Object builders, one per object class: a single model, no ground, standing on y=0, front +Z
# (how most model collections store a chair or a car). Proportions, colours and optional parts
# come from the rng, so models of one class vary like different products of one kind.
# --------------------------------------------------------------------------------------------


def _build_chair_object(p: _SceneParts) -> None:
    """Dining chair: stretched frame, optional seat cushion, arm rests and top rail."""
    rng = p.rng
    color = _pick(p, _WOOD + _FABRIC + ((235, 235, 230), (40, 40, 45)), 15)
    g = p.group(scale=(rng.uniform(0.85, 1.25), rng.uniform(0.85, 1.25), rng.uniform(0.85, 1.15)))
    _chair(g, color)
    if rng.random() < 0.5:
        g.add("box", (0.42, 0.06, 0.4), (0, 0.5, 0.02), _pick(p, _FABRIC, 20))
    if rng.random() < 0.4:
        for x in (-0.24, 0.24):
            g.add("box", (0.05, 0.04, 0.42), (x, 0.68, 0.0), color)
            g.add("box", (0.04, 0.2, 0.04), (x, 0.48, 0.18), color)
    if rng.random() < 0.5:
        g.add("box", (0.52, 0.07, 0.08), (0, 1.0, -0.21), p.tint(color, 15))


def _build_car_object(p: _SceneParts) -> None:
    """Car: stretched body, optional roof box or spoiler, lights front and back."""
    rng = p.rng
    length = rng.uniform(0.85, 1.2)
    g = p.group(scale=(rng.uniform(0.9, 1.12), length, length * rng.uniform(0.95, 1.1)))
    color = _pick(p, _CAR_COLORS, 10)
    _car(g, color)
    extra = rng.random()
    if extra < 0.3:
        g.add("box", (1.1, 0.25, 1.5), (0, 1.51, -0.3), p.tint((30, 30, 35), 5))
    elif extra < 0.5:
        g.add("box", (1.7, 0.06, 0.3), (0, 1.1, -2.0), p.tint(color, 10))
        for x in (-0.6, 0.6):
            g.add("box", (0.06, 0.16, 0.1), (x, 0.95, -2.0), p.tint(color, 10))
    lamp, tail = p.tint((245, 240, 200), 5), p.tint((200, 30, 30), 10)
    for x in (-0.6, 0.6):
        g.add("box", (0.4, 0.14, 0.04), (x, 0.7, 2.1), lamp)
        g.add("box", (0.4, 0.14, 0.04), (x, 0.7, -2.14), tail)


def _build_boat_object(p: _SceneParts) -> None:
    """Motor or sailing boat, lifted so the keel stands at y=0, with an optional hull stripe."""
    rng = p.rng
    length = rng.uniform(5.0, 10.0)
    color = _pick(p, ((240, 240, 235), (30, 60, 140), (170, 30, 30), (40, 90, 60), (200, 170, 60), (25, 25, 30)), 10)
    boat = p.group((0, 0.4, 0))
    _boat(boat, length, color)
    if rng.random() < 0.6:
        width = 0.35 * length
        boat.add("box", (width + 0.04, 0.15, 0.8 * length - 0.1), (0, 0.3, -0.1 * length), _pick(p, _FABRIC + ((240, 240, 235),), 10))


def _build_house_object(p: _SceneParts) -> None:
    """Detached house: facade with windows, flat or gable roof, chimney, optional porch or garage."""
    rng = p.rng
    width, depth, height = rng.uniform(7.0, 12.0), rng.uniform(6.0, 10.0), rng.uniform(3.5, 8.5)
    _building(p, width, depth, height, _pick(p, _FACADES, 12))
    chimney = p.group((rng.choice([-1, 1]) * width * rng.uniform(0.15, 0.35), 0, -depth * 0.2))
    chimney.add("box", (0.7, height + 0.25 * min(width, depth) + 1.2, 0.7), (0, 0, 0), p.tint((140, 60, 45), 10))
    extra = rng.random()
    if extra < 0.35:  # porch roof on two posts over the door
        wood = p.tint((235, 235, 230), 6)
        for x in (-1.2, 1.2):
            p.add("box", (0.15, 2.5, 0.15), (x, 0, depth / 2 + 1.4), wood)
        p.add("box", (3.0, 0.15, 1.7), (0, 2.5, depth / 2 + 0.75), p.tint((90, 60, 50), 10))
    elif extra < 0.6:  # garage at one side
        side = rng.choice([-1, 1])
        garage = p.group((side * (width / 2 + 2.0), 0, depth / 2 - 3.0))
        garage.add("box", (4.0, 2.8, 6.0), (0, 0, 0), p.tint(_CONCRETE, 10))
        garage.add("box", (2.8, 2.2, 0.08), (0, 0, 3.0), p.tint((235, 235, 230), 6))


def _build_conifer_object(p: _SceneParts) -> None:
    """Conifer of random height and slimness."""
    rng = p.rng
    slim = rng.uniform(0.7, 1.4)
    _conifer(p.group(scale=(slim, 1.0, slim)), rng.uniform(4.0, 14.0))


def _build_table_object(p: _SceneParts) -> None:
    """Rectangular or round pedestal table, optionally with a runner, a vase of flowers or a bowl."""
    rng = p.rng
    color = _pick(p, _WOOD + ((235, 235, 230), (60, 60, 65), (120, 120, 125)), 12)
    height = rng.uniform(0.7, 0.78)
    if rng.random() < 0.65:
        width, depth = rng.uniform(1.0, 2.2), rng.uniform(0.6, 1.1)
        _table(p, width, depth, color, height)
        if rng.random() < 0.4:
            p.add("box", (0.35, 0.01, depth + 0.06), (0, height, 0), _pick(p, _FABRIC, 20))
    else:
        top = rng.uniform(0.8, 1.4)
        p.add("cylinder", (0.5 * top, 0.04, 0.5 * top), (0, 0, 0), color, detail=12)
        p.add("cylinder", (0.1, height - 0.04, 0.1), (0, 0, 0), color, detail=8)
        p.add("cylinder", (top, 0.04, top), (0, height - 0.04, 0), color, detail=16)
    if rng.random() < 0.5:
        vase = p.group((rng.uniform(-0.15, 0.15), height, rng.uniform(-0.1, 0.1)))
        vase.add("cylinder", (0.12, 0.25, 0.12), (0, 0, 0), _pick(p, ((240, 240, 235), (40, 70, 140), (170, 90, 60)), 10), detail=8)
        for _ in range(int(rng.integers(3, 7))):
            vase.add("sphere", (0.07, 0.07, 0.07), (rng.uniform(-0.08, 0.08), 0.25 + rng.uniform(0, 0.1), rng.uniform(-0.08, 0.08)), _pick(p, _FLOWERS, 15))
    elif rng.random() < 0.5:
        p.add("sphere", (0.3, 0.1, 0.3), (rng.uniform(-0.2, 0.2), height, 0), _pick(p, ((240, 240, 235), (200, 170, 60)), 10))


def _build_sofa_object(p: _SceneParts) -> None:
    """Two- or three-seat sofa: base, back, arm rests, seat cushions, optional legs and pillows."""
    rng = p.rng
    fabric = _pick(p, _FABRIC + ((90, 90, 95), (180, 160, 130)), 18)
    seats, seat_w = int(rng.integers(2, 4)), rng.uniform(0.55, 0.7)
    arm_w, depth = rng.uniform(0.12, 0.25), rng.uniform(0.8, 1.0)
    width = seats * seat_w + 2 * arm_w
    leg = rng.uniform(0.06, 0.15) if rng.random() < 0.6 else 0.0
    base_h, back_h, arm_h = rng.uniform(0.2, 0.3), rng.uniform(0.4, 0.6), rng.uniform(0.2, 0.35)
    if leg:
        wood = _pick(p, _WOOD, 8)
        for sx in (-1, 1):
            for sz in (-1, 1):
                p.add("cylinder", (0.06, leg, 0.06), (sx * (width / 2 - 0.08), 0, sz * (depth / 2 - 0.08)), wood, detail=6)
    p.add("box", (width, base_h, depth), (0, leg, 0), fabric)
    p.add("box", (width, back_h + 0.15, 0.2), (0, leg + base_h, -depth / 2 + 0.1), fabric)
    for side in (-1, 1):
        p.add("box", (arm_w, arm_h + 0.15, depth), (side * (width / 2 - arm_w / 2), leg + base_h, 0), fabric)
    cushion = p.tint(fabric, 10)
    for i in range(seats):
        x = -width / 2 + arm_w + (i + 0.5) * seat_w
        p.add("box", (seat_w - 0.03, 0.15, depth - 0.25), (x, leg + base_h, 0.1), cushion)
        if rng.random() < 0.3:
            p.add("capsule", (0.4, 0.4, 0.14), (x, leg + base_h + 0.15, -depth / 2 + 0.3), _pick(p, _FABRIC + ((240, 240, 235),), 20), pitch=-0.2)


def _build_street_lamp_object(p: _SceneParts) -> None:
    """Street lamp of random height on a plinth, one or two arms."""
    rng = p.rng
    height = rng.uniform(3.5, 7.0)
    p.add("box", (0.4, rng.uniform(0.3, 0.8), 0.4), (0, 0, 0), p.tint((70, 72, 75), 6))
    _lamp_post(p, height)
    if rng.random() < 0.4:
        dark = p.tint((45, 48, 52), 6)
        p.beam((0, height - 0.1, 0), (0, height - 0.1, -1.0), 0.08, dark)
        p.add("box", (0.35, 0.15, 0.5), (0, height - 0.3, -1.0), p.tint((245, 235, 170), 6))


def _build_bench_object(p: _SceneParts) -> None:
    """Park bench of random length, wooden or painted, optionally with arm rests."""
    rng = p.rng
    length = rng.uniform(0.8, 1.4)
    wood = _pick(p, _WOOD + ((40, 90, 60), (30, 60, 140), (170, 30, 30)), 10)
    g = p.group(scale=(length, rng.uniform(0.9, 1.1), rng.uniform(0.9, 1.15)))
    metal = g.tint((50, 50, 55), 5)
    _bench(g, wood, metal)
    if rng.random() < 0.5:
        for x in (-0.82, 0.82):
            g.add("box", (0.06, 0.05, 0.45), (x, 0.65, 0), metal)
            g.add("box", (0.05, 0.2, 0.05), (x, 0.45, 0.18), metal)


def _build_broadleaf_tree_object(p: _SceneParts) -> None:
    """Deciduous tree: trunk and crown, sometimes with extra lumps of foliage."""
    rng = p.rng
    height = rng.uniform(4.0, 10.0)
    _round_tree(p, height)
    for _ in range(int(rng.integers(0, 4))):
        lump = 0.3 * height * rng.uniform(0.7, 1.2)
        angle = rng.uniform(0, 2 * math.pi)
        at = (0.2 * height * math.sin(angle), 0.45 * height + rng.uniform(0, 0.25 * height), 0.2 * height * math.cos(angle))
        p.add("sphere", (lump, 0.8 * lump, lump), at, _pick(p, _GREEN_LEAF, 14))


def _build_potted_plant_object(p: _SceneParts) -> None:
    """Potted plant: a bush or a spray of leaf blades, optional saucer and flowers."""
    rng = p.rng
    height = rng.uniform(0.6, 1.6)
    if rng.random() < 0.4:
        p.add("cylinder", (0.45 * height, 0.03 * height, 0.45 * height), (0, 0, 0), p.tint((150, 80, 55)), detail=10)
    if rng.random() < 0.65:
        _potted_plant(p, height)
        crown = (0.3 * height, 0.65 * height)
    else:
        pot = _pick(p, ((170, 90, 60), (240, 240, 235), (40, 40, 45)), 10)
        p.add("cylinder", (0.35 * height, 0.35 * height, 0.35 * height), (0, 0, 0), pot, detail=8)
        green = _pick(p, _GREEN_LEAF, 12)
        for k in range(int(rng.integers(5, 10))):
            angle, lean = rng.uniform(0, 2 * math.pi), rng.uniform(0.2, 0.6)
            tip = (lean * height * math.sin(angle), 0.35 * height + rng.uniform(0.4, 0.8) * height, lean * height * math.cos(angle))
            p.beam((0, 0.3 * height, 0), tip, 0.06 * height, green, depth=0.015 * height)
        crown = (0.3 * height, 0.9 * height)
    if rng.random() < 0.4:
        for _ in range(int(rng.integers(3, 8))):
            angle = rng.uniform(0, 2 * math.pi)
            at = (crown[0] * math.sin(angle), crown[1] + rng.uniform(-0.1, 0.15) * height, crown[0] * math.cos(angle))
            p.add("sphere", (0.08 * height, 0.08 * height, 0.08 * height), at, _pick(p, _FLOWERS, 15))


# The registry: one builder per class; SCENE_CLASSES follows its order.
_BUILDERS: dict[str, Callable[[_SceneParts], None]] = {
    "bedroom": _build_bedroom,
    "kitchen": _build_kitchen,
    "office": _build_office,
    "street": _build_street,
    "forest": _build_forest,
    "bridge": _build_bridge,
    "harbour": _build_harbour,
    "tower": _build_tower,
    "park": _build_park,
    "parking_lot": _build_parking_lot,
    "stadium": _build_stadium,
    "farm": _build_farm,
}

SCENE_CLASSES: tuple[str, ...] = tuple(_BUILDERS)

# Object classes (single models, no ground); OBJECT_CLASSES follows this order, most distinct first.
_OBJECT_BUILDERS: dict[str, Callable[[_SceneParts], None]] = {
    "chair": _build_chair_object,
    "car": _build_car_object,
    "boat": _build_boat_object,
    "house": _build_house_object,
    "conifer": _build_conifer_object,
    "table": _build_table_object,
    "sofa": _build_sofa_object,
    "street_lamp": _build_street_lamp_object,
    "bench": _build_bench_object,
    "broadleaf_tree": _build_broadleaf_tree_object,
    "potted_plant": _build_potted_plant_object,
}

OBJECT_CLASSES: tuple[str, ...] = tuple(_OBJECT_BUILDERS)

# Side information per class (the embedded benchmark's semantics.csv, for zero-shot methods): what
# each builder above puts in its scenes. 1 = always there or dominant, a fraction = optional parts
# (about their probability) or a minor share; ground_markings are flat painted patterns (road and
# stall lines, tiles, rugs, paths); extent and height are typical sizes over 60 m; clutter is how
# many separate objects a scene holds (a forest's ~100 = 1). An object class is one model with no
# ground: its indoor and water say where such an object belongs, its clutter is one object's.
CLASS_ATTRIBUTE_NAMES: tuple[str, ...] = (
    "indoor", "water", "vegetation", "buildings", "vehicles", "furniture", "seating", "tables",
    "lights", "animals", "ground_markings", "natural_ground", "extent", "height", "clutter",
)  # fmt: skip
CLASS_ATTRIBUTES: dict[str, tuple[float, ...]] = {
    #              indoor water veg   bldg  veh   furn  seat  table light anim  mark  natgr extent height clutter
    "bedroom":     (1.0,   0.0,  0.0,  0.0,  0.0,  1.0,  0.0,  0.0,  0.5,  0.0,  0.7,  0.0,  0.08,  0.05,  0.1),
    "kitchen":     (1.0,   0.0,  0.0,  0.0,  0.0,  0.9,  0.6,  1.0,  0.35, 0.0,  1.0,  0.0,  0.09,  0.05,  0.3),
    "office":      (1.0,   0.0,  0.1,  0.0,  0.0,  1.0,  0.8,  1.0,  0.0,  0.0,  0.0,  0.0,  0.14,  0.05,  0.5),
    "street":      (0.0,   0.0,  0.15, 1.0,  0.6,  0.0,  0.0,  0.0,  1.0,  0.0,  1.0,  0.0,  0.7,   0.35,  0.6),
    "forest":      (0.0,   0.0,  1.0,  0.0,  0.0,  0.0,  0.0,  0.0,  0.0,  0.0,  0.5,  1.0,  0.58,  0.22,  1.0),
    "bridge":      (0.0,   1.0,  0.4,  0.0,  0.2,  0.0,  0.0,  0.0,  0.0,  0.0,  0.3,  0.5,  0.63,  0.2,   0.3),
    "harbour":     (0.0,   1.0,  0.0,  0.7,  0.6,  0.0,  0.0,  0.0,  0.0,  0.0,  0.0,  0.0,  0.67,  0.2,   0.5),
    "tower":       (0.0,   0.0,  0.3,  0.6,  0.0,  0.0,  0.0,  0.0,  0.0,  0.0,  0.0,  0.0,  0.58,  1.0,   0.3),
    "park":        (0.0,   0.3,  0.9,  0.0,  0.0,  0.0,  0.6,  0.0,  0.7,  0.0,  0.6,  1.0,  0.6,   0.13,  0.6),
    "parking_lot": (0.0,   0.0,  0.2,  0.2,  1.0,  0.0,  0.0,  0.0,  0.9,  0.0,  1.0,  0.0,  0.58,  0.1,   0.8),
    "stadium":     (0.0,   0.0,  0.0,  0.0,  0.0,  0.0,  1.0,  0.0,  1.0,  0.0,  1.0,  0.5,  0.87,  0.27,  0.4),
    "farm":        (0.0,   0.0,  0.7,  0.5,  0.0,  0.0,  0.0,  0.0,  0.0,  1.0,  0.3,  1.0,  0.63,  0.2,   0.5),
    # objects
    "chair":       (1.0,   0.0,  0.0,  0.0,  0.0,  1.0,  1.0,  0.0,  0.0,  0.0,  0.0,  0.0,  0.01,  0.017, 0.01),
    "car":         (0.0,   0.0,  0.0,  0.0,  1.0,  0.0,  0.0,  0.0,  0.3,  0.0,  0.0,  0.0,  0.08,  0.025, 0.01),
    "boat":        (0.0,   0.3,  0.0,  0.0,  1.0,  0.0,  0.0,  0.0,  0.0,  0.0,  0.0,  0.0,  0.13,  0.07,  0.01),
    "house":       (0.0,   0.0,  0.0,  1.0,  0.0,  0.0,  0.0,  0.0,  0.0,  0.0,  0.0,  0.0,  0.18,  0.15,  0.02),
    "conifer":     (0.0,   0.0,  1.0,  0.0,  0.0,  0.0,  0.0,  0.0,  0.0,  0.0,  0.0,  0.0,  0.07,  0.15,  0.01),
    "table":       (0.9,   0.0,  0.25, 0.0,  0.0,  1.0,  0.0,  1.0,  0.0,  0.0,  0.0,  0.0,  0.027, 0.013, 0.02),
    "sofa":        (1.0,   0.0,  0.0,  0.0,  0.0,  1.0,  1.0,  0.0,  0.0,  0.0,  0.0,  0.0,  0.033, 0.014, 0.01),
    "street_lamp": (0.0,   0.0,  0.0,  0.0,  0.0,  0.0,  0.0,  0.0,  1.0,  0.0,  0.0,  0.0,  0.02,  0.09,  0.01),
    "bench":       (0.1,   0.0,  0.0,  0.0,  0.0,  0.5,  1.0,  0.0,  0.0,  0.0,  0.0,  0.0,  0.03,  0.015, 0.01),
    "broadleaf_tree": (0.0, 0.0, 1.0,  0.0,  0.0,  0.0,  0.0,  0.0,  0.0,  0.0,  0.0,  0.0,  0.07,  0.12,  0.01),
    "potted_plant": (0.8,  0.0,  1.0,  0.0,  0.0,  0.3,  0.0,  0.0,  0.0,  0.0,  0.0,  0.0,  0.012, 0.018, 0.01),
}  # fmt: skip


def build_scene(label: str, rng: np.random.Generator) -> trimesh.Trimesh:
    """Build one procedural scene of a scene class, or one model of an object class.

    Args:
        label: one of SCENE_CLASSES or OBJECT_CLASSES.
        rng: the only source of variation; the same generator state gives byte-identical
            vertices, faces and colours.

    Returns:
        One triangle mesh (Y up, metres, front towards +Z) made of primitive parts, with uint8
        RGBA per-face colours in ``mesh.visual.face_colors``: a scene's ground top is at y=0; an
        object has no ground and stands on y=0. Vertices are not merged, so each part stays a
        closed primitive.

    Raises:
        ValueError: `label` is not a known class (the message lists SCENE_CLASSES and OBJECT_CLASSES).
    """
    builder = _BUILDERS.get(label) or _OBJECT_BUILDERS.get(label)
    if builder is None:
        raise ValueError(f"unknown class {label!r}; expected a scene class ({', '.join(SCENE_CLASSES)}) or an object class ({', '.join(OBJECT_CLASSES)})")
    parts = _SceneParts(rng)
    builder(parts)
    return parts.to_mesh()


# --------------------------------------------------------------------------------------------
# Writing and reading scene files
# --------------------------------------------------------------------------------------------


def _distinct_colors(mesh: trimesh.Trimesh) -> tuple[np.ndarray, np.ndarray]:
    """(distinct RGBA rows, index of each face's row) of the mesh's face colours."""
    colors = np.asarray(mesh.visual.face_colors, dtype=np.uint8)
    unique, inverse = np.unique(colors, axis=0, return_inverse=True)
    return unique, inverse.reshape(-1)


def _material_name(rgba: np.ndarray) -> str:
    return "color_" + "".join(f"{int(c):02x}" for c in rgba)


def _encode_trimesh(mesh: trimesh.Trimesh, path: str, file_type: str) -> list[tuple[str, bytes]]:
    """GLB, PLY, STL, OFF: trimesh's own exporters (GLB and PLY keep the colours)."""
    data = mesh.export(file_type=file_type)
    return [(path, data.encode("utf-8") if isinstance(data, str) else bytes(data))]


def _encode_obj(mesh: trimesh.Trimesh, path: str) -> list[tuple[str, bytes]]:
    """OBJ + MTL + a palette PNG, all named after the OBJ's stem.

    Colours travel as one textured material: a palette image with a 4x4-pixel block per
    distinct face colour, and every vertex's UV at the centre of its face's block. Why not the
    alternatives: OBJ vertex colours get blended where trimesh.load merges the coincident
    vertices of touching parts, and plain per-colour materials (Kd only) lose their colour when
    trimesh loads the file as a scene (``TextureVisuals.to_color`` samples images only). The
    palette survives ``trimesh.load`` with ``force="mesh"`` and ``force="scene"`` alike, and UVs
    at block centres read the same under nearest and bilinear sampling.
    """
    colors, inverse = _distinct_colors(mesh)
    block = 4
    # A vertex is needed once per colour it carries: split shared vertices by colour.
    corner_keys = np.stack([mesh.faces.reshape(-1), np.repeat(inverse, 3)], axis=1)
    unique_keys, corner_ids = np.unique(corner_keys, axis=0, return_inverse=True)
    u = (unique_keys[:, 1] * block + block / 2) / (len(colors) * block)
    palette = np.repeat(np.repeat(colors[None, :, :], block, axis=1), block, axis=0)
    stem = os.path.splitext(os.path.basename(path))[0]
    material = trimesh.visual.material.SimpleMaterial(
        name=f"{stem}_palette", image=Image.fromarray(palette, mode="RGBA"), diffuse=(255, 255, 255, 255)
    )
    textured = trimesh.Trimesh(
        vertices=np.asarray(mesh.vertices)[unique_keys[:, 0]],
        faces=corner_ids.reshape(-1, 3),
        visual=trimesh.visual.TextureVisuals(uv=np.column_stack([u, np.full(len(u), 0.5)]), material=material),
        process=False,
    )
    mtl_name = f"{stem}.mtl"
    text, extra = trimesh.exchange.obj.export_obj(textured, include_normals=False, return_texture=True, mtl_name=mtl_name)
    directory = os.path.dirname(path)
    # Companions first, so the OBJ never appears referencing a missing MTL or image.
    companions = [(os.path.join(directory, name), data) for name, data in sorted(extra.items(), key=lambda item: item[0] == mtl_name)]
    return [*companions, (path, text.encode("utf-8"))]


def _encode_skp(mesh: trimesh.Trimesh, path: str) -> list[tuple[str, bytes]]:
    """SketchUp file via openskp's writer: one face per triangle, one material per colour.

    Coordinates go from Y-up metres to SketchUp's Z-up inches with (x, y, z) -> (x, -z, y), a
    proper rotation (windings and normals survive); openskp's reader applies the inverse.
    Each face gets its material on both sides, so the reader emits it once (a double-sided
    material) instead of a second, reverse-wound back-face copy. Zero-area triangles are
    skipped: SketchUp cannot store them and they draw nothing.
    """
    colors, inverse = _distinct_colors(mesh)
    builder = openskp.create()
    handles = [builder.add_material(_material_name(rgba), tuple(int(c) for c in rgba)) for rgba in colors]
    vertices = np.asarray(mesh.vertices, dtype=np.float64) / _INCH
    triangles = vertices[:, [0, 2, 1]][mesh.faces] * np.array([1.0, -1.0, 1.0])
    doubled_area = np.linalg.norm(np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0]), axis=1)
    for triangle, color_id, area in zip(triangles.tolist(), inverse.tolist(), doubled_area.tolist()):
        if area > 1e-6:
            handle = handles[color_id]
            builder.add_face([tuple(corner) for corner in triangle], material=handle, back_material=handle)
    return [(path, builder.to_bytes())]


_ENCODERS: dict[str, Callable[[trimesh.Trimesh, str], list[tuple[str, bytes]]]] = {
    ".glb": lambda mesh, path: _encode_trimesh(mesh, path, "glb"),
    ".ply": lambda mesh, path: _encode_trimesh(mesh, path, "ply"),
    ".stl": lambda mesh, path: _encode_trimesh(mesh, path, "stl"),
    ".off": lambda mesh, path: _encode_trimesh(mesh, path, "off"),
    ".obj": _encode_obj,
    ".skp": _encode_skp,
}


def _replace_atomically(files: list[tuple[str, bytes]]) -> None:
    """Write every file through the one atomic writer (`scenesearch.storage`): readers never see a
    half-written file, and a failed write leaves nothing behind (the generator also builds the whole
    benchmark in a temporary folder and renames it when complete)."""
    from scenesearch import storage

    for final, data in files:
        storage.write_bytes(final, data)


def write_scene(mesh: trimesh.Trimesh, path: str | os.PathLike) -> None:
    """Write a scene in the format named by the path's extension.

    .glb (vertex colours), .obj (+ .mtl of the same stem beside it, one material per face colour;
    ``trimesh.load`` returns texture visuals whose ``to_color()`` gives the colours back), .ply
    (face colours), .stl and .off (geometry only), .skp (openskp writer; one material per colour,
    metres -> inches and Y-up -> Z-up; read it back with `scenesearch.render.load_mesh`).

    Args:
        mesh: a mesh with per-face colours, e.g. from `build_scene`.
        path: destination; its directory must exist. Existing files are replaced atomically.

    Raises:
        ValueError: the extension is not one of .glb, .obj, .ply, .stl, .off, .skp.
        OSError: the file cannot be written.
    """
    path = os.fspath(path)
    extension = os.path.splitext(path)[1].lower()
    encoder = _ENCODERS.get(extension)
    if encoder is None:
        raise ValueError(f"cannot write {path}: unsupported extension {extension!r} (supported: {', '.join(_ENCODERS)})")
    _replace_atomically(encoder(mesh, path))

"""Load a scene file into one flat, coloured triangle soup ready for the rasteriser.

trimesh reads OBJ(+MTL, textures), glTF/GLB, PLY, OFF and STL; openskp reads SketchUp .skp
(geometry, materials and the file's saved scene cameras). Textures are sampled to vertex
colours (trimesh's ``TextureVisuals.to_color``), which at 64x64 output loses nothing visible.
Every check that makes a mesh unusable raises ItemError with a sentence naming the file.

The renderer works Y up. SketchUp is Z up, and openskp's baked geometry (with `_skp_camera`)
already turns it Y up, so a loaded .skp is Y up; glTF is Y up by its specification; OBJ, PLY,
OFF and STL have no convention. `orient_mesh` applies ``render.up_axis`` after loading:
`detect_up_axis` decides ``auto`` per file and `to_y_up` turns a Z-up mesh Y up.
"""

from __future__ import annotations

import io
import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from scenesearch import storage
from scenesearch.errors import DataError, ItemError

MESH_EXTENSIONS = (".obj", ".glb", ".gltf", ".ply", ".off", ".stl", ".skp")
DEFAULT_GREY = np.array([0.7, 0.7, 0.7], dtype=np.float32)
UP_AXES = ("auto", "y", "z")
# Files whose up axis is fixed and already Y once loaded: SketchUp (Z up, turned Y up by openskp's
# baked geometry) and glTF (Y up by its specification). `auto` never rotates them.
Y_UP_WHEN_LOADED = (".skp", ".glb", ".gltf")
# auto calls a file Z up when its bounding box is at least this many times thinner along Z than along X and Y
Z_FLAT_RATIO = 4.0


@dataclass(frozen=True)
class Camera:
    """A saved camera: eye and target in the mesh's coordinates, Y up."""

    eye: tuple[float, float, float]
    target: tuple[float, float, float]
    up: tuple[float, float, float] = (0.0, 1.0, 0.0)
    fov_deg: float = 45.0


@dataclass(frozen=True)
class SceneMesh:
    """Triangles as a soup: three consecutive rows of `positions` make one triangle."""

    positions: np.ndarray  # (3T, 3) float32
    normals: np.ndarray  # (3T, 3) float32, the face normal repeated per corner
    colours: np.ndarray  # (3T, 3) float32 in [0, 1]
    camera: Camera | None = None
    cull_back_faces: bool = False  # SketchUp gives both sides explicitly; other formats don't

    @property
    def n_triangles(self) -> int:
        return len(self.positions) // 3

    def bounding_sphere(self) -> tuple[np.ndarray, float]:
        lo, hi = self.positions.min(0), self.positions.max(0)
        centre = (lo + hi) / 2
        radius = float(np.linalg.norm(self.positions - centre, axis=1).max())
        return centre, radius


def load_mesh(path: str | os.PathLike, data: bytes | None = None, name: str | None = None) -> SceneMesh:
    """Read and check one scene file.

    Args:
        path: file path or s3:// URI; its extension picks the reader, and OBJ/glTF siblings (MTL, textures) are found beside it.
        data: the file's bytes if already read.
        name: how errors name the file (default: the file name).

    Returns:
        The validated SceneMesh.

    Raises:
        ItemError: unknown extension, unparsable file, no faces, non-finite vertices or zero extent.
    """
    path = Path(path)
    name = name or path.name
    ext = path.suffix.lower()
    if ext not in MESH_EXTENSIONS:
        raise ItemError(f"{name}: unsupported scene extension '{ext}' (supported: {', '.join(MESH_EXTENSIONS)})")
    if data is None:
        try:
            data = storage.read_bytes(path)
        except DataError as e:
            raise ItemError(f"{name}: cannot read the file ({e})") from None
    if not data:
        raise ItemError(f"{name}: the file is empty")
    check_structure(ext, data, name)
    try:
        mesh = _load_skp(path, data) if ext == ".skp" else _load_trimesh(path, data)
    except ItemError:
        raise
    except Exception as e:  # parsers raise anything from ValueError to struct.error on bad bytes
        raise ItemError(f"{name}: cannot parse the {ext} file ({type(e).__name__}: {e})".rstrip()) from None
    _check(mesh, name)
    return mesh


def _check(mesh: SceneMesh, name: str) -> None:
    if mesh.n_triangles == 0:
        raise ItemError(f"{name}: the mesh has no faces")
    if not np.isfinite(mesh.positions).all():
        raise ItemError(f"{name}: the mesh has NaN or infinite vertex coordinates")
    extent = mesh.positions.max(0) - mesh.positions.min(0)
    if float(extent.max()) <= 1e-9:
        raise ItemError(f"{name}: the mesh is degenerate (zero extent)")
    tri = mesh.positions.reshape(-1, 3, 3).astype(np.float64)
    area2 = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    # relative to the extent, so that a millimetre-scale model is not called flat
    if not (area2 > 1e-12 * float(extent.max()) ** 2).any():
        raise ItemError(f"{name}: all {mesh.n_triangles} faces of the mesh are degenerate (zero area)")


# --------------------------------------------------------------------------------------------
# Structure checks of the text formats, before trimesh: it pads, wraps or drops what they catch
# --------------------------------------------------------------------------------------------


def check_structure(ext: str, data: bytes, name: str) -> None:
    """Refuse OBJ, OFF and ASCII PLY files whose text contradicts itself, which trimesh would load anyway.

    trimesh reads a header's counts as given (a PLY or OFF that declares more or fewer elements
    than it holds loads with rows shifted or missing), reads OBJ index 0 as the last vertex, and
    accepts faces mixing absolute and relative indices. A text file cut mid-line is indistinguishable
    from a complete one in many places, so a text mesh must end with a line break.

    Args:
        ext: the lower-case extension (".obj", ...); other formats pass unchecked.
        data: the file's bytes.
        name: how errors name the file.

    Raises:
        ItemError: naming the line and the problem.
    """
    if ext == ".obj":
        _check_obj(data, name)
    elif ext == ".off":
        _check_off(data, name)
    elif ext == ".ply" and b"format ascii" in data[:512]:
        _check_ascii_ply(data, name)


def _ends_whole(data: bytes, name: str, what: str) -> None:
    if not data.rstrip(b" \t\x00").endswith((b"\n", b"\r")) and data.strip():
        raise ItemError(f"{name}: the {what} file ends mid-line (no line break after its last line): it looks truncated")


def _lines(data: bytes, first_line: int = 1):
    """(line number, tokens) of the non-blank, non-comment lines, one at a time (a big file is never split whole)."""
    for i, raw in enumerate(io.BytesIO(data), start=first_line):
        tokens = raw.split(b"#", 1)[0].split()
        if tokens:
            yield i, tokens


def _check_obj(data: bytes, name: str) -> None:
    _ends_whole(data, name, "OBJ")
    n_vertices, top, top_line = 0, 0, 0
    for i, tokens in _lines(data):
        key = tokens[0]
        if key == b"v":
            if len(tokens) < 4:
                raise ItemError(f"{name} line {i}: a vertex needs 3 coordinates, got {len(tokens) - 1}")
            n_vertices += 1
        elif key == b"f":
            if len(tokens) < 4:
                raise ItemError(f"{name} line {i}: a face needs at least 3 vertices, got {len(tokens) - 1}")
            try:
                idx = [int(t.split(b"/", 1)[0]) for t in tokens[1:]]
            except ValueError:
                raise ItemError(f"{name} line {i}: a face index is not an integer") from None
            if 0 in idx:
                raise ItemError(f"{name} line {i}: face index 0 (OBJ indices start at 1)")
            if any(k > 0 for k in idx) and any(k < 0 for k in idx):
                raise ItemError(f"{name} line {i}: the face mixes absolute (positive) and relative (negative) indices")
            if any(k < 0 and n_vertices + k < 0 for k in idx):  # relative to the vertices read so far
                raise ItemError(f"{name} line {i}: a relative face index reaches before the first vertex ({min(idx)} with {n_vertices} read)")
            if max(idx) > top:
                top, top_line = max(idx), i
    if top > n_vertices:  # absolute indices may name vertices defined further down
        raise ItemError(f"{name} line {top_line}: face index {top} is beyond the file's {n_vertices} vertices")


def _check_off(data: bytes, name: str) -> None:
    _ends_whole(data, name, "OFF")
    rows = _lines(data)
    first = next(rows, None)
    if first is None or not first[1][0].upper().endswith(b"OFF"):
        return  # not the plain OFF layout: leave it to trimesh
    head = first[1][1:] or next(rows, (0, []))[1]
    try:
        nv, nf = int(head[0]), int(head[1])
    except (IndexError, ValueError):
        raise ItemError(f"{name}: the OFF header has no vertex and face counts") from None
    # First the counts (a lie shifts every later row), then the rows; two passes, nothing kept.
    skip = 2 if not first[1][1:] else 1
    n_rows = sum(1 for _ in _lines(data)) - skip
    _check_counts(name, "OFF", n_rows, nv, nf)
    for n, (i, tokens) in enumerate(_lines(data)):
        if n < skip:
            continue
        if n - skip < nv:
            if len(tokens) < 3:
                raise ItemError(f"{name} line {i}: a vertex needs 3 coordinates, got {len(tokens)}")
        else:
            _check_face(name, i, tokens, nv)


def _check_counts(name: str, fmt: str, n_rows: int, nv: int, nf: int) -> None:
    if n_rows != nv + nf:
        raise ItemError(f"{name}: the {fmt} header declares {nv} vertices and {nf} faces ({nv + nf} rows) but the file holds {n_rows} rows")


def _check_face(name: str, i: int, tokens: list[bytes], nv: int) -> None:
    try:
        n = int(tokens[0])
        idx = [int(t) for t in tokens[1 : 1 + n]]
    except ValueError:
        raise ItemError(f"{name} line {i}: a face index is not an integer") from None
    if n < 3 or len(idx) < n:
        raise ItemError(f"{name} line {i}: the face declares {n} vertices and lists {len(idx)}")
    bad = [k for k in idx if not 0 <= k < nv]
    if bad:
        raise ItemError(f"{name} line {i}: face index {bad[0]} is outside the {nv} vertices")


def _check_ascii_ply(data: bytes, name: str) -> None:
    _ends_whole(data, name, "PLY")
    head, sep, _ = data.partition(b"end_header")
    if not sep:
        raise ItemError(f"{name}: the PLY header has no end_header line")
    elements: list[list] = []  # [name, count, first property is a list]
    for line in head.decode("latin-1").splitlines():
        t = line.split()
        if t[:1] == ["element"] and len(t) >= 3:
            try:
                elements.append([t[1], int(t[2]), None])
            except ValueError:
                raise ItemError(f"{name}: the PLY element '{t[1]}' has no integer count") from None
        elif t[:1] == ["property"] and elements and elements[-1][2] is None:
            elements[-1][2] = t[1:2] == ["list"]
    counts = {e[0]: e[1] for e in elements}
    nv, nf = counts.get("vertex", 0), counts.get("face", 0)
    total = sum(e[1] for e in elements)
    # which element each data row belongs to: (first row of the next element, is a face list)
    bounds, at = [], 0
    for element, count, is_list in elements:
        at += count
        bounds.append((at, element == "face" and bool(is_list)))
    body = data[len(head) + len(sep) :]
    n_rows = sum(1 for _ in _lines(body))  # the counts first: a lie shifts every later row
    if n_rows != total:
        raise ItemError(f"{name}: the PLY header declares {nv} vertices and {nf} faces ({total} rows) but the file holds {n_rows} rows")
    k = 0
    for n, (i, tokens) in enumerate(_lines(body, first_line=head.count(b"\n") + 1)):
        while k < len(bounds) and n >= bounds[k][0]:
            k += 1
        if k < len(bounds) and bounds[k][1]:
            _check_face(name, i, tokens, nv)


def _soup(vertices: np.ndarray, faces: np.ndarray, face_rgb: np.ndarray | None, vertex_rgb: np.ndarray | None) -> tuple[np.ndarray, ...]:
    """Triangle soup arrays from an indexed mesh; colours per face, per vertex, or grey."""
    tri = vertices[faces].astype(np.float32)  # (T, 3, 3)
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    normals = np.repeat(n, 3, axis=0)
    if vertex_rgb is not None:
        colours = vertex_rgb[faces].reshape(-1, 3)
    elif face_rgb is not None:
        colours = np.repeat(face_rgb, 3, axis=0)
    else:
        colours = np.broadcast_to(DEFAULT_GREY, (len(faces) * 3, 3))
    return tri.reshape(-1, 3), normals.astype(np.float32), np.ascontiguousarray(colours, dtype=np.float32)


def _load_trimesh(path: Path, data: bytes) -> SceneMesh:
    import trimesh

    ext = path.suffix.lower()
    kwargs = {}
    if ext in (".obj", ".gltf") and storage.is_remote(path):
        kwargs["resolver"] = _RemoteFolder(str(path.parent))
    elif ext in (".obj", ".gltf") and path.parent.is_dir():
        # OBJ and glTF reference sibling files (MTL, textures, buffers): resolve them beside the file.
        kwargs["resolver"] = trimesh.resolvers.FilePathResolver(str(path))
    scene = trimesh.load(io.BytesIO(data), file_type=ext[1:], force="scene", process=False, **kwargs)
    parts = []
    for node in scene.graph.nodes_geometry:
        transform, geom_name = scene.graph[node]
        geom = scene.geometry[geom_name]
        if not isinstance(geom, trimesh.Trimesh) or len(geom.faces) == 0:
            continue
        geom = geom.copy()
        geom.apply_transform(transform)
        parts.append(_soup(np.asarray(geom.vertices), np.asarray(geom.faces), *_trimesh_colours(geom)))
    if not parts:
        return SceneMesh(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32))
    camera = _trimesh_camera(scene) if ext in (".glb", ".gltf") else None
    return SceneMesh(*(np.concatenate(p) for p in zip(*parts)), camera=camera)


class _RemoteFolder(Mapping):
    """An OBJ's or glTF's sibling files on S3 (MTL, textures, buffers), fetched through storage when trimesh asks.

    trimesh accepts any Mapping of name -> bytes as a resolver; a missing file is a KeyError, which
    trimesh treats like a missing local file (the part keeps its plain material colour).
    """

    def __init__(self, folder: str):
        self.folder = folder

    def __getitem__(self, name: str) -> bytes:
        rel = posixpath.normpath(str(name).replace("\\", "/"))
        if rel.startswith(("../", "/")) or rel == "..":  # stay inside the scene's folder, as trimesh does locally
            raise KeyError(name)
        try:
            return storage.read_bytes(storage.join(self.folder, rel))
        except DataError:
            raise KeyError(name) from None

    def __iter__(self):
        return iter(storage.list_files(self.folder))

    def __len__(self) -> int:
        return len(storage.list_files(self.folder))


def _trimesh_colours(geom) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(face_rgb, vertex_rgb), one of them set, floats in [0, 1]."""
    visual = geom.visual
    if visual.kind == "texture":
        material = visual.material
        sampled = False
        has_image = getattr(material, "image", None) is not None or getattr(material, "baseColorTexture", None) is not None
        if has_image and visual.uv is not None:
            try:
                visual = visual.to_color()  # samples the texture at each vertex's UV
                sampled = True
            except Exception:  # an unreadable texture: fall back to the material's colour
                pass
        if not sampled:
            # A material without an image (OBJ's Kd, glTF's baseColorFactor) colours the whole part.
            rgb = np.asarray(material.main_color, dtype=np.float64)[:3] / 255.0
            return np.broadcast_to(rgb, (len(geom.faces), 3)), None
    if visual.kind == "face":
        return np.asarray(visual.face_colors)[:, :3] / 255.0, None
    if visual.kind == "vertex":
        return None, np.asarray(visual.vertex_colors)[:, :3] / 255.0
    return None, None


def _trimesh_camera(scene) -> Camera | None:
    """The glTF file's own camera, if it carries one (trimesh keeps it as the scene camera)."""
    if not scene.has_camera:
        return None
    pose = np.asarray(scene.camera_transform, dtype=np.float64)
    eye = pose[:3, 3]
    forward = -pose[:3, 2]  # cameras look down their -Z
    return Camera(tuple(eye), tuple(eye + forward), tuple(pose[:3, 1]), float(scene.camera.fov[1]))


def _load_skp(path: Path, data: bytes) -> SceneMesh:
    import openskp

    # openskp parses from a path (twice: parse, then build_scene); hand it the bytes we hold.
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "scene.skp"
        copy.write_bytes(data)
        skp = openskp.SkpFile.open(str(copy))
        model = skp.parse()
        baked = skp.build_scene(include_curve_sets=False)
    colours = np.array(
        [m.get("pbrMetallicRoughness", {}).get("baseColorFactor", [0.7, 0.7, 0.7, 1.0])[:3] for m in baked.gltf_materials] or [DEFAULT_GREY],
        dtype=np.float32,
    )
    parts = []
    for prim in baked.glb_primitives:
        vertices = np.asarray(prim.positions, dtype=np.float64).reshape(-1, 3)
        faces = np.asarray(prim.indices, dtype=np.int64).reshape(-1, 3)
        if len(faces):
            parts.append(_soup(vertices, faces, np.repeat(colours[prim.material_index][None], len(faces), 0), None))
    if not parts:
        return SceneMesh(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32))
    return SceneMesh(*(np.concatenate(p) for p in zip(*parts)), camera=_skp_camera(model), cull_back_faces=True)


def _skp_camera(model) -> Camera | None:
    """The first saved SketchUp scene (page) with a camera, converted from Z-up inches to Y-up metres."""
    inch = 0.0254

    def yup(v):  # SketchUp (x, y, z) Z-up -> (x, z, -y) Y-up, as openskp's baked geometry
        return (v[0] * inch, v[2] * inch, -v[1] * inch)

    for page in getattr(model, "pages", []) or []:
        if page.eye is not None and page.target is not None and not page.parallel:
            up = page.up or (0.0, 0.0, 1.0)
            return Camera(yup(page.eye), yup(page.target), (up[0], up[2], -up[1]), float(page.fov or 35.0))
    return None


# --------------------------------------------------------------------------------------------
# Up axis
# --------------------------------------------------------------------------------------------


def detect_up_axis(mesh: SceneMesh, source_name: str) -> str:
    """Guess which axis of a loaded mesh points up: the rule behind ``render.up_axis: auto``.

    The rule, conservative on purpose (a wrong rotation turns a good scene on its side):

    - .skp, .glb and .gltf files are "y": SketchUp's Z up is already turned Y up by the loader
      (rotating again would lay the scene on its side), and glTF is Y up by its specification.
    - Other files (OBJ, PLY, OFF, STL: no convention) are "z" only when their bounding box is
      flat in the XY plane: with extents (ex, ey, ez), ``Z_FLAT_RATIO * ez < min(ex, ey)``, i.e.
      at least 4x thinner along Z than along both X and Y. That is a floor plan or site modelled
      Z up. A Y-up scene lies in the XZ plane (a ground as deep as it is wide, ez ~ ex), so it
      never matches, however flat it is along Y; the embedded benchmark's scenes have
      ez / min(ex, ey) >= 0.98. The one Y-up shape that does match is a wall or facade (thin
      along Z); laid flat it is seen from 30 degrees above instead of edge-on from two sides,
      where it would draw next to nothing. Everything else is "y" (today's behaviour): a tall Z-up
      object still renders, on its side; set ``render.up_axis: z`` for such files.

    Args:
        mesh: the mesh as `load_mesh` returns it.
        source_name: its file name or URI; only the extension is read.

    Returns:
        "y" or "z".
    """
    if Path(source_name).suffix.lower() in Y_UP_WHEN_LOADED:
        return "y"
    ex, ey, ez = (float(v) for v in mesh.positions.max(0) - mesh.positions.min(0))
    return "z" if Z_FLAT_RATIO * ez < min(ex, ey) else "y"


def to_y_up(mesh: SceneMesh, axis: str) -> SceneMesh:
    """Turn a mesh whose `axis` points up into the renderer's Y-up frame.

    "z" maps (x, y, z) -> (x, z, -y), a rotation of -90 degrees about X, the same map as
    openskp's SketchUp conversion: Z becomes up and a Z-up file's front (-Y) faces the
    renderer's front (+Z). Positions, normals and the saved camera turn together; winding is
    kept, so back-face culling still holds.

    Args:
        mesh: a loaded mesh.
        axis: "y" (returned unchanged) or "z".

    Returns:
        The Y-up mesh.

    Raises:
        ValueError: `axis` is neither "y" nor "z".
    """
    if axis == "y":
        return mesh
    if axis != "z":
        raise ValueError(f"up axis must be 'y' or 'z', got {axis!r}")

    def turn(v: np.ndarray) -> np.ndarray:  # (..., 3)
        v = np.asarray(v)
        return np.stack([v[..., 0], v[..., 2], -v[..., 1]], axis=-1)

    camera = mesh.camera
    if camera is not None:
        camera = replace(camera, **{k: tuple(float(c) for c in turn(getattr(camera, k))) for k in ("eye", "target", "up")})
    return replace(
        mesh,
        positions=np.ascontiguousarray(turn(mesh.positions), dtype=np.float32),
        normals=np.ascontiguousarray(turn(mesh.normals), dtype=np.float32),
        camera=camera,
    )


def orient_mesh(mesh: SceneMesh, source_name: str, up_axis: str = "auto") -> tuple[SceneMesh, str]:
    """Apply ``render.up_axis`` to a loaded mesh.

    A .skp file is never rotated, whatever the setting: its loader has already turned it Y up.

    Args:
        mesh: the mesh as `load_mesh` returns it.
        source_name: its file name or URI (the extension matters).
        up_axis: "auto" (`detect_up_axis`), "y" (as loaded) or "z" (the file is Z up).

    Returns:
        (the Y-up mesh, the axis that was taken as the file's up: "y" or "z").

    Raises:
        ValueError: an unknown `up_axis`.
    """
    if up_axis not in UP_AXES:
        raise ValueError(f"up_axis must be one of {', '.join(UP_AXES)}, got {up_axis!r}")
    if up_axis == "auto":
        axis = detect_up_axis(mesh, source_name)
    else:
        axis = "y" if Path(source_name).suffix.lower() == ".skp" else up_axis
    return to_y_up(mesh, axis), axis

"""Sketch queries (domain sketch): hand-like line drawings of a scene, made with the project's renderer.

A sketch is what someone drawing the scene from a viewpoint would put on paper: its outlines and
the creases between its faces, without what is hidden. `sketch_query` picks a random viewpoint
(as the easy query photos do), takes the mesh's feature edges (`crease_edges`, `boundary_edges`
and this view's `silhouette_edges`), keeps the parts of them the renderer's depth buffer shows
(`visible_segments`), chains them into polylines and draws those as jittered pencil strokes
(`draw_strokes`): wobbly, overshooting, of varying width and grey, some left out, the whole page
slightly turned and shifted. Everything is drawn from the caller's generator.
"""

from __future__ import annotations

import math

import numpy as np

CREASE_DEG = 40.0  # sketch creases: above the 36 degrees between a 10-sided cylinder's sides, so round parts show outlines only
SUPERSAMPLE = 2  # strokes are drawn at this multiple of the output size, then box-downsampled
MIN_SEGMENT_PX = 2.0  # visible pieces shorter than this (at the drawing size) are specks, not strokes
SAMPLE_STEP_PX = 1.5  # edges are depth-tested every this many pixels along their projection
MAX_SAMPLES_PER_EDGE = 256


# --------------------------------------------------------------------------------------------
# Feature edges
# --------------------------------------------------------------------------------------------


def edge_mesh(mesh):
    """An indexed trimesh with shared vertices, so faces know their neighbours.

    The renderer's SceneMesh is a triangle soup (no two faces share a vertex) and a built scene
    keeps each primitive's vertices apart; merging coincident vertices gives the adjacency the edge
    functions need. Degenerate faces are dropped (their normal is undefined).

    Args:
        mesh: a trimesh.Trimesh or a SceneMesh.

    Returns:
        A new trimesh.Trimesh (the input is not changed).
    """
    import trimesh

    if isinstance(mesh, trimesh.Trimesh):
        vertices, faces = np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces)
    else:
        vertices = np.asarray(mesh.positions, dtype=np.float64)
        faces = np.arange(len(vertices)).reshape(-1, 3)
    out = trimesh.Trimesh(vertices, faces, process=False)
    out.merge_vertices(merge_tex=True, merge_norm=True)
    out.update_faces(out.nondegenerate_faces())
    return out


def crease_edges(mesh, threshold_deg: float = 30.0) -> np.ndarray:
    """Edges between adjacent faces that meet at more than `threshold_deg` (angle between their normals).

    Args:
        mesh: an indexed trimesh.Trimesh whose faces share vertices (see `edge_mesh`).
        threshold_deg: the smallest bend drawn as a line; flat (coplanar) neighbours are 0.

    Returns:
        (K, 2) int64 vertex index pairs, each sorted and unique.
    """
    if len(mesh.face_adjacency) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    sharp = np.asarray(mesh.face_adjacency_angles) > math.radians(threshold_deg)
    return _unique_edges(np.asarray(mesh.face_adjacency_edges)[sharp])


def boundary_edges(mesh) -> np.ndarray:
    """Edges of one face only: the rims of open surfaces.

    Args:
        mesh: an indexed trimesh.Trimesh whose faces share vertices (see `edge_mesh`).

    Returns:
        (K, 2) int64 vertex index pairs, each sorted and unique.
    """
    import trimesh

    edges = np.asarray(mesh.edges_sorted)
    if len(edges) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    return _unique_edges(edges[trimesh.grouping.group_rows(edges, require_count=1)])


def silhouette_edges(mesh, eye) -> np.ndarray:
    """Edges between a face turned towards `eye` and a neighbour turned away: the outline from there.

    Args:
        mesh: an indexed trimesh.Trimesh whose faces share vertices and whose winding is consistent.
        eye: (3,) the camera position, in the mesh's coordinates.

    Returns:
        (K, 2) int64 vertex index pairs, each sorted and unique.
    """
    if len(mesh.face_adjacency) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    to_eye = np.asarray(eye, dtype=np.float64) - np.asarray(mesh.triangles_center)
    front = np.einsum("ij,ij->i", np.asarray(mesh.face_normals), to_eye) > 0
    pairs = np.asarray(mesh.face_adjacency)
    return _unique_edges(np.asarray(mesh.face_adjacency_edges)[front[pairs[:, 0]] != front[pairs[:, 1]]])


def feature_edges(mesh, eye, threshold_deg: float = CREASE_DEG) -> np.ndarray:
    """Crease, boundary and silhouette edges together, as 3D segments.

    Args:
        mesh: an indexed trimesh.Trimesh whose faces share vertices (see `edge_mesh`).
        eye: (3,) the camera position.
        threshold_deg: see `crease_edges`.

    Returns:
        (K, 2, 3) float64: each edge's two end points, each edge once.
    """
    edges = _unique_edges(np.concatenate([crease_edges(mesh, threshold_deg), boundary_edges(mesh), silhouette_edges(mesh, eye)]))
    return np.asarray(mesh.vertices, dtype=np.float64)[edges]


def _unique_edges(edges: np.ndarray) -> np.ndarray:
    edges = np.sort(np.asarray(edges, dtype=np.int64).reshape(-1, 2), axis=1)
    return np.unique(edges, axis=0) if len(edges) else edges


# --------------------------------------------------------------------------------------------
# Visibility
# --------------------------------------------------------------------------------------------


def project(points: np.ndarray, view_proj: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Points to pixel coordinates of a `size` image (GL conventions, row 0 at the top).

    Args:
        points: (N, 3) world points.
        view_proj: the 4x4 `view_projection` matrix (column vectors).
        size: image side in pixels; pixel (r, c) spans [c, c + 1) x [r, r + 1).

    Returns:
        (xy, w): (N, 2) float64 (x = column, y = row) and (N,) clip w, the distance in front of the camera.
    """
    clip = np.c_[points, np.ones(len(points))] @ np.asarray(view_proj, dtype=np.float64).T
    w = clip[:, 3]
    safe = np.where(np.abs(w) > 1e-12, w, 1e-12)
    xy = np.stack([(clip[:, 0] / safe + 1) * 0.5 * size, (1 - clip[:, 1] / safe) * 0.5 * size], axis=1)
    return xy, w


def visible_segments(
    segments: np.ndarray, depth: np.ndarray, view_proj: np.ndarray, near: float, far: float, min_length: float = MIN_SEGMENT_PX
) -> np.ndarray:
    """The parts of 3D segments that the depth buffer shows, in pixel coordinates.

    Each segment is sampled every `SAMPLE_STEP_PX` along its projection; a sample is visible when it
    is inside the frame and not farther than the depth drawn at its pixel, within a tolerance of
    0.5% of its distance plus the local depth slope (a sample lies up to half a pixel from the
    pixel centre the buffer holds; one-sided differences keep the slope of the surface, not of a
    depth jump). Runs of visible samples become 2D segments.

    Args:
        segments: (K, 2, 3) world segments.
        depth: (S, S) window depth (`Renderer.depth`), row 0 at the top.
        view_proj: the matrix the depth was drawn with.
        near, far: its clip planes, to turn window depth back into distance.
        min_length: shorter visible pieces are dropped (pixels).

    Returns:
        (M, 2, 2) float64: (x, y) end points of the visible pieces at the depth buffer's size.
    """
    size = depth.shape[0]
    if len(segments) == 0:
        return np.zeros((0, 2, 2))
    ends, _ = project(segments.reshape(-1, 3), view_proj, size)
    length = np.linalg.norm(ends[1::2] - ends[0::2], axis=1)
    n = np.clip(np.ceil(length / SAMPLE_STEP_PX).astype(np.int64) + 1, 2, MAX_SAMPLES_PER_EDGE)
    edge = np.repeat(np.arange(len(segments)), n)
    first = np.cumsum(n) - n
    t = (np.arange(len(edge)) - first[edge]) / (n[edge] - 1)
    points = segments[edge, 0] + t[:, None] * (segments[edge, 1] - segments[edge, 0])
    xy, w = project(points, view_proj, size)
    # distance drawn at each pixel, and how fast it changes there
    ndc = 2.0 * depth.astype(np.float64) - 1.0
    dist = 2.0 * far * near / ((far + near) - ndc * (far - near))
    pad = np.pad(dist, 1, mode="edge")
    slope = np.minimum(np.abs(pad[1:-1, 2:] - dist), np.abs(dist - pad[1:-1, :-2]))
    slope += np.minimum(np.abs(pad[2:, 1:-1] - dist), np.abs(dist - pad[:-2, 1:-1]))
    col, row = np.floor(xy[:, 0]).astype(np.int64), np.floor(xy[:, 1]).astype(np.int64)
    inside = (w > 0) & (col >= 0) & (col < size) & (row >= 0) & (row < size)
    c, r = np.clip(col, 0, size - 1), np.clip(row, 0, size - 1)
    visible = inside & (w <= dist[r, c] + 0.005 * w + slope[r, c])
    # runs of visible samples within one edge
    last = np.zeros(len(edge), dtype=bool)
    last[first + n - 1] = True
    is_first = np.zeros(len(edge), dtype=bool)
    is_first[first] = True
    prev_visible = np.r_[False, visible[:-1]] & ~is_first
    next_visible = np.r_[visible[1:], False] & ~last
    starts = np.nonzero(visible & ~prev_visible)[0]
    stops = np.nonzero(visible & ~next_visible)[0]
    out = np.stack([xy[starts], xy[stops]], axis=1)
    return out[np.linalg.norm(out[:, 1] - out[:, 0], axis=1) >= min_length]


def chain_segments(segments: np.ndarray, max_turn_deg: float = 30.0, snap: float = 1.0) -> list[np.ndarray]:
    """Join 2D segments that continue one another (a shared end, a small turn) into polylines.

    One stroke along a sphere's outline or a long edge split by the depth test looks drawn in one
    go, where separate strokes would each overshoot and wobble on their own.

    Args:
        segments: (M, 2, 2) end points.
        max_turn_deg: the largest change of direction at a joint.
        snap: end points closer than this (pixels, by rounding) count as shared.

    Returns:
        Polylines, each (P, 2) float64 with P >= 2, in a deterministic order.
    """
    keys = [tuple(k) for k in np.round(segments.reshape(-1, 2) / snap).astype(np.int64).tolist()]
    at: dict[tuple[int, int], list[int]] = {}
    for i, k in enumerate(keys):  # end index i = 2 * segment + (0 start | 1 stop)
        at.setdefault(k, []).append(i)
    used = np.zeros(len(segments), dtype=bool)
    cos_max = math.cos(math.radians(max_turn_deg))

    def extend(line: list[np.ndarray], end: int) -> None:
        # grow `line` beyond its last point, which is segment end `end`
        while True:
            direction = line[-1] - line[-2]
            direction = direction / max(np.linalg.norm(direction), 1e-9)
            best, best_cos = -1, cos_max
            for other in at[keys[end]]:
                s = other // 2
                if used[s]:
                    continue
                nxt = segments[s, 1 - other % 2]
                step = nxt - line[-1]
                norm = np.linalg.norm(step)
                if norm < 1e-9:
                    continue
                cos = float(direction @ step) / norm
                if cos > best_cos:
                    best, best_cos = other, cos
            if best < 0:
                return
            used[best // 2] = True
            line.append(segments[best // 2, 1 - best % 2])
            end = best ^ 1  # the far end of the segment just added

    lines = []
    for s in range(len(segments)):
        if used[s]:
            continue
        used[s] = True
        line = [segments[s, 0], segments[s, 1]]
        extend(line, 2 * s + 1)
        line.reverse()
        extend(line, 2 * s)
        lines.append(np.asarray(line))
    return lines


# --------------------------------------------------------------------------------------------
# Strokes
# --------------------------------------------------------------------------------------------


def draw_strokes(lines: list[np.ndarray], rng: np.random.Generator, size: int) -> np.ndarray:
    """Polylines drawn as hand strokes in pencil grey on white paper.

    Per drawing: a rotation of up to 6 degrees, a scale of 0.88-1, a shift of up to 5% of the
    side, a share of 10-25% of strokes left out, a pencil darkness. Per stroke: its points
    jittered by about a pixel, a bowed midpoint on each piece, an overshoot at both ends, a width
    of 1-3 pixels, its own grey; now and then drawn twice, as people retrace a line.

    Args:
        lines: (P, 2) polylines in pixel coordinates of a `size` canvas.
        rng: the only source of variation.
        size: canvas side (the drawing size, before any downsampling).

    Returns:
        (size, size) uint8, white paper (255) with dark strokes.
    """
    from PIL import Image, ImageDraw

    scale = size / 256.0  # jitter amounts below are in pixels of a 256 canvas
    angle = math.radians(float(rng.uniform(-6, 6)))
    zoom = float(rng.uniform(0.88, 1.0))
    shift = rng.uniform(-0.05, 0.05, 2) * size
    drop = float(rng.uniform(0.10, 0.25))
    pencil = float(rng.uniform(20, 70))  # the darkest grey of this drawing
    paper = float(rng.uniform(246, 255))
    stroke_rng = np.random.default_rng(rng.integers(0, 2**63))  # what the strokes draw does not move the caller's state
    rot = zoom * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    centre = np.array([size / 2, size / 2])
    image = Image.new("L", (size, size), int(round(paper)))
    draw = ImageDraw.Draw(image)
    for line in lines:
        if stroke_rng.random() < drop:
            continue
        points = (line - centre) @ rot.T + centre + shift
        for _ in range(2 if stroke_rng.random() < 0.12 else 1):
            path = _hand_path(points, stroke_rng, scale)
            width = int(stroke_rng.choice([1, 2, 3], p=[0.3, 0.45, 0.25]) * max(1, round(scale)))
            grey = int(np.clip(pencil + stroke_rng.normal(0, 18), 0, 150))
            draw.line([tuple(p) for p in path.tolist()], fill=grey, width=width, joint="curve")
    return np.asarray(image)


def _hand_path(points: np.ndarray, rng: np.random.Generator, scale: float) -> np.ndarray:
    """A polyline as a hand would draw it: overshooting ends, jittered corners, bowed pieces."""
    points = points + rng.normal(0, 1.0 * scale, points.shape)
    start, end = points[1] - points[0], points[-1] - points[-2]
    start /= max(np.linalg.norm(start), 1e-9)
    end /= max(np.linalg.norm(end), 1e-9)
    points[0] -= start * rng.uniform(0, 4 * scale)
    points[-1] += end * rng.uniform(0, 4 * scale)
    # a displaced midpoint on each piece: the slight bow of a freehand line
    a, b = points[:-1], points[1:]
    d = b - a
    length = np.linalg.norm(d, axis=1, keepdims=True)
    normal = np.c_[-d[:, 1], d[:, 0]] / np.maximum(length, 1e-9)
    mid = (a + b) / 2 + normal * rng.normal(0, 0.6 * scale + 0.015 * length, (len(d), 1))
    path = np.empty((2 * len(points) - 1, 2))
    path[0::2], path[1::2] = points, mid
    return path


# --------------------------------------------------------------------------------------------
# The query
# --------------------------------------------------------------------------------------------


def sketch_query(mesh, rng: np.random.Generator, size: int = 128) -> np.ndarray:
    """A hand-like line drawing of a scene from a random viewpoint (domain sketch).

    The viewpoint is drawn as for the easy query photos: azimuth 0-360, elevation 5-55 degrees,
    field of view 35-60 degrees, at 0.85-1.2 times the distance at which the bounding sphere fills
    it, looking near the centre. The visible feature edges of that view (depth-tested against the
    renderer's depth buffer at twice `size`) are drawn by `draw_strokes` at twice `size` and
    box-downsampled.

    Args:
        mesh: a trimesh.Trimesh (e.g. from `build_scene`) or a SceneMesh.
        rng: the only source of variation; the same state gives the same bytes. It advances by
            the same amount whatever the scene.
        size: output side in pixels (the query photos' PHOTO_SIZE).

    Returns:
        (size, size, 3) uint8 RGB, grey strokes on white.

    Raises:
        RenderError: no OpenGL context can be created.
    """
    from PIL import Image

    from scenesearch.render import get_renderer
    from scenesearch.render.camera import fit_distance, orbit_eye, view_projection
    from scenesearch.render.mesh import Camera

    scene = _as_soup(mesh)
    centre, radius = scene.bounding_sphere()
    fov = float(rng.uniform(35, 60))
    distance = fit_distance(radius, fov) * float(rng.uniform(0.85, 1.2))
    eye = orbit_eye(centre, distance, float(rng.uniform(0, 360)), float(rng.uniform(5, 55)))
    camera = Camera(tuple(float(v) for v in eye), tuple(float(v) for v in centre + rng.normal(0, 0.05 * radius, 3)), fov_deg=fov)
    canvas = size * SUPERSAMPLE
    depth = get_renderer(size, canvas).depth(scene, camera)
    view_proj = view_projection(camera, centre, radius)
    near, far = clip_planes(camera, centre, radius)
    segments = visible_segments(feature_edges(edge_mesh(scene), eye), depth, view_proj, near, far)
    drawing = draw_strokes(chain_segments(segments), rng, canvas)
    small = np.asarray(Image.fromarray(drawing).reduce(SUPERSAMPLE))
    return np.repeat(small[..., None], 3, axis=-1)


def _as_soup(mesh):
    """The renderer's SceneMesh of a trimesh (positions and face normals; colour plays no part in a sketch)."""
    from scenesearch.render.mesh import DEFAULT_GREY, SceneMesh

    if isinstance(mesh, SceneMesh):
        return mesh
    tri = np.asarray(mesh.vertices, dtype=np.float32)[np.asarray(mesh.faces)]
    normals = np.repeat(np.asarray(mesh.face_normals, dtype=np.float32), 3, axis=0)
    return SceneMesh(tri.reshape(-1, 3), normals, np.broadcast_to(DEFAULT_GREY, (3 * len(tri), 3)).copy())


def clip_planes(camera, centre: np.ndarray, radius: float) -> tuple[float, float]:
    """The near and far planes `view_projection` brackets the scene's bounding sphere with (same rule).

    Args:
        camera: the view's Camera.
        centre, radius: the scene's bounding sphere.

    Returns:
        (near, far) distances in front of the eye, what `visible_segments` turns window depth back with.
    """
    dist = float(np.linalg.norm(np.asarray(camera.eye) - centre))
    return max(dist - radius * 1.05, radius * 1e-3), dist + radius * 1.05

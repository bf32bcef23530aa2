"""Sketch queries: feature edges, the depth test, the drawings themselves and their place in the generator.

Drawn with the real renderer (EGL; llvmpipe on a CPU).
"""

import dataclasses

import numpy as np
import pyarrow.parquet as pq
import pytest
import trimesh

from scenesearch import config
from scenesearch.data import ingest
from scenesearch.data.generate import as_scene_mesh, generate, query_photo
from scenesearch.data.sketch import (
    clip_planes,
    boundary_edges,
    chain_segments,
    crease_edges,
    edge_mesh,
    project,
    sketch_query,
    silhouette_edges,
    visible_segments,
)
from scenesearch.data.synthetic_scenes import build_scene
from scenesearch.render import get_renderer
from scenesearch.render.camera import view_projection
from scenesearch.render.mesh import Camera


@pytest.fixture(scope="module")
def scenes():
    rng = np.random.default_rng(0)
    return {label: as_scene_mesh(build_scene(label, rng)) for label in ("bedroom", "street", "chair", "car")}


# ---------------------------------------------------------------- feature edges


def test_a_cube_has_twelve_creases_and_a_fine_sphere_none():
    box = trimesh.creation.box()
    edges = crease_edges(box, 30.0)
    assert len(edges) == 12
    lengths = np.linalg.norm(box.vertices[edges[:, 0]] - box.vertices[edges[:, 1]], axis=1)
    assert np.allclose(lengths, 1.0)  # the cube's edges, none of its faces' diagonals
    assert len(crease_edges(trimesh.creation.icosphere(subdivisions=3), 30.0)) == 0
    assert len(boundary_edges(box)) == 0


def test_edges_of_a_soup_need_its_vertices_merged():
    scene = as_scene_mesh(trimesh.creation.box())  # the renderer's soup: no two faces share a vertex
    assert len(crease_edges(edge_mesh(scene), 30.0)) == 12


def test_an_open_square_has_four_boundary_edges():
    square = trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], [[0, 1, 2], [0, 2, 3]], process=False)
    assert len(boundary_edges(square)) == 4 and len(crease_edges(square)) == 0


def test_a_cubes_silhouette_from_a_corner_view_is_a_hexagon():
    box = trimesh.creation.box()
    edges = silhouette_edges(box, (3.0, 2.0, 5.0))
    assert len(edges) == 6
    corners = box.vertices[edges]  # neither the nearest nor the farthest corner is on the outline
    assert not np.any(np.all(np.isclose(corners, 0.5), axis=-1)) and not np.any(np.all(np.isclose(corners, -0.5), axis=-1))


# ---------------------------------------------------------------- visibility


def test_depth_test_hides_the_three_edges_behind_a_cube():
    box = trimesh.creation.box()
    scene = as_scene_mesh(box)
    centre, radius = scene.bounding_sphere()
    camera = Camera((2.0, 1.5, 4.0), tuple(float(c) for c in centre), fov_deg=40.0)  # sees the +x, +y and +z faces
    depth = get_renderer(128, 256).depth(scene, camera)
    assert depth.shape == (256, 256) and depth.dtype == np.float32
    assert depth.max() == 1.0 and 0.0 < depth.min() < 1.0  # background at the far end, the cube in front
    vp = view_projection(camera, centre, radius)
    edges = crease_edges(box)
    for a, b in edges:
        segment = box.vertices[[a, b]][None]
        visible = visible_segments(segment, depth, vp, *clip_planes(camera, centre, radius))
        shown = np.linalg.norm(visible[:, 1] - visible[:, 0], axis=1).sum()
        full = np.linalg.norm(np.diff(project(segment[0], vp, 256)[0], axis=0))
        hidden = np.all(np.isclose(box.vertices[[a, b]], -0.5), axis=1).any()  # touches the far corner
        assert shown < 0.1 * full if hidden else shown > 0.85 * full, (box.vertices[[a, b]], shown, full)


def test_depth_leaves_the_renders_unchanged(scenes):
    scene = scenes["chair"]
    centre, radius = scene.bounding_sphere()
    camera = Camera((3.0, 2.0, 4.0), tuple(float(c) for c in centre))
    renderer = get_renderer(128, 256)
    before = renderer.render(scene, [camera], alpha=True)
    depth = renderer.depth(scene, camera)
    covered = before[0, ..., 3] / 255.0  # the share of each output pixel the mesh covers
    assert abs((depth < 1.0).mean() - covered.mean()) < 0.01  # depth is drawn where the colour is
    assert renderer.render(scene, [camera], alpha=True).tobytes() == before.tobytes()


def test_chaining_joins_continuing_pieces_only():
    pieces = np.array([[[0, 0], [10, 0]], [[10, 0], [20, 1]], [[20, 1], [20, 20]]], dtype=float)  # the last turns 90 degrees
    lines = chain_segments(pieces)
    assert sorted(len(line) for line in lines) == [2, 3]


# ---------------------------------------------------------------- sketches


def test_a_sketch_is_a_function_of_the_rng(scenes):
    scene = scenes["bedroom"]
    first = [sketch_query(scene, np.random.default_rng(7)) for _ in range(2)]
    assert first[0].shape == (128, 128, 3) and first[0].dtype == np.uint8
    assert first[0].tobytes() == first[1].tobytes()
    assert sketch_query(scene, np.random.default_rng(8)).tobytes() != first[0].tobytes()
    # a trimesh gives a sketch too
    assert sketch_query(build_scene("chair", np.random.default_rng(1)), np.random.default_rng(7), size=64).shape == (64, 64, 3)


def test_sketches_are_dark_lines_on_white_unlike_the_photos(scenes):
    rng = np.random.default_rng(3)
    for label, scene in scenes.items():
        sketch = sketch_query(scene, rng).astype(np.float64)
        grey = sketch[..., 0]
        assert (sketch == grey[..., None]).all()  # grey RGB
        assert (grey > 200).mean() > 0.7, label  # mostly paper
        assert (grey < 80).sum() > 30, label  # with dark strokes
        photo = query_photo(scene, rng).astype(np.float64)
        assert (photo > 235).all(axis=-1).mean() < 0.05 and np.abs(sketch - photo).mean() > 60, label


# ---------------------------------------------------------------- the generator


def test_generate_writes_sketches_that_ingest_reads_as_their_domain(tmp_path):
    small = config.DataConfig(n_classes=2, scenes_per_class=2, queries_per_class=2, query_scenes_per_class=1)
    with_sketches = dataclasses.replace(small, sketch_queries=True)
    generate(tmp_path / "a", with_sketches, seed=1)
    generate(tmp_path / "b", small, seed=1)
    a, b = tmp_path / "a", tmp_path / "b"
    files = {root: sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) for root in (a, b)}
    sketches = [f for f in files[a] if f.startswith("sketches/")]
    queries = [f for f in files[a] if f.startswith("queries/")]
    assert len(sketches) == 4 and [s.split("/", 1)[1].rsplit(".", 1)[0] for s in sketches] == [q.split("/", 1)[1].rsplit(".", 1)[0] for q in queries]
    # everything else is as without sketches: the photos draw from their own generators
    others = [f for f in files[b] if f != ingest.GENERATED_MARKER]
    assert [f for f in files[a] if f not in sketches and f != ingest.GENERATED_MARKER] == others
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in others)
    assert (a / ingest.GENERATED_MARKER).read_text() != (b / ingest.GENERATED_MARKER).read_text()
    result = ingest.run(str(a), str(tmp_path / "m"), with_sketches, seed=1)
    assert result.n_rejected == 0 and result.n_queries == 8
    m = pq.read_table(tmp_path / "m" / "manifest.parquet").to_pandas()
    assert sorted(m[m.domain == "sketch"].item_id) == sketches
    assert set(m.domain) == {"scene", "photo", "sketch"}

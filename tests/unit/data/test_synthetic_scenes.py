"""Procedural scenes and objects: every class builds a sane coloured mesh, deterministically, distinct
from the other classes, and survives a write/read round trip in every format the benchmark uses."""

import itertools
import os

import numpy as np
import openskp
import pytest
import trimesh
from scipy.spatial import cKDTree

from scenesearch.data import synthetic_scenes as ss
from scenesearch.errors import ItemError
from scenesearch.render import load_mesh


def _scene(label: str, seed: int = 0) -> trimesh.Trimesh:
    return ss.build_scene(label, np.random.default_rng(seed))


@pytest.fixture(scope="module")
def scenes() -> dict[str, trimesh.Trimesh]:
    return {label: _scene(label) for label in ss.SCENE_CLASSES}


@pytest.fixture(scope="module")
def objects() -> dict[str, trimesh.Trimesh]:
    return {label: _scene(label) for label in ss.OBJECT_CLASSES}


def _face_colours(mesh: trimesh.Trimesh) -> np.ndarray:
    """(F, 4) uint8 face colours whatever visual trimesh loaded (OBJ comes back textured)."""
    visual = mesh.visual
    if visual.kind == "texture":
        visual = visual.to_color()
        visual.mesh = mesh
    return np.asarray(visual.face_colors)


def _assert_same_coloured_faces(original: trimesh.Trimesh, loaded: trimesh.Trimesh, tolerance: float) -> None:
    """Same multiset of face colours, and each loaded face coloured like an original face at its place."""
    want, got = np.asarray(original.visual.face_colors), _face_colours(loaded)
    np.testing.assert_array_equal(np.unique(want, axis=0, return_counts=True)[1], np.unique(got, axis=0, return_counts=True)[1])
    np.testing.assert_array_equal(np.unique(want, axis=0), np.unique(got, axis=0))
    neighbours = cKDTree(original.triangles_center).query_ball_point(loaded.triangles_center, r=tolerance)
    mismatched = [i for i, near in enumerate(neighbours) if not any((want[j] == got[i]).all() for j in near)]
    assert not mismatched, f"{len(mismatched)} faces changed colour, e.g. face {mismatched[0]}"


def test_there_are_at_least_ten_distinct_classes():
    assert len(ss.SCENE_CLASSES) >= 10
    assert len(set(ss.SCENE_CLASSES)) == len(ss.SCENE_CLASSES)


@pytest.mark.parametrize("label", ss.SCENE_CLASSES)
def test_every_class_builds_a_coloured_grounded_mesh(label, scenes):
    mesh = scenes[label]
    assert isinstance(mesh, trimesh.Trimesh)
    assert 100 < len(mesh.faces) < 30_000
    assert np.isfinite(mesh.vertices).all()
    assert mesh.extents.max() > 1.0
    assert mesh.visual.kind == "face"
    colours = np.asarray(mesh.visual.face_colors)
    assert colours.shape == (len(mesh.faces), 4) and colours.dtype == np.uint8
    assert len(np.unique(colours, axis=0)) >= 5  # many parts, many colours
    assert (mesh.area_faces > 1e-8).all()  # SketchUp cannot store zero-area faces
    # The ground slab's top is the y=0 plane; nothing hangs far below it (water-borne hulls a little).
    assert -2.0 < mesh.bounds[0][1] < 0.0 < mesh.bounds[1][1]


def test_there_are_at_least_eight_object_classes_apart_from_the_scene_classes():
    assert len(ss.OBJECT_CLASSES) >= 8
    assert len(set(ss.OBJECT_CLASSES)) == len(ss.OBJECT_CLASSES)
    assert not set(ss.OBJECT_CLASSES) & set(ss.SCENE_CLASSES)


@pytest.mark.parametrize("label", ss.OBJECT_CLASSES)
def test_every_object_class_builds_one_coloured_model_without_ground(label, objects):
    mesh = objects[label]
    assert isinstance(mesh, trimesh.Trimesh) and mesh.visual.kind == "face"
    assert 20 < len(mesh.faces) < 30_000
    assert np.isfinite(mesh.vertices).all() and (mesh.area_faces > 1e-8).all()
    colours = np.asarray(mesh.visual.face_colors)
    assert colours.shape == (len(mesh.faces), 4) and colours.dtype == np.uint8
    # It stands on y=0 with nothing below, and it is an object, not a site: no slab, at most ~15 m.
    assert mesh.bounds[0][1] == pytest.approx(0.0, abs=1e-6)
    assert 0.3 < mesh.extents.max() < 16.0
    assert not (np.isclose(mesh.vertices[:, 1], -ss._GROUND_THICKNESS)).any()


@pytest.mark.parametrize("label", ss.OBJECT_CLASSES)
def test_object_models_of_a_class_vary_in_proportions(label):
    proportions = [m.extents / m.extents.max() for m in (_scene(label, seed) for seed in range(4))]
    assert np.ptp(np.array(proportions), axis=0).max() > 0.02


def test_object_classes_differ_in_mean_colour_or_proportions(objects):
    """Size says little about an object framed alone, so compare its proportions instead."""
    signature = {label: (np.asarray(m.visual.face_colors)[:, :3].mean(axis=0), m.extents / m.extents.max()) for label, m in objects.items()}
    alike = [
        (a, b)
        for a, b in itertools.combinations(ss.OBJECT_CLASSES, 2)
        if np.abs(signature[a][0] - signature[b][0]).max() < 10 and np.abs(signature[a][1] - signature[b][1]).max() < 0.1
    ]
    assert not alike


@pytest.mark.parametrize("extension", [".obj", ".glb", ".ply", ".off", ".stl"])
def test_object_files_load_upright_in_every_object_format(tmp_path, extension):
    """No object file may look like a Z-up floor plan to ``render.up_axis: auto`` (it would be laid on its side)."""
    from scenesearch.render import detect_up_axis

    for label in ss.OBJECT_CLASSES:
        for seed in range(3):
            mesh = _scene(label, seed)
            path = tmp_path / f"{label}_{seed}{extension}"
            ss.write_scene(mesh, path)
            loaded = load_mesh(path)
            assert len(loaded.positions) == 3 * len(mesh.faces)
            np.testing.assert_allclose(loaded.positions.min(0), mesh.bounds[0], atol=1e-4)
            assert detect_up_axis(loaded, path.name) == "y", (label, seed)


@pytest.mark.parametrize("label", ss.SCENE_CLASSES + ss.OBJECT_CLASSES)
def test_same_seed_gives_byte_identical_geometry(label):
    first, second = _scene(label, seed=7), _scene(label, seed=7)
    assert first.vertices.tobytes() == second.vertices.tobytes()
    assert first.faces.tobytes() == second.faces.tobytes()
    assert np.asarray(first.visual.face_colors).tobytes() == np.asarray(second.visual.face_colors).tobytes()


@pytest.mark.parametrize("label", ss.SCENE_CLASSES + ss.OBJECT_CLASSES)
def test_different_seeds_give_different_scenes(label):
    first, second = _scene(label, seed=0), _scene(label, seed=1)
    same_shape = first.vertices.shape == second.vertices.shape
    assert not (same_shape and np.allclose(first.vertices, second.vertices))


def test_unknown_label_is_named_with_the_valid_ones():
    with pytest.raises(ValueError) as error:
        ss.build_scene("spaceship", np.random.default_rng(0))
    message = str(error.value)
    assert "spaceship" in message
    assert all(label in message for label in ss.SCENE_CLASSES + ss.OBJECT_CLASSES)


def test_classes_differ_in_mean_colour_or_size(scenes):
    """A cheap proxy for "a retriever can tell them apart": no two classes look alike on average."""
    signature = {label: (np.asarray(m.visual.face_colors)[:, :3].mean(axis=0), m.extents) for label, m in scenes.items()}
    alike = [
        (a, b)
        for a, b in itertools.combinations(ss.SCENE_CLASSES, 2)
        if np.abs(signature[a][0] - signature[b][0]).max() < 10 and np.abs(signature[a][1] - signature[b][1]).max() < 2.0
    ]
    assert not alike


@pytest.mark.parametrize("extension", [".glb", ".obj", ".ply", ".off", ".stl"])
def test_trimesh_formats_round_trip(tmp_path, extension, scenes):
    mesh = scenes["street"]
    path = tmp_path / f"scene{extension}"
    ss.write_scene(mesh, path)
    loaded = trimesh.load(path, force="mesh")
    assert len(loaded.faces) == len(mesh.faces)
    assert 0.3 * len(mesh.vertices) <= len(loaded.vertices) <= len(mesh.vertices)  # trimesh merges duplicates
    np.testing.assert_allclose(loaded.bounds, mesh.bounds, atol=1e-5)
    if extension in (".glb", ".obj", ".ply"):
        _assert_same_coloured_faces(mesh, loaded, tolerance=1e-4)


def test_obj_brings_its_companions_and_leaves_no_temporary_files(tmp_path, scenes):
    ss.write_scene(scenes["park"], tmp_path / "a.obj")
    ss.write_scene(scenes["farm"], tmp_path / "b.obj")  # a second OBJ in the same folder must not clobber the first
    assert sorted(os.listdir(tmp_path)) == ["a.mtl", "a.obj", "a_palette.png", "b.mtl", "b.obj", "b_palette.png"]
    _assert_same_coloured_faces(scenes["park"], trimesh.load(tmp_path / "a.obj", force="mesh"), tolerance=1e-4)
    # Loaded as a scene (how the renderer reads files) the colours survive too.
    geometry = next(iter(trimesh.load(tmp_path / "a.obj", force="scene", process=False).geometry.values()))
    assert geometry.visual.to_color().kind == "vertex"


def _as_trimesh(scene) -> trimesh.Trimesh:
    """The renderer's triangle soup as a trimesh with face colours, to compare with the original."""
    faces = np.arange(len(scene.positions)).reshape(-1, 3)
    colours = np.round(scene.colours[::3] * 255).astype(np.uint8)
    return trimesh.Trimesh(scene.positions, faces, face_colors=colours, process=False)


@pytest.mark.parametrize("label", ["bedroom", "stadium"])
def test_skp_round_trip_keeps_faces_bounds_colours_and_orientation(tmp_path, label, scenes):
    mesh = scenes[label]
    path = tmp_path / f"{label}.skp"
    ss.write_scene(mesh, path)
    assert os.listdir(tmp_path) == [f"{label}.skp"]
    loaded = _as_trimesh(load_mesh(path))
    assert len(loaded.faces) == len(mesh.faces)  # both sides share one material: no back-face copies
    np.testing.assert_allclose(loaded.bounds, mesh.bounds, atol=1e-3)
    _assert_same_coloured_faces(mesh, loaded, tolerance=1e-3)
    # Y-up and winding survive: each loaded face points the same way as the original face there.
    _, nearest = cKDTree(mesh.triangles_center).query(loaded.triangles_center)
    agreement = np.einsum("ij,ij->i", loaded.face_normals, mesh.face_normals[nearest])
    assert np.median(agreement) > 0.99


def test_skp_with_unpainted_backs_keeps_painted_fronts_facing_out(tmp_path):
    """Files from other tools paint only the front; openskp adds reverse-wound back copies, which
    the renderer keeps and culls (SketchUp stores both sides explicitly)."""
    builder = openskp.create()
    red, green = builder.add_material("red", (200, 0, 0)), builder.add_material("green", (0, 150, 0))
    for i, material in enumerate([red, green, red]):
        builder.add_face([(i * 10.0, 0.0, 0.0), (i * 10.0 + 5.0, 0.0, 0.0), (i * 10.0, 0.0, 5.0)], material=material)
    builder.save(str(tmp_path / "painted.skp"))
    scene = load_mesh(tmp_path / "painted.skp")
    assert scene.cull_back_faces
    loaded = _as_trimesh(scene)
    # SketchUp's front normal (0, -1, 0) is +Z once converted to Y up.
    front = np.isclose(loaded.face_normals[:, 2], 1.0, atol=1e-6)
    assert front.sum() == 3
    assert sorted(tuple(c[:3]) for c in np.asarray(loaded.visual.face_colors)[front]) == [(0, 150, 0), (200, 0, 0), (200, 0, 0)]


def test_unparsable_skp_is_named(tmp_path):
    bad = tmp_path / "broken.skp"
    bad.write_bytes(b"not a sketchup file at all")
    with pytest.raises(ItemError, match="broken.skp"):
        load_mesh(bad)
    with pytest.raises(ItemError, match="missing.skp: cannot read the file"):
        load_mesh(tmp_path / "missing.skp")



def test_unsupported_extension_is_refused(tmp_path, scenes):
    with pytest.raises(ValueError, match=r"\.fbx"):
        ss.write_scene(scenes["bedroom"], tmp_path / "scene.fbx")
    assert os.listdir(tmp_path) == []

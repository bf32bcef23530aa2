"""render.up_axis turns Z-up files Y up (auto only when the file is clearly flat in XY), and a
scene with a blank view is rejected with its reason, never kept as an empty image."""

from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import trimesh

from scenesearch.config import RenderConfig
from scenesearch.errors import ItemError
from scenesearch.render import blank_views, detect_up_axis, load_mesh, orient_mesh, render_views, to_y_up
from scenesearch.render import step
from scenesearch.render.coverage import check_not_blank, drawn_share
from scenesearch.render.mesh import Camera

EDGE_ON_VIEWS = [4, 10]  # circle views at azimuth 90 and 270 degrees: they look along the X axis


def _floor_plan_z_up() -> trimesh.Trimesh:
    """A 20 x 14 m floor (5 cm thick, top at z=0) with four low objects standing on it along +Z."""
    floor = trimesh.creation.box((20, 14, 0.05))
    floor.apply_translation((0, 0, -0.025))
    floor.visual.face_colors = (60, 160, 60, 255)
    parts = [floor]
    for x, y in [(-5, -3), (4, 2), (6, -4), (-3, 4)]:
        thing = trimesh.creation.box((1.5, 1.0, 0.3))
        thing.apply_translation((x, y, 0.15))
        thing.visual.face_colors = (200, 40, 40, 255)
        parts.append(thing)
    return trimesh.util.concatenate(parts)


def _z_up_to_y_up(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """The same scene modelled Y up: (x, y, z) -> (x, z, -y)."""
    out = mesh.copy()
    out.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, (1, 0, 0)))
    return out


@pytest.fixture
def z_up_obj(tmp_path):
    path = tmp_path / "plan.obj"
    _floor_plan_z_up().export(path)
    return path


# --- detect_up_axis / to_y_up / orient_mesh ------------------------------------------------------


def test_detect_up_axis_z_up_and_y_up(tmp_path, z_up_obj):
    y_up = tmp_path / "plan_y.obj"
    _z_up_to_y_up(_floor_plan_z_up()).export(y_up)
    assert detect_up_axis(load_mesh(z_up_obj), str(z_up_obj)) == "z"
    assert detect_up_axis(load_mesh(y_up), str(y_up)) == "y"
    assert detect_up_axis(load_mesh(z_up_obj), "plan.PLY") == "z"  # any format without an up convention


def test_detect_up_axis_trusts_gltf_and_sketchup(tmp_path):
    from scenesearch.data.synthetic_scenes import write_scene

    glb = tmp_path / "plan.glb"
    _floor_plan_z_up().export(glb)
    assert detect_up_axis(load_mesh(glb), str(glb)) == "y"  # glTF is Y up by its specification
    skp = tmp_path / "plan.skp"
    write_scene(_z_up_to_y_up(_floor_plan_z_up()), skp)  # written Z up in the file, read back Y up
    mesh = load_mesh(skp)
    assert detect_up_axis(mesh, str(skp)) == "y"
    for setting in ("auto", "y", "z"):  # never rotated a second time
        turned, axis = orient_mesh(mesh, str(skp), setting)
        assert turned is mesh and axis == "y"


def test_tall_z_up_object_is_left_to_the_setting(tmp_path):
    """auto is conservative: only a layout flat in XY counts as Z up."""
    path = tmp_path / "tower.obj"
    trimesh.creation.box((4, 4, 30)).export(path)
    mesh = load_mesh(path)
    assert detect_up_axis(mesh, str(path)) == "y"
    assert orient_mesh(mesh, str(path), "z")[1] == "z"


def test_to_y_up_rotates_positions_normals_and_camera(z_up_obj):
    mesh = replace(load_mesh(z_up_obj), camera=Camera((1.0, 2.0, 3.0), (0.0, 0.0, 0.0), (0.0, 0.0, 1.0)))
    assert to_y_up(mesh, "y") is mesh
    turned = to_y_up(mesh, "z")
    p, q = mesh.positions, turned.positions
    assert np.array_equal(q[:, 0], p[:, 0]) and np.array_equal(q[:, 1], p[:, 2]) and np.array_equal(q[:, 2], -p[:, 1])
    assert np.array_equal(turned.normals[:, 1], mesh.normals[:, 2])
    assert turned.camera == Camera((1.0, 3.0, -2.0), (0.0, 0.0, 0.0), (0.0, 1.0, 0.0))
    assert turned.positions.dtype == np.float32 and turned.cull_back_faces == mesh.cull_back_faces
    lo, hi = turned.positions.min(0), turned.positions.max(0)
    assert hi[1] - lo[1] < 0.5 and abs(hi[1] - 0.3) < 1e-6  # now thin along Y, objects standing up on +Y


def test_bad_up_axis_raises(z_up_obj):
    mesh = load_mesh(z_up_obj)
    with pytest.raises(ValueError, match="'x'"):
        to_y_up(mesh, "x")
    with pytest.raises(ValueError, match="auto, y, z"):
        orient_mesh(mesh, str(z_up_obj), "up")


def test_embedded_scenes_are_not_rotated_by_auto(tmp_path):
    """The embedded benchmark's classes, flat (parking lot, park) or tall (tower), stay as they are."""
    from scenesearch.data.synthetic_scenes import build_scene, write_scene

    for label in ("parking_lot", "park", "tower", "bedroom"):
        path = tmp_path / f"{label}.obj"
        write_scene(build_scene(label, np.random.default_rng(0)), path)
        mesh = load_mesh(path)
        assert detect_up_axis(mesh, str(path)) == "y", label
        assert orient_mesh(mesh, str(path), "auto")[0] is mesh
    flat = tmp_path / "parking_lot.obj"
    assert np.array_equal(render_views(flat, size=32, up_axis="auto"), render_views(flat, size=32, up_axis="y"))


# --- rendering a flat Z-up file ----------------------------------------------------------------


@pytest.mark.parametrize("up_axis", ["auto", "z"])
def test_z_up_floor_plan_has_no_blank_view_when_turned(z_up_obj, up_axis):
    views = render_views(z_up_obj, size=64, up_axis=up_axis)
    assert blank_views(views, (1.0, 1.0, 1.0)) == []
    assert drawn_share(views, (1.0, 1.0, 1.0)).min() > 0.1  # seen from above in every view


def test_z_up_floor_plan_is_blank_edge_on_with_y_up(z_up_obj):
    views = render_views(z_up_obj, size=64, up_axis="y")
    assert blank_views(views, (1.0, 1.0, 1.0)) == EDGE_ON_VIEWS
    reason = r"^plan.obj: views 4, 10 of 13 are blank \(nothing drawn\) with its Y axis up; check render.up_axis$"
    with pytest.raises(ItemError, match=reason):
        check_not_blank(views, "plan.obj", (1.0, 1.0, 1.0), "y")


def _manifest(tmp_path, files: dict[str, trimesh.Trimesh]) -> str:
    rows = []
    for rel, mesh in files.items():
        path = tmp_path / "data" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        mesh.export(path)
        rows.append({"item_id": rel, "label": rel.split("/")[1], "domain": "scene", "split": "train", "uri": str(path), "sha256": rel})
    out = tmp_path / "manifest"
    out.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), out / "manifest.parquet")
    return str(out)


@pytest.mark.parametrize("up_axis, rejected", [("auto", 0), ("z", 0), ("y", 1)])
def test_render_step_rejects_blank_views(tmp_path, up_axis, rejected, yard_scene):
    manifest = _manifest(tmp_path, {"scenes/plan/plan.obj": _floor_plan_z_up(), "scenes/yard/yard.glb": yard_scene})
    result = step.run(manifest, str(tmp_path / f"views_{up_axis}"), RenderConfig(size=32, render_size=64, up_axis=up_axis))
    views = pq.read_table(tmp_path / f"views_{up_axis}" / "views.parquet").to_pylist()
    reasons = pq.read_table(tmp_path / f"views_{up_axis}" / "rejected.parquet").to_pylist()
    assert result.n_rejected == len(reasons) == rejected
    assert {r["item_id"] for r in views} == ({"scenes/yard/yard.glb"} if rejected else {"scenes/plan/plan.obj", "scenes/yard/yard.glb"})
    if rejected:
        assert reasons[0]["uri"].endswith("scenes/plan/plan.obj")
        assert reasons[0]["reason"] == (
            "scenes/plan/plan.obj: views 4, 10 of 13 are blank (nothing drawn) with its Y axis up; check render.up_axis"
        )


# --- blank_views on synthetic arrays -------------------------------------------------------------


def test_blank_views_on_synthetic_arrays():
    white = np.full((5, 64, 64, 3), 255, np.uint8)
    views = white.copy()
    views[1, 10:40, 10:40] = (90, 30, 30)  # a scene
    views[2, :63, 20] = (120, 120, 120)  # an edge-on sliver, one pixel short of a full column: blank
    views[3, :, 20] = (120, 120, 120)  # a full one-pixel column: one row's worth of pixels, not blank
    views[4, :, :] = 254  # within the level tolerance of the background everywhere: blank
    views[4, 0, :40] = 250  # faint anti-aliased fringe, 40 pixels: still blank
    assert blank_views(views, (1.0, 1.0, 1.0)) == [0, 2, 4]
    assert blank_views(white[:, :16, :16], (1.0, 1.0, 1.0)) == [0, 1, 2, 3, 4]


def test_blank_views_uses_the_background_colour():
    grey = np.full((2, 32, 32, 3), 128, np.uint8)  # 0.5 -> 127.5, which a GL may store as 127 or 128
    grey[0] = 127
    grey[1, 4:20, 4:20] = 255  # a white object on grey
    assert blank_views(grey, (0.5, 0.5, 0.5)) == [0]
    assert blank_views(grey, (1.0, 1.0, 1.0)) == []  # on white, the grey is drawn
    assert blank_views(np.zeros((1, 32, 32, 3), np.uint8), (0.0, 0.0, 0.0)) == [0]
    with pytest.raises(ValueError, match="V, H, W, 3"):
        blank_views(grey[0], (0.5, 0.5, 0.5))


def test_check_not_blank_names_one_view():
    views = np.full((13, 16, 16, 3), 200, np.uint8)
    views[7] = 255
    check_not_blank(views[:7], "scenes/a/b.ply", (1.0, 1.0, 1.0), "z")  # nothing blank: no error
    reason = r"^scenes/a/b.ply: view 7 of 13 is blank \(nothing drawn\) with its Z axis up; check render.up_axis$"
    with pytest.raises(ItemError, match=reason):
        check_not_blank(views, "scenes/a/b.ply", (1.0, 1.0, 1.0), "z")

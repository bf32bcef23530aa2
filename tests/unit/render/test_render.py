"""The renderer draws real, distinct views; loaders keep colours, textures and saved cameras."""

import numpy as np
import pytest
import trimesh
from PIL import Image

from scenesearch.errors import ItemError
from scenesearch.render import load_mesh, render_mesh_views, render_views
from scenesearch.render.camera import look_at, view_rig
from scenesearch.render.mesh import Camera


@pytest.fixture
def glb(tmp_path, yard_scene):
    path = tmp_path / "s.glb"
    yard_scene.export(path)
    return path


def test_views_are_non_blank_and_differ(glb):
    views = render_views(glb, size=64)
    assert views.shape == (13, 64, 64, 3) and views.dtype == np.uint8
    background = np.all(views == 255, axis=-1).mean(axis=(1, 2))
    assert (background < 0.9).all() and (background > 0.1).all()  # the scene fills part of every view
    for i in range(1, 13):
        for j in range(i + 1, 13):
            assert np.abs(views[i].astype(int) - views[j]).mean() > 1.0, (i, j)


def test_colours_survive_each_format(tmp_path, glb, yard_scene):
    red_share = {}
    for ext in ("glb", "obj", "ply"):
        path = tmp_path / f"s.{ext}"
        yard_scene.export(path)
        v = render_views(path, size=32)
        red_share[ext] = ((v[..., 0] > 120) & (v[..., 1] < 80)).mean()
    assert all(s > 0.01 for s in red_share.values()), red_share
    assert max(red_share.values()) - min(red_share.values()) < 0.01


def test_textures_are_sampled(tmp_path):
    mesh = trimesh.creation.box((4, 4, 4))
    uv = np.zeros((len(mesh.vertices), 2)) + 0.5
    texture = Image.fromarray(np.full((8, 8, 3), (20, 20, 230), np.uint8))
    mesh.visual = trimesh.visual.TextureVisuals(uv=uv, image=texture)
    path = tmp_path / "textured.obj"
    mesh.export(path)
    v = render_views(path, size=32)
    blue = (v[..., 2] > 120) & (v[..., 0] < 60)
    assert blue.mean() > 0.05


def test_saved_camera_is_view_zero(glb):
    mesh = load_mesh(glb)
    centre, radius = mesh.bounding_sphere()
    top = Camera(tuple(centre + [0, 3 * radius, 0.01]), tuple(centre))
    cams = view_rig(centre, radius, predefined=top)
    assert cams[0] == top and len(cams) == 13
    own = render_mesh_views(load_mesh(glb), size=32)
    from dataclasses import replace

    seen_from_top = render_mesh_views(replace(mesh, camera=top), size=32)
    assert np.abs(own[0].astype(int) - seen_from_top[0]).mean() > 5  # view 0 changed
    assert np.array_equal(own[1:], seen_from_top[1:])  # the circle did not


def test_circle_is_thirty_degree_steps():
    cams = view_rig(np.zeros(3), 1.0, 13, elevation_deg=0.0)
    az = [np.degrees(np.arctan2(c.eye[0], c.eye[2])) % 360 for c in cams[1:]]
    assert np.allclose(np.diff(az), 30.0)


def test_look_at_maps_target_to_negative_z():
    m = look_at(np.array([0, 0, 5.0]), np.zeros(3), np.array([0, 1.0, 0]))
    assert np.allclose(m @ [0, 0, 0, 1], [0, 0, -5, 1], atol=1e-6)


def test_skp_loads_with_colours(tmp_path, yard_scene):
    from scenesearch.data.synthetic_scenes import write_scene

    path = tmp_path / "s.skp"
    write_scene(yard_scene, path)
    mesh = load_mesh(path)
    assert mesh.cull_back_faces and mesh.n_triangles >= 12
    v = render_views(path, size=32)
    assert ((v[..., 0] > 120) & (v[..., 1] < 80)).mean() > 0.01


@pytest.mark.parametrize("data, message", [(b"", "the file is empty"), (b"solid x\nendsolid x\n", "no faces")])
def test_bad_meshes_raise_item_error(tmp_path, data, message):
    path = tmp_path / "bad.stl"
    path.write_bytes(data)
    with pytest.raises(ItemError, match=message):
        load_mesh(path)


def test_torchvision_imports_after_rendering(tmp_path, glb):
    """Regression: torchvision's native ops used to segfault when loaded after Mesa's llvmpipe."""
    import subprocess
    import sys

    code = f"from scenesearch.render import render_views; render_views({str(glb)!r}, size=16); import torchvision.ops; print('ok')"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr[-500:]


def test_renders_after_another_gl_user_took_the_context(glb):
    """Regression: after another library made its own EGL context current (as pyrender does),
    our views came out blank, silently."""
    import moderngl

    before = render_views(glb, size=16)
    other = moderngl.create_standalone_context(backend="egl")  # becomes the current context
    try:
        assert np.array_equal(render_views(glb, size=16), before)
        assert (render_views(glb, size=24) < 255).any()  # a new Renderer (new size) draws too
    finally:
        other.release()
    assert np.array_equal(render_views(glb, size=16), before)  # and with no context current at all


def test_alpha_marks_exactly_the_drawn_pixels(glb):
    rgba = render_views(glb, size=32, alpha=True)
    assert rgba.shape == (13, 32, 32, 4) and rgba.dtype == np.uint8
    rgb, alpha = rgba[..., :3], rgba[..., 3]
    assert np.array_equal(rgb, render_views(glb, size=32))  # asking for alpha leaves the colours alone
    assert (rgb[alpha == 0] == 255).all()  # uncovered pixels are exactly the (white) background
    assert (alpha[(rgb != 255).any(axis=-1)] > 0).all()  # whatever differs from the background is covered
    assert ((alpha == 255).mean(axis=(1, 2)) > 0.05).all() and (alpha == 0).any(axis=(1, 2)).all()


def test_alpha_of_an_empty_region_is_zero(tmp_path):
    """A small box seen head-on: alpha is 255 in its middle, 0 in the empty corners, in between only on its rim."""
    path = tmp_path / "box.ply"
    box = trimesh.creation.box((1, 1, 1))
    box.visual.face_colors = (20, 120, 200, 255)
    box.export(path)
    rgba = render_views(path, size=32, alpha=True)
    alpha = rgba[..., 3]
    assert (alpha[:, 15:17, 15:17] == 255).all()
    assert (alpha[:, :3, :3] == 0).all() and (alpha[:, -3:, -3:] == 0).all()
    partial = (alpha > 0) & (alpha < 255)
    assert partial.mean() < 0.1  # antialiased coverage only along the edges


def test_render_step_stores_each_views_mask(tmp_path, glb):
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from scenesearch.config import RenderConfig
    from scenesearch.render import step

    (tmp_path / "m").mkdir()
    row = {"item_id": "scenes/yard/s.glb", "label": "yard", "domain": "scene", "split": "train", "uri": str(glb), "sha256": "x"}
    pq.write_table(pa.Table.from_pylist([row]), tmp_path / "m" / "manifest.parquet")
    step.run(str(tmp_path / "m"), str(tmp_path / "v"), RenderConfig(size=32, render_size=64))
    table = pq.read_table(tmp_path / "v" / "views.parquet")
    assert table.schema.equals(step.VIEWS_SCHEMA) and table.num_rows == 13
    rgba = render_views(glb, size=32, render_size=64, alpha=True)
    for r in table.to_pylist():
        with Image.open(io.BytesIO(r["mask"])) as m:
            assert m.mode == "L"
            assert np.array_equal(np.array(m), rgba[r["view"], ..., 3])
        with Image.open(io.BytesIO(r["png"])) as im:
            assert im.mode == "RGB" and np.array_equal(np.array(im), rgba[r["view"], ..., :3])

"""Views per second of our renderer against pyrender (EGL), same scenes, cameras and GL stack.

Run: .venv/bin/python bench/bench_render.py [--scenes 20] [--views 13] [--repeats 5] [--verbose]
Needs pyrender for the comparison: .venv/bin/pip install -r requirements-bench.txt
(without it the script says why in one line and prints our figure only).

Ours: `scenesearch.render.render_mesh_views(mesh, size=64, render_size=128)`, 13 views a scene,
  timed with the meshes loaded beforehand and, separately, including `load_mesh` of the GLB.
pyrender: `OffscreenRenderer(128, 128)`, one `pyrender.Scene` a scene (mesh from
  `Mesh.from_trimesh(smooth=False)`, the same 13 cameras from `view_rig` with the same near/far
  planes, one directional light plus ambient, back-face culling off like ours), timed with the
  meshes converted beforehand and, separately, including `trimesh.load` + `from_trimesh`.
Both draw 128x128; ours also box-downsamples to 64x64 (counted in its time), pyrender draws
into its fixed 4x MSAA framebuffer, resolves it and returns the 128x128 colour plus linearised
depth (counted in its time: profiled on llvmpipe, nearly all of pyrender's time shows up in that
resolve + readback, where the deferred MSAA drawing is flushed). Each figure is the best of --repeats
rounds after one warm-up scene, the four timed loops alternating within each round.
Prints figures only; asserts nothing.

Correctness check: pixel values differ by design (different shading), so it compares
silhouettes instead: the fraction of non-background pixels of each renderer (pyrender's image
box-downsampled to 64x64 the same way as ours) and the IoU of the two masks per view.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _var, _sub in (("TORCH_HOME", "torch"), ("XDG_CACHE_HOME", ""), ("MESA_SHADER_CACHE_DIR", "mesa")):
    os.environ.setdefault(_var, str(ROOT / ".cache" / _sub) if _sub else str(ROOT / ".cache"))
os.environ["PYOPENGL_PLATFORM"] = "egl"  # before pyrender (and PyOpenGL) is imported
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

import numpy as np  # noqa: E402

import _scenes  # noqa: E402
from scenesearch.render import Lighting, load_mesh, render_mesh_views  # noqa: E402
from scenesearch.render.camera import look_at, view_rig  # noqa: E402
from scenesearch.render.gl import renderer_info  # noqa: E402

TARGET_RATIO = 3.0
BACKGROUND_TOLERANCE = 6  # a pixel is background when every channel is within this of 255


def interleaved_times(runners: dict, repeats: int) -> dict[str, list[float]]:
    """Wall times of each runner over `repeats` rounds, the runners alternating within a round.

    Alternating spreads any background load on a small shared machine over all figures alike.
    """
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, fn in runners.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def box_downsample(images: np.ndarray, size: int) -> np.ndarray:
    """(N, S, S, 3) uint8 -> (N, size, size, 3), the mean of each block, as our Renderer does."""
    n, s = images.shape[:2]
    f = s // size
    return images.reshape(n, size, f, size, f, 3).mean(axis=(2, 4)).round().astype(np.uint8)


def foreground(images: np.ndarray) -> np.ndarray:
    return (255 - images.astype(np.int16)).max(axis=-1) > BACKGROUND_TOLERANCE


# ------------------------------------------------------------------------------------------
# ours
# ------------------------------------------------------------------------------------------


def setup_ours(paths: list[Path], args) -> dict:
    """Load the meshes, warm up, and return the two timed passes plus where their images go.

    pyrender leaves no context current after each render; our Renderer makes its own current
    on every call, so the passes can alternate with pyrender's.
    """
    meshes = [load_mesh(p) for p in paths]
    kw = dict(size=args.size, render_size=args.render_size, n_views=args.views)
    images: list[np.ndarray] = []

    def run_loaded():
        images.clear()
        for m in meshes:
            images.append(render_mesh_views(m, **kw))

    def run_with_load():
        for p in paths:
            render_mesh_views(load_mesh(p), **kw)

    render_mesh_views(meshes[0], **kw)  # warm-up: shader compile, framebuffer
    info = renderer_info()
    return {
        "runners": {"ours": run_loaded, "ours+load": run_with_load},
        "images": images,
        "renderer": f"{info['gl_renderer']} / OpenGL {info['gl_version']}",
        "meshes": meshes,
    }


# ------------------------------------------------------------------------------------------
# pyrender
# ------------------------------------------------------------------------------------------


def import_pyrender():
    """(pyrender module, None) or (None, one-line reason)."""
    try:
        import pyrender  # noqa: F401
    except Exception as e:
        return None, f"cannot import pyrender ({type(e).__name__}: {e}); install it with: .venv/bin/pip install -r requirements-bench.txt"
    return pyrender, None


def pyrender_rigs(scene_meshes, args) -> list[list[tuple[np.ndarray, float, float, float]]]:
    """Per scene, per view: (camera-to-world pose, yfov rad, znear, zfar) matching view_projection."""
    rigs = []
    for m in scene_meshes:
        centre, radius = m.bounding_sphere()
        views = []
        for cam in view_rig(centre, radius, args.views, predefined=m.camera):
            dist = float(np.linalg.norm(np.asarray(cam.eye) - centre))
            near = max(dist - radius * 1.05, radius * 1e-3)
            far = dist + radius * 1.05
            pose = np.linalg.inv(look_at(cam.eye, cam.target, cam.up).astype(np.float64))
            views.append((pose, math.radians(cam.fov_deg), near, far))
        rigs.append(views)
    return rigs


def setup_pyrender(pyrender, trimeshes, paths, rigs, args) -> dict:
    """Convert the meshes, create the OffscreenRenderer, warm up; the caller must call `close`."""
    import trimesh

    lighting = Lighting()
    light_pose = np.linalg.inv(look_at(np.asarray(lighting.direction), np.zeros(3), np.array([0.0, 0.0, 1.0])).astype(np.float64))
    flags = pyrender.RenderFlags.SKIP_CULL_FACES  # ours draws both sides too
    renderer = pyrender.OffscreenRenderer(args.render_size, args.render_size)
    try:
        renderer._platform.make_current()
        from OpenGL import GL

        gl_name = f"{GL.glGetString(GL.GL_RENDERER).decode()} / OpenGL {GL.glGetString(GL.GL_VERSION).decode()}"
        renderer._platform.make_uncurrent()

        def render_scene(pmesh, rig) -> list[np.ndarray]:
            scene = pyrender.Scene(bg_color=[1.0, 1.0, 1.0, 1.0], ambient_light=[lighting.ambient] * 3)  # floats: ints mean /255
            scene.add(pmesh)
            scene.add(pyrender.DirectionalLight(color=[1.0, 1.0, 1.0], intensity=3.0), pose=light_pose)
            camera = pyrender.PerspectiveCamera(yfov=rig[0][1], znear=rig[0][2], zfar=rig[0][3], aspectRatio=1.0)
            node = scene.add(camera, pose=rig[0][0])
            out = []
            for pose, yfov, near, far in rig:
                camera.yfov, camera.znear, camera.zfar = yfov, near, far
                scene.set_pose(node, pose)
                colour, _depth = renderer.render(scene, flags=flags)
                out.append(colour)
            return out

        pmeshes = [pyrender.Mesh.from_trimesh(t, smooth=False) for t in trimeshes]  # face colours need smooth=False
        render_scene(pmeshes[0], rigs[0])  # warm-up: shader compile
    except BaseException:
        renderer.delete()
        raise
    images: list[np.ndarray] = []

    def run_loaded():
        images.clear()
        for pm, rig in zip(pmeshes, rigs):
            images.extend(render_scene(pm, rig))

    def run_with_load():
        for p, rig in zip(paths, rigs):
            render_scene(pyrender.Mesh.from_trimesh(trimesh.load(p, force="mesh", process=False), smooth=False), rig)

    return {
        "runners": {"pyrender": run_loaded, "pyrender+load": run_with_load},
        "images": images,
        "renderer": gl_name,
        "close": renderer.delete,
    }


# ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=20, help="scenes (default 20)")
    parser.add_argument("--views", type=int, default=13, help="views per scene (default 13)")
    parser.add_argument("--size", type=int, default=64, help="our output side (default 64)")
    parser.add_argument("--render-size", type=int, default=128, help="drawing side of both renderers (default 128)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds; the best pass of each loop is reported (default 5)")
    parser.add_argument("--verbose", action="store_true", help="also print every pass's time")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    n_views_total = args.scenes * args.views

    trimeshes = _scenes.build_scenes(args.scenes, args.seed)
    n_faces = [len(t.faces) for t in trimeshes]
    print(f"scenes: {args.scenes} from {_scenes.scene_source()}, {min(n_faces)}-{max(n_faces)} triangles (mean {np.mean(n_faces):.0f})")
    print(f"views: {args.views} per scene, {n_views_total} in all; draw {args.render_size}x{args.render_size}, ours out {args.size}x{args.size}; best of {args.repeats}")

    reason = None
    with tempfile.TemporaryDirectory(prefix="bench_render_") as tmp:
        paths = _scenes.write_glbs(trimeshes, tmp)
        ours = setup_ours(paths, args)
        runners = dict(ours["runners"])
        pyrender, reason = import_pyrender()
        theirs = None
        if pyrender is not None:
            try:
                theirs = setup_pyrender(pyrender, trimeshes, paths, pyrender_rigs(ours["meshes"], args), args)
                runners.update(theirs["runners"])
            except Exception as e:
                reason = f"pyrender failed to set up ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                theirs = None
        try:
            times = interleaved_times(runners, args.repeats)
        finally:
            if theirs is not None:
                theirs["close"]()
    rate = {name: n_views_total / min(t) for name, t in times.items()}
    if args.verbose:
        for name, t in times.items():
            print(f"  passes {name:14s} " + " ".join(f"{x:.3f}s" for x in t))
    print(f"ours     GL renderer: {ours['renderer']}")
    print(f"ours     views/s: {rate['ours']:8.1f} (meshes loaded)    {rate['ours+load']:8.1f} (including load_mesh)")
    if theirs is None:
        print(f"pyrender: NOT MEASURED: {reason}")
        return

    ratio, ratio_load = rate["ours"] / rate["pyrender"], rate["ours+load"] / rate["pyrender+load"]
    print(f"pyrender GL renderer: {theirs['renderer']}")
    print(f"pyrender views/s: {rate['pyrender']:8.1f} (meshes converted) {rate['pyrender+load']:8.1f} (including trimesh.load + from_trimesh)")
    verdict = "MET" if ratio >= TARGET_RATIO else "NOT MET"
    print(f"ratio ours/pyrender: {ratio:.2f}x (meshes loaded), {ratio_load:.2f}x (including load); target >= {TARGET_RATIO:.0f}x: {verdict}")

    # silhouettes: same cameras should cover the same pixels
    a = foreground(np.stack(ours["images"]).reshape(-1, args.size, args.size, 3))
    b = foreground(box_downsample(np.stack(theirs["images"]), args.size))
    inter = (a & b).sum(axis=(1, 2))
    union = np.maximum((a | b).sum(axis=(1, 2)), 1)
    iou = inter / union
    print(
        f"coverage (non-background fraction, {args.size}x{args.size}): ours {a.mean():.3f}, pyrender {b.mean():.3f}; "
        f"silhouette IoU per view: mean {iou.mean():.3f}, min {iou.min():.3f}"
    )


if __name__ == "__main__":
    main()

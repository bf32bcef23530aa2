"""The OpenGL rasteriser: moderngl on an EGL context (Mesa llvmpipe on a CPU, the GPU's driver on a node).

One context per process, created on first use; a Renderer owns a shader program and an
offscreen framebuffer (colour + depth) of one size and draws many views of one uploaded mesh.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

from scenesearch.errors import RenderError
from scenesearch.render.camera import view_projection
from scenesearch.render.mesh import Camera, SceneMesh

_VERTEX = """
#version 330
uniform mat4 mvp;
in vec3 in_position;
in vec3 in_normal;
in vec3 in_colour;
out vec3 v_normal;
out vec3 v_colour;
void main() {
    gl_Position = mvp * vec4(in_position, 1.0);
    v_normal = in_normal;
    v_colour = in_colour;
}
"""

# Two-sided Lambert + ambient: meshes from the wild have inconsistent winding, so a back face
# is lit with its flipped normal instead of going black.
_FRAGMENT = """
#version 330
uniform vec3 light_dir;
uniform float ambient;
uniform float diffuse;
in vec3 v_normal;
in vec3 v_colour;
out vec4 f_colour;
void main() {
    vec3 n = normalize(v_normal);
    if (!gl_FrontFacing) n = -n;
    float lambert = max(dot(n, normalize(light_dir)), 0.0);
    f_colour = vec4(v_colour * (ambient + diffuse * lambert), 1.0);
}
"""


@dataclass(frozen=True)
class Lighting:
    """A directional light plus ambient; the direction points from the scene towards the light."""

    direction: tuple[float, float, float] = (0.4, 1.0, 0.6)
    ambient: float = 0.35
    diffuse: float = 0.65
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)


_CONTEXT = None


def gl_context():
    """The process's standalone EGL context, created once.

    Raises:
        RenderError: no EGL/OpenGL 3.3 implementation is available.
    """
    global _CONTEXT
    if _CONTEXT is None:
        _preload_triton()
        import moderngl

        try:
            _CONTEXT = moderngl.create_standalone_context(backend="egl")
        except Exception as e:
            raise RenderError(
                f"cannot create an OpenGL 3.3 context through EGL ({e}); install Mesa's EGL (libegl1, libegl-mesa0, libgl1-mesa-dri)"
            ) from None
    return _CONTEXT


def _preload_triton() -> None:
    """Load triton (and its LLVM) before Mesa's llvmpipe.

    In the other order (an EGL context first, then triton, which `import torchvision` and
    torch._dynamo pull in) the process segfaults inside triton's library initialisation (torch
    2.14 / Mesa 22.3: two LLVMs), so any process that renders and then extracts features (tests,
    notebooks, benchmarks) would crash. triton alone takes 0.4 s; all of torchvision took 3.5 s
    of every render task.
    """
    try:
        import triton  # noqa: F401
    except ImportError:  # no triton (torch's CPU wheels): nothing to clash with
        pass


def renderer_info() -> dict[str, str]:
    ctx = gl_context()
    with ctx:
        return {"gl_renderer": ctx.info["GL_RENDERER"], "gl_version": ctx.info["GL_VERSION"]}


class Renderer:
    """Draws views of meshes at `render_size` and area-downsamples them to `size`.

    Args:
        size: output side in pixels.
        render_size: drawing side; a multiple of `size` (the box filter doubles as anti-aliasing).
    """

    def __init__(self, size: int = 64, render_size: int = 128):
        if render_size % size:
            raise ValueError(f"render_size ({render_size}) must be a multiple of size ({size})")
        self.size, self.render_size = size, render_size
        self.ctx = gl_context()
        with self.ctx:
            self.program = self.ctx.program(vertex_shader=_VERTEX, fragment_shader=_FRAGMENT)
            self.fbo = self.ctx.simple_framebuffer((render_size, render_size), components=4)

    def __repr__(self) -> str:
        return f"Renderer(size={self.size}, render_size={self.render_size})"

    def render(self, mesh: SceneMesh, cameras: list[Camera], lighting: Lighting = Lighting(), alpha: bool = False) -> np.ndarray:
        """Draw one image per camera.

        Args:
            alpha: also return each view's coverage (the share of the pixel the mesh covers,
                0 = background, 255 = mesh), area-downsampled like the colour.

        Returns:
            (len(cameras), size, size, 3) uint8, or (..., 4) RGBA with `alpha`.
        """
        # Every GL call runs inside `with self.ctx`: another GL user in the process (pyrender, a
        # viewer) may have switched or released the current context, and drawing would then
        # silently go nowhere.
        with self.ctx:
            return self._render(mesh, cameras, lighting, 4 if alpha else 3)

    @contextlib.contextmanager
    def _bound(self, mesh: SceneMesh):
        """The mesh's vertex array, drawing into this renderer's framebuffer with depth test and the
        mesh's face culling; released afterwards. Call inside ``with self.ctx``."""
        import moderngl

        ctx = self.ctx
        data = np.concatenate([mesh.positions, mesh.normals, mesh.colours], axis=1).astype("f4")
        vbo = ctx.buffer(data.tobytes())
        vao = ctx.vertex_array(self.program, [(vbo, "3f 3f 3f", "in_position", "in_normal", "in_colour")])
        try:
            self.fbo.use()
            ctx.enable(moderngl.DEPTH_TEST)
            if mesh.cull_back_faces:
                ctx.enable(moderngl.CULL_FACE)
            else:
                ctx.disable(moderngl.CULL_FACE)
            yield vao
        finally:
            vao.release()
            vbo.release()

    def _render(self, mesh: SceneMesh, cameras: list[Camera], lighting: Lighting, components: int) -> np.ndarray:
        import moderngl

        centre, radius = mesh.bounding_sphere()
        self.program["light_dir"].value = tuple(lighting.direction)
        self.program["ambient"].value = lighting.ambient
        self.program["diffuse"].value = lighting.diffuse
        out = np.empty((len(cameras), self.size, self.size, components), dtype=np.uint8)
        with self._bound(mesh) as vao:
            for i, cam in enumerate(cameras):
                self.program["mvp"].write(view_projection(cam, centre, radius).T.tobytes())  # GL is column-major
                # alpha 0 on the background, 1 where a fragment is drawn (blending is off): the mask
                self.fbo.clear(*lighting.background, 0.0, depth=1.0)
                vao.render(moderngl.TRIANGLES)
                out[i] = self._read(components)
        return out

    def depth(self, mesh: SceneMesh, camera: Camera) -> np.ndarray:
        """The depth buffer of one view at `render_size` (not downsampled: a depth mean means nothing).

        Drawn with the same program, matrices and face culling as `render`, so a point projected
        with `view_projection(camera, *mesh.bounding_sphere())` lands on the depth it would have.

        Returns:
            (render_size, render_size) float32 window depth in [0, 1] (GL's default depth range,
            nonlinear in distance), row 0 at the top like the images; 1.0 where nothing is drawn.
        """
        import moderngl

        s = self.render_size
        with self.ctx, self._bound(mesh) as vao:
            self.program["mvp"].write(view_projection(camera, *mesh.bounding_sphere()).T.tobytes())
            self.fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
            vao.render(moderngl.TRIANGLES)
            raw = self.fbo.read(components=1, attachment=-1, dtype="f4")
        return np.frombuffer(raw, dtype=np.float32).reshape(s, s)[::-1].copy()  # GL rows start at the bottom

    def _read(self, components: int = 3) -> np.ndarray:
        s, f, c = self.render_size, self.render_size // self.size, components
        pixels = np.frombuffer(self.fbo.read(components=c), dtype=np.uint8).reshape(s, s, c)[::-1]  # GL rows start at the bottom
        if f == 1:
            return pixels
        # area downsampling: the mean of each f x f block (for alpha: the covered share of the block)
        return pixels.reshape(self.size, f, self.size, f, c).mean(axis=(1, 3)).round().astype(np.uint8)

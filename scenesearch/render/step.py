"""The render step: every scene in the manifest -> 13 PNG views and their masks in ``views.parquet``.

Output columns: item_id, view (0..12), png (RGB PNG bytes), mask (grayscale PNG bytes: the share
of each pixel the scene covers, 0 background .. 255 scene; what `scenesearch.augment` composites
new backgrounds through). Each mesh is turned Y up as
``render.up_axis`` says (`scenesearch.render.mesh.orient_mesh`). Scenes that fail to load or
draw, or that come out blank in any view (`scenesearch.render.coverage.blank_views`), are
added to ``rejected.parquet`` with their reason; the others go on.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import moderngl
import numpy as np
import pyarrow as pa
from tqdm import tqdm

from scenesearch import storage
from scenesearch.config import RenderConfig
from scenesearch.io import write_rejected
from scenesearch.errors import DataError, ItemError
from scenesearch.render import render_mesh_views
from scenesearch.render.coverage import check_not_blank
from scenesearch.render.gl import Lighting, renderer_info
from scenesearch.render.mesh import load_mesh, orient_mesh

VIEWS_SCHEMA = pa.schema([("item_id", pa.string()), ("view", pa.int32()), ("png", pa.binary()), ("mask", pa.binary())])


@dataclass(frozen=True)
class RenderResult:
    n_scenes: int
    n_views: int
    n_rejected: int
    seconds: float
    gl_renderer: str

    def metrics(self) -> dict[str, float]:
        return {
            "n_rendered_scenes": self.n_scenes,
            "n_views": self.n_views,
            "n_render_rejected": self.n_rejected,
            "render_views_per_s": self.n_views / max(self.seconds, 1e-9),
        }


def run(manifest_dir: str, out_dir: str, cfg: RenderConfig, shard: int = 0, n_shards: int = 1) -> RenderResult:
    """Render every scene of the manifest, or only the contiguous block `shard` of `n_shards`.

    Raises:
        DataError: no scene could be rendered (unsharded; a shard may come out empty, `merge` decides).
    """
    from scenesearch.sharding import block

    manifest = storage.read_table(Path(manifest_dir) / "manifest.parquet").to_pylist()
    scenes = [r for r in manifest if r["domain"] == "scene"][block(sum(r["domain"] == "scene" for r in manifest), shard, n_shards)]
    lighting = Lighting(background=tuple(cfg.background))
    rows, rejected = [], []
    start = time.perf_counter()
    for r in tqdm(scenes, desc=f"render {shard + 1}/{n_shards}" if n_shards > 1 else "render", unit="scene"):
        try:
            mesh, up = orient_mesh(load_mesh(r["uri"]), r["uri"], cfg.up_axis)
            rgba = render_mesh_views(mesh, cfg.size, cfg.render_size, cfg.n_views, cfg.elevation_deg, cfg.fov_deg, lighting, alpha=True)
            check_not_blank(rgba[..., :3], r["item_id"], cfg.background, up)
        except ItemError as e:
            rejected.append((r["uri"], str(e)))
            continue
        except moderngl.Error as e:  # e.g. the GL runs out of memory on one huge scene
            rejected.append((r["uri"], f"{r['item_id']}: OpenGL failed to draw it ({e})"))
            continue
        rows.extend(
            {"item_id": r["item_id"], "view": v, "png": storage.png_bytes(np.ascontiguousarray(img[..., :3])), "mask": storage.png_bytes(np.ascontiguousarray(img[..., 3]))}
            for v, img in enumerate(rgba)
        )
    seconds = time.perf_counter() - start
    if not rows and n_shards == 1:
        raise DataError(f"no scene could be rendered ({len(rejected)} of {len(scenes)} rejected)")
    result = RenderResult(len(scenes) - len(rejected), len(rows), len(rejected), seconds, renderer_info()["gl_renderer"])
    storage.write_table(Path(out_dir) / "views.parquet", pa.Table.from_pylist(rows, schema=VIEWS_SCHEMA))
    write_rejected(Path(out_dir) / "rejected.parquet", rejected)
    storage.write_bytes(Path(out_dir) / "render.json", json.dumps(dataclasses.asdict(result)).encode())
    return result


def merge(shard_dirs: list[str], out_dir: str) -> RenderResult:
    """Concatenate shard outputs in shard order (= manifest order) into one views.parquet.

    Raises:
        DataError: no shard rendered any scene.
    """
    results = [RenderResult(**json.loads(storage.read_bytes(Path(d) / "render.json"))) for d in shard_dirs]
    views = pa.concat_tables([storage.read_table(Path(d) / "views.parquet") for d in shard_dirs])
    rejected = pa.concat_tables([storage.read_table(Path(d) / "rejected.parquet") for d in shard_dirs])
    n_rejected = sum(r.n_rejected for r in results)
    if views.num_rows == 0:
        raise DataError(f"no scene could be rendered ({n_rejected} of {n_rejected + sum(r.n_scenes for r in results)} rejected)")
    storage.write_table(Path(out_dir) / "views.parquet", views)
    storage.write_table(Path(out_dir) / "rejected.parquet", rejected)
    # shards run side by side on a cluster: the step's time is the slowest shard's
    return RenderResult(sum(r.n_scenes for r in results), views.num_rows, n_rejected, max(r.seconds for r in results), results[0].gl_renderer)

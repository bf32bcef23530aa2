"""Build an external retrieval corpus from meshes that other projects publish on PyPI.

Run:
    .venv/bin/pip install -r bench/requirements-external.txt
    .venv/bin/python bench/external_corpus.py --out data/external [--seed 0] [--photos 5]
    .venv/bin/python bench/external.py --data data/external          # measure scenesearch on it

The meshes come from the wheels of pybullet, dm-control, robosuite, gymnasium-robotics, pymeshlab
and pyvista at the versions pinned in PACKAGES: each wheel is fetched with `pip download --no-deps`
into --cache (default .cache/external, git-ignored) and read as a zip; nothing is installed. The
table MODELS names every mesh by its path inside its wheel, its class and its role:

- gallery models are copied into ``<out>/scenes/<class>/<name>.<ext>`` byte for byte (extensions
  lower-cased); an OBJ gets its .mtl and textures beside it as ``<name>.mtl`` and
  ``<name>__<texture>``, which rewrites only its ``mtllib`` line and the texture paths of the
  .mtl (a texture the wheel lacks, e.g. a Windows path, loses its ``map_`` line);
- held-out models never enter the gallery: each becomes --photos query photos
  ``<out>/queries/<class>/<name>_q<k>.<jpg|png>``, drawn by pyrender (its own PBR shading,
  smooth normals, 4x MSAA; not scenesearch's moderngl renderer) at a random pose, size (some
  small) and position, random lights, the mesh's own colours or a random material (one palette
  for every class, so colour says nothing about the class), composited over a crop of a real
  photograph shipped by scikit-image (or a saturated colour or gradient) with a soft shadow,
  then colour jitter, blur, sensor noise and JPEG (or PNG).

The corpus also gets ``splits.csv``, which splits the query photos by held-out model: in each
class the first held-out model's photos are test, the second's train, the third's val (so no test
photo shows an object seen in training); scenes are split by ingest as usual.
``sources.csv`` records, for every model, package, version, wheel file and SHA-256, the path inside
the wheel, the member's SHA-256, what was written and what was changed (rebuild and compare);
``photos.csv`` the parameters of every photo. Everything follows from --seed. ingest lists
sources.csv and photos.csv in rejected.parquet ("outside the folders"); that is harmless.

Classes (coarse where the packages only had parts): animal, vertebra and long_bone (the dm_control
dog skeleton, plus pymeshlab's bone), gear (pybullet's differential), wheel, gripper_finger,
robot_arm_link, robot_body, robot_leg (robot parts from pybullet, robosuite, gymnasium-robotics),
grocery (robosuite's textured objects), toy_block (pybullet), kitchen (gymnasium-robotics'
kitchen). Left out: pybullet's random_urdfs (1,000 procedural objects without classes), robosuite's
many robots beyond a few arm links, meshes repeated in several wheels or mirrored left/right.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import math
import os
import posixpath
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# One wheel per package, pinned. pybullet and pymeshlab ship compiled code, so the wheel is chosen
# for CPython 3.11 on x86-64 Linux whatever machine rebuilds the corpus (the meshes are identical).
PACKAGES = {
    "pybullet": "3.2.7",
    "dm-control": "1.0.50",
    "robosuite": "1.5.2",
    "gymnasium-robotics": "1.4.2",
    "pymeshlab": "2025.7.post1",
    "pyvista": "0.49.2",
}
WHEEL_PLATFORM = ("--platform", "manylinux_2_35_x86_64", "--platform", "manylinux_2_17_x86_64", "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311")

_PB = "pybullet_data/"
_DOG = "dm_control/suite/dog_assets/"
_RS = "robosuite/models/assets/"
_GR = "gymnasium_robotics/envs/assets/"
_ML = "pymeshlab-2025.7.post1.data/purelib/pymeshlab/tests/sample_meshes/"


@dataclass(frozen=True)
class Model:
    """One published mesh: where it is, what it is, and whether it is a gallery scene or photographed."""

    cls: str
    name: str  # file stem in the corpus (ASCII, no spaces)
    package: str
    path: str  # member path inside the package's wheel
    up: str  # the mesh's up axis as published: "y" or "z" (robot and MuJoCo meshes are Z up)
    held_out: bool = False  # True: photographed for queries, never in the gallery


def _m(cls, name, package, path, up="z", held_out=False) -> Model:
    return Model(cls, name, package, path, up, held_out)


# Held-out models are listed last in each class; their order gives the photo split (test, train, val).
MODELS: tuple[Model, ...] = (
    _m("animal", "duck", "pybullet", _PB + "duck.obj", "y"),
    _m("animal", "bunny", "pybullet", _PB + "bunny.obj", "y"),
    _m("animal", "ant", "pyvista", "pyvista/examples/ant.ply", "y"),
    _m("animal", "cow", "pymeshlab", _ML + "cow.obj", "y", True),
    _m("animal", "teddy", "pybullet", _PB + "teddy2_VHACD_CHs.obj", "y", True),
    _m("animal", "dog", "dm-control", _DOG + "SKINbody.stl", "z", True),
    _m("vertebra", "dog_c1_atlas", "dm-control", _DOG + "BONEC_1.stl"),
    _m("vertebra", "dog_c2_axis", "dm-control", _DOG + "BONEC_2.stl"),
    _m("vertebra", "dog_c4", "dm-control", _DOG + "BONEC_4.stl"),
    _m("vertebra", "dog_c6", "dm-control", _DOG + "BONEC_6.stl"),
    _m("vertebra", "dog_l1", "dm-control", _DOG + "BONEL_1.stl"),
    _m("vertebra", "dog_c3", "dm-control", _DOG + "BONEC_3.stl", held_out=True),
    _m("vertebra", "dog_l7", "dm-control", _DOG + "BONEL_7.stl", held_out=True),
    _m("vertebra", "dog_c7", "dm-control", _DOG + "BONEC_7.stl", held_out=True),
    _m("long_bone", "dog_femur", "dm-control", _DOG + "BONEFemoris_L.stl"),
    _m("long_bone", "dog_tibia", "dm-control", _DOG + "BONETibia_L.stl"),
    _m("long_bone", "dog_humerus", "dm-control", _DOG + "BONEhumerus_L.stl"),
    _m("long_bone", "dog_ulna", "dm-control", _DOG + "BONEUlna_L.stl"),
    _m("long_bone", "dog_metatarsal", "dm-control", _DOG + "BONEMetatarsi_L_2.stl"),
    _m("long_bone", "meshlab_bone", "pymeshlab", _ML + "bone.ply", "y"),
    _m("long_bone", "dog_radius", "dm-control", _DOG + "BONERadius_L.stl", held_out=True),
    _m("long_bone", "dog_metacarpal", "dm-control", _DOG + "BONEOs_metacarpale_III_L.stl", held_out=True),
    _m("long_bone", "dog_fibula", "dm-control", _DOG + "BONEFibula_L.stl", held_out=True),
    _m("gear", "diff_ring_gear", "pybullet", _PB + "differential/diff_ring.stl"),
    _m("gear", "diff_pinion", "pybullet", _PB + "differential/diff_pinion.stl"),
    _m("gear", "diff_spider_gear", "pybullet", _PB + "differential/diff_spider.stl"),
    _m("gear", "diff_side_gear", "pybullet", _PB + "differential/diff_side.stl", held_out=True),
    _m("wheel", "racecar_wheel", "pybullet", _PB + "racecar/meshes/left_front_wheel.obj"),
    _m("wheel", "husky_wheel", "pybullet", _PB + "husky/meshes/wheel.stl"),
    _m("wheel", "bicycle_wheel", "pybullet", _PB + "bicycle/files/wheel_scaled.stl"),
    _m("wheel", "fetch_wheel", "gymnasium-robotics", _GR + "stls/fetch/l_wheel_link_collision.stl", held_out=True),
    _m("gripper_finger", "pr2_finger", "pybullet", _PB + "l_finger.stl"),
    _m("gripper_finger", "xarm_finger", "pybullet", _PB + "xarm/xarm_gripper/meshes/left_finger.STL"),
    _m("gripper_finger", "kuka_finger_base", "pybullet", _PB + "kuka_iiwa/meshes/finger_base_left.stl"),
    _m("gripper_finger", "wsg50_finger", "pybullet", _PB + "gripper/meshes/WSG-FMF.stl"),
    _m("gripper_finger", "panda_finger", "pybullet", _PB + "franka_panda/meshes/visual/finger.obj", held_out=True),
    _m("gripper_finger", "pr2_finger_tip", "pybullet", _PB + "l_finger_tip.stl", held_out=True),
    _m("gripper_finger", "bd_finger", "robosuite", _RS + "grippers/meshes/bd_gripper/left_finger.obj", held_out=True),
    _m("robot_arm_link", "kuka_link2", "pybullet", _PB + "kuka_iiwa/meshes/link_2.obj"),
    _m("robot_arm_link", "panda_link1", "pybullet", _PB + "franka_panda/meshes/visual/link1.obj"),
    _m("robot_arm_link", "panda_link5", "pybullet", _PB + "franka_panda/meshes/visual/link5.obj"),
    _m("robot_arm_link", "xarm_link2", "pybullet", _PB + "xarm/xarm_description/meshes/xarm6/visual/link2.stl"),
    _m("robot_arm_link", "jaco_arm_half", "robosuite", _RS + "robots/jaco/meshes/arm_half_1.obj"),
    _m("robot_arm_link", "kuka_link4", "pybullet", _PB + "kuka_iiwa/meshes/link_4.obj", held_out=True),
    _m("robot_arm_link", "xarm_link4", "pybullet", _PB + "xarm/xarm_description/meshes/xarm6/visual/link4.stl", held_out=True),
    _m("robot_arm_link", "kinova_forearm", "robosuite", _RS + "robots/kinova3/meshes/forearm_link.obj", held_out=True),
    _m("robot_body", "a1_trunk", "pybullet", _PB + "a1/meshes/trunk.obj"),
    _m("robot_body", "laikago_chassis", "pybullet", _PB + "laikago/chassis_zup.obj"),
    _m("robot_body", "mini_cheetah_body", "pybullet", _PB + "mini_cheetah/meshes/mini_body.obj"),
    _m("robot_body", "aliengo_trunk", "pybullet", _PB + "aliengo/meshes/trunk.obj", held_out=True),
    _m("robot_body", "husky_base", "pybullet", _PB + "husky/meshes/base_link.stl", held_out=True),
    _m("robot_body", "racecar_chassis", "pybullet", _PB + "racecar/meshes/chassis.STL", held_out=True),
    _m("robot_leg", "a1_thigh", "pybullet", _PB + "a1/meshes/thigh.obj"),
    _m("robot_leg", "a1_calf", "pybullet", _PB + "a1/meshes/calf.obj"),
    _m("robot_leg", "aliengo_thigh", "pybullet", _PB + "aliengo/meshes/thigh.obj"),
    _m("robot_leg", "laikago_upper_leg", "pybullet", _PB + "laikago/upper_leg_left.obj"),
    _m("robot_leg", "mini_cheetah_lower", "pybullet", _PB + "mini_cheetah/meshes/mini_lower_link.obj"),
    _m("robot_leg", "aliengo_calf", "pybullet", _PB + "aliengo/meshes/calf.obj", held_out=True),
    _m("robot_leg", "mini_cheetah_upper", "pybullet", _PB + "mini_cheetah/meshes/mini_upper_link.obj", held_out=True),
    _m("robot_leg", "laikago_lower_leg", "pybullet", _PB + "laikago/lower_leg3.obj", held_out=True),
    _m("grocery", "bottle", "robosuite", _RS + "objects/meshes/bottle.obj"),
    _m("grocery", "can", "robosuite", _RS + "objects/meshes/can.obj"),
    _m("grocery", "cereal_box", "robosuite", _RS + "objects/meshes/cereal.obj"),
    _m("grocery", "milk_carton", "robosuite", _RS + "objects/meshes/milk.obj", held_out=True),
    _m("grocery", "bread", "robosuite", _RS + "objects/meshes/bread.obj", held_out=True),
    _m("grocery", "lemon", "robosuite", _RS + "objects/meshes/lemon.obj", held_out=True),
    _m("toy_block", "lego_brick", "pybullet", _PB + "lego/lego.obj"),
    _m("toy_block", "domino", "pybullet", _PB + "domino/domino.obj"),
    _m("toy_block", "toy_cube", "pybullet", _PB + "toys/cube.obj"),
    _m("toy_block", "toy_prism", "pybullet", _PB + "toys/prism.obj", held_out=True),
    _m("toy_block", "toy_cylinder", "pybullet", _PB + "toys/cylinder.obj", held_out=True),
    _m("toy_block", "shape_sorter", "pybullet", _PB + "toys/shape_sorter.obj", held_out=True),
    _m("kitchen", "kettle", "gymnasium-robotics", _GR + "kitchen_franka/kitchen_assets/meshes/kettle.stl"),
    _m("kitchen", "microwave", "gymnasium-robotics", _GR + "kitchen_franka/kitchen_assets/meshes/micro.stl"),
    _m("kitchen", "hinge_cabinet", "gymnasium-robotics", _GR + "kitchen_franka/kitchen_assets/meshes/hingecabinet.stl"),
    _m("kitchen", "oven", "gymnasium-robotics", _GR + "kitchen_franka/kitchen_assets/meshes/oven.stl", held_out=True),
    _m("kitchen", "slide_cabinet", "gymnasium-robotics", _GR + "kitchen_franka/kitchen_assets/meshes/slidecabinet.stl", held_out=True),
    _m("kitchen", "range_hood", "gymnasium-robotics", _GR + "kitchen_franka/kitchen_assets/meshes/hood.stl", held_out=True),
)
PHOTO_SPLITS = ("test", "train", "val")  # the 1st, 2nd, 3rd held-out model of a class
TEXTURE_EXTENSIONS = (".png", ".jpg", ".jpeg")  # what ingest accepts beside an OBJ
# Real photographs bundled in scikit-image's wheel (no download): backgrounds, cropped at random.
COLOUR_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina", "immunohistochemistry")
GREY_PHOTOS = ("brick", "grass", "gravel", "camera", "coins", "moon")


# ---------------------------------------------------------------- wheels


def fetch_wheel(package: str, version: str, cache: Path) -> Path:
    """The package's wheel in `cache`, downloaded with pip when missing.

    Raises:
        RuntimeError: pip could not fetch it (no registry, unknown version).
    """
    stem = re.sub(r"[-_.]+", "_", package).lower()
    found = sorted(p for p in cache.glob("*.whl") if p.name.lower().startswith(f"{stem}-{version}-"))
    if found:
        return found[0]
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", *WHEEL_PLATFORM, "-d", str(cache), f"{package}=={version}"]
    print(f"fetching {package}=={version} ...", flush=True)
    r = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(p for p in cache.glob("*.whl") if p.name.lower().startswith(f"{stem}-{version}-"))
    if r.returncode != 0 or not found:
        raise RuntimeError(f"pip could not download {package}=={version}: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
    return found[0]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class MeshFiles:
    """A mesh and its companions as bytes, with the file names they get in the corpus."""

    main: bytes  # the mesh file, with the OBJ's mtllib line rewritten if it has one
    ext: str
    companions: dict[str, bytes]  # corpus file name -> bytes (the .mtl, textures)
    sources: list[str]  # wheel member paths of the companions
    modified: list[str]  # what differs from the wheel's bytes


def read_mesh(wheel: zipfile.ZipFile, model: Model) -> MeshFiles:
    """Read a model from its wheel; an OBJ's material library and textures are renamed flat beside it.

    Raises:
        KeyError: the member is not in the wheel.
    """
    data = wheel.read(model.path)
    ext = posixpath.splitext(model.path)[1].lower()
    files = MeshFiles(data, ext, {}, [], [])
    if ext != ".obj":
        return files
    names = set(wheel.namelist())
    folder = posixpath.dirname(model.path)
    lines = data.decode("utf-8", errors="surrogateescape").splitlines(keepends=True)
    out, mtl_done = [], False
    for line in lines:
        if not line.startswith("mtllib"):
            out.append(line)
            continue
        ref = posixpath.normpath(posixpath.join(folder, line.split(None, 1)[1].strip().replace("\\", "/")))
        if mtl_done or ref not in names:
            files.modified.append(f"dropped '{line.strip()}' ({'second library' if mtl_done else 'not in the wheel'})")
            continue
        mtl_done = True
        files.sources.append(ref)
        out.append(f"mtllib {model.name}.mtl\n")
        files.companions[f"{model.name}.mtl"] = _flatten_mtl(wheel, names, ref, model.name, files)
        if line.strip() != f"mtllib {model.name}.mtl":
            files.modified.append(f"mtllib -> {model.name}.mtl")
    files.main = "".join(out).encode("utf-8", errors="surrogateescape")
    return files


def _flatten_mtl(wheel: zipfile.ZipFile, names: set[str], ref: str, stem: str, files: MeshFiles) -> bytes:
    """The .mtl with each texture renamed ``<stem>__<file>`` (stored beside it); missing textures dropped."""
    folder = posixpath.dirname(ref)
    out = []
    for line in wheel.read(ref).decode("utf-8", errors="surrogateescape").splitlines(keepends=True):
        word = line.split(None, 1)[0].lower() if line.strip() else ""
        if not word.startswith("map_"):
            out.append(line)
            continue
        tex = line.split(None, 1)[1].strip().replace("\\", "/")  # options before the file name are not used here
        src = posixpath.normpath(posixpath.join(folder, tex))
        if src not in names or posixpath.splitext(src)[1].lower() not in TEXTURE_EXTENSIONS:
            files.modified.append(f"dropped '{line.strip()}' (texture not in the wheel or not png/jpg)")
            continue
        new = f"{stem}__{posixpath.basename(src)}"
        out.append(f"{line.split(None, 1)[0]} {new}\n")
        if new not in files.companions:  # map_Ka and map_Kd often name the same file
            files.companions[new] = wheel.read(src)
            files.sources.append(src)
            files.modified.append(f"{tex} -> {new}")
    return "".join(out).encode("utf-8", errors="surrogateescape")


def write_mesh(folder: Path, model: Model, files: MeshFiles) -> Path:
    """Write the mesh (and companions) into `folder`; returns the mesh's path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{model.name}{files.ext}"
    path.write_bytes(files.main)
    for name, data in files.companions.items():
        (folder / name).write_bytes(data)
    return path


# ---------------------------------------------------------------- photos (pyrender, not scenesearch's renderer)


def load_parts(path: Path, up: str):
    """The mesh's triangle parts (trimesh.Trimesh, visuals kept), centred, unit bounding sphere, Y up."""
    import trimesh

    scene = trimesh.load(str(path), force="scene", process=False)
    parts = []
    for node in sorted(scene.graph.nodes_geometry):  # sorted: the set's order changes with the hash seed
        transform, name = scene.graph[node]
        g = scene.geometry[name]
        if isinstance(g, trimesh.Trimesh) and len(g.faces):
            g = g.copy()
            g.apply_transform(transform)
            parts.append(g)
    v = np.concatenate([p.vertices for p in parts])
    centre = (v.min(0) + v.max(0)) / 2
    radius = float(np.linalg.norm(v - centre, axis=1).max())
    m = np.eye(4)
    m[:3, 3] = -centre
    m = np.diag([1 / radius] * 3 + [1]) @ m
    if up == "z":  # Z up -> Y up: (x, y, z) -> (x, z, -y)
        m = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]], float) @ m
    for p in parts:
        p.apply_transform(m)
    return parts


def has_own_colours(parts) -> bool:
    """True when the file gives colours: a texture, vertex/face colours or a non-grey material."""
    for p in parts:
        vis = p.visual
        if vis.kind == "texture" and getattr(vis.material, "image", None) is not None:
            return True
        if vis.kind in ("vertex", "face"):
            c = np.asarray(vis.vertex_colors if vis.kind == "vertex" else vis.face_colors)[:, :3].astype(float)
            if np.ptp(c, axis=1).max() > 8:  # not a grey default
                return True
        mat = getattr(vis, "material", None)
        diffuse = getattr(mat, "diffuse", None)
        if diffuse is not None and np.ptp(np.asarray(diffuse[:3], float)) > 8:
            return True
    return False


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Camera-to-world pose (OpenGL: the camera looks down its -Z)."""
    z = eye - target
    z /= np.linalg.norm(z)
    x = np.cross(up, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = x, y, z, eye
    return pose


def random_colour(rng: np.random.Generator) -> np.ndarray:
    """An RGB colour in [0, 1] from one palette for every class (HSV: any hue, most saturations)."""
    import colorsys

    return np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.0, 0.9), rng.uniform(0.25, 0.95)))


def render_object(renderer, parts, rng: np.random.Generator, own_colours: bool) -> tuple[np.ndarray, dict]:
    """One RGBA rendering (R, R, 4) uint8 of the object on a transparent background, and its parameters."""
    import pyrender
    import trimesh

    keep = own_colours and rng.uniform() < 0.75
    colour = random_colour(rng)
    metallic, rough = float(rng.uniform(0.0, 0.6)), float(rng.uniform(0.25, 0.95))
    yaw, elev, tilt = rng.uniform(0, 360), rng.uniform(-5, 55), rng.uniform(-12, 12)
    fov = rng.uniform(30, 55)
    scene = pyrender.Scene(bg_color=[0, 0, 0, 0], ambient_light=[rng.uniform(0.05, 0.35)] * 3)
    rot = trimesh.transformations.rotation_matrix(math.radians(yaw), [0, 1, 0])
    n_faces = sum(len(p.faces) for p in parts)
    # One pyrender Mesh with the parts as ordered primitives: pyrender keeps a scene's meshes in a
    # set, whose order (object ids) would change coplanar ties from run to run.
    if keep:
        mesh = pyrender.Mesh.from_trimesh(parts, smooth=n_faces > 2000)
    else:
        mat = pyrender.MetallicRoughnessMaterial(baseColorFactor=[*colour, 1.0], metallicFactor=metallic, roughnessFactor=rough, doubleSided=True)
        plain = [trimesh.Trimesh(p.vertices, p.faces, process=False) for p in parts]
        mesh = pyrender.Mesh.from_trimesh(plain, material=mat, smooth=n_faces > 2000)
    scene.add(mesh, pose=rot)
    e = math.radians(elev)
    dist = 1.08 / math.sin(math.radians(fov) / 2)
    eye = dist * np.array([0.0, math.sin(e), math.cos(e)])
    up = np.array([math.sin(math.radians(tilt)), math.cos(math.radians(tilt)), 0.0])
    cam_pose = look_at(eye, np.zeros(3), up)
    scene.add(pyrender.PerspectiveCamera(yfov=math.radians(fov), znear=0.05, zfar=dist + 3), pose=cam_pose)
    tint = np.clip(np.array([1.0, 1.0, 1.0]) + rng.normal(0, 0.12, 3), 0.6, 1.0)
    key_dir = [rng.uniform(-60, 60), rng.uniform(20, 80)]
    light = trimesh.transformations.euler_matrix(-math.radians(key_dir[1]), math.radians(key_dir[0]), 0, "rxyz")
    scene.add(pyrender.DirectionalLight(color=tint, intensity=rng.uniform(1.5, 5.0)), pose=cam_pose @ light)
    if rng.uniform() < 0.6:
        fill = trimesh.transformations.euler_matrix(math.radians(rng.uniform(-40, 40)), math.radians(rng.uniform(-150, 150)), 0, "rxyz")
        scene.add(pyrender.DirectionalLight(color=[1, 1, 1], intensity=rng.uniform(0.3, 2.0)), pose=cam_pose @ fill)
    rgba, _ = renderer.render(scene, flags=pyrender.RenderFlags.RGBA | pyrender.RenderFlags.SKIP_CULL_FACES)
    params = {"own_colours": int(keep), "colour": "" if keep else "#%02x%02x%02x" % tuple(int(255 * c) for c in colour),
              "yaw": round(yaw, 1), "elevation": round(elev, 1), "tilt": round(tilt, 1), "fov": round(fov, 1)}
    return np.asarray(rgba), params


def backgrounds() -> dict[str, np.ndarray]:
    """scikit-image's bundled photographs as (H, W, 3) uint8 (grey ones repeated to 3 channels)."""
    from skimage import data

    out = {}
    for name in COLOUR_PHOTOS + GREY_PHOTOS:
        img = np.asarray(getattr(data, name)())
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        out[name] = img[..., :3].astype(np.uint8)
    out["motorcycle"] = np.asarray(data.stereo_motorcycle()[0])[..., :3].astype(np.uint8)
    return out


def background(rng: np.random.Generator, photos: dict[str, np.ndarray], w: int, h: int) -> tuple[np.ndarray, str]:
    """A (h, w, 3) float background in [0, 1]: a random crop of a photo, or a saturated colour / gradient."""
    from PIL import Image

    u = rng.uniform()
    if u < 0.75:
        name = sorted(photos)[rng.integers(len(photos))]
        img = photos[name]
        side = rng.uniform(0.3, 1.0) * min(img.shape[:2])
        cw, ch = int(side * max(1, w / h)), int(side * max(1, h / w))
        cw, ch = min(cw, img.shape[1]), min(ch, img.shape[0])
        x0, y0 = rng.integers(0, img.shape[1] - cw + 1), rng.integers(0, img.shape[0] - ch + 1)
        crop = Image.fromarray(img[y0 : y0 + ch, x0 : x0 + cw]).resize((w, h), Image.BICUBIC)
        out = np.asarray(crop, np.float32) / 255
        if name in GREY_PHOTOS:  # tint grey photos so they are not all grey
            out = out * np.clip(1 + rng.normal(0, 0.15, 3), 0.6, 1.3)
        if rng.uniform() < 0.5:
            out = out[:, ::-1]
        return np.clip(out, 0, 1), f"{name}:{x0},{y0},{cw}x{ch}"
    a, b = random_colour(rng), random_colour(rng)
    if u < 0.87:
        return np.broadcast_to(a, (h, w, 3)).copy(), "colour"
    t = np.linspace(0, 1, h)[:, None, None] if rng.uniform() < 0.5 else np.linspace(0, 1, w)[None, :, None]
    return np.broadcast_to(a * (1 - t) + b * t, (h, w, 3)).copy(), "gradient"


def compose_photo(rgba: np.ndarray, rng: np.random.Generator, photos: dict[str, np.ndarray], size: tuple[int, int]) -> tuple[bytes, str, dict]:
    """Paste the object at a random scale and place over a background, degrade, encode.

    Returns:
        (encoded bytes, extension ".jpg" or ".png", parameters).
    """
    from PIL import Image, ImageFilter

    w, h = size
    alpha = rgba[..., 3]
    ys, xs = np.nonzero(alpha > 8)
    obj = rgba[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    scale = rng.uniform(0.25, 0.95)  # of the photo's shorter side: some objects are small
    k = scale * min(w, h) / max(obj.shape[:2])
    ow, oh = max(2, int(obj.shape[1] * k)), max(2, int(obj.shape[0] * k))
    obj = np.asarray(Image.fromarray(obj, "RGBA").resize((ow, oh), Image.LANCZOS), np.float32) / 255
    x0, y0 = int(rng.integers(0, w - ow + 1)), int(rng.integers(0, h - oh + 1))
    bg, bg_name = background(rng, photos, w, h)
    a = np.zeros((h, w), np.float32)
    a[y0 : y0 + oh, x0 : x0 + ow] = obj[..., 3]
    layer = np.zeros((h, w, 3), np.float32)
    layer[y0 : y0 + oh, x0 : x0 + ow] = obj[..., :3]
    if rng.uniform() < 0.6:  # soft contact shadow: the blurred silhouette, shifted down and aside
        dx, dy = int(rng.integers(-ow // 6 - 1, ow // 6 + 2)), int(rng.integers(1, oh // 8 + 3))
        sh = np.roll(np.roll(a, dy, axis=0), dx, axis=1)
        sh = np.asarray(Image.fromarray((sh * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(max(1.0, 0.04 * ow))), np.float32) / 255
        bg = bg * (1 - rng.uniform(0.25, 0.55) * sh[..., None])
    img = layer * a[..., None] + bg * (1 - a[..., None])  # pyrender's colour is not premultiplied
    img = img * np.clip(1 + rng.normal(0, 0.06, 3), 0.85, 1.15)  # white balance
    img = np.clip(img, 0, 1) ** rng.uniform(0.8, 1.25)  # exposure / gamma
    pil = Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8))
    blur = float(rng.uniform(0.0, 1.6)) if rng.uniform() < 0.6 else 0.0
    if blur > 0:
        pil = pil.filter(ImageFilter.GaussianBlur(blur))
    noise = float(rng.uniform(0, 10))
    arr = np.asarray(pil, np.float32) + rng.normal(0, noise, (h, w, 3))
    pil = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    if rng.uniform() < 0.8:
        quality = int(rng.integers(35, 93))
        pil.save(buf, format="JPEG", quality=quality)
        ext = ".jpg"
    else:
        quality = 0
        pil.save(buf, format="PNG")
        ext = ".png"
    params = {"scale": round(scale, 3), "x": x0, "y": y0, "w": w, "h": h, "background": bg_name,
              "blur": round(blur, 2), "noise": round(noise, 2), "jpeg_quality": quality}
    return buf.getvalue(), ext, params


# ---------------------------------------------------------------- the corpus


def build(out: Path, cache: Path, seed: int, n_photos: int, size: int, aspects: list[float], render_size: int) -> dict:
    """Write the whole corpus under `out` (replacing scenes/, queries/ and the CSVs). Returns counts."""
    os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
    import PIL
    import pyrender
    import skimage
    import trimesh

    t0 = time.perf_counter()
    for sub in ("scenes", "queries"):  # a rebuild replaces them whole
        if (out / sub).exists():
            shutil.rmtree(out / sub)
    out.mkdir(parents=True, exist_ok=True)
    wheels = {p: fetch_wheel(p, v, cache) for p, v in PACKAGES.items() if any(m.package == p for m in MODELS)}
    wheel_sha = {p: sha256(w.read_bytes()) for p, w in wheels.items()}
    zips = {p: zipfile.ZipFile(w) for p, w in wheels.items()}
    photos = backgrounds()
    renderer = pyrender.OffscreenRenderer(render_size, render_size)
    source_rows, photo_rows, split_rows = [], [], []
    held_rank: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="external_corpus_") as tmp:
        for i, m in enumerate(MODELS):
            files = read_mesh(zips[m.package], m)
            if m.held_out:
                path = write_mesh(Path(tmp) / m.name, m, files)
                written = ""
            else:
                path = write_mesh(out / "scenes" / m.cls, m, files)
                written = path.relative_to(out).as_posix()
            parts = load_parts(path, m.up)
            source_rows.append({
                "class": m.cls, "name": m.name, "role": "query" if m.held_out else "gallery",
                "package": m.package, "version": PACKAGES[m.package], "wheel": wheels[m.package].name,
                "wheel_sha256": wheel_sha[m.package], "path_in_wheel": m.path, "sha256": sha256(zips[m.package].read(m.path)),
                "companions": ";".join(files.sources), "written": written, "modified": "; ".join(files.modified),
                "up": m.up, "n_faces": sum(len(p.faces) for p in parts),
            })
            if not m.held_out:
                continue
            rank = held_rank.get(m.cls, 0)
            held_rank[m.cls] = rank + 1
            split = PHOTO_SPLITS[rank % len(PHOTO_SPLITS)]
            own = has_own_colours(parts)
            for k in range(n_photos):
                rng = np.random.default_rng([seed, i, k])
                aspect = aspects[int(rng.integers(len(aspects)))]
                w, h = (size, int(round(size / aspect))) if aspect >= 1 else (int(round(size * aspect)), size)
                rgba, p_obj = render_object(renderer, parts, rng, own)
                data, ext, p_img = compose_photo(rgba, rng, photos, (w, h))
                rel = f"queries/{m.cls}/{m.name}_q{k}{ext}"
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                (out / rel).write_bytes(data)
                photo_rows.append({"path": rel, "class": m.cls, "model": m.name, "split": split, **p_obj, **p_img})
                split_rows.append({"path": rel, "split": split})
            print(f"  {m.cls}/{m.name}: {n_photos} photos ({split})", flush=True)
    renderer.delete()
    _write_csv(out / "sources.csv", source_rows)
    _write_csv(out / "photos.csv", photo_rows)
    _write_csv(out / "splits.csv", split_rows)
    versions = {"pyrender": pyrender.__version__, "trimesh": trimesh.__version__, "scikit-image": skimage.__version__, "pillow": PIL.__version__}
    n_gallery = sum(not m.held_out for m in MODELS)
    return {"root": str(out), "classes": len({m.cls for m in MODELS}), "gallery_scenes": n_gallery,
            "held_out_models": len(MODELS) - n_gallery, "query_photos": len(photo_rows), "seconds": round(time.perf_counter() - t0, 1),
            "renderer_versions": versions}


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _aspects(text: str) -> list[float]:
    out = []
    for part in text.split(","):
        a, _, b = part.strip().partition(":")
        out.append(float(a) / float(b or 1))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Build the external retrieval corpus (scenesearch's dataset layout) from meshes published in PyPI wheels.")
    p.add_argument("--out", default="data/external", help="dataset root to write (default data/external)")
    p.add_argument("--cache", default=".cache/external", help="where the downloaded wheels are kept")
    p.add_argument("--seed", type=int, default=0, help="seeds every photo (default 0)")
    p.add_argument("--photos", type=int, default=5, help="query photos per held-out model (default 5)")
    p.add_argument("--size", type=int, default=256, help="longer side of a query photo in pixels (default 256)")
    p.add_argument("--aspects", default="1:1", help="photo aspect ratios w:h to draw from, e.g. '1:1,4:3,3:4' (default 1:1; scenesearch squashes to a square)")
    p.add_argument("--render-size", type=int, default=384, help="pyrender's drawing size before the object is scaled into the photo")
    args = p.parse_args(argv)
    r = build(Path(args.out), Path(args.cache), args.seed, args.photos, args.size, _aspects(args.aspects), args.render_size)
    print(f"wrote {r['root']}: {r['classes']} classes, {r['gallery_scenes']} gallery scenes, {r['held_out_models']} held-out models, "
          f"{r['query_photos']} query photos in {r['seconds']} s (pyrender {r['renderer_versions']['pyrender']}, "
          f"trimesh {r['renderer_versions']['trimesh']}, scikit-image {r['renderer_versions']['scikit-image']}, pillow {r['renderer_versions']['pillow']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

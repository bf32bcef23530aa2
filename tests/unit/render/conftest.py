"""Meshes the render tests share."""

import pytest
import trimesh


def yard() -> trimesh.Trimesh:
    """An ordinary Y-up scene: a ground in XZ with a tower standing on it."""
    ground = trimesh.creation.box((10, 0.2, 10))
    ground.visual.face_colors = (60, 160, 60, 255)
    tower = trimesh.creation.box((2, 5, 1))
    tower.apply_translation((2, 2.5, 0))
    tower.visual.face_colors = (200, 40, 40, 255)
    return trimesh.util.concatenate([ground, tower])


@pytest.fixture
def yard_scene() -> trimesh.Trimesh:
    return yard()

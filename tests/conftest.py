"""Shared fixtures: a small generated dataset (session-scoped) and an isolated MLflow store."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("TORCH_HOME", str(ROOT / ".cache" / "torch"))
os.environ.setdefault("XDG_CACHE_HOME", str(ROOT / ".cache"))
os.environ.setdefault("MESA_SHADER_CACHE_DIR", str(ROOT / ".cache" / "mesa"))


@pytest.fixture(scope="session")
def smoke_cfg():
    from scenesearch import config

    return config.load("smoke")


@pytest.fixture(scope="session")
def smoke_dataset(tmp_path_factory, smoke_cfg):
    """The embedded benchmark at the smoke preset's size, generated once per test session."""
    from scenesearch.data.generate import generate

    root = tmp_path_factory.mktemp("data") / "smoke"
    generate(root, smoke_cfg.data, smoke_cfg.seed)
    return root


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture(scope="session")
def smoke_preprocessed(tmp_path_factory, smoke_dataset, smoke_cfg):
    """The smoke dataset ingested, rendered and preprocessed once per session: {manifest, views, images} folders."""
    from scenesearch import preprocess
    from scenesearch.data import ingest
    from scenesearch.render import step as render

    out = tmp_path_factory.mktemp("preprocessed")
    dirs = {name: out / name for name in ("manifest", "views", "images")}
    ingest.run(str(smoke_dataset), str(dirs["manifest"]), smoke_cfg.data, smoke_cfg.seed)
    render.run(str(dirs["manifest"]), str(dirs["views"]), smoke_cfg.render)
    preprocess.run(str(dirs["manifest"]), str(dirs["views"]), str(dirs["images"]), smoke_cfg.preprocess)
    return dirs

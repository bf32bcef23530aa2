"""Behaviour of the VGG baseline on the smoke benchmark, through the library steps (no KFP).

A render used as a query finds its own scene, so does its mirror image, and the same seed
gives the same metrics twice.
"""

import json

import numpy as np
import pytest
import torch

from scenesearch import features, methods, preprocess, retrieval, train
from scenesearch.data import ingest
from scenesearch.evaluation import step as evaluate
from scenesearch.distances import min_view_cosine_distances
from scenesearch.features.vgg import build_descriptor, extract
from scenesearch.render import step as render


@pytest.fixture(scope="module")
def chain(tmp_path_factory, smoke_dataset, smoke_cfg):
    out = tmp_path_factory.mktemp("chain")
    ingest.run(str(smoke_dataset), str(out / "m"), smoke_cfg.data, smoke_cfg.seed)
    render.run(str(out / "m"), str(out / "v"), smoke_cfg.render)
    preprocess.run(str(out / "m"), str(out / "v"), str(out / "p"), smoke_cfg.preprocess)
    return out


def _metrics(chain, cfg, tag):
    features.run(str(chain / "p"), str(chain / f"f{tag}"), cfg.features, cfg.seed)
    inputs = methods.Inputs(images=str(chain / "p"), features=str(chain / f"f{tag}"))
    folders = [train.run(cfg, key, inputs, str(chain / f"t{tag}" / key), progress=False).out_dir for key in ("vgg_baseline", "random")]
    retrieval.run(folders, str(chain / f"r{tag}"))
    evaluate.run(str(chain / f"r{tag}"), str(chain / "m"), str(chain / "v"), str(chain / "p"), str(chain / f"e{tag}"), cfg.evaluate)
    return json.loads((chain / f"e{tag}" / "metrics.json").read_text())


def test_same_seed_same_metrics(chain, smoke_cfg):
    assert _metrics(chain, smoke_cfg, "a") == _metrics(chain, smoke_cfg, "b")


def test_a_render_and_its_flip_retrieve_their_own_scene(chain, smoke_cfg):
    from scenesearch import storage

    images = torch.from_numpy(storage.read_array(chain / "p" / "images.npy"))
    index = storage.read_table(chain / "p" / "index.parquet").to_pydict()
    scene_rows = np.flatnonzero(np.asarray(index["domain"]) == "scene")
    model = build_descriptor("none", smoke_cfg.seed)
    desc = extract(model, images[scene_rows], 64, torch.device("cpu"), smoke_cfg.features.input_size, progress=False).numpy()
    ids = np.asarray(index["item_id"])[scene_rows]
    flips = np.asarray(index["flip"])[scene_rows]
    scene_ids = list(dict.fromkeys(ids))
    stacked = torch.from_numpy(np.stack([desc[ids == s] for s in scene_ids]))
    for sid in scene_ids[::3]:
        own = np.flatnonzero((ids == sid) & ~flips)[4]  # view 4 of this scene
        mirror = own + 1  # preprocess writes each image's flip right after it
        assert flips[mirror] and ids[mirror] == sid
        query = torch.from_numpy(desc[[own, mirror]])
        top = min_view_cosine_distances(query, stacked).argmin(dim=1)
        assert [scene_ids[i] for i in top] == [sid, sid]

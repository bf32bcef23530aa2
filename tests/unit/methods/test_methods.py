"""The method registry and one conformance suite run over every registered method (sklearn's
check_estimator idea): fit on the smoke data, embeddings for every row, scores of the right
shape, and a reloaded method embeds a query image exactly as the pipeline did."""

import dataclasses
import json
import textwrap

import numpy as np
import pyarrow as pa
import pytest
import torch

from scenesearch import features, methods, retrieval, storage, train
from scenesearch.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def smoke_features(tmp_path_factory, smoke_preprocessed, smoke_cfg):
    out = tmp_path_factory.mktemp("features")
    features.run(str(smoke_preprocessed["images"]), str(out), smoke_cfg.features, smoke_cfg.seed)
    return out


# the smoke preset's methods and the descriptor-pair methods, small
DESCRIPTOR_METHODS = {"zs_cvae": {"n_samples": 12, "n_centres": 3}, "zs_caae": {"n_samples": 12, "n_centres": 3},
                      "parallel_vae": {"n_samples": 4}, "siamese": {}, "triplet": {}}
# the CBIR baselines over VGG16 conv maps: every pooling, both whitenings, both expansions, diffusion
POOLED_VARIANTS = ["mac", "spoc", "gem_lw", "rmac_pw", "gem_pw_aqe", "mac_alphaqe_dfs"]
MAP_METHODS = {"pooled": {"variants": POOLED_VARIANTS}, "siamese_gem": {"epochs": 2, "tuples": 32, "pool_size": 40},
               "triplet_gem": {"epochs": 1, "tuples": 32, "pool_size": 40}}
# scene mixing, tiny: it also reads the similarity step's candidates
MIXING = {"lorbms": {"channels": [4, 8, 8], "feature_channels": 4, "epochs": 1, "batch_size": 16, "probe_seeds": 2, "finetune_epochs": 1,
                     "fidelity_images": 16, "grid_rows": 2}}


@pytest.fixture(scope="module")
def smoke_clusters(tmp_path_factory, smoke_features, smoke_cfg):
    from scenesearch import similarity

    out = tmp_path_factory.mktemp("clusters")
    similarity.run(str(smoke_features), str(out), dataclasses.replace(smoke_cfg.similarity, n_clusters=3), smoke_cfg.seed)
    return out


def _cfg(smoke_cfg, **method_sections):
    return dataclasses.replace(smoke_cfg, train=dataclasses.replace(smoke_cfg.train, epochs=1),
                               methods=method_sections or {**smoke_cfg.methods, **DESCRIPTOR_METHODS, **MAP_METHODS, **MIXING})


def test_the_registry_lists_the_ported_methods_and_names_unknown_ones():
    assert {"vgg_baseline", "random", "cvae_m2"} <= set(methods.names())
    with pytest.raises(ConfigError, match=r"unknown method 'nope'; known methods: .*cvae_m2.*vgg_baseline"):
        methods.get("nope")


@pytest.mark.parametrize(
    "sections, message",
    [
        ({"nope": {}}, "unknown method 'nope'; known methods:"),
        ({"cvae_m2": {"variants": ["cvae9"]}}, "methods.cvae_m2.variants must be among cvae1"),
        ({"cvae_m2": {"beta": "x"}}, "methods.cvae_m2.beta must be a number, got 'x'"),
        ({"cvae_m2": {"lr": 1}}, "unknown config field methods.cvae_m2.lr"),
        ({"vgg_baseline": {"gpu": 1}}, "methods.vgg_baseline.gpu must be true or false"),
        ({}, "methods must configure at least one method"),
        ({"zs_cvae": {"n_centres": 200}}, "methods.zs_cvae.n_centres (200) must not exceed methods.zs_cvae.n_samples (100)"),
        ({"zs_caae": {"lam": -1}}, "methods.zs_caae.lam must be >= 0, got -1"),
        ({"parallel_vae": {"lambdas": [1, 2]}}, "methods.parallel_vae.lambdas must be seven weights >= 0 (l1..l7), got [1.0, 2.0]"),
        ({"parallel_vae": {"omega": 2}}, "methods.parallel_vae.omega must be in [0, 1], got 2"),
        ({"siamese": {"margin": 0}}, "methods.siamese.margin must be > 0, got 0"),
        ({"triplet": {"per_query": 0}}, "methods.triplet.per_query must be an integer >= 1, got 0"),
        ({"pooled": {"variants": ["maxpool"]}}, "methods.pooled.variants: 'maxpool' must start with one of mac, spoc, gem, rmac"),
        ({"pooled": {"variants": ["gem_pw_lw"]}}, "methods.pooled.variants: 'gem_pw_lw' sets whiten twice"),
        ({"pooled": {"variants": ["gem_qe"]}}, "methods.pooled.variants: 'gem_qe' has the unknown option 'qe'; options: pw, lw, aqe, alphaqe, dfs"),
        ({"pooled": {"p": 0.5}}, "methods.pooled.p must be >= 1, got 0.5"),
        ({"pooled": {"diffusion_alpha": 1.0}}, "methods.pooled.diffusion_alpha must be in (0, 1), got 1.0"),
        ({"lorbms": {"variants": ["lorbms_nope"]}}, "methods.lorbms.variants: 'lorbms_nope' is not lorbms followed by any of _noadv, _nocls, _nocycle"),
        ({"lorbms": {"rec_norm": 3}}, "methods.lorbms.rec_norm must be 1 or 2, got 3"),
        ({"lorbms": {"quadrant_weights": [1, 1]}}, "methods.lorbms.quadrant_weights must be four weights >= 0, got [1.0, 1.0]"),
        ({"vgg_baseline": {"whiten": "zca"}}, "methods.vgg_baseline.whiten must be one of ['none', 'pca', 'learned'], got 'zca'"),
        ({"vgg_baseline": {"query_expansion": "dqe"}}, "methods.vgg_baseline.query_expansion must be one of ['none', 'average', 'alpha'], got 'dqe'"),
        ({"siamese_gem": {"input_size": 16}}, "methods.siamese_gem.input_size must be 0 (features.input_size) or >= 32, got 16"),
        ({"triplet_gem": {"pool_size": 0}}, "methods.triplet_gem.pool_size must be > 0, got 0"),
    ],
)
def test_bad_method_sections_name_the_field(smoke_cfg, sections, message):
    cfg = dataclasses.replace(smoke_cfg, methods=sections)
    with pytest.raises(ConfigError) as e:
        methods.check(cfg)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_entries_one_per_variant_with_unique_keys(smoke_cfg):
    cfg = dataclasses.replace(smoke_cfg, methods={"cvae_m2": {"variants": ["cvae1", "cvae2"], "gpu": True}, "random": {}})
    assert [(e.key, e.method, e.variant, e.gpu, e.trains) for e in methods.entries(cfg)] == [
        ("cvae1", "cvae_m2", "cvae1", True, True), ("cvae2", "cvae_m2", "cvae2", True, True), ("random", "random", "", False, False)]
    with pytest.raises(ConfigError, match="'cvae3' is not a configured method or variant; configured: cvae1, cvae2, random"):
        methods.entry(cfg, "cvae3")


def test_a_plugin_that_cannot_be_imported_is_one_sentence(smoke_cfg, tmp_path, monkeypatch):
    cfg = dataclasses.replace(smoke_cfg, plugins=("no_such_plugin_module",))
    with pytest.raises(ConfigError, match="plugins: cannot import the method module 'no_such_plugin_module'"):
        methods.check(cfg)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "broken_plugin.py").write_text("def oops(:\n")
    (tmp_path / "bad_inputs_plugin.py").write_text(textwrap.dedent('''
        from dataclasses import dataclass
        from scenesearch.methods import Method, MethodConfig

        @dataclass(frozen=True)
        class C(MethodConfig):
            pass

        METHOD = Method("bad_inputs", "consumes what nobody makes", C, ("depth_maps",), None, None)
    '''))
    for module, message in [("broken_plugin", "plugins: cannot import the method module 'broken_plugin' (SyntaxError: "),
                            ("bad_inputs_plugin", "method bad_inputs consumes unknown inputs ['depth_maps']; known: images, features, clusters, semantics")]:
        with pytest.raises(ConfigError) as e:
            methods.check(dataclasses.replace(smoke_cfg, plugins=(module,)))
        assert str(e.value).startswith(message) and "\n" not in str(e.value)


# A tiny configuration per method; a method not named here runs the suite with its defaults.
TINY = {"cvae_m2": {"variants": ["cvae1"]}, **DESCRIPTOR_METHODS, **MAP_METHODS, **MIXING}


@pytest.mark.parametrize("name", methods.names())
def test_every_registered_method_fits_scores_and_reloads(tmp_path, smoke_cfg, smoke_preprocessed, smoke_features, smoke_clusters, name):
    """Over the registry itself: a new method is in this suite without an edit here."""
    cfg = dataclasses.replace(smoke_cfg, train=dataclasses.replace(smoke_cfg.train, epochs=1), methods={name: TINY.get(name, {})})
    inputs = methods.Inputs(images=str(smoke_preprocessed["images"]), features=str(smoke_features), clusters=str(smoke_clusters))
    images = storage.read_array(smoke_preprocessed["images"] / "images.npy")
    for entry in methods.entries(cfg):
        key = entry.key
        result = train.run(cfg, key, inputs, str(tmp_path / key), progress=False)
        index = storage.read_table(tmp_path / key / "index.parquet").to_pydict()
        emb = storage.read_array(tmp_path / key / "embeddings.npy")
        assert len(emb) == len(index["item_id"]) and emb.dtype == np.float32 and np.isfinite(emb).all()
        record, arranged, d = retrieval.score_folder(tmp_path / key)
        assert record["key"] == key and record["method"] == result.entry.method == name
        assert d.shape == (len(arranged.query_feats), len(arranged.scene_feats)) and np.isfinite(d).all()
        _, d_again = retrieval.score_folder(tmp_path / key)[1:]
        np.testing.assert_array_equal(d, d_again)  # deterministic
        if not result.entry.serves:
            continue
        # reloaded, the method embeds the preprocessed query images as the pipeline did
        _, retriever = train.load(tmp_path / key)
        rows = [i for i, (dom, f) in enumerate(zip(index["domain"], index["flip"])) if dom == "photo" and not f][:4]
        again = retriever.embed(torch.from_numpy(images[rows])).numpy()
        np.testing.assert_allclose(again, emb[rows], rtol=1e-4, atol=1e-4, err_msg=key)


def test_unseen_labels_never_reach_a_method(tmp_path, smoke_cfg, smoke_preprocessed, monkeypatch):
    """A spy method records every label its fit can see; a zero-shot index hides the unseen class."""
    src = smoke_preprocessed["images"]
    zs = tmp_path / "images"
    zs.mkdir()
    (zs / "images.npy").symlink_to(src / "images.npy")
    table = storage.read_table(src / "index.parquet")
    unseen = np.asarray(table["label"].to_pylist()) == "street"
    table = table.set_column(table.column_names.index("class_split"), "class_split", pa.array(np.where(unseen, "unseen", "seen")))
    storage.write_table(zs / "index.parquet", table)
    (tmp_path / "spy_method.py").write_text(textwrap.dedent('''
        import json
        from dataclasses import dataclass
        import numpy as np
        from scenesearch.methods import Fitted, Method, MethodConfig

        @dataclass(frozen=True)
        class SpyConfig(MethodConfig):
            pass

        def fit(ctx):
            (ctx.out_dir / "seen_labels.json").write_text(json.dumps(sorted(set(ctx.index["label"].to_pylist()))))
            return Fitted(np.zeros((ctx.index.num_rows, 1), np.float32), {})

        METHOD = Method("spy", "records the labels it sees", SpyConfig, ("images",), fit, lambda folder, meta: None, serves=False)
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = dataclasses.replace(smoke_cfg, methods={"spy": {}}, plugins=("spy_method",))
    train.run(cfg, "spy", methods.Inputs(images=str(zs)), str(tmp_path / "spy"), progress=False)
    seen = json.loads((tmp_path / "spy" / "seen_labels.json").read_text())
    assert "street" not in seen and {"bedroom", "kitchen", "office"} <= set(seen)
    # the model folder's index keeps the true labels: evaluation needs them, training never saw them
    assert "street" in storage.read_table(tmp_path / "spy" / "index.parquet")["label"].to_pylist()


def test_a_method_whose_embeddings_miss_rows_is_refused(tmp_path, smoke_cfg, smoke_preprocessed, monkeypatch):
    (tmp_path / "short_method.py").write_text(textwrap.dedent('''
        from dataclasses import dataclass
        import numpy as np
        from scenesearch.methods import Fitted, Method, MethodConfig

        @dataclass(frozen=True)
        class C(MethodConfig):
            pass

        METHOD = Method("short", "embeds too few rows", C, ("images",), lambda ctx: Fitted(np.zeros((3, 2), np.float32), {}), lambda f, m: None)
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = dataclasses.replace(smoke_cfg, methods={"short": {}}, plugins=("short_method",))
    with pytest.raises(DataError, match=r"method short embedded \(3, 2\) for \d+ index rows"):
        train.run(cfg, "short", methods.Inputs(images=str(smoke_preprocessed["images"])), str(tmp_path / "m"), progress=False)


def test_retrieve_refuses_folders_of_other_datasets(tmp_path, smoke_cfg, smoke_preprocessed, smoke_features):
    cfg = _cfg(smoke_cfg)
    inputs = methods.Inputs(images=str(smoke_preprocessed["images"]), features=str(smoke_features))
    a = train.run(cfg, "random", inputs, str(tmp_path / "a"), progress=False).out_dir
    b = train.run(cfg, "vgg_baseline", inputs, str(tmp_path / "b"), progress=False).out_dir
    index = storage.read_table(tmp_path / "b" / "index.parquet")
    keep = [i for i, dom in enumerate(index["domain"].to_pylist()) if dom == "scene" or i % 4]
    storage.write_table(tmp_path / "b" / "index.parquet", index.take(keep))
    storage.write_array(tmp_path / "b" / "embeddings.npy", storage.read_array(tmp_path / "b" / "embeddings.npy")[keep])
    with pytest.raises(DataError, match="the vgg_baseline model embedded other queries or scenes than random"):
        retrieval.run([a, b], str(tmp_path / "r"))


def test_parallel_vae_without_semantics_turns_its_semantic_term_off_and_says_so(tmp_path, smoke_cfg, smoke_preprocessed, smoke_features):
    cfg = _cfg(smoke_cfg, parallel_vae={"n_samples": 2})
    images, feats = str(smoke_preprocessed["images"]), str(smoke_features)
    without = train.run(cfg, "parallel_vae", methods.Inputs(images=images, features=feats), str(tmp_path / "a"), progress=False)
    assert without.params["semantics"].startswith("none") and "train_semantic" not in json.loads((tmp_path / "a" / "history.json").read_text())[0]
    with_sem = train.run(cfg, "parallel_vae", methods.Inputs(images=images, features=feats, semantics=str(smoke_preprocessed["manifest"])), str(tmp_path / "b"), progress=False)
    assert with_sem.params["semantics"].endswith("attributes") and "train_semantic" in json.loads((tmp_path / "b" / "history.json").read_text())[0]


def test_vgg_baseline_takes_whitening_query_expansion_and_diffusion_as_options(tmp_path, smoke_cfg, smoke_preprocessed, smoke_features):
    inputs = methods.Inputs(images=str(smoke_preprocessed["images"]), features=str(smoke_features))
    plain = train.run(_cfg(smoke_cfg, vgg_baseline={}), "vgg_baseline", inputs, str(tmp_path / "plain"), progress=False)
    cfg = _cfg(smoke_cfg, vgg_baseline={"whiten": "learned", "query_expansion": "alpha", "diffusion": True})
    post = train.run(cfg, "vgg_baseline", inputs, str(tmp_path / "post"), progress=False)
    assert plain.params["whiten"] == "none" and post.params == {**post.params, "whiten": "learned", "query_expansion": "alpha", "diffusion": "true"}
    d_plain = retrieval.score_folder(tmp_path / "plain")[2]
    d_post = retrieval.score_folder(tmp_path / "post")[2]
    assert d_post.shape == d_plain.shape and np.isfinite(d_post).all() and not np.allclose(d_post, d_plain)
    _, retriever = train.load(tmp_path / "post")
    index = storage.read_table(tmp_path / "post" / "index.parquet").to_pydict()
    rows = [i for i, (dom, f) in enumerate(zip(index["domain"], index["flip"])) if dom == "photo" and not f][:3]
    images = storage.read_array(smoke_preprocessed["images"] / "images.npy")
    np.testing.assert_allclose(retriever.embed(torch.from_numpy(images[rows])).numpy(), storage.read_array(tmp_path / "post" / "embeddings.npy")[rows], atol=1e-4)


def test_whitening_is_fitted_on_the_train_split_only():
    from scenesearch.methods import _post

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8)).astype(np.float32)
    index = {"split": ["train"] * 30 + ["test"] * 30, "label": ["a", "b"] * 30}
    cfg = _post.PostConfig()
    changed = x.copy()
    changed[30:] = rng.normal(size=(30, 8)) * 100 + 50  # other test rows must not move the whitening
    for kind in ("pca", "learned"):
        a, b = _post.fit_whitening(kind, cfg, x, index, 0), _post.fit_whitening(kind, cfg, changed, index, 0)
        np.testing.assert_array_equal(a.mean, b.mean)
        np.testing.assert_array_equal(a.projection, b.projection)


def test_the_map_methods_read_the_kept_maps_and_compute_the_same_ones_without(tmp_path, smoke_cfg, smoke_preprocessed, caplog):
    kept_cfg = dataclasses.replace(smoke_cfg, features=dataclasses.replace(smoke_cfg.features, keep_maps=True))
    kept = tmp_path / "features_kept"
    features.run(str(smoke_preprocessed["images"]), str(kept), kept_cfg.features, kept_cfg.seed)
    cfg = _cfg(kept_cfg, pooled={"variants": ["rmac_pw"]})
    images = str(smoke_preprocessed["images"])
    with caplog.at_level("INFO", logger="scenesearch.methods._maps"):
        train.run(cfg, "rmac_pw", methods.Inputs(images=images, features=str(kept)), str(tmp_path / "kept"), progress=False)
    assert "computing VGG16" not in caplog.text
    bigger = _cfg(kept_cfg, pooled={"variants": ["rmac_pw"], "input_size": 64})  # another size: its own maps
    with caplog.at_level("INFO", logger="scenesearch.methods._maps"):
        train.run(bigger, "rmac_pw", methods.Inputs(images=images, features=str(kept)), str(tmp_path / "own"), progress=False)
    assert "computing VGG16 conv5_3 maps at 64 px" in caplog.text
    own = storage.read_array(tmp_path / "own" / "embeddings.npy")
    assert len(own) == len(storage.read_array(tmp_path / "kept" / "embeddings.npy")) and np.isfinite(own).all()
    # the same size without kept maps computes what the features step kept
    cfg_none = _cfg(smoke_cfg, pooled={"variants": ["rmac_pw"]})
    train.run(cfg_none, "rmac_pw", methods.Inputs(images=images, features=str(kept)), str(tmp_path / "computed"), progress=False)
    np.testing.assert_allclose(storage.read_array(tmp_path / "computed" / "embeddings.npy"), storage.read_array(tmp_path / "kept" / "embeddings.npy"), atol=2e-3)


def test_the_descriptor_methods_search_through_the_configured_index(tmp_path, smoke_cfg, smoke_preprocessed, smoke_features, caplog):
    inputs = methods.Inputs(images=str(smoke_preprocessed["images"]), features=str(smoke_features))
    dists = {}
    for kind in ("exact-numpy", "flat", "ivfpq"):
        cfg = _cfg(smoke_cfg, vgg_baseline={}, pooled={"variants": ["gem"]})
        cfg = dataclasses.replace(cfg, retrieve=dataclasses.replace(cfg.retrieve, index=kind))
        for key in ("vgg_baseline", "gem"):
            result = train.run(cfg, key, inputs, str(tmp_path / kind / key), progress=False)
            assert result.params["index"] == kind
            with caplog.at_level("WARNING"):
                dists[kind, key] = retrieval.score_folder(tmp_path / kind / key)[2]
    for key in ("vgg_baseline", "gem"):
        np.testing.assert_allclose(dists["flat", key], dists["exact-numpy", key], atol=1e-5)
        # the smoke gallery is too small to train IVF-PQ: it falls back to the flat index and says why
        np.testing.assert_allclose(dists["ivfpq", key], dists["exact-numpy", key], atol=1e-5)
    assert "flat" in caplog.text and "ivfpq" in caplog.text.lower()


def test_lorbms_reports_its_probe_and_fid_vgg_and_logs_a_grid_per_epoch(tmp_path, smoke_cfg, smoke_preprocessed, smoke_features, smoke_clusters):
    cfg = _cfg(smoke_cfg)
    cfg = dataclasses.replace(cfg, methods={"lorbms": {**MIXING["lorbms"], "epochs": 2, "variants": ["lorbms_nocycle"]}})
    inputs = methods.Inputs(images=str(smoke_preprocessed["images"]), features=str(smoke_features), clusters=str(smoke_clusters))
    grids = []
    result = train.run(cfg, "lorbms_nocycle", inputs, str(tmp_path / "m"), progress=False, log_image=lambda k, img, step: grids.append((k, tuple(img.shape), step)))
    assert [(k, step) for k, _, step in grids] == [("mixed_scenes", 1), ("mixed_scenes", 2)] and grids[0][1][0] == 3
    m = result.metrics
    for key in ("probe_random_mean", "probe_encoder_mean", "probe_finetuned_mean", "probe_discriminator_mean", "probe_vgg_mean", "fid_vgg"):
        assert np.isfinite(m[key]), key
    assert 0 <= m["probe_encoder_mean"] <= 1 and "fid" not in m
    report = (tmp_path / "m" / train.REPORT_FILE).read_text()
    assert "lorbms_nocycle: linear probe" in report and "fid_vgg" in report and "FID and IS not computed" in report
    assert json.loads((tmp_path / "m" / "method.json").read_text())["config"]["variants"] == ["lorbms_nocycle"]
    # the ablation reached the loss: no cycle term
    from scenesearch.methods.lorbms import loss_weights

    assert loss_weights(result.entry.config, "lorbms_nocycle").cycle is False and loss_weights(result.entry.config, "lorbms_noadv_nocls").adv == 0.0

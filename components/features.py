from typing import List

from kfp.dsl import Dataset, Input, Model, Output

from components.image import component


@component
def pretrain(config_json: str, parent_run_id: str, images: Input[Dataset], backbone: Output[Model]):
    """features.weights=selfsup: train the VGG16 backbone on the dataset's own images, without labels, once for every shard."""
    from scenesearch import config, features as step, tracking
    from scenesearch.cli import task_edge

    with task_edge("pretrain"):
        cfg = config.from_json(config_json)
        with tracking.step_run(cfg, parent_run_id, "pretrain") as run:
            stats = step.pretrain(images.path, backbone.path, cfg.features, cfg.seed, cfg.train.augment, cfg.render.background)
            run.log_metrics({f"selfsup_{k}": v for k, v in stats.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
            run.log_params({"weights": "selfsup", "device": stats.get("device", "")})
    backbone.metadata.update({"weights": "selfsup", "epochs": stats.get("epochs", 0)})


@component
def describe(config_json: str, shard: int, images: Input[Dataset], descriptors: Output[Dataset], backbone: Input[Model] = None):
    """VGG16 multi-layer descriptors of one block of the images. Logs nothing, so it can be cached.
    `backbone`: the pretrain task's output when features.weights is selfsup."""
    from scenesearch import config, features as step
    from scenesearch.cli import task_edge

    with task_edge(f"describe shard {shard}"):
        cfg = config.from_json(config_json)
        weights = step.resolve_weights(cfg.features.weights, backbone.path if backbone is not None else None)
        desc, rate, device, maps = step.describe(images.path, cfg.features, cfg.seed, shard, cfg.cluster.shards, weights=weights)
        step.write_descriptors(descriptors.path, desc, rate, device, maps)
    descriptors.metadata.update({"shard": shard, "n_images": len(desc), "images_per_s": rate, "device": device})


@component
def features(config_json: str, parent_run_id: str, images: Input[Dataset], descriptors: Input[List[Dataset]], features: Output[Dataset],
             backbone: Input[Model] = None):
    """Join the descriptor shards and project them with a PCA fitted on the train split (with selfsup
    weights, the trained backbone.pt goes into the output for the methods that build a VGG16)."""
    from scenesearch import config, features as step, tracking
    from scenesearch.cli import task_edge

    with task_edge("features"):
        cfg = config.from_json(config_json)
        with tracking.step_run(cfg, parent_run_id, "features") as run:
            result = step.merge(images.path, [d.path for d in descriptors], features.path, cfg.features, cfg.seed,
                                backbone_dir=backbone.path if backbone is not None else None)
            run.log_metrics({**result.metrics(), "n_shards": len(descriptors), "slowest_shard_seconds": result.shard_seconds})
            run.log_params({"weights_used": result.weights, "device": result.device})
            run.log_params({"weights_used": result.weights}, parent=True)
    features.metadata.update({**result.metrics(), "weights": result.weights})

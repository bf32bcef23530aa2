from typing import List

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE)
def describe(config_json: str, shard: int, images: Input[Dataset], descriptors: Output[Dataset]):
    """VGG16 multi-layer descriptors of one block of the images. Logs nothing, so it can be cached."""
    from scenesearch import config, features as step
    from scenesearch.cli import task_edge

    with task_edge(f"describe shard {shard}"):
        cfg = config.from_json(config_json)
        desc, rate, device = step.describe(images.path, cfg.features, cfg.seed, shard, cfg.cluster.shards)
        step.write_descriptors(descriptors.path, desc, rate, device)
    descriptors.metadata.update({"shard": shard, "n_images": len(desc), "images_per_s": rate, "device": device})


@dsl.component(base_image=BASE_IMAGE)
def features(config_json: str, parent_run_id: str, images: Input[Dataset], descriptors: Input[List[Dataset]], features: Output[Dataset]):
    """Join the descriptor shards and project them with a PCA fitted on the train split."""
    from scenesearch import config, features as step, tracking
    from scenesearch.cli import task_edge

    with task_edge("features"):
        cfg = config.from_json(config_json)
        with tracking.step_run(cfg, parent_run_id, "features") as run:
            result = step.merge(images.path, [d.path for d in descriptors], features.path, cfg.features, cfg.seed)
            run.log_metrics({**result.metrics(), "n_shards": len(descriptors), "slowest_shard_seconds": result.shard_seconds})
            run.log_params({"weights_used": result.weights, "device": result.device})
            run.log_params({"weights_used": result.weights}, parent=True)
    features.metadata.update({**result.metrics(), "weights": result.weights})

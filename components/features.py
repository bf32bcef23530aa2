from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE)
def features(config_json: str, parent_run_id: str, images: Input[Dataset], features: Output[Dataset]):
    """VGG16 multi-layer descriptors + PCA fitted on the train split."""
    from scenesearch import config, features as step, tracking

    cfg = config.from_json(config_json)
    with tracking.step_run(cfg, parent_run_id, "features") as run:
        result = step.run(images.path, features.path, cfg.features, cfg.seed)
        run.log_metrics(result.metrics())
        run.log_params({"weights_used": result.weights, "device": result.device})
        run.log_params({"weights_used": result.weights}, parent=True)
    features.metadata.update({**result.metrics(), "weights": result.weights})

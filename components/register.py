from typing import List

from kfp import dsl
from kfp.dsl import Dataset, Input, Model

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE)
def register(config_json: str, parent_run_id: str, fingerprint: str, report: Input[Dataset], models: Input[List[Model]]):
    """Register every trained model; `champion` moves only to a better one. Closes the parent MLflow run."""
    from scenesearch import config, registry, tracking

    cfg = config.from_json(config_json)
    with tracking.step_run(cfg, parent_run_id, "register") as run:
        uri = tracking.resolve_uri(cfg.tracking.tracking_uri)
        done = registry.run([m.path for m in models], report.path, fingerprint, uri, cfg.registry.name, cfg.registry.metric, run.parent_tag("git_commit"))
        for r in done:
            print(f"{cfg.registry.name} version {r.version} ({r.architecture}): {r.alias}, {r.reason}")
            run.log_params({f"{r.architecture}.version": r.version, f"{r.architecture}.alias": r.alias, f"{r.architecture}.reason": r.reason})
            run.log_params({f"registered.{r.architecture}": f"{cfg.registry.name}/{r.version} ({r.alias})"}, parent=True)
    tracking.finish_parent(cfg, parent_run_id)

from typing import List

from kfp.dsl import Dataset, Input, Model

from components.image import component


@component
def register(config_json: str, parent_run_id: str, fingerprint: str, report: Input[Dataset], models: Input[List[Model]] = None, gpu_models: Input[List[Model]] = None):
    """Register every served model; `champion` moves only to a better one. Closes the parent MLflow run."""
    from scenesearch import config, registry, tracking
    from scenesearch.cli import task_edge

    with task_edge("register"):
        cfg = config.from_json(config_json)
        with tracking.step_run(cfg, parent_run_id, "register") as run:
            uri = tracking.resolve_uri(cfg.tracking.tracking_uri)
            folders = [m.path for m in (models or [])] + [m.path for m in (gpu_models or [])]
            done = registry.run(folders, report.path, fingerprint, uri, cfg.registry.name, cfg.registry_metric(), run.parent_tag("git_commit"), owner=f"run:{parent_run_id}")
            tracking.link_run_outputs(run.client, run.parent_id, folders, fingerprint)
            for r in done:
                print(f"{cfg.registry.name} version {r.version} ({r.key}): {r.alias}, {r.reason}")
                run.log_params({f"{r.key}.version": r.version, f"{r.key}.alias": r.alias, f"{r.key}.reason": r.reason})
                run.log_params({f"registered.{r.key}": f"{cfg.registry.name}/{r.version} ({r.alias})"}, parent=True)
        tracking.finish_parent(cfg, parent_run_id)

from kfp.dsl import Dataset, Output

from components.image import component


@component
def ingest(config_json: str, parent_run_id: str, data_root: str, manifest: Output[Dataset]) -> str:
    """Validate and split the dataset -> manifest.parquet + rejected.parquet; returns the dataset fingerprint."""
    import os

    from scenesearch import config, tracking
    from scenesearch.cli import task_edge
    from scenesearch.data import ingest as step

    with task_edge("ingest"):
        cfg = config.from_json(config_json)
        with tracking.step_run(cfg, parent_run_id, "ingest") as run:
            result = step.run(data_root, manifest.path, cfg.data, cfg.seed)
            run.log_metrics(result.metrics())
            run.log_metrics(result.metrics(), parent=True)
            run.log_params({"dataset_fingerprint": result.fingerprint, "data_root": data_root}, parent=True)
            for rid in (run.run_id, run.parent_id):  # the runs table's Dataset column
                tracking.log_dataset(run.client, rid, tracking.dataset_name(data_root), result.fingerprint, data_root, "ingest", result.metrics())
            run.log_artifacts([os.path.join(manifest.path, "rejected.parquet")])
    manifest.metadata.update({**result.metrics(), "fingerprint": result.fingerprint})
    return result.fingerprint

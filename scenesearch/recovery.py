"""What killed runs leave on a tracking store, put right by the next run.

A `scenesearch run` that dies (SIGKILL, OOM, a lost node) cannot close its MLflow runs or finish
a registration. The next run on the same store calls `recover` before any work: runs whose
driver is gone are closed as KILLED (`tracking.close_stale_runs`), and half-registered versions
are finished or removed under the registry lock (`registry.repair`). Ctrl-C closes its own runs
at once (`close_run`).
"""

from __future__ import annotations

from scenesearch import registry, tracking
from scenesearch.config import RunConfig


def recover(cfg: RunConfig, uri: str, by: str) -> list[str]:
    """Close the runs of dead drivers in the config's experiment and repair its registered model.

    Args:
        cfg: names the experiment and the registered model.
        uri: the tracking URI.
        by: the run doing it (its name), for the tags.

    Returns:
        One line per thing recovered.
    """
    notes = tracking.close_stale_runs(uri, cfg.tracking.experiment, by)
    c = tracking.client(uri)
    if registry.needs_repair(c, cfg.registry.name):
        with registry.lock(c, cfg.registry.name, f"process:{tracking.driver_id()}"):
            notes += registry.repair(c, cfg.registry.name)
    return notes


def close_run(uri: str, experiment: str, run_name: str, why: str) -> None:
    """Best effort: mark the parent run `run_name` and its open step runs KILLED, ENDED_TAG saying why.

    Any failure is swallowed: the next run's `recover` closes them instead.
    """
    try:
        c = tracking.client(uri)
        exp = c.get_experiment_by_name(experiment)
        runs = c.search_runs([exp.experiment_id], filter_string=f"attributes.run_name = '{run_name}'")
        for parent in [r for r in runs if tracking.PARENT_TAG not in r.data.tags]:
            children = c.search_runs([exp.experiment_id], filter_string=f"tags.`{tracking.PARENT_TAG}` = '{parent.info.run_id}' and attributes.status = 'RUNNING'")
            for r in [parent, *children]:
                if r.info.status == "RUNNING":
                    c.set_tag(r.info.run_id, tracking.ENDED_TAG, why)
                    c.set_terminated(r.info.run_id, "KILLED")
    except Exception:  # noqa: BLE001
        pass

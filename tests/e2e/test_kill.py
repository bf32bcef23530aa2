"""Kill `scenesearch run` anywhere, run it again: nothing is lost and nothing is left open.

One chain on one store and one workdir (the nano preset: every step, one shard): the first run is killed (SIGKILL to its process group,
as an OOM kill or a node loss takes the driver and its tasks) during ingest, the next during
render, then features, train and register; the sixth runs to the end. Each run starts by closing
what the previous one left (`pipelines.local.recover`), so at the end no run is RUNNING, every
killed parent is KILLED with a tag naming the run that closed it, the registry holds no
half-registered version, and the last run's metrics equal those of an uninterrupted nano run (the
session's `nano_pair`, which runs on the same xdist worker).
"""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from scenesearch import registry, tracking

pytestmark = pytest.mark.slow

# (phase, the step run to wait for, its status then, seconds to wait more, the step that must not have finished
# when the kill lands). Render and features run as shard tasks that open no MLflow run: they are
# caught a moment after the step before them has finished.
PHASES = [
    ("ingest", "ingest", "RUNNING", 0.0, "ingest"),
    ("render", "ingest", "FINISHED", 2.0, "render"),
    ("features", "preprocess", "FINISHED", 2.0, "features"),
    ("train", "train_cvae1", "RUNNING", 1.0, "train_cvae1"),
    ("register", "register", "RUNNING", 0.0, "register"),
]


def _steps(db) -> dict[str, str]:
    """{step: status} of the newest pipeline run in the SQLite store (read directly: fast, no MLflow import)."""
    if not db.exists():
        return {}
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            newest = con.execute(
                "SELECT run_uuid FROM runs WHERE run_uuid NOT IN (SELECT run_uuid FROM tags WHERE key = 'mlflow.parentRunId') ORDER BY start_time DESC LIMIT 1"
            ).fetchone()
            if newest is None:
                return {}
            rows = con.execute(
                "SELECT t.value, r.status FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = 'step'"
                " JOIN tags p ON p.run_uuid = r.run_uuid AND p.key = 'mlflow.parentRunId' AND p.value = ?",
                newest,
            ).fetchall()
    except sqlite3.OperationalError:  # no tables yet, or a writer holds the lock: ask again
        return {}
    return dict(rows)


# nano: every step and task kind of smoke (the kill during train hits the CVAE), at the smallest size.
CHAIN = ["--preset", "nano"]


def _run(cwd, dataset, log):
    return subprocess.Popen(
        [sys.executable, "-m", "scenesearch.cli", "run", *CHAIN, "--data", str(dataset), "--workdir", str(cwd / "runs")],
        cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
    )


def _kill_during(proc, db, phase, step, status, delay, unfinished, timeout=600.0) -> dict[str, str]:
    """SIGKILL the run's process group once `step` has `status` (+ `delay` s); returns the steps then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        steps = _steps(db)
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before its {phase} step could be killed; steps {steps}")
        if steps.get(step) == status:
            time.sleep(delay)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            after = _steps(db)
            assert after.get(unfinished) != "FINISHED", f"{unfinished} finished before the kill landed: {after}"
            return after
        time.sleep(0.1)
    pytest.fail(f"the {phase} step did not start within {timeout:.0f} s")


def _metrics(uri, run_id) -> dict[str, float]:
    """Every quality figure of the run (each method's test_ and val_ metrics)."""
    return {k: v for k, v in MlflowClient(uri).get_run(run_id).data.metrics.items() if k.startswith(("test_", "val_"))}


def test_a_run_killed_in_each_step_is_closed_by_the_next_and_the_last_rerun_matches_an_uninterrupted_run(tmp_path, nano_pair):
    dataset = nano_pair.dataset
    db = tmp_path / "mlruns.db"
    uri = f"sqlite:///{db}"
    log_path = tmp_path / "runs.log"
    seen = []
    with open(log_path, "wb") as log:
        for phase, *when in PHASES:
            log.write(f"\n===== run killed during {phase} =====\n".encode())
            log.flush()
            seen.append((phase, _kill_during(_run(tmp_path, dataset, log), db, phase, *when)))
        log.write(b"\n===== the rerun =====\n")
        log.flush()
        last = _run(tmp_path, dataset, log)
        assert last.wait(timeout=900) == 0, f"the rerun failed; the output of every run is in {log_path}"

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("scenesearch-nano")
    runs = c.search_runs([exp.experiment_id], max_results=1000)
    parents = sorted((r for r in runs if tracking.PARENT_TAG not in r.data.tags), key=lambda r: r.info.start_time)
    assert [r.info.status for r in parents] == ["KILLED"] * len(PHASES) + ["FINISHED"], seen
    for killed, closer in zip(parents, parents[1:]):
        # closed at the start of the very next run, saying why and by whom
        assert f"closed by run {closer.info.run_name}" in killed.data.tags[tracking.ENDED_TAG]
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    assert {r.info.status for r in runs} <= {"FINISHED", "KILLED"}

    versions = c.search_model_versions("name = 'scenesearch-nano'")
    assert versions and not [v.version for v in versions if registry.PENDING_TAG in v.tags or "promotion" not in v.tags]
    assert {v.tags["promotion"].split(":")[0] for v in versions} <= {"champion", "challenger"}
    assert str(c.get_model_version_by_alias("scenesearch-nano", "champion").version) in {str(v.version) for v in versions}
    assert not c.search_registered_models(f"name = 'scenesearch-nano{registry.LOCK_SUFFIX}'")

    reference = MlflowClient(nano_pair.uri)
    ref_parent = next(r for r in reference.search_runs([reference.get_experiment_by_name("scenesearch-nano").experiment_id]) if tracking.PARENT_TAG not in r.data.tags)
    expected, got = _metrics(nano_pair.uri, ref_parent.info.run_id), _metrics(uri, parents[-1].info.run_id)
    assert expected and got == pytest.approx(expected, abs=1e-6)

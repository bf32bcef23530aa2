"""Kill `scenesearch run` anywhere, run it again: nothing is lost and nothing is left open.

One chain on one store and one workdir (the smoke preset, its CVAE only, one shard): the first run is killed (SIGKILL to its process group,
as an OOM kill or a node loss takes the driver and its tasks) during ingest, the next during
render, then features, train and register; the sixth runs to the end. Each run starts by closing
what the previous one left (`pipelines.local.recover`), so at the end no run is RUNNING, every
killed parent is KILLED with a tag naming the run that closed it, the registry holds no
half-registered version, and the last run's CVAE metrics equal those of an uninterrupted smoke run.
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


# The smoke preset with its one trained method and one shard: every step is still there (the kill
# during train hits the CVAE's epochs), at about two thirds of the tasks of six whole smoke runs.
CHAIN = ["--preset", "smoke", "--set", "methods={cvae_m2: {variants: [cvae1]}}", "--set", "cluster.shards=1"]


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
    """The CVAE's quality figures (the uninterrupted reference also trains the preset's other methods)."""
    return {k: v for k, v in MlflowClient(uri).get_run(run_id).data.metrics.items() if k.startswith(("test_cvae1_", "val_cvae1_"))}


def test_a_run_killed_in_each_step_is_closed_by_the_next_and_the_last_rerun_matches_an_uninterrupted_run(tmp_path, smoke_dataset, smoke_run):
    db = tmp_path / "mlruns.db"
    uri = f"sqlite:///{db}"
    log_path = tmp_path / "runs.log"
    seen = []
    with open(log_path, "wb") as log:
        for phase, *when in PHASES:
            log.write(f"\n===== run killed during {phase} =====\n".encode())
            log.flush()
            seen.append((phase, _kill_during(_run(tmp_path, smoke_dataset, log), db, phase, *when)))
        log.write(b"\n===== the rerun =====\n")
        log.flush()
        last = _run(tmp_path, smoke_dataset, log)
        assert last.wait(timeout=900) == 0, f"the rerun failed; the output of every run is in {log_path}"

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("scenesearch-smoke")
    runs = c.search_runs([exp.experiment_id], max_results=1000)
    parents = sorted((r for r in runs if tracking.PARENT_TAG not in r.data.tags), key=lambda r: r.info.start_time)
    assert [r.info.status for r in parents] == ["KILLED"] * len(PHASES) + ["FINISHED"], seen
    for killed, closer in zip(parents, parents[1:]):
        # closed at the start of the very next run, saying why and by whom
        assert f"closed by run {closer.info.run_name}" in killed.data.tags[tracking.ENDED_TAG]
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    assert {r.info.status for r in runs} <= {"FINISHED", "KILLED"}

    versions = c.search_model_versions("name = 'scenesearch-smoke'")
    assert versions and not [v.version for v in versions if registry.PENDING_TAG in v.tags or "promotion" not in v.tags]
    assert {v.tags["promotion"].split(":")[0] for v in versions} <= {"champion", "challenger"}
    assert str(c.get_model_version_by_alias("scenesearch-smoke", "champion").version) in {str(v.version) for v in versions}
    assert not c.search_registered_models(f"name = 'scenesearch-smoke{registry.LOCK_SUFFIX}'")

    reference = MlflowClient(smoke_run.uri)
    ref_parent = next(r for r in reference.search_runs([reference.get_experiment_by_name("scenesearch-smoke").experiment_id]) if tracking.PARENT_TAG not in r.data.tags)
    expected, got = _metrics(smoke_run.uri, ref_parent.info.run_id), _metrics(uri, parents[-1].info.run_id)
    assert expected and got == pytest.approx(expected, abs=1e-6)

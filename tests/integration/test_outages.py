"""The tracking server goes away: at the start, mid-run for good, mid-run for a while under two runs at once.

Unreachable at the start: one sentence, exit 1, before any work. Gone for longer than the
retries: the step fails in one sentence, the outputs on disk stay whole, and a rerun completes
(closing the failed run as KILLED). Two runs at once on the server, which goes away mid-run and
comes back within MLflow's retries: both complete on their own, every metric recorded once.
"""

import os
import socket
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from scenesearch import tracking

pytestmark = pytest.mark.slow
LIGHT = ["--preset", "smoke", "--set", "methods={vgg_baseline: {}, random: {}}", "--set", "cluster.shards=1"]


def _run(tmp_path, dataset, uri, *args, name="run"):
    """`scenesearch run` (light smoke) against `uri`, in the background; output in <tmp_path>/<name>.log."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"MLFLOW_TRACKING_URI": uri}
    log = open(tmp_path / f"{name}.log", "w")
    return subprocess.Popen(
        [sys.executable, "-m", "scenesearch.cli", "run", *LIGHT, *args, "--data", str(dataset), "--workdir", str(tmp_path / "runs")],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )


def _output(tmp_path, name="run") -> str:
    return (tmp_path / f"{name}.log").read_text()


def _wait_for_step(client, experiment, step, status, proc, since_ms: int, timeout=600.0) -> None:
    """Until `step`'s run, started after `since_ms` (this test's run, not an earlier test's), has `status`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before {step} was {status}"
        exp = client.get_experiment_by_name(experiment)
        if exp is not None:
            runs = client.search_runs([exp.experiment_id], filter_string=f"tags.step = '{step}' and attributes.start_time > {since_ms}", order_by=["attributes.start_time DESC"], max_results=1)
            if runs and runs[0].info.status == status:
                return
        time.sleep(0.5)
    pytest.fail(f"{step} was not {status} within {timeout:.0f} s")


def _newest_parent(client, experiment):
    exp = client.get_experiment_by_name(experiment)
    return next(r for r in client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"]) if tracking.PARENT_TAG not in r.data.tags)


def test_an_unreachable_server_at_the_start_is_one_sentence_before_any_work(tmp_path, smoke_dataset):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = _run(tmp_path, smoke_dataset, f"http://127.0.0.1:{port}")
    assert p.wait(timeout=120) == 1
    lines = [line for line in _output(tmp_path).splitlines() if line.strip() and not line.startswith(("INFO", "WARNING"))]
    assert lines == [f"scenesearch run: the MLflow tracking server http://127.0.0.1:{port} is not reachable (Connection refused); start it, or point tracking.tracking_uri or $MLFLOW_TRACKING_URI at a running one"]
    assert not (tmp_path / "runs").exists()  # no task started


def test_a_server_gone_for_longer_fails_the_step_in_one_sentence_keeps_the_outputs_and_a_rerun_completes(tmp_path, smoke_dataset, smoke_cfg, tracking_server, pipeline_run_check):
    c = MlflowClient(tracking_server.url)
    short = ["--set", "tracking.http_retries=2", "--set", "tracking.http_backoff_factor=1"]
    t0 = int(time.time() * 1000)
    p = _run(tmp_path, smoke_dataset, tracking_server.url, *short, name="cut")
    _wait_for_step(c, smoke_cfg.tracking.experiment, "preprocess", "FINISHED", p, t0)
    cut = _newest_parent(c, smoke_cfg.tracking.experiment)
    assert cut.info.start_time > t0
    tracking_server.stop()
    try:
        assert p.wait(timeout=600) == 1
    finally:
        tracking_server.start()
    out = _output(tmp_path, "cut")
    url = tracking_server.url
    assert "did not answer after 2 retries (Connection refused); outputs already written stay on disk, run again once the server is back" in out
    last = [line for line in out.splitlines() if line.startswith("scenesearch run: ")]
    assert len(last) == 1 and url in last[0], out[-3000:]
    # What the finished tasks wrote is whole: every table and array reads back.
    written = list((tmp_path / "runs" / "kfp").rglob("*.parquet")) + list((tmp_path / "runs" / "kfp").rglob("*.npy"))
    assert any(f.name == "manifest.parquet" for f in written) and any(f.name == "images.npy" for f in written)
    for f in written:
        pq.read_table(f) if f.suffix == ".parquet" else np.load(f, mmap_mode="r")
    assert c.get_run(cut.info.run_id).info.status == "RUNNING"  # nobody could close it while the server was away

    p = _run(tmp_path, smoke_dataset, url, name="rerun")
    assert p.wait(timeout=900) == 0, _output(tmp_path, "rerun")[-3000:]
    rerun = _newest_parent(c, smoke_cfg.tracking.experiment)
    assert rerun.info.run_id != cut.info.run_id and rerun.info.run_id in _output(tmp_path, "rerun")
    pipeline_run_check(c, rerun.info.run_id)
    closed = c.get_run(cut.info.run_id)
    assert closed.info.status == "KILLED" and f"closed by run {rerun.info.run_name}" in closed.data.tags[tracking.ENDED_TAG]


def test_two_runs_at_once_on_one_server_that_goes_away_mid_run_and_comes_back_both_complete_losing_nothing(tmp_path, smoke_dataset, smoke_cfg, tracking_server, pipeline_run_check):
    c = MlflowClient(tracking_server.url)
    exp = c.get_experiment_by_name(smoke_cfg.tracking.experiment)
    before = {r.info.run_id for r in c.search_runs([exp.experiment_id])} if exp else set()
    t0 = int(time.time() * 1000)
    procs = [_run(tmp_path, smoke_dataset, tracking_server.url, name=f"at-once-{i}") for i in range(2)]
    # Away until a client is seen retrying (a step opening or closing its run), then 10 s more and
    # the server's start: well within the default retries (7, about 4 minutes).
    _wait_for_step(c, smoke_cfg.tracking.experiment, "preprocess", "FINISHED", procs[0], t0)
    tracking_server.stop()
    deadline = time.monotonic() + 300
    while not any("Retrying" in _output(tmp_path, f"at-once-{i}") for i in range(2)) and time.monotonic() < deadline:
        assert all(p.poll() is None for p in procs), "a run ended while the server was away"
        time.sleep(1)
    time.sleep(10)
    tracking_server.start()
    assert any("Retrying" in _output(tmp_path, f"at-once-{i}") for i in range(2)), "no tracking call was made while the server was away"
    for i, p in enumerate(procs):
        assert p.wait(timeout=1200) == 0, _output(tmp_path, f"at-once-{i}")[-3000:]
    outs = [_output(tmp_path, f"at-once-{i}") for i in range(2)]
    exp = c.get_experiment_by_name(smoke_cfg.tracking.experiment)
    parents = [r for r in c.search_runs([exp.experiment_id]) if tracking.PARENT_TAG not in r.data.tags and r.info.run_id not in before]
    mine = [[r for r in parents if r.info.run_id in out] for out in outs]
    assert all(len(m) == 1 for m in mine) and mine[0][0].info.run_id != mine[1][0].info.run_id, [r.info.run_name for r in parents]
    for m in mine:
        pipeline_run_check(c, m[0].info.run_id)
    quality = [{k: v for k, v in m[0].data.metrics.items() if k.startswith("test_")} for m in mine]
    assert quality[0] and quality[0] == pytest.approx(quality[1], abs=1e-9)
    # Both registered at about the same time: every version of this session decided once, no lock left.
    versions = c.search_model_versions(f"name = '{smoke_cfg.registry.name}'")
    assert all("registration" not in v.tags and v.tags.get("promotion", "").startswith(("champion", "challenger")) for v in versions)
    assert len(versions) >= 2
    assert not c.search_registered_models(f"name = '{smoke_cfg.registry.name}.lock'")

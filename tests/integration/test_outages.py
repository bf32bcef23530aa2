"""The tracking server goes away: at the start, mid-run for good, mid-run for a while under two runs at once.

Unreachable at the start: one sentence, exit 1, before any work. Gone for longer than the
retries: the step fails in one sentence, the outputs on disk stay whole, and a rerun completes
(closing the failed run as KILLED). Two runs at once on the server, which goes away mid-run and
comes back within MLflow's retries: both complete on their own, every metric recorded once.
The runs are the nano preset's (tests/integration/server_runs.py).
"""

import socket
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient
from server_runs import output, start_run, wait_for_step  # tests/integration/server_runs.py

from scenesearch import tracking

pytestmark = pytest.mark.slow
NAME = "scenesearch-nano"  # the nano preset's experiment and registered model


def test_an_unreachable_server_at_the_start_is_one_sentence_before_any_work(tmp_path, nano_dataset):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = start_run(tmp_path, nano_dataset, f"http://127.0.0.1:{port}")
    assert p.wait(timeout=120) == 1
    lines = [line for line in output(tmp_path).splitlines() if line.strip() and not line.startswith(("INFO", "WARNING"))]
    assert lines == [f"scenesearch run: the MLflow tracking server http://127.0.0.1:{port} is not reachable (Connection refused); start it, or point tracking.tracking_uri or $MLFLOW_TRACKING_URI at a running one"]
    assert not (tmp_path / "runs").exists()  # no task started


def test_a_server_gone_for_longer_fails_the_step_in_one_sentence_keeps_the_outputs_and_a_rerun_completes(cut_and_rerun, tracking_server, pipeline_run_check):
    seen, url = cut_and_rerun, tracking_server.url
    assert seen.cut_exit == 1
    assert "did not answer after 2 retries (Connection refused); outputs already written stay on disk, run again once the server is back" in seen.cut_output
    last = [line for line in seen.cut_output.splitlines() if line.startswith("scenesearch run: ")]
    assert len(last) == 1 and url in last[0], seen.cut_output[-3000:]
    # What the finished tasks wrote is whole: every table and array reads back.
    assert any(f.name == "manifest.parquet" for f in seen.written) and any(f.name == "images.npy" for f in seen.written)
    for f in seen.written:
        pq.read_table(f) if f.suffix == ".parquet" else np.load(f, mmap_mode="r")
    assert seen.cut_status_before_rerun == "RUNNING"  # nobody could close it while the server was away

    c = MlflowClient(url)
    rerun = c.get_run(seen.rerun_id)
    assert seen.rerun_id != seen.cut_id and seen.rerun_id in seen.rerun_output
    pipeline_run_check(c, seen.rerun_id)
    closed = c.get_run(seen.cut_id)
    assert closed.info.status == "KILLED" and f"closed by run {rerun.info.run_name}" in closed.data.tags[tracking.ENDED_TAG]


def test_two_runs_at_once_on_one_server_that_goes_away_mid_run_and_comes_back_both_complete_losing_nothing(tmp_path, nano_dataset, tracking_server, pipeline_run_check):
    c = MlflowClient(tracking_server.url)
    exp = c.get_experiment_by_name(NAME)
    before = {r.info.run_id for r in c.search_runs([exp.experiment_id])} if exp else set()
    t0 = int(time.time() * 1000)
    procs = [start_run(tmp_path, nano_dataset, tracking_server.url, name=f"at-once-{i}") for i in range(2)]
    # Away until a client is seen retrying (a step opening or closing its run), then 10 s more and
    # the server's start: well within the default retries (7, about 4 minutes).
    wait_for_step(c, NAME, "preprocess", "FINISHED", procs[0], t0)
    tracking_server.stop()
    deadline = time.monotonic() + 300
    while not any("Retrying" in output(tmp_path, f"at-once-{i}") for i in range(2)) and time.monotonic() < deadline:
        assert all(p.poll() is None for p in procs), "a run ended while the server was away"
        time.sleep(1)
    time.sleep(10)
    tracking_server.start()
    assert any("Retrying" in output(tmp_path, f"at-once-{i}") for i in range(2)), "no tracking call was made while the server was away"
    for i, p in enumerate(procs):
        assert p.wait(timeout=1200) == 0, output(tmp_path, f"at-once-{i}")[-3000:]
    outs = [output(tmp_path, f"at-once-{i}") for i in range(2)]
    exp = c.get_experiment_by_name(NAME)
    parents = [r for r in c.search_runs([exp.experiment_id]) if tracking.PARENT_TAG not in r.data.tags and r.info.run_id not in before]
    mine = [[r for r in parents if r.info.run_id in out] for out in outs]
    assert all(len(m) == 1 for m in mine) and mine[0][0].info.run_id != mine[1][0].info.run_id, [r.info.run_name for r in parents]
    for m in mine:
        pipeline_run_check(c, m[0].info.run_id)
    quality = [{k: v for k, v in m[0].data.metrics.items() if k.startswith("test_")} for m in mine]
    assert quality[0] and quality[0] == pytest.approx(quality[1], abs=1e-9)
    # Both registered at about the same time: every version of this session decided once, no lock left.
    versions = c.search_model_versions(f"name = '{NAME}'")
    assert all("registration" not in v.tags and v.tags.get("promotion", "").startswith(("champion", "challenger")) for v in versions)
    assert len(versions) >= 4
    assert not c.search_registered_models(f"name = '{NAME}.lock'")

"""What a killed or concurrent run leaves on a store, and how the next one recovers it.

Runs left RUNNING by a dead `scenesearch run` are closed as KILLED with a reason; half-registered
versions are finished or removed; registrations that race each other decide the champion once
per version; an unreachable store is one sentence before any work.
"""

import multiprocessing
import os
import socket
import subprocess
import sys

import pytest

from scenesearch import registry, tracking
from scenesearch.errors import TrackingError

FP = "fp-aaa"


def _dead_driver() -> str:
    """The driver id of a process that has exited."""
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    driver = f"{socket.gethostname()}:{p.pid}:{tracking._start_ticks(p.pid)}"
    p.kill()
    p.wait()
    return driver


def test_driver_alive_tells_a_dead_or_reused_pid_from_a_live_one():
    me = tracking.driver_id()
    host, pid, ticks = me.rsplit(":", 2)
    assert tracking.driver_alive(me)
    assert not tracking.driver_alive(_dead_driver())
    assert not tracking.driver_alive(f"{host}:{pid}:{int(ticks) + 1}")  # this pid, but another process's start
    assert tracking.driver_alive(f"some-other-host:{pid}:1")  # unknowable from here: left alone
    assert tracking.driver_alive("garbage")


def _run(c, exp, name, tags):
    return c.create_run(exp, run_name=name, tags=tags).info.run_id


def test_close_stale_runs_closes_a_dead_drivers_runs_and_orphans_only(mlflow_uri):
    c = tracking.client(mlflow_uri)
    exp = tracking.ensure_experiment(c, "e", mlflow_uri)
    dead = _run(c, exp, "dead", {tracking.DRIVER_TAG: _dead_driver()})
    dead_step = _run(c, exp, "render", {tracking.PARENT_TAG: dead, "step": "render"})
    live = _run(c, exp, "live", {tracking.DRIVER_TAG: tracking.driver_id()})
    live_step = _run(c, exp, "render", {tracking.PARENT_TAG: live, "step": "render"})
    cluster = _run(c, exp, "cluster", {})  # submitted to KFP: no driver to ask
    failed = _run(c, exp, "failed", {tracking.DRIVER_TAG: tracking.driver_id()})
    orphan = _run(c, exp, "train", {tracking.PARENT_TAG: failed, "step": "train"})
    c.set_terminated(failed, "FAILED")  # a step failed; a sibling step was killed before it closed its run

    notes = tracking.close_stale_runs(mlflow_uri, "e", by="next-run")

    status = {rid: c.get_run(rid).info.status for rid in (dead, dead_step, live, live_step, cluster, failed, orphan)}
    assert status == {dead: "KILLED", dead_step: "KILLED", live: "RUNNING", live_step: "RUNNING", cluster: "RUNNING", failed: "FAILED", orphan: "KILLED"}
    why = c.get_run(dead).data.tags[tracking.ENDED_TAG]
    assert why.startswith("ended without closing: its scenesearch run process") and "closed by run next-run" in why
    assert "had ended" in c.get_run(orphan).data.tags[tracking.ENDED_TAG]
    assert len(notes) == 3 and all("\n" not in n for n in notes)
    assert tracking.close_stale_runs(mlflow_uri, "e", by="again") == []  # idempotent
    assert tracking.close_stale_runs(mlflow_uri, "no-such-experiment", by="x") == []


def _pending_version(c, name, value, owner, decided: str = ""):
    try:
        c.create_registered_model(name)
    except Exception:
        pass
    tags = {"test_mAP": f"{value:.6f}", "dataset_fingerprint": FP, registry.PENDING_TAG: f"pending {owner}"}
    if decided:
        tags["promotion"] = decided
    return str(c.create_model_version(name, source="file:///nowhere", tags=tags).version)


def test_repair_finishes_decided_versions_and_removes_undecided_ones_of_dead_owners(mlflow_uri):
    c = tracking.client(mlflow_uri)
    exp = tracking.ensure_experiment(c, "e", mlflow_uri)
    gone = _run(c, exp, "gone", {})
    c.set_terminated(gone, "KILLED")
    alive = _run(c, exp, "alive", {})
    undecided = _pending_version(c, "m", 0.5, f"run:{gone}")
    decided = _pending_version(c, "m", 0.6, f"run:{gone}", decided="champion: there is no champion yet")
    working = _pending_version(c, "m", 0.7, f"run:{alive}")
    assert registry.needs_repair(c, "m")

    with registry.lock(c, "m", "process:" + tracking.driver_id()):
        notes = registry.repair(c, "m")

    assert [v.version for v in c.search_model_versions("name = 'm'")] and undecided not in {v.version for v in c.search_model_versions("name = 'm'")}
    assert str(c.get_model_version_by_alias("m", "champion").version) == decided
    assert registry.PENDING_TAG not in c.get_model_version("m", decided).tags
    assert c.get_model_version("m", working).tags[registry.PENDING_TAG].startswith("pending")  # its owner may still finish
    assert len(notes) == 2
    with pytest.raises(Exception):
        c.get_registered_model("m" + registry.LOCK_SUFFIX)  # released


def test_a_lock_left_by_a_dead_owner_is_taken_over(mlflow_uri):
    c = tracking.client(mlflow_uri)
    c.create_registered_model("m" + registry.LOCK_SUFFIX, tags={"owner": "process:" + _dead_driver()})
    assert registry.needs_repair(c, "m")
    with registry.lock(c, "m", "process:" + tracking.driver_id(), timeout_s=5):
        assert c.get_registered_model("m" + registry.LOCK_SUFFIX).tags["owner"] == "process:" + tracking.driver_id()
    assert not registry.needs_repair(c, "m")


def test_a_live_lock_makes_the_other_wait_then_fail_in_one_sentence(mlflow_uri):
    c = tracking.client(mlflow_uri)
    with registry.lock(c, "m", "process:" + tracking.driver_id()):
        with pytest.raises(Exception, match=r"the registry lock m\.lock has been held by process:"):
            with registry.lock(c, "m", "process:someone", timeout_s=1):
                pass


def _register_at_once(uri, value, barrier):
    import mlflow

    mlflow.set_tracking_uri(uri)  # mlflow.register_model's store, as registry.run sets it
    c = tracking.client(uri)
    barrier.wait()
    r = registry.register(c, "m", "file:///nowhere", "test_mAP", value, FP, {"key": f"k{value}"})
    return r.version, r.alias


@pytest.mark.slow  # four fresh interpreters importing MLflow
def test_registrations_at_the_same_moment_decide_the_champion_once_per_version(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    tracking.check_store(uri)  # the tables exist before the racers start, as `scenesearch run` makes sure
    values = [0.30, 0.50, 0.40, 0.45]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as m, ctx.Pool(len(values)) as pool:
        barrier = m.Barrier(len(values))
        results = pool.starmap(_register_at_once, [(uri, v, barrier) for v in values])

    c = tracking.client(uri)
    versions = c.search_model_versions("name = 'm'")
    assert len(versions) == len(values)
    assert all(registry.PENDING_TAG not in v.tags for v in versions)
    assert all(v.tags["promotion"].startswith(("champion: ", "challenger: ")) for v in versions)
    champion = c.get_model_version_by_alias("m", "champion")
    assert float(champion.tags["test_mAP"]) == max(values)
    # Each decision saw the champion of its moment: without the lock several see "no champion yet".
    assert sum("there is no champion yet" in v.tags["promotion"] for v in versions) == 1
    assert {alias for _, alias in results} <= {"champion", "challenger"}
    with pytest.raises(Exception):
        c.get_registered_model("m" + registry.LOCK_SUFFIX)


def test_an_unreachable_store_is_one_sentence(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    url = f"http://user:s3cret@127.0.0.1:{port}"
    with pytest.raises(TrackingError) as e:
        tracking.check_store(url, attempts=1)
    message = str(e.value)
    assert message.startswith(f"the MLflow tracking server http://127.0.0.1:{port} is not reachable (")
    assert "s3cret" not in message and "\n" not in message
    (tmp_path / "ro").mkdir(mode=0o500)
    if not os.access(tmp_path / "ro", os.W_OK):  # root may write anywhere
        with pytest.raises(TrackingError, match="is not writable"):
            tracking.check_store(f"sqlite:///{tmp_path / 'ro' / 'mlruns.db'}")
    tracking.check_store(f"sqlite:///{tmp_path / 'new' / 'mlruns.db'}")
    assert (tmp_path / "new" / "mlruns.db").is_file()


def test_an_interrupted_run_closes_its_own_runs_as_killed(mlflow_uri, monkeypatch):
    from scenesearch import recovery

    c = tracking.client(mlflow_uri)
    exp = tracking.ensure_experiment(c, "e", mlflow_uri)
    parent = _run(c, exp, "smoke-1", {tracking.DRIVER_TAG: tracking.driver_id()})
    step = _run(c, exp, "features", {tracking.PARENT_TAG: parent, "step": "features"})
    done = _run(c, exp, "ingest", {tracking.PARENT_TAG: parent, "step": "ingest"})
    c.set_terminated(done, "FINISHED")
    other = _run(c, exp, "smoke-2", {})

    recovery.close_run(mlflow_uri, "e", "smoke-1", "interrupted (KeyboardInterrupt) while its pipeline ran")

    assert [c.get_run(r).info.status for r in (parent, step, done, other)] == ["KILLED", "KILLED", "FINISHED", "RUNNING"]
    assert c.get_run(step).data.tags[tracking.ENDED_TAG].startswith("interrupted (KeyboardInterrupt)")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    recovery.close_run("http://127.0.0.1:1", "e", "smoke-1", "unreachable: swallowed")  # never raises


def test_unreachable_reads_mlflows_connection_failures_and_nothing_else():
    from mlflow.exceptions import MlflowException

    text = ("API request to http://127.0.0.1:5000/api/2.0/mlflow/runs/create failed with exception HTTPConnectionPool(host='127.0.0.1', port=5000):"
            " Max retries exceeded with url: /api/2.0/mlflow/runs/create (Caused by NewConnectionError(\"Failed to establish a new connection: [Errno 111] Connection refused\"))")
    assert tracking.unreachable(MlflowException(text)) == "Connection refused"
    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError:
            raise MlflowException("API request failed")  # chained implicitly, as MLflow raises it
    except MlflowException as e:
        assert tracking.unreachable(e) == "Connection refused"
    assert tracking.unreachable(MlflowException("RESOURCE_DOES_NOT_EXIST: run abc not found")) is None
    assert tracking.unreachable(ValueError("a step's own error")) is None
    with pytest.raises(TrackingError, match=r"^train_cvae1: the MLflow tracking server http://127\.0\.0\.1:5000 did not answer after \d+ retries \(Connection refused\);"):
        with tracking.tracking_calls("http://u:p@127.0.0.1:5000", "train_cvae1"):
            raise MlflowException(text)

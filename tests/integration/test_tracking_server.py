"""The cluster's tracking setup on loopback: `mlflow server` on PostgreSQL with artifacts in an S3 bucket.

A nano pipeline logs its runs there and registers its model; stopping the server (a pod
replaced, or killed outright) and starting it again loses nothing a client had logged.
"""

import json
import signal
import threading
import uuid

import pytest
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

STEPS = {"ingest", "render", "preprocess", "features", "similarity", "retrieve", "evaluate"}


def _scan(secrets: dict[str, str], where: str, data: bytes | str) -> list[str]:
    """Which secrets (or the Basic auth header MLflow would build from them) occur in `data`."""
    import base64

    if isinstance(data, str):
        data = data.encode("utf-8", "replace")
    basic = base64.b64encode(f"{secrets['MLFLOW_TRACKING_USERNAME']}:{secrets['MLFLOW_TRACKING_PASSWORD']}".encode())
    found = [f"{name} in {where}" for name, value in secrets.items() if value.encode() in data]
    return found + ([f"Basic auth header in {where}"] if basic in data else [])


@pytest.mark.slow
def test_a_pipeline_logs_runs_artifacts_and_model_to_the_server_and_no_credential_anywhere(cut_and_rerun, tracking_server, s3):
    """The rerun of `cut_and_rerun` (nano, after a run cut off from the server in the same folder),
    both with a cluster's credentials in their environment."""
    seen, tmp_path = cut_and_rerun, cut_and_rerun.cwd
    secrets = seen.secrets  # in the environment of both runs: none may reach a log, a param, a tag or an artifact
    assert not (tmp_path / "mlruns.db").exists() and not (tmp_path / "mlartifacts").exists()  # nothing went to a local store

    c = MlflowClient(tracking_server.url)
    exp = c.get_experiment_by_name("scenesearch-nano")
    assert exp is not None and exp.artifact_location.startswith("mlflow-artifacts:")
    parent = c.get_run(seen.rerun_id)
    assert parent.info.status == "FINISHED"
    assert {"test_vgg_baseline_mAP", "test_random_mAP", "test_cvae1_mAP", "n_scenes", "render_seconds"} <= set(parent.data.metrics)
    assert [d.dataset.digest for d in parent.inputs.dataset_inputs] == [parent.data.params["dataset_fingerprint"]]  # the Dataset column
    assert parent.data.params["weights_used"] == "none" and "dataset_fingerprint" in parent.data.params
    children = c.search_runs([exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert {r.data.tags.get("step") for r in children} >= STEPS
    assert all(r.info.status == "FINISHED" for r in children)

    # The parent's artifacts went through the server into the bucket, not onto this disk.
    keys = s3.files(parent.info.artifact_uri)
    assert {"comparison.md", "metrics.json", "pr_curve.png", "per_class.csv"} <= keys, sorted(keys)
    assert "vgg_baseline" in json.loads(s3.read(parent.info.artifact_uri, "metrics.json"))
    assert {a.path for a in c.list_artifacts(parent.info.run_id)} >= {"comparison.md", "metrics.json"}

    # The register step puts `champion` on a version of the registered model, stored in the bucket too.
    name = "scenesearch-nano"
    version = c.get_model_version_by_alias(name, "champion")
    assert version.status == "READY"
    source = c.get_model_version_download_uri(name, version.version)
    assert "MLmodel" in s3.files(source), (source, sorted(s3.files(source)))

    # Secrets: the run's output, every file of its pipeline root, every run's params, tags and
    # metric names, the registry's versions, and every object the server stored in the bucket.
    hits = _scan(secrets, "the runs' output", seen.cut_output + seen.rerun_output)
    files = [f for f in (tmp_path / "runs").rglob("*") if f.is_file()]
    assert len(files) > 20
    for f in files:
        hits += _scan(secrets, str(f), f.read_bytes())
    for r in c.search_runs([exp.experiment_id], max_results=1000):
        hits += _scan(secrets, f"run {r.info.run_name}", json.dumps([r.data.params, r.data.tags, sorted(r.data.metrics)]))
    for v in c.search_model_versions(f"name = '{name}'"):
        hits += _scan(secrets, f"version {v.version}", json.dumps([v.tags, v.description or "", v.source]))
    objects = [o["Key"] for page in s3.client.get_paginator("list_objects_v2").paginate(Bucket=s3.name) for o in page.get("Contents", [])]
    assert any(k.endswith("MLmodel") for k in objects) and any(k.endswith("metrics.json") for k in objects)
    for key in objects:
        hits += _scan(secrets, key, s3.client.get_object(Bucket=s3.name, Key=key)["Body"].read())
    assert hits == [], hits


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_restarting_the_server_loses_no_logged_run(sig, tmp_path, tracking_server, s3):
    c = MlflowClient(tracking_server.url)
    exp = c.create_experiment(f"restart-{sig.name}-{uuid.uuid4().hex[:8]}")

    # A finished run with params, tags, a metric history and an artifact.
    done = c.create_run(exp, run_name="done").info.run_id
    c.log_batch(done, metrics=[Metric("loss", 1.0 / (i + 1), 1000 + i, i) for i in range(20)],
                params=[Param(f"p{i}", str(i)) for i in range(10)], tags=[RunTag("kind", "finished")])
    note = tmp_path / "note.txt"
    note.write_text("logged before the restart\n")
    c.log_artifact(done, str(note))
    c.set_terminated(done, "FINISHED")
    # A run still in progress when the server goes away.
    live = c.create_run(exp, run_name="live").info.run_id
    c.log_param(live, "lr", "0.01")
    c.log_metric(live, "val_mAP", 0.25, step=0)

    tracking_server.stop(sig)
    # A client that logs while the server is down: MLflow's client retries until it is back.
    during: list[BaseException] = []

    def log_while_down():
        try:
            MlflowClient(tracking_server.url).log_metric(live, "val_mAP", 0.5, step=1)
        except BaseException as e:  # noqa: BLE001  (reported by the assertion below)
            during.append(e)

    writer = threading.Thread(target=log_while_down, daemon=True)
    writer.start()
    tracking_server.start()
    writer.join(timeout=240)
    assert not writer.is_alive() and not during, during

    c = MlflowClient(tracking_server.url)
    run = c.get_run(done)
    assert run.info.status == "FINISHED" and run.data.tags["kind"] == "finished"
    assert run.data.params == {f"p{i}": str(i) for i in range(10)}
    history = sorted((m.step, m.value) for m in c.get_metric_history(done, "loss"))
    assert history == [(i, 1.0 / (i + 1)) for i in range(20)]
    assert [a.path for a in c.list_artifacts(done)] == ["note.txt"]
    assert open(c.download_artifacts(done, "note.txt", str(tmp_path / "dl"))).read() == "logged before the restart\n"
    assert s3.files(run.info.artifact_uri) == {"note.txt"}

    # The run started before the stop goes on logging and finishes.
    assert c.get_run(live).info.status == "RUNNING"
    c.log_metric(live, "val_mAP", 0.75, step=2)
    c.set_terminated(live, "FINISHED")
    run = c.get_run(live)
    assert run.info.status == "FINISHED" and run.data.params == {"lr": "0.01"}
    assert sorted((m.step, m.value) for m in c.get_metric_history(live, "val_mAP")) == [(0, 0.25), (1, 0.5), (2, 0.75)]
    assert {r.info.run_id for r in c.search_runs([exp])} == {done, live}

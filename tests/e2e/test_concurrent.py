"""Two `scenesearch run` at once in one folder: one SQLite store, one workdir, one embedded dataset.

Both complete with their own parent runs and metrics: no `database is locked`, no half-written
dataset (one generates it, the other waits), no metric of one run in the other, and every
registered version decided once. The server-side twin is in tests/integration/test_outages.py.
"""

import os
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from scenesearch import registry, tracking

pytestmark = pytest.mark.slow
# The smoke preset without the CVAE and with one shard: the concurrency, not the training, is under test.
LIGHT = ["--preset", "smoke", "--set", "methods={vgg_baseline: {}, random: {}}", "--set", "cluster.shards=1"]


def start_runs(cwd, n: int, extra_env: dict | None = None, args: list[str] = ()) -> list[subprocess.Popen]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | (extra_env or {})
    return [
        subprocess.Popen(
            [sys.executable, "-m", "scenesearch.cli", "run", *LIGHT, *args, "--workdir", str(cwd / "runs")],
            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )
        for _ in range(n)
    ]


def finish(procs, cwd) -> list[str]:
    outs = []
    for i, p in enumerate(procs):
        out, _ = p.communicate(timeout=1200)
        (cwd / f"run{i}.log").write_text(out)
        assert p.returncode == 0, f"run {i} failed; its output is in {cwd / f'run{i}.log'}\n{out[-3000:]}"
        assert "database is locked" not in out and "Traceback" not in out, out[-3000:]
        outs.append(out)
    return outs


def check_concurrent(client, outs, check) -> None:
    """Each run's own parent, finished, with its own steps and metrics; both decided once per version."""
    exp = client.get_experiment_by_name("scenesearch-smoke")
    parents = [r for r in client.search_runs([exp.experiment_id]) if tracking.PARENT_TAG not in r.data.tags]
    mine = [[r for r in parents if r.info.run_id in out] for out in outs]
    assert all(len(m) == 1 for m in mine), [r.info.run_name for r in parents]
    a, b = (m[0] for m in mine)
    assert a.info.run_id != b.info.run_id and a.info.run_name != b.info.run_name
    for parent in (a, b):
        check(client, parent.info.run_id)
    quality = [{k: v for k, v in p.data.metrics.items() if k.startswith("test_")} for p in (a, b)]
    assert quality[0] and quality[0] == pytest.approx(quality[1], abs=1e-9)  # same data, same seed
    versions = client.search_model_versions("name = 'scenesearch-smoke'")
    assert len(versions) == 2  # vgg_baseline from each run (random answers no query image: not served)
    assert all(registry.PENDING_TAG not in v.tags and v.tags["promotion"].startswith(("champion", "challenger")) for v in versions)
    assert sum("there is no champion yet" in v.tags["promotion"] for v in versions) == 1


def test_two_runs_at_once_on_one_sqlite_store_both_complete_with_their_own_runs(tmp_path, pipeline_run_check):
    procs = start_runs(tmp_path, 2)  # no --data: both want the embedded dataset, which does not exist yet
    outs = finish(procs, tmp_path)
    assert sum("generating the embedded benchmark" in out for out in outs) == 1
    check_concurrent(MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}"), outs, pipeline_run_check)

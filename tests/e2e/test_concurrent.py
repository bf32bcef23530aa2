"""Two `scenesearch run` at once in one folder: one SQLite store, one workdir, one embedded dataset.

Both complete with their own parent runs and metrics: no `database is locked`, no half-written
dataset (one generates it, the other waits), no metric of one run in the other, and every
registered version decided once. The runs are the session's `nano_pair` (tests/e2e/conftest.py),
also the kill chain's uninterrupted reference; the server-side twin is in
tests/integration/test_outages.py.
"""

import pytest
from mlflow.tracking import MlflowClient

from scenesearch import registry, tracking

pytestmark = pytest.mark.slow


def check_concurrent(client, outs, check, name: str) -> None:
    """Each run's own parent, finished, with its own steps and metrics; both decided once per version."""
    exp = client.get_experiment_by_name(name)  # the nano preset names its experiment and model alike
    parents = [r for r in client.search_runs([exp.experiment_id]) if tracking.PARENT_TAG not in r.data.tags]
    mine = [[r for r in parents if r.info.run_id in out] for out in outs]
    assert all(len(m) == 1 for m in mine), [r.info.run_name for r in parents]
    a, b = (m[0] for m in mine)
    assert a.info.run_id != b.info.run_id and a.info.run_name != b.info.run_name
    for parent in (a, b):
        check(client, parent.info.run_id)
    quality = [{k: v for k, v in p.data.metrics.items() if k.startswith("test_")} for p in (a, b)]
    assert quality[0] and quality[0] == pytest.approx(quality[1], abs=1e-9)  # same data, same seed
    versions = client.search_model_versions(f"name = '{name}'")
    assert len(versions) == 4  # cvae1 and vgg_baseline from each run (random answers no query image: not served)
    assert all(registry.PENDING_TAG not in v.tags and v.tags["promotion"].startswith(("champion", "challenger")) for v in versions)
    assert sum("there is no champion yet" in v.tags["promotion"] for v in versions) == 1


def test_two_runs_at_once_on_one_sqlite_store_both_complete_with_their_own_runs(nano_pair, pipeline_run_check):
    for out in nano_pair.outs:
        assert "database is locked" not in out and "Traceback" not in out, out[-3000:]
    assert sum("generating the embedded benchmark" in out for out in nano_pair.outs) == 1
    check_concurrent(MlflowClient(nano_pair.uri), nano_pair.outs, pipeline_run_check, "scenesearch-nano")

"""What MLflow's UI shows of our runs: the experiment kind, dataset inputs, output models, the UI command.

Against a real SQLite store (the `mlflow_uri` fixture: sqlite:///<tmp>/mlruns.db).
"""

import json
from pathlib import Path

import pytest

from scenesearch import tracking

REPO = Path(tracking.__file__).resolve().parent.parent


# ---------------------------------------------------------------- experiment kind


def test_new_experiment_is_tagged_model_training(mlflow_uri):
    c = tracking.client(mlflow_uri)
    exp = tracking.ensure_experiment(c, "scenesearch", mlflow_uri)
    assert c.get_experiment(exp).tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"


def test_existing_experiment_is_tagged_once(mlflow_uri):
    c = tracking.client(mlflow_uri)
    exp = c.create_experiment("older")  # made before the tag existed
    assert tracking.EXPERIMENT_KIND_TAG not in c.get_experiment(exp).tags
    assert tracking.ensure_experiment(c, "older", mlflow_uri) == exp
    tags = c.get_experiment(exp).tags
    assert tags[tracking.EXPERIMENT_KIND_TAG] == tracking.EXPERIMENT_KIND_ML
    assert tracking.ensure_experiment(c, "older", mlflow_uri) == exp
    tracking.tag_experiment(c, exp)
    assert c.get_experiment(exp).tags == tags


def test_a_genai_experiment_is_switched_to_model_training(mlflow_uri):
    c = tracking.client(mlflow_uri)
    exp = c.create_experiment("was-genai", tags={tracking.EXPERIMENT_KIND_TAG: "genai_development"})
    tracking.tag_experiment(c, exp)
    assert c.get_experiment(exp).tags[tracking.EXPERIMENT_KIND_TAG] == tracking.EXPERIMENT_KIND_ML


# ---------------------------------------------------------------- dataset inputs


def _run(c, uri):
    return c.create_run(tracking.ensure_experiment(c, "scenesearch", uri)).info.run_id


def test_log_dataset_is_a_run_input(mlflow_uri, tmp_path):
    c = tracking.client(mlflow_uri)
    run_id = _run(c, mlflow_uri)
    counts = {"scenes": 12, "views": 144, "classes": 3}
    tracking.log_dataset(c, run_id, "embedded", "fp-abc", str(tmp_path / "data"), extra=counts)
    (inp,) = c.get_run(run_id).inputs.dataset_inputs
    d = inp.dataset
    assert (d.name, d.digest, d.source_type) == ("embedded", "fp-abc", "local")
    assert json.loads(d.source) == {"uri": (tmp_path / "data").as_uri()}
    assert json.loads(d.profile) == counts
    assert {t.key: t.value for t in inp.tags} == {"mlflow.data.context": "training"}


def test_log_dataset_s3_source_and_context(mlflow_uri):
    c = tracking.client(mlflow_uri)
    run_id = _run(c, mlflow_uri)
    tracking.log_dataset(c, run_id, "shapenet", "fp-s3", "s3:/bucket/datasets/shapenet", context="evaluation")
    (inp,) = c.get_run(run_id).inputs.dataset_inputs
    assert (inp.dataset.source_type, json.loads(inp.dataset.source)) == ("s3", {"uri": "s3://bucket/datasets/shapenet"})
    assert inp.dataset.profile is None
    assert {t.key: t.value for t in inp.tags} == {"mlflow.data.context": "evaluation"}


def test_log_dataset_twice_keeps_one_input(mlflow_uri, tmp_path):
    c = tracking.client(mlflow_uri)
    run_id = _run(c, mlflow_uri)
    for _ in range(2):
        tracking.log_dataset(c, run_id, "embedded", "fp-abc", str(tmp_path))
    assert len(c.get_run(run_id).inputs.dataset_inputs) == 1


# ---------------------------------------------------------------- output models


def _log_tiny_model(uri, run_id=None):
    """A trivial pyfunc model, logged inside `run_id` when given; its model id."""
    import mlflow

    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input: list[str], params=None) -> list[str]:
            return model_input

    mlflow.set_tracking_uri(uri)
    if run_id is None:
        return mlflow.pyfunc.log_model(name="model", python_model=Echo(), pip_requirements=["mlflow"]).model_id
    with mlflow.start_run(run_id=run_id):
        return mlflow.pyfunc.log_model(name="model", python_model=Echo(), pip_requirements=["mlflow"]).model_id


def _outputs(c, run_id):
    outputs = c.get_run(run_id).outputs
    return [(o.model_id, o.step) for o in (outputs.model_outputs if outputs else [])]


def test_model_logged_in_a_run_is_linked_once(mlflow_uri):
    c = tracking.client(mlflow_uri)
    run_id = _run(c, mlflow_uri)
    model_id = _log_tiny_model(mlflow_uri, run_id)
    assert _outputs(c, run_id) == [(model_id, 0)]  # log_model inside the run links it already
    tracking.link_model(c, run_id, model_id)
    tracking.link_model(c, run_id, model_id)
    assert _outputs(c, run_id) == [(model_id, 0)]


def test_link_model_to_another_run(mlflow_uri):
    """The parent run shows the model a child run logged, and a finished run can still be linked."""
    c = tracking.client(mlflow_uri)
    parent, child = _run(c, mlflow_uri), _run(c, mlflow_uri)
    model_id = _log_tiny_model(mlflow_uri, child)
    c.set_terminated(parent, "FINISHED")
    assert _outputs(c, parent) == []
    tracking.link_model(c, parent, model_id, step=3)
    assert _outputs(c, parent) == [(model_id, 3)]
    assert _outputs(c, child) == [(model_id, 0)]


# ---------------------------------------------------------------- the UI command


def test_ui_command_for_the_makefile_store():
    assert tracking.ui_command(f"sqlite:///{REPO / 'mlruns.db'}") == "make ui"


def test_ui_command_for_another_sqlite_store(tmp_path):
    cmd = tracking.ui_command(f"sqlite:///{tmp_path / 'mlruns.db'}")
    assert cmd.startswith("MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false ")
    assert f" ui --backend-store-uri sqlite:///{tmp_path / 'mlruns.db'} --host 127.0.0.1 --port 5000 --workers 1" in cmd
    assert cmd.split()[1].endswith("mlflow")


def test_ui_command_for_a_relative_sqlite_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert f"--backend-store-uri sqlite:///{tmp_path / 'mlruns.db'} " in tracking.ui_command("sqlite:///mlruns.db")
    monkeypatch.chdir(REPO)
    assert tracking.ui_command("sqlite:///mlruns.db") == "make ui"


@pytest.mark.parametrize("uri", ["http://mlflow.kubeflow.svc:5000", "https://mlflow.example.org"])
def test_ui_command_for_a_tracking_server(uri):
    assert tracking.ui_command(uri) == f"open {uri} in a browser"


def test_runs_page_url():
    assert tracking.runs_page_url("http://127.0.0.1:5000/", "7") == "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning"
    assert tracking.runs_page_url("http://h:1", "7", "abc") == "http://h:1/#/experiments/7/runs/abc?workflowType=machine_learning"


# ---------------------------------------------------------------- the screenshot check's refusals


def _screenshot_tool():
    import importlib.util

    spec = importlib.util.spec_from_file_location("ui_screenshot", REPO / "infra" / "tools" / "ui_screenshot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_screenshot_without_chromium_says_how_to_install_it(monkeypatch, tmp_path, capsys):
    tool = _screenshot_tool()
    monkeypatch.delenv("CHROMIUM", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert tool.main(["--out", str(tmp_path / "shots")]) == 1
    assert capsys.readouterr().err == "ui_screenshot: chromium not found; install it with apt-get install chromium\n"
    assert not (tmp_path / "shots").exists()


def test_screenshot_without_a_store_says_what_to_run(monkeypatch, tmp_path, capsys):
    tool = _screenshot_tool()
    monkeypatch.setattr(tool, "find_chromium", lambda: "/usr/bin/chromium")
    assert tool.main(["--store", f"sqlite:///{tmp_path / 'none.db'}", "--out", str(tmp_path / "shots")]) == 1
    assert "no MLflow store at" in capsys.readouterr().err

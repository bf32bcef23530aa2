"""The MLflow model registry: register trained models, keep `champion` on the best version.

A version carries tags, whichever method it is: method, variant, key (the variant's or the
method's name), dataset_fingerprint, git_commit and its test metrics. `champion` moves to a new
version only when its metric (``RunConfig.registry_metric()``, higher is
better) beats the current champion's on the same dataset fingerprint, or when there is no
champion; otherwise the new version becomes `challenger` and the reason is recorded. Aliases,
not stages: stages are deprecated in MLflow.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from scenesearch.errors import DataError, ScenesearchError

CHAMPION, CHALLENGER = "champion", "challenger"


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def tag_value(tags: dict, metric: str) -> float:
    """A metric stored as a version tag; NaN when absent or not a number."""
    try:
        return float(tags.get(metric, "nan"))
    except ValueError:
        return math.nan


def decide(metric: str, value: float, fingerprint: str, champion_tags: dict | None) -> Decision:
    """Whether a version with `value` of `metric` on `fingerprint` should become champion.

    Args:
        champion_tags: the current champion's tags, or None when there is no champion.
    """
    if not math.isfinite(value):
        return Decision(False, f"its {metric} is {value}")
    if champion_tags is None:
        return Decision(True, "there is no champion yet")
    if champion_tags.get("dataset_fingerprint") != fingerprint:
        return Decision(False, f"the champion was measured on another dataset (fingerprint {champion_tags.get('dataset_fingerprint')}, this one {fingerprint}); promote by hand with --force")
    best = tag_value(champion_tags, metric)
    if not math.isfinite(best):
        return Decision(True, f"the champion has no {metric}")
    if value > best:
        return Decision(True, f"{metric} {value:.4f} beats the champion's {best:.4f}")
    return Decision(False, f"{metric} {value:.4f} does not beat the champion's {best:.4f}")


def champion_tags(client, name: str) -> dict | None:
    from mlflow.exceptions import MlflowException

    try:
        return dict(client.get_model_version_by_alias(name, CHAMPION).tags)
    except MlflowException:  # no registered model, or no champion alias yet
        return None


def apply(client, name: str, version: str, decision: Decision) -> str:
    """Set `champion` or `challenger` on `version` as decided; returns the alias set."""
    alias = CHAMPION if decision.promote else CHALLENGER
    client.set_registered_model_alias(name, alias, version)
    client.set_model_version_tag(name, version, "promotion", f"{alias}: {decision.reason}")
    return alias


@dataclass(frozen=True)
class Registered:
    key: str
    version: str
    alias: str
    reason: str
    metric: float


def register(client, name: str, model_uri: str, metric: str, value: float, fingerprint: str, tags: dict[str, str]) -> Registered:
    """Register `model_uri` as a new version of `name` and set its alias by `decide`."""
    import mlflow

    try:
        client.get_registered_model(name)
    except Exception:  # noqa: BLE001 - absent: create it (a concurrent creation is fine too)
        try:
            client.create_registered_model(name, description="scenesearch retrieval models: images in, ranked scenes out")
        except Exception:  # noqa: BLE001
            pass
    all_tags = {**tags, metric: f"{value:.6f}", "dataset_fingerprint": fingerprint}
    mv = mlflow.register_model(model_uri, name, tags=all_tags)
    decision = decide(metric, value, fingerprint, champion_tags(client, name))
    alias = apply(client, name, mv.version, decision)
    return Registered(tags.get("key", ""), str(mv.version), alias, decision.reason, value)


def promote(tracking_uri: str, name: str, version: str, force: bool = False, metric: str = "test_mAP") -> Decision:
    """`scenesearch promote`: make `version` champion if its `metric` beats the champion's (or with force).

    Raises:
        ScenesearchError: unknown model or version, or the check fails without force.
    """
    from mlflow.exceptions import MlflowException

    from scenesearch import tracking

    client = tracking.client(tracking_uri)
    try:
        mv = client.get_model_version(name, str(version))
    except MlflowException:
        raise ScenesearchError(f"registered model '{name}' has no version {version} in {tracking_uri}") from None
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:  # no champion yet
        champion = None
    if champion is not None and str(champion.version) == str(version):
        return Decision(True, f"version {version} is already the champion")
    if force:
        decision = Decision(True, "promoted by hand with --force")
    else:
        tags = dict(mv.tags)
        decision = decide(metric, tag_value(tags, metric), tags.get("dataset_fingerprint", ""), dict(champion.tags) if champion else None)
        if not decision.promote:
            raise ScenesearchError(f"version {version} was not promoted: {decision.reason}")
    apply(client, name, str(version), decision)
    return decision


def version_tags(record: dict, metrics: dict[str, float], commit: str) -> dict[str, str]:
    """The tags of a new version: method, variant, key, git commit and every test metric."""
    return {
        "method": record["method"],
        "variant": record["variant"] or "-",
        "key": record["key"],
        "git_commit": commit,
        **{k: f"{v:.6f}" for k, v in metrics.items() if k.startswith("test_")},
    }


def run(model_dirs: list[str], report_dir: str, fingerprint: str, tracking_uri: str, name: str, metric: str, commit: str) -> list[Registered]:
    """The register step: every served model in `model_dirs` (each with mlflow.json, written when the
    train step logged it) becomes a version of `name`, tagged with its metrics from the evaluate report.
    Folders whose mlflow.json has no model URI are methods that cannot answer a query image: skipped.

    Raises:
        DataError: the report lacks the metric of a model.
    """
    from scenesearch import storage, tracking, train

    import mlflow

    report = json.loads(storage.read_bytes(Path(report_dir) / "metrics.json"))
    client = tracking.client(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)  # mlflow.register_model resolves models:/ URIs through it
    out = []
    for d in model_dirs:
        logged = json.loads(storage.read_bytes(Path(d) / "mlflow.json")) if storage.exists(Path(d) / "mlflow.json") else {}
        if not logged.get("model_uri"):
            continue
        record = train.read_record(d)
        values = report.get(record["key"])
        if values is None or metric not in values:
            raise DataError(f"the evaluate report has no {metric} for {record['key']}; check registry.metric and evaluate.splits")
        out.append(register(client, name, logged["model_uri"], metric, float(values[metric]), fingerprint, version_tags(record, values, commit)))
    return out

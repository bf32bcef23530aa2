"""The MLflow model registry: register trained models, keep `champion` on the best version.

A version carries tags, whichever method it is: method, variant, key (the variant's or the
method's name), dataset_fingerprint, git_commit and its test metrics. `champion` moves to a new
version only when its metric (``RunConfig.registry_metric()``, higher is
better) beats the current champion's on the same dataset fingerprint, or when there is no
champion; otherwise the new version becomes `challenger` and the reason is recorded. Better means
strictly better at the precision the tags store (`TAG_DIGITS` decimals): a tie keeps the champion,
and says so. Aliases, not stages: stages are deprecated in MLflow.

Two runs may register at once, and a run may be killed mid-registration. So a new version is
created tagged ``registration: pending <owner>``; the decision is then made under the registry
lock (`lock`: a registered model ``<name>.lock`` that exists only while someone decides; creating
a registered model is atomic in every MLflow store, a SQLite file or a server), written as the
version's ``promotion`` tag, applied as its alias, and only then is the pending tag removed. The
champion is thus decided once per version. `repair`, run under the lock before every decision
and by the next `scenesearch run`, finishes what a dead owner left: a pending version with a
decision gets its alias (no decision was made after it: it held the lock), one without a decision
is deleted (its run registers again when rerun).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from scenesearch.errors import DataError, ScenesearchError

CHAMPION, CHALLENGER = "champion", "challenger"
PENDING_TAG = "registration"  # "pending <owner>" until the version's alias is set
LOCK_SUFFIX = ".lock"
LOCK_TIMEOUT_S = 300.0  # wait this long for another registration to finish
LOCK_STALE_S = 900.0  # a lock older than this is taken over whoever holds it (a decision takes seconds)
TAG_DIGITS = 6  # decimals of the metrics in version tags; the champion is compared at this precision


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
    # The champion's value is read back from its tag: compare the new one as it would be stored,
    # or a tie (the same run twice) looks better by the digits the tag dropped.
    value = round(value, TAG_DIGITS)
    if value > best:
        return Decision(True, f"{metric} {value:.{TAG_DIGITS}f} beats the champion's {best:.{TAG_DIGITS}f}")
    if value == best:
        return Decision(False, f"{metric} {value:.{TAG_DIGITS}f} ties the champion's: a tie keeps the champion")
    return Decision(False, f"{metric} {value:.{TAG_DIGITS}f} does not beat the champion's {best:.{TAG_DIGITS}f}")


def champion_tags(client, name: str) -> dict | None:
    from mlflow.exceptions import MlflowException

    try:
        return dict(client.get_model_version_by_alias(name, CHAMPION).tags)
    except MlflowException:  # no registered model, or no champion alias yet
        return None


def apply(client, name: str, version: str, decision: Decision) -> str:
    """Record the decision on `version` (its `promotion` tag), then set `champion` or `challenger` on it; returns the alias.

    In that order, so that a version whose alias was set always says why (see the module doc).
    """
    alias = CHAMPION if decision.promote else CHALLENGER
    client.set_model_version_tag(name, version, "promotion", f"{alias}: {decision.reason}")
    client.set_registered_model_alias(name, alias, version)
    return alias


def owner_alive(client, owner: str) -> bool:
    """Whether the owner of a pending version or of the lock may still be working.

    ``run:<id>``: that MLflow run is RUNNING; ``process:<host:pid:ticks>``: that process lives
    (`tracking.driver_alive`); anything else: assumed alive.
    """
    from mlflow.exceptions import MlflowException

    from scenesearch import tracking

    kind, _, ident = owner.partition(":")
    if kind == "run":
        try:
            return client.get_run(ident).info.status == "RUNNING"
        except MlflowException:
            return False
    if kind == "process":
        return tracking.driver_alive(ident)
    return True


@contextlib.contextmanager
def lock(client, name: str, owner: str, timeout_s: float = LOCK_TIMEOUT_S, stale_s: float = LOCK_STALE_S) -> Iterator[None]:
    """Hold the registry lock of `name` for the block (see the module doc).

    A lock whose owner is dead (`owner_alive`) or older than `stale_s` is taken over.

    Raises:
        ScenesearchError: another owner held it for more than `timeout_s`.
    """
    from mlflow.exceptions import MlflowException

    lock_name = name + LOCK_SUFFIX
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.create_registered_model(lock_name, tags={"owner": owner}, description=f"held while scenesearch decides a version of {name}; deleted when done")
            break
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        try:
            held = client.get_registered_model(lock_name)
        except MlflowException:
            continue  # released meanwhile
        holder = held.tags.get("owner", "")
        age = time.time() - held.creation_timestamp / 1000
        if age > stale_s or not owner_alive(client, holder):
            with contextlib.suppress(MlflowException):
                client.delete_registered_model(lock_name)
            continue
        if time.monotonic() > deadline:
            raise ScenesearchError(f"the registry lock {lock_name} has been held by {holder} for {age:.0f} s; wait for that registration, or delete the registered model {lock_name} if its run is gone")
        time.sleep(0.2 + 0.3 * random.random())
    try:
        yield
    finally:
        with contextlib.suppress(MlflowException):
            client.delete_registered_model(lock_name)


def needs_repair(client, name: str) -> bool:
    """Whether `name` has a pending version or a lock left (cheap: no lock taken)."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name + LOCK_SUFFIX)
        return True
    except MlflowException:
        pass
    try:
        return any(mv.tags.get(PENDING_TAG, "").startswith("pending") for mv in client.search_model_versions(f"name = '{name}'"))
    except MlflowException:
        return False


def repair(client, name: str) -> list[str]:
    """Finish the registrations of dead owners (call it holding `lock`); returns one line per version touched."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return []
    notes = []
    for mv in versions:
        pending = mv.tags.get(PENDING_TAG, "")
        if not pending.startswith("pending") or owner_alive(client, pending.removeprefix("pending").strip()):
            continue
        decided = mv.tags.get("promotion", "")
        if decided:
            alias = CHAMPION if decided.startswith(CHAMPION) else CHALLENGER
            client.set_registered_model_alias(name, alias, mv.version)
            client.delete_model_version_tag(name, mv.version, PENDING_TAG)
            notes.append(f"{name} version {mv.version}: its owner died after deciding; {alias} set as decided")
        else:
            client.delete_model_version(name, mv.version)
            notes.append(f"{name} version {mv.version}: its owner died before deciding; deleted (a rerun registers it again)")
    return notes


@dataclass(frozen=True)
class Registered:
    key: str
    version: str
    alias: str
    reason: str
    metric: float


def register(client, name: str, model_uri: str, metric: str, value: float, fingerprint: str, tags: dict[str, str], owner: str = "") -> Registered:
    """Register `model_uri` as a new version of `name` and set its alias by `decide`, under the registry lock.

    Args:
        owner: who registers (``run:<parent run id>`` or ``process:<driver id>``), for `repair`.
    """
    import mlflow

    from scenesearch import tracking

    owner = owner or f"process:{tracking.driver_id()}"

    try:
        client.get_registered_model(name)
    except Exception:  # noqa: BLE001 - absent: create it (a concurrent creation is fine too)
        try:
            client.create_registered_model(name, description="scenesearch retrieval models: images in, ranked scenes out")
        except Exception:  # noqa: BLE001
            pass
    all_tags = {**tags, metric: f"{value:.6f}", "dataset_fingerprint": fingerprint, PENDING_TAG: f"pending {owner}"}
    mv = mlflow.register_model(model_uri, name, tags=all_tags)
    with lock(client, name, owner):
        repair(client, name)
        decision = decide(metric, value, fingerprint, champion_tags(client, name))
        alias = apply(client, name, mv.version, decision)
        client.delete_model_version_tag(name, mv.version, PENDING_TAG)
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
        client.get_model_version(name, str(version))
    except MlflowException:
        raise ScenesearchError(f"registered model '{name}' has no version {version} in {tracking.redact(tracking_uri)}") from None
    with lock(client, name, f"process:{tracking.driver_id()}"):
        repair(client, name)
        return _promote(client, name, str(version), force, metric)


def _promote(client, name: str, version: str, force: bool, metric: str) -> Decision:
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version(name, version)
    except MlflowException:  # deleted by `repair` just now: its registration never finished
        raise ScenesearchError(f"registered model '{name}' version {version} was never fully registered (its run died) and was removed") from None
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
        **{k: f"{v:.{TAG_DIGITS}f}" for k, v in metrics.items() if k.startswith("test_")},
    }


def run(model_dirs: list[str], report_dir: str, fingerprint: str, tracking_uri: str, name: str, metric: str, commit: str, owner: str = "") -> list[Registered]:
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
        out.append(register(client, name, logged["model_uri"], metric, float(values[metric]), fingerprint, version_tags(record, values, commit), owner))
    return out

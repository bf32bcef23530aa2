"""infra/: every kustomize overlay renders, validates against the Kubernetes schemas, and says
what the cluster setup needs (MLflow on PostgreSQL + S3, the KFP pipeline root on S3, settings
and credentials for pipeline pods, no secret in the repository).

Tools (installed into .tools/ by `make infra-tools`, which `make test` runs first):
  kubectl        its built-in kustomize renders the overlays (KUBECTL=... to use another)
  kubernetes-validate  the Kubernetes JSON schemas, strict variants: unknown fields fail
A missing tool fails these tests with the command that installs it; nothing is skipped.

Each overlay is rendered from a temporary copy of infra/ whose untracked *.env files are
written here from the committed *.env.example templates, with a unique marker per value, so
the test can follow every secret value through the output.
"""

import base64
import os
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
OVERLAYS = ("local", "production")
TOOLS = ROOT / ".tools"
KUBECTL = Path(os.environ.get("KUBECTL", TOOLS / "bin" / "kubectl"))
INSTALL_HINT = "run `make infra-tools` (installs kubectl and the schemas into .tools/)"

# The Kubernetes version the schemas are taken from: the kind node image in infra/README.md.
KUBERNETES_VERSION = "1.35"

# Custom resources need their CRD's schema. None is rendered today; a kind listed here would
# be checked for apiVersion/kind/metadata only, so list one only with the reason beside it.
CRD_KINDS_WITHOUT_SCHEMA: dict[str, str] = {}

# What pipeline pods mount with kfp-kubernetes (use_config_map_as_env / use_secret_as_env).
PIPELINE_ENV_CONFIGMAP = "scenesearch-env"
PIPELINE_S3_SECRET = "scenesearch-s3"
TRACKING_URI = "http://mlflow.scenesearch.svc:5000"
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job")
SENSITIVE_ENV = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY", re.IGNORECASE)


# ---------------------------------------------------------------------------------------------
# tools and rendering


def _kubernetes_validate():
    if str(TOOLS / "python") not in sys.path:
        sys.path.append(str(TOOLS / "python"))
    try:
        import kubernetes_validate
    except ImportError as exc:
        pytest.fail(f"kubernetes-validate is missing ({exc}): {INSTALL_HINT}", pytrace=False)
    return kubernetes_validate


def _kubectl() -> Path:
    if not (KUBECTL.is_file() and os.access(KUBECTL, os.X_OK)):
        pytest.fail(f"kubectl (for kustomize) not found at {KUBECTL}: {INSTALL_HINT}",
                    pytrace=False)
    return KUBECTL


def _kustomize(directory: Path) -> str:
    proc = subprocess.run(
        [str(_kubectl()), "kustomize", str(directory)], capture_output=True, text=True, timeout=120
    )
    if proc.returncode != 0:
        pytest.fail(f"kustomize build {directory} failed:\n{proc.stderr}", pytrace=False)
    return proc.stdout


def _copy_infra(dest: Path) -> Path:
    """infra/ without any untracked .env a developer may have, plus .env files from the templates.

    Returns the copy; every value in a written .env is a fresh marker, recorded in `MARKERS`.
    """
    copy = dest / "infra"
    shutil.copytree(INFRA, copy, ignore=shutil.ignore_patterns("*.env", "__pycache__"))
    for example in sorted(copy.rglob("*.env.example")):
        lines = []
        for line in example.read_text().splitlines():
            key, sep, _ = line.partition("=")
            if sep and not line.lstrip().startswith("#"):
                marker = f"marker{secrets.token_hex(8)}"
                MARKERS[marker] = f"{example.relative_to(copy)}:{key}"
                lines.append(f"{key}={marker}")
        example.with_name(example.name.removesuffix(".example")).write_text("\n".join(lines) + "\n")
    return copy


MARKERS: dict[str, str] = {}  # secret value written into a .env -> "file:key"


class Rendered:
    """One overlay's output: the YAML text and its objects, looked up by kind, namespace, name."""

    def __init__(self, text: str):
        self.text = text
        self.objects = [o for o in yaml.safe_load_all(text) if o]

    def all(self, kind: str) -> list[dict]:
        return [o for o in self.objects if o["kind"] == kind]

    def find(self, kind: str, name: str, namespace: str | None = None) -> dict | None:
        """The object; generated names match with or without their hash suffix."""
        for o in self.all(kind):
            meta = o["metadata"]
            if namespace is not None and meta.get("namespace") != namespace:
                continue
            hashed = re.fullmatch(rf"{re.escape(name)}-[a-z0-9]{{10}}", meta["name"])
            if meta["name"] == name or hashed:
                return o
        return None

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict:
        obj = self.find(kind, name, namespace)
        assert obj is not None, f"{kind} {namespace or '*'}/{name} is not rendered"
        return obj


@pytest.fixture(scope="module")
def infra_copy(tmp_path_factory) -> Path:
    return _copy_infra(tmp_path_factory.mktemp("infra"))


@pytest.fixture(scope="module")
def rendered(infra_copy) -> dict[str, Rendered]:
    return {name: Rendered(_kustomize(infra_copy / "overlays" / name)) for name in OVERLAYS}


# ---------------------------------------------------------------------------------------------
# helpers over pod specs


def _pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def _workloads(r: Rendered) -> list[dict]:
    return [o for o in r.objects if o["kind"] in WORKLOAD_KINDS]


def _data(obj: dict) -> dict[str, str]:
    """ConfigMap or Secret data as text."""
    if obj["kind"] == "Secret":
        return {k: base64.b64decode(v).decode() for k, v in obj.get("data", {}).items()}
    return dict(obj.get("data", {}))


def _container_env(r: Rendered, workload: dict, container: dict) -> dict[str, str]:
    """The container's environment as Kubernetes builds it; secret values become secretref.NAME.KEY.

    Fails when a referenced ConfigMap, Secret or key is not in the rendered output.
    """
    ns = workload["metadata"]["namespace"]
    env: dict[str, str] = {}

    def source(kind: str, name: str) -> dict:
        obj = r.find(kind, name, ns)
        assert obj is not None and obj["metadata"]["name"] == name, (
            f"{workload['kind']} {ns}/{workload['metadata']['name']} refers to {kind} {name}, "
            f"which is not rendered in namespace {ns}"
        )
        return obj

    for item in container.get("envFrom", []):
        if "configMapRef" in item:
            env.update(_data(source("ConfigMap", item["configMapRef"]["name"])))
        else:
            name = item["secretRef"]["name"]
            env.update({k: f"secretref.{name}.{k}" for k in _data(source("Secret", name))})
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = _expand(item["value"], env)
            continue
        ref = item["valueFrom"]
        kind, key_ref = ("ConfigMap", ref["configMapKeyRef"]) if "configMapKeyRef" in ref else (
            "Secret", ref["secretKeyRef"])
        data = _data(source(kind, key_ref["name"]))
        assert key_ref["key"] in data, f"{kind} {key_ref['name']} has no key {key_ref['key']}"
        if kind == "ConfigMap":
            env[item["name"]] = data[key_ref["key"]]
        else:
            env[item["name"]] = f"secretref.{key_ref['name']}.{key_ref['key']}"
    return env


def _expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion; an undefined variable fails (Kubernetes would leave it)."""

    def repl(m: re.Match) -> str:
        assert m.group(1) in env, f"$({m.group(1)}) is not defined in the container's environment"
        return env[m.group(1)]

    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", repl, text)


def _mlflow(r: Rendered) -> tuple[dict, dict, list[str], dict[str, str]]:
    """The MLflow Deployment, its container, its expanded command line and environment."""
    deployment = r.get("Deployment", "mlflow", "scenesearch")
    [container] = _pod_spec(deployment)["containers"]
    env = _container_env(r, deployment, container)
    argv = [_expand(a, env) for a in container.get("command", []) + container.get("args", [])]
    return deployment, container, argv, env


def _flag(argv: list[str], flag: str) -> str:
    assert flag in argv, f"mlflow server has no {flag}: {argv}"
    return argv[argv.index(flag) + 1]


def _providers(r: Rendered) -> tuple[dict, dict]:
    launcher = r.get("ConfigMap", "kfp-launcher")
    return launcher, yaml.safe_load(launcher["data"]["providers"])


# ---------------------------------------------------------------------------------------------
# the tools


def test_tools_are_the_pinned_ones():
    out = subprocess.run(
        [str(_kubectl()), "version", "--client"], capture_output=True, text=True
    ).stdout
    assert re.search(r"Kustomize Version: v5\.", out), f"kubectl's kustomize is not v5: {out}"
    kv = _kubernetes_validate()
    assert KUBERNETES_VERSION in {v.rsplit(".", 1)[0] for v in kv.utils.all_versions()}


# ---------------------------------------------------------------------------------------------
# schema validation


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_against_the_kubernetes_schemas(rendered, overlay):
    kv = _kubernetes_validate()
    errors = []
    for obj in rendered[overlay].objects:
        meta = obj.get("metadata", {})
        what = f"{obj.get('kind')} {meta.get('namespace', '-')}/{meta.get('name')}"
        if obj.get("kind") in CRD_KINDS_WITHOUT_SCHEMA:
            assert {"apiVersion", "kind", "metadata"} <= obj.keys(), what
            continue
        try:
            version = kv.validate(obj, KUBERNETES_VERSION, strict=True)
        except kv.utils.ValidationError as exc:
            errors.append(f"{what}: {'.'.join(map(str, exc.path))}: {exc.message}")
        except kv.utils.SchemaNotFoundError as exc:
            errors.append(f"{what}: {exc.message} (a custom resource needs its CRD schema)")
        else:
            assert version == KUBERNETES_VERSION, f"{what} was validated against {version}"
    assert not errors, f"{overlay}: invalid objects:\n" + "\n".join(errors)


# ---------------------------------------------------------------------------------------------
# the MLflow tracking server


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_mlflow_server_uses_postgres_and_s3(rendered, overlay):
    r = rendered[overlay]
    _, _, argv, env = _mlflow(r)
    assert argv[:2] == ["mlflow", "server"], argv
    backend = urlparse(_flag(argv, "--backend-store-uri"))
    assert backend.scheme == "postgresql" and backend.hostname and backend.path.strip("/"), backend
    assert backend.password is None, "the database password belongs in PGPASSWORD, not the URI"
    assert env["PGPASSWORD"].startswith("secretref.mlflow-db"), env["PGPASSWORD"]
    artifacts = urlparse(_flag(argv, "--artifacts-destination"))
    assert artifacts.scheme == "s3" and artifacts.netloc and artifacts.path == "/mlflow", artifacts
    assert "--serve-artifacts" in argv
    assert _flag(argv, "--host") == "0.0.0.0"
    assert int(_flag(argv, "--workers")) >= 1
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert env["MLFLOW_DISABLE_TELEMETRY"] == "true"
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[key].startswith("secretref."), f"{key} must come from a Secret"
    if overlay == "local":
        assert backend.hostname == "postgres", "local: the in-cluster PostgreSQL Service"
        assert urlparse(env["MLFLOW_S3_ENDPOINT_URL"]).hostname == "minio.scenesearch.svc"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_mlflow_answers_the_tracking_uri_pipeline_pods_use(rendered, overlay):
    r = rendered[overlay]
    _, container, _, env = _mlflow(r)
    uri = urlparse(TRACKING_URI)
    service = r.get("Service", "mlflow", "scenesearch")
    assert uri.hostname == "mlflow.scenesearch.svc"
    assert uri.port in [p["port"] for p in service["spec"]["ports"]]
    # MLflow rejects Host headers outside its allowed list (DNS-rebinding guard).
    allowed = env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert uri.netloc in allowed and "localhost:*" in allowed, allowed
    assert container["ports"][0]["containerPort"] == uri.port


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_mlflow_probes_hit_health(rendered, overlay):
    _, container, _, _ = _mlflow(rendered[overlay])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health", probe


def test_mlflow_image_is_the_derived_one_pinned_to_3_17_2(rendered):
    dockerfile = (INFRA / "mlflow" / "Dockerfile").read_text()
    assert re.search(r"^FROM ghcr\.io/mlflow/mlflow:v3\.17\.2$", dockerfile, re.M)
    for pin in (r"mlflow==3\.17\.2", r"psycopg\[binary\]==[\d.]+", r"boto3==[\d.]+"):
        assert re.search(pin, dockerfile), pin
    for overlay in OVERLAYS:
        _, container, _, _ = _mlflow(rendered[overlay])
        assert container["image"].endswith("mlflow:3.17.2"), container["image"]


# ---------------------------------------------------------------------------------------------
# every workload


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_requests_limits_and_probes(rendered, overlay):
    for workload in _workloads(rendered[overlay]):
        for c in _pod_spec(workload)["containers"]:
            what = f"{workload['kind']} {workload['metadata']['name']}/{c['name']}"
            for part in ("requests", "limits"):
                amounts = c.get("resources", {}).get(part, {})
                assert {"cpu", "memory"} <= amounts.keys(), f"{what}: {part}"
            if workload["kind"] != "Job":
                assert "readinessProbe" in c and "livenessProbe" in c, f"{what}: probes"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_runs_as_non_root_restricted(rendered, overlay):
    """Pod Security 'restricted', which the scenesearch namespace enforces."""
    r = rendered[overlay]
    namespace = r.get("Namespace", "scenesearch")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for workload in _workloads(r):
        pod = _pod_spec(workload)
        what = f"{workload['kind']} {workload['metadata']['name']}"
        assert pod["securityContext"]["runAsNonRoot"] is True, what
        assert pod["securityContext"].get("runAsUser", 1) != 0, what
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", what
        assert not {"hostNetwork", "hostPID", "hostIPC"} & pod.keys(), what
        assert all("hostPath" not in v for v in pod.get("volumes", [])), what
        for c in pod.get("initContainers", []) + pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, f"{what}/{c['name']}"
            assert sc["capabilities"]["drop"] == ["ALL"], f"{what}/{c['name']}"
            assert not sc.get("privileged"), f"{what}/{c['name']}"


# ---------------------------------------------------------------------------------------------
# what each overlay runs


def test_local_runs_postgres_and_minio_in_the_cluster(rendered):
    r = rendered["local"]
    postgres = r.get("StatefulSet", "postgres", "scenesearch")
    assert postgres["spec"]["volumeClaimTemplates"], "PostgreSQL keeps its data on a PVC"
    assert r.get("Service", "postgres", "scenesearch")["spec"]["ports"][0]["port"] == 5432
    minio = r.get("Deployment", "minio", "scenesearch")
    claims = [v["persistentVolumeClaim"]["claimName"]
              for v in _pod_spec(minio)["volumes"] if "persistentVolumeClaim" in v]
    assert claims and all(r.find("PersistentVolumeClaim", c, "scenesearch") for c in claims), claims
    assert 9000 in [p["port"] for p in r.get("Service", "minio", "scenesearch")["spec"]["ports"]]

    # The bucket Job creates the bucket that MLflow and the pipeline root use.
    job = r.get("Job", "minio-buckets", "scenesearch")
    [mc] = _pod_spec(job)["containers"]
    job_env = _container_env(r, job, mc)
    assert "mc mb --ignore-existing" in mc["args"][0]
    _, _, argv, _ = _mlflow(r)
    launcher, _ = _providers(r)
    buckets = {urlparse(_flag(argv, "--artifacts-destination")).netloc,
               urlparse(launcher["data"]["defaultPipelineRoot"]).netloc}
    assert buckets == {job_env["S3_BUCKET"]}, buckets
    assert urlparse(job_env["MC_HOST_scenesearch"]).hostname == "minio.scenesearch.svc"


def test_production_runs_neither_postgres_nor_minio(rendered):
    r = rendered["production"]
    assert not r.all("StatefulSet") and not r.all("PersistentVolumeClaim") and not r.all("Job")
    images = [c["image"] for w in _workloads(r) for c in _pod_spec(w)["containers"]]
    assert not [i for i in images if "postgres" in i or "minio" in i], images
    assert [w["metadata"]["name"] for w in _workloads(r)] == ["mlflow"]
    _, _, argv, env = _mlflow(r)
    assert urlparse(_flag(argv, "--backend-store-uri")).hostname not in ("postgres", "localhost")
    assert env["PGSSLMODE"] in ("require", "verify-ca", "verify-full")


# ---------------------------------------------------------------------------------------------
# KFP: pipeline root and what pipeline pods mount


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kfp_launcher_puts_the_pipeline_root_on_s3(rendered, overlay):
    r = rendered[overlay]
    launcher, providers = _providers(r)
    assert launcher["metadata"]["name"] == "kfp-launcher", "KFP looks it up by this exact name"
    root = urlparse(launcher["data"]["defaultPipelineRoot"])
    assert root.scheme == "s3" and root.netloc and root.path == "/pipeline-root", root
    s3 = providers["s3"]["default"]
    assert {"endpoint", "region", "disableSSL", "credentials"} <= s3.keys(), s3
    ref = s3["credentials"]["secretRef"]
    assert s3["credentials"]["fromEnv"] is False
    secret = r.get("Secret", ref["secretName"], launcher["metadata"]["namespace"])
    assert {ref["accessKeyKey"], ref["secretKeyKey"]} <= _data(secret).keys()
    # The same bucket as MLflow's artifacts.
    _, _, argv, _ = _mlflow(r)
    assert root.netloc == urlparse(_flag(argv, "--artifacts-destination")).netloc
    if overlay == "local":
        env = _data(r.get("ConfigMap", PIPELINE_ENV_CONFIGMAP))
        assert s3["endpoint"] == urlparse(env["AWS_ENDPOINT_URL"]).netloc
        assert s3["disableSSL"] is True and s3["forcePathStyle"] is True


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pipeline_pods_get_tracking_uri_and_s3_credentials(rendered, overlay):
    r = rendered[overlay]
    launcher, _ = _providers(r)
    namespace = launcher["metadata"]["namespace"]
    assert namespace == "kubeflow"
    env = r.get("ConfigMap", PIPELINE_ENV_CONFIGMAP, namespace)
    secret = r.get("Secret", PIPELINE_S3_SECRET, namespace)
    # Fixed names, so that kfp-kubernetes can refer to them.
    assert env["metadata"]["name"] == PIPELINE_ENV_CONFIGMAP
    assert secret["metadata"]["name"] == PIPELINE_S3_SECRET
    data = _data(env)
    assert data["MLFLOW_TRACKING_URI"] == TRACKING_URI
    assert urlparse(data["AWS_ENDPOINT_URL"]).scheme in ("http", "https")
    assert data["MLFLOW_S3_ENDPOINT_URL"] == data["AWS_ENDPOINT_URL"]
    assert set(_data(secret)) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def test_pipeline_pods_see_the_same_keys_in_every_overlay(rendered):
    """A component maps keys by name; a key missing in one overlay would break its pods there."""
    keys = {o: set(_data(rendered[o].get("ConfigMap", PIPELINE_ENV_CONFIGMAP))) for o in OVERLAYS}
    assert len({frozenset(k) for k in keys.values()}) == 1, keys


def test_pipeline_namespace_moves_with_one_patch(infra_copy):
    """The patch the overlays carry, commented out, moves every pipeline-side object."""
    overlay = infra_copy / "overlays" / "production"
    kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    kustomization.setdefault("patches", []).append({
        "target": {"namespace": "kubeflow"},
        "patch": "- op: replace\n  path: /metadata/namespace\n  value: team-a\n",
    })
    moved = infra_copy.parent / "moved"
    shutil.copytree(infra_copy, moved / "infra")
    target = moved / "infra" / "overlays" / "production"
    (target / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    r = Rendered(_kustomize(target))
    assert not [o for o in r.objects if o["metadata"].get("namespace") == "kubeflow"]
    r.get("ConfigMap", "kfp-launcher", "team-a")
    r.get("ConfigMap", PIPELINE_ENV_CONFIGMAP, "team-a")
    r.get("Secret", PIPELINE_S3_SECRET, "team-a")


# ---------------------------------------------------------------------------------------------
# secrets


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secret_values_come_only_from_the_untracked_env_files(rendered, overlay):
    r = rendered[overlay]
    assert r.all("Secret")
    # Every value of every Secret is one that this test wrote into a .env file.
    for secret in r.all("Secret"):
        for key, value in _data(secret).items():
            name = secret["metadata"]["name"]
            assert value in MARKERS, f"Secret {name}.{key} holds a value from a committed file"
    # Values appear nowhere in plain text, and base64-encoded only inside Secrets.
    outside = yaml.safe_dump_all([o for o in r.objects if o["kind"] != "Secret"])
    for marker in MARKERS:
        assert marker not in r.text, f"{MARKERS[marker]} appears in plain text in the output"
        assert base64.b64encode(marker.encode()).decode() not in outside, MARKERS[marker]
    # Sensitive variables come from Secrets, never from a literal value.
    for workload in _workloads(r):
        for c in _pod_spec(workload)["containers"]:
            for item in c.get("env", []):
                if SENSITIVE_ENV.search(item["name"]):
                    what = f"{workload['metadata']['name']}: {item['name']}"
                    assert "secretKeyRef" in item.get("valueFrom", {}), what


def test_no_secret_or_env_file_is_tracked():
    # Tracked files plus those `git add` would take (untracked, not ignored).
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "infra"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()
    assert not [p for p in tracked if p.endswith(".env")], "commit only *.env.example templates"
    for path in tracked:
        if path.endswith((".yaml", ".yml")):
            for doc in yaml.safe_load_all((ROOT / path).read_text()):
                is_secret = isinstance(doc, dict) and doc.get("kind") == "Secret"
                assert not is_secret, f"{path} commits a Secret"


def test_fill_env_writes_random_values_and_keeps_existing_files(tmp_path):
    sys.path.insert(0, str(INFRA / "tools"))
    try:
        from fill_env import fill_env
    finally:
        sys.path.pop(0)
    (tmp_path / "a.env.example").write_text("# comment\nuser=mlflow\npassword=change-me\n")
    (tmp_path / "b.env.example").write_text("password=change-me\n")
    (tmp_path / "b.env").write_text("password=mine\n")
    assert fill_env(tmp_path) == [tmp_path / "a.env"]
    lines = (tmp_path / "a.env").read_text().splitlines()
    assert lines[:2] == ["# comment", "user=mlflow"]
    assert re.fullmatch(r"password=[0-9a-f]{32}", lines[2])
    assert (tmp_path / "b.env").read_text() == "password=mine\n"

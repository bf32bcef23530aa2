"""The component images as files: hadolint, pins from requirements.lock, the user, the build context.

Nothing here builds an image (that needs a container engine: `make images`). The checks read
Dockerfiles/Dockerfile, Dockerfiles/split_lock.py, .hadolint.yaml, .dockerignore and mk/images.mk.
hadolint is the one mk/images.mk installs (`make lint-images` or `make test`); without it the
lint tests fail, they do not skip.
"""

import importlib.metadata
import importlib.util
import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfiles" / "Dockerfile"
LOCK = ROOT / "requirements.lock"
TARGETS = ("base", "render", "gpu")


# ---- reading a Dockerfile ----


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in file order: continuation lines joined, comments dropped."""
    out, pending = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, args = (pending + stripped).partition(" ")
        out.append((keyword.upper(), args.strip()))
        pending = ""
    return out


def stages(path: Path) -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """{stage name: (what it is FROM, its instructions)}; the global ARGs go under ''."""
    result: dict[str, tuple[str, list]] = {"": ("", [])}
    current = ""
    for keyword, args in instructions(path):
        if keyword == "FROM":
            match = re.fullmatch(r"(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", args, re.IGNORECASE)
            assert match, f"cannot read FROM {args}"
            current = match.group(2) or f"stage{len(result)}"
            result[current] = (match.group(1), [])
        else:
            result[current][1].append((keyword, args))
    return result


def chain(all_stages, name: str) -> list[tuple[str, str]]:
    """The instructions that make up stage `name`, its parent stages' first."""
    parent, body = all_stages[name]
    return (chain(all_stages, parent) if parent in all_stages else []) + body


def env_of(instrs: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in instrs:
        if keyword == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(args))
    return env


def pip_installs(instrs: list[tuple[str, str]]) -> list[list[str]]:
    """The argument lists of every `pip install` in the RUN instructions."""
    found = []
    for keyword, args in instrs:
        if keyword != "RUN":
            continue
        for command in re.split(r"&&|;|\|\|", args):
            words = shlex.split(command)
            if words[:2] == ["pip", "install"] or words[:4] == ["python", "-m", "pip", "install"]:
                found.append(words[words.index("install") + 1 :])
    return found


def read_lock() -> set[str]:
    return {line.strip() for line in LOCK.read_text().splitlines() if line.strip() and not line.startswith("#")}


def load_split_lock():
    spec = importlib.util.spec_from_file_location("split_lock", ROOT / "Dockerfiles" / "split_lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- hadolint ----


@pytest.fixture(scope="module")
def hadolint() -> Path:
    """The hadolint binary where mk/images.mk installs it."""
    match = re.search(r"^HADOLINT_DIR\s*:=\s*(\S+)", (ROOT / "mk" / "images.mk").read_text(), re.MULTILINE)
    assert match, "mk/images.mk no longer sets HADOLINT_DIR"
    binary = ROOT / match.group(1) / "bin" / "hadolint"
    if not binary.is_file():
        pytest.fail(f"hadolint is not installed at {binary.relative_to(ROOT)}: run `make lint-images` (or `make test`) first", pytrace=False)
    return binary


def run_hadolint(binary: Path, dockerfile: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(binary), "--config", str(ROOT / ".hadolint.yaml"), "--no-color", str(dockerfile)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize("dockerfile", sorted(p.name for p in (ROOT / "Dockerfiles").glob("*Dockerfile*")))
def test_hadolint_finds_nothing(hadolint, dockerfile):
    result = run_hadolint(hadolint, ROOT / "Dockerfiles" / dockerfile)
    assert result.returncode == 0 and not result.stdout.strip(), f"hadolint:\n{result.stdout}{result.stderr}"


def test_hadolint_still_flags_a_bad_dockerfile(hadolint, tmp_path):
    """The config must not switch the lint off: an unpinned image and a `cd` still fail."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\n# hadolint ignore=DL3003\nRUN cd /tmp && echo hi\n")
    result = run_hadolint(hadolint, bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout and "DL3003" in result.stdout  # inline pragmas are off


def test_every_accepted_rule_has_a_reason():
    text = (ROOT / ".hadolint.yaml").read_text()
    config = yaml.safe_load(text)
    assert config.get("disable-ignore-pragma") is True
    for rule in config.get("ignored", []):
        comments = [line for line in text.splitlines() if line.lstrip().startswith("#") and rule in line]
        assert comments and len(comments[0].split(rule, 1)[1].strip()) > 10, f"{rule} is ignored without a reason"


# ---- pins: every Python package version comes from requirements.lock ----


def test_split_lock_keeps_every_pin_of_the_lock(tmp_path):
    split_lock = load_split_lock()
    assert split_lock.main([str(LOCK), str(tmp_path)]) == 0
    lock = read_lock()
    common = set((tmp_path / "common.txt").read_text().split())
    torch = (tmp_path / "torch.txt").read_text().split()
    dropped = lock - common - set(torch)

    assert common | set(torch) <= lock, "split_lock.py wrote a line that is not in requirements.lock"
    assert torch == [line for line in LOCK.read_text().split() if re.match(r"(?i)torch(vision)?==", line)]
    names = {split_lock.normalise(line.split("==")[0]) for line in dropped}
    assert names and all(split_lock.CUDA_ONLY.match(name) for name in names), f"dropped more than CUDA wheels: {names}"


def test_the_lock_pins_every_dependency_of_its_packages():
    """The images install the lock with --no-deps and then run `pip check`: a requirement the lock
    does not pin (pip freeze leaves out pip and setuptools) would fail that build. Read from the
    metadata of this venv's packages, where their versions are the lock's."""
    pins = {canonicalize_name(line.split("==")[0]): line.split("==")[1] for line in read_lock()}
    missing = []
    for name, version in sorted(pins.items()):
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if dist.version != version:
            continue  # this venv drifted from the lock; `make setup` brings it back
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker and not req.marker.evaluate({"extra": ""}):
                continue
            pinned = pins.get(canonicalize_name(req.name))
            if pinned is None or not req.specifier.contains(pinned, prereleases=True):
                try:
                    have = importlib.metadata.version(req.name)
                except importlib.metadata.PackageNotFoundError:
                    have = "none"
                missing.append(f"{name} needs {text}, the lock pins {pinned or 'nothing'} (this venv has {have})")
    assert not missing, "requirements.lock is incomplete for --no-deps installs:\n" + "\n".join(missing)


def test_split_lock_refuses_a_loose_line(tmp_path, capsys):
    lock = tmp_path / "requirements.lock"
    lock.write_text("torch==2.14.1\ntorchvision==0.29.1\nnumpy>=2\n")
    assert load_split_lock().main([str(lock), str(tmp_path / "out")]) == 1
    assert "numpy>=2" in capsys.readouterr().err


def test_the_dockerfile_installs_only_the_lock_and_the_project():
    all_stages = stages(DOCKERFILE)
    assert "==" not in DOCKERFILE.read_text(), "a version is written in the Dockerfile instead of the lock"
    allowed = {"requirements.lock", "/tmp/lock/common.txt", "/tmp/lock/torch.txt", "."}
    for name in all_stages:
        for args in pip_installs(all_stages[name][1]):
            assert "--no-deps" in args, f"{name}: pip install {' '.join(args)} may resolve unpinned dependencies"
            sources, words = [], iter(args)
            for word in words:
                if word in ("-r", "--requirement"):
                    sources.append(next(words))
                elif word in ("-i", "--index-url"):
                    next(words)
                elif not word.startswith("-"):
                    sources.append(word)
            assert set(sources) <= allowed, f"{name}: pip install {' '.join(args)} installs something not from the lock"

    cpu = pip_installs(all_stages["venv-cpu"][1])
    split_run = next(args for keyword, args in all_stages["venv-cpu"][1] if keyword == "RUN")
    assert split_run.startswith("python split_lock.py requirements.lock /tmp/lock ")
    assert any(a[-2:] == ["-r", "/tmp/lock/common.txt"] for a in cpu)
    assert any(a[-2:] == ["-r", "/tmp/lock/torch.txt"] and "--index-url" in a for a in cpu)
    assert any(a[-2:] == ["-r", "requirements.lock"] for a in pip_installs(all_stages["venv-gpu"][1]))
    for name in ("venv-cpu", "venv-gpu"):
        assert ["--no-deps", "."] in pip_installs(all_stages[name][1])


def test_the_python_image_matches_the_project():
    global_args = dict(args.split("=", 1) for k, args in stages(DOCKERFILE)[""][1] if k == "ARG" and "=" in args)
    image = global_args["PYTHON_IMAGE"]
    match = re.fullmatch(r"python:(\d+\.\d+)[\w.-]*", image)
    assert match, f"PYTHON_IMAGE={image} is not a python image pinned by a version tag"
    requires = re.search(r'requires-python\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert f"{match.group(1)}.0" in SpecifierSet(requires), f"{image} does not satisfy requires-python {requires}"


# ---- the three images ----


def test_the_images_run_as_a_numeric_non_root_user():
    all_stages = stages(DOCKERFILE)
    for target in TARGETS:
        users = [args for keyword, args in chain(all_stages, target) if keyword == "USER"]
        assert users, f"{target} runs as root (no USER)"
        user = users[-1].split(":")[0]
        # Numeric, so that Kubernetes' runAsNonRoot can check it without /etc/passwd.
        assert user.isdigit() and int(user) != 0, f"{target} runs as USER {users[-1]}"


def test_the_images_record_the_commit_and_keep_caches_writable():
    all_stages = stages(DOCKERFILE)
    for target in TARGETS:
        instrs = chain(all_stages, target)
        env = env_of(instrs)
        assert ("ARG", "GIT_COMMIT=unknown") in all_stages[target][1]
        assert env["SCENESEARCH_GIT_COMMIT"] == "${GIT_COMMIT}"
        assert env["MLFLOW_DISABLE_TELEMETRY"] == "true"
        for var in ("XDG_CACHE_HOME", "TORCH_HOME", "MESA_SHADER_CACHE_DIR"):
            assert env[var].startswith(env["HOME"] + "/"), f"{target}: {var} is outside HOME"
        assert env["PATH"].startswith("/opt/venv/bin:")
    venvs = {t: next(a for k, a in all_stages[t][1] if k == "COPY" and "/opt/venv" in a) for t in TARGETS}
    assert "--from=venv-cpu" in venvs["base"] and "--from=venv-cpu" in venvs["render"]
    assert "--from=venv-gpu" in venvs["gpu"]


def test_the_render_image_carries_egl_for_mesa_and_nvidia():
    instrs = chain(stages(DOCKERFILE), "render")
    runs = " ".join(args for keyword, args in instrs if keyword == "RUN")
    for package in ("libegl1", "libegl-mesa0", "libgl1-mesa-dri"):
        assert re.search(rf"\b{re.escape(package)}\b", runs), f"render does not install {package}"
    copies = [args.split() for keyword, args in instrs if keyword == "COPY"]
    assert ["Dockerfiles/10_nvidia.json", "/usr/share/glvnd/egl_vendor.d/10_nvidia.json"] in copies
    vendor = json.loads((ROOT / "Dockerfiles" / "10_nvidia.json").read_text())
    assert vendor["ICD"]["library_path"] == "libEGL_nvidia.so.0"
    assert set(env_of(instrs)["NVIDIA_DRIVER_CAPABILITIES"].split(",")) >= {"compute", "utility", "graphics"}


# ---- the build context ----


def dockerignore_rules(path: Path) -> list[tuple[bool, re.Pattern]]:
    """(is an exception, regex) per line, Docker's syntax: *, ?, [..], ** for any depth."""
    rules = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]").replace(r"\[", "[").replace(r"\]", "]")
        rules.append((negate, re.compile(regex)))
    return rules


def in_context(rules, relpath: str) -> bool:
    """Whether the file reaches the build: the last rule matching it or a parent folder decides."""
    parts = relpath.split("/")
    included = True
    for negate, regex in rules:
        if any(regex.fullmatch("/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            included = negate
    return included


def test_dockerignore_keeps_local_state_and_secrets_out():
    rules = dockerignore_rules(ROOT / ".dockerignore")
    for path in (".venv/bin/python", ".git/HEAD", "data/embedded/scenes/bedroom/a.glb", ".cache/torch/x.pth",
                 ".tools/bin/kubectl", "runs/kfp/x", "mlruns.db", "mlruns/0/meta.yaml", "mlartifacts/1/a.png",
                 "dist/scenesearch_default.yaml", ".env", "infra/overlays/local/minio.env",
                 "scenesearch/__pycache__/cli.cpython-311.pyc", "scenesearch.egg-info/PKG-INFO"):
        assert not in_context(rules, path), f".dockerignore lets {path} into the build context"


def test_every_copy_source_is_in_the_build_context():
    rules = dockerignore_rules(ROOT / ".dockerignore")
    for keyword, args in instructions(DOCKERFILE):
        words = args.split()
        if keyword != "COPY" or any(w.startswith("--from") for w in words):
            continue
        for source in (w for w in words[:-1] if not w.startswith("--")):
            assert (ROOT / source).exists(), f"COPY {source}: no such file"
            files = [p for p in (ROOT / source).rglob("*.py") if "__pycache__" not in p.parts] if (ROOT / source).is_dir() else [ROOT / source]
            for file in files:
                rel = file.relative_to(ROOT).as_posix()
                assert in_context(rules, rel), f".dockerignore leaves out {rel}, which COPY {source} needs"


# ---- make images / make push, without building ----


def make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_make_images_says_what_is_missing_without_an_engine():
    result = make("images", "CONTAINER_ENGINE=")
    assert result.returncode != 0
    assert "make images needs a container engine" in result.stderr


def test_make_images_and_push_tag_every_image_by_commit():
    built = make("-n", "images", "CONTAINER_ENGINE=podman", "IMAGE_TAG=abc1234", "GIT_COMMIT=c0ffee").stdout
    assert "for name in base render gpu" in built
    assert "--target $name --build-arg GIT_COMMIT=c0ffee" in built
    assert "-t scenesearch/$name:abc1234 -t scenesearch/$name:latest" in built
    pushed = make("-n", "push", "REGISTRY=reg.example/team", "CONTAINER_ENGINE=docker", "IMAGE_TAG=abc1234").stdout
    assert "tag scenesearch/$name:abc1234 reg.example/team/scenesearch/$name:$tag" in pushed
    assert make("push", "REGISTRY=").returncode != 0

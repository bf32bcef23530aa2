"""Start-up stays light: the CLI's help, `scenesearch methods` and loading + validating any preset
import none of the heavy libraries (each step imports what it uses when it runs)."""

import subprocess
import sys

import pytest

from scenesearch import config

HEAVY = ("torch", "torchvision", "sklearn", "mlflow", "kfp")
PRESETS = sorted(p.stem for p in config.PRESETS_DIR.glob("*.yaml"))


def _heavy_after(code: str) -> list[str]:
    probe = f"import sys\n{code}\nprint('heavy:' + ','.join(m for m in {HEAVY!r} if m in sys.modules))"
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    return [m for m in p.stdout.strip().splitlines()[-1].removeprefix("heavy:").split(",") if m]


def test_the_presets_are_found():
    assert {"default", "smoke", "nano", "full", "zeroshot"} <= set(PRESETS)


@pytest.mark.parametrize("code", [
    "import contextlib, io\nfrom scenesearch.cli import main\nwith contextlib.redirect_stdout(io.StringIO()):\n    try:\n        main(['--help'])\n    except SystemExit:\n        pass",
    "import contextlib, io\nfrom scenesearch.cli import main\nwith contextlib.redirect_stdout(io.StringIO()):\n    assert main(['methods', '--preset', 'default']) == 0",
    "from scenesearch import config, methods\n" + "".join(f"methods.check(config.load({p!r}))\n" for p in PRESETS),
], ids=["help", "methods", "every preset validated"])
def test_start_up_imports_no_heavy_library(code):
    assert _heavy_after(code) == []


def test_the_probe_sees_a_heavy_import():
    """The check above can fail: a step that imports its libraries shows them."""
    assert set(_heavy_after("import scenesearch.features.pooling")) >= {"torch"}

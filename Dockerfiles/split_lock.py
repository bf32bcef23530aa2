"""Split requirements.lock for the CPU image, so that every pin still comes from the lock.

The lock is the local venv's `pip freeze`: torch and torchvision are PyPI's CUDA builds and pull
in triton, nvidia-* and cuda-* wheels. The CPU image installs everything else from the lock as it
is, and the same torch/torchvision versions from PyTorch's CPU index (where they carry a +cpu
local label, which `==X.Y.Z` matches); the CUDA-only packages are left out.

Usage (in the image build, with the standard library only):

    python split_lock.py requirements.lock OUT_DIR

writes OUT_DIR/common.txt (the lock without the torch family) and OUT_DIR/torch.txt (the torch
and torchvision lines, unchanged). A line that is not an exact `name==version` pin stops the
build with one sentence naming it.
"""

import re
import sys
from pathlib import Path

# Taken from PyTorch's CPU index instead of the lock's PyPI (CUDA) builds, same versions.
TORCH = ("torch", "torchvision")
# Only the CUDA builds of torch need these; the CPU image leaves them out.
CUDA_ONLY = re.compile(r"^(triton|nvidia-.+|cuda-.+)$")
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)$")


def normalise(name: str) -> str:
    """PEP 503 name: lower case, runs of '-', '_', '.' become one '-'."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(lock: Path) -> dict[str, str]:
    """The lock's pins, {normalised name: the whole line}.

    Raises:
        ValueError: a line is not an exact `name==version` pin, or a name appears twice.
    """
    pins: dict[str, str] = {}
    for number, raw in enumerate(lock.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = PIN.match(line)
        if not match:
            raise ValueError(f"{lock}:{number}: {line!r} is not an exact name==version pin")
        name = normalise(match.group(1))
        if name in pins:
            raise ValueError(f"{lock}:{number}: {match.group(1)} is pinned twice")
        pins[name] = line
    return pins


def split(pins: dict[str, str]) -> tuple[list[str], list[str], list[str]]:
    """(common, torch, dropped) lines: everything else, torch + torchvision, the CUDA-only wheels.

    Raises:
        ValueError: torch or torchvision is not pinned in the lock.
    """
    missing = [name for name in TORCH if name not in pins]
    if missing:
        raise ValueError(f"requirements.lock pins no {', '.join(missing)}")
    torch = [pins[name] for name in TORCH]
    dropped = [line for name, line in pins.items() if CUDA_ONLY.match(name)]
    common = [line for name, line in pins.items() if name not in TORCH and not CUDA_ONLY.match(name)]
    return common, torch, dropped


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python split_lock.py requirements.lock OUT_DIR", file=sys.stderr)
        return 2
    lock, out = Path(argv[0]), Path(argv[1])
    try:
        common, torch, _ = split(read_pins(lock))
    except (OSError, ValueError) as e:
        print(f"split_lock: {e}", file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    (out / "common.txt").write_text("\n".join(common) + "\n")
    (out / "torch.txt").write_text("\n".join(torch) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

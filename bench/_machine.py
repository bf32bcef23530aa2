"""The machine line the CVAE bench scripts print first: CPU count, load, torch version, device."""

from __future__ import annotations

import os
import platform


def load_average() -> str:
    """The 1-minute load average (other jobs on a shared machine show up here), or 'n/a'."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


def header(torch) -> str:
    """One line: CPUs, torch threads, load, python and torch versions, the CUDA device if any."""
    cuda = "no CUDA device"
    if torch.cuda.is_available():
        cuda = f"CUDA {torch.version.cuda}: {torch.cuda.get_device_name(0)}"
    return (
        f"machine: {os.cpu_count()} CPUs ({platform.machine()}), torch threads {torch.get_num_threads()}, "
        f"1-min load {load_average()}; python {platform.python_version()}, torch {torch.__version__}; {cuda}"
    )

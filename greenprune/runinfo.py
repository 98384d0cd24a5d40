"""What a result was measured on: machine, versions, date and command, recorded beside every result."""
from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Optional

import torch

from ._version import __version__


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def machine_info() -> dict:
    """The machine a pruning, search or recovery job ran on."""
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads()}


def run_info(device: Optional[torch.device] = None, command: Optional[str] = None) -> dict:
    """Machine, versions, date and command of a measurement (benchmarks, bench.json)."""
    import transformers

    device = device or torch.device("cpu")
    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": command or shlex.join(sys.argv),
            "device": device_name(device), "device_type": device.type, "greenprune": __version__,
            "torch": torch.__version__, "transformers": transformers.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version(), "platform": platform.platform(), "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu_count"] = torch.cuda.device_count()
    if hasattr(os, "getloadavg"):
        info["load_average_1m_at_start"] = round(os.getloadavg()[0], 2)  # a shared machine shows here
    return info

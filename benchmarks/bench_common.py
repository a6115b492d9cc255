"""Shared glue for the CPU benchmarks (not a test): the machine fields every committed JSON records."""

from __future__ import annotations

import os
import platform

import torch


def machine_fields(command: str) -> dict:
    """The torch version, threads, CPUs, 1-minute load average (NaN where the OS has none), machine and the command
    that produced a result: a busy machine shows in ``load_avg_1min``."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "load_avg_1min": load, "machine": platform.machine(), "command": command}

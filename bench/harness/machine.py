"""Facts about the machine a benchmark ran on, and how fast it reads memory."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from .timing import time_runs
from .units import GB


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(threads: int) -> dict:
    import numpy
    import torch

    mem_total = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_bytes": mem_total,
        "threads": threads,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def l3_text() -> str:
    """This machine's L3 size for prose ("260 MiB"), read when the text is written."""
    try:
        kb = int(Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip().rstrip("K"))
        return f"{kb / 1024:.0f} MiB"
    except (OSError, ValueError):
        return "large"


def memory_bandwidth(threads: int, nbytes: int = 1 << 30, runs: int = 5) -> dict:
    """Streaming-read bandwidth in GB/s with ``threads`` torch threads, over a float32 array of ``nbytes``.

    Two probes over the same array, each the median of ``runs`` after one warmup:
    ``sum`` (a plain reduction) and ``gemv`` (the array viewed as a [rows, 1024] matrix times a
    vector: the access pattern of a decode step's linear layers). ``best_gbps`` is the higher of the
    two medians; using it for a bandwidth floor gives the lowest (most demanding) floor.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            x = torch.empty(nbytes // 4, dtype=torch.float32).fill_(1.0)  # fill: fault every page in first
            matrix, vector = x.view(-1, 1024), torch.ones(1024)
            probes = {
                "sum": lambda: x.sum(),
                "gemv": lambda: torch.mv(matrix, vector),
            }
            result: dict = {"bytes": nbytes, "threads": threads, "runs": runs}
            for name, fn in probes.items():
                timing = time_runs(fn, warmup=1, runs=runs)
                result[f"{name}_gbps"] = nbytes / timing.median / GB
                result[f"{name}_gbps_all"] = [nbytes / t / GB for t in timing.times]
            result["best_gbps"] = max(result[f"{name}_gbps"] for name in probes)
            x = matrix = None  # free the array before the caller measures anything else
    finally:
        torch.set_num_threads(previous)
    return result

"""Stage timings of long work: logged as each stage starts and ends, recorded in manifests.

Each stage's end also logs the process's resident memory and its peak so far (Linux; from
/proc/self/status, never reset: resetting the peak would also reset what ``/usr/bin/time`` and
``getrusage`` report)."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass
class Stages:
    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str):
        log.info("» %s", name)
        t0 = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - t0, 3)
        log.info("  %s done in %.1f s%s", name, self.seconds[name], memory())


def memory() -> str:
    """``", RSS 1.2 GB (peak 3.4 GB)"`` for this process, or "" where /proc is not there."""
    try:
        with open("/proc/self/status") as f:
            kb = {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in f) if k in ("VmRSS", "VmHWM")}
    except OSError:
        return ""
    return f", RSS {kb['VmRSS'] * 1024 / 1e9:.1f} GB (peak {kb['VmHWM'] * 1024 / 1e9:.1f} GB)"

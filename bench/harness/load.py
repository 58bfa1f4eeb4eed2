"""CPU load from other processes while a benchmark runs (this machine is shared with test runs)."""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path


def _proc_stat_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


class LoadMonitor:
    """How busy the machine was with *other* processes while a benchmark ran.

    ``other_cores`` is the average number of cores kept busy by everything except this process
    (system busy time minus our own CPU time, over the wall time). On this 2-core machine a value
    near 0 means the numbers are clean; near 1 means a concurrent job took about half the machine.
    """

    def __init__(self) -> None:
        self.start_wall = time.perf_counter()
        self.start_busy, _ = _proc_stat_jiffies()
        self.start_own = self._own_cpu()
        self.loadavg_start = os.getloadavg()

    @staticmethod
    def _own_cpu() -> float:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return ru.ru_utime + ru.ru_stime

    def stop(self) -> dict:
        wall = time.perf_counter() - self.start_wall
        busy, _ = _proc_stat_jiffies()
        hz = os.sysconf("SC_CLK_TCK")
        system_busy = (busy - self.start_busy) / hz
        own = self._own_cpu() - self.start_own
        return {
            "wall_s": wall,
            "own_cpu_s": own,
            "other_cores": max(system_busy - own, 0.0) / wall if wall > 0 else 0.0,
            "loadavg_start": list(self.loadavg_start),
            "loadavg_end": list(os.getloadavg()),
        }


def describe_load(load: dict) -> str:
    return (
        f"other processes kept {load['other_cores']:.2f} cores busy on average during the run "
        f"(load average {load['loadavg_start'][0]:.2f} at start, {load['loadavg_end'][0]:.2f} at end)"
    )


def wait_quiet(max_wait_s: float, console, threshold: float = 0.25, window_s: float = 10.0) -> dict:
    """Poll until other processes keep fewer than ``threshold`` cores busy over a ``window_s`` window."""
    start = time.perf_counter()
    while True:
        monitor = LoadMonitor()
        time.sleep(window_s)
        last = monitor.stop()["other_cores"]
        waited = time.perf_counter() - start
        if last < threshold or waited >= max_wait_s:
            quiet = last < threshold
            console.print(
                f"load before timing: other processes {last:.2f} cores "
                f"({'quiet' if quiet else 'still busy'} after {waited:.0f} s)"
            )
            return {"waited_s": waited, "other_cores_last_window": last, "quiet": quiet}

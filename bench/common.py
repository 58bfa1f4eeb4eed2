"""Helpers shared by the bench/ scripts (eager PyTorch, ExecuTorch, Core ML, ONNX Runtime).

Timing (warmup + median), memory (peak RSS), machine facts, a memory-bandwidth probe, and the
writers: JSON results and the idempotent sections of BENCHMARKS.md. Benchmarks measure and report;
they never assert on timings.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = Path(__file__).resolve().parent


def _bench_dir_last() -> None:
    """``bench/onnx.py`` has the name of the ``onnx`` package. A script run from bench/ has bench/
    first on sys.path, where that file would shadow the real package for every later ``import onnx``
    (the exporter, onnxruntime's quantizer). Keep bench/ importable, but after site-packages."""
    def is_bench(entry: str) -> bool:
        try:
            return Path(entry or ".").resolve() == BENCH_DIR
        except OSError:
            return False

    if any(is_bench(p) for p in sys.path):
        sys.path[:] = [p for p in sys.path if not is_bench(p)] + [str(BENCH_DIR)]


_bench_dir_last()


def load_script(name: str):
    """Import ``bench/<name>.py`` as module ``bench_<name>`` (``import onnx`` would get the package)."""
    module_name = f"bench_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, BENCH_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


BENCHMARKS_MD = REPO / "BENCHMARKS.md"
GB = 1e9  # bandwidth and sizes in decimal GB/MB, like the peer numbers in the notes
MB = 1e6

BENCHMARKS_HEADER = """\
# Benchmarks

Every number here was produced by a script in `bench/` (see `bench/README.md`), on the 2-core
development machine described in each section, run from the repository root. Each section is
written by its script (`--markdown`) between `<!-- bench:... -->` markers; rerunning the command
replaces that section only. Each section gives the exact command, the date, the machine and the
CPU load from other processes during the run (this machine is shared with test runs, so check it
before comparing numbers). Benchmarks are not tests: nothing asserts on these numbers.
"""


# ---- timing

@dataclass
class Timing:
    """Wall-clock seconds of the measured runs (warmup runs are not kept)."""

    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def max(self) -> float:
        return max(self.times)

    def to_dict(self, scale: float = 1e3, unit: str = "ms") -> dict:
        return {
            "unit": unit,
            "runs": len(self.times),
            "median": self.median * scale,
            "min": self.min * scale,
            "max": self.max * scale,
            "all": [t * scale for t in self.times],
        }


def time_runs(fn: Callable[[], object], *, warmup: int, runs: int, setup: Callable[[], object] | None = None) -> Timing:
    """Call ``fn`` ``warmup`` + ``runs`` times; ``setup`` runs before each call, outside the timer."""
    timing = Timing()
    for i in range(warmup + runs):
        if setup is not None:
            setup()
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        if i >= warmup:
            timing.times.append(elapsed)
    return timing


# ---- memory

def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


PEAK_RSS_TAG = "BENCH_PEAK_RSS_BYTES"


def vm_hwm_bytes() -> int | None:
    """Peak RSS of this process's own address space (VmHWM), or None where /proc has no such line."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def print_peak_rss() -> None:
    """In a child of ``run_child``: report this process's own peak RSS on stderr. The child's
    ru_maxrss is no good when its parent is large: Linux carries the forking process's RSS across exec."""
    hwm = vm_hwm_bytes()
    if hwm is not None:
        print(f"{PEAK_RSS_TAG} {hwm}", file=sys.stderr, flush=True)


def run_child(cmd: list[str], log_path: Path) -> dict:
    """Run ``cmd`` from the repository root, output to ``log_path``: its wall time, its peak RSS (what it
    reports with ``print_peak_rss``, else ru_maxrss) and CPU time (``os.wait4``), exit code, and the
    log's last lines on failure."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log_path, "w") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
    lines = Path(log_path).read_text(errors="replace").splitlines()
    reported = [int(l.split()[1]) for l in lines if l.startswith(PEAK_RSS_TAG + " ")]
    result = {
        "wall_s": wall,
        "peak_rss_bytes": reported[-1] if reported else usage.ru_maxrss * 1024,
        "peak_rss_source": "VmHWM reported by the child" if reported else "ru_maxrss",
        "ru_maxrss_bytes": usage.ru_maxrss * 1024,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "returncode": proc.returncode,
        "log": str(log_path),
    }
    if proc.returncode != 0:
        result["error_tail"] = [l for l in lines if l.strip()][-25:]
    return result


# ---- machine and load

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


# ---- memory bandwidth

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
            del x, matrix
    finally:
        torch.set_num_threads(previous)
    return result


# ---- output

def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def new_run(legs: list[str]) -> dict:
    """Identifies one invocation; every results JSON it writes carries the same record."""
    now = datetime.now(timezone.utc)
    return {"id": f"{now.strftime('%Y%m%dT%H%M%SZ')}-{os.getpid()}", "started": now.strftime("%Y-%m-%d %H:%M UTC"),
            "command": command_line(), "legs": legs}


def command_line() -> str:
    """The command that started this process, as it would be typed from the repository root."""
    exe = Path(sys.executable)
    try:
        exe_str = str(exe.relative_to(REPO)) if exe.is_relative_to(REPO) else str(exe)
    except ValueError:
        exe_str = str(exe)
    script = Path(sys.argv[0]).resolve()
    script_str = str(script.relative_to(REPO)) if script.is_relative_to(REPO) else sys.argv[0]
    return shlex.join([exe_str, script_str, *sys.argv[1:]])


def write_json(path: Path | str, data: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return path


def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    def cell(v: object) -> str:
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def update_markdown_section(key: str, body: str, path: Path | str = BENCHMARKS_MD) -> Path:
    """Put ``body`` between ``<!-- bench:KEY:start -->`` and ``<!-- bench:KEY:end -->`` in ``path``.

    Replaces the section when the markers exist, appends it otherwise; creates the file with
    ``BENCHMARKS_HEADER`` when missing. Running it twice with the same body changes nothing.
    """
    path = Path(path)
    start, end = f"<!-- bench:{key}:start -->", f"<!-- bench:{key}:end -->"
    section = f"{start}\n{body.strip()}\n{end}"
    text = path.read_text() if path.exists() else BENCHMARKS_HEADER
    i, j = text.find(start), text.find(end)
    if i != -1 and j > i:
        text = text[:i] + section + text[j + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)
    return path


def fmt_count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def fmt_mb(nbytes: float) -> str:
    return f"{nbytes / MB:,.1f} MB"

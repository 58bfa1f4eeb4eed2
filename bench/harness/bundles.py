"""Export-or-reuse of the bundle a benchmark measures.

The export runs in a child process (the calling script again, with ``--export-worker``), so its wall
time, CPU time and peak RSS are its own. The child reports its own peak RSS (VmHWM): its ru_maxrss
would be wrong when the parent is large, since Linux carries the forking process's RSS across exec
(kept as ``ru_maxrss_bytes``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .load import LoadMonitor
from .memory import vm_hwm_bytes
from .paths import REPO
from .results import args_record
from .units import fmt_mb

PEAK_RSS_TAG = "BENCH_PEAK_RSS_BYTES"
WORKER_FLAG = "--export-worker"


def add_worker_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(WORKER_FLAG, default=None, help=argparse.SUPPRESS)  # internal: JSON spec of the export child


# ---- in the child


def print_peak_rss() -> None:
    """Report this process's own peak RSS on stderr, for ``run_child``."""
    hwm = vm_hwm_bytes()
    if hwm is not None:
        print(f"{PEAK_RSS_TAG} {hwm}", file=sys.stderr, flush=True)


def run_export_worker(
    spec_json: str, target: str, request_and_options: Callable[[Path, argparse.Namespace], tuple]
) -> int:
    """Child process: ``export_bundle(target, ...)`` with what ``request_and_options(out, args)`` builds from the
    parent's arguments; logs on stderr, nothing else."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    spec = json.loads(spec_json)
    request, options = request_and_options(Path(spec["out"]), argparse.Namespace(**spec["args"]))
    from autoglm_export.pipeline import export_bundle

    export_bundle(target, request, options)
    print_peak_rss()
    return 0


# ---- in the parent


def dispatch(args: argparse.Namespace, target: str, request_and_options: Callable, render: Callable):
    """A benchmark's first step: as the export child (``--export-worker``) export and stop; with ``--from-json``
    re-render and stop. Returns ``(exit code, None)`` then, else ``(None, console)`` to measure with."""
    if args.export_worker is not None:
        return run_export_worker(args.export_worker, target, request_and_options), None
    from rich.console import Console

    console = Console()
    if args.from_json is not None:
        return render(json.loads(args.from_json.read_text()), args.markdown, console), None
    return None, console


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
    reported = [int(line.split()[1]) for line in lines if line.startswith(PEAK_RSS_TAG + " ")]
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
        result["error_tail"] = [line for line in lines if line.strip()][-25:]
    return result


class ExportFailed(Exception):
    """The export child exited non-zero (its log's last lines are printed already)."""


@dataclass
class Bundle:
    path: Path
    export: dict | None  # the export child's record (``run_child`` + ``load``); None for an existing bundle


@contextmanager
def export_or_reuse(
    existing: Path | None, keep: Path | None, *, script: Path, args: argparse.Namespace, what: str, detail: str, console
) -> Iterator[Bundle]:
    """The bundle to measure: ``existing`` as it is, else a fresh export by ``script --export-worker`` into
    ``keep`` (kept) or into a temp dir (removed afterwards, kept with its log when the export fails).
    ``what`` names the target in messages ("ExecuTorch"), ``detail`` the recipe ("8da4w, group 32").

    Raises ExportFailed. The export record's ``load`` is other processes' load during the export.
    """
    if existing is not None:
        console.print(f"measuring existing {what} bundle {existing} (export not timed)")
        yield Bundle(existing, None)
        return
    tmp_root = None
    if keep is not None:
        path = keep
        path.parent.mkdir(parents=True, exist_ok=True)
        log_path = path.parent / f"{path.name}.export.log"
    else:
        tmp_root = Path(tempfile.mkdtemp(prefix=f"autoglm-bench-{Path(script).stem}-"))
        path = tmp_root / "bundle"
        log_path = tmp_root / "export.log"
    load = LoadMonitor()
    console.print(f"exporting preset {args.preset} to {what} ({detail}) in a subprocess; log: {log_path}")
    spec = json.dumps({"out": str(path), "args": args_record(args)})
    export = run_child([sys.executable, str(Path(script).resolve()), WORKER_FLAG, spec], log_path)
    if export["returncode"] != 0:
        console.print(
            f"[red]{what} export failed (exit {export['returncode']}) after {export['wall_s']:.0f} s; "
            f"last lines of {log_path}:[/red]"
        )
        for line in export["error_tail"]:
            console.print("  " + line, markup=False, highlight=False)
        raise ExportFailed(f"exit {export['returncode']}")
    console.print(f"{what} export: {export['wall_s']:.0f} s wall, peak RSS {fmt_mb(export['peak_rss_bytes'])}")
    during = load.stop()  # LoadMonitor counts the child's CPU as "other": take it out
    during["other_cores"] = max(during["other_cores"] * during["wall_s"] - export["cpu_s"], 0.0) / during["wall_s"]
    export["load"] = during
    try:
        yield Bundle(path, export)
    finally:
        if tmp_root is not None:
            shutil.rmtree(tmp_root, ignore_errors=True)

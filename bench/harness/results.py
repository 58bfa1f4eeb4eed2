"""The results JSON every benchmark writes: what ran (command, run record, arguments), when, and where it went."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path

from .paths import REPO

# Where a benchmark that exports first took its ``load``; the export's own is ``export.load``.
LOAD_SCOPE_AFTER_EXPORT = "timing part (after the export; the export's own is export.load)"


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


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


def new_run(legs: list[str]) -> dict:
    """Identifies one invocation; every results JSON it writes carries the same record."""
    now = datetime.now(UTC)
    return {
        "id": f"{now.strftime('%Y%m%dT%H%M%SZ')}-{os.getpid()}",
        "started": now.strftime("%Y-%m-%d %H:%M UTC"),
        "command": command_line(),
        "legs": legs,
    }


def args_record(args: argparse.Namespace) -> dict:
    """The parsed arguments as JSON values (paths as strings), without the internal export-worker spec."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "export_worker"}


def header(
    benchmark: str,
    args: argparse.Namespace,
    out: str,
    *,
    machine: dict,
    load: dict,
    run: dict | None = None,
    after_export: bool = False,
    wait_quiet: dict | None = None,
) -> dict:
    """The fields every results JSON starts with. ``after_export``: the benchmark exported (or could have)
    before timing, so ``load`` is the timing part's and ``wait_quiet`` is recorded."""
    record: dict = {"benchmark": benchmark, "command": command_line(), "date": utc_now()}
    if run is not None:
        record["run"] = run
    record.update(machine=machine, load=load)
    if after_export:
        record.update(load_scope=LOAD_SCOPE_AFTER_EXPORT, wait_quiet=wait_quiet)
    record.update(args=args_record(args), out=out)
    return record


def write_json(path: Path | str, data: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return path


def publish(args: argparse.Namespace, data: dict, out: Path, section: str, body: str) -> None:
    """The end of a measure-or-reread script: the results JSON (unless re-rendered ``--from-json``), the
    report on stdout, and with ``--markdown`` its section of BENCHMARKS.md."""
    from .markdown import update_markdown_section

    if not args.from_json:
        write_json(out, data)
        print(f"wrote {out}")
    print(body)
    if args.markdown:
        update_markdown_section(section, body)

"""Markdown for BENCHMARKS.md: tables, ranges, and the idempotent ``<!-- bench:KEY -->`` sections."""

from __future__ import annotations

from pathlib import Path

from .load import describe_load
from .paths import BENCHMARKS_MD

BENCHMARKS_HEADER = """\
# Benchmarks

Every number here was produced by a script in `bench/` (see `bench/README.md`), on the 2-core
development machine described in each section, run from the repository root. Each section is
written by its script (`--markdown`) between `<!-- bench:... -->` markers; rerunning the command
replaces that section only. Each section gives the exact command, the date, the machine and the
CPU load from other processes during the run (this machine is shared with test runs, so check it
before comparing numbers). Benchmarks are not tests: nothing asserts on these numbers.
"""


def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    def cell(v: object) -> str:
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def span(values, fmt: str) -> str:
    """``min-max`` of the values that are not None, one value when both read the same, ``n/a`` when none."""
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    lo, hi = fmt.format(min(values)), fmt.format(max(values))
    return lo if lo == hi else f"{lo}-{hi}"


def section_head(title: str, r: dict) -> list[str]:
    """A section's first lines: its title, the command and the date of the run in results ``r``."""
    return [title, "", f"- Command: `{r['command']}`", f"- Date: {r['date']}"]


def machine_line(mach: dict, versions: str) -> str:
    """``- Machine: CPU, cores, memory; versions`` from a results JSON's ``machine``."""
    return (
        f"- Machine: {mach['cpu_model']}, {mach['logical_cores']} cores, {mach['memory_bytes'] / 2**30:.0f} GiB; "
        + versions
    )


def timing_load_line(r: dict) -> str:
    """``- Load while timing: ...``, with the export's own load when the run exported."""
    export = r.get("export")
    during = f"; during the export: {export['load']['other_cores']:.2f} cores" if export and export.get("load") else ""
    return f"- Load while timing: {describe_load(r['load'])}" + during


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
        text = text[:i] + section + text[j + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)
    return path

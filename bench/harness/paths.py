"""Where things are: the repository root, results JSONs and BENCHMARKS.md."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCH_DIR = REPO / "bench"
RESULTS_DIR = BENCH_DIR / "results"
BENCHMARKS_MD = REPO / "BENCHMARKS.md"


def default_results(name: str, preset: str) -> Path:
    """``bench/results/<name>-<preset>.json``: where a script writes unless ``--out`` says otherwise."""
    return RESULTS_DIR / f"{name}-{preset}.json"


def repo_relative(path: Path | str) -> str:
    """``path`` relative to the repository root when it is inside it (as recorded in results), else as given."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(REPO)) if resolved.is_relative_to(REPO) else str(path)

"""Wall-clock timing: warmup runs, then the median of the timed runs."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field


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

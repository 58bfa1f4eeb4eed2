"""Stage timings of long work: logged as each stage starts and ends, recorded in manifests."""

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
        log.info("  %s done in %.1f s", name, self.seconds[name])

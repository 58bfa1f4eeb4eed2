"""Stage timings of long work: logged as each stage starts and ends, recorded in manifests.

Each stage's end also logs the process's resident memory and its peak so far, with the anonymous
part (Linux; from /proc/self/status, never reset: resetting the peak would also reset what
``/usr/bin/time`` and ``getrusage`` report)."""

from __future__ import annotations

import logging
import threading
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


_ANON_PEAK = {"kb": 0, "sampler": None}
SAMPLE_SECONDS = 0.5


def _status_kb(*keys: str) -> dict[str, int]:
    with open("/proc/self/status") as f:
        return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in f) if k in keys}


def _sample_anonymous() -> None:
    while True:
        try:
            _ANON_PEAK["kb"] = max(_ANON_PEAK["kb"], _status_kb("RssAnon")["RssAnon"])
        except (OSError, KeyError):
            return
        time.sleep(SAMPLE_SECONDS)


def memory() -> str:
    """``", RSS 17.0 GB (peak 17.6 GB; anonymous 5.1 GB, peak 6.3 GB)"`` for this process, or "" where
    /proc is not there. RSS counts memory-mapped file pages (the checkpoint, the scratch weights: the
    kernel can drop them under pressure); the anonymous part is what cannot be given back. Its peak is
    sampled every ``SAMPLE_SECONDS`` by a daemon thread (the kernel keeps no peak for it)."""
    try:
        kb = _status_kb("VmRSS", "VmHWM", "RssAnon")
    except OSError:
        return ""
    if _ANON_PEAK["sampler"] is None and "RssAnon" in kb:
        _ANON_PEAK["sampler"] = threading.Thread(target=_sample_anonymous, daemon=True, name="rss-anon-peak")
        _ANON_PEAK["sampler"].start()
    gb = lambda k: k * 1024 / 1e9  # noqa: E731
    text = f", RSS {gb(kb['VmRSS']):.1f} GB (peak {gb(kb['VmHWM']):.1f} GB"
    if "RssAnon" in kb:
        _ANON_PEAK["kb"] = max(_ANON_PEAK["kb"], kb["RssAnon"])
        text += f"; anonymous {gb(kb['RssAnon']):.1f} GB, peak {gb(_ANON_PEAK['kb']):.1f} GB"
    return text + ")"

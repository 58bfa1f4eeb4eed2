"""Stage lines report resident memory with its anonymous part (stages.memory)."""

from __future__ import annotations

import re
import sys

import pytest

from autoglm_export.stages import memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_memory_reports_the_anonymous_peak_even_after_it_is_freed():
    import numpy as np

    block = np.ones(200_000_000 // 8)  # 200 MB of anonymous memory, touched
    during = memory()
    del block
    after = memory()
    pattern = r", RSS ([\d.]+) GB \(peak ([\d.]+) GB; anonymous ([\d.]+) GB, peak ([\d.]+) GB\)"
    rss, peak, anon, anon_peak = (float(v) for v in re.fullmatch(pattern, during).groups())
    assert anon <= rss + 0.05 and anon_peak >= anon and peak >= rss
    _, _, anon_after, anon_peak_after = (float(v) for v in re.fullmatch(pattern, after).groups())
    assert anon_peak_after >= anon_peak >= anon_after + 0.15

"""One real-width checkpoint (tests/real_width.py) for every real-size test of the session."""

from __future__ import annotations

from pathlib import Path

import pytest
from real_width import make_real_width


@pytest.fixture(scope="session")
def real_width(tmp_path_factory) -> Path:
    return make_real_width(tmp_path_factory.mktemp("realsize") / "ckpt")

"""Filter the log lines native libraries write to stderr.

ExecuTorch's C++ code logs ``[cpuinfo_utils.cpp:71] Reading file ...`` and ``[kernel_runtime_context.h:91]
No temp allocator provided``: while lowering, with ``write(2, ...)`` below Python; while running a
program through its pybindings, into Python's ``sys.stderr`` (pybind11 redirects C++ streams there).
In the default (non ``-v``) console those lines are dropped on both paths: fd 2 becomes a pipe that a
thread copies to the real stderr, and ``sys.stderr`` a wrapper around the real stderr, each minus
lines shaped like ``[file.cpp:123] ...``. Our own output never has that shape, and is not delayed.
"""

from __future__ import annotations

import atexit
import io
import os
import re
import sys
import threading

NATIVE_LOG_LINE = re.compile(r"^\[[\w./-]+\.(c|cc|cpp|h|hpp|mm?):\d+\] ")
NATIVE_LOG_LINE_BYTES = re.compile(NATIVE_LOG_LINE.pattern.encode())


class NativeLogFilter(io.TextIOBase):
    """A text stream that passes everything to ``stream`` except native log lines."""

    def __init__(self, stream):
        self.stream = stream
        self.pending = ""  # a started line that could still turn out to be a native log line

    def write(self, text: str) -> int:
        data = self.pending + text
        self.pending = ""
        lines = data.splitlines(keepends=True)
        if lines and not lines[-1].endswith(("\n", "\r")) and lines[-1].startswith("["):
            self.pending = lines.pop()  # wait for its end before deciding
        self.stream.write("".join(line for line in lines if not NATIVE_LOG_LINE.match(line)))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def fileno(self) -> int:
        return self.stream.fileno()

    def isatty(self) -> bool:
        return self.stream.isatty()

    @property
    def encoding(self):
        return self.stream.encoding

    def writable(self) -> bool:
        return True


def drop_native_log_lines() -> bool:
    """Install both filters when stderr is the process's real fd 2 (not under a test runner); returns
    whether it did."""
    try:
        if sys.stderr.fileno() != 2:
            return False
    except (AttributeError, OSError, ValueError):
        return False
    real = os.dup(2)
    sys.stderr.flush()
    real_stream = open(real, "w", buffering=1, encoding=sys.stderr.encoding, errors="backslashreplace", closefd=False)
    sys.stderr = NativeLogFilter(real_stream)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def copy() -> None:
        with open(read_end, "rb") as pipe:
            for line in pipe:
                if not NATIVE_LOG_LINE_BYTES.match(line):
                    os.write(real, line)

    thread = threading.Thread(target=copy, name="native-stderr-filter", daemon=True)
    thread.start()

    def close() -> None:  # let the thread copy what native code wrote last
        _flush_c_stdio()  # native code may buffer its lines in C's stdio until exit
        os.dup2(real, 2)
        thread.join(timeout=2)

    atexit.register(close)
    return True


def _flush_c_stdio() -> None:
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):
        pass

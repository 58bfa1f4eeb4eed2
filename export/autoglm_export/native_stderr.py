"""Filter the log lines native libraries write straight to file descriptor 2.

ExecuTorch's C++ code logs ``[cpuinfo_utils.cpp:71] Reading file ...`` and ``[kernel_runtime_context.h:91]
No temp allocator provided`` with ``write(2, ...)``, below Python's logging and warnings. In the
default (non ``-v``) console those lines are dropped: fd 2 becomes a pipe that a thread copies to the
real stderr, minus lines shaped like ``[file.cpp:123] ...``. Python's own stderr keeps writing to the
real stderr directly, so our output is never delayed or reordered.
"""

from __future__ import annotations

import atexit
import os
import re
import sys
import threading

NATIVE_LOG_LINE = re.compile(rb"^\[[\w./-]+\.(c|cc|cpp|h|hpp|mm?):\d+\] ")


def drop_native_log_lines() -> bool:
    """Install the filter when stderr is the process's real fd 2 (not under a test runner); returns
    whether it did."""
    try:
        if sys.stderr.fileno() != 2:
            return False
    except (AttributeError, OSError, ValueError):
        return False
    real = os.dup(2)
    sys.stderr.flush()
    sys.stderr = open(real, "w", buffering=1, encoding=sys.stderr.encoding, errors="backslashreplace", closefd=False)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def copy() -> None:
        with open(read_end, "rb") as pipe:
            for line in pipe:
                if not NATIVE_LOG_LINE.match(line):
                    os.write(real, line)

    thread = threading.Thread(target=copy, name="native-stderr-filter", daemon=True)
    thread.start()

    def close() -> None:  # let the thread copy what native code wrote last
        os.dup2(real, 2)
        thread.join(timeout=2)

    atexit.register(close)
    return True

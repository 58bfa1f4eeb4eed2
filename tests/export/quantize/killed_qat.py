"""``python killed_qat.py N ARGS...``: ``autoglm-export ARGS`` on this rank, killed (``os._exit``, no
cleanup, as SIGKILL would) at its Nth distillation-loss call. Run under torchrun by test_distributed.py."""

import os
import sys

import autoglm_export.quantize.qat as qat
from autoglm_export.cli import app

stop_at, calls, real = int(sys.argv[1]), 0, qat.distillation_loss


def killed_at_call(*args, **kwargs):
    global calls
    calls += 1
    if calls == stop_at:
        os._exit(1)
    return real(*args, **kwargs)


if __name__ == "__main__":
    qat.distillation_loss = killed_at_call
    sys.argv = ["autoglm-export", *sys.argv[2:]]
    app()

"""Keep third-party libraries' own output out of the default console; ``-v`` shows all of it.

What it silences, and why each needs its own switch:
- progress bars (transformers' "Loading weights", coremltools' conversion passes): tqdm reads
  ``TQDM_DISABLE`` when it is first imported, so this runs before any heavy import;
- INFO logs of other packages on the root logger (ExecuTorch's "Looking for libcustom_ops_aot_lib.so"):
  only our own packages log at INFO;
- warnings of libraries (coremltools' "Failed to load _MLModelProxy" on Linux, its version notices,
  torch.export / torchao / ExecuTorch deprecations and UserWarnings about their internals).
ExecuTorch's C++ code writes straight to file descriptor 2: ``native_stderr`` filters that.
"""

from __future__ import annotations

import logging
import os
import warnings

OUR_PACKAGES = ("autoglm_export", "autoglm_runtime")
# Loggers that warn about things users cannot act on (versions, optional native kernels, macOS-only proxies).
NOISY_LOGGERS = ("torchao", "torch.utils._pytree", "transformers", "coremltools", "executorch", "torch._export",
                 "torch.export")


def third_party() -> None:
    """Before any heavy import: progress bars and warnings."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(executorch|torch|torchao|coremltools)(\.|$)")


def log_levels() -> None:
    """After logging.basicConfig: INFO for our packages only."""
    logging.getLogger().setLevel(logging.WARNING)
    for name in OUR_PACKAGES:
        logging.getLogger(name).setLevel(logging.INFO)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)

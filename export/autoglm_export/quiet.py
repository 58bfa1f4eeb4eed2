"""Keep third-party libraries' own output out of the default console; ``-v`` shows all of it.

What it silences, and why each needs its own switch:
- progress bars (transformers' "Loading weights", coremltools' conversion passes): tqdm reads
  ``TQDM_DISABLE`` only when it is first imported, and importing the CLI already imports it (through
  torch), so tqdm's constructor is given ``disable=True`` unless a caller asks otherwise;
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
NOISY_LOGGERS = (
    "torchao",
    "torch.utils._pytree",
    "transformers",
    "coremltools",
    "executorch",
    "torch._export",
    "torch.export",
)


def third_party() -> None:
    """Progress bars and warnings."""
    os.environ.setdefault("TQDM_DISABLE", "1")  # read by tqdm at import, and by child processes
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    _tqdm_off_by_default()
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


def _tqdm_off_by_default() -> None:
    try:
        import tqdm.std
    except ImportError:
        return
    cls = tqdm.std.tqdm
    if getattr(cls.__init__, "_autoglm_quiet", False):
        return
    original = cls.__init__

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("disable", True)
        original(self, *args, **kwargs)

    __init__._autoglm_quiet = True
    cls.__init__ = __init__

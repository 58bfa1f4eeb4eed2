"""Scaled-down checkpoints with AutoGLM-Phone-9B's real widths (1 text layer, 1 vision block, an
8192-row vocabulary: 0.5B parameters, 1 GB), made by tools/make_real_checkpoint.py, and peak-RSS
measurement of a command in its own process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "make_real_checkpoint.py"
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join([str(ROOT / "export"), str(ROOT / "runtime"), os.environ.get("PYTHONPATH", "")]),
}
VOCAB = 8192  # real widths everywhere else; specials at 8192 - 223 = 7969 (the real 151329 - 151552 offset)


def make_real_width(out: Path) -> Path:
    args = [
        sys.executable,
        str(TOOL),
        "--out",
        str(out),
        "--text-layers",
        "1",
        "--vision-depth",
        "1",
        "--vocab-size",
        str(VOCAB),
        "--shard-gb",
        "0.4",
    ]
    t0 = time.perf_counter()
    subprocess.run(args, check=True, env=ENV, capture_output=True, text=True)
    assert time.perf_counter() - t0 < 120
    return out


def checkpoint_bytes(ckpt: Path) -> int:
    return json.loads((ckpt / "model.safetensors.index.json").read_text())["metadata"]["total_size"]


# A fresh parent whose only child is the command: RUSAGE_CHILDREN's max RSS is then that command's peak.
_MEASURE = r"""
import json, resource, subprocess, sys
p = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(json.dumps({"rc": p.returncode, "stdout": p.stdout, "stderr": p.stderr,
                  "peak": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}))
"""


def peak_rss(args: list[str]) -> tuple[int, subprocess.CompletedProcess]:
    """Run ``args`` in a process of its own; its peak resident bytes (the kernel's high-water mark)."""
    out = subprocess.run([sys.executable, "-c", _MEASURE, *args], env=ENV, check=True, capture_output=True, text=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return r["peak"], subprocess.CompletedProcess(args, r["rc"], r["stdout"], r["stderr"])


def imports_peak(imports: str) -> int:
    """Peak resident bytes of a process that only runs ``imports``: what the libraries take before any weight."""
    return peak_rss([sys.executable, "-c", imports])[0]


def cli_peak(command: str, *args: str) -> tuple[int, subprocess.CompletedProcess]:
    """``autoglm-export COMMAND ARGS`` in a process of its own: (peak resident bytes, its result)."""
    return peak_rss([sys.executable, "-m", "autoglm_export.cli", command, *args])


# `android` (test_real_size_android.py, and from a quantized checkpoint in test_real_size_calibrate.py):
# Peak above what the libraries take (0.41-0.48 GB), in checkpoint sizes. Measured here: 1.8x
# (2.23 GB; 2.2x before the quantized eager reference ran in row slices); the previous path, which
# held an fp32 copy of all weights plus transformers' fp32 copy, 4.9x (5.46 GB). An fp32 copy of
# the weights is 2x by itself, on top of the quantized model (0.6x), so a path that makes one lands
# above this bound.
ANDROID_PER_CHECKPOINT = 2.3
ANDROID_IMPORTS = (
    "import autoglm_export.cli, torchao.quantization, transformers, executorch.exir, executorch.runtime;"
    "import executorch.backends.xnnpack.partition.xnnpack_partitioner, executorch.extension.llm.custom_ops"
)

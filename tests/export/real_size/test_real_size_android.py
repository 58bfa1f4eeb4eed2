"""`android --checkpoint` on a real-width checkpoint (tests/real_width.py): the code path of the 9B
export at CI size, with the parity gate, and its peak RSS measured in a process of its own.

The bound is relative to the checkpoint's bf16 bytes: an fp32 copy of the whole model alone is 2x
those bytes, on top of the quantized model (1.16 bytes per int4 weight in torchao's unpacked form),
so a path that makes one fails it. Loading as stored and quantizing one linear at a time keeps one
fp32 weight at a time (``stored.py``).
"""

from __future__ import annotations

import json

from real_width import ANDROID_IMPORTS, ANDROID_PER_CHECKPOINT, checkpoint_bytes, cli_peak, imports_peak


def test_android_export_stays_below_an_fp32_copy(real_width, tmp_path):
    size = checkpoint_bytes(real_width)
    base = imports_peak(ANDROID_IMPORTS)  # what the libraries take before any weight
    out = tmp_path / "android"
    peak, run = cli_peak(
        "android",
        "--checkpoint",
        str(real_width),
        "--out",
        str(out),
        "--max-seq-len",
        "64",
        "--external-weights",  # the 9B layout: a small model.pte, the weights in model.ptd
        # One vision method: each image bucket's method plans its own activation arena when the
        # runtime loads it (+1.8 GB for the preset's 8 at these widths), which is not weights.
        "--image-size",
        "644x280",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["program"], manifest["weights"]) == ("model.pte", "model.ptd")
    files = manifest["files"]
    assert files["model.ptd"]["bytes"] > 10 * files["model.pte"]["bytes"]  # the weights are outside the program
    assert manifest["validated"] and json.loads((out / "parity.json").read_text())["passed"]
    assert manifest["reference_check"]["passed"]  # our fp32 model vs transformers, at the real widths
    bound = base + ANDROID_PER_CHECKPOINT * size
    assert peak < bound, (
        run.stderr[-4000:]
        + f"\npeak RSS {peak / 1e9:.2f} GB > {bound / 1e9:.2f} GB for a {size / 1e9:.2f} GB checkpoint"
    )
    print(
        f"android on a {size / 1e9:.2f} GB real-width checkpoint: peak RSS {peak / 1e9:.2f} GB "
        f"(imports {base / 1e9:.2f} GB, bound {bound / 1e9:.2f} GB), stages {manifest.get('stage_seconds')}"
    )

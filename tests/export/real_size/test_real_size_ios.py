"""`ios --checkpoint` on a real-width checkpoint (tests/real_width.py): the code path of the 9B Core ML
export at CI size, with the parity gate through our MIL interpreter, and its peak RSS measured in a
process of its own.

Two bounds, relative to the checkpoint's bf16 bytes (an fp32 copy of the whole model alone is 2x those
bytes; the target made one before it kept the weights as stored, and was killed at 22 GB on the
1.7B-parameter slice):

- until conversion starts (load, our model vs transformers, the fp32 references) the process stays
  below 1.5x: no fp32 copy of the model is ever made;
- the whole export, parity gate included, stays below ``PER_CHECKPOINT``: coremltools holds about
  9-14 bytes per parameter of the package it converts (fp32 traced constants, the fp16 program, the
  compressed copy), and at one layer the largest package is a quarter of the model, so this bound
  follows the largest package; at 9B it is a twentieth (``convert.plan_chunks``).
"""

from __future__ import annotations

import json
import re

from real_width import checkpoint_bytes, cli_peak, imports_peak

# Peak above what the libraries take, in checkpoint sizes. Measured here: 3.85x for the whole export
# (4.38 GB for a 1.02 GB checkpoint; the decoder package's conversion) and 1.1x before conversion.
PER_CHECKPOINT = 4.3
BEFORE_CONVERSION = 1.5
# Anonymous memory a finished package may leave behind, in checkpoint sizes: MIL programs are webs of
# reference cycles that hold their weights until a collection (``convert.discard``). Measured here:
# 0.1x (0.10 GB); before each package's programs were collected once it was written, 1.7x (2.6 GB
# on a two-layer real-width checkpoint, --no-validate).
LEFT_BEHIND = 0.4
REFERENCES_DONE = re.compile(r"fp32 reference outputs done in [\d.]+ s, RSS [\d.]+ GB \(peak ([\d.]+) GB[;)]")
ANONYMOUS_AFTER = r"{stage}[^\n]* done in [\d.]+ s, RSS [\d.]+ GB \(peak [\d.]+ GB; anonymous ([\d.]+) GB"
IMPORTS = "import autoglm_export.cli, coremltools, transformers, torchao.quantization"


def test_ios_export_stays_below_an_fp32_copy(real_width, tmp_path):
    size = checkpoint_bytes(real_width)
    base = imports_peak(IMPORTS)  # what the libraries take before any weight
    out = tmp_path / "ios"
    peak, run = cli_peak(
        "ios",
        "--checkpoint",
        str(real_width),
        "--out",
        str(out),
        "--prefill-chunk",
        "32",
        "--image-size",
        "644x280",  # one VisionEncoder function: every bucket is another conversion of the tower
    )
    assert run.returncode == 0, run.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["validated"] and manifest["validated_with"] == "mil"
    assert json.loads((out / "parity.json").read_text())["passed"]
    assert manifest["reference_check"]["passed"]  # our fp32 model vs transformers, at the real widths
    packages = manifest["coreml"]["packages"]
    assert packages["text_decoder"]["kv_cache"] == "state"
    assert packages["token_embedding"]["ops"]["main"]["constexpr_blockwise_shift_scale"] == 1
    before = REFERENCES_DONE.search(run.stderr)
    assert before, run.stderr[-3000:]
    assert float(before.group(1)) * 1e9 < base + BEFORE_CONVERSION * size, run.stderr[-3000:]
    held = {
        stage: float(re.search(ANONYMOUS_AFTER.format(stage=stage), run.stderr).group(1)) * 1e9
        for stage in ("fp32 reference outputs", "convert text_decoder")
    }
    left = held["convert text_decoder"] - held["fp32 reference outputs"]
    assert left < LEFT_BEHIND * size, f"{left / 1e9:.2f} GB left behind by the conversions\n" + run.stderr[-3000:]
    bound = base + PER_CHECKPOINT * size
    assert peak < bound, (
        run.stderr[-4000:]
        + f"\npeak RSS {peak / 1e9:.2f} GB > {bound / 1e9:.2f} GB for a {size / 1e9:.2f} GB checkpoint"
    )
    print(
        f"ios on a {size / 1e9:.2f} GB real-width checkpoint: peak RSS {peak / 1e9:.2f} GB "
        f"(imports {base / 1e9:.2f} GB, bound {bound / 1e9:.2f} GB; before conversion {before.group(1)} GB; "
        f"left behind by the conversions {left / 1e9:.2f} GB), "
        f"stages {manifest.get('stage_seconds')}"
    )

"""`calibrate --checkpoint` on a real-width checkpoint (tests/real_width.py): the 9B code path at CI
size, its peak RSS measured in a process of its own.

The model stays memory-mapped as stored (bf16) and each weight is fp32 only while its module runs;
the integers go to disk as each block is done. What it holds besides is the calibration arithmetic of
one block at the real widths, whatever the depth: the Gram matrix of the widest input (the 13696-wide
MLP down projection: 1.5 GB in fp64) with its fp32 product and fp64 conversion while a batch is
added, and GPTQ's factorisations of it. The previous path loaded the model in fp32 (2x the checkpoint)
and kept every linear's integers in memory (another 0.5x).
"""

from __future__ import annotations

import json

import pytest
import torch
from real_width import ANDROID_IMPORTS, ANDROID_PER_CHECKPOINT, checkpoint_bytes, cli_peak, imports_peak

from autoglm_export.quantize import grid, qcheckpoint
from autoglm_export.source import open_source

WIDEST = 13696  # the MLP's intermediate size: the widest linear input
GRAM = WIDEST * WIDEST * 8  # one fp64 Gram matrix
# Peak above the imports, in Gram matrices (the block's arithmetic, fixed by the widths) plus
# checkpoint sizes (what scales with the model). Measured here: 3.83 GB for a 1.02 GB checkpoint
# (imports 0.24 GB; 5.25 GB before the Gram products were converted to fp64 in slices); loading the
# model in fp32, as calibrate did before, adds 2 checkpoint sizes on its own.
PER_GRAM, PER_CHECKPOINT = 2.2, 0.8
IMPORTS = "import autoglm_export.cli, autoglm_export.quantize.calibrate, autoglm_export.quantize.gptq"


@pytest.fixture(scope="module")
def calibrated(real_width, tmp_path_factory):
    """The real-width checkpoint calibrated in a process of its own: (out, peak RSS, run)."""
    out = tmp_path_factory.mktemp("calibrated") / "q"
    peak, run = cli_peak(
        "calibrate",
        "--checkpoint",
        str(real_width),
        "--out",
        str(out),
        "--method",
        "rtn",  # the same streaming, forwards and Gram matrices; GPTQ's sweep at this width takes minutes
        "--max-prompts",
        "1",
        "--text-windows",
        "1",
        "--seq-len",
        "32",
        "--max-context-len",
        "512",  # room for the screenshot prompt: every tower sees activations
    )
    return out, peak, run


def test_calibrate_streams_within_one_blocks_arithmetic(real_width, calibrated):
    size = checkpoint_bytes(real_width)
    base = imports_peak(IMPORTS)
    out, peak, run = calibrated
    assert run.returncode == 0, run.stderr[-3000:]
    assert "block 6/6: text.lm_head" in run.stderr and "RSS" in run.stderr
    assert "(1 with a screenshot" in run.stderr and "saw no calibration tokens" not in run.stderr
    qc = qcheckpoint.load(out)
    # the preset's recipe, as `android` would take it: text group 128, int4 vision blocks, int8 merger
    assert (qc.recipe["group_size"], qc.recipe["encoder"], qc.recipe["merger"]) == (128, "8da4w", "8da8w")
    assert (qc.linears["vision.blocks.0.mlp.up_proj"].bits, qc.linears["vision.merger.down_proj"].bits) == (4, 8)
    src = open_source(real_width, dtype=None, preset="autoglm-phone-9b", max_context=64)
    modules = dict(src.model.named_modules())
    assert sorted(qc.linears) == sorted(qcheckpoint.quantizable_linears(src.model, qcheckpoint_recipe(qc)))
    for fqn in ("text.layers.0.mlp.down_proj", "vision.merger.down_proj", "text.lm_head"):
        q = qc.linears[fqn]
        codes, scales = grid.round_to_nearest(modules[fqn].weight, q.bits, q.group_size)
        assert torch.equal(q.codes, codes) and torch.equal(q.scales, scales), fqn
    assert torch.equal(qc.params["text.embed_tokens.weight"], modules["text.embed_tokens"].weight.float())
    bound = base + PER_GRAM * GRAM + PER_CHECKPOINT * size
    assert peak < bound, (
        run.stderr[-4000:]
        + f"\npeak RSS {peak / 1e9:.2f} GB > {bound / 1e9:.2f} GB for a {size / 1e9:.2f} GB checkpoint"
    )
    print(
        f"calibrate on a {size / 1e9:.2f} GB real-width checkpoint: peak RSS {peak / 1e9:.2f} GB (imports {base / 1e9:.2f} GB)"
    )


def qcheckpoint_recipe(qc):
    from autoglm_export.quantize import QuantRecipe

    return QuantRecipe(**qc.recipe)


def test_android_from_the_quantized_checkpoint_holds_no_fp32_copy(real_width, calibrated, tmp_path):
    """`android --quantized-checkpoint` on it: validated, and the checkpoint's integers reach the program
    without their dequantized fp32 weights (2x the checkpoint at bf16; 35 GB at 9B) ever existing: its
    peak stays under the bound of a plain `android` export (``test_real_size_android.py``)."""
    qc_dir, _, calibration = calibrated
    assert calibration.returncode == 0, calibration.stderr[-3000:]
    size = checkpoint_bytes(real_width)
    base = imports_peak(ANDROID_IMPORTS)
    out = tmp_path / "android"
    peak, run = cli_peak(
        "android",
        "--checkpoint",
        str(real_width),
        "--quantized-checkpoint",
        str(qc_dir),
        "--out",
        str(out),
        "--max-seq-len",
        "64",
        "--image-size",
        "644x280",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["validated"] and json.loads((out / "parity.json").read_text())["passed"]
    recorded = manifest["quantization"]["quantized_checkpoint"]
    assert recorded["method"] == "rtn" and recorded["sha256"] == qcheckpoint.load(qc_dir).config["files"]
    bound = base + ANDROID_PER_CHECKPOINT * size
    assert peak < bound, (
        run.stderr[-4000:]
        + f"\npeak RSS {peak / 1e9:.2f} GB > {bound / 1e9:.2f} GB for a {size / 1e9:.2f} GB checkpoint"
    )
    print(f"android --quantized-checkpoint at real width: peak RSS {peak / 1e9:.2f} GB (bound {bound / 1e9:.2f} GB)")

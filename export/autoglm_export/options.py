"""Command-line options, each defined once (typer ``Annotated`` aliases) and shared by the commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

# ---- the model: what to load, at which static shapes
Checkpoint = Annotated[
    Path | None,
    typer.Option("--checkpoint", help="Hugging Face checkpoint directory (glm4v / glm4v_moe, safetensors)."),
]
AudioCheckpoint = Annotated[
    Path | None,
    typer.Option(
        "--audio-checkpoint", help="GlmAsr checkpoint directory whose encoder + projector become the audio tower."
    ),
]
Preset = Annotated[
    str | None,
    typer.Option(
        "--preset",
        help="Model preset: tiny, small, autoglm-phone-9b. Default: tiny; with --checkpoint, the preset whose widths "
        "it has (its export shapes and quantization defaults), else tiny.",
    ),
]
MaxContext = Annotated[int | None, typer.Option("--max-context-len", help="KV-cache length (default: preset's).")]
# Defaults are the preset's ExportShape (presets/__init__.py); spelled out here so --help needs no torch import.
ImageSize = Annotated[
    str | None,
    typer.Option(
        "--image-size",
        help="One fixed export image resolution HxW, multiples of 28: every image is stretched to it "
        "[default: aspect buckets under --max-pixels; tiny: 168x84].",
    ),
]
MaxPixels = Annotated[
    int | None,
    typer.Option(
        "--max-pixels",
        help="Image budget in transformers' processor units (size['longest_edge'], 2 frames x H x W): one "
        "vision method per aspect bucket (phone portrait, tablet, square, landscape), each the processor's size "
        "under it [default: small, autoglm-phone-9b 401408 (<= 256 image tokens); tiny: one fixed size].",
        min=1,
    ),
]
AudioFrames = Annotated[
    int | None,
    typer.Option(
        "--audio-frames",
        help="Mel frames per audio clip, 100 per second; longer clips are cut (with a warning) "
        "[default: the preset's: tiny 400 (4 s), small 400, autoglm-phone-9b 3000 (30 s)].",
    ),
]
QuantizedCheckpoint = Annotated[
    Path | None,
    typer.Option(
        "--quantized-checkpoint",
        help="Directory written by `calibrate` or `qat`: its integer weights are exported as they are (with the model it was made from).",
    ),
]
ReferenceCheckpoint = Annotated[
    Path | None,
    typer.Option("--checkpoint", help="Compare against this checkpoint instead of the one in the manifest."),
]

# ---- the bundle
BundleOut = Annotated[Path, typer.Option("--out", help="Bundle directory (written atomically).")]
Validate = Annotated[
    bool,
    typer.Option(
        "--validate/--no-validate", help="Run the bundle with its target's runtime and publish it only if parity holds."
    ),
]
Force = Annotated[bool, typer.Option("--force", help="Overwrite an existing bundle or quantized checkpoint.")]
BlockSize = Annotated[
    int | None,
    typer.Option(
        "--block-size",
        help="int4 block size along the input dimension: 16, 32 (default, or the quantized checkpoint's group size), 64, 128, 256.",
    ),
]

# ---- the recipe (QuantEncoder, QuantMerger: android too) and the calibration samples (calibrate, qat)
QuantizedOut = Annotated[Path, typer.Option("--out", help="Quantized checkpoint directory (written atomically).")]
CalibrationQuant = Annotated[
    str | None, typer.Option("--quant", help="Text decoder linears: 8da4w or 8da8w. [default: 8da4w, or the preset's]")
]
GROUP_SIZE_HELP = (
    "int4 weights per scale: each row of a linear layer is cut into groups of this many input "
    "channels, each with its own scale. 32, 64, 128 or 256; smaller is more accurate, larger is smaller on disk."
)
CalibrationGroupSize = Annotated[
    int | None, typer.Option("--group-size", help=GROUP_SIZE_HELP + " [default: 32, or the preset's]")
]
QuantEncoder = Annotated[
    str | None,
    typer.Option(
        "--quant-encoder", help="Vision/audio tower linears: 8da4w, 8da8w, fp32. [default: 8da8w, or the preset's]"
    ),
]
QuantMerger = Annotated[
    str | None,
    typer.Option(
        "--quant-merger",
        help="The vision merger's linears (after the tower's blocks): 8da4w, 8da8w, fp32. "
        "[default: as --quant-encoder, or the preset's]",
    ),
]
CalibrationData = Annotated[
    Path | None,
    typer.Option("--calibration-data", help="Calibration set directory (default: the repository's calibration_data/)."),
]
MaxPrompts = Annotated[int | None, typer.Option("--max-prompts", help="Use at most this many calibration prompts.")]
TextWindows = Annotated[
    int, typer.Option("--text-windows", help="Text-only samples of --seq-len tokens from the calibration text.")
]
SeqLen = Annotated[int, typer.Option("--seq-len", help="Tokens per text-only sample.")]
Nproc = Annotated[
    int,
    typer.Option(
        "--nproc",
        help="Run as N processes on this machine under torchrun (gloo on CPU, NCCL with one GPU each); "
        "across machines, start it with torchrun yourself (README).",
    ),
]


def parse_hw(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        h, w = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"expected HxW such as 336x168, got '{value}'") from None
    return h, w

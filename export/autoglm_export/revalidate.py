"""``autoglm-export validate BUNDLE``: rebuild the references the bundle was gated on and compare again."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from autoglm_runtime.backends import backend_for_bundle
from autoglm_runtime.bundle import open_bundle
from autoglm_runtime.parity import ParityReport

from .pipeline import ModelRequest, Stages, bundle_checkpoint, quant_kinds, quantize_with_references
from .quantize import QuantRecipe
from .validate import compare, run_components


def validate_bundle(bundle_dir: Path, checkpoint: Path | None = None, audio_checkpoint: Path | None = None) -> ParityReport:
    bundle = open_bundle(bundle_dir)  # checks every file's size and sha256 first
    manifest = bundle.manifest
    if manifest["target"] == "coreml":  # Core ML rounds weights its own way (targets/coreml.py)
        from .ios_export import validate_ios_bundle

        return validate_ios_bundle(bundle, checkpoint, audio_checkpoint)
    if manifest["target"] == "onnx":  # MatMulNBits int4 has its own eager reference (targets/onnx.py)
        from .onnx_export import validate_onnx_bundle

        return validate_onnx_bundle(bundle, checkpoint, audio_checkpoint)
    shape = manifest["export_shape"]
    request = replace(ModelRequest.from_dict(manifest["source"]), max_context=shape["max_context"],
                      image_hw=tuple(shape["image_hw"]), audio_frames=shape["audio_frames"])
    if checkpoint is not None:
        request = replace(request, checkpoint=Path(checkpoint), audio_checkpoint=audio_checkpoint)
    recipe = QuantRecipe(**manifest["quantization"]["recipe"])
    max_seq_len = manifest.get("max_seq_len") or shape["max_context"]
    src = request.open()
    refs = quantize_with_references(src, recipe, max_seq_len, Stages(), qc=bundle_checkpoint(manifest, src, request))
    got = run_components(backend_for_bundle(bundle), refs.probes, max_seq_len)
    return compare(manifest["target"], got, refs.outputs, quant_kinds(recipe))

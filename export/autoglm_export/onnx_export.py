"""``autoglm-export onnx``: one .onnx per component + tokenizer + manifest + parity report.

checkpoint -> torch.onnx.export each component (fp32 weights; KV cache as explicit inputs/outputs)
-> int4: MatMulNBits on every linear's MatMul (in a temp bundle) -> fp32 references -> the same
int4 rounding applied to the eager model -> quantized references -> run the bundle with
onnxruntime -> parity gate -> publish.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from autoglm_runtime.backends.torch_backend import TorchBackend
from autoglm_runtime.parity import ParityReport

from .bundle import BundleWriter, check_destination
from .errors import ExportError
from .pipeline import (ModelRequest, References, Stages, base_manifest, check_against_transformers, fp32_references,
                       gate_on_parity, parity_failed_path, quant_kinds)
from .quantize import QuantReport
from .source import ModelSource
from .targets.onnx import (EXTERNAL_DATA_THRESHOLD, OPSET, QUANT_SCHEMES, cache_names, cache_shape, export_onnx_files,
                           fake_quantize_int4, int4_layers, linear_modules)
from .validate import compare, run_components

log = logging.getLogger(__name__)
BLOCK_SIZES = (16, 32, 64, 128, 256)  # MatMulNBits: a power of two, at least 16


@dataclass(frozen=True)
class OnnxQuant:
    """What ``--quant`` / ``--block-size`` mean for ONNX (the manifest's ``quantization.recipe``)."""

    scheme: str = "int4"  # linears of all three towers, lm_head included; "fp32": none
    block_size: int = 32

    def __post_init__(self):
        if self.scheme not in QUANT_SCHEMES:
            raise ExportError(f"--quant {self.scheme}: expected one of {', '.join(QUANT_SCHEMES)}")
        if self.block_size not in BLOCK_SIZES:
            raise ExportError(f"--block-size {self.block_size}: expected one of {', '.join(map(str, BLOCK_SIZES))}")

    def kind(self, component: str) -> str:
        """How the component is quantized (decides its parity thresholds): int4 weights, fp32 activations."""
        if self.scheme == "fp32" or component == "token_embedding":
            return "fp32"
        return "weight_only"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "OnnxQuant":
        return cls(d.get("scheme", "int4"), int(d.get("block_size", 32)))


@dataclass
class OnnxOptions:
    out: Path = Path("dist/onnx")
    quant: OnnxQuant = OnnxQuant()
    max_seq_len: int = 128  # prefill chunk of the parity gate and of `run`; the graph takes any length
    validate: bool = True
    force: bool = False
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD



def onnx_references(src: ModelSource, quant: OnnxQuant, max_seq_len: int, stages: Stages,
                    validate: bool = True) -> References:
    """fp32 reference outputs, then the ONNX int4 rounding applied to the eager model in place, then
    the quantized-eager outputs (for fp32 the two references are the same outputs).

    ``pipeline.quantize_with_references`` does this for torchao recipes; MatMulNBits rounds its own way.
    """
    probes, outputs = fp32_references(src, max_seq_len, stages) if validate else ([], {})
    report = QuantReport()
    if quant.scheme == "int4" and not validate:
        report.layers = int4_layers(src.model, quant.block_size)  # nothing to compare: leave the weights alone
    elif quant.scheme == "int4":
        with stages.stage(f"int4 weights (block {quant.block_size}) in the eager model"):
            report.layers = fake_quantize_int4(src.model, quant.block_size)
        with stages.stage("quantized eager reference outputs"):
            outputs["quantized_eager"] = run_components(TorchBackend(src.model), probes, max_seq_len)
    else:
        report.layers = {"text.embed_tokens": "fp32"}
        report.layers.update({fqn: "fp32" for mods in linear_modules(src.model).values() for fqn, _ in mods})
        if validate:
            outputs["quantized_eager"] = outputs["fp32"]
    return References(probes, outputs, report)


def export_onnx(request: ModelRequest, opts: OnnxOptions) -> tuple[Path, ParityReport | None]:
    check_destination(opts.out, opts.force)
    quant = opts.quant
    stages = Stages()
    with stages.stage("load model"):
        src = request.open()
    if not 2 <= opts.max_seq_len <= src.spec.max_context:
        raise ExportError(f"--max-seq-len {opts.max_seq_len} must be between 2 and the context length {src.spec.max_context}")
    reference_check = check_against_transformers(src, stages) if opts.validate else None
    report = None
    with BundleWriter(opts.out, force=opts.force) as bundle:
        assert bundle.tmp_dir is not None
        with stages.stage(f"torch.onnx.export ({quant.scheme})"):
            exported = export_onnx_files(src.model, bundle.tmp_dir, quant.scheme, quant.block_size, opts.max_seq_len,
                                         opts.external_data_threshold, progress=log.info)
        refs = onnx_references(src, quant, opts.max_seq_len, stages, validate=opts.validate)
        if src.tokenizer_path is not None:
            bundle.copy("tokenizer.json", src.tokenizer_path)
        if opts.validate:
            from autoglm_runtime.backends.onnx_backend import OnnxBackend

            with stages.stage("validate the .onnx files with onnxruntime"):
                backend = OnnxBackend({c: bundle.path(f.file) for c, f in exported.files.items()})
                got = run_components(backend, refs.probes, opts.max_seq_len)
                report = compare("onnx", got, refs.outputs, quant_kinds(quant))
                report.info = {"backend": "onnxruntime (CPUExecutionProvider)", "quantization": quant.to_dict(),
                               "max_seq_len": opts.max_seq_len}
            gate_on_parity(report, bundle, opts.out)
        stages.seconds.update(exported.seconds)
        manifest = base_manifest("onnx", src, request, quant, refs, stages)
        layers = len(src.model.text.layers)
        past, present = cache_names(layers)
        manifest.update({
            "max_seq_len": opts.max_seq_len,
            "opset": {"ai.onnx": OPSET, **({"com.microsoft": 1} if quant.scheme == "int4" else {})},
            "models": {c: f.to_dict() for c, f in exported.files.items()},
            "kv_cache": {"layers": layers, "shape": list(cache_shape(src.model)), "dtype": "float32",
                         "inputs": past, "outputs": present,
                         "rule": "feed each call's present_* back as the next call's past_*; zeros to start a conversation"},
            "external_data_threshold_bytes": opts.external_data_threshold,
            "validated": opts.validate,
            "reference_check": reference_check,
        })
        bundle.finish(manifest)
    parity_failed_path(opts.out).unlink(missing_ok=True)
    log.info("published %s", opts.out)
    return opts.out, report


def validate_onnx_bundle(bundle, checkpoint: Path | None = None, audio_checkpoint: Path | None = None) -> ParityReport:
    """``autoglm-export validate`` for an ONNX bundle: fresh references with the bundle's int4
    rounding, the .onnx files re-run with onnxruntime, compared again (``bundle``: an opened Bundle)."""
    from autoglm_runtime.backends.onnx_backend import OnnxBackend

    manifest = bundle.manifest
    shape = manifest["export_shape"]
    request = replace(ModelRequest.from_dict(manifest["source"]), max_context=shape["max_context"],
                      image_hw=tuple(shape["image_hw"]), audio_frames=shape["audio_frames"])
    if checkpoint is not None:
        request = replace(request, checkpoint=Path(checkpoint), audio_checkpoint=audio_checkpoint)
    quant = OnnxQuant.from_dict(manifest["quantization"]["recipe"])
    max_seq_len = int(manifest["max_seq_len"])
    refs = onnx_references(request.open(), quant, max_seq_len, Stages())
    got = run_components(OnnxBackend.from_bundle(bundle), refs.probes, max_seq_len)
    return compare("onnx", got, refs.outputs, quant_kinds(quant))

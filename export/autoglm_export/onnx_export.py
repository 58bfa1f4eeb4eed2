"""``autoglm-export onnx``: one .onnx per component + tokenizer + manifest + parity report.

checkpoint -> torch.onnx.export each component (fp32 weights; KV cache as explicit inputs/outputs)
-> int4: MatMulNBits on every linear's MatMul (in a temp bundle) -> fp32 references -> the same
int4 rounding applied to the eager model -> quantized references -> run the bundle with
onnxruntime -> parity gate -> publish.

With ``--quantized-checkpoint DIR`` (from ``calibrate`` / ``qat``): fp32 references from the original
weights -> the checkpoint's parameters loaded -> quantized-eager references on exactly those weights
(no rounding of our own) -> export, with the checkpoint's integers written into the graphs
(``targets.onnx.apply_checkpoint_codes``: int4 and int8 per-channel as MatMulNBits with 4 / 8 bits,
fp32 compute; fp32 layers left fp32) -> onnxruntime -> parity gate. ``--block-size`` defaults to the
checkpoint's int4 group size and must equal it; ``--quant fp32`` is refused (it would drop the integers).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from autoglm_runtime.backends.torch_backend import TorchBackend
from autoglm_runtime.parity import ParityReport

from .bundle import BundleWriter, check_destination
from .errors import ExportError
from .pipeline import (ModelRequest, References, Stages, base_manifest, bundle_checkpoint, check_against_transformers, fp32_references,
                       gate_on_parity, parity_failed_path, quantized_checkpoint_info)
from .validate import COMPONENTS
from .quantize import QuantReport
from .quantize.qcheckpoint import read_layers
from .source import ModelSource
from .targets.onnx import (EXTERNAL_DATA_THRESHOLD, OPSET, QUANT_SCHEMES, cache_names, cache_shape,
                           checkpoint_layers_report, export_onnx_files, fake_quantize_int4, int4_layers, linear_modules)
from .validate import compare, run_components

log = logging.getLogger(__name__)
BLOCK_SIZES = (16, 32, 64, 128, 256)  # MatMulNBits: a power of two, at least 16


@dataclass(frozen=True)
class OnnxQuant:
    """What ``--quant`` / ``--block-size`` mean for ONNX (the manifest's ``quantization.recipe``)."""

    scheme: str = "int4"  # linears of all three towers, lm_head included; "fp32": none
    block_size: int | None = 32  # None: 32, or a quantized checkpoint's int4 group size (export_onnx resolves it)

    def __post_init__(self):
        if self.scheme not in QUANT_SCHEMES:
            raise ExportError(f"--quant {self.scheme}: expected one of {', '.join(QUANT_SCHEMES)}")
        if self.block_size is not None and self.block_size not in BLOCK_SIZES:
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


def component_of(fqn: str) -> str:
    """The component (exported file / package) whose graph runs a linear, by its fqn."""
    return {"vision": "vision_encoder", "audio": "audio_encoder", "text": "text_decoder"}[fqn.split(".", 1)[0]]


def quant_kinds(quant: OnnxQuant, fixed: dict | None = None) -> dict[str, str]:
    """Parity kind per component; with a quantized checkpoint (``fixed``: its linears) a tower is
    ``weight_only`` when the checkpoint quantized any of its linears, else ``fp32``."""
    if fixed is None:
        return {c: quant.kind(c) for c in COMPONENTS}
    quantized = {component_of(fqn) for fqn in fixed}
    return {c: "weight_only" if c in quantized else "fp32" for c in COMPONENTS}


def checkpoint_block_size(layers: dict[str, dict], block_size: int | None, path) -> int:
    """The int4 block size for a quantized checkpoint with these layers: its group size (``--block-size``,
    when given, must equal it); ``block_size`` or 32 when it has no int4 layers."""
    groups = sorted({int(v["group_size"]) for v in layers.values() if int(v["bits"]) == 4})
    if not groups:
        return block_size or 32
    if len(groups) > 1:
        raise ExportError(f"{path}: int4 layers in groups of {groups}; the export takes one block size")
    if block_size is not None and block_size != groups[0]:
        raise ExportError(f"--block-size {block_size}: the quantized checkpoint {path} has int4 groups of {groups[0]}; "
                          f"drop --block-size (it defaults to the checkpoint's) or re-run calibrate/qat with --group-size {block_size}")
    if groups[0] not in BLOCK_SIZES:
        raise ExportError(f"{path}: int4 groups of {groups[0]}; this target takes blocks of {', '.join(map(str, BLOCK_SIZES))}")
    return groups[0]


def checkpoint_quant(quant: OnnxQuant, layers: dict[str, dict], path) -> OnnxQuant:
    if quant.scheme != "int4":
        raise ExportError(f"--quant {quant.scheme} with --quantized-checkpoint {path}: the checkpoint's integer weights "
                          "would be dropped; use --quant int4 (the default) or leave out --quantized-checkpoint")
    return replace(quant, block_size=checkpoint_block_size(layers, quant.block_size, path))


@dataclass
class OnnxOptions:
    out: Path = Path("dist/onnx")
    quant: OnnxQuant = OnnxQuant()
    max_seq_len: int = 128  # prefill chunk of the parity gate and of `run`; the graph takes any length
    validate: bool = True
    force: bool = False
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD



def onnx_references(src: ModelSource, quant: OnnxQuant, max_seq_len: int, stages: Stages,
                    validate: bool = True, qc=None) -> References:
    """fp32 reference outputs, then the ONNX int4 rounding applied to the eager model in place, then
    the quantized-eager outputs (for fp32 the two references are the same outputs).

    ``pipeline.quantize_with_references`` does this for torchao recipes; MatMulNBits rounds its own way.
    ``qc`` (a quantized checkpoint): after the fp32 outputs its parameters are loaded (its linears get
    ``codes * scales``) and nothing is rounded: the graphs hold those integers exactly. Export after this.
    """
    probes, outputs = fp32_references(src, max_seq_len, stages) if validate else ([], {})
    report = QuantReport()
    if qc is not None:
        from .quantize import qcheckpoint

        with stages.stage(f"load {qc.method} weights from {qc.path}"):
            qcheckpoint.load_into_model(qc, src.model)
        report.layers = checkpoint_layers_report(src.model, qc.linears)
        report.calibrated = sorted(qc.linears)
        if validate:
            with stages.stage("quantized eager reference outputs (the checkpoint's weights)"):
                outputs["quantized_eager"] = run_components(TorchBackend(src.model), probes, max_seq_len)
        return References(probes, outputs, report, quantized_checkpoint_info(qc))
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
    if request.quantized_checkpoint is not None:  # option conflicts fail before the model is loaded
        quant = checkpoint_quant(quant, read_layers(request.quantized_checkpoint), request.quantized_checkpoint)
    elif quant.block_size is None:
        quant = replace(quant, block_size=32)
    stages = Stages()
    with stages.stage("load model"):
        src = request.open()
    if not 2 <= opts.max_seq_len <= src.spec.max_context:
        raise ExportError(f"--max-seq-len {opts.max_seq_len} must be between 2 and the context length {src.spec.max_context}")
    qc = request.open_quantized(src)
    fixed = qc.linears if qc is not None else None
    reference_check = check_against_transformers(src, stages) if opts.validate else None
    if qc is not None:  # the checkpoint's weights replace the model's before export: references first
        quant = checkpoint_quant(quant, {f: {"bits": q.bits, "group_size": q.group_size} for f, q in fixed.items()}, qc.path)
        refs = onnx_references(src, quant, opts.max_seq_len, stages, validate=opts.validate, qc=qc)
    report = None
    with BundleWriter(opts.out, force=opts.force) as bundle:
        assert bundle.tmp_dir is not None
        with stages.stage(f"torch.onnx.export ({quant.scheme}{', quantized checkpoint' if qc is not None else ''})"):
            exported = export_onnx_files(src.model, bundle.tmp_dir, quant.scheme, quant.block_size, opts.max_seq_len,
                                         opts.external_data_threshold, progress=log.info, fixed=fixed)
        if qc is None:
            refs = onnx_references(src, quant, opts.max_seq_len, stages, validate=opts.validate)
        if src.tokenizer_path is not None:
            bundle.copy("tokenizer.json", src.tokenizer_path)
        if opts.validate:
            from autoglm_runtime.backends.onnx_backend import OnnxBackend

            with stages.stage("validate the .onnx files with onnxruntime"):
                backend = OnnxBackend({c: bundle.path(f.file) for c, f in exported.files.items()})
                got = run_components(backend, refs.probes, opts.max_seq_len)
                report = compare("onnx", got, refs.outputs, quant_kinds(quant, fixed))
                report.info = {"backend": "onnxruntime (CPUExecutionProvider)", "quantization": quant.to_dict(),
                               "max_seq_len": opts.max_seq_len}
            gate_on_parity(report, bundle, opts.out)
        stages.seconds.update(exported.seconds)
        manifest = base_manifest("onnx", src, request, quant, refs, stages)
        manifest["quantization"].update({"kinds": quant_kinds(quant, fixed), "layers": refs.quant_report.layers})
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
    src = request.open()
    qc = bundle_checkpoint(manifest, src, request)  # the bundle's --quantized-checkpoint (source.quantized_checkpoint)
    refs = onnx_references(src, quant, max_seq_len, Stages(), qc=qc)
    got = run_components(OnnxBackend.from_bundle(bundle), refs.probes, max_seq_len)
    return compare("onnx", got, refs.outputs, quant_kinds(quant, qc.linears if qc is not None else None))

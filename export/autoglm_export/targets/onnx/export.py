"""``autoglm-export onnx``: one .onnx per component + tokenizer + manifest + parity report.

The ONNX target of ``pipeline.export_bundle``: each component is traced with placeholder weights and
its initializers are made from the stored weights one linear at a time as the file is written
(``convert.py``, ``weights.py``: int4 ``MatMulNBits`` or fp32; a quantized checkpoint's integers as
they are), and then ``twin.py`` applies the same int4 rounding to the eager model, one linear at a
time too, so no fp32 copy of the model exists at any point. With ``--quantized-checkpoint`` nothing is rounded: the graphs hold the
checkpoint's integers (int4 and int8 per-channel as MatMulNBits with 4 / 8 bits, fp32 compute;
fp32 layers stay fp32); ``--block-size`` defaults to the checkpoint's int4 group size and must
equal it; ``--quant fp32`` is refused (it would drop the integers).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

from ...components import COMPONENTS, component_of
from ...disk import unpacked_quantized_bytes
from ...errors import ExportError
from ...quantize import QuantRecipe, QuantReport
from ...quantize.qcheckpoint import block_size_for, read_layers
from ...quantize.recipes import int_scheme
from .. import ExportOptions, Job, Target, register_target
from .convert import EXTERNAL_DATA_THRESHOLD, OPSET, cache_names, cache_shape, export_onnx_files
from .recipe import OnnxQuant
from .twin import checkpoint_layers_report, fp32_twin, int4_layers, int4_twin

log = logging.getLogger(__name__)


@dataclass
class OnnxOptions(ExportOptions):
    out: Path = Path("dist/onnx")
    quant: OnnxQuant = field(default_factory=OnnxQuant)
    max_seq_len: int = 128  # prefill chunk of the parity gate and of `run`; the graph takes any length
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD


def quant_kinds(quant: OnnxQuant, fixed: dict | None = None) -> dict[str, str]:
    """Parity kind per component; with a quantized checkpoint (``fixed``: its linears) a tower is
    ``weight_only`` when the checkpoint quantized any of its linears, else ``fp32``."""
    if fixed is None:
        return {c: quant.kind(c) for c in COMPONENTS}
    quantized = {component_of(fqn) for fqn in fixed}
    return {c: quant.weight_kind if c in quantized else "fp32" for c in COMPONENTS}


def checkpoint_quant(quant: OnnxQuant, layers: dict[str, dict], path) -> OnnxQuant:
    if quant.embedding != "fp32":
        raise ExportError(
            f"--quant-embedding {quant.embedding} with --quantized-checkpoint {path}: not supported yet (the "
            "checkpoint's graphs keep the token embedding fp32); leave out --quant-embedding"
        )
    if quant.scheme != "int4":
        raise ExportError(
            f"--quant {quant.scheme} with --quantized-checkpoint {path}: the checkpoint's integer weights "
            "would be dropped; use --quant int4 (the default) or leave out --quantized-checkpoint"
        )
    return replace(quant, block_size=block_size_for(layers, quant.block_size, path))


@register_target
class OnnxTarget(Target):
    name = "onnx"
    command = "onnx"
    converts = "original"  # MatMulNBits rounds the weights itself; the twin copies that rounding
    keeps_stored = True  # the graphs' weights and the twin are made one linear at a time (weights.py, twin.py)

    def resolve(self, options: OnnxOptions, quantized_checkpoint):
        quant = options.quant
        if quantized_checkpoint is not None:
            quant = checkpoint_quant(quant, read_layers(quantized_checkpoint), quantized_checkpoint)
        elif quant.block_size is None:
            quant = replace(quant, block_size=32)
        return replace(options, quant=quant)

    def check(self, src, options: OnnxOptions) -> None:
        if not 2 <= options.max_seq_len <= src.spec.max_context:
            raise ExportError(
                f"--max-seq-len {options.max_seq_len} must be between 2 and the context length {src.spec.max_context}"
            )

    def scratch_bytes(self, cfg, shape, options: OnnxOptions, bundle_bytes: int) -> int:
        # the twin's int4 codes (one int8 per weight) and scales, kept until the gate has run
        if not options.validate or options.quant.scheme != "int4":
            return 0
        return unpacked_quantized_bytes(cfg, shape, self.size_recipe(options))

    def chunk(self, options: OnnxOptions) -> int:
        return options.max_seq_len

    def size_recipe(self, options: OnnxOptions) -> QuantRecipe:
        q = options.quant
        scheme = int_scheme(q.scheme, q.block_size)
        return QuantRecipe(
            linear=scheme,
            encoder=scheme,
            embedding="4" if q.embedding == "int4" else "none",
            group_size=max(q.block_size or 32, 32),
        )

    def recipe(self, options: OnnxOptions) -> OnnxQuant:
        return options.quant

    def twin(self, job: Job) -> QuantReport:
        model, quant = job.src.model, job.options.quant
        report = QuantReport()
        if job.qc is not None:  # already loaded: the graphs hold exactly these weights
            report.layers = checkpoint_layers_report(model, job.fixed)
            report.calibrated = sorted(job.fixed)
        elif quant.scheme == "int4" and not job.options.validate:
            # nothing to compare: leave the weights alone
            report.layers = int4_layers(model, quant.block_size, quant.embedding)
        elif quant.scheme == "int4":
            with job.stages.stage(f"int4 weights (block {quant.block_size}) in the eager model"):
                report.layers = int4_twin(model, quant.block_size, job.scratch, quant.embedding)
        else:
            report.layers = fp32_twin(model)
        return report

    def convert(self, job: Job) -> None:
        opts, quant = job.options, job.options.quant
        with job.stages.stage(
            f"torch.onnx.export ({quant.scheme}{', quantized checkpoint' if job.qc is not None else ''})"
        ):
            exported = export_onnx_files(
                job.src.model,
                job.bundle.tmp_dir,
                quant.scheme,
                quant.block_size,
                opts.max_seq_len,
                opts.external_data_threshold,
                progress=log.info,
                fixed=job.fixed,
                accuracy_level=quant.accuracy_level,
                embedding=quant.embedding,
            )
        job.stages.seconds.update(exported.seconds)
        job.artifacts["exported"] = exported

    def quant_kinds(self, options: OnnxOptions, fixed) -> dict[str, str]:
        return quant_kinds(options.quant, fixed)

    def runtime_name(self, options) -> str:
        return "onnxruntime"

    def backend(self, root: Path, fields: dict, options):
        from autoglm_runtime.backends.onnx_backend import OnnxBackend

        return OnnxBackend({c: Path(root) / f["file"] for c, f in fields["models"].items()})

    def parity_info(self, options: OnnxOptions, backend) -> dict:
        return {
            "backend": "onnxruntime (CPUExecutionProvider)",
            "quantization": options.quant.to_dict(),
            "max_seq_len": options.max_seq_len,
        }

    def manifest_fields(self, job: Job) -> dict:
        opts, model, exported = job.options, job.src.model, job.artifacts["exported"]
        layers = len(model.text.layers)
        past, present = cache_names(layers)
        return {
            "max_seq_len": opts.max_seq_len,
            "opset": {"ai.onnx": OPSET, **({"com.microsoft": 1} if opts.quant.scheme == "int4" else {})},
            "models": {c: f.to_dict() for c, f in exported.files.items()},
            "kv_cache": {
                "layers": layers,
                "shape": list(cache_shape(model)),
                "dtype": "float32",
                "inputs": past,
                "outputs": present,
                "rule": "feed each call's present_* back as the next call's past_*; zeros to start a conversation",
            },
            "external_data_threshold_bytes": opts.external_data_threshold,
        }

    def options_from_manifest(self, manifest: dict) -> OnnxOptions:
        return OnnxOptions(
            quant=OnnxQuant.from_dict(manifest["quantization"]["recipe"]), max_seq_len=int(manifest["max_seq_len"])
        )

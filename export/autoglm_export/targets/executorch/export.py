"""``autoglm-export android``: one ExecuTorch program + tokenizer + manifest + parity report.

The ExecuTorch target of ``pipeline.export_bundle``: the eager model is quantized in place with
torchao (``twin.py``), then that very model is torch.exported and lowered (``lower.py``), with the
decoder's attention swapped for ExecuTorch's fused kernels (``attention.py``) during lowering only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

from ...components import COMPONENTS, components
from ...errors import ExportError
from ...quantize import QuantRecipe
from ...source import ModelSource
from ...stages import memory
from .. import ExportOptions, Job, Target, register_target
from .attention import executorch_attention
from .lower import check_backend, lower
from .twin import quantize_twin

log = logging.getLogger(__name__)
PTE = "model.pte"


@dataclass
class ExecuTorchOptions(ExportOptions):
    out: Path = Path("dist/android")
    recipe: QuantRecipe = field(default_factory=QuantRecipe)
    max_seq_len: int = 128
    backend: str = "xnnpack"
    soc: str | None = None
    custom_ops: bool = True  # ExecuTorch's update_cache + custom_sdpa kernels in the decoder

    @property
    def uses_custom_ops(self) -> bool:
        return self.custom_ops and self.backend == "xnnpack"


def constant_methods(src: ModelSource, max_seq_len: int) -> dict:
    """ExecuTorch LLM-runner metadata plus what our runtime needs, as constant methods."""
    spec = src.spec
    tokens = {}
    if src.tokenizer_path is not None:
        from autoglm_runtime.tokenizer import Tokenizer

        tokens = Tokenizer(src.tokenizer_path).special_ids()
    meta = {
        "get_max_seq_len": max_seq_len,
        "get_max_context_len": spec.max_context,
        "get_bos_id": tokens.get("[gMASK]", 0),  # GLM prompts start with [gMASK]<sop>; no classic BOS
        "get_eos_ids": list(spec.eos_token_ids),
        "get_vocab_size": spec.vocab_size,
        "use_kv_cache": True,
        "enable_dynamic_shape": True,
        "get_hidden_size": spec.hidden_size,
        "get_image_token_id": spec.image_token_id,
        "get_image_tokens": spec.image_tokens,
        "get_image_height": spec.image.height,
        "get_image_width": spec.image.width,
    }
    if spec.image.buckets:  # flat (height, width) pairs, the default first; method names in the manifest
        meta["get_image_buckets"] = [v for size in spec.image.buckets for v in size]
        meta["get_max_pixels"] = spec.image.max_pixels
    if spec.audio is not None:
        meta.update(
            {
                "get_audio_token_id": spec.audio_token_id if spec.audio_token_id is not None else -1,
                "get_audio_tokens": spec.audio_tokens,
                "get_n_mels": spec.audio.num_mel_bins,
                "get_audio_frames": spec.audio.num_frames,
            }
        )
    return meta


@register_target
class ExecuTorchTarget(Target):
    name = "executorch"
    command = "android"
    converts = "twin"  # XNNPACK lowers torchao's quantized modules: the twin is the program
    keeps_stored = True  # torchao quantizes layer by layer from the stored bf16 weights

    def resolve(self, options: ExecuTorchOptions, quantized_checkpoint):
        check_backend(options.backend, options.soc, options.recipe.linear)
        return options

    def check(self, src, options: ExecuTorchOptions) -> None:
        if not 2 <= options.max_seq_len <= src.spec.max_context:
            raise ExportError(
                f"--max-seq-len {options.max_seq_len} must be between 2 and the context length {src.spec.max_context}"
            )

    def size_recipe(self, options: ExecuTorchOptions) -> QuantRecipe:
        return options.recipe

    def chunk(self, options: ExecuTorchOptions) -> int:
        return options.max_seq_len

    def recipe(self, options: ExecuTorchOptions) -> QuantRecipe:
        return options.recipe

    def twin(self, job: Job):
        recipe = job.options.recipe
        with job.stages.stage("quantize " + ", ".join(f"{k}={v}" for k, v in recipe.to_dict().items())):
            return quantize_twin(job.src.model, recipe, job.qc)

    def convert(self, job: Job) -> None:
        opts, src = job.options, job.src
        with (
            job.stages.stage(f"export + lower ({opts.backend})"),
            executorch_attention(src.model, opts.uses_custom_ops),
        ):
            lowered = lower(
                components(src.model, opts.max_seq_len),
                constant_methods(src, opts.max_seq_len),
                opts.backend,
                opts.soc,
                progress=lambda msg: log.info("  %s%s", msg, memory()),
            )
        for name, d in lowered.delegation.items():
            log.info(
                "  %s: %.0f%% of %d nodes delegated to %s",
                name,
                100 * d["delegated_fraction"],
                d["delegated_nodes"] + d["non_delegated_nodes"],
                opts.backend,
            )
        with job.stages.stage(f"write {PTE}"):
            size = lowered.write(job.bundle.path(PTE))
        lowered.program = None  # its serialised copy and lowered graphs are not needed any more: free them
        log.info("wrote %s (%.1f MB)", PTE, size / 1e6)
        job.artifacts["lowered"] = lowered

    def quant_kinds(self, options: ExecuTorchOptions, fixed) -> dict[str, str]:
        return {c: options.recipe.kind(c) for c in COMPONENTS}

    def runtime_name(self, options) -> str:
        return "the ExecuTorch runtime"

    def backend(self, root: Path, fields: dict, options):
        from autoglm_runtime.backends.executorch_backend import ExecuTorchBackend

        return ExecuTorchBackend(Path(root) / fields["program"])

    def manifest_fields(self, job: Job) -> dict:
        opts, lowered = job.options, job.artifacts["lowered"]
        return {
            "backend": opts.backend,
            "soc": opts.soc,
            "max_seq_len": opts.max_seq_len,
            "program": PTE,
            "methods": lowered.methods,
            "constant_methods": lowered.constant_methods,
            "delegation": lowered.delegation,
            "custom_ops": opts.uses_custom_ops,
        }

    def options_from_manifest(self, manifest: dict) -> ExecuTorchOptions:
        return replace(
            ExecuTorchOptions(),
            recipe=QuantRecipe(**manifest["quantization"]["recipe"]),
            max_seq_len=int(manifest["max_seq_len"]),
            backend=manifest.get("backend", "xnnpack"),
            soc=manifest.get("soc"),
            custom_ops=bool(manifest.get("custom_ops", True)),
        )

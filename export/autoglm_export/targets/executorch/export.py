"""``autoglm-export android``: one ExecuTorch program + tokenizer + manifest + parity report.

The ExecuTorch target of ``pipeline.export_bundle``: the eager model is quantized in place with
torchao (``twin.py``), then that very model is torch.exported and lowered (``lower.py``), with the
decoder's attention swapped for ExecuTorch's fused kernels (``attention.py``) and its graph made
delegable, plus a single-token ``text_decoder_step`` (``decoder.py``), during lowering only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

from ...components import COMPONENTS
from ...disk import unpacked_quantized_bytes
from ...errors import ExportError
from ...quantize import QuantRecipe
from ...source import ModelSource
from ...stages import memory
from .. import ExportOptions, Job, Target, register_target
from .decoder import executorch_decoder
from .lower import check_backend, lower
from .twin import quantize_twin

log = logging.getLogger(__name__)
PTE = "model.pte"
WEIGHTS = "model"  # external weights file stem: model.ptd (ExecuTorch adds the suffix)


@dataclass
class ExecuTorchOptions(ExportOptions):
    out: Path = Path("dist/android")
    recipe: QuantRecipe = field(default_factory=QuantRecipe)
    max_seq_len: int = 128
    backend: str = "xnnpack"
    soc: str | None = None
    custom_ops: bool = True  # ExecuTorch's update_cache + custom_sdpa kernels in the decoder
    external_weights: bool = False  # weights in model.ptd beside a small model.pte
    # text_decoder_step (decoder.py): no faster than text_decoder for one token (BENCHMARKS.md), and
    # XNNPACK packs its weights again at load (+ the decoder's int4 bytes: GBs at 9B), so off by default
    decode_step: bool = False

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
    twin_from_codes = True  # torchao's tensors are made over a quantized checkpoint's integers (twin.py)

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

    def scratch_bytes(self, cfg, shape, options: ExecuTorchOptions, bundle_bytes: int) -> int:
        # torchao's unpacked quantized weights, then XNNPACK's packed copies (about the bundle again).
        return unpacked_quantized_bytes(cfg, shape, options.recipe) + bundle_bytes

    def chunk(self, options: ExecuTorchOptions) -> int:
        return options.max_seq_len

    def recipe(self, options: ExecuTorchOptions) -> QuantRecipe:
        return options.recipe

    def twin(self, job: Job):
        recipe = job.options.recipe
        with job.stages.stage("quantize " + ", ".join(f"{k}={v}" for k, v in recipe.to_dict().items())):
            return quantize_twin(job.src.model, recipe, job.qc, job.scratch, job.options.backend)

    def convert(self, job: Job) -> None:
        opts, src = job.options, job.src
        with (
            job.stages.stage(f"export + lower ({opts.backend})"),
            executorch_decoder(src.model, opts.max_seq_len, opts.uses_custom_ops, opts.decode_step) as comps,
        ):
            lowered = lower(
                comps,
                constant_methods(src, opts.max_seq_len),
                opts.backend,
                opts.soc,
                progress=lambda msg: log.info("  %s%s", msg, memory()),
                external_weights=WEIGHTS if opts.external_weights else None,
                scratch=job.scratch,
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
            weights = lowered.write_weights(job.bundle.tmp_dir)
        lowered.program = None  # its serialised copy and lowered graphs are not needed any more: free them
        log.info("wrote %s (%.1f MB)", PTE, size / 1e6)
        for name, n in weights.items():
            log.info("wrote %s (%.1f MB)", name, n / 1e6)
        if opts.external_weights and list(weights) != [WEIGHTS + ".ptd"]:
            raise RuntimeError(f"expected the external weights in {WEIGHTS}.ptd, ExecuTorch wrote {list(weights)}")
        job.artifacts["lowered"] = lowered

    def quant_kinds(self, options: ExecuTorchOptions, fixed) -> dict[str, str]:
        return {c: options.recipe.kind(c) for c in COMPONENTS}

    def runtime_name(self, options) -> str:
        return "the ExecuTorch runtime"

    def backend(self, root: Path, fields: dict, options):
        from autoglm_runtime.backends.executorch_backend import ExecuTorchBackend

        weights = fields.get("weights")
        return ExecuTorchBackend(Path(root) / fields["program"], weights and Path(root) / weights)

    def manifest_fields(self, job: Job) -> dict:
        opts, lowered = job.options, job.artifacts["lowered"]
        return {
            "backend": opts.backend,
            "soc": opts.soc,
            "max_seq_len": opts.max_seq_len,
            "program": PTE,
            **({"weights": WEIGHTS + ".ptd"} if opts.external_weights else {}),
            "methods": lowered.methods,
            "constant_methods": lowered.constant_methods,
            "delegation": lowered.delegation,
            "custom_ops": opts.uses_custom_ops,
            "decode_step": "text_decoder_step" in lowered.methods,
        }

    def options_from_manifest(self, manifest: dict) -> ExecuTorchOptions:
        return replace(
            ExecuTorchOptions(),
            recipe=QuantRecipe(**manifest["quantization"]["recipe"]),
            max_seq_len=int(manifest["max_seq_len"]),
            backend=manifest.get("backend", "xnnpack"),
            soc=manifest.get("soc"),
            custom_ops=bool(manifest.get("custom_ops", True)),
            external_weights="weights" in manifest,
            decode_step=bool(manifest.get("decode_step", False)),
        )

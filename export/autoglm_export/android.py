"""``autoglm-export android``: one ExecuTorch program + tokenizer + manifest + parity report.

checkpoint -> fp32 references -> quantize -> quantized references -> torch.export + lower ->
model.pte (in a temp bundle) -> run it with ExecuTorch's runtime -> parity gate -> publish.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from autoglm_runtime.parity import ParityReport

from .bundle import BundleWriter, check_destination
from .components import components
from .errors import ExportError
from .pipeline import (ModelRequest, Stages, base_manifest, check_against_transformers, gate_on_parity,
                       parity_failed_path, quant_kinds, quantize_with_references)
from .quantize import QuantRecipe
from .source import ModelSource
from .targets.executorch import check_backend, lower
from .targets.executorch_attention import use_executorch_attention
from .validate import compare, run_components

log = logging.getLogger(__name__)
PTE = "model.pte"


@dataclass
class AndroidOptions:
    out: Path = Path("dist/android")
    recipe: QuantRecipe = QuantRecipe()
    max_seq_len: int = 128
    backend: str = "xnnpack"
    soc: str | None = None
    validate: bool = True
    force: bool = False
    custom_ops: bool = True  # ExecuTorch's update_cache + custom_sdpa kernels in the decoder


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
    if spec.audio is not None:
        meta.update({"get_audio_token_id": spec.audio_token_id if spec.audio_token_id is not None else -1,
                     "get_audio_tokens": spec.audio_tokens, "get_n_mels": spec.audio.num_mel_bins,
                     "get_audio_frames": spec.audio.num_frames})
    return meta



def export_android(request: ModelRequest, opts: AndroidOptions) -> tuple[Path, ParityReport | None]:
    check_destination(opts.out, opts.force)
    check_backend(opts.backend, opts.soc, opts.recipe.linear)
    stages = Stages()
    with stages.stage("load model"):
        src = request.open()
    if not 2 <= opts.max_seq_len <= src.spec.max_context:
        raise ExportError(f"--max-seq-len {opts.max_seq_len} must be between 2 and the context length {src.spec.max_context}")
    reference_check = check_against_transformers(src, stages) if opts.validate else None
    qc = request.open_quantized(src)
    refs = quantize_with_references(src, opts.recipe, opts.max_seq_len, stages, validate=opts.validate, qc=qc)
    if opts.custom_ops and opts.backend == "xnnpack":
        use_executorch_attention(src.model)
    with stages.stage(f"export + lower ({opts.backend})"):
        lowered = lower(components(src.model, opts.max_seq_len), constant_methods(src, opts.max_seq_len),
                        opts.backend, opts.soc, progress=log.info)
    for name, d in lowered.delegation.items():
        log.info("  %s: %.0f%% of %d nodes delegated to %s", name, 100 * d["delegated_fraction"],
                 d["delegated_nodes"] + d["non_delegated_nodes"], opts.backend)
    report = None
    with BundleWriter(opts.out, force=opts.force) as bundle:
        bundle.write_bytes(PTE, lowered.pte)
        log.info("wrote %s (%.1f MB)", PTE, len(lowered.pte) / 1e6)
        if src.tokenizer_path is not None:
            bundle.copy("tokenizer.json", src.tokenizer_path)
        if opts.validate:
            from autoglm_runtime.backends.executorch_backend import ExecuTorchBackend

            with stages.stage("validate model.pte with the ExecuTorch runtime"):
                got = run_components(ExecuTorchBackend(bundle.path(PTE)), refs.probes, opts.max_seq_len)
                report = compare("executorch", got, refs.outputs, quant_kinds(opts.recipe))
            gate_on_parity(report, bundle, opts.out)
        manifest = base_manifest("executorch", src, request, opts.recipe, refs, stages)
        manifest.update({
            "backend": opts.backend,
            "soc": opts.soc,
            "max_seq_len": opts.max_seq_len,
            "program": PTE,
            "methods": lowered.methods,
            "constant_methods": lowered.constant_methods,
            "delegation": lowered.delegation,
            "validated": opts.validate,
            "custom_ops": opts.custom_ops and opts.backend == "xnnpack",
            "reference_check": reference_check,
        })
        bundle.finish(manifest)
    parity_failed_path(opts.out).unlink(missing_ok=True)
    log.info("published %s", opts.out)
    return opts.out, report

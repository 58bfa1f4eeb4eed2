"""What a bundle or quantized checkpoint says about its model: architecture summary, chat format,
special tokens, and the manifest entries every target shares."""

from __future__ import annotations

from autoglm_runtime.prompt import AUDIO_PLACEHOLDER, IMAGE_PLACEHOLDER, THINK_OFF_PREFILL

from . import __version__
from .source import ModelSource


def model_summary(src: ModelSource) -> dict:
    cfg, model = src.config, src.model
    params = {
        name: sum(p.numel() for p in m.parameters())
        for name, m in (("text", model.text), ("vision", model.vision), ("audio", model.audio))
        if m is not None
    }
    t = cfg.text
    return {
        "model_type": cfg.model_type,
        "parameters": params,
        "text": {
            "hidden_size": t.hidden_size,
            "layers": t.num_hidden_layers,
            "heads": t.num_attention_heads,
            "kv_heads": t.num_key_value_heads,
            "head_dim": t.head_dim,
            "intermediate_size": t.intermediate_size,
            "vocab_size": t.vocab_size,
            "rotary_dim": t.rotary_dim,
            "mrope_section": list(t.mrope_section),
            "moe": {
                "experts": t.n_routed_experts,
                "top_k": t.num_experts_per_tok,
                "shared": t.n_shared_experts,
                "first_k_dense_replace": t.first_k_dense_replace,
            }
            if t.is_moe
            else None,
        },
        "vision": {
            "depth": cfg.vision.depth,
            "hidden_size": cfg.vision.hidden_size,
            "heads": cfg.vision.num_heads,
            "patch_size": cfg.vision.patch_size,
            "spatial_merge_size": cfg.vision.spatial_merge_size,
        },
        "audio": (
            {
                "hidden_size": cfg.audio.hidden_size,
                "layers": cfg.audio.num_hidden_layers,
                "mel_bins": cfg.audio.num_mel_bins,
            }
            if cfg.audio
            else None
        ),
    }


def chat_template() -> dict:
    """The GLM-4.1V chat format as data, for apps that build prompts themselves."""
    return {
        "name": "glm-4.1v",
        "prefix": "[gMASK]<sop>",
        "turn": "<|{role}|>\n{content}",
        "generation_prompt": "<|assistant|>\n",
        "image_placeholder": IMAGE_PLACEHOLDER,
        "audio_placeholder": AUDIO_PLACEHOLDER,
        "thinking_off_suffix": THINK_OFF_PREFILL,
        "placeholder_expansion": "each <|image|> becomes runtime.image_tokens copies, each <|audio|> runtime.audio_tokens copies",
    }


def special_tokens(src: ModelSource) -> dict[str, int]:
    if src.tokenizer_path is None:
        return {}
    from autoglm_runtime.tokenizer import Tokenizer

    return Tokenizer(src.tokenizer_path).special_ids()


def quantized_checkpoint_info(qc) -> dict | None:
    """What a --quantized-checkpoint contributed, for the manifest."""
    if qc is None:
        return None
    return {
        "path": str(qc.path),
        "method": qc.method,
        "layers": len(qc.linears),
        "sha256": qc.config.get("files", {}),
        "calibration": qc.config.get("calibration"),
    }


def base_manifest(target: str, src: ModelSource, request, recipe, report, qc, kinds: dict[str, str], stages) -> dict:
    """The manifest entries every target writes (``recipe``: the target's, with ``to_dict``;
    ``report``: the twin's ``QuantReport``; ``kinds``: parity kind per component)."""
    from .bundle import toolchain_versions

    return {
        "target": target,
        "created_by": f"autoglm-export {__version__}",
        "source": {"label": src.label, **request.to_dict()},
        "model": model_summary(src),
        "export_shape": src.model.shape.to_dict(),
        "quantization": {
            "recipe": recipe.to_dict(),
            "per_component": report.summary(),
            "fallbacks": report.fallbacks,
            "kinds": kinds,
            "quantized_checkpoint": quantized_checkpoint_info(qc),
            "layers": report.layers,
        },
        "runtime": src.spec.to_dict(),
        "special_tokens": special_tokens(src),
        "chat_template": chat_template(),
        "stage_seconds": stages.seconds,
        "toolchain": toolchain_versions(),
    }

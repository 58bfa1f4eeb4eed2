"""Named model presets. Presets are data: a Hugging Face-format config and default export shapes.

- ``tiny``: the embedded default, a committed few-MB checkpoint (image + audio + text) with the
  project's own tokenizer. Needs no download.
- ``small``: benchmark size (text decoder ~242M params, same dims as the optimum-executorch Llama
  peer), random weights.
- ``small-moe`` / ``small-moe-dense``: the MoE benchmark pair: a Glm4vMoe decoder at ``small``'s widths with
  16 routed experts (top-3 + 1 shared), and the same decoder dense with the same active FFN width.
- ``autoglm-phone-9b``: the real AutoGLM-Phone-9B / GLM-4.1V-9B dimensions, for ``--checkpoint``
  users and for size planning; weights must come from a local checkpoint directory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from autoglm_runtime.preprocess.buckets import DEFAULT_MAX_PIXELS, bucket_sizes

from ..model.autoglm import ExportShape

log = logging.getLogger(__name__)
PRESET_DIR = Path(__file__).parent
TINY_DIR = PRESET_DIR / "tiny"
TINY_AUDIO_DIR = TINY_DIR / "audio"


def _rope(partial: float, section: list[int]) -> dict:
    return {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": partial, "mrope_section": section}


@dataclass(frozen=True)
class Preset:
    name: str
    shape: ExportShape
    config: dict | None = None  # HF config.json dict, for presets without a committed checkpoint
    checkpoint: Path | None = None
    audio_checkpoint: Path | None = None
    audio_config: dict | None = None
    # Quantization defaults where the global ones (QuantRecipe) do not suit the model; flags override.
    recipe: dict = field(default_factory=dict)


SMALL_CONFIG = {
    "model_type": "glm4v",
    "text_config": {
        "vocab_size": 32000,
        "hidden_size": 1024,
        "intermediate_size": 2816,
        "num_hidden_layers": 16,
        "num_attention_heads": 16,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "rope_parameters": _rope(0.5, [4, 6, 6]),
    },
    "vision_config": {
        "depth": 4,
        "hidden_size": 256,
        "num_heads": 4,
        "intermediate_size": 1024,
        "out_hidden_size": 1024,
        "patch_size": 14,
        "image_size": 336,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    },
    "image_token_id": 31999,
    "image_start_token_id": 31997,
    "image_end_token_id": 31998,
    "eos_token_id": [2],
}
# The MoE benchmark pair (issue 13): a Glm4vMoe decoder at ``small``'s widths whose 16 routed experts of 704
# run top-3 beside one shared expert, so a token's FFN is 4 x 704 = 2816 wide, ``small``'s; and the same
# decoder dense (no experts, FFN 2816): the same active parameters per token, one of them with 12 idle experts.
SMALL_MOE_TEXT = {
    **SMALL_CONFIG["text_config"],
    "n_routed_experts": 16,
    "num_experts_per_tok": 3,
    "n_shared_experts": 1,
    "moe_intermediate_size": 704,
    "first_k_dense_replace": 0,
    "norm_topk_prob": True,
    "routed_scaling_factor": 1.0,
    "n_group": 1,
    "topk_group": 1,
}
SMALL_MOE_CONFIG = {**SMALL_CONFIG, "model_type": "glm4v_moe", "text_config": SMALL_MOE_TEXT}
SMALL_MOE_DENSE_CONFIG = {
    **SMALL_CONFIG,
    "model_type": "glm4v_moe",
    "text_config": {**SMALL_MOE_TEXT, "n_routed_experts": 0, "num_experts_per_tok": 0, "n_shared_experts": 0},
}
SMALL_AUDIO_CONFIG = {
    "model_type": "glmasr",
    "audio_config": {
        "hidden_size": 256,
        "intermediate_size": 1024,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_mel_bins": 128,
    },
    "text_config": {"hidden_size": 1024},
}
# The real config.json's fields (shared/notes/glm4v.md); tools/make_real_checkpoint.py writes the same.
AUTOGLM_PHONE_9B_CONFIG = {
    "model_type": "glm4v",
    "text_config": {
        "vocab_size": 151552,
        "hidden_size": 4096,
        "intermediate_size": 13696,
        "num_hidden_layers": 40,
        "num_attention_heads": 32,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "attention_bias": True,
        "max_position_embeddings": 65536,
        "rope_parameters": _rope(0.5, [8, 12, 12]),
    },
    "vision_config": {
        "depth": 24,
        "hidden_size": 1536,
        "num_heads": 12,
        "intermediate_size": 13696,
        "out_hidden_size": 4096,
        "patch_size": 14,
        "image_size": 336,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    },
    "image_token_id": 151343,
    "image_start_token_id": 151339,
    "image_end_token_id": 151340,
    "eos_token_id": [151329, 151336, 151338, 151348],
    "tie_word_embeddings": False,
}

# The buckets of the default phone budget (sizes fixed by the budget and the 28-pixel merge unit); their first,
# the 1080x2400 portrait screenshot's, is the default image size. ``tiny`` keeps one fixed size unless --max-pixels.
PHONE_BUCKETS = bucket_sizes(DEFAULT_MAX_PIXELS)

PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        "tiny",
        ExportShape(max_context=512, image_hw=(168, 84), audio_frames=400),
        checkpoint=TINY_DIR,
        audio_checkpoint=TINY_AUDIO_DIR,
    ),
    "small": Preset(
        "small",
        ExportShape(max_context=1024, image_hw=PHONE_BUCKETS[0], audio_frames=400, max_pixels=DEFAULT_MAX_PIXELS),
        config=SMALL_CONFIG,
        audio_config=SMALL_AUDIO_CONFIG,
    ),
    "small-moe": Preset(
        "small-moe",
        ExportShape(max_context=1024, image_hw=PHONE_BUCKETS[0], audio_frames=400, max_pixels=DEFAULT_MAX_PIXELS),
        config=SMALL_MOE_CONFIG,
    ),
    "small-moe-dense": Preset(
        "small-moe-dense",
        ExportShape(max_context=1024, image_hw=PHONE_BUCKETS[0], audio_frames=400, max_pixels=DEFAULT_MAX_PIXELS),
        config=SMALL_MOE_DENSE_CONFIG,
    ),
    # A phone screenshot at 1080x2400 is ~3.3k tokens at full size; the phone budget keeps it at 644x280, 230 tokens.
    # 8192 tokens hold an agent turn: a ~3k-token system prompt, one screenshot, a few turns of history
    # (issue 11 item 7); the KV cache is then 0.34 GB in fp16.
    "autoglm-phone-9b": Preset(
        "autoglm-phone-9b",
        ExportShape(max_context=8192, image_hw=PHONE_BUCKETS[0], audio_frames=3000, max_pixels=DEFAULT_MAX_PIXELS),
        config=AUTOGLM_PHONE_9B_CONFIG,
        # The int4 bundle's 5.5 GB budget (issue 11): group 128 (ExecuTorch's own Llama-3-8B recipe), an
        # int4 embedding and int4 vision blocks; the merger stays int8: its wide MLP amplifies int4 error
        # (cost per block at the real widths: int4 block 0.98, int4 merger 0.954, int8 merger 0.999).
        # An all-int8 tower is 0.3 GB over (5.81 GB measured at 9B). BENCHMARKS.md has each choice's size and cost.
        recipe={"group_size": 128, "embedding": "4", "encoder": "8da4w", "merger": "8da8w"},
    ),
}


def _widths(cfg) -> tuple:
    return (cfg.text.hidden_size, cfg.text.intermediate_size, cfg.vision.hidden_size, cfg.vision.out_hidden_size)


def preset_for(checkpoint: Path | None, preset: str | None) -> str:
    """The preset asked for; else the one whose widths a ``--checkpoint`` has (its export shapes and
    quantization defaults then apply: a 9B checkpoint must not get the tiny model's 512-token
    context); else tiny."""
    if preset is not None:
        return preset
    if checkpoint is None:
        return "tiny"
    from ..config import load_model_config, parse_model_config

    try:
        widths = _widths(load_model_config(Path(checkpoint)))
    except Exception:  # the loader names the problem with the checkpoint; here only the default is chosen
        return "tiny"
    for name, p in PRESETS.items():
        if p.config is not None and _widths(parse_model_config(p.config, name)) == widths:
            log.info("%s has the widths of the %s preset: its export shapes and defaults apply", checkpoint, name)
            return name
    return "tiny"


def get_preset(name: str) -> Preset:
    from ..errors import CheckpointError

    if name not in PRESETS:
        raise CheckpointError(f"unknown preset '{name}'; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]

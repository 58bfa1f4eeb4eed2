"""Shared fixtures: tiny random checkpoints written with transformers' own classes."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

TEXT_BASE = dict(
    vocab_size=320,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    rope_parameters={
        "rope_type": "default",
        "rope_theta": 10000.0,
        "partial_rotary_factor": 0.5,
        "mrope_section": [2, 1, 1],
    },
)
VISION_BASE = dict(
    depth=2, hidden_size=32, num_heads=2, intermediate_size=48, out_hidden_size=64, image_size=56, patch_size=14
)
MOE_EXTRA = dict(
    moe_intermediate_size=32, n_routed_experts=4, num_experts_per_tok=2, first_k_dense_replace=1, n_shared_experts=1
)


def _merge(base: dict, over: dict | None) -> dict:
    out = copy.deepcopy(base)
    out.update(over or {})
    return out


def build_hf_glm4v(text: dict | None = None, vision: dict | None = None, moe: bool = False, seed: int = 0, **top):
    """A seeded random Glm4v(Moe)ForConditionalGeneration in float32 with eager attention."""
    from transformers import (
        Glm4vConfig,
        Glm4vForConditionalGeneration,
        Glm4vMoeConfig,
        Glm4vMoeForConditionalGeneration,
    )

    text_cfg = _merge(TEXT_BASE, text)
    if moe:
        text_cfg = _merge(MOE_EXTRA, text_cfg)
    cfg_cls, model_cls = (
        (Glm4vMoeConfig, Glm4vMoeForConditionalGeneration) if moe else (Glm4vConfig, Glm4vForConditionalGeneration)
    )
    top.setdefault("image_token_id", text_cfg["vocab_size"] - 1)
    top.setdefault("image_start_token_id", text_cfg["vocab_size"] - 3)
    top.setdefault("image_end_token_id", text_cfg["vocab_size"] - 2)
    top.setdefault("video_token_id", text_cfg["vocab_size"] - 4)
    cfg = cfg_cls(text_config=text_cfg, vision_config=_merge(VISION_BASE, vision), **top)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = model_cls(cfg).eval()
    with torch.no_grad():  # HF init leaves norms at 1 and biases at 0: perturb so parity means something
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(torch.randn_like(b) * 0.1)
    return model


@pytest.fixture
def hf_checkpoint(tmp_path: Path):
    """Factory: save a tiny HF model to tmp and return (model, path)."""

    def make(name: str = "ckpt", **kwargs):
        model = build_hf_glm4v(**kwargs)
        path = tmp_path / name
        model.save_pretrained(path)
        return model, path

    return make


def assert_close_to_scale(ours: torch.Tensor, ref: torch.Tensor, rel: float = 1e-4, what: str = "") -> float:
    """max|ours - ref| <= rel * max|ref| (the logit scale). Returns the relative error."""
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    scale = ref.abs().max().clamp_min(1e-6)
    err = ((ours - ref).abs().max() / scale).item()
    assert err <= rel, f"{what}: max abs diff {err:.3e} x scale exceeds {rel:.0e}"
    return err


TINY_TOKENIZER = Path(__file__).resolve().parents[1] / "export/autoglm_export/presets/tiny/tokenizer.json"
# Ids of the committed tiny tokenizer's GLM tokens (vocab 4096): checkpoints that use it must agree.
TOKENIZER_IDS = dict(
    image_token_id=4087,
    image_start_token_id=4083,
    image_end_token_id=4084,
    video_token_id=4088,
    video_start_token_id=4085,
    video_end_token_id=4086,
)


@pytest.fixture
def chat_checkpoint(tmp_path: Path):
    """Factory: a tiny HF Glm4v(Moe) checkpoint that uses the project tokenizer (vocab 4096)."""
    import shutil

    def make(name: str = "chat", text: dict | None = None, **kwargs):
        model = build_hf_glm4v(text={"vocab_size": 4096, **(text or {})}, **TOKENIZER_IDS, **kwargs)
        path = tmp_path / name
        model.save_pretrained(path)
        shutil.copy(TINY_TOKENIZER, path / "tokenizer.json")
        return model, path

    return make


def build_hf_glmasr(text_hidden: int = 64, seed: int = 0, **audio):
    from transformers import GlmAsrConfig, GlmAsrForConditionalGeneration

    cfg = GlmAsrConfig(
        audio_config=dict(
            dict(hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_mel_bins=128),
            **audio,
        ),
        text_config=dict(
            vocab_size=64,
            hidden_size=text_hidden,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        ),
    )
    torch.manual_seed(seed)
    model = GlmAsrForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.fixture(scope="session")
def real_width(tmp_path_factory) -> Path:
    """One real-width checkpoint (tests/real_width.py) for every real-size test of the session.
    Here, not in a conftest.py of tests/export/real_size: tests import this file as `conftest`."""
    from real_width import make_real_width

    return make_real_width(tmp_path_factory.mktemp("realsize") / "ckpt")

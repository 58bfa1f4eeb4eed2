"""Parity of our export-friendly GLM-ASR audio encoder with transformers' GlmAsr.

Reference: ``GlmAsrModel.get_audio_features(x, input_features_mask=ones).pooler_output`` built
from tiny random ``GlmAsrForConditionalGeneration`` models (float32, eager attention). Weights are
re-drawn at O(1) scale so rotary layout, GQA head order, norms and biases all move the output.
"""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file
from transformers import GlmAsrConfig, GlmAsrForConditionalGeneration, GlmAsrProcessor

from autoglm_export.config import AudioConfig, load_audio_config, parse_audio_config
from autoglm_export.errors import CheckpointError, ExportError
from autoglm_export.model.audio import (
    AUDIO_KEY_PREFIXES,
    AudioEncoder,
    audio_state_dict,
    audio_tokens_for_frames,
    conv_out_frames,
    load_audio_weights,
)

TEXT = dict(
    hidden_size=48,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=64,
)

# name -> audio_config overrides (hidden_size * 4 == intermediate_size, as in GLM-ASR-Nano)
AUDIO = {
    "mha_mel80": dict(
        hidden_size=32, intermediate_size=128, num_attention_heads=4, num_key_value_heads=4, num_mel_bins=80
    ),
    "gqa_mel128": dict(
        hidden_size=32, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, num_mel_bins=128
    ),
    "mqa_8heads": dict(
        hidden_size=64, intermediate_size=256, num_attention_heads=8, num_key_value_heads=1, num_mel_bins=80
    ),
    # head_dim 16, rotary_dim 4, other theta, non-default activations
    "quarter_rope_silu": dict(
        hidden_size=32,
        intermediate_size=128,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_mel_bins=128,
        hidden_act="silu",
        rope_parameters=dict(rope_type="default", rope_theta=500.0, partial_rotary_factor=0.25),
    ),
}


def _build(name: str, seed: int = 0, **top) -> GlmAsrForConditionalGeneration:
    torch.manual_seed(seed)
    cfg = GlmAsrConfig(audio_config=dict(num_hidden_layers=2, **AUDIO[name]), text_config=dict(TEXT), **top)
    model = GlmAsrForConditionalGeneration(cfg).float().eval()
    model.set_attn_implementation("eager")
    assert model.model.audio_tower.config._attn_implementation == "eager"
    with torch.no_grad():
        for pname, p in model.model.named_parameters():
            if pname.startswith("language_model."):
                continue
            if p.dim() >= 2:
                p.normal_(0.0, p[0].numel() ** -0.5)
            elif "norm" in pname and pname.endswith("weight"):
                p.normal_(1.0, 0.2)
            else:
                p.normal_(0.0, 0.2)
    return model


def _ours(model: GlmAsrForConditionalGeneration, num_frames: int, checkpoint=None) -> AudioEncoder:
    cfg = parse_audio_config(model.config.to_dict())
    enc = AudioEncoder(cfg, num_frames).eval()
    load_audio_weights(enc, model.state_dict() if checkpoint is None else checkpoint)
    return enc


@torch.no_grad()
def _reference(model: GlmAsrForConditionalGeneration, x: torch.Tensor) -> torch.Tensor:
    """pooler_output of get_audio_features with an all-ones mask.

    transformers reshapes the encoder output into groups of 4 frames BEFORE applying the mask, so
    it raises when ceil(T/2) is not a multiple of 4. For those lengths the reference is the same
    computation with the leftover frames dropped first (which is what its valid-mask keeps).
    """
    mask = torch.ones(x.shape[0], x.shape[-1], dtype=torch.long)
    if conv_out_frames(x.shape[-1]) % 4 == 0:
        return model.model.get_audio_features(x, mask).pooler_output
    hidden = model.model.audio_tower(x).last_hidden_state  # [1, T', H]
    n = audio_tokens_for_frames(x.shape[-1])
    merged = hidden[:, : 4 * n].reshape(1, n, model.config.audio_config.intermediate_size)
    return model.model.multi_modal_projector(merged)[0]


def _assert_close(ours: torch.Tensor, ref: torch.Tensor) -> float:
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    err = (ours - ref).abs().max().item()
    tol = 1e-4 * max(1.0, ref.abs().max().item())
    assert err <= tol, f"max|ours - ref| = {err:.3e} > {tol:.3e}"
    return err


# --------------------------------------------------------------------------- arithmetic


def test_token_count_matches_processor():
    lengths = torch.arange(0, 3101)
    ref = GlmAsrProcessor._get_audio_token_length(None, lengths.clone())  # does not touch self
    assert audio_tokens_for_frames(lengths).tolist() == ref.tolist()
    assert [audio_tokens_for_frames(int(n)) for n in lengths] == ref.tolist()
    # Whisper pads to 3000 frames: 1500 encoder positions, 375 tokens.
    assert conv_out_frames(3000) == 1500 and audio_tokens_for_frames(3000) == 375
    assert [audio_tokens_for_frames(n) for n in (200, 202, 206, 207, 250)] == [25, 25, 25, 26, 31]


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize(
    "name,frames",
    [
        ("mha_mel80", 200),
        ("mha_mel80", 202),
        ("gqa_mel128", 250),
        ("gqa_mel128", 207),
        ("mqa_8heads", 206),
        ("mqa_8heads", 15),
        ("quarter_rope_silu", 208),
        ("quarter_rope_silu", 203),
    ],
)
def test_parity_with_transformers(name, frames):
    model = _build(name)
    enc = _ours(model, frames)
    x = torch.randn(1, model.config.audio_config.num_mel_bins, frames)
    with torch.no_grad():
        ours = enc(x)
    ref = _reference(model, x)
    assert enc.num_tokens == audio_tokens_for_frames(frames) == ref.shape[0]
    assert ours.shape == (enc.num_tokens, model.config.text_config.hidden_size)
    _assert_close(ours, ref)


def test_projector_activation_from_top_level_config():
    model = _build("gqa_mel128", projector_hidden_act="gelu_pytorch_tanh")
    enc = _ours(model, 200)
    assert enc.cfg.projector_hidden_act == "gelu_pytorch_tanh"
    x = torch.randn(1, 128, 200)
    with torch.no_grad():
        _assert_close(enc(x), _reference(model, x))


def test_saved_checkpoint_roundtrip(tmp_path):
    """config.json + model.safetensors on disk -> AudioConfig + our encoder == in-memory reference."""
    model = _build("gqa_mel128", seed=3)
    model.save_pretrained(tmp_path)

    raw = json.loads((tmp_path / "config.json").read_text())
    cfg = load_audio_config(tmp_path)
    assert cfg == parse_audio_config(raw)
    audio = raw["audio_config"]
    assert cfg.projector_out == raw["text_config"]["hidden_size"] == TEXT["hidden_size"]
    assert cfg.merge_factor == audio["intermediate_size"] // audio["hidden_size"] == 4
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers) == (32, 128, 2)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.num_mel_bins) == (4, 2, 128)
    assert (cfg.rope_theta, cfg.partial_rotary_factor) == (10000.0, 0.5)
    assert (cfg.hidden_act, cfg.projector_hidden_act) == ("gelu", "gelu")

    # save_pretrained writes the legacy layout ("audio_tower.*"), not "model.audio_tower.*".
    on_disk = load_file(str(tmp_path / "model.safetensors"))
    assert any(k.startswith("audio_tower.") for k in on_disk)
    enc = AudioEncoder(cfg, 206).eval()
    load_audio_weights(enc, on_disk)
    x = torch.randn(1, 128, 206)
    with torch.no_grad():
        _assert_close(enc(x), _reference(model, x))


def test_parse_quarter_rope_config():
    model = _build("quarter_rope_silu")
    cfg = parse_audio_config(json.loads(model.config.to_json_string()))
    assert (cfg.rope_theta, cfg.partial_rotary_factor, cfg.hidden_act) == (500.0, 0.25, "silu")
    assert AudioEncoder(cfg, 200).rotary_dim == 4


# --------------------------------------------------------------------------- structure


def test_param_names_follow_prefix_table():
    model = _build("mqa_8heads")
    enc = AudioEncoder(parse_audio_config(model.config.to_dict()), 200)
    expected = {}
    for key in model.state_dict():
        for prefix, ours in AUDIO_KEY_PREFIXES.items():
            if key.startswith(prefix):
                expected[ours + key[len(prefix) :]] = key
    assert set(enc.state_dict()) == set(expected)
    assert set(audio_state_dict(model.state_dict())) == set(expected)
    # Constants are non-persistent: never in the state dict, rebuilt by prepare().
    assert {name for name, _ in enc.named_buffers()} == {"rope_cos", "rope_sin"}
    assert enc.rope_cos.shape == (conv_out_frames(200), enc.rotary_dim)


def test_prepare_rebuilds_constants_after_meta_init():
    model = _build("mha_mel80")
    cfg = parse_audio_config(model.config.to_dict())
    with torch.device("meta"):
        enc = AudioEncoder(cfg, 202)
    enc = enc.to_empty(device="cpu").eval()
    load_audio_weights(enc, model.state_dict())  # loads, then prepare()
    x = torch.randn(1, 80, 202)
    with torch.no_grad():
        _assert_close(enc(x), _reference(model, x))


def test_export_matches_eager():
    model = _build("gqa_mel128")
    enc = _ours(model, 206)
    x = torch.randn(1, 128, 206)
    ep = torch.export.export(enc, (x,), strict=False)

    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert not any("_local_scalar_dense" in t or "item" in t for t in targets), targets
    for node in ep.graph.nodes:
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor):
            assert not val.is_complex(), node
            assert all(isinstance(s, int) for s in val.shape), node  # static shapes only
    assert set(ep.graph_signature.non_persistent_buffers) == {"rope_cos", "rope_sin"}
    assert not any("rope" in k for k in ep.state_dict)

    x2 = torch.randn(1, 128, 206)  # not the traced input
    with torch.no_grad():
        eager = enc(x2)
        _assert_close(ep.module()(x2), eager)
        _assert_close(eager, _reference(model, x2))


# --------------------------------------------------------------------------- errors


def _cfg(**kw) -> AudioConfig:
    base = dict(
        hidden_size=32,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        projector_out=48,
        num_mel_bins=80,
    )
    return AudioConfig(**{**base, **kw})


def test_rejects_too_few_frames():
    AudioEncoder(_cfg(), 7)  # 4 encoder frames -> 1 token
    with pytest.raises(ExportError, match="no audio tokens"):
        AudioEncoder(_cfg(), 6)


def test_rejects_unsupported_configs():
    with pytest.raises(CheckpointError, match="num_key_value_heads"):
        AudioEncoder(_cfg(num_key_value_heads=3), 200)
    with pytest.raises(CheckpointError, match="assumes 4"):
        AudioEncoder(_cfg(intermediate_size=64, merge_factor=2), 200)
    with pytest.raises(CheckpointError, match="merge_factor"):
        AudioEncoder(_cfg(intermediate_size=100), 200)
    with pytest.raises(CheckpointError, match="must be even"):
        AudioEncoder(_cfg(hidden_size=24, intermediate_size=96, num_attention_heads=4, num_key_value_heads=4), 200)
    with pytest.raises(CheckpointError, match="hidden_act"):
        AudioEncoder(_cfg(hidden_act="mystery"), 200)


def test_load_rejects_mismatched_checkpoint():
    model = _build("mha_mel80")
    state = dict(model.state_dict())
    enc = AudioEncoder(parse_audio_config(model.config.to_dict()), 200)
    missing = {k: v for k, v in state.items() if not k.endswith("layers.1.mlp.fc1.weight")}
    with pytest.raises(CheckpointError, match="missing"):
        load_audio_weights(enc, missing)
    wrong = AudioEncoder(_cfg(num_hidden_layers=2, num_mel_bins=128), 200)
    with pytest.raises(CheckpointError, match="shape"):
        load_audio_weights(wrong, state)

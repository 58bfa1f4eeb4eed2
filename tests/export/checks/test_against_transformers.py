"""Image + text logits and audio embeddings match transformers, through our real loading code,
prompt building and preprocessing (autoglm_export.checks.against_transformers)."""

from __future__ import annotations

import pytest
import torch
from conftest import build_hf_glmasr

from autoglm_export.checks.against_transformers import TRANSFORMERS_MATCH, verify_against_transformers
from autoglm_export.source import open_source

CASES = {
    # name: (checkpoint kwargs, export image size)
    "dense_56x84": (dict(), (56, 84)),
    "dense_resampled_112x56": (dict(vision=dict(image_size=84, num_heads=1)), (112, 56)),
    "dense_odd_heads": (
        dict(
            text=dict(
                hidden_size=96,
                num_attention_heads=3,
                num_key_value_heads=1,
                rope_parameters={
                    "rope_type": "default",
                    "rope_theta": 10000.0,
                    "partial_rotary_factor": 0.5,
                    "mrope_section": [2, 2, 4],
                },
            ),
            vision=dict(out_hidden_size=96, num_heads=4, hidden_size=48),
        ),
        (84, 84),
    ),
    "moe_84x56": (dict(moe=True), (84, 56)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_image_text_logits_match_transformers(chat_checkpoint, case):
    kwargs, image_hw = CASES[case]
    _, path = chat_checkpoint(**kwargs)
    src = open_source(path, image_hw=image_hw, max_context=256)
    report = verify_against_transformers(src)
    assert report.passed, "\n".join(report.lines())
    logits = report.comparisons[0]
    assert logits.metrics.rel_max_abs <= TRANSFORMERS_MATCH.max_rel_abs and logits.metrics.top1_agreement == 1.0
    # the prompt really contained the image tokens for this resolution
    assert src.spec.image_tokens == (image_hw[0] // 28) * (image_hw[1] // 28)


def test_audio_checkpoint_attaches_and_matches(chat_checkpoint, tmp_path):
    _, path = chat_checkpoint()
    audio_dir = tmp_path / "asr"
    build_hf_glmasr(text_hidden=64).save_pretrained(audio_dir)
    src = open_source(path, audio_checkpoint=audio_dir, image_hw=(56, 56), audio_frames=200)
    assert src.model.audio is not None and src.spec.audio_tokens == 25
    report = verify_against_transformers(src)
    assert [c.name for c in report.comparisons][-1].startswith("audio"), report.lines()
    assert report.passed, "\n".join(report.lines())


def test_verification_catches_a_wrong_weight(chat_checkpoint):
    """The gate must be able to fail: perturb one decoder weight after loading."""
    _, path = chat_checkpoint()
    src = open_source(path, image_hw=(56, 56))
    with torch.no_grad():
        src.model.text.layers[1].mlp.down_proj.weight[3, 5] += 0.5
    report = verify_against_transformers(src)
    assert not report.passed


def test_sharded_checkpoint_loads_identically(tmp_path):
    from conftest import build_hf_glm4v

    from autoglm_export.loader import load_model
    from autoglm_export.model.autoglm import ExportShape

    hf = build_hf_glm4v()
    hf.save_pretrained(tmp_path / "one")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert (tmp_path / "sharded/model.safetensors.index.json").exists()
    shape = ExportShape(max_context=32, image_hw=(56, 56), audio_frames=200)
    a, b = load_model(tmp_path / "one", shape), load_model(tmp_path / "sharded", shape)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name

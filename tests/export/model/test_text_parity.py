"""Text decoder parity with transformers' Glm4v / Glm4vMoe at fp32, and KV-cache decode."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close_to_scale

from autoglm_export.loader import load_model
from autoglm_export.model.autoglm import ExportShape

SHAPE = ExportShape(max_context=64, image_hw=(56, 56), audio_frames=200)

CASES = {
    "dense": dict(),
    "dense_odd": dict(
        text=dict(
            hidden_size=72,
            num_attention_heads=3,
            num_key_value_heads=1,
            num_hidden_layers=3,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 500.0,
                "partial_rotary_factor": 0.5,
                "mrope_section": [4, 1, 1],
            },
        ),
        vision=dict(out_hidden_size=72),
    ),
    "dense_mha_full_rotary": dict(
        text=dict(
            num_key_value_heads=4,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 10000.0,
                "partial_rotary_factor": 1.0,
                "mrope_section": [4, 2, 2],
            },
        )
    ),
    "moe": dict(moe=True),
    "moe_grouped": dict(
        moe=True,
        text=dict(
            n_routed_experts=8,
            num_experts_per_tok=3,
            n_group=2,
            topk_group=1,
            routed_scaling_factor=2.5,
            first_k_dense_replace=0,
        ),
    ),
}


def _text_positions(n: int, start: int = 0) -> torch.Tensor:
    return torch.arange(start, start + n).expand(3, n).contiguous()


@pytest.mark.parametrize("case", sorted(CASES))
def test_text_logits_match_transformers(hf_checkpoint, case):
    hf, path = hf_checkpoint(**CASES[case])
    ours = load_model(path, SHAPE)
    ids = torch.randint(0, hf.config.text_config.vocab_size - 8, (1, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(input_ids=ids).logits
        got = ours.text_decoder(ours.token_embedding(ids), torch.arange(17), _text_positions(17))
    assert_close_to_scale(got, ref, what=case)


@pytest.mark.parametrize("case", ["dense", "moe"])
def test_kv_cache_decode_equals_full_forward(hf_checkpoint, case):
    _, path = hf_checkpoint(**CASES[case])
    model = load_model(path, SHAPE)
    ids = torch.randint(0, 300, (1, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model.text_decoder(model.token_embedding(ids), torch.arange(12), _text_positions(12))
        model.reset_cache()
        steps = [model.text_decoder(model.token_embedding(ids[:, :5]), torch.arange(5), _text_positions(5))]
        for i in range(5, 12):
            steps.append(
                model.text_decoder(model.token_embedding(ids[:, i : i + 1]), torch.tensor([i]), _text_positions(1, i))
            )
    assert_close_to_scale(torch.cat(steps, dim=1), full, rel=1e-5, what="incremental decode")


def test_stale_cache_entries_are_masked(hf_checkpoint):
    """A second prompt after a longer first one must not see the first one's cache slots."""
    _, path = hf_checkpoint()
    model = load_model(path, SHAPE)
    a = torch.randint(0, 300, (1, 20), generator=torch.Generator().manual_seed(3))
    b = torch.randint(0, 300, (1, 6), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        model.text_decoder(model.token_embedding(a), torch.arange(20), _text_positions(20))
        after_a = model.text_decoder(model.token_embedding(b), torch.arange(6), _text_positions(6))
        model.reset_cache()
        fresh = model.text_decoder(model.token_embedding(b), torch.arange(6), _text_positions(6))
    assert torch.equal(after_a, fresh)


@pytest.mark.parametrize("case", ["moe", "moe_grouped"])
def test_moe_decode_runs_only_the_chosen_experts(hf_checkpoint, case):
    """Eager on one token: only the router's top-k experts run, and the layer's output is the dense mix's
    bit for bit. Traced (torch.export) the layer stays dense: every expert is in the graph."""
    from autoglm_export.model.moe import MoE

    _, path = hf_checkpoint(**CASES[case])
    moe = next(m for m in load_model(path, SHAPE).modules() if isinstance(m, MoE))
    calls = []
    for i, expert in enumerate(moe.experts):
        expert.register_forward_hook(lambda *_, i=i: calls.append(i))
    x = torch.randn(1, 1, moe.gate.weight.shape[1], generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        got = moe(x)
        flat = x.reshape(1, -1)
        weights = moe.gate(flat)
        dense = torch.zeros_like(flat)
        for i, expert in enumerate(moe.experts):
            dense = dense + expert(flat) * weights[:, i : i + 1]
        dense = dense.view(x.shape) + moe.shared_experts(x)
    chosen = weights[0].nonzero().flatten().tolist()
    assert calls[: len(chosen)] == chosen and len(chosen) == moe.gate.top_k
    assert torch.equal(got, dense)
    program = torch.export.export(moe, (x,))
    linears = [n for n in program.graph.nodes if n.target == torch.ops.aten.linear.default]
    assert len(linears) == 3 * len(moe.experts) + 3 + 1  # every expert, the shared expert, the router
    assert torch.equal(program.module()(x), got)

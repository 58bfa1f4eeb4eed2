"""Weights kept as stored (bf16) and made fp32 one module at a time compute exactly what an
fp32-loaded model computes (``stored.py``), and quantizing them in row slices gives torchao's own
integers (``quantize.recipes.quantize_module``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autoglm_export.quantize.recipes import _embedding_config, linear_config, quantize_module
from autoglm_export.source import open_source
from autoglm_export.stored import fp32_while_running, remaining, to_fp32


@torch.no_grad()
def test_stored_model_runs_exactly_as_the_fp32_one():
    fp32, kept = open_source().model, open_source(keep_stored=True).model
    left = remaining(kept)
    assert "text.embed_tokens.weight" in left and "text.lm_head.weight" in left
    assert not remaining(fp32) and all(kept.get_parameter(n).dtype == torch.bfloat16 for n in left)
    ids, n = torch.arange(3, 21)[None], 18
    pos = torch.arange(n).expand(3, n).contiguous()
    pixels = torch.randn(fp32.vision.num_patches, fp32.vision.patch_dim, generator=torch.Generator().manual_seed(0))
    want = (fp32.text_decoder(fp32.token_embedding(ids), torch.arange(n), pos), fp32.vision_encoder(pixels))
    with fp32_while_running(kept):
        got = (kept.text_decoder(kept.token_embedding(ids), torch.arange(n), pos), kept.vision_encoder(pixels))
    assert all(torch.equal(a, b) for a, b in zip(want, got))
    assert remaining(kept) == left  # the stored weights are back, not replaced by fp32 copies
    to_fp32(kept.text.lm_head)
    assert "text.lm_head.weight" not in remaining(kept)
    assert torch.equal(kept.text.lm_head.weight, fp32.text.lm_head.weight)


@pytest.mark.parametrize("kind", ["8da4w", "8da8w", "embedding8", "embedding4"])
def test_row_slices_quantize_like_the_whole_matrix(kind):
    """Slices of 7 rows (and a ragged last one) from bf16: the same integers, scales and outputs."""
    torch.manual_seed(0)
    embedding = kind.startswith("embedding")
    config = _embedding_config(kind[-1], 32) if embedding else linear_config(kind, 32)
    whole = nn.Embedding(50, 64) if embedding else nn.Linear(96, 50)
    sliced = nn.Embedding(50, 64) if embedding else nn.Linear(96, 50)
    sliced.load_state_dict(whole.state_dict())
    bf16 = whole.weight.detach().to(torch.bfloat16)
    whole.weight = nn.Parameter(bf16.float(), requires_grad=False)
    sliced.weight = nn.Parameter(bf16, requires_grad=False)  # as a keep_stored load leaves it
    quantize_module(whole, config)
    quantize_module(sliced, config, chunk_weights=7 * bf16.shape[1])
    a, b = whole.weight, sliced.weight
    for name in ("qdata", "scale", "zero_point"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert (a.block_size, a.dtype, a.activation_quantization) == (b.block_size, b.dtype, b.activation_quantization)
    x = torch.tensor([[1, 7, 49]]) if embedding else torch.randn(3, 96)
    assert torch.equal(whole(x), sliced(x))


@pytest.mark.parametrize("kind", ["8da4w", "8da8w", "embedding8", "embedding4"])
def test_quantized_eager_in_row_slices(kind):
    """The quantized eager reference with bounded memory: an embedding dequantizes only the rows it
    looks up (exact), a linear computes its outputs in slices of weight rows (float rounding only)."""
    from autoglm_export.quantize.recipes import in_row_slices

    torch.manual_seed(0)
    embedding = kind.startswith("embedding")
    model = nn.Sequential(nn.Embedding(50, 64) if embedding else nn.Linear(96, 50))
    quantize_module(model[0], _embedding_config(kind[-1], 32) if embedding else linear_config(kind, 32))
    x = torch.tensor([[1, 7, 49], [0, 3, 3]]) if embedding else torch.randn(2, 3, 96)
    whole = model(x)
    with in_row_slices(model, chunk_weights=7 * (64 if embedding else 96)):
        assert "forward" in model[0].__dict__  # really sliced
        sliced = model(x)
    assert "forward" not in model[0].__dict__ and torch.equal(model(x), whole)
    if embedding:
        assert torch.equal(sliced, whole)
    else:
        torch.testing.assert_close(sliced, whole, rtol=1e-6, atol=1e-6)

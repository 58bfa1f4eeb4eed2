"""The decoder as it is lowered for ExecuTorch (targets/executorch/decoder.py), in eager: the same outputs as
the model's own decoder, and the eager model back afterwards. The lowered program itself (subgraphs per
step, parity of the .pte) is checked by test_executorch.py's exports."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("executorch")

from autoglm_export.model.rope import apply_rotary, mrope_angles, mrope_cos_sin, plane_selector
from autoglm_export.model.text import FusedSwiGLU, RMSNorm
from autoglm_export.request import ModelRequest
from autoglm_export.targets.executorch.decoder import (
    LinearRMSNorm,
    RotaryTables,
    SlicedSwiGLU,
    executorch_decoder,
)
from autoglm_runtime.backends.executorch_backend import STEP_METHOD


@pytest.mark.parametrize("interleaved", [True, False])
@pytest.mark.parametrize("rotary_dim", [16, 32])  # partial (GLM: half the head) and full
def test_rotary_tables_equal_apply_rotary(interleaved, rotary_dim):
    head_dim, section = 32, {16: (2, 3, 3), 32: (4, 6, 6)}[rotary_dim]
    torch.manual_seed(0)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32) / rotary_dim))
    selector = plane_selector(section)
    pos = torch.stack([torch.arange(5) * 3, torch.arange(5) + 7, torch.arange(5) % 2])
    x = torch.randn(1, 5, 4, head_dim)  # [B, S, heads, D], the lowered layout
    cos, sin = mrope_cos_sin(pos, inv_freq, selector, interleaved)
    want = apply_rotary(x.transpose(1, 2), cos, sin, interleaved).transpose(1, 2)
    rotate = RotaryTables(head_dim, rotary_dim, interleaved)(mrope_angles(pos[:, :, None], inv_freq, selector[:, None]))
    got = rotate(x)
    # every table entry is 0 or +-1 and each output channel a single product: the same floats
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert torch.equal(got[..., rotary_dim:], x[..., rotary_dim:])  # pass-through channels untouched


def test_linear_norm_and_sliced_mlp_equal_the_originals():
    torch.manual_seed(0)
    norm = RMSNorm(64, 1e-5)
    norm.weight.data.normal_()
    mlp = FusedSwiGLU(64, 96)
    x = torch.randn(1, 3, 64)
    torch.testing.assert_close(LinearRMSNorm(norm)(x), norm(x), rtol=1e-5, atol=1e-5)
    assert torch.equal(SlicedSwiGLU(mlp)(x), mlp(x))
    assert LinearRMSNorm(norm).weight is norm.weight  # shared, not copied


@torch.no_grad()
def test_lowered_decoder_matches_the_model_and_is_undone():
    src = ModelRequest(preset="tiny").open()
    model = src.model.eval()
    hidden = model.cfg.text.hidden_size
    torch.manual_seed(0)
    n = 6
    embeds = torch.randn(1, n + 1, hidden)
    cache_position = torch.arange(n + 1)
    positions = torch.stack([cache_position, cache_position // 2, cache_position % 3])
    model.reset_cache()
    want = torch.cat(
        [
            model.text_decoder(embeds[:, :n], cache_position[:n], positions[:, :n]),
            model.text_decoder(embeds[:, n:], cache_position[n:], positions[:, n:]),
        ],
        dim=1,
    )
    originals = {name: type(m) for name, m in model.text.named_modules()}
    with executorch_decoder(model, max_seq_len=8) as comps:
        by_name = {c.name: c for c in comps}
        assert list(by_name).count(STEP_METHOD) == 1 and "text_decoder" in by_name
        step = by_name[STEP_METHOD]
        assert step.dynamic_shapes is None and [tuple(t.shape) for t in step.example_inputs] == [
            (1, 1, hidden),
            (1,),
            (3, 1),
        ]
        prefill = by_name["text_decoder"].module(embeds[:, :n], cache_position[:n], positions[:, :n])
        one = step.module(embeds[:, n:], cache_position[n:], positions[:, n:])  # reads the cache prefill wrote
    got = torch.cat([prefill, one], dim=1)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
    assert {name: type(m) for name, m in model.text.named_modules()} == originals

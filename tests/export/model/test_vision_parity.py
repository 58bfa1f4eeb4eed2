"""Parity of our export-friendly VisionEncoder against transformers' Glm4vVisionModel (fp32, CPU).

Weights are re-randomised to O(1) scale (transformers' init is std 0.02, which would make outputs so
small that an absolute tolerance could not fail) and the learned position grid is random, so wrong
resampling, wrong rotary layout or wrong patch order all show up as large errors.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import Glm4vConfig, Glm4vForConditionalGeneration, Glm4vVisionConfig, Glm4vVisionModel

from autoglm_export.config import parse_vision_config
from autoglm_export.errors import CheckpointError, ExportError
from autoglm_export.model.vision import VisionEncoder

PREFIX = "model.visual."


def vision_kwargs(**over):
    kw = dict(
        depth=1,
        hidden_size=32,
        num_heads=2,
        out_hidden_size=24,
        intermediate_size=40,
        image_size=56,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        in_channels=3,
    )
    kw.update(over)
    return kw


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "norm" in name and name.endswith("weight"):
            p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
        elif "position_embedding" in name:
            p.copy_(torch.randn(p.shape, generator=g))
        elif p.dim() > 1:
            p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
        else:
            p.copy_(0.1 * torch.randn(p.shape, generator=g))


def reference_model(seed: int = 0, **over) -> Glm4vVisionModel:
    torch.manual_seed(seed)
    cfg = Glm4vVisionConfig(**vision_kwargs(**over), attn_implementation="eager")
    model = Glm4vVisionModel(cfg).eval().float()
    randomize_(model, seed)
    return model


def ours_from(ref: Glm4vVisionModel, image_hw) -> VisionEncoder:
    # Go through our own config parser, as the real pipeline does with config.json.
    enc = VisionEncoder(parse_vision_config(ref.config.to_dict(), "vision_config"), image_hw).eval()
    enc.load_state_dict(ref.state_dict(), strict=True)
    enc.prepare()
    return enc


def grid_thw(enc: VisionEncoder) -> torch.Tensor:
    return torch.tensor([[1, *enc.grid_hw]])


def tolerance(ref: torch.Tensor) -> float:
    return 1e-4 * max(1.0, ref.abs().max().item())


def assert_close(out: torch.Tensor, ref: torch.Tensor, what: str) -> float:
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    err = (out - ref).abs().max().item()
    print(f"{what}: max|err|={err:.3e} max|ref|={ref.abs().max().item():.3f}")
    assert err <= tolerance(ref), f"{what}: max|ours - ref| = {err:.3e} > {tolerance(ref):.3e}"
    return err


CASES = {
    # id: (config overrides, export image_hw)
    "nonsquare_56x84": (dict(), (56, 84)),
    "tall_84x56_1head_depth3": (dict(num_heads=1, hidden_size=16, depth=3), (84, 56)),
    "upsample_84x112_3heads": (dict(num_heads=3, hidden_size=24), (84, 112)),
    "downsample_56x56_from_84": (dict(image_size=84), (56, 56)),
    "same_as_config_56x56": (dict(), (56, 56)),
    # odd learned grid (5x5), merge 3, head_dim 12, qkv bias, gelu
    "merge3_oddgrid_bias_gelu": (
        dict(
            image_size=20,
            patch_size=4,
            spatial_merge_size=3,
            num_heads=3,
            hidden_size=36,
            depth=3,
            attention_bias=True,
            hidden_act="gelu",
        ),
        (24, 36),
    ),
    "merge1_temporal1": (dict(image_size=16, patch_size=4, spatial_merge_size=1, temporal_patch_size=1), (8, 28)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_parity_vs_transformers(case):
    over, hw = CASES[case]
    ref_model = reference_model(seed=len(case), **over)
    enc = ours_from(ref_model, hw)
    p, m = ref_model.config.patch_size, ref_model.config.spatial_merge_size
    assert enc.num_patches == (hw[0] // p) * (hw[1] // p)
    assert enc.num_tokens == enc.num_patches // (m * m)
    torch.manual_seed(1)
    pv = torch.randn(enc.num_patches, enc.patch_dim)
    with torch.no_grad():
        ref = ref_model(pv, grid_thw=grid_thw(enc)).pooler_output
        out = enc(pv)
    assert out.shape == (enc.num_tokens, ref_model.config.out_hidden_size)
    assert_close(out, ref, case)


def test_full_model_checkpoint_keys_and_image_features():
    """Stripped `model.visual.*` keys of the full model load strictly; output == get_image_features."""
    torch.manual_seed(0)
    cfg = Glm4vConfig(
        text_config=dict(
            vocab_size=64,
            hidden_size=24,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            rope_parameters=dict(
                rope_type="default", rope_theta=10000.0, mrope_section=[2, 2, 2], partial_rotary_factor=0.5
            ),
        ),
        vision_config=vision_kwargs(out_hidden_size=24),
        attn_implementation="eager",
    )
    full = Glm4vForConditionalGeneration(cfg).eval().float()
    randomize_(full.model.visual, 3)
    visual = {k[len(PREFIX) :]: v for k, v in full.state_dict().items() if k.startswith(PREFIX)}
    assert visual, "no model.visual.* keys in the full model's state dict"

    enc = VisionEncoder(parse_vision_config(cfg.vision_config.to_dict(), "vision_config"), (84, 56)).eval()
    assert set(enc.state_dict()) == set(visual)  # nothing extra persisted, nothing missing
    enc.load_state_dict(visual, strict=True)
    enc.prepare()
    # Conv weights are held as their [out, in] Linear view; our own state dict round-trips strictly too.
    assert enc.state_dict()["downsample.weight"].shape == (24, 32 * 2 * 2)
    assert torch.equal(
        enc.state_dict()["patch_embed.proj.weight"].view_as(visual["patch_embed.proj.weight"]),
        visual["patch_embed.proj.weight"],
    )
    VisionEncoder(enc.cfg, (84, 56)).load_state_dict(enc.state_dict(), strict=True)

    pv = torch.randn(enc.num_patches, enc.patch_dim)
    with torch.no_grad():
        ref = full.get_image_features(pv, image_grid_thw=grid_thw(enc)).pooler_output
        out = enc(pv)
    assert len(ref) == 1
    assert_close(out, ref[0], "full_model")


def test_image_processor_layout():
    """Real Glm4vImageProcessor output for one image (no resize) is what forward consumes."""
    from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil

    ref_model = reference_model(seed=5)
    enc = ours_from(ref_model, (56, 84))
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(56, 84, 3), dtype=np.uint8)
    proc = Glm4vImageProcessorPil(patch_size=14, temporal_patch_size=2, merge_size=2)
    feats = proc(images=[image], do_resize=False, return_tensors="pt")
    pv, thw = feats["pixel_values"].float(), feats["image_grid_thw"]
    assert thw.tolist() == [[1, *enc.grid_hw]]
    assert tuple(pv.shape) == (enc.num_patches, enc.patch_dim)
    with torch.no_grad():
        ref = ref_model(pv, grid_thw=thw).pooler_output
        out = enc(pv)
    assert_close(out, ref, "processor")


@pytest.mark.parametrize("case", ["upsample_84x112_3heads", "merge3_oddgrid_bias_gelu"])
def test_export_matches_eager(case):
    over, hw = CASES[case]
    enc = ours_from(reference_model(seed=7, **over), hw)
    pv = torch.randn(enc.num_patches, enc.patch_dim)
    ep = torch.export.export(enc, (pv,), strict=False)
    ops = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    bad = ("grid_sampler", "complex", "polar", "aten.item", "_local_scalar_dense", "nonzero", "split")
    banned = [o for o in ops if any(b in o for b in bad)]
    assert not banned, f"exported graph has data-dependent or unwanted ops: {banned}"
    # Constants travel as non-persistent buffers, not as persistent state.
    bufs = {s.target: s.persistent for s in ep.graph_signature.input_specs if s.kind.name == "BUFFER"}
    assert bufs == {"pos_embed": False, "rope_cos": False, "rope_sin": False}
    # ExecuTorch's to_edge crashes on non-contiguous non-persistent buffers.
    assert all(b.is_contiguous() for b in enc.buffers())
    with torch.no_grad():
        eager = enc(pv)
        exported = ep.module()(pv)
    assert_close(exported, eager, f"export[{case}]")


def test_parity_check_can_fail():
    """The comparison detects a stale prepare(), a wrong patch order and a wrong rotary layout."""
    ref_model = reference_model(seed=11, image_size=56)
    hw = (84, 112)
    cfg = parse_vision_config(ref_model.config.to_dict(), "vision_config")
    pv = torch.randn(VisionEncoder(cfg, hw).num_patches, VisionEncoder(cfg, hw).patch_dim)
    with torch.no_grad():
        ref = ref_model(pv, grid_thw=torch.tensor([[1, hw[0] // 14, hw[1] // 14]])).pooler_output

    def err(enc):
        with torch.no_grad():
            return (enc(pv) - ref).abs().max().item()

    stale = VisionEncoder(cfg, hw).eval()
    stale.load_state_dict(ref_model.state_dict(), strict=True)  # no prepare(): pos_embed from init weights
    assert err(stale) > 10 * tolerance(ref)
    stale.prepare()
    assert err(stale) <= tolerance(ref)

    swapped_rope = ours_from(ref_model, hw)
    swapped_rope.rope_cos, swapped_rope.rope_sin = swapped_rope.rope_sin, swapped_rope.rope_cos
    assert err(swapped_rope) > 10 * tolerance(ref)

    # Raster-order patches (instead of merge-block-major) must not pass.
    enc = ours_from(ref_model, hw)
    gh, gw = enc.grid_hw
    raster = pv.view(gh // 2, gw // 2, 2, 2, -1).permute(0, 2, 1, 3, 4).reshape(pv.shape)
    with torch.no_grad():
        assert (enc(raster) - ref).abs().max().item() > 10 * tolerance(ref)


def test_rejects_bad_shapes():
    cfg = parse_vision_config(vision_kwargs(), "vision_config")
    with pytest.raises(ExportError, match="multiples of"):
        VisionEncoder(cfg, (56, 70))
    with pytest.raises(CheckpointError, match="head_dim"):
        VisionEncoder(dataclasses.replace(cfg, hidden_size=36, num_heads=6), (56, 56))
    enc = VisionEncoder(cfg, (56, 56))
    with pytest.raises(ExportError, match="pixel_values shape"):
        enc(torch.randn(enc.num_patches + 1, enc.patch_dim))

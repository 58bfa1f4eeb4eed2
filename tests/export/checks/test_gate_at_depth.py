"""The parity gate's two answers to depth (checks/layerwise.py, checks/floor.py) and the twin's
bf16 group scales (targets/executorch/twin.py), on the embedded tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autoglm_export.checks import floor, layerwise
from autoglm_export.checks.probes import build_probes, run_components
from autoglm_export.quantize import QuantRecipe, apply_recipe
from autoglm_export.request import ModelRequest
from autoglm_export.targets.executorch.twin import quantize_twin, round_group_scales, xnnpack_groupwise
from autoglm_runtime.backends.torch_backend import TorchBackend
from autoglm_runtime.parity import Metrics, Thresholds

CHUNK = 16  # shorter than the prompts: the replay must carry each layer's KV cache across prefill chunks
FP32_KINDS = {"text_decoder": "fp32", "vision_encoder": "fp32"}
INT_KINDS = {"text_decoder": "int8_dynamic", "vision_encoder": "int8_dynamic"}


@pytest.fixture
def captured():
    src = ModelRequest().open()
    backend = TorchBackend(src.model)
    with layerwise.capture(src.model) as stacks:  # as fp32_references: the decoder runs in build_probes
        probes = build_probes(src.spec, src.tokenizer_path, backend, cases=2, decode_steps=2, max_seq_len=CHUNK)
    return src, probes, stacks


def _stages(row) -> dict[str, float]:
    return {s["stage"]: s["cosine"] for s in row["per_stage"]}


def test_replaying_the_unquantized_model_reproduces_every_block(captured):
    src, probes, stacks = captured
    text = next(s for s in stacks if s.component == "text_decoder")
    assert all(len(calls) == len(text.calls[0]) > len(probes) for calls in text.calls)  # chunks, no decode steps
    rows = {r["component"]: r for r in layerwise.replay(stacks, FP32_KINDS)}
    assert set(rows) == {"text_decoder", "vision_encoder"}
    assert len(rows["text_decoder"]["per_stage"]) == len(src.model.text.layers) + 1  # + the head
    assert len(rows["vision_encoder"]["per_stage"]) == len(src.model.vision.blocks) + 1
    for row in rows.values():
        assert row["passed"], row["failures"]  # FAITHFUL_FP32: 1e-4 of scale
        assert min(_stages(row).values()) > 1 - 1e-9


def test_a_broken_block_fails_its_own_stage_only(captured):
    src, _, stacks = captured
    apply_recipe(src.model, QuantRecipe())
    healthy = {r["component"]: r for r in layerwise.replay(stacks, INT_KINDS)}
    assert all(r["passed"] for r in healthy.values()), [r["failures"] for r in healthy.values()]
    assert all(0.95 < c < 1 for c in _stages(healthy["text_decoder"]).values())  # quantized: close, not equal
    with torch.no_grad():
        src.model.text.layers[1].post_attention_layernorm.weight.neg_()
    broken = {r["component"]: r for r in layerwise.replay(stacks, INT_KINDS)}["text_decoder"]
    assert not broken["passed"]
    assert [f.split(":")[0] for f in broken["failures"]] == ["text_decoder.1"]
    assert broken["worst_stage"] == "text_decoder.1"


def test_the_floor_is_seeded_small_and_only_moves_activation_quantized_linears(captured):
    src, probes, _ = captured
    backend = TorchBackend(src.model)
    plain = run_components(backend, probes, CHUNK, ("text_decoder",))["text_decoder"]
    with floor.jittered(src.model):  # fp32 model: nothing to jitter
        assert np.array_equal(run_components(backend, probes, CHUNK, ("text_decoder",))["text_decoder"], plain)
    apply_recipe(src.model, QuantRecipe())
    twin = run_components(backend, probes, CHUNK, ("text_decoder",))["text_decoder"]
    runs = []
    for _ in range(2):
        with floor.jittered(src.model):
            runs.append(run_components(backend, probes, CHUNK, ("text_decoder",))["text_decoder"])
    assert np.array_equal(runs[0], runs[1])
    cos = float(np.dot(runs[0].ravel(), twin.ravel()) / np.linalg.norm(runs[0]) / np.linalg.norm(twin))
    assert 0.999 < cos < 1.0  # some int8 roundings flip, a few ULPs of noise do no more


def test_widened_thresholds_follow_the_floor_and_never_tighten():
    base = Thresholds(min_cosine=0.999, min_top1=0.9)
    m = Metrics("x", (1,), 0.0, 1.0, 0.0, 1 - 1e-3)
    m.top1_agreement, m.kl_mean = 0.95, 1e-3
    th = floor.widened(base, m)
    assert th.min_cosine == pytest.approx(1 - floor.FLOOR_FACTOR * 1e-3)
    assert th.min_top1 == pytest.approx(1 - floor.FLOOR_FACTOR * 0.05)
    assert th.max_kl is None and th.max_rel_abs is None  # not limited before: not limited after
    tiny = Metrics("x", (1,), 0.0, 1.0, 0.0, 1 - 1e-9)
    tiny.top1_agreement = 1.0
    assert floor.widened(base, tiny) == base


def test_the_xnnpack_twin_carries_bf16_group_scales():
    src = ModelRequest().open()
    quantize_twin(src.model, QuantRecipe(), backend="xnnpack")
    grouped = _grouped(src.model)
    assert grouped
    for w in grouped:
        assert torch.equal(w.scale, w.scale.to(torch.bfloat16).float())
    other = ModelRequest().open()
    quantize_twin(other.model, QuantRecipe(), backend="qnn")  # QNN keeps its own scales: not rounded
    before = [w.scale.clone() for w in _grouped(other.model)]
    assert round_group_scales(other.model, torch.bfloat16) == len(grouped)
    assert any(not torch.equal(b, w.scale) for b, w in zip(before, _grouped(other.model)))


def _grouped(model) -> list:
    weights = [m.weight for m in model.modules() if hasattr(getattr(m, "weight", None), "target_dtype")]
    return [w for w in weights if getattr(w, "activation_quantization", None) and xnnpack_groupwise(w)]

"""Aspect buckets on every target: one vision method per bucket (ExecuTorch methods, Core ML functions of one
multifunction VisionEncoder, ONNX graphs), each gated on parity, picked by the runtime for each image; a session
with two screenshots of different shapes and text-only history runs through the bundle."""

from __future__ import annotations

import numpy as np
import pytest

from autoglm_export.calibration import synthetic_screenshot
from autoglm_export.pipeline import export_bundle
from autoglm_export.request import ModelRequest
from autoglm_runtime.backends import backend_for_bundle
from autoglm_runtime.bundle import open_bundle
from autoglm_runtime.preprocess import preprocess_image
from autoglm_runtime.preprocess.buckets import is_vision_method
from autoglm_runtime.prompt import Message
from autoglm_runtime.session import Session

MAX_PIXELS = 2 * 32 * 784  # the tiny preset with 24-32 image tokens per bucket


def _options(target: str, out):
    if target == "onnx":
        from autoglm_export.targets.onnx.export import OnnxOptions

        return OnnxOptions(out=out, external_data_threshold=0)  # the 9B layout: weights in .onnx.data files
    if target == "coreml":
        from autoglm_export.targets.coreml.export import CoreMLOptions

        return CoreMLOptions(out=out)
    from autoglm_export.targets.executorch.export import ExecuTorchOptions

    return ExecuTorchOptions(out=out)


@pytest.fixture(scope="module", params=["onnx", "coreml", "executorch"])
def bucket_bundle(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"buckets-{request.param}") / "bundle"
    _, report = export_bundle(
        request.param, ModelRequest(preset="tiny", max_pixels=MAX_PIXELS), _options(request.param, out)
    )
    return open_bundle(out), report


def test_every_bucket_is_a_method_gated_on_parity(bucket_bundle):
    bundle, report = bucket_bundle
    spec = bundle.spec
    assert len(spec.image.sizes) >= 6 and spec.image.max_pixels == MAX_PIXELS
    assert [b["method"] for b in bundle.manifest["runtime"]["image_buckets"]] == [
        spec.image.method(s) for s in spec.image.sizes
    ]
    assert report.passed
    # the gate ran the probe screenshot at every bucket: vision rows of all buckets' token counts
    rows = [r for r in report.rows if r["component"] == "vision_encoder"]
    assert rows and all(
        r["metrics"]["shape"][0] >= sum(spec.image.at(s).num_tokens for s in spec.image.sizes) for r in rows
    )
    if bundle.target == "onnx":  # one copy of the vision weights: every bucket's graph reads the first one's file
        import onnx

        models = bundle.manifest["models"]
        first = models["vision_encoder"]["external_data"]
        buckets = [m for c, m in models.items() if c.startswith("vision_encoder_")]
        assert first and buckets and all(m.get("shared_external_data") == first for m in buckets)
        for m in buckets:
            graph = onnx.load(str(bundle.root / m["file"]), load_external_data=False).graph
            where = {t.name: {e.key: e.value for e in t.external_data}.get("location") for t in graph.initializer}
            weights = [n.input[i] for n in graph.node if n.op_type == "MatMulNBits" for i in (1, 2)]
            # below 1 KiB a tensor stays inline (None); every other one is read from the first graph's file
            assert weights and {where[w] for w in weights} - {None} == {first}, m["file"]
    backend = backend_for_bundle(bundle)
    outs = {}
    for size in spec.image.sizes:
        fixed = spec.image.at(size)
        out = backend.vision_encoder(preprocess_image(synthetic_screenshot(), fixed), size)
        assert out.shape == (fixed.num_tokens, spec.hidden_size) and np.isfinite(out).all()
        outs[size] = out
    # transposed buckets have the same patch count but their own method (their own position constants)
    portrait, landscape = spec.image.sizes[0], spec.image.sizes[0][::-1]
    assert landscape in outs and not np.allclose(outs[portrait], outs[landscape])
    if bundle.target == "executorch":  # one bucket's method loaded at a time: each packs its own vision weights
        cache = backend.program.program._methods
        assert [n for n, m in cache.items() if m is not None and is_vision_method(n)] == [spec.image.method(size)]
        again = backend.vision_encoder(preprocess_image(synthetic_screenshot(), spec.image.at(portrait)), portrait)
        assert np.array_equal(again, outs[portrait])  # a released method loads again and answers the same


def test_two_screenshots_and_text_history(bucket_bundle):
    bundle, _ = bucket_bundle
    spec = bundle.spec
    session = Session(backend_for_bundle(bundle), bundle.tokenizer_path, spec)
    portrait, landscape = synthetic_screenshot(2400, 1080, 1), synthetic_screenshot(1080, 2400, 2)
    messages = [
        Message("system", "You are a phone agent."),
        Message("user", "Open WeChat."),  # an earlier turn, its screenshot dropped: text only
        Message("assistant", '<think>Tap the icon.</think><answer>do(action="Tap", element=[500, 500])</answer>'),
        Message("user", [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Which screen is wider?"}]),
    ]
    result = session.generate(messages, images=[portrait, landscape], max_new_tokens=3)
    inputs = session.encode(messages, images=[portrait, landscape])
    assert [g[1:] for g in inputs.image_grids] == [
        (spec.image.sizes[0][0] // 14, spec.image.sizes[0][1] // 14),
        (spec.image.sizes[0][1] // 14, spec.image.sizes[0][0] // 14),
    ]
    assert result.prompt_tokens == len(inputs.input_ids) and 1 <= len(result.token_ids) <= 3

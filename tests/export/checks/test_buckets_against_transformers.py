"""Parity at every image bucket: for screenshots of real phone sizes, our bucket, pixel values and image + text
logits equal transformers' (its image processor given the same max_pixels, then Glm4vForConditionalGeneration)."""

from __future__ import annotations

import pytest
import torch

from autoglm_export.calibration import synthetic_screenshot
from autoglm_export.checks.against_transformers import (
    TRANSFORMERS_MATCH,
    TransformersReport,
    _load_reference,
    compare_bucket,
    hf_image_processor,
    verify_against_transformers,
)
from autoglm_export.source import open_source

MAX_PIXELS = 2 * 32 * 784  # small buckets (24-32 image tokens) keep the tiny checkpoints fast
PHONE_SCREENS = [(1080, 2400), (1170, 2532), (1440, 3200), (720, 1600), (2400, 1080), (1080, 1080)]


@pytest.fixture(scope="module")
def bucket_source(tmp_path_factory):
    from conftest import TINY_TOKENIZER, TOKENIZER_IDS, build_hf_glm4v

    path = tmp_path_factory.mktemp("buckets") / "chat"
    build_hf_glm4v(text={"vocab_size": 4096}, **TOKENIZER_IDS).save_pretrained(path)
    (path / "tokenizer.json").write_bytes(TINY_TOKENIZER.read_bytes())
    return open_source(path, max_pixels=MAX_PIXELS, max_context=256)


@torch.no_grad()
def test_every_phone_screenshot_matches_transformers(bucket_source):
    src = bucket_source
    hf = _load_reference(src)
    processor = hf_image_processor(src.spec.image)
    report = TransformersReport()
    for seed, (width, height) in enumerate(PHONE_SCREENS):
        compare_bucket(src, hf, "打开微信 Open WeChat", report, processor, synthetic_screenshot(height, width, seed))
    assert report.passed, "\n".join(report.lines())
    logits = [c for c in report.comparisons if c.name.startswith("image+text logits")]
    assert len(logits) == len(PHONE_SCREENS)
    assert all(c.metrics.rel_max_abs <= TRANSFORMERS_MATCH.max_rel_abs for c in logits)
    assert all(c.metrics.top1_agreement == 1.0 for c in logits)
    pixels = [c for c in report.comparisons if c.name.startswith("pixel values")]
    assert all(c.metrics.max_abs == 0.0 for c in pixels), [c.line() for c in pixels]


def test_the_export_check_covers_every_bucket(bucket_source):
    report = verify_against_transformers(bucket_source)
    assert report.passed, "\n".join(report.lines())
    logits = [c for c in report.comparisons if c.name.startswith("image+text logits")]
    assert len(logits) >= len(bucket_source.spec.image.sizes)  # one screen per bucket at least


def test_the_large_model_screens_are_listed_screens():
    from autoglm_export.checks.against_transformers import LARGE_MODEL_SCREENS
    from autoglm_runtime.preprocess.buckets import SCREENS

    assert set(LARGE_MODEL_SCREENS) <= {name for name, _, _ in SCREENS}

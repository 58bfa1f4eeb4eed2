"""Aspect buckets: the runtime picks, for each image, exactly the size transformers' processor gives it under the
export's ``max_pixels``, and makes the same pixel values; images that fit no bucket are one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from autoglm_runtime.errors import InputError
from autoglm_runtime.preprocess import ImageSpec, prepare_image
from autoglm_runtime.preprocess.buckets import (
    DEFAULT_MAX_PIXELS,
    SCREENS,
    bucket_sizes,
    method_among,
    method_name,
    smart_resize,
)

# The phone sizes issue 14 names (width x height), plus the other screens the buckets are made for.
PHONE_SCREENS = [(1080, 2400), (1170, 2532), (1440, 3200), (720, 1600), (2400, 1080), (1080, 1080)]
BUDGETS = [2 * 64 * 784, DEFAULT_MAX_PIXELS, 2 * 1024 * 784]


def spec_for(max_pixels: int) -> ImageSpec:
    buckets = bucket_sizes(max_pixels)
    return ImageSpec(*buckets[0], buckets=buckets, max_pixels=max_pixels)


def screenshot(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(height // 16, 2), max(width // 16, 2), 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.Resampling.NEAREST)


@pytest.fixture(scope="module")
def hf():
    pytest.importorskip("transformers")
    from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil, smart_resize

    return Glm4vImageProcessorPil, smart_resize


@pytest.mark.parametrize("max_pixels", BUDGETS)
def test_smart_resize_is_transformers(hf, max_pixels):
    _, hf_resize = hf
    for h in (20, 28, 57, 300, 780, 1080, 1600, 2400, 3200, 5000):
        for w in (28, 41, 360, 720, 1080, 1440, 2400):
            if max(h, w) / min(h, w) > 200:
                continue
            assert smart_resize(h, w, max_pixels=max_pixels) == hf_resize(
                2, h, w, factor=28, min_pixels=112 * 112, max_pixels=max_pixels
            ), (h, w)


@pytest.mark.parametrize("max_pixels", BUDGETS)
def test_every_screen_lands_exactly_on_a_bucket(hf, max_pixels):
    _, hf_resize = hf
    spec = spec_for(max_pixels)
    screens = PHONE_SCREENS + [(w, h) for _, h, w in SCREENS]
    for width, height in screens:
        fixed, processor_size = spec.fit(width, height)
        expected = hf_resize(2, height, width, factor=28, min_pixels=112 * 112, max_pixels=max_pixels)
        assert (fixed.height, fixed.width) == processor_size == expected, (width, height)
    # every bucket is some screen's
    assert {spec.fit(w, h)[0].grid_thw for _, h, w in SCREENS} == {spec.at(b).grid_thw for b in spec.sizes}


def test_default_budget_buckets():
    # The documented default: a 1080x2400 screenshot is 644x280 = 230 image tokens, at most 256 tokens a bucket.
    spec = spec_for(DEFAULT_MAX_PIXELS)
    assert spec.sizes[0] == (644, 280) and spec.num_tokens == 230
    assert max(spec.at(b).num_tokens for b in spec.sizes) <= 256
    assert len(spec.sizes) == len(set(spec.sizes)) >= 6
    assert (280, 644) in spec.sizes and (448, 448) in spec.sizes  # landscape and square


@pytest.mark.parametrize("size", PHONE_SCREENS)
def test_pixels_equal_the_processor(hf, size):
    processor_cls, _ = hf
    spec = spec_for(DEFAULT_MAX_PIXELS)
    proc = processor_cls(size={"shortest_edge": spec.min_pixels, "longest_edge": DEFAULT_MAX_PIXELS})
    img = screenshot(*size, seed=size[0])
    ref = proc(images=img, return_tensors="np")
    ours = prepare_image(img, spec)
    assert ref["image_grid_thw"].tolist() == [list(ours.spec.grid_thw)]
    assert ours.pixels.shape == ref["pixel_values"].shape
    assert np.abs(ours.pixels - ref["pixel_values"]).max() == 0.0


def test_near_aspect_is_stretched_with_a_warning(caplog):
    spec = spec_for(DEFAULT_MAX_PIXELS)
    with caplog.at_level("WARNING"):
        out = prepare_image(screenshot(1000, 2100), spec)  # 2.1:1, the processor gives 644x308: no bucket
    assert out.size in spec.sizes and "stretched to the nearest bucket" in caplog.text


@pytest.mark.parametrize(
    "size, words",
    [
        ((20, 600), "too small for any bucket"),
        ((120, 120), "too small for any bucket"),
        ((1080, 4000), "fits no bucket"),
        ((8000, 6000), "too large for any bucket"),
    ],
)
def test_images_no_bucket_takes_are_one_line_errors(size, words):
    spec = spec_for(DEFAULT_MAX_PIXELS)
    with pytest.raises(InputError) as e:
        spec.fit(*size)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_fixed_size_spec_stretches_every_image():
    spec = ImageSpec(168, 84)
    fixed, size = spec.fit(1000, 1000)
    assert fixed is spec and size == (168, 84) and spec.sizes == ((168, 84),)


def test_method_names_round_trip_through_the_manifest():
    spec = spec_for(DEFAULT_MAX_PIXELS)
    again = ImageSpec.from_dict(spec.to_dict())
    assert again == spec
    names = [spec.method(b) for b in spec.sizes]
    assert names[0] == "vision_encoder" and names[1] == method_name(spec.sizes[1], spec.sizes[0])
    assert all(method_among(b, names) == n for b, n in zip(spec.sizes, names))
    assert method_among(None, names) == "vision_encoder"


def test_bucket_that_does_not_fit_the_context_is_one_line():
    from autoglm_export.source import open_source  # the eager tiny model with buckets
    from autoglm_runtime.backends.torch_backend import TorchBackend
    from autoglm_runtime.session import Session

    src = open_source(max_pixels=DEFAULT_MAX_PIXELS, max_context=200)  # a 230-token bucket cannot fit
    session = Session(TorchBackend(src.model), src.tokenizer_path, src.spec)
    with pytest.raises(InputError) as e:
        session.generate("hi", image=screenshot(1080, 2400), max_new_tokens=4)
    msg = str(e.value)
    assert (
        "exceeds the context limit of 200" in msg and "230 of them for image(s) at 280x644" in msg and "\n" not in msg
    )

"""Aspect-preserving image buckets: the static sizes an export's vision tower runs at, and which one an image takes.

transformers' ``Glm4vImageProcessor`` keeps an image's aspect ratio (``smart_resize``: sides rounded to multiples
of patch * merge, the pixel count between ``min_pixels`` and ``max_pixels``). An exported vision tower has static
shapes, so an export takes a pixel budget (``max_pixels``, the processor's ``size["longest_edge"]``) and builds one
static size per common screen shape (``SCREENS``), each the processor's own size for that screen under the budget.
Above the budget the processor's size depends on the aspect ratio only, so every screenshot of a listed shape
(1080x2400, 720x1600, 1440x3200, ...) lands exactly on its bucket and the model sees what transformers would give it.
"""

from __future__ import annotations

import math

from ..errors import InputError

# transformers' Glm4vImageProcessor default size["shortest_edge"] (min_pixels).
DEFAULT_MIN_PIXELS = 112 * 112
# The phone default budget: at most 256 image tokens (2 frames x 256 x 28^2, in the processor's units, which count
# the temporal copy of a still image). A 1080x2400 screenshot becomes 644x280, 230 tokens: about the cost of the
# fixed 672x308 (264 tokens) the 9B preset used to stretch every image to.
DEFAULT_MAX_PIXELS = 2 * 256 * 28 * 28
# Refused before resizing: beyond any phone or tablet screen (the server refuses larger uploads the same way).
MAX_SOURCE_PIXELS = 40_000_000
# An image whose processor size is no bucket takes the nearest bucket in aspect ratio, stretched, when the ratios
# differ by at most this factor; otherwise it fits no bucket.
MAX_ASPECT_STRETCH = 1.15

# (name, height, width) of the screens the buckets are made for, portrait first: its first entry's bucket is the
# default one (the ``vision_encoder`` method every bundle has).
SCREENS: tuple[tuple[str, int, int], ...] = (
    ("phone 20:9 (1080x2400)", 2400, 1080),
    ("phone 19.5:9 (1170x2532)", 2532, 1170),
    ("phone 2:1 (1080x2160)", 2160, 1080),
    ("phone 16:9 (1080x1920)", 1920, 1080),
    ("tablet 4:3 (1536x2048)", 2048, 1536),
    ("square (1080x1080)", 1080, 1080),
    ("landscape 20:9 (2400x1080)", 1080, 2400),
    ("landscape 16:9 (1920x1080)", 1080, 1920),
    ("landscape tablet 4:3 (2048x1536)", 1536, 2048),
)

DEFAULT_METHOD = "vision_encoder"


def smart_resize(
    height: int,
    width: int,
    factor: int = 28,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    temporal_factor: int = 2,
) -> tuple[int, int]:
    """transformers' glm4v ``smart_resize`` for one still image (``num_frames = temporal_factor``), line for line."""
    num_frames = temporal_factor
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    if max(height, width) / min(height, width) > 200:
        raise InputError(
            f"image {width}x{height}: aspect ratio {max(height, width) / min(height, width):.0f} is above 200"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    t_bar = round(num_frames / temporal_factor) * temporal_factor
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt((num_frames * height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (num_frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def bucket_sizes(
    max_pixels: int, min_pixels: int = DEFAULT_MIN_PIXELS, factor: int = 28, temporal_factor: int = 2
) -> tuple[tuple[int, int], ...]:
    """(height, width) per bucket: the processor's size for each of ``SCREENS`` under the budget, duplicates
    dropped, in ``SCREENS`` order (the first is the default)."""
    out: list[tuple[int, int]] = []
    for _, h, w in SCREENS:
        size = smart_resize(h, w, factor, min_pixels, max_pixels, temporal_factor)
        if size not in out:
            out.append(size)
    return tuple(out)


def method_name(size: tuple[int, int], default: tuple[int, int]) -> str:
    """The vision method (ExecuTorch method, Core ML function, ONNX file stem) of one bucket on every target."""
    return DEFAULT_METHOD if tuple(size) == tuple(default) else f"{DEFAULT_METHOD}_{size[0]}x{size[1]}"


def method_among(size: tuple[int, int] | None, names) -> str:
    """The vision method that runs ``size`` among a program's / bundle's ``names``: the bucket's own, else the
    default one (which then checks the input's shape)."""
    if size is None:
        return DEFAULT_METHOD
    own = f"{DEFAULT_METHOD}_{int(size[0])}x{int(size[1])}"
    return own if own in names else DEFAULT_METHOD


def is_vision_method(name: str) -> bool:
    return name == DEFAULT_METHOD or name.startswith(DEFAULT_METHOD + "_")


def choose_bucket(
    height: int,
    width: int,
    buckets: tuple[tuple[int, int], ...],
    *,
    factor: int,
    min_pixels: int,
    max_pixels: int,
    temporal_factor: int = 2,
) -> tuple[tuple[int, int], tuple[int, int]]:
    """(bucket, processor size) for an image of ``height`` x ``width``: the processor's own size when it is a
    bucket (exact), else the bucket nearest in aspect ratio within ``MAX_ASPECT_STRETCH``. InputError otherwise."""
    if height * width > MAX_SOURCE_PIXELS:
        raise InputError(
            f"image {width}x{height} is too large for any bucket: {height * width} pixels, "
            f"the limit is {MAX_SOURCE_PIXELS}"
        )
    if height < factor or width < factor:
        raise InputError(
            f"image {width}x{height} is too small for any bucket: both sides need at least {factor} pixels"
        )
    size = smart_resize(height, width, factor, min_pixels, max_pixels, temporal_factor)
    if size in buckets:
        return size, size
    smallest = min(h * w for h, w in buckets)
    if size[0] * size[1] * 2 < smallest:  # the processor would give it under half the smallest bucket's tokens
        raise InputError(
            f"image {width}x{height} is too small for any bucket: transformers' processor resizes it to "
            f"{size[1]}x{size[0]}, under half the smallest bucket ({smallest} pixels); "
            "send a larger image or export with a smaller --max-pixels"
        )
    aspect = math.log(height / width)
    best = min(buckets, key=lambda b: abs(math.log(b[0] / b[1]) - aspect))
    if abs(math.log(best[0] / best[1]) - aspect) > math.log(MAX_ASPECT_STRETCH):
        shapes = ", ".join(f"{w}x{h}" for h, w in buckets)
        raise InputError(
            f"image {width}x{height} (aspect {max(height, width) / min(height, width):.2f}:1) fits no bucket "
            f"within {MAX_ASPECT_STRETCH:.2f}x of its aspect ratio; buckets (WxH): {shapes}"
        )
    return best, size

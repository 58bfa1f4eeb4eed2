"""Image preprocessing for GLM-4.1V vision towers, in numpy/PIL only (no torch).

Bit-for-bit the same as transformers' PIL-backend ``Glm4vImageProcessorPil`` (what ``AutoImageProcessor`` gives
without torchvision) given the same ``max_pixels``, for every image whose processor size is one of the export's
buckets (``buckets.py``). An export with one fixed size (``--image-size``, no buckets) stretches every image to it.
"""

from __future__ import annotations

import dataclasses
import logging
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import InputError
from .buckets import DEFAULT_MIN_PIXELS, choose_bucket, method_name

# OpenAI CLIP statistics; the defaults of Glm4vImageProcessor (transformers.image_utils.OPENAI_CLIP_MEAN/STD).
log = logging.getLogger(__name__)

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

ImageSource = str | Path | Image.Image | np.ndarray


@dataclass(frozen=True)
class ImageSpec:
    """Everything a runtime needs to turn a picture into vision-tower input; stored in the bundle manifest."""

    height: int
    width: int
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD
    rescale_factor: float = 1 / 255
    # Aspect-preserving buckets (height, width), the default (height, width) first; () = one fixed size, stretched to.
    buckets: tuple[tuple[int, int], ...] = ()
    min_pixels: int = DEFAULT_MIN_PIXELS  # the processor's size["shortest_edge"]
    max_pixels: int | None = None  # the processor's size["longest_edge"]: the budget the buckets were made under

    def __post_init__(self) -> None:
        # Normalise lists (from JSON) to tuples so specs stay hashable and compare equal after a round trip.
        object.__setattr__(self, "image_mean", tuple(float(v) for v in self.image_mean))
        object.__setattr__(self, "image_std", tuple(float(v) for v in self.image_std))
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise ValueError("image_mean and image_std need 3 values (RGB)")
        unit = self.patch_size * self.merge_size
        if self.height <= 0 or self.width <= 0 or self.height % unit or self.width % unit:
            raise ValueError(
                f"export resolution {self.height}x{self.width} must be positive multiples of "
                f"patch_size*merge_size={unit}"
            )
        object.__setattr__(self, "buckets", tuple((int(h), int(w)) for h, w in self.buckets))
        if self.buckets and (self.buckets[0] != (self.height, self.width) or self.max_pixels is None):
            raise ValueError("buckets need max_pixels and start with the default size (height, width)")

    @property
    def sizes(self) -> tuple[tuple[int, int], ...]:
        """Every (height, width) the vision tower runs at, the default first."""
        return self.buckets or ((self.height, self.width),)

    def buckets_text(self) -> str:
        """``; N buckets under max_pixels M (WxH tokens): ...`` for ``info`` lines; empty without buckets."""
        if not self.buckets:
            return ""
        shown = ", ".join(f"{w}x{h} {self.at((h, w)).num_tokens}" for h, w in self.buckets)
        return f"; {len(self.buckets)} buckets under max_pixels {self.max_pixels} (WxH tokens): {shown}"

    def method(self, size: tuple[int, int] | None = None) -> str:
        """The vision method / function / graph that runs one size (the default size: ``vision_encoder``)."""
        return method_name(size or self.sizes[0], self.sizes[0])

    def at(self, size: tuple[int, int]) -> ImageSpec:
        """This spec at one of its sizes, as a fixed-size spec (what ``preprocess_image`` resizes to)."""
        if tuple(size) not in self.sizes:
            raise InputError(f"image size {size[0]}x{size[1]} is none of this model's buckets {list(self.sizes)}")
        return dataclasses.replace(self, height=int(size[0]), width=int(size[1]), buckets=(), max_pixels=None)

    def fit(self, width: int, height: int) -> tuple[ImageSpec, tuple[int, int]]:
        """The fixed-size spec an image of ``width`` x ``height`` is resized to, and transformers' processor size
        for it (the same when the image lands exactly on a bucket). Without buckets: the one fixed size."""
        if not self.buckets:
            return self, (self.height, self.width)
        bucket, size = choose_bucket(
            height,
            width,
            self.buckets,
            factor=self.patch_size * self.merge_size,
            min_pixels=self.min_pixels,
            max_pixels=self.max_pixels,
            temporal_factor=self.temporal_patch_size,
        )
        return self.at(bucket), size

    @property
    def grid_thw(self) -> tuple[int, int, int]:
        """The ``image_grid_thw`` row HF returns for one still image: (1, H/patch, W/patch)."""
        return 1, self.height // self.patch_size, self.width // self.patch_size

    @property
    def num_patches(self) -> int:
        """Rows of ``pixel_values`` (vision-tower sequence length before the merger)."""
        _, gh, gw = self.grid_thw
        return gh * gw

    @property
    def num_tokens(self) -> int:
        """Image placeholder tokens in the LLM prompt (after the merge_size x merge_size merger)."""
        return self.num_patches // (self.merge_size**2)

    @property
    def patch_dim(self) -> int:
        """Columns of ``pixel_values``: 3 * temporal_patch_size * patch_size**2."""
        return 3 * self.temporal_patch_size * self.patch_size**2

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["image_mean"], d["image_std"] = list(self.image_mean), list(self.image_std)  # JSON-friendly
        d["buckets"] = [list(b) for b in self.buckets]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImageSpec:
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown ImageSpec keys: {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def from_preprocessor_config(
        cls,
        cfg: dict[str, Any],
        height: int,
        width: int,
        buckets: tuple[tuple[int, int], ...] = (),
        max_pixels: int | None = None,
    ) -> ImageSpec:
        """Build a spec from a HF ``preprocessor_config.json`` dict plus the chosen export resolution(s)."""
        resample = cfg.get("resample", 3)
        if resample != 3:  # PILImageResampling.BICUBIC; we only implement what GLM-4.1V ships with
            raise ValueError(f"only bicubic resampling (3) is supported, config has resample={resample}")
        normalize = cfg.get("do_normalize", True)
        return cls(
            height=height,
            width=width,
            patch_size=int(cfg.get("patch_size", 14)),
            temporal_patch_size=int(cfg.get("temporal_patch_size", 2)),
            merge_size=int(cfg.get("merge_size", 2)),
            image_mean=tuple(cfg.get("image_mean", CLIP_MEAN)) if normalize else (0.0, 0.0, 0.0),
            image_std=tuple(cfg.get("image_std", CLIP_STD)) if normalize else (1.0, 1.0, 1.0),
            rescale_factor=float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True) else 1.0,
            buckets=buckets,
            min_pixels=min_pixels_of(cfg),
            max_pixels=max_pixels,
        )


def min_pixels_of(preprocessor_config: dict[str, Any]) -> int:
    """The processor's minimum pixel count (``size["shortest_edge"]``, or the older ``min_pixels`` key)."""
    size = preprocessor_config.get("size") or {}
    return int(size.get("shortest_edge") or preprocessor_config.get("min_pixels") or DEFAULT_MIN_PIXELS)


def _to_rgb(img: Image.Image) -> Image.Image:
    # Same as transformers.image_transforms.convert_to_rgb: transparency is composited onto white, not dropped
    # (dropping it would expose whatever colour the encoder left under transparent pixels, often black).
    if "A" in img.getbands() or img.info.get("transparency") is not None:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def load_image(src: ImageSource) -> Image.Image:
    """Open a path / PIL image / uint8 array (HxW, HxWx3 or HxWx4) as an RGB PIL image.

    EXIF orientation is applied (as transformers.image_utils.load_image does) so phone photos come out upright.
    """
    if isinstance(src, np.ndarray):
        if src.dtype != np.uint8 or not (src.ndim == 2 or (src.ndim == 3 and src.shape[2] in (3, 4))):
            raise InputError(f"image array must be uint8 HxW, HxWx3 or HxWx4, got {src.dtype} {src.shape}")
        return _to_rgb(Image.fromarray(src))
    if isinstance(src, Image.Image):
        return _to_rgb(ImageOps.exif_transpose(src))
    if not isinstance(src, (str, Path)):
        raise TypeError(f"unsupported image source type {type(src).__name__}")
    try:
        with Image.open(src) as img:
            img.load()  # decode now, so truncated/corrupt files fail here with the path attached
            return _to_rgb(ImageOps.exif_transpose(img))
    # Pillow's decoders also raise SyntaxError ("broken PNG file"), struct.error and friends on corrupt data.
    except (
        OSError,
        UnidentifiedImageError,
        Image.DecompressionBombError,
        ValueError,
        SyntaxError,
        struct.error,
        EOFError,
        IndexError,
        KeyError,
        TypeError,
        ZeroDivisionError,
        MemoryError,
    ) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
        raise InputError(f"cannot read image {src}: {reason}") from None


def preprocess_image(img: ImageSource, spec: ImageSpec) -> np.ndarray:
    """Image -> float32 ``pixel_values`` [spec.num_patches, spec.patch_dim] in Glm4vImageProcessor's patch order."""
    rgb = load_image(img)
    # HF resizes uint8 images with PIL (not torch/numpy interpolation): PIL bicubic with its antialiasing support
    # scaled by the downscale factor, rounded and clipped back to uint8. Doing the same PIL call keeps parity exact.
    rgb = rgb.resize((spec.width, spec.height), resample=Image.Resampling.BICUBIC)
    # Rescale in float64 then cast, normalise in float32: the exact dtype sequence of HF's numpy rescale/normalize.
    x = (np.asarray(rgb, dtype=np.float64) * spec.rescale_factor).astype(np.float32)
    x = (x - np.asarray(spec.image_mean, np.float32)) / np.asarray(spec.image_std, np.float32)  # [H, W, C]

    p, m, t = spec.patch_size, spec.merge_size, spec.temporal_patch_size
    _, gh, gw = spec.grid_thw
    # Rows are ordered by merge window (each m x m block of patches is contiguous, row-major inside the window),
    # so the vision merger can fold consecutive rows; columns are (channel, time, py, px).
    x = x.reshape(gh // m, m, p, gw // m, m, p, 3).transpose(0, 3, 1, 4, 6, 2, 5)  # Gh Gw mh mw C py px
    # A still image is its own temporal_patch_size "frames": repeat along a new time axis after C.
    x = np.broadcast_to(x[:, :, :, :, :, None], (*x.shape[:5], t, p, p))
    return np.ascontiguousarray(x.reshape(spec.num_patches, spec.patch_dim), dtype=np.float32)


@dataclass
class PreparedImage:
    """One image as the vision tower takes it: its bucket's fixed-size spec and ``pixel_values``."""

    spec: ImageSpec  # fixed size: spec.height x spec.width is the bucket
    pixels: np.ndarray  # [spec.num_patches, spec.patch_dim]

    @property
    def size(self) -> tuple[int, int]:
        return self.spec.height, self.spec.width


def prepare_image(img: ImageSource, spec: ImageSpec) -> PreparedImage:
    """Pick the image's bucket (as transformers' processor sizes it under the export's budget), resize, patchify.

    An image whose processor size is no bucket is stretched to the nearest bucket in aspect ratio, with a warning.
    """
    rgb = load_image(img)
    fixed, processor_size = spec.fit(*rgb.size)
    if spec.buckets and processor_size != (fixed.height, fixed.width):
        log.warning(
            "image %dx%d: transformers' processor would resize it to %dx%d, which is no bucket of this export; "
            "stretched to the nearest bucket %dx%d",
            *rgb.size,
            processor_size[1],
            processor_size[0],
            fixed.width,
            fixed.height,
        )
    return PreparedImage(fixed, preprocess_image(rgb, fixed))

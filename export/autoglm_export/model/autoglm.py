"""The whole AutoGLM-Phone model: text decoder, vision tower, optional audio tower.

Its four methods are the component entry points that every target exports:
``vision_encoder``, ``audio_encoder``, ``token_embedding`` and ``text_decoder``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import ModelConfig
from .audio import AudioEncoder
from .text import TextDecoder
from .vision import VisionEncoder


@dataclass(frozen=True)
class ExportShape:
    """The static shapes an export is built for."""

    max_context: int = 512
    image_hw: tuple[int, int] = (336, 336)  # the default image size (with buckets: the first bucket)
    audio_frames: int = 3000
    # Aspect-preserving buckets made under the pixel budget max_pixels (autoglm_runtime.preprocess.buckets),
    # image_hw first; () = one fixed image size that every image is stretched to.
    image_buckets: tuple[tuple[int, int], ...] = ()
    max_pixels: int | None = None

    def to_dict(self) -> dict:
        return {
            "max_context": self.max_context,
            "image_hw": list(self.image_hw),
            "audio_frames": self.audio_frames,
            "image_buckets": [list(b) for b in self.image_buckets],
            "max_pixels": self.max_pixels,
        }


class AutoGLM(nn.Module):
    def __init__(self, cfg: ModelConfig, shape: ExportShape):
        super().__init__()
        self.cfg, self.shape = cfg, shape
        self.text = TextDecoder(cfg.text, shape.max_context)
        self.vision = VisionEncoder(cfg.vision, shape.image_hw, shape.image_buckets)
        self.audio = AudioEncoder(cfg.audio, shape.audio_frames) if cfg.audio is not None else None

    @torch.no_grad()
    def prepare(self) -> None:
        """Materialise every derived constant (after weights were assigned from a checkpoint)."""
        self.text.prepare()
        self.vision.prepare()
        if self.audio is not None:
            self.audio.prepare()

    # ---- component entry points (static, export-ready signatures)
    def token_embedding(self, token_ids: torch.Tensor) -> torch.Tensor:
        """token_ids [1, S] int64 -> [1, S, hidden]."""
        return self.text.embed(token_ids)

    def vision_encoder(self, pixel_values: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """pixel_values [num_patches, patch_dim] of an image of ``size`` (a bucket; None: the default image size)
        -> [image_tokens, hidden]."""
        return self.vision(pixel_values, size)

    def audio_encoder(self, input_features: torch.Tensor) -> torch.Tensor:
        """input_features [1, mel_bins, frames] -> [audio_tokens, hidden]."""
        if self.audio is None:
            raise RuntimeError("this model has no audio tower")
        return self.audio(input_features)

    def text_decoder(
        self, inputs_embeds: torch.Tensor, cache_position: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        """inputs_embeds [1, S, hidden], cache_position [S], position_ids [3, S] -> logits [1, S, vocab]."""
        return self.text(inputs_embeds, cache_position, position_ids)

    def reset_cache(self) -> None:
        self.text.reset_cache()

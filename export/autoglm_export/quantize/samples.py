"""Calibration samples shared by ``calibrate`` and ``qat``: prompts with their screenshot / speech as
exact component inputs, plus windows of plain calibration text."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from autoglm_runtime.preprocess import preprocess_audio, preprocess_image
from autoglm_runtime.prompt import Message, encode_chat
from autoglm_runtime.splice import splice
from autoglm_runtime.tokenizer import Tokenizer

from ..calibration import CalibrationSet, load_image, load_speech
from ..errors import ExportError
from ..source import ModelSource

log = logging.getLogger(__name__)


@dataclass
class Sample:
    """One calibration input, as exact component inputs."""

    token_ids: np.ndarray  # [S]
    position_ids: np.ndarray  # [3, S]
    pixels: np.ndarray | None = None
    features: np.ndarray | None = None


def build_samples(
    src: ModelSource, cal: CalibrationSet, max_prompts: int | None = None, text_windows: int = 32, seq_len: int = 256
) -> list[Sample]:
    """Prompts with their screenshot / speech through the chat template, then ``text_windows``
    windows of ``seq_len`` tokens of plain calibration text (shared by ``calibrate`` and ``qat``)."""
    if src.tokenizer_path is None:
        raise ExportError(f"{src.label}: no tokenizer.json next to the weights; calibration needs it")
    spec, tok = src.spec, Tokenizer(src.tokenizer_path)
    limit = spec.max_context
    samples: list[Sample] = []
    for p in cal.prompts[:max_prompts]:
        parts, pixels, feats = [], None, None
        if p.image is not None:
            parts.append({"type": "image"})
            pixels = preprocess_image(load_image(p.image), spec.image)
        if p.audio is not None and spec.has_audio:
            parts.append({"type": "audio"})
            feats = preprocess_audio(load_speech(p.audio), spec.audio)
        parts.append({"type": "text", "text": p.text})
        enc = encode_chat(
            tok,
            [Message("user", parts)],
            image_grids=spec.image.grid_thw,
            spatial_merge_size=spec.image.merge_size,
            audio_tokens_per_clip=spec.audio_tokens,
        )
        if len(enc.input_ids) > limit:
            log.warning(
                "calibration prompt %s is %d tokens, over the context %d; skipped", p.id, len(enc.input_ids), limit
            )
            continue
        samples.append(Sample(np.asarray(enc.input_ids), np.asarray(enc.position_ids), pixels, feats))
    window = min(seq_len, limit)
    stream = np.asarray([i for line in cal.texts for i in tok.encode(line + "\n")], dtype=np.int64)
    for k in range(min(text_windows, len(stream) // window)):
        ids = stream[k * window : (k + 1) * window]
        samples.append(Sample(ids, np.tile(np.arange(window), (3, 1))))
    if not samples:
        raise ExportError(f"{cal.root}: no usable calibration samples (prompts over the context or no text)")
    return samples


def spliced_embeds(model, sample: Sample, spec, vision=None, audio=None, device=None) -> torch.Tensor:
    """[1, S, D] token embeddings with the image / audio placeholder rows replaced by encoder outputs
    (``device``: where the model computes, when not the CPU)."""
    ids = torch.from_numpy(sample.token_ids)[None].to(device)
    embeds = model.token_embedding(ids)
    if vision is None and audio is None:
        return embeds
    return splice(embeds.clone(), ids[0], spec, vision, audio)

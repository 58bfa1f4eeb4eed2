"""Resolve what the user asked for (a preset or a checkpoint directory) into a model + runtime spec."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from autoglm_runtime.preprocess import AudioSpec, ImageSpec
from autoglm_runtime.preprocess.buckets import bucket_sizes
from autoglm_runtime.preprocess.image import min_pixels_of
from autoglm_runtime.spec import ModelSpec

from .config import ModelConfig, parse_audio_config, parse_model_config
from .errors import CheckpointError, ExportError
from .loader import load_config, load_model, meta_model, random_model
from .model.autoglm import AutoGLM, ExportShape
from .presets import get_preset

AUDIO_TOKEN = "<|audio|>"


@dataclass
class ModelSource:
    model: AutoGLM
    spec: ModelSpec
    label: str  # preset name or checkpoint path, for logs and manifests
    checkpoint: Path | None = None
    audio_checkpoint: Path | None = None
    tokenizer_path: Path | None = None

    @property
    def config(self) -> ModelConfig:
        return self.model.cfg


def _read_optional_json(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: invalid JSON ({exc.msg})") from None


def _audio_token_id(tokenizer_path: Path | None) -> int | None:
    if tokenizer_path is None:
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tokenizer_path)).token_to_id(AUDIO_TOKEN)


def build_spec(model: AutoGLM, checkpoint: Path | None, tokenizer_path: Path | None) -> ModelSpec:
    cfg, shape = model.cfg, model.shape
    pre = _read_optional_json(checkpoint / "preprocessor_config.json") if checkpoint else {}
    pre = {
        **pre,
        "patch_size": cfg.vision.patch_size,
        "temporal_patch_size": cfg.vision.temporal_patch_size,
        "merge_size": cfg.vision.spatial_merge_size,
    }
    image = ImageSpec.from_preprocessor_config(pre, *shape.image_hw, shape.image_buckets, shape.max_pixels)
    audio = None
    if cfg.audio is not None:
        audio = AudioSpec(num_mel_bins=cfg.audio.num_mel_bins, num_frames=shape.audio_frames)
    return ModelSpec(
        max_context=shape.max_context,
        vocab_size=cfg.text.vocab_size,
        hidden_size=cfg.text.hidden_size,
        eos_token_ids=cfg.eos_token_ids,
        image_token_id=cfg.image_token_id,
        image=image,
        audio_token_id=_audio_token_id(tokenizer_path) if audio else None,
        audio=audio,
        audio_tokens=model.audio.num_tokens if model.audio is not None else 0,
    )


def export_shape(
    default: ExportShape,
    cfg: ModelConfig,
    preprocessor: dict,
    max_context: int | None,
    image_hw: tuple[int, int] | None,
    audio_frames: int | None,
    max_pixels: int | None,
) -> ExportShape:
    """The static shapes: a fixed ``image_hw`` (``--image-size``), or buckets under the pixel budget ``max_pixels``
    (``--max-pixels``, else the preset's), or the preset's fixed size."""
    if image_hw and max_pixels:
        raise ExportError("--image-size fixes one image size and --max-pixels makes aspect buckets: pass one of them")
    budget = None if image_hw else (max_pixels or default.max_pixels)
    buckets: tuple[tuple[int, int], ...] = ()
    if budget:
        v = cfg.vision
        factor = v.patch_size * v.spatial_merge_size
        min_pixels = min_pixels_of(preprocessor)
        if budget < 2 * factor * factor or budget < min_pixels:
            raise ExportError(
                f"--max-pixels {budget} is below one {factor}x{factor} image (in the processor's units, "
                f"{2 * factor * factor}) or the processor's minimum {min_pixels}"
            )
        buckets = bucket_sizes(budget, min_pixels, factor, v.temporal_patch_size)
    return ExportShape(
        max_context=max_context or default.max_context,
        image_hw=buckets[0] if buckets else (image_hw or default.image_hw),
        audio_frames=audio_frames or default.audio_frames,
        image_buckets=buckets,
        max_pixels=budget,
    )


def open_source(
    checkpoint: Path | None = None,
    audio_checkpoint: Path | None = None,
    preset: str = "tiny",
    max_context: int | None = None,
    image_hw: tuple[int, int] | None = None,
    audio_frames: int | None = None,
    max_pixels: int | None = None,
    with_audio: bool = True,
    dtype: torch.dtype | None = torch.float32,
    weights: bool = True,
    keep_stored: bool = False,
) -> ModelSource:
    """A checkpoint directory wins over the preset; the preset still supplies default shapes.

    ``dtype``: what a checkpoint's floating weights become (``None``: as stored, memory-mapped).
    ``weights=False``: config only, the model stays on the meta device (sizes, shapes, ``info``).
    ``keep_stored``: a checkpoint's linear weights and token embedding stay as stored, memory-mapped,
    the rest is ``dtype`` (``stored.py``; a preset without weights is built in fp32 either way).
    """
    p = get_preset(preset)
    if checkpoint is None and p.checkpoint is not None:
        checkpoint = p.checkpoint
        if audio_checkpoint is None and with_audio:
            audio_checkpoint = p.audio_checkpoint
    if checkpoint is not None:
        cfg = load_config(Path(checkpoint), audio_checkpoint and Path(audio_checkpoint))
        pre = _read_optional_json(Path(checkpoint) / "preprocessor_config.json")
    else:
        cfg, pre = parse_model_config(p.config, f"preset {preset}"), {}
    shape = export_shape(p.shape, cfg, pre, max_context, image_hw, audio_frames, max_pixels)
    if checkpoint is not None:
        if weights:
            model = load_model(checkpoint, shape, audio_checkpoint, dtype=dtype, keep_stored=keep_stored)
        else:
            model = meta_model(cfg, shape)
        tok = Path(checkpoint) / "tokenizer.json"
        tokenizer_path = tok if tok.exists() else None
        label = preset if checkpoint == p.checkpoint else str(checkpoint)
        return ModelSource(
            model,
            build_spec(model, Path(checkpoint), tokenizer_path),
            label,
            Path(checkpoint),
            audio_checkpoint,
            tokenizer_path,
        )
    if with_audio and p.audio_config is not None:
        cfg = replace(cfg, audio=parse_audio_config(p.audio_config, f"preset {preset} audio"))
    model = random_model(cfg, shape) if weights else meta_model(cfg, shape)
    return ModelSource(model, build_spec(model, None, None), preset)

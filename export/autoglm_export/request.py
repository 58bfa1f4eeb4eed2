"""What to export: a checkpoint or preset at given static shapes, and an optional quantized checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .presets import preset_for
from .source import ModelSource, open_source


def _path(value) -> Path | None:
    return Path(value) if value else None


@dataclass
class ModelRequest:
    """What to load and at which static shapes (shared by every target, calibrate, qat and validate)."""

    checkpoint: Path | None = None
    audio_checkpoint: Path | None = None
    preset: str | None = None  # None: the preset whose widths the checkpoint has, else tiny (``preset_for``)
    max_context: int | None = None
    image_hw: tuple[int, int] | None = None
    audio_frames: int | None = None
    quantized_checkpoint: Path | None = None  # from `calibrate` / `qat`: its integer weights replace round-to-nearest
    max_pixels: int | None = None  # the image budget of aspect-preserving buckets (None: the preset's)

    def __post_init__(self):
        self.preset = preset_for(self.checkpoint, self.preset)

    def open(self, keep_stored: bool = False, weights: bool = True) -> ModelSource:
        """``keep_stored``: big weights memory-mapped as stored (``stored.py``); ``weights=False``: on meta."""
        return open_source(
            self.checkpoint,
            self.audio_checkpoint,
            self.preset,
            max_context=self.max_context,
            image_hw=self.image_hw,
            audio_frames=self.audio_frames,
            max_pixels=self.max_pixels,
            keep_stored=keep_stored,
            weights=weights,
        )

    def to_dict(self) -> dict:
        return {
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
            "audio_checkpoint": str(self.audio_checkpoint) if self.audio_checkpoint else None,
            "preset": self.preset,
            "max_context": self.max_context,
            "image_hw": list(self.image_hw) if self.image_hw else None,
            "audio_frames": self.audio_frames,
            "max_pixels": self.max_pixels,
            "quantized_checkpoint": str(self.quantized_checkpoint) if self.quantized_checkpoint else None,
        }

    @classmethod
    def from_dict(cls, d: dict) -> ModelRequest:
        return cls(
            _path(d.get("checkpoint")),
            _path(d.get("audio_checkpoint")),
            d.get("preset", "tiny"),
            d.get("max_context"),
            tuple(d["image_hw"]) if d.get("image_hw") else None,
            d.get("audio_frames"),
            _path(d.get("quantized_checkpoint")),
            max_pixels=d.get("max_pixels"),
        )

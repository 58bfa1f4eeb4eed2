"""What a runtime must know about a model besides its weights. Bundles carry it in manifest.json."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .preprocess import AudioSpec, ImageSpec

# The four components every bundle has (audio_encoder only with an audio tower), in data-flow order.
COMPONENTS = ("vision_encoder", "audio_encoder", "token_embedding", "text_decoder")
REQUIRED_COMPONENTS = ("vision_encoder", "token_embedding", "text_decoder")


@dataclass(frozen=True)
class ModelSpec:
    max_context: int
    vocab_size: int
    hidden_size: int
    eos_token_ids: tuple[int, ...]
    image_token_id: int
    image: ImageSpec
    audio_token_id: int | None = None
    audio: AudioSpec | None = None
    audio_tokens: int = 0  # encoder output tokens per clip of audio.num_frames frames

    @property
    def image_tokens(self) -> int:
        return self.image.num_tokens

    @property
    def has_audio(self) -> bool:
        return self.audio is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_context": self.max_context,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "eos_token_ids": list(self.eos_token_ids),
            "image_token_id": self.image_token_id,
            "image_tokens": self.image_tokens,
            "image": self.image.to_dict(),
            # For apps (derived, not read back): each bucket's size, image tokens and vision method.
            "image_buckets": [
                {
                    "height": h,
                    "width": w,
                    "tokens": self.image.at((h, w)).num_tokens,
                    "method": self.image.method((h, w)),
                }
                for h, w in self.image.sizes
            ],
            "audio_token_id": self.audio_token_id,
            "audio_tokens": self.audio_tokens,
            "audio": self.audio.to_dict() if self.audio else None,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        return cls(
            max_context=int(d["max_context"]),
            vocab_size=int(d["vocab_size"]),
            hidden_size=int(d["hidden_size"]),
            eos_token_ids=tuple(int(i) for i in d["eos_token_ids"]),
            image_token_id=int(d["image_token_id"]),
            image=ImageSpec.from_dict(d["image"]),
            audio_token_id=d.get("audio_token_id"),
            audio=AudioSpec.from_dict(d["audio"]) if d.get("audio") else None,
            audio_tokens=int(d.get("audio_tokens", 0)),
        )

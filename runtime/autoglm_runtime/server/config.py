"""Server settings: limits, access control and the model's public name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MB = 1 << 20


@dataclass(frozen=True)
class ServerConfig:
    model_name: str = "autoglm-phone-9b"
    api_key: str | None = None  # when set, /v1/* needs "Authorization: Bearer <api_key>"
    max_queue: int = 16  # requests waiting behind the running one; more get 429
    request_timeout: float = 600.0  # seconds from arrival (queue wait included) to the last token
    max_body_bytes: int = 64 * MB
    max_image_bytes: int = 20 * MB  # one decoded image file
    max_image_pixels: int = 40_000_000  # width * height, checked before the image is decoded
    max_audio_bytes: int = 20 * MB  # one decoded audio file
    allowed_media_paths: tuple[Path, ...] = ()  # local files a request may name (file:// URLs or paths)
    allowed_media_urls: tuple[str, ...] = ()  # http(s) URL prefixes a request may name
    media_fetch_timeout: float = 10.0
    prefix_reuse: bool = True  # keep the KV cache of the common prefix with the previous request

    def __post_init__(self):
        if self.max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {self.max_queue}")
        if self.request_timeout <= 0:
            raise ValueError(f"request_timeout must be > 0, got {self.request_timeout}")
        object.__setattr__(
            self,
            "allowed_media_paths",
            tuple(Path(p).resolve() for p in self.allowed_media_paths),
        )
        for prefix in self.allowed_media_urls:
            if not prefix.startswith(("http://", "https://")) or prefix.count("/") < 3:
                raise ValueError(
                    f"allowed media URL {prefix!r}: expected an http(s) prefix with a path, "
                    "such as https://example.com/screens/"
                )

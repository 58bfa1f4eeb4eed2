"""Images and audio named by a request: data URLs, and files / http(s) URLs only where allowed.

Every failure is an APIError naming the part (``param``): 400 for what cannot be read, 413 for
what is over a size limit (checked before decoding, so a small request cannot make the server
allocate a huge image), 400 for a location the server's allow-lists do not cover.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InputError
from ..preprocess.audio import MAX_RATE, MIN_RATE, decode_compressed, load_wav, resample
from .config import ServerConfig
from .errors import bad_request, too_large


def _b64decode(data: str, limit: int, param: str, what: str) -> bytes:
    if len(data) * 3 // 4 > limit + 3:  # the decoded size, known before decoding
        raise too_large(f"{what} is over the server's limit of {limit} bytes", param)
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise bad_request(f"{what}: invalid base64 data ({e})", param, "invalid_base64") from None


# ------------------------------------------------------------------------------------------------- images


def _parse_data_url(url: str, param: str) -> tuple[str, str]:
    """'data:<mediatype>;base64,<data>' -> (mediatype, data)."""
    header, sep, data = url[5:].partition(",")
    if not sep or not header.endswith(";base64"):
        raise bad_request(
            "image_url data URLs must be base64: data:image/png;base64,...",
            param,
            "invalid_image_url",
        )
    return header[: -len(";base64")].lower(), data


def _undecodable(e: Exception, param: str):
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    return bad_request(f"cannot decode the image: {reason}", param, "invalid_image")


def _open_image(data: bytes, config: ServerConfig, param: str) -> Image.Image:
    # Pillow's decoders report malformed input with many exception types (OSError, SyntaxError,
    # struct.error, ...): any failure while parsing untrusted bytes is the image's fault.
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise too_large(str(e), param) from None
    except Exception as e:  # noqa: BLE001 - see above
        raise _undecodable(e, param) from None
    with img:
        w, h = img.size
        if w * h > config.max_image_pixels:
            raise too_large(
                f"image of {w}x{h} pixels is over the server's limit of {config.max_image_pixels} pixels",
                param,
            )
        try:
            img.load()  # decode now: a truncated file fails here, with this part named
            return img.copy()
        except Exception as e:  # noqa: BLE001 - see above
            raise _undecodable(e, param) from None


def _allowed_file(raw: str, config: ServerConfig, param: str) -> Path:
    if not config.allowed_media_paths:
        raise bad_request(
            "this server does not read local files (start it with --allow-media-path DIR)",
            param,
            "media_path_not_allowed",
        )
    path = Path(urllib.parse.unquote(urllib.parse.urlparse(raw).path) if raw.startswith("file:") else raw)
    try:
        resolved = path.resolve(strict=True)  # symlinks and '..' resolved before the allow-list check
    except (OSError, RuntimeError):
        resolved = None
    if resolved is None or not any(resolved.is_relative_to(root) for root in config.allowed_media_paths):
        raise bad_request(
            f"{raw}: not a file under an allowed media path",
            param,
            "media_path_not_allowed",
        )
    if not resolved.is_file():
        raise bad_request(f"{raw}: not a file", param, "invalid_image_url")
    return resolved


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # a redirect could leave the allow-listed prefix
        return None


def _fetch(url: str, limit: int, config: ServerConfig, param: str) -> bytes:
    if not any(url.startswith(prefix) for prefix in config.allowed_media_urls):
        raise bad_request(
            "this server does not fetch this URL (allowed prefixes: "
            f"{', '.join(config.allowed_media_urls) or 'none; start it with --allow-media-url PREFIX'})",
            param,
            "media_url_not_allowed",
        )
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(url, timeout=config.media_fetch_timeout) as response:
            data = response.read(limit + 1)
    except urllib.error.HTTPError as e:
        raise bad_request(f"{url}: HTTP {e.code}", param, "media_fetch_failed") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise bad_request(
            f"{url}: cannot fetch ({getattr(e, 'reason', e)})",
            param,
            "media_fetch_failed",
        ) from None
    if len(data) > limit:
        raise too_large(f"{url} is over the server's limit of {limit} bytes", param)
    return data


def load_image_url(url: str, config: ServerConfig, param: str) -> Image.Image:
    """An image_url part's URL -> a decoded PIL image."""
    limit = config.max_image_bytes
    if url.startswith("data:"):
        mediatype, data = _parse_data_url(url, param)
        if mediatype and not mediatype.startswith("image/"):
            raise bad_request(
                f"image_url data URL has media type {mediatype!r}, expected image/...",
                param,
                "invalid_image_url",
            )
        raw = _b64decode(data, limit, param, "image")
    elif url.startswith(("http://", "https://")):
        raw = _fetch(url, limit, config, param)
    elif url.startswith("file:") or os.path.isabs(url):
        path = _allowed_file(url, config, param)
        if path.stat().st_size > limit:
            raise too_large(f"{url} is over the server's limit of {limit} bytes", param)
        raw = path.read_bytes()
    else:
        raise bad_request(
            "image_url must be a data: URL (or, where the server allows, a file path or http(s) URL)",
            param,
            "invalid_image_url",
        )
    return _open_image(raw, config, param)


# -------------------------------------------------------------------------------------------------- audio


def _decode_wav(raw: bytes, param: str) -> tuple[np.ndarray, int]:
    # The runtime's own WAV reader (the one `autoglm-export run --audio` uses) reads files.
    with tempfile.NamedTemporaryFile(suffix=".wav") as f:
        f.write(raw)
        f.flush()
        try:
            return load_wav(f.name)
        except InputError as e:
            raise bad_request(
                str(e).replace(f"audio file {f.name}", "input_audio"),
                param,
                "invalid_audio",
            ) from None


def _decode_mp3(raw: bytes, param: str) -> tuple[np.ndarray, int]:
    try:
        return decode_compressed(raw, "the mp3 audio")
    except InputError as e:
        raise bad_request(str(e), param, "invalid_audio") from None


def load_input_audio(data: str, fmt: str, sampling_rate: int, config: ServerConfig, param: str) -> np.ndarray:
    """An input_audio part -> mono float32 samples at ``sampling_rate`` (the model's)."""
    raw = _b64decode(data, config.max_audio_bytes, param, "audio")
    if not raw:
        raise bad_request("input_audio is empty", param, "invalid_audio")
    samples, rate = _decode_wav(raw, param) if fmt == "wav" else _decode_mp3(raw, param)
    if not MIN_RATE <= rate <= MAX_RATE:
        raise bad_request(
            f"audio sample rate {rate} Hz is outside the supported {MIN_RATE}-{MAX_RATE} Hz",
            param,
            "invalid_audio",
        )
    return resample(samples, rate, sampling_rate) if rate != sampling_rate else samples

"""Audio preprocessing for the GLM-ASR (Whisper-style) audio tower, in numpy only (no torch, no scipy).

``log_mel`` reproduces ``WhisperFeatureExtractor``'s numpy path (``_np_extract_fbank_features``) exactly, including
its zero padding / truncation to a fixed number of samples, so a fixed-shape exported encoder sees what HF feeds it.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from math import gcd
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError

log = logging.getLogger(__name__)

MIN_RATE, MAX_RATE = 8000, 192000  # input sample rates we resample from

AudioSource = str | Path | np.ndarray


@dataclass(frozen=True, kw_only=True)
class AudioSpec:
    """Log-mel front-end parameters; stored in the bundle manifest. Keyword-only so rates and sizes can't be swapped."""

    sampling_rate: int = 16000
    num_mel_bins: int = 128
    n_fft: int = 400
    hop_length: int = 160
    num_frames: int = 3000  # fixed mel frames the exported encoder takes: 3000 = 30 s at hop 160

    def __post_init__(self) -> None:
        if min(self.sampling_rate, self.num_mel_bins, self.n_fft, self.hop_length, self.num_frames) <= 0:
            raise ValueError(f"AudioSpec fields must be positive: {self}")

    @property
    def num_samples(self) -> int:
        """Waveform length (at sampling_rate) that log_mel pads/trims to."""
        return self.num_frames * self.hop_length

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AudioSpec:
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown AudioSpec keys: {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def from_feature_extractor_config(cls, cfg: dict[str, Any], num_frames: int | None = None) -> AudioSpec:
        """From a HF WhisperFeatureExtractor ``preprocessor_config.json``; num_frames defaults to its chunk_length."""
        sr, hop = int(cfg.get("sampling_rate", 16000)), int(cfg.get("hop_length", 160))
        if num_frames is None:
            num_frames = int(cfg.get("chunk_length", 30)) * sr // hop
        return cls(
            sampling_rate=sr,
            num_mel_bins=int(cfg.get("feature_size", 80)),
            n_fft=int(cfg.get("n_fft", 400)),
            hop_length=hop,
            num_frames=num_frames,
        )


# ----------------------------------------------------------------------------------------------------------- WAV

_PCM, _FLOAT, _EXTENSIBLE = 0x0001, 0x0003, 0xFFFE


def load_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a WAV file -> (mono float32 samples in [-1, 1], sample rate).

    Supports 8/16/24/32-bit PCM and 32/64-bit IEEE float, plain or WAVE_FORMAT_EXTENSIBLE, any channel count
    (averaged to mono). A tiny RIFF parser instead of stdlib ``wave``: Python 3.11's ``wave`` rejects float and
    EXTENSIBLE files, which phone recorders commonly write. Anything else is an InputError naming the file.
    """

    def fail(problem: str) -> InputError:
        return InputError(f"cannot read audio file {path}: {problem}")

    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise fail(e.strerror or str(e)) from None
    if not data:
        raise fail("empty file (0 bytes)")
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise fail("not a WAV file (no RIFF/WAVE header)")

    fmt: tuple[int, int, int, int, int] | None = None  # tag, channels, rate, block_align, bits
    pos = 12
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        body = pos + 8
        if cid == b"fmt ":
            if size < 16 or body + 16 > len(data):
                raise fail("truncated fmt chunk")
            tag, ch, rate, _, align, bits = struct.unpack_from("<HHIIHH", data, body)
            if tag == _EXTENSIBLE:  # real format is the first 2 bytes of the SubFormat GUID
                if size < 40 or body + 26 > len(data):
                    raise fail("truncated WAVE_FORMAT_EXTENSIBLE fmt chunk")
                tag = struct.unpack_from("<H", data, body + 24)[0]
            fmt = (tag, ch, rate, align, bits)
        elif cid == b"data":
            if fmt is None:
                raise fail("data chunk before fmt chunk")
            if size == 0xFFFFFFFF:  # streaming writers that never finalised the header: data runs to EOF
                size = len(data) - body
            if body + size > len(data):
                raise fail(f"truncated: header declares {size} bytes of audio but only {len(data) - body} remain")
            return _decode(data[body : body + size], *fmt, fail=fail)
        pos = body + size + (size & 1)  # chunks are word-aligned
    raise fail("no fmt chunk" if fmt is None else "no data chunk (truncated?)")


def _decode(
    raw: bytes, tag: int, ch: int, rate: int, align: int, bits: int, *, fail: Callable[[str], InputError]
) -> tuple[np.ndarray, int]:
    if tag not in (_PCM, _FLOAT):
        raise fail(f"unsupported encoding (format tag 0x{tag:04X}); only PCM and IEEE-float WAV are supported")
    width = bits // 8
    if ch < 1 or bits % 8 or align != ch * width:
        raise fail(f"inconsistent fmt chunk ({ch} channels, {bits} bits, block align {align})")
    if not MIN_RATE <= rate <= MAX_RATE:
        raise fail(f"sample rate {rate} Hz is outside the supported {MIN_RATE}-{MAX_RATE} Hz")
    raw = raw[: len(raw) - len(raw) % align]  # drop a partial trailing frame (cut-off recording), as soundfile does
    if not raw:
        raise fail("contains no audio samples")
    if tag == _PCM and width in (1, 2, 3, 4):
        if width == 1:  # 8-bit WAV is unsigned
            x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
        elif width == 3:  # assemble little-endian 24-bit into the top of an int32, keeping the sign
            b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
            x = ((b[:, 0] << 8 | b[:, 1] << 16 | b[:, 2] << 24) >> 8).astype(np.float32) / 2.0**23
        else:
            x = np.frombuffer(raw, f"<i{width}").astype(np.float32) / np.float32(2.0 ** (bits - 1))
    elif tag == _FLOAT and width in (4, 8):
        x = np.frombuffer(raw, f"<f{width}").astype(np.float32)
        if not np.isfinite(x).all():
            raise fail("float samples contain NaN or infinity")
    else:
        raise fail(f"unsupported {bits}-bit {'PCM' if tag == _PCM else 'float'} samples")
    return x.reshape(-1, ch).mean(axis=1, dtype=np.float32), rate


# ------------------------------------------------------------------------------------------------------ resample


@lru_cache(maxsize=8)
def _polyphase_filter(up: int, down: int) -> tuple[np.ndarray, int]:
    """Kaiser(5.0) windowed-sinc low-pass, split into `up` phases: the filter scipy.signal.resample_poly designs."""
    max_rate = max(up, down)
    half = 10 * max_rate
    n = np.arange(2 * half + 1) - half
    h = np.sinc(n / max_rate) * np.kaiser(2 * half + 1, 5.0)
    h *= up / h.sum()  # unity DC gain after zero-stuffing by `up`
    taps = -(-(2 * half + 1) // up)
    h = np.concatenate([h, np.zeros(taps * up - h.size)])
    return h.reshape(taps, up).T.copy(), half  # [phase, tap]: phase p uses h[p], h[p+up], h[p+2up], ...


def resample(audio: np.ndarray, orig_sr: int, target_sr: int = 16000) -> np.ndarray:
    """Polyphase windowed-sinc resampling, numerically equal to scipy.signal.resample_poly (default Kaiser window).

    Output length is ceil(len * target / orig); the filter is centred, so there is no time shift.
    """
    x = np.asarray(audio, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"resample expects mono 1-D audio, got shape {x.shape}")
    g = gcd(int(orig_sr), int(target_sr))
    up, down = int(target_sr) // g, int(orig_sr) // g
    if up == down:
        return x.astype(np.float32)
    bank, half = _polyphase_filter(up, down)
    taps = bank.shape[1]
    n_out = -(-x.size * up // down)
    # y[n] = sum_k x[k] h[n*down + half - k*up]; with t = n*down + half, phase t % up picks the sub-filter and
    # k runs down from t // up. Pad x with zeros so every window index is valid.
    xp = np.concatenate([np.zeros(taps), x, np.zeros(taps)])
    y = np.empty(n_out)
    j = np.arange(taps)
    for s in range(0, n_out, 4096):  # chunks keep the gathered [chunk, taps] matrix small
        t = np.arange(s, min(s + 4096, n_out), dtype=np.int64) * down + half
        idx = (t // up)[:, None] - j[None, :] + taps
        y[s : s + t.size] = np.einsum("ij,ij->i", xp[idx], bank[t % up])
    return y.astype(np.float32)


# ------------------------------------------------------------------------------------------------------ log-mel


def _hz_to_mel(f: np.ndarray) -> np.ndarray:  # Slaney scale: linear below 1 kHz, log above
    return np.where(f >= 1000.0, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) * (27.0 / np.log(6.4)), 3.0 * f / 200.0)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    return np.where(m >= 15.0, 1000.0 * np.exp(np.log(6.4) / 27.0 * (m - 15.0)), 200.0 * m / 3.0)


@lru_cache(maxsize=4)
def mel_filters(num_mel_bins: int, n_fft: int, sampling_rate: int) -> np.ndarray:
    """[n_fft//2+1, num_mel_bins] float64 Slaney filter bank, as WhisperFeatureExtractor builds it.

    Note max frequency is fixed at 8 kHz (Whisper's choice), whatever the sampling rate.
    """
    mel_pts = np.linspace(_hz_to_mel(np.float64(0.0)), _hz_to_mel(np.float64(8000.0)), num_mel_bins + 2)
    hz_pts = _mel_to_hz(mel_pts)
    fft_freqs = np.linspace(0, sampling_rate // 2, n_fft // 2 + 1)
    slopes = hz_pts[None, :] - fft_freqs[:, None]
    diff = np.diff(hz_pts)
    fb = np.maximum(0.0, np.minimum(-slopes[:, :-2] / diff[:-1], slopes[:, 2:] / diff[1:]))
    return fb * (2.0 / (hz_pts[2:] - hz_pts[:-2]))[None, :]  # Slaney area normalisation


def log_mel(audio_16k: np.ndarray, spec: AudioSpec) -> np.ndarray:
    """Mono audio at spec.sampling_rate -> float32 [num_mel_bins, num_frames] Whisper log-mel.

    Zero-pads (silence) or truncates to spec.num_samples first, like HF's padding="max_length", truncation=True.
    """
    x = np.asarray(audio_16k, dtype=np.float32).reshape(-1)[: spec.num_samples]  # HF feeds float32
    x = np.pad(x, (0, spec.num_samples - x.size)).astype(np.float64)
    n_fft, hop = spec.n_fft, spec.hop_length
    x = np.pad(x, n_fft // 2, mode="reflect")  # centred frames, as torch.stft(center=True)
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop]  # num_frames + 1 frames
    window = np.hanning(n_fft + 1)[:-1]  # periodic Hann
    # HF stores the STFT as complex64 before taking |.|^2 in float64; keep that rounding for exactness.
    stft = np.fft.rfft(frames * window, axis=-1).astype(np.complex64)
    power = np.abs(stft, dtype=np.float64) ** 2
    mel = np.maximum(1e-10, mel_filters(spec.num_mel_bins, n_fft, spec.sampling_rate).T @ power.T)
    logspec = np.log10(mel).astype(np.float32)[:, :-1]  # Whisper drops the last STFT frame
    logspec = np.maximum(logspec, logspec.max() - 8.0)  # 80 dB dynamic range below the clip's (padded) maximum
    return ((logspec + 4.0) / 4.0).astype(np.float32)


def decode_compressed(raw: bytes, name: str) -> tuple[np.ndarray, int]:
    """MP3 (or FLAC / OGG) bytes -> (mono float32 samples, sample rate), decoded by libsndfile through
    ``soundfile`` (an optional dependency: the ``serve`` extra). InputError naming ``name`` when it cannot."""
    try:
        import soundfile
    except ImportError:
        raise InputError(
            f"{name}: compressed audio (mp3) needs the soundfile package (pip install 'autoglm-export[serve]')"
        ) from None
    try:
        samples, rate = soundfile.read(io.BytesIO(raw), dtype="float32", always_2d=True)
    except Exception as e:  # noqa: BLE001 - libsndfile reports every decode problem as one of its own errors
        raise InputError(f"cannot decode audio {name}: {str(e).splitlines()[0]}") from None
    if samples.size == 0:
        raise InputError(f"audio {name} contains no samples")
    return samples.mean(axis=1, dtype=np.float32), int(rate)


def load_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """A WAV file (our RIFF reader, which the demo apps mirror) or an MP3 / FLAC / OGG file (libsndfile)
    -> (mono float32 samples, sample rate)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise InputError(f"cannot read audio file {path}: {e.strerror or e}") from None
    if head == b"RIFF" or Path(path).suffix.lower() == ".wav":
        return load_wav(path)
    return decode_compressed(Path(path).read_bytes(), str(path))


def preprocess_audio(src: AudioSource, spec: AudioSpec, sampling_rate: int | None = None) -> np.ndarray:
    """WAV / MP3 path or mono array -> float32 [1, num_mel_bins, num_frames] encoder input.

    sampling_rate is only for arrays (default: spec.sampling_rate); files carry their own rate.
    """
    if isinstance(src, np.ndarray):
        name, rate, audio = "<array>", spec.sampling_rate if sampling_rate is None else sampling_rate, src
        if audio.ndim != 1 or audio.size == 0:
            raise InputError(f"audio array must be non-empty mono 1-D, got shape {audio.shape}")
        if not MIN_RATE <= rate <= MAX_RATE:
            raise InputError(f"audio {name}: sample rate {rate} Hz is outside the supported {MIN_RATE}-{MAX_RATE} Hz")
    else:
        if sampling_rate is not None:
            raise ValueError("sampling_rate is only for array input; an audio file's own rate is used")
        name = None
        audio, rate = load_audio(src)
        if not MIN_RATE <= rate <= MAX_RATE:
            raise InputError(f"audio {src}: sample rate {rate} Hz is outside the supported {MIN_RATE}-{MAX_RATE} Hz")
    if rate != spec.sampling_rate:
        audio = resample(audio, rate, spec.sampling_rate)
    if len(audio) > spec.num_samples:  # the exported encoder's window is fixed: say what is dropped
        seconds, window = len(audio) / spec.sampling_rate, spec.num_samples / spec.sampling_rate
        log.warning(
            "audio %s: %.1f s is longer than the model's %.1f s window; only the first %.1f s are used",
            src if name is None else name,
            seconds,
            window,
            window,
        )
    return log_mel(audio, spec)[None]

"""Parity of autoglm_runtime.preprocess (numpy/PIL) with transformers' processors, plus WAV/resampling/error cases."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from autoglm_runtime.errors import InputError
from autoglm_runtime.preprocess import (
    AudioSpec,
    ImageSpec,
    load_image,
    load_wav,
    log_mel,
    preprocess_audio,
    preprocess_image,
    resample,
)

RNG = np.random.default_rng(0)


def test_no_torch_import() -> None:
    # The runtime front-end must work where only numpy/PIL exist (phones' Python-free mirrors, slim runtimes).
    code = (
        "import sys, autoglm_runtime.preprocess;"
        "print([m for m in ('torch', 'scipy', 'transformers') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --------------------------------------------------------------------------------------------------------- image


def screenshot(width: int, height: int, alpha: bool = False) -> Image.Image:
    """A phone-screenshot-like image: gradient background, status bar, cards, text, icons, photo-like noise."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    bg = np.stack([120 + 100 * xx / width, 140 + 80 * yy / height, 200 - 90 * (xx + yy) / (width + height)], -1)
    img = Image.fromarray(bg.clip(0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    d.rectangle([0, 0, width, height // 30], fill=(20, 20, 28))
    for i in range(8):
        top = height // 12 + i * height // 9
        card, icon = height // 12, height // 16
        d.rounded_rectangle([width // 20, top, width - width // 20, top + card], radius=12, fill=(250, 250, 250))
        d.ellipse([width // 12, top + 8, width // 12 + icon, top + 8 + icon], fill=(30 * i, 120, 220 - 20 * i))
        d.text((width // 4, top + 12), f"Message {i}: the quick brown fox jumps over 13 lazy dogs", fill=(10, 10, 10))
    arr = np.asarray(img).copy()
    arr[-height // 5 :, : width // 2] = RNG.integers(0, 256, arr[-height // 5 :, : width // 2].shape, dtype=np.uint8)
    if alpha:  # transparent corner: HF composites it onto white, so must we
        a = np.full(arr.shape[:2] + (1,), 255, np.uint8)
        a[: height // 4, : width // 3] = RNG.integers(0, 256, (height // 4, width // 3, 1), dtype=np.uint8)
        return Image.fromarray(np.concatenate([arr, a], -1), "RGBA")
    return Image.fromarray(arr)


@pytest.fixture(scope="module")
def hf_processor(tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("transformers")
    from transformers import AutoImageProcessor

    # No torchvision here (nor on phones), so AutoImageProcessor picks the PIL backend. Assert that, since our
    # parity claim is against that class (PIL bicubic on uint8, numpy rescale/normalize).
    d = tmp_path_factory.mktemp("hf_proc")
    (d / "preprocessor_config.json").write_text(json.dumps({"image_processor_type": "Glm4vImageProcessor"}))
    proc = AutoImageProcessor.from_pretrained(d)
    assert type(proc).__name__ == "Glm4vImageProcessorPil"
    return proc


SPEC = ImageSpec(height=1120, width=504)  # 80x36 patch grid, 720 LLM tokens


def _hf(proc, img: Image.Image, **size) -> tuple[np.ndarray, np.ndarray]:
    out = proc(images=img, return_tensors="np", **({"size": size} if size else {}))
    return out["pixel_values"], out["image_grid_thw"]


def test_image_matches_hf_downscaled_screenshot(hf_processor) -> None:
    from transformers.models.glm4v.image_processing_pil_glm4v import smart_resize

    # HF picks its own size with smart_resize (aspect-preserving, multiples of 28, total pixels*T bounded by
    # size["longest_edge"]). With a budget just above T*H*W (= 2*1120*504) its largest fitting grid for a
    # 1080x2400 screenshot is exactly our export resolution, so HF and we run the same PIL bicubic downscale.
    budget = int(2 * SPEC.height * SPEC.width * 1.01)
    assert smart_resize(2, 2400, 1080, factor=28, min_pixels=56 * 56, max_pixels=budget) == (1120, 504)
    img = screenshot(1080, 2400)
    ref, grid = _hf(hf_processor, img, shortest_edge=56 * 56, longest_edge=budget)
    ours = preprocess_image(img, SPEC)
    assert ours.dtype == np.float32 and ours.shape == (SPEC.num_patches, SPEC.patch_dim) == ref.shape
    assert grid.tolist() == [list(SPEC.grid_thw)] == [[1, 1120 // 14, 504 // 14]]
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


def test_image_matches_hf_near_size_and_alpha(hf_processor, tmp_path: Path) -> None:
    # 508x1115 rounds to the 504x1120 grid under HF's default pixel bounds: a slight anisotropic resample
    # (shrink x, stretch y). Saved as an RGBA PNG and loaded through load_image to cover alpha compositing.
    png = tmp_path / "shot.png"
    screenshot(508, 1115, alpha=True).save(png)
    ref, grid = _hf(hf_processor, Image.open(png))
    assert grid.tolist() == [[1, 80, 36]]
    np.testing.assert_allclose(preprocess_image(png, SPEC), ref, atol=1e-5, rtol=0)
    # An image already at the export size is not resampled by either side; numpy input goes through the same path.
    arr = np.asarray(screenshot(504, 1120))
    ref = _hf(hf_processor, Image.fromarray(arr))[0]
    np.testing.assert_allclose(preprocess_image(arr, SPEC), ref, atol=1e-5, rtol=0)


def test_image_patch_order() -> None:
    # Row r = merge window (wy, wx) then (my, mx) inside it; columns = (channel, time, py, px).
    spec = ImageSpec(height=56, width=112, image_mean=(0, 0, 0), image_std=(1, 1, 1), rescale_factor=1.0)
    arr = RNG.integers(0, 256, (56, 112, 3), dtype=np.uint8)
    pv = preprocess_image(arr, spec).reshape(spec.num_patches, 3, 2, 14, 14)
    gy, gx = 1, 2 * 2 + 1  # patch row 1, col 5 -> window (0, 2), in-window (1, 1)
    row = (0 * 4 + 2) * 4 + 1 * 2 + 1
    np.testing.assert_array_equal(pv[row, :, 0], arr[gy * 14 : gy * 14 + 14, gx * 14 : gx * 14 + 14].transpose(2, 0, 1))
    np.testing.assert_array_equal(pv[:, :, 0], pv[:, :, 1])  # still image duplicated over time


def test_image_spec_roundtrip_and_config() -> None:
    d = json.loads(json.dumps(SPEC.to_dict()))
    assert ImageSpec.from_dict(d) == SPEC
    assert (SPEC.num_patches, SPEC.num_tokens, SPEC.patch_dim) == (2880, 720, 1176)
    cfg = {
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "patch_size": 14,
        "merge_size": 2,
        "temporal_patch_size": 2,
        "rescale_factor": 0.00392156862745098,
        "resample": 3,
        "size": {},
    }
    spec = ImageSpec.from_preprocessor_config(cfg, 560, 280)
    assert spec.image_mean == (0.5, 0.5, 0.5) and spec.height == 560
    with pytest.raises(ValueError):
        ImageSpec(height=1000, width=504)  # not a multiple of 28
    with pytest.raises(ValueError):
        ImageSpec.from_dict({**d, "bogus": 1})


def test_image_errors(tmp_path: Path) -> None:
    bad = tmp_path / "notes.png"
    bad.write_text("definitely not a PNG")
    trunc = tmp_path / "cut.png"
    screenshot(64, 64).save(trunc)
    trunc.write_bytes(trunc.read_bytes()[:200])
    for path in (tmp_path / "missing.jpg", bad, trunc, tmp_path):
        with pytest.raises(InputError, match=str(path.name)):
            load_image(path)
    with pytest.raises(InputError):
        load_image(np.zeros((4, 4, 3), np.float32))


# --------------------------------------------------------------------------------------------------------- audio


def speechlike(sr: int, seconds: float) -> np.ndarray:
    """Chirp + harmonics with a syllable-like envelope + noise, peak ~0.6."""
    t = np.arange(int(sr * seconds)) / sr
    f0 = 120 + 80 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    voice = sum(np.sin(k * phase) / k for k in range(1, 12)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2)
    chirp = 0.2 * np.sin(2 * np.pi * (300 * t + 900 * t**2))
    return (0.25 * voice + chirp + 0.02 * RNG.standard_normal(t.size)).astype(np.float32)


@pytest.fixture()
def whisper_numpy(monkeypatch: pytest.MonkeyPatch):
    """WhisperFeatureExtractor forced onto its numpy path (it uses torch.stft whenever torch is importable)."""
    fe_mod = pytest.importorskip("transformers.models.whisper.feature_extraction_whisper")
    monkeypatch.setattr(fe_mod, "is_torch_available", lambda: False)
    return fe_mod.WhisperFeatureExtractor


@pytest.mark.parametrize(("n_mels", "num_frames", "seconds"), [(128, 3000, 2.5), (80, 3000, 2.0), (128, 500, 7.3)])
def test_log_mel_matches_whisper(whisper_numpy, n_mels: int, num_frames: int, seconds: float) -> None:
    # (128, 500, 7.3): audio longer than the 5 s window -> both truncate; the others zero-pad to 30 s.
    spec = AudioSpec(num_mel_bins=n_mels, num_frames=num_frames)
    audio = speechlike(16000, seconds)
    fe = whisper_numpy(feature_size=n_mels, sampling_rate=16000, hop_length=160, n_fft=400, chunk_length=30)
    ref = fe(audio, sampling_rate=16000, max_length=spec.num_samples, return_tensors="np")["input_features"]
    ours = preprocess_audio(audio, spec)
    assert ours.shape == ref.shape == (1, n_mels, num_frames) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


def test_log_mel_close_to_torch_path() -> None:
    # What GLM-ASR's processor actually runs when torch is present (torch.stft, float32): close, not bit-exact.
    fe_mod = pytest.importorskip("transformers.models.whisper.feature_extraction_whisper")
    audio = speechlike(16000, 3.0)
    ref = fe_mod.WhisperFeatureExtractor(feature_size=128)(audio, sampling_rate=16000, return_tensors="np")
    # Observed max difference ~1e-5 (float32 torch.stft vs float64 numpy FFT).
    np.testing.assert_allclose(log_mel(audio, AudioSpec()), ref["input_features"][0], atol=1e-4, rtol=0)


def _peak_hz(x: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.argmax(spec) * sr / x.size)


@pytest.mark.parametrize(("sr", "freq"), [(44100, 1000.0), (8000, 440.0), (48000, 3000.0)])
def test_resample_sine(sr: int, freq: float) -> None:
    t = np.arange(sr * 2) / sr
    y = resample(np.sin(2 * np.pi * freq * t), sr, 16000)
    direct = np.sin(2 * np.pi * freq * np.arange(32000) / 16000)
    assert y.shape == (32000,) and y.dtype == np.float32
    assert abs(_peak_hz(y, 16000) - freq) <= 0.5
    np.testing.assert_allclose(y[200:-200], direct[200:-200], atol=2e-3)  # edges see the zero padding
    signal = pytest.importorskip("scipy.signal")  # we implement resample_poly's filter without scipy
    from math import gcd

    g = gcd(sr, 16000)
    np.testing.assert_allclose(y, signal.resample_poly(np.sin(2 * np.pi * freq * t), 16000 // g, sr // g), atol=1e-6)


def test_resample_removes_aliases() -> None:
    # A 7 kHz tone at 48 kHz survives; an 11 kHz tone (above the new 8 kHz Nyquist) must not fold back to 5 kHz.
    t = np.arange(48000) / 48000
    y = resample(np.sin(2 * np.pi * 7000 * t) + np.sin(2 * np.pi * 11000 * t), 48000, 16000)
    spec = np.abs(np.fft.rfft(y * np.hanning(y.size)))
    assert spec[5000] < 1e-3 * spec[7000]


# ----------------------------------------------------------------------------------------------------------- WAV


def write_wav(path: Path, data: np.ndarray, sr: int, width: int) -> None:
    """int PCM via stdlib wave; data is float in [-1, 1], shape [n] or [n, channels]."""
    data = data if data.ndim == 2 else data[:, None]
    if width == 1:
        raw = np.round(data * 127 + 128).astype(np.uint8).tobytes()
    else:
        q = np.round(data * (2 ** (8 * width - 1) - 1)).astype("<i4")
        raw = q.astype(f"<i{width}").tobytes() if width != 3 else q.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(data.shape[1])
        w.setsampwidth(width)
        w.setframerate(sr)
        w.writeframes(raw)


def write_riff(
    path: Path, raw: bytes, sr: int, tag: int = 3, bits: int = 32, ch: int = 1, extensible: bool = False
) -> None:
    """Hand-built RIFF (stdlib wave cannot write float or EXTENSIBLE)."""
    align = ch * bits // 8
    fmt = struct.pack("<HHIIHH", 0xFFFE if extensible else tag, ch, sr, sr * align, align, bits)
    if extensible:  # cbSize, valid bits, channel mask, SubFormat GUID (tag + KSDATAFORMAT suffix)
        fmt += struct.pack("<HHI", 22, bits, 0) + struct.pack("<H", tag) + bytes.fromhex("000000001000800000aa00389b71")
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(raw)) + raw
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_load_wav_pcm(tmp_path: Path, width: int) -> None:
    stereo = np.stack([speechlike(22050, 0.5), -0.5 * speechlike(22050, 0.5)], -1).clip(-1, 1)
    path = tmp_path / f"pcm{width}.wav"
    write_wav(path, stereo, 22050, width)
    audio, sr = load_wav(path)
    assert sr == 22050 and audio.dtype == np.float32 and audio.shape == (11025,)
    np.testing.assert_allclose(audio, stereo.mean(-1), atol=2.0 / 2 ** (8 * width - 1) + 1e-6)


@pytest.mark.parametrize(("bits", "extensible"), [(32, False), (64, False), (32, True)])
def test_load_wav_float(tmp_path: Path, bits: int, extensible: bool) -> None:
    x = speechlike(48000, 0.25)
    path = tmp_path / "float.wav"
    write_riff(path, x.astype(f"<f{bits // 8}").tobytes(), 48000, bits=bits, extensible=extensible)
    audio, sr = load_wav(path)
    assert sr == 48000
    np.testing.assert_array_equal(audio, x)


def test_preprocess_audio_from_44k_wav(tmp_path: Path) -> None:
    path = tmp_path / "rec.wav"
    x44 = speechlike(44100, 2.0)
    write_wav(path, x44, 44100, 2)
    spec = AudioSpec(num_frames=1000)
    feats = preprocess_audio(path, spec)
    assert feats.shape == (1, 128, 1000) and feats.dtype == np.float32
    direct = log_mel(resample(load_wav(path)[0], 44100, 16000), spec)
    np.testing.assert_array_equal(feats[0], direct)
    assert AudioSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    cfg = {"feature_size": 128, "sampling_rate": 16000, "hop_length": 160, "n_fft": 400, "chunk_length": 30}
    assert AudioSpec.from_feature_extractor_config(cfg) == AudioSpec()


def test_wav_errors(tmp_path: Path) -> None:
    x = speechlike(16000, 0.2)
    cases: dict[str, str] = {}
    for name, sr in (("low.wav", 1000), ("high.wav", 400000)):
        write_wav(tmp_path / name, x, sr, 2)
        cases[name] = f"{sr} Hz"
    write_wav(tmp_path / "full.wav", x, 16000, 2)
    full = (tmp_path / "full.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(full[: len(full) // 2])
    cases["cut.wav"] = "truncated"
    (tmp_path / "header.wav").write_bytes(full[:30])
    cases["header.wav"] = "truncated"
    write_wav(tmp_path / "empty.wav", x[:0], 16000, 2)
    cases["empty.wav"] = "no audio"
    write_riff(tmp_path / "adpcm.wav", bytes(64), 16000, tag=2, bits=4)
    cases["adpcm.wav"] = "format tag 0x0002"
    screenshot(32, 32).save(tmp_path / "image.wav", format="PNG")
    cases["image.wav"] = "not a WAV"
    (tmp_path / "text.wav").write_text("hello")
    cases["text.wav"] = "not a WAV"
    write_riff(tmp_path / "nan.wav", np.array([0.1, np.nan], "<f4").tobytes(), 16000)
    cases["nan.wav"] = "NaN"
    (tmp_path / "zero.wav").write_bytes(b"")
    cases["zero.wav"] = "empty file"
    cases["missing.wav"] = "No such file"
    for name, problem in cases.items():
        with pytest.raises(InputError) as e:
            preprocess_audio(tmp_path / name, AudioSpec(num_frames=100))
        msg = str(e.value)
        assert name in msg and problem in msg and "\n" not in msg, msg
    with pytest.raises(InputError, match="1000 Hz"):
        preprocess_audio(x, AudioSpec(), sampling_rate=1000)

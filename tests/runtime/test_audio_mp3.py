"""MP3 input besides WAV: decoded by libsndfile (soundfile), features within tolerance of the WAV the MP3 was made
from and equal to WhisperFeatureExtractor's on the decoded samples; a corrupt MP3 is a one-line error."""

from __future__ import annotations

import numpy as np
import pytest

from autoglm_runtime.errors import InputError
from autoglm_runtime.preprocess import AudioSpec, preprocess_audio
from autoglm_runtime.preprocess.audio import load_audio

soundfile = pytest.importorskip("soundfile")
if "MP3" not in soundfile.available_formats():
    pytest.skip("this libsndfile cannot write MP3", allow_module_level=True)

SPEC = AudioSpec(num_mel_bins=128, num_frames=400)


def speech(rate: int, seconds: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    tone = 0.3 * np.sin(2 * np.pi * 220 * t * (1 + 0.5 * t)) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    return tone.astype(np.float32)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("audio")
    out = {}
    for rate in (16000, 44100):
        wave = speech(rate, 3.0)
        wav, mp3 = d / f"clip{rate}.wav", d / f"clip{rate}.mp3"
        soundfile.write(wav, wave, rate, subtype="PCM_16")
        soundfile.write(mp3, wave, rate, format="MP3", compression_level=0.0)  # libsndfile's highest bitrate
        out[rate] = (wav, mp3)
    return out


@pytest.mark.parametrize("rate", [16000, 44100])
def test_mp3_features_are_close_to_the_wav_they_were_made_from(clips, rate):
    wav, mp3 = clips[rate]
    a, b = preprocess_audio(wav, SPEC), preprocess_audio(mp3, SPEC)
    assert a.shape == b.shape == (1, 128, 400)
    cos = float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))
    # A lossy codec at its default bitrate: the log-mel picture stays, fine detail moves a little.
    assert cos > 0.99 and float(np.abs(a - b).mean()) < 0.05, (cos, float(np.abs(a - b).mean()))


def test_mp3_features_equal_whisper_on_the_decoded_samples(clips, monkeypatch):
    fe_mod = pytest.importorskip("transformers.models.whisper.feature_extraction_whisper")
    monkeypatch.setattr(fe_mod, "is_torch_available", lambda: False)  # its numpy path, as test_preprocess does
    _, mp3 = clips[16000]
    samples, rate = load_audio(mp3)
    assert rate == 16000 and samples.dtype == np.float32
    fe = fe_mod.WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, hop_length=160, n_fft=400)
    ref = fe(samples, sampling_rate=16000, max_length=SPEC.num_samples, return_tensors="np")["input_features"]
    np.testing.assert_allclose(preprocess_audio(mp3, SPEC), ref, atol=1e-5, rtol=0)


def test_corrupt_mp3_is_one_line(clips, tmp_path):
    _, mp3 = clips[16000]
    bad = tmp_path / "bad.mp3"
    bad.write_bytes(b"ID3\x03\x00\x00\x00\x00\x00\x00" + bytes(range(256)) * 4)
    with pytest.raises(InputError) as e:
        preprocess_audio(bad, SPEC)
    assert str(e.value).startswith(f"cannot decode audio {bad}") and "\n" not in str(e.value)
    truncated = tmp_path / "empty.mp3"
    truncated.write_bytes(b"")
    with pytest.raises(InputError):
        preprocess_audio(truncated, SPEC)

"""The committed calibration set: phone-agent prompts, screenshots, speech clips and text lines.

Layout of ``calibration_data/`` (see its README for provenance)::

    prompts.jsonl               {"id", "lang", "image", "audio", "text"[, "screenshot", "speech"]} per line
    screenshots/*.png           phone screens; a prompt with "image": true uses "screenshot",
                                or screenshots/<id>.png when it names none
    speech/*.wav                16 kHz mono speech; "audio": true uses "speech", or speech/<id>.wav
    text/calib_{zh,en}.txt      text-only calibration lines
    text/heldout_{zh,en}.txt    held-out lines for perplexity, disjoint from everything above

Every problem with these files is an ExportError naming the file (and line), so a broken checkout
or a bad ``AUTOGLM_CALIBRATION_DATA`` fails before any export work starts.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoglm_runtime.preprocess import load_image as _load_rgb
from autoglm_runtime.preprocess import load_wav, resample

from .errors import ExportError

ENV_VAR = "AUTOGLM_CALIBRATION_DATA"
DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "calibration_data"
LANGS = ("zh", "en")


@dataclass(frozen=True)
class CalibrationPrompt:
    id: str
    text: str
    lang: str
    image: Path | None  # screenshot paired with the prompt
    audio: Path | None  # speech clip paired with the prompt


@dataclass
class CalibrationSet:
    root: Path
    prompts: list[CalibrationPrompt]
    texts: list[str]  # text-only calibration lines, zh then en
    screenshots: list[Path]
    speech: list[Path]


def calibration_root(root: str | Path | None = None) -> Path:
    """root, else $AUTOGLM_CALIBRATION_DATA, else the repository's calibration_data/."""
    if root is None:
        root = os.environ.get(ENV_VAR) or DEFAULT_ROOT
    return Path(root)


def load_calibration_set(root: str | Path | None = None) -> CalibrationSet:
    root = _existing_dir(calibration_root(root))
    prompts = _read_prompts(root)
    texts = [line for lang in LANGS for line in _read_lines(root / "text" / f"calib_{lang}.txt", required=False)]
    if not texts:
        raise ExportError(f"no calibration text in {root / 'text'}: expected non-empty calib_zh.txt / calib_en.txt")
    return CalibrationSet(
        root, prompts, texts, sorted((root / "screenshots").glob("*.png")), sorted((root / "speech").glob("*.wav"))
    )


def load_heldout_text(root: str | Path | None = None) -> dict[str, list[str]]:
    """Held-out lines per language ("zh", "en") for perplexity checks; never used to calibrate."""
    root = _existing_dir(calibration_root(root))
    return {lang: _read_lines(root / "text" / f"heldout_{lang}.txt", required=True) for lang in LANGS}


def load_image(path: str | Path) -> np.ndarray:
    """A screenshot as uint8 [H, W, 3] RGB (the runtime's loader: EXIF-upright, InputError naming the file)."""
    return np.asarray(_load_rgb(Path(path)))


def load_speech(path: str | Path, sampling_rate: int = 16000) -> np.ndarray:
    """A speech clip as mono float32 at sampling_rate (the runtime's WAV reader and resampler)."""
    audio, rate = load_wav(path)
    return audio if rate == sampling_rate else resample(audio, rate, sampling_rate)


# ------------------------------------------------------------------------------- synthetic stand-ins
# For an installed package without the repository's calibration_data/: inputs with the right kind
# of content (a phone screen, a voiced sound), drawn from a seed.


def synthetic_screenshot(height: int = 1200, width: int = 540, seed: int = 0):
    """A phone-screen-like picture (status bar, list rows, a button) drawn with PIL."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (width, height), (245, 245, 245))
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, width, 40], fill=(30, 30, 30))
    for row in range(8):
        y = 80 + row * 120
        color = tuple(int(c) for c in rng.integers(60, 220, 3))
        draw.ellipse([20, y, 100, y + 80], fill=color)
        draw.text((120, y + 20), f"Contact {row}  消息 {row}", fill=(20, 20, 20))
    draw.rounded_rectangle([width // 4, height - 140, 3 * width // 4, height - 60], 20, fill=(7, 193, 96))
    return img


def synthetic_speech(spec_rate: int = 16000, seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    """A voiced chirp with harmonics and a little noise: speech-like spectra without a recording."""
    t = np.arange(int(spec_rate * seconds)) / spec_rate
    f0 = 120 + 60 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / spec_rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2)
    noise = 0.02 * np.random.default_rng(seed).standard_normal(t.size)
    return (0.2 * voiced + noise).astype(np.float32)


# ------------------------------------------------------------------------------------------------ files


def _existing_dir(root: Path) -> Path:
    if not root.is_dir():
        hint = f" (set by ${ENV_VAR})" if os.environ.get(ENV_VAR) and Path(os.environ[ENV_VAR]) == root else ""
        raise ExportError(f"calibration data directory not found: {root}{hint}")
    return root


def _read_lines(path: Path, required: bool) -> list[str]:
    if not path.is_file():
        if required:
            raise ExportError(f"calibration text file not found: {path}")
        return []
    lines = [l.strip() for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]
    if required and not lines:
        raise ExportError(f"calibration text file is empty: {path}")
    return lines


def _read_prompts(root: Path) -> list[CalibrationPrompt]:
    path = root / "prompts.jsonl"
    if not path.is_file():
        raise ExportError(f"calibration prompts not found: {path}")
    prompts, ids = [], set()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise ExportError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
        if (
            not isinstance(d, dict)
            or not isinstance(d.get("id"), str)
            or not isinstance(d.get("text"), str)
            or not d["text"].strip()
        ):
            raise ExportError(f"{where}: expected an object with string 'id' and non-empty 'text'")
        if d["id"] in ids:
            raise ExportError(f"{where}: duplicate prompt id {d['id']!r}")
        ids.add(d["id"])
        lang = d.get("lang") or ("en" if d["text"].isascii() else "zh")
        image = _media(root, d, where, flag="image", key="screenshot", default=f"screenshots/{d['id']}.png")
        audio = _media(root, d, where, flag="audio", key="speech", default=f"speech/{d['id']}.wav")
        prompts.append(CalibrationPrompt(d["id"], d["text"], lang, image, audio))
    if not prompts:
        raise ExportError(f"no prompts in {path}")
    return prompts


def _media(root: Path, d: dict, where: str, flag: str, key: str, default: str) -> Path | None:
    """The file a prompt pairs with, when its boolean flag is set."""
    if not d.get(flag):
        if key in d:
            raise ExportError(f"{where}: names a {key} {d[key]!r} but '{flag}' is not true")
        return None
    path = root / d.get(key, default)
    if not path.is_file():
        raise ExportError(f"{where}: {key} file not found: {path}")
    return path

"""The committed calibration set (calibration_data/) and its loader (autoglm_export.calibration)."""

from __future__ import annotations

import hashlib
import json
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from autoglm_export.calibration import (
    DEFAULT_ROOT,
    ENV_VAR,
    load_calibration_set,
    load_heldout_text,
    load_image,
    load_speech,
)
from autoglm_export.errors import ExportError
from autoglm_runtime.preprocess import AudioSpec, preprocess_audio

ROOT = DEFAULT_ROOT
CORPUS = Path(__file__).resolve().parents[2] / "tools" / "tokenizer_corpus"
# validate.build_probes takes the first N lines: these must stay first, in this order.
FIRST_IDS = ["zh-wechat-send", "en-taobao-search", "zh-settings-wifi", "en-alarm", "zh-map-route", "en-reply-email"]


@pytest.fixture(scope="module")
def cal():
    return load_calibration_set()


def test_prompts_both_languages_and_media(cal):
    assert [p.id for p in cal.prompts[:6]] == FIRST_IDS
    langs = [p.lang for p in cal.prompts]
    assert len(cal.prompts) >= 40 and langs.count("zh") >= 20 and langs.count("en") >= 20
    assert sum(p.image is not None for p in cal.prompts) >= 20
    assert sum(p.audio is not None for p in cal.prompts) >= 10
    # every committed file is used by some prompt; nothing dangles
    assert {p.image for p in cal.prompts if p.image} == set(cal.screenshots)
    assert {p.audio for p in cal.prompts if p.audio} == set(cal.speech)
    assert len(cal.screenshots) >= 12 and len(cal.speech) >= 12


def test_parity_probes_use_the_calibration_prompts_and_their_media(cal):
    from autoglm_export.calibration import load_image
    from autoglm_export.checks.probes import probe_cases

    cases = probe_cases(len(cal.prompts))
    assert [c.case_id for c in cases] == [p.id for p in cal.prompts]
    assert [c.image is not None for c in cases] == [p.image is not None for p in cal.prompts]
    assert [c.audio is not None for c in cases] == [p.audio is not None for p in cal.prompts]
    first = next(i for i, p in enumerate(cal.prompts) if p.image is not None)
    assert np.array_equal(cases[first].image, load_image(cal.prompts[first].image))  # the committed screenshot


def test_screenshots_are_phone_screens(cal):
    for path in cal.screenshots:
        with Image.open(path) as im:
            w, h = im.size
        assert 1.6 <= h / w <= 2.4, path
        assert path.stat().st_size < 80_000, path
        arr = load_image(path)
        assert arr.dtype == np.uint8 and arr.shape == (h, w, 3)
        assert arr.std() > 10, f"{path} looks blank"


def test_speech_is_16k_mono_and_preprocesses(cal):
    spec = AudioSpec(num_mel_bins=80, num_frames=500)  # 5 s at hop 160: every clip fits
    for path in cal.speech:
        with wave.open(str(path)) as w:
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2), path
            seconds = w.getnframes() / w.getframerate()
        assert 1.0 <= seconds <= 5.0, path
        audio = load_speech(path)
        assert audio.dtype == np.float32 and 0.05 < np.abs(audio).max() <= 1.0
        feats = preprocess_audio(path, spec)
        assert feats.shape == (1, 80, 500) and np.isfinite(feats).all()


def _lines(path: Path) -> set[str]:
    return {l.strip() for l in path.read_text(encoding="utf-8").splitlines() if l.strip()}


def test_heldout_is_disjoint_from_calibration_and_tokenizer_corpus(cal):
    held = load_heldout_text()
    assert set(held) == {"zh", "en"} and all(len(v) >= 100 for v in held.values())
    heldout = set(held["zh"]) | set(held["en"])
    assert len(heldout) == len(held["zh"]) + len(held["en"]), "duplicate held-out lines"
    assert len(cal.texts) >= 200 and len(set(cal.texts)) == len(cal.texts)
    corpus = set().union(*(_lines(f) for f in CORPUS.glob("*.txt")))
    prompts = {p.text for p in cal.prompts}
    assert not heldout & set(cal.texts)
    assert not heldout & corpus
    assert not heldout & prompts
    assert not set(cal.texts) & corpus


def test_manifest_matches_files():
    rows = dict(reversed(l.split("  ", 1)) for l in (ROOT / "MANIFEST.sha256").read_text().splitlines())
    on_disk = {
        f.relative_to(ROOT).as_posix()
        for g in ("prompts.jsonl", "text/*", "screenshots/*", "speech/*")
        for f in ROOT.glob(g)
    }
    assert set(rows) == on_disk, "regenerate: .venv/bin/python tools/make_calibration_data.py --only manifest"
    for rel, digest in rows.items():
        assert hashlib.sha256((ROOT / rel).read_bytes()).hexdigest() == digest, rel
    assert sum(f.stat().st_size for f in ROOT.rglob("*") if f.is_file()) < 3_000_000


# --------------------------------------------------------------------------------------------- errors


@pytest.fixture
def mini(tmp_path):
    """A minimal valid set: one prompt with a screenshot, one calibration line."""
    root = tmp_path / "cal"
    (root / "screenshots").mkdir(parents=True)
    (root / "text").mkdir()
    shutil.copy(ROOT / "screenshots" / "wechat-chats-zh.png", root / "screenshots" / "a.png")
    (root / "prompts.jsonl").write_text(
        json.dumps(
            {
                "id": "a",
                "lang": "zh",
                "image": True,
                "audio": False,
                "screenshot": "screenshots/a.png",
                "text": "打开微信",
            }
        )
        + "\n"
    )
    (root / "text" / "calib_en.txt").write_text("Open WeChat.\n")
    assert len(load_calibration_set(root).prompts) == 1
    return root


def _raises(root: Path, *fragments: str) -> None:
    with pytest.raises(ExportError) as e:
        load_calibration_set(root)
    for f in fragments:
        assert f in str(e.value)


def test_missing_directory(tmp_path, monkeypatch):
    _raises(tmp_path / "nope", str(tmp_path / "nope"))
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "env"))
    _raises(None, str(tmp_path / "env"), ENV_VAR)


def test_missing_or_empty_prompts(mini):
    (mini / "prompts.jsonl").write_text("\n")
    _raises(mini, "no prompts", str(mini / "prompts.jsonl"))
    (mini / "prompts.jsonl").unlink()
    _raises(mini, "not found", str(mini / "prompts.jsonl"))


def test_bad_json_line_names_file_and_line(mini):
    with open(mini / "prompts.jsonl", "a") as f:
        f.write('{"id": "b", "text": "oops"\n')
    _raises(mini, f"{mini / 'prompts.jsonl'}:2", "malformed JSON")


def test_missing_referenced_files(mini):
    (mini / "screenshots" / "a.png").unlink()
    _raises(mini, str(mini / "screenshots" / "a.png"), ":1")
    (mini / "prompts.jsonl").write_text(json.dumps({"id": "b", "image": False, "audio": True, "text": "hi"}) + "\n")
    _raises(mini, str(mini / "speech" / "b.wav"))  # default path when "speech" is not given


def test_no_calibration_text(mini):
    (mini / "text" / "calib_en.txt").unlink()
    _raises(mini, str(mini / "text"))
    with pytest.raises(ExportError, match="heldout_zh.txt"):
        load_heldout_text(mini)

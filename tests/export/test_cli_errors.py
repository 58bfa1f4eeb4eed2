"""Bad input gets a one-line error naming the problem and a non-zero exit; nothing is written."""

from __future__ import annotations

import shutil
import wave
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from autoglm_export.cli import app
from autoglm_export.presets import TINY_DIR

runner = CliRunner()


def _error_line(result) -> str:
    assert result.exit_code != 0, result.output
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, f"expected one error line, got: {result.stderr!r}"
    assert lines[0].startswith("error:")
    return lines[0]


@pytest.fixture
def tiny_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "tiny"
    shutil.copytree(TINY_DIR, dst, ignore=shutil.ignore_patterns("audio"))
    return dst


def test_truncated_safetensors(tiny_copy):
    weights = tiny_copy / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    line = _error_line(runner.invoke(app, ["info", "--checkpoint", str(tiny_copy)]))
    assert "model.safetensors" in line and "truncated" in line


def test_missing_tensor(tiny_copy):
    weights = tiny_copy / "model.safetensors"
    tensors = load_file(weights)
    del tensors["model.language_model.layers.2.self_attn.k_proj.bias"]
    save_file(tensors, weights, metadata={"format": "pt"})
    line = _error_line(runner.invoke(app, ["info", "--checkpoint", str(tiny_copy)]))
    assert "missing tensors" in line and "text.layers.2.self_attn.k_proj.bias" in line


def test_mis_shaped_tensor(tiny_copy):
    weights = tiny_copy / "model.safetensors"
    tensors = load_file(weights)
    tensors["model.language_model.norm.weight"] = tensors["model.language_model.norm.weight"][:-1].clone()
    save_file(tensors, weights, metadata={"format": "pt"})
    line = _error_line(runner.invoke(app, ["info", "--checkpoint", str(tiny_copy)]))
    assert "mis-shaped" in line and "model.language_model.norm.weight [127] != [128]" in line


def test_config_of_another_model_type(tiny_copy):
    cfg = tiny_copy / "config.json"
    cfg.write_text(cfg.read_text().replace('"model_type": "glm4v"', '"model_type": "llama"', 1))
    line = _error_line(runner.invoke(app, ["info", "--checkpoint", str(tiny_copy)]))
    assert "config.json" in line and "model_type 'llama'" in line


def test_pickle_only_checkpoint_is_refused(tmp_path):
    ckpt = tmp_path / "bin"
    ckpt.mkdir()
    shutil.copy(TINY_DIR / "config.json", ckpt / "config.json")
    (ckpt / "pytorch_model.bin").write_bytes(b"not unpickled")
    line = _error_line(runner.invoke(app, ["info", "--checkpoint", str(ckpt)]))
    assert "pickle" in line and "safetensors" in line


def test_wrong_rate_wav(tmp_path):
    path = tmp_path / "low.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(1000)
        w.writeframes((np.sin(np.arange(2000) / 5) * 8000).astype(np.int16).tobytes())
    line = _error_line(runner.invoke(app, ["run", "--prompt", "hi", "--audio", str(path), "--max-new-tokens", "2"]))
    assert "low.wav" in line and "1000" in line


def test_too_long_prompt():
    line = _error_line(runner.invoke(app, ["run", "--prompt", "open WeChat " * 40, "--max-context", "64"]))
    assert "exceeds the context limit of 64" in line


def test_unreadable_image(tmp_path):
    bad = tmp_path / "shot.png"
    bad.write_text("not a png")
    line = _error_line(runner.invoke(app, ["run", "--prompt", "hi", "--image", str(bad)]))
    assert "shot.png" in line


def test_unknown_preset():
    line = _error_line(runner.invoke(app, ["info", "--preset", "huge"]))
    assert "huge" in line


@pytest.mark.parametrize("command", ["info", "run", "android"])
def test_every_command_has_help(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def _write_fails_with(monkeypatch, fail):
    """The ExecuTorch lowering replaced by a program whose write calls ``fail``: the failure comes
    where a real write fails, after quantization and with the scratch folder in use, without
    minutes of lowering."""
    from autoglm_export.targets.executorch import export as executorch_export

    class Unwritable:
        delegation: dict = {}

        def write(self, path):
            fail(path)

    monkeypatch.setattr(executorch_export, "lower", lambda *args, **kwargs: Unwritable())


def test_a_disk_that_fills_up_during_the_export_is_one_line_and_publishes_nothing(tmp_path, monkeypatch):
    """The disk check passes before any work; another process can still fill the disk before the end."""
    import errno
    import os

    def full_disk(path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    _write_fails_with(monkeypatch, full_disk)
    out = tmp_path / "bundle"
    line = _error_line(runner.invoke(app, ["android", "--no-validate", "--out", str(out)]))
    assert "No space left on device" in line and "model.pte" in line and "nothing was published" in line
    assert not out.exists()
    assert not list(tmp_path.glob(".autoglm-*"))  # the scratch folder went too


def test_other_os_errors_keep_their_traceback(monkeypatch, tmp_path):
    def broken(path):
        raise PermissionError(13, "Permission denied", str(path))

    _write_fails_with(monkeypatch, broken)
    result = runner.invoke(app, ["android", "--no-validate", "--out", str(tmp_path / "b")])
    assert isinstance(result.exception, PermissionError)

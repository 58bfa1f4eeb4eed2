"""Issue 18: the rough edges a new user hit. Each test failed on the code before the fix."""

from __future__ import annotations

import json
import logging
import os
import re
import struct
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from autoglm_export.cli import app

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]


def _error_line(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error:"), result.stderr
    assert "Traceback" not in result.output
    return lines[-1]


def _only_error_line(result) -> str:
    line = _error_line(result)
    assert len([x for x in result.stderr.splitlines() if x.strip()]) == 1, result.stderr
    return line


def _wav(path: Path, seconds: float, rate: int = 16000) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(rate)
        w.writeframes((np.sin(np.arange(int(seconds * rate)) / 7) * 8000).astype(np.int16).tobytes())
    return path


@pytest.fixture(scope="module")
def fake_bundle(tmp_path_factory) -> Path:
    """A manifest-only bundle exported with --no-validate (no model files: enough for info, run's and
    validate's first steps)."""
    from autoglm_export.source import open_source

    root = tmp_path_factory.mktemp("bundle") / "b"
    root.mkdir()
    spec = open_source(None, None, "tiny", weights=False).spec
    manifest = {
        "schema_version": 1,
        "target": "onnx",
        "runtime": spec.to_dict(),
        "validated": False,
        "source": {"preset": "tiny"},
        "export_shape": {"max_context": 512, "image_hw": [168, 84], "audio_frames": 400},
        "files": {},
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture(scope="module")
def onnx_unvalidated(tmp_path_factory) -> Path:
    """The tiny model exported to ONNX with --no-validate through the CLI (about 25 s on 2 busy cores)."""
    out = tmp_path_factory.mktemp("onnx") / "onnx"
    result = runner.invoke(app, ["onnx", "--no-validate", "--out", str(out)])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "NOT validated (--no-validate)" in result.stderr
    return out


@pytest.fixture(scope="module")
def audioless_tiny(tmp_path_factory) -> Path:
    """The tiny checkpoint without its audio tower (the preset's audio/ folder)."""
    import shutil

    from autoglm_export.presets import TINY_DIR

    dst = tmp_path_factory.mktemp("noaudio") / "tiny"
    shutil.copytree(TINY_DIR, dst, ignore=shutil.ignore_patterns("audio"))
    return dst


# ---- tracebacks instead of one error line


def test_top_p_zero_is_one_error_line():
    line = _only_error_line(runner.invoke(app, ["run", "-p", "hi", "--top-p", "0"]))
    assert "top_p" in line and "(0, 1]" in line


def test_parity_report_out_in_missing_folder(tmp_path):
    out = tmp_path / "missing" / "dir" / "r.md"
    line = _only_error_line(runner.invoke(app, ["parity-report", str(tmp_path), "--out", str(out)]))
    assert str(out.parent) in line


def _png_with_bad_chunk(path: Path) -> Path:
    """A PNG whose IDAT length field says half its size: Pillow then reads a chunk header from the middle
    of the compressed data and raises SyntaxError("broken PNG file ..."), which escaped before."""
    pixels = (np.random.default_rng(0).random((32, 64, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    data = bytearray(path.read_bytes())
    at = data.index(b"IDAT") - 4
    (length,) = struct.unpack(">I", data[at : at + 4])
    data[at : at + 4] = struct.pack(">I", length // 2)
    path.write_bytes(bytes(data))
    with pytest.raises(SyntaxError):
        with Image.open(path) as img:
            img.load()
    return path


def test_corrupted_png_chunk_is_one_error_line(tmp_path):
    png = _png_with_bad_chunk(tmp_path / "broken.png")
    line = _error_line(runner.invoke(app, ["run", "-p", "hi", "--image", str(png), "--max-new-tokens", "1"]))
    assert "broken.png" in line


# ---- nothing changed or dropped without a word


def test_validate_reports_unchecked_audio_encoder(monkeypatch, fake_bundle):
    import autoglm_export.pipeline as pipeline

    report = pipeline.BundleValidation(
        "onnx", rows=[], unchecked={"audio_encoder": "the reference checkpoint has no audio tower"}
    )
    monkeypatch.setattr(pipeline, "validate_bundle", lambda *a, **k: report)
    result = runner.invoke(app, ["validate", str(fake_bundle)])
    line = _error_line(result)
    assert "audio_encoder" in line and "not checked" in line and "passed" not in result.output
    assert "NOT CHECKED  audio_encoder" in result.stderr


def test_validate_real_bundle_against_an_audioless_checkpoint(onnx_unvalidated, audioless_tiny):
    """End to end: the bundle has an audio_encoder, the reference checkpoint has no audio tower."""
    manifest = (onnx_unvalidated / "manifest.json").read_bytes()
    result = runner.invoke(app, ["validate", str(onnx_unvalidated), "--checkpoint", str(audioless_tiny)])
    line = _error_line(result)
    assert (onnx_unvalidated / "manifest.json").read_bytes() == manifest  # nothing recorded
    assert not (onnx_unvalidated / "parity.json").exists()
    assert "audio_encoder not checked" in line and "--audio-checkpoint" in line
    assert "parity passed" not in result.output
    assert "NOT CHECKED  audio_encoder" in result.stderr and "PASS  text_decoder" in result.stderr
    assert "--no-validate" in result.stderr  # and it says the bundle was never validated at export


def test_real_unvalidated_bundle_is_announced_by_run_and_info(onnx_unvalidated):
    result = runner.invoke(app, ["run", str(onnx_unvalidated), "-p", "hi", "--max-new-tokens", "2"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "exported with --no-validate" in result.stderr and "onnxruntime:" in result.stderr
    info = runner.invoke(app, ["info", str(onnx_unvalidated)])
    assert info.exit_code == 0 and "NOT validated" in info.stderr and "text_decoder" in info.stderr
    umask = os.umask(0)
    os.umask(umask)
    assert onnx_unvalidated.stat().st_mode & 0o777 == 0o777 & ~umask  # mkdtemp's 0700 before
    assert all(f.stat().st_mode & 0o777 == 0o666 & ~umask for f in onnx_unvalidated.iterdir() if f.is_file())


def test_bundle_validation_fails_with_an_unchecked_component():
    from autoglm_export.pipeline import BundleValidation, unchecked_components

    row = {"component": "vision_encoder", "reference": "fp32", "passed": True, "failures": [], "metrics": {}}
    assert BundleValidation("onnx", rows=[row]).passed
    partial = BundleValidation("onnx", rows=[row], unchecked={"audio_encoder": "no audio tower"})
    assert partial.checked_passed and not partial.passed

    class Spec:
        def __init__(self, audio):
            self.has_audio = audio

    assert unchecked_components(Spec(True), Spec(False), None) == {
        "audio_encoder": "the reference checkpoint has no audio tower; pass --audio-checkpoint DIR"
    }
    assert unchecked_components(Spec(True), Spec(True), None) == {}
    assert unchecked_components(Spec(False), Spec(False), None) == {}


def test_long_audio_is_cut_with_a_warning(tmp_path, caplog):
    wav = _wav(tmp_path / "note.wav", 8.6)  # the tiny preset's window is 4 s
    with caplog.at_level(logging.WARNING, logger="autoglm_runtime"):  # the CLI's log handler writes to stderr
        result = runner.invoke(app, ["run", "-p", "hi", "--audio", str(wav), "--max-new-tokens", "1"])
    assert result.exit_code == 0, result.output
    assert re.search(r"note\.wav: 8\.6 s is longer than the model's 4\.0 s window", caplog.text), caplog.text


@pytest.mark.parametrize(
    "option", [["--preset", "small"], ["--checkpoint", "x"], ["--max-context", "64"], ["--audio-checkpoint", "y"]]
)
def test_run_bundle_refuses_eager_only_options(tmp_path, option):
    line = _only_error_line(runner.invoke(app, ["run", str(tmp_path / "b"), "-p", "hi", *option]))
    assert option[0] in line and "eager model" in line


def test_no_validate_bundle_is_announced(monkeypatch, fake_bundle):
    result = runner.invoke(app, ["run", str(fake_bundle), "-p", "hi"])  # no model files: fails after the warning
    assert "--no-validate" in result.stderr and "never checked" in result.stderr
    result = runner.invoke(app, ["info", str(fake_bundle)])
    assert result.exit_code == 0, result.output
    assert "NOT validated" in result.stderr

    import autoglm_export.pipeline as pipeline

    passing = pipeline.BundleValidation(
        "onnx", rows=[{"component": "c", "reference": "fp32", "passed": True, "failures": [], "metrics": {}}]
    )
    monkeypatch.setattr(pipeline, "validate_bundle", lambda *a, **k: passing)
    monkeypatch.setattr(pipeline.BundleValidation, "lines", lambda self: [])
    manifest = (fake_bundle / "manifest.json").read_bytes()
    result = runner.invoke(app, ["validate", str(fake_bundle), "--no-record"])
    assert result.exit_code == 0 and "--no-validate" in result.stderr
    assert (fake_bundle / "manifest.json").read_bytes() == manifest and not (fake_bundle / "parity.json").exists()


def test_a_passing_validate_is_recorded_in_the_bundle(monkeypatch, onnx_unvalidated, tmp_path):
    """After `validate` passes, run and info stop calling the bundle unchecked; the manifest lists parity.json."""
    import shutil

    import autoglm_export.pipeline as pipeline
    from autoglm_runtime.bundle import open_bundle

    bundle = tmp_path / "b"
    shutil.copytree(onnx_unvalidated, bundle)
    row = {"component": "text_decoder", "reference": "fp32", "passed": True, "failures": [], "metrics": {}}
    monkeypatch.setattr(pipeline, "validate_bundle", lambda *a, **k: pipeline.BundleValidation("onnx", rows=[row]))
    monkeypatch.setattr(pipeline.BundleValidation, "lines", lambda self: [])
    result = runner.invoke(app, ["validate", str(bundle)])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "parity passed" in result.stderr and "recorded in" in result.stderr
    manifest = open_bundle(bundle, verify_hashes=True).manifest  # parity.json hashed into the table
    assert manifest["validated"] is True and "parity.json" in manifest["files"]
    assert json.loads((bundle / "parity.json").read_text())["rows"] == [row]
    assert set(manifest["files"]) == set(json.loads((onnx_unvalidated / "manifest.json").read_text())["files"]) | {
        "parity.json"
    }
    assert not [p for p in bundle.iterdir() if p.name.startswith(".")]  # no temp files left
    run = runner.invoke(app, ["run", str(bundle), "-p", "hi", "--max-new-tokens", "1"])
    assert run.exit_code == 0 and "--no-validate" not in run.stderr
    info = runner.invoke(app, ["info", str(bundle)])
    assert info.exit_code == 0 and "NOT validated" not in info.stderr


def test_a_pass_that_cannot_be_recorded_says_so(monkeypatch, fake_bundle):
    import autoglm_export.bundle as bundle_mod
    import autoglm_export.pipeline as pipeline

    def read_only(root, report):
        raise PermissionError(13, "Permission denied", str(root / "parity.json"))

    row = {"component": "c", "reference": "fp32", "passed": True, "failures": [], "metrics": {}}
    monkeypatch.setattr(pipeline, "validate_bundle", lambda *a, **k: pipeline.BundleValidation("onnx", rows=[row]))
    monkeypatch.setattr(pipeline.BundleValidation, "lines", lambda self: [])
    monkeypatch.setattr(bundle_mod, "record_validation", read_only)
    result = runner.invoke(app, ["validate", str(fake_bundle)])
    assert result.exit_code == 0 and "parity passed" in result.stderr, result.output
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning:") and "not recorded" in line]
    assert warning and "parity.json" in warning[0] and "Permission denied" in warning[0]


def test_export_without_validation_says_so(monkeypatch, tmp_path):
    import autoglm_export.pipeline as pipeline

    monkeypatch.setattr(pipeline, "export_bundle", lambda target, request, options: (options.out, None))
    result = runner.invoke(app, ["onnx", "--no-validate", "--out", str(tmp_path / "o")])
    assert result.exit_code == 0 and "NOT validated" in result.stderr


def test_missing_checkpoint_directory_is_named(tmp_path):
    missing = tmp_path / "nope"
    line = _only_error_line(runner.invoke(app, ["info", "--checkpoint", str(missing)]))
    assert line == f"error: {missing}: no such checkpoint directory"


def test_several_images_run_in_one_prompt(tmp_path):
    from PIL import Image

    a, b = tmp_path / "a.png", tmp_path / "b.png"
    Image.new("RGB", (108, 240), (200, 30, 30)).save(a)
    Image.new("RGB", (240, 108), (30, 200, 30)).save(b)
    result = runner.invoke(app, ["run", "-p", "hi", "--image", str(a), "--image", str(b), "--max-new-tokens", "2"])
    assert result.exit_code == 0, result.stderr
    missing = _only_error_line(runner.invoke(app, ["run", "-p", "hi", "--image", str(a), "--image", "nope.png"]))
    assert missing.startswith("error: cannot read image nope.png")


# ---- noise and silence


def test_native_log_lines_are_dropped_by_default():
    code = (
        "import os, sys; from autoglm_export.native_stderr import drop_native_log_lines; drop_native_log_lines(); "
        "os.write(2, b'[kernel_runtime_context.h:91] No temp allocator provided\\n'); "
        "os.write(2, b'[cpuinfo_utils.cpp:71] Reading file /sys/x\\n'); os.write(2, b'kept native line\\n'); "
        "sys.stderr.write('[cpuinfo_utils.cpp:125] via pybind11 into sys.stderr\\n'); "
        "sys.stderr.write('[ours'); sys.stderr.write('] too\\n'); print('ours', file=sys.stderr)"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "export"), str(REPO / "runtime")]))
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60).stderr
    assert "No temp allocator" not in err and "cpuinfo_utils" not in err and "pybind11" not in err
    assert "kept native line" in err and "[ours] too" in err and "ours\n" in err


def test_third_party_output_is_quiet_by_default_and_verbose_shows_it(monkeypatch):
    from autoglm_export import quiet

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    quiet.third_party()
    quiet.log_levels()
    assert os.environ["TQDM_DISABLE"] == "1"  # transformers' and coremltools' progress bars
    from tqdm import tqdm

    assert tqdm(range(3)).disable  # already imported before the CLI starts: the constructor's default
    assert logging.getLogger("coremltools").getEffectiveLevel() == logging.ERROR  # "Failed to load _MLModelProxy"
    assert logging.getLogger("executorch.extension").getEffectiveLevel() >= logging.WARNING
    assert logging.getLogger().level == logging.WARNING  # "Looking for libcustom_ops_aot_lib.so" (root, INFO)
    assert logging.getLogger("autoglm_export.pipeline").getEffectiveLevel() == logging.INFO


def test_parity_table_logged_once_on_success(caplog):
    from autoglm_export.pipeline import gate_on_parity

    class Report:
        passed = True

        def lines(self):
            return ["PASS  text_decoder vs fp32"]

        def to_json(self):
            return {}

    class Writer:
        def write_json(self, name, data):
            self.written = name

    with caplog.at_level(logging.INFO, logger="autoglm_export"):
        gate_on_parity(Report(), Writer(), Path("out"))
    assert "PASS" not in caplog.text  # the CLI prints the table; the log no longer repeats it


def test_coreml_stats_line_names_the_mil_interpreter():
    from autoglm_export.cli import _backend_label

    class Mil:
        name, engine_name = "coreml", "mil"

    assert "MIL interpreter" in _backend_label(Mil())


def test_lowering_announces_each_method():
    from autoglm_export.targets.executorch.lower import _announced

    class Partitioner:
        def partition(self, program):
            return program

    said: list[str] = []
    [p] = _announced([Partitioner()], "lowering text_decoder to xnnpack (4/5)", said.append, None)
    assert p.partition("ep") == "ep" and said == ["lowering text_decoder to xnnpack (4/5)"]


def test_gptq_reports_each_block_when_not_on_a_terminal(caplog):
    from autoglm_export.quantize.calibrate import block_progress

    with caplog.at_level(logging.INFO, logger="autoglm_export"), block_progress("gptq") as progress:
        progress(1, 12, "vision.patch_embed", 1.5)
        progress(12, 12, "text.lm_head", 2.0)
    assert "gptq block 1/12: vision.patch_embed" in caplog.text and "gptq block 12/12: text.lm_head" in caplog.text


# ---- conveniences


def test_version():
    from autoglm_export import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def _option_help(command: str) -> dict[str, str]:
    import typer.main

    click_command = typer.main.get_command(app).commands[command]
    return {name: p.help or "" for p in click_command.params for name in p.opts}


def test_help_texts():
    run = _option_help("run")
    assert "Most tokens" in run["--max-new-tokens"]
    assert "Random seed" in run["--seed"]
    assert "Nucleus" in run["--top-p"] and "(0, 1]" in run["--top-p"]
    android = _option_help("android")
    assert (
        "168x84" in android["--image-size"] and "tiny 400" in android["--audio-frames"]
    )  # the values, not "the preset's"
    assert "input channels" in android["--group-size"] and "input channels" in _option_help("calibrate")["--group-size"]
    for command in ("run", "android"):
        rendered = runner.invoke(app, [command, "--help"]).output
        assert "<bool>" not in rendered, command  # flags take no value


def test_info_bundle_summary(fake_bundle):
    result = runner.invoke(app, ["info", str(fake_bundle)])
    assert result.exit_code == 0, result.output
    out = result.stderr
    for words in (
        "target onnx",
        "max_context 512",
        "vision_encoder: pixel_values",
        "audio_encoder",
        "quantization",
        "size:",
        "validation:",
    ):
        assert words in out, words


def test_prompt_from_stdin():
    result = runner.invoke(app, ["run", "-p", "-", "--max-context", "64"], input="open WeChat " * 40)
    assert "exceeds the context limit of 64" in _error_line(result)  # the stdin text was the prompt
    assert "standard input is empty" in _only_error_line(runner.invoke(app, ["run", "-p", "-"], input=""))


def test_bundles_and_quantized_checkpoints_follow_umask(tmp_path):
    from autoglm_export.quantize import qcheckpoint

    old = os.umask(0o022)
    try:
        qcheckpoint.save(qcheckpoint.QuantizedCheckpoint(config={"method": "rtn"}), tmp_path / "q")
    finally:
        os.umask(old)
    assert (tmp_path / "q").stat().st_mode & 0o777 == 0o755
    for f in (tmp_path / "q").iterdir():
        assert f.stat().st_mode & 0o777 == 0o644, f


def test_published_bundle_follows_umask(tmp_path, fake_bundle):
    from autoglm_export.bundle import BundleWriter

    manifest = json.loads((fake_bundle / "manifest.json").read_text())
    old = os.umask(0o027)
    try:
        with BundleWriter(tmp_path / "b") as bundle:
            bundle.path("model.bin").write_bytes(b"weights")
            os.chmod(bundle.path("model.bin"), 0o600)  # as safetensors and some converters write them
            bundle.finish({k: manifest[k] for k in ("target", "runtime")})
    finally:
        os.umask(old)
    assert (tmp_path / "b").stat().st_mode & 0o777 == 0o750
    assert (tmp_path / "b" / "model.bin").stat().st_mode & 0o777 == 0o640


def test_readme_lists_every_command_and_what_ci_runs():
    readme = (REPO / "README.md").read_text()
    table = readme.split("## Command line", 1)[1].split("```console", 1)[0]
    for command in app.registered_commands:
        name = command.name or command.callback.__name__.replace("_", "-")
        assert f"`autoglm-export {name}" in table, name
    makefile = (REPO / "Makefile").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in ci and "make parity" in ci
    said = readme.split("`.ci/run` is what CI runs", 1)[1].split("\n\n", 1)[0]
    for target in re.findall(r"^make ([\w-]+)", ci, re.M):
        assert f"make {target}" in said, target
    test_rule = makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    lint_rule = makefile.split("\nlint:", 1)[1].split("\n\n", 1)[0] if "\nlint:" in makefile else ""
    runs_ruff = "ruff" in test_rule or ("lint" in test_rule.split("\n", 1)[0] and "ruff" in lint_rule)
    if runs_ruff:
        assert "ruff" in said and "not part of `make test`" not in said
    else:
        assert "ruff lint" not in said and "not part of `make test`" in said
    parity_recipe = makefile.split("\nparity:", 1)[1].split("\n\n", 1)[0]
    for out in re.findall(r"--out (dist/\w+)", parity_recipe):
        assert out in said, out

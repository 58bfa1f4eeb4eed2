"""Bundle writer (atomic publish, overwrite rules) and reader (integrity checks, named errors)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoglm_export.bundle import BundleWriter, check_destination, toolchain_versions
from autoglm_export.errors import ExportError
from autoglm_runtime.bundle import MANIFEST_SCHEMA_VERSION, open_bundle, sha256_file
from autoglm_runtime.errors import BundleError
from autoglm_runtime.preprocess import AudioSpec, ImageSpec
from autoglm_runtime.spec import ModelSpec

SPEC = ModelSpec(
    max_context=512,
    vocab_size=4096,
    hidden_size=128,
    eos_token_ids=(4073, 4075),
    image_token_id=4087,
    image=ImageSpec(height=56, width=84),
    audio_token_id=4094,
    audio=AudioSpec(num_frames=400),
    audio_tokens=50,
)


def _manifest(**extra) -> dict:
    return {"target": "executorch", "runtime": SPEC.to_dict(), **extra}


def _write(out: Path, payload: bytes = b"program", force: bool = False) -> dict:
    with BundleWriter(out, force=force) as w:
        w.write_bytes("model.pte", payload)
        w.write_json("tokenizer.json", {"model": "bpe", "text": "打开微信"})
        w.write_json("parity.json", {"passed": True})
        return w.finish(_manifest(quantization="8da4w"))


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_round_trip(tmp_path):
    out = tmp_path / "dist" / "android"
    written = _write(out)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.pte", "parity.json", "tokenizer.json"]
    assert _leftovers(out.parent) == []  # no temp or backup folders
    b = open_bundle(out)
    assert b.manifest == written and b.target == "executorch" and b.spec == SPEC
    assert b.manifest["schema_version"] == MANIFEST_SCHEMA_VERSION and b.manifest["quantization"] == "8da4w"
    assert list(b.manifest["files"]) == ["model.pte", "parity.json", "tokenizer.json"]  # sorted, no manifest.json
    assert b.manifest["files"]["model.pte"] == {"sha256": sha256_file(out / "model.pte"), "bytes": 7}
    assert b.path("model.pte") == out / "model.pte" and b.tokenizer_path == out / "tokenizer.json"
    assert "打开微信" in (out / "tokenizer.json").read_text(encoding="utf-8")  # UTF-8, not \u escapes
    with pytest.raises(BundleError, match="no model.mlpackage"):
        b.path("model.mlpackage")


def test_directories_are_listed_file_by_file(tmp_path):
    src = tmp_path / "src.mlpackage"
    (src / "Data").mkdir(parents=True)
    (src / "Manifest.json").write_text("{}")
    (src / "Data" / "weights.bin").write_bytes(b"\0" * 10)
    with BundleWriter(tmp_path / "ios") as w:
        w.copy("model.mlpackage", src)
        w.finish(_manifest(target="coreml"))
    b = open_bundle(tmp_path / "ios")
    assert list(b.files) == ["model.mlpackage/Data/weights.bin", "model.mlpackage/Manifest.json"]
    assert b.path("model.mlpackage").is_dir()


def test_refuses_to_overwrite_before_any_work(tmp_path):
    out = tmp_path / "android"
    _write(out)
    with pytest.raises(ExportError, match=r"android exists; pass --force to overwrite"):
        check_destination(out, force=False)
    worked = False
    with pytest.raises(ExportError, match="pass --force"):
        with BundleWriter(out):
            worked = True  # the expensive export would run here
    assert not worked and _leftovers(tmp_path) == []
    check_destination(out, force=True)
    check_destination(tmp_path / "new", force=False)


def test_force_replaces_atomically(tmp_path):
    out = tmp_path / "android"
    _write(out, b"old")
    _write(out, b"new program", force=True)
    assert (out / "model.pte").read_bytes() == b"new program"
    open_bundle(out)
    assert _leftovers(tmp_path) == []


def test_force_never_replaces_something_that_is_not_a_bundle(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    with pytest.raises(ExportError, match="not an autoglm-export bundle"):
        check_destination(home, force=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match="not a directory"):
        check_destination(tmp_path / "file", force=True)
    (tmp_path / "empty").mkdir()
    check_destination(tmp_path / "empty", force=True)


@pytest.mark.parametrize("force", [False, True])
def test_failure_inside_the_block_leaves_old_bundle_and_no_temp(tmp_path, force):
    out = tmp_path / ("android" if force else "fresh")
    if force:
        _write(out, b"old")
    with pytest.raises(RuntimeError, match="lowering blew up"):
        with BundleWriter(out, force=force) as w:
            w.write_bytes("model.pte", b"half")
            raise RuntimeError("lowering blew up")
    if force:
        assert (out / "model.pte").read_bytes() == b"old"
        open_bundle(out)
    else:
        assert not out.exists()
    assert _leftovers(tmp_path) == []


def test_block_without_finish_publishes_nothing(tmp_path):
    with BundleWriter(tmp_path / "android") as w:
        w.write_bytes("model.pte", b"x")
    assert not w.published and list(tmp_path.iterdir()) == []


def test_finish_refuses_a_manifest_the_runtime_cannot_open(tmp_path):
    with pytest.raises(ExportError, match="runtime"):
        with BundleWriter(tmp_path / "android") as w:
            w.write_bytes("model.pte", b"x")
            w.finish({"target": "executorch"})
    assert list(tmp_path.iterdir()) == []


def test_bad_member_names(tmp_path):
    with BundleWriter(tmp_path / "android") as w:
        for bad in ("../escape", "/abs", "a//b", "manifest.json"):
            with pytest.raises(ExportError):
                w.path(bad)


def test_tampered_file_is_named(tmp_path):
    out = tmp_path / "android"
    _write(out, b"program")
    (out / "model.pte").write_bytes(b"PROGRAM")  # same size, different bytes
    with pytest.raises(BundleError) as e:
        open_bundle(out)
    msg = str(e.value)
    assert "model.pte: sha256 mismatch" in msg and "modified after export" in msg and "\n" not in msg
    open_bundle(out, verify_hashes=False)  # size still matches


def test_truncated_and_missing_files_are_named(tmp_path):
    out = tmp_path / "android"
    _write(out, b"program")
    (out / "model.pte").write_bytes(b"prog")
    with pytest.raises(BundleError, match=r"model.pte: 4 bytes but manifest.json says 7 \(truncated"):
        open_bundle(out, verify_hashes=False)
    (out / "parity.json").unlink()
    with pytest.raises(BundleError, match=r"model.pte: 4 bytes"):  # checked in name order
        open_bundle(out)
    (out / "model.pte").write_bytes(b"program")
    with pytest.raises(BundleError, match=r"parity.json: missing \(listed in manifest.json\)"):
        open_bundle(out)


def test_extra_files_are_ignored(tmp_path):
    out = tmp_path / "android"
    _write(out)
    (out / "notes.txt").write_text("hi")
    open_bundle(out)


def test_manifest_problems(tmp_path):
    out = tmp_path / "android"
    with pytest.raises(BundleError, match="no such bundle directory"):
        open_bundle(out)
    _write(out)
    manifest = json.loads((out / "manifest.json").read_text())

    (out / "manifest.json").write_text('{"schema_version": 1,')
    with pytest.raises(BundleError, match=r"manifest.json: invalid JSON \(line 1"):
        open_bundle(out)

    (out / "manifest.json").write_text(json.dumps(dict(manifest, schema_version=MANIFEST_SCHEMA_VERSION + 1)))
    with pytest.raises(BundleError, match=r"schema_version 2 is newer than this runtime reads \(1\); upgrade"):
        open_bundle(out)

    (out / "manifest.json").write_text(json.dumps({k: v for k, v in manifest.items() if k != "schema_version"}))
    with pytest.raises(BundleError, match="no valid schema_version"):
        open_bundle(out)

    runtime = {k: v for k, v in manifest["runtime"].items() if k != "vocab_size"}
    (out / "manifest.json").write_text(json.dumps(dict(manifest, runtime=runtime)))
    with pytest.raises(BundleError, match="runtime section lacks 'vocab_size'"):
        open_bundle(out)

    files = dict(manifest["files"], **{"../../etc/passwd": {"sha256": "0", "bytes": 1}})
    (out / "manifest.json").write_text(json.dumps(dict(manifest, files=files)))
    with pytest.raises(BundleError, match="bad files entry"):
        open_bundle(out)

    (out / "manifest.json").unlink()
    with pytest.raises(BundleError, match=r"manifest.json: missing"):
        open_bundle(out)


def test_toolchain_versions():
    v = toolchain_versions()
    assert v["python"].count(".") == 2 and v["torch"].startswith("2.") and v["autoglm_export"]
    assert set(v) >= {"executorch", "torchao", "transformers", "coremltools", "onnx", "onnxruntime", "numpy"}

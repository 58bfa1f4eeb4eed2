"""Bad sharded checkpoints (what a 20 GB download goes wrong with) end in one `error:` line naming the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from autoglm_export.cli import app
from autoglm_export.presets import TINY_DIR

runner = CliRunner()
INDEX = "model.safetensors.index.json"


def _error_line(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


def _info(ckpt: Path) -> str:
    return _error_line(runner.invoke(app, ["info", "--checkpoint", str(ckpt)]))


@pytest.fixture
def sharded(tmp_path: Path) -> Path:
    """The tiny checkpoint split into three shards with an index, as HF writes large models."""
    dst = tmp_path / "sharded"
    shutil.copytree(TINY_DIR, dst, ignore=shutil.ignore_patterns("audio", "model.safetensors"))
    tensors = load_file(TINY_DIR / "model.safetensors")
    keys = sorted(tensors)
    weight_map = {}
    for i in range(3):
        name = f"model-{i + 1:05d}-of-00003.safetensors"
        part = keys[i::3]
        save_file({k: tensors[k] for k in part}, dst / name, metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    (dst / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert runner.invoke(app, ["info", "--checkpoint", str(dst)]).exit_code == 0
    return dst


def _edit_index(ckpt: Path, edit) -> None:
    index = json.loads((ckpt / INDEX).read_text())
    edit(index["weight_map"])
    (ckpt / INDEX).write_text(json.dumps(index))


def test_shard_left_out_of_the_index(sharded):
    _edit_index(sharded, lambda wm: [wm.pop(k) for k in [k for k, f in wm.items() if f.startswith("model-00002")]])
    line = _info(sharded)
    assert INDEX in line and "model-00002-of-00003.safetensors" in line


def test_tensor_left_out_of_the_index(sharded):
    key = "model.language_model.layers.1.mlp.down_proj.weight"
    holder = json.loads((sharded / INDEX).read_text())["weight_map"][key]
    _edit_index(sharded, lambda wm: wm.pop(key))
    line = _info(sharded)
    assert INDEX in line and "text.layers.1.mlp.down_proj.weight" in line and holder in line


def test_shard_listed_but_absent(sharded):
    (sharded / "model-00003-of-00003.safetensors").unlink()
    line = _info(sharded)
    assert "model-00003-of-00003.safetensors" in line and "missing" in line


def test_truncated_shard(sharded):
    shard = sharded / "model-00002-of-00003.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 100])
    line = _info(sharded)
    assert "model-00002-of-00003.safetensors" in line and "truncated" in line


def test_corrupt_index(sharded):
    (sharded / INDEX).write_text("{not json")
    line = _info(sharded)
    assert INDEX in line


def test_index_names_tensors_a_shard_lacks(sharded):
    _edit_index(
        sharded,
        lambda wm: (
            wm.update({"model.language_model.norm.weight": "model-00001-of-00003.safetensors"})
            if wm["model.language_model.norm.weight"] != "model-00001-of-00003.safetensors"
            else wm.update({"model.language_model.norm.weight": "model-00002-of-00003.safetensors"})
        ),
    )
    line = _info(sharded)
    assert "index lists tensors the shard lacks" in line and "model.language_model.norm.weight" in line

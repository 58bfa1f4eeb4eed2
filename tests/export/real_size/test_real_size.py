"""The real size without the real size: a checkpoint with AutoGLM-Phone-9B's widths (1 text layer,
1 vision block, 8192-row vocabulary: 0.5B parameters, 1 GB) made by tools/make_real_checkpoint.py,
then loaded, measured and described through the same code as the 20 GB one."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from real_width import ENV, ROOT, TOOL, VOCAB
from safetensors import safe_open
from typer.testing import CliRunner

from autoglm_export.cli import app
from autoglm_export.config import parse_model_config
from autoglm_export.presets import PRESETS


def _tool():
    spec = importlib.util.spec_from_file_location("make_real_checkpoint", TOOL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tool_writes_the_presets_config():
    """The full-size config the tool writes is the preset's, field for field, and the real facts hold."""
    cfg, eos = _tool().hf_config(40, 24, 151552)
    ours = parse_model_config(cfg.to_dict(), "tool")
    assert ours == parse_model_config(PRESETS["autoglm-phone-9b"].config, "preset")
    t, v = ours.text, ours.vision
    assert (
        t.hidden_size,
        t.num_hidden_layers,
        t.num_attention_heads,
        t.num_key_value_heads,
        t.head_dim,
        t.intermediate_size,
        t.vocab_size,
        t.rms_norm_eps,
        t.partial_rotary_factor,
        t.mrope_section,
    ) == (4096, 40, 32, 2, 128, 13696, 151552, 1e-5, 0.5, (8, 12, 12))
    assert t.attention_bias and not t.tie_word_embeddings and cfg.text_config.max_position_embeddings == 65536
    assert (
        v.depth,
        v.hidden_size,
        v.num_heads,
        v.patch_size,
        v.spatial_merge_size,
        v.temporal_patch_size,
        v.out_hidden_size,
        (v.image_size // v.patch_size) ** 2,
    ) == (24, 1536, 12, 14, 2, 2, 4096, 576)
    assert eos == [151329, 151336, 151338, 151348]
    assert (ours.image_start_token_id, ours.image_end_token_id, ours.image_token_id) == (151339, 151340, 151343)


def test_checkpoint_layout(real_width):
    names = {p.name for p in real_width.iterdir()}
    assert {
        "config.json",
        "generation_config.json",
        "preprocessor_config.json",
        "tokenizer.json",
        "model.safetensors.index.json",
    } <= names
    index = json.loads((real_width / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and shards[0].endswith(f"-of-{len(shards):05d}.safetensors")
    total = 0
    for shard in shards:
        with safe_open(str(real_width / shard), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                assert index["weight_map"][key] == shard
                t = f.get_slice(key)
                assert t.get_dtype() == "BF16"
                total += 2 * int(torch.tensor(t.get_shape()).prod())
    assert total == index["metadata"]["total_size"]
    pre = json.loads((real_width / "preprocessor_config.json").read_text())
    assert pre["size"] == {"shortest_edge": 12544, "longest_edge": 9633792}
    assert pre["image_mean"] == [0.48145466, 0.4578275, 0.40821073]


def test_tokenizer_specials_sit_at_the_real_offsets(real_width):
    from autoglm_runtime.tokenizer import GLM_ADDED_TOKENS, Tokenizer

    tok = Tokenizer(real_width / "tokenizer.json")
    base = VOCAB - 223
    assert tok.vocab_size == base + len(GLM_ADDED_TOKENS)
    assert [tok.token_to_id(c) for c, _ in GLM_ADDED_TOKENS] == list(range(base, base + len(GLM_ADDED_TOKENS)))
    ids = tok.encode("打开微信 hello<|user|>")
    assert ids[-1] == base + 7 and max(ids[:-1]) < 4073  # fillers are never produced by encoding
    cfg = json.loads((real_width / "config.json").read_text())
    assert cfg["image_token_id"] == base + 14 and cfg["text_config"]["eos_token_id"] == [
        base,
        base + 7,
        base + 9,
        base + 19,
    ]


def test_generation_is_deterministic_per_tensor_name():
    tool = _tool()
    shape = (3, 70)
    a = torch.cat(list(tool.tensor_chunks("model.language_model.layers.0.mlp.down_proj.weight", shape, 5)))
    b = torch.cat(list(tool.tensor_chunks("model.language_model.layers.0.mlp.down_proj.weight", shape, 5)))
    c = torch.cat(list(tool.tensor_chunks("model.language_model.layers.1.mlp.down_proj.weight", shape, 5)))
    assert torch.equal(a, b) and not torch.equal(a, c)
    norm = torch.cat(list(tool.tensor_chunks("model.visual.blocks.0.norm1.weight", (1536,), 0))).float()
    assert abs(norm.mean().item() - 1) < 0.01


def test_same_seed_same_bytes(tmp_path):
    tool = _tool()
    tensors = [("b.weight", (64, 33)), ("a.norm.weight", (33,))]
    tool.write_shard(tmp_path / "x.safetensors", tensors, seed=1)
    tool.write_shard(tmp_path / "y.safetensors", tensors, seed=1)
    digest = [hashlib.sha256((tmp_path / n).read_bytes()).hexdigest() for n in ("x.safetensors", "y.safetensors")]
    assert digest[0] == digest[1]
    with safe_open(str(tmp_path / "x.safetensors"), framework="pt") as f:
        assert torch.equal(
            f.get_tensor("b.weight").flatten(), torch.cat(list(tool.tensor_chunks("b.weight", (64, 33), 1)))
        )


def test_tool_refuses_an_existing_directory_and_git_trees(tmp_path):
    out = subprocess.run(
        [sys.executable, str(TOOL), "--out", str(tmp_path)], env=ENV, capture_output=True, text=True, check=False
    )
    assert out.returncode == 1 and out.stderr.startswith("error:") and "already exists" in out.stderr
    out = subprocess.run(
        [sys.executable, str(TOOL), "--out", str(ROOT / "ckpt-here")],
        env=ENV,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 1 and "git work tree" in out.stderr and not (ROOT / "ckpt-here").exists()


PROBE = r"""
import json, sys, torch
def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
from autoglm_export.source import open_source
mode = sys.argv[2]
base = status("VmRSS:")
if mode == "meta":
    src = open_source(sys.argv[1], weights=False)
else:
    src = open_source(sys.argv[1], dtype=None if mode == "stored" else torch.float32)
    for p in src.model.parameters():  # touch every weight: memory-mapped pages count once they are read
        p.detach().sum()
print(json.dumps({"growth": status("VmHWM:") - base}))
"""


def _peak_growth(ckpt: Path, mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(ckpt), mode], env=ENV, check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["growth"]


def test_loading_never_holds_the_weights_twice(real_width):
    """Peak RSS growth of loading (every weight touched) against the checkpoint's bf16 bytes.

    Holding the file's bytes and the tensors at once would be 2x as stored and 3x in fp32."""
    size = json.loads((real_width / "model.safetensors.index.json").read_text())["metadata"]["total_size"]
    stored = _peak_growth(real_width, "stored")
    fp32 = _peak_growth(real_width, "float32")
    meta = _peak_growth(real_width, "meta")
    assert stored < 1.3 * size, f"as stored: +{stored / 1e9:.2f} GB for a {size / 1e9:.2f} GB checkpoint"
    assert fp32 < 2.5 * size, f"fp32: +{fp32 / 1e9:.2f} GB for a {size / 1e9:.2f} GB checkpoint"
    assert meta < 0.1 * size, f"config only: +{meta / 1e9:.2f} GB"


def test_stored_and_converted_weights_agree(real_width):
    from autoglm_export.source import open_source

    a = open_source(real_width, dtype=None, preset="autoglm-phone-9b", max_context=64)
    b = open_source(real_width, dtype=torch.float32, preset="autoglm-phone-9b", max_context=64)
    pa, pb = dict(a.model.named_parameters()), dict(b.model.named_parameters())
    assert {p.dtype for p in pa.values()} == {torch.bfloat16} and {p.dtype for p in pb.values()} == {torch.float32}
    assert pa.keys() == pb.keys() and all(torch.equal(pa[k].float(), pb[k]) for k in pa)
    w = pa["text.layers.0.mlp.down_proj.weight"]
    with torch.no_grad():
        w[0, 0] += 1  # a private mapping: the file never changes
    c = open_source(real_width, dtype=None, preset="autoglm-phone-9b", max_context=64)
    assert torch.equal(
        dict(c.model.named_parameters())["text.layers.0.mlp.down_proj.weight"],
        pb["text.layers.0.mlp.down_proj.weight"].bfloat16(),
    )


def test_info_describes_without_loading(real_width):
    result = CliRunner().invoke(app, ["info", "--checkpoint", str(real_width), "--preset", "autoglm-phone-9b"])
    assert result.exit_code == 0, result.output
    text = result.stderr
    assert "layers x1" in text and "context 8192" in text
    # 2 (k, v) x 1 layer x 2 kv heads x 128 x 8192 tokens x 4 bytes
    assert f"KV cache at context 8192: {2 * 2 * 128 * 8192 * 4} bytes fp32" in text
    shards = len(set(json.loads((real_width / "model.safetensors.index.json").read_text())["weight_map"].values()))
    assert f"{shards} shard(s), 36 tensors, 1.02 GB BF16" in text
    assert f"tokenizer: {VOCAB - 223 + 23} ids; the other 200 embedding rows are padding" in text


def test_info_on_the_9b_preset_is_instant():
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "autoglm_export.cli", "info", "--preset", "autoglm-phone-9b"],
        env=ENV,
        capture_output=True,
        text=True,
        check=True,
    )
    assert time.perf_counter() - t0 < 60  # was OOM-killed at 22 GB; about 3 s on 2 cores
    assert "total    10292.78 M params" in out.stderr and "40960 bytes/token fp16" in out.stderr


def test_tool_checks_free_space_before_writing(tmp_path, monkeypatch):
    tool = _tool()
    real = shutil.disk_usage
    monkeypatch.setattr(tool.shutil, "disk_usage", lambda p: real(p)._replace(free=10**9))
    with pytest.raises(SystemExit, match=r"error: .* needs 20\.6\d GB, only 1\.00 GB free"):
        tool.make(tmp_path / "ckpt", 40, 24, 151552, 0, 5 * 10**9)
    assert list(tmp_path.iterdir()) == []


def _rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="MADV_PAGEOUT is Linux-only")
def test_release_pages_returns_memory_and_keeps_values(real_width):
    """Streaming over a checkpoint larger than memory: read a weight, give its pages back, read it again."""
    from autoglm_export.checkpoint import release_pages
    from autoglm_export.source import open_source

    src = open_source(real_width, dtype=None, preset="autoglm-phone-9b", max_context=64)
    params = list(src.model.parameters())
    sums = [float(p.detach().sum()) for p in params]
    edited = src.model.text.layers[0].mlp.down_proj.weight
    with torch.no_grad():
        edited[0, :1024] = 7.0  # copy-on-write pages: release must keep them
    touched = _rss()
    advised = release_pages(params)
    size = sum(p.numel() * p.element_size() for p in params)
    assert advised > 0.99 * size
    assert touched - _rss() > 0.8 * size, f"only {(touched - _rss()) / 1e9:.2f} GB of {size / 1e9:.2f} GB returned"
    assert bool((edited[0, :1024] == 7.0).all())
    edited_index = next(i for i, p in enumerate(params) if p is edited)
    assert [float(p.detach().sum()) for i, p in enumerate(params) if i != edited_index] == [
        s for i, s in enumerate(sums) if i != edited_index
    ]

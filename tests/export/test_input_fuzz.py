"""Fuzz the inputs that come from users or from disk (issue 18): manifest.json, WAV bytes, image bytes,
config.json, quantization_config.json and prompts. Each either works or raises one AutoglmError whose
message is one line (the CLI's ``error:`` line); never another exception, never a hang (a per-example
deadline). Bounded: a few dozen examples each, mutations of a valid file plus arbitrary values."""

from __future__ import annotations

import io
import json
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from autoglm_runtime.errors import AutoglmError

FUZZ = settings(
    max_examples=40,
    deadline=5000,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def works_or_one_line(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except AutoglmError as e:
        message = str(e)
        assert message and "\n" not in message, f"not one line: {message!r}"
        return None


def mutate(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for at, value in edits:
        if out:
            out[at % len(out)] = value
    return bytes(out)


EDITS = st.lists(st.tuples(st.integers(0, 2**16), st.integers(0, 255)), min_size=1, max_size=6)


def mutated_json(valid: dict):
    """A valid dict with some keys replaced by arbitrary JSON values, dropped, or nested wrong."""
    keys = sorted(valid)
    return st.tuples(st.lists(st.tuples(st.sampled_from(keys), JSON | st.just(KeyError)), min_size=1, max_size=3)).map(
        lambda t: {k: v for k, v in {**valid, **dict(t[0])}.items() if v is not KeyError}
    )


# ---- manifest.json


@pytest.fixture(scope="module")
def tiny_spec():
    from autoglm_export.source import open_source

    return open_source(None, None, "tiny", weights=False).spec


@pytest.fixture(scope="module")
def valid_manifest(tiny_spec) -> dict:
    return {
        "schema_version": 1,
        "target": "onnx",
        "runtime": tiny_spec.to_dict(),
        "validated": True,
        "export_shape": {"max_context": 512, "image_hw": [168, 84], "audio_frames": 400},
        "quantization": {"recipe": {"weights": "int4"}, "kinds": {"text_decoder": "int8_dynamic"}},
        "methods": {
            "text_decoder": {"inputs": [{"name": "inputs_embeds", "shape": [1, "seq", 128], "dtype": "float32"}]}
        },
        "max_seq_len": 64,
        "created_by": "autoglm-export",
        "source": {"preset": "tiny"},
        "files": {},
    }


@FUZZ
@given(data=st.data())
def test_manifest_json(tmp_path, valid_manifest, data):
    from autoglm_export.bundle_summary import summarize_bundle
    from autoglm_runtime.bundle import open_bundle

    root = tmp_path / "bundle"
    root.mkdir(exist_ok=True)
    kind = data.draw(st.sampled_from(["top", "runtime", "methods", "bytes"]))
    if kind == "top":
        text = json.dumps(data.draw(mutated_json(valid_manifest)))
    elif kind == "methods":
        method = data.draw(mutated_json(valid_manifest["methods"]["text_decoder"]))
        text = json.dumps({**valid_manifest, "methods": {"text_decoder": method}})
    elif kind == "runtime":
        text = json.dumps({**valid_manifest, "runtime": data.draw(mutated_json(valid_manifest["runtime"]))})
    else:
        text = mutate(json.dumps(valid_manifest).encode(), data.draw(EDITS)).decode("latin-1")
    (root / "manifest.json").write_text(text, encoding="latin-1")
    works_or_one_line(open_bundle, root)
    works_or_one_line(summarize_bundle, root)


# ---- WAV bytes


def _wav_bytes(seconds: float = 0.5, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(rate)
        w.writeframes((np.sin(np.arange(int(seconds * rate)) / 7) * 8000).astype(np.int16).tobytes())
    return buf.getvalue()


@FUZZ
@given(edits=EDITS, header_only=st.booleans(), junk=st.binary(max_size=64))
def test_wav_bytes(tmp_path, tiny_spec, edits, header_only, junk):
    from autoglm_runtime.preprocess import preprocess_audio

    valid = _wav_bytes()
    edits = [(at % 64, v) for at, v in edits] if header_only else edits  # the header is where parsing happens
    path = tmp_path / "clip.wav"
    path.write_bytes(mutate(valid, edits) if junk == b"" or len(junk) % 2 else junk)
    out = works_or_one_line(preprocess_audio, path, tiny_spec.audio)
    if out is not None:
        assert out.shape == (1, tiny_spec.audio.num_mel_bins, tiny_spec.audio.num_frames) and np.isfinite(out).all()


# ---- image bytes


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((40, 24, 3)) * 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(1).random((40, 24, 3)) * 255).astype(np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


@FUZZ
@given(fmt=st.sampled_from(["png", "jpeg"]), edits=EDITS, header_only=st.booleans())
def test_image_bytes(tmp_path, tiny_spec, fmt, edits, header_only):
    from autoglm_runtime.preprocess import preprocess_image

    valid = _png_bytes() if fmt == "png" else _jpeg_bytes()
    edits = [(at % 100, v) for at, v in edits] if header_only else edits
    path = tmp_path / f"shot.{fmt}"
    path.write_bytes(mutate(valid, edits))
    out = works_or_one_line(preprocess_image, path, tiny_spec.image)
    if out is not None:
        assert out.shape == (tiny_spec.image.num_patches, tiny_spec.image.patch_dim)


# ---- config.json


@pytest.fixture(scope="module")
def tiny_config() -> dict:
    from autoglm_export.presets import TINY_DIR

    return json.loads((TINY_DIR / "config.json").read_text())


@FUZZ
@given(data=st.data())
def test_config_json(tmp_path, tiny_config, data):
    from autoglm_export.config import load_model_config

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir(exist_ok=True)
    section = data.draw(st.sampled_from(["top", "text_config", "vision_config", "bytes"]))
    if section == "top":
        cfg = data.draw(mutated_json(tiny_config))
    elif section == "bytes":
        cfg = None
        (ckpt / "config.json").write_bytes(mutate(json.dumps(tiny_config).encode(), data.draw(EDITS)))
    else:
        cfg = {**tiny_config, section: data.draw(mutated_json(tiny_config[section]))}
    if cfg is not None:
        (ckpt / "config.json").write_text(json.dumps(cfg))
    works_or_one_line(load_model_config, ckpt)


# ---- quantization_config.json


@pytest.fixture(scope="module")
def quantized_dir(tmp_path_factory) -> Path:
    """A real quantized checkpoint layout: one int4 linear and one fp32 parameter."""
    import torch

    from autoglm_export.quantize import qcheckpoint

    codes = torch.randint(-8, 8, (8, 64), dtype=torch.int8)
    qc = qcheckpoint.QuantizedCheckpoint(
        config={"method": "rtn"},
        linears={"text.layers.0.mlp.down_proj": qcheckpoint.QuantizedLinear(codes, torch.ones(8, 2), 4)},
        params={"text.norm.weight": torch.ones(8)},
    )
    return qcheckpoint.save(qc, tmp_path_factory.mktemp("q") / "quantized")


@FUZZ
@given(data=st.data())
def test_quantization_config_json(tmp_path, quantized_dir, data):
    from autoglm_export.quantize import qcheckpoint

    path = tmp_path / "q"
    if path.exists():
        shutil.rmtree(path)
    shutil.copytree(quantized_dir, path)
    cfg_path = path / qcheckpoint.CONFIG_NAME
    valid = json.loads(cfg_path.read_text())
    kind = data.draw(st.sampled_from(["top", "layer", "bytes"]))
    if kind == "top":
        cfg_path.write_text(json.dumps(data.draw(mutated_json(valid))))
    elif kind == "layer":
        [(name, layer)] = valid["layers"].items()
        cfg_path.write_text(json.dumps({**valid, "layers": {name: data.draw(mutated_json(layer))}}))
    else:
        cfg_path.write_bytes(mutate(json.dumps(valid).encode(), data.draw(EDITS)))
    works_or_one_line(qcheckpoint.load, path)


# ---- prompts


@pytest.fixture(scope="module")
def tokenizer():
    from autoglm_export.presets import TINY_DIR
    from autoglm_runtime.tokenizer import Tokenizer

    return Tokenizer(TINY_DIR / "tokenizer.json")


SPECIAL = st.sampled_from(
    [
        "<|image|>",
        "<|audio|>",
        "<|user|>",
        "<|endoftext|>",
        "[gMASK]",
        "<think>",
        "\x00",
        "\ud7ff",
        "\n" * 3,
        "🙂",
        "打开微信",
    ]
)


@FUZZ
@given(
    text=st.lists(st.text(max_size=40) | SPECIAL, max_size=6).map("".join),
    image=st.booleans(),
    system=st.none() | st.text(max_size=20),
)
def test_prompts(tokenizer, tiny_spec, text, image, system):
    from autoglm_runtime.prompt import Message, encode_chat

    parts = ([{"type": "image"}] if image else []) + [{"type": "text", "text": text}]
    messages = ([Message("system", system)] if system else []) + [Message("user", parts)]
    out = works_or_one_line(
        encode_chat,
        tokenizer,
        messages,
        image_grids=tiny_spec.image.grid_thw,
        spatial_merge_size=tiny_spec.image.merge_size,
        audio_tokens_per_clip=tiny_spec.audio_tokens,
    )
    if out is not None:
        assert (out.input_ids == tiny_spec.image_token_id).sum() == (tiny_spec.image_tokens if image else 0)

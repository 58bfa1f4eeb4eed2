"""Golden traces (autoglm_runtime.trace): what the runtime did, recorded so the demo apps can replay it."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from autoglm_export.calibration import synthetic_screenshot
from autoglm_export.cli import app
from autoglm_export.source import open_source
from autoglm_runtime.bundle import Bundle
from autoglm_runtime.session import Session
from autoglm_runtime.trace import describe, digest, trace_request, write_trace

METHODS = {
    "vision_encoder": (["pixel_values"], ["image_embeds"]),
    "audio_encoder": (["input_features"], ["audio_embeds"]),
    "token_embedding": (["token_ids"], ["embeds"]),
    "text_decoder": (["inputs_embeds", "cache_position", "position_ids"], ["logits"]),
    "reset_cache": ([], ["done"]),
}


class _Program:
    """The eager tiny model behind ExecuTorchProgram's run(name, *arrays) surface."""

    def __init__(self, module):
        self.module = module

    def run(self, name, *arrays):
        with torch.no_grad():
            out = getattr(self.module, name)(*(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays))
        return [np.ones(1, np.float32) if out is None else out.float().numpy()]


class _ExecuTorchLike:
    """Calls its program the way ExecuTorchBackend does, so the trace hook sees the same calls."""

    name = "executorch"

    def __init__(self, module):
        self.program = _Program(module)

    def vision_encoder(self, x, size=None):
        return self.program.run("vision_encoder", x.astype(np.float32))[0]

    def audio_encoder(self, x):
        return self.program.run("audio_encoder", x.astype(np.float32))[0]

    def token_embedding(self, ids):
        return self.program.run("token_embedding", ids.astype(np.int64))[0]

    def text_decoder(self, embeds, cache_position, position_ids):
        return self.program.run(
            "text_decoder",
            embeds.astype(np.float32),
            cache_position.astype(np.int64),
            position_ids.astype(np.int64),
        )[0]

    def reset(self):
        self.program.run("reset_cache")


@pytest.fixture(scope="module")
def tiny():
    return open_source(preset="tiny")


@pytest.fixture
def bundle(tiny, tmp_path):
    shutil.copyfile(tiny.tokenizer_path, tmp_path / "tokenizer.json")
    manifest = {
        "schema_version": 1,
        "target": "executorch",
        "runtime": tiny.spec.to_dict(),
        "methods": {
            m: {"inputs": [{"name": n} for n in i], "outputs": [{"name": n} for n in o]}
            for m, (i, o) in METHODS.items()
        },
        "files": {"tokenizer.json": {"sha256": "", "bytes": 0}},
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return Bundle(root=tmp_path, manifest=manifest, spec=tiny.spec, target="executorch")


def _clip(rate=22050, seconds=1.0):
    t = np.arange(int(rate * seconds)) / rate
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def _wav(path, samples, rate):
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((samples * 32767).astype("<i2").tobytes())


def test_trace_records_what_the_session_does(tiny, bundle, tmp_path):
    image, audio = tmp_path / "shot.png", tmp_path / "note.wav"
    synthetic_screenshot().save(image)
    _wav(audio, _clip(), 22050)
    trace = trace_request(
        bundle,
        _ExecuTorchLike(tiny.model),
        "打开设置",
        image=image,
        audio=audio,
        max_new_tokens=5,
    )

    # The prompt is the session's own.
    session = Session(_ExecuTorchLike(tiny.model), bundle.tokenizer_path, tiny.spec)
    prepared = session.prepare(
        session.messages_for("打开设置", image=image, audio=audio, system=None),
        [image],
        [audio],
    )
    assert trace["prompt"]["input_ids"] == prepared.inputs.input_ids.tolist()
    assert trace["prompt"]["position_ids"] == prepared.inputs.position_ids.tolist()
    assert trace["prompt"]["text"].startswith("[gMASK]<sop><|user|>\n<|begin_of_image|><|image|>")

    # Model calls in the order an app must make them, with names from the manifest.
    methods = [c["method"] for c in trace["calls"]]
    assert methods[:5] == [
        "token_embedding",
        "vision_encoder",
        "audio_encoder",
        "reset_cache",
        "text_decoder",
    ]
    assert methods[5:] == ["token_embedding", "text_decoder"] * (len(trace["steps"]) - 1)
    decoder = trace["calls"][4]
    assert [i["name"] for i in decoder["inputs"]] == METHODS["text_decoder"][0]
    assert decoder["inputs"][2]["values"] == np.asarray(trace["prompt"]["position_ids"]).reshape(-1).tolist()
    # Later decode steps: one token at cache n + i, positions n + i + rope_delta on all planes.
    n, delta = len(trace["prompt"]["input_ids"]), trace["prompt"]["rope_delta"]
    step1 = trace["calls"][6]
    assert step1["inputs"][1]["values"] == [n]
    assert step1["inputs"][2]["values"] == [n + delta] * 3

    # Stored outputs decode to the bytes their digest names; preprocessed tensors are the encoders' inputs.
    emb = trace["calls"][0]["outputs"][0]
    raw = base64.b64decode(emb["data_b64"])
    assert hashlib.sha256(raw).hexdigest() == emb["sha256"]
    assert trace["preprocessed"]["pixel_values"]["sha256"] == trace["calls"][1]["inputs"][0]["sha256"]
    assert trace["preprocessed"]["input_features"]["shape"] == [
        1,
        tiny.spec.audio.num_mel_bins,
        tiny.spec.audio.num_frames,
    ]

    # Steps: greedy picks the best of the recorded top-k; the tokens are what was generated.
    assert [s["token"] for s in trace["steps"]] == trace["generated"]["token_ids"]
    assert all(s["top_k"][0][0] == s["token"] for s in trace["steps"])

    out = tmp_path / "t.json"
    write_trace(trace, out)
    assert json.loads(out.read_text(encoding="utf-8"))["generated"] == trace["generated"]


def test_digest_is_little_endian_c_order():
    a = np.arange(6, dtype=">f4").reshape(2, 3).T  # big-endian, non-contiguous
    assert digest(a) == hashlib.sha256(np.ascontiguousarray(a).astype("<f4").tobytes()).hexdigest()


def test_non_finite_samples_stay_strict_json():
    d = describe(np.array([-np.inf, 0.5, np.inf], np.float16), "causal_mask")
    assert [v for _, v in d["samples"]] == ["-inf", 0.5, "inf"]
    assert d["stats"]["min"] == 0.5  # statistics over the finite values
    json.dumps(d, allow_nan=False)


def test_cli_trace_on_a_missing_bundle_is_one_line(tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "trace",
            str(tmp_path / "nope"),
            "-p",
            "hi",
            "--out",
            str(tmp_path / "t.json"),
        ],
    )
    assert result.exit_code == 1
    assert "error:" in result.output and "no such bundle directory" in result.output
    assert not (tmp_path / "t.json").exists()

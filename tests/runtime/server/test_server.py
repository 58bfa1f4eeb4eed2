"""`autoglm-export serve` through the real clients (openai SDK, LangChain) against the embedded tiny
model: its ONNX and ExecuTorch bundles, exported once for this module, and the eager model.

Every server binds 127.0.0.1 on a free port; every request loop is bounded.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.server
import io
import logging
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import openai
import psutil
import pytest
import soundfile
from PIL import Image
from typer.testing import CliRunner

from autoglm_export.calibration import synthetic_screenshot
from autoglm_export.cli import app as cli
from autoglm_export.source import open_source
from autoglm_runtime.backends import backend_for_bundle
from autoglm_runtime.backends.torch_backend import TorchBackend
from autoglm_runtime.bundle import open_bundle
from autoglm_runtime.server import BackgroundServer, ServerConfig, create_app
from autoglm_runtime.server.serve import exposure_warning
from autoglm_runtime.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[3]
MODEL = "autoglm-phone-9b"
runner = CliRunner()


# --------------------------------------------------------------------------------------------- fixtures


def invoke(args: list[str]):
    """The CLI in-process. Its callback points the root logger at CliRunner's stderr, which is
    closed afterwards: put the root handlers back so later log lines have somewhere to go."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        return runner.invoke(cli, args)
    finally:
        root.handlers[:], root.level = handlers, level


def export(target: str, out: Path, *extra: str) -> Path:
    result = invoke([target, "--out", str(out), "--no-validate", *extra])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def onnx_bundle(tmp_path_factory) -> Path:
    return export("onnx", tmp_path_factory.mktemp("serve") / "onnx")


@pytest.fixture(scope="module")
def android_bundle(tmp_path_factory) -> Path:
    # fp32 halves the export time; the server does not care how the bundle is quantized
    out = tmp_path_factory.mktemp("serve") / "android"
    return export(
        "android",
        out,
        "--quant",
        "fp32",
        "--quant-encoder",
        "fp32",
        "--quant-embedding",
        "none",
    )


@pytest.fixture(scope="module")
def tiny():
    return open_source(preset="tiny")


def open_backend(bundle: Path):
    """As `autoglm-export serve BUNDLE` does: backend, tokenizer, spec, prefill chunk."""
    b = open_bundle(bundle)
    return (
        backend_for_bundle(b),
        b.tokenizer_path,
        b.spec,
        b.manifest.get("max_seq_len"),
    )


@contextlib.contextmanager
def served(backend, tokenizer, spec, chunk=None, **config):
    app = create_app(backend, tokenizer, spec, ServerConfig(**config), prefill_chunk=chunk)
    with BackgroundServer(app) as url:
        yield url


def client(url: str, key: str = "EMPTY", **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, **kw)


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def data_url(raw: bytes, mediatype: str = "image/png") -> str:
    return f"data:{mediatype};base64,{base64.b64encode(raw).decode()}"


def speech(rate=16000, seconds=1.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.4 * np.sin(2 * np.pi * 330 * t) * np.sin(2 * np.pi * 3 * t)).astype(np.float32)


def audio_bytes(fmt: str, rate=16000) -> bytes:
    buf = io.BytesIO()
    soundfile.write(
        buf,
        speech(rate),
        rate,
        format=fmt.upper(),
        **({"subtype": "PCM_16"} if fmt == "wav" else {}),
    )
    return buf.getvalue()


def image_part(raw: bytes) -> dict:
    return {"type": "image_url", "image_url": {"url": data_url(raw)}}


def audio_part(raw: bytes, fmt: str) -> dict:
    return {
        "type": "input_audio",
        "input_audio": {"data": base64.b64encode(raw).decode(), "format": fmt},
    }


def stream_text(c: openai.OpenAI, **kw) -> tuple[str, list]:
    chunks = list(c.chat.completions.create(model=MODEL, stream=True, stream_options={"include_usage": True}, **kw))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    return text, chunks


# ------------------------------------------------------------------------------------ backends for tests


class Scripted:
    """The eager model, its logits pushed so that greedy decoding emits ``script`` (then EOS)."""

    def __init__(self, inner, script: list[int], eos: int):
        self.inner, self.script, self.eos, self.i = inner, script, eos, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def reset(self):
        self.i = 0
        self.inner.reset()

    def text_decoder(self, embeds, cache_position, position_ids):
        logits = self.inner.text_decoder(embeds, cache_position, position_ids)
        token = self.script[self.i] if self.i < len(self.script) else self.eos
        logits[0, -1, token] = logits[0, -1].max() + 100.0
        self.i += 1
        return logits


class Slow:
    """The eager model, slowed down, never ending by itself (no EOS), counting decoder calls."""

    def __init__(self, inner, delay: float, eos=()):
        self.inner, self.delay, self.eos, self.calls = inner, delay, list(eos), 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def text_decoder(self, embeds, cache_position, position_ids):
        self.calls += 1
        time.sleep(self.delay)
        logits = self.inner.text_decoder(embeds, cache_position, position_ids)
        logits[..., self.eos] = -1e9
        return logits


def wait_idle(url: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = httpx.get(f"{url}/health").json()
        if health["running"] == 0 and health["queued"] == 0:
            return health
        time.sleep(0.02)
    raise AssertionError(f"the server is still busy: {health}")


# ------------------------------------------------------------------------------------ the openai SDK


def test_openai_sdk_plain_streaming_image_and_audio(onnx_bundle):
    backend, tok, spec, chunk = open_backend(onnx_bundle)
    shot = png_bytes(synthetic_screenshot())
    messages = [
        {"role": "system", "content": "You are a phone agent."},
        {
            "role": "user",
            "content": [
                image_part(shot),
                audio_part(audio_bytes("wav"), "wav"),
                {"type": "text", "text": "照做"},
            ],
        },
    ]
    with served(backend, tok, spec, chunk) as url:
        c = client(url)
        assert [m.id for m in c.models.list()] == [MODEL]
        plain = c.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=16)
        text, chunks = stream_text(c, messages=messages, temperature=0, max_tokens=16)
        mp3 = c.chat.completions.create(
            model=MODEL,
            max_tokens=4,
            messages=[
                {
                    "role": "user",
                    "content": [
                        audio_part(audio_bytes("mp3", 44100), "mp3"),
                        {"type": "text", "text": "?"},
                    ],
                }
            ],
        )
    assert plain.choices[0].message.role == "assistant"
    assert text == plain.choices[0].message.content and text
    usage = plain.usage
    assert (
        usage.prompt_tokens > spec.image_tokens + spec.audio_tokens
        and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    )
    finish = plain.choices[0].finish_reason
    assert finish in ("stop", "length") and (finish == "stop") == (usage.completion_tokens < 16)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == finish
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == usage.completion_tokens
    assert mp3.usage.prompt_tokens > spec.audio_tokens  # the mp3 clip's tokens are in the prompt


@pytest.mark.parametrize("target", ["onnx", "executorch"])
def test_streamed_text_equals_run(target, onnx_bundle, android_bundle, tmp_path):
    bundle = onnx_bundle if target == "onnx" else android_bundle
    image, audio = tmp_path / "shot.png", tmp_path / "note.wav"
    image.write_bytes(png_bytes(synthetic_screenshot()))
    audio.write_bytes(audio_bytes("wav", 22050))
    prompt, n = "打开微信给张三发消息", 40
    ran = invoke(
        [
            "run",
            str(bundle),
            "-p",
            prompt,
            "--image",
            str(image),
            "--audio",
            str(audio),
            "--max-new-tokens",
            str(n),
        ],
    )
    assert ran.exit_code == 0, ran.output
    expected = ran.stdout.removesuffix("\n")
    parts = [
        image_part(image.read_bytes()),
        audio_part(audio.read_bytes(), "wav"),
        {"type": "text", "text": prompt},
    ]
    backend, tok, spec, chunk = open_backend(bundle)
    with served(backend, tok, spec, chunk) as url:
        text, _chunks = stream_text(
            client(url),
            messages=[{"role": "user", "content": parts}],
            temperature=0,
            max_tokens=n,
        )
    assert len(expected) > 10 and text == expected


# ------------------------------------------------------------------------------------ reasoning fields

ANSWER = '<answer>do(action="Home")'  # </answer> is an EOS id: like the EOS, it is not part of the text
REPLY = "<think>想一想，先回桌面</think>" + ANSWER + "</answer>"


@pytest.fixture
def scripted(tiny):
    tok = Tokenizer(tiny.tokenizer_path)
    script = tok.encode(REPLY)
    return (
        Scripted(TorchBackend(tiny.model), script, tiny.spec.eos_token_ids[0]),
        tiny.tokenizer_path,
        tiny.spec,
    )


def test_reasoning_content_plain_and_streamed(scripted):
    backend, tok, spec = scripted
    msgs = [{"role": "user", "content": "回到桌面"}]
    with served(backend, tok, spec, prefix_reuse=False) as url:
        c = client(url)
        split = c.chat.completions.create(
            model=MODEL,
            messages=msgs,
            temperature=0,
            extra_body={"return_reasoning": True},
        )
        raw = c.chat.completions.create(model=MODEL, messages=msgs, temperature=0)
        chunks = list(
            c.chat.completions.create(
                model=MODEL,
                messages=msgs,
                temperature=0,
                stream=True,
                extra_body={"enable_thinking": True, "return_reasoning": True},
            )
        )
        off = c.chat.completions.create(
            model=MODEL,
            messages=msgs,
            temperature=0,
            max_tokens=1,
            extra_body={"enable_thinking": False},
        )
    msg = split.choices[0].message
    assert (msg.reasoning_content, msg.content) == ("想一想，先回桌面", ANSWER)
    assert split.choices[0].finish_reason == "stop"
    assert raw.choices[0].message.content == REPLY.removesuffix("</answer>")
    assert getattr(raw.choices[0].message, "reasoning_content", None) is None
    deltas = [ch.choices[0].delta for ch in chunks if ch.choices]
    assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == "想一想，先回桌面"
    assert "".join(d.content or "" for d in deltas) == ANSWER
    assert sum(1 for d in deltas if getattr(d, "reasoning_content", None)) >= 2  # streamed, not in one piece
    # enable_thinking=False pre-fills "<think></think>" in the prompt (2 tokens)
    assert off.usage.prompt_tokens == raw.usage.prompt_tokens + 2


def test_langchain_chat_openai(onnx_bundle, scripted):
    from langchain_openai import ChatOpenAI

    backend, tok, spec, chunk = open_backend(onnx_bundle)
    with served(backend, tok, spec, chunk) as url:
        llm = ChatOpenAI(
            model=MODEL,
            temperature=0.5,
            base_url=f"{url}/v1",
            api_key="EMPTY",
            max_retries=0,
            extra_body={"enable_thinking": True, "return_reasoning": True},
            streaming=True,
        )
        answer = llm.invoke("你是谁")
        plain = ChatOpenAI(
            model=MODEL,
            temperature=0,
            base_url=f"{url}/v1",
            api_key="EMPTY",
            max_tokens=8,
        ).invoke("你是谁")
    assert isinstance(answer.content, str) and answer.content
    assert answer.response_metadata["finish_reason"] in ("stop", "length")
    assert plain.usage_metadata["output_tokens"] <= 8 and plain.content

    backend, tok, spec = scripted
    with served(backend, tok, spec, prefix_reuse=False) as url:
        llm = ChatOpenAI(
            model=MODEL,
            temperature=0.5,
            base_url=f"{url}/v1",
            api_key="EMPTY",
            extra_body={"enable_thinking": True, "return_reasoning": True},
            streaming=True,
        )
        assert llm.invoke("你是谁").content == ANSWER  # the reasoning went to reasoning_content


# ------------------------------------------------------------------------- generation settings, reuse


def test_stop_max_tokens_seed_and_penalties(tiny):
    msgs = [{"role": "user", "content": "打开微信"}]
    with served(TorchBackend(tiny.model), tiny.tokenizer_path, tiny.spec) as url:
        c = client(url)

        def ask(**kw):
            return c.chat.completions.create(model=MODEL, messages=msgs, **kw)

        full = ask(temperature=0, max_tokens=24)
        text = full.choices[0].message.content
        assert len(text) > 12, text
        stop = text[6:9]
        cut = ask(temperature=0, max_tokens=24, stop=["never-there", stop])
        streamed, _ = stream_text(c, messages=msgs, temperature=0, max_tokens=24, stop=stop)
        short = ask(temperature=0, max_completion_tokens=3)
        a, b = (ask(temperature=1.0, top_p=0.9, seed=7, max_tokens=16) for _ in range(2))
        agent = ask(temperature=0.0, top_p=0.85, frequency_penalty=2.0, max_tokens=24)
    assert cut.choices[0].message.content == streamed == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3
    assert a.choices[0].message.content == b.choices[0].message.content
    assert agent.choices[0].message.content != text  # the penalty changed the greedy answer


def agent_requests(shot1: bytes, shot2: bytes, reply: str):
    system = {"role": "system", "content": "你是一个手机智能体。" * 8}
    first = [
        system,
        {
            "role": "user",
            "content": [image_part(shot1), {"type": "text", "text": "打开微信"}],
        },
    ]
    second = [
        system,
        {"role": "user", "content": [{"type": "text", "text": "打开微信"}]},
        {"role": "assistant", "content": reply},
        {
            "role": "user",
            "content": [
                image_part(shot2),
                {"type": "text", "text": '{"current_app": "微信"}'},
            ],
        },
    ]
    return first, second


@pytest.mark.parametrize("target", ["onnx", "executorch"])
def test_prefix_reuse_through_the_server(target, onnx_bundle, android_bundle):
    # each backend keeps its KV cache across calls when reset() is not called
    backend, tok, spec, chunk = open_backend(onnx_bundle if target == "onnx" else android_bundle)
    shot1, shot2 = (
        png_bytes(synthetic_screenshot()),
        png_bytes(synthetic_screenshot().rotate(180)),
    )
    results = {}
    for reuse in (True, False):
        with served(backend, tok, spec, chunk, prefix_reuse=reuse) as url:
            c = client(url)
            first, _ = agent_requests(shot1, shot2, "")
            r1 = c.chat.completions.create(model=MODEL, messages=first, temperature=0, max_tokens=12)
            _, second = agent_requests(shot1, shot2, r1.choices[0].message.content)
            r2 = c.chat.completions.create(model=MODEL, messages=second, temperature=0, max_tokens=12)
            results[reuse] = (r1, r2)
    (a1, a2), (b1, b2) = results[True], results[False]
    assert a1.choices[0].message.content == b1.choices[0].message.content
    assert a2.choices[0].message.content == b2.choices[0].message.content
    assert b2.usage.prompt_tokens_details.cached_tokens == 0
    cached = a2.usage.prompt_tokens_details.cached_tokens
    assert 30 < cached < a2.usage.prompt_tokens  # the system prompt and "<|user|>\n" were kept


# ---------------------------------------------------------------------------------- errors, limits


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and {"message", "type", "code", "param"} <= set(body["error"]), body
    return body["error"]


def test_openai_style_errors(tiny):
    with served(TorchBackend(tiny.model), tiny.tokenizer_path, tiny.spec) as url:

        def post(body, **kw):
            return httpx.post(f"{url}/v1/chat/completions", json=body, **kw)

        user = [{"role": "user", "content": "hi"}]
        r = httpx.post(
            f"{url}/v1/chat/completions",
            content=b'{"model": "x", "messages": [',
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 400 and "malformed JSON" in error_of(r)["message"]
        r = post([1, 2])
        assert r.status_code == 400 and error_of(r)["type"] == "invalid_request_error"
        r = post({"model": "gpt-4o", "messages": user})
        assert r.status_code == 404 and error_of(r)["code"] == "model_not_found"
        r = post(
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image_url",
                                "image_url": {"url": "data:image/png;base64,@@@"},
                            }
                        ],
                    }
                ]
            }
        )
        assert r.status_code == 400 and error_of(r)["code"] == "invalid_base64"
        assert error_of(r)["param"] == "messages[0].content[0]"
        r = post({"messages": [{"role": "user", "content": [image_part(b"not a png")]}]})
        assert r.status_code == 400 and error_of(r)["code"] == "invalid_image"
        r = post({"messages": [{"role": "user", "content": "很长的提示 " * 400}]})
        assert (
            r.status_code == 400
            and "512" in error_of(r)["message"]
            and error_of(r)["code"] == "context_length_exceeded"
        )
        r = post({"messages": user, "max_tokens": 600})
        assert r.status_code == 400 and "maximum context length is 512 tokens" in error_of(r)["message"]
        r = post({"messages": user, "n": 2})
        assert r.status_code == 400 and error_of(r)["param"] == "n"
        r = post({"messages": [{"role": "tool", "content": "x"}]})
        assert r.status_code == 400 and "role" in error_of(r)["param"]
        r = post({"messages": [{"role": "assistant", "content": [image_part(b"x")]}]})
        assert r.status_code == 400 and "text parts" in error_of(r)["message"]
        r = post({"messages": [{"role": "user", "content": "hi <|image|>"}]})
        assert r.status_code == 400 and "<|image|>" in error_of(r)["message"]
        r = post(
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [audio_part(b"RIFF....WAVEjunk", "wav")],
                    }
                ]
            }
        )
        assert r.status_code == 400 and error_of(r)["code"] == "invalid_audio"
        assert httpx.get(f"{url}/v1/nothing").status_code == 404 and error_of(httpx.get(f"{url}/v1/nothing"))
        r = httpx.get(f"{url}/v1/chat/completions")
        assert r.status_code == 405 and error_of(r)["type"] == "invalid_request_error"
        with pytest.raises(openai.BadRequestError, match="maximum context length"):
            client(url).chat.completions.create(model=MODEL, messages=user, max_tokens=10_000)


def test_api_key_size_limits_and_bind_warning(tiny):
    config = {
        "api_key": "s3cret",
        "max_body_bytes": 300_000,
        "max_image_bytes": 100_000,
        "max_image_pixels": 1_000_000,
    }
    with served(TorchBackend(tiny.model), tiny.tokenizer_path, tiny.spec, **config) as url:
        with pytest.raises(openai.AuthenticationError):
            client(url, "wrong").models.list()
        r = httpx.post(
            f"{url}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}]},
        )
        assert r.status_code == 401 and error_of(r)["code"] == "invalid_api_key"
        assert httpx.get(f"{url}/health").status_code == 200  # health stays open
        ok = client(url, "s3cret")
        assert ok.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2
        ).choices
        auth = {"Authorization": "Bearer s3cret"}
        r = httpx.post(
            f"{url}/v1/chat/completions",
            headers=auth,
            json={"messages": [{"role": "user", "content": "x" * 400_000}]},
        )
        assert r.status_code == 413 and "300000 bytes" in error_of(r)["message"]
        noise = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
        r = httpx.post(
            f"{url}/v1/chat/completions",
            headers=auth,
            json={
                "messages": [
                    {
                        "role": "user",
                        "content": [image_part(png_bytes(Image.fromarray(noise)))],
                    }
                ]
            },
        )
        assert r.status_code == 413 and "100000 bytes" in error_of(r)["message"]
        bomb = png_bytes(Image.new("1", (4000, 4000)))  # 16 Mpixel in a few KB
        r = httpx.post(
            f"{url}/v1/chat/completions",
            headers=auth,
            json={"messages": [{"role": "user", "content": [image_part(bomb)]}]},
        )
        assert r.status_code == 413 and "4000x4000" in error_of(r)["message"]
    assert "without --api-key" in exposure_warning("0.0.0.0", ServerConfig())
    assert exposure_warning("0.0.0.0", ServerConfig(api_key="k")) is None
    assert exposure_warning("127.0.0.1", ServerConfig()) is None and exposure_warning("::1", ServerConfig()) is None


class _ImageHandler(http.server.BaseHTTPRequestHandler):
    png = b""

    def do_GET(self):
        if self.path.endswith("/jump"):
            self.send_response(302)
            self.send_header("Location", "/elsewhere/shot.png")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()
        self.wfile.write(self.png)

    def log_message(self, *args):
        pass


def test_media_allow_lists(tiny, tmp_path):
    shot = png_bytes(synthetic_screenshot())
    allowed, outside = tmp_path / "screens", tmp_path / "private"
    allowed.mkdir(), outside.mkdir()
    (allowed / "shot.png").write_bytes(shot)
    (outside / "secret.png").write_bytes(shot)
    (allowed / "link.png").symlink_to(outside / "secret.png")
    _ImageHandler.png = shot
    http_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ImageHandler)
    threading.Thread(target=http_server.serve_forever, daemon=True).start()
    web = f"http://127.0.0.1:{http_server.server_address[1]}"
    try:

        def status(url_of_server, image_url):
            r = httpx.post(
                f"{url_of_server}/v1/chat/completions",
                json={
                    "max_tokens": 1,
                    "messages": [
                        {
                            "role": "user",
                            "content": [{"type": "image_url", "image_url": {"url": image_url}}],
                        }
                    ],
                },
            )
            return r.status_code, (r.json().get("error") or {}).get("code")

        backend = TorchBackend(tiny.model)
        with served(backend, tiny.tokenizer_path, tiny.spec) as url:  # defaults: no files, no URLs
            assert status(url, str(allowed / "shot.png")) == (
                400,
                "media_path_not_allowed",
            )
            assert status(url, f"{web}/screens/shot.png") == (
                400,
                "media_url_not_allowed",
            )
        with served(
            backend,
            tiny.tokenizer_path,
            tiny.spec,
            allowed_media_paths=(allowed,),
            allowed_media_urls=(f"{web}/screens/",),
        ) as url:
            assert status(url, str(allowed / "shot.png")) == (200, None)
            assert status(url, (allowed / "shot.png").as_uri()) == (200, None)
            assert status(url, str(allowed / ".." / "private" / "secret.png")) == (
                400,
                "media_path_not_allowed",
            )
            assert status(url, str(allowed / "link.png")) == (
                400,
                "media_path_not_allowed",
            )
            assert status(url, f"{web}/screens/shot.png") == (200, None)
            assert status(url, f"{web}/other/shot.png") == (
                400,
                "media_url_not_allowed",
            )
            assert status(url, f"{web}/screens/jump") == (
                400,
                "media_fetch_failed",
            )  # no redirects out of the prefix
    finally:
        http_server.shutdown()


# ------------------------------------------------------------------------- queue, cancellation, timeout


def test_disconnect_cancels_at_the_next_token(tiny):
    slow = Slow(TorchBackend(tiny.model), 0.02, tiny.spec.eos_token_ids)
    with served(slow, tiny.tokenizer_path, tiny.spec) as url:
        body = {
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 400,
            "temperature": 0,
            "stream": True,
        }
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
            lines = r.iter_lines()
            got = [next(lines) for _ in range(6)]
        assert any('"content"' in line for line in got)
        wait_idle(url)
        calls = slow.calls
        time.sleep(0.2)
        assert slow.calls == calls < 100  # stopped long before max_tokens, and stays stopped
        with pytest.raises(httpx.ReadTimeout):  # a non-streaming client that gives up
            httpx.post(
                f"{url}/v1/chat/completions",
                json={**body, "stream": False},
                timeout=0.5,
            )
        wait_idle(url)
        assert slow.calls - calls < 100
        assert client(url).chat.completions.create(model=MODEL, messages=body["messages"], max_tokens=2).choices


def test_queue_full_gets_429_and_timeouts_get_504(tiny):
    slow = Slow(TorchBackend(tiny.model), 0.05, tiny.spec.eos_token_ids)
    body = {
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 12,
        "temperature": 0,
        "frequency_penalty": 2.0,
    }
    with served(slow, tiny.tokenizer_path, tiny.spec, max_queue=1) as url:
        with httpx.Client(timeout=30) as h:
            statuses = []
            threads = [
                threading.Thread(target=lambda: statuses.append(h.post(f"{url}/v1/chat/completions", json=body)))
                for _ in range(4)
            ]
            for t in threads:
                t.start()
                time.sleep(0.05)
            for t in threads:
                t.join()
        codes = sorted(r.status_code for r in statuses)
        assert codes == [
            200,
            200,
            429,
            429,
        ]  # one running, one waiting, the rest refused
        refused = next(r for r in statuses if r.status_code == 429)
        assert error_of(refused)["type"] == "rate_limit_error" and error_of(refused)["code"] == "queue_full"
        assert refused.headers["retry-after"] == "1"
    with served(slow, tiny.tokenizer_path, tiny.spec, request_timeout=0.4) as url:
        r = httpx.post(f"{url}/v1/chat/completions", json={**body, "max_tokens": 200})
        assert r.status_code == 504 and error_of(r)["code"] == "request_timeout"
        with pytest.raises(openai.APIError, match="timed out"):
            stream_text(
                client(url),
                messages=body["messages"],
                max_tokens=200,
                frequency_penalty=2.0,
            )
        wait_idle(url)


# ------------------------------------------------------------------------------ the CLI under load


@contextlib.contextmanager
def serve_command(bundle: Path, *args: str):
    """`autoglm-export serve BUNDLE --port 0 ...` in a subprocess; yields (url, pid)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "export"), str(ROOT / "runtime")]),
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "autoglm_export.cli",
            "serve",
            str(bundle),
            "--port",
            "0",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            found = re.search(r"on (http://127\.0\.0\.1:\d+)/v1", line)
            if found:
                break
        assert found, "".join(lines)
        threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep the pipe drained
        url = found.group(1)
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{url}/health").raise_for_status()
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def load(url: str, clients: int, requests_each: int, max_tokens: int = 8) -> list:
    """Concurrent streaming clients, each sending requests one after another; returns outcomes."""
    c = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="EMPTY", max_retries=0, timeout=120)

    async def one(i):
        out = []
        for j in range(requests_each):
            try:
                stream = await c.chat.completions.create(
                    model=MODEL,
                    stream=True,
                    temperature=0,
                    max_tokens=max_tokens,
                    messages=[
                        {
                            "role": "user",
                            "content": f"第{i}个用户的第{j}个任务：打开设置",
                        }
                    ],
                )
                chunks = [ch async for ch in stream]
                out.append(("ok", chunks[-1].choices[0].finish_reason))
            except openai.APIStatusError as e:
                out.append((e.status_code, e.body))
        return out

    try:
        return [o for outs in await asyncio.gather(*(one(i) for i in range(clients))) for o in outs]
    finally:
        await c.close()


def test_load_queue_limit_and_memory(onnx_bundle):
    with serve_command(onnx_bundle, "--max-queue", "32") as (url, pid):
        outcomes = asyncio.run(load(url, clients=16, requests_each=4))
        assert len(outcomes) == 64 and all(o[0] == "ok" and o[1] in ("stop", "length") for o in outcomes), outcomes
        server = psutil.Process(pid)
        asyncio.run(load(url, clients=4, requests_each=5))  # 20 more: the warm state
        after_20 = server.memory_info().rss
        asyncio.run(load(url, clients=4, requests_each=45))  # 180 more: 200 after the warm-up
        after_200 = server.memory_info().rss
        print(f"server RSS after 20 requests {after_20 / 2**20:.1f} MiB, after 200 {after_200 / 2**20:.1f} MiB")
        assert abs(after_200 - after_20) < 6 * 2**20, (after_20, after_200)
    with serve_command(onnx_bundle, "--max-queue", "4") as (url, _):
        outcomes = asyncio.run(load(url, clients=16, requests_each=4))
    refused = [o for o in outcomes if o[0] != "ok"]
    assert len(outcomes) == 64 and refused and len(refused) < 64
    assert all(o[0] == 429 and o[1]["code"] == "queue_full" for o in refused)

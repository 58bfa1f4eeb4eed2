"""Golden traces of the demo apps' replay tests: a few requests through a bundle's Python runtime.

    python tests/demo/golden_traces.py BUNDLE OUT_DIR

writes OUT_DIR/inputs/ (a screenshot, a 44.1 kHz stereo WAV made from a calibration clip so the
apps' resampler and channel mixing are exercised) and OUT_DIR/<name>.json per request. Runtime only:
the same code runs for dist/android (ExecuTorch) and dist/ios (Core ML).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import wave
from pathlib import Path

import numpy as np

from autoglm_runtime.backends import backend_for_bundle
from autoglm_runtime.bundle import open_bundle
from autoglm_runtime.preprocess import load_wav
from autoglm_runtime.trace import trace_request, write_trace

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "calibration_data"

# A system prompt long enough that the prompt runs past max_seq_len: prefill and embedding chunk.
AGENT_SYSTEM = (
    "You are a phone agent. Read the task, look at the screen and answer with one action. "
    'Actions: do(action="Tap", element=[x, y]), do(action="Swipe", start=[x1, y1], end=[x2, y2]), '
    'do(action="Type", text="..."), do(action="Launch", app="..."), do(action="Back"), '
    'do(action="Home"), do(action="Wait"), finish(message="..."). Coordinates run from 0 to 999 '
    "across the screen's width and height. Think first, then answer. 先思考，再回答。"
)

REQUESTS = [
    {
        "name": "text-zh",
        "prompt": "请帮我打开微信并且发送消息给李四，告诉他明天的会议改到下午三点。",
        "max_new_tokens": 24,
    },
    {
        "name": "text-zh-long-system",
        "prompt": "请帮我打开微信并且发送消息给李四，告诉他明天的会议改到下午三点。",
        "system": AGENT_SYSTEM,
        "thinking": False,
        "max_new_tokens": 24,
    },
    {
        "name": "image-en",
        "prompt": "Search Taobao for a waterproof phone case under 50 yuan.",
        "image": "chrome-search-en.png",
        "max_new_tokens": 24,
    },
    {
        "name": "image-audio-zh",
        "prompt": "打开设置",
        "image": "didi-ride-zh.png",
        "audio": "speech-44k-stereo.wav",
        "thinking": False,
        "max_new_tokens": 24,
    },
]


def write_stereo_44k(src: Path, dst: Path) -> None:
    """A 44.1 kHz 16-bit stereo WAV from a 16 kHz clip (linear interpolation; right channel quieter)."""
    mono, rate = load_wav(src)
    t_out = np.arange(int(len(mono) * 44100 / rate)) / 44100
    up = np.interp(t_out, np.arange(len(mono)) / rate, mono)
    stereo = np.stack([up, 0.6 * up], axis=1)
    pcm = np.clip(np.round(stereo * 32767), -32768, 32767).astype("<i2")
    with wave.open(str(dst), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(44100)
        w.writeframes(pcm.tobytes())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("out", type=Path)
    args = ap.parse_args(argv)
    inputs = args.out / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    for name in ("chrome-search-en.png", "didi-ride-zh.png"):
        shutil.copyfile(DATA / "screenshots" / name, inputs / name)
    write_stereo_44k(DATA / "speech" / "zh-wechat-send.wav", inputs / "speech-44k-stereo.wav")
    bundle = open_bundle(args.bundle)
    for req in REQUESTS:
        if req.get("audio") and not bundle.spec.has_audio:
            continue
        trace = trace_request(
            bundle,
            backend_for_bundle(bundle),  # a fresh backend per request: the recorder hooks one instance
            req["prompt"],
            image=inputs / req["image"] if req.get("image") else None,
            audio=inputs / req["audio"] if req.get("audio") else None,
            system=req.get("system"),
            max_new_tokens=req["max_new_tokens"],
            enable_thinking=req.get("thinking"),
        )
        trace["name"] = req["name"]
        write_trace(trace, args.out / f"{req['name']}.json")
        print(
            f"{args.out / req['name']}.json: {len(trace['prompt']['input_ids'])} prompt tokens, "
            f"{len(trace['calls'])} calls, generated {trace['generated']['token_ids']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

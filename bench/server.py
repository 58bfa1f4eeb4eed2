"""The OpenAI-compatible server (`autoglm-export serve`) against `run` on the same bundle.

Measures, on one bundle, with the same prompt (system prompt + one screenshot + a task) and greedy
settings:

- `run`: the reference runtime in-process, exactly as `autoglm-export run BUNDLE` drives it
  (`Session.generate`): time to first token from the call, decode tokens/s after it;
- the server: `serve` in a child process on 127.0.0.1, called through the official `openai` SDK
  with `stream=True`: time to first token from the request, tokens/s between the first and the
  last streamed token (prefix reuse off, so every request prefills its whole prompt);
- prefix reuse: time to first token of a phone agent's second turn (system prompt + the first
  turn as text history + a new screenshot), with and without `--prefix-reuse`.

Bundles without a tokenizer (the `small` preset's, whose weights are random) are served with the
tiny tokenizer, its `<|image|>` id standing in for the bundle's (the image rows' embeddings are
replaced by the vision tower's output anyway); their EOS id is then never sampled in practice,
so every request decodes --max-tokens tokens.

    .venv/bin/python bench/server.py --bundle dist/onnx --markdown
    .venv/bin/python bench/server.py --preset small --target onnx --markdown   # exports first
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from common import (
    REPO,
    LoadMonitor,
    describe_load,
    machine_info,
    markdown_table,
    new_run,
    update_markdown_section,
    utc_now,
    write_json,
)

TINY_TOKENIZER = REPO / "export/autoglm_export/presets/tiny/tokenizer.json"
MODEL = "autoglm-phone-9b"
SERVER_CPU_S: list[float] = []  # CPU seconds of each server child, measured as it stops
SYSTEM_LINE = "你是一个手机智能体，根据屏幕截图和任务，输出下一步操作。"
TASK = "打开微信，给张三发消息：今晚七点见"


# ------------------------------------------------------------------------------------------- the model


def open_model(bundle: Path, tokenizer: Path | None):
    """backend, tokenizer path, spec, prefill chunk: as `serve`/`run` open a bundle, plus the
    stand-in tokenizer for bundles that have none."""
    from autoglm_runtime.backends import backend_for_bundle
    from autoglm_runtime.bundle import open_bundle
    from autoglm_runtime.tokenizer import Tokenizer

    b = open_bundle(bundle)
    backend, spec = backend_for_bundle(b), b.spec
    tok_path = tokenizer or b.tokenizer_path or TINY_TOKENIZER
    if tok_path != b.tokenizer_path:
        stand_in = Tokenizer(tok_path)
        spec = dataclasses.replace(spec, image_token_id=stand_in.token_to_id("<|image|>"))
        backend = WithinVocab(backend, stand_in.vocab_size)
    return backend, tok_path, spec, b.manifest.get("max_seq_len")


class WithinVocab:
    """A bundle's backend whose logits past a stand-in tokenizer's vocabulary are masked, so a
    random-weight model only samples tokens the tokenizer can print."""

    def __init__(self, inner, vocab: int):
        self.inner, self.vocab, self.name = inner, vocab, inner.name

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def text_decoder(self, embeds, cache_position, position_ids):
        logits = self.inner.text_decoder(embeds, cache_position, position_ids)
        logits[..., self.vocab :] = -1e9
        return logits


def screenshot(shade: int = 0):
    from autoglm_export.calibration import synthetic_screenshot

    img = synthetic_screenshot()
    img.paste((shade, 120, 200), (0, 0, 60, 60))
    return img


def png_data_url(img) -> str:
    import base64

    buf = io.BytesIO()
    img.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def system_prompt(tokenizer_path: Path, tokens: int) -> str:
    from autoglm_runtime.tokenizer import Tokenizer

    tok, text = Tokenizer(tokenizer_path), ""
    while len(tok.encode(text)) < tokens:
        text += SYSTEM_LINE
    return text


# ---------------------------------------------------------------------------------------- the run leg


def run_once(session, system: str, max_tokens: int) -> dict:
    """One generation as `autoglm-export run` does it; times from the call."""
    first = []
    start = time.perf_counter()
    result = session.generate(
        TASK,
        image=screenshot(),
        system=system,
        max_new_tokens=max_tokens,
        on_token=lambda _: first.append(time.perf_counter()),
    )
    n = len(result.token_ids)
    return {
        "ttft_s": first[0] - start,
        "total_s": first[-1] - start,
        "tokens_per_s": (n - 1) / (first[-1] - first[0]) if n > 1 else None,
        "tokens": n,
        "prompt_tokens": result.prompt_tokens,
    }


# ------------------------------------------------------------------------------------- the server legs


@contextlib.contextmanager
def child_server(args, prefix_reuse: bool):
    """This script in --child-serve mode: the server on 127.0.0.1:<free port>, in its own process."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "export"), str(REPO / "runtime")]),
    }
    cmd = [
        sys.executable,
        __file__,
        "--child-serve",
        "--bundle",
        str(args.bundle),
        "--prefix-reuse" if prefix_reuse else "--no-prefix-reuse",
    ]
    if args.tokenizer:
        cmd += ["--tokenizer", str(args.tokenizer)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            found = re.search(r"on (http://127\.0\.0\.1:\d+)/v1", line)
            if found:
                break
        else:
            raise RuntimeError("the server did not start:\n" + "".join(lines))
        import threading

        import httpx

        threading.Thread(target=proc.stdout.read, daemon=True).start()
        url = found.group(1)
        for _ in range(300):
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(f"{url}/health").raise_for_status()
                break
            time.sleep(0.1)
        yield url, proc.pid
    finally:
        with contextlib.suppress(Exception):  # its CPU time, so the load report can leave it out
            times = psutil.Process(proc.pid).cpu_times()
            SERVER_CPU_S.append(times.user + times.system)
        proc.terminate()
        proc.wait(timeout=30)


def stream_once(client, messages, max_tokens: int) -> dict:
    """One streamed request; times from the request to the first and last streamed text."""
    start = time.perf_counter()
    first = last = None
    usage = None
    text = []
    for chunk in client.chat.completions.create(
        model=MODEL,
        messages=messages,
        stream=True,
        temperature=0,
        max_tokens=max_tokens,
        stream_options={"include_usage": True},
    ):
        if chunk.usage is not None:
            usage = chunk.usage
        if chunk.choices and chunk.choices[0].delta.content:
            last = time.perf_counter()
            first = first or last
            text.append(chunk.choices[0].delta.content)
    n = usage.completion_tokens
    return {
        "ttft_s": first - start,
        "total_s": last - start,
        "tokens_per_s": (n - 1) / (last - first) if n > 1 and last > first else None,
        "tokens": n,
        "prompt_tokens": usage.prompt_tokens,
        "cached_tokens": usage.prompt_tokens_details.cached_tokens,
        "text": "".join(text),
    }


def bench_paired(model, url: str, system: str, max_tokens: int, runs: int, warmup: int) -> tuple[dict, dict]:
    """`run` and the server in alternation, so both see the same machine load."""
    import openai

    from autoglm_runtime.session import Session

    backend, tok, spec, chunk = model
    session = Session(backend, tok, spec, prefill_chunk=chunk)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="EMPTY", max_retries=0, timeout=600)
    messages = [
        {"role": "system", "content": system},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": png_data_url(screenshot())}},
                {"type": "text", "text": TASK},
            ],
        },
    ]
    runs_, served = [], []
    for i in range(warmup + runs):
        a, b = (
            run_once(session, system, max_tokens),
            stream_once(client, messages, max_tokens),
        )
        if i >= warmup:
            runs_.append(a)
            served.append(b)
    keys = ("ttft_s", "total_s", "tokens_per_s", "tokens", "prompt_tokens")
    return (
        {k: [r[k] for r in runs_] for k in keys},
        {k: [r[k] for r in served] for k in keys},
    )


def agent_turns(system: str, turn: int, reply: str):
    first = [
        {"role": "system", "content": system},
        {
            "role": "user",
            "content": [
                {
                    "type": "image_url",
                    "image_url": {"url": png_data_url(screenshot(turn))},
                },
                {"type": "text", "text": TASK},
            ],
        },
    ]
    second = [
        {"role": "system", "content": system},
        {"role": "user", "content": [{"type": "text", "text": TASK}]},
        {"role": "assistant", "content": reply},
        {
            "role": "user",
            "content": [
                {
                    "type": "image_url",
                    "image_url": {"url": png_data_url(screenshot(turn + 100))},
                },
                {"type": "text", "text": '** Screen Info **\n{"current_app": "微信"}'},
            ],
        },
    ]
    return first, second


def bench_second_turn(url: str, system: str, max_tokens: int, runs: int, warmup: int) -> dict:
    """Each round: a fresh task's first turn, then its second turn, which is what is timed."""
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="EMPTY", max_retries=0, timeout=600)
    results = []
    for i in range(warmup + runs):
        first, _ = agent_turns(system, i, "")
        reply = stream_once(client, first, max_tokens)["text"]
        _, second = agent_turns(system, i, reply)
        if i >= warmup:
            results.append(stream_once(client, second, max_tokens))
    return {key: [r[key] for r in results] for key in ("ttft_s", "prompt_tokens", "cached_tokens")}


# ------------------------------------------------------------------------------------------ reporting


def med(values) -> float:
    values = [v for v in (values if isinstance(values, list) else [values]) if v is not None]
    return statistics.median(values) if values else float("nan")


def ms_range(values: list) -> str:
    """Median, and the fastest / slowest run, in ms."""
    return f"{med(values) * 1e3:.1f} ms ({min(values) * 1e3:.0f}-{max(values) * 1e3:.0f})"


def spread_ms(values: list) -> float:
    return (max(values) - min(values)) * 1e3


def overhead(run: dict, served: dict) -> str:
    """What the numbers say about the server's cost, in one paragraph."""
    first = (med(served["ttft_s"]) - med(run["ttft_s"])) * 1e3
    last = (med(served["total_s"]) - med(run["total_s"])) * 1e3
    text = (
        f"The server's cost over `run` (medians): {first:+.1f} ms to the first token (HTTP, JSON, the "
        f"screenshot's base64 and PNG decoding; `run` is handed the image), {last:+.1f} ms to the last."
    )
    spread = max(spread_ms(run["ttft_s"]), spread_ms(served["ttft_s"]))
    if abs(first) < spread:
        text += (
            f" Under this load both are within the run-to-run spread ({spread:.0f} ms between the "
            "fastest and slowest first token of one path)."
        )
    if med(served["tokens_per_s"]) > 1.2 * med(run["tokens_per_s"]):
        text += (
            " Its decode rate reads higher than `run`'s although the work is the same: at a few ms "
            "per token the Python decode loop holds the GIL for several steps, the event loop sends "
            "the first tokens late and in bursts, so the first-to-last interval shrinks; compare the "
            "time to the last token instead."
        )
    return text


def markdown(result: dict) -> str:
    r, s, reuse, plain = (
        result["run"],
        result["server"],
        result["reuse"],
        result["no_reuse"],
    )
    m = result["machine"]
    rows = [
        [
            name,
            ms_range(x["ttft_s"]),
            f"{med(x['tokens_per_s']):.1f}",
            ms_range(x["total_s"]),
            f"{med(x['prompt_tokens']):.0f} / {med(x['tokens']):.0f}",
        ]
        for name, x in (
            ("`run` (Session in-process)", r),
            ("server, openai SDK streaming", s),
        )
    ]
    turn_rows = [
        [
            "off (`--no-prefix-reuse`)",
            ms_range(plain["ttft_s"]),
            f"{med(plain['prompt_tokens']):.0f}",
            f"{med(plain['cached_tokens']):.0f}",
        ],
        [
            "on (default)",
            ms_range(reuse["ttft_s"]),
            f"{med(reuse['prompt_tokens']):.0f}",
            f"{med(reuse['cached_tokens']):.0f}",
        ],
    ]
    return "\n".join(
        [
            f"## Serving: `autoglm-export serve` vs `run`, {result['label']}",
            "",
            f"- Command: `{result['run_info']['command']}`",
            f"- Date: {result['date']}",
            f"- Bundle: {result['label']}; tokenizer: {result['tokenizer']}",
            (
                f"- Machine: {m['cpu_model']}, {m['usable_cores']} cores; the server in its own process, the client "
                "in the benchmark's"
            ),
            f"- Load while timing: {describe_load(result['load'])} (the server processes excluded)",
            (
                f"- Prompt: system prompt + one {result['image']} screenshot + a task, greedy, max_tokens "
                f"{result['max_tokens']}; median of {result['runs']} runs after {result['warmup']} warm-up, `run` and the "
                "server alternating; times from the call (`run`) or the request (server) to the first / last token's text"
            ),
            "",
            markdown_table(
                [
                    "path",
                    "time to first token (min-max)",
                    "decode tokens/s",
                    "time to last token (min-max)",
                    "prompt / generated tokens",
                ],
                rows,
            ),
            "",
            overhead(r, s),
            "",
            (
                "Second turn of a phone agent (system prompt, the first turn as text history, a new screenshot): "
                "time to first token with and without prefix reuse (the KV cache of the longest common token "
                "prefix with the previous request is kept; only the rest is prefilled)."
            ),
            "",
            markdown_table(
                [
                    "prefix reuse",
                    "time to first token (min-max)",
                    "prompt tokens",
                    "reused (cached) tokens",
                ],
                turn_rows,
            ),
        ]
    )


# ----------------------------------------------------------------------------------------------- main


def export_bundle(preset: str, target: str, out: Path) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "autoglm_export.cli",
        target,
        "--preset",
        preset,
        "--out",
        str(out),
        "--no-validate",
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "export"), str(REPO / "runtime")]),
    }
    subprocess.run(cmd, check=True, env=env)
    return out


def child_serve(args) -> None:
    from autoglm_runtime.server import ServerConfig, serve

    backend, tok, spec, chunk = open_model(args.bundle, args.tokenizer)
    config = ServerConfig(prefix_reuse=args.prefix_reuse)
    serve(
        backend,
        tok,
        spec,
        config,
        host="127.0.0.1",
        port=0,
        prefill_chunk=chunk,
        log_level="warning",
        announce=lambda line: print(line, flush=True),
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--bundle",
        type=Path,
        help="an exported bundle (else --preset/--target export one)",
    )
    p.add_argument(
        "--preset",
        default="tiny",
        help="the preset to export, or the one --bundle was exported from",
    )
    p.add_argument("--target", default="onnx", choices=["onnx", "android"])
    p.add_argument("--tokenizer", type=Path, help="default: the bundle's, else the tiny preset's")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument(
        "--system-tokens",
        type=int,
        help="system prompt length (default: a third of the context)",
    )
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--out", type=Path)
    p.add_argument("--markdown", action="store_true", help="write the section into BENCHMARKS.md")
    p.add_argument(
        "--from-json",
        type=Path,
        help="re-render the section of a saved run (--out), measuring nothing",
    )
    p.add_argument("--child-serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument(
        "--prefix-reuse",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=argparse.SUPPRESS,
    )
    args = p.parse_args()
    if args.child_serve:
        return child_serve(args)
    if args.from_json:  # re-render a saved run, measuring nothing
        result = json.loads(args.from_json.read_text())
        return report(result, args.markdown and f"server:{args.preset}", None)

    run_info = new_run(["run", "server", "prefix-reuse"])
    with tempfile.TemporaryDirectory() as tmp:
        if args.bundle is None:
            args.bundle = export_bundle(args.preset, args.target, Path(tmp) / args.target)
        target = backend_name(args)
        label = f"preset `{args.preset}`, {target} bundle"
        model = open_model(args.bundle, args.tokenizer)
        _, tok, spec, _ = model
        system = system_prompt(tok, args.system_tokens or spec.max_context // 3)
        monitor = LoadMonitor()
        with child_server(args, prefix_reuse=False) as (url, _):
            run, server = bench_paired(model, url, system, args.max_tokens, args.runs, args.warmup)
            no_reuse = bench_second_turn(url, system, 16, args.runs, args.warmup)
        with child_server(args, prefix_reuse=True) as (url, _):
            reuse = bench_second_turn(url, system, 16, args.runs, args.warmup)
        load = monitor.stop()
    # LoadMonitor counts every process but this one: take the server children out as well
    load["other_cores"] = max(load["other_cores"] - sum(SERVER_CPU_S) / load["wall_s"], 0.0)
    result = {
        "run_info": run_info,
        "date": utc_now(),
        "label": label,
        "backend": target,
        "tokenizer": "the bundle's"
        if Path(tok) != TINY_TOKENIZER or args.preset == "tiny"
        else "the tiny preset's, standing in (the bundle has none)",
        "image": f"{spec.image.height}x{spec.image.width} ({spec.image_tokens} tokens)",
        "machine": machine_info(threads=os.cpu_count()),
        "load": load,
        "max_tokens": args.max_tokens,
        "runs": args.runs,
        "warmup": args.warmup,
        "run": run,
        "server": server,
        "no_reuse": no_reuse,
        "reuse": reuse,
    }
    report(result, args.markdown and f"server:{args.preset}", args.out)


def report(result: dict, section: str | None, out: Path | None) -> None:
    text = markdown(result)
    print(text)
    if out:
        write_json(out, result)
    if section:
        update_markdown_section(section, text)


def backend_name(args) -> str:
    return json.loads((Path(args.bundle) / "manifest.json").read_text()).get("target", "?")


if __name__ == "__main__":
    main()

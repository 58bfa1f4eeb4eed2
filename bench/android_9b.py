"""AutoGLM-Phone-9B on this machine: an exported ExecuTorch bundle timed next to its bandwidth floor.

    tools/make_real_checkpoint.py --out /data/autoglm-phone-9b-random            # 20.6 GB, once
    /usr/bin/time -v autoglm-export android --checkpoint /data/autoglm-phone-9b-random \\
        --out /data/android-9b 2> /data/android-9b.time                          # the export
    .venv/bin/python bench/android_9b.py --bundle /data/android-9b --export-time /data/android-9b.time --markdown

The export is not repeated here (about 15 min without validation, 45 with it on 2 cores): its wall
time and peak RSS come from ``/usr/bin/time -v``'s report (``--export-time``) and its stage times
from the manifest. Measured in this process, in order:

1. load: ``ExecuTorchBackend`` on the bundle (the program memory-mapped, metadata read), then the
   first decoder call (XNNPACK packs the decoder's weights when the method is loaded);
2. through ``harness.backend_timing.measure_backend``: prefill tokens/s (random embeddings, chunks
   of the export's ``max_seq_len``), decode ms/token (one token per step, the embedding call
   included), the vision encoder at the export resolution;
3. the decode floor: bytes one decode step reads (every decoder layer's packed int4 weights and
   scales, the lm_head, one embedding row: ``android_floor.byte_model``) / the streaming-read
   bandwidth measured in this run; decode ÷ floor;
4. RSS after loading and the peak while generating.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
from android_floor import byte_model, kv_read_bytes
from harness import results
from harness.backend_timing import measure_backend
from harness.load import LoadMonitor, describe_load
from harness.machine import machine_info, memory_bandwidth
from harness.markdown import markdown_table
from harness.memory import current_rss_bytes, peak_rss_bytes
from harness.paths import default_results
from rich.console import Console

GB = 1e9


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, required=False, help="the exported 9B android bundle")
    p.add_argument("--export-time", type=Path, default=None, help="/usr/bin/time -v report of the export")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prefill-tokens", type=int, default=128)
    p.add_argument("--decode-tokens", type=int, default=16)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--budget-s", type=float, default=240.0, help="time budget per measurement")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--from-json", type=Path, default=None)
    return p.parse_args(argv)


def time_report(path: Path | None) -> dict | None:
    """Wall time and peak RSS from a ``/usr/bin/time -v`` report, and the anonymous peak from the
    export's stage lines when the report holds its log too (RSS counts the memory-mapped checkpoint
    and scratch pages, which the kernel can take back; anonymous memory it cannot)."""
    if path is None:
        return None
    text = path.read_text(errors="replace")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    seconds = None
    if wall:
        parts = [float(x) for x in wall.group(1).split(":")]
        seconds = sum(v * 60**i for i, v in enumerate(reversed(parts)))
    anonymous = [float(x) for x in re.findall(r"anonymous [\d.]+ GB, peak ([\d.]+) GB", text)]
    return {
        "peak_rss_bytes": int(rss.group(1)) * 1024 if rss else None,
        "anonymous_peak_bytes": max(anonymous) * GB if anonymous else None,
        "wall_s": seconds,
    }


def export_cell(tr: dict) -> str:
    """The "export wall / peak RSS" cell of every 9B benchmark table."""
    cell = f"{tr.get('wall_s', 0) / 60:.1f} min / {(tr.get('peak_rss_bytes') or 0) / GB:.2f} GB"
    if tr.get("anonymous_peak_bytes"):
        cell += f" (anonymous {tr['anonymous_peak_bytes'] / GB:.1f} GB)"
    return cell


def measure(args) -> dict:
    import torch

    from autoglm_export.request import ModelRequest
    from autoglm_runtime.backends import backend_for_bundle
    from autoglm_runtime.bundle import open_bundle

    torch.set_num_threads(args.threads)
    console = Console(stderr=True)
    bundle = open_bundle(args.bundle)  # checks every file's size and sha256 first
    manifest = bundle.manifest
    monitor = LoadMonitor()
    t0 = time.perf_counter()
    backend = backend_for_bundle(bundle)
    load_s = time.perf_counter() - t0
    hidden = manifest["model"]["text"]["hidden_size"] if "text" in manifest.get("model", {}) else 4096
    pixels = tuple(manifest["methods"]["vision_encoder"]["inputs"][0]["shape"])
    t1 = time.perf_counter()
    backend.text_decoder(np.zeros((1, 1, hidden), np.float32), np.array([0]), np.zeros((3, 1), np.int64))
    first_call_s = time.perf_counter() - t1
    rss_loaded = current_rss_bytes()
    timing = measure_backend(
        backend,
        label="executorch",
        hidden=hidden,
        n_prefill=args.prefill_tokens,
        n_decode=args.decode_tokens,
        chunk=int(manifest["max_seq_len"]),
        warmup=args.warmup,
        runs=args.runs,
        pixels=np.random.default_rng(0).standard_normal(pixels, dtype=np.float32),
        mel=None,
        budget_s=args.budget_s,
        console=console,
    )
    peak_generating = peak_rss_bytes()
    load = monitor.stop()
    del backend
    bandwidth = memory_bandwidth(args.threads)
    request = ModelRequest.from_dict(manifest["source"])
    meta = request.open(weights=False)
    q = manifest["quantization"]
    recipe = q["recipe"]
    bm = byte_model(meta.model, q["layers"], int(recipe["group_size"]), str(recipe["embedding"]))
    positions = args.prefill_tokens + timing["decode"]["steps"] / 2
    read = bm["text"]["decode_read_bytes"] + kv_read_bytes(meta.config, positions)
    floor_ms = read / (bandwidth["best_gbps"] * GB) * 1e3
    decode_ms = timing["decode"]["ms_per_token_with_embedding"]["median"]
    files = {name: f["bytes"] for name, f in manifest["files"].items()}
    return {
        **results.header("android_9b", args, str(args.out), machine=machine_info(args.threads), load=load),
        "bundle": str(args.bundle),
        "recipe": recipe,
        "files": files,
        "model_bytes": sum(v for k, v in files.items() if k.startswith("model.")),
        "export": {"stage_seconds": manifest.get("stage_seconds"), "time": time_report(args.export_time)},
        "validated": manifest.get("validated"),
        "reference_check": manifest.get("reference_check"),
        "load_s": load_s,
        "first_decoder_call_s": first_call_s,
        "rss_loaded_bytes": rss_loaded,
        "peak_rss_generating_bytes": peak_generating,
        "timing": timing,
        "bandwidth": bandwidth,
        "decode_read_bytes": read,
        "floor_ms": floor_ms,
        "decode_over_floor": decode_ms / floor_ms,
    }


def render(r: dict) -> str:
    t, ex = r["timing"], r["export"]
    tr = ex.get("time") or {}
    rows = [
        [
            "bundle (model files)",
            f"{r['model_bytes'] / GB:.2f} GB ({', '.join(f'{k} {v / GB:.2f} GB' for k, v in r['files'].items() if k.startswith('model.'))})",
        ],
        ["recipe", ", ".join(f"{k} {v}" for k, v in r["recipe"].items())],
        [
            "export wall / peak RSS",
            export_cell(tr) if tr else "not recorded",
        ],
        [
            "export stages (s)",
            ", ".join(f"{k.split(' ')[0]} {v:.0f}" for k, v in (ex.get("stage_seconds") or {}).items()),
        ],
        ["validated (parity gate)", str(r["validated"])],
        ["load (program + metadata)", f"{r['load_s']:.2f} s"],
        ["first decoder call (method load: XNNPACK packs weights)", f"{r['first_decoder_call_s']:.1f} s"],
        [
            "RSS after load / peak while generating",
            f"{r['rss_loaded_bytes'] / GB:.2f} GB / {r['peak_rss_generating_bytes'] / GB:.2f} GB",
        ],
        [
            "prefill",
            f"{t['prefill']['tokens_per_s']:.1f} tokens/s ({t['prefill']['tokens']} tokens, chunks of {t['prefill']['chunk']})",
        ],
        [
            "decode (embedding call included)",
            f"{t['decode']['ms_per_token_with_embedding']['median']:.0f} ms/token (median of {t['decode']['steps']})",
        ],
        [
            "decode floor (bytes read / bandwidth)",
            f"{r['floor_ms']:.0f} ms ({r['decode_read_bytes'] / GB:.2f} GB at {r['bandwidth']['best_gbps']:.1f} GB/s)",
        ],
        ["decode / floor", f"{r['decode_over_floor']:.2f}x"],
        ["vision encoder, one image", f"{t['vision_encoder']['ms']['median']:.0f} ms"],
    ]
    lines = [
        "## AutoGLM-Phone-9B (10.3B parameters, random weights with the real config): ExecuTorch on this machine",
        "",
        f"- Command: `{r['command']}`",
        f"- Date: {r['date']}; machine: {r['machine']['cpu_model']}, {r['machine']['usable_cores']} cores, "
        f"{r['machine']['threads']} threads",
        f"- Load while timing: {describe_load(r['load'])}",
        "- The checkpoint is made by `tools/make_real_checkpoint.py` (never committed); the export command is in the script's docstring.",
        "",
        markdown_table(["", "measured"], rows),
        "",
        "The export rows are what `--export-time` recorded for that run, on whatever else the host ran then",
        "(the load line is this timing run's only); the stage lines of its log say where the peak was. Random",
        "weights, so only speed and memory are meaningful here. decode / floor is within this run.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.from_json:
        data = json.loads(args.from_json.read_text())
    else:
        if args.bundle is None:
            print("error: --bundle DIR is required (or --from-json FILE)", file=sys.stderr)
            return 1
        args.out = args.out or default_results("android-9b", "autoglm-phone-9b")
        data = measure(args)
    results.publish(args, data, args.out or args.from_json, "android:autoglm-phone-9b", render(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())

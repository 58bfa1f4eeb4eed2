"""AutoGLM-Phone-9B on this machine: an exported ONNX bundle timed in onnxruntime next to its bandwidth floor.

    tools/make_real_checkpoint.py --out /data/autoglm-phone-9b-random            # 20.6 GB, once
    /usr/bin/time -v autoglm-export onnx --checkpoint /data/autoglm-phone-9b-random \\
        --out /data/onnx-9b --no-validate 2> /data/onnx-9b.time                  # the export
    .venv/bin/python bench/onnx_9b.py --bundle /data/onnx-9b --export-time /data/onnx-9b.time --markdown

The export is not repeated here: its wall time and peak RSS come from ``/usr/bin/time -v``'s report
(``--export-time``, parsed as ``android_9b.time_report`` does) and its stage times from the manifest.
Measured in this process, in order:

1. load: ``OnnxBackend`` on the bundle (one onnxruntime session per component; the external data
   memory-mapped, MatMulNBits' weights repacked once), RSS after it, then the first decoder call;
2. through ``harness.backend_timing.measure_backend``: prefill tokens/s, decode ms/token (one token
   per step, the embedding call included), the vision encoder at the export resolution;
3. the decode floor: bytes one decode step must read / the streaming-read bandwidth measured in this
   run. The bytes: every weight of ``text_decoder`` (its external data file: int4 blocks + fp32 scales,
   norms, biases, the lm_head) plus the KV cache attention reads: the slots in use at the decode steps'
   mean position for a GroupQueryAttention graph (its metadata says ``autoglm.kv_cache: in_place``), the
   whole static cache for older graphs, which attend over every slot, masked ones included;
4. the peak RSS while generating.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from android_9b import export_cell, time_report
from harness import results
from harness.backend_timing import measure_backend
from harness.load import LoadMonitor, describe_load
from harness.machine import machine_info, memory_bandwidth
from harness.markdown import markdown_table
from harness.memory import current_rss_bytes, peak_rss_bytes
from harness.paths import default_results
from onnx_runtime_sizes import kv_read_bytes
from rich.console import Console

GB = 1e9


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, required=False, help="the exported 9B onnx bundle")
    p.add_argument("--export-time", type=Path, default=None, help="/usr/bin/time -v report of the export")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prefill-tokens", type=int, default=64)
    p.add_argument("--decode-tokens", type=int, default=8)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--budget-s", type=float, default=240.0, help="time budget per measurement")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--from-json", type=Path, default=None)
    return p.parse_args(argv)


def measure(args) -> dict:
    from autoglm_runtime.backends.onnx_backend import OnnxBackend
    from autoglm_runtime.bundle import open_bundle

    console = Console(stderr=True)
    bundle = open_bundle(args.bundle)  # checks every file's size and sha256 first
    manifest = bundle.manifest
    monitor = LoadMonitor()
    rss_before = current_rss_bytes()
    t0 = time.perf_counter()
    backend = OnnxBackend.from_bundle(bundle, threads=args.threads)
    load_s = time.perf_counter() - t0
    rss_loaded = current_rss_bytes()
    hidden = manifest["model"]["text"]["hidden_size"]
    t1 = time.perf_counter()
    backend.text_decoder(np.zeros((1, 1, hidden), np.float32), np.array([0]), np.zeros((3, 1), np.int64))
    first_call_s = time.perf_counter() - t1
    pixels = tuple(manifest["models"]["vision_encoder"]["inputs"][0]["shape"])
    timing = measure_backend(
        backend,
        label="onnxruntime",
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
    in_place = backend.cache_in_place
    del backend
    bandwidth = memory_bandwidth(args.threads)
    files = {name: f["bytes"] for name, f in manifest["files"].items()}
    decoder = manifest["models"]["text_decoder"]
    weights_read = files[decoder["external_data"]] if decoder.get("external_data") else files[decoder["file"]]
    kv = manifest["kv_cache"]
    kv_slots = args.prefill_tokens + args.decode_tokens / 2 if in_place else kv["shape"][2]
    kv_read = kv_read_bytes(kv, kv_slots)
    read = weights_read + kv_read
    floor_ms = read / (bandwidth["best_gbps"] * GB) * 1e3
    decode_ms = timing["decode"]["ms_per_token_with_embedding"]["median"]
    return {
        **results.header("onnx_9b", args, str(args.out), machine=machine_info(args.threads), load=load),
        "bundle": str(args.bundle),
        "recipe": manifest["quantization"]["recipe"],
        "files": files,
        "model_bytes": sum(v for k, v in files.items() if ".onnx" in k),
        "export": {"stage_seconds": manifest.get("stage_seconds"), "time": time_report(args.export_time)},
        "validated": manifest.get("validated"),
        "load_s": load_s,
        "rss_before_load_bytes": rss_before,
        "rss_loaded_bytes": rss_loaded,
        "first_decoder_call_s": first_call_s,
        "peak_rss_generating_bytes": peak_generating,
        "timing": timing,
        "bandwidth": bandwidth,
        "decode_weights_bytes": weights_read,
        "decode_kv_bytes": kv_read,
        "decode_kv_slots": kv_slots,
        "decode_read_bytes": read,
        "floor_ms": floor_ms,
        "decode_over_floor": decode_ms / floor_ms,
    }


def render(r: dict) -> str:
    t, ex = r["timing"], r["export"]
    tr = ex.get("time") or {}
    per_file: dict[str, int] = {}  # graph + its external data, by graph
    for k, v in r["files"].items():
        if ".onnx" in k:
            per_file[k.split(".onnx")[0]] = per_file.get(k.split(".onnx")[0], 0) + v
    buckets = [k for k in per_file if k.startswith("vision_encoder_")]
    shown = {k: v for k, v in per_file.items() if k not in buckets}
    if buckets:
        shown[f"{len(buckets)} more image buckets"] = sum(per_file[k] for k in buckets)
    stages: dict[str, float] = {}  # per-graph stages summed by kind ("export", "int4 weights")
    for k, v in (ex.get("stage_seconds") or {}).items():
        kind = next((p for p in ("export ", "int4 weights ", "fp32 weights ") if k.startswith(p)), k)
        stages[kind.strip()] = stages.get(kind.strip(), 0) + v
    rows = [
        [
            "bundle (graphs + external data)",
            f"{r['model_bytes'] / GB:.2f} GB ({', '.join(f'{k} {v / GB:.2f}' for k, v in shown.items())})",
        ],
        ["recipe", ", ".join(f"{k} {v}" for k, v in r["recipe"].items())],
        [
            "export wall / peak RSS",
            export_cell(tr) if tr else "not recorded",
        ],
        ["export stages (s)", ", ".join(f"{k} {v:.0f}" for k, v in stages.items())],
        ["validated (parity gate)", str(r["validated"])],
        ["load (sessions created)", f"{r['load_s']:.1f} s"],
        ["first decoder call", f"{r['first_decoder_call_s']:.1f} s"],
        [
            "RSS before load / after load / peak while generating",
            f"{r['rss_before_load_bytes'] / GB:.2f} / {r['rss_loaded_bytes'] / GB:.2f} / "
            f"{r['peak_rss_generating_bytes'] / GB:.2f} GB",
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
            f"{r['floor_ms']:.0f} ms ({r['decode_weights_bytes'] / GB:.2f} GB weights + "
            f"{r['decode_kv_bytes'] / GB:.2f} GB KV cache ({r.get('decode_kv_slots', 'all')} slots) at "
            f"{r['bandwidth']['best_gbps']:.1f} GB/s)",
        ],
        ["decode / floor", f"{r['decode_over_floor']:.2f}x"],
        ["vision encoder, one image", f"{t['vision_encoder']['ms']['median']:.0f} ms"],
    ]
    lines = [
        "## AutoGLM-Phone-9B (10.3B parameters, random weights with the real config): ONNX Runtime on this machine",
        "",
        f"- Command: `{r['command']}`",
        f"- Date: {r['date']}; machine: {r['machine']['cpu_model']}, {r['machine']['usable_cores']} cores, "
        f"{r['machine']['threads']} threads",
        f"- Load while timing: {describe_load(r['load'])}",
        "- The checkpoint is made by `tools/make_real_checkpoint.py` (never committed); the export command is in the script's docstring.",
        "",
        markdown_table(["", "measured"], rows),
        "",
        "The floor counts what the graph must read per step: all decoder weights and the KV cache slots its",
        "attention reads (GroupQueryAttention: the slots in use; older graphs: every slot, masked ones included).",
        "Random weights, so only speed and memory are meaningful here. Other processes shared the 2 cores (load line).",
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
        args.out = args.out or default_results("onnx-9b", "autoglm-phone-9b")
        data = measure(args)
    results.publish(args, data, args.out or args.from_json, "onnx:autoglm-phone-9b", render(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())

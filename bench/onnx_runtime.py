"""ONNX Runtime benchmark: export a preset with the real ONNX pipeline, then time it on onnxruntime (CPU).

    .venv/bin/python bench/onnx_runtime.py --preset small --out bench/results/onnx-small.json [--markdown]
    .venv/bin/python bench/android.py --preset small --with-onnx --markdown   # with the ExecuTorch leg, one run

In one run:

1. ``export_bundle("onnx", ...)`` (``torch.onnx.export`` per component, int4 ``MatMulNBits`` on every
   linear, fp32 token embedding) in a subprocess, so its wall time and peak RSS are its own
   (``harness.bundles``). Validation is off: presets without a tokenizer (``small``) cannot build parity probes.
2. Size: every ``.onnx`` file and its external data, parameters per component, bits per weight
   (``onnx_runtime_sizes``).
3. Through ``OnnxBackend`` (CPUExecutionProvider, ``--threads`` intra-op threads, KV cache kept in
   place by IO binding): prefill tokens/s, decode ms/token, vision and audio encoder ms, with
   ``harness.backend_timing`` (same inputs, same chunking, same statistics as the ExecuTorch leg).
4. ``--rounds`` paired rounds of decode steps with the KV cache IO-bound vs fed through
   ``InferenceSession.run`` (the numpy round trip), back to back.
5. Where a decode step goes: onnxruntime's profiler on a separate decoder session, time per op type
   (``--no-profile`` skips it).
6. The int8-activation probe: the same decoder with ``accuracy_level=4`` on its MatMulNBits (int8
   activations, as ExecuTorch's 8da4w), timed the same way: what ``autoglm-export onnx --int8-activations``
   exports (its numerics differ, reported; that option has its own parity thresholds) (``--no-int8-probe``).
7. The kernels' own ceiling: the decoder's MatMulNBits in a graph with nothing else, at block 32 (its
   own weights) and 128, fp32 and int8 activations, in alternating rounds (``--no-profile`` skips it too).
8. The decode bandwidth floor: the decoder graph's weight bytes plus one token-embedding row, over
   the bandwidth probe of this run; and this graph's whole-KV-cache traffic per step.

4-7: ``onnx_runtime_probes``; the tables and the BENCHMARKS.md section: ``onnx_runtime_report``.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

from harness import results
from harness.backend_timing import measure_backend, workload
from harness.bundles import ExportFailed, add_worker_flag, dispatch, export_or_reuse
from harness.load import LoadMonitor, wait_quiet
from harness.machine import machine_info, memory_bandwidth
from harness.memory import current_rss_bytes, peak_rss_bytes
from harness.paths import default_results, repo_relative
from harness.units import GB
from onnx_runtime_probes import (
    INT8_ACCURACY_LEVEL,
    PROFILE_STEPS,
    ROUND_STEPS,
    int8_probe,
    io_binding_rounds,
    matmul_nbits_alone,
    profile_decode,
)
from onnx_runtime_report import render
from onnx_runtime_sizes import files_table, kv_read_bytes


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small", help="model preset (tiny, small, ...)")
    p.add_argument("--quant", default="int4", choices=["int4", "fp32"], help="linears of all towers, lm_head included")
    p.add_argument("--block-size", type=int, default=32, help="int4 block size (MatMulNBits)")
    p.add_argument("--max-seq-len", type=int, default=128, help="prefill chunk (the runtime's max_seq_len)")
    p.add_argument(
        "--threads",
        type=int,
        default=2,
        help="onnxruntime intra-op threads (and torch threads for the bandwidth probe)",
    )
    p.add_argument("--prefill-tokens", type=int, default=64)
    p.add_argument("--decode-tokens", type=int, default=64)
    p.add_argument("--warmup", type=int, default=2, help="untimed runs before each measurement")
    p.add_argument("--runs", type=int, default=5, help="timed runs for prefill and the encoders (median reported)")
    p.add_argument(
        "--rounds", type=int, default=3, help="paired rounds of decode with the KV cache IO-bound vs through numpy"
    )
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="after the export, wait up to this long for other processes to use < 0.25 cores over 10 s",
    )
    p.add_argument(
        "--bundle",
        type=Path,
        default=None,
        help="measure this existing ONNX bundle instead of exporting (export time and RSS are then not measured)",
    )
    p.add_argument(
        "--keep-bundle", type=Path, default=None, help="export into this directory and keep it (default: a temp dir)"
    )
    p.add_argument(
        "--no-profile",
        action="store_true",
        help="skip onnxruntime's per-op profile of decode steps and the MatMulNBits-alone probe",
    )
    p.add_argument(
        "--no-int8-probe", action="store_true", help="skip timing the decoder with int8 activations (accuracy_level 4)"
    )
    p.add_argument("--out", type=Path, default=None, help="JSON result path (default bench/results/onnx-<preset>.json)")
    p.add_argument("--markdown", action="store_true", help="write/replace this run's section in BENCHMARKS.md")
    p.add_argument(
        "--from-json",
        type=Path,
        default=None,
        help="re-render the tables (and with --markdown the BENCHMARKS.md section) from a results JSON; measures nothing",
    )
    add_worker_flag(p)
    return p.parse_args(argv)


def request_and_options(out: Path, args: argparse.Namespace) -> tuple:
    """What the export child runs: the preset, this quantization, validation off."""
    from autoglm_export.request import ModelRequest
    from autoglm_export.targets.onnx.export import OnnxOptions
    from autoglm_export.targets.onnx.recipe import OnnxQuant

    options = OnnxOptions(
        out=out, quant=OnnxQuant(args.quant, args.block_size), max_seq_len=args.max_seq_len, validate=False, force=True
    )
    return ModelRequest(preset=args.preset), options


def main() -> int:
    args = parse_args()
    done, console = dispatch(args, "onnx", request_and_options, render)
    if console is None:
        return done
    return run(args, console)


def run(args, console, run: dict | None = None, executorch: dict | None = None) -> int:
    """Export (or take ``--bundle``), measure, write the JSON (and the section). ``run``: the invocation's
    record when another leg shares it (bench/android.py --with-onnx); ``executorch``: that leg's numbers."""
    out = args.out or default_results("onnx", args.preset)
    out_str = repo_relative(out)
    run = run or {**results.new_run(["onnx"]), "outputs": {"onnx": out_str}}
    try:
        with export_or_reuse(
            args.bundle,
            args.keep_bundle,
            script=Path(__file__),
            args=args,
            what="ONNX",
            detail=f"{args.quant}, block {args.block_size}",
            console=console,
        ) as bundle:
            quiet = wait_quiet(args.wait_quiet, console) if args.wait_quiet > 0 else None
            load = LoadMonitor()  # the timing part's load
            return measure_and_report(
                args, bundle.path, bundle.export, load, out, out_str, console, quiet, run, executorch
            )
    except ExportFailed:
        return 1


def measure_and_report(
    args,
    bundle: Path,
    export: dict | None,
    load,
    out: Path,
    out_str: str,
    console,
    quiet: dict | None,
    run: dict,
    executorch: dict | None,
) -> int:
    import onnxruntime

    from autoglm_runtime.backends.onnx_backend import OnnxBackend

    manifest = json.loads((bundle / "manifest.json").read_text())
    if manifest.get("target") != "onnx":
        console.print(f"[red]{bundle}: a {manifest.get('target')} bundle, not an ONNX one[/red]")
        return 2
    files = files_table(bundle, manifest)
    total_bytes = sum(f["bytes"] for f in files.values())
    params = dict(manifest["model"]["parameters"])
    total_params = sum(params.values())
    paths = {c: bundle / m["file"] for c, m in manifest["models"].items()}

    rss0 = current_rss_bytes()
    t0 = time.perf_counter()
    backend = OnnxBackend(paths, threads=args.threads)
    load_s = time.perf_counter() - t0
    rss_loaded = current_rss_bytes()
    dec = backend.models["text_decoder"]
    hidden = dec.inputs["inputs_embeds"].shape[-1]
    n_prefill, n_decode = args.prefill_tokens, args.decode_tokens
    # The IO-binding rounds decode from n_prefill too.
    if n_prefill + max(n_decode, ROUND_STEPS + 2) > backend.max_context:
        console.print(
            f"[red]--prefill-tokens + max(--decode-tokens, {ROUND_STEPS + 2}) must fit max_context {backend.max_context}[/red]"
        )
        return 2
    audio = backend.models.get("audio_encoder")
    kw = workload(
        args,
        hidden=hidden,
        pixel_shape=tuple(manifest["models"]["vision_encoder"]["inputs"][0]["shape"]),
        mel_shape=tuple(audio.inputs["input_features"].shape) if audio else None,
        console=console,
    )

    console.print(
        f"onnxruntime {onnxruntime.__version__}, {args.threads} intra-op threads; measuring {bundle} "
        f"({total_bytes / 1e6:.1f} MB)"
    )
    result = measure_backend(backend, label="onnxruntime (IO-bound KV cache)", budget_s=1e9, **kw)
    result.update(
        load_s=load_s, rss_after_load_bytes=rss_loaded - rss0, rss_after_runs_bytes=current_rss_bytes() - rss0
    )
    console.print("paired rounds: decode with the KV cache IO-bound vs through numpy")
    rounds = io_binding_rounds(backend, hidden, n_prefill, args.rounds)
    probe = None
    if not args.no_int8_probe:
        console.print(f"int8-activation probe: the decoder with accuracy_level {INT8_ACCURACY_LEVEL}")
        try:
            probe = int8_probe(paths, backend, args, kw, console)
        except Exception as e:  # a probe failure must not cost the benchmark
            probe = {"error": f"{type(e).__name__}: {e}"}
            console.print(f"[yellow]int8 probe failed: {probe['error']}[/yellow]")
    del backend, dec, audio
    gc.collect()
    profile = None
    if not args.no_profile:
        try:
            position = min(n_prefill + n_decode // 2, backend_max_context(manifest) - PROFILE_STEPS - 2)
            profile = profile_decode(paths["text_decoder"], args.threads, hidden, position, steps=PROFILE_STEPS)
        except Exception as e:  # a failed probe is recorded, not fatal
            profile = {"error": f"{type(e).__name__}: {e}"}
            console.print(f"[yellow]profile failed: {profile['error']}[/yellow]")
    kernels = None
    if not args.no_profile:
        console.print("the decoder's MatMulNBits alone, fp32 and int8 activations")
        try:
            kernels = matmul_nbits_alone(paths["text_decoder"], args.threads)
        except Exception as e:  # a failed probe is recorded, not fatal
            kernels = {"error": f"{type(e).__name__}: {e}"}
            console.print(f"[yellow]MatMulNBits probe failed: {kernels['error']}[/yellow]")
    peak_rss = peak_rss_bytes()  # before the bandwidth probe's 1 GiB array
    bandwidth = memory_bandwidth(args.threads)
    load_info = load.stop()

    text = manifest["model"]["text"]
    emb = files["token_embedding"]
    emb_row = emb["weight_bytes"] // text["vocab_size"]
    per_token = files["text_decoder"]["weight_bytes"] + emb_row
    kv = manifest["kv_cache"]
    cache_bytes = kv_read_bytes(kv, kv["shape"][2])
    # GroupQueryAttention reads the slots in use (here at the decode steps' mean position) and writes one
    mean_position = n_prefill + n_decode / 2
    kv_traffic = kv_read_bytes(kv, mean_position)
    gbps = bandwidth["best_gbps"] * GB
    decode_ms = result["decode"]["ms_per_token_with_embedding"]["median"]
    decode_only_ms = result["decode"]["ms_per_token_decoder_only"]["median"]
    floor_ms = per_token / gbps * 1e3
    floor_kv_ms = (per_token + kv_traffic) / gbps * 1e3
    machine = {
        **machine_info(args.threads),
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_threads": args.threads,
        "provider": "CPUExecutionProvider",
    }
    record = {
        **results.header(
            "onnx", args, out_str, machine=machine, load=load_info, run=run, after_export=True, wait_quiet=quiet
        ),
        "recipe": manifest.get("quantization", {}).get("recipe"),
        "export": None
        if export is None
        else {**{k: v for k, v in export.items() if k != "log"}, "stage_seconds": manifest.get("stage_seconds")},
        "model": {
            "preset": args.preset,
            "max_context": backend_max_context(manifest),
            "image_hw": manifest["export_shape"]["image_hw"],
            "params": {**params, "total": total_params},
            "toolchain": manifest.get("toolchain"),
        },
        "files": files,
        "size": {
            "bytes": total_bytes,
            "bits_per_weight": 8 * total_bytes / total_params,
            "without_encoders_bytes": files["token_embedding"]["bytes"] + files["text_decoder"]["bytes"],
        },
        "onnxruntime": result,
        "io_binding_rounds": rounds,
        "int8_probe": probe,
        "profile": profile,
        "matmul_nbits_alone": kernels,
        "floor": {
            "decode_read_bytes": per_token,
            "decode_read_matmul_nbits_bytes": files["text_decoder"]["matmul_nbits_bytes"],
            "embedding_row_bytes": emb_row,
            "kv_cache_bytes": cache_bytes,
            "kv_traffic_bytes": kv_traffic,
            "kv_mean_position": mean_position,
            "bandwidth_gbps": bandwidth["best_gbps"],
            "floor_ms": floor_ms,
            "floor_with_kv_ms": floor_kv_ms,
            "ratio_to_floor": decode_ms / floor_ms,
            "ratio_to_floor_decoder_only": decode_only_ms / floor_ms,
            "ratio_to_floor_with_kv": decode_ms / floor_kv_ms,
            "int8_ratio_to_floor": (
                probe["decode"]["ms_per_token_with_embedding"]["median"] / floor_ms
                if probe and "error" not in probe
                else None
            ),
        },
        "executorch_same_run": executorch,
        "memory": {"peak_rss_bytes": peak_rss},
        "bandwidth": bandwidth,
    }
    results.write_json(out, record)
    console.print(f"wrote {out}")
    return render(record, args.markdown, console)


def backend_max_context(manifest: dict) -> int:
    return int(manifest["kv_cache"]["shape"][2])


def executorch_summary(r: dict) -> dict:
    """The ExecuTorch leg's numbers the ONNX section compares with (from bench/android.py's results)."""
    et = r["executorch"]
    return {
        "out": r["out"],
        "date": r["date"],
        "recipe": r["recipe"],
        "pte_bytes": r["pte"]["bytes"],
        "bits_per_weight": r["pte"]["bits_per_weight"],
        "prefill_tokens_per_s": et["prefill"]["tokens_per_s"],
        "decode_ms": et["decode"]["ms_per_token_with_embedding"]["median"],
        "decode_decoder_only_ms": et["decode"]["ms_per_token_decoder_only"]["median"],
        "vision_ms": et["vision_encoder"]["ms"]["median"],
        "audio_ms": et["audio_encoder"]["ms"]["median"] if et.get("audio_encoder") else None,
        "load_s": et["load_s"],
        "floor_ms": r["floor"]["floor_ms"],
        "bandwidth_gbps": r["floor"]["bandwidth_gbps"],
        "load": r["load"],
    }


if __name__ == "__main__":
    sys.exit(main())

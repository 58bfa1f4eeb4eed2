"""ONNX Runtime benchmark: export a preset with the real ONNX pipeline, then time it on onnxruntime (CPU).

    .venv/bin/python bench/onnx.py --preset small --out bench/results/onnx-small.json [--markdown]
    .venv/bin/python bench/android.py --preset small --with-onnx --markdown   # with the ExecuTorch leg, one run

In one run:

1. ``export_onnx`` (``torch.onnx.export`` per component, int4 ``MatMulNBits`` on every linear, fp32
   token embedding) in a subprocess, so its wall time and peak RSS are its own. Validation is off:
   presets without a tokenizer (``small``) cannot build parity probes.
2. Size: every ``.onnx`` file and its external data, parameters per component, bits per weight.
3. Through ``OnnxBackend`` (CPUExecutionProvider, ``--threads`` intra-op threads, KV cache kept in
   place by IO binding): prefill tokens/s, decode ms/token, vision and audio encoder ms, with
   bench/android.py's ``measure`` (same inputs, same chunking, same statistics as the ExecuTorch leg).
4. ``--rounds`` paired rounds of decode steps with the KV cache IO-bound vs fed through
   ``InferenceSession.run`` (the numpy round trip), back to back.
5. Where a decode step goes: onnxruntime's profiler on a separate decoder session, time per op type
   (``--no-profile`` skips it).
6. The int8-activation probe: the same decoder with ``accuracy_level=4`` on its MatMulNBits (int8
   activations, as ExecuTorch's 8da4w), timed the same way. Not what the exporter ships: its numerics
   differ (reported); it shows what onnxruntime's int8 kernels would give (``--no-int8-probe``).
7. The decode bandwidth floor: the decoder graph's weight bytes plus one token-embedding row, over
   the bandwidth probe of this run; and this graph's whole-KV-cache traffic per step.
"""

from __future__ import annotations

if __name__ == "onnx":  # bench/ ahead of site-packages on sys.path: refuse to pose as the onnx package
    raise ImportError(f"{__file__} is a benchmark script, not the onnx package: put bench/ after site-packages on sys.path")

import argparse
import gc
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

try:  # run as a script (bench/ is on sys.path; common moves it after site-packages) or as a module
    from . import common
except ImportError:
    import common

android = common.load_script("android")  # measure(), wait_quiet(), text_positions(): the ExecuTorch leg's own
INT8_ACCURACY_LEVEL = 4  # MatMulNBits: int8 activations (per-block dynamic quantization), int32 accumulation
ROUND_STEPS = 16  # decode steps per mode in each IO-binding round (after 2 untimed)
PROFILE_STEPS = 24


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small", help="model preset (tiny, small, ...)")
    p.add_argument("--quant", default="int4", choices=["int4", "fp32"], help="linears of all towers, lm_head included")
    p.add_argument("--block-size", type=int, default=32, help="int4 block size (MatMulNBits)")
    p.add_argument("--max-seq-len", type=int, default=128, help="prefill chunk (the runtime's max_seq_len)")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads (and torch threads for the bandwidth probe)")
    p.add_argument("--prefill-tokens", type=int, default=64)
    p.add_argument("--decode-tokens", type=int, default=64)
    p.add_argument("--warmup", type=int, default=2, help="untimed runs before each measurement")
    p.add_argument("--runs", type=int, default=5, help="timed runs for prefill and the encoders (median reported)")
    p.add_argument("--rounds", type=int, default=3, help="paired rounds of decode with the KV cache IO-bound vs through numpy")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="after the export, wait up to this long for other processes to use < 0.25 cores over 10 s")
    p.add_argument("--bundle", type=Path, default=None,
                   help="measure this existing ONNX bundle instead of exporting (export time and RSS are then not measured)")
    p.add_argument("--keep-bundle", type=Path, default=None, help="export into this directory and keep it (default: a temp dir)")
    p.add_argument("--no-profile", action="store_true", help="skip onnxruntime's per-op profile of decode steps")
    p.add_argument("--no-int8-probe", action="store_true", help="skip timing the decoder with int8 activations (accuracy_level 4)")
    p.add_argument("--out", type=Path, default=None, help="JSON result path (default bench/results/onnx-<preset>.json)")
    p.add_argument("--markdown", action="store_true", help="write/replace this run's section in BENCHMARKS.md")
    p.add_argument("--from-json", type=Path, default=None,
                   help="re-render the tables (and with --markdown the BENCHMARKS.md section) from a results JSON; measures nothing")
    p.add_argument("--export-worker", default=None, help=argparse.SUPPRESS)  # internal: JSON spec of the export subprocess
    return p.parse_args(argv)


# ---------------------------------------------------------------- 1. export (subprocess)

def export_worker(spec_json: str) -> int:
    """Child process: run the real export; logs on stderr, nothing else."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    spec = json.loads(spec_json)
    from autoglm_export.onnx_export import OnnxOptions, OnnxQuant, export_onnx
    from autoglm_export.pipeline import ModelRequest

    args = spec["args"]
    export_onnx(ModelRequest(preset=args["preset"]),
                OnnxOptions(out=Path(spec["out"]), quant=OnnxQuant(args["quant"], args["block_size"]),
                            max_seq_len=args["max_seq_len"], validate=False, force=True))
    common.print_peak_rss()
    return 0


def run_export(args, out_dir: Path, log_path: Path, console) -> dict:
    spec = json.dumps({"out": str(out_dir), "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}})
    console.print(f"exporting preset {args.preset} to ONNX ({args.quant}, block {args.block_size}) in a subprocess; log: {log_path}")
    return common.run_child([sys.executable, str(Path(__file__).resolve()), "--export-worker", spec], log_path)


# ---------------------------------------------------------------- 2. sizes

def initializer_bytes(tensor) -> int:
    """Stored bytes of one initializer, inline or in external data."""
    from onnx import external_data_helper

    if external_data_helper.uses_external_data(tensor):
        return int({e.key: e.value for e in tensor.external_data}.get("length", 0))
    return len(tensor.raw_data) or tensor.ByteSize()


def graph_bytes(path: Path) -> dict:
    """Weight bytes of one .onnx graph (its external data not loaded): all, and those feeding MatMulNBits."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    sizes = {t.name: initializer_bytes(t) for t in model.graph.initializer}
    nbits = {name for n in model.graph.node if n.op_type == "MatMulNBits" for name in n.input[1:]}
    return {"weight_bytes": sum(sizes.values()), "matmul_nbits_bytes": sum(b for n, b in sizes.items() if n in nbits),
            "matmul_nbits": sum(n.op_type == "MatMulNBits" for n in model.graph.node)}


def component_params(manifest: dict) -> dict[str, int]:
    """Parameters per ONNX file: the text tower splits into token_embedding (vocab x hidden) and the decoder."""
    params, text = manifest["model"]["parameters"], manifest["model"]["text"]
    embedding = text["vocab_size"] * text["hidden_size"]
    out = {"vision_encoder": params.get("vision", 0), "token_embedding": embedding, "text_decoder": params["text"] - embedding}
    if "audio" in params:
        out["audio_encoder"] = params["audio"]
    return out


def files_table(bundle: Path, manifest: dict) -> dict:
    params = component_params(manifest)
    files = {}
    for comp, entry in manifest["models"].items():
        onnx_bytes = (bundle / entry["file"]).stat().st_size
        data_bytes = (bundle / entry["external_data"]).stat().st_size if entry.get("external_data") else 0
        total = onnx_bytes + data_bytes
        files[comp] = {"file": entry["file"], "external_data": entry.get("external_data"), "onnx_bytes": onnx_bytes,
                       "external_data_bytes": data_bytes, "bytes": total, "params": params.get(comp, 0),
                       "bits_per_weight": 8 * total / params[comp] if params.get(comp) else None,
                       "matmul_nbits": entry.get("matmul_nbits", 0), **graph_bytes(bundle / entry["file"])}
    return files


# ---------------------------------------------------------------- 4. IO binding vs the numpy round trip

def io_binding_rounds(backend, hidden: int, start: int, rounds: int, steps: int = ROUND_STEPS) -> list[dict]:
    """Decode steps (text_decoder only) with the cache IO-bound, then through numpy, ``rounds`` times.

    Both modes at the same positions, seconds apart, so the machine's drift hits both alike.
    """
    x = np.random.default_rng(2).standard_normal((1, 1, hidden), dtype=np.float32)
    out = []
    for _ in range(rounds):
        r = {}
        for mode, key in ((True, "bound_ms"), (False, "unbound_ms")):
            backend.io_binding = mode
            backend.reset()
            times = []
            for i in range(steps + 2):
                p, pid = android.text_positions(start + i, 1)
                t0 = time.perf_counter()
                backend.text_decoder(x, p, pid)
                times.append(time.perf_counter() - t0)
            r[key] = float(np.median(times[2:])) * 1e3
        out.append(r)
    backend.io_binding = True
    backend.reset()
    return out


# ---------------------------------------------------------------- 5. onnxruntime's profile of decode steps

def profile_decode(decoder: Path, threads: int, hidden: int, position: int, steps: int = PROFILE_STEPS, skip: int = 2) -> dict:
    """onnxruntime's profiler on a separate text_decoder session: time per op type per decode step.

    The profiler records every kernel call with its op type; runs are told apart by their
    ``model_run`` events. The timers add overhead per node, so read shares, not absolute ms.
    """
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "decode")
        session = ort.InferenceSession(str(decoder), opts, providers=["CPUExecutionProvider"])
        cache = {i.name: np.zeros(i.shape, np.float32) for i in session.get_inputs() if i.name.startswith("past_")}
        x = np.random.default_rng(1).standard_normal((1, 1, hidden), dtype=np.float32)
        for i in range(steps + skip):  # the cache content does not matter for timing: the graph reads all of it
            p, pid = android.text_positions(position + i, 1)
            session.run(None, {"inputs_embeds": x, "cache_position": p, "position_ids": pid, **cache})
        events = json.loads(Path(session.end_profiling()).read_text())
    runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])[skip:]
    per_op: dict[str, list] = {}
    for e in events:
        if e.get("cat") != "Node" or not any(r["ts"] <= e["ts"] <= r["ts"] + r["dur"] for r in runs):
            continue
        op = e.get("args", {}).get("op_name", "?")
        per_op.setdefault(op, [0, 0.0])
        per_op[op][0] += 1
        per_op[op][1] += e["dur"] / 1e3
    n = max(len(runs), 1)
    ops = {k: {"calls": v[0] // n, "ms": v[1] / n} for k, v in sorted(per_op.items(), key=lambda kv: -kv[1][1])}
    return {"steps": len(runs), "position": position, "run_ms_median": float(np.median([r["dur"] for r in runs])) / 1e3,
            "kernels_ms": sum(v["ms"] for v in ops.values()), "ops": ops,
            "note": "onnxruntime profiler (enable_profiling) on a separate session, zero KV cache, seq 1; "
                    "kernel times summed per op type, per step"}


# ---------------------------------------------------------------- 6. int8 activations (accuracy_level 4)

def int8_decoder(src: Path, dst: Path) -> int:
    """Copy the decoder graph with ``accuracy_level=4`` on every MatMulNBits; returns how many."""
    import onnx
    from onnx import helper

    model = onnx.load(str(src))
    count = 0
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            kept = [a for a in node.attribute if a.name != "accuracy_level"]
            node.ClearField("attribute")
            node.attribute.extend(kept + [helper.make_attribute("accuracy_level", INT8_ACCURACY_LEVEL)])
            count += 1
    if count:
        from autoglm_export.targets.onnx import save_model

        save_model(model, dst)
    return count


def int8_probe(paths: dict, reference, args, common_kw: dict, console) -> dict:
    """Prefill and decode with the int8-activation decoder, and how far its logits move from the shipped one's."""
    from autoglm_runtime.backends.onnx_backend import OnnxBackend

    with tempfile.TemporaryDirectory() as tmp:
        patched = Path(tmp) / "text_decoder.onnx"
        count = int8_decoder(paths["text_decoder"], patched)
        if not count:
            return {"error": "no MatMulNBits in the decoder (fp32 export)"}
        backend = OnnxBackend({**paths, "text_decoder": patched}, threads=args.threads)
        n, hidden = common_kw["n_prefill"], common_kw["hidden"]
        embeds = np.random.default_rng(3).standard_normal((1, n, hidden), dtype=np.float32)
        pos, ids = android.text_positions(0, n)
        reference.reset()
        backend.reset()
        want = reference.text_decoder(embeds, pos, ids)
        got = backend.text_decoder(embeds, pos, ids)
        reference.reset()
        result = android.measure(backend, label=f"int8 activations (accuracy_level {INT8_ACCURACY_LEVEL})", budget_s=60.0,
                                 **common_kw)
        del backend
    result.update({
        "matmul_nbits": count,
        "logits_rel_max_abs": float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12)),
        "top1_agreement": float((got.argmax(-1) == want.argmax(-1)).mean()),
        "compared_positions": n,
    })
    return result


# ---------------------------------------------------------------- main

def main() -> int:
    args = parse_args()
    if args.export_worker is not None:
        return export_worker(args.export_worker)

    from rich.console import Console
    from rich.table import Table

    console = Console()
    if args.from_json is not None:
        return render(json.loads(args.from_json.read_text()), args.markdown, console, Table)
    return run(args, console, Table)


def run(args, console, Table, run: dict | None = None, executorch: dict | None = None) -> int:
    """Export (or take ``--bundle``), measure, write the JSON (and the section). ``run``: the invocation's
    record when another leg shares it (bench/android.py --with-onnx); ``executorch``: that leg's numbers."""
    out = args.out or common.REPO / "bench" / "results" / f"onnx-{args.preset}.json"
    out_str = android.repo_relative(out)
    run = run or {**common.new_run(["onnx"]), "outputs": {"onnx": out_str}}
    load = common.LoadMonitor()
    tmp_root = None
    export = None
    if args.bundle is not None:
        bundle = args.bundle
        console.print(f"measuring existing ONNX bundle {bundle} (export not timed)")
    else:
        if args.keep_bundle is not None:
            bundle = args.keep_bundle
            bundle.parent.mkdir(parents=True, exist_ok=True)
            log_path = bundle.parent / f"{bundle.name}.export.log"
        else:
            tmp_root = Path(tempfile.mkdtemp(prefix="autoglm-bench-onnx-"))
            bundle = tmp_root / "bundle"
            log_path = tmp_root / "export.log"
        export = run_export(args, bundle, log_path, console)
        if export["returncode"] != 0:
            console.print(f"[red]ONNX export failed (exit {export['returncode']}) after {export['wall_s']:.0f} s; last lines of {log_path}:[/red]")
            for line in export["error_tail"]:
                console.print("  " + line, markup=False, highlight=False)
            if tmp_root is not None:
                shutil.rmtree(tmp_root, ignore_errors=True)
            return 1
        console.print(f"ONNX export: {export['wall_s']:.0f} s wall, peak RSS {common.fmt_mb(export['peak_rss_bytes'])}")
        el = load.stop()  # LoadMonitor counts the child's CPU as "other": take it out
        el["other_cores"] = max(el["other_cores"] * el["wall_s"] - export["cpu_s"], 0.0) / el["wall_s"]
        export["load"] = el
    quiet = android.wait_quiet(args.wait_quiet, console) if args.wait_quiet > 0 else None
    load = common.LoadMonitor()  # the timing part's load
    try:
        return measure_and_report(args, bundle, export, load, out, out_str, console, Table, quiet, run, executorch)
    finally:
        if tmp_root is not None:
            shutil.rmtree(tmp_root, ignore_errors=True)


def measure_and_report(args, bundle: Path, export: dict | None, load, out: Path, out_str: str, console, Table,
                       quiet: dict | None, run: dict, executorch: dict | None) -> int:
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

    rss0 = common.current_rss_bytes()
    t0 = time.perf_counter()
    backend = OnnxBackend(paths, threads=args.threads)
    load_s = time.perf_counter() - t0
    rss_loaded = common.current_rss_bytes()
    dec = backend.models["text_decoder"]
    hidden = dec.inputs["inputs_embeds"].shape[-1]
    n_prefill, n_decode = args.prefill_tokens, args.decode_tokens
    if n_prefill + max(n_decode, ROUND_STEPS + 2) > backend.max_context:  # the IO-binding rounds decode from n_prefill too
        console.print(f"[red]--prefill-tokens + max(--decode-tokens, {ROUND_STEPS + 2}) must fit max_context {backend.max_context}[/red]")
        return 2
    gen = np.random.default_rng(0)
    pixels = gen.standard_normal(tuple(backend.models["vision_encoder"].inputs["pixel_values"].shape), dtype=np.float32)
    audio = backend.models.get("audio_encoder")
    mel = gen.standard_normal(tuple(audio.inputs["input_features"].shape), dtype=np.float32) if audio else None
    common_kw = dict(hidden=hidden, n_prefill=n_prefill, n_decode=n_decode, chunk=args.max_seq_len, warmup=args.warmup,
                     runs=args.runs, pixels=pixels, mel=mel, console=console)

    console.print(f"onnxruntime {onnxruntime.__version__}, {args.threads} intra-op threads; measuring {bundle} "
                  f"({total_bytes / 1e6:.1f} MB)")
    result = android.measure(backend, label="onnxruntime (IO-bound KV cache)", budget_s=1e9, **common_kw)
    result.update(load_s=load_s, rss_after_load_bytes=rss_loaded - rss0, rss_after_runs_bytes=common.current_rss_bytes() - rss0)
    console.print("paired rounds: decode with the KV cache IO-bound vs through numpy")
    rounds = io_binding_rounds(backend, hidden, n_prefill, args.rounds)
    probe = None
    if not args.no_int8_probe:
        console.print(f"int8-activation probe: the decoder with accuracy_level {INT8_ACCURACY_LEVEL}")
        try:
            probe = int8_probe(paths, backend, args, common_kw, console)
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
        except Exception as e:
            profile = {"error": f"{type(e).__name__}: {e}"}
            console.print(f"[yellow]profile failed: {profile['error']}[/yellow]")
    peak_rss = common.peak_rss_bytes()  # before the bandwidth probe's 1 GiB array
    bandwidth = common.memory_bandwidth(args.threads)
    load_info = load.stop()

    text = manifest["model"]["text"]
    emb = files["token_embedding"]
    emb_row = emb["weight_bytes"] // text["vocab_size"]
    per_token = files["text_decoder"]["weight_bytes"] + emb_row
    kv = manifest["kv_cache"]
    cache_bytes = len(kv["inputs"]) * int(np.prod(kv["shape"])) * 4
    kv_traffic = 3 * cache_bytes  # scatter reads the past and writes the present; attention reads the present
    gbps = bandwidth["best_gbps"] * common.GB
    decode_ms = result["decode"]["ms_per_token_with_embedding"]["median"]
    decode_only_ms = result["decode"]["ms_per_token_decoder_only"]["median"]
    floor_ms = per_token / gbps * 1e3
    floor_kv_ms = (per_token + kv_traffic) / gbps * 1e3
    results = {
        "benchmark": "onnx",
        "command": common.command_line(),
        "date": common.utc_now(),
        "run": run,
        "machine": {**common.machine_info(args.threads), "onnxruntime": onnxruntime.__version__,
                    "onnxruntime_threads": args.threads, "provider": "CPUExecutionProvider"},
        "load": load_info,
        "load_scope": "timing part (after the export; the export's own is export.load)",
        "wait_quiet": quiet,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "export_worker"},
        "out": out_str,
        "recipe": manifest.get("quantization", {}).get("recipe"),
        "export": None if export is None else {**{k: v for k, v in export.items() if k != "log"},
                                               "stage_seconds": manifest.get("stage_seconds")},
        "model": {"preset": args.preset, "max_context": backend_max_context(manifest), "image_hw": manifest["export_shape"]["image_hw"],
                  "params": {**params, "total": total_params}, "toolchain": manifest.get("toolchain")},
        "files": files,
        "size": {"bytes": total_bytes, "bits_per_weight": 8 * total_bytes / total_params,
                 "without_encoders_bytes": files["token_embedding"]["bytes"] + files["text_decoder"]["bytes"]},
        "onnxruntime": result,
        "io_binding_rounds": rounds,
        "int8_probe": probe,
        "profile": profile,
        "floor": {
            "decode_read_bytes": per_token,
            "decode_read_matmul_nbits_bytes": files["text_decoder"]["matmul_nbits_bytes"],
            "embedding_row_bytes": emb_row,
            "kv_cache_bytes": cache_bytes,
            "kv_traffic_bytes": kv_traffic,
            "bandwidth_gbps": bandwidth["best_gbps"],
            "floor_ms": floor_ms,
            "floor_with_kv_ms": floor_kv_ms,
            "ratio_to_floor": decode_ms / floor_ms,
            "ratio_to_floor_decoder_only": decode_only_ms / floor_ms,
            "ratio_to_floor_with_kv": decode_ms / floor_kv_ms,
        },
        "executorch_same_run": executorch,
        "memory": {"peak_rss_bytes": peak_rss},
        "bandwidth": bandwidth,
    }
    common.write_json(out, results)
    console.print(f"wrote {out}")
    return render(results, args.markdown, console, Table)


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


# ---------------------------------------------------------------- reporting

def render(results: dict, markdown: bool, console, Table) -> int:
    """Print the tables; with ``markdown``, write this run's section of BENCHMARKS.md."""
    rows = summary_rows(results)
    table = Table(title=f"ONNX Runtime (CPU, {recipe_text(results)}), preset {results['model']['preset']}, "
                        f"{results['machine']['onnxruntime_threads']} threads")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for metric, value in rows:
        table.add_row(metric, value)
    console.print(table)
    cmp = comparison_table(results)
    if cmp:
        ctable = Table(title="Same run: ONNX Runtime vs ExecuTorch")
        for h in cmp[0]:
            ctable.add_column(h, justify="right" if h else "left")
        for row in cmp[1]:
            ctable.add_row(*row)
        console.print(ctable)
    if results.get("profile") and "error" not in results["profile"]:
        console.print("\n".join(profile_lines(results)), markup=False, highlight=False)
    console.print(common.describe_load(results["load"]))
    if markdown:
        path = common.update_markdown_section(f"onnx:{results['model']['preset']}", markdown_section(results, rows, cmp))
        console.print(f"updated {path}")
    return 0


def recipe_text(r: dict) -> str:
    rec = r.get("recipe") or {}
    if rec.get("scheme") == "int4":
        return f"int4 MatMulNBits, block {rec.get('block_size')}"
    return rec.get("scheme", "?")


def _span(values, fmt: str) -> str:
    return android._span(values, fmt)


def summary_rows(r: dict) -> list[tuple[str, str]]:
    p, ort_r, fl, size = r["model"]["params"], r["onnxruntime"], r["floor"], r["size"]
    rows = []
    ex = r.get("export")
    if ex:
        rows.append(("export wall time / peak RSS (subprocess)", f"{ex['wall_s']:.0f} s / {common.fmt_mb(ex['peak_rss_bytes'])}"))
        st = {k: v for k, v in (ex.get("stage_seconds") or {}).items() if not k.startswith(("export ", "int4 "))}
        if st:
            rows.append(("export stages", "; ".join(f"{k} {v:.0f} s" for k, v in st.items())))
    rows.append(("params: text / vision / audio", " / ".join(common.fmt_count(p[k]) for k in ("text", "vision", "audio") if k in p)))
    for comp, f in r["files"].items():
        name = f["file"] + (f" + {f['external_data']}" if f.get("external_data") else "")
        bits = f" = {f['bits_per_weight']:.2f} bits/weight over {common.fmt_count(f['params'])}" if f.get("bits_per_weight") else ""
        rows.append((name, f"{common.fmt_mb(f['bytes'])}{bits}" + (f"; {f['matmul_nbits']} MatMulNBits" if f["matmul_nbits"] else "")))
    rows += [
        ("all files", f"{common.fmt_mb(size['bytes'])} ({size['bits_per_weight']:.2f} bits/weight over {common.fmt_count(p['total'])})"),
        ("without the encoders (token_embedding + text_decoder)", common.fmt_mb(size["without_encoders_bytes"])),
    ]
    d = ort_r["decode"]
    rows += [
        ("session load (all files) / RSS after runs", f"{ort_r['load_s'] * 1e3:.0f} ms / +{common.fmt_mb(ort_r['rss_after_runs_bytes'])}"),
        (f"prefill, {ort_r['prefill']['tokens']} tokens", f"{ort_r['prefill']['tokens_per_s']:.0f} tokens/s ({ort_r['prefill']['ms']['median']:.0f} ms)"),
        (f"decode, median of {d['steps']} steps (embedding + decoder + argmax)",
         f"{d['ms_per_token_with_embedding']['median']:.2f} ms/token ({d['tokens_per_s']:.0f} tokens/s)"),
        ("decode, text_decoder call only", f"{d['ms_per_token_decoder_only']['median']:.2f} ms/token"),
        ("token_embedding call", f"{d['ms_token_embedding']['median']:.3f} ms"),
    ]
    rounds = r.get("io_binding_rounds") or []
    if rounds:
        rows.append((f"decoder call, KV cache IO-bound vs through numpy (paired rounds x{len(rounds)})",
                     f"{_span([x['bound_ms'] for x in rounds], '{:.2f}')} vs {_span([x['unbound_ms'] for x in rounds], '{:.2f}')} ms"))
    rows += [
        ("decode weights read per token (int4 + fp32 scales, fp32 norms/biases, one fp32 embedding row)", common.fmt_mb(fl["decode_read_bytes"])),
        ("KV cache traffic per step (whole static cache: scatter read + write, attention read)",
         f"{common.fmt_mb(fl['kv_traffic_bytes'])} (3 x {common.fmt_mb(fl['kv_cache_bytes'])})"),
        (f"memory bandwidth, {r['bandwidth']['threads']} threads (sum / gemv)",
         f"{r['bandwidth']['sum_gbps']:.1f} / {r['bandwidth']['gemv_gbps']:.1f} GB/s"),
        ("decode bandwidth floor: weights / weights + KV traffic", f"{fl['floor_ms']:.2f} / {fl['floor_with_kv_ms']:.2f} ms/token"),
        ("decode / floor: weights / weights + KV traffic", f"{fl['ratio_to_floor']:.2f}x / {fl['ratio_to_floor_with_kv']:.2f}x"),
    ]
    probe = r.get("int8_probe")
    if probe and "error" not in probe:
        rows.append((f"probe, int8 activations (accuracy_level {INT8_ACCURACY_LEVEL}; not exported)",
                     f"prefill {probe['prefill']['tokens_per_s']:.0f} tokens/s, decode "
                     f"{probe['decode']['ms_per_token_with_embedding']['median']:.2f} ms/token; logits differ by "
                     f"{probe['logits_rel_max_abs']:.1e} x max, top-1 agrees on {100 * probe['top1_agreement']:.0f}%"))
    rows.append(("vision encoder", f"{ort_r['vision_encoder']['ms']['median']:.1f} ms/image"))
    if ort_r.get("audio_encoder"):
        rows.append(("audio encoder", f"{ort_r['audio_encoder']['ms']['median']:.1f} ms/clip"))
    return rows


def comparison_table(r: dict) -> tuple[list[str], list[list[str]]] | None:
    et, o = r.get("executorch_same_run"), r["onnxruntime"]
    if not et:
        return None
    od = o["decode"]
    rows = [
        ["size (all files)", common.fmt_mb(r["size"]["bytes"]), common.fmt_mb(et["pte_bytes"])],
        ["bits per weight", f"{r['size']['bits_per_weight']:.2f}", f"{et['bits_per_weight']:.2f}"],
        ["load ms", f"{o['load_s'] * 1e3:.0f}", f"{et['load_s'] * 1e3:.0f}"],
        ["prefill tokens/s", f"{o['prefill']['tokens_per_s']:.0f}", f"{et['prefill_tokens_per_s']:.0f}"],
        ["decode ms/token (with embedding)", f"{od['ms_per_token_with_embedding']['median']:.2f}", f"{et['decode_ms']:.2f}"],
        ["decode ms/token (decoder only)", f"{od['ms_per_token_decoder_only']['median']:.2f}", f"{et['decode_decoder_only_ms']:.2f}"],
        ["decode bandwidth floor ms (weights)", f"{r['floor']['floor_ms']:.2f}", f"{et['floor_ms']:.2f}"],
        ["vision encoder ms", f"{o['vision_encoder']['ms']['median']:.1f}", f"{et['vision_ms']:.1f}"],
    ]
    if o.get("audio_encoder") and et.get("audio_ms") is not None:
        rows.append(["audio encoder ms", f"{o['audio_encoder']['ms']['median']:.1f}", f"{et['audio_ms']:.1f}"])
    rows.append(["other processes' load while timing (cores)", f"{r['load']['other_cores']:.2f}", f"{et['load']['other_cores']:.2f}"])
    rec = et.get("recipe") or {}
    return ["", f"ONNX Runtime ({recipe_text(r)})", f"ExecuTorch .pte ({rec.get('linear', '?')}, group {rec.get('group_size', '?')})"], rows


def profile_lines(r: dict) -> list[str]:
    prof = r["profile"]
    total = prof["kernels_ms"]
    lines = [f"one text_decoder decode step at position {prof['position']} (onnxruntime profiler, median of {prof['steps']} steps): "
             f"{prof['run_ms_median']:.2f} ms per run, {total:.2f} ms in kernels "
             f"(without the profiler the decoder call takes {r['onnxruntime']['decode']['ms_per_token_decoder_only']['median']:.2f} ms)"]
    for op, v in list(prof["ops"].items())[:8]:
        extra = ""
        if op == "MatMulNBits" and v["ms"] > 0:
            extra = f" = {r['floor']['decode_read_matmul_nbits_bytes'] / (v['ms'] * 1e-3) / common.GB:.1f} GB/s over their " \
                    f"{common.fmt_mb(r['floor']['decode_read_matmul_nbits_bytes'])}"
        lines.append(f"  {op}: {v['ms']:.3f} ms ({100 * v['ms'] / total:.0f}%, {v['calls']} calls){extra}")
    rest = list(prof["ops"].values())[8:]
    if rest:
        lines.append(f"  {len(rest)} other op types: {sum(v['ms'] for v in rest):.3f} ms")
    return lines


def markdown_section(r: dict, rows, cmp) -> str:
    mach, run = r["machine"], r.get("run") or {}
    lines = [
        f"## ONNX Runtime (CPU, {recipe_text(r)}), preset `{r['model']['preset']}`",
        "",
        f"- Command: `{r['command']}`",
        f"- Date: {r['date']}",
    ]
    if "android" in run.get("legs", []):
        lines.append(f"- Run `{run['id']}`: taken in the same run as the ExecuTorch section (`{run['outputs']['android']}`), "
                     "right after it, with the same preset, threads, prefill/decode lengths and prefill chunk")
    lines += [
        f"- Machine: {mach['cpu_model']}, {mach['logical_cores']} cores, {mach['memory_bytes'] / 2**30:.0f} GiB; "
        f"onnxruntime {mach['onnxruntime']} ({mach['provider']}, {mach['onnxruntime_threads']} intra-op threads), torch {mach['torch']}",
        f"- Load while timing: {common.describe_load(r['load'])}"
        + (f"; during the export: {r['export']['load']['other_cores']:.2f} cores" if r.get("export") and r["export"].get("load") else ""),
        f"- Recipe: every linear {recipe_text(r)} (symmetric, fp32 scales, fp32 activations; lm_head included), token "
        f"embedding fp32; KV cache {r['model']['max_context']} slots as explicit inputs/outputs, kept in place by IO "
        f"binding; prefill chunk {r['args']['max_seq_len']}; export validation off (`small` has no tokenizer for parity probes)",
        f"- Raw results: `{r['out']}`",
        "",
        common.markdown_table(["Metric", "Value"], [list(row) for row in rows]),
        "",
    ]
    if cmp:
        lines += [common.markdown_table(*cmp), ""]
    if r.get("profile") and "error" not in r["profile"]:
        lines += ["Where a decode step goes (onnxruntime profiler, time per op type per step):", "", "```",
                  *profile_lines(r), "```", ""]
    lines += [
        "How: the export runs in a subprocess (`export_onnx`, validation off); every number goes through "
        "`OnnxBackend` (onnxruntime CPUExecutionProvider) with bench/android.py's `measure`: prefill feeds random "
        "embeddings through `text_decoder` in chunks of max_seq_len from an empty cache (median of runs); decode is "
        "greedy, one token per step, median over the steps. Floor: the decoder graph's initializer bytes (what one "
        "step reads) plus one fp32 embedding row, over the faster bandwidth probe of this run.",
        "",
        "Analysis (generated from this run's numbers):",
        "",
        *analysis_lines(r),
    ]
    return "\n".join(lines)


def analysis_lines(r: dict) -> list[str]:
    fl, o = r["floor"], r["onnxruntime"]
    dec = o["decode"]["ms_per_token_with_embedding"]["median"]
    dec_only = o["decode"]["ms_per_token_decoder_only"]["median"]
    out = [f"- **Decode vs floor:** {dec:.2f} ms/token is {fl['ratio_to_floor']:.2f}x the floor of its weights "
           f"({fl['floor_ms']:.2f} ms: {common.fmt_mb(fl['decode_read_bytes'])} at {fl['bandwidth_gbps']:.1f} GB/s) and "
           f"{fl['ratio_to_floor_with_kv']:.2f}x the floor with this graph's KV traffic ({fl['floor_with_kv_ms']:.2f} ms: "
           f"the static cache is scattered into a new present and attended over in full, "
           f"{common.fmt_mb(fl['kv_traffic_bytes'])} per step at any position)."]
    prof = r.get("profile")
    if prof and "error" not in prof:
        ops = prof["ops"]
        nb = ops.get("MatMulNBits")
        top = ", ".join(f"{k} {100 * v['ms'] / prof['kernels_ms']:.0f}%" for k, v in list(ops.items())[:4])
        text = f"- **Where decode time goes:** by op type, {top} of the kernel time"
        if nb and nb["ms"] > 0:
            gbps = fl["decode_read_matmul_nbits_bytes"] / (nb["ms"] * 1e-3) / common.GB
            text += (f"; the {nb['calls']} MatMulNBits read their {common.fmt_mb(fl['decode_read_matmul_nbits_bytes'])} "
                     f"at {gbps:.1f} GB/s ({gbps / fl['bandwidth_gbps']:.2f}x the bandwidth probe)")
        text += (f" (a profiled step takes {prof['run_ms_median']:.2f} ms vs {dec_only:.2f} ms without the profiler, whose "
                 "per-node cost inflates the many small ops most: read these as rough shares)")
        out.append(text + ".")
    rounds = r.get("io_binding_rounds") or []
    if rounds:
        saved = [x["unbound_ms"] - x["bound_ms"] for x in rounds]
        med = float(np.median(saved))
        out.append(f"- **IO binding:** keeping the KV cache in onnxruntime-bound buffers instead of round-tripping it "
                   f"through numpy ({common.fmt_mb(fl['kv_cache_bytes'])} of presents per step) {'saves' if med >= 0 else 'costs'} "
                   f"{abs(med):.2f} ms per decoder call, median of {len(rounds)} paired rounds (each "
                   f"between {min(saved):+.2f} and {max(saved):+.2f} ms; "
                   f"{_span([x['bound_ms'] for x in rounds], '{:.2f}')} vs {_span([x['unbound_ms'] for x in rounds], '{:.2f}')} ms); "
                   "same outputs bit for bit (tests/test_onnx_backend_iobinding.py).")
    probe = r.get("int8_probe")
    if probe and "error" not in probe:
        pd = probe["decode"]["ms_per_token_with_embedding"]["median"]
        out.append(f"- **int8 activations:** the same decoder with `accuracy_level={INT8_ACCURACY_LEVEL}` on its "
                   f"{probe['matmul_nbits']} MatMulNBits (onnxruntime's int8 kernels: activations quantized to int8 on the "
                   f"fly, per block here, per token in ExecuTorch's 8da4w) decodes at {pd:.2f} ms/token ({dec / pd:.1f}x the shipped graph's speed) and prefills "
                   f"{probe['prefill']['tokens_per_s']:.0f} tokens/s; its logits move by {probe['logits_rel_max_abs']:.1e} x "
                   f"their max on random inputs (top-1 agrees on {100 * probe['top1_agreement']:.0f}% of "
                   f"{probe['compared_positions']} positions). Not what `autoglm-export onnx` ships: it would need an "
                   "exporter option and parity thresholds for dynamic int8.")
    files = r["files"]
    emb = files["token_embedding"]
    out.append(f"- **Size:** {common.fmt_mb(r['size']['bytes'])} in all, {r['size']['bits_per_weight']:.2f} bits/weight; the "
               f"fp32 token embedding is {common.fmt_mb(emb['bytes'])} of it ({100 * emb['bytes'] / r['size']['bytes']:.0f}%), "
               f"the int4 decoder {common.fmt_mb(files['text_decoder']['bytes'])} "
               f"({files['text_decoder']['bits_per_weight']:.2f} bits/weight incl. fp32 scales, one per block).")
    et = r.get("executorch_same_run")
    if et:
        out.append(f"- **vs ExecuTorch, same run:** decode {dec:.2f} vs {et['decode_ms']:.2f} ms/token "
                   f"({dec / et['decode_ms']:.1f}x), prefill {o['prefill']['tokens_per_s']:.0f} vs "
                   f"{et['prefill_tokens_per_s']:.0f} tokens/s, files {common.fmt_mb(r['size']['bytes'])} vs "
                   f"{common.fmt_mb(et['pte_bytes'])}; other processes kept {r['load']['other_cores']:.2f} vs "
                   f"{et['load']['other_cores']:.2f} cores busy while each was timed.")
    ex = r.get("export")
    if ex:
        out.append(f"- **Export:** {ex['wall_s'] / 60:.1f} min wall, {common.fmt_mb(ex['peak_rss_bytes'])} peak RSS.")
    out.append(f"- **Decoder call vs step:** token_embedding + argmax add {dec - dec_only:.2f} ms per token. Decode cost "
               "does not depend on the position here: every step reads and rewrites the whole static cache.")
    return out


if __name__ == "__main__":
    sys.exit(main())

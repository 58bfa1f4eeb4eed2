"""The ONNX Runtime benchmark's report: terminal tables, the BENCHMARKS.md section and its generated analysis."""

from __future__ import annotations

import numpy as np
from harness.console import print_columns_table, print_metric_table
from harness.load import describe_load
from harness.markdown import machine_line, markdown_table, section_head, span, timing_load_line, update_markdown_section
from harness.units import GB, fmt_count, fmt_mb
from onnx_runtime_probes import INT8_ACCURACY_LEVEL

TARGET_RATIO = 1.5  # issue 13: ONNX decode <= 1.5x its bandwidth floor
ACTIVATIONS = {0: "fp32", INT8_ACCURACY_LEVEL: "int8"}  # MatMulNBits accuracy_level -> activations


def render(results: dict, markdown: bool, console) -> int:
    """Print the tables; with ``markdown``, write this run's section of BENCHMARKS.md."""
    rows = summary_rows(results)
    title = (
        f"ONNX Runtime (CPU, {recipe_text(results)}), preset {results['model']['preset']}, "
        f"{results['machine']['onnxruntime_threads']} threads"
    )
    print_metric_table(console, title, rows)
    cmp = comparison_table(results)
    if cmp:
        print_columns_table(console, "Same run: ONNX Runtime vs ExecuTorch", *cmp)
    if results.get("profile") and "error" not in results["profile"]:
        console.print("\n".join(profile_lines(results)), markup=False, highlight=False)
    console.print(describe_load(results["load"]))
    if markdown:
        path = update_markdown_section(f"onnx:{results['model']['preset']}", markdown_section(results, rows, cmp))
        console.print(f"updated {path}")
    return 0


def recipe_text(r: dict) -> str:
    rec = r.get("recipe") or {}
    if rec.get("scheme") == "int4":
        return f"int4 MatMulNBits, block {rec.get('block_size')}"
    return rec.get("scheme", "?")


def summary_rows(r: dict) -> list[tuple[str, str]]:
    p, ort_r, fl, size = r["model"]["params"], r["onnxruntime"], r["floor"], r["size"]
    rows = []
    ex = r.get("export")
    if ex:
        rows.append(
            ("export wall time / peak RSS (subprocess)", f"{ex['wall_s']:.0f} s / {fmt_mb(ex['peak_rss_bytes'])}")
        )
        st = {k: v for k, v in (ex.get("stage_seconds") or {}).items() if not k.startswith(("export ", "int4 "))}
        if st:
            rows.append(("export stages", "; ".join(f"{k} {v:.0f} s" for k, v in st.items())))
    rows.append(
        ("params: text / vision / audio", " / ".join(fmt_count(p[k]) for k in ("text", "vision", "audio") if k in p))
    )
    for f in r["files"].values():
        name = f["file"] + (f" + {f['external_data']}" if f.get("external_data") else "")
        bits = (
            f" = {f['bits_per_weight']:.2f} bits/weight over {fmt_count(f['params'])}"
            if f.get("bits_per_weight")
            else ""
        )
        rows.append(
            (name, f"{fmt_mb(f['bytes'])}{bits}" + (f"; {f['matmul_nbits']} MatMulNBits" if f["matmul_nbits"] else ""))
        )
    rows += [
        (
            "all files",
            f"{fmt_mb(size['bytes'])} ({size['bits_per_weight']:.2f} bits/weight over {fmt_count(p['total'])})",
        ),
        ("without the encoders (token_embedding + text_decoder)", fmt_mb(size["without_encoders_bytes"])),
    ]
    d = ort_r["decode"]
    rows += [
        (
            "session load (all files) / RSS after runs",
            f"{ort_r['load_s'] * 1e3:.0f} ms / +{fmt_mb(ort_r['rss_after_runs_bytes'])}",
        ),
        (
            f"prefill, {ort_r['prefill']['tokens']} tokens",
            f"{ort_r['prefill']['tokens_per_s']:.0f} tokens/s ({ort_r['prefill']['ms']['median']:.0f} ms)",
        ),
        (
            f"decode, median of {d['steps']} steps (embedding + decoder + argmax)",
            f"{d['ms_per_token_with_embedding']['median']:.2f} ms/token ({d['tokens_per_s']:.0f} tokens/s)",
        ),
        ("decode, text_decoder call only", f"{d['ms_per_token_decoder_only']['median']:.2f} ms/token"),
        ("token_embedding call", f"{d['ms_token_embedding']['median']:.3f} ms"),
    ]
    rounds = r.get("io_binding_rounds") or []
    if rounds:
        rows.append(
            (
                f"decoder call, KV cache IO-bound vs through numpy (paired rounds x{len(rounds)})",
                f"{span([x['bound_ms'] for x in rounds], '{:.2f}')} vs {span([x['unbound_ms'] for x in rounds], '{:.2f}')} ms",
            )
        )
    rows += [
        (
            "decode weights read per token (int4 + fp32 scales, fp32 norms/biases, one fp32 embedding row)",
            fmt_mb(fl["decode_read_bytes"]),
        ),
        (
            f"KV cache read per step (GroupQueryAttention reads the slots in use; position {fl['kv_mean_position']:.0f})",
            f"{fmt_mb(fl['kv_traffic_bytes'])} of the {fmt_mb(fl['kv_cache_bytes'])} static cache",
        ),
        (
            f"memory bandwidth, {r['bandwidth']['threads']} threads (sum / gemv)",
            f"{r['bandwidth']['sum_gbps']:.1f} / {r['bandwidth']['gemv_gbps']:.1f} GB/s",
        ),
        (
            "decode bandwidth floor: weights / weights + KV traffic",
            f"{fl['floor_ms']:.2f} / {fl['floor_with_kv_ms']:.2f} ms/token",
        ),
        (
            "decode / floor: weights / weights + KV traffic",
            f"{fl['ratio_to_floor']:.2f}x / {fl['ratio_to_floor_with_kv']:.2f}x",
        ),
    ]
    if fl.get("int8_ratio_to_floor"):
        rows.append(
            (
                f"decode / floor (weights), int8 activations (target <= {TARGET_RATIO}x)",
                f"{fl['int8_ratio_to_floor']:.2f}x",
            )
        )
    probe = r.get("int8_probe")
    if probe and "error" not in probe:
        rows.append(
            (
                f"probe, int8 activations (accuracy_level {INT8_ACCURACY_LEVEL}; `onnx --int8-activations`)",
                (
                    f"prefill {probe['prefill']['tokens_per_s']:.0f} tokens/s, decode "
                    f"{probe['decode']['ms_per_token_with_embedding']['median']:.2f} ms/token; logits differ by "
                    f"{probe['logits_rel_max_abs']:.1e} x max, top-1 agrees on {100 * probe['top1_agreement']:.0f}%"
                ),
            )
        )
    kernels = kernels_alone(r)
    for mode in kernels or []:
        rows.append(
            (
                f"the decoder's MatMulNBits alone (nothing else in the graph), block {mode['block_size']}, "
                f"{ACTIVATIONS[mode['accuracy_level']]} activations",
                f"{mode['ms']:.2f} ms = {mode['ratio']:.2f}x the floor of their {fmt_mb(mode['bytes'])}",
            )
        )
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
        ["size (all files)", fmt_mb(r["size"]["bytes"]), fmt_mb(et["pte_bytes"])],
        ["bits per weight", f"{r['size']['bits_per_weight']:.2f}", f"{et['bits_per_weight']:.2f}"],
        ["load ms", f"{o['load_s'] * 1e3:.0f}", f"{et['load_s'] * 1e3:.0f}"],
        ["prefill tokens/s", f"{o['prefill']['tokens_per_s']:.0f}", f"{et['prefill_tokens_per_s']:.0f}"],
        [
            "decode ms/token (with embedding)",
            f"{od['ms_per_token_with_embedding']['median']:.2f}",
            f"{et['decode_ms']:.2f}",
        ],
        [
            "decode ms/token (decoder only)",
            f"{od['ms_per_token_decoder_only']['median']:.2f}",
            f"{et['decode_decoder_only_ms']:.2f}",
        ],
        ["decode bandwidth floor ms (weights)", f"{r['floor']['floor_ms']:.2f}", f"{et['floor_ms']:.2f}"],
        ["vision encoder ms", f"{o['vision_encoder']['ms']['median']:.1f}", f"{et['vision_ms']:.1f}"],
    ]
    if o.get("audio_encoder") and et.get("audio_ms") is not None:
        rows.append(["audio encoder ms", f"{o['audio_encoder']['ms']['median']:.1f}", f"{et['audio_ms']:.1f}"])
    rows.append(
        [
            "other processes' load while timing (cores)",
            f"{r['load']['other_cores']:.2f}",
            f"{et['load']['other_cores']:.2f}",
        ]
    )
    rec = et.get("recipe") or {}
    return [
        "",
        f"ONNX Runtime ({recipe_text(r)})",
        f"ExecuTorch .pte ({rec.get('linear', '?')}, group {rec.get('group_size', '?')})",
    ], rows


def profile_lines(r: dict) -> list[str]:
    prof = r["profile"]
    total = prof["kernels_ms"]
    lines = [
        (
            f"one text_decoder decode step at position {prof['position']} (onnxruntime profiler, median of {prof['steps']} steps): "
            f"{prof['run_ms_median']:.2f} ms per run, {total:.2f} ms in kernels "
            f"(without the profiler the decoder call takes {r['onnxruntime']['decode']['ms_per_token_decoder_only']['median']:.2f} ms)"
        )
    ]
    for op, v in list(prof["ops"].items())[:8]:
        extra = ""
        if op == "MatMulNBits" and v["ms"] > 0:
            extra = (
                f" = {r['floor']['decode_read_matmul_nbits_bytes'] / (v['ms'] * 1e-3) / GB:.1f} GB/s over their "
                f"{fmt_mb(r['floor']['decode_read_matmul_nbits_bytes'])}"
            )
        lines.append(f"  {op}: {v['ms']:.3f} ms ({100 * v['ms'] / total:.0f}%, {v['calls']} calls){extra}")
    rest = list(prof["ops"].values())[8:]
    if rest:
        lines.append(f"  {len(rest)} other op types: {sum(v['ms'] for v in rest):.3f} ms")
    return lines


def markdown_section(r: dict, rows, cmp) -> str:
    mach, run = r["machine"], r.get("run") or {}
    lines = section_head(f"## ONNX Runtime (CPU, {recipe_text(r)}), preset `{r['model']['preset']}`", r)
    if "android" in run.get("legs", []):
        lines.append(
            f"- Run `{run['id']}`: taken in the same run as the ExecuTorch section (`{run['outputs']['android']}`), "
            "right after it, with the same preset, threads, prefill/decode lengths and prefill chunk"
        )
    lines += [
        machine_line(
            mach,
            f"onnxruntime {mach['onnxruntime']} ({mach['provider']}, {mach['onnxruntime_threads']} intra-op threads), "
            f"torch {mach['torch']}",
        ),
        timing_load_line(r),
        (
            f"- Recipe: every linear {recipe_text(r)} (symmetric, fp32 scales, fp32 activations; lm_head included), token "
            f"embedding fp32; attention one GroupQueryAttention per layer; KV cache {r['model']['max_context']} slots as explicit "
            f"inputs/outputs, updated in place (one IO-bound buffer per cache tensor); prefill chunk {r['args']['max_seq_len']}; export validation off (`small` has no tokenizer for parity probes)"
        ),
        f"- Raw results: `{r['out']}`",
        "",
        markdown_table(["Metric", "Value"], [list(row) for row in rows]),
        "",
    ]
    if cmp:
        lines += [markdown_table(*cmp), ""]
    if r.get("profile") and "error" not in r["profile"]:
        lines += [
            "Where a decode step goes (onnxruntime profiler, time per op type per step):",
            "",
            "```",
            *profile_lines(r),
            "```",
            "",
        ]
    lines += [
        (
            "How: the export runs in a subprocess (`export_bundle('onnx', ...)`, validation off); every number goes through "
            "`OnnxBackend` (onnxruntime CPUExecutionProvider) with bench/harness/backend_timing.py's `measure_backend`: prefill feeds random "
            "embeddings through `text_decoder` in chunks of max_seq_len from an empty cache (median of runs); decode is "
            "greedy, one token per step, median over the steps. Floor: the decoder graph's initializer bytes (what one "
            "step reads) plus one fp32 embedding row, over the faster bandwidth probe of this run."
        ),
        "",
        "Analysis (generated from this run's numbers):",
        "",
        *analysis_lines(r),
    ]
    return "\n".join(lines)


def kernels_alone(r: dict) -> list[dict] | None:
    """The MatMulNBits-alone probe's modes, each with its ratio to the floor of the bytes it reads."""
    k = r.get("matmul_nbits_alone")
    if not k or "error" in k:
        return None
    gbps = r["floor"]["bandwidth_gbps"] * GB
    return [{**m, "ratio": m["ms"] / (m["bytes"] / gbps * 1e3)} for m in k["modes"]]


def analysis_lines(r: dict) -> list[str]:
    fl, o = r["floor"], r["onnxruntime"]
    dec = o["decode"]["ms_per_token_with_embedding"]["median"]
    dec_only = o["decode"]["ms_per_token_decoder_only"]["median"]
    out = [
        (
            f"- **Decode vs floor:** {dec:.2f} ms/token is {fl['ratio_to_floor']:.2f}x the floor of its weights "
            f"({fl['floor_ms']:.2f} ms: {fmt_mb(fl['decode_read_bytes'])} at {fl['bandwidth_gbps']:.1f} GB/s) and "
            f"{fl['ratio_to_floor_with_kv']:.2f}x the floor with this graph's KV traffic ({fl['floor_with_kv_ms']:.2f} ms: "
            f"GroupQueryAttention reads the {fl['kv_mean_position']:.0f} slots in use, "
            f"{fmt_mb(fl['kv_traffic_bytes'])} per step, and writes one in place)"
            + (
                f"; with int8 activations {fl['int8_ratio_to_floor']:.2f}x the weights' floor (target <= {TARGET_RATIO}x)."
                if fl.get("int8_ratio_to_floor")
                else "."
            )
        )
    ]
    prof = r.get("profile")
    if prof and "error" not in prof:
        ops = prof["ops"]
        nb = ops.get("MatMulNBits")
        top = ", ".join(f"{k} {100 * v['ms'] / prof['kernels_ms']:.0f}%" for k, v in list(ops.items())[:4])
        text = f"- **Where decode time goes:** by op type, {top} of the kernel time"
        if nb and nb["ms"] > 0:
            gbps = fl["decode_read_matmul_nbits_bytes"] / (nb["ms"] * 1e-3) / GB
            text += (
                f"; the {nb['calls']} MatMulNBits read their {fmt_mb(fl['decode_read_matmul_nbits_bytes'])} "
                f"at {gbps:.1f} GB/s ({gbps / fl['bandwidth_gbps']:.2f}x the bandwidth probe)"
            )
        text += (
            f" (a profiled step takes {prof['run_ms_median']:.2f} ms vs {dec_only:.2f} ms without the profiler, whose "
            "per-node cost inflates the many small ops most: read these as rough shares)"
        )
        out.append(text + ".")
    rounds = r.get("io_binding_rounds") or []
    if rounds:
        saved = [x["unbound_ms"] - x["bound_ms"] for x in rounds]
        med = float(np.median(saved))
        out.append(
            f"- **IO binding:** keeping the KV cache in onnxruntime-bound buffers instead of round-tripping it "
            f"through numpy ({fmt_mb(fl['kv_cache_bytes'])} of pasts and presents copied per step) "
            f"{'saves' if med >= 0 else 'costs'} "
            f"{abs(med):.2f} ms per decoder call, median of {len(rounds)} paired rounds (each "
            f"between {min(saved):+.2f} and {max(saved):+.2f} ms; "
            f"{span([x['bound_ms'] for x in rounds], '{:.2f}')} vs {span([x['unbound_ms'] for x in rounds], '{:.2f}')} ms); "
            "same logits bit for bit (tests/runtime/backends/test_onnx_iobinding.py)."
        )
    probe = r.get("int8_probe")
    if probe and "error" not in probe:
        pd = probe["decode"]["ms_per_token_with_embedding"]["median"]
        out.append(
            f"- **int8 activations:** the same decoder with `accuracy_level={INT8_ACCURACY_LEVEL}` on its "
            f"{probe['matmul_nbits']} MatMulNBits (onnxruntime's int8 kernels: activations quantized to int8 on the "
            f"fly, per block here, per token in ExecuTorch's 8da4w) decodes at {pd:.2f} ms/token ({dec / pd:.1f}x the shipped graph's speed) and prefills "
            f"{probe['prefill']['tokens_per_s']:.0f} tokens/s; its logits move by {probe['logits_rel_max_abs']:.1e} x "
            f"their max on random inputs (top-1 agrees on {100 * probe['top1_agreement']:.0f}% of "
            f"{probe['compared_positions']} positions). `autoglm-export onnx --int8-activations` exports these graphs, "
            "gated by their own parity thresholds (quant kind `int8_activations`)."
        )
    kernels = kernels_alone(r)
    if kernels:
        best = min(kernels, key=lambda m: m["ratio"])
        each = "; ".join(
            f"block {m['block_size']} {ACTIVATIONS[m['accuracy_level']]} {m['ms']:.2f} ms = {m['ratio']:.2f}x"
            for m in kernels
        )
        text = (
            f"- **The kernels' ceiling:** the decoder's {r['matmul_nbits_alone']['nodes']} MatMulNBits in a graph with "
            f"nothing else, against the floor of the bytes each variant reads (alternating rounds): {each}"
        )
        if best["ratio"] > TARGET_RATIO:
            text += (
                f". Even the fastest, block {best['block_size']} with {ACTIVATIONS[best['accuracy_level']]} "
                f"activations, is past the {TARGET_RATIO}x target on its own, so no change to the rest of the graph "
                "brings a decode step there with this onnxruntime on this machine"
            )
        out.append(text + ".")
    files = r["files"]
    emb = files["token_embedding"]
    out.append(
        f"- **Size:** {fmt_mb(r['size']['bytes'])} in all, {r['size']['bits_per_weight']:.2f} bits/weight; the "
        f"fp32 token embedding is {fmt_mb(emb['bytes'])} of it ({100 * emb['bytes'] / r['size']['bytes']:.0f}%), "
        f"the int4 decoder {fmt_mb(files['text_decoder']['bytes'])} "
        f"({files['text_decoder']['bits_per_weight']:.2f} bits/weight incl. fp32 scales, one per block)."
    )
    et = r.get("executorch_same_run")
    if et:
        out.append(
            f"- **vs ExecuTorch, same run:** decode {dec:.2f} vs {et['decode_ms']:.2f} ms/token "
            f"({dec / et['decode_ms']:.1f}x), prefill {o['prefill']['tokens_per_s']:.0f} vs "
            f"{et['prefill_tokens_per_s']:.0f} tokens/s, files {fmt_mb(r['size']['bytes'])} vs "
            f"{fmt_mb(et['pte_bytes'])}; other processes kept {r['load']['other_cores']:.2f} vs "
            f"{et['load']['other_cores']:.2f} cores busy while each was timed."
        )
    ex = r.get("export")
    if ex:
        out.append(f"- **Export:** {ex['wall_s'] / 60:.1f} min wall, {fmt_mb(ex['peak_rss_bytes'])} peak RSS.")
    out.append(
        f"- **Decoder call vs step:** token_embedding + argmax add {dec - dec_only:.2f} ms per token. Attention "
        "cost grows with the position (the slots in use), not with the static cache's size."
    )
    return out

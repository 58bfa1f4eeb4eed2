"""Eager PyTorch benchmark of our re-implemented model (the baseline every exported target is compared with).

    .venv/bin/python bench/eager.py --preset small --out bench/results/eager-small.json [--markdown]

Measures model build time, parameter counts, peak RSS, prefill tokens/s, decode ms/token (static KV
cache, one token per step), vision/audio encoder latency at the preset's export shapes, and the memory
bandwidth of this machine, from which it derives the decode "bandwidth floor": the time just to read
the decoder weights that every decode step touches.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from harness import backend_timing, results
from harness.console import print_metric_table
from harness.load import LoadMonitor, describe_load
from harness.machine import machine_info, memory_bandwidth
from harness.markdown import machine_line, markdown_table, section_head, update_markdown_section
from harness.memory import current_rss_bytes, peak_rss_bytes
from harness.paths import default_results, repo_relative
from harness.timing import Timing, time_runs
from harness.units import GB, fmt_count, fmt_mb
from rich.console import Console

DTYPES = {"fp32": torch.float32}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--preset", default="small", help="model preset (tiny, small, ...); random weights unless it ships a checkpoint"
    )
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (also used by the bandwidth probe)")
    p.add_argument("--prefill-tokens", type=int, default=64, help="prompt length for prefill")
    p.add_argument("--decode-tokens", type=int, default=64, help="decode steps measured after the prefill")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs before each measurement")
    p.add_argument("--runs", type=int, default=5, help="timed runs for prefill and the encoders (median reported)")
    p.add_argument(
        "--out", type=Path, default=None, help="JSON result path (default bench/results/eager-<preset>.json)"
    )
    p.add_argument("--markdown", action="store_true", help="write/replace this run's section in BENCHMARKS.md")
    p.add_argument("--profile", action="store_true", help="also print the top ops of one prefill and one decode step")
    return p.parse_args()


def param_count(module: torch.nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def param_bytes(module: torch.nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() * p.element_size() for p in module.parameters())


def decode_weight_bytes(text) -> int:
    """Weight bytes one decode step reads: every layer, the final norm, lm_head, one embedding row.

    Dense layers only: for an MoE layer this counts every expert (an upper bound).
    """
    emb = text.embed_tokens.weight
    lm_head = text.lm_head.weight.numel() * text.lm_head.weight.element_size()
    return param_bytes(text.layers) + param_bytes(text.norm) + lm_head + emb.shape[1] * emb.element_size()


def kv_cache_bytes(text) -> int:
    return sum(
        b.numel() * b.element_size() for name, b in text.named_buffers() if name.endswith(("k_cache", "v_cache"))
    )


def text_positions(start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``harness.backend_timing.text_positions`` as torch tensors."""
    cache_position, position_ids = backend_timing.text_positions(start, length)
    return torch.from_numpy(cache_position), torch.from_numpy(position_ids)


def profile_top_ops(fn, label: str, console: Console) -> None:
    from torch.profiler import ProfilerActivity, profile

    fn()  # warm
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    console.print(f"[bold]{label}[/bold]")
    console.print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def main() -> int:
    args = parse_args()
    console = Console()
    out = args.out or default_results("eager", args.preset)
    out_str = repo_relative(out)
    load = LoadMonitor()
    torch.set_num_threads(args.threads)
    rss_start = current_rss_bytes()

    from autoglm_export.source import open_source

    # ---- build
    start = time.perf_counter()
    source = open_source(preset=args.preset)
    model = source.model
    if DTYPES[args.dtype] != torch.float32:
        model.to(DTYPES[args.dtype])
        model.prepare()
    model.eval()
    build_s = time.perf_counter() - start
    rss_after_build = current_rss_bytes()
    peak_after_build = peak_rss_bytes()

    text, cfg, shape = model.text, model.cfg, model.shape
    n_prefill, n_decode = args.prefill_tokens, args.decode_tokens
    if n_prefill + n_decode > shape.max_context:
        console.print(f"[red]--prefill-tokens + --decode-tokens must fit max_context {shape.max_context}[/red]")
        return 2
    params = {
        "text": param_count(model.text),
        "vision": param_count(model.vision),
        "audio": param_count(model.audio),
    }
    params["total"] = sum(params.values())
    text_bytes = param_bytes(model.text)
    per_token_bytes = decode_weight_bytes(text)

    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        # ---- prefill: N random token ids through token_embedding + text_decoder, fresh cache each run
        prompt = torch.randint(0, cfg.text.vocab_size, (1, n_prefill), generator=generator)
        prefill_pos, prefill_ids = text_positions(0, n_prefill)

        def prefill() -> torch.Tensor:
            return model.text_decoder(model.token_embedding(prompt), prefill_pos, prefill_ids)

        prefill_t = time_runs(prefill, warmup=args.warmup, runs=args.runs, setup=model.reset_cache)

        # ---- decode: greedy, one token per step through the static KV cache, each step timed
        def decode(steps: int) -> list[float]:
            model.reset_cache()
            token = prefill()[:, -1:].argmax(-1)
            times = []
            for i in range(steps):
                pos, ids = text_positions(n_prefill + i, 1)
                t0 = time.perf_counter()
                logits = model.text_decoder(model.token_embedding(token), pos, ids)
                token = logits[:, -1:].argmax(-1)
                times.append(time.perf_counter() - t0)
            return times

        decode(min(4, n_decode))  # warmup
        decode_t = Timing(decode(n_decode))

        # ---- encoders at the export shapes
        vision = model.vision
        pixels = torch.randn(vision.num_patches, vision.patch_dim, generator=generator)
        vision_t = time_runs(lambda: model.vision_encoder(pixels), warmup=args.warmup, runs=args.runs)
        audio_t = None
        if model.audio is not None:
            mel = torch.randn(1, model.audio.cfg.num_mel_bins, model.audio.num_frames, generator=generator)
            audio_t = time_runs(lambda: model.audio_encoder(mel), warmup=args.warmup, runs=args.runs)

        if args.profile:
            profile_top_ops(lambda: (model.reset_cache(), prefill()), f"prefill of {n_prefill} tokens", console)
            pos, ids = text_positions(n_prefill, 1)
            token = prompt[:, :1]
            profile_top_ops(
                lambda: model.text_decoder(model.token_embedding(token), pos, ids), "one decode step", console
            )

    peak_rss = peak_rss_bytes()  # before the bandwidth probe allocates its 1 GiB array
    bandwidth = memory_bandwidth(args.threads)
    load_info = load.stop()

    decode_ms = decode_t.median * 1e3
    floor_ms = per_token_bytes / (bandwidth["best_gbps"] * GB) * 1e3
    record = {
        **results.header("eager", args, out_str, machine=machine_info(args.threads), load=load_info),
        "model": {
            "preset": args.preset,
            "label": source.label,
            "dtype": args.dtype,
            "max_context": shape.max_context,
            "image_hw": list(shape.image_hw),
            "audio_frames": shape.audio_frames if model.audio is not None else None,
            "image_tokens": vision.num_tokens,
            "audio_tokens": model.audio.num_tokens if model.audio is not None else None,
            "params": params,
            "text_decoder_weight_bytes": text_bytes,
            "decode_weight_bytes_per_token": per_token_bytes,
            "kv_cache_bytes": kv_cache_bytes(text),
        },
        "build_s": build_s,
        "memory": {
            "rss_start_bytes": rss_start,
            "rss_after_build_bytes": rss_after_build,
            "peak_rss_after_build_bytes": peak_after_build,
            "peak_rss_bytes": peak_rss,
        },
        "prefill": {
            "tokens": n_prefill,
            "ms": prefill_t.to_dict(),
            "tokens_per_s": n_prefill / prefill_t.median,
        },
        "decode": {
            "tokens": n_decode,
            "ms_per_token": decode_t.to_dict(),
            "tokens_per_s": 1e3 / decode_ms,
            "bandwidth_floor_ms": floor_ms,
            "ratio_to_floor": decode_ms / floor_ms,
        },
        "vision_encoder": {"ms_per_image": vision_t.to_dict(), "input": [vision.num_patches, vision.patch_dim]},
        "audio_encoder": None
        if audio_t is None
        else {
            "ms_per_clip": audio_t.to_dict(),
            "input": [1, model.audio.cfg.num_mel_bins, model.audio.num_frames],
        },
        "bandwidth": bandwidth,
    }

    rows = summary_rows(record)
    print_metric_table(console, f"Eager PyTorch ({args.dtype}), preset {args.preset}, {args.threads} threads", rows)
    console.print(describe_load(load_info))

    results.write_json(out, record)
    console.print(f"wrote {out}")
    if args.markdown:
        path = update_markdown_section(f"eager:{args.preset}:{args.dtype}", markdown_section(record, rows))
        console.print(f"updated {path}")
    return 0


def summary_rows(r: dict) -> list[tuple[str, str]]:
    m, mem, dec = r["model"], r["memory"], r["decode"]
    p = m["params"]
    bw = r["bandwidth"]
    rows = [
        ("model build (random init or checkpoint load)", f"{r['build_s']:.1f} s"),
        (
            "params: text / vision / audio",
            f"{fmt_count(p['text'])} / {fmt_count(p['vision'])} / {fmt_count(p['audio'])}",
        ),
        ("text decoder weights", fmt_mb(m["text_decoder_weight_bytes"])),
        ("decoder weights read per decode step", fmt_mb(m["decode_weight_bytes_per_token"])),
        ("peak RSS (build + all runs)", fmt_mb(mem["peak_rss_bytes"])),
        (
            f"prefill, {r['prefill']['tokens']} tokens",
            f"{r['prefill']['tokens_per_s']:.0f} tokens/s ({r['prefill']['ms']['median']:.0f} ms)",
        ),
        (
            f"decode, median of {dec['tokens']} steps",
            f"{dec['ms_per_token']['median']:.1f} ms/token ({dec['tokens_per_s']:.1f} tokens/s)",
        ),
        ("decode bandwidth floor", f"{dec['bandwidth_floor_ms']:.1f} ms/token"),
        ("decode / floor", f"{dec['ratio_to_floor']:.2f}x"),
        (
            f"vision encoder, {m['image_hw'][0]}x{m['image_hw'][1]} ({m['image_tokens']} tokens)",
            f"{r['vision_encoder']['ms_per_image']['median']:.1f} ms/image",
        ),
    ]
    if r["audio_encoder"] is not None:
        rows.append(
            (
                f"audio encoder, {m['audio_frames']} frames ({m['audio_tokens']} tokens)",
                f"{r['audio_encoder']['ms_per_clip']['median']:.1f} ms/clip",
            )
        )
    rows.append(
        (
            f"memory bandwidth, {bw['threads']} threads (sum / gemv)",
            f"{bw['sum_gbps']:.1f} / {bw['gemv_gbps']:.1f} GB/s",
        )
    )
    return rows


def markdown_section(r: dict, rows: list[tuple[str, str]]) -> str:
    mach = r["machine"]
    return "\n".join(
        [
            *section_head(f"## Eager PyTorch ({r['model']['dtype']}), preset `{r['model']['preset']}`", r),
            machine_line(mach, f"torch {mach['torch']}, {mach['threads']} threads"),
            f"- Load: {describe_load(r['load'])}",
            f"- Raw results: `{r['out']}`",
            "",
            markdown_table(["Metric", "Value"], [list(row) for row in rows]),
            "",
            (
                "Prefill and the encoders: median of the timed runs after warmup; prefill starts from an empty "
                "cache each run. Decode: median over the steps after the prefill, greedy. Floor: decoder weights "
                "read per step (all layers + lm_head + one embedding row) / the faster bandwidth probe; peak RSS "
                "excludes the bandwidth probe's 1 GiB array."
            ),
        ]
    )


if __name__ == "__main__":
    sys.exit(main())

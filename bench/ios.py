"""Core ML (iOS) bundle of a preset: export time and peak RSS, package sizes and bits per weight,
and the time to load and run the packages through our MIL interpreter (what validation costs).

    .venv/bin/python bench/ios.py --preset small --out bench/results/ios-small.json --markdown

The export runs in a subprocess (``export_bundle("coreml", ...)`` with validation off, as
``autoglm-export ios --no-validate``: ``small`` has no tokenizer for parity probes) so its peak RSS is
measured alone (``harness.bundles``). The interpreter run feeds the same kinds of inputs validation
does (one image, one audio clip, a prompt prefilled in chunks, decode steps); it measures Linux-side
verification cost, not iPhone speed, which can't be measured here.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from harness import results
from harness.bundles import ExportFailed, add_worker_flag, export_or_reuse, run_export_worker
from harness.machine import machine_info
from harness.markdown import markdown_table, section_head, update_markdown_section
from harness.units import fmt_count, fmt_mb


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--quant", default="int4")
    ap.add_argument("--min-ios", default="18")
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--decode-tokens", type=int, default=8)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--markdown", action="store_true")
    add_worker_flag(ap)
    return ap.parse_args(argv)


def request_and_options(out: Path, args: argparse.Namespace) -> tuple:
    """What the export child runs: ``autoglm-export ios --quant Q --min-ios N --no-validate --force``."""
    from autoglm_export.request import ModelRequest
    from autoglm_export.targets.coreml.export import CoreMLOptions
    from autoglm_export.targets.coreml.recipe import CoreMLRecipe

    recipe = CoreMLRecipe(weights=args.quant, block_size=None, min_ios=int(args.min_ios))
    return ModelRequest(preset=args.preset), CoreMLOptions(out=out, recipe=recipe, validate=False, force=True)


def run_interpreter(bundle_dir: Path, prompt_tokens: int, decode_tokens: int) -> tuple[dict, float, dict]:
    """Load the packages and run them once each way: seconds per call, the whole load + run, the manifest."""
    from autoglm_runtime.backends.coreml_backend import CoreMLBackend
    from autoglm_runtime.bundle import open_bundle

    t1 = time.perf_counter()
    bundle = open_bundle(bundle_dir)
    backend = CoreMLBackend.from_bundle(bundle)
    spec = bundle.spec
    rng = np.random.default_rng(0)
    times = {}
    t = time.perf_counter()
    backend.vision_encoder(rng.standard_normal((spec.image.num_patches, spec.image.patch_dim)).astype(np.float32))
    times["vision_encoder_first_call_s"] = time.perf_counter() - t
    if spec.audio is not None:
        t = time.perf_counter()
        backend.audio_encoder(
            rng.standard_normal((1, spec.audio.num_mel_bins, spec.audio.num_frames)).astype(np.float32)
        )
        times["audio_encoder_first_call_s"] = time.perf_counter() - t
    n = prompt_tokens
    ids = rng.integers(0, spec.vocab_size, (1, n))
    embeds = backend.token_embedding(ids)
    pos = np.broadcast_to(np.arange(n), (3, n)).copy()
    t = time.perf_counter()
    backend.reset()
    backend.text_decoder(embeds, np.arange(n), pos)
    times["prefill_s"] = time.perf_counter() - t
    steps = []
    for k in range(decode_tokens):
        e = backend.token_embedding(np.array([[int(ids[0, k])]]))
        t = time.perf_counter()
        backend.text_decoder(e, np.array([n + k]), np.full((3, 1), n + k))
        steps.append(time.perf_counter() - t)
    times["decode_step_median_s"] = float(np.median(steps))
    return times, time.perf_counter() - t1, bundle.manifest


def markdown_section(result: dict, export_s: float, load_and_run_s: float) -> str:
    rows = [
        [c, p["file"], fmt_mb(p["bytes"]), fmt_count(p["parameters"]), p["bits_per_weight"]]
        for c, p in result["packages"].items()
    ]
    table = markdown_table(["component", "package", "size", "weights", "bits/weight"], rows)
    return "\n".join(
        [
            *section_head(
                f"## Core ML (iOS {result['min_ios']}, {result['quant']}), preset `{result['preset']}`", result
            ),
            f"- Machine: {result['machine']['cpu_model']}, torch/coremltools as pinned in pyproject.toml",
            "",
            table,
            "",
            (
                f"- export (`autoglm-export ios --no-validate`, subprocess): {export_s:.0f} s wall, "
                f"{result['export_peak_rss_bytes'] / 1e9:.2f} GB peak RSS"
            ),
            f"- load + run through the MIL interpreter (what validation costs on Linux): {load_and_run_s:.1f} s; "
            + ", ".join(f"{k} {v:.2f}" for k, v in result["interpreter"].items()),
            "- Device speed (iPhone GPU / Neural Engine) cannot be measured on this machine.",
        ]
    )


def main() -> int:
    args = parse_args()
    if args.export_worker is not None:
        return run_export_worker(args.export_worker, "coreml", request_and_options)

    from rich.console import Console

    console = Console(stderr=True)  # stdout carries the section
    try:
        with export_or_reuse(
            None,
            None,
            script=Path(__file__),
            args=args,
            what="Core ML",
            detail=f"{args.quant}, iOS {args.min_ios}",
            console=console,
        ) as bundle:
            times, load_and_run_s, manifest = run_interpreter(bundle.path, args.prompt_tokens, args.decode_tokens)
    except ExportFailed:
        return 1
    export = bundle.export
    packages = manifest["coreml"]["packages"]
    result = {
        "command": results.command_line(),
        "date": results.utc_now(),
        "machine": machine_info(2),
        "preset": args.preset,
        "quant": args.quant,
        "min_ios": args.min_ios,
        "export_s": round(export["wall_s"], 1),
        "export_peak_rss_bytes": export["peak_rss_bytes"],
        "interpreter_load_and_run_s": round(load_and_run_s, 1),
        "interpreter": {k: round(v, 3) for k, v in times.items()},
        "packages": {
            c: {k: p.get(k) for k in ("file", "bytes", "parameters", "weight_bytes", "bits_per_weight")}
            for c, p in packages.items()
        },
    }
    if args.out:
        results.write_json(args.out, result)
    body = markdown_section(result, export["wall_s"], load_and_run_s)
    print(body)
    if args.markdown:
        update_markdown_section(f"ios:{args.preset}", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())

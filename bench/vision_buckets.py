"""Vision encoder time and image-token count per aspect bucket at an image budget (default: the phone default).

For each bucket of ``--max-pixels``: the image size, its image tokens, the eager fp32 tower's time and the
time of its method in an ExecuTorch program (the vision methods alone, lowered to XNNPACK with the export's
encoder quantization, ``8da8w``), so an app can pick its budget. Random weights (``small``'s vision tower).

    .venv/bin/python bench/vision_buckets.py --preset small --markdown
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from harness import results
from harness.load import LoadMonitor
from harness.machine import machine_info
from harness.markdown import machine_line, markdown_table, section_head, timing_load_line, update_markdown_section
from harness.paths import default_results, repo_relative
from harness.timing import time_runs
from rich.console import Console

from autoglm_export.components import vision_components
from autoglm_export.quantize import QuantRecipe
from autoglm_export.source import open_source
from autoglm_export.targets.executorch.lower import lower
from autoglm_export.targets.executorch.twin import quantize_twin
from autoglm_runtime.backends.executorch_backend import ExecuTorchProgram
from autoglm_runtime.preprocess.buckets import DEFAULT_MAX_PIXELS, SCREENS, smart_resize


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--out", type=Path)
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args()
    out = args.out or default_results("vision-buckets", args.preset)
    console = Console()
    torch.set_num_threads(args.threads)

    src = open_source(preset=args.preset, max_pixels=args.max_pixels)
    spec = src.spec.image
    console.print(f"{args.preset}: {len(spec.sizes)} buckets under max_pixels {args.max_pixels}")
    eager = {}
    monitor = LoadMonitor()
    with torch.no_grad():
        for size in spec.sizes:
            px = torch.from_numpy(np.random.default_rng(0).standard_normal((spec.at(size).num_patches, spec.patch_dim)))
            eager[size] = time_runs(
                lambda px=px.float(), size=size: src.model.vision_encoder(px, size), warmup=args.warmup, runs=args.runs
            )
    quantize_twin(src.model, QuantRecipe(linear="fp32", embedding="none"), None)  # the towers as exported
    with tempfile.TemporaryDirectory() as tmp:
        pte = Path(tmp) / "vision.pte"
        lowered = lower(vision_components(src.model), {})
        size_bytes = lowered.write(pte)
        program = ExecuTorchProgram(pte)
        rows, et = [], {}
        for size in spec.sizes:
            px = (
                np.random.default_rng(0).standard_normal((spec.at(size).num_patches, spec.patch_dim)).astype(np.float32)
            )
            et[size] = time_runs(
                lambda px=px, m=spec.method(size): program.run(m, px), warmup=args.warmup, runs=args.runs
            )
    load = monitor.stop()
    screens = {}
    for name, h, w in SCREENS:
        screens.setdefault(smart_resize(h, w, max_pixels=args.max_pixels), []).append(name.split(" (")[0])
    for size in spec.sizes:
        rows.append(
            {
                "bucket": f"{size[1]}x{size[0]}",
                "method": spec.method(size),
                "screens": screens.get(size, []),
                "image_tokens": spec.at(size).num_tokens,
                "patches": spec.at(size).num_patches,
                "eager_fp32_ms": eager[size].to_dict(),
                "executorch_8da8w_ms": et[size].to_dict(),
            }
        )
    record = results.header("vision-buckets", args, repo_relative(out), machine=machine_info(args.threads), load=load)
    record.update(max_pixels=args.max_pixels, vision_pte_bytes=size_bytes, buckets=rows)
    results.write_json(out, record)
    table = markdown_table(
        ["bucket (WxH)", "screens", "image tokens", "eager fp32 ms", "ExecuTorch XNNPACK 8da8w ms"],
        [
            [
                r["bucket"],
                ", ".join(r["screens"]),
                r["image_tokens"],
                f"{r['eager_fp32_ms']['median']:.1f}",
                f"{r['executorch_8da8w_ms']['median']:.1f}",
            ]
            for r in rows
        ],
    )
    console.print(table)
    if args.markdown:
        body = "\n".join(
            [
                *section_head(f"## Vision encoder per image bucket, preset `{args.preset}`", record),
                machine_line(record["machine"], f"torch {record['machine']['torch']}, {args.threads} threads"),
                timing_load_line(record),
                f"- Budget: `--max-pixels {args.max_pixels}` (the default); medians of {args.runs} runs after "
                f"{args.warmup} warmup; the vision methods alone in one `.pte`: {size_bytes / 1e6:.1f} MB "
                f"({len(rows)} methods sharing the weights). Random weights: times only. The machine was shared "
                "with other jobs while timing (see the load line): compare buckets within this run, not across runs.",
                "",
                table,
            ]
        )
        update_markdown_section(f"vision-buckets:{args.preset}", body)


if __name__ == "__main__":
    main()

"""The quantization cost of the vision tower's recipes at the real widths, stage by stage (eager).

    tools/make_real_checkpoint.py --out /data/one-layer --text-layers 1 --vision-depth 1   # 1.7B, once
    .venv/bin/python bench/vision_recipe_cost.py --checkpoint /data/one-layer --markdown     # ~6 min on 2 cores

Why: the 9B bundle's 5.5 GB budget needs the ~0.9B-parameter tower below int8, and int4 costs the
tower's merger (its 13696-wide MLP) far more than its blocks. Each row quantizes a fresh model with
the 9B preset's recipe (group 128) and one vision choice, then measures what the parity gate measures
above 2B parameters (``checks/layerwise.py``): each block and the head (final norm, downsample, merger)
replayed quantized on the fp32 run's own inputs, cosine against the fp32 outputs; and the whole tower
vs fp32 on the same screenshot, which at one block deep is also a per-block number. Random weights
(the real config), so these are the cost of quantizing random matrices, not of trained features.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
from harness import results
from harness.load import LoadMonitor
from harness.machine import machine_info
from harness.markdown import machine_line, markdown_table, section_head
from harness.paths import default_results, repo_relative

# name -> (label, vision fields of the QuantRecipe on top of the 9B preset's recipe)
ROWS = {
    "int8": ("all int8 (`--quant-encoder 8da8w`)", {"encoder": "8da8w", "merger": None}),
    "int4": ("all int4 (`--quant-encoder 8da4w`)", {"encoder": "8da4w", "merger": None}),
    "mixed": ("int4 blocks, int8 merger (9B default)", {"encoder": "8da4w", "merger": "8da8w"}),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, help="a real-width checkpoint (tools/make_real_checkpoint.py)")
    p.add_argument("--image-size", default="644x280", help="the export resolution (HxW)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--from-json", type=Path, default=None)
    return p.parse_args(argv)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b)))


def measure_row(args, fields: dict) -> dict:
    import torch

    from autoglm_export.calibration import load_calibration_set, load_image
    from autoglm_export.checks import layerwise
    from autoglm_export.presets import PRESETS
    from autoglm_export.quantize import QuantRecipe, apply_recipe
    from autoglm_export.request import ModelRequest
    from autoglm_export.stored import fp32_while_running
    from autoglm_runtime.preprocess import prepare_image

    h, w = (int(n) for n in args.image_size.split("x"))
    src = ModelRequest(checkpoint=args.checkpoint, image_hw=(h, w)).open(keep_stored=True)
    prompt = next(p for p in load_calibration_set().prompts if p.image is not None)
    image = prepare_image(load_image(prompt.image), src.spec.image)
    pixels = torch.from_numpy(image.pixels)
    with torch.no_grad(), fp32_while_running(src.model), layerwise.capture(src.model) as stacks:
        ref = src.model.vision_encoder(pixels, image.size).float().numpy()
    vision = [s for s in stacks if s.component == "vision_encoder"]
    recipe = QuantRecipe(**{**PRESETS["autoglm-phone-9b"].recipe, **fields})
    apply_recipe(src.model, recipe)
    row = layerwise.replay(vision, {"vision_encoder": "int8_dynamic"})[0]
    with torch.no_grad():
        out = src.model.vision_encoder(pixels, image.size).float().numpy()
    stages = {s["stage"]: s["cosine"] for s in row["per_stage"]}
    blocks = [c for name, c in stages.items() if name != "head"]
    return {
        "recipe": recipe.to_dict(),
        "blocks_min": min(blocks),
        "head": stages["head"],
        "tower": _cosine(ref, out),
        "vision_depth": len(blocks),
    }


def measure(args, out: str) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    monitor = LoadMonitor()
    rows = {}
    for name, (_, fields) in ROWS.items():
        rows[name] = measure_row(args, fields)
        print(name, json.dumps(rows[name]), flush=True)
    return {
        **results.header("vision_recipe_cost", args, out, machine=machine_info(args.threads), load=monitor.stop()),
        "checkpoint": str(args.checkpoint),
        "image_size": args.image_size,
        "rows": rows,
    }


def render(r: dict) -> str:
    depth = next(iter(r["rows"].values()))["vision_depth"]
    table = markdown_table(
        ["vision recipe", "blocks (min cosine)", "head (norm, downsample, merger)", f"{depth}-block tower vs fp32"],
        [
            [ROWS[name][0], f"{row['blocks_min']:.4f}", f"{row['head']:.4f}", f"{row['tower']:.4f}"]
            for name, row in r["rows"].items()
        ],
    )
    return "\n".join(
        [
            *section_head("### Vision tower recipes at the real widths: cost per stage (eager, random weights)", r),
            machine_line(r["machine"], f"image {r['image_size']}, checkpoint `{r['checkpoint']}`"),
            "",
            table,
            "",
            "Each row: the 9B preset's recipe (text 8da4w group 128, embedding int4) with that vision choice; "
            "cosine against the fp32 model, each stage replayed on the fp32 run's inputs as the parity gate does "
            "above 2B parameters (threshold 0.95 for int8-dynamic components).",
        ]
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if not args.from_json and args.checkpoint is None:
        raise SystemExit("error: --checkpoint (a real-width checkpoint) or --from-json is required")
    out = args.out or default_results("vision-recipe-cost", "real-width")
    data = json.loads(open(args.from_json).read()) if args.from_json else measure(args, repo_relative(out))
    results.publish(args, data, out, "vision_recipe_cost", render(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

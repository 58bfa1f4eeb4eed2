"""Core ML (iOS) bundle of a preset: export time and peak RSS, package sizes and bits per weight,
and the time to load and run the packages through our MIL interpreter (what validation costs).

    .venv/bin/python bench/ios.py --preset small --out bench/results/ios-small.json --markdown

The export runs in a subprocess (``autoglm-export ios --no-validate``: ``small`` has no tokenizer
for parity probes) so its peak RSS is measured alone. The interpreter run feeds the same kinds of
inputs validation does (one image, one audio clip, a prompt prefilled in chunks, decode steps);
it measures Linux-side verification cost, not iPhone speed, which can't be measured here.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--quant", default="int4")
    ap.add_argument("--min-ios", default="18")
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--decode-tokens", type=int, default=8)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="autoglm-bench-ios-"))
    bundle_dir = work / "ios"
    cmd = [str(ROOT / ".venv/bin/autoglm-export"), "ios", "--preset", args.preset, "--quant", args.quant,
           "--min-ios", args.min_ios, "--no-validate", "--force", "--out", str(bundle_dir)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    export_s = time.perf_counter() - t0
    export_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024

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
        backend.audio_encoder(rng.standard_normal((1, spec.audio.num_mel_bins, spec.audio.num_frames)).astype(np.float32))
        times["audio_encoder_first_call_s"] = time.perf_counter() - t
    n = args.prompt_tokens
    ids = rng.integers(0, spec.vocab_size, (1, n))
    embeds = backend.token_embedding(ids)
    pos = np.broadcast_to(np.arange(n), (3, n)).copy()
    t = time.perf_counter()
    backend.reset()
    backend.text_decoder(embeds, np.arange(n), pos)
    times["prefill_s"] = time.perf_counter() - t
    steps = []
    for k in range(args.decode_tokens):
        e = backend.token_embedding(np.array([[int(ids[0, k])]]))
        t = time.perf_counter()
        backend.text_decoder(e, np.array([n + k]), np.full((3, 1), n + k))
        steps.append(time.perf_counter() - t)
    times["decode_step_median_s"] = float(np.median(steps))
    load_and_run_s = time.perf_counter() - t1

    packages = bundle.manifest["coreml"]["packages"]
    result = {
        "command": common.command_line(), "date": common.utc_now(), "machine": common.machine_info(2),
        "preset": args.preset, "quant": args.quant, "min_ios": args.min_ios,
        "export_s": round(export_s, 1), "export_peak_rss_bytes": export_rss,
        "interpreter_load_and_run_s": round(load_and_run_s, 1), "interpreter": {k: round(v, 3) for k, v in times.items()},
        "packages": {c: {k: p.get(k) for k in ("file", "bytes", "parameters", "weight_bytes", "bits_per_weight")}
                     for c, p in packages.items()},
    }
    if args.out:
        common.write_json(args.out, result)
    rows = [[c, p["file"], common.fmt_mb(p["bytes"]), common.fmt_count(p["parameters"]), p["bits_per_weight"]]
            for c, p in result["packages"].items()]
    table = common.markdown_table(["component", "package", "size", "weights", "bits/weight"], rows)
    body = "\n".join([
        f"## Core ML (iOS {args.min_ios}, {args.quant}), preset `{args.preset}`", "",
        f"- Command: `{result['command']}`", f"- Date: {result['date']}",
        f"- Machine: {common.cpu_model()}, torch/coremltools as pinned in pyproject.toml", "",
        table, "",
        f"- export (`autoglm-export ios --no-validate`, subprocess): {export_s:.0f} s wall, "
        f"{export_rss / 1e9:.2f} GB peak RSS",
        f"- load + run through the MIL interpreter (what validation costs on Linux): {load_and_run_s:.1f} s; "
        + ", ".join(f"{k} {v:.2f}" for k, v in result["interpreter"].items()),
        "- Device speed (iPhone GPU / Neural Engine) cannot be measured on this machine.",
    ])
    print(body)
    if args.markdown:
        common.update_markdown_section(f"ios:{args.preset}", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

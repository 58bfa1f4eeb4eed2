"""Core ML at the real widths on this machine: an exported ``ios`` bundle's packages, its export's
cost, and the MIL interpreter's time per decoder call on it (the checker a Linux user waits for).

    /usr/bin/time -v autoglm-export ios --checkpoint /data/autoglm-phone-9b-random \\
        --out /data/ios-9b --no-validate 2> /data/ios-9b.time                      # the export
    .venv/bin/python bench/ios_9b.py --bundle /data/ios-9b --export-time /data/ios-9b.time --markdown

The export is not repeated here: its wall time and peak RSS come from ``/usr/bin/time -v``'s report
(``--export-time``), its stage times from the manifest. Measured in this process: loading the decoder
packages in the interpreter (lean: weights memory-mapped from each package's weight file, read per
call), one prefill call (``prefill_chunk`` tokens) and ``--decode-steps`` decode calls through the
whole chain of decoder packages, then a second prefill, RSS after loading and the peak while running.
The packages run as the Core ML backend runs them on Linux: lean, with their int4 linears as
onnxruntime ``MatMulNBits`` kernels built on first use (``autoglm_runtime.mil.int4_kernels``).
Random embeddings: only time and memory mean anything here.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from android_9b import time_report
from harness.markdown import markdown_table, update_markdown_section
from harness.memory import current_rss_bytes, peak_rss_bytes


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--export-time", type=Path, help="the export's /usr/bin/time -v report")
    p.add_argument("--command", default="", help="the export command, for the report")
    p.add_argument("--decode-steps", type=int, default=3)
    p.add_argument("--markdown", action="store_true", help="update BENCHMARKS.md's section")
    p.add_argument("--title", default="AutoGLM-Phone-9B: Core ML (iOS 18, int4) on this machine")
    p.add_argument("--key", default="ios:autoglm-phone-9b", help="BENCHMARKS.md section marker")
    return p.parse_args(argv)


def measure(args) -> dict:
    from autoglm_runtime.backends.coreml_backend import CoreMLBackend
    from autoglm_runtime.bundle import open_bundle

    bundle = open_bundle(args.bundle)
    m = bundle.manifest
    backend = CoreMLBackend.from_bundle(bundle, engine="mil")
    dec = m["coreml"]["packages"]["text_decoder"]
    hidden = int(m["runtime"]["hidden_size"]) if "hidden_size" in m.get("runtime", {}) else None
    t0 = time.perf_counter()
    for i in range(len(backend.chunks)):
        backend._engine("text_decoder", i)
    load_s = time.perf_counter() - t0
    rss_loaded = current_rss_bytes()
    hidden = hidden or int(next(iter(dec["functions"].values()))["inputs"][0]["shape"][-1])
    rng = np.random.default_rng(0)
    chunk = backend.prefill_chunk
    embeds = rng.standard_normal((1, chunk, hidden)).astype(np.float32) * 0.02
    pos = np.tile(np.arange(chunk), (3, 1))
    t0 = time.perf_counter()
    backend.text_decoder(embeds, np.arange(chunk), pos)
    prefill_s = time.perf_counter() - t0
    steps = []
    for k in range(args.decode_steps):
        p = chunk + k
        t0 = time.perf_counter()
        backend.text_decoder(embeds[:, :1], np.array([p]), np.full((3, 1), p))
        steps.append(time.perf_counter() - t0)
    start = chunk + args.decode_steps  # a second prefill, the int4 kernels built by now
    t0 = time.perf_counter()
    backend.text_decoder(embeds, np.arange(start, start + chunk), np.tile(np.arange(start, start + chunk), (3, 1)))
    prefill_again_s = time.perf_counter() - t0
    packages = {c: p["bytes"] for c, p in m["coreml"]["packages"].items()}
    return {
        "command": args.command,
        "export": time_report(args.export_time),
        "stage_seconds": m.get("stage_seconds"),
        "packages": packages,
        "decoder_chunks": [
            {
                "file": c["file"],
                "layers": c.get("layers", [0, dec["cache_shape"][0]]),
                "bytes": c.get("bytes", dec["bytes"]),
            }
            for c in backend.chunks
        ],
        "total_bytes": sum(packages.values()),
        "load_s": load_s,
        "rss_loaded_bytes": rss_loaded,
        "prefill_s": prefill_s,
        "prefill_again_s": prefill_again_s,
        "prefill_tokens": chunk,
        "decode_s": steps,
        "peak_rss_bytes": peak_rss_bytes(),
        "validated": m.get("validated"),
    }


def render(r: dict, title: str) -> str:
    gb = 1e9
    export = r.get("export") or {}
    rows = [
        ["packages (all)", f"{r['total_bytes'] / gb:.2f} GB"],
        *[[f"  {c}", f"{b / gb:.3f} GB"] for c, b in r["packages"].items()],
        [
            "decoder packages",
            ", ".join(f"{c['layers'][0]}..{c['layers'][1]}: {c['bytes'] / gb:.2f} GB" for c in r["decoder_chunks"]),
        ],
        [
            "export wall / peak RSS",
            f"{export.get('wall_s', 0) / 60:.1f} min / {(export.get('peak_rss_bytes') or 0) / gb:.2f} GB",
        ],
        ["export stages (s)", ", ".join(f"{k} {v:.0f}" for k, v in (r["stage_seconds"] or {}).items())],
        ["validated (parity gate)", str(r["validated"])],
        [
            "MIL interpreter: load the decoder packages (lean)",
            f"{r['load_s']:.1f} s, RSS {r['rss_loaded_bytes'] / gb:.2f} GB",
        ],
        [
            "MIL interpreter: prefill call, first / again",
            f"{r['prefill_s']:.1f} s / {r.get('prefill_again_s', float('nan')):.1f} s ({r['prefill_tokens']} tokens; "
            "the first builds the int4 kernels)",
        ],
        ["MIL interpreter: decode step", f"{np.median(r['decode_s']):.1f} s (median of {len(r['decode_s'])})"],
        ["MIL interpreter: peak RSS", f"{r['peak_rss_bytes'] / gb:.2f} GB"],
    ]
    return "\n".join([f"## {title}", "", f"- Command: `{r['command']}`", "", markdown_table(["", "measured"], rows)])


def main(argv=None) -> int:
    args = parse_args(argv)
    r = measure(args)
    print(json.dumps(r, indent=2, default=str))
    if args.markdown:
        update_markdown_section(args.key, render(r, args.title))
    return 0


if __name__ == "__main__":
    sys.exit(main())

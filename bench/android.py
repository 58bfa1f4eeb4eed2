"""ExecuTorch (Android) benchmark: export a preset with the real pipeline, then time the .pte against eager PyTorch.

    .venv/bin/python bench/android.py --preset small --out bench/results/android-small.json [--markdown]

In one run:

1. ``export_android`` (quantize with the recipe, swap the decoder attention for ExecuTorch's
   ``llama::update_cache`` + ``llama::custom_sdpa``, lower with XNNPACK, emit ``model.pte``) in a
   subprocess, so its wall time and peak RSS are its own (``os.wait4`` rusage of that child).
   Validation is off: presets without a tokenizer (``small``) cannot build parity probes.
2. Size: ``model.pte`` bytes, parameters per component (the manifest's ``model.parameters``), bits per
   weight, delegation per method (the manifest), and an estimate of the .pte from the recipe (checks
   the byte model the bandwidth floor uses).
3. Through ``ExecuTorchBackend``: prefill tokens/s (random embeddings, chunks of ``--max-seq-len``,
   fresh cache each run), decode ms/token (one token per step, with and without the
   ``token_embedding`` call), vision and audio encoder ms.
4. The same through ``TorchBackend`` on the eager model: fp32, then quantized in place with the same
   recipe, then quantized with the ExecuTorch attention kernels (what was exported).
5. The decode bandwidth floor of the .pte (bytes of weights one decode step reads, in the packed
   formats XNNPACK runs, / the bandwidth measured in this run) and decode / floor; the peer's numbers.
6. Where decode time goes: the decoder's quantized linears alone lowered as one static seq-1 program
   (``--no-linears-probe`` skips it), an ETDump of decode steps (``--no-profile``), and ``--rounds``
   paired rounds of decode + linears + bandwidth probes back to back (this VM's speed drifts).
7. With ``--with-onnx``: then the ONNX Runtime leg (``bench/onnx.py``) in the same process, with the
   same preset, threads, token counts and run id, and its own results JSON and section.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

try:  # run as a script (bench/ is on sys.path) or as a module from the repository root
    from . import common
except ImportError:
    import common

# The optimum-executorch peer on this machine (/work/shared/notes/executorch.md): same decoder dims.
PEER = {
    "name": "optimum-executorch 1.1.0, 242M Llama, 8da4w + 8-bit embedding, custom sdpa + kv cache",
    "pte_mb": 150.7,
    "prefill_tokens_per_s": 620.0,
    "decode_ms_per_token": 4.0,
    "export_wall_s": 240.0,
    "export_peak_rss_gb": 2.7,
    "bandwidth_gbps": 37.0,  # its 2-thread read bandwidth that day
    "floor_ms": 3.2,  # ~118 MB of per-token weights at ~37 GB/s
}
TARGET_RATIO_TO_FLOOR = 1.3


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small", help="model preset (tiny, small, ...)")
    p.add_argument("--quant", default="8da4w", choices=["8da4w", "8da8w", "fp32"], help="text decoder linears (lm_head included)")
    p.add_argument("--quant-encoder", default="8da8w", choices=["8da4w", "8da8w", "fp32"], help="vision and audio tower linears")
    p.add_argument("--quant-embedding", default="8", choices=["4", "8", "none"], help="token embedding")
    p.add_argument("--group-size", type=int, default=32, help="int4 group size")
    p.add_argument("--max-seq-len", type=int, default=128, help="longest text_decoder chunk of the export")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads and the ExecuTorch threadpool size")
    p.add_argument("--prefill-tokens", type=int, default=64)
    p.add_argument("--decode-tokens", type=int, default=64)
    p.add_argument("--warmup", type=int, default=2, help="untimed runs before each measurement")
    p.add_argument("--runs", type=int, default=5, help="timed runs for prefill and the encoders (median reported)")
    p.add_argument("--rounds", type=int, default=3,
                   help="paired rounds at the end: decode, linears alone and the bandwidth probes interleaved (drift check)")
    p.add_argument("--slow-budget-s", type=float, default=20.0,
                   help="an eager variant whose decode would take longer than this gets fewer decode steps (recorded)")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="before timing, wait up to this long for other processes to use < 0.25 cores over 10 s (shared machine)")
    p.add_argument("--bundle", type=Path, default=None,
                   help="measure this existing bundle instead of exporting (export time and RSS are then not measured)")
    p.add_argument("--keep-bundle", type=Path, default=None, help="export into this directory and keep it (default: a temp dir)")
    p.add_argument("--no-eager", action="store_true", help="skip the eager PyTorch comparisons")
    p.add_argument("--no-profile", action="store_true", help="skip the ETDump profile of decode steps")
    p.add_argument("--no-linears-probe", action="store_true",
                   help="skip lowering and timing the decoder's linears alone (about 2 min of lowering)")
    p.add_argument("--out", type=Path, default=None, help="JSON result path (default bench/results/android-<preset>.json)")
    p.add_argument("--markdown", action="store_true", help="write/replace this run's section in BENCHMARKS.md")
    p.add_argument("--from-json", type=Path, default=None,
                   help="re-render the tables (and with --markdown the BENCHMARKS.md section) from a results JSON; measures nothing")
    p.add_argument("--with-onnx", action="store_true",
                   help="after the ExecuTorch measurement, run the ONNX Runtime leg (bench/onnx.py) in the same run")
    p.add_argument("--onnx-out", type=Path, default=None, help="ONNX leg's JSON (default bench/results/onnx-<preset>.json)")
    p.add_argument("--onnx-bundle", type=Path, default=None, help="ONNX leg: time this existing ONNX bundle instead of exporting")
    p.add_argument("--onnx-block-size", type=int, default=32, help="ONNX leg: int4 block size (MatMulNBits)")
    p.add_argument("--export-worker", default=None, help=argparse.SUPPRESS)  # internal: JSON spec of the export subprocess
    return p.parse_args(argv)


def recipe_of(args):
    from autoglm_export.quantize import QuantRecipe

    return QuantRecipe(linear=args.quant, group_size=args.group_size, encoder=args.quant_encoder, embedding=args.quant_embedding)


# ---------------------------------------------------------------- 1. export (subprocess)

def export_worker(spec_json: str) -> int:
    """Child process: run the real export; logs on stderr, nothing else."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    spec = json.loads(spec_json)
    from autoglm_export.android import AndroidOptions, export_android
    from autoglm_export.pipeline import ModelRequest

    args = argparse.Namespace(**spec["args"])
    export_android(
        ModelRequest(preset=args.preset),
        AndroidOptions(out=Path(spec["out"]), recipe=recipe_of(args), max_seq_len=args.max_seq_len, validate=False, force=True),
    )
    common.print_peak_rss()
    return 0


def run_export(args, out_dir: Path, log_path: Path, console) -> dict:
    """Run the export in a child; wall time, the child's own peak RSS and CPU time, its log."""
    spec = json.dumps({"out": str(out_dir), "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}})
    cmd = [sys.executable, str(Path(__file__).resolve()), "--export-worker", spec]
    console.print(f"exporting preset {args.preset} ({args.quant}, group {args.group_size}) in a subprocess; log: {log_path}")
    return common.run_child(cmd, log_path)


def wait_quiet(max_wait_s: float, console, threshold: float = 0.25, window_s: float = 10.0) -> dict:
    """Poll until other processes keep fewer than ``threshold`` cores busy over a ``window_s`` window."""
    start = time.perf_counter()
    last = None
    while True:
        mon = common.LoadMonitor()
        time.sleep(window_s)
        last = mon.stop()["other_cores"]
        waited = time.perf_counter() - start
        if last < threshold or waited >= max_wait_s:
            quiet = last < threshold
            console.print(f"load before timing: other processes {last:.2f} cores "
                          f"({'quiet' if quiet else 'still busy'} after {waited:.0f} s)")
            return {"waited_s": waited, "other_cores_last_window": last, "quiet": quiet}


# ---------------------------------------------------------------- 2. sizes from the manifest + the byte model

def _linear_bytes(in_f: int, out_f: int, scheme: str, group_size: int, bias: bool) -> int:
    """Bytes XNNPACK stores (and a GEMV reads) for one linear, as ExecuTorch serializes it.

    8da4w: 4-bit weights (two per byte) + one bf16 scale per group (ExecuTorch's XNNPACK serializer
    casts per-channel-group scales to bf16; symmetric, so no zero points). 8da8w: int8 + fp32 scale per
    output channel. Bias fp32. The runtime's packed layout adds per-channel terms of the same order.
    """
    n = in_f * out_f
    if scheme == "8da4w":
        w = n // 2 + (n // group_size) * 2
    elif scheme == "8da8w":
        w = n + out_f * 4
    else:
        w = n * 4
    return w + (out_f * 4 if bias else 0)


def byte_model(model, layers: dict[str, str], group_size: int, embedding: str) -> dict:
    """Per component: stored bytes under the recipe (from the quant report's per-layer schemes), and
    the bytes one decode step reads (every decoder layer, final norm, lm_head, one embedding row)."""
    from torch import nn

    comps = {"text": model.text, "vision": model.vision, "audio": model.audio}
    out: dict = {}
    for cname, root in comps.items():
        if root is None:
            continue
        linear_params, linear_bytes, other_params = 0, 0, 0
        seen = set()
        per_layer_read = 0
        for fqn, mod in root.named_modules():
            if isinstance(mod, nn.Linear):
                scheme = layers.get(f"{cname}.{fqn}", "fp32")
                b = _linear_bytes(mod.in_features, mod.out_features, scheme, group_size, mod.bias is not None)
                linear_bytes += b
                linear_params += mod.weight.numel() + (mod.bias.numel() if mod.bias is not None else 0)
                seen.add(id(mod.weight))
                if mod.bias is not None:
                    seen.add(id(mod.bias))
                if cname == "text":
                    per_layer_read += b
        emb_bytes, emb_row = 0, 0
        if cname == "text":
            e = root.embed_tokens
            rows, dim = e.num_embeddings, e.embedding_dim
            bits = {"8": 8, "4": 4, "none": 32}[embedding]
            if layers.get("text.embed_tokens", "").startswith("int8"):
                bits = 8
            scales = rows * 4 if bits == 8 else rows * (dim // group_size) * 4 if bits == 4 else 0
            emb_bytes = rows * dim * bits // 8 + scales
            emb_row = dim * bits // 8 + (scales // rows)
            seen.add(id(e.weight))
        for p in root.parameters():
            if id(p) not in seen:
                other_params += p.numel()
        out[cname] = {
            "linear_params": linear_params,
            "linear_bytes": linear_bytes,
            "embedding_bytes": emb_bytes,
            "other_fp32_params": other_params,
            "stored_bytes": linear_bytes + emb_bytes + other_params * 4,
        }
        if cname == "text":
            out[cname]["decode_read_bytes"] = per_layer_read + other_params * 4 + emb_row
            out[cname]["decode_read_linear_bytes"] = per_layer_read
            out[cname]["decode_read_embedding_row_bytes"] = emb_row
    out["total_stored_bytes"] = sum(v["stored_bytes"] for k, v in out.items() if isinstance(v, dict))
    return out


def kv_read_bytes(cfg, positions: float) -> float:
    """K and V bytes custom_sdpa reads per decode token at ``positions`` filled slots (fp32 cache)."""
    t = cfg.text
    return t.num_hidden_layers * 2 * t.num_key_value_heads * t.head_dim * 4 * positions


# ---------------------------------------------------------------- 3/4. measurements through a runtime backend

def text_positions(start: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    pos = np.arange(start, start + length, dtype=np.int64)
    return pos, np.ascontiguousarray(np.broadcast_to(pos, (3, length)))


def measure(backend, *, label: str, hidden: int, n_prefill: int, n_decode: int, chunk: int, warmup: int, runs: int,
            pixels: np.ndarray, mel: np.ndarray | None, budget_s: float, console) -> dict:
    """Prefill, decode, encoders through a numpy-in/numpy-out backend (TorchBackend or ExecuTorchBackend)."""
    rng = np.random.default_rng(0)
    embeds = rng.standard_normal((1, n_prefill, hidden), dtype=np.float32)
    pos, ids = text_positions(0, n_prefill)

    def prefill() -> np.ndarray:
        logits = None
        for i in range(0, n_prefill, chunk):  # the runtime's chunking: max_seq_len tokens per call
            logits = backend.text_decoder(embeds[:, i:i + chunk], pos[i:i + chunk], ids[:, i:i + chunk])
        return logits

    # One untimed probe run decides whether this variant is too slow for the full counts.
    backend.reset()
    t0 = time.perf_counter()
    prefill()
    probe_s = time.perf_counter() - t0
    p_warmup, p_runs = warmup, runs
    if probe_s * (warmup + runs) > budget_s:
        p_warmup, p_runs = 0, max(1, min(runs, int(budget_s / probe_s)))
    prefill_t = common.time_runs(prefill, warmup=p_warmup, runs=p_runs, setup=backend.reset)

    def decode(steps: int) -> dict:
        backend.reset()
        token = np.array([[int(prefill()[0, -1].argmax())]], dtype=np.int64)
        full, dec, emb = [], [], []
        for i in range(steps):
            p, pid = text_positions(n_prefill + i, 1)
            t0 = time.perf_counter()
            e = backend.token_embedding(token)
            t1 = time.perf_counter()
            logits = backend.text_decoder(e, p, pid)
            t2 = time.perf_counter()
            token = np.array([[int(logits[0, -1].argmax())]], dtype=np.int64)
            t3 = time.perf_counter()
            full.append(t3 - t0)
            dec.append(t2 - t1)
            emb.append(t1 - t0)
        return {"full": full, "decoder": dec, "embedding": emb}

    warm = decode(min(4, n_decode))  # warmup; also sizes the budget
    step_s = float(np.median(warm["full"]))
    steps = n_decode
    limited = False
    if step_s * n_decode > budget_s:
        steps, limited = max(8, min(n_decode, int(budget_s / step_s))), True
    d = decode(steps)
    vision_t = common.time_runs(lambda: backend.vision_encoder(pixels), warmup=warmup, runs=runs)
    audio_t = common.time_runs(lambda: backend.audio_encoder(mel), warmup=warmup, runs=runs) if mel is not None else None
    r = {
        "label": label,
        "prefill": {"tokens": n_prefill, "chunk": chunk, "ms": prefill_t.to_dict(),
                    "tokens_per_s": n_prefill / prefill_t.median, "warmup": p_warmup},
        "decode": {
            "steps": steps,
            "steps_requested": n_decode,
            "limited_by_budget": limited,
            "ms_per_token_with_embedding": common.Timing(d["full"]).to_dict(),
            "ms_per_token_decoder_only": common.Timing(d["decoder"]).to_dict(),
            "ms_token_embedding": common.Timing(d["embedding"]).to_dict(),
        },
        "vision_encoder": {"ms": vision_t.to_dict()},
        "audio_encoder": None if audio_t is None else {"ms": audio_t.to_dict()},
    }
    dm = r["decode"]["ms_per_token_with_embedding"]["median"]
    r["decode"]["tokens_per_s"] = 1e3 / dm
    console.print(f"  {label}: prefill {r['prefill']['tokens_per_s']:.0f} tok/s, decode {dm:.2f} ms/token "
                  f"({steps} steps{', limited' if limited else ''}), vision {vision_t.median * 1e3:.1f} ms"
                  + (f", audio {audio_t.median * 1e3:.1f} ms" if audio_t else ""))
    return r


# ---------------------------------------------------------------- 6a. the decoder's linears alone

def linears_probe(model, hidden: int, runs: int = 50) -> dict:
    """Lower the (already quantized) decoder linears alone, seq 1 and static shapes, and time one pass.

    Per layer q/k/v/o, gate_up and down, then lm_head, chained with adds and the SwiGLU product only
    (no norms, rotary, attention, KV cache): what one decode step's linears cost in XNNPACK when
    nothing else runs. Same weight objects as the export, so the same packed int4 formats.
    """
    import torch
    from torch import nn
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.devtools.backend_debug import get_delegation_info
    from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.extension.pybindings import portable_lib

    text = model.text
    if not all(hasattr(layer.mlp, "gate_up_proj") for layer in text.layers):
        return {"error": "only for dense GLM-4.1V layers (fused gate_up MLP)"}, None

    class Linears(nn.Module):
        def __init__(self):
            super().__init__()
            self.text = text

        def forward(self, x):
            kv = None
            for layer in self.text.layers:
                a, mlp = layer.self_attn, layer.mlp
                k_plus_v = a.k_proj(x) + a.v_proj(x)
                kv = k_plus_v if kv is None else kv + k_plus_v
                g = mlp.gate_up_proj(x)
                half = g.shape[-1] // 2
                x = x + a.o_proj(a.q_proj(x)) + mlp.down_proj(g[..., :half] * g[..., half:])
            return self.text.lm_head(x), kv

    t0 = time.perf_counter()
    x = torch.randn(1, 1, hidden)
    with torch.no_grad():
        ep = torch.export.export(Linears().eval(), (x,), strict=False)
    edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])
    info = get_delegation_info(edge.exported_program().graph_module)
    buffer = edge.to_executorch(ExecutorchBackendConfig(do_quant_fusion_and_const_prop=True)).buffer
    build_s = time.perf_counter() - t0
    module = portable_lib._load_for_executorch_from_buffer(buffer)

    def run(_program_bytes=buffer):  # the module reads the bytes in place: keep them alive with it
        return module.run_method("forward", (x,))

    timing = common.time_runs(run, warmup=5, runs=runs)
    one = None
    if portable_lib._threadpool_get_thread_count() > 1:
        # Per-core throughput: does the kernel scale with cores (compute-bound) or not (memory-bound)?
        # In a child process: resetting the threadpool here would leave loaded XNNPACK runtimes (which
        # bind the pool when they are created) pointing at a freed pool.
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "linears.pte"
            path.write_bytes(buffer)
            one = time_pte_in_child(path, hidden, threads=1, runs=max(10, runs // 2))
    result = {"ms": timing.to_dict(), "ms_one_thread": one, "subgraphs": info.num_delegated_subgraphs,
              "pte_bytes": len(buffer), "build_s": build_s}
    return result, run


_CHILD_TIMER = """
import json, sys, time
import torch
from executorch.extension.pybindings import portable_lib
import executorch.kernels.quantized  # noqa: F401
path, hidden, threads, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
portable_lib._unsafe_reset_threadpool(threads)  # before any program is loaded: safe
module = portable_lib._load_for_executorch(path)
x = torch.randn(1, 1, hidden)
times = []
for i in range(runs + 3):
    t0 = time.perf_counter()
    module.run_method("forward", (x,))
    times.append(time.perf_counter() - t0)
print("RESULT " + json.dumps(times[3:]))
"""


def time_pte_in_child(path: Path, hidden: int, threads: int, runs: int) -> dict | None:
    """Time ``forward(x [1, 1, hidden])`` of a .pte in a fresh process with its own threadpool size."""
    proc = subprocess.run([sys.executable, "-c", _CHILD_TIMER, str(path), str(hidden), str(threads), str(runs)],
                          capture_output=True, text=True, cwd=common.REPO)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return common.Timing(json.loads(line[len("RESULT "):])).to_dict()
    return None


def paired_rounds(et, probe_run, threads: int, start: int, bm: dict, rounds: int = 3, steps: int = 16) -> list[dict]:
    """Decode steps, the linears-alone program and two bandwidth probes, back to back, ``rounds`` times.

    On a shared VM the speed of memory drifts within minutes (other tenants share the host's L3 and
    memory bus), so a decode time and a bandwidth measured minutes apart can disagree. Each round
    pairs them within a few seconds. The second probe reads an array the size of the per-token weights:
    if it is much faster than the 1 GiB probe, the weights partly live in the host's L3 and the 1 GiB
    floor is not a hard floor.
    """
    per_token, linear_bytes = bm["text"]["decode_read_bytes"], bm["text"]["decode_read_linear_bytes"]
    ws_bytes = max(per_token // 4096, 1) * 4096
    out = []
    for _ in range(rounds):
        token = np.array([[1]], dtype=np.int64)
        times = []
        for i in range(steps + 2):
            p, pid = text_positions(start + i, 1)
            t0 = time.perf_counter()
            logits = et.text_decoder(et.token_embedding(token), p, pid)
            token = np.array([[int(logits[0, -1].argmax())]], dtype=np.int64)
            times.append(time.perf_counter() - t0)
        decode_ms = float(np.median(times[2:])) * 1e3
        lin_ms = common.time_runs(probe_run, warmup=2, runs=15).median * 1e3 if probe_run else None
        bw = common.memory_bandwidth(threads, runs=3)["best_gbps"]
        ws = common.memory_bandwidth(threads, nbytes=ws_bytes, runs=5)["best_gbps"]
        floor_ms = per_token / (bw * common.GB) * 1e3
        out.append({
            "decode_ms": decode_ms,
            "linears_ms": lin_ms,
            "bandwidth_gbps": bw,
            "working_set_gbps": ws,
            "working_set_bytes": ws_bytes,
            "floor_ms": floor_ms,
            "decode_over_floor": decode_ms / floor_ms,
            "linears_over_floor": None if lin_ms is None else lin_ms / (linear_bytes / (bw * common.GB) * 1e3),
        })
    return out


# ---------------------------------------------------------------- 6. ETDump profile of one decode step

def profile_decode_step(pte: Path, hidden: int, position: int, steps: int = 24) -> dict:
    """ETDump of ``steps`` text_decoder decode steps (seq 1, at ``position``) on a separately loaded copy.

    The runtime groups identical runs into one event block; every event keeps one time per run, and
    this takes the median per event. Top level of a step: ``DELEGATE_CALL`` events (one per XNNPACK
    subgraph, with XNNPACK's own per-operator events nested inside) and ``OPERATOR_CALL`` events (one
    per non-delegated kernel call, the kernel's own event nested inside). What is left of
    ``Method::execute`` is the executor itself.
    """
    import re

    import torch
    from executorch.devtools import Inspector
    from executorch.extension.pybindings import portable_lib

    module = portable_lib._load_for_executorch(str(pte), enable_etdump=True, debug_buffer_size=0)
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((1, 1, hidden), dtype=np.float32))
    wall = []
    for i in range(steps):  # the cache content does not matter for timing; positions do (sdpa length)
        pos = torch.tensor([position + i])
        t0 = time.perf_counter()
        module.run_method("text_decoder", (x, pos, pos.expand(3, -1).contiguous()))
        wall.append(time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "etdump.etdp"
        module.write_etdump_result_to_file(str(path))
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Output Buffer not found": no debug buffer, by design
            inspector = Inspector(etdump_path=str(path))
    block = max(inspector.event_blocks, key=lambda b: len(b.events))

    def med(ev) -> float:
        return float(np.median(ev.perf_data.raw)) if ev.perf_data else 0.0

    total = delegate = operator = 0.0
    n_delegate = n_operator = 0
    xnn_ops: dict[str, list] = {}
    native_ops: dict[str, list] = {}
    for ev in block.events:
        ms = med(ev)
        if ev.name == "Method::execute":
            total = ms
        elif ev.name == "DELEGATE_CALL":
            delegate += ms
            n_delegate += 1
        elif ev.name == "OPERATOR_CALL":
            operator += ms
            n_operator += 1
        elif ev.is_delegated_op:
            key = re.sub(r" #\d+$", "", ev.name)
            xnn_ops.setdefault(key, [0, 0.0])
            xnn_ops[key][0] += 1
            xnn_ops[key][1] += ms
        elif ev.name:
            key = ev.name.replace("native_call_", "")
            native_ops.setdefault(key, [0, 0.0])
            native_ops[key][0] += 1
            native_ops[key][1] += ms
    inside_xnn = sum(v[1] for v in xnn_ops.values())
    inside_native = sum(v[1] for v in native_ops.values())
    return {
        "steps": steps,
        "position": position,
        "wall_ms_median": float(np.median(wall[2:])) * 1e3,
        "execute_ms": total,
        "delegate_calls": n_delegate,
        "delegate_ms": delegate,
        "delegate_overhead_ms": delegate - inside_xnn,
        "xnnpack_ops": {k: {"calls": v[0], "ms": v[1]} for k, v in sorted(xnn_ops.items(), key=lambda kv: -kv[1][1])},
        "operator_calls": n_operator,
        "operator_ms": operator,
        "operator_overhead_ms": operator - inside_native,
        "native_ops": {k: {"calls": v[0], "ms": v[1]} for k, v in sorted(native_ops.items(), key=lambda kv: -kv[1][1])},
        "executor_ms": total - delegate - operator,
        "note": "ETDump event timers of text_decoder decode steps (seq 1) on a separate ETDump-enabled load of the "
                "program; the timers add overhead, so read shares rather than absolute ms. XNNPACK reports "
                "its operators in whole microseconds (sub-microsecond ops read 0).",
    }


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
    out = args.out or common.REPO / "bench" / "results" / f"android-{args.preset}.json"
    out_str = repo_relative(out)
    onnx_leg = onnx_leg_argv(args) if args.with_onnx else None
    run = common.new_run(["android", "onnx"] if onnx_leg else ["android"])
    run["outputs"] = {"android": out_str, **({"onnx": repo_relative(onnx_out(args))} if onnx_leg else {})}
    load = common.LoadMonitor()
    recipe = recipe_of(args)  # fail on a bad recipe before the export

    # ---- 1. export
    tmp_root = None
    export = None
    if args.bundle is not None:
        bundle = args.bundle
        console.print(f"measuring existing bundle {bundle} (export not timed)")
    else:
        if args.keep_bundle is not None:
            bundle = args.keep_bundle
            bundle.parent.mkdir(parents=True, exist_ok=True)
            log_path = bundle.parent / f"{bundle.name}.export.log"
        else:
            tmp_root = Path(tempfile.mkdtemp(prefix="autoglm-bench-android-"))
            bundle = tmp_root / "bundle"
            log_path = tmp_root / "export.log"
        export = run_export(args, bundle, log_path, console)
        if export["returncode"] != 0:
            console.print(f"[red]export failed (exit {export['returncode']}) after {export['wall_s']:.0f} s; last lines of {log_path}:[/red]")
            for line in export["error_tail"]:
                console.print("  " + line, markup=False, highlight=False)
            return 1
        console.print(f"export: {export['wall_s']:.0f} s wall, peak RSS {common.fmt_mb(export['peak_rss_bytes'])}")
    if export is not None:
        el = load.stop()  # LoadMonitor counts the child's CPU as "other": take it out
        el["other_cores"] = max(el["other_cores"] * el["wall_s"] - export["cpu_s"], 0.0) / el["wall_s"]
        export["load"] = el  # other processes during the export
    quiet = wait_quiet(args.wait_quiet, console) if args.wait_quiet > 0 else None
    load = common.LoadMonitor()  # the timing part's load
    try:
        rc = measure_and_report(args, bundle, export, load, out, out_str, recipe, console, Table, quiet, run)
    finally:
        if tmp_root is not None:
            shutil.rmtree(tmp_root, ignore_errors=True)
    if rc != 0 or onnx_leg is None:
        return rc
    return run_onnx_leg(onnx_leg, run, json.loads(out.read_text()), console, Table)


def repo_relative(path: Path) -> str:
    path = Path(path)
    return str(path.resolve().relative_to(common.REPO)) if path.resolve().is_relative_to(common.REPO) else str(path)


def onnx_out(args) -> Path:
    return args.onnx_out or common.REPO / "bench" / "results" / f"onnx-{args.preset}.json"


def onnx_leg_argv(args) -> list[str]:
    """bench/onnx.py's arguments for the ONNX leg: this run's preset, threads, token counts, chunk, rounds."""
    argv = ["--preset", args.preset, "--threads", str(args.threads), "--max-seq-len", str(args.max_seq_len),
            "--prefill-tokens", str(args.prefill_tokens), "--decode-tokens", str(args.decode_tokens),
            "--warmup", str(args.warmup), "--runs", str(args.runs), "--rounds", str(args.rounds),
            "--block-size", str(args.onnx_block_size), "--wait-quiet", str(args.wait_quiet), "--out", str(onnx_out(args))]
    if args.no_profile:
        argv.append("--no-profile")
    if args.onnx_bundle is not None:
        argv += ["--bundle", str(args.onnx_bundle)]
    if args.markdown:
        argv.append("--markdown")
    return argv


def run_onnx_leg(argv: list[str], run: dict, android: dict, console, Table) -> int:
    """The ONNX Runtime leg of this run, in this process (bench/onnx.py with ``argv``)."""
    import gc

    gc.collect()  # the ExecuTorch leg's programs and eager model are garbage by now: free them first
    onnx_bench = common.load_script("onnx")
    console.rule("ONNX Runtime leg (same run)")
    return onnx_bench.run(onnx_bench.parse_args(argv), console, Table, run=run, executorch=onnx_bench.executorch_summary(android))


def measure_and_report(args, bundle: Path, export: dict | None, load, out: Path, out_str: str, recipe, console, Table,
                       quiet: dict | None = None, run: dict | None = None) -> int:
    import torch

    manifest = json.loads((bundle / "manifest.json").read_text())
    pte = bundle / manifest.get("program", "model.pte")
    pte_bytes = pte.stat().st_size
    params = dict(manifest["model"]["parameters"])
    total_params = sum(params.values())
    torch.set_num_threads(args.threads)

    from autoglm_export.quantize import apply_recipe
    from autoglm_export.source import open_source

    # The eager model: the byte model needs its layer shapes, the eager runs need the model itself.
    src = open_source(preset=args.preset)
    model = src.model.eval()
    cfg, shape = model.cfg, model.shape
    hidden = cfg.text.hidden_size
    n_prefill, n_decode = args.prefill_tokens, args.decode_tokens
    if n_prefill + n_decode > shape.max_context:
        console.print(f"[red]--prefill-tokens + --decode-tokens must fit max_context {shape.max_context}[/red]")
        return 2
    gen = np.random.default_rng(0)
    pixels = gen.standard_normal((model.vision.num_patches, model.vision.patch_dim), dtype=np.float32)
    mel = gen.standard_normal((1, model.audio.cfg.num_mel_bins, model.audio.num_frames), dtype=np.float32) if model.audio else None
    common_kw = dict(hidden=hidden, n_prefill=n_prefill, n_decode=n_decode, chunk=args.max_seq_len, warmup=args.warmup,
                     runs=args.runs, pixels=pixels, mel=mel, console=console)

    # ---- 3. the .pte through ExecuTorchBackend
    from executorch.extension.pybindings import portable_lib
    from autoglm_runtime.backends.executorch_backend import ExecuTorchBackend

    portable_lib._unsafe_reset_threadpool(args.threads)
    et_threads = portable_lib._threadpool_get_thread_count()
    console.print(f"ExecuTorch threadpool: {et_threads} threads; measuring {pte} ({pte_bytes / 1e6:.1f} MB)")
    rss0 = common.current_rss_bytes()
    t0 = time.perf_counter()
    et = ExecuTorchBackend(pte)
    for name in ("token_embedding", "text_decoder", "vision_encoder", "audio_encoder", "reset_cache"):
        if et.program.has(name):
            et.program.method(name)
    load_s = time.perf_counter() - t0
    rss_loaded = common.current_rss_bytes()
    pte_result = measure(et, label="ExecuTorch .pte", budget_s=1e9, **common_kw)
    pte_result["load_s"] = load_s
    pte_result["rss_after_load_bytes"] = rss_loaded - rss0
    pte_result["rss_after_runs_bytes"] = common.current_rss_bytes() - rss0
    import gc

    gc.collect()

    # ---- 6. profile one decode step (a second, ETDump-enabled load of the program)
    profile = None
    if not args.no_profile:
        try:
            profile = profile_decode_step(pte, hidden, n_prefill + n_decode // 2)
        except Exception as e:  # a profiling failure must not cost the benchmark
            profile = {"error": f"{type(e).__name__}: {e}"}
            console.print(f"[yellow]ETDump profile failed: {profile['error']}[/yellow]")
        gc.collect()

    # ---- 4. eager PyTorch: fp32, quantized, quantized + ExecuTorch attention kernels
    from autoglm_runtime.backends.torch_backend import TorchBackend

    eager: dict[str, dict] = {}
    quant_report = None
    if not args.no_eager:
        console.print("eager PyTorch:")
        with torch.inference_mode():
            eager["fp32"] = measure(TorchBackend(model), label="eager fp32", budget_s=args.slow_budget_s * 3, **common_kw)
    t0 = time.perf_counter()
    quant_report = apply_recipe(model, recipe)  # also needed for the byte model (per-layer schemes)
    quantize_s = time.perf_counter() - t0
    probe, probe_run = None, None
    if not args.no_linears_probe:
        console.print("lowering the decoder's linears alone (seq 1, static) for the linears-only probe")
        try:
            probe, probe_run = linears_probe(model, hidden)
            if "error" in probe:
                console.print(f"[yellow]linears probe skipped: {probe['error']}[/yellow]")
            else:
                console.print(f"  linears alone: {probe['ms']['median']:.2f} ms ({probe['subgraphs']} XNNPACK subgraphs)")
        except Exception as e:
            probe = {"error": f"{type(e).__name__}: {e}"}
            console.print(f"[yellow]linears probe failed: {probe['error']}[/yellow]")
        gc.collect()
    if not args.no_eager:
        label = f"eager {args.quant}"
        with torch.inference_mode():
            try:
                eager["quantized"] = measure(TorchBackend(model), label=label, budget_s=args.slow_budget_s, **common_kw)
            except Exception as e:
                eager["quantized"] = {"label": label, "error": f"{type(e).__name__}: {e}"}
                console.print(f"[yellow]{label} failed: {eager['quantized']['error']}[/yellow]")
        from autoglm_export.targets.executorch_attention import use_executorch_attention

        label = f"eager {args.quant} + ExecuTorch attention"
        try:
            use_executorch_attention(model)
            with torch.inference_mode():
                eager["quantized_et_attention"] = measure(TorchBackend(model), label=label, budget_s=args.slow_budget_s, **common_kw)
        except Exception as e:
            eager["quantized_et_attention"] = {"label": label, "error": f"{type(e).__name__}: {e}"}
            console.print(f"[yellow]{label} failed: {eager['quantized_et_attention']['error']}[/yellow]")

    # ---- 2/5. bytes, floor
    bm = byte_model(model, quant_report.layers, args.group_size, args.quant_embedding)
    peak_rss = common.peak_rss_bytes()  # before the bandwidth probe's 1 GiB array
    console.print("paired rounds: decode, linears alone, bandwidth probes, interleaved")
    rounds = paired_rounds(et, probe_run, args.threads, n_prefill, bm, rounds=args.rounds)
    bandwidth = common.memory_bandwidth(args.threads)
    load_info = load.stop()

    decode_ms = pte_result["decode"]["ms_per_token_with_embedding"]["median"]
    decode_only_ms = pte_result["decode"]["ms_per_token_decoder_only"]["median"]
    per_token = bm["text"]["decode_read_bytes"]
    floor_ms = per_token / (bandwidth["best_gbps"] * common.GB) * 1e3
    mean_pos = n_prefill + n_decode / 2
    kv_bytes = kv_read_bytes(cfg, mean_pos)
    encoders_est = sum(bm[c]["stored_bytes"] for c in ("vision", "audio") if c in bm)
    results = {
        "benchmark": "android",
        "command": common.command_line(),
        "date": common.utc_now(),
        "run": run,
        "machine": {**common.machine_info(args.threads), "executorch_threads": et_threads,
                    "executorch": manifest.get("toolchain", {}).get("executorch"),
                    "torchao": manifest.get("toolchain", {}).get("torchao")},
        "load": load_info,
        "load_scope": "timing part (after the export; the export's own is export.load)",
        "wait_quiet": quiet,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "export_worker"},
        "out": out_str,
        "recipe": recipe.to_dict(),
        "export": None if export is None else {
            **{k: v for k, v in export.items() if k != "log"},
            "stage_seconds": manifest.get("stage_seconds"),
            "max_seq_len": manifest.get("max_seq_len"),
            "custom_ops": manifest.get("custom_ops"),
        },
        "model": {
            "preset": args.preset,
            "max_context": shape.max_context,
            "image_hw": list(shape.image_hw),
            "image_tokens": model.vision.num_tokens,
            "audio_frames": shape.audio_frames if model.audio else None,
            "audio_tokens": model.audio.num_tokens if model.audio else None,
            "params": {**params, "total": total_params},
        },
        "pte": {
            "bytes": pte_bytes,
            "bits_per_weight": 8 * pte_bytes / total_params,
            "estimated_bytes": bm["total_stored_bytes"],
            "estimate_error": pte_bytes / bm["total_stored_bytes"] - 1,
            "estimated_encoder_bytes": encoders_est,
            "text_only_estimate_bytes": pte_bytes - encoders_est,
            "byte_model": bm,
            "delegation": manifest.get("delegation"),
            "quantization": manifest.get("quantization"),
        },
        "executorch": pte_result,
        "eager": eager,
        "eager_quantize_s": quantize_s,
        "floor": {
            "decode_read_bytes": per_token,
            "decode_read_linear_bytes": bm["text"]["decode_read_linear_bytes"],
            "bandwidth_gbps": bandwidth["best_gbps"],
            "floor_ms": floor_ms,
            "ratio_to_floor": decode_ms / floor_ms,
            "ratio_to_floor_decoder_only": decode_only_ms / floor_ms,
            "target_ratio": TARGET_RATIO_TO_FLOOR,
            "kv_read_bytes_at_mean_position": kv_bytes,
            "mean_position": mean_pos,
        },
        "peer": {**PEER, "ratio_decode": decode_ms / PEER["decode_ms_per_token"],
                 "ratio_prefill": pte_result["prefill"]["tokens_per_s"] / PEER["prefill_tokens_per_s"]},
        "profile": profile,
        "linears_probe": probe,
        "paired_rounds": rounds,
        "memory": {"peak_rss_bytes": peak_rss},
        "bandwidth": bandwidth,
    }
    common.write_json(out, results)
    console.print(f"wrote {out}")
    return render(results, args.markdown, console, Table)


# ---------------------------------------------------------------- reporting

def render(results: dict, markdown: bool, console, Table) -> int:
    """Print the tables; with ``markdown``, write this run's section of BENCHMARKS.md."""
    rows, cols = summary_rows(results)
    table = Table(title=f"ExecuTorch (XNNPACK, {results['recipe']['linear']}) vs eager PyTorch, preset "
                        f"{results['model']['preset']}, {results['machine']['threads']} threads")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for metric, value in rows:
        table.add_row(metric, value)
    console.print(table)
    ctable = Table(title="Same measurements per runtime")
    for h in cols[0]:
        ctable.add_column(h, justify="right" if h != cols[0][0] else "left")
    for row in cols[1]:
        ctable.add_row(*row)
    console.print(ctable)
    profile = results.get("profile")
    if profile and "error" not in profile:
        console.print("ETDump profile, " + "\n".join(profile_lines(results)), markup=False, highlight=False)
    console.print(common.describe_load(results["load"]))
    if markdown:
        path = common.update_markdown_section(f"android:{results['model']['preset']}", markdown_section(results, rows, cols))
        console.print(f"updated {path}")
    return 0

def summary_rows(r: dict) -> tuple[list[tuple[str, str]], tuple[list[str], list[list[str]]]]:
    p, pte, fl, et = r["model"]["params"], r["pte"], r["floor"], r["executorch"]
    rows = []
    if r["export"]:
        ex = r["export"]
        rows.append(("export wall time / peak RSS (subprocess)", f"{ex['wall_s']:.0f} s / {common.fmt_mb(ex['peak_rss_bytes'])}"))
        st = ex.get("stage_seconds") or {}
        if st:
            rows.append(("export stages", "; ".join(f"{k.split(' ')[0] if '=' in k else k} {v:.0f} s" for k, v in st.items())))
    rows += [
        ("params: text / vision / audio", " / ".join(common.fmt_count(p[k]) for k in ("text", "vision", "audio") if k in p)),
        ("model.pte", f"{common.fmt_mb(pte['bytes'])} ({pte['bits_per_weight']:.2f} bits/weight over {common.fmt_count(p['total'])})"),
        ("model.pte estimated from the recipe", f"{common.fmt_mb(pte['estimated_bytes'])} ({100 * pte['estimate_error']:+.1f}% off)"),
        ("model.pte without the encoders (estimate)", common.fmt_mb(pte["text_only_estimate_bytes"])),
    ]
    for name, d in (pte.get("delegation") or {}).items():
        top = ", ".join(f"{op} x{n}" for op, n in list(d.get("top_non_delegated_ops", {}).items())[:4])
        rows.append((f"delegated to XNNPACK: {name}",
                     f"{100 * d['delegated_fraction']:.0f}% of {d['delegated_nodes'] + d['non_delegated_nodes']} nodes, "
                     f"{d['delegated_subgraphs']} subgraphs" + (f"; not: {top}" if top else "")))
    dec = et["decode"]
    rows += [
        ("runtime load (4 methods) / RSS after runs", f"{et['load_s'] * 1e3:.0f} ms / +{common.fmt_mb(et['rss_after_runs_bytes'])}"),
        (f"prefill, {et['prefill']['tokens']} tokens", f"{et['prefill']['tokens_per_s']:.0f} tokens/s ({et['prefill']['ms']['median']:.0f} ms)"),
        (f"decode, median of {dec['steps']} steps (embedding + decoder + argmax)",
         f"{dec['ms_per_token_with_embedding']['median']:.2f} ms/token ({dec['tokens_per_s']:.0f} tokens/s)"),
        ("decode, text_decoder call only", f"{dec['ms_per_token_decoder_only']['median']:.2f} ms/token"),
        ("token_embedding call", f"{dec['ms_token_embedding']['median']:.3f} ms"),
        ("decode weights read per token (packed int4 + bf16 scales)", common.fmt_mb(fl["decode_read_bytes"])),
        ("KV cache read per token (mean position, not in the floor)", common.fmt_mb(fl["kv_read_bytes_at_mean_position"])),
        (f"memory bandwidth, {r['bandwidth']['threads']} threads (sum / gemv)",
         f"{r['bandwidth']['sum_gbps']:.1f} / {r['bandwidth']['gemv_gbps']:.1f} GB/s"),
        ("decode bandwidth floor", f"{fl['floor_ms']:.2f} ms/token"),
        ("decode / floor (target <= 1.3x)", f"{fl['ratio_to_floor']:.2f}x (decoder call only: {fl['ratio_to_floor_decoder_only']:.2f}x)"),
    ]
    lp = r.get("linears_probe")
    if lp and "error" not in lp:
        ms = lp["ms"]["median"]
        rows.append(("decoder linears alone (seq 1, static, no attention/norms)",
                     f"{ms:.2f} ms = {fl['decode_read_linear_bytes'] / (ms * 1e-3) / common.GB:.1f} GB/s; "
                     f"{100 * ms / dec['ms_per_token_decoder_only']['median']:.0f}% of the decoder call; "
                     f"{lp['subgraphs']} XNNPACK subgraph(s)"))
        if lp.get("ms_one_thread"):
            ms1 = lp["ms_one_thread"]["median"]
            rows.append(("decoder linears alone, 1 thread",
                         f"{ms1:.2f} ms = {fl['decode_read_linear_bytes'] / (ms1 * 1e-3) / common.GB:.1f} GB/s"))
    pr = r.get("paired_rounds") or []
    if pr:
        def span(key, fmt):
            vals = [x[key] for x in pr if x.get(key) is not None]
            return (fmt.format(min(vals)) + "-" + fmt.format(max(vals))) if vals else "n/a"
        rows.append((f"paired rounds x{len(pr)}: decode ms / 1 GiB GB/s / weights-sized GB/s",
                     f"{span('decode_ms', '{:.2f}')} ms / {span('bandwidth_gbps', '{:.1f}')} / {span('working_set_gbps', '{:.1f}')} GB/s"))
        rows.append((f"paired rounds x{len(pr)}: decode / floor, linears alone / their floor",
                     f"{span('decode_over_floor', '{:.2f}')}x, {span('linears_over_floor', '{:.2f}')}x"))
    rows += [
        ("vs peer: decode / prefill / size",
         f"{r['peer']['ratio_decode']:.2f}x of {r['peer']['decode_ms_per_token']} ms, "
         f"{r['peer']['ratio_prefill']:.2f}x of {r['peer']['prefill_tokens_per_s']:.0f} tok/s, "
         f"{pte['text_only_estimate_bytes'] / 1e6 / r['peer']['pte_mb']:.2f}x of {r['peer']['pte_mb']} MB"),
    ]
    variants = [("ExecuTorch .pte", et)] + [(v.get("label", k), v) for k, v in r["eager"].items()]
    headers = ["", *[name for name, _ in variants]]

    def cell(v, fn):
        if "error" in v:
            return "failed"
        return fn(v)

    table = [
        ["prefill tokens/s", *[cell(v, lambda v: f"{v['prefill']['tokens_per_s']:.0f}") for _, v in variants]],
        ["decode ms/token (with embedding)", *[cell(v, lambda v: f"{v['decode']['ms_per_token_with_embedding']['median']:.2f}"
                                                + ("*" if v['decode']['limited_by_budget'] else "")) for _, v in variants]],
        ["decode ms/token (decoder only)", *[cell(v, lambda v: f"{v['decode']['ms_per_token_decoder_only']['median']:.2f}") for _, v in variants]],
        ["decode steps timed", *[cell(v, lambda v: str(v['decode']['steps'])) for _, v in variants]],
        ["vision encoder ms", *[cell(v, lambda v: f"{v['vision_encoder']['ms']['median']:.1f}") for _, v in variants]],
    ]
    if et.get("audio_encoder"):
        table.append(["audio encoder ms", *[cell(v, lambda v: f"{v['audio_encoder']['ms']['median']:.1f}") for _, v in variants]])
    return rows, (headers, table)


def profile_lines(r: dict) -> list[str]:
    prof = r["profile"]
    total = prof["execute_ms"]

    def pct(ms: float) -> str:
        return f"{100 * ms / total:.0f}%" if total else "?"

    gemm = {k: v for k, v in prof["xnnpack_ops"].items() if k.startswith("Fully Connected")}
    gemm_ms = sum(v["ms"] for v in gemm.values())
    gemm_calls = sum(v["calls"] for v in gemm.values())
    lines = [
        f"one text_decoder decode step at position {prof['position']}: {total:.2f} ms in Method::execute "
        f"(wall with ETDump on {prof['wall_ms_median']:.2f} ms; without it {r['executorch']['decode']['ms_per_token_decoder_only']['median']:.2f} ms)",
        f"  XNNPACK: {prof['delegate_calls']} delegate calls, {prof['delegate_ms']:.2f} ms ({pct(prof['delegate_ms'])})",
        f"    linears (Fully Connected, {gemm_calls} calls): {gemm_ms:.2f} ms ({pct(gemm_ms)})"
        + (f" = {r['floor']['decode_read_linear_bytes'] / (gemm_ms * 1e-3) / common.GB:.1f} GB/s over their "
           f"{common.fmt_mb(r['floor']['decode_read_linear_bytes'])}" if gemm_ms else ""),
    ]
    others = [(k, v) for k, v in prof["xnnpack_ops"].items() if k not in gemm]
    other_ms = sum(v["ms"] for _, v in others)
    top = ", ".join(f"{k} {v['ms']:.3f}" for k, v in others[:3] if v["ms"] > 0)
    lines.append(f"    other XNNPACK ops ({sum(v['calls'] for _, v in others)} calls): {other_ms:.2f} ms ({pct(other_ms)})"
                 + (f"; largest: {top}" if top else ""))
    lines.append(f"    entering/leaving the subgraphs (DELEGATE_CALL minus its ops): {prof['delegate_overhead_ms']:.2f} ms "
                 f"({pct(prof['delegate_overhead_ms'])}, {1e3 * prof['delegate_overhead_ms'] / max(prof['delegate_calls'], 1):.1f} us per call)")
    lines.append(f"  non-delegated kernels: {prof['operator_calls']} calls, {prof['operator_ms']:.2f} ms ({pct(prof['operator_ms'])})")
    for k, v in list(prof["native_ops"].items())[:5]:
        lines.append(f"    {k}: {v['ms']:.3f} ms ({pct(v['ms'])}, {v['calls']} calls)")
    lines.append(f"    per-call overhead (OPERATOR_CALL minus its kernel): {prof['operator_overhead_ms']:.2f} ms ({pct(prof['operator_overhead_ms'])})")
    lines.append(f"  executor outside any event: {prof['executor_ms']:.2f} ms ({pct(prof['executor_ms'])})")
    return lines


def markdown_section(r: dict, rows, cols) -> str:
    mach = r["machine"]
    headers, table = cols
    lines = [
        f"## ExecuTorch (XNNPACK, {r['recipe']['linear']}), preset `{r['model']['preset']}`",
        "",
        f"- Command: `{r['command']}`",
        f"- Date: {r['date']}",
        f"- Machine: {mach['cpu_model']}, {mach['logical_cores']} cores, {mach['memory_bytes'] / 2**30:.0f} GiB; "
        f"torch {mach['torch']}, executorch {mach['executorch']}, torchao {mach['torchao']}; "
        f"{mach['threads']} torch threads, ExecuTorch threadpool {mach['executorch_threads']}",
        f"- Load while timing: {common.describe_load(r['load'])}"
        + (f"; during the export: {r['export']['load']['other_cores']:.2f} cores" if r.get("export") and r["export"].get("load") else ""),
        f"- Recipe: decoder linears {r['recipe']['linear']} (group {r['recipe']['group_size']}, lm_head included), "
        f"encoders {r['recipe']['encoder']}, embedding {r['recipe']['embedding']}-bit; ExecuTorch custom sdpa + update_cache; "
        f"max_seq_len {r['args']['max_seq_len']}, KV cache {r['model']['max_context']} slots; export validation off (`small` has no tokenizer for parity probes)",
        f"- Raw results: `{r['out']}`",
        *run_lines(r),
        "",
        common.markdown_table(["Metric", "Value"], [list(row) for row in rows]),
        "",
        common.markdown_table(headers, table),
        "",
    ]
    if any(v.get("decode", {}).get("limited_by_budget") for v in r["eager"].values() if "error" not in v):
        lines += ["\\* fewer decode steps: that eager variant is slow, the run keeps each one to about "
                  f"{r['args']['slow_budget_s']:.0f} s.", ""]
    prof = r.get("profile")
    if prof and "error" not in prof:
        lines += ["Where a decode step goes (ETDump, median per event over "
                  f"{prof['steps']} steps):", "", "```", *profile_lines(r), "```", ""]
    lines += [
        "How: the export runs in a subprocess (`export_android`, validation off); prefill feeds random "
        "embeddings through `text_decoder` in chunks of max_seq_len from an empty cache (median of runs); "
        "decode is greedy, one token per step, median over the steps. Every runtime is driven through the "
        "same numpy backend interface (`ExecuTorchBackend`, `TorchBackend`). Floor: decoder weights one "
        "step reads (int4 + bf16 group scales for 8da4w linears incl. lm_head, fp32 norms/biases, one int8 "
        "embedding row) / the faster bandwidth probe of this run.",
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
    return [f"- Run `{run['id']}` also took the ONNX Runtime numbers (section `onnx:{r['model']['preset']}`, "
            f"`{run['outputs']['onnx']}`), right after this one"]


def l3_text() -> str:
    try:
        kb = int(Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip().rstrip("K"))
        return f"{kb / 1024:.0f} MiB"
    except (OSError, ValueError):
        return "large"


def _span(values, fmt: str) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    lo, hi = fmt.format(min(values)), fmt.format(max(values))
    return lo if lo == hi else f"{lo}-{hi}"


def analysis_lines(r: dict) -> list[str]:
    fl, et, pte, peer = r["floor"], r["executorch"], r["pte"], r["peer"]
    dec = et["decode"]["ms_per_token_with_embedding"]["median"]
    dec_only = et["decode"]["ms_per_token_decoder_only"]["median"]
    peer_ratio = peer["decode_ms_per_token"] / peer["floor_ms"]
    met = fl["ratio_to_floor"] <= TARGET_RATIO_TO_FLOOR
    pr = r.get("paired_rounds") or []
    lp, prof = r.get("linears_probe"), r.get("profile")
    lp = lp if lp and "error" not in lp else None
    out = [
        f"- **Decode vs floor:** {dec:.2f} ms/token is {fl['ratio_to_floor']:.2f}x this run's floor "
        f"({fl['floor_ms']:.2f} ms: {common.fmt_mb(fl['decode_read_bytes'])} at {fl['bandwidth_gbps']:.1f} GB/s, the 1 GiB probe); "
        f"the target (<= {TARGET_RATIO_TO_FLOOR}x) is {'met' if met else 'not met'} by this measurement"
        + (f", and {_span([x['decode_over_floor'] for x in pr], '{:.2f}')}x in the {len(pr)} paired rounds "
           f"({_span([x['decode_ms'] for x in pr], '{:.2f}')} ms)" if pr else "")
        + f". The peer's {peer['decode_ms_per_token']} ms was {peer_ratio:.2f}x its floor at the ~{peer['bandwidth_gbps']:.0f} GB/s "
        f"measured that day; in ms this run is {peer['ratio_decode']:.2f}x the peer. token_embedding + argmax add "
        f"{dec - dec_only:.2f} ms per token.",
    ]
    where = []
    if lp:
        ms = lp["ms"]["median"]
        gbps = fl["decode_read_linear_bytes"] / (ms * 1e-3) / common.GB
        n_lin = sum(v for k, v in ((pte.get("quantization") or {}).get("per_component", {}).get("text", {})).items()
                    if "embedding" not in k)
        text = (f"the decoder's {n_lin} linears alone (lowered as one static seq-1 program: no attention, norms, rotary, cache) "
                f"take {ms:.2f} ms = {gbps:.1f} GB/s, {100 * ms / dec_only:.0f}% of the {dec_only:.2f} ms decoder call")
        if lp.get("ms_one_thread"):
            g1 = fl["decode_read_linear_bytes"] / (lp["ms_one_thread"]["median"] * 1e-3) / common.GB
            text += f" (one thread: {g1:.1f} GB/s)"
        rest = [dec_only - ms]
        if pr and all(x.get("linears_ms") for x in pr):
            lof = [x["linears_over_floor"] for x in pr]
            text += (f"; in the paired rounds {_span([x['linears_ms'] for x in pr], '{:.2f}')} ms, "
                     f"{_span(lof, '{:.2f}')}x their share of the floor")
            rest += [x["decode_ms"] - x["linears_ms"] for x in pr]
            if max(lof) < 1.0:
                text += ": the int4 GEMMs are not the bottleneck"
        text += (f"; the other {_span(rest, '{:.1f}')} ms of a step (attention, norms, rotary, entering "
                 f"{_subgraphs(r)} XNNPACK subgraphs, the executor) is what separates decode from the floor")
        where.append(text)
    if prof and "error" not in prof:
        total = prof["execute_ms"]
        gemm = sum(v["ms"] for k, v in prof["xnnpack_ops"].items() if k.startswith("Fully Connected"))
        sdpa = sum(v["ms"] for k, v in prof["native_ops"].items() if "sdpa" in k)
        other_native = prof["operator_ms"] - sdpa
        n_sdpa = sum(v["calls"] for k, v in prof["native_ops"].items() if "sdpa" in k)
        where.append(f"An ETDump of a step: linears {100 * gemm / total:.0f}%, custom_sdpa {100 * sdpa / total:.0f}% "
                     f"({1e3 * sdpa / max(n_sdpa, 1):.0f} us per layer at ~{prof['position']} cached positions), entering/leaving "
                     f"the {prof['delegate_calls']} XNNPACK subgraphs {100 * prof['delegate_overhead_ms'] / total:.0f}% "
                     f"(~{1e3 * prof['delegate_overhead_ms'] / max(prof['delegate_calls'], 1):.0f} us each), the other "
                     f"{prof['operator_calls'] - n_sdpa} non-delegated kernel calls {100 * other_native / total:.0f}%, the "
                     f"executor {100 * prof['executor_ms'] / total:.0f}% (the event timers stretch a step to "
                     f"{prof['wall_ms_median']:.2f} ms and inflate the many small events most, so read these as rough shares)")
    if where:
        out.append("- **Where decode time goes:** " + ". ".join(where) + ".")
    d = (pte.get("delegation") or {}).get("text_decoder")
    if d:
        top = d.get("top_non_delegated_ops", {})
        causes = []
        if "aten_mean_dim" in top:
            causes.append(f"RMSNorm's mean over the last dim x{top['aten_mean_dim']} (XNNPACK lowers mean only for 4-D inputs "
                          "over dims 2 and 3; GLM's sandwich norms make it 4 per layer + the final norm)")
        if "aten_slice_copy_tensor" in top:
            causes.append(f"the partial-rotary slices x{top['aten_slice_copy_tensor']} (XNNPACK takes no slice of a "
                          "dynamically shaped tensor)")
        if "aten_view_copy_default" in top:
            causes.append(f"reshapes to symbolic sizes x{top['aten_view_copy_default']} (XNNPACK's reshape takes no symbolic size)")
        causes.append("update_cache/custom_sdpa (by design)")
        out.append(f"- **Why {d['delegated_subgraphs']} subgraphs per step:** {d['non_delegated_nodes']} text_decoder nodes stay "
                   f"outside XNNPACK, and each one between two delegated ops splits the graph: " + "; ".join(causes) + ".")
    out.append(
        f"- **What would {'cut the rest' if met else 'close the gap'}:** (1) fewer partitions and fewer portable kernels per step: RMSNorm as "
        "`x * rsqrt(F.linear(x * x, full((1, D), 1/D)) + eps)` is delegated (checked on a toy layer with a dynamic "
        "sequence: same output to 2e-6); rotary without slices (cos/sin padded to head_dim with 1/0, the pair rotation "
        "as a constant [head_dim, head_dim] matrix) removes the slices; a static seq-1 decode method would make every "
        "reshape and slice static, hence delegable. (2) custom_sdpa is per-call cost at ~100 positions, not bandwidth. "
        "(3) On a phone, where ~120 MB cannot stay in cache, bytes matter: lm_head is 32.8M of the 209M decoder linear "
        "weights, and group size 64/128 halves/quarters the bf16 scale bytes (-5%/-8% per token) at some accuracy cost.")
    if pr:
        ws = [x["working_set_gbps"] / x["bandwidth_gbps"] for x in pr]
        out.append(f"- **Caveat, this machine:** a probe the size of the per-token weights reads "
                   f"{_span([x['working_set_gbps'] for x in pr], '{:.0f}')} GB/s, {_span(ws, '{:.1f}')}x the 1 GiB probe: "
                   f"the VM's host has a {l3_text()} L3 shared with other tenants, and ~120 MB of weights mostly stay in it. "
                   "So the 1 GiB floor is not a hard floor here"
                   + (" (the linears alone beat it)" if any((x.get("linears_over_floor") or 9) < 1 for x in pr) else "")
                   + ", and how much of the L3 we get "
                   "depends on neighbours we cannot see: the same program measured 4-10 ms per step within minutes while "
                   "this benchmark was being written. Single decode numbers from different runs or days (the peer's "
                   "included) differ by more than the effects above; compare within one run.")
    pf = et["prefill"]["tokens_per_s"]
    out.append(f"- **Prefill and size:** {pf:.0f} tokens/s for {et['prefill']['tokens']} tokens ({peer['ratio_prefill']:.2f}x the peer's "
               f"{peer['prefill_tokens_per_s']:.0f}). model.pte is {common.fmt_mb(pte['bytes'])}; without the vision and audio towers "
               f"(estimated {common.fmt_mb(pte['estimated_encoder_bytes'])}) {common.fmt_mb(pte['text_only_estimate_bytes'])} vs the "
               f"peer's {peer['pte_mb']} MB, and the recipe's byte model predicts the file to {100 * abs(pte['estimate_error']):.1f}%: "
               "no layer was silently left in fp32.")
    ex = r.get("export")
    if ex:
        stages = ex.get("stage_seconds") or {}
        lower_s = next((v for k, v in stages.items() if k.startswith("export + lower")), None)
        out.append(f"- **Export:** {ex['wall_s'] / 60:.1f} min wall, {common.fmt_mb(ex['peak_rss_bytes'])} peak RSS "
                   f"(peer: ~{peer['export_wall_s'] / 60:.0f} min, {peer['export_peak_rss_gb']} GB)"
                   + (f"; {lower_s:.0f} s of it is torch.export + `to_edge_transform_and_lower` + emit" if lower_s else "") + ".")
    eq = r["eager"].get("quantized")
    if eq and "error" not in eq:
        fp = r["eager"].get("fp32")
        out.append(f"- **Eager references:** the .pte decodes {fp['decode']['ms_per_token_with_embedding']['median'] / dec:.0f}x faster "
                   f"than eager fp32. torchao's eager {r['recipe']['linear']} "
                   f"({eq['decode']['ms_per_token_with_embedding']['median']:.0f} ms/token) is a numerical reference, not a "
                   "runtime: it dequantizes its int4 weights (stored one per int8) on every call."
                   if fp and "error" not in fp else "")
    return [line for line in out if line]


def _subgraphs(r: dict) -> str:
    d = (r["pte"].get("delegation") or {}).get("text_decoder")
    return str(d["delegated_subgraphs"]) if d else "the"

if __name__ == "__main__":
    sys.exit(main())

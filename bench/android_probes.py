"""Where ExecuTorch decode time goes, part 1: the decoder's quantized linears alone as one static program,
and paired rounds of decode + linears + bandwidth probes back to back (this VM's memory speed drifts)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from harness.backend_timing import text_positions
from harness.machine import memory_bandwidth
from harness.paths import REPO
from harness.timing import Timing, time_runs
from harness.units import GB


def linears_probe(model, hidden: int, runs: int = 50) -> tuple[dict, object]:
    """Lower the (already quantized) decoder linears alone, seq 1 and static shapes, and time one pass.

    Per layer q/k/v/o, gate_up and down, then lm_head, chained with adds and the SwiGLU product only
    (no norms, rotary, attention, KV cache): what one decode step's linears cost in XNNPACK when
    nothing else runs. Same weight objects as the export, so the same packed int4 formats.
    Returns the record and a function that runs the program once (None when not applicable).
    """
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.devtools.backend_debug import get_delegation_info
    from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.extension.pybindings import portable_lib
    from torch import nn

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

    timing = time_runs(run, warmup=5, runs=runs)
    one = None
    if portable_lib._threadpool_get_thread_count() > 1:
        # Per-core throughput: does the kernel scale with cores (compute-bound) or not (memory-bound)?
        # In a child process: resetting the threadpool here would leave loaded XNNPACK runtimes (which
        # bind the pool when they are created) pointing at a freed pool.
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "linears.pte"
            path.write_bytes(buffer)
            one = time_pte_in_child(path, hidden, threads=1, runs=max(10, runs // 2))
    result = {
        "ms": timing.to_dict(),
        "ms_one_thread": one,
        "subgraphs": info.num_delegated_subgraphs,
        "pte_bytes": len(buffer),
        "build_s": build_s,
    }
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
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD_TIMER, str(path), str(hidden), str(threads), str(runs)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,  # no RESULT line: reported as None
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return Timing(json.loads(line[len("RESULT ") :])).to_dict()
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
        lin_ms = time_runs(probe_run, warmup=2, runs=15).median * 1e3 if probe_run else None
        bw = memory_bandwidth(threads, runs=3)["best_gbps"]
        ws = memory_bandwidth(threads, nbytes=ws_bytes, runs=5)["best_gbps"]
        floor_ms = per_token / (bw * GB) * 1e3
        out.append(
            {
                "decode_ms": decode_ms,
                "linears_ms": lin_ms,
                "bandwidth_gbps": bw,
                "working_set_gbps": ws,
                "working_set_bytes": ws_bytes,
                "floor_ms": floor_ms,
                "decode_over_floor": decode_ms / floor_ms,
                "linears_over_floor": None if lin_ms is None else lin_ms / (linear_bytes / (bw * GB) * 1e3),
            }
        )
    return out

"""Where ExecuTorch decode time goes, part 2: an ETDump of decode steps, and its text for the report."""

from __future__ import annotations

import re
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from harness.units import GB, fmt_mb


def profile_decode_step(pte: Path, hidden: int, position: int, steps: int = 24) -> dict:
    """ETDump of ``steps`` decode steps (``text_decoder_step`` when the program has it, else ``text_decoder``) (seq 1, at ``position``) on a separately loaded copy.

    The runtime groups identical runs into one event block; every event keeps one time per run, and
    this takes the median per event. Top level of a step: ``DELEGATE_CALL`` events (one per XNNPACK
    subgraph, with XNNPACK's own per-operator events nested inside) and ``OPERATOR_CALL`` events (one
    per non-delegated kernel call, the kernel's own event nested inside). What is left of
    ``Method::execute`` is the executor itself.
    """
    import torch
    from executorch.devtools import Inspector
    from executorch.extension.pybindings import portable_lib

    from autoglm_runtime.backends.executorch_backend import STEP_METHOD

    module = portable_lib._load_for_executorch(str(pte), enable_etdump=True, debug_buffer_size=0)
    method = STEP_METHOD if STEP_METHOD in module.method_names() else "text_decoder"  # what a decode step calls
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((1, 1, hidden), dtype=np.float32))
    wall = []
    for i in range(steps):  # the cache content does not matter for timing; positions do (sdpa length)
        pos = torch.tensor([position + i])
        t0 = time.perf_counter()
        module.run_method(method, (x, pos, pos.expand(3, -1).contiguous()))
        wall.append(time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "etdump.etdp"
        module.write_etdump_result_to_file(str(path))
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
        "method": method,
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


def profile_lines(r: dict) -> list[str]:
    prof = r["profile"]
    total = prof["execute_ms"]

    def pct(ms: float) -> str:
        return f"{100 * ms / total:.0f}%" if total else "?"

    gemm = {k: v for k, v in prof["xnnpack_ops"].items() if k.startswith("Fully Connected")}
    gemm_ms = sum(v["ms"] for v in gemm.values())
    gemm_calls = sum(v["calls"] for v in gemm.values())
    lines = [
        (
            f"one {prof.get('method', 'text_decoder')} decode step at position {prof['position']}: {total:.2f} ms in Method::execute "
            f"(wall with ETDump on {prof['wall_ms_median']:.2f} ms; without it {r['executorch']['decode']['ms_per_token_decoder_only']['median']:.2f} ms)"
        ),
        f"  XNNPACK: {prof['delegate_calls']} delegate calls, {prof['delegate_ms']:.2f} ms ({pct(prof['delegate_ms'])})",
        f"    linears (Fully Connected, {gemm_calls} calls): {gemm_ms:.2f} ms ({pct(gemm_ms)})"
        + (
            f" = {r['floor']['decode_read_linear_bytes'] / (gemm_ms * 1e-3) / GB:.1f} GB/s over their "
            f"{fmt_mb(r['floor']['decode_read_linear_bytes'])}"
            if gemm_ms
            else ""
        ),
    ]
    others = [(k, v) for k, v in prof["xnnpack_ops"].items() if k not in gemm]
    other_ms = sum(v["ms"] for _, v in others)
    top = ", ".join(f"{k} {v['ms']:.3f}" for k, v in others[:3] if v["ms"] > 0)
    lines.append(
        f"    other XNNPACK ops ({sum(v['calls'] for _, v in others)} calls): {other_ms:.2f} ms ({pct(other_ms)})"
        + (f"; largest: {top}" if top else "")
    )
    lines.append(
        f"    entering/leaving the subgraphs, and the small ops XNNPACK times as 0 us (DELEGATE_CALL minus its "
        f"timed ops): {prof['delegate_overhead_ms']:.2f} ms "
        f"({pct(prof['delegate_overhead_ms'])}, {1e3 * prof['delegate_overhead_ms'] / max(prof['delegate_calls'], 1):.1f} us per call)"
    )
    lines.append(
        f"  non-delegated kernels: {prof['operator_calls']} calls, {prof['operator_ms']:.2f} ms ({pct(prof['operator_ms'])})"
    )
    for k, v in list(prof["native_ops"].items())[:5]:
        lines.append(f"    {k}: {v['ms']:.3f} ms ({pct(v['ms'])}, {v['calls']} calls)")
    lines.append(
        f"    per-call overhead (OPERATOR_CALL minus its kernel): {prof['operator_overhead_ms']:.2f} ms ({pct(prof['operator_overhead_ms'])})"
    )
    lines.append(f"  executor outside any event: {prof['executor_ms']:.2f} ms ({pct(prof['executor_ms'])})")
    return lines

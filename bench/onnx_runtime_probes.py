"""Where ONNX Runtime decode time goes: IO binding vs the numpy round trip, onnxruntime's per-op profile of
decode steps, the decoder with int8 activations (what `onnx --int8-activations` exports), and the
decoder's MatMulNBits alone."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
from harness.backend_timing import measure_backend, text_positions

from autoglm_runtime.backends.onnx_backend import BoundCache, updates_cache_in_place

INT8_ACCURACY_LEVEL = 4  # MatMulNBits: int8 activations (per-block dynamic quantization), int32 accumulation
ROUND_STEPS = 16  # decode steps per mode in each IO-binding round (after 2 untimed)
PROFILE_STEPS = 24


def io_binding_rounds(backend, hidden: int, start: int, rounds: int, steps: int = ROUND_STEPS) -> list[dict]:
    """Decode steps (text_decoder only) with the cache IO-bound, then through numpy, ``rounds`` times.

    Both modes at the same positions, seconds apart, so the machine's drift hits both alike.
    """
    x = np.random.default_rng(2).standard_normal((1, 1, hidden), dtype=np.float32)
    out = []
    for _ in range(rounds):
        r = {}
        for mode, key in ((True, "bound_ms"), (False, "unbound_ms")):
            backend.io_binding = mode
            backend.reset()
            times = []
            for i in range(steps + 2):
                p, pid = text_positions(start + i, 1)
                t0 = time.perf_counter()
                backend.text_decoder(x, p, pid)
                times.append(time.perf_counter() - t0)
            r[key] = float(np.median(times[2:])) * 1e3
        out.append(r)
    backend.io_binding = True
    backend.reset()
    return out


# ---------------------------------------------------------------- 5. onnxruntime's profile of decode steps


def profile_decode(
    decoder: Path, threads: int, hidden: int, position: int, steps: int = PROFILE_STEPS, skip: int = 2
) -> dict:
    """onnxruntime's profiler on a separate text_decoder session: time per op type per decode step.

    The profiler records every kernel call with its op type; runs are told apart by their
    ``model_run`` events. The timers add overhead per node, so read shares, not absolute ms.
    """
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "decode")
        session = ort.InferenceSession(str(decoder), opts, providers=["CPUExecutionProvider"])
        cache = {i.name: np.zeros(i.shape, np.float32) for i in session.get_inputs() if i.name.startswith("past_")}
        in_place = updates_cache_in_place(session)
        if in_place:  # as OnnxBackend runs such a graph: each past and its present one buffer, updated in place
            shapes = {name: buf.shape for name, buf in cache.items()}
            binding = BoundCache(session, shapes, dict.fromkeys(cache, np.float32), in_place=True).bindings[0]
            binding.bind_output("logits", "cpu")
        x = np.random.default_rng(1).standard_normal((1, 1, hidden), dtype=np.float32)
        for i in range(steps + skip):  # the cache content does not matter for timing
            p, pid = text_positions(position + i, 1)
            feeds = {"inputs_embeds": x, "cache_position": p, "position_ids": pid}
            if in_place:
                for name, value in feeds.items():
                    binding.bind_cpu_input(name, value)
                session.run_with_iobinding(binding)
            else:
                session.run(None, {**feeds, **cache})
        events = json.loads(Path(session.end_profiling()).read_text())
    runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])[skip:]
    per_op: dict[str, list] = {}
    for e in events:
        if e.get("cat") != "Node" or not any(r["ts"] <= e["ts"] <= r["ts"] + r["dur"] for r in runs):
            continue
        op = e.get("args", {}).get("op_name", "?")
        per_op.setdefault(op, [0, 0.0])
        per_op[op][0] += 1
        per_op[op][1] += e["dur"] / 1e3
    n = max(len(runs), 1)
    ops = {k: {"calls": v[0] // n, "ms": v[1] / n} for k, v in sorted(per_op.items(), key=lambda kv: -kv[1][1])}
    return {
        "steps": len(runs),
        "position": position,
        "run_ms_median": float(np.median([r["dur"] for r in runs])) / 1e3,
        "kernels_ms": sum(v["ms"] for v in ops.values()),
        "ops": ops,
        "cache_in_place": in_place,
        "note": "onnxruntime profiler (enable_profiling) on a separate session, zero KV cache, seq 1, the cache "
        "IO-bound in place where the graph's metadata allows it (as OnnxBackend runs it); "
        "kernel times summed per op type, per step",
    }


# ---------------------------------------------------------------- 6. int8 activations (accuracy_level 4)


def int8_decoder(src: Path, dst: Path) -> int:
    """Copy the decoder graph with ``accuracy_level=4`` on every MatMulNBits; returns how many."""
    import onnx

    from autoglm_export.targets.onnx.convert import save_model, set_accuracy_level

    model = onnx.load(str(src))
    count = set_accuracy_level(model, INT8_ACCURACY_LEVEL)
    if count:
        save_model(model, dst)
    return count


def int8_probe(paths: dict, reference, args, kw: dict, console) -> dict:
    """Prefill and decode with the int8-activation decoder, and how far its logits move from the shipped one's."""
    from autoglm_runtime.backends.onnx_backend import OnnxBackend

    with tempfile.TemporaryDirectory() as tmp:
        patched = Path(tmp) / "text_decoder.onnx"
        count = int8_decoder(paths["text_decoder"], patched)
        if not count:
            return {"error": "no MatMulNBits in the decoder (fp32 export)"}
        backend = OnnxBackend({**paths, "text_decoder": patched}, threads=args.threads)
        n, hidden = kw["n_prefill"], kw["hidden"]
        embeds = np.random.default_rng(3).standard_normal((1, n, hidden), dtype=np.float32)
        pos, ids = text_positions(0, n)
        reference.reset()
        backend.reset()
        want = reference.text_decoder(embeds, pos, ids)
        got = backend.text_decoder(embeds, pos, ids)
        reference.reset()
        result = measure_backend(
            backend, label=f"int8 activations (accuracy_level {INT8_ACCURACY_LEVEL})", budget_s=60.0, **kw
        )
        del backend
    result.update(
        {
            "matmul_nbits": count,
            "logits_rel_max_abs": float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12)),
            "top1_agreement": float((got.argmax(-1) == want.argmax(-1)).mean()),
            "compared_positions": n,
        }
    )
    return result


# ---------------------------------------------------------------- 7. MatMulNBits alone: the kernels' own ceiling

ALONE_BLOCKS = (32, 128)  # the shipped block and onnxruntime's fastest one at one token (fewer, longer blocks)


def matmul_nbits_graph(model, level: int, block: int | None = None):
    """The MatMulNBits nodes of the decoder ``model`` (loaded with its weights), ``accuracy_level`` set to
    ``level``, in a graph with nothing else: each reads a graph input of its K, each output is a graph
    output. ``block`` other than the graph's own: random codes and scales in that block size (the
    kernels' speed does not depend on the values). Returns (model, input widths, weight bytes)."""
    from onnx import TensorProto, helper, numpy_helper

    weights = {t.name: t for t in model.graph.initializer}
    rng = np.random.default_rng(5)
    inputs, initializers, outputs, nodes = {}, {}, [], []
    for i, node in enumerate(node for node in model.graph.node if node.op_type == "MatMulNBits"):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name != "accuracy_level"}
        k, n = attrs["K"], attrs["N"]
        inputs.setdefault(k, helper.make_tensor_value_info(f"x{k}", TensorProto.FLOAT, [1, k]))
        if level:
            attrs["accuracy_level"] = level
        if block in (None, attrs["block_size"]):
            names = [name for name in node.input[1:] if name]
            initializers.update({name: weights[name] for name in names})
        else:  # codes [N, K / block, block / 2] and one fp32 scale per block, as the quantizer writes them
            blocks = -(-k // block)
            names = [f"B{i}", f"S{i}"]
            initializers[names[0]] = numpy_helper.from_array(
                rng.integers(0, 256, (n, blocks, block // 2), dtype=np.uint8), names[0]
            )
            initializers[names[1]] = numpy_helper.from_array(
                rng.uniform(1e-3, 1e-2, n * blocks).astype(np.float32), names[1]
            )
            attrs["block_size"] = block
        nodes.append(helper.make_node("MatMulNBits", [f"x{k}", *names], [f"y{i}"], domain="com.microsoft", **attrs))
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [1, n]))
    graph = helper.make_graph(nodes, "matmul_nbits_alone", list(inputs.values()), outputs, list(initializers.values()))
    alone = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    return alone, sorted(inputs), sum(len(t.raw_data) for t in initializers.values())


def matmul_nbits_alone(decoder: Path, threads: int, rounds: int = 4, runs: int = 24) -> dict:
    """The decoder's MatMulNBits with nothing else, per block size in ``ALONE_BLOCKS`` and fp32 / int8
    activations, all modes in alternating rounds: how close onnxruntime's own kernels come to the bandwidth
    floor. Median ms per pass over all of them, and the bytes they read."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(decoder))
    sessions, feeds, sizes = {}, {}, {}
    for block in ALONE_BLOCKS:
        for level in (0, INT8_ACCURACY_LEVEL):
            graph, widths, sizes[block] = matmul_nbits_graph(model, level, block)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.log_severity_level = 3
            mode = (block, level)
            sessions[mode] = ort.InferenceSession(graph.SerializeToString(), opts, providers=["CPUExecutionProvider"])
            rng = np.random.default_rng(4)
            feeds[mode] = {f"x{k}": rng.standard_normal((1, k), dtype=np.float32) for k in widths}
            del graph
    times: dict[tuple, list] = {mode: [] for mode in sessions}
    for _ in range(rounds):
        for mode, session in sessions.items():
            for _ in range(3):
                session.run(None, feeds[mode])
            for _ in range(runs):
                t0 = time.perf_counter()
                session.run(None, feeds[mode])
                times[mode].append(time.perf_counter() - t0)
    return {
        "nodes": len(next(iter(sessions.values())).get_outputs()),
        "modes": [
            {
                "block_size": block,
                "accuracy_level": level,
                "bytes": sizes[block],
                "ms": float(np.median(times[(block, level)])) * 1e3,
            }
            for block, level in sessions
        ],
        "rounds": rounds,
        "runs_per_round": runs,
        "note": "the decoder's MatMulNBits (its own weights at its block size, random codes at another), one graph "
        "input per K, every output a graph output; medians over all timed runs of alternating modes",
    }

"""Our ExecuTorch bundle vs the optimum-executorch peer, timed in the same run (alternating rounds).

    .venv/bin/python bench/android_peer.py [--bundle DIR] [--peer-pte FILE] [--rounds 6] [--markdown]

1. Ours: ``export_bundle("executorch", ...)`` of ``--preset`` (default ``small``; validation off, ``--max-seq-len``
   128, ``--max-context-len`` 1024) in a subprocess (``harness.bundles``), or ``--bundle``.
2. The peer: ``bench/peer/export_peer.py`` in the peer's own virtualenv (``--peer-venv``, made by
   ``bench/peer/make_venv.sh`` / ``make peer-venv``): a seeded random Llama with the ``small`` text dims
   exported by ``optimum-cli export executorch --recipe xnnpack --use_custom_sdpa --use_custom_kv_cache
   --qlinear 8da4w --qembedding 8w --max_seq_len 1024``; or ``--peer-pte``.
3. Both programs loaded in this process by the same ExecuTorch runtime and threadpool; ``--rounds`` rounds, each
   ours then the peer (ABAB...), each timed by ``harness.backend_timing.measure_backend`` with the same prefill /
   decode token counts and chunk, then a bandwidth probe (``harness.machine.memory_bandwidth``).
4. Per round: decode ms/token (ours with its ``token_embedding`` call; the peer embeds inside its one method),
   prefill tokens/s, our decode / floor (bytes one step reads, ``android_floor.byte_model``, over that round's
   probe), ours / the peer. Median and min-max over the rounds; XNNPACK delegate calls per decode step of each
   program (from the programs' execution plans).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from android_floor import byte_model, linear_bytes
from android_profile import profile_decode_step, profile_lines
from harness import results
from harness.backend_timing import measure_backend, model_workload, text_positions
from harness.bundles import ExportFailed, add_worker_flag, dispatch, export_or_reuse
from harness.load import LoadMonitor, describe_load, wait_quiet
from harness.machine import machine_info, memory_bandwidth
from harness.markdown import machine_line, markdown_table, section_head, span, update_markdown_section
from harness.memory import current_rss_bytes
from harness.paths import REPO, default_results, repo_relative
from harness.units import GB

PEER_EXPORT = REPO / "bench" / "peer" / "export_peer.py"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--max-seq-len", type=int, default=128, help="our longest text_decoder chunk")
    p.add_argument("--max-context-len", type=int, default=1024, help="our KV cache slots (the peer's --max_seq_len)")
    p.add_argument("--threads", type=int, default=2, help="the ExecuTorch threadpool size (both programs)")
    p.add_argument("--prefill-tokens", type=int, default=64)
    p.add_argument("--decode-tokens", type=int, default=64)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--runs", type=int, default=5, help="timed prefill / encoder runs per round (median)")
    p.add_argument("--rounds", type=int, default=6, help="alternating rounds: ours, peer, ours, peer, ...")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS")
    p.add_argument("--bundle", type=Path, default=None, help="time this existing bundle of ours (no export)")
    p.add_argument("--keep-bundle", type=Path, default=None, help="export ours into this directory and keep it")
    p.add_argument("--peer-pte", type=Path, default=None, help="time this existing peer model.pte (no export)")
    p.add_argument(
        "--peer-record",
        type=Path,
        default=None,
        help="with --peer-pte: the JSON line bench/peer/export_peer.py printed when it exported it (command, versions)",
    )
    p.add_argument("--peer-venv", type=Path, default=Path("/work/venv-peer"), help="the peer's virtualenv")
    p.add_argument("--peer-dir", type=Path, default=None, help="export the peer here and keep it (default: a temp dir)")
    p.add_argument("--out", type=Path, default=None, help="JSON (default bench/results/android-peer-<preset>.json)")
    p.add_argument("--markdown", action="store_true", help="write/replace this run's section in BENCHMARKS.md")
    p.add_argument("--no-profile", action="store_true", help="skip the ETDump profile of our decode step")
    p.add_argument("--from-json", type=Path, default=None, help="re-render from a results JSON; measures nothing")
    add_worker_flag(p)
    return p.parse_args(argv)


def request_and_options(out: Path, args: argparse.Namespace) -> tuple:
    from autoglm_export.request import ModelRequest
    from autoglm_export.targets.executorch.export import ExecuTorchOptions

    options = ExecuTorchOptions(out=out, max_seq_len=args.max_seq_len, validate=False, force=True)
    return ModelRequest(preset=args.preset, max_context=args.max_context_len), options


class PeerBackend:
    """The peer's ``forward(input_ids [1, S], cache_position [S])`` behind the backend interface
    ``measure_backend`` drives: ``token_embedding`` passes the ids through (the peer embeds inside its one
    call, which is timed as its decoder call), prefill feeds fixed token ids, there are no encoders."""

    name = "optimum-executorch"

    def __init__(self, pte: Path):
        from autoglm_runtime.backends.executorch_backend import METADATA_PREFIXES, ExecuTorchProgram

        self.program = ExecuTorchProgram(pte)
        methods = [m for m in self.program.method_names if not m.startswith(METADATA_PREFIXES)]
        self.method = "forward" if "forward" in methods else methods[0]
        self.program.method(self.method)

    def token_embedding(self, token_ids):
        return token_ids

    def text_decoder(self, embeds, cache_position, position_ids):
        import numpy as np

        ids = embeds if embeds.dtype == np.int64 else (cache_position[None, :] * 7919 + 11) % 32000
        return self.program.run(self.method, ids.astype(np.int64), cache_position.astype(np.int64))[0]

    def vision_encoder(self, pixels):  # the peer has no towers
        return None

    def reset(self) -> None:  # its custom_sdpa attends to slots 0..start only, as ours without reset_cache
        pass


def delegate_calls(pte: Path, method: str) -> int:
    """XNNPACK (any delegate) calls one execution of ``method`` makes: DelegateCall instructions in its plan."""
    from executorch.exir._serialize._program import deserialize_pte_binary
    from executorch.exir.schema import DelegateCall

    program = deserialize_pte_binary(pte.read_bytes()).program
    plan = next(p for p in program.execution_plan if p.name == method)
    return sum(isinstance(i.instr_args, DelegateCall) for chain in plan.chains for i in chain.instructions)


def first_calls(backend, hidden: int, n: int) -> None:
    """Load and run the decoder method an ``n``-token call uses (and token_embedding)."""
    import numpy as np

    pos, ids = text_positions(0, n)
    backend.token_embedding(np.zeros((1, n), np.int64))
    backend.text_decoder(np.zeros((1, n, hidden), np.float32), pos, ids)
    backend.reset()


def export_peer(args, out_dir: Path, console) -> dict:
    python = args.peer_venv / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"error: {python} not found: create the peer's virtualenv with bench/peer/make_venv.sh")
    console.print(f"exporting the peer with {python} into {out_dir}")
    log = out_dir.parent / f"{out_dir.name}.export.log"
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        proc = subprocess.run(
            [str(python), str(PEER_EXPORT), "--out", str(out_dir), "--max-seq-len", str(args.max_context_len)],
            stdout=subprocess.PIPE,
            stderr=f,
            text=True,
            cwd=REPO,
        )
    if proc.returncode != 0:
        raise SystemExit(f"error: the peer export failed (exit {proc.returncode}); see {log}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def peer_decode_bytes(group_size: int = 32) -> int:
    """Bytes the peer's decode step reads: its 8da4w linears (lm_head included), fp32 norms, one int8 row."""
    sys.path.insert(0, str(PEER_EXPORT.parent))
    from export_peer import DIMS

    h, f, v = DIMS["hidden_size"], DIMS["intermediate_size"], DIMS["vocab_size"]
    kv = h // DIMS["num_attention_heads"] * DIMS["num_key_value_heads"]
    shapes = [(h, h), (h, kv), (h, kv), (h, h), (h, f), (h, f), (f, h)]
    per_layer = sum(linear_bytes(i, o, "8da4w", group_size, False) for i, o in shapes) + 2 * h * 4
    return DIMS["num_hidden_layers"] * per_layer + h * 4 + linear_bytes(h, v, "8da4w", group_size, False) + h + 4


def our_decode_bytes(args) -> dict:
    from autoglm_export.quantize import QuantRecipe, apply_recipe
    from autoglm_export.source import open_source

    model = open_source(preset=args.preset, max_context=args.max_context_len).model.eval()
    recipe = QuantRecipe()
    report = apply_recipe(model, recipe)
    bm = byte_model(model, report.layers, recipe.group_size, recipe.embedding)
    return {"decode_read_bytes": bm["text"]["decode_read_bytes"], "hidden": model.cfg.text.hidden_size, "model": model}


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "all": values}


def measure(args, bundle: Path, export: dict | None, peer_pte: Path, peer_export: dict | None, console) -> dict:
    import gc

    import numpy as np
    from executorch.extension.pybindings import portable_lib

    from autoglm_runtime.backends.executorch_backend import STEP_METHOD, ExecuTorchBackend

    manifest = json.loads((bundle / "manifest.json").read_text())
    ours_pte = bundle / manifest.get("program", "model.pte")
    hidden = manifest["runtime"]["hidden_size"]
    portable_lib._unsafe_reset_threadpool(args.threads)
    # RSS as the methods load and first run, before anything else is allocated (freed heap would hide it):
    # XNNPACK packs each delegate's weights, so a second decoder method costs memory unless shared.
    rss = {"start": current_rss_bytes()}
    ours = ExecuTorchBackend(ours_pte)
    first_calls(ours, hidden, n=8)
    rss["ours_text_decoder_loaded"] = current_rss_bytes()
    step = STEP_METHOD if ours.has_step_method else "text_decoder"
    first_calls(ours, hidden, n=1)
    rss["ours_step_loaded"] = current_rss_bytes()
    peer = PeerBackend(peer_pte)
    first_calls(peer, hidden, n=8)
    first_calls(peer, hidden, n=1)
    rss["peer_loaded"] = current_rss_bytes()
    floor_bytes = our_decode_bytes(args)
    model = floor_bytes.pop("model")
    kw = model_workload(args, model, console)
    del model
    gc.collect()
    calls = {"ours": delegate_calls(ours_pte, step), "peer": delegate_calls(peer_pte, peer.method)}
    console.print(f"XNNPACK delegate calls per decode step: ours ({step}) {calls['ours']}, peer {calls['peer']}")
    quiet = wait_quiet(args.wait_quiet, console) if args.wait_quiet > 0 else None
    load = LoadMonitor()
    rounds = []
    peer_kw = dict(kw, mel=None, pixels=np.zeros(1, np.float32))
    for r in range(args.rounds):
        console.print(f"round {r + 1}/{args.rounds}")
        a = measure_backend(ours, label="ours", budget_s=1e9, **kw)
        dynamic = None
        if ours.has_step_method:  # the same program decoding through text_decoder: what the step method buys
            ours.has_step_method = False
            dynamic = measure_backend(ours, label="ours, text_decoder only", budget_s=1e9, **dict(kw, mel=None))
            ours.has_step_method = True
        b = measure_backend(peer, label="peer", budget_s=1e9, **peer_kw)
        bw = memory_bandwidth(args.threads)
        rounds.append({"ours": a, "ours_text_decoder_only": dynamic, "peer": b, "bandwidth": bw})
    load_info = load.stop()
    profile = None
    if not args.no_profile:  # where our decode step goes: ETDump on a second load of our program
        try:
            profile = profile_decode_step(ours_pte, hidden, args.prefill_tokens + args.decode_tokens // 2)
        except Exception as e:  # a profiling failure must not cost the benchmark
            profile = {"error": f"{type(e).__name__}: {e}"}
    return {
        "manifest_delegation": manifest.get("delegation"),
        "ours_pte_bytes": ours_pte.stat().st_size,
        "peer_pte_bytes": peer_pte.stat().st_size,
        "ours_export": None if export is None else {k: v for k, v in export.items() if k != "log"},
        "peer_export": peer_export,
        "parameters": manifest["model"]["parameters"],
        "decode_read_bytes": {"ours": floor_bytes["decode_read_bytes"], "peer": peer_decode_bytes()},
        "delegate_calls_per_step": calls,
        "rss_bytes": rss,
        "step_method": step,
        "rounds": rounds,
        "profile": profile,
        "load": load_info,
        "wait_quiet": quiet,
    }


def derived(r: dict) -> dict:
    """Per-round ratios and their median / spread."""
    out: dict = {k: [] for k in ("ours_ms", "peer_ms", "ours_prefill", "peer_prefill", "floor_ms", "peer_floor_ms")}
    for rd in r["rounds"]:
        gbps = rd["bandwidth"]["best_gbps"]
        out["ours_ms"].append(rd["ours"]["decode"]["ms_per_token_with_embedding"]["median"])
        out["peer_ms"].append(rd["peer"]["decode"]["ms_per_token_with_embedding"]["median"])
        out["ours_prefill"].append(rd["ours"]["prefill"]["tokens_per_s"])
        out["peer_prefill"].append(rd["peer"]["prefill"]["tokens_per_s"])
        out["floor_ms"].append(r["decode_read_bytes"]["ours"] / (gbps * GB) * 1e3)
        out["peer_floor_ms"].append(r["decode_read_bytes"]["peer"] / (gbps * GB) * 1e3)
    n = range(len(r["rounds"]))
    out["ours_over_floor"] = [out["ours_ms"][i] / out["floor_ms"][i] for i in n]
    out["peer_over_floor"] = [out["peer_ms"][i] / out["peer_floor_ms"][i] for i in n]
    out["decode_ours_over_peer"] = [out["ours_ms"][i] / out["peer_ms"][i] for i in n]
    out["prefill_ours_over_peer"] = [out["ours_prefill"][i] / out["peer_prefill"][i] for i in n]
    dyn = [(rd.get("ours_text_decoder_only") or {}).get("decode") for rd in r["rounds"]]
    if all(dyn):
        out["ours_dynamic_ms"] = [x["ms_per_token_with_embedding"]["median"] for x in dyn]
        out["dynamic_over_step"] = [out["ours_dynamic_ms"][i] / out["ours_ms"][i] for i in n]
    out["vision_ms"] = [rd["ours"]["vision_encoder"]["ms"]["median"] for rd in r["rounds"]]
    out["audio_ms"] = [(rd["ours"].get("audio_encoder") or {}).get("ms", {}).get("median") for rd in r["rounds"]]
    out["gbps"] = [rd["bandwidth"]["best_gbps"] for rd in r["rounds"]]
    return {k: summary([x for x in v if x is not None]) for k, v in out.items() if any(x is not None for x in v)}


def analysis(r: dict, d: dict) -> list[str]:
    """Generated from this run's numbers: the targets, and what the profile says the rest of the step is."""
    dec, pre, flo = d["decode_ours_over_peer"], d["prefill_ours_over_peer"], d["ours_over_floor"]
    out = [
        f"- **vs the peer (target decode <= 1.0x, prefill >= 1.0x):** decode {dec['median']:.2f}x "
        f"({span([dec['min'], dec['max']], '{:.2f}x')} per round), prefill {pre['median']:.2f}x: "
        + ("met" if dec["median"] <= 1.0 and pre["median"] >= 1.0 else "not met; within the rounds' spread")
        + f". Same weights read per token; {r['delegate_calls_per_step']['ours']} vs "
        f"{r['delegate_calls_per_step']['peer']} XNNPACK delegate calls per step.",
        f"- **vs the floor (target <= 1.2x):** {flo['median']:.2f}x ({span([flo['min'], flo['max']], '{:.2f}x')}): "
        + ("met." if flo["median"] <= 1.2 else "not met."),
    ]
    prof = r.get("profile") or {}
    ops = prof.get("xnnpack_ops") or {}
    total = prof.get("execute_ms") or 0
    q4 = [v for k, v in ops.items() if k.startswith("Fully Connected") and "QB4W" in k]
    f32 = [v for k, v in ops.items() if k.startswith("Fully Connected") and "F32) GEMM" in k]
    if q4 and total:
        q4_ms = sum(v["ms"] for v in q4)
        gbps = r["decode_read_bytes"]["ours"] / (q4_ms * 1e-3) / GB
        probe = d["gbps"]["median"]
        f32_ms, f32_calls = sum(v["ms"] for v in f32), sum(v["calls"] for v in f32)
        out.append(
            f"- **Where the rest goes (profile):** the int4 linears alone (XNNPACK's QD8 x QB4W GEMMs, "
            f"{sum(v['calls'] for v in q4)} calls) take {100 * q4_ms / total:.0f}% of a profiled step, {gbps:.0f} GB/s "
            f"over the step's bytes, {probe / gbps:.2f}x this run's probe: the kernels both programs share are "
            "already past a 1.2x floor on this machine. The small fp32 linears that replace RMSNorm's mean and the "
            f"rotary slices ({f32_calls} calls) take {100 * f32_ms / total:.0f}%, custom_sdpa "
            f"{100 * sum(v['ms'] for k, v in (prof.get('native_ops') or {}).items() if 'custom_sdpa' in k) / total:.0f}%"
            ", the rest is XNNPACK's own op dispatch inside the subgraphs and the executor."
        )
    return out


def render(r: dict, markdown: bool, console) -> int:
    d = derived(r)

    def cell(key, fmt):
        s = d[key]
        return f"{fmt.format(s['median'])} ({span([s['min'], s['max']], fmt)})"

    deleg = (r.get("manifest_delegation") or {}).get(r["step_method"]) or {}
    mb = 1e6
    towers = sum(v for k, v in r["parameters"].items() if k != "text")
    rows = [
        ["decode ms/token (ours: embedding + decoder + argmax)", cell("ours_ms", "{:.2f}"), cell("peer_ms", "{:.2f}")],
        ["prefill tokens/s (64 tokens)", cell("ours_prefill", "{:.0f}"), cell("peer_prefill", "{:.0f}")],
        [
            "decode bytes read per token",
            f"{r['decode_read_bytes']['ours'] / mb:.1f} MB",
            f"{r['decode_read_bytes']['peer'] / mb:.1f} MB",
        ],
        ["bandwidth floor ms (this round's probe)", cell("floor_ms", "{:.2f}"), cell("peer_floor_ms", "{:.2f}")],
        ["decode / floor", cell("ours_over_floor", "{:.2f}x"), cell("peer_over_floor", "{:.2f}x")],
        [
            "XNNPACK delegate calls per decode step",
            str(r["delegate_calls_per_step"]["ours"]),
            str(r["delegate_calls_per_step"]["peer"]),
        ],
        [
            "model.pte",
            f"{r['ours_pte_bytes'] / mb:.1f} MB (towers: {towers / 1e6:.1f}M params)",
            f"{r['peer_pte_bytes'] / mb:.1f} MB",
        ],
    ]
    if r.get("rss_bytes"):
        m = r["rss_bytes"]
        rows.append(
            [
                "RSS added by loading and first running the decoder methods",
                f"{(m['ours_text_decoder_loaded'] - m['start']) / mb:.0f} MB (token_embedding + text_decoder), "
                f"+{(m['ours_step_loaded'] - m['ours_text_decoder_loaded']) / mb:.0f} MB ({r['step_method']})",
                f"{(m['peer_loaded'] - m['ours_step_loaded']) / mb:.0f} MB",
            ]
        )
    if r.get("ours_export") and r.get("peer_export"):
        rows.append(
            ["export wall", f"{r['ours_export']['wall_s']:.0f} s", f"{r['peer_export']['export_wall_s']:.0f} s"]
        )
    table = markdown_table(["median (min-max) over rounds", "ours", "optimum-executorch peer"], rows)
    ratios = (
        f"ours / peer, per round: decode {cell('decode_ours_over_peer', '{:.2f}x')}, prefill "
        f"{cell('prefill_ours_over_peer', '{:.2f}x')}; bandwidth probe {cell('gbps', '{:.1f}')} GB/s; "
        + (
            f"decode through `text_decoder` instead of the step method (same program, same rounds) "
            f"{cell('ours_dynamic_ms', '{:.2f}')} ms/token = {cell('dynamic_over_step', '{:.2f}x')} the step's; "
            if "ours_dynamic_ms" in d
            else ""
        )
        + f"vision encoder {cell('vision_ms', '{:.1f}')} ms/image"
        + (f", audio encoder {cell('audio_ms', '{:.1f}')} ms/clip" if "audio_ms" in d else "")
    )
    profile = r.get("profile")
    where = []
    if profile and "error" not in profile:
        ours_decoder = statistics.median(
            rd["ours"]["decode"]["ms_per_token_decoder_only"]["median"] for rd in r["rounds"]
        )
        where = profile_lines(
            {
                "profile": profile,
                "floor": {"decode_read_linear_bytes": r["decode_read_bytes"]["ours"]},
                "executorch": {"decode": {"ms_per_token_decoder_only": {"median": ours_decoder}}},
            }
        )
    console.print(table)
    console.print(ratios)
    for line in analysis(r, d):
        console.print(line, markup=False, highlight=False)
    for line in where:
        console.print(line, markup=False, highlight=False)
    if not markdown:
        return 0
    m = r["machine"]
    peer = r.get("peer_export") or {}
    lines = section_head(f"## ExecuTorch vs the optimum-executorch peer, same run, preset `{r['args']['preset']}`", r)
    lines += [
        machine_line(m, f"executorch threadpool {r['args']['threads']} (both programs, one process)"),
        f"- Load while timing: {describe_load(r['load'])}",
        f"- Ours: `{r['step_method']}` for decode steps, {deleg.get('delegated_subgraphs', '?')} XNNPACK subgraphs "
        f"in that method (manifest); max_seq_len {r['args']['max_seq_len']}, KV cache {r['args']['max_context_len']}",
        f"- Peer: `{peer.get('command', 'optimum-cli export executorch ... (existing --peer-pte)')}` on a seeded "
        f"random Llama (hidden 1024, 16 layers, 16/2 heads, ffn 2816, vocab 32000); "
        f"{', '.join(f'{k} {v}' for k, v in (peer.get('versions') or {}).items())}",
        f"- {r['args']['rounds']} rounds, each ours then the peer (ABAB...), then a bandwidth probe; each side "
        f"{r['args']['prefill_tokens']}-token prefill, {r['args']['decode_tokens']} greedy decode steps "
        "(`harness.backend_timing.measure_backend`)",
        f"- Raw results: `{r['out']}`",
        "",
        table,
        "",
        ratios + ".",
        "",
        *(
            [
                "Where our decode step goes (ETDump of our program, median per event; the linears' GB/s over all "
                "decode bytes):",
                "",
                "```",
                *where,
                "```",
                "",
            ]
            if where
            else []
        ),
        *analysis(r, d),
        "",
        "The peer's decode step is one `forward(input_ids, cache_position)` call (embedding inside); ours is "
        "`token_embedding` + the decoder call + argmax. Floors: the bytes one decode step reads (packed int4 + bf16 "
        "scales, fp32 norms/biases, one int8 embedding row) over the faster of the round's 1 GiB bandwidth probes; "
        "the ~120 MB of weights partly stay in this VM's shared L3, so a ratio below 1.0x is possible and the floor "
        "moves with the neighbours.",
    ]
    update_markdown_section(f"android_peer:{r['args']['preset']}", "\n".join(lines))
    console.print("updated BENCHMARKS.md")
    return 0


def main() -> int:
    args = parse_args()
    done, console = dispatch(args, "executorch", request_and_options, render)
    if console is None:
        return done
    out = args.out or default_results("android-peer", args.preset)
    run = results.new_run(["android_peer"])
    peer_export = json.loads(args.peer_record.read_text().strip().splitlines()[-1]) if args.peer_record else None
    peer_pte = args.peer_pte
    if peer_pte is None:
        peer_dir = args.peer_dir or Path(tempfile.mkdtemp(prefix="autoglm-bench-peer-")) / "peer"
        t0 = time.perf_counter()
        peer_export = export_peer(args, peer_dir, console)
        console.print(f"peer export: {time.perf_counter() - t0:.0f} s")
        peer_pte = Path(peer_export["pte"])
    try:
        with export_or_reuse(
            args.bundle,
            args.keep_bundle,
            script=Path(__file__),
            args=args,
            what="ExecuTorch",
            detail="8da4w",
            console=console,
        ) as bundle:
            measured = measure(args, bundle.path, bundle.export, peer_pte, peer_export, console)
    except ExportFailed:
        return 1
    record = {
        **results.header(
            "android_peer",
            args,
            repo_relative(out),
            machine=machine_info(args.threads),
            load=measured.pop("load"),
            run=run,
            after_export=True,
            wait_quiet=measured.pop("wait_quiet"),
        ),
        **measured,
    }
    results.write_json(out, record)
    console.print(f"wrote {out}")
    return render(record, args.markdown, console)


if __name__ == "__main__":
    sys.exit(main())

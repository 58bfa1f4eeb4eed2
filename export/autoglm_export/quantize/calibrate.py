"""``autoglm-export calibrate``: GPTQ through the full multimodal path, block by block.

checkpoint (big weights as stored, memory-mapped) -> calibration samples (screenshots, speech, zh/en
prompts and text from ``calibration_data/``, turned into exact component inputs by the runtime's own
preprocessing and chat template) -> for each block in data-flow order (vision blocks, audio tower,
text decoder layers, lm_head; ``blockwise.py``): run each sample's state at the block's input through
the block while hooks sum x x^T for each of its linears -> GPTQ each linear onto the recipe's grid ->
stream the integers into the quantized checkpoint -> run the *quantized* block once more to carry
the states to the next block, so later blocks see quantized inputs.

Memory: the model memory-mapped as stored (each weight fp32 only while its module runs, or while its
block runs dequantized); the samples' states at one block boundary; one [in, in] Gram matrix per
linear of the current block. The quantized checkpoint is written as it is made (``qcheckpoint.Writer``).
Time: two passes of every sample through every block (linear in depth), plus GPTQ per linear.

On several ranks (``distributed.py``) each rank runs its share of the samples, the Gram matrices are
summed over ranks, each rank runs GPTQ on its share of the block's linears and sends the integers to
the others: every rank then holds the same quantized block before carrying its states on.
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..calibration import load_calibration_set
from ..checkpoint import release_pages
from ..errors import ExportError
from ..request import ModelRequest
from ..stages import Stages, memory
from ..stored import fp32_while_running
from ..summary import model_summary
from . import blockwise, distributed, qcheckpoint
from .blockwise import block_of
from .distributed import ONE, Ranks
from .gptq import ROW_CHUNK_WEIGHTS, HessianAccumulator, gptq_quantize
from .qcheckpoint import QuantizedLinear
from .recipes import QuantRecipe
from .samples import Sample, build_samples, spliced_embeds

log = logging.getLogger(__name__)
METHODS = ("gptq", "rtn")


@dataclass
class CalibrateOptions:
    out: Path = Path("dist/quantized")
    recipe: QuantRecipe = field(default_factory=QuantRecipe)
    method: str = "gptq"
    data: Path | None = None  # calibration_data/ of the repository by default
    max_prompts: int | None = None
    text_windows: int = 32  # text-only samples of seq_len tokens cut from the calibration text
    seq_len: int = 256
    damp: float = 0.01
    force: bool = False

    def check(self) -> None:
        if self.method not in METHODS:
            raise ExportError(f"--method {self.method}: expected one of {', '.join(METHODS)}")
        if not 0 < self.damp < 1:
            raise ExportError(f"--damp {self.damp}: expected a fraction between 0 and 1")
        if self.seq_len < 8:
            raise ExportError(f"--seq-len {self.seq_len}: too short to calibrate on")
        if self.out.exists() and not self.force:
            raise ExportError(f"{self.out} exists; pass --force to overwrite")


# ----------------------------------------------------------------------------- block by block


def _blocks(targets: dict) -> dict[str, list[str]]:
    """block -> [linear fqns] of the linears the recipe quantizes (``blockwise.block_of``)."""
    blocks: dict[str, list[str]] = {}
    for fqn in targets:
        blocks.setdefault(block_of(fqn), []).append(fqn)
    return blocks


def _method(method: str, acc: HessianAccumulator) -> str:
    return "rtn" if method == "rtn" or acc.tokens == 0 else "gptq"


def _round_to_nearest(weight: torch.Tensor, bits: int, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``grid.round_to_nearest`` a slice of rows at a time (row-wise: the same integers; a weight kept
    as stored is converted slice by slice, not whole)."""
    from . import grid

    out_f, in_f = weight.shape
    codes, scales = torch.empty(out_f, in_f, dtype=torch.int8), torch.empty(out_f, in_f // group)
    rows = max(1, ROW_CHUNK_WEIGHTS // in_f)
    for r in range(0, out_f, rows):
        codes[r : r + rows], scales[r : r + rows] = grid.round_to_nearest(weight[r : r + rows], bits, group)
    return codes, scales


def _quantize_linear(fqn: str, mod: nn.Linear, acc: HessianAccumulator, bits: int, group: int, method: str, damp):
    """(QuantizedLinear, stats) of one linear from its inputs' Gram matrix."""
    if _method(method, acc) == "rtn":
        if method != "rtn":
            log.warning("%s saw no calibration tokens (an unrouted expert?); round-to-nearest", fqn)
        codes, scales = _round_to_nearest(mod.weight, bits, group)
        return QuantizedLinear(codes, scales, bits), {"tokens": acc.tokens, "method": "rtn"}
    r = gptq_quantize(mod.weight, acc, bits, group, damp=damp)
    stats = {"tokens": acc.tokens, "method": "gptq", "output_mse": r.loss, "rtn_output_mse": r.rtn_loss}
    return QuantizedLinear(r.codes, r.scales, bits), stats


def _linear_from_owner(ranks: Ranks, k: int, fqn: str, mod, acc, bits: int, group: int, method: str, damp):
    """Linear ``k`` of a block, quantized by the rank that owns it and sent to the others (GPTQ of one
    linear depends only on its weight and its summed Gram matrix, which every rank holds: exact)."""
    if ranks.owner(k) == ranks.rank:
        q, stats = _quantize_linear(fqn, mod, acc, bits, group, method, damp)
    else:
        out_f, in_f = mod.weight.shape
        q = QuantizedLinear(torch.empty(out_f, in_f, dtype=torch.int8), torch.empty(out_f, in_f // group), bits)
        stats = {"tokens": acc.tokens, "method": _method(method, acc)}
    if ranks.distributed:
        mse = torch.tensor([stats.get("output_mse", 0.0), stats.get("rtn_output_mse", 0.0)], dtype=torch.float64)
        ranks.share_(k, q.codes, q.scales, mse)
        if stats["method"] == "gptq":
            stats |= {"output_mse": float(mse[0]), "rtn_output_mse": float(mse[1])}
    return q, stats


@contextmanager
def _dequantized(modules: dict[str, nn.Linear], quantized: dict[str, QuantizedLinear]):
    """The block's linears hold their dequantized codes (fp32) while it runs; the weights they had
    (as stored, memory-mapped) are back afterwards and their pages given back."""
    kept = {fqn: modules[fqn].weight for fqn in quantized}
    for fqn, q in quantized.items():
        modules[fqn].weight = nn.Parameter(q.dequantize(), requires_grad=False)
    try:
        yield
    finally:
        for fqn, w in kept.items():
            modules[fqn].weight = w
        _release_stored(kept.values())


def _release_stored(weights) -> None:
    """Give back the pages of weights kept as stored (memory-mapped); fp32 ones are the process's own."""
    release_pages([w for w in weights if w.dtype != torch.float32])


class _Stop(Exception):
    pass


def _stop(*_):
    raise _Stop


def _run(step, module: nn.Module, states: dict[int, torch.Tensor], samples: list[Sample]) -> dict[int, torch.Tensor]:
    """Every kept sample one step further; weights kept as stored are fp32 only while their module runs."""
    out = {}
    with fp32_while_running(module):
        for i, x in states.items():
            try:
                out[i] = step.run(x, samples[i])
            except _Stop:  # the pass only collects inputs
                pass
    return out


def _tower_inputs(samples: list[Sample], mine: range, field: str) -> dict[int, torch.Tensor]:
    return {i: torch.from_numpy(getattr(samples[i], field)) for i in mine if getattr(samples[i], field) is not None}


@torch.no_grad()
def calibrate_model(
    model: nn.Module,
    spec,
    samples: list[Sample],
    recipe: QuantRecipe,
    method: str = "gptq",
    damp: float = 0.01,
    progress=None,
    ranks: Ranks = ONE,
    sink=None,
) -> dict[str, dict]:
    """Quantize every linear the recipe covers, block by block in data-flow order; returns per-layer stats.

    Each sample's state at the current block boundary is kept (``blockwise.py``); a block's linears'
    Gram matrices are summed while the samples run through it as it is, GPTQ (or round-to-nearest)
    picks their integers, then the *quantized* block carries the states to the next boundary: later
    blocks calibrate on quantized inputs, each block runs twice per sample, and the model's weights
    are as they were afterwards (a model loaded with ``keep_stored`` stays memory-mapped bf16; each
    weight is fp32 only while its module runs). ``sink(fqn, QuantizedLinear)`` receives each result as
    its block is done (nothing is kept here). ``progress(done, total, block, seconds)`` is called per
    block. ``ranks``: this process's share of the samples when several run it (every rank gets the
    same results).
    """
    targets = qcheckpoint.quantizable_linears(model, recipe)
    blocks = _blocks(targets)
    towers = [("vision", blockwise.vision_steps(model)), ("audio", blockwise.audio_steps(model))]
    towers.append(("text", blockwise.text_steps(model)))
    unknown = sorted(set(blocks) - {step.name for _, steps in towers for step in steps})
    if unknown:
        raise RuntimeError(f"linears outside every calibration block: {unknown[:5]}")
    modules = dict(model.named_modules())
    mine = ranks.mine(len(samples))
    text_needed = any(b.startswith("text.") for b in blocks)
    outputs: dict[str, dict[int, torch.Tensor]] = {}
    stats: dict[str, dict] = {}
    done = 0
    for tower, steps in towers:
        if tower == "text" and not text_needed:
            break
        if tower == "text":
            with fp32_while_running(model.text.embed_tokens):
                states = {
                    i: spliced_embeds(
                        model, samples[i], spec, outputs["vision"].get(i), outputs.get("audio", {}).get(i)
                    )
                    for i in mine
                }
        else:
            states = _tower_inputs(samples, mine, "pixels" if tower == "vision" else "features")
        targeted = [k for k, step in enumerate(steps) if step.name in blocks]
        # Run as far as the last block to calibrate, or through the tower when the text needs its output.
        through = text_needed and tower != "text"
        last = len(steps) - 1 if through else (targeted[-1] if targeted else -1)
        for k, step in enumerate(steps[: last + 1]):
            module = modules[step.name]
            if step.name not in blocks:
                states = _run(step, module, states, samples)
                continue
            t0 = time.perf_counter()
            linears = blocks[step.name]
            accs = {fqn: HessianAccumulator(targets[fqn][0].in_features) for fqn in linears}
            hooks = [modules[f].register_forward_pre_hook(lambda m, a, acc=accs[f]: acc.add(a[0])) for f in linears]
            if isinstance(module, nn.Linear):  # a block of one linear (lm_head): its input is all this pass needs
                hooks.append(module.register_forward_pre_hook(_stop))
            try:
                _run(step, module, states, samples)  # the block as it is: only its linears' inputs matter
            finally:
                for h in hooks:
                    h.remove()
            quantized = {}
            for j, fqn in enumerate(linears):
                accs[fqn].merge(ranks)
                mod, bits, group = targets[fqn]
                quantized[fqn], stats[fqn] = _linear_from_owner(
                    ranks, j, fqn, mod, accs[fqn], bits, group, method, damp
                )
                del accs[fqn]  # a Gram matrix is 1.5 GB at the 9B's MLP width
                _release_stored([mod.weight])
                if sink is not None:
                    sink(fqn, quantized[fqn])
            if k < last or through:
                with _dequantized(modules, quantized):
                    states = _run(step, module, states, samples)
            done += 1
            if progress:
                progress(done, len(blocks), step.name, time.perf_counter() - t0)
        outputs[tower] = states
    model.reset_cache()
    return stats


# ----------------------------------------------------------------------------- command


@contextmanager
def block_progress(method: str, shown: bool = True):
    """``progress(done, total, block, seconds)`` for calibrate_model: a live bar on a terminal, one log
    line per block otherwise, with the block's time and the process's memory (a bar is invisible in
    logs and CI, and a block takes minutes at full size); nothing where not ``shown`` (ranks other than 0)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if not shown:
        yield None
        return
    console = Console(stderr=True)
    if not console.is_terminal:

        def line(done, total, block, seconds=0.0):
            log.info("  %s block %d/%d: %s in %.1f s%s", method, done, total, block, seconds, memory())

        yield line
        return
    with Progress(
        TextColumn("[bold]calibrate"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        transient=True,
        console=console,
    ) as bar:
        task = bar.add_task("", total=None)

        def update(done, total, block, seconds=0.0):
            bar.update(task, completed=done, total=total, description=f"{block} ({seconds:.1f} s{memory()})")

        yield update


def run_calibrate(request: ModelRequest, opts: CalibrateOptions) -> Path:
    """One process, or each of the ranks under torchrun (rank 0 logs and writes ``opts.out``)."""
    opts.check()
    with distributed.join() as ranks:
        return _calibrate(request, opts, ranks)


def _calibrate(request: ModelRequest, opts: CalibrateOptions, ranks: Ranks) -> Path:
    stages = Stages()
    cal = load_calibration_set(opts.data)  # before the model: a missing set fails fast
    with stages.stage("load model (big weights as stored, memory-mapped)"):
        src = request.open(keep_stored=True)
    with stages.stage("build calibration samples"):
        samples = build_samples(src, cal, opts.max_prompts, opts.text_windows, opts.seq_len)
    n_img = sum(s.pixels is not None for s in samples)
    n_aud = sum(s.features is not None for s in samples)
    tokens = sum(len(s.token_ids) for s in samples)
    log.info(
        "  %d samples (%d with a screenshot, %d with speech), %d tokens, from %s",
        len(samples),
        n_img,
        n_aud,
        tokens,
        cal.root,
    )
    summary = model_summary(src)  # the fingerprint the exporters check
    targets = qcheckpoint.quantizable_linears(src.model, opts.recipe)
    weights = {f"{fqn}.weight" for fqn in targets}
    params = {name: p for name, p in src.model.named_parameters() if name not in weights}
    layers = {fqn: (bits, tuple(mod.weight.shape), group) for fqn, (mod, bits, group) in targets.items()}
    with ExitStack() as stack:
        # Rank 0 streams each block's integers into the checkpoint as they are made (qcheckpoint.Writer).
        writer = None
        if ranks.main:
            shapes = {name: tuple(p.shape) for name, p in params.items()}
            writer = stack.enter_context(qcheckpoint.Writer(opts.out, layers, shapes, force=opts.force))
        t0 = time.perf_counter()
        with stages.stage(f"{opts.method} block by block"), block_progress(opts.method, ranks.main) as progress:
            stats = calibrate_model(
                src.model,
                src.spec,
                samples,
                opts.recipe,
                opts.method,
                opts.damp,
                progress=progress,
                ranks=ranks,
                sink=writer.linear if writer else None,
            )
        gptq = [s for s in stats.values() if s.get("method") == "gptq"]
        mse = sum(s["output_mse"] for s in gptq)
        rtn_mse = sum(s["rtn_output_mse"] for s in gptq)
        if gptq:
            log.info(
                "  summed layer output MSE: gptq %.4g vs round-to-nearest %.4g (%.0f%% lower)",
                mse,
                rtn_mse,
                100 * (1 - mse / rtn_mse) if rtn_mse else 0.0,
            )
        config = {
            **qcheckpoint.provenance(opts.method, src, request, summary, opts.recipe),
            "calibration": {
                "data": str(cal.root),
                "samples": len(samples),
                "with_image": n_img,
                "with_audio": n_aud,
                "tokens": tokens,
                "damp": opts.damp,
                "seconds": round(time.perf_counter() - t0, 1),
                "summed_output_mse": mse,
                "summed_rtn_output_mse": rtn_mse,
                "layers": stats,
            },
        }
        if ranks.distributed:
            config["calibration"]["ranks"] = ranks.world
        if writer is None:  # every rank holds the same result; rank 0 writes it
            ranks.barrier()
            return opts.out
        with stages.stage(f"write {opts.out}"):
            for name, p in params.items():  # every other parameter, fp32 (as stored ones: slice by slice)
                writer.param(name, p)
                _release_stored([p])
            writer.finish(config)
    log.info("wrote %s (%d quantized linears, %.1f MB)", opts.out, len(layers), writer.bytes / 1e6)
    ranks.barrier()
    return opts.out

"""``autoglm-export calibrate``: GPTQ through the full multimodal path, block by block.

checkpoint -> calibration samples (screenshots, speech, zh/en prompts and text from
``calibration_data/``, turned into exact component inputs by the runtime's own preprocessing and chat
template) -> for each block in data-flow order (vision blocks, audio layers, text decoder layers,
lm_head): run the samples through the model *as quantized so far*, stopping right after the block,
while hooks sum x x^T for each of its linears -> GPTQ each linear onto the recipe's grid -> write the
dequantized weights back so later blocks see quantized inputs -> quantized checkpoint.

Memory: one model; per block one [in, in] Gram matrix per linear; no activations are kept between
blocks (each block re-runs the samples from the input, cutting the forward short after the block).

On several ranks (``distributed.py``) each rank runs its share of the samples, the Gram matrices are
summed over ranks, each rank runs GPTQ on its share of the block's linears and sends the integers to
the others: every rank then holds the same quantized block before the next one.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..calibration import load_calibration_set
from ..errors import ExportError
from ..request import ModelRequest
from ..stages import Stages
from ..summary import model_summary
from . import distributed, qcheckpoint
from .distributed import ONE, Ranks
from .gptq import HessianAccumulator, gptq_quantize
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


# ----------------------------------------------------------------------------- block-wise forward


class _StopForward(Exception):
    """Raised by a hook right after the block being calibrated: nothing later needs to run."""


def _blocks(model: nn.Module, targets: dict) -> list[tuple[str, list[str]]]:
    """(block fqn, [linear fqns]) in data-flow order: vision, audio, then the text decoder."""
    order = {"vision": 0, "audio": 1, "text": 2}
    index = {name: i for i, (name, _) in enumerate(model.named_modules())}
    blocks: dict[str, list[str]] = {}
    for fqn in targets:
        parts = fqn.split(".")
        # text.layers.3.mlp.down_proj -> text.layers.3; vision.merger.proj -> vision.merger; text.lm_head -> itself
        if len(parts) > 2 and parts[2].isdigit():
            key = ".".join(parts[:3])
        elif len(parts) > 2:
            key = ".".join(parts[:2])
        else:
            key = fqn
        blocks.setdefault(key, []).append(fqn)
    return sorted(blocks.items(), key=lambda kv: (order.get(kv[0].split(".")[0], 3), index[kv[0]]))


def _run_sample(model, sample: Sample, spec, tower: str, cached: dict | None) -> None:
    """Forward one sample as far as ``tower`` needs; _StopForward ends it early."""
    with torch.no_grad():
        if tower == "vision":
            if sample.pixels is not None:
                model.vision_encoder(torch.from_numpy(sample.pixels))
            return
        if tower == "audio":
            if sample.features is not None:
                model.audio_encoder(torch.from_numpy(sample.features))
            return
        embeds = spliced_embeds(model, sample, spec, cached["vision"], cached["audio"])
        model.reset_cache()
        n = embeds.shape[1]
        model.text_decoder(embeds, torch.arange(n), torch.from_numpy(sample.position_ids))


def _encoder_outputs(model, samples: list[Sample], mine: range) -> list[dict | None]:
    """The (already quantized) encoders' outputs, computed once for all text blocks (for the samples in
    ``mine``; None for the others)."""
    out: list[dict | None] = [None] * len(samples)
    with torch.no_grad():
        for i in mine:
            s = samples[i]
            out[i] = {
                "vision": model.vision_encoder(torch.from_numpy(s.pixels)) if s.pixels is not None else None,
                "audio": model.audio_encoder(torch.from_numpy(s.features)) if s.features is not None else None,
            }
    return out


def _method(method: str, acc: HessianAccumulator) -> str:
    return "rtn" if method == "rtn" or acc.tokens == 0 else "gptq"


def _quantize_linear(fqn: str, mod: nn.Linear, acc: HessianAccumulator, bits: int, group: int, method: str, damp):
    """(QuantizedLinear, stats) of one linear from its inputs' Gram matrix."""
    from . import grid

    if _method(method, acc) == "rtn":
        if method != "rtn":
            log.warning("%s saw no calibration tokens (an unrouted expert?); round-to-nearest", fqn)
        codes, scales = grid.round_to_nearest(mod.weight, bits, group)
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
) -> tuple[dict[str, QuantizedLinear], dict]:
    """Quantize every linear the recipe covers, in place (weights become their dequantized codes).

    Returns (fqn -> QuantizedLinear, per-layer stats). ``progress(done, total, block)`` is called per block.
    ``ranks``: this process's share of the work when several run it (the result is the same on each).
    """
    targets = qcheckpoint.quantizable_linears(model, recipe)
    blocks = _blocks(model, targets)
    modules = dict(model.named_modules())
    result: dict[str, QuantizedLinear] = {}
    stats: dict[str, dict] = {}
    cached = None
    for done, (block, linears) in enumerate(blocks):
        tower = block.split(".")[0]
        if tower == "text" and cached is None:
            cached = _encoder_outputs(model, samples, ranks.mine(len(samples)))
        accs = {fqn: HessianAccumulator(targets[fqn][0].in_features) for fqn in linears}
        hooks = [
            modules[fqn].register_forward_pre_hook(lambda m, args, acc=accs[fqn]: acc.add(args[0])) for fqn in linears
        ]

        def stop(*_):
            raise _StopForward

        hooks.append(modules[block].register_forward_hook(stop))
        try:
            for i in ranks.mine(len(samples)):
                try:
                    _run_sample(model, samples[i], spec, tower, cached[i] if cached else None)
                except _StopForward:
                    pass
        finally:
            for h in hooks:
                h.remove()
        for acc in accs.values():
            acc.merge(ranks)
        for k, fqn in enumerate(linears):
            mod, bits, group = targets[fqn]
            result[fqn], stats[fqn] = _linear_from_owner(ranks, k, fqn, mod, accs[fqn], bits, group, method, damp)
            mod.weight.copy_(result[fqn].dequantize().to(mod.weight.dtype))
        if progress:
            progress(done + 1, len(blocks), block)
    model.reset_cache()  # the cut-short forwards left partial entries
    return result, stats


# ----------------------------------------------------------------------------- command


@contextmanager
def block_progress(method: str, shown: bool = True):
    """``progress(done, total, block)`` for calibrate_model: a live bar on a terminal, one log line per
    block otherwise (a bar is invisible in logs and CI, and GPTQ takes minutes at full size); nothing
    where not ``shown`` (ranks other than 0)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if not shown:
        yield None
        return
    console = Console(stderr=True)
    if not console.is_terminal:
        yield lambda done, total, block: log.info("  %s block %d/%d: %s", method, done, total, block)
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
        yield lambda done, total, block: bar.update(task, completed=done, total=total, description=block)


def run_calibrate(request: ModelRequest, opts: CalibrateOptions) -> Path:
    """One process, or each of the ranks under torchrun (rank 0 logs and writes ``opts.out``)."""
    opts.check()
    with distributed.join() as ranks:
        return _calibrate(request, opts, ranks)


def _calibrate(request: ModelRequest, opts: CalibrateOptions, ranks: Ranks) -> Path:
    stages = Stages()
    cal = load_calibration_set(opts.data)  # before the model: a missing set fails fast
    with stages.stage("load model"):
        src = request.open()
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
    summary = model_summary(src)  # before any weight changes (the fingerprint the exporters check)
    t0 = time.perf_counter()
    with stages.stage(f"{opts.method} block by block"), block_progress(opts.method, ranks.main) as progress:
        linears, stats = calibrate_model(
            src.model, src.spec, samples, opts.recipe, opts.method, opts.damp, progress=progress, ranks=ranks
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
    if not ranks.main:  # every rank holds the same result; rank 0 writes it
        ranks.barrier()
        return opts.out
    with stages.stage(f"write {opts.out}"):
        qc = qcheckpoint.from_model(src.model, linears, config)
        qcheckpoint.save(qc, opts.out, force=opts.force)
    log.info(
        "wrote %s (%d quantized linears, %.1f MB)",
        opts.out,
        len(linears),
        sum(f.stat().st_size for f in opts.out.iterdir()) / 1e6,
    )
    ranks.barrier()
    return opts.out

"""``autoglm-export qat``: quantization-aware training with torchao, distilled from the fp model.

checkpoint -> calibration samples (as ``calibrate``) -> teacher targets: the fp model's top-k
next-token distributions on every sample (computed once, so only one model is ever in memory) ->
``quantize_(QATConfig(base, step="prepare"))``: every linear the recipe quantizes gets torchao's fake
quantization (int8 per-token activations, int4 per-group / int8 per-channel weights, exactly the PTQ
config's numerics) -> AdamW on the KL divergence to the teacher (text decoder parameters; the towers
too with ``train_encoders``) -> ``QATConfig(step="convert")`` ->
the integers torchao chose are written as a quantized checkpoint (the same format as ``calibrate``).

Resumable: every ``save_every`` steps the parameters, AdamW moments and the step count go to
``<out>.qat-state/`` (safetensors + JSON, never pickle); ``--resume`` continues from there. Sample
order depends only on (seed, step), so a resumed run sees what an uninterrupted one would.

Several ranks (torchrun, ``distributed.py``): each computes the teacher targets of its share of the
samples and sends them to all; the student is sharded with FSDP2 (``sharded.py``); each step's
``batch_size`` samples (the same ones whatever the number of ranks) are split evenly over the ranks and
the gradients averaged; the state is a Distributed Checkpoint; rank 0 gathers the trained weights,
converts and writes them, and alone logs.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..calibration import load_calibration_set
from ..errors import ExportError
from ..request import ModelRequest
from ..stages import Stages
from ..summary import model_summary
from . import distributed, qcheckpoint
from .distributed import ONE, Ranks
from .qcheckpoint import QuantizedLinear
from .recipes import QuantRecipe
from .samples import Sample, build_samples, spliced_embeds

log = logging.getLogger(__name__)


@dataclass
class QATOptions:
    out: Path = Path("dist/qat")
    recipe: QuantRecipe = QuantRecipe()
    steps: int = 200
    lr: float = 3e-5
    seed: int = 0
    top_k: int = 64  # teacher probabilities kept per position (sparse distillation)
    save_every: int = 50
    resume: bool = False
    train_encoders: bool = False  # towers stay frozen (still fake-quantized) unless asked
    batch_size: int = 1  # samples per step, over all ranks
    data: Path | None = None
    max_prompts: int | None = None
    text_windows: int = 32
    seq_len: int = 256
    force: bool = False

    def check(self) -> None:
        if self.steps < 1:
            raise ExportError(f"--steps {self.steps}: expected at least 1")
        if not 0 < self.lr < 1:
            raise ExportError(f"--lr {self.lr}: expected a learning rate between 0 and 1")
        if self.top_k < 1:
            raise ExportError(f"--top-k {self.top_k}: expected at least 1")
        if self.batch_size < 1:
            raise ExportError(f"--batch-size {self.batch_size}: expected at least 1")
        if self.out.exists() and not self.force:
            raise ExportError(f"{self.out} exists; pass --force to overwrite")

    @property
    def state_dir(self) -> Path:
        return self.out.with_name(self.out.name + ".qat-state")


# ----------------------------------------------------------------------------- forward / loss


def _fresh_cache(model, device: torch.device = torch.device("cpu")) -> None:
    # A new zero cache per sample: the in-place cache writes of the last step must not link graphs.
    for layer in model.text.layers:
        layer.self_attn.kv_cache.allocate(torch.float32, device)


def sample_logits(model, sample: Sample, spec, device: torch.device = torch.device("cpu")) -> torch.Tensor:
    """[S, vocab] logits of one sample through the full multimodal path (differentiable), on ``device``."""

    def tensor(a):
        return torch.from_numpy(a).to(device)

    vision = model.vision_encoder(tensor(sample.pixels)) if sample.pixels is not None else None
    audio = model.audio_encoder(tensor(sample.features)) if sample.features is not None else None
    embeds = spliced_embeds(model, sample, spec, vision, audio, device)
    _fresh_cache(model, device)
    n = embeds.shape[1]
    return model.text_decoder(embeds, torch.arange(n, device=device), tensor(sample.position_ids))[0]


@torch.no_grad()
def teacher_targets(
    model, samples: list[Sample], spec, top_k: int, ranks: Ranks = ONE
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per sample: (top-k token ids [S, k], their teacher log-probabilities [S, k]). On several ranks each
    computes its share and receives the rest from their owners (the shapes are known in advance)."""
    k = min(top_k, model.text.lm_head.out_features)
    out: list = [None] * len(samples)
    for i in ranks.mine(len(samples)):
        logp = F.log_softmax(sample_logits(model, samples[i], spec).float(), dim=-1)
        vals, idx = logp.topk(min(top_k, logp.shape[-1]), dim=-1)
        out[i] = (idx, vals)
    if ranks.distributed:
        for i, s in enumerate(samples):
            if out[i] is None:
                out[i] = (torch.empty(len(s.token_ids), k, dtype=torch.int64), torch.empty(len(s.token_ids), k))
            ranks.share_(i, *out[i])
    return out


def distillation_loss(student_logits: torch.Tensor, target: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """KL(teacher || student) per position, on the teacher's top-k tokens plus one bucket for the rest.

    Exact KL of the two distributions coarsened to k + 1 outcomes: zero when the student matches the
    teacher, and the tail bucket keeps the student from piling mass onto the top-k (a plain top-k
    cross-entropy would reward that and sharpen the model).
    """
    idx, t_logp = target
    s_logp = F.log_softmax(student_logits.float(), dim=-1).gather(-1, idx)
    t_tail = torch.log1p(-t_logp.exp().sum(-1).clamp(max=1 - 1e-6))
    s_tail = torch.log1p(-s_logp.exp().sum(-1).clamp(max=1 - 1e-6))
    top = (t_logp.exp() * (t_logp - s_logp)).sum(-1)
    return (top + t_tail.exp() * (t_tail - s_tail)).mean()


# ----------------------------------------------------------------------------- torchao QAT


def _schemes(model: nn.Module, recipe: QuantRecipe) -> dict[str, tuple[int, int]]:
    return {fqn: (bits, group) for fqn, (_, bits, group) in qcheckpoint.quantizable_linears(model, recipe).items()}


def apply_qat(model: nn.Module, schemes: dict[str, tuple[int, int]], step: str) -> None:
    """torchao's QATConfig prepare / convert on exactly the recipe's linears, one config per (bits, group)."""
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    from .recipes import linear_config

    kinds = sorted({(bits, group if bits == 4 else 0) for bits, group in schemes.values()})
    for bits, group in kinds:
        chosen = {fqn for fqn, (b, g) in schemes.items() if b == bits and (bits == 8 or g == group)}
        quantize_(
            model,
            QATConfig(linear_config("8da8w" if bits == 8 else "8da4w", group), step=step),
            lambda m, fqn, chosen=chosen: isinstance(m, nn.Linear) and fqn in chosen,
        )


def converted_linears(model: nn.Module, schemes: dict[str, tuple[int, int]]) -> dict[str, QuantizedLinear]:
    """The integers torchao's convert step chose, in the quantized-checkpoint layout."""
    modules = dict(model.named_modules())
    out = {}
    for fqn, (bits, group) in schemes.items():
        w = modules[fqn].weight
        if not hasattr(w, "qdata"):
            raise ExportError(f"{fqn}: torchao's convert step left it unquantized ({type(w).__name__})")
        if int(w.zero_point.abs().max()) != 0:
            raise ExportError(f"{fqn}: non-zero weight zero point after convert; expected symmetric weights")
        out[fqn] = QuantizedLinear(w.qdata.detach().to(torch.int8).clone(), w.scale.detach().float().clone(), bits)
        if out[fqn].group_size != group:
            raise ExportError(f"{fqn}: converted with group {out[fqn].group_size}, recipe says {group}")
    return out


# ----------------------------------------------------------------------------- resumable state


def _state_tensors(model, opt) -> dict[str, torch.Tensor]:
    """Parameters and AdamW moments by name (DTensor shards on several ranks)."""
    names = {p: n for n, p in model.named_parameters()}
    tensors = {f"param.{n}": p.detach() for n, p in model.named_parameters()}
    for p, st in opt.state.items():
        for key in ("exp_avg", "exp_avg_sq"):
            tensors[f"adam.{key}.{names[p]}"] = st[key]
    return tensors


def _save_state(model, opt, step: int, losses: list[float], opts: QATOptions, ranks: Ranks) -> None:
    meta = {
        "step": step,
        "losses": losses,
        "lr": opts.lr,
        "seed": opts.seed,
        "steps": opts.steps,
        "recipe": opts.recipe.to_dict(),
    }
    if ranks.distributed or opts.batch_size != 1:
        meta |= {"batch_size": opts.batch_size, "ranks": ranks.world}

    def write_meta(folder: Path) -> None:
        (folder / "state.json").write_text(json.dumps(meta))

    tensors = _state_tensors(model, opt)
    if ranks.distributed:
        from . import sharded

        sharded.save(tensors, opts.state_dir, write_meta, ranks)
        return
    from safetensors.torch import save_file

    tmp = opts.state_dir.with_name(opts.state_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: t.contiguous() for k, t in tensors.items()}, str(tmp / "state.safetensors"))
    write_meta(tmp)
    shutil.rmtree(opts.state_dir, ignore_errors=True)
    tmp.rename(opts.state_dir)


def _load_state(model, opt, opts: QATOptions, ranks: Ranks) -> tuple[int, list[float]]:
    meta_path = opts.state_dir / "state.json"
    if not meta_path.is_file():
        raise ExportError(f"--resume: no training state at {opts.state_dir} (nothing to resume)")
    meta = json.loads(meta_path.read_text())
    if meta["recipe"] != opts.recipe.to_dict() or meta["seed"] != opts.seed:
        raise ExportError(
            f"--resume: {opts.state_dir} was trained with recipe {meta['recipe']} seed {meta['seed']}; "
            "pass the same options or start over without --resume"
        )
    saved = (meta.get("batch_size", 1), meta.get("ranks", 1))
    if saved != (opts.batch_size, ranks.world):
        raise ExportError(
            f"--resume: {opts.state_dir} was trained with --batch-size {saved[0]} on {saved[1]} process(es); "
            f"resume it with the same (not --batch-size {opts.batch_size} on {ranks.world})"
        )

    def step():  # AdamW counts steps in place: one tensor per parameter
        return torch.tensor(float(meta["step"]))

    if ranks.distributed:
        from . import sharded

        names = sharded.saved_names(opts.state_dir)
        for n, p in model.named_parameters():
            if f"adam.exp_avg.{n}" in names:
                opt.state[p] = {"step": step(), "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
        sharded.load(_state_tensors(model, opt), opts.state_dir)
        return int(meta["step"]), list(meta["losses"])
    from safetensors import safe_open

    params = dict(model.named_parameters())
    with safe_open(str(opts.state_dir / "state.safetensors"), "pt") as f, torch.no_grad():
        for n, p in params.items():
            p.copy_(f.get_tensor(f"param.{n}"))
        for n, p in params.items():
            key = f"adam.exp_avg.{n}"
            if key in f.keys():
                opt.state[p] = {
                    "step": step(),
                    "exp_avg": f.get_tensor(key),
                    "exp_avg_sq": f.get_tensor(f"adam.exp_avg_sq.{n}"),
                }
    return int(meta["step"]), list(meta["losses"])


# ----------------------------------------------------------------------------- command


def _lr_at(step: int, opts: QATOptions) -> float:
    warmup = max(1, opts.steps // 10)
    if step < warmup:
        return opts.lr * (step + 1) / warmup
    return opts.lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, opts.steps - warmup)))


def batch_at(step: int, opts: QATOptions, n: int) -> list[int]:
    """The samples of one step: a function of (seed, step) only, so a resumed run and any number of
    ranks see the same ones (one sample: the draw of the one-sample-per-step releases)."""
    return [int(i) for i in np.random.default_rng([opts.seed, step]).integers(n, size=opts.batch_size)]


def run_qat(request: ModelRequest, opts: QATOptions) -> Path:
    """One process, or each of the ranks under torchrun (rank 0 logs and writes ``opts.out``)."""
    opts.check()
    with distributed.join() as ranks:
        distributed.check_batch(opts.batch_size, ranks)
        return _qat(request, opts, ranks)


def _qat(request: ModelRequest, opts: QATOptions, ranks: Ranks) -> Path:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    stages = Stages()
    cal = load_calibration_set(opts.data)
    with stages.stage("load model"):
        src = request.open()
    with stages.stage("build training samples"):
        samples = build_samples(src, cal, opts.max_prompts, opts.text_windows, opts.seq_len)
    model, spec = src.model, src.spec
    summary = model_summary(src)
    with stages.stage(f"teacher targets (fp model, top-{opts.top_k})"):
        targets = teacher_targets(model, samples, spec, opts.top_k, ranks)
    schemes = _schemes(model, opts.recipe)
    with stages.stage(f"prepare: fake quantization on {len(schemes)} linears"):
        apply_qat(model, schemes, "prepare")
    torch.manual_seed(opts.seed)
    # The decoder learns to absorb the towers' (fake-)quantization error; updating the towers too
    # moved the spliced embeddings enough to spike the loss on the tiny model's random towers.
    trainable = model if opts.train_encoders else model.text
    params = [p for p in trainable.parameters() if p.dtype.is_floating_point]
    model.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    student = None
    if ranks.distributed:
        from . import sharded

        with stages.stage(f"shard the student over {ranks.world} ranks (FSDP2)"):
            student = sharded.shard(model, lambda m, s: sample_logits(m, s, spec, ranks.device), ranks)
        params = [p for p in trainable.parameters() if p.dtype.is_floating_point]  # now this rank's shards
    opt = torch.optim.AdamW(params, lr=opts.lr, weight_decay=0.0)
    start, losses = _load_state(model, opt, opts, ranks) if opts.resume else (0, [])
    if start:
        log.info("  resumed from %s at step %d", opts.state_dir, start)
    log_path = opts.out.with_name(opts.out.name + ".qat-log.jsonl")
    model.train()
    t0 = time.perf_counter()
    with (
        stages.stage(f"train {opts.steps} steps (lr {opts.lr}, seed {opts.seed})"),
        log_path.open("a" if start else "w") if ranks.main else nullcontext() as logf,
        Progress(
            TextColumn("[bold]qat"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TimeRemainingColumn(),
            transient=True,
            disable=not ranks.main,
        ) as bar,
    ):
        task = bar.add_task("", total=opts.steps, completed=start, loss=losses[-1] if losses else float("nan"))
        for step in range(start, opts.steps):
            batch = batch_at(step, opts, len(samples))
            mine = batch[ranks.rank :: ranks.world]
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, opts)
            opt.zero_grad(set_to_none=True)
            total = 0.0
            for j, i in enumerate(mine):  # gradients accumulate over this rank's samples, averaged over ranks
                if student is not None:
                    student.set_requires_gradient_sync(j == len(mine) - 1)
                logits = student(samples[i]) if student is not None else sample_logits(model, samples[i], spec)
                loss = distillation_loss(logits, tuple(t.to(ranks.device) for t in targets[i]))
                (loss / len(mine) if len(mine) > 1 else loss).backward()
                total += loss.item()
            if student is not None:
                student.drop_idle_gradients([samples[i] for i in batch])
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(round(ranks.mean(total / len(mine)), 6))
            record = {"step": step + 1, **({"sample": batch[0]} if len(batch) == 1 else {"samples": batch})}
            if logf:
                logf.write(json.dumps({**record, "loss": losses[-1], "lr": _lr_at(step, opts)}) + "\n")
                logf.flush()  # a killed run keeps the steps it logged
            bar.update(task, advance=1, loss=losses[-1])
            if (step + 1) % opts.save_every == 0 and step + 1 < opts.steps:
                _save_state(model, opt, step + 1, losses, opts, ranks)
    model.eval()
    for p in params:
        p.requires_grad_(False)
    if student is not None:
        with stages.stage("gather the trained weights on rank 0"):
            model = sharded.gather(student, lambda: request.open(weights=False).model)
        if model is None:  # rank 0 converts and writes
            ranks.barrier()
            return opts.out
        apply_qat(model, schemes, "prepare")  # the gathered weights into the same fake-quantized modules
        model.eval()
    _fresh_cache(model)
    with stages.stage("convert (torchao QATConfig step=convert)"):
        apply_qat(model, schemes, "convert")
        linears = converted_linears(model, schemes)
    window = max(1, min(10, len(losses) // 2))
    first, last = float(np.mean(losses[:window])), float(np.mean(losses[-window:]))
    log.info("  distillation loss: first %d steps %.4f -> last %d steps %.4f", window, first, window, last)
    config = {
        **qcheckpoint.provenance("qat", src, request, summary, opts.recipe),
        "calibration": {
            "data": str(cal.root),
            "samples": len(samples),
            "tokens": int(sum(len(s.token_ids) for s in samples)),
            "steps": opts.steps,
            "lr": opts.lr,
            "seed": opts.seed,
            "top_k": opts.top_k,
            "train_encoders": opts.train_encoders,
            **({"batch_size": opts.batch_size} if opts.batch_size != 1 else {}),
            **({"ranks": ranks.world} if ranks.distributed else {}),
            "loss": "KL(teacher || student) over the teacher's top-k tokens + one tail bucket",
            "loss_first": first,
            "loss_last": last,
            "log": str(log_path),
            "seconds": round(time.perf_counter() - t0, 1),
        },
    }
    with stages.stage(f"write {opts.out}"):
        qc = qcheckpoint.from_model(model, linears, config)
        qcheckpoint.save(qc, opts.out, force=opts.force)
    shutil.rmtree(opts.state_dir, ignore_errors=True)
    log.info("wrote %s (%d quantized linears); loss log %s", opts.out, len(linears), log_path)
    ranks.barrier()
    return opts.out

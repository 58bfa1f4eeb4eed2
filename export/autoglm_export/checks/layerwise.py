"""What quantization costs, block by block, for models too deep for an end-to-end number to mean it.

End to end, a deep model with random weights amplifies every small change: the same int4 recipe
that costs cosine 0.998 on one real-width layer gives 0.935 at 4 layers and 0.79 at 40 (measured),
so the end-to-end row against fp32 describes the random weights, not the recipe or the export.
Above ``LARGE_MODEL_PARAMS`` the gate therefore judges the cost per block, teacher-forced:

1. while the fp32 references run, ``capture`` records every decoder layer's and vision block's
   inputs and outputs (decoder: the prefill chunks; vision: the first image), and each stack's
   final output (logits, image embeddings);
2. after quantization, ``replay`` runs each quantized block on the *fp32* input it saw and compares
   its update (output - input) with the fp32 block's, then the quantized head (final norm + lm_head;
   vision merger) on the fp32 last hidden state with the fp32 output.

Each stage is judged with the ``fp32``-reference thresholds of its quantization kind; the row shows
the worst stage and lists them all. The end-to-end ``fp32`` rows stay in the report, not gated.
What it proves: every block and head, given what the original model feeds it, computes close to the
original; it does not bound how a real model's depth compounds them (the end-to-end row shows that).
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from autoglm_runtime.parity import Metrics, compare_arrays, thresholds_for

from ..sizes import LARGE_MODEL_PARAMS

REFERENCE = "fp32_per_layer"


def per_layer(params: int) -> bool:
    """Whether the vs-fp32 gate of a model this size is per block (the end-to-end rows then inform)."""
    return params > LARGE_MODEL_PARAMS


@dataclass
class Stack:
    """One component's blocks: what each block saw and returned in the fp32 run, call by call."""

    component: str
    blocks: nn.ModuleList
    head: object  # callable: last hidden state -> the component's output
    output_module: nn.Module  # the module whose output is the component's output (hooked for it)
    calls: list[list[tuple]] = field(default_factory=list)  # per block: (args, output)
    outputs: list[torch.Tensor] = field(default_factory=list)  # the component's fp32 output per call
    recording: bool = False  # whether the call now running is recorded (``_recorded``)


def _stacks(model) -> list[Stack]:
    return [
        Stack("text_decoder", model.text.layers, model.text.head, model.text.lm_head),
        Stack("vision_encoder", model.vision.blocks, model.vision.head, model.vision),
    ]


def _recorded(stack: Stack, call_args: tuple) -> bool:
    """Decoder: prefill chunks only (a decode step converts every weight for one token); vision: the first image."""
    if stack.component == "text_decoder":
        return call_args[0].shape[1] > 1
    return not stack.calls[0]


@contextmanager
def capture(model):
    """Record the fp32 run's block inputs/outputs (``Stack.calls``) and final outputs; yields the stacks."""
    stacks = _stacks(model)
    handles = []
    for stack in stacks:
        stack.calls = [[] for _ in stack.blocks]

        def start(mod, args, stack=stack):
            stack.recording = _recorded(stack, args)

        def block_done(mod, args, output, stack=stack, index=0):
            if stack.recording:
                stack.calls[index].append((args, output))

        def output_done(mod, args, output, stack=stack):
            if stack.recording and len(stack.outputs) < len(stack.calls[-1]):
                stack.outputs.append(output.detach().float())

        handles.append(stack.blocks[0].register_forward_pre_hook(start))
        handles += [
            block.register_forward_hook(functools.partial(block_done, index=i)) for i, block in enumerate(stack.blocks)
        ]
        handles.append(stack.output_module.register_forward_hook(output_done))
    try:
        yield stacks
    finally:
        for h in handles:
            h.remove()


def _metrics(name: str, got: list[torch.Tensor], ref: list[torch.Tensor], logits: bool) -> Metrics:
    cat = lambda ts: np.concatenate([t.reshape(-1, t.shape[-1]).double().numpy() for t in ts])  # noqa: E731
    return compare_arrays(name, cat(got), cat(ref), logits=logits)


@torch.no_grad()
def _replay_stack(stack: Stack) -> list[tuple[str, Metrics]]:
    out = []
    for i, block in enumerate(stack.blocks):
        cache = getattr(getattr(block, "self_attn", None), "kv_cache", None)
        got, ref = [], []
        for args, output in stack.calls[i]:
            if cache is not None and int(args[3][0]) == 0:  # a new sequence: this layer's cache starts empty
                cache.reset()
            got.append(block(*args) - args[0])
            ref.append(output - args[0])
        out.append((f"{stack.component}.{i}", _metrics(f"block {i} update", got, ref, logits=False)))
        if cache is not None:
            cache.reset()
    last = [output for _, output in stack.calls[-1]]
    head = [stack.head(x).float() for x in last]
    out.append(("head", _metrics(f"{stack.component} head", head, stack.outputs, stack.component == "text_decoder")))
    return out


def replay(stacks: list[Stack], quant_kinds: dict[str, str]) -> list[dict]:
    """The per-block rows (one per stack), from the quantized model now holding the blocks."""
    rows = []
    for stack in stacks:
        if not stack.calls or not stack.calls[0]:
            continue  # no image among the probes: nothing of the tower was recorded
        kind = quant_kinds[stack.component]
        stages = _replay_stack(stack)
        per_stage, failures = [], []
        for name, m in stages:
            th = thresholds_for("fp32", kind, stack.component)
            fails = m.check(th if name == "head" else th.features_only())
            failures += [f"{name}: {f}" for f in fails]
            per_stage.append({"stage": name, "cosine": round(m.cosine, 8), "rel_max_abs": round(m.rel_max_abs, 8)})
        worst_name, worst = min(stages, key=lambda s: s[1].cosine)
        rows.append(
            {
                "component": stack.component,
                "reference": REFERENCE,
                "quant_kind": kind,
                "metrics": worst.to_dict(),  # the stage with the lowest cosine
                "worst_stage": worst_name,
                "thresholds": thresholds_for("fp32", kind, stack.component).to_dict(),
                "passed": not failures,
                "failures": failures,
                "per_stage": per_stage,
            }
        )
    return rows

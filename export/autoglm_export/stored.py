"""Big weights kept as stored (bf16, memory-mapped) and made fp32 one module at a time.

A model loaded with ``keep_stored=True`` (``loader.load_model``) holds its large matrices, every
``nn.Linear`` weight and the token embedding, as zero-copy views of the checkpoint file, and
everything else (norms, biases, the vision position embedding, derived constants, the KV cache) in
fp32. bf16 -> fp32 is exact, so this model computes exactly what the fp32-loaded one computes, as
long as each module sees its weight in fp32 when it runs:

- ``fp32_while_running(model)``: hooks give each module an fp32 copy of its weight for the duration
  of its own forward, then drop it and give the file's pages back (reference outputs at a memory
  cost of one weight matrix, not of the model);
- ``to_fp32(module)``: the module's weight becomes fp32 for good (just before torchao quantizes it,
  so quantization sees the same numbers as the fp32 path) and the stored pages go back.

Nothing here ever converts the whole model at once.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn
from torch.nn import functional as F

from .checkpoint import release_pages

TOKEN_EMBEDDING = "text.embed_tokens.weight"


def stored_names(model: nn.Module) -> set[str]:
    """Parameter names a ``keep_stored`` load leaves as stored: linear weights and the token embedding."""
    names = {f"{fqn}.weight" for fqn, mod in model.named_modules() if isinstance(mod, nn.Linear)}
    return names | {TOKEN_EMBEDDING}


def _stored_weight(module: nn.Module) -> torch.Tensor | None:
    w = module._parameters.get("weight")
    if w is None or not w.is_floating_point() or w.dtype == torch.float32 or w.is_meta:
        return None
    return w


def to_fp32(module: nn.Module) -> None:
    """The module's own weight made fp32 in place (a no-op when it already is); stored pages released."""
    w = _stored_weight(module)
    if w is None:
        return
    module.weight = nn.Parameter(w.float(), requires_grad=False)
    release_pages([w])


def big_weights_only(model: nn.Module, token_embedding: nn.Module | None = None) -> nn.Module:
    """Any module tree (transformers' too) loaded in bf16 made like a ``keep_stored`` model: linear
    weights and the token embedding's stay bf16, every other floating parameter and buffer becomes
    fp32 (small). Other embeddings are converted: a position table is read as ``.weight``, not
    called, so ``fp32_while_running`` would never see it."""
    for mod in model.modules():
        big = isinstance(mod, nn.Linear) or mod is token_embedding
        for name, p in list(mod._parameters.items()):
            if p is not None and p.is_floating_point() and p.dtype != torch.float32 and not (big and name == "weight"):
                mod._parameters[name] = nn.Parameter(p.float(), requires_grad=False)
        for name, b in list(mod._buffers.items()):
            if b is not None and b.is_floating_point() and b.dtype != torch.float32:
                mod._buffers[name] = b.float()
    return model


def remaining(model: nn.Module) -> list[str]:
    """Names of weights still held as stored (not fp32): none may be left when a program is built."""
    return [f"{fqn}.weight" for fqn, mod in model.named_modules() if _stored_weight(mod) is not None]


@contextmanager
def fp32_while_running(model: nn.Module):
    """Every module with a stored weight runs with an fp32 copy of it, made when it is called and
    dropped when it returns; an embedding looks up its stored rows and converts only those (the same
    numbers). No-op for an fp32 model. The stored weights are back in place on exit."""
    originals: dict[nn.Module, torch.Tensor] = {}
    handles = []

    def before(mod, args):
        mod.weight = nn.Parameter(originals[mod].float(), requires_grad=False)

    def after(mod, args, output):
        mod.weight = originals[mod]
        release_pages([originals[mod]])

    for mod in model.modules():
        w = _stored_weight(mod)
        if w is None:
            continue
        originals[mod] = w
        if isinstance(mod, nn.Embedding):
            mod.forward = _fp32_lookup(mod, w)
        else:
            handles += [mod.register_forward_pre_hook(before), mod.register_forward_hook(after)]
    try:
        yield model
    finally:
        for h in handles:
            h.remove()
        for mod, w in originals.items():
            mod.weight = w
            mod.__dict__.pop("forward", None)
        release_pages(originals.values())


def _fp32_lookup(mod: nn.Embedding, w: torch.Tensor):
    def forward(ids):
        return F.embedding(
            ids, w, mod.padding_idx, mod.max_norm, mod.norm_type, mod.scale_grad_by_freq, mod.sparse
        ).float()

    return forward


@contextmanager
def fp32_weights(*modules: nn.Module):
    """The stored weights under ``modules`` held as fp32 for the duration of the block (one trace and
    conversion of a part of the model), then the stored ones put back and their pages released: the
    fp32 copies live as long as the block, never beyond it. No-op for weights already fp32."""
    originals: dict[nn.Module, torch.Tensor] = {}
    for root in modules:
        for mod in root.modules():
            w = _stored_weight(mod)
            if w is not None and mod not in originals:
                originals[mod] = w
                mod.weight = nn.Parameter(w.float(), requires_grad=False)
    try:
        yield
    finally:
        for mod, w in originals.items():
            mod.weight = w
        release_pages(originals.values())

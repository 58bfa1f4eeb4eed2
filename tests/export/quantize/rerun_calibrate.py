"""The calibration algorithm ``calibrate`` had before it carried activations from block to block: the
oracle that the streamed one must reproduce integer for integer.

For every block it re-ran every sample from the model's input, as quantized so far, stopping right
after the block while hooks summed each linear's x x^T; GPTQ picked the integers and the dequantized
weights were written back into the fp32 model. Kept verbatim but for names; do not "fix" it: it is
what the new code is measured against. ``gptq_as_it_was`` is the GPTQ sweep of that time, whose
per-row (int8) layers used a lazy block as wide as the row (the new one: 128 columns; the same
arithmetic in another order).
"""

from __future__ import annotations

import torch
from torch import nn

from autoglm_export.quantize import grid, qcheckpoint
from autoglm_export.quantize.gptq import HessianAccumulator, output_error
from autoglm_export.quantize.qcheckpoint import QuantizedLinear
from autoglm_export.quantize.samples import spliced_embeds


class _Stop(Exception):
    pass


def _blocks(model: nn.Module, targets: dict) -> list[tuple[str, list[str]]]:
    order = {"vision": 0, "audio": 1, "text": 2}
    index = {name: i for i, (name, _) in enumerate(model.named_modules())}
    blocks: dict[str, list[str]] = {}
    for fqn in targets:
        parts = fqn.split(".")
        if len(parts) > 2 and parts[2].isdigit():
            key = ".".join(parts[:3])
        elif len(parts) > 2:
            key = ".".join(parts[:2])
        else:
            key = fqn
        blocks.setdefault(key, []).append(fqn)
    return sorted(blocks.items(), key=lambda kv: (order.get(kv[0].split(".")[0], 3), index[kv[0]]))


def gptq_as_it_was(weight, acc, bits, group_size, damp=0.01, block=128):
    out_f, in_f = weight.shape
    qmin, qmax = grid.qrange(bits)
    block = max(block, group_size) // group_size * group_size
    w = weight.detach().double().clone()
    h = acc.h.clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += torch.eye(in_f, dtype=h.dtype) * damp * torch.mean(torch.diag(h))
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    codes = torch.zeros(out_f, in_f, dtype=torch.int8)
    scales = torch.zeros(out_f, in_f // group_size, dtype=torch.float32)
    for b0 in range(0, in_f, block):
        b1 = min(b0 + block, in_f)
        w_blk = w[:, b0:b1].clone()
        err_blk = torch.zeros_like(w_blk)
        hinv_blk = hinv[b0:b1, b0:b1]
        for i in range(b1 - b0):
            col = b0 + i
            if col % group_size == 0:
                s = grid.group_scales(w_blk[:, i : i + group_size].float(), bits, group_size)[:, 0]
                scales[:, col // group_size] = s
                s_col = s.double()
            q = torch.clamp(torch.round(w_blk[:, i] * (1.0 / s_col)), qmin, qmax)
            codes[:, col] = q.to(torch.int8)
            e = (w_blk[:, i] - q * s_col) / hinv_blk[i, i]
            w_blk[:, i:] -= e[:, None] * hinv_blk[i, i:][None, :]
            err_blk[:, i] = e
        w[:, b1:] -= err_blk @ hinv[b0:b1, b1:]
    rtn_codes, rtn_scales = grid.round_to_nearest(weight.float(), bits, group_size)
    loss = output_error(weight, grid.dequantize_codes(codes, scales), acc.h, acc.tokens)
    rtn_loss = output_error(weight, grid.dequantize_codes(rtn_codes, rtn_scales), acc.h, acc.tokens)
    return codes, scales, loss, rtn_loss


def _run_sample(model, sample, spec, tower, cached):
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


@torch.no_grad()
def rerun_calibrate(model, spec, samples, recipe, method="gptq", damp=0.01):
    """(fqn -> QuantizedLinear, per-layer stats) of an fp32 model, which it leaves quantized."""
    targets = qcheckpoint.quantizable_linears(model, recipe)
    modules = dict(model.named_modules())
    result, stats, cached = {}, {}, None
    for block, linears in _blocks(model, targets):
        tower = block.split(".")[0]
        if tower == "text" and cached is None:
            cached = [
                {
                    "vision": model.vision_encoder(torch.from_numpy(s.pixels)) if s.pixels is not None else None,
                    "audio": model.audio_encoder(torch.from_numpy(s.features)) if s.features is not None else None,
                }
                for s in samples
            ]
        accs = {fqn: HessianAccumulator(targets[fqn][0].in_features) for fqn in linears}
        hooks = [modules[f].register_forward_pre_hook(lambda m, a, acc=accs[f]: acc.add(a[0])) for f in linears]

        def stop(*_):
            raise _Stop

        hooks.append(modules[block].register_forward_hook(stop))
        for i, sample in enumerate(samples):
            try:
                _run_sample(model, sample, spec, tower, cached[i] if cached else None)
            except _Stop:
                pass
        for h in hooks:
            h.remove()
        for fqn in linears:
            mod, bits, group = targets[fqn]
            acc = accs[fqn]
            if method == "rtn" or acc.tokens == 0:
                codes, scales = grid.round_to_nearest(mod.weight, bits, group)
                stats[fqn] = {"tokens": acc.tokens, "method": "rtn"}
            else:
                codes, scales, loss, rtn_loss = gptq_as_it_was(mod.weight, acc, bits, group, damp)
                stats[fqn] = {"tokens": acc.tokens, "method": "gptq", "output_mse": loss, "rtn_output_mse": rtn_loss}
            result[fqn] = QuantizedLinear(codes, scales, bits)
            mod.weight.copy_(result[fqn].dequantize().to(mod.weight.dtype))
    model.reset_cache()
    return result, stats

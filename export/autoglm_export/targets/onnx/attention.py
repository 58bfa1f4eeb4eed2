"""The decoder's attention as onnxruntime's ``com.microsoft::GroupQueryAttention`` over the static cache.

One node per layer takes the rotated queries and keys, the values, the layer's static cache
(``[1, kv_heads, max_context, head_dim]``), ``seqlens_k`` (the last new token's slot) and
``total_sequence_length`` (slots in use after this call). It writes the new keys/values at slots
``total - seq .. total - 1`` and attends causally over slots ``0 .. total - 1`` only, each KV head
shared by its group of query heads. Against the graph it replaces (a ScatterElements into a copy of
the whole cache, then matmuls and a softmax over all ``max_context`` slots with a mask), a decode step
reads what it attends to, not the whole cache.

Bound to the same buffers as ``past_*`` (``present_*`` outputs; onnxruntime's "past/present share
buffer" mode) the node updates the cache in place: ``OnnxBackend`` does this for graphs whose
metadata says so (``IN_PLACE_METADATA``, which the exporter writes into every text_decoder). Fed
through ``InferenceSession.run`` it copies the slots in use into a new ``present`` instead; slots past
``total`` are then onnxruntime's to fill, and nothing reads them.

The new tokens' slots must be consecutive (``cache_position`` = ``p .. p + seq - 1``), which is how
every caller fills the cache. Queries and keys are rotated first by ``com.microsoft::RotaryEmbedding``
on this call's M-RoPE angles (``rotary``). Both nodes are traced as custom ops (``autoglm::gqa``,
``autoglm::rotary``, whose eager implementations are the same math in torch, for tests) and written
by ``TRANSLATIONS``.
"""

from __future__ import annotations

import torch

from ...model.rope import apply_rotary, per_channel


@torch.library.custom_op("autoglm::gqa", mutates_args=())
def gqa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    seqlens_k: torch.Tensor,
    total_length: torch.Tensor,
    num_heads: int,
    kv_heads: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q ``[B, S, heads * dim]``, k / v ``[B, S, kv_heads * dim]`` -> (out like q, new k_cache, new v_cache)."""
    bsz, seq, _ = q.shape
    dim = k_cache.shape[-1]
    start = int(total_length) - seq
    k_cache, v_cache = k_cache.clone(), v_cache.clone()
    k_cache[:, :, start : start + seq] = k.view(bsz, seq, kv_heads, dim).transpose(1, 2)
    v_cache[:, :, start : start + seq] = v.view(bsz, seq, kv_heads, dim).transpose(1, 2)
    groups = num_heads // kv_heads
    # query head h uses KV head h // groups: [B, kv, groups * S, dim]
    qh = q.view(bsz, seq, num_heads, dim).transpose(1, 2).reshape(bsz, kv_heads, groups * seq, dim)
    query_slots = torch.arange(start, start + seq).repeat(groups)
    visible = torch.arange(k_cache.shape[2])[None, :] <= query_slots[:, None]
    scores = torch.matmul(qh, k_cache.transpose(-1, -2)) * dim**-0.5
    probs = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
    out = torch.matmul(probs, v_cache).view(bsz, num_heads, seq, dim).transpose(1, 2)
    return out.reshape(bsz, seq, num_heads * dim), k_cache, v_cache


@gqa.register_fake
def _(q, k, v, k_cache, v_cache, seqlens_k, total_length, num_heads, kv_heads):
    return torch.empty_like(q), torch.empty_like(k_cache), torch.empty_like(v_cache)


def _gqa_onnx(q, k, v, k_cache, v_cache, seqlens_k, total_length, num_heads: int, kv_heads: int):
    from onnxscript import values

    gqa_op = values.Op(values.Opset("com.microsoft", 1), "GroupQueryAttention", _gqa_schema())
    return gqa_op(q, k, v, k_cache, v_cache, seqlens_k, total_length, num_heads=num_heads, kv_num_heads=kv_heads)


# GroupQueryAttention's inputs used here, in its input order (onnxruntime 1.31): name -> type
_GQA_INPUTS = (
    ("query", "T"), ("key", "T"), ("value", "T"), ("past_key", "T"), ("past_value", "T"),
    ("seqlens_k", "M"), ("total_sequence_length", "M"),
)  # fmt: skip


def _gqa_schema():
    """The part of ``com.microsoft::GroupQueryAttention``'s schema used here: onnx's registry, which the
    exporter's op builder reads, has no onnxruntime contrib ops."""
    from onnx.defs import OpSchema

    return OpSchema(
        "GroupQueryAttention",
        "com.microsoft",
        1,
        inputs=[OpSchema.FormalParameter(n, t) for n, t in _GQA_INPUTS],
        outputs=[OpSchema.FormalParameter(n, "T") for n in ("output", "present_key", "present_value")],
        type_constraints=[("T", ["tensor(float)"], ""), ("M", ["tensor(int32)"], "")],
        attributes=[
            OpSchema.Attribute("num_heads", OpSchema.AttrType.INT, required=True),
            OpSchema.Attribute("kv_num_heads", OpSchema.AttrType.INT, required=True),
        ],
    )


@torch.library.custom_op("autoglm::rotary", mutates_args=())
def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_heads: int, interleaved: bool) -> torch.Tensor:
    """x ``[B, S, heads * dim]``, cos / sin ``[S, R / 2]`` (per frequency): ``apply_rotary`` on each head's
    first R channels."""
    bsz, seq, _ = x.shape
    heads = x.view(bsz, seq, num_heads, -1).transpose(1, 2)
    out = apply_rotary(heads, per_channel(cos, interleaved), per_channel(sin, interleaved), interleaved)
    return out.transpose(1, 2).reshape(bsz, seq, -1)


@rotary.register_fake
def _(x, cos, sin, num_heads, interleaved):
    return torch.empty_like(x)


def _rotary_onnx(x, cos, sin, num_heads: int, interleaved: bool):
    """``com.microsoft::RotaryEmbedding`` with this call's cos/sin as its cache, rows from 0: M-RoPE
    positions differ per frequency, so no one position id per token could index a shared table."""
    from onnxscript import opset18 as op
    from onnxscript import values

    rotary_op = values.Op(values.Opset("com.microsoft", 1), "RotaryEmbedding", _rotary_schema())
    rows_from = op.Constant(value_ints=[0])
    return rotary_op(
        x,
        rows_from,
        cos,
        sin,
        num_heads=num_heads,
        rotary_embedding_dim=2 * cos.shape[-1],
        interleaved=int(interleaved),
    )


def _rotary_schema():
    from onnx.defs import OpSchema

    return OpSchema(
        "RotaryEmbedding",
        "com.microsoft",
        1,
        inputs=[
            OpSchema.FormalParameter(n, t)
            for n, t in (("input", "T"), ("position_ids", "M"), ("cos_cache", "T"), ("sin_cache", "T"))
        ],
        outputs=[OpSchema.FormalParameter("output", "T")],
        type_constraints=[("T", ["tensor(float)"], ""), ("M", ["tensor(int64)"], "")],
        attributes=[
            OpSchema.Attribute(n, OpSchema.AttrType.INT, required=False)
            for n in ("num_heads", "rotary_embedding_dim", "interleaved")
        ],
    )


TRANSLATIONS = {torch.ops.autoglm.gqa.default: _gqa_onnx, torch.ops.autoglm.rotary.default: _rotary_onnx}


def attend(attn, x, cos, sin, cache_position, k_cache, v_cache):
    """``model.text.Attention.forward`` with the cache passed in and returned (same weights, same math);
    ``cos`` / ``sin``: ``[S, R / 2]``, per frequency."""
    heads, kv_heads = attn.n_heads, attn.n_kv_heads
    q = rotary(attn.q_proj(x), cos, sin, heads, attn.interleaved)
    k = rotary(attn.k_proj(x), cos, sin, kv_heads, attn.interleaved)
    last = cache_position[-1:]
    out, k_cache, v_cache = gqa(
        q, k, attn.v_proj(x), k_cache, v_cache, last.to(torch.int32), (last[0] + 1).to(torch.int32), heads, kv_heads
    )
    return attn.o_proj(out), k_cache, v_cache

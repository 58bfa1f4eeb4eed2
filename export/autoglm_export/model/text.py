"""The GLM-4.1V text decoder (and its Glm4vMoe variant) with a static KV cache.

Parameter names follow transformers' ``model.language_model.*`` so the checkpoint maps by prefix.
Inputs are embeddings, so image/audio embeddings can be spliced in by the caller; positions come
in as the 3-plane M-RoPE ids that ``autoglm_runtime.positions`` computes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TextConfig
from .kv_cache import KVCache
from .moe import MoE, SwiGLU
from .rope import apply_rotary, inverse_frequencies, mrope_cos_sin, plane_selector


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class FusedSwiGLU(nn.Module):
    """GLM-4.1V MLP: one gate_up projection, split in halves (gate first)."""

    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_up_proj = nn.Linear(hidden, 2 * intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(up * F.silu(gate))


class Attention(nn.Module):
    def __init__(self, cfg: TextConfig, max_context: int):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        bias = cfg.attention_bias
        self.q_proj = nn.Linear(cfg.hidden_size, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(cfg.hidden_size, self.n_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(cfg.hidden_size, self.n_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=False)
        self.interleaved = cfg.rope_interleaved
        self.kv_cache = KVCache(max_context, self.n_kv_heads, self.head_dim)

    def forward(self, x, cos, sin, cache_position, mask):
        bsz, seq, _ = x.shape
        q = self.q_proj(x).view(bsz, seq, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(bsz, seq, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(bsz, seq, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q = apply_rotary(q, cos, sin, self.interleaved)
        k = apply_rotary(k, cos, sin, self.interleaved)
        k, v = self.kv_cache.update(cache_position, k, v)
        # GQA by explicit repetition: every backend (Core ML included) understands it.
        groups = self.n_heads // self.n_kv_heads
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(bsz, seq, self.n_heads * self.head_dim))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TextConfig, layer_idx: int, max_context: int):
        super().__init__()
        self.sandwich = cfg.sandwich_norms
        self.self_attn = Attention(cfg, max_context)
        if cfg.is_moe_layer(layer_idx):
            self.mlp = MoE(cfg)
        elif cfg.arch == "glm4v":
            self.mlp = FusedSwiGLU(cfg.hidden_size, cfg.intermediate_size)
        else:
            self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        if self.sandwich:  # GLM-4.1V normalises each sub-block's output too
            self.post_self_attn_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
            self.post_mlp_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, cache_position, mask):
        return self.residual_tail(x, self.self_attn(self.input_layernorm(x), cos, sin, cache_position, mask))

    def residual_tail(self, x, attn_out):
        """Everything after attention: (sandwich-normed) residual, MLP, (sandwich-normed) residual.
        Shared by the export wrappers that bring their own attention (ONNX, Core ML)."""
        h = attn_out
        if self.sandwich:
            h = self.post_self_attn_layernorm(h)
        x = x + h
        h = self.mlp(self.post_attention_layernorm(x))
        if self.sandwich:
            h = self.post_mlp_layernorm(h)
        return x + h


class TextDecoder(nn.Module):
    """embed_tokens + layers + norm + lm_head; ``forward`` is the exported ``text_decoder``."""

    def __init__(self, cfg: TextConfig, max_context: int):
        super().__init__()
        self.cfg, self.max_context = cfg, max_context
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i, max_context) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.prepare()

    def prepare(self) -> None:
        """(Re)create the derived constants and the KV cache on CPU (the model may be built on meta).

        While the weights are still on meta (built for loading or for ``info``) the cache stays on
        meta too: at 9B and 8192 tokens it is 1.3 GB that loading would only replace."""
        cfg = self.cfg
        self.register_buffer("inv_freq", inverse_frequencies(cfg.rotary_dim, cfg.rope_theta), persistent=False)
        self.register_buffer("rope_selector", plane_selector(cfg.mrope_section), persistent=False)
        self.register_buffer("key_positions", torch.arange(self.max_context), persistent=False)
        weight = self.norm.weight  # the compute dtype (linear weights may be kept as stored: stored.py)
        dtype = torch.float32 if weight.is_meta else weight.dtype
        for layer in self.layers:
            layer.self_attn.kv_cache.allocate(dtype, "meta" if weight.is_meta else "cpu")

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(token_ids)

    def forward(
        self, inputs_embeds: torch.Tensor, cache_position: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        """inputs_embeds [1, S, D], cache_position [S], position_ids [3, S] -> logits [1, S, vocab]."""
        cos, sin, mask = self.layer_inputs(cache_position, position_ids)
        x = inputs_embeds
        for layer in self.layers:
            x = layer(x, cos, sin, cache_position, mask)
        return self.head(x)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """After the layers: final norm and lm_head (logits)."""
        return self.lm_head(self.norm(x))

    def layer_inputs(self, cache_position: torch.Tensor, position_ids: torch.Tensor):
        """(cos, sin, mask) every layer takes beside its input: also for callers that run one layer at a time."""
        cos, sin = mrope_cos_sin(position_ids, self.inv_freq, self.rope_selector, self.cfg.rope_interleaved)
        # Query i sees cache slots 0..cache_position[i]; later slots may hold stale entries.
        mask = self.key_positions[None, :] <= cache_position[:, None]
        return cos, sin, mask

    def reset_cache(self) -> None:
        for layer in self.layers:
            layer.self_attn.kv_cache.reset()

"""Glm4vMoe feed-forward: sigmoid top-k router with group limits, routed + shared experts.

Export-friendly: every expert runs on every token and the router's top-k weights (zero for
unselected experts) mix them. Shapes stay static; the cost is O(experts), which is what a
static-graph mobile runtime needs. Matches transformers' sparse dispatch numerically.

Run eagerly on one token (decode), only that token's top-k experts run: the others would add exact
zeros, so the result is the same bit for bit. Traced (torch.export, torch.jit.trace) the layer stays
dense; the ONNX target writes it as a top-k ``QMoE`` node instead (``targets/onnx/experts.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TextConfig


class SwiGLU(nn.Module):
    """gate_proj / up_proj / down_proj MLP (Glm4vMoe dense layers and experts)."""

    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class TopKRouter(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.top_k = cfg.num_experts_per_tok
        self.num_experts = cfg.n_routed_experts
        self.n_group, self.topk_group = cfg.n_group, cfg.topk_group
        self.norm_topk_prob = cfg.norm_topk_prob
        self.routed_scaling_factor = cfg.routed_scaling_factor
        self.weight = nn.Parameter(torch.zeros(cfg.n_routed_experts, cfg.hidden_size))
        self.register_buffer("e_score_correction_bias", torch.zeros(cfg.n_routed_experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, H] -> dense routing weights [N, experts] (zero outside each token's top-k)."""
        scores = F.linear(x.float(), self.weight.float()).sigmoid()
        choice = scores + self.e_score_correction_bias
        if self.n_group > 1:
            per_group = self.num_experts // self.n_group
            group_scores = choice.view(-1, self.n_group, per_group).topk(2, dim=-1)[0].sum(-1)
            group_idx = group_scores.topk(self.topk_group, dim=-1, sorted=False)[1]
            group_mask = torch.zeros_like(group_scores).scatter(1, group_idx, 1.0)
            expert_mask = group_mask.unsqueeze(-1).expand(-1, self.n_group, per_group).reshape(-1, self.num_experts)
            choice = choice.masked_fill(expert_mask == 0, float("-inf"))
        topk_idx = choice.topk(self.top_k, dim=-1, sorted=False)[1]
        topk_w = scores.gather(1, topk_idx)
        if self.norm_topk_prob:
            topk_w = topk_w / (topk_w.sum(-1, keepdim=True) + 1e-20)
        topk_w = topk_w * self.routed_scaling_factor
        return torch.zeros_like(scores).scatter(1, topk_idx, topk_w)


class MoE(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.gate = TopKRouter(cfg)
        self.experts = nn.ModuleList(
            SwiGLU(cfg.hidden_size, cfg.moe_intermediate_size) for _ in range(cfg.n_routed_experts)
        )
        self.shared_experts = SwiGLU(cfg.hidden_size, cfg.moe_intermediate_size * cfg.n_shared_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        weights = self.gate(flat).to(flat.dtype)
        chosen = range(len(self.experts))
        if flat.shape[0] == 1 and not _traced():
            chosen = weights[0].nonzero().flatten().tolist()  # ascending: the dense loop's order
        routed = torch.zeros_like(flat)
        for i in chosen:
            routed = routed + self.experts[i](flat) * weights[:, i : i + 1]
        return routed.view(shape) + self.shared_experts(x)


def _traced() -> bool:
    """Inside torch.export / torch.compile / torch.jit.trace: the graph must not depend on the router's choice."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting()

"""Export-friendly GLM-4.1V vision encoder (transformers' ``Glm4vVisionModel``) for one image.

The export resolution ``image_hw`` is fixed when the module is built, so everything that transformers
derives from ``grid_thw`` at run time (the bicubic-resampled learned position embeddings, the 2-D
rotary cos/sin, the attention segments) is computed once in :meth:`VisionEncoder.prepare` and stored
as non-persistent buffers. ``forward`` is then a plain stack of matmuls: no ``grid_sample``, no
data-dependent shapes, no ``cu_seqlens`` loop (one image is one full non-causal attention), no
complex numbers.

Parameter names equal the checkpoint keys under ``model.visual.`` (prefix stripped), so
``load_state_dict(strict=True)`` works on the stripped checkpoint; call :meth:`prepare` afterwards.

Layout of ``pixel_values`` (what ``Glm4vImageProcessor`` emits for one image, ``grid_thw=[1, H/p, W/p]``):
rows are patches in *merge-block-major* order, i.e. ``(H/p/m, W/p/m, m, m)`` flattened, so every
``m*m`` consecutive rows form one output token; each row is ``(C, temporal_patch_size, p, p)``
flattened, where a still image is repeated over the temporal axis.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import VisionConfig
from ..errors import CheckpointError, ExportError
from .rope import rotate_half

# transformers' Glm4vVisionConfig.rope_parameters default; GLM-4.1V checkpoints do not override it.
DEFAULT_VISION_ROPE_THETA = 10000.0

_ACTIVATIONS = {
    "silu": F.silu,
    "swish": F.silu,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


def _activation(name: str):
    if name not in _ACTIVATIONS:
        raise CheckpointError(
            f"vision_config.hidden_act '{name}' is not supported; expected one of {', '.join(_ACTIVATIONS)}"
        )
    return _ACTIVATIONS[name]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        # Same op order as Glm4vRMSNorm: normalise in fp32, cast back, then scale.
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.hidden_size // cfg.num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size, bias=cfg.attention_bias)
        self.proj = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        n = x.shape[0]
        # qkv columns are laid out (3, heads, head_dim); slicing (not unbind) keeps the split delegable.
        qkv = self.qkv(x).view(n, 3 * self.num_heads, self.head_dim).transpose(0, 1)  # [3*heads, n, head_dim]
        h = self.num_heads
        q, k, v = qkv[:h], qkv[h : 2 * h], qkv[2 * h :]
        # Rotary in fp32 like transformers; cos/sin are [n, head_dim] and broadcast over heads.
        q = (q.float() * cos + rotate_half(q.float()) * sin).to(v.dtype)
        k = (k.float() * cos + rotate_half(k.float()) * sin).to(v.dtype)
        # One image = one full bidirectional attention, no mask. Explicit bmm + softmax lowers cleanly:
        # SDPA's decomposition adds masked-row guards (any/where) that XNNPACK does not delegate, and
        # matmul on 3-D inputs exports as expand + bmm, whose expands ExecuTorch materialises.
        scores = torch.bmm(q, k.transpose(1, 2)) * self.scale
        probs = torch.softmax(scores.float(), dim=-1).to(v.dtype)
        o = torch.bmm(probs, v)  # [heads, n, head_dim]
        return self.proj(o.transpose(0, 1).reshape(n, -1))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)
        self.act = _activation(act)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.norm1 = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.norm2 = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = Attention(cfg)
        # Note: transformers sizes the per-block MLP with out_hidden_size, not intermediate_size.
        self.mlp = MLP(cfg.hidden_size, cfg.out_hidden_size, cfg.hidden_act)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x), cos, sin)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        dim = cfg.out_hidden_size
        self.proj = nn.Linear(dim, dim, bias=False)
        self.post_projection_norm = nn.LayerNorm(dim)  # eps 1e-5, not rms_norm_eps
        # ... and intermediate_size sizes this MLP instead.
        self.gate_proj = nn.Linear(dim, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(dim, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, dim, bias=False)
        self.act = _activation(cfg.hidden_act)

    def forward(self, x: Tensor) -> Tensor:
        x = F.gelu(self.post_projection_norm(self.proj(x)))  # exact (erf) GELU
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class ConvAsLinear(nn.Linear):
    """A stride == kernel convolution applied to one flattened window: exactly a Linear.

    Loads the checkpoint's conv-shaped weight ``[out, C, *kernel]`` as its ``[out, C * prod(kernel)]``
    view (same memory order), so the key stays the checkpoint's while export sees a plain Linear with a
    constant 2-D weight (delegated by XNNPACK, quantizable like any nn.Linear; no Conv3d on device).
    """

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "weight"
        w = state_dict.get(key)
        if w is not None and w.dim() > 2:
            state_dict[key] = w.reshape(w.shape[0], -1)  # load_state_dict passes its own shallow copy
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class PatchEmbed(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        # Checkpoint: Conv3d(in_channels, hidden, kernel = stride = (T, p, p)); a patch row is (C, T, p, p).
        patch_dim = cfg.in_channels * cfg.temporal_patch_size * cfg.patch_size * cfg.patch_size
        self.proj = ConvAsLinear(patch_dim, cfg.hidden_size, bias=True)


class Embeddings(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        side = cfg.image_size // cfg.patch_size
        self.position_embedding = nn.Embedding(side * side, cfg.hidden_size)


def patch_positions(grid_h: int, grid_w: int, merge: int) -> tuple[Tensor, Tensor]:
    """(h, w) patch coordinates in the image processor's merge-block-major order, as int64 [N]."""
    hpos, wpos = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    block = (grid_h // merge, merge, grid_w // merge, merge)
    return hpos.reshape(block).transpose(1, 2).flatten(), wpos.reshape(block).transpose(1, 2).flatten()


def resample_position_embedding(weight: Tensor, hpos: Tensor, wpos: Tensor, grid_h: int, grid_w: int) -> Tensor:
    """Learned square position grid resampled at the patch centres of a grid_h x grid_w image.

    Mirrors Glm4vVisionEmbeddings exactly: bicubic ``grid_sample`` in fp32 with
    ``align_corners=False`` and ``padding_mode="border"``, sampling at ``((i + 0.5) / grid) * 2 - 1``
    (so even a grid equal to the learned one is resampled, which is the identity there).
    """
    num, dim = weight.shape
    side = math.isqrt(num)
    if side * side != num:
        raise CheckpointError(
            f"vision embeddings.position_embedding.weight has {num} rows; expected a square grid of positions"
        )
    src = weight.detach().view(side, side, dim).permute(2, 0, 1).unsqueeze(0).float()
    device = weight.device
    norm_w = ((wpos.to(device) + 0.5) / torch.tensor(float(grid_w), device=device)) * 2 - 1
    norm_h = ((hpos.to(device) + 0.5) / torch.tensor(float(grid_h), device=device)) * 2 - 1
    grid = torch.stack((norm_w, norm_h), dim=-1).unsqueeze(0).unsqueeze(2)  # [1, N, 1, 2], x = width
    out = F.grid_sample(src, grid, mode="bicubic", align_corners=False, padding_mode="border")
    return out.squeeze(0).squeeze(-1).permute(1, 0).to(weight.dtype).contiguous()  # [N, dim]


def rotary_cos_sin(hpos: Tensor, wpos: Tensor, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """2-D axial rotary tables [N, head_dim] in fp32: angles laid out (h, w, h, w), each head_dim // 4 wide."""
    half = head_dim // 2
    inv_freq = 1.0 / (theta ** (torch.arange(0, half, 2, dtype=torch.float) / half))
    fh = hpos.float()[:, None] * inv_freq
    fw = wpos.float()[:, None] * inv_freq
    freqs = torch.cat([fh, fw, fh, fw], dim=-1)
    return freqs.cos(), freqs.sin()


class GridConstants(nn.Module):
    """The resolution-dependent constants of one more bucket (see ``VisionEncoder.prepare``), never saved."""

    def __init__(self, num_patches: int, hidden: int, head_dim: int):
        super().__init__()
        self.register_buffer("pos_embed", torch.empty(num_patches, hidden), persistent=False)
        self.register_buffer("rope_cos", torch.empty(num_patches, head_dim), persistent=False)
        self.register_buffer("rope_sin", torch.empty(num_patches, head_dim), persistent=False)


class VisionEncoder(nn.Module):
    """GLM-4.1V vision tower for one image at a fixed ``image_hw``, or at any of several bucket sizes
    (``buckets``; each a static shape with its own constants, all sharing the weights).

    ``forward(pixel_values[num_patches, patch_dim]) -> [num_tokens, out_hidden_size]``, equal to the
    ``pooler_output`` of transformers' ``Glm4vVisionModel`` (the merged image embeddings that
    ``get_image_features`` splices into the text sequence).
    """

    def __init__(self, cfg: VisionConfig, image_hw: tuple[int, int], buckets: tuple[tuple[int, int], ...] = ()):
        super().__init__()
        p, m = cfg.patch_size, cfg.spatial_merge_size
        h, w = (int(v) for v in image_hw)
        sizes = [(h, w)] + [(int(a), int(b)) for a, b in buckets if (int(a), int(b)) != (h, w)]
        for bh, bw in sizes:
            if bh <= 0 or bw <= 0 or bh % (p * m) or bw % (p * m):
                raise ExportError(
                    f"image size {bh}x{bw} must be positive multiples of patch_size*spatial_merge_size = {p * m}"
                )
        if cfg.hidden_size % cfg.num_heads:
            raise CheckpointError(
                f"vision_config: hidden_size {cfg.hidden_size} is not divisible by num_heads {cfg.num_heads}"
            )
        head_dim = cfg.hidden_size // cfg.num_heads
        if head_dim % 4:
            # The axial rope splits each half of the head into an h part and a w part.
            raise CheckpointError(f"vision_config: head_dim {head_dim} must be a multiple of 4 for the 2-D rotary")
        if cfg.image_size < p:
            raise CheckpointError(f"vision_config: image_size {cfg.image_size} is smaller than patch_size {p}")

        self.cfg = cfg
        self.image_hw = (h, w)
        self.grid_hw = (h // p, w // p)
        self.merge = m
        self.head_dim = head_dim
        self.rope_theta = float(getattr(cfg, "rope_theta", DEFAULT_VISION_ROPE_THETA))
        self.num_patches = self.grid_hw[0] * self.grid_hw[1]
        self.num_tokens = self.num_patches // (m * m)
        self.patch_dim = cfg.in_channels * cfg.temporal_patch_size * p * p

        # Module names mirror Glm4vVisionModel so state-dict keys match the checkpoint.
        self.embeddings = Embeddings(cfg)
        self.patch_embed = PatchEmbed(cfg)
        self.post_conv_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.post_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        # Checkpoint: Conv2d(hidden, out_hidden, kernel = stride = m) over each m x m merge block.
        self.downsample = ConvAsLinear(cfg.hidden_size * m * m, cfg.out_hidden_size, bias=True)
        self.merger = PatchMerger(cfg)

        # Constants for the default resolution; filled by prepare(), never saved.
        self.register_buffer("pos_embed", torch.empty(self.num_patches, cfg.hidden_size), persistent=False)
        self.register_buffer("rope_cos", torch.empty(self.num_patches, head_dim), persistent=False)
        self.register_buffer("rope_sin", torch.empty(self.num_patches, head_dim), persistent=False)
        # The same constants for every other bucket (aspect-preserving sizes sharing these weights).
        self.sizes = tuple(sizes)
        self.bucket_constants = nn.ModuleDict(
            {f"{bh}x{bw}": GridConstants(bh // p * (bw // p), cfg.hidden_size, head_dim) for bh, bw in sizes[1:]}
        )
        self.prepare()

    @torch.no_grad()
    def prepare(self) -> None:
        """Recompute every resolution-dependent constant from the current weights."""
        weight = self.embeddings.position_embedding.weight
        if weight.is_meta:
            return  # weights not materialised yet; call again after loading
        p = self.cfg.patch_size
        for (h, w), consts in zip(self.sizes, [self, *self.bucket_constants.values()]):
            gh, gw = h // p, w // p
            hpos, wpos = patch_positions(gh, gw, self.merge)
            # Contiguous on purpose: ExecuTorch's to_edge (convert_constant_dim_order_pass) crashes with
            # "Missing input spec for lifted tensor" on a non-contiguous non-persistent buffer.
            consts.pos_embed = resample_position_embedding(weight, hpos, wpos, gh, gw).contiguous()
            cos, sin = rotary_cos_sin(hpos, wpos, self.head_dim, self.rope_theta)
            consts.rope_cos = cos.to(weight.device).contiguous()
            consts.rope_sin = sin.to(weight.device).contiguous()

    def forward(self, pixel_values: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """``size``: the bucket (height, width) of ``pixel_values`` (None: the default ``image_hw``)."""
        consts = self.constants(size)
        x = self.embed_patches(pixel_values, consts)
        for block in self.blocks:
            x = block(x, consts.rope_cos, consts.rope_sin)
        return self.head(x)

    def constants(self, size: tuple[int, int] | None = None) -> nn.Module:
        """The module holding ``pos_embed``, ``rope_cos`` and ``rope_sin`` of the bucket ``size``."""
        size = self.image_hw if size is None else (int(size[0]), int(size[1]))
        if size not in self.sizes:
            raise ExportError(f"image size {size[0]}x{size[1]} is none of this encoder's sizes {list(self.sizes)}")
        return self if size == self.image_hw else self.bucket_constants[f"{size[0]}x{size[1]}"]

    def embed_patches(self, pixel_values: Tensor, consts: nn.Module) -> Tensor:
        """Patch rows -> the first block's input (patch projection, norm, position embedding)."""
        num_patches = consts.pos_embed.shape[0]
        if tuple(pixel_values.shape) != (num_patches, self.patch_dim):
            raise ExportError(
                f"pixel_values shape {tuple(pixel_values.shape)} != ({num_patches}, {self.patch_dim}) "
                f"expected for a bucket of {num_patches} patches"
            )
        x = self.patch_embed.proj(pixel_values.to(self.post_conv_layernorm.weight.dtype))  # the compute dtype
        x = self.post_conv_layernorm(x)
        return x + consts.pos_embed

    def head(self, x: Tensor) -> Tensor:
        """After the blocks: final norm, the 2x2 patch merge, downsample and merger."""
        return self.merger(self.downsampled(x))

    def downsampled(self, x: Tensor) -> Tensor:
        """The last block's output -> the merger's input (norm, merge blocks, downsample)."""
        x = self.post_layernorm(x)
        # Each merge block is m*m consecutive rows; flatten it as (C, mh, mw), the Conv2d weight's layout.
        c, mm = x.shape[-1], self.merge * self.merge
        tokens = x.shape[0] // mm
        x = x.view(tokens, mm, c).transpose(1, 2).reshape(tokens, c * mm)
        return self.downsample(x)

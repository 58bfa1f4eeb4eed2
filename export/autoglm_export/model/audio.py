"""Export-friendly GLM-ASR audio tower: ``GlmAsrEncoder`` + ``GlmAsrMultiModalProjector``.

A re-implementation of ``GlmAsrModel.get_audio_features`` for ONE clip with a FIXED number of
mel frames, so that every shape is known at export time:

    mel [1, num_mel_bins, T]
      -> conv1 (k3, p1) + GELU -> conv2 (k3, s2, p1) + GELU       T' = ceil(T / 2) frames
      -> N x pre-LN transformer layer (partial rotate-half RoPE)  bidirectional, no mask
      -> LayerNorm
      -> concat merge_factor consecutive frames                  num_tokens = T' // merge_factor
      -> linear_1 -> act -> linear_2                              [num_tokens, text hidden]

Parameter names match the checkpoint (see ``AUDIO_KEY_PREFIXES``); the rotary table is the only
constant and it is a non-persistent buffer rebuilt by ``prepare()``.

Things transformers does that matter here:
* The two conv GELUs are always exact (erf) GELU, whatever ``hidden_act`` says; ``hidden_act``
  only drives the layer MLPs and ``projector_hidden_act`` the projector.
* The encoder attends over all T' frames with no mask; frames left over after merging
  (T' % merge_factor) still take part in attention but are dropped afterwards, exactly as the
  ``input_features_mask`` valid-mask in ``get_audio_features`` drops them.
* The Whisper feature extractor pads every clip to 3000 frames (30 s); the real token count of a
  shorter clip is ``audio_tokens_for_frames(mask.sum())`` and those are the first tokens of the
  3000-frame output. Exporting with ``num_frames=3000`` therefore reproduces transformers exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import AudioConfig
from ..errors import CheckpointError, ExportError
from .rope import rotate_half  # GlmAsr: Llama rotate_half layout, not interleaved pairs

# Checkpoint prefix -> our module prefix (as produced by transformers' save_pretrained).
AUDIO_KEY_PREFIXES = {"model.audio_tower.": "encoder.", "model.multi_modal_projector.": "projector."}
# Hub checkpoints in the older Qwen2-Audio layout; transformers renames these on load.
AUDIO_LEGACY_KEY_PREFIXES = {"audio_tower.": "encoder.", "multi_modal_projector.": "projector."}

# transformers hard-codes 4 when counting audio tokens (processor and get_audio_features).
TRANSFORMERS_MERGE_FACTOR = 4


def conv_out_frames(num_frames: int) -> int:
    """Frames after conv1 (stride 1) and conv2 (stride 2), both kernel 3 padding 1."""
    length = num_frames
    for padding, kernel_size, stride in ((1, 3, 1), (1, 3, 2)):
        length = (length + 2 * padding - (kernel_size - 1) - 1) // stride + 1
    return length


def audio_tokens_for_frames(num_frames: int, merge_factor: int = TRANSFORMERS_MERGE_FACTOR) -> int:
    """Audio placeholder tokens for ``num_frames`` mel frames (GlmAsrProcessor's arithmetic).

    Works on ints and on integer tensors alike.
    """
    length = conv_out_frames(num_frames)
    return (length - merge_factor) // merge_factor + 1


def _activation(name: str, where: str):
    table = {
        "gelu": F.gelu,
        "gelu_new": partial(F.gelu, approximate="tanh"),
        "gelu_pytorch_tanh": partial(F.gelu, approximate="tanh"),
        "relu": F.relu,
        "silu": F.silu,
        "swish": F.silu,
    }
    if name not in table:
        raise CheckpointError(f"{where} '{name}' is not supported; expected one of {', '.join(table)}")
    return table[name]


class AudioAttention(nn.Module):
    def __init__(self, cfg: AudioConfig):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.scaling = self.head_dim**-0.5
        # Bias pattern is GlmAsr's: k_proj has none.
        self.q_proj = nn.Linear(cfg.hidden_size, self.num_heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(cfg.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, self.num_kv_heads * self.head_dim, bias=True)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, cfg.hidden_size, bias=True)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        seq = x.shape[0]
        q = self.q_proj(x).view(seq, self.num_heads, self.head_dim).transpose(0, 1)
        k = self.k_proj(x).view(seq, self.num_kv_heads, self.head_dim).transpose(0, 1)
        v = self.v_proj(x).view(seq, self.num_kv_heads, self.head_dim).transpose(0, 1)

        # Partial rotary: only the first rotary_dim channels of each head rotate.
        rot = cos.shape[-1]
        q = torch.cat((q[..., :rot] * cos + rotate_half(q[..., :rot]) * sin, q[..., rot:]), dim=-1)
        k = torch.cat((k[..., :rot] * cos + rotate_half(k[..., :rot]) * sin, k[..., rot:]), dim=-1)

        groups = self.num_heads // self.num_kv_heads
        if groups > 1:
            # Query head h reads kv head h // groups (same order as transformers' repeat_kv).
            k = k[:, None].expand(self.num_kv_heads, groups, seq, self.head_dim).reshape(self.num_heads, seq, -1)
            v = v[:, None].expand(self.num_kv_heads, groups, seq, self.head_dim).reshape(self.num_heads, seq, -1)

        scores = torch.matmul(q, k.transpose(1, 2)) * self.scaling
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        out = torch.matmul(probs, v).transpose(0, 1).reshape(seq, self.num_heads * self.head_dim)
        return self.o_proj(out)


class AudioMLP(nn.Module):
    def __init__(self, cfg: AudioConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.act = _activation(cfg.hidden_act, "audio_config.hidden_act")

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class AudioEncoderLayer(nn.Module):
    def __init__(self, cfg: AudioConfig):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(cfg.hidden_size)
        self.self_attn = AudioAttention(cfg)
        self.post_attention_layernorm = nn.LayerNorm(cfg.hidden_size)
        self.mlp = AudioMLP(cfg)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class AudioTower(nn.Module):
    """Mirrors ``GlmAsrEncoder``'s parameter layout; works on one clip without a batch dim."""

    def __init__(self, cfg: AudioConfig):
        super().__init__()
        self.conv1 = nn.Conv1d(cfg.num_mel_bins, cfg.hidden_size, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(cfg.hidden_size, cfg.hidden_size, kernel_size=3, stride=2, padding=1)
        self.layers = nn.ModuleList(AudioEncoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = nn.LayerNorm(cfg.hidden_size)

    def forward(self, features: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        x = F.gelu(self.conv1(features))  # exact GELU regardless of hidden_act, as in transformers
        x = F.gelu(self.conv2(x))
        x = x[0].transpose(0, 1)  # [T', hidden]
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.norm(x)


class AudioProjector(nn.Module):
    """Mirrors ``GlmAsrMultiModalProjector``: merged frames -> LLM embedding space."""

    def __init__(self, cfg: AudioConfig):
        super().__init__()
        self.linear_1 = nn.Linear(cfg.intermediate_size, cfg.projector_out * 2)
        self.act = _activation(cfg.projector_hidden_act, "projector_hidden_act")
        self.linear_2 = nn.Linear(cfg.projector_out * 2, cfg.projector_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class AudioEncoder(nn.Module):
    """GLM-ASR audio tower + projector for one clip of exactly ``num_frames`` mel frames.

    ``forward([1, num_mel_bins, num_frames]) -> [num_tokens, projector_out]`` equals
    ``GlmAsrModel.get_audio_features(x, input_features_mask=ones).pooler_output``.
    Call ``prepare()`` after loading weights or moving the module to another device/dtype.
    """

    def __init__(self, cfg: AudioConfig, num_frames: int):
        super().__init__()
        if cfg.num_attention_heads % cfg.num_key_value_heads:
            raise CheckpointError(
                f"audio_config: num_attention_heads {cfg.num_attention_heads} is not a multiple of "
                f"num_key_value_heads {cfg.num_key_value_heads}"
            )
        if cfg.merge_factor * cfg.hidden_size != cfg.intermediate_size:
            raise CheckpointError(
                f"audio_config: intermediate_size {cfg.intermediate_size} != merge_factor {cfg.merge_factor} x "
                f"hidden_size {cfg.hidden_size}; the projector input is merge_factor concatenated frames"
            )
        if cfg.merge_factor != TRANSFORMERS_MERGE_FACTOR:
            # The processor emits T'//4 placeholders whatever the checkpoint says, so any other
            # factor would disagree with the prompt's token count.
            raise CheckpointError(
                f"audio_config: intermediate_size / hidden_size = {cfg.merge_factor}, but GLM-ASR "
                f"(transformers' processor and get_audio_features) assumes {TRANSFORMERS_MERGE_FACTOR}"
            )
        self.rotary_dim = int(cfg.head_dim * cfg.partial_rotary_factor)
        if self.rotary_dim % 2:
            raise CheckpointError(
                f"audio_config: rotary dimension {self.rotary_dim} (head_dim {cfg.head_dim} x partial_rotary_factor "
                f"{cfg.partial_rotary_factor}) must be even"
            )
        self.cfg = cfg
        self.num_frames = int(num_frames)
        self.num_positions = conv_out_frames(self.num_frames)
        self.merge_factor = cfg.merge_factor
        self.num_tokens = audio_tokens_for_frames(self.num_frames, self.merge_factor)
        if self.num_tokens < 1:
            raise ExportError(
                f"audio num_frames {num_frames} gives no audio tokens; need at least "
                f"{2 * self.merge_factor - 1} mel frames"
            )

        self.encoder = AudioTower(cfg)
        self.projector = AudioProjector(cfg)
        self.register_buffer("rope_cos", torch.empty(0), persistent=False)
        self.register_buffer("rope_sin", torch.empty(0), persistent=False)
        self.prepare()

    @torch.no_grad()
    def prepare(self) -> None:
        """Rebuild the rotary table for the fixed length on the weights' device and dtype."""
        weight = self.encoder.conv1.weight
        dim = self.rotary_dim
        # Same float32 recipe as GlmAsrRotaryEmbedding (default rope, attention_scaling 1.0).
        inv_freq = 1.0 / (self.cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
        positions = torch.arange(self.num_positions, dtype=torch.float)
        freqs = positions[:, None] * inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)  # [T', rotary_dim], rotate-half layout
        self.rope_cos = emb.cos().to(device=weight.device, dtype=weight.dtype)
        self.rope_sin = emb.sin().to(device=weight.device, dtype=weight.dtype)

    def forward(self, input_features: Tensor) -> Tensor:
        return self.projector(self.merged_frames(input_features))

    def merged_frames(self, input_features: Tensor) -> Tensor:
        """The tower's output, ``merge_factor`` frames concatenated per token: the projector's input."""
        hidden = self.encoder(input_features, self.rope_cos, self.rope_sin)  # [T', hidden]
        # Keep whole groups only; the leftover frames are what the valid-mask drops in transformers.
        kept = self.num_tokens * self.merge_factor
        return hidden[:kept].reshape(self.num_tokens, self.merge_factor * hidden.shape[-1])


def audio_state_dict(checkpoint: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Pick the audio tower + projector tensors out of a GlmAsr state dict and rename them."""
    out: dict[str, Tensor] = {}
    for key, value in checkpoint.items():
        for table in (AUDIO_KEY_PREFIXES, AUDIO_LEGACY_KEY_PREFIXES):
            prefix = next((p for p in table if key.startswith(p)), None)
            if prefix is not None:
                out[table[prefix] + key[len(prefix) :]] = value
                break
    return out


def load_audio_weights(model: AudioEncoder, checkpoint: Mapping[str, Tensor], source: str = "checkpoint") -> None:
    """Load the audio tensors of ``checkpoint`` into ``model`` (strict) and rebuild constants."""
    state = audio_state_dict(checkpoint)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: audio weights do not match the config "
            f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''})"
        )
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise CheckpointError(
                f"{source}: {key} has shape {list(value.shape)}, expected {list(expected[key].shape)}"
            )
    model.load_state_dict(state, strict=True)
    model.prepare()


__all__ = [
    "AUDIO_KEY_PREFIXES",
    "AUDIO_LEGACY_KEY_PREFIXES",
    "AudioEncoder",
    "audio_state_dict",
    "audio_tokens_for_frames",
    "conv_out_frames",
    "load_audio_weights",
]

"""Model configuration: plain dataclasses parsed from a Hugging Face ``config.json``.

One ``ModelConfig`` describes the whole family: a GLM-4.1V text decoder (dense or MoE),
the GLM-4.1V vision tower, and an optional GLM-ASR audio tower. Parsing is explicit so that a
config of another model type fails with a message naming the file and the field.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CheckpointError, values_of

SUPPORTED_MODEL_TYPES = ("glm4v", "glm4v_moe")
AUDIO_MODEL_TYPES = ("glmasr",)


@dataclass(frozen=True)
class TextConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    partial_rotary_factor: float = 0.5
    mrope_section: tuple[int, ...] = (8, 12, 12)
    hidden_act: str = "silu"
    attention_bias: bool = True
    tie_word_embeddings: bool = False
    # "glm4v": sandwich norms, fused gate_up MLP, interleaved rotary pairs.
    # "glm4v_moe": two norms, split gate/up MLP, half-split rotary (see transformers' Glm4vMoe).
    arch: str = "glm4v"
    head_dim: int = 0  # resolved at parse time; 0 means hidden_size // num_attention_heads
    # MoE (Glm4vMoe). n_routed_experts == 0 means a dense decoder.
    n_routed_experts: int = 0
    n_shared_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    first_k_dense_replace: int = 0
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 1.0
    n_group: int = 1
    topk_group: int = 1

    def __post_init__(self):
        if not self.head_dim:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)

    @property
    def sandwich_norms(self) -> bool:
        return self.arch == "glm4v"

    @property
    def rope_interleaved(self) -> bool:
        return self.arch == "glm4v"

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def is_moe(self) -> bool:
        return self.n_routed_experts > 0

    def is_moe_layer(self, layer_idx: int) -> bool:
        return self.is_moe and layer_idx >= self.first_k_dense_replace


@dataclass(frozen=True)
class VisionConfig:
    depth: int
    hidden_size: int
    num_heads: int
    intermediate_size: int
    out_hidden_size: int
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    in_channels: int = 3
    image_size: int = 336  # the learned position-embedding grid is image_size // patch_size square
    rms_norm_eps: float = 1e-5
    hidden_act: str = "silu"
    attention_bias: bool = False
    rope_theta: float = 10000.0


@dataclass(frozen=True)
class AudioConfig:
    """GlmAsrEncoder + GlmAsrMultiModalProjector. ``projector_out`` is the LLM hidden size."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    projector_out: int
    num_mel_bins: int = 128
    hidden_act: str = "gelu"
    projector_hidden_act: str = "gelu"
    max_position_embeddings: int = 1500
    rope_theta: float = 10000.0
    partial_rotary_factor: float = 0.5
    merge_factor: int = 4  # encoder frames concatenated per projected token (intermediate/hidden)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass(frozen=True)
class ModelConfig:
    model_type: str
    text: TextConfig
    vision: VisionConfig
    audio: AudioConfig | None = None
    image_token_id: int = 151343
    image_start_token_id: int = 151339
    image_end_token_id: int = 151340
    eos_token_ids: tuple[int, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def with_audio(self, audio: AudioConfig | None) -> ModelConfig:
        return dataclasses.replace(self, audio=audio)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- parsing


def _take(cls, src: dict[str, Any], where: str, **overrides):
    """Build dataclass ``cls`` from the keys of ``src`` it knows; required keys must exist."""
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in overrides:
            kwargs[f.name] = overrides[f.name]
        elif f.name in src and src[f.name] is not None:
            kwargs[f.name] = src[f.name]
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise CheckpointError(f"{where}: required field '{f.name}' is missing")
    for f in dataclasses.fields(cls):
        if f.type in ("int", "float", "bool") and f.name in kwargs:
            kwargs[f.name] = {"int": int, "float": float, "bool": bool}[f.type](kwargs[f.name])
    return cls(**kwargs)


def _rope(text: dict[str, Any], default_partial: float) -> dict[str, Any]:
    """Normalise new (``rope_parameters``) and legacy (``rope_scaling`` + top level) rope fields."""
    params = dict(text.get("rope_scaling") or {})
    params.update(text.get("rope_parameters") or {})
    out: dict[str, Any] = {}
    theta = params.get("rope_theta", text.get("rope_theta"))
    if theta is not None:
        out["rope_theta"] = float(theta)
    factor = params.get("partial_rotary_factor", text.get("partial_rotary_factor"))
    if factor is not None:
        out["partial_rotary_factor"] = float(factor)
    else:
        out["partial_rotary_factor"] = default_partial  # transformers' per-model default
    section = params.get("mrope_section")
    if section is not None:
        out["mrope_section"] = tuple(int(s) for s in section)
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ("default", "mrope"):
        raise CheckpointError(f"text_config: rope type '{rope_type}' is not supported (only default M-RoPE)")
    return out


def _image_size(value: Any) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise CheckpointError(f"vision_config.image_size {value}: only square position grids are supported")
        return int(value[0])
    return int(value)


def parse_text_config(text: dict[str, Any], where: str, arch: str = "glm4v") -> TextConfig:
    text = dict(text)
    if text.get("num_key_value_heads") is None:
        text["num_key_value_heads"] = text.get("num_attention_heads")
    if arch == "glm4v":
        # Glm4vTextAttention ignores config.head_dim and always uses hidden_size // heads.
        text.pop("head_dim", None)
        text["attention_bias"] = True
    # Glm4vMoeTextConfig defaults partial_rotary_factor to 0.5; Glm4vTextConfig to 1.0.
    rope = _rope(text, 0.5 if arch == "glm4v_moe" else 1.0)
    cfg = _take(TextConfig, {**text, **rope}, where, arch=arch)
    if cfg.num_attention_heads % cfg.num_key_value_heads:
        raise CheckpointError(
            f"{where}: num_attention_heads {cfg.num_attention_heads} is not a multiple of "
            f"num_key_value_heads {cfg.num_key_value_heads}"
        )
    if sum(cfg.mrope_section) * 2 != cfg.rotary_dim:
        raise CheckpointError(
            f"{where}: mrope_section {list(cfg.mrope_section)} sums to {sum(cfg.mrope_section)} but the rotary "
            f"dimension is {cfg.rotary_dim} (head_dim {cfg.head_dim} x partial_rotary_factor "
            f"{cfg.partial_rotary_factor}); expected sum {cfg.rotary_dim // 2}"
        )
    return cfg


def parse_vision_config(vision: dict[str, Any], where: str) -> VisionConfig:
    vision = dict(vision)
    for key in ("patch_size", "temporal_patch_size"):
        if isinstance(vision.get(key), (list, tuple)):
            vision[key] = vision[key][0]
    if "image_size" in vision:
        vision["image_size"] = _image_size(vision["image_size"])
    theta = (vision.get("rope_parameters") or {}).get("rope_theta")
    if theta is not None:
        vision["rope_theta"] = float(theta)
    return _take(VisionConfig, vision, where)


def parse_model_config(raw: dict[str, Any], source: str = "config.json") -> ModelConfig:
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(
            f"{source}: model_type '{model_type}' is not supported; expected one of {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    if "text_config" not in raw or "vision_config" not in raw:
        raise CheckpointError(f"{source}: needs both 'text_config' and 'vision_config'")
    text_raw = dict(raw["text_config"])
    text_raw.setdefault("tie_word_embeddings", raw.get("tie_word_embeddings", False))
    text = parse_text_config(text_raw, f"{source}: text_config", arch=model_type)
    vision = parse_vision_config(raw["vision_config"], f"{source}: vision_config")
    if vision.out_hidden_size != text.hidden_size:
        raise CheckpointError(
            f"{source}: vision_config.out_hidden_size {vision.out_hidden_size} != text hidden_size {text.hidden_size}"
        )
    eos = raw.get("eos_token_id", text_raw.get("eos_token_id"))
    eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else ((eos,) if eos is not None else ())
    defaults = {"glm4v": 151343, "glm4v_moe": 151363}
    return ModelConfig(
        model_type=model_type,
        text=text,
        vision=vision,
        image_token_id=int(raw.get("image_token_id", defaults[model_type])),
        image_start_token_id=int(raw.get("image_start_token_id", 151339)),
        image_end_token_id=int(raw.get("image_end_token_id", 151340)),
        eos_token_ids=tuple(int(e) for e in eos_ids),
    )


def parse_audio_config(raw: dict[str, Any], source: str = "config.json") -> AudioConfig:
    """Parse a GlmAsr ``config.json`` (GlmAsrForConditionalGeneration) into an AudioConfig."""
    if raw.get("model_type") not in AUDIO_MODEL_TYPES:
        raise CheckpointError(
            f"{source}: model_type '{raw.get('model_type')}' is not an audio checkpoint; expected 'glmasr'"
        )
    audio = dict(raw.get("audio_config") or {})
    text = dict(raw.get("text_config") or {})
    if "hidden_size" not in text:
        raise CheckpointError(f"{source}: text_config.hidden_size is required to size the projector")
    params = dict(audio.get("rope_parameters") or {})
    if audio.get("num_key_value_heads") is None and "num_attention_heads" in audio:
        audio["num_key_value_heads"] = audio["num_attention_heads"]
    hidden, inter = audio.get("hidden_size", 1280), audio.get("intermediate_size", 5120)
    merged = {
        "hidden_size": 1280,
        "intermediate_size": 5120,
        "num_hidden_layers": 32,
        "num_attention_heads": 20,
        "num_key_value_heads": 20,
        **audio,
        "rope_theta": params.get("rope_theta", audio.get("rope_theta", 10000.0)),
        "partial_rotary_factor": params.get("partial_rotary_factor", audio.get("partial_rotary_factor", 0.5)),
        "projector_hidden_act": raw.get("projector_hidden_act", "gelu"),
        "projector_out": int(text["hidden_size"]),
        "merge_factor": int(inter) // int(hidden) if int(inter) % int(hidden) == 0 else 0,
    }
    cfg = _take(AudioConfig, merged, f"{source}: audio_config")
    if cfg.merge_factor <= 0:
        raise CheckpointError(
            f"{source}: audio intermediate_size {inter} must be a multiple of hidden_size {hidden} "
            "(GlmAsr concatenates encoder frames into projector inputs)"
        )
    return cfg


def read_json(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    except (OSError, RecursionError) as exc:
        raise CheckpointError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(raw).__name__}")
    return raw


def checked_checkpoint_dir(path: Path) -> Path:
    """The checkpoint directory itself must exist: otherwise the error would name its config.json."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory (a checkpoint is a directory with config.json and safetensors)")
    return path


def load_model_config(checkpoint_dir: Path) -> ModelConfig:
    checkpoint_dir = checked_checkpoint_dir(checkpoint_dir)
    path = checkpoint_dir / "config.json"
    with values_of(path):
        cfg = parse_model_config(read_json(path), str(path))
    gen_path = Path(checkpoint_dir) / "generation_config.json"
    if not cfg.eos_token_ids and gen_path.exists():
        with values_of(gen_path):
            eos = read_json(gen_path).get("eos_token_id")
            if eos is not None:
                eos_ids = tuple(eos) if isinstance(eos, list) else (eos,)
                cfg = dataclasses.replace(cfg, eos_token_ids=tuple(int(e) for e in eos_ids))
    return cfg


def load_audio_config(checkpoint_dir: Path) -> AudioConfig:
    path = checked_checkpoint_dir(checkpoint_dir) / "config.json"
    with values_of(path):
        return parse_audio_config(read_json(path), str(path))

"""checkpoint directory -> ready-to-run ``AutoGLM`` (weights assigned, constants materialised)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import (
    GLM4V_KEY_TABLE,
    GLMASR_IGNORED,
    GLMASR_KEY_TABLE,
    SafetensorsCheckpoint,
    load_weights,
    match_weights,
)
from .config import ModelConfig, load_audio_config, load_model_config
from .errors import CheckpointError
from .model.autoglm import AutoGLM, ExportShape
from .stored import stored_names

log = logging.getLogger(__name__)


def load_config(checkpoint: Path, audio_checkpoint: Path | None = None) -> ModelConfig:
    cfg = load_model_config(checkpoint)
    if audio_checkpoint is not None:
        audio = load_audio_config(audio_checkpoint)
        if audio.projector_out != cfg.text.hidden_size:
            raise CheckpointError(
                f"{Path(audio_checkpoint) / 'config.json'}: audio projector outputs {audio.projector_out} "
                f"features but the text decoder's hidden size is {cfg.text.hidden_size}"
            )
        cfg = cfg.with_audio(audio)
    return cfg


def load_model(
    checkpoint: str | Path,
    shape: ExportShape,
    audio_checkpoint: str | Path | None = None,
    dtype: torch.dtype | None = torch.float32,
    keep_stored: bool = False,
) -> AutoGLM:
    """``dtype``: floating weights are converted to it as they are read (only the converted copy is
    ever resident); ``None`` keeps them as stored (bf16 for real checkpoints), memory-mapped.
    ``keep_stored``: linear weights and the token embedding stay as stored, the rest is ``dtype``
    (``stored.py``: such a model is made fp32 one module at a time)."""
    checkpoint = Path(checkpoint)
    audio_checkpoint = Path(audio_checkpoint) if audio_checkpoint is not None else None
    cfg = load_config(checkpoint, audio_checkpoint)
    model = meta_model(cfg, shape)
    stored = stored_names(model) if keep_stored else frozenset()
    for path, kwargs in _weight_sources(cfg, checkpoint, audio_checkpoint):
        skipped = load_weights(model, SafetensorsCheckpoint.open(path), dtype=dtype, keep_stored=stored, **kwargs)
        if skipped:
            log.info("%s: skipped %d tensors not used at inference (e.g. %s)", path, len(skipped), skipped[0])
    model.prepare()
    leftovers = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftovers:  # a bug, not a user error: prepare() forgot a constant
        raise RuntimeError(f"tensors left on the meta device after loading: {leftovers[:5]}")
    return model.eval()


@dataclass(frozen=True)
class CheckpointSummary:
    path: Path
    shards: int
    tensors: int  # tensors the model uses
    nbytes: int  # their stored bytes
    dtypes: tuple[str, ...]
    skipped: int  # tensors present but not used (MTP layers, GlmAsr's LLM)


def check_checkpoint(
    model: AutoGLM, checkpoint: str | Path, audio_checkpoint: str | Path | None = None
) -> list[CheckpointSummary]:
    """Check names and shapes of the checkpoint(s) against ``model`` (meta is fine): headers only, no weights."""
    out = []
    for path, kwargs in _weight_sources(model.cfg, Path(checkpoint), audio_checkpoint):
        ckpt = SafetensorsCheckpoint.open(path)
        plan = match_weights(model, ckpt, **kwargs)
        keys = list(plan.mapped.values())
        out.append(
            CheckpointSummary(
                path,
                len(ckpt.headers),
                len(keys),
                sum(ckpt.nbytes(k) for k in keys),
                tuple(sorted({ckpt.dtype_name(k) for k in keys})),
                len(plan.skipped),
            )
        )
    return out


def _weight_sources(cfg: ModelConfig, checkpoint: Path, audio_checkpoint):
    """(checkpoint, match_weights arguments) for the model's weights, then the audio tower's."""
    yield (
        checkpoint,
        {"table": GLM4V_KEY_TABLE, "scope": ("text.", "vision."), "num_text_layers": cfg.text.num_hidden_layers},
    )
    if audio_checkpoint is not None:
        yield Path(audio_checkpoint), {"table": GLMASR_KEY_TABLE, "scope": "audio.", "ignored_prefixes": GLMASR_IGNORED}


def meta_model(cfg: ModelConfig, shape: ExportShape) -> AutoGLM:
    """The model with every weight on the meta device: shapes and counts, no memory."""
    with torch.device("meta"):  # no allocation: a loader assigns weights tensor by tensor
        return AutoGLM(cfg, shape)


def random_model(cfg: ModelConfig, shape: ExportShape, seed: int = 0) -> AutoGLM:
    """A seeded random model (benchmark presets that have no weights)."""
    torch.manual_seed(seed)
    model = AutoGLM(cfg, shape)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name or "norm1" in name or "norm2" in name:
                p.fill_(1.0)
            elif p.dim() >= 2:
                p.normal_(0.0, 0.02)
            else:
                p.zero_()
    model.prepare()
    return model.eval()

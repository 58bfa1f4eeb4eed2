"""Lazy safetensors loading and the Hugging Face name -> module name table.

Tensors are read one at a time from memory-mapped files and assigned straight into a model built
on the meta device, so a checkpoint is never held in memory twice. Only safetensors are read:
there is no pickle path at all.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError, safe_open

from .errors import CheckpointError

# (checkpoint prefix, module prefix). First match wins; order matters for the legacy layout.
GLM4V_KEY_TABLE: tuple[tuple[str, str], ...] = (
    ("model.language_model.", "text."),
    ("model.visual.", "vision."),
    ("lm_head.", "text.lm_head."),
    # Legacy GLM-4.1V layout (transformers < 4.52): text weights directly under "model.".
    ("model.", "text."),
)
# GlmAsr files on disk use the legacy layout (audio_tower.*, language_model.model.*); transformers
# renames to model.* only in memory. Accept both.
GLMASR_KEY_TABLE: tuple[tuple[str, str], ...] = (
    ("model.audio_tower.", "audio.encoder."),
    ("model.multi_modal_projector.", "audio.projector."),
    ("audio_tower.", "audio.encoder."),
    ("multi_modal_projector.", "audio.projector."),
)
# GlmAsr's own language model is not ours to load.
GLMASR_IGNORED = ("model.language_model.", "language_model.", "lm_head.")


def _list_names(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


@dataclass
class SafetensorsCheckpoint:
    """All tensors of a checkpoint directory, single-file or sharded, opened lazily."""

    directory: Path
    key_to_file: dict[str, Path] = field(default_factory=dict)

    @classmethod
    def open(cls, directory: str | Path) -> "SafetensorsCheckpoint":
        directory = Path(directory)
        if not directory.is_dir():
            raise CheckpointError(f"{directory}: checkpoint directory not found")
        if list(directory.glob("*.bin")) and not list(directory.glob("*.safetensors")):
            raise CheckpointError(f"{directory}: only pickle (.bin) weights found; convert them to safetensors first")
        index = directory / "model.safetensors.index.json"
        ckpt = cls(directory)
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as exc:
                raise CheckpointError(f"{index}: not a valid safetensors index ({exc})") from None
            for key, fname in weight_map.items():
                ckpt.key_to_file[key] = directory / fname
            for shard in sorted(set(ckpt.key_to_file.values())):
                ckpt._check_shard(shard, [k for k, f in ckpt.key_to_file.items() if f == shard])
        else:
            files = sorted(directory.glob("*.safetensors"))
            if not files:
                raise CheckpointError(f"{directory}: no model.safetensors or model.safetensors.index.json")
            for shard in files:
                for key in ckpt._check_shard(shard, None):
                    ckpt.key_to_file[key] = shard
        return ckpt

    @staticmethod
    def _check_shard(path: Path, expected_keys: list[str] | None) -> list[str]:
        """Open a shard and verify its header against the file size (catches truncation early)."""
        if not path.exists():
            raise CheckpointError(f"{path}: shard listed in the index is missing")
        try:
            with safe_open(str(path), framework="pt") as f:
                keys = list(f.keys())
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({exc})") from None
        if expected_keys is not None:
            absent = sorted(set(expected_keys) - set(keys))
            if absent:
                raise CheckpointError(f"{path}: index lists tensors the shard lacks: {_list_names(absent)}")
        return keys

    def keys(self) -> list[str]:
        return list(self.key_to_file)

    def shape(self, key: str) -> tuple[int, ...]:
        with safe_open(str(self.key_to_file[key]), framework="pt") as f:
            return tuple(f.get_slice(key).get_shape())

    def tensors(self, keys: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield tensors grouped by shard so each file is opened once."""
        by_file: dict[Path, list[str]] = {}
        for key in keys:
            by_file.setdefault(self.key_to_file[key], []).append(key)
        for path, file_keys in by_file.items():
            try:
                with safe_open(str(path), framework="pt") as f:
                    for key in file_keys:
                        yield key, f.get_tensor(key)
            except SafetensorError as exc:
                raise CheckpointError(f"{path}: cannot read tensor data ({exc})") from None


def map_key(key: str, table: tuple[tuple[str, str], ...]) -> str | None:
    for src, dst in table:
        if key.startswith(src):
            return dst + key[len(src) :]
    return None


def _shape_matches(stored: tuple[int, ...], wanted: tuple[int, ...]) -> bool:
    """Equal, or a conv kernel [out, C, *k] stored for our stride==kernel ConvAsLinear [out, C*prod(k)]."""
    if stored == wanted:
        return True
    return len(stored) > 2 and len(wanted) == 2 and stored[0] == wanted[0] and math.prod(stored[1:]) == wanted[1]


_LAYER_RE = re.compile(r"^text\.layers\.(\d+)\.")


def load_weights(
    model: torch.nn.Module,
    ckpt: SafetensorsCheckpoint,
    table: tuple[tuple[str, str], ...],
    *,
    scope: str,
    ignored_prefixes: tuple[str, ...] = (),
    num_text_layers: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> list[str]:
    """Assign every parameter/persistent buffer under ``scope`` from ``ckpt``; strict on all sides.

    Returns the checkpoint keys deliberately skipped (e.g. MTP layers), for logging.
    """
    expected = {k: v for k, v in model.state_dict(keep_vars=True).items() if k.startswith(scope)}
    mapped: dict[str, str] = {}
    unexpected, skipped = [], []
    for key in ckpt.keys():
        if key.startswith(ignored_prefixes):
            skipped.append(key)
            continue
        name = map_key(key, table)
        if name is None or name not in expected:
            layer = _LAYER_RE.match(name or "")
            if layer and num_text_layers is not None and int(layer.group(1)) >= num_text_layers:
                skipped.append(key)  # next-token-prediction (MTP) layers beyond the decoder
                continue
            unexpected.append(key)
            continue
        mapped[name] = key
    tied = "text.lm_head.weight" in expected and "text.lm_head.weight" not in mapped
    missing = sorted(set(expected) - set(mapped) - ({"text.lm_head.weight"} if tied else set()))
    if tied and "text.embed_tokens.weight" not in mapped:
        missing.append("text.lm_head.weight")
    problems = []
    if missing:
        problems.append(f"missing tensors: {_list_names(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {_list_names(sorted(unexpected))}")
    mis_shaped = [
        f"{ckpt_key} {list(ckpt.shape(ckpt_key))} != {list(expected[name].shape)}"
        for name, ckpt_key in mapped.items()
        if not _shape_matches(ckpt.shape(ckpt_key), tuple(expected[name].shape))
    ]
    if mis_shaped:
        problems.append(f"mis-shaped tensors: {_list_names(mis_shaped)}")
    if problems:
        raise CheckpointError(f"{ckpt.directory}: checkpoint does not match the model; " + "; ".join(problems))

    reverse = {key: name for name, key in mapped.items()}
    state = {}
    for key, tensor in ckpt.tensors(list(mapped.values())):
        state[reverse[key]] = tensor.to(dtype) if tensor.is_floating_point() else tensor
    if tied:
        state["text.lm_head.weight"] = state["text.embed_tokens.weight"]
    model.load_state_dict(state, strict=False, assign=True)
    return skipped

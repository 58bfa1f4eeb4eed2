"""Lazy safetensors loading and the Hugging Face name -> module name table.

Tensors are assigned straight into a model built on the meta device, so a checkpoint is never
held in memory twice. Two ways to read one:
- as stored (``dtype=None``): a zero-copy view of a private memory map of the shard; pages come
  in from the page cache when first used and the process holds each weight once, as file pages;
- converted (``dtype=torch.float32``): read with plain file reads in small chunks straight into the
  converted tensor, so only the converted copy is resident (never the stored bytes as well).
Only safetensors are read: there is no pickle path at all.
"""

from __future__ import annotations

import ctypes
import json
import math
import mmap
import re
import struct
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

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
# safetensors dtype names -> torch dtypes.
ST_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
READ_CHUNK_BYTES = 64 << 20  # converted reads: at most this much of the stored bytes at once


def _list_names(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


@dataclass
class SafetensorsCheckpoint:
    """All tensors of a checkpoint directory, single-file or sharded, opened lazily."""

    directory: Path
    key_to_file: dict[str, Path] = field(default_factory=dict)
    # shard -> (offset of its data section, {key: (dtype, shape, begin, end)})
    headers: dict[Path, tuple[int, dict[str, tuple[str, tuple[int, ...], int, int]]]] = field(default_factory=dict)
    # Shards in the directory that the index does not list (named when tensors turn out missing).
    unlisted: list[str] = field(default_factory=list)
    unindexed: dict[str, str] = field(default_factory=dict)  # key -> shard file name holding it
    _maps: dict[Path, torch.Tensor] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, directory: str | Path) -> SafetensorsCheckpoint:
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
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise CheckpointError(f"{index}: not a valid safetensors index ({exc})") from None
            for key, fname in weight_map.items():
                ckpt.key_to_file[key] = directory / fname
            listed = set(ckpt.key_to_file.values())
            for shard in sorted(listed):
                keys = ckpt._check_shard(shard, [k for k, f in ckpt.key_to_file.items() if f == shard])
                ckpt.unindexed.update({k: shard.name for k in keys if k not in weight_map})
            ckpt.unlisted = sorted(p.name for p in directory.glob("*.safetensors") if p not in listed)
            for name in ckpt.unlisted:
                try:  # best effort, only to name the shard when tensors turn out missing
                    ckpt.unindexed.update({k: name for k in _read_header(directory / name)[1]})
                except (OSError, ValueError, KeyError, struct.error):
                    pass
        else:
            files = sorted(directory.glob("*.safetensors"))
            if not files:
                raise CheckpointError(f"{directory}: no model.safetensors or model.safetensors.index.json")
            for shard in files:
                for key in ckpt._check_shard(shard, None):
                    ckpt.key_to_file[key] = shard
        return ckpt

    def _check_shard(self, path: Path, expected_keys: list[str] | None) -> list[str]:
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
        self.headers[path] = _read_header(path)
        return keys

    def keys(self) -> list[str]:
        return list(self.key_to_file)

    def _entry(self, key: str) -> tuple[str, tuple[int, ...], int, int]:
        return self.headers[self.key_to_file[key]][1][key]

    def shape(self, key: str) -> tuple[int, ...]:
        return self._entry(key)[1]

    def dtype_name(self, key: str) -> str:
        return self._entry(key)[0]

    def nbytes(self, key: str) -> int:
        _, _, begin, end = self._entry(key)
        return end - begin

    def tensors(self, keys: list[str], dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield tensors grouped by shard. ``dtype=None``: zero-copy memory-mapped views as stored;
        otherwise floating tensors are read and converted to ``dtype`` chunk by chunk."""
        by_file: dict[Path, list[str]] = {}
        for key in keys:
            by_file.setdefault(self.key_to_file[key], []).append(key)
        for path, file_keys in by_file.items():
            start, entries = self.headers[path]
            with open(path, "rb") as f:
                for key in file_keys:
                    name, shape, begin, end = entries[key]
                    stored = _torch_dtype(name, path, key)
                    if dtype is None:
                        yield key, self._view(path, start + begin, start + end, stored, shape)
                    else:
                        target = dtype if stored.is_floating_point else stored
                        yield key, _read(f, path, key, start + begin, end - begin, stored, shape, target)

    def view(self, key: str) -> torch.Tensor:
        """One tensor as stored, a zero-copy memory-mapped view (``tensors`` with ``dtype=None``)."""
        path = self.key_to_file[key]
        start, entries = self.headers[path]
        name, shape, begin, end = entries[key]
        return self._view(path, start + begin, start + end, _torch_dtype(name, path, key), shape)

    def _view(self, path: Path, begin: int, end: int, dtype: torch.dtype, shape) -> torch.Tensor:
        buf = self._maps.get(path)
        if buf is None:
            with open(path, "rb") as f:
                # ACCESS_COPY: a private mapping, so in-place edits of a weight never reach the file.
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
            buf = self._maps[path] = torch.frombuffer(mm, dtype=torch.uint8)  # keeps mm alive
        raw = buf[begin:end]
        if begin % dtype.itemsize:  # unaligned data (foreign writer): fall back to a copy
            raw = raw.clone()
        return raw.view(dtype).reshape(shape)


def _torch_dtype(name: str, path: Path, key: str) -> torch.dtype:
    if name not in ST_DTYPES:
        raise CheckpointError(f"{path}: tensor {key} has unsupported dtype {name}")
    return ST_DTYPES[name]


def _read_header(path: Path) -> tuple[int, dict[str, tuple[str, tuple[int, ...], int, int]]]:
    """(data offset, key -> (dtype, shape, begin, end)) of a shard safe_open already validated."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return 8 + n, {k: (v["dtype"], tuple(v["shape"]), *v["data_offsets"]) for k, v in header.items()}


def _read(f, path: Path, key: str, offset: int, nbytes: int, stored: torch.dtype, shape, dtype: torch.dtype):
    """Read one tensor into a new ``dtype`` tensor, converting READ_CHUNK_BYTES at a time."""
    out = torch.empty(math.prod(shape), dtype=dtype)
    item = stored.itemsize
    step = max(READ_CHUNK_BYTES // item, 1) * item
    raw = torch.empty(min(step, nbytes), dtype=torch.uint8)
    f.seek(offset)
    done = 0
    while done < nbytes:
        n = min(step, nbytes - done)
        got = f.readinto(raw[:n].numpy())
        if got != n:
            raise CheckpointError(f"{path}: tensor {key} ends early (file truncated while reading)")
        out[done // item : (done + n) // item].copy_(raw[:n].view(stored))
        done += n
    return out.reshape(shape)


MADV_PAGEOUT = 21  # Linux >= 5.4: reclaim these pages now; the contents are kept (reread on access)


def release_pages(tensors: Iterable[torch.Tensor]) -> int:
    """Ask the kernel to take back the resident pages of weights loaded as stored (``dtype=None``).

    Non-destructive, unlike MADV_DONTNEED: an untouched page comes back from the file when read
    again and an edited (copied-on-write) one is kept. For passes over a checkpoint larger than
    memory, layer by layer, so resident memory stays near one layer instead of growing to the file
    size. Returns the bytes advised; 0 where the OS has no MADV_PAGEOUT (a hint, never an error).
    """
    if not sys.platform.startswith("linux"):
        return 0
    madvise = ctypes.CDLL(None, use_errno=True).madvise
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    page, advised = mmap.PAGESIZE, 0
    for t in tensors:
        start = -(-t.data_ptr() // page) * page  # whole pages inside the tensor only
        end = (t.data_ptr() + t.numel() * t.element_size()) // page * page
        if end > start and madvise(start, end - start, MADV_PAGEOUT) == 0:
            advised += end - start
    return advised


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


@dataclass
class WeightPlan:
    """Which checkpoint key fills which module tensor, checked on names and shapes only."""

    mapped: dict[str, str]  # module name -> checkpoint key
    skipped: list[str]  # checkpoint keys deliberately not loaded (MTP layers, GlmAsr's LLM)
    tied: bool  # lm_head shares the token embedding


def match_weights(
    model: torch.nn.Module,
    ckpt: SafetensorsCheckpoint,
    table: tuple[tuple[str, str], ...],
    *,
    scope: str | tuple[str, ...],
    ignored_prefixes: tuple[str, ...] = (),
    num_text_layers: int | None = None,
) -> WeightPlan:
    """Map every parameter/persistent buffer under ``scope`` to a checkpoint key; strict on all sides.

    Reads headers only, so it works on a model still on the meta device (``info``)."""
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
    if missing and (ckpt.unindexed or ckpt.unlisted):
        _raise_unindexed(ckpt, table, missing)
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
    return WeightPlan(mapped, skipped, tied)


def _raise_unindexed(ckpt: SafetensorsCheckpoint, table, missing: list[str]) -> None:
    """Missing tensors that sit in a shard the index does not list: name the index and the shard."""
    index = ckpt.directory / "model.safetensors.index.json"
    found = {map_key(key, table): fname for key, fname in ckpt.unindexed.items()}
    hits = [f"{name} (in {found[name]})" for name in missing if name in found]
    if hits:
        raise CheckpointError(f"{index}: does not list tensors its shards hold: {_list_names(hits, 4)}")
    raise CheckpointError(
        f"{index}: does not list shard(s) {_list_names(ckpt.unlisted)}; missing tensors: {_list_names(missing, 4)}"
    )


def load_weights(
    model: torch.nn.Module,
    ckpt: SafetensorsCheckpoint,
    table: tuple[tuple[str, str], ...],
    *,
    scope: str | tuple[str, ...],
    ignored_prefixes: tuple[str, ...] = (),
    num_text_layers: int | None = None,
    dtype: torch.dtype | None = torch.float32,
    keep_stored: frozenset[str] | set[str] = frozenset(),
) -> list[str]:
    """Assign every parameter/persistent buffer under ``scope`` from ``ckpt`` (see ``match_weights``).

    ``dtype``: floating tensors are converted to it; ``None`` keeps them as stored, memory-mapped.
    ``keep_stored``: model names kept as stored (memory-mapped) whatever ``dtype`` says.
    Returns the checkpoint keys deliberately skipped (e.g. MTP layers), for logging.
    """
    plan = match_weights(
        model, ckpt, table, scope=scope, ignored_prefixes=ignored_prefixes, num_text_layers=num_text_layers
    )
    reverse = {key: name for name, key in plan.mapped.items()}
    state = {}
    as_stored = [key for name, key in plan.mapped.items() if name in keep_stored]
    converted = [key for name, key in plan.mapped.items() if name not in keep_stored]
    for keys, kind in ((as_stored, None), (converted, dtype)):
        for key, tensor in ckpt.tensors(keys, kind):
            state[reverse[key]] = tensor
    if plan.tied:
        state["text.lm_head.weight"] = state["text.embed_tokens.weight"]
    model.load_state_dict(state, strict=False, assign=True)
    return plan.skipped

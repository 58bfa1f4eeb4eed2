"""The quantized checkpoint: calibrated (or QAT-trained) integer weights every exporter accepts.

Written by ``autoglm-export calibrate`` and ``autoglm-export qat``; read by ``android``, ``ios`` and
``onnx`` with ``--quantized-checkpoint DIR``. A directory::

    quantization_config.json   format, version, method, recipe, per-layer bits/group, model fingerprint,
                               calibration/training record, sha256 of model.safetensors
    model.safetensors          <fqn>.qweight  int4: uint8 [out, in/2] (grid.pack_int4); int8: int8 [out, in]
                               <fqn>.scales   fp32 [out, in / group_size]
                               <name>         every other parameter of the model (fp32), by our module names

Names are ``autoglm_export.model.AutoGLM`` parameter names (``text.layers.0.self_attn.q_proj``), not
the Hugging Face checkpoint's. The grid is ``grid.py``'s (torchao's symmetric rule, zero point 0), so
each target stores the same integers: ExecuTorch's IntxUnpackedToInt8Tensor, ONNX MatMulNBits
(code + 8 with the default zero point 8), Core ML constexpr_blockwise_shift_scale.
The model the weights belong to is not stored: the exporter opens it as usual (--checkpoint or
--preset) and ``check_matches`` compares its fingerprint (``summary.model_summary``) first.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import SafetensorsCheckpoint
from ..config import read_json
from ..errors import CheckpointError, ExportError, values_of
from . import grid

FORMAT = "autoglm-export/quantized-checkpoint"
VERSION = 1
CONFIG_NAME = "quantization_config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass
class QuantizedLinear:
    codes: torch.Tensor  # int8 [out, in], on the grid of `bits`
    scales: torch.Tensor  # fp32 [out, in // group_size]
    bits: int

    @property
    def group_size(self) -> int:
        return self.codes.shape[1] // self.scales.shape[1]

    def dequantize(self) -> torch.Tensor:
        return grid.dequantize_codes(self.codes, self.scales)


class StoredLinears(Mapping[str, QuantizedLinear]):
    """A loaded checkpoint's linears, each read when asked for from the memory-mapped file (int4 codes
    unpacked then): a 9B checkpoint's 4.5 GB of packed codes are never all in memory, let alone the
    9 GB they unpack to. Only the file's pages in use are resident, and the kernel can take them back."""

    def __init__(self, stored: SafetensorsCheckpoint, layers: dict[str, tuple[int, tuple[int, int]]]):
        self._stored = stored
        self._bits = {fqn: bits for fqn, (bits, _) in layers.items()}
        self._shapes = {fqn: shape for fqn, (_, shape) in layers.items()}

    def shape(self, fqn: str) -> tuple[int, int]:
        """[out, in] from the file's header, without reading the codes."""
        return self._shapes[fqn]

    def __getitem__(self, fqn: str) -> QuantizedLinear:
        bits = self._bits[fqn]
        raw = self._stored.view(f"{fqn}.qweight")
        return QuantizedLinear(grid.unpack_int4(raw) if bits == 4 else raw, self._stored.view(f"{fqn}.scales"), bits)

    def __iter__(self):
        return iter(self._bits)

    def __len__(self) -> int:
        return len(self._bits)


@dataclass
class QuantizedCheckpoint:
    config: dict
    # fqn of the nn.Linear -> weights (``StoredLinears`` when loaded)
    linears: Mapping[str, QuantizedLinear] = field(default_factory=dict)
    params: dict[str, torch.Tensor] = field(default_factory=dict)  # every other parameter, fp32
    path: Path | None = None

    @property
    def method(self) -> str:
        return self.config["method"]

    @property
    def recipe(self) -> dict:
        return self.config["recipe"]

    def linear_shape(self, fqn: str) -> tuple[int, ...]:
        if isinstance(self.linears, StoredLinears):
            return self.linears.shape(fqn)
        return tuple(self.linears[fqn].codes.shape)


# ----------------------------------------------------------------------------- build from a model


def linear_scheme(fqn: str, layer: nn.Linear, recipe) -> tuple[int, int] | None:
    """(bits, group_size) the recipe gives this linear, with the 8da4w -> int8 per-channel fallback; None: fp32."""
    from .recipes import applied_scheme

    scheme = recipe.scheme_for(fqn)
    if scheme == "fp32":
        return None
    if applied_scheme(scheme, layer.in_features, recipe.group_size) == "8da4w":
        return 4, recipe.group_size
    return 8, layer.in_features


def quantizable_linears(model: nn.Module, recipe) -> dict[str, tuple[nn.Linear, int, int]]:
    """fqn -> (module, bits, group_size) for every linear the recipe quantizes: the nn.Linear modules,
    exactly what ``recipes.apply_recipe``'s filter selects (MoE routers are bare parameters: kept fp32)."""
    out = {}
    for fqn, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            scheme = linear_scheme(fqn, mod, recipe)
            if scheme is not None:
                out[fqn] = (mod, *scheme)
    return out


def from_model(model: nn.Module, linears: dict[str, QuantizedLinear], config: dict) -> QuantizedCheckpoint:
    """Package a model whose quantized linears' codes are given; every other parameter is copied (fp32)."""
    weights = {f"{fqn}.weight" for fqn in linears}
    params = {name: p.detach().float().clone() for name, p in model.named_parameters() if name not in weights}
    return QuantizedCheckpoint(config=config, linears=linears, params=params)


# ----------------------------------------------------------------------------- save / load


# Data order in model.safetensors: safetensors' own (dtype, widest first, then name), so a checkpoint
# streamed by ``Writer`` is byte for byte what ``safetensors.torch.save_file`` writes for the same tensors.
_STORED = {torch.float32: ("F32", 2), torch.int8: ("I8", 1), torch.uint8: ("U8", 0)}
WRITE_CHUNK_BYTES = 1 << 26  # rows converted and written at a time (a bf16 token embedding is 1.2 GB at 9B)


def stored_tensors(layers: dict[str, tuple[int, tuple[int, int], int]], params: dict[str, tuple]) -> dict:
    """name -> (dtype, shape) of every tensor in model.safetensors: ``layers`` fqn -> (bits, [out, in],
    group_size) of the quantized linears, ``params`` name -> shape of every other parameter."""
    out: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
    for fqn, (bits, (out_f, in_f), group) in layers.items():
        out[f"{fqn}.qweight"] = (torch.uint8, (out_f, in_f // 2)) if bits == 4 else (torch.int8, (out_f, in_f))
        out[f"{fqn}.scales"] = (torch.float32, (out_f, in_f // group))
    out.update({name: (torch.float32, tuple(shape)) for name, shape in params.items()})
    return out


class Writer:
    """A quantized checkpoint written as its tensors arrive, published atomically by ``finish``.

    Every name and shape is known before any integer is (``stored_tensors``), so the safetensors header
    is written first and each tensor goes straight to its place in the file: a 9B model's codes (about
    10 GB) never sit in memory together. A staging folder next to ``out_dir`` becomes ``out_dir`` only
    when every tensor was written; on an error (``with``) it is removed."""

    def __init__(self, out_dir: Path, layers: dict[str, tuple[int, tuple[int, int], int]], params: dict, force=False):
        from ..bundle import staging_dir

        self.out_dir = Path(out_dir)
        if self.out_dir.exists():
            if not force:
                raise ExportError(f"{self.out_dir} exists; pass --force to overwrite")
            if not (self.out_dir / CONFIG_NAME).is_file():
                raise ExportError(
                    f"{self.out_dir} exists and is not a quantized checkpoint (no {CONFIG_NAME}); refusing to replace it"
                )
        self.layers = {
            fqn: {"bits": bits, "group_size": group, "shape": list(shape)}
            for fqn, (bits, shape, group) in sorted(layers.items())
        }
        specs = stored_tensors(layers, params)
        header: dict = {"__metadata__": {"format": FORMAT}}
        self._at: dict[str, tuple[int, torch.dtype, tuple[int, ...]]] = {}
        offset = 0
        for name in sorted(specs, key=lambda n: (-_STORED[specs[n][0]][1], n)):
            dtype, shape = specs[name]
            nbytes = math.prod(shape) * dtype.itemsize
            header[name] = {"dtype": _STORED[dtype][0], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            self._at[name] = (offset, dtype, shape)
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = staging_dir(self.out_dir.parent, f".{self.out_dir.name}.")
        self._f = open(self.tmp / WEIGHTS_NAME, "wb")  # noqa: SIM115  (open until finish or abort)
        self._f.write(struct.pack("<Q", len(raw)) + raw)
        self._data = 8 + len(raw)
        self.bytes = self._data + offset
        self._reserve()
        self._published = False

    def _reserve(self) -> None:
        """The file's whole size taken on disk now: a full disk fails here, before the work, not after it."""
        import os

        from ..sizes import human_bytes

        self._f.flush()
        try:
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(self._f.fileno(), 0, self.bytes)
            else:
                self._f.truncate(self.bytes)
        except OSError as exc:
            self.abort()
            raise ExportError(
                f"{self.out_dir}: not enough disk space for the quantized checkpoint ({human_bytes(self.bytes)}): "
                f"{exc.strerror}"
            ) from None

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if not self._published:
            self.abort()

    def linear(self, fqn: str, q: QuantizedLinear) -> None:
        self._put(f"{fqn}.qweight", q.codes, grid.pack_int4 if q.bits == 4 else None)
        self._put(f"{fqn}.scales", q.scales)

    def param(self, name: str, value: torch.Tensor) -> None:
        """Any floating tensor (a memory-mapped bf16 one too): converted to fp32 a slice of rows at a time."""
        self._put(name, value)

    def _put(self, name: str, t: torch.Tensor, convert=None) -> None:
        """``t`` (made the stored form by ``convert``, a row-wise function) written a slice of rows at a
        time: a conversion's temporaries stay the size of a slice (packing the 9B's lm_head whole: 3.5 GB)."""
        offset, dtype, shape = self._at.pop(name)
        if (tuple(t.shape) if convert is None else tuple(t.shape[:1])) != (shape if convert is None else shape[:1]):
            raise RuntimeError(f"{name}: shape {tuple(t.shape)}, the header says {shape}")
        rows = t.detach().reshape(t.shape[0] if t.dim() else 1, -1)
        step = max(1, WRITE_CHUNK_BYTES // max(1, rows.shape[1] * 4))
        self._f.seek(self._data + offset)
        written = 0
        for i in range(0, rows.shape[0], step):
            part = rows[i : i + step]
            part = (convert(part) if convert else part).to(dtype).contiguous()
            self._f.write(part.numpy().data)
            written += part.numel() * dtype.itemsize
        if written != math.prod(shape) * dtype.itemsize:
            raise RuntimeError(f"{name}: wrote {written} bytes, the header says {shape} of {dtype}")

    def finish(self, config: dict) -> Path:
        """Check every tensor was written, add the format fields and the sha256, publish."""
        from ..bundle import follow_umask, sha256_file

        if self._at:
            raise RuntimeError(f"quantized checkpoint incomplete: {sorted(self._at)[:5]} never written")
        self._f.close()
        self.config = {
            **config,
            "format": FORMAT,
            "version": VERSION,
            "layers": self.layers,
            "files": {WEIGHTS_NAME: sha256_file(self.tmp / WEIGHTS_NAME)},
        }
        (self.tmp / CONFIG_NAME).write_text(json.dumps(self.config, indent=2, ensure_ascii=False) + "\n")
        follow_umask(self.tmp)
        if self.out_dir.exists():
            old = self.out_dir.with_name(f".{self.out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            self.out_dir.rename(old)
            self.tmp.rename(self.out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            self.tmp.rename(self.out_dir)
        self._published = True
        return self.out_dir

    def abort(self) -> None:
        self._f.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def save(qc: QuantizedCheckpoint, out_dir: Path, force: bool = False) -> Path:
    """Write atomically: a temp dir next to ``out_dir``, renamed into place when complete."""
    layers = {fqn: (q.bits, tuple(q.codes.shape), q.group_size) for fqn, q in qc.linears.items()}
    with Writer(out_dir, layers, {name: t.shape for name, t in qc.params.items()}, force=force) as w:
        for fqn, q in qc.linears.items():
            w.linear(fqn, q)
        for name, t in qc.params.items():
            w.param(name, t)
        w.finish(qc.config)
    qc.config, qc.path = w.config, w.out_dir
    return w.out_dir


def read_recipe(path: Path) -> dict:
    """Only the recipe of a quantized checkpoint (cheap: the CLI's defaults come from it)."""
    cfg_path = Path(path) / CONFIG_NAME
    try:
        return dict(json.loads(cfg_path.read_text())["recipe"])
    except FileNotFoundError:
        raise CheckpointError(f"--quantized-checkpoint {path}: missing {CONFIG_NAME}") from None
    except (json.JSONDecodeError, KeyError, TypeError):
        raise CheckpointError(f"{cfg_path}: not a quantization config (no recipe)") from None


def read_layers(path: Path) -> dict[str, dict]:
    """Only the per-layer table (``{fqn: {"bits", "group_size"}}``), so option conflicts fail before the
    model is loaded. ``{}`` when it can't be read: the full ``load`` then names the problem."""
    try:
        layers = json.loads((Path(path) / CONFIG_NAME).read_text())["layers"]
        return {f: {"bits": int(v["bits"]), "group_size": int(v["group_size"])} for f, v in layers.items()}
    except Exception:  # noqa: BLE001 - reported by load()
        return {}


def load(path: Path) -> QuantizedCheckpoint:
    """Open and check a quantized checkpoint, its tensors memory-mapped (names, shapes and dtypes are
    checked from the header; the sha256 from the bytes); every problem is a CheckpointError naming
    file and key."""
    from ..bundle import sha256_file

    path = Path(path)
    cfg_path, weights_path = path / CONFIG_NAME, path / WEIGHTS_NAME
    if not path.is_dir():
        raise CheckpointError(f"--quantized-checkpoint {path}: not a directory")
    for p in (cfg_path, weights_path):
        if not p.is_file():
            raise CheckpointError(
                f"{path}: missing {p.name}; is this a directory written by `autoglm-export calibrate` or `qat`?"
            )
    config = read_json(cfg_path)
    if config.get("format") != FORMAT or config.get("version") != VERSION:
        raise CheckpointError(
            f"{cfg_path}: format {config.get('format')!r} version {config.get('version')!r}; "
            f"expected {FORMAT!r} version {VERSION}"
        )
    with values_of(cfg_path):
        expected = (config.get("files") or {}).get(WEIGHTS_NAME)
        layers = {
            str(fqn): (int(layer["bits"]), tuple(int(n) for n in layer["shape"]), int(layer["group_size"]))
            for fqn, layer in config["layers"].items()
        }
        if any(bits not in (4, 8) or len(shape) != 2 or group <= 0 for bits, shape, group in layers.values()):
            raise ValueError("layers need bits 4 or 8, a 2-D shape and a positive group_size")
    if expected and sha256_file(weights_path) != expected:
        raise CheckpointError(f"{weights_path}: sha256 does not match {CONFIG_NAME} (corrupt or modified)")
    stored = SafetensorsCheckpoint.open(path)  # a truncated file or a bad header: its CheckpointError names the file
    keys = set(stored.keys())
    for fqn, (bits, shape, group) in layers.items():
        for suffix in ("qweight", "scales"):
            if f"{fqn}.{suffix}" not in keys:
                raise CheckpointError(f"{weights_path}: missing tensor {fqn}.{suffix} listed in {CONFIG_NAME}")
        packed = (shape[0], shape[1] // 2) if bits == 4 else shape
        code_dtype = "U8" if bits == 4 else "I8"
        if stored.dtype_name(f"{fqn}.qweight") != code_dtype:
            raise CheckpointError(f"{weights_path}: {fqn}.qweight is not int{bits} codes")
        found = stored.shape(f"{fqn}.qweight"), stored.shape(f"{fqn}.scales")
        if found != (packed, (shape[0], shape[1] // group)) or stored.dtype_name(f"{fqn}.scales") != "F32":
            raise CheckpointError(
                f"{weights_path}: {fqn} has qweight {found[0]} / scales {found[1]}, "
                f"expected {packed} / {(shape[0], shape[1] // group)} (fp32 scales)"
            )
        keys -= {f"{fqn}.qweight", f"{fqn}.scales"}
    unusable = sorted(k for k in keys if stored.dtype_name(k) != "F32")
    if unusable:
        raise CheckpointError(f"{weights_path}: {unusable[0]} is {stored.dtype_name(unusable[0])}, parameters are fp32")
    return QuantizedCheckpoint(
        config=config,
        linears=StoredLinears(stored, {fqn: (bits, shape) for fqn, (bits, shape, _) in layers.items()}),
        params={name: stored.view(name) for name in sorted(keys)},
        path=path,
    )


# ----------------------------------------------------------------------------- use in an exporter


def check_matches(qc: QuantizedCheckpoint, src) -> None:
    """The checkpoint must belong to the model being exported: same architecture summary."""
    from ..summary import model_summary

    ours, theirs = model_summary(src), qc.config.get("model", {})
    for key in sorted(set(ours) | set(theirs)):
        if ours.get(key) != theirs.get(key):
            raise CheckpointError(
                f"{qc.path}: quantized for a different model ({key}: {theirs.get(key)} in "
                f"{CONFIG_NAME}, {ours.get(key)} in {src.label}); pass the --checkpoint/--preset it was made from"
            )


@torch.no_grad()
def load_into_model(qc: QuantizedCheckpoint, model: nn.Module, linears: bool = True) -> None:
    """Overwrite every parameter with the checkpoint's: the quantized linears' weights with their
    dequantized codes, or, with ``linears=False`` (a target whose twin is made from the codes,
    ``Target.twin_from_codes``), not at all: their fp32 values would be 35 GB at 9B."""
    params = dict(model.named_parameters())
    expected = {f"{fqn}.weight" for fqn in qc.linears} | set(qc.params)
    missing, unexpected = sorted(set(params) - expected), sorted(expected - set(params))
    where = qc.path / WEIGHTS_NAME if qc.path else WEIGHTS_NAME
    if missing or unexpected:
        raise CheckpointError(f"{where}: does not fit the model (missing {missing[:5]}, unexpected {unexpected[:5]})")
    for name, value in qc.params.items():
        if params[name].shape != value.shape:
            raise CheckpointError(
                f"{where}: {name} has shape {tuple(value.shape)}, the model expects {tuple(params[name].shape)}"
            )
        _overwrite(model, name, params[name], value)
    for fqn in qc.linears:
        w, shape = params[f"{fqn}.weight"], qc.linear_shape(fqn)
        if tuple(w.shape) != shape:
            raise CheckpointError(f"{where}: {fqn} has shape {shape}, the model expects {tuple(w.shape)}")
        if linears:
            _overwrite(model, f"{fqn}.weight", w, qc.linears[fqn].dequantize())
    model.prepare()  # derived constants (rotary tables, fused norms) follow the new weights


def _overwrite(model: nn.Module, name: str, param: torch.Tensor, value: torch.Tensor) -> None:
    """fp32 parameters are overwritten in place; one kept as stored (bf16, ``stored.py``) is replaced
    by an fp32 parameter, never rounded to its stored dtype."""
    if param.dtype == value.dtype:
        param.copy_(value)
        return
    owner, _, attr = name.rpartition(".")
    setattr(model.get_submodule(owner), attr, nn.Parameter(value.to(torch.float32), requires_grad=False))


def recipe_matches(qc: QuantizedCheckpoint, recipe) -> None:
    """The export's linear schemes must be the ones the checkpoint's integers were made for."""
    r = qc.recipe
    theirs = (r["linear"], r["encoder"], r.get("merger") or r["encoder"], int(r["group_size"]))
    ours = (recipe.linear, recipe.encoder, recipe.merger or recipe.encoder, recipe.group_size)
    if theirs != ours:
        names = ("linear", "encoder", "merger", "group")
        raise ExportError(
            f"{qc.path}: quantized as {' '.join(f'{n}={v}' for n, v in zip(names, theirs))}; "
            f"the export asked for {' '.join(f'{n}={v}' for n, v in zip(names, ours))}. "
            "Drop the quantization options (the checkpoint sets them) or re-run calibrate/qat"
        )


def provenance(method: str, src, request, fingerprint: dict, recipe) -> dict:
    """The head of every quantization_config.json (``calibrate`` and ``qat`` add their own record):
    what made it, from which model (``fingerprint``: ``summary.model_summary``, taken before any
    weight changed; ``check_matches`` compares it), with which recipe."""
    from .. import __version__

    return {
        "method": method,
        "created_by": f"autoglm-export {__version__}",
        "source": {"label": src.label, **request.to_dict()},
        "model": fingerprint,
        "recipe": recipe.to_dict(),
    }


def block_size_for(layers: dict[str, dict], block_size: int | None, path) -> int:
    """The int4 block size an export uses for a quantized checkpoint with these layers
    (``{fqn: {"bits", "group_size"}}``): its group size (``--block-size``, when given, must equal
    it); ``block_size`` or 32 when it has no int4 layers."""
    from .grid import BLOCK_SIZES

    groups = sorted({int(v["group_size"]) for v in layers.values() if int(v["bits"]) == 4})
    if not groups:
        return block_size or 32
    if len(groups) > 1:
        raise ExportError(f"{path}: int4 layers in groups of {groups}; the export takes one block size")
    if block_size is not None and block_size != groups[0]:
        raise ExportError(
            f"--block-size {block_size}: the quantized checkpoint {path} has int4 groups of {groups[0]}; "
            f"drop --block-size (it defaults to the checkpoint's) or re-run calibrate/qat with --group-size {block_size}"
        )
    if groups[0] not in BLOCK_SIZES:
        raise ExportError(
            f"{path}: int4 groups of {groups[0]}; this target takes blocks of {', '.join(map(str, BLOCK_SIZES))}"
        )
    return groups[0]


def layer_formats(linears: dict) -> dict[str, dict]:
    """``read_layers``' shape of an opened checkpoint's linears: ``{fqn: {"bits", "group_size"}}``."""
    return {fqn: {"bits": q.bits, "group_size": q.group_size} for fqn, q in linears.items()}

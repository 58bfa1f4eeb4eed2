"""Runs the four components from one ExecuTorch ``.pte`` program through ExecuTorch's Python runtime.

The program holds methods ``vision_encoder``, ``audio_encoder`` (optional), ``token_embedding``,
``text_decoder``, optionally ``reset_cache`` and ``text_decoder_step``, and constant metadata methods
(``get_max_seq_len``, ``get_eos_ids``, ``use_kv_cache``, ... as ExecuTorch's LLM runner expects).

KV cache, as measured with executorch 1.5.1 (the first and last points are tests/test_executorch_backend.py):

- The cache is a mutable buffer of ``text_decoder``, memory-planned; writes persist across calls.
- The Python runtime plans all host-only methods of a program into ONE shared arena. Unless the
  program was exported with ``MemoryPlanningPass(share_mutable_buffers=True)`` (mutable buffers in
  their own arena, mem_id 2), running ``token_embedding`` between two decoder calls overwrites the
  cache. Export with it.
- Re-loading ``text_decoder`` does NOT reset the cache: ``Program.load_method`` returns its cached
  method, and even a fresh method object shares the program's buffer arena.
- So ``reset()`` runs the program's ``reset_cache`` method when there is one (a method that zeroes
  the same buffers; with share_mutable_buffers, buffers with the same FQN share storage across
  methods). Without it, reset is a no-op: correct because the decoder attends only to slots
  ``0..cache_position`` and a prefill rewrites them from 0, but stale values stay in memory.

``text_decoder_step`` is ``text_decoder`` at exactly one token with static shapes (every op of a
step delegable), sharing its KV cache; single-token calls go to it when the program has it.

``token_embedding`` and ``text_decoder`` calls longer than the method's exported bound on the
sequence axis run in chunks (``max_seq_len`` for the decoder), so any prompt up to the context fits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BundleError
from ..preprocess.buckets import is_vision_method, method_among
from ..spec import REQUIRED_COMPONENTS

RESET_METHOD = "reset_cache"
STEP_METHOD = "text_decoder_step"
METADATA_PREFIXES = ("get_", "use_", "enable_")


LIST_METHODS = ("get_eos_ids",)  # list-valued even with a single element


def _import_executorch():
    """Import the runtime plus the kernel libraries our programs may use (they register ops on import)."""
    try:
        import torch  # noqa: F401  (the Python runtime takes and returns torch tensors)
        from executorch.runtime import Runtime
    except ImportError as e:
        raise BundleError(
            f"the ExecuTorch backend needs the executorch package ({e}); install autoglm-export[targets]"
        ) from None
    missing: list[str] = []
    # custom_ops.custom_ops (not the package) loads the library that registers llama::custom_sdpa / update_cache.
    for mod in ("executorch.kernels.quantized", "executorch.extension.llm.custom_ops.custom_ops"):
        try:
            __import__(mod)
        except Exception as e:  # a broken optional kernel library only matters if the program uses it
            missing.append(f"{mod} ({e})")
    return Runtime, missing


def _to_python(value: Any) -> Any:
    if hasattr(value, "tolist"):  # a tensor-valued constant method
        value = value.tolist()
    return value


class ExecuTorchProgram:
    """A loaded ``.pte`` (and its ``.ptd`` when the weights are external): both memory-mapped by the
    runtime; lazily loaded methods, metadata, and numpy-in/numpy-out calls."""

    def __init__(self, path: str | Path, weights: str | Path | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise BundleError(f"{self.path}: no such ExecuTorch program")
        if weights is not None and not Path(weights).is_file():
            raise BundleError(f"{weights}: no such ExecuTorch weights file (the program's .ptd)")
        Runtime, self._missing_kernels = _import_executorch()
        import torch

        self._torch = torch
        try:
            self.program = Runtime.get().load_program(self.path, data_path=weights)
        except Exception as e:
            raise BundleError(f"{self.path}: ExecuTorch cannot load this program: {e}") from None
        self.method_names: set[str] = set(self.program.method_names)

    def has(self, name: str) -> bool:
        return name in self.method_names

    def method(self, name: str):
        if name not in self.method_names:
            raise BundleError(
                f"{self.path}: the program has no method {name!r} (it has {', '.join(sorted(self.method_names))})"
            )
        try:
            return self.program.load_method(name)  # cached by the Program after the first load
        except Exception as e:
            hint = (
                f"; kernel libraries that failed to import: {', '.join(self._missing_kernels)}"
                if self._missing_kernels
                else ""
            )
            raise BundleError(f"{self.path}: cannot load method {name!r}: {e}{hint}") from None

    def release(self, name: str) -> None:
        """Unload a method: its delegates' packed weights and workspace go with it. ExecuTorch's
        ``Program`` caches every method it loads and has no public unload, so this drops that cache's
        entry (a no-op where the cache is not there); a later ``method(name)`` loads it again."""
        cache = getattr(self.program, "_methods", None)
        if isinstance(cache, dict) and cache.get(name) is not None:
            cache[name] = None

    def input_bounds(self, name: str) -> list[tuple[int, ...]]:
        """Per input, the (upper-bound) sizes the method was exported with."""
        meta = self.program.metadata(name)
        return [tuple(meta.input_tensor_meta(i).sizes()) for i in range(meta.num_inputs())]

    def metadata(self) -> dict[str, Any]:
        """Values of the constant methods (``get_*``, ``use_*``, ``enable_*`` with no inputs); 1-element lists -> scalar."""
        out: dict[str, Any] = {}
        for name in sorted(self.method_names):
            if not name.startswith(METADATA_PREFIXES) or self.program.metadata(name).num_inputs() != 0:
                continue
            values = [_to_python(v) for v in self.method(name).execute([])]
            # get_eos_ids is a list even with one id; every other constant is a scalar.
            out[name] = values[0] if len(values) == 1 and name not in LIST_METHODS else values
        return out

    def run(self, name: str, *arrays: np.ndarray) -> list[np.ndarray]:
        torch = self._torch
        # np.require copies only when needed; a writable array avoids torch's non-writable warning.
        tensors = [torch.from_numpy(np.require(a, requirements=["C", "W"])) for a in arrays]
        try:
            outs = self.method(name).execute(tensors)
        except RuntimeError as e:
            shapes = ", ".join(f"{tuple(a.shape)} {a.dtype}" for a in arrays)
            raise BundleError(
                f"{self.path}: {name}({shapes}) failed: {e} (exported input sizes: {self.input_bounds(name)})"
            ) from None
        # The runtime already copies outputs out of its planned arena; .numpy() shares that copy.
        return [o.float().numpy() if o.is_floating_point() else o.numpy() for o in outs]


class ExecuTorchBackend:
    name = "executorch"

    def __init__(self, pte_path: str | Path, weights_path: str | Path | None = None):
        self.program = ExecuTorchProgram(pte_path, weights_path)
        missing = [m for m in REQUIRED_COMPONENTS if not self.program.has(m)]
        if missing:
            raise BundleError(f"{self.program.path}: the program lacks method(s) {', '.join(missing)}")
        self.meta = self.program.metadata()
        # Longest prompt chunk one decoder call takes: the metadata, else the exported upper bound.
        bound = self.program.input_bounds("text_decoder")[0][1]
        self.max_seq_len: int = int(self.meta.get("get_max_seq_len", bound))
        self.max_seq_len = min(self.max_seq_len, bound)
        self.has_reset_method = self.program.has(RESET_METHOD)
        self.has_step_method = self.program.has(STEP_METHOD)
        self._embedding_chunk = self.program.input_bounds("token_embedding")[0][1]

    @classmethod
    def from_bundle(cls, bundle) -> ExecuTorchBackend:
        """The backend for an opened Bundle (the manifest's ``program`` and, when the weights are
        external, ``weights``); its metadata must agree with the manifest's spec."""
        if bundle.target != "executorch":
            raise BundleError(f"{bundle.root}: a {bundle.target} bundle, not an ExecuTorch one")
        weights = bundle.manifest.get("weights")
        backend = cls(bundle.path(bundle.manifest.get("program", "model.pte")), weights and bundle.path(weights))
        spec = bundle.spec
        for key, expected in (("get_vocab_size", spec.vocab_size), ("get_max_context_len", spec.max_context)):
            if key in backend.meta and backend.meta[key] != expected:
                raise BundleError(
                    f"{backend.program.path}: {key} is {backend.meta[key]} but manifest.json says {expected}"
                )
        return backend

    def metadata(self) -> dict[str, Any]:
        return dict(self.meta)

    def vision_encoder(self, pixel_values: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
        method = method_among(size, self.program.method_names)
        # One image bucket loaded at a time: each bucket's method holds its own XNNPACK-packed copy of the
        # vision weights (measured: 0.23 GB per method at one real-width block; 8 buckets at 9B were GBs).
        for other in self.program.method_names:
            if other != method and is_vision_method(other):
                self.program.release(other)
        return self.program.run(method, pixel_values.astype(np.float32, copy=False))[0]

    def audio_encoder(self, input_features: np.ndarray) -> np.ndarray:
        if not self.program.has("audio_encoder"):
            raise BundleError(f"{self.program.path}: this model was exported without an audio encoder")
        return self.program.run("audio_encoder", input_features.astype(np.float32, copy=False))[0]

    def token_embedding(self, token_ids: np.ndarray) -> np.ndarray:
        """[1, S] -> [1, S, hidden]; longer than the exported bound runs in chunks (it is per token anyway)."""
        token_ids = token_ids.astype(np.int64, copy=False)
        step = self._embedding_chunk
        outs = [
            self.program.run("token_embedding", token_ids[:, i : i + step])[0]
            for i in range(0, token_ids.shape[1], step)
        ]
        return outs[0] if len(outs) == 1 else np.concatenate(outs, axis=1)

    def text_decoder(self, embeds: np.ndarray, cache_position: np.ndarray, position_ids: np.ndarray) -> np.ndarray:
        """logits [1, S, vocab]; prompts longer than max_seq_len run as consecutive chunks."""
        embeds = embeds.astype(np.float32, copy=False)
        cache_position = cache_position.astype(np.int64, copy=False)
        position_ids = position_ids.astype(np.int64, copy=False)
        n, step = embeds.shape[1], self.max_seq_len
        outs = [
            self.program.run(
                self._decoder_method(min(step, n - i)),
                embeds[:, i : i + step],
                cache_position[i : i + step],
                position_ids[:, i : i + step],
            )[0]
            for i in range(0, n, step)
        ]
        return outs[0] if len(outs) == 1 else np.concatenate(outs, axis=1)

    def _decoder_method(self, tokens: int) -> str:
        return STEP_METHOD if tokens == 1 and self.has_step_method else "text_decoder"

    def reset(self) -> None:
        """Clear the KV cache with the program's reset_cache method; without one, rely on the decoder's mask."""
        if self.has_reset_method:
            self.program.run(RESET_METHOD)

"""Runs a Core ML bundle (``autoglm-export ios``): four ``.mlpackage`` files, one engine.

Engines (same ``predict(inputs, function, state)`` / ``make_state(function)`` surface):

- ``mil``: our numpy MIL interpreter (``autoglm_runtime.mil``): Linux and anywhere else. It reads the
  saved ML Program back from disk and computes in the dtypes the program declares (fp16 here).
- ``mlmodel``: Core ML itself through ``coremltools.models.MLModel`` (macOS 15+ only: states and
  multifunction packages need it). One ``MLModel`` per function (``function_name=``), one state
  from ``make_state()`` shared by ``prefill`` and ``decode``, as an app does with
  ``MLModelConfiguration.functionName`` and ``model.makeState()``. Not runnable on Linux; the code
  path is selected by platform and exercised on a Mac.

``engine="auto"`` (default) picks ``mlmodel`` on macOS 15+ and ``mil`` elsewhere; the
``AUTOGLM_COREML_ENGINE`` environment variable overrides it.

Decoder calls (``text_decoder(embeds, cache_position, position_ids)``). A large decoder is a chain of
packages (the manifest's ``text_decoder.chunks``): each call runs them in order, the first on the
embeddings, each next one on the previous one's ``hidden_states``, the last returning logits; each
holds its own layers' KV cache (its own state, or its own cache arrays). Packages above
``LEAN_WEIGHT_BYTES`` run in the interpreter with their weights memory-mapped, read per call, and
their int4 linears as onnxruntime ``MatMulNBits`` when onnxruntime is installed (``MILModel``'s
``int4_linear``: weights ``code * scale`` in fp32, not rounded to fp16 first).

- iOS 18 packages: ``prefill`` takes exactly ``prefill_chunk`` tokens, ``decode`` one. A call of S
  tokens runs as chunks of ``prefill_chunk``; a shorter last chunk is padded with zero embeddings
  to the full chunk, and a single token goes to ``decode``. Why the padding is harmless: a call
  whose mask is ``[1, 1, C, end]`` writes its C rows to cache slots ``end - C .. end - 1`` and
  row i attends to slots ``0 .. start + i`` only (causal mask), so real rows never see the padded
  rows' keys; the padded slots hold garbage until the next call writes the next tokens over them,
  which happens before any later query can see them (a call writes its own slots before it reads,
  and queries at position p see slots <= p only). The padded rows' logits are dropped. If the
  padded chunk would run past ``max_context``, the remaining tokens go through ``decode`` one by
  one instead.
- iOS 17 packages: one function ``main`` for 1..prefill_chunk tokens; the cache lives here as numpy
  arrays (one pair per package), is passed in whole, and the returned ``key_update`` /
  ``value_update`` rows are written at slots ``end - S .. end - 1``.

``cache_position`` must be consecutive (a prompt, then one token at a time), which is how the
session and the parity gate call every backend.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BundleError
from ..preprocess.buckets import DEFAULT_METHOD, method_among

ENGINES = ("mil", "mlmodel")
MASK_MIN = -np.inf


def default_engine() -> str:
    env = os.environ.get("AUTOGLM_COREML_ENGINE")
    if env:
        if env not in ENGINES:
            raise BundleError(f"AUTOGLM_COREML_ENGINE={env}: expected one of {', '.join(ENGINES)}")
        return env
    if sys.platform == "darwin":
        try:
            major = int(platform.mac_ver()[0].split(".")[0])
        except ValueError:
            major = 0
        if major >= 15:
            return "mlmodel"
    return "mil"


def causal_mask(start: int, rows: int) -> np.ndarray:
    """fp16 ``[1, 1, rows, start + rows]``: row i (cache slot start + i) sees slots 0..start+i."""
    end = start + rows
    q = np.arange(start, end)[:, None]
    k = np.arange(end)[None, :]
    return np.where(k <= q, 0.0, MASK_MIN).astype(np.float16)[None, None]


# Packages with more compressed weight bytes than this run lean in the interpreter: weights read from the
# weight file (memory-mapped) per call, not decompressed at load (an fp32 copy per function: 8 bytes a
# weight for a prefill + decode package, 16x its int4; 7.6 GB peak for the 1-layer real-width bundle).
LEAN_WEIGHT_BYTES = 64_000_000


def _has_onnxruntime() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


class _MILEngine:
    """Our interpreter on one package."""

    def __init__(self, path: Path, lean: bool = False):
        try:
            from ..mil import MILModel
        except ImportError as e:  # pragma: no cover - the interpreter ships with the runtime
            raise BundleError(f"the Core ML interpreter is unavailable: {e}") from None
        quiet = logging.getLogger("coremltools")  # its program reader logs every var of a multifunction package at INFO
        level = quiet.level
        quiet.setLevel(max(level, logging.WARNING))
        try:
            self.model = MILModel(path, cache_weights=not lean, int4_linear=lean and _has_onnxruntime())
        except Exception as e:
            raise BundleError(f"{path}: cannot load this Core ML package: {type(e).__name__}: {e}") from None
        finally:
            quiet.setLevel(level)
        self.path = path
        self.functions = list(self.model.functions)

    def make_state(self, function: str) -> Any:
        return self.model.make_state(function)

    def predict(self, inputs: dict, function: str, state: Any = None) -> dict[str, np.ndarray]:
        return self.model.predict(inputs, function=function, state=state)


class _MLModelEngine:
    """Core ML itself (macOS 15+): one MLModel per function of the package."""

    def __init__(self, path: Path, functions: list[str], compute_units: str = "all"):
        try:
            import coremltools as ct
        except ImportError as e:
            raise BundleError(f"running Core ML packages with MLModel needs coremltools on macOS ({e})") from None
        units = {
            "all": ct.ComputeUnit.ALL,
            "cpu_and_gpu": ct.ComputeUnit.CPU_AND_GPU,
            "cpu_and_ne": ct.ComputeUnit.CPU_AND_NE,
            "cpu_only": ct.ComputeUnit.CPU_ONLY,
        }[compute_units]
        self.path = path
        self.functions = list(functions)
        self.models = {}
        for f in self.functions:
            kw = {} if f == "main" else {"function_name": f}
            try:
                self.models[f] = ct.models.MLModel(str(path), compute_units=units, **kw)
            except Exception as e:
                raise BundleError(f"{path}: Core ML cannot load function {f!r}: {e}") from None

    def make_state(self, function: str) -> Any:
        return self.models[function].make_state()

    def predict(self, inputs: dict, function: str, state: Any = None) -> dict[str, np.ndarray]:
        kw = {"state": state} if state is not None else {}
        return self.models[function].predict(inputs, **kw)


class CoreMLBackend:
    name = "coreml"

    def __init__(self, root: str | Path, coreml: dict, engine: str | None = None, compute_units: str | None = None):
        """``coreml``: the manifest's ``coreml`` section (package files, functions, decoder layout)."""
        self.root = Path(root)
        self.info = coreml
        self.engine_name = engine or default_engine()
        if self.engine_name not in ENGINES:
            raise BundleError(f"Core ML engine {self.engine_name!r}: expected one of {', '.join(ENGINES)}")
        self.compute_units = compute_units or coreml.get("compute_units", "all")
        packages = coreml.get("packages")
        if not isinstance(packages, dict) or "text_decoder" not in packages:
            raise BundleError(f"{self.root}: manifest.json has no Core ML package table (coreml.packages)")
        self.packages = packages
        self._engines: dict[str, Any] = {}
        dec = packages["text_decoder"]
        self.kv_cache = dec.get("kv_cache", "state")
        self.prefill_chunk = int(dec["prefill_chunk"])
        self.max_context = int(dec["max_context"])
        self.cache_shape = tuple(dec["cache_shape"])
        one = {
            "file": dec["file"],
            "cache_shape": dec["cache_shape"],
            "output": "logits",
            "functions": dec.get("functions"),
        }
        self.chunks = list(dec.get("chunks") or [one])
        if self.chunks[-1].get("output", "logits") != "logits":
            raise BundleError(f"{self.root}: the last decoder package ({self.chunks[-1]['file']}) returns no logits")
        self.reset()

    @classmethod
    def from_bundle(cls, bundle, engine: str | None = None) -> CoreMLBackend:
        if bundle.target != "coreml":
            raise BundleError(f"{bundle.root}: a {bundle.target} bundle, not a Core ML one")
        coreml = bundle.manifest.get("coreml")
        if not isinstance(coreml, dict):
            raise BundleError(f"{bundle.root}: manifest.json has no 'coreml' section")
        for _comp, pkg in (coreml.get("packages") or {}).items():
            for listed in [pkg, *pkg.get("chunks", [])]:
                bundle.path(listed["file"])  # listed in the manifest (its files were hash-checked by open_bundle)
        backend = cls(bundle.root, coreml, engine=engine)
        if backend.max_context != bundle.spec.max_context:
            raise BundleError(
                f"{bundle.root}: TextDecoder max_context {backend.max_context} but manifest.json "
                f"runtime says {bundle.spec.max_context}"
            )
        return backend

    # ---- engines, loaded on first use
    def _package(self, component: str, chunk: int) -> dict:
        if component == "text_decoder":
            return self.chunks[chunk]
        pkg = self.packages.get(component)
        if pkg is None:
            what = "an audio encoder" if component == "audio_encoder" else component
            raise BundleError(f"{self.root}: this bundle was exported without {what}")
        return pkg

    def _engine(self, component: str, chunk: int = 0):
        key = (component, chunk)
        eng = self._engines.get(key)
        if eng is None:
            pkg = self._package(component, chunk)
            path = self.root / pkg["file"]
            if not path.is_dir():
                raise BundleError(f"{path}: missing Core ML package")
            if self.engine_name == "mil":
                eng = _MILEngine(path, lean=int(pkg.get("weight_bytes") or 0) > LEAN_WEIGHT_BYTES)
            else:
                eng = _MLModelEngine(path, list(pkg["functions"]), self.compute_units)
            self._engines[key] = eng
        return eng

    def _run(
        self, component: str, inputs: dict, function: str = "main", state: Any = None, chunk: int = 0
    ) -> dict[str, np.ndarray]:
        eng = self._engine(component, chunk)
        try:
            return eng.predict(inputs, function, state)
        except BundleError:
            raise
        except NotImplementedError as e:  # an op the interpreter doesn't know: a clear error, never a pass
            raise BundleError(f"{eng.path}: {e}") from None
        except Exception as e:
            shapes = ", ".join(f"{k} {tuple(np.shape(v))}" for k, v in inputs.items())
            raise BundleError(f"{eng.path}: {function}({shapes}) failed: {type(e).__name__}: {e}") from None

    # ---- the four components
    def vision_encoder(self, pixel_values: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
        # One multifunction VisionEncoder package: a function per bucket, the default one "main".
        functions = self.packages["vision_encoder"].get("functions") or ["main"]
        function = method_among(size, functions)
        function = "main" if function == DEFAULT_METHOD else function
        out = self._run("vision_encoder", {"pixel_values": np.asarray(pixel_values, np.float16)}, function)
        return np.asarray(out["image_embeds"], np.float32)

    def audio_encoder(self, input_features: np.ndarray) -> np.ndarray:
        out = self._run("audio_encoder", {"input_features": np.asarray(input_features, np.float16)})
        return np.asarray(out["audio_embeds"], np.float32)

    def token_embedding(self, token_ids: np.ndarray) -> np.ndarray:
        """[1, S] -> [1, S, hidden]; longer than the package's bound (max_context) runs in pieces."""
        ids = np.asarray(token_ids).astype(np.int32)
        step = self.max_context
        outs = [
            np.asarray(self._run("token_embedding", {"token_ids": ids[:, i : i + step]})["embeds"], np.float32)
            for i in range(0, ids.shape[1], step)
        ]
        return outs[0] if len(outs) == 1 else np.concatenate(outs, axis=1)

    def text_decoder(self, embeds: np.ndarray, cache_position: np.ndarray, position_ids: np.ndarray) -> np.ndarray:
        embeds = np.asarray(embeds, np.float32)
        cache_position = np.asarray(cache_position).astype(np.int64).reshape(-1)
        position_ids = np.asarray(position_ids).astype(np.int64)
        n = embeds.shape[1]
        start = int(cache_position[0]) if n else 0
        if n == 0:
            raise BundleError("text_decoder called with no tokens")
        if not np.array_equal(cache_position, np.arange(start, start + n)):
            raise BundleError(
                "the Core ML decoder writes consecutive cache slots: cache_position must be start..start+S-1"
            )
        if start + n > self.max_context:
            raise BundleError(
                f"cache positions up to {start + n - 1} exceed the exported context of {self.max_context} tokens"
            )
        run = self._decode_state if self.kv_cache == "state" else self._decode_explicit
        return run(embeds, start, position_ids)

    def reset(self) -> None:
        """Fresh zeroed KV cache (a new Core ML state per package, or new numpy cache arrays)."""
        self._states = None
        self._caches = None
        if self.kv_cache != "state":
            self._caches = [
                {n: np.zeros(tuple(c["cache_shape"]), np.float16) for n in ("key_cache", "value_cache")}
                if c.get("cache_shape")
                else {}
                for c in self.chunks
            ]

    def _chain(self, inputs: dict, function: str, caches: list | None = None) -> list[dict]:
        """One decoder call through every package in order; each package's outputs, in order."""
        outs, x = [], inputs["inputs_embeds"]
        for i, chunk in enumerate(self.chunks):
            feeds = {**inputs, "inputs_embeds": x, **(caches[i] if caches is not None else {})}
            if not chunk.get("cache_shape"):  # the head: hidden states in, logits out, nothing else
                feeds = {"inputs_embeds": x}
            state = self._states[i] if self._states is not None else None
            out = self._run("text_decoder", feeds, function, state, chunk=i)
            outs.append(out)
            x = out.get(chunk.get("output", "logits"))
        return outs

    # ---- decoder, iOS 18: prefill / decode functions over one state
    def _decode_state(self, embeds: np.ndarray, start: int, position_ids: np.ndarray) -> np.ndarray:
        if self._states is None:
            self._states = [
                self._engine("text_decoder", i).make_state("decode") if c.get("cache_shape") else None
                for i, c in enumerate(self.chunks)
            ]
        C, n, rows, i = self.prefill_chunk, embeds.shape[1], [], 0
        while i < n:
            left, pos = n - i, start + i
            if left == 1 or pos + C > self.max_context or C == 1:
                rows.append(self._call_state("decode", embeds[:, i : i + 1], position_ids[:, i : i + 1], pos, 1))
                i += 1
                continue
            take = min(C, left)
            e = np.zeros((1, C, embeds.shape[2]), np.float32)
            e[:, :take] = embeds[:, i : i + take]
            p = np.empty((3, C), np.int64)
            p[:, :take] = position_ids[:, i : i + take]
            if take < C:  # padding rows: any valid table index; their outputs are dropped
                p[:, take:] = np.minimum(p[:, take - 1 : take] + np.arange(1, C - take + 1), self.max_context - 1)
            rows.append(self._call_state("prefill", e, p, pos, C)[:, :take])
            i += take
        return rows[0] if len(rows) == 1 else np.concatenate(rows, axis=1)

    def _call_state(self, function: str, embeds, position_ids, start: int, rows: int) -> np.ndarray:
        inputs = {
            "inputs_embeds": embeds.astype(np.float16),
            "position_ids": position_ids.astype(np.int32),
            "causal_mask": causal_mask(start, rows),
        }
        return np.asarray(self._chain(inputs, function)[-1]["logits"], np.float32)

    # ---- decoder, iOS 17: one function, the cache as inputs / outputs
    def _decode_explicit(self, embeds: np.ndarray, start: int, position_ids: np.ndarray) -> np.ndarray:
        C, n, rows = self.prefill_chunk, embeds.shape[1], []
        for i in range(0, n, C):
            s = min(C, n - i)
            pos = start + i
            inputs = {
                "inputs_embeds": embeds[:, i : i + s].astype(np.float16),
                "position_ids": position_ids[:, i : i + s].astype(np.int32),
                "causal_mask": causal_mask(pos, s),
            }
            outs = self._chain(inputs, "main", self._caches)
            for cache, out in zip(self._caches, outs):
                if not cache:
                    continue
                cache["key_cache"][:, :, :, pos : pos + s, :] = out["key_update"]
                cache["value_cache"][:, :, :, pos : pos + s, :] = out["value_update"]
            rows.append(np.asarray(outs[-1]["logits"], np.float32))
        return rows[0] if len(rows) == 1 else np.concatenate(rows, axis=1)

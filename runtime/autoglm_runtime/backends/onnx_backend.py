"""Runs the four components from an ONNX bundle with onnxruntime (CPU).

One ``.onnx`` file per component (``manifest["models"][component]["file"]``; weights may sit in a
``.onnx.data`` file next to it, which onnxruntime finds by itself). ``text_decoder`` is stateless:
its KV cache is explicit, ``past_key_{i}`` / ``past_value_{i}`` in and ``present_key_{i}`` /
``present_value_{i}`` out, each ``[1, kv_heads, max_context, head_dim]``. This backend holds the
cache between calls (each call's presents become the next call's pasts); ``reset()`` zeroes it.
The decoder attends to slots ``0..cache_position`` only, so a prefill from position 0 never sees
what an earlier conversation left in the other slots.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import BundleError

COMPONENTS = ("vision_encoder", "audio_encoder", "token_embedding", "text_decoder")
REQUIRED = ("vision_encoder", "token_embedding", "text_decoder")
PAST, PRESENT = "past_", "present_"


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as e:
        raise BundleError(f"the ONNX backend needs the onnxruntime package ({e}); install autoglm-export[targets]") from None
    return onnxruntime


_NP_TYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(float16)": np.float16, "tensor(int32)": np.int32}


class OnnxModel:
    """One component: an onnxruntime session with numpy-in/numpy-out calls by input name."""

    def __init__(self, path: str | Path, threads: int | None = None):
        ort = _import_onnxruntime()
        self.path = Path(path)
        if not self.path.is_file():
            raise BundleError(f"{self.path}: no such ONNX model")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.log_severity_level = 3  # errors only: shape-inference chatter is not the user's business
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise BundleError(f"{self.path}: onnxruntime cannot load this model: {str(e).strip().splitlines()[0]}") from None
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        feeds = {k: np.ascontiguousarray(v, dtype=_NP_TYPES.get(self.inputs[k].type)) for k, v in feeds.items()}
        try:
            return self.session.run(self.output_names, feeds)
        except Exception as e:
            shapes = ", ".join(f"{k} {tuple(v.shape)} {v.dtype}" for k, v in feeds.items() if not k.startswith(PAST))
            raise BundleError(f"{self.path}: run({shapes}) failed: {str(e).strip().splitlines()[0]}") from None


class OnnxBackend:
    name = "onnxruntime"

    def __init__(self, files: dict[str, str | Path], threads: int | None = None):
        """``files``: component name -> .onnx path (audio_encoder optional)."""
        missing = [c for c in REQUIRED if c not in files]
        if missing:
            raise BundleError(f"no ONNX model for {', '.join(missing)}")
        self.models = {c: OnnxModel(p, threads) for c, p in files.items() if c in COMPONENTS}
        dec = self.models["text_decoder"]
        self.cache_inputs = [n for n in dec.inputs if n.startswith(PAST)]
        if not self.cache_inputs or any(PRESENT + n[len(PAST):] not in dec.output_names for n in self.cache_inputs):
            raise BundleError(f"{dec.path}: expected past_*/present_* KV-cache inputs and outputs")
        self._cache_shapes = {}
        for n in self.cache_inputs:
            shape = dec.inputs[n].shape
            if not all(isinstance(d, int) for d in shape):
                raise BundleError(f"{dec.path}: KV-cache input {n} has a dynamic shape {shape}; expected a static cache")
            self._cache_shapes[n] = tuple(shape)
        self._present_index = {n: dec.output_names.index(PRESENT + n[len(PAST):]) for n in self.cache_inputs}
        if "logits" not in dec.output_names:
            raise BundleError(f"{dec.path}: no 'logits' output")
        self._logits_index = dec.output_names.index("logits")
        self.max_context = next(iter(self._cache_shapes.values()))[2]
        self.cache: dict[str, np.ndarray] = {}
        self.reset()

    @classmethod
    def from_bundle(cls, bundle, threads: int | None = None) -> "OnnxBackend":
        """The backend for an opened ONNX Bundle; the cache size must agree with the manifest's spec."""
        if bundle.target != "onnx":
            raise BundleError(f"{bundle.root}: a {bundle.target} bundle, not an ONNX one")
        models = bundle.manifest.get("models")
        if not isinstance(models, dict):
            raise BundleError(f"{bundle.root}: manifest.json has no 'models' table")
        backend = cls({c: bundle.path(m["file"]) for c, m in models.items()}, threads)
        if backend.max_context != bundle.spec.max_context:
            raise BundleError(f"{bundle.root}: text_decoder's KV cache holds {backend.max_context} positions but "
                              f"manifest.json says max_context {bundle.spec.max_context}")
        return backend

    def vision_encoder(self, pixel_values: np.ndarray) -> np.ndarray:
        return self.models["vision_encoder"].run({"pixel_values": pixel_values})[0]

    def audio_encoder(self, input_features: np.ndarray) -> np.ndarray:
        if "audio_encoder" not in self.models:
            raise BundleError("this model was exported without an audio encoder")
        return self.models["audio_encoder"].run({"input_features": input_features})[0]

    def token_embedding(self, token_ids: np.ndarray) -> np.ndarray:
        return self.models["token_embedding"].run({"token_ids": token_ids})[0]

    def text_decoder(self, embeds: np.ndarray, cache_position: np.ndarray, position_ids: np.ndarray) -> np.ndarray:
        """logits [1, S, vocab]; this call's keys/values are written into the held cache at cache_position."""
        cache_position = np.asarray(cache_position, dtype=np.int64)
        if cache_position.size and (cache_position.min() < 0 or cache_position.max() >= self.max_context):
            raise BundleError(f"cache positions {cache_position.min()}..{cache_position.max()} are outside the "
                              f"KV cache (0..{self.max_context - 1})")
        outs = self.models["text_decoder"].run(
            {"inputs_embeds": embeds, "cache_position": cache_position, "position_ids": position_ids, **self.cache})
        self.cache = {n: outs[i] for n, i in self._present_index.items()}
        return outs[self._logits_index]

    def reset(self) -> None:
        self.cache = {n: np.zeros(s, dtype=np.float32) for n, s in self._cache_shapes.items()}

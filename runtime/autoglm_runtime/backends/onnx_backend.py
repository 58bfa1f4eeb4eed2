"""Runs the four components from an ONNX bundle with onnxruntime (CPU).

One ``.onnx`` file per component (``manifest["models"][component]["file"]``; weights may sit in a
``.onnx.data`` file next to it, which onnxruntime finds by itself and memory-maps). An image
bucket's vision session is created on its first image. ``text_decoder`` is stateless:
its KV cache is explicit, ``past_key_{i}`` / ``past_value_{i}`` in and ``present_key_{i}`` /
``present_value_{i}`` out, each ``[1, kv_heads, max_context, head_dim]``. This backend holds the
cache between calls (each call's presents become the next call's pasts); ``reset()`` zeroes it.
The decoder attends to slots ``0..cache_position`` only, so a prefill from position 0 never sees
what an earlier conversation left in the other slots.

By default the cache stays where onnxruntime reads and writes it (IO binding), so the cache never
crosses between onnxruntime and numpy and nothing cache-sized is allocated per step. A decoder whose
metadata says ``autoglm.kv_cache: in_place`` (its attention is ``GroupQueryAttention``, which may
update its past in place) gets one set of buffers bound as both pasts and presents; older graphs get
two sets, each call reading its pasts from one and writing its presents into the other. Passing
``io_binding=False`` feeds the cache through ``InferenceSession.run`` instead (a copy of every present
each call); both run the same graph on the same values and give the same logits.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from ..errors import BundleError
from ..preprocess.buckets import is_vision_method, method_among
from ..spec import COMPONENTS, REQUIRED_COMPONENTS

PAST, PRESENT = "past_", "present_"
IN_PLACE_METADATA = ("autoglm.kv_cache", "in_place")  # the exporter writes it (targets/onnx/convert.py)


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as e:
        raise BundleError(
            f"the ONNX backend needs the onnxruntime package ({e}); install autoglm-export[targets]"
        ) from None
    return onnxruntime


_NP_TYPES = {
    "tensor(float)": np.float32,
    "tensor(int64)": np.int64,
    "tensor(float16)": np.float16,
    "tensor(int32)": np.int32,
}


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
            raise BundleError(
                f"{self.path}: onnxruntime cannot load this model: {str(e).strip().splitlines()[0]}"
            ) from None
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]

    def typed(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The feeds as contiguous arrays of the dtypes the graph declares."""
        return {k: np.ascontiguousarray(v, dtype=_NP_TYPES.get(self.inputs[k].type)) for k, v in feeds.items()}

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        feeds = self.typed(feeds)
        with self._errors(feeds):
            return self.session.run(self.output_names, feeds)

    def run_bound(self, binding, feeds: dict[str, np.ndarray]) -> None:
        """Run with ``binding`` (an ``IOBinding`` of this session) after binding ``feeds`` as CPU inputs."""
        feeds = self.typed(feeds)
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        with self._errors(feeds):
            self.session.run_with_iobinding(binding)

    @contextlib.contextmanager
    def _errors(self, feeds: dict[str, np.ndarray]):
        try:
            yield
        except Exception as e:
            shapes = ", ".join(f"{k} {tuple(v.shape)} {v.dtype}" for k, v in feeds.items() if not k.startswith(PAST))
            raise BundleError(f"{self.path}: run({shapes}) failed: {str(e).strip().splitlines()[0]}") from None


def updates_cache_in_place(session) -> bool:
    """Whether the exporter marked this decoder's cache to be updated in place (``IN_PLACE_METADATA``)."""
    return session.get_modelmeta().custom_metadata_map.get(IN_PLACE_METADATA[0]) == IN_PLACE_METADATA[1]


class BoundCache:
    """The KV cache as numpy buffers that onnxruntime reads and writes in place.

    ``in_place``: one set, bound as both pasts and presents. Otherwise two: ``sides[i]`` holds the
    pasts when ``bindings[i]`` runs and its presents land in ``sides[1 - i]`` (a graph may not write
    an output over one of its inputs unless it says so). Each binding is built once with all cache
    tensors bound; a call only rebinds the three small inputs and the logits.
    """

    def __init__(self, session, shapes: dict[str, tuple[int, ...]], dtypes: dict[str, type], in_place: bool):
        ort = _import_onnxruntime()
        self.sides = [{n: np.zeros(s, dtype=dtypes[n]) for n, s in shapes.items()} for _ in range(1 if in_place else 2)]
        self.bindings = []
        for i, side in enumerate(self.sides):
            binding = session.io_binding()
            for n in shapes:  # the OrtValues wrap the numpy memory (no copy) and keep the arrays alive
                binding.bind_ortvalue_input(n, ort.OrtValue.ortvalue_from_numpy(side[n]))
                binding.bind_ortvalue_output(
                    PRESENT + n[len(PAST) :], ort.OrtValue.ortvalue_from_numpy(self.sides[self.after(i)][n])
                )
            self.bindings.append(binding)

    def after(self, side: int) -> int:
        """The set that holds the presents of ``bindings[side]``."""
        return (side + 1) % len(self.sides)

    def side_of(self, cache: dict[str, np.ndarray]) -> int | None:
        return next((i for i, side in enumerate(self.sides) if cache is side), None)


class OnnxBackend:
    name = "onnxruntime"

    def __init__(self, files: dict[str, str | Path], threads: int | None = None, io_binding: bool = True):
        """``files``: component name -> .onnx path (audio_encoder optional). ``io_binding``: keep the
        KV cache in place between calls (see the module docstring); may be changed between calls."""
        missing = [c for c in REQUIRED_COMPONENTS if c not in files]
        if missing:
            raise BundleError(f"no ONNX model for {', '.join(missing)}")
        self.threads = threads
        # An image bucket's session is created when an image of that bucket first comes: each holds its
        # own repacked copy of the vision weights (0.6 GB at 9B), so loading all of them up front costs
        # memory for buckets a conversation may never use.
        self.vision_files = {c: Path(p) for c, p in files.items() if is_vision_method(c)}
        for path in self.vision_files.values():
            if not path.is_file():
                raise BundleError(f"{path}: no such ONNX model")
        self.models = {
            c: OnnxModel(p, threads) for c, p in files.items() if c in COMPONENTS and c not in self.vision_files
        }
        dec = self.models["text_decoder"]
        self.cache_inputs = [n for n in dec.inputs if n.startswith(PAST)]
        if not self.cache_inputs or any(PRESENT + n[len(PAST) :] not in dec.output_names for n in self.cache_inputs):
            raise BundleError(f"{dec.path}: expected past_*/present_* KV-cache inputs and outputs")
        self._cache_shapes = {}
        for n in self.cache_inputs:
            shape = dec.inputs[n].shape
            if not all(isinstance(d, int) for d in shape):
                raise BundleError(
                    f"{dec.path}: KV-cache input {n} has a dynamic shape {shape}; expected a static cache"
                )
            self._cache_shapes[n] = tuple(shape)
        self._present_index = {n: dec.output_names.index(PRESENT + n[len(PAST) :]) for n in self.cache_inputs}
        if "logits" not in dec.output_names:
            raise BundleError(f"{dec.path}: no 'logits' output")
        self._logits_index = dec.output_names.index("logits")
        logits = dec.session.get_outputs()[self._logits_index]
        # the bound path preallocates float32 logits [1, S, vocab]: it needs a static vocab size
        self._vocab = logits.shape[-1] if logits.type == "tensor(float)" and isinstance(logits.shape[-1], int) else None
        self.max_context = next(iter(self._cache_shapes.values()))[2]
        self.io_binding = io_binding
        dtypes = {n: _NP_TYPES.get(dec.inputs[n].type, np.float32) for n in self.cache_inputs}
        self.cache_in_place = updates_cache_in_place(dec.session)
        self._bound = BoundCache(dec.session, self._cache_shapes, dtypes, self.cache_in_place)
        # The pasts of the next call. With IO binding these are one of the two bound sets, reused
        # from call to call: copy them to keep a snapshot.
        self.cache: dict[str, np.ndarray] = {}
        self.reset()

    @classmethod
    def from_bundle(cls, bundle, threads: int | None = None) -> OnnxBackend:
        """The backend for an opened ONNX Bundle; the cache size must agree with the manifest's spec."""
        if bundle.target != "onnx":
            raise BundleError(f"{bundle.root}: a {bundle.target} bundle, not an ONNX one")
        models = bundle.manifest.get("models")
        if not isinstance(models, dict):
            raise BundleError(f"{bundle.root}: manifest.json has no 'models' table")
        backend = cls({c: bundle.path(m["file"]) for c, m in models.items()}, threads)
        if backend.max_context != bundle.spec.max_context:
            raise BundleError(
                f"{bundle.root}: text_decoder's KV cache holds {backend.max_context} positions but "
                f"manifest.json says max_context {bundle.spec.max_context}"
            )
        return backend

    def vision_encoder(self, pixel_values: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
        method = method_among(size, self.vision_files)
        if method not in self.models:
            self.models[method] = OnnxModel(self.vision_files[method], self.threads)
        return self.models[method].run({"pixel_values": pixel_values})[0]

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
            raise BundleError(
                f"cache positions {cache_position.min()}..{cache_position.max()} are outside the "
                f"KV cache (0..{self.max_context - 1})"
            )
        if np.any(np.diff(cache_position) != 1):
            raise BundleError(f"cache positions {cache_position.tolist()} are not consecutive slots")
        feeds = {"inputs_embeds": embeds, "cache_position": cache_position, "position_ids": position_ids}
        if self.io_binding and self._vocab is not None and np.ndim(embeds) == 3:
            return self._decode_bound(feeds)
        # Unbound (also for logits the bound path cannot preallocate, and for malformed inputs,
        # which onnxruntime then reports by name)
        outs = self.models["text_decoder"].run({**feeds, **self.cache})
        self.cache = {n: outs[i] for n, i in self._present_index.items()}
        return outs[self._logits_index]

    def _decode_bound(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        side = self._bound.side_of(self.cache)
        if side is None:  # the cache came from an unbound call: move it into a bound set once
            side = 0
            for n, buf in self._bound.sides[0].items():
                np.copyto(buf, self.cache[n])
        binding = self._bound.bindings[side]
        # logits into a fresh array per call, as InferenceSession.run returns them
        logits = np.empty((1, np.shape(feeds["inputs_embeds"])[1], self._vocab), dtype=np.float32)
        binding.bind_output("logits", "cpu", 0, np.float32, list(logits.shape), logits.ctypes.data)
        self.models["text_decoder"].run_bound(binding, feeds)
        self.cache = self._bound.sides[self._bound.after(side)]
        return logits

    def reset(self) -> None:
        self.cache = self._bound.sides[0]
        for buf in self.cache.values():
            buf.fill(0)

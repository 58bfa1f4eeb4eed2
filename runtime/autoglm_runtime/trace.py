"""Golden traces: everything the reference runtime does for one request, as JSON.

The demo apps (android_demo/, ios_demo/) re-implement the prompt, positions, preprocessing and the
generation loop. Their tests replay a trace: they rebuild the prompt text, token ids, positions and
preprocessed tensors from the same request and check them against the trace, and a replay engine
answers their model calls with the outputs recorded here, so the same calls must come in the same
order with the same inputs.

A trace records two levels:

- ``calls``: each call into a model file, as an app makes it (ExecuTorch: ``Module.execute(method,
  ...)``; Core ML: one package function's prediction), with every input's name, shape, dtype,
  sha256 and samples, and every output (in full when small, else the top-k of the last row).
- ``steps``: per generated token, the top-k of the logits it was sampled from, the token and the
  text it streamed.

Digests are sha256 of the C-order little-endian bytes in the dtype given (what a Java/Swift test can
recompute from its own buffers).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .bundle import MANIFEST_NAME, Bundle, sha256_file
from .errors import InputError
from .sampling import SamplingConfig
from .session import PreparedPrompt, Session
from .tokenizer import StreamDecoder

TRACE_VERSION = 1
SAMPLES = 64  # evenly spaced values kept per tensor besides its digest
PREPROCESSED_SAMPLES = 512
TOP_K = 10
FULL_OUTPUT_LIMIT = 1 << 16  # outputs up to this many elements are stored whole (embeddings), for replay


def digest(a: np.ndarray) -> str:
    """sha256 of the array's C-order little-endian bytes."""
    a = np.ascontiguousarray(a)
    return hashlib.sha256(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()).hexdigest()


def _plain(v: Any) -> Any:
    """A JSON-safe scalar: strict JSON has no infinities (causal masks hold -inf), so they become strings."""
    v = v.item() if isinstance(v, np.generic) else v
    if isinstance(v, float) and not np.isfinite(v):
        return "nan" if np.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


def describe(a: np.ndarray, name: str | None = None, samples: int = SAMPLES) -> dict[str, Any]:
    """Shape, dtype, digest, statistics and evenly spaced samples [flat index, value] of a tensor."""
    a = np.asarray(a)
    flat = a.reshape(-1)
    out: dict[str, Any] = {
        "shape": list(a.shape),
        "dtype": str(a.dtype),
        "sha256": digest(a),
    }
    if name is not None:
        out = {"name": name, **out}
    if flat.size:
        idx = np.unique(np.linspace(0, flat.size - 1, min(samples, flat.size)).round().astype(np.int64))
        out["samples"] = [[int(i), _plain(flat[i])] for i in idx]
        if np.issubdtype(a.dtype, np.floating):
            f = flat.astype(np.float64)
            finite = f[np.isfinite(f)]
            out["stats"] = {
                "mean": float(finite.mean()) if finite.size else 0.0,
                "abs_mean": float(np.abs(finite).mean()) if finite.size else 0.0,
                "min": float(finite.min()) if finite.size else 0.0,
                "max": float(finite.max()) if finite.size else 0.0,
            }
        else:
            out["values"] = flat.tolist() if flat.size <= 4096 else None
    return out


def top_k(row: np.ndarray, k: int = TOP_K) -> list[list[float]]:
    """[[token id, logit], ...] best first; ties broken by the lower id (as argmax does)."""
    row = np.asarray(row, dtype=np.float32).reshape(-1)
    order = np.argsort(-row, kind="stable")[:k]
    return [[int(i), float(row[i])] for i in order]


def describe_output(a: np.ndarray, name: str) -> dict[str, Any]:
    """An output as a replay engine needs it: whole (base64 float32/int) when small, else last-row top-k."""
    a = np.asarray(a)
    out = describe(a, name)
    if a.size <= FULL_OUTPUT_LIMIT:
        le = np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<"), copy=False)
        out["data_b64"] = base64.b64encode(le.tobytes()).decode("ascii")
    elif a.ndim >= 1 and np.issubdtype(a.dtype, np.floating):
        out["last_row_top_k"] = top_k(a.reshape(-1, a.shape[-1])[-1])
    return out


@dataclass
class CallRecorder:
    """Collects model-file calls in order."""

    calls: list[dict[str, Any]] = field(default_factory=list)

    def record(
        self,
        method: str,
        function: str | None,
        inputs: dict[str, np.ndarray],
        outputs: dict[str, np.ndarray],
    ):
        self.calls.append(
            {
                "index": len(self.calls),
                "method": method,
                "function": function,
                "inputs": [describe(np.asarray(v), k) for k, v in inputs.items()],
                "outputs": [describe_output(np.asarray(v), k) for k, v in outputs.items()],
            }
        )


def _io_names(manifest: dict[str, Any], method: str) -> tuple[list[str], list[str]]:
    spec = (manifest.get("methods") or {}).get(method) or {}
    return [i["name"] for i in spec.get("inputs", [])], [o["name"] for o in spec.get("outputs", [])]


def hook_model_calls(backend: Any, manifest: dict[str, Any], recorder: CallRecorder) -> None:
    """Wrap the backend's one entry point into its model files so every call is recorded.

    The wrapper is installed on this backend instance only and returns exactly what the original returns.
    """
    if backend.name == "executorch":
        program = backend.program
        original = program.run

        def run(name: str, *arrays: np.ndarray) -> list[np.ndarray]:
            outs = original(name, *arrays)
            in_names, out_names = _io_names(manifest, name)
            in_names = in_names if len(in_names) == len(arrays) else [f"input{i}" for i in range(len(arrays))]
            out_names = out_names if len(out_names) == len(outs) else [f"output{i}" for i in range(len(outs))]
            # Record in the dtypes the program takes (the backend casts before calling run).
            recorder.record(name, None, dict(zip(in_names, arrays)), dict(zip(out_names, outs)))
            return outs

        program.run = run
    elif backend.name == "coreml":
        original = backend._run
        files = {comp: pkg["file"] for comp, pkg in backend.packages.items()}
        decoder_files = [c["file"] for c in backend.chunks]

        def _run(component: str, inputs: dict, function: str = "main", state: Any = None, chunk: int = 0) -> dict:
            outs = original(component, inputs, function, state, chunk=chunk)
            # A chained decoder records each package's own file; Core ML takes inputs by name, so keep
            # the dtypes the backend built (fp16 / int32).
            file = decoder_files[chunk] if component == "text_decoder" else files.get(component, component)
            recorder.record(file, function, dict(inputs), dict(outs))
            return outs

        backend._run = _run
    else:
        raise InputError(f"tracing model calls is not supported for the {backend.name} backend")


class _TracingSession(Session):
    """A Session that keeps the prepared prompt and the preprocessed tensors it built."""

    prepared: PreparedPrompt | None = None

    def prepare(self, *args, **kwargs) -> PreparedPrompt:
        self.prepared = super().prepare(*args, **kwargs)
        return self.prepared


def _media(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    return {
        "file": Path(path).name,
        "sha256": sha256_file(path),
        "bytes": Path(path).stat().st_size,
    }


def trace_request(
    bundle: Bundle,
    backend: Any,
    prompt: str,
    *,
    image: Path | None = None,
    audio: Path | None = None,
    system: str | None = None,
    max_new_tokens: int = 16,
    sampling: SamplingConfig | None = None,
    enable_thinking: bool | None = None,
) -> dict[str, Any]:
    """Run one request through the bundle's runtime and return its trace (a JSON-ready dict); greedy by default."""
    sampling = sampling or SamplingConfig()
    if bundle.tokenizer_path is None:
        raise InputError(f"{bundle.root}: the bundle has no tokenizer.json")
    recorder = CallRecorder()
    preprocessed: dict[str, np.ndarray] = {}
    _keep_component_inputs(backend, preprocessed)
    hook_model_calls(backend, bundle.manifest, recorder)
    session = _TracingSession(
        backend,
        bundle.tokenizer_path,
        bundle.spec,
        prefill_chunk=bundle.manifest.get("max_seq_len"),
    )
    result = session.generate(
        prompt,
        image=image,
        audio=audio,
        system=system,
        max_new_tokens=max_new_tokens,
        sampling=sampling,
        enable_thinking=enable_thinking,
        keep_logits=True,
    )
    inputs = session.prepared.inputs
    tokenizer = session.tokenizer
    stream = StreamDecoder(tokenizer, skip_special_tokens=True)
    eos = set(bundle.spec.eos_token_ids)
    steps = []
    for i, (token, logits) in enumerate(zip(result.token_ids, result.logits)):
        # The same deltas Session.generate streamed: EOS is never pushed.
        text = "" if token in eos else stream.push(token)
        steps.append({"step": i, "top_k": top_k(logits), "token": int(token), "text": text})
    tail = stream.finish()
    return {
        "trace_version": TRACE_VERSION,
        "bundle": {
            "target": bundle.target,
            "manifest_sha256": sha256_file(bundle.root / MANIFEST_NAME),
            "tokenizer_sha256": sha256_file(bundle.tokenizer_path),
        },
        "request": {
            "prompt": prompt,
            "system": system,
            "image": _media(image),
            "audio": _media(audio),
            "max_new_tokens": max_new_tokens,
            "sampling": {
                "temperature": sampling.temperature,
                "top_p": sampling.top_p,
                "seed": sampling.seed,
            },
            "enable_thinking": enable_thinking,
        },
        "prompt": {
            "text": inputs.prompt,
            "token_ids": tokenizer.encode(inputs.prompt),  # the tokenizer's ids, before placeholder expansion
            "input_ids": inputs.input_ids.tolist(),
            "mm_token_types": inputs.mm_token_types.tolist(),
            "position_ids": inputs.position_ids.tolist(),
            "rope_delta": int(inputs.rope_delta),
        },
        "preprocessed": {k: describe(v, k, PREPROCESSED_SAMPLES) for k, v in preprocessed.items()},
        "calls": recorder.calls,
        "steps": steps,
        "generated": {
            "token_ids": [int(t) for t in result.token_ids],
            "text": result.text,
            "stream_tail": tail,
            "stop_reason": result.stop_reason,
        },
    }


def _keep_component_inputs(backend: Any, store: dict[str, np.ndarray]) -> None:
    """Keep the float32 pixel_values / input_features the session hands the encoders (before any cast)."""
    for method, key in (
        ("vision_encoder", "pixel_values"),
        ("audio_encoder", "input_features"),
    ):
        original: Callable = getattr(backend, method)

        def wrapped(x: np.ndarray, *rest, _original=original, _key=key) -> np.ndarray:
            store[_key] = np.asarray(x, dtype=np.float32).copy()
            return _original(x, *rest)

        setattr(backend, method, wrapped)


def write_trace(trace: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(
        json.dumps(trace, ensure_ascii=False, indent=1, allow_nan=False),
        encoding="utf-8",
    )
    tmp.replace(out)

"""The parity probes and running any backend on them (the first half of every parity check).

1. ``build_probes``: calibration prompts (text + their committed screenshot and speech clip) turned
   into exact component inputs by the runtime's own prompt/preprocessing code, plus a short greedy
   continuation from the fp32 model so the decoder is checked through prefill *and* decode.
   Each image takes its bucket (as transformers' processor sizes it); the first image is also resized to
   every other bucket, so every vision method of an export with aspect buckets is checked.
2. ``run_components``: run any backend (eager torch, ExecuTorch, onnxruntime, Core ML interpreter)
   on those inputs: encoder embeddings (every bucket's, as rows of ``vision_encoder``), token embeddings,
   and teacher-forced decoder logits over prefill chunks followed by single-token decode steps through
   the KV cache.

``checks.against_references.compare`` then judges the outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoglm_runtime.positions import decode_positions
from autoglm_runtime.preprocess import prepare_image, preprocess_audio, preprocess_image
from autoglm_runtime.prompt import Message, encode_chat
from autoglm_runtime.spec import ModelSpec
from autoglm_runtime.splice import splice
from autoglm_runtime.tokenizer import Tokenizer

from ..calibration import load_calibration_set, load_image, load_speech, synthetic_screenshot, synthetic_speech
from ..components import COMPONENTS
from ..errors import ExportError
from ..sizes import LARGE_MODEL_PARAMS

# When the calibration set is not there (an installed package without the repository's
# calibration_data/): the same kinds of case, with synthetic media.
FALLBACK_CASES = [
    ("zh-wechat-send", "打开微信，给张三发消息：明天上午十点开会。", True, True),
    ("en-taobao-search", "Search Taobao for a phone case and open the first result.", True, False),
    ("zh-settings-wifi", "打开设置，把无线网络切换到“Office-5G”。", False, False),
]


@dataclass
class ProbeCase:
    case_id: str
    text: str
    image: object | None  # RGB array or PIL image, when the case has one
    audio: np.ndarray | None


def probe_cases(limit: int) -> list[ProbeCase]:
    """The first ``limit`` calibration prompts with their committed media (synthetic ones without the set)."""
    try:
        prompts = load_calibration_set().prompts[:limit]
    except ExportError:
        return [
            ProbeCase(
                cid, text, synthetic_screenshot(seed=i) if img else None, synthetic_speech(seed=i) if aud else None
            )
            for i, (cid, text, img, aud) in enumerate(FALLBACK_CASES[:limit])
        ]
    return [
        ProbeCase(
            p.id,
            p.text,
            load_image(p.image) if p.image is not None else None,
            load_speech(p.audio) if p.audio is not None else None,
        )
        for p in prompts
    ]


@dataclass
class Probe:
    """One calibration case, as exact component inputs."""

    case_id: str
    token_ids: np.ndarray  # [S] expanded prompt ids
    position_ids: np.ndarray  # [3, S]
    rope_delta: int
    pixels: np.ndarray | None
    audio_features: np.ndarray | None
    size: tuple[int, int] | None = None  # the image's bucket (height, width)
    other_buckets: list[tuple[tuple[int, int], np.ndarray]] | None = None  # the image at every other bucket
    prompt_embeds: np.ndarray | None = None  # [1, S, D] from the fp32 reference (images/audio spliced in)
    continuation: list[int] | None = None  # greedy tokens of the fp32 reference
    continuation_embeds: np.ndarray | None = None  # [1, K, D]
    reference_trace: np.ndarray | None = None  # the fp32 decoder trace that chose them (``reference_traces``)


# Above LARGE_MODEL_PARAMS an eager decoder call takes seconds to minutes (each weight converted to
# fp32 as its module runs): the gate then runs the first two cases (a screenshot prompt among them)
# with three decode steps, still through prefill chunks and the KV cache, instead of three with six.


def probe_budget(params: int) -> tuple[int, int]:
    """(cases, decode steps) of the parity probes for a model of ``params`` parameters."""
    return (3, 6) if params <= LARGE_MODEL_PARAMS else (2, 3)


def build_probes(
    spec: ModelSpec, tokenizer_path: Path, fp32_backend, cases: int = 3, decode_steps: int = 6, max_seq_len: int = 128
) -> list[Probe]:
    """The probes, their decoder inputs fixed by the fp32 reference: the prompt embeddings, and a greedy
    continuation chosen while the fp32 decoder runs the probe's trace (prefill in ``max_seq_len``
    chunks, then the steps), which is kept as ``reference_trace``: the decoder runs once per probe."""
    tok = Tokenizer(tokenizer_path)
    probes = []
    for case in probe_cases(cases):
        parts: list[dict] = []
        pixels = feats = image = None
        if case.image is not None:
            parts.append({"type": "image"})
            image = prepare_image(case.image, spec.image)
            pixels = image.pixels
        if case.audio is not None and spec.has_audio:
            parts.append({"type": "audio"})
            feats = preprocess_audio(case.audio, spec.audio)
        parts.append({"type": "text", "text": case.text})
        inputs = encode_chat(
            tok,
            [Message("user", parts)],
            image_grids=[image.spec.grid_thw] if image else None,
            spatial_merge_size=spec.image.merge_size,
            audio_tokens_per_clip=spec.audio_tokens,
        )
        probe = Probe(case.case_id, inputs.input_ids, inputs.position_ids, inputs.rope_delta, pixels, feats)
        if image is not None:
            probe.size = image.size
            if not any(p.other_buckets for p in probes):
                probe.other_buckets = [
                    (b, preprocess_image(case.image, spec.image.at(b))) for b in spec.image.sizes if b != image.size
                ]
        _complete_with_reference(probe, spec, fp32_backend, decode_steps, max_seq_len)
        probes.append(probe)
    return probes


def _splice(backend, probe: Probe, spec: ModelSpec) -> np.ndarray:
    return splice(
        backend.token_embedding(probe.token_ids[None]),
        probe.token_ids,
        spec,
        backend.vision_encoder(probe.pixels, probe.size) if probe.pixels is not None else None,
        backend.audio_encoder(probe.audio_features) if probe.audio_features is not None else None,
    )


def _complete_with_reference(probe: Probe, spec: ModelSpec, backend, steps: int, max_seq_len: int) -> None:
    """Fix the decoder's inputs once, from the fp32 reference: every backend then sees the same."""
    probe.prompt_embeds = _splice(backend, probe, spec)
    probe.reference_trace = decoder_trace(backend, probe, max_seq_len, greedy_steps=steps)


def reference_traces(probes: list[Probe]) -> np.ndarray:
    """The fp32 decoder traces ``build_probes`` ran, as ``run_components`` would return them (taken
    once: the probes then no longer hold them)."""
    traces = [p.reference_trace for p in probes]
    for p in probes:
        p.reference_trace = None
    return np.concatenate(traces, axis=0)


def decoder_trace(backend, probe: Probe, max_seq_len: int, greedy_steps: int | None = None) -> np.ndarray:
    """Teacher-forced logits [S + K, vocab]: prefill in chunks of max_seq_len, then K single-token steps.

    ``greedy_steps`` (the fp32 reference, in ``build_probes``): the K tokens are chosen as the logits
    come (argmax) and become the probe's continuation."""
    backend.reset()
    n = len(probe.token_ids)
    rows = []
    for start in range(0, n, max_seq_len):
        end = min(start + max_seq_len, n)
        rows.append(
            backend.text_decoder(
                probe.prompt_embeds[:, start:end], np.arange(start, end), probe.position_ids[:, start:end]
            )[0]
        )
    if greedy_steps is not None:
        probe.continuation = []
    for k in range(len(probe.continuation) if greedy_steps is None else greedy_steps):
        if greedy_steps is not None:
            probe.continuation.append(int(np.argmax(rows[-1][-1])))
        # As in generation: an embedding call between decoder steps. Teacher-forced runs discard its
        # output (all backends get the same fp32 embeddings), but a runtime whose methods share memory
        # with the KV cache is caught here.
        step = backend.token_embedding(np.array([[probe.continuation[k]]]))
        if greedy_steps is None:
            step = probe.continuation_embeds[:, k : k + 1]
        rows.append(backend.text_decoder(step, np.array([n + k]), decode_positions(n + k, probe.rope_delta, 1))[0])
    if greedy_steps is not None:
        probe.continuation_embeds = backend.token_embedding(np.array([probe.continuation]))
    backend.reset()
    return np.concatenate(rows, axis=0)


def run_components(
    backend, probes: list[Probe], max_seq_len: int, components: tuple[str, ...] = COMPONENTS
) -> dict[str, np.ndarray]:
    """Every component's outputs (or those of ``components``) over all probes, concatenated along the row axis."""
    out: dict[str, list[np.ndarray]] = {c: [] for c in components}
    for probe in probes:
        if "vision_encoder" in out:
            if probe.pixels is not None:
                out["vision_encoder"].append(backend.vision_encoder(probe.pixels, probe.size))
            for size, pixels in probe.other_buckets or ():
                out["vision_encoder"].append(backend.vision_encoder(pixels, size))
        if "audio_encoder" in out and probe.audio_features is not None:
            out["audio_encoder"].append(backend.audio_encoder(probe.audio_features))
        if "token_embedding" in out:
            out["token_embedding"].append(backend.token_embedding(probe.token_ids[None])[0])
        if "text_decoder" in out:
            out["text_decoder"].append(decoder_trace(backend, probe, max_seq_len))
    return {c: np.concatenate(v, axis=0) for c, v in out.items() if v}

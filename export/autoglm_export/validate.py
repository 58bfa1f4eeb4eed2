"""The validation framework every target shares.

1. ``build_probes``: calibration prompts (text + their committed screenshot and speech clip) turned into
   exact component inputs by the runtime's own prompt/preprocessing code, plus a short greedy
   continuation from the fp32 model so the decoder is checked through prefill *and* decode.
2. ``run_components``: run any backend (eager torch, ExecuTorch, onnxruntime, Core ML interpreter)
   on those inputs: encoder embeddings, token embeddings, and teacher-forced decoder logits over
   prefill chunks followed by single-token decode steps through the KV cache.
3. ``compare``: the backend's outputs against the references ("fp32" original and
   "quantized_eager": the eager model with the same quantization), with the thresholds of
   ``autoglm_runtime.parity``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoglm_runtime.parity import ParityReport, compare_arrays, thresholds_for
from autoglm_runtime.positions import decode_positions
from autoglm_runtime.preprocess import preprocess_audio, preprocess_image
from autoglm_runtime.prompt import Message, encode_chat
from autoglm_runtime.spec import ModelSpec
from autoglm_runtime.tokenizer import Tokenizer

from .verify import synthetic_screenshot

CALIBRATION_DIR = Path(__file__).resolve().parents[2] / "calibration_data"
FALLBACK_PROMPTS = [
    {"id": "zh-wechat-send", "image": True, "audio": True, "text": "打开微信，给张三发消息：明天上午十点开会。"},
    {"id": "en-taobao-search", "image": True, "audio": False, "text": "Search Taobao for a phone case and open the first result."},
    {"id": "zh-settings-wifi", "image": False, "audio": False, "text": "打开设置，把无线网络切换到“Office-5G”。"},
]
COMPONENTS = ("vision_encoder", "audio_encoder", "token_embedding", "text_decoder")


def calibration_prompts(limit: int | None = None) -> list[dict]:
    path = CALIBRATION_DIR / "prompts.jsonl"
    prompts = [json.loads(l) for l in path.read_text(encoding="utf-8").splitlines() if l.strip()] if path.exists() else FALLBACK_PROMPTS
    return prompts[:limit] if limit else prompts


def synthetic_speech(spec_rate: int = 16000, seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    """A voiced chirp with harmonics and a little noise: speech-like spectra without a recording."""
    t = np.arange(int(spec_rate * seconds)) / spec_rate
    f0 = 120 + 60 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / spec_rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2)
    noise = 0.02 * np.random.default_rng(seed).standard_normal(t.size)
    return (0.2 * voiced + noise).astype(np.float32)


@dataclass
class Probe:
    """One calibration case, as exact component inputs."""

    case_id: str
    token_ids: np.ndarray  # [S] expanded prompt ids
    position_ids: np.ndarray  # [3, S]
    rope_delta: int
    pixels: np.ndarray | None
    audio_features: np.ndarray | None
    prompt_embeds: np.ndarray | None = None  # [1, S, D] from the fp32 reference (images/audio spliced in)
    continuation: list[int] | None = None  # greedy tokens of the fp32 reference
    continuation_embeds: np.ndarray | None = None  # [1, K, D]


def _probe_media(case_id: str, index: int) -> tuple[object, object]:
    """The committed screenshot / speech clip of a calibration prompt; synthetic ones when the
    calibration set is not there (an installed package without the repository's calibration_data/)."""
    try:
        from .calibration import load_calibration_set, load_image, load_speech

        prompt = {p.id: p for p in load_calibration_set().prompts}.get(case_id)
    except Exception:  # noqa: BLE001 - any problem with the set: fall back, the probes stay valid
        prompt = None
    image = load_image(prompt.image) if prompt is not None and prompt.image is not None else synthetic_screenshot(seed=index)
    audio = load_speech(prompt.audio) if prompt is not None and prompt.audio is not None else synthetic_speech(seed=index)
    return image, audio


def build_probes(spec: ModelSpec, tokenizer_path: Path, fp32_backend, cases: int = 3, decode_steps: int = 6) -> list[Probe]:
    tok = Tokenizer(tokenizer_path)
    probes = []
    for i, case in enumerate(calibration_prompts(cases)):
        parts: list[dict] = []
        pixels = feats = None
        image, audio = _probe_media(case["id"], i)
        if case.get("image"):
            parts.append({"type": "image"})
            pixels = preprocess_image(image, spec.image)
        if case.get("audio") and spec.has_audio:
            parts.append({"type": "audio"})
            feats = preprocess_audio(audio, spec.audio)
        parts.append({"type": "text", "text": case["text"]})
        inputs = encode_chat(tok, [Message("user", parts)], image_grids=spec.image.grid_thw,
                             spatial_merge_size=spec.image.merge_size, audio_tokens_per_clip=spec.audio_tokens)
        probe = Probe(case["id"], inputs.input_ids, inputs.position_ids, inputs.rope_delta, pixels, feats)
        _complete_with_reference(probe, spec, fp32_backend, decode_steps)
        probes.append(probe)
    return probes


def _splice(backend, probe: Probe, spec: ModelSpec) -> np.ndarray:
    embeds = backend.token_embedding(probe.token_ids[None])
    if probe.pixels is not None:
        embeds[0, probe.token_ids == spec.image_token_id] = backend.vision_encoder(probe.pixels)
    if probe.audio_features is not None:
        embeds[0, probe.token_ids == spec.audio_token_id] = backend.audio_encoder(probe.audio_features)
    return embeds


def _complete_with_reference(probe: Probe, spec: ModelSpec, backend, steps: int) -> None:
    """Fix the decoder's inputs once, from the fp32 reference: every backend then sees the same."""
    probe.prompt_embeds = _splice(backend, probe, spec)
    backend.reset()
    n = len(probe.token_ids)
    logits = backend.text_decoder(probe.prompt_embeds, np.arange(n), probe.position_ids)[0, -1]
    tokens = []
    for k in range(steps):
        tokens.append(int(np.argmax(logits)))
        e = backend.token_embedding(np.array([[tokens[-1]]]))
        logits = backend.text_decoder(e, np.array([n + k]), decode_positions(n + k, probe.rope_delta, 1))[0, -1]
    probe.continuation = tokens
    probe.continuation_embeds = backend.token_embedding(np.array([tokens]))
    backend.reset()


def decoder_trace(backend, probe: Probe, max_seq_len: int) -> np.ndarray:
    """Teacher-forced logits [S + K, vocab]: prefill in chunks of max_seq_len, then K single-token steps."""
    backend.reset()
    n = len(probe.token_ids)
    rows = []
    for start in range(0, n, max_seq_len):
        end = min(start + max_seq_len, n)
        rows.append(backend.text_decoder(probe.prompt_embeds[:, start:end], np.arange(start, end),
                                         probe.position_ids[:, start:end])[0])
    for k in range(len(probe.continuation)):
        # As in generation: an embedding call between decoder steps. Its output is discarded (all
        # backends get the same fp32 embeddings), but a runtime whose methods share memory with
        # the KV cache is caught here.
        backend.token_embedding(np.array([[probe.continuation[k]]]))
        rows.append(backend.text_decoder(probe.continuation_embeds[:, k : k + 1], np.array([n + k]),
                                         decode_positions(n + k, probe.rope_delta, 1))[0])
    backend.reset()
    return np.concatenate(rows, axis=0)


def run_components(backend, probes: list[Probe], max_seq_len: int) -> dict[str, np.ndarray]:
    """Every component's outputs over all probes, concatenated along the row axis."""
    out: dict[str, list[np.ndarray]] = {c: [] for c in COMPONENTS}
    for probe in probes:
        if probe.pixels is not None:
            out["vision_encoder"].append(backend.vision_encoder(probe.pixels))
        if probe.audio_features is not None:
            out["audio_encoder"].append(backend.audio_encoder(probe.audio_features))
        out["token_embedding"].append(backend.token_embedding(probe.token_ids[None])[0])
        out["text_decoder"].append(decoder_trace(backend, probe, max_seq_len))
    return {c: np.concatenate(v, axis=0) for c, v in out.items() if v}


def per_position_errors(got: np.ndarray, ref: np.ndarray) -> dict[str, list[float]]:
    """Max abs logit error (relative to the reference's scale) and KL, one value per decoder position."""
    from autoglm_runtime.parity import kl_divergence

    scale = max(float(np.abs(ref).max()), 1e-6)
    rel = np.abs(got.astype(np.float64) - ref).max(axis=-1) / scale
    return {"rel_max_abs": [round(float(v), 8) for v in rel],
            "kl": [round(float(v), 10) for v in kl_divergence(ref, got)]}


def compare(target: str, got: dict[str, np.ndarray], references: dict[str, dict[str, np.ndarray]],
            quant_kinds: dict[str, str]) -> ParityReport:
    """references: {"quantized_eager": outputs, "fp32": outputs}; quant_kinds: component -> kind."""
    report = ParityReport(target=target, rows=[])
    for reference, ref_out in references.items():
        for comp, ref in ref_out.items():
            kind = quant_kinds[comp]
            if reference == "fp32" and kind == "fp32" and "quantized_eager" in references:
                continue  # unquantized component: the two references are the same model
            metrics = compare_arrays(comp, got[comp], ref, logits=comp == "text_decoder")
            th = thresholds_for(reference, kind, comp)
            failures = metrics.check(th)
            row = {"component": comp, "reference": reference, "quant_kind": kind,
                   "metrics": metrics.to_dict(), "thresholds": th.to_dict(),
                   "passed": not failures, "failures": failures}
            if comp == "text_decoder":  # per position, for the parity report's plots
                row["per_position"] = per_position_errors(got[comp], ref)
            report.rows.append(row)
    return report

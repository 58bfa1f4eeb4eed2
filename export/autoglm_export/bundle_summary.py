"""``autoglm-export info BUNDLE``: what a published bundle holds, read from its manifest (no model runs)."""

from __future__ import annotations

import json
from pathlib import Path

from autoglm_runtime.bundle import MANIFEST_NAME, PARITY_NAME, open_bundle
from autoglm_runtime.errors import BundleError


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _shape(spec: dict) -> str:
    return f"{spec.get('name', '?')} {spec.get('shape', '?')} {spec.get('dtype', '')}".strip()


def _methods(manifest: dict, spec) -> list[str]:
    """The program's methods with their inputs where the target records them (ExecuTorch), else the
    components from the runtime spec with the shapes every target shares."""
    methods = manifest.get("methods")
    if isinstance(methods, dict) and methods:
        return [
            f"  {name}: " + (", ".join(_shape(i) for i in m.get("inputs", []) if isinstance(i, dict)) or "no inputs")
            for name, m in methods.items()
            if isinstance(m, dict)
        ]
    img = spec.image
    rows = [f"  vision_encoder: pixel_values [{img.num_patches}, {img.patch_dim}] -> {spec.image_tokens} tokens"]
    if spec.has_audio:
        rows.append(
            f"  audio_encoder: input_features [1, {spec.audio.num_mel_bins}, {spec.audio.num_frames}] "
            f"-> {spec.audio_tokens} tokens"
        )
    rows.append("  token_embedding: token_ids [1, S]")
    rows.append(f"  text_decoder: inputs_embeds [1, S, {spec.hidden_size}] -> logits [1, S, {spec.vocab_size}]")
    return rows


def _validation(manifest: dict, root: Path) -> str:
    if manifest.get("validated") is False:
        return "NOT validated (exported with --no-validate; `autoglm-export validate` checks it)"
    parity = root / PARITY_NAME
    if not parity.is_file():
        return "unknown (no parity.json)"
    try:
        rows = json.loads(parity.read_text(encoding="utf-8")).get("rows", [])
        passed = sum(bool(r.get("passed")) for r in rows)
    except (ValueError, AttributeError, TypeError):
        return f"unknown ({PARITY_NAME} is unreadable)"
    engine = manifest.get("validated_with")
    return f"validated at export{f' with {engine}' if engine else ''}: {passed}/{len(rows)} parity checks pass"


def summarize_bundle(root: Path) -> list[str]:
    bundle = open_bundle(root, verify_hashes=False)  # sizes are checked; hashes are `validate`'s job
    try:
        return _summary(root, bundle)
    except (TypeError, ValueError, AttributeError, KeyError) as e:  # extras the runtime does not need
        raise BundleError(f"{root / MANIFEST_NAME}: unexpected value ({type(e).__name__}: {e})") from None


def _summary(root: Path, bundle) -> list[str]:
    m, spec = bundle.manifest, bundle.spec
    src = m.get("source") or {}
    origin = src.get("checkpoint") or f"preset {src.get('preset', '?')}"
    shape = m.get("export_shape") or {}
    quant = m.get("quantization") or {}
    files = bundle.files
    total = sum(int(f.get("bytes", 0)) for f in files.values())
    top: dict[str, int] = {}
    for name, f in files.items():  # a .mlpackage is many files: sum them under their top folder
        top[name.split("/")[0]] = top.get(name.split("/")[0], 0) + int(f.get("bytes", 0))
    lines = [
        f"bundle {root}: target {bundle.target}, {m.get('created_by', 'unknown exporter')}, from {origin}",
        f"validation: {_validation(m, root)}",
        f"shapes: max_context {spec.max_context}, image {spec.image.height}x{spec.image.width} ({spec.image_tokens} tokens"
        + spec.image.buckets_text()
        + ")"
        + (
            f", audio {shape.get('audio_frames', spec.audio.num_frames)} frames ({spec.audio_tokens} tokens)"
            if spec.has_audio
            else ", no audio"
        )
        + (f", max_seq_len {m['max_seq_len']}" if m.get("max_seq_len") else ""),
        "methods:",
        *_methods(m, spec),
        f"quantization: {json.dumps(quant.get('recipe', quant.get('linear', 'none')))}"
        + (f"; kinds {json.dumps(quant['kinds'])}" if isinstance(quant.get("kinds"), dict) else ""),
        f"size: {_mb(total)} in {len(files)} files: "
        + ", ".join(f"{k} {_mb(v)}" for k, v in sorted(top.items(), key=lambda kv: -kv[1])),
    ]
    return lines

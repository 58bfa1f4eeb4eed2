"""What ``info`` prints: sizes, shapes and memory of a model source, from its structure alone.

Works on a model still on the meta device; a checkpoint is checked by its headers (names, shapes,
dtypes), never by reading weights, so it answers in seconds at 10B parameters.
"""

from __future__ import annotations

from .loader import check_checkpoint
from .sizes import human_bytes, kv_cache_bytes, param_counts
from .source import ModelSource


def describe(src: ModelSource, preset: str) -> list[str]:
    cfg, model, s = src.config, src.model, src.spec
    t, v = cfg.text, cfg.vision
    n = param_counts(model)
    moe = f", MoE {t.n_routed_experts} experts top-{t.num_experts_per_tok}" if t.is_moe else ""
    audio = f", audio {s.audio.num_frames} frames -> {s.audio_tokens} tokens" if s.audio else ""
    shapes_of = f" (export shapes of preset {preset})" if src.label != preset else ""
    lines = [f"[bold]{src.label}[/] ({cfg.model_type})"]
    lines.append(
        f"  text    {n['text'] / 1e6:9.2f} M params (embedding {n['text.embed_tokens'] / 1e6:.2f} M, "
        f"layers x{t.num_hidden_layers} {n['text.layers'] / 1e6:.2f} M, lm_head {n['text.lm_head'] / 1e6:.2f} M)"
    )
    lines += [f"  {name:7s} {n[name] / 1e6:9.2f} M params" for name in ("vision", "audio") if n[name]]
    lines.append(
        f"  total   {n['total'] / 1e6:9.2f} M params: {human_bytes(n['total'] * 2)} in bf16, "
        f"{human_bytes(n['total'] * 4)} in fp32"
    )
    lines.append(
        f"  decoder: hidden {t.hidden_size}, layers {t.num_hidden_layers}, heads {t.num_attention_heads}/"
        f"{t.num_key_value_heads} kv, head_dim {t.head_dim}, rotary {t.rotary_dim} mrope {list(t.mrope_section)}, "
        f"ffn {t.intermediate_size}, vocab {t.vocab_size}{moe}"
    )
    lines.append(
        f"  vision: depth {v.depth}, hidden {v.hidden_size}, heads {v.num_heads}, patch {v.patch_size}, "
        f"merge {v.spatial_merge_size} -> {v.out_hidden_size}"
    )
    lines.append(
        f"  context {s.max_context}, image {s.image.height}x{s.image.width} -> {s.image_tokens} tokens"
        f"{s.image.buckets_text()}{audio}{shapes_of}"
    )
    lines.append(
        f"  shapes: vision_encoder [{model.vision.num_patches}, {model.vision.patch_dim}] -> "
        f"[{s.image_tokens}, {t.hidden_size}]; token_embedding [1, S] -> [1, S, {t.hidden_size}]; "
        f"text_decoder [1, S, {t.hidden_size}] -> logits [1, S, {t.vocab_size}]"
    )
    fp32, fp16 = kv_cache_bytes(t, s.max_context, 4), kv_cache_bytes(t, s.max_context, 2)
    lines.append(
        f"  KV cache at context {s.max_context}: {fp32} bytes fp32 ({human_bytes(fp32)}), {fp16} bytes fp16 "
        f"({human_bytes(fp16)}); {kv_cache_bytes(t, 1, 2)} bytes/token fp16"
    )
    if src.checkpoint is not None:
        for c in check_checkpoint(model, src.checkpoint, src.audio_checkpoint):
            lines.append(
                f"  checkpoint {c.path}: {c.shards} shard(s), {c.tensors} tensors, {human_bytes(c.nbytes)} "
                f"{'/'.join(c.dtypes)}" + (f", {c.skipped} unused" if c.skipped else "")
            )
    if src.tokenizer_path is not None:
        from autoglm_runtime.tokenizer import Tokenizer

        known = int(Tokenizer(src.tokenizer_path).known_ids().sum())
        pad = (
            f"; the other {t.vocab_size - known} embedding rows are padding, never sampled"
            if known < t.vocab_size
            else ""
        )
        lines.append(f"  tokenizer: {known} ids{pad}")
    return lines

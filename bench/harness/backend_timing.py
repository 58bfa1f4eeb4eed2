"""Prefill, decode and the encoders through a runtime backend, the same way for every runtime.

A backend is numpy in, numpy out (``ExecuTorchBackend``, ``OnnxBackend``, ``TorchBackend``): its
``text_decoder``, ``token_embedding``, ``vision_encoder``, ``audio_encoder`` and ``reset``.
"""

from __future__ import annotations

import time

import numpy as np

from .timing import Timing, time_runs


def text_positions(start: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """cache_position [length] and text-only M-RoPE position_ids [3, length] (the same on all planes)."""
    pos = np.arange(start, start + length, dtype=np.int64)
    return pos, np.ascontiguousarray(np.broadcast_to(pos, (3, length)))


def workload(args, *, hidden: int, pixel_shape: tuple, mel_shape: tuple | None, console) -> dict:
    """``measure_backend``'s keyword arguments from the flags every runtime benchmark shares (``--prefill-tokens``,
    ``--decode-tokens``, ``--max-seq-len``, ``--warmup``, ``--runs``), and random encoder inputs of these shapes."""
    gen = np.random.default_rng(0)
    pixels = gen.standard_normal(pixel_shape, dtype=np.float32)
    mel = gen.standard_normal(mel_shape, dtype=np.float32) if mel_shape is not None else None
    return {
        "hidden": hidden,
        "n_prefill": args.prefill_tokens,
        "n_decode": args.decode_tokens,
        "chunk": args.max_seq_len,
        "warmup": args.warmup,
        "runs": args.runs,
        "pixels": pixels,
        "mel": mel,
        "console": console,
    }


def model_workload(args, model, console) -> dict:
    """``workload`` for an AutoGLM model: its hidden size and its towers' export-shape inputs."""
    mel = (1, model.audio.cfg.num_mel_bins, model.audio.num_frames) if model.audio else None
    pixels = (model.vision.num_patches, model.vision.patch_dim)
    return workload(args, hidden=model.cfg.text.hidden_size, pixel_shape=pixels, mel_shape=mel, console=console)


def measure_backend(
    backend,
    *,
    label: str,
    hidden: int,
    n_prefill: int,
    n_decode: int,
    chunk: int,
    warmup: int,
    runs: int,
    pixels: np.ndarray,
    mel: np.ndarray | None,
    budget_s: float,
    console,
) -> dict:
    """Prefill (random embeddings in chunks of ``chunk``, fresh cache each run), greedy decode (one token per
    step, with and without the ``token_embedding`` call), and the encoders once each at their export shape.

    A variant whose decode would take longer than ``budget_s`` gets fewer steps (``limited_by_budget``).
    """
    rng = np.random.default_rng(0)
    embeds = rng.standard_normal((1, n_prefill, hidden), dtype=np.float32)
    pos, ids = text_positions(0, n_prefill)

    def prefill() -> np.ndarray:
        logits = None
        for i in range(0, n_prefill, chunk):  # the runtime's chunking: max_seq_len tokens per call
            logits = backend.text_decoder(embeds[:, i : i + chunk], pos[i : i + chunk], ids[:, i : i + chunk])
        return logits

    # One untimed probe run decides whether this variant is too slow for the full counts.
    backend.reset()
    t0 = time.perf_counter()
    prefill()
    probe_s = time.perf_counter() - t0
    p_warmup, p_runs = warmup, runs
    if probe_s * (warmup + runs) > budget_s:
        p_warmup, p_runs = 0, max(1, min(runs, int(budget_s / probe_s)))
    prefill_t = time_runs(prefill, warmup=p_warmup, runs=p_runs, setup=backend.reset)

    def decode(steps: int) -> dict:
        backend.reset()
        token = np.array([[int(prefill()[0, -1].argmax())]], dtype=np.int64)
        full, dec, emb = [], [], []
        for i in range(steps):
            p, pid = text_positions(n_prefill + i, 1)
            t0 = time.perf_counter()
            e = backend.token_embedding(token)
            t1 = time.perf_counter()
            logits = backend.text_decoder(e, p, pid)
            t2 = time.perf_counter()
            token = np.array([[int(logits[0, -1].argmax())]], dtype=np.int64)
            t3 = time.perf_counter()
            full.append(t3 - t0)
            dec.append(t2 - t1)
            emb.append(t1 - t0)
        return {"full": full, "decoder": dec, "embedding": emb}

    warm = decode(min(4, n_decode))  # warmup; also sizes the budget
    step_s = float(np.median(warm["full"]))
    steps = n_decode
    limited = False
    if step_s * n_decode > budget_s:
        steps, limited = max(8, min(n_decode, int(budget_s / step_s))), True
    d = decode(steps)
    vision_t = time_runs(lambda: backend.vision_encoder(pixels), warmup=warmup, runs=runs)
    audio_t = time_runs(lambda: backend.audio_encoder(mel), warmup=warmup, runs=runs) if mel is not None else None
    r = {
        "label": label,
        "prefill": {
            "tokens": n_prefill,
            "chunk": chunk,
            "ms": prefill_t.to_dict(),
            "tokens_per_s": n_prefill / prefill_t.median,
            "warmup": p_warmup,
        },
        "decode": {
            "steps": steps,
            "steps_requested": n_decode,
            "limited_by_budget": limited,
            "ms_per_token_with_embedding": Timing(d["full"]).to_dict(),
            "ms_per_token_decoder_only": Timing(d["decoder"]).to_dict(),
            "ms_token_embedding": Timing(d["embedding"]).to_dict(),
        },
        "vision_encoder": {"ms": vision_t.to_dict()},
        "audio_encoder": None if audio_t is None else {"ms": audio_t.to_dict()},
    }
    dm = r["decode"]["ms_per_token_with_embedding"]["median"]
    r["decode"]["tokens_per_s"] = 1e3 / dm
    console.print(
        f"  {label}: prefill {r['prefill']['tokens_per_s']:.0f} tok/s, decode {dm:.2f} ms/token "
        f"({steps} steps{', limited' if limited else ''}), vision {vision_t.median * 1e3:.1f} ms"
        + (f", audio {audio_t.median * 1e3:.1f} ms" if audio_t else "")
    )
    return r

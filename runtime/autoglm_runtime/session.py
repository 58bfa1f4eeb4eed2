"""Backend-agnostic generation: prompt -> embeddings -> prefill -> incremental decode.

The same loop drives every backend (eager torch, ExecuTorch, onnxruntime, Core ML), so any
difference in output comes from the backend, never from the loop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .errors import InputError
from .positions import decode_positions
from .preprocess import preprocess_audio, preprocess_image
from .preprocess.image import ImageSource
from .prompt import Message, PromptInputs, encode_chat
from .sampling import Sampler, SamplingConfig
from .spec import ModelSpec
from .tokenizer import StreamDecoder, Tokenizer


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    stop_reason: str  # "eos" or "max_new_tokens"
    prefill_s: float = 0.0
    decode_s: float = 0.0
    logits: list[np.ndarray] = field(default_factory=list, repr=False)  # per step, when requested

    @property
    def decode_ms_per_token(self) -> float:
        steps = max(len(self.token_ids) - 1, 1)
        return self.decode_s * 1e3 / steps


@dataclass
class PreparedPrompt:
    inputs: PromptInputs
    embeds: np.ndarray  # [1, S, hidden] with image/audio embeddings spliced in


class Session:
    def __init__(self, backend, tokenizer: Tokenizer | str | Path | None, spec: ModelSpec, prefill_chunk: int | None = None):
        if tokenizer is None:
            raise InputError("this model has no tokenizer.json; generation needs one next to the weights")
        self.backend = backend
        self.tokenizer = tokenizer if isinstance(tokenizer, Tokenizer) else Tokenizer(tokenizer)
        self.spec = spec
        self.prefill_chunk = prefill_chunk
        tok_image = self.tokenizer.token_to_id("<|image|>")
        if tok_image != spec.image_token_id:
            raise InputError(
                f"tokenizer maps <|image|> to {tok_image} but the model's image_token_id is {spec.image_token_id}"
            )

    # ---- prompt
    def messages_for(
        self, prompt: str, *, image: ImageSource | None, audio, system: str | None
    ) -> list[Message]:
        parts: list[dict] = []
        if image is not None:
            parts.append({"type": "image"})
        if audio is not None:
            if not self.spec.has_audio:
                raise InputError("this model has no audio tower; drop --audio or export with --audio-checkpoint")
            parts.append({"type": "audio"})
        parts.append({"type": "text", "text": prompt})
        messages = [Message("system", system)] if system else []
        messages.append(Message("user", parts))
        return messages

    def prepare(
        self,
        messages: Sequence[Message],
        images: Sequence[ImageSource] = (),
        audios: Sequence = (),
        *,
        enable_thinking: bool | None = None,
        max_new_tokens: int = 0,
    ) -> PreparedPrompt:
        spec = self.spec
        inputs = encode_chat(
            self.tokenizer,
            messages,
            image_grids=spec.image.grid_thw,
            spatial_merge_size=spec.image.merge_size,
            audio_tokens_per_clip=spec.audio_tokens,
            enable_thinking=enable_thinking,
        )
        n = len(inputs.input_ids)
        if n + max_new_tokens > spec.max_context:
            raise InputError(
                f"prompt of {n} tokens + max_new_tokens {max_new_tokens} exceeds the context limit of "
                f"{spec.max_context} tokens"
            )
        if len(inputs.image_grids) != len(images) or len(inputs.audio_tokens) != len(audios):
            raise InputError(
                f"messages have {len(inputs.image_grids)} image and {len(inputs.audio_tokens)} audio parts, "
                f"but {len(images)} images and {len(audios)} audio clips were given"
            )
        embeds = self.backend.token_embedding(inputs.input_ids[None, :])
        if images:
            image_rows = np.flatnonzero(inputs.input_ids == spec.image_token_id)
            feats = [self.backend.vision_encoder(preprocess_image(img, spec.image)) for img in images]
            embeds[0, image_rows] = np.concatenate(feats, axis=0)
        if audios:
            audio_rows = np.flatnonzero(inputs.input_ids == spec.audio_token_id)
            feats = [self.backend.audio_encoder(preprocess_audio(a, spec.audio)) for a in audios]
            embeds[0, audio_rows] = np.concatenate(feats, axis=0)
        return PreparedPrompt(inputs, embeds)

    # ---- decoding
    def prefill(self, prepared: PreparedPrompt) -> np.ndarray:
        """Run the whole prompt through the decoder (in chunks if configured); returns logits [S, vocab]."""
        self.backend.reset()
        embeds, positions = prepared.embeds, prepared.inputs.position_ids
        n = embeds.shape[1]
        chunk = self.prefill_chunk or n
        outs = []
        for start in range(0, n, chunk):
            end = min(start + chunk, n)
            outs.append(
                self.backend.text_decoder(embeds[:, start:end], np.arange(start, end, dtype=np.int64), positions[:, start:end])[0]
            )
        return np.concatenate(outs, axis=0)

    def step(self, token_id: int, cache_position: int, rope_delta: int) -> np.ndarray:
        """Feed one token at cache_position; returns logits [vocab]."""
        embeds = self.backend.token_embedding(np.array([[token_id]], dtype=np.int64))
        pos = decode_positions(cache_position, rope_delta, 1)
        return self.backend.text_decoder(embeds, np.array([cache_position], dtype=np.int64), pos)[0, -1]

    def generate(
        self,
        prompt: str | Sequence[Message],
        *,
        image: ImageSource | None = None,
        audio=None,
        system: str | None = None,
        max_new_tokens: int = 64,
        sampling: SamplingConfig = SamplingConfig(),
        enable_thinking: bool | None = None,
        on_text: Callable[[str], None] | None = None,
        on_token: Callable[[int], None] | None = None,
        keep_logits: bool = False,
    ) -> GenerationResult:
        if max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if isinstance(prompt, str):
            messages = self.messages_for(prompt, image=image, audio=audio, system=system)
        else:
            messages = list(prompt)
        images = [image] if image is not None else []
        audios = [audio] if audio is not None else []
        prepared = self.prepare(messages, images, audios, enable_thinking=enable_thinking, max_new_tokens=max_new_tokens)

        sampler = Sampler(sampling, allowed=self.tokenizer.known_ids())  # never a padded embedding row
        stream = StreamDecoder(self.tokenizer, skip_special_tokens=True)
        eos = set(self.spec.eos_token_ids)
        t0 = time.perf_counter()
        logits = self.prefill(prepared)[-1]
        prefill_s = time.perf_counter() - t0
        n_prompt = len(prepared.inputs.input_ids)
        tokens: list[int] = []
        kept: list[np.ndarray] = []
        stop = "max_new_tokens"
        t1 = time.perf_counter()
        for i in range(max_new_tokens):
            if keep_logits:
                kept.append(logits)
            token = sampler(logits)
            tokens.append(token)
            if on_token:
                on_token(token)
            if token in eos:
                stop = "eos"
                break
            delta = stream.push(token)
            if delta and on_text:
                on_text(delta)
            if i + 1 < max_new_tokens:
                logits = self.step(token, n_prompt + i, prepared.inputs.rope_delta)
        tail = stream.finish()
        if tail and on_text:
            on_text(tail)
        decode_s = time.perf_counter() - t1
        text = self.tokenizer.decode([t for t in tokens if t not in eos], skip_special_tokens=True)
        return GenerationResult(text, tokens, n_prompt, stop, prefill_s, decode_s, kept)

"""Backend-agnostic generation: prompt -> embeddings -> prefill -> incremental decode.

The same loop drives every backend (eager torch, ExecuTorch, onnxruntime, Core ML), so any
difference in output comes from the backend, never from the loop.

Prefix reuse (``Session(..., reuse_prefix=True)``): the session remembers what each KV-cache slot
holds (a key per row: the token id, or a digest of the image / audio item for media rows, plus
the row's 3 M-RoPE positions) and a prefill keeps the longest common prefix with the cache,
running the decoder from there. That is exact because every backend's decoder writes the
keys/values of ``cache_position`` and row i attends to slots ``0..cache_position[i]`` only: the
slots below the restart position are exactly what a full prefill would have written (up to float
rounding of a different chunking), and whatever lies beyond is overwritten before any query can
see it. At least the prompt's last token is always re-run, for its logits.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from hashlib import blake2b
from pathlib import Path

import numpy as np

from .errors import InputError
from .positions import decode_positions
from .preprocess import PreparedImage, prepare_image, preprocess_audio
from .preprocess.image import ImageSource
from .prompt import Message, PromptInputs, encode_chat
from .sampling import Sampler, SamplingConfig
from .spec import ModelSpec
from .splice import item_rows, splice
from .tokenizer import StreamDecoder, Tokenizer


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    stop_reason: str  # "eos" or "max_new_tokens"
    prefill_s: float = 0.0  # until the first token was sampled
    decode_s: float = 0.0
    logits: list[np.ndarray] = field(default_factory=list, repr=False)  # per step, when requested
    reused_tokens: int = 0  # prompt tokens whose KV cache was kept from the previous call (prefix reuse)

    @property
    def decode_ms_per_token(self) -> float:
        steps = max(len(self.token_ids) - 1, 1)
        return self.decode_s * 1e3 / steps


@dataclass
class PreparedPrompt:
    inputs: PromptInputs
    embeds: np.ndarray  # [1, S, hidden] with image/audio embeddings spliced in
    row_keys: np.ndarray | None = None  # [S, 4] int64: what each row's KV depends on (see module docstring)


KEY_COLUMNS = 4  # token id or media digest, then the 3 M-RoPE positions


def _media_key(features: np.ndarray) -> int:
    """A negative int64 naming one preprocessed image / audio clip (token ids are >= 0)."""
    digest = blake2b(np.ascontiguousarray(features).tobytes(), digest_size=8).digest()
    return -1 - (int.from_bytes(digest, "little") >> 2)


def _row_keys(inputs: PromptInputs, media_rows: Sequence[tuple[np.ndarray, int]]) -> np.ndarray:
    keys = np.empty((len(inputs.input_ids), KEY_COLUMNS), dtype=np.int64)
    keys[:, 0] = inputs.input_ids
    keys[:, 1:] = inputs.position_ids.T
    for rows, key in media_rows:
        keys[rows, 0] = key
    return keys


class Session:
    def __init__(
        self,
        backend,
        tokenizer: Tokenizer | str | Path | None,
        spec: ModelSpec,
        prefill_chunk: int | None = None,
        reuse_prefix: bool = False,
    ):
        if tokenizer is None:
            raise InputError("this model has no tokenizer.json; generation needs one next to the weights")
        self.backend = backend
        self.tokenizer = tokenizer if isinstance(tokenizer, Tokenizer) else Tokenizer(tokenizer)
        self.spec = spec
        self.prefill_chunk = prefill_chunk
        self.reuse_prefix = reuse_prefix
        # What the backend's KV cache holds: keys of slots 0.._cached_len-1 (tracked always, used with reuse_prefix).
        self._cached_keys = np.zeros((spec.max_context, KEY_COLUMNS), dtype=np.int64)
        self._cached_len = 0
        self.reused_tokens = 0  # of the last prefill
        tok_image = self.tokenizer.token_to_id("<|image|>")
        if tok_image != spec.image_token_id:
            raise InputError(
                f"tokenizer maps <|image|> to {tok_image} but the model's image_token_id is {spec.image_token_id}"
            )

    # ---- prompt
    def messages_for(
        self, prompt: str, *, image: ImageSource | None = None, audio=None, system: str | None = None, images=()
    ) -> list[Message]:
        """One user turn: its images (``image``, or several ``images``), audio clip and text."""
        parts: list[dict] = [{"type": "image"} for _ in [*([image] if image is not None else []), *images]]
        if audio is not None:
            if not self.spec.has_audio:
                raise InputError("this model has no audio tower; drop --audio or export with --audio-checkpoint")
            parts.append({"type": "audio"})
        parts.append({"type": "text", "text": prompt})
        messages = [Message("system", system)] if system else []
        messages.append(Message("user", parts))
        return messages

    def prepare_images(self, images: Sequence[ImageSource | PreparedImage]) -> list[PreparedImage]:
        """Each image at its bucket (the size transformers' processor gives it under the export's budget)."""
        return [i if isinstance(i, PreparedImage) else prepare_image(i, self.spec.image) for i in images]

    def encode(
        self,
        messages: Sequence[Message],
        *,
        images: Sequence[ImageSource | PreparedImage] | None = None,
        enable_thinking: bool | None = None,
        max_new_tokens: int | None = 0,
    ) -> PromptInputs:
        """Tokenize a chat (no backend call); InputError if it and max_new_tokens overrun the context
        (``max_new_tokens=None``: no context check, the caller does its own). ``images``: the messages'
        images, whose buckets decide their token counts and positions (None: every image at the default size)."""
        spec = self.spec
        grids = spec.image.grid_thw if images is None else [p.spec.grid_thw for p in self.prepare_images(images)]
        inputs = encode_chat(
            self.tokenizer,
            messages,
            image_grids=grids,
            spatial_merge_size=spec.image.merge_size,
            audio_tokens_per_clip=spec.audio_tokens,
            enable_thinking=enable_thinking,
        )
        n = len(inputs.input_ids)
        if max_new_tokens is not None and n + max_new_tokens > spec.max_context:
            asked = f" + max_new_tokens {max_new_tokens}" if max_new_tokens else ""
            media = int((inputs.mm_token_types != 0).sum())
            shown = ", ".join(
                f"{g[2] * spec.image.patch_size}x{g[1] * spec.image.patch_size}" for g in inputs.image_grids
            )
            of_images = f" ({media} of them for image(s) at {shown})" if media else ""
            raise InputError(
                f"prompt of {n} tokens{of_images}{asked} exceeds the context limit of {spec.max_context} tokens"
            )
        return inputs

    def embed(
        self, inputs: PromptInputs, images: Sequence[ImageSource | PreparedImage] = (), audios: Sequence = ()
    ) -> PreparedPrompt:
        """Token embeddings with the image / audio features spliced in; each media item's rows are recorded
        (by content) for prefix reuse."""
        spec = self.spec
        if len(inputs.image_grids) != len(images) or len(inputs.audio_tokens) != len(audios):
            raise InputError(
                f"messages have {len(inputs.image_grids)} image and {len(inputs.audio_tokens)} audio parts, "
                f"but {len(images)} images and {len(audios)} audio clips were given"
            )
        prepared = self.prepare_images(images)
        for k, (img, grid) in enumerate(zip(prepared, inputs.image_grids)):
            if tuple(img.spec.grid_thw) != tuple(grid):
                raise InputError(f"image {k + 1} is at grid {img.spec.grid_thw} but the prompt was encoded for {grid}")
        features = [p.pixels for p in prepared] + [preprocess_audio(a, spec.audio) for a in audios]
        embeds = self.backend.token_embedding(inputs.input_ids[None, :])
        image_out = [self.backend.vision_encoder(p.pixels, p.size) for p in prepared]
        audio_out = [self.backend.audio_encoder(f) for f in features[len(prepared) :]]
        splice(embeds, inputs.input_ids, spec, image_out, audio_out)
        rows = item_rows(inputs.input_ids, spec.image_token_id, [len(e) for e in image_out])
        if audio_out:
            rows += item_rows(inputs.input_ids, spec.audio_token_id, [len(e) for e in audio_out])
        return PreparedPrompt(inputs, embeds, _row_keys(inputs, [(r, _media_key(f)) for r, f in zip(rows, features)]))

    def prepare(
        self,
        messages: Sequence[Message],
        images: Sequence[ImageSource | PreparedImage] = (),
        audios: Sequence = (),
        *,
        enable_thinking: bool | None = None,
        max_new_tokens: int = 0,
    ) -> PreparedPrompt:
        images = self.prepare_images(images)
        inputs = self.encode(messages, images=images, enable_thinking=enable_thinking, max_new_tokens=max_new_tokens)
        return self.embed(inputs, images, audios)

    # ---- what the KV cache holds
    def reusable_prefix(self, prepared: PreparedPrompt) -> int:
        """How many leading rows of ``prepared`` the KV cache already holds (never the last row)."""
        keys = prepared.row_keys
        n = min(self._cached_len, len(prepared.inputs.input_ids) - 1)
        if keys is None or n <= 0:
            return 0
        same = (self._cached_keys[:n] == keys[:n]).all(axis=1)
        return n if same.all() else int(np.argmin(same))

    def forget_cache(self) -> None:
        """Trust nothing in the KV cache (the next prefill starts from slot 0)."""
        self._cached_len = 0

    def _record(self, start: int, keys: np.ndarray | None) -> None:
        """Slots start..start+len(keys)-1 now hold ``keys``; later slots are stale."""
        if keys is None:
            self._cached_len = 0
            return
        self._cached_keys[start : start + len(keys)] = keys
        self._cached_len = start + len(keys)

    # ---- decoding
    def prefill(self, prepared: PreparedPrompt) -> np.ndarray:
        """Run the prompt through the decoder (in chunks if configured); returns logits [S - reused, vocab].

        Without prefix reuse the cache is reset and every row runs (``reused_tokens`` is 0). With it,
        rows the cache already holds are skipped; ``self.reused_tokens`` says how many.
        """
        embeds, positions = prepared.embeds, prepared.inputs.position_ids
        n = embeds.shape[1]
        start = self.reusable_prefix(prepared) if self.reuse_prefix else 0
        if start == 0:
            self.backend.reset()
        self._cached_len = start  # a failure part-way leaves only the kept prefix trusted
        chunk = self.prefill_chunk or n
        outs = []
        for begin in range(start, n, chunk):
            end = min(begin + chunk, n)
            cache_position = np.arange(begin, end, dtype=np.int64)
            outs.append(self.backend.text_decoder(embeds[:, begin:end], cache_position, positions[:, begin:end])[0])
        self._record(start, None if prepared.row_keys is None else prepared.row_keys[start:])
        self.reused_tokens = start
        return np.concatenate(outs, axis=0)

    def step(self, token_id: int, cache_position: int, rope_delta: int) -> np.ndarray:
        """Feed one token at cache_position; returns logits [vocab]."""
        embeds = self.backend.token_embedding(np.array([[token_id]], dtype=np.int64))
        pos = decode_positions(cache_position, rope_delta, 1)
        self._cached_len = min(self._cached_len, cache_position)
        logits = self.backend.text_decoder(embeds, np.array([cache_position], dtype=np.int64), pos)[0, -1]
        if self._cached_len == cache_position:
            self._record(cache_position, np.array([[token_id, *pos[:, 0]]], dtype=np.int64))
        return logits

    def tokens(
        self, prepared: PreparedPrompt, max_new_tokens: int, sampler: Sampler, kept_logits: list | None = None
    ) -> Iterator[int]:
        """Prefill, then yield up to max_new_tokens sampled tokens, the last one an EOS if one came.

        The decoder runs for the next token only when the caller asks for it, so a caller may stop
        at any token (a stop string, a cancelled request) without wasted work; the cache stays
        consistent either way.
        """
        eos = set(self.spec.eos_token_ids)
        n_prompt = len(prepared.inputs.input_ids)
        logits = self.prefill(prepared)[-1]
        for i in range(max_new_tokens):
            if kept_logits is not None:
                kept_logits.append(logits)
            token = sampler(logits)
            yield token
            if token in eos or i + 1 == max_new_tokens:
                return
            logits = self.step(token, n_prompt + i, prepared.inputs.rope_delta)

    def generate(
        self,
        prompt: str | Sequence[Message],
        *,
        image: ImageSource | None = None,
        audio=None,
        system: str | None = None,
        images: Sequence[ImageSource] = (),
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
            messages = self.messages_for(prompt, image=image, audio=audio, system=system, images=images)
        else:
            messages = list(prompt)
        images = [*([image] if image is not None else []), *images]
        audios = [audio] if audio is not None else []
        prepared = self.prepare(
            messages, images, audios, enable_thinking=enable_thinking, max_new_tokens=max_new_tokens
        )

        stream = StreamDecoder(self.tokenizer, skip_special_tokens=True)
        eos = set(self.spec.eos_token_ids)
        tokens: list[int] = []
        kept: list[np.ndarray] = []
        stop = "max_new_tokens"
        t0 = time.perf_counter()
        first = None
        sampler = Sampler(sampling, allowed=self.tokenizer.known_ids())  # never a padded embedding row
        for token in self.tokens(prepared, max_new_tokens, sampler, kept if keep_logits else None):
            first = first or time.perf_counter()
            tokens.append(token)
            if on_token:
                on_token(token)
            if token in eos:
                stop = "eos"
                break
            delta = stream.push(token)
            if delta and on_text:
                on_text(delta)
        tail = stream.finish()
        if tail and on_text:
            on_text(tail)
        end = time.perf_counter()
        text = self.tokenizer.decode([t for t in tokens if t not in eos], skip_special_tokens=True)
        return GenerationResult(
            text, tokens, len(prepared.inputs.input_ids), stop, first - t0, end - first, kept, self.reused_tokens
        )

"""GLM-4.1V chat prompts: template rendering, placeholder expansion and position ids.

`build_prompt` reproduces the chat template of zai-org/GLM-4.1V-9B-Thinking (revision
3c1471e51dc811b589d4d12b1c1c7c1c941267c2, rendered by transformers with trim_blocks/lstrip_blocks):

    [gMASK]<sop>{for each message:
        system:    <|system|>\\n{content}
        user:      <|user|>\\n{parts: text as is, image -> <|begin_of_image|><|image|><|end_of_image|>}
        assistant: <|assistant|>\\n{content}}
    {if add_generation_prompt: <|assistant|>\\n}

That template has no thinking switch: GLM-4.1V always answers "<think>...</think><answer>...</answer>",
so enable_thinking None/True render identically. enable_thinking=False is this project's extension: it
pre-fills an empty "<think></think>" after "<|assistant|>\\n" (the GLM-4.5V/4.6V templates close the
think block the same way) so the model goes straight to <answer>. Audio parts are also ours (GLM-4.1V
has no audio): <|begin_of_audio|><|audio|><|end_of_audio|>, expanded like images but positioned as text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autoglm_runtime.errors import InputError
from autoglm_runtime.positions import IMAGE, TEXT, rope_index
from autoglm_runtime.tokenizer import Tokenizer

IMAGE_PLACEHOLDER = "<|begin_of_image|><|image|><|end_of_image|>"
AUDIO_PLACEHOLDER = "<|begin_of_audio|><|audio|><|end_of_audio|>"
THINK_OFF_PREFILL = "<think></think>"
ROLES = ("system", "user", "assistant")

Part = Mapping[str, Any]
Grid = tuple[int, int, int]


@dataclass(frozen=True)
class Message:
    """One chat turn. content: a string or parts {"type": "text", "text": ...}, {"type": "image"},
    {"type": "audio"} (images/audio only in user turns)."""

    role: str
    content: str | Sequence[Part]

    @classmethod
    def coerce(cls, m: Message | Mapping[str, Any]) -> Message:
        if isinstance(m, Message):
            return m
        try:
            return cls(role=m["role"], content=m["content"])
        except (KeyError, TypeError) as exc:
            raise InputError(f"a message needs 'role' and 'content', got {m!r}") from exc


def _part_kind(part: Part) -> str:
    # Same precedence as the real template: an explicit type, or (for media) just the key present.
    if not isinstance(part, Mapping):
        raise InputError(f"message parts must be dicts, got {part!r}")
    kind = part.get("type")
    if kind == "video" or "video" in part:
        raise InputError("video input is not supported; send frames as images")
    if kind == "image" or "image" in part:
        return "image"
    if kind == "audio" or "audio" in part:
        return "audio"
    if kind == "text":
        if not isinstance(part.get("text"), str):
            raise InputError(f"text part without a string 'text': {part!r}")
        return "text"
    raise InputError(f"unknown message part type {kind!r} (expected text, image or audio)")


def _render_content(msg: Message) -> str:
    if isinstance(msg.content, str):
        return msg.content
    out = []
    for part in msg.content:
        kind = _part_kind(part)
        if kind == "text":
            out.append(part["text"])
        elif msg.role != "user":
            # The real template would print a Python list repr here; refuse instead.
            raise InputError(f"{kind} parts are only allowed in user messages, not {msg.role}")
        else:
            out.append(IMAGE_PLACEHOLDER if kind == "image" else AUDIO_PLACEHOLDER)
    return "".join(out)


def _render(
    messages: Sequence[Message | Mapping[str, Any]], enable_thinking: bool | None, add_generation_prompt: bool
) -> tuple[str, int, int]:
    """The prompt plus how many image and audio parts the messages really hold."""
    out = ["[gMASK]<sop>"]
    n_img = n_aud = 0
    for raw in messages:
        msg = Message.coerce(raw)
        if msg.role not in ROLES:
            # The real template silently drops other roles; an agent loop should know instead.
            raise InputError(f"unsupported message role {msg.role!r} (expected one of {', '.join(ROLES)})")
        out.append(f"<|{msg.role}|>\n{_render_content(msg)}")
        if not isinstance(msg.content, str):
            kinds = [_part_kind(p) for p in msg.content]
            n_img += kinds.count("image")
            n_aud += kinds.count("audio")
    if add_generation_prompt:
        out.append("<|assistant|>\n")
        if enable_thinking is False:
            out.append(THINK_OFF_PREFILL)
    return "".join(out), n_img, n_aud


def build_prompt(
    messages: Sequence[Message | Mapping[str, Any]],
    *,
    enable_thinking: bool | None = None,
    add_generation_prompt: bool = True,
) -> str:
    """The GLM-4.1V prompt string for `messages` (see module docstring for the exact format)."""
    return _render(messages, enable_thinking, add_generation_prompt)[0]


def _per_item(count: int | Sequence[int], n: int, what: str) -> list[int]:
    counts = [int(count)] * n if isinstance(count, (int, np.integer)) else [int(c) for c in count]
    if len(counts) != n:
        raise InputError(f"prompt has {n} {what} placeholder(s) but {len(counts)} token count(s) were given")
    if any(c < 1 for c in counts):
        raise InputError(f"every {what} needs at least one token, got {counts}")
    return counts


def expand_placeholders(
    ids: Sequence[int],
    image_token_id: int,
    tokens_per_image: int | Sequence[int],
    audio_token_id: int | None = None,
    tokens_per_audio: int | Sequence[int] = 0,
) -> tuple[list[int], np.ndarray]:
    """Repeat each single <|image|> / <|audio|> id to its feature count.

    tokens_per_*: one count for every item, or one per item in prompt order. Returns the expanded ids
    and mm_token_types (int32; 0 text, 1 image). Audio tokens are type 0: GLM-4.1V's M-RoPE has no audio
    modality, so audio embeddings take consecutive text positions.
    """
    n_img = sum(1 for t in ids if t == image_token_id)
    n_aud = sum(1 for t in ids if audio_token_id is not None and t == audio_token_id)
    img_counts = iter(_per_item(tokens_per_image, n_img, "image"))
    aud_counts = iter(_per_item(tokens_per_audio, n_aud, "audio"))
    out: list[int] = []
    types: list[int] = []
    for t in ids:
        if t == image_token_id:
            k = next(img_counts)
            out += [t] * k
            types += [IMAGE] * k
        elif audio_token_id is not None and t == audio_token_id:
            k = next(aud_counts)
            out += [t] * k
            types += [TEXT] * k
        else:
            out.append(t)
            types.append(TEXT)
    return out, np.asarray(types, dtype=np.int32)


@dataclass
class PromptInputs:
    """Everything a backend needs for prefill of one prompt."""

    input_ids: np.ndarray  # [S] int64
    mm_token_types: np.ndarray  # [S] int32, 0 text/audio, 1 image
    image_grids: list[Grid]  # one (t, h, w) per image, in patches before the spatial merge
    audio_tokens: list[int]  # tokens per audio clip, in order
    position_ids: np.ndarray  # [3, S] int64 (M-RoPE temporal, height, width)
    rope_delta: int  # decode step i (0-based, after the prompt) uses position S + i + rope_delta
    prompt: str = field(repr=False, default="")


def _grids_for(image_grids: Grid | Sequence[Grid] | None, n: int) -> list[Grid]:
    if n == 0:
        return []
    if image_grids is None:
        raise InputError(f"prompt has {n} image(s) but no image grid was given")
    seq = list(image_grids)
    if seq and all(isinstance(x, (int, np.integer)) for x in seq):
        seq = [tuple(seq)] * n  # one grid shared by every image
    grids = [tuple(int(x) for x in g) for g in seq]
    if len(grids) != n:
        raise InputError(f"prompt has {n} image(s) but {len(grids)} image grid(s) were given")
    return grids  # type: ignore[return-value]


def encode_chat(
    tokenizer: Tokenizer,
    messages: Sequence[Message | Mapping[str, Any]],
    *,
    image_grids: Grid | Sequence[Grid] | None = None,
    spatial_merge_size: int = 2,
    audio_tokens_per_clip: int | Sequence[int] = 0,
    enable_thinking: bool | None = None,
    add_generation_prompt: bool = True,
) -> PromptInputs:
    """Render, tokenize, expand placeholders and compute M-RoPE positions for one chat.

    image_grids: (t, h, w) in patches, either one grid for all images or one per image; each image
    gets t*h*w / spatial_merge_size^2 tokens (GLM-4.1V's processor rule).
    """
    prompt, n_img, n_aud = _render(messages, enable_thinking, add_generation_prompt)
    ids = tokenizer.encode(prompt)
    # Placeholder ids must come only from media parts: a user typing "<|image|>" would desync features.
    image_id = tokenizer.token_to_id("<|image|>")
    audio_id = tokenizer.token_to_id("<|audio|>") if n_aud else tokenizer.special_ids().get("<|audio|>")
    if ids.count(image_id) != n_img:
        raise InputError(f"message text contains the reserved token <|image|> ({n_img} image part(s))")
    if audio_id is not None and ids.count(audio_id) != n_aud:
        raise InputError(f"message text contains the reserved token <|audio|> ({n_aud} audio part(s))")
    grids = _grids_for(image_grids, n_img)
    for g in grids:
        if g[1] % spatial_merge_size or g[2] % spatial_merge_size:
            raise InputError(f"image grid {g} is not divisible by spatial_merge_size {spatial_merge_size}")
    img_tokens = [g[0] * g[1] * g[2] // (spatial_merge_size * spatial_merge_size) for g in grids]
    aud_tokens = _per_item(audio_tokens_per_clip, n_aud, "audio")

    expanded, types = expand_placeholders(ids, image_id, img_tokens, audio_id, aud_tokens)
    positions, delta = rope_index(types, grids, spatial_merge_size)
    return PromptInputs(
        input_ids=np.asarray(expanded, dtype=np.int64),
        mm_token_types=types,
        image_grids=grids,
        audio_tokens=aud_tokens,
        position_ids=positions,
        rope_delta=delta,
        prompt=prompt,
    )

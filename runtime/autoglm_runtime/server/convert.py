"""An OpenAI chat request -> the runtime's messages, decoded media and generation settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..prompt import Message
from ..sampling import SamplingConfig
from ..spec import ModelSpec
from .config import ServerConfig
from .errors import bad_request
from .media import load_image_url, load_input_audio
from .schemas import (
    MAX_STOP_SEQUENCES,
    AudioPart,
    ChatCompletionRequest,
    ImagePart,
    TextPart,
)

# OpenAI's newer clients send the system prompt as "developer"; the GLM template knows "system".
ROLE_ALIASES = {"developer": "system"}


@dataclass
class Conversation:
    messages: list[Message]
    images: list[Any] = field(default_factory=list)  # PIL images, in prompt order
    audios: list[Any] = field(default_factory=list)  # mono float32 arrays at the model's rate


def to_conversation(request: ChatCompletionRequest, spec: ModelSpec, config: ServerConfig) -> Conversation:
    """Blocking (decodes images and audio): run it off the event loop."""
    conv = Conversation([])
    for i, msg in enumerate(request.messages):
        role = ROLE_ALIASES.get(msg.role, msg.role)
        if msg.content is None or isinstance(msg.content, str):
            conv.messages.append(Message(role, msg.content or ""))
            continue
        parts: list[dict] = []
        for j, part in enumerate(msg.content):
            param = f"messages[{i}].content[{j}]"
            if isinstance(part, TextPart):
                parts.append({"type": "text", "text": part.text})
                continue
            if role != "user":
                raise bad_request(f"{msg.role} messages may only hold text parts", param)
            if isinstance(part, ImagePart):
                conv.images.append(load_image_url(part.image_url.url, config, param))
                parts.append({"type": "image"})
            elif isinstance(part, AudioPart):
                if not spec.has_audio:
                    raise bad_request(
                        "this model has no audio tower (export it with --audio-checkpoint)",
                        param,
                    )
                audio = part.input_audio
                conv.audios.append(
                    load_input_audio(
                        audio.data,
                        audio.format,
                        spec.audio.sampling_rate,
                        config,
                        param,
                    )
                )
                parts.append({"type": "audio"})
        conv.messages.append(Message(role, parts))
    return conv


def stop_strings(request: ChatCompletionRequest) -> list[str]:
    stop = request.stop
    stops = [] if stop is None else [stop] if isinstance(stop, str) else list(stop)
    if len(stops) > MAX_STOP_SEQUENCES:
        raise bad_request(f"stop: at most {MAX_STOP_SEQUENCES} sequences, got {len(stops)}", "stop")
    return [s for s in stops if s]


def sampling_config(request: ChatCompletionRequest) -> SamplingConfig:
    # OpenAI's defaults: temperature 1, top_p 1, no penalties, an unseeded generator.
    return SamplingConfig(
        temperature=1.0 if request.temperature is None else request.temperature,
        top_p=1.0 if request.top_p is None else request.top_p,
        seed=None if request.seed is None else request.seed % (1 << 64),  # any JSON integer is a valid seed
        frequency_penalty=request.frequency_penalty or 0.0,
        presence_penalty=request.presence_penalty or 0.0,
    )


def enable_thinking(request: ChatCompletionRequest) -> bool | None:
    if request.enable_thinking is not None:
        return request.enable_thinking
    value = (request.chat_template_kwargs or {}).get("enable_thinking")
    return value if isinstance(value, bool) else None


def refuse_unsupported(request: ChatCompletionRequest) -> None:
    if request.logprobs:
        raise bad_request("logprobs are not supported by this server", "logprobs")
    if request.tools:
        raise bad_request(
            "tools are not supported by this server (the model answers with do(...) actions in text)",
            "tools",
        )

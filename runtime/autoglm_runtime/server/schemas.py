"""The OpenAI chat-completions wire format (the subset this server implements), as pydantic models.

They drive request validation and the OpenAPI document at /openapi.json (and /docs). Unknown request
fields are ignored, as OpenAI-compatible servers do, except ones whose meaning we cannot honour
(n > 1, logprobs, tools), which are refused by name.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict

MAX_STOP_SEQUENCES = 16


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(_Request):
    type: Literal["text"]
    text: str


class ImageURL(_Request):
    url: str = Field(
        description="data:image/...;base64,... (file paths and http(s) URLs only where the server allows them)"
    )
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Request):
    type: Literal["image_url"]
    image_url: ImageURL


class InputAudio(_Request):
    data: str = Field(description="base64-encoded audio file")
    format: Literal["wav", "mp3"]


class AudioPart(_Request):
    type: Literal["input_audio"]
    input_audio: InputAudio


ContentPart = Annotated[TextPart | ImagePart | AudioPart, Field(discriminator="type")]


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(_Request):
    include_usage: bool = False


# Sampling numbers as JSON numbers only: pydantic's lax mode would take false as 0.0 and "1" as 1.
Number = Annotated[float, Strict()]
Count = Annotated[int, Strict()]


class ChatCompletionRequest(_Request):
    model: str | None = Field(
        None,
        description="the served model's name (GET /v1/models); default: that model",
    )
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: Number | None = Field(None, ge=0, le=2, description="0 = greedy (default 1, as OpenAI)")
    top_p: Number | None = Field(None, gt=0, le=1)
    max_tokens: Count | None = Field(None, ge=1, description="default: what is left of the context")
    max_completion_tokens: Count | None = Field(
        None, ge=1, description="same as max_tokens (it wins if both are given)"
    )
    stop: str | list[str] | None = Field(
        None,
        description=f"up to {MAX_STOP_SEQUENCES} strings; the text ends before the first",
    )
    seed: Count | None = None
    frequency_penalty: Number | None = Field(None, ge=-2, le=2)
    presence_penalty: Number | None = Field(None, ge=-2, le=2)
    n: Count | None = Field(None, ge=1, le=1, description="only 1 is supported")
    logprobs: bool | None = None
    tools: list[Any] | None = None
    enable_thinking: bool | None = Field(
        None,
        description="GLM template switch; false pre-fills an empty <think></think>",
    )
    return_reasoning: bool = Field(
        False,
        description="split <think>...</think> out of the answer into reasoning_content",
    )
    chat_template_kwargs: dict[str, Any] | None = Field(None, description="vLLM style; its enable_thinking is honoured")


class PromptTokensDetails(BaseModel):
    cached_tokens: int = Field(description="prompt tokens whose KV cache was kept from the previous request")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    reasoning_content: str | None = None


FinishReason = Literal["stop", "length"]


class Choice(BaseModel):
    index: int = 0
    message: ResponseMessage
    finish_reason: FinishReason
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "autoglm-export"
    max_model_len: int
    backend: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    model: str
    backend: str
    running: int
    queued: int
    max_queue: int

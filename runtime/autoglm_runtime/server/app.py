"""The FastAPI application: routes, authentication, size limits and OpenAI-style errors."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
import uuid
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import InputError
from ..session import Session
from .config import ServerConfig
from .convert import (
    enable_thinking,
    refuse_unsupported,
    sampling_config,
    stop_strings,
    to_conversation,
)
from .engine import Engine, Failed, Finished, Job, QueueFull, Text
from .errors import TYPES_BY_STATUS, APIError, bad_request, error_body
from .limits import BodySizeLimit
from .schemas import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    ErrorResponse,
    Health,
    ModelCard,
    ModelList,
    PromptTokensDetails,
    ResponseMessage,
    Usage,
)
from .textstream import ReasoningSplitter

log = logging.getLogger(__name__)

# Module level: FastAPI resolves the (string) annotation in this module's namespace.
BEARER = HTTPBearer(auto_error=False, description="the server's --api-key, when it has one")
BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in (
        (
            400,
            "invalid request: malformed JSON, a bad field, an unreadable image or audio part, a prompt over the context",
        ),
        (401, "missing or wrong bearer token (when the server has --api-key)"),
        (404, "unknown model"),
        (413, "request body, image or audio over the server's limits"),
        (429, "the queue is full (the server's --max-queue)"),
        (500, "the model failed"),
        (504, "the request timed out (the server's --request-timeout)"),
    )
}


def create_app(
    backend,
    tokenizer,
    spec,
    config: ServerConfig | None = None,
    prefill_chunk: int | None = None,
) -> FastAPI:
    """An app serving one model; ``backend``/``tokenizer``/``spec`` as for ``Session``."""
    config = config or ServerConfig()
    session = Session(
        backend,
        tokenizer,
        spec,
        prefill_chunk=prefill_chunk,
        reuse_prefix=config.prefix_reuse,
    )
    engine = Engine(session, config.max_queue)
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        yield
        await run_in_threadpool(engine.close)

    app = FastAPI(
        title="autoglm-export server",
        version=__version__,
        description="OpenAI-compatible chat completions over an exported AutoGLM bundle or the eager model.",
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.state.config = config
    app.add_middleware(BodySizeLimit, limit=config.max_body_bytes)
    _install_error_handlers(app)

    async def authorized(credentials: BearerCredentials) -> None:
        if config.api_key is None:
            return
        given = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(given.encode(), config.api_key.encode()):
            raise APIError(
                401,
                "missing or invalid API key: send 'Authorization: Bearer <key>'",
                "authentication_error",
                "invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    # Only a server with a key documents (and checks) bearer authentication.
    auth = [Depends(authorized)] if config.api_key is not None else []

    def model_card() -> ModelCard:
        return ModelCard(
            id=config.model_name,
            created=created,
            max_model_len=spec.max_context,
            backend=backend.name,
        )

    @app.get("/health", response_model=Health, tags=["server"])
    async def health() -> Health:
        return Health(
            model=config.model_name,
            backend=backend.name,
            running=engine.running,
            queued=engine.queued,
            max_queue=config.max_queue,
        )

    @app.get(
        "/v1/models",
        response_model=ModelList,
        responses=ERROR_RESPONSES,
        tags=["openai"],
        dependencies=auth,
    )
    async def list_models() -> ModelList:
        return ModelList(data=[model_card()])

    @app.get(
        "/v1/models/{model}",
        response_model=ModelCard,
        responses=ERROR_RESPONSES,
        tags=["openai"],
        dependencies=auth,
    )
    async def retrieve_model(model: str) -> ModelCard:
        _check_model(model, config)
        return model_card()

    @app.post(
        "/v1/chat/completions",
        response_model=ChatCompletion,
        responses={
            **ERROR_RESPONSES,
            200: {
                "content": {"text/event-stream": {}},
                "description": "a chat.completion, or with stream=true server-sent chat.completion.chunk events",
            },
        },
        tags=["openai"],
        dependencies=auth,
    )
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        arrived = time.monotonic()
        model = _check_model(body.model, config)
        refuse_unsupported(body)
        stops = stop_strings(body)
        sampling = sampling_config(body)
        _admit(engine)  # refuse before decoding any media when the queue is already full
        conv = await run_in_threadpool(to_conversation, body, spec, config)
        requested = body.max_completion_tokens or body.max_tokens
        inputs, images = await run_in_threadpool(
            _encode, session, conv.messages, conv.images, enable_thinking(body), requested
        )
        n_prompt = len(inputs.input_ids)
        job = Job(
            inputs,
            images,
            conv.audios,
            requested or spec.max_context - n_prompt,
            sampling,
            stops,
            deadline=arrived + config.request_timeout,
            loop=asyncio.get_running_loop(),
        )
        _admit(engine, job)
        reply = Reply(model, body.return_reasoning)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(
                _sse(job, engine, reply, include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        return await _complete(job, engine, reply, request)

    return app


def _admit(engine: Engine, job: Job | None = None) -> None:
    """Queue ``job`` (or only check there is room): 429 when the queue is full."""
    try:
        if job is None:
            engine.check_room()
        else:
            engine.submit(job)
    except QueueFull as e:
        raise APIError(
            429,
            f"the server is busy: {e}; retry later",
            "rate_limit_error",
            "queue_full",
            headers={"Retry-After": "1"},
        ) from None


def _check_model(name: str | None, config: ServerConfig) -> str:
    if name is not None and name != config.model_name:
        raise APIError(
            404,
            f"the model '{name}' does not exist; this server serves '{config.model_name}'",
            "not_found_error",
            "model_not_found",
            "model",
        )
    return config.model_name


def _encode(session: Session, messages, images, thinking: bool | None, requested: int | None):
    """The prompt's ids and positions, and its images at their buckets (which decide their token counts)."""
    limit = session.spec.max_context
    try:
        images = session.prepare_images(images)
        inputs = session.encode(messages, images=images, enable_thinking=thinking, max_new_tokens=None)
    except InputError as e:
        raise bad_request(str(e), "messages") from None
    n = len(inputs.input_ids)
    if requested is None and n >= limit:
        raise bad_request(
            f"this model's maximum context length is {limit} tokens; the messages take {n}, leaving "
            "no room for the completion",
            "messages",
            "context_length_exceeded",
        )
    if requested is not None and n + requested > limit:
        raise bad_request(
            f"this model's maximum context length is {limit} tokens; you requested {n + requested} "
            f"({n} in the messages, {requested} in the completion)",
            "messages" if n >= limit else "max_tokens",
            "context_length_exceeded",
        )
    return inputs, images


class Reply:
    """Builds the response objects of one request (and splits reasoning out when asked)."""

    def __init__(self, model: str, return_reasoning: bool):
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.splitter = ReasoningSplitter() if return_reasoning else None

    def split(self, text: str, final: bool = False) -> tuple[str, str]:
        """(reasoning, content) of a piece of the model's text."""
        if self.splitter is None:
            return "", text
        r, c = self.splitter.push(text)
        if final:
            r2, c2 = self.splitter.flush()
            r, c = r + r2, c + c2
        return r, c

    @staticmethod
    def usage(done: Finished) -> Usage:
        return Usage(
            prompt_tokens=done.prompt_tokens,
            completion_tokens=done.completion_tokens,
            total_tokens=done.prompt_tokens + done.completion_tokens,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=done.cached_tokens),
        )

    def chunk(
        self,
        delta: Delta,
        finish_reason: str | None = None,
        usage: Usage | None = None,
        choices=True,
    ) -> str:
        event = ChatCompletionChunk(
            id=self.id,
            created=self.created,
            model=self.model,
            usage=usage,
            choices=[ChunkChoice(delta=delta, finish_reason=finish_reason)] if choices else [],
        )
        return f"data: {event.model_dump_json(exclude_none=True)}\n\n"


async def _sse(job: Job, engine: Engine, reply: Reply, include_usage: bool):
    """Server-sent events: a role chunk, text deltas, a finish chunk, an optional usage chunk, [DONE]."""
    try:
        yield reply.chunk(Delta(role="assistant", content=""))
        async for event in job.stream():
            if isinstance(event, Failed):
                yield f"data: {_json(event.error.body())}\n\n"
                return
            final = isinstance(event, Finished)
            reasoning, content = reply.split(event.text if isinstance(event, Text) else "", final)
            if reasoning or content:
                yield reply.chunk(Delta(reasoning_content=reasoning or None, content=content or None))
            if final:
                yield reply.chunk(Delta(), finish_reason=event.finish_reason)
                if include_usage:
                    yield reply.chunk(Delta(), usage=reply.usage(event), choices=False)
                yield "data: [DONE]\n\n"
    finally:  # also when the client disconnects (the response task is cancelled)
        engine.cancel(job)


async def _wait_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _complete(job: Job, engine: Engine, reply: Reply, request: Request) -> ChatCompletion:
    async def collect():
        pieces = []
        async for event in job.stream():
            if isinstance(event, Text):
                pieces.append(event.text)
            elif isinstance(event, Failed):
                raise event.error
            else:
                return "".join(pieces), event

    collector = asyncio.ensure_future(collect())
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        finished, _ = await asyncio.wait({collector, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if collector not in finished:  # the client went away: stop the generation
        engine.cancel(job)
        collector.cancel()
        raise APIError(
            499,
            "client closed the request",
            "invalid_request_error",
            "client_closed_request",
        )
    text, done = collector.result()
    reasoning, content = reply.split(text, final=True)
    message = ResponseMessage(content=content, reasoning_content=reasoning or None)
    return ChatCompletion(
        id=reply.id,
        created=reply.created,
        model=reply.model,
        usage=reply.usage(done),
        choices=[Choice(message=message, finish_reason=done.finish_reason)],
    )


def _json(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


# ------------------------------------------------------------------------------------------------ errors


def _error_response(
    status: int,
    message: str,
    type: str | None = None,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    type = type or TYPES_BY_STATUS.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return JSONResponse(error_body(message, type, code, param), status_code=status, headers=headers)


def _describe_validation(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "json_invalid":
        return (
            f"malformed JSON body: {first.get('ctx', {}).get('error', first.get('msg'))}",
            None,
        )
    param = ".".join(loc) or None
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    where = f"{param}: " if param else "request body: "
    return f"{where}{first.get('msg', 'invalid value')}{more}", param


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        return _error_response(exc.status, exc.message, exc.type, exc.code, exc.param, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        message, param = _describe_validation(exc)
        return _error_response(400, message, "invalid_request_error", "invalid_request", param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return _error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _error_response(500, f"internal server error: {type(exc).__name__}", "server_error")

"""One generation at a time on one loaded model, behind a bounded FIFO queue.

The KV cache holds one sequence, so a single worker thread owns the Session (and so every backend
call); request handlers submit jobs and read their events from an asyncio queue. A job can be
cancelled (client gone) or time out: either is noticed before the next token is computed, and a
job still waiting is dropped from the queue at once.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import AutoglmError, InputError
from ..prompt import PromptInputs
from ..sampling import Sampler, SamplingConfig
from ..session import Session
from ..tokenizer import StreamDecoder
from .errors import APIError
from .textstream import StopMatcher

log = logging.getLogger(__name__)


# ---- what a job reports, in order: any number of Text, then one Finished or Failed
@dataclass
class Text:
    text: str


@dataclass
class Finished:
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int  # prompt tokens reused from the previous request's KV cache
    time_to_first_token_s: float
    decode_s: float


@dataclass
class Failed:
    error: APIError


class QueueFull(Exception):
    pass


@dataclass
class Job:
    inputs: PromptInputs
    images: Sequence[Any]
    audios: Sequence[Any]
    max_tokens: int
    sampling: SamplingConfig
    stop: Sequence[str]
    deadline: float  # time.monotonic() by which the last token must be out
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def emit(self, event) -> None:
        """From the worker thread: hand an event to the request's event loop."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the loop is closed: the server is shutting down
            self.cancelled.set()

    def timed_out(self) -> bool:
        return time.monotonic() >= self.deadline

    async def stream(self) -> AsyncIterator[Text | Finished | Failed]:
        """The job's events until Finished or Failed; a timeout becomes Failed (504)."""
        while True:
            remaining = self.deadline - time.monotonic()
            try:
                event = await asyncio.wait_for(self.events.get(), timeout=max(remaining, 0.0))
            except TimeoutError:
                self.cancelled.set()
                event = Failed(timeout_error())
            yield event
            if not isinstance(event, Text):
                return


def timeout_error() -> APIError:
    return APIError(
        504,
        "the request timed out (the server's --request-timeout)",
        "timeout_error",
        "request_timeout",
    )


class Engine:
    def __init__(self, session: Session, max_queue: int):
        self.session = session
        self.max_queue = max_queue
        self._waiting: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._running: Job | None = None
        self._closed = False
        self._thread: threading.Thread | None = None

    # ---- lifecycle
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="autoglm-engine", daemon=True)
            self._thread.start()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            for job in self._waiting:
                job.cancelled.set()
            self._waiting.clear()
            if self._running is not None:
                self._running.cancelled.set()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    # ---- queue
    @property
    def queued(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return int(self._running is not None)

    def check_room(self) -> None:
        """QueueFull when a job submitted now would be refused (call without the lock held)."""
        with self._cond:
            self._check_room()

    def _check_room(self) -> None:
        if self._closed:
            raise QueueFull("the server is shutting down")
        busy = self._running is not None or self._waiting
        if busy and len(self._waiting) >= self.max_queue:
            raise QueueFull(f"{len(self._waiting)} requests are already waiting (the server's --max-queue)")

    def submit(self, job: Job) -> None:
        """Queue a job; QueueFull when max_queue jobs already wait behind the running one."""
        with self._cond:
            self._check_room()
            self._waiting.append(job)
            self._cond.notify()

    def cancel(self, job: Job) -> None:
        """Stop a job: dropped if still waiting, else stopped before its next token."""
        job.cancelled.set()
        with self._cond:
            try:
                self._waiting.remove(job)
            except ValueError:
                pass

    # ---- worker
    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                job = self._waiting.popleft()
                if job.cancelled.is_set():
                    continue
                self._running = job
            try:
                if job.timed_out():
                    job.emit(Failed(timeout_error()))
                else:
                    self._generate(job)
            except Exception as e:  # noqa: BLE001 - a job never takes the worker down
                self.session.forget_cache()
                job.emit(Failed(_as_api_error(e)))
            finally:
                with self._cond:
                    self._running = None

    def _generate(self, job: Job) -> None:
        session = self.session
        t0 = time.perf_counter()
        try:
            prepared = session.embed(job.inputs, job.images, job.audios)
        except InputError as e:  # media the handler could decode but preprocessing refused
            raise APIError(400, str(e), "invalid_request_error") from None
        eos = set(session.spec.eos_token_ids)
        text = StreamDecoder(session.tokenizer, skip_special_tokens=True)
        stop = StopMatcher(job.stop)
        finish, count, first = "length", 0, None
        for token in session.tokens(
            prepared, job.max_tokens, Sampler(job.sampling, allowed=session.tokenizer.known_ids())
        ):
            first = first or time.perf_counter()
            count += 1
            if token in eos:
                finish = "stop"
                break
            out = stop.push(text.push(token))
            if out:
                job.emit(Text(out))
                # Hand the GIL to the event loop so it sends this token now: with a small model
                # the decode loop is mostly Python and would otherwise hold it for several steps.
                time.sleep(0)
            if stop.stopped:
                finish = "stop"
                break
            if job.cancelled.is_set():
                return  # nobody is listening any more
            if job.timed_out():
                job.emit(Failed(timeout_error()))
                return
        tail = stop.push(text.finish()) + stop.flush()
        if tail:
            job.emit(Text(tail))
        end = time.perf_counter()
        job.emit(
            Finished(
                finish,
                len(job.inputs.input_ids),
                count,
                session.reused_tokens,
                first - t0,
                end - first,
            )
        )


def _as_api_error(e: Exception) -> APIError:
    if isinstance(e, APIError):
        return e
    if isinstance(e, AutoglmError):  # past the request's checks, a runtime error is the server's
        log.error("backend error: %s", e)
        return APIError(500, f"the model failed: {e}", "server_error")
    log.exception("generation failed")
    return APIError(500, f"the model failed: {type(e).__name__}: {e}", "server_error")

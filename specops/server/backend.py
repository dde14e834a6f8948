"""The seam between HTTP handlers and the engine worker (TGI's `Backend`): admit a valid
request, wait for it without blocking the event loop, stream its text, and cancel it when
its client goes away or its queue time runs out.
"""
from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import AsyncIterator

from fastapi import Request

from ..config import Settings
from ..engine.llm_engine import GenerationResult
from ..engine.logprobs import TokenLogprob
from .errors import ServiceError, Unavailable
from .health import Health
from .validation import ValidRequest
from .worker import EngineWorker, Job

log = logging.getLogger("specops.server")


class ClientGone(Exception):
    """The client disconnected; its job was cancelled and there is no one to answer."""


@dataclass
class Delta:
    text: str
    token_count: int
    logprobs: list[TokenLogprob] = field(default_factory=list)  # of the tokens since the last delta, if asked


@dataclass
class Finished:
    result: GenerationResult
    queue_s: float  # admission -> taken by the worker
    latency_s: float  # admission -> done
    ttft_s: float  # admission -> first token


class DeltaBuffer:
    """Text the worker committed, handed to the event loop at most every `interval_s` (the
    first chunk at once). Each hand-over costs a cross-thread wake-up, an SSE event and event-loop
    work that competes with the engine thread for the GIL; a round takes a few milliseconds."""

    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._text, self._count, self._last = "", 0, -math.inf
        self._logprobs: list[TokenLogprob] = []

    def add(self, ids: list[int], text: str, logprobs: list[TokenLogprob]) -> bool:
        """(worker thread) Buffer a round's text; True when it is time to wake the event loop."""
        with self._lock:
            self._text += text
            self._count += len(ids)
            self._logprobs += logprobs
            now = time.perf_counter()
            if now - self._last < self.interval_s:
                return False
            self._last = now
            return True

    def take(self) -> Delta | None:
        """(event loop) Everything buffered so far, as one delta."""
        with self._lock:
            if not self._text and not self._count:
                return None
            delta = Delta(self._text, self._count, self._logprobs)
            self._text, self._count, self._logprobs = "", 0, []
            return delta


class Ticket:
    """One admitted request. Worker callbacks cross to the event loop as queue items."""

    def __init__(self, backend: "Backend", valid: ValidRequest):
        self.backend, self.loop = backend, asyncio.get_running_loop()
        self.events: asyncio.Queue = asyncio.Queue()
        self.admitted = time.perf_counter()
        # only a stream needs per-round text: a plain request costs the event loop nothing per round
        self.job = Job(valid.prompt_ids, valid.params, on_tokens=self._on_tokens if valid.stream else None,
                       on_start=self._on_start, time_limit_s=backend.settings.request_timeout_s)
        self.buffer = DeltaBuffer(backend.settings.stream_interval_s)
        self.started = asyncio.Event()
        self.done = asyncio.wrap_future(self.job.future)  # never cancelled by us: see result()
        self.timer: asyncio.TimerHandle | None = None  # the queue timeout, until the job starts

    # worker thread -> event loop; a closed loop means the server is going down: stop the job
    def _post(self, fn, *args) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            self.job.cancel()

    def _on_start(self) -> None:
        self._post(self._mark_started)

    def _mark_started(self) -> None:
        self.started.set()
        if self.timer is not None:
            self.timer.cancel()

    def _on_tokens(self, ids: list[int], text: str, logprobs: list[TokenLogprob]) -> None:
        if self.buffer.add(ids, text, logprobs):
            self._post(self._flush)

    def _flush(self) -> None:
        if (delta := self.buffer.take()) is not None:
            self.events.put_nowait(delta)

    def _expire(self) -> None:
        worker = self.backend.worker
        worker.abandon(self.job, Unavailable(
            f"waited {self.backend.settings.queue_timeout_s:g} s in the queue (queue_timeout_s); retry later",
            code="queue_timeout", retry_after=worker.retry_after()))

    def cancel(self) -> None:
        self.backend.worker.cancel(self.job)

    async def wait_started(self) -> None:
        """Until the worker takes the job; raises the job's error if it never will."""
        started = asyncio.ensure_future(self.started.wait())
        try:
            await asyncio.wait({started, self.done}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            started.cancel()
        if not self.started.is_set():
            self.done.result()  # re-raise the queue timeout / shutdown error

    async def result(self) -> Finished:
        # shield: cancelling this waiter must not cancel the job's future
        return self._finished(await asyncio.shield(self.done))

    def _finished(self, result: GenerationResult) -> Finished:
        queue_s = self.job.started_at - self.admitted
        return Finished(result, queue_s, time.perf_counter() - self.admitted, queue_s + result.stats.ttft_s)

    async def stream(self) -> AsyncIterator[Delta | Finished | ServiceError]:
        """Text deltas as rounds commit, then Finished (or the ServiceError that ended the
        generation: headers are sent by then, so it travels as the last event).
        Closing the iterator cancels the job."""
        get = None
        try:
            while not (self.done.done() and self.events.empty()):
                get = asyncio.ensure_future(self.events.get())
                await asyncio.wait({get, self.done}, return_when=asyncio.FIRST_COMPLETED)
                if get.done():
                    yield get.result()
                get.cancel()
            if (rest := self.buffer.take()) is not None:  # text the interval held back
                yield rest
            try:
                finished = self._finished(self.done.result())
            except ServiceError as err:
                yield err
            else:
                yield finished
        finally:
            if get is not None:
                get.cancel()
            if not self.done.done():  # the consumer left early (client disconnect): stop the job
                self.cancel()


class Backend:
    def __init__(self, settings: Settings, health: Health, worker: EngineWorker):
        self.settings, self.health, self.worker = settings, health, worker

    def require_ready(self) -> None:
        state = self.health.snapshot()
        if state["status"] != "ready":
            raise Unavailable(f"the model is not ready (state: {state['status']})"
                              + (f": {state['reason']}" if state["reason"] else ""),
                              code="not_ready", state=state["status"], reason=state["reason"],
                              retry_after=None if state["status"] == "failed" else 5)

    def admit(self, valid: ValidRequest) -> Ticket:
        """Queue the request now or raise (429 queue full, 503 draining); starts the queue timer."""
        ticket = Ticket(self, valid)
        self.worker.submit(ticket.job)
        ticket.timer = ticket.loop.call_later(self.settings.queue_timeout_s, ticket._expire)
        return ticket

    async def run(self, request: Request, ticket: Ticket) -> Finished:
        """Wait for the whole result; a client disconnect cancels the job (ClientGone)."""
        return await until_disconnect(request, ticket, ticket.result())

    async def start_stream(self, request: Request, ticket: Ticket) -> None:
        """Wait until generation starts, so queue errors still get their HTTP status."""
        await until_disconnect(request, ticket, ticket.wait_started())


async def _disconnected(request: Request) -> None:
    # The body is already read, so the next ASGI message is http.disconnect (uvicorn sends it
    # when the connection closes); anything else (a pipelined body chunk) is skipped.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def until_disconnect(request: Request, ticket: Ticket, awaitable):
    work = asyncio.ensure_future(awaitable)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the handler itself was cancelled (server shutdown)
        work.cancel()
        ticket.cancel()
        raise
    finally:
        gone.cancel()
    if not work.done():
        work.cancel()
        ticket.cancel()
        log.info("client disconnected; its generation was cancelled")
        raise ClientGone()
    return work.result()

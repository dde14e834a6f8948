"""The one thread that owns the engine: a bounded FIFO of jobs, run one at a time (`Engine`),
or up to max_batch at once sharing every target pass (`BatchEngine`: a job joins the batch at
the next round boundary and leaves when it finishes, is cancelled or times out).

Job life: queued -> running -> done, or queued -> abandoned (client gone, queue timeout,
shutdown). State changes happen under the worker's lock, so a job is either taken by the
worker or abandoned by its request, never both. Every job's future is resolved exactly once:
with a GenerationResult, or with a ServiceError the HTTP layer turns into a status code.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Callable

from ..engine.batch import BatchEngine, Sequence
from ..engine.llm_engine import Engine, GenerationResult, OnTokens
from ..engine.sampling_params import SamplingParams
from .errors import InvalidRequest, QueueFull, ServiceError, Unavailable
from .metrics import Metrics

log = logging.getLogger("specops.server")


@dataclass(eq=False)
class Job:
    prompt_ids: list[int]
    params: SamplingParams
    on_tokens: OnTokens | None = None  # called in the worker thread after every round
    on_start: Callable[[], None] | None = None  # called in the worker thread when the job is taken
    time_limit_s: float | None = None  # wall-clock budget of the generation itself
    future: Future = field(default_factory=Future)
    state: str = "queued"
    enqueued_at: float = field(default_factory=time.perf_counter)
    started_at: float = 0.0
    timed_out: bool = False
    _cancel: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """Ask a running generation to stop; the engine polls this once per round."""
        self._cancel.set()

    def should_stop(self) -> bool:
        if self._cancel.is_set():
            return True
        if self.time_limit_s is not None and time.perf_counter() - self.started_at > self.time_limit_s:
            self.timed_out = True
            return True
        return False


class EngineWorker:
    def __init__(self, metrics: Metrics, queue_size: int):
        self.metrics, self.queue_size = metrics, queue_size
        self._cond = threading.Condition()
        self._queue: deque[Job] = deque()
        self._running: list[Job] = []
        self._engine: Engine | BatchEngine | None = None
        self._accepting = True
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._mean_s = 1.0  # running mean of a generation's duration, for Retry-After

    # -- admission (event-loop side) -----------------------------------------------------
    def attach(self, engine: Engine | BatchEngine) -> None:
        """Hand over the loaded engine and start serving; called once by the model sync."""
        with self._cond:
            if self._thread is not None or self._stopping:
                return
            self._engine = engine
            self._thread = threading.Thread(target=self._loop, name="specops-engine", daemon=True)
            self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue a job or refuse it now: 503 while draining, 429 when the queue is full."""
        with self._cond:
            if not self._accepting:
                raise Unavailable("the server is draining and takes no new requests", code="draining",
                                  state="draining", retry_after=self._retry_after())
            if len(self._queue) >= self.queue_size:
                raise QueueFull(f"the queue is full ({self.queue_size} requests waiting); retry later",
                                code="queue_full", retry_after=self._retry_after())
            self._queue.append(job)
            self.metrics.queue_depth.set(len(self._queue))
            self._cond.notify_all()

    def abandon(self, job: Job, error: ServiceError | None = None) -> bool:
        """Take a still-queued job out of the queue (True), resolving its future with `error`
        (None cancels it); a job already taken is left alone (False)."""
        with self._cond:
            if job.state != "queued":
                return False
            self._queue.remove(job)
            job.state = "abandoned"
            self.metrics.queue_depth.set(len(self._queue))
            self._cond.notify_all()
        if error is None:
            job.future.cancel()
        else:
            _resolve(job.future, error=error)
        return True

    def cancel(self, job: Job) -> None:
        """The client went away: drop the job if queued, else stop it at the next round."""
        if not self.abandon(job):
            job.cancel()

    def load(self) -> tuple[int, int]:
        """(queued, running) right now."""
        with self._cond:
            return len(self._queue), len(self._running)

    def retry_after(self) -> int:
        with self._cond:
            return self._retry_after()

    def _retry_after(self) -> int:
        # Seconds until the queue ahead of a new request has likely cleared (1..60); a batch
        # works through `slots` requests at a time.
        slots = self._engine.target.max_batch if isinstance(self._engine, BatchEngine) else 1
        return min(max(math.ceil((len(self._queue) + 1) * self._mean_s / slots), 1), 60)

    # -- shutdown ------------------------------------------------------------------------
    def drain(self, grace_s: float) -> bool:
        """Stop accepting; wait up to `grace_s` for queued and running jobs. True if all done."""
        deadline = time.monotonic() + grace_s
        with self._cond:
            self._accepting = False
            while self._queue or self._running:
                left = deadline - time.monotonic()
                if left <= 0 or (self._thread is None and not self._running):
                    break  # no engine to run the queue, or out of time
                self._cond.wait(min(left, 0.5))
            return not self._queue and not self._running

    def stop(self, join_s: float = 10.0) -> None:
        """Refuse everything still queued (503), cancel the running job, end the thread."""
        with self._cond:
            self._accepting, self._stopping = False, True
            left, running = list(self._queue), list(self._running)
            self._cond.notify_all()
        for job in left:
            self.abandon(job, Unavailable("the server shut down before this request could run",
                                          code="shutdown", state="draining"))
        for job in running:
            job.cancel()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(join_s)

    # -- the engine thread ---------------------------------------------------------------
    def _loop(self) -> None:
        if isinstance(self._engine, BatchEngine):
            return self._batch_loop(self._engine)
        while (job := self._take()) is not None:
            if job.state == "running":
                self._execute(job)

    def _take(self, wait: bool = True) -> Job | None:
        """The next job (state "running"), a job cancelled while queued (state "abandoned"), or
        None (stopping, or nothing queued and `wait` False)."""
        with self._cond:
            while wait and not self._queue and not self._stopping:
                self._cond.wait()
            if self._stopping or not self._queue:
                return None
            job = self._queue.popleft()
            self.metrics.queue_depth.set(len(self._queue))
            if not job.future.set_running_or_notify_cancel():  # its future was cancelled
                job.state = "abandoned"
                return job
            job.state, job.started_at = "running", time.perf_counter()
            self._running.append(job)
        self.metrics.queue_wait.observe(job.started_at - job.enqueued_at)
        self.metrics.in_flight.set(len(self._running))
        if job.on_start is not None:
            job.on_start()
        return job

    # -- continuous batching -------------------------------------------------------------
    def _batch_loop(self, engine: BatchEngine) -> None:
        """Jobs join at round boundaries while slots are free; each round serves all of them."""
        jobs: dict[int, tuple[Job, Sequence]] = {}  # id(sequence) -> its job
        while True:
            while engine.free and (job := self._take(wait=not engine.active)) is not None:
                if job.state == "running":
                    self._join(engine, job, jobs)
            if self._stopping and not engine.active:
                return
            if not engine.active:
                continue
            try:
                finished = engine.step()
            except Exception as err:  # a failed pass fails this batch's jobs, never the worker
                log.exception("batched generation failed")
                finished = list(engine.active)
                engine.active.clear()
                for seq in finished:
                    job, _ = jobs.pop(id(seq))
                    _resolve(job.future, error=ServiceError(
                        f"generation failed: {type(err).__name__} (see the server log)", code="engine_error"))
                    self._finish(job)
                continue
            sequences, rows, prompt_tokens = engine.last_pass
            if sequences:
                self.metrics.batch_size.observe(sequences)
                self.metrics.batch_rows.observe(rows)
            self.metrics.pass_prompt_tokens.observe(prompt_tokens)
            for seq in finished:
                self._done(*jobs.pop(id(seq)))

    def _join(self, engine: BatchEngine, job: Job, jobs: dict) -> None:
        seq = Sequence(job.prompt_ids, job.params, job.on_tokens, job.should_stop)
        try:
            engine.add(seq)
        except ValueError as err:  # input the engine refuses (validation lets none through)
            _resolve(job.future, error=InvalidRequest(str(err), status=400, code="invalid_prompt"))
            self._finish(job)
        except Exception as err:
            log.exception("prefill failed")
            _resolve(job.future, error=ServiceError(f"generation failed: {type(err).__name__} (see the server "
                                                    "log)", code="engine_error"))
            self._finish(job)
        else:
            if seq.done:  # finished at its first token
                self._done(job, seq)
            else:
                jobs[id(seq)] = (job, seq)

    def _done(self, job: Job, seq: Sequence) -> None:
        result = seq.result
        if job.timed_out and result.finish_reason == "cancelled":
            result.finish_reason = "timeout"
        self._record(result)
        _resolve(job.future, result=result)
        self._finish(job)

    def _execute(self, job: Job) -> None:
        try:
            result = self._engine.generate(job.prompt_ids, job.params, on_tokens=job.on_tokens,
                                           cancelled=job.should_stop)
        except ValueError as err:  # input the engine refuses (validation lets none through)
            _resolve(job.future, error=InvalidRequest(str(err), status=400, code="invalid_prompt"))
        except Exception as err:  # never let one request take the worker (or the process) down
            log.exception("generation failed")  # the detail (paths, traces) stays in the log
            _resolve(job.future, error=ServiceError(f"generation failed: {type(err).__name__} (see the server "
                                                    "log)", code="engine_error"))
        else:
            if job.timed_out and result.finish_reason == "cancelled":
                result.finish_reason = "timeout"
            self._record(result)
            _resolve(job.future, result=result)
        finally:
            self._finish(job)

    def _record(self, result: GenerationResult) -> None:
        try:
            self.metrics.record_generation(result.stats)
            self.metrics.generations.labels(result.stats.speculator, result.finish_reason).inc()
        except Exception:  # metrics must never fail a request
            log.exception("recording metrics failed")

    def _finish(self, job: Job) -> None:
        duration = time.perf_counter() - job.started_at
        with self._cond:
            job.state = "done"
            if job in self._running:
                self._running.remove(job)
            self._mean_s = 0.8 * self._mean_s + 0.2 * duration
            self._cond.notify_all()
            running = len(self._running)
        self.metrics.in_flight.set(running)


def _resolve(future: Future, result=None, error: BaseException | None = None) -> None:
    """Set a job's outcome once; a future already cancelled or set keeps its first outcome."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass

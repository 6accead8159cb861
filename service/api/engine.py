"""The model worker: one thread owns all model work (or several threads, where the work runs elsewhere and they
only wait on it), fed by a bounded queue; compatible generate requests decode as one batch.

Requests never run on the event loop. ``submit`` refuses work when the queue is full (the route answers 503 with
Retry-After). Generate jobs that share target, mode and layer are drained from the queue together (up to
``max_batch``) and decoded as one batch; each job gets its own events (token deltas, then the final result or an
error) through an asyncio queue on the caller's loop.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from service.api.errors import BusyError, ClientDeadlineError, DeadlineError, NotReadyError, ServiceError
from service.backends import Backend
from service.runtime.generate import SamplingParams

log = logging.getLogger("interlingua")


@dataclass
class GenerateJob:
    """One generate request: ``build`` (run on the worker) returns its target model's prompt and prepare timings.

    A job stops early, within a decoding step, when its client goes away (``abandon``), when its ``deadline``
    (``time.monotonic()``) passes (``deadline_error``: 408 for the client's own ``timeout_s``, 504 for the server's
    limit) or when the server shuts down past its grace period (503)."""

    group: tuple[Any, ...]  # jobs with equal groups can share a batch
    backend: Backend  # decodes for the target model
    build: Callable[[], tuple[Any, dict[str, float], int]]  # -> (what the backend decodes, timings, source tokens)
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    timeout_s: float | None = None
    client_deadline: bool = False  # the deadline is the client's own timeout_s (shorter than the server's limit)
    events: asyncio.Queue[tuple[str, Any]] = field(default_factory=asyncio.Queue)
    stopped: ServiceError | None = None  # why the job was stopped from outside (None: abandoned or running)
    abandoned: bool = False

    def __post_init__(self) -> None:
        self.deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s

    def emit(self, kind: str, payload: Any) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, payload))

    def abandon(self) -> None:
        """The client has gone: stop generating for it, answer nobody."""
        self.abandoned = True

    def stop(self, reason: ServiceError) -> None:
        self.stopped = reason

    def deadline_error(self) -> ServiceError:
        if self.client_deadline:
            return ClientDeadlineError(
                f"the request ran past the deadline it set (timeout_s = {self.timeout_s:g} s) and was stopped"
            )
        return DeadlineError(
            f"the request ran past this server's limit of {self.timeout_s:g} s (INTERLINGUA_REQUEST_TIMEOUT_S) and "
            "was stopped"
        )

    def should_stop(self) -> bool:
        if self.deadline is not None and self.stopped is None and time.monotonic() > self.deadline:
            self.stopped = self.deadline_error()
        return self.abandoned or self.stopped is not None

    def finish_stopped(self) -> None:
        """Tell the client why its job stopped (nothing when it has gone)."""
        if not self.abandoned and self.stopped is not None:
            self.emit("error", self.stopped)


@dataclass
class CallJob:
    fn: Callable[[], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


class Engine:
    def __init__(
        self, queue_size: int, max_batch: int, on_stop: Callable[[str], None] | None = None, workers: int = 1
    ) -> None:
        self.jobs: queue.Queue[GenerateJob | CallJob | None] = queue.Queue(maxsize=queue_size)
        self.max_batch = max_batch
        self.pending: deque[GenerateJob | CallJob | None] = deque()
        self.current: dict[int, list[GenerateJob]] = {}  # per worker: the batch being decoded
        self.closing = False
        self.on_stop = on_stop  # told why each job stopped early: abandoned, timeout, not_ready
        self.threads = [
            threading.Thread(target=self._run, args=(i,), name=f"interlingua-worker-{i}", daemon=True)
            for i in range(workers)
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self, grace_s: float = 5.0) -> None:
        """Refuse new work, let queued and running work finish for up to ``grace_s``, then stop what is left (its
        clients get 503) and end the worker."""
        self.closing = True
        for _ in self.threads:
            self.jobs.put(None)  # one stop per worker; blocks only while the queue is full, which the grace drains
        deadline = time.monotonic() + grace_s
        for thread in self.threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        if any(thread.is_alive() for thread in self.threads):
            shutdown = NotReadyError("the server is shutting down; retry on another replica or after restart")
            running = [job for batch in list(self.current.values()) for job in batch]
            for job in [*list(self.jobs.queue), *self.pending, *running]:
                if isinstance(job, GenerateJob):
                    job.stop(shutdown)
            for thread in self.threads:
                thread.join(timeout=10)

    @property
    def depth(self) -> int:
        return self.jobs.qsize() + len(self.pending)

    def submit(self, job: GenerateJob | CallJob) -> None:
        if self.closing:
            raise NotReadyError("the server is shutting down; retry on another replica or after restart")
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise BusyError(f"the work queue is full ({self.jobs.maxsize} waiting); retry shortly") from None

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the worker thread and await its result."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self.submit(CallJob(fn, loop, future))
        return await future

    # --- worker -----------------------------------------------------------------------------------------------------
    def _next(self) -> GenerateJob | CallJob | None:
        try:
            return self.pending.popleft()
        except IndexError:
            return self.jobs.get()

    def _run(self, worker: int) -> None:
        while True:
            job = self._next()
            if job is None:
                return
            if isinstance(job, CallJob):
                self._call(job)
            else:
                self._generate(self._batch_with(job), worker)

    def _batch_with(self, first: GenerateJob) -> list[GenerateJob]:
        batch = [first]
        while len(batch) < self.max_batch:
            try:
                other = self.jobs.get_nowait()
            except queue.Empty:
                break
            if isinstance(other, GenerateJob) and other.group == first.group:
                batch.append(other)
            else:
                self.pending.append(other)  # served next, in order (None: stop)
                break
        return batch

    @staticmethod
    def _call(job: CallJob) -> None:
        try:
            result = job.fn()
        except Exception as err:
            job.loop.call_soon_threadsafe(_set_exception, job.future, err)
        else:
            job.loop.call_soon_threadsafe(_set_result, job.future, result)

    def _generate(self, batch: list[GenerateJob], worker: int = 0) -> None:
        ready: list[tuple[GenerateJob, Any, dict[str, float], int]] = []
        for job in batch:
            if job.should_stop():  # gone, or past its deadline, while it waited
                self._finish_stopped(job)
                continue
            try:
                prompt, timings, source_tokens = job.build()
                ready.append((job, prompt, timings, source_tokens))
            except Exception as err:
                job.emit("error", err)
        if not ready:
            return
        backend = ready[0][0].backend
        self.current[worker] = [r[0] for r in ready]
        start = time.perf_counter()
        try:
            stream = backend.stream([r[1] for r in ready], [r[0].params for r in ready], self._stopper(ready))
            for event in stream:
                job, _, timings, source_tokens = ready[event.index]
                if event.error is not None:
                    job.emit("error", event.error)
                    continue
                if event.finished and event.completion is None:  # stopped from outside
                    self._finish_stopped(job)
                    continue
                job.emit("delta", event)
                if event.completion is not None:
                    done = event.completion
                    timings = {**timings, **done.timings_ms, "generate": (time.perf_counter() - start) * 1e3}
                    n_source = source_tokens if done.source_tokens is None else done.source_tokens
                    job.emit("done", (done, timings, n_source))
        except Exception as err:  # a failure inside the model: every job of the batch gets it
            log.exception("generation failed")
            for job, *_ in ready:
                job.emit("error", err)
        finally:
            self.current.pop(worker, None)

    def _finish_stopped(self, job: GenerateJob) -> None:
        job.finish_stopped()
        if self.on_stop is not None:
            self.on_stop("abandoned" if job.abandoned else job.stopped.kind if job.stopped else "unknown")

    @staticmethod
    def _stopper(ready: list[tuple[GenerateJob, Any, dict[str, float], int]]) -> Callable[[int], bool]:
        return lambda i: ready[i][0].should_stop()


def _set_result(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[Any], err: BaseException) -> None:
    if not future.done():
        future.set_exception(err)

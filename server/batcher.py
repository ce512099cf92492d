"""Dynamic batching, per model: a bounded queue, a batch-collecting function, worker threads.

Requests are typed envelopes whose future exists before they are queued. Each worker thread
collects a batch with `collect_batch` (a plain function with an injectable clock, unit-tested
without a server), runs one forward pass off the event loop, and hands each request its rows.
A request with more images than fit in a batch spans batches, sharing each with the requests
queued behind it (`collect_batch`). Names follow Triton:
max_batch_size, max_queue_delay, queue size, timeout, and instances (instance_group count): that
many workers share the queue and the one loaded backend, each running its own batches.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from server.backends import Backend, BatchOutput
from server.errors import InferenceFailed, QueueFull, RequestTimeout, Unavailable
from server.metrics import ModelMetrics, observe_many

log = logging.getLogger("server.batcher")

Clock = Callable[[], float]
_ids = itertools.count()


@dataclass(frozen=True)
class BatchConfig:
    max_batch_size: int = 32
    max_queue_delay: float = 0.002  # seconds
    queue_size: int = 256  # requests
    timeout: float = 10.0  # seconds from enqueue to answer
    instances: int = 1  # worker threads running batches concurrently on the one backend


@dataclass(eq=False, slots=True)
class InferenceRequest:
    """One client request: its images, the future that will hold its answer, its clock marks."""

    inputs: np.ndarray  # float32 [n, C, H, W]
    future: asyncio.Future
    enqueued_at: float
    deadline: float
    id: int = field(default_factory=lambda: next(_ids))
    parts: list[BatchOutput] = field(default_factory=list)
    done_images: int = 0
    failed: bool = False

    def __len__(self) -> int:
        return len(self.inputs)

    def abandoned(self, now: float) -> bool:
        """Answered already (timed out, cancelled, failed) or past its deadline: do not run it."""
        return self.failed or self.future.done() or now > self.deadline


@dataclass(slots=True)
class Slice:
    """Rows [start, stop) of one request's images, as placed in a batch."""

    request: InferenceRequest
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start

    @property
    def whole(self) -> bool:
        return self.start == 0 and self.stop == len(self.request)


Take = Callable[[float], "InferenceRequest | None"]


def collect_batch(
    take: Take,
    *,
    max_batch_size: int,
    max_queue_delay: float,
    clock: Clock,
    carried: Sequence[Slice] = (),
    idle_wait: float = 0.1,
    enough: int = 0,
) -> tuple[list[Slice], list[Slice]]:
    """Collect up to `max_batch_size` images; return the batch and the parts of requests that did
    not fit, oldest first, to be `carried` into the next batch.

    `take(timeout)` returns the next queued request, waiting at most `timeout` seconds (0: do not
    wait), or None. Requests already answered or past their deadline are dropped.

    With nothing carried, the batch waits up to `idle_wait` for a first request, then takes more
    until it is full or `max_queue_delay` has passed since its first request was queued; after
    that it still takes whatever is already waiting. Once it holds `enough` requests (0: no such
    number) it stops waiting and takes only what is already waiting: the worker passes the size of
    its last batch, as many as are likely to be coming.

    With parts carried from a request too large for one batch, it does not wait: the requests
    already waiting take their places first, then the carried parts fill the rest, the oldest
    first, with at least half of the batch between them (or all they have left, if less). So a
    request of thousands of images does not hold every request behind it until its last batch,
    and still advances by half a batch or more each time.
    """
    now = clock()
    carried = [c for c in carried if not c.request.abandoned(now)]
    if not carried:
        return _collect_new(take, max_batch_size, max_queue_delay, clock, idle_wait, enough)
    batch: list[Slice] = []
    left = sum(len(c) for c in carried)
    room = max_batch_size - min(left, (max_batch_size + 1) // 2)  # for the requests waiting
    while room > 0 and (request := take(0.0)) is not None:
        if request.abandoned(clock()):
            continue
        part = min(room, len(request))
        batch.append(Slice(request, 0, part))
        if part < len(request):
            carried.append(Slice(request, part, len(request)))
        room -= part
    room = max_batch_size - sum(len(s) for s in batch)
    rest: list[Slice] = []
    for c in carried:
        part = min(room, len(c))
        if part:
            batch.append(Slice(c.request, c.start, c.start + part))
            room -= part
        if part < len(c):
            rest.append(Slice(c.request, c.start + part, c.stop))
    return batch, rest


def _collect_new(take: Take, max_batch_size: int, max_queue_delay: float, clock: Clock, idle_wait: float,
                 enough: int) -> tuple[list[Slice], list[Slice]]:
    """`collect_batch` with nothing carried."""
    batch: list[Slice] = []
    size = 0
    first_enqueued: float | None = None
    while True:
        if first_enqueued is None:
            request = take(idle_wait)
        else:
            waited_enough = 0 < enough <= len(batch)
            request = take(0.0 if waited_enough else max(0.0, first_enqueued + max_queue_delay - clock()))
        if request is None:
            return batch, []
        if request.abandoned(clock()):
            continue
        if first_enqueued is None:
            first_enqueued = request.enqueued_at
        room = max_batch_size - size
        if len(request) > room:
            batch.append(Slice(request, 0, room))
            return batch, [Slice(request, room, len(request))]
        batch.append(Slice(request, 0, len(request)))
        size += len(request)
        if size == max_batch_size:
            return batch, []


def _resolve_all(outcomes: list[tuple[asyncio.Future, BatchOutput | BaseException]]) -> None:
    for future, outcome in outcomes:
        if future.done():
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


def _hand_back(outcomes: list[tuple[asyncio.Future, BatchOutput | BaseException]]) -> None:
    """Resolve futures on their event loop, from the worker thread; a closed loop has no one waiting."""
    loop = outcomes[0][0].get_loop()
    try:
        loop.call_soon_threadsafe(_resolve_all, outcomes)
    except RuntimeError:
        log.debug("event loop closed; %d answers dropped", len(outcomes))


def _expire(future: asyncio.Future, message: str) -> None:
    if not future.done():
        future.set_exception(RequestTimeout(message))


class Batcher:
    """The queue and worker threads of one model."""

    def __init__(
        self,
        model: str,
        backend: Backend,
        config: BatchConfig,
        metrics: ModelMetrics | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.model = model
        self.backend = backend
        self.config = config
        self.metrics = metrics
        self._clock = clock
        if config.instances < 1:
            raise ValueError(f"instances must be at least 1, got {config.instances}")
        # SimpleQueue: put and get in C, where Queue's are Python under a Condition (a few
        # microseconds a request, docs/benchmarks.md item 13). Only the event loop puts, so checking the
        # size before a put keeps the bound.
        self._queue: queue.SimpleQueue[InferenceRequest] = queue.SimpleQueue()
        # (deadline, future) of the event loop's requests not yet known to be answered, oldest
        # first (not the requests: their images need not outlive their batch). All share one
        # timeout, so their deadlines come in this order too: one timer, at the oldest deadline,
        # answers every late request (a timer for each request cost more than its queueing).
        self._waiting: deque[tuple[float, asyncio.Future]] = deque()
        self._reaper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Each worker's parts of requests that spanned its last batch: only that worker touches its slot.
        self._carried: list[list[Slice]] = [[] for _ in range(config.instances)]
        # gloro_queue_depth is the requests queued or in a batch still being collected: those
        # submitted (the event loop counts them) less those each worker has finished collecting
        # into a batch (each worker counts its own in its slot) and those stop() refused. Counting
        # only, each number written by one thread, there is no moment, as between a worker's
        # get() and its count of what it holds, at which a request is in neither place.
        self._submitted = 0
        self._collected = [0] * config.instances
        self._refused_at_stop = 0
        self._depth_lock = threading.Lock()
        self._stopping = False
        self._threads: list[threading.Thread] = []

    # -- event-loop side -------------------------------------------------------------------

    def depth(self) -> int:
        """Requests queued, not yet taken into a batch (gloro_queue_depth also counts those of a
        batch still being collected)."""
        return self._queue.qsize()

    def _show_depth(self) -> None:
        """Set gloro_queue_depth to the requests queued or in a batch still being collected.

        Whichever thread changes that number sets it after: the event loop once an iteration in
        which it queued requests (through the metrics' LoopTally: one write however many, where one
        each cost about 7 us of its CPU a request in process, docs/benchmarks.md item 17), a worker
        once it has collected a batch. Reading and writing under one lock, the last write is never
        older than the last change, and the gauge never goes below 0 as an increment and a
        decrement from two threads could."""
        if self.metrics is None:
            return
        with self._depth_lock:
            self.metrics.queue_depth.set(self._submitted - sum(self._collected) - self._refused_at_stop)

    def submit(self, inputs: np.ndarray, loop: asyncio.AbstractEventLoop) -> InferenceRequest:
        if self._stopping:
            raise Unavailable("the server is shutting down")
        if self._queue.qsize() >= self.config.queue_size:
            raise QueueFull(f"model {self.model} is overloaded: {self.config.queue_size} requests already queued")
        now = self._clock()
        request = InferenceRequest(inputs, loop.create_future(), now, now + self.config.timeout)
        self._submitted += 1  # before the put: a worker may collect it before the next line
        self._queue.put(request)
        if self.metrics is not None:
            self.metrics.tally.refresh(self._show_depth)
        self._watch(request.deadline, request.future, loop)
        return request

    async def infer(self, inputs: np.ndarray) -> BatchOutput:
        """Queue `inputs` and wait for their rows; 503 at once if the queue is full, 504 late."""
        return await self.submit(inputs, asyncio.get_running_loop()).future

    def _watch(self, deadline: float, future: asyncio.Future, loop: asyncio.AbstractEventLoop) -> None:
        """Keep `future` until answered; the deadline timer runs while any is kept."""
        if loop is not self._loop:  # a new event loop (tests): the old one's requests have no one waiting
            self._loop, self._waiting, self._reaper = loop, deque(), None
        waiting = self._waiting
        while waiting and waiting[0][1].done():  # answered ones, dropped as new ones come
            waiting.popleft()
        waiting.append((deadline, future))
        if self._reaper is None:
            self._reaper = loop.call_later(max(0.0, waiting[0][0] - self._clock()), self._reap, loop)

    def _reap(self, loop: asyncio.AbstractEventLoop) -> None:
        """At the oldest deadline: answer 504 to every request past its own, then wait for the next."""
        if loop is not self._loop:
            return
        self._reaper = None
        now = self._clock()
        waiting = self._waiting
        while waiting and (waiting[0][1].done() or waiting[0][0] <= now):
            _expire(waiting.popleft()[1], f"model {self.model} did not answer within {self.config.timeout:g} s")
        if waiting:
            self._reaper = loop.call_later(max(0.0, waiting[0][0] - now), self._reap, loop)

    # -- worker side ---------------------------------------------------------------------

    def start(self) -> None:
        self._threads = [
            threading.Thread(target=self._work, args=(i,), name=f"batcher-{self.model}-{i}", daemon=True)
            for i in range(self.config.instances)
        ]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float) -> None:
        """Stop taking requests, let the workers finish the queue for up to `timeout` seconds."""
        self._stopping = True
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        message = "the server shut down before this request ran"
        left = [(c.request.future, Unavailable(message)) for carried in self._carried for c in carried]
        while (request := self._take(0)) is not None:
            left.append((request.future, Unavailable(message)))
            self._refused_at_stop += 1
        self._show_depth()
        if left:
            _hand_back(left)

    def _take(self, timeout: float) -> InferenceRequest | None:
        try:
            return self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            return None

    def _work(self, worker: int) -> None:
        last_batch_requests = 0
        taken = 0  # requests taken from the queue into the batch being collected

        def take(timeout: float) -> InferenceRequest | None:
            nonlocal taken
            request = self._take(timeout)
            if request is not None:
                taken += 1
            return request

        while not (self._stopping and not self._carried[worker] and self._queue.empty()):
            batch, self._carried[worker] = collect_batch(
                take,
                max_batch_size=self.config.max_batch_size,
                max_queue_delay=self.config.max_queue_delay,
                clock=self._clock,
                carried=self._carried[worker],
                # With n clients each waiting for its answer, a batch of n is all that is coming:
                # waiting max_queue_delay for more would only add latency (2 ms a batch for one or
                # two clients). More load shows as more requests already waiting, which are taken;
                # less load waits the delay once, and the next batch expects fewer.
                enough=last_batch_requests,
            )
            if taken:
                self._collected[worker] += taken
                taken = 0
                self._show_depth()
            if batch:
                last_batch_requests = len(batch)
                try:
                    self._run(batch)
                except Exception as exc:  # the worker must outlive any one batch
                    log.exception("model %s: batcher error", self.model)
                    error = InferenceFailed(f"internal batching error ({type(exc).__name__})")
                    _hand_back([(s.request.future, error) for s in batch])

    def _run(self, batch: list[Slice]) -> None:
        started = self._clock()
        if len(batch) == 1 and batch[0].whole:
            inputs = batch[0].request.inputs
        else:
            inputs = np.concatenate([s.request.inputs[s.start : s.stop] for s in batch])
        output: BatchOutput | None = None
        try:
            output = self.backend.run(inputs)
        except Exception as exc:
            log.error("model %s: batch of %d images failed: %r", self.model, len(inputs), exc)
            error = InferenceFailed(
                f"inference failed for the batch of {len(inputs)} images holding this request "
                f"({type(exc).__name__}: {exc})"
            )
            for s in batch:
                s.request.failed = True
            outcomes: list = [(s.request.future, error) for s in batch]
        else:
            outcomes = self._split(batch, output)
        self._record(batch, started, len(inputs), output)
        if outcomes:
            _hand_back(outcomes)

    @staticmethod
    def _split(batch: list[Slice], output: BatchOutput) -> list:
        outcomes = []
        offset = 0
        for s in batch:
            n = s.stop - s.start
            rows = output.rows(offset, offset + n)
            offset += n
            request = s.request
            if s.whole:
                outcomes.append((request.future, rows))
                continue
            request.parts.append(rows)
            request.done_images += n
            if request.done_images == len(request):
                outcomes.append((request.future, BatchOutput.concat(request.parts)))
        return outcomes

    def _record(self, batch: list[Slice], started: float, size: int, output: BatchOutput | None) -> None:
        """A forward pass that answered: a failed one is counted only in its requests' 500s (as
        Triton counts executions), so the batch series and the statistics extension read alike."""
        metrics = self.metrics
        if metrics is None or output is None:
            return
        seconds = self._clock() - started
        metrics.inference.observe(seconds)
        metrics.request_compute.inc(max(0.0, seconds) * len(batch))
        metrics.last_inference.set(time.time())
        metrics.batch_size.observe(size)
        observe_many(metrics.queue_wait, [started - s.request.enqueued_at for s in batch if s.start == 0])
        observe_many(metrics.radius, output.radius.tolist())

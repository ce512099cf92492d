"""The batch-collecting function, driven synchronously with a fake clock, and the Batcher."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from server.backends.fake import FakeBackend
from server.batcher import BatchConfig, Batcher, InferenceRequest, Slice, collect_batch
from server.errors import InferenceFailed, QueueFull, RequestTimeout, Unavailable
from server.metrics import Metrics
from server.repository import load_repository


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeFuture:
    def __init__(self, done: bool = False) -> None:
        self._done = done

    def done(self) -> bool:
        return self._done


def request(n: int, enqueued_at: float = 0.0, deadline: float = 100.0, done: bool = False) -> InferenceRequest:
    return InferenceRequest(np.zeros((n, 1, 2, 2), np.float32), FakeFuture(done), enqueued_at, deadline)  # type: ignore[arg-type]


class Arrivals:
    """A queue whose requests arrive at given clock times; waiting advances the clock."""

    def __init__(self, clock: FakeClock, arrivals: list[tuple[float, InferenceRequest]]) -> None:
        self.clock = clock
        self.arrivals = sorted(arrivals, key=lambda a: a[0])
        self.waits: list[float] = []

    def take(self, timeout: float) -> InferenceRequest | None:
        self.waits.append(timeout)
        if self.arrivals and self.arrivals[0][0] <= self.clock.now + timeout:
            at, item = self.arrivals.pop(0)
            self.clock.now = max(self.clock.now, at)
            return item
        self.clock.now += timeout
        return None


def collect(arrivals: Arrivals, carried: list[Slice] = (), max_batch_size: int = 4, delay: float = 0.01):
    return collect_batch(arrivals.take, max_batch_size=max_batch_size, max_queue_delay=delay,
                         clock=arrivals.clock, carried=carried)


def rows(slices: list[Slice]) -> list[tuple[InferenceRequest, int, int]]:
    return [(s.request, s.start, s.stop) for s in slices]


pytestmark = pytest.mark.unit


def test_full_batch_returns_without_waiting_for_the_delay() -> None:
    clock = FakeClock()
    items = [request(1) for _ in range(5)]
    queue = Arrivals(clock, [(0.0, r) for r in items])
    batch, carry = collect(queue)
    assert [s.request for s in batch] == items[:4] and carry == []
    assert clock.now == 0.0


def test_with_enough_requests_it_takes_what_is_waiting_and_does_not_wait_for_more() -> None:
    clock = FakeClock()
    first, second, waiting, late = request(1), request(1), request(1), request(1)
    queue = Arrivals(clock, [(0.0, first), (0.002, second), (0.002, waiting), (0.003, late)])
    batch, carry = collect_batch(queue.take, max_batch_size=8, max_queue_delay=0.01, clock=clock, enough=2)
    assert [s.request for s in batch] == [first, second, waiting] and carry == []
    assert clock.now == pytest.approx(0.002) and queue.waits[2:] == [0.0, 0.0]


def test_waits_at_most_max_queue_delay_after_the_first_request() -> None:
    clock = FakeClock()
    first, late = request(1, enqueued_at=0.0), request(1)
    queue = Arrivals(clock, [(0.0, first), (0.05, late)])
    batch, _ = collect(queue, delay=0.01)
    assert [s.request for s in batch] == [first]
    assert clock.now == pytest.approx(0.01)


def test_a_request_arriving_within_the_delay_joins_the_batch() -> None:
    clock = FakeClock()
    first, second = request(1), request(2)
    queue = Arrivals(clock, [(0.0, first), (0.004, second)])
    batch, _ = collect(queue, delay=0.01)
    assert [(s.request, s.start, s.stop) for s in batch] == [(first, 0, 1), (second, 0, 2)]


def test_delay_counts_from_when_the_first_request_was_queued() -> None:
    clock = FakeClock()
    clock.now = 1.0
    old = request(1, enqueued_at=0.5)  # waited while the model ran the previous batch
    queue = Arrivals(clock, [(1.0, old)])
    batch, _ = collect(queue, delay=0.01)
    assert len(batch) == 1
    assert queue.waits[-1] == 0.0  # no more waiting: only what is already there


def after_first_batch(large: InferenceRequest) -> tuple[Arrivals, list[Slice]]:
    """A queue whose large request has had its first batch of 4, and what is left of it, carried."""
    queue = Arrivals(FakeClock(), [(0.0, large)])
    _, carried = collect(queue, max_batch_size=4)
    return queue, carried


def test_large_request_spans_batches() -> None:
    clock = FakeClock()
    big = request(10)
    queue = Arrivals(clock, [(0.0, big)])
    batch, carried = collect(queue, max_batch_size=4)
    assert rows(batch) == [(big, 0, 4)] and rows(carried) == [(big, 4, 10)]
    batch, carried = collect(queue, carried, max_batch_size=4)
    assert rows(batch) == [(big, 4, 8)] and rows(carried) == [(big, 8, 10)]
    batch, carried = collect(queue, carried, max_batch_size=4)
    assert rows(batch) == [(big, 8, 10)] and carried == []


def test_a_request_queued_behind_a_large_one_goes_in_the_next_batch() -> None:
    big, follower = request(10), request(1)
    queue, carried = after_first_batch(big)
    queue.arrivals.append((0.0, follower))
    batch, carried = collect(queue, carried, max_batch_size=4)
    assert rows(batch) == [(follower, 0, 1), (big, 4, 7)] and rows(carried) == [(big, 7, 10)]
    assert queue.waits[-1] == 0.0  # with work carried it never waits for company


def test_the_carried_request_keeps_at_least_half_of_each_batch() -> None:
    big, small = request(10), [request(1) for _ in range(4)]
    queue, carried = after_first_batch(big)
    queue.arrivals += [(0.0, r) for r in small]
    batch, carried = collect(queue, carried, max_batch_size=4)
    assert rows(batch) == [(small[0], 0, 1), (small[1], 0, 1), (big, 4, 6)]
    assert len(queue.arrivals) == 2  # the others wait for the next batch, which is theirs too
    batch, carried = collect(queue, carried, max_batch_size=4)
    assert rows(batch) == [(small[2], 0, 1), (small[3], 0, 1), (big, 6, 8)] and rows(carried) == [(big, 8, 10)]


def test_a_second_large_request_shares_too_and_is_carried_after_the_first() -> None:
    first, second = request(10), request(10)
    queue, carried = after_first_batch(first)
    queue.arrivals.append((0.0, second))
    batch, carried = collect(queue, carried, max_batch_size=4)
    assert rows(batch) == [(second, 0, 2), (first, 4, 6)]
    assert rows(carried) == [(first, 6, 10), (second, 2, 10)]
    batch, carried = collect(queue, carried, max_batch_size=4)
    assert rows(batch) == [(first, 6, 10)] and rows(carried) == [(second, 2, 10)]


def test_a_nearly_finished_carry_leaves_the_rest_of_the_batch_to_the_queue() -> None:
    big, others = request(5), [request(1) for _ in range(4)]
    queue, carried = after_first_batch(big)
    queue.arrivals += [(0.0, r) for r in others]
    batch, carried = collect(queue, carried, max_batch_size=4)
    assert rows(batch) == [*((r, 0, 1) for r in others[:3]), (big, 4, 5)] and carried == []


def test_with_batches_of_one_image_the_carried_request_keeps_every_pass() -> None:
    big, waiting = request(3), request(1)
    queue = Arrivals(FakeClock(), [(0.0, big)])
    _, carried = collect(queue, max_batch_size=1)
    queue.arrivals.append((0.0, waiting))
    for start in (1, 2):
        batch, carried = collect(queue, carried, max_batch_size=1)
        assert rows(batch) == [(big, start, start + 1)]
    assert carried == [] and collect(queue, max_batch_size=1)[0] == [Slice(waiting, 0, 1)]


def test_an_answered_carried_request_is_dropped() -> None:
    big = request(10)
    queue, carried = after_first_batch(big)
    big.failed = True
    assert collect(queue, carried, max_batch_size=4) == ([], [])


def test_answered_and_expired_requests_are_dropped() -> None:
    clock = FakeClock()
    clock.now = 5.0
    live = request(1, enqueued_at=5.0)
    queue = Arrivals(clock, [(5.0, request(1, done=True)), (5.0, request(1, deadline=4.0)), (5.0, live)])
    batch, _ = collect(queue)
    assert [s.request for s in batch] == [live]


def test_idle_queue_gives_an_empty_batch() -> None:
    clock = FakeClock()
    assert collect(Arrivals(clock, [])) == ([], [])


def test_max_batch_size_one_never_merges() -> None:
    clock = FakeClock()
    queue = Arrivals(clock, [(0.0, request(1)), (0.0, request(1))])
    batch, _ = collect(queue, max_batch_size=1)
    assert len(batch) == 1 and len(queue.arrivals) == 1


# -- the Batcher, with its worker thread and the fake backend ----------------------------------


@pytest.fixture
def fake_spec(tiny_repo: Path):
    return load_repository(tiny_repo)["tiny"]


def run(coro):
    return asyncio.run(coro)


def assert_each_got_its_own_rows(inputs: list[np.ndarray], outputs: list) -> None:
    """The fake backend's label is a function of each image, so rows cannot be swapped unseen."""
    for x, out in zip(inputs, outputs):
        expected = np.rint(x.reshape(len(x), -1).mean(axis=1) * 9)
        assert len(out) == len(x) and np.array_equal(out.label, expected)


@pytest.mark.integration
def test_concurrent_requests_share_forward_passes_and_get_their_own_rows(fake_spec) -> None:
    backend = FakeBackend(fake_spec, delay_s=0.02)
    batcher = Batcher("tiny", backend, BatchConfig(max_batch_size=8, max_queue_delay=0.01))
    batcher.start()

    async def main():
        inputs = [np.full((1 + i % 3, 1, 28, 28), i / 20, np.float32) for i in range(20)]
        outputs = await asyncio.gather(*(batcher.infer(x) for x in inputs))
        return inputs, outputs

    inputs, outputs = run(main())
    batcher.stop(1.0)
    assert_each_got_its_own_rows(inputs, outputs)
    assert max(backend.batch_sizes) > 1 and max(backend.batch_sizes) <= 8
    assert sum(backend.batch_sizes) == sum(len(x) for x in inputs)
    assert batcher.depth() == 0


class Gated(FakeBackend):
    """Holds each batch (or each that `holds`) until the test opens the gate, and shows when one
    is inside: the tests wait on events, not on sleeps a loaded machine could outlast."""

    def __init__(self, spec, holds: Callable[[np.ndarray], bool] = lambda batch: True) -> None:
        super().__init__(spec)
        self.holds = holds
        self.inside = threading.Event()
        self.gate = threading.Event()

    def _forward(self, batch: np.ndarray):
        if self.holds(batch):
            self.inside.set()
            if not self.gate.wait(10.0):
                raise RuntimeError("the test never opened the gate")
        return super()._forward(batch)


async def until(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "the batcher never got there"
        await asyncio.sleep(0.005)


@pytest.mark.integration
def test_metrics_count_each_request_and_image_and_the_queue_while_a_batch_runs(fake_spec) -> None:
    """Queue waits and radii are observed a batch at a time, the queue depth lowered once a
    batch: the totals are still one a request and one an image, and the depth returns to 0."""
    metrics = Metrics(CollectorRegistry())
    backend = Gated(fake_spec)
    batcher = Batcher("tiny", backend, BatchConfig(max_batch_size=8, max_queue_delay=0.001), metrics.for_model("tiny"))
    batcher.start()

    def sample(name: str) -> float | None:
        return metrics.registry.get_sample_value(name, {"model": "tiny"})

    async def main() -> float | None:
        first = asyncio.ensure_future(batcher.infer(np.zeros((1, 1, 28, 28), np.float32)))
        await asyncio.to_thread(backend.inside.wait, 10.0)  # its batch is running, held at the gate
        waiting = [asyncio.ensure_future(batcher.infer(np.zeros((2, 1, 28, 28), np.float32))) for _ in range(3)]
        await until(lambda: batcher.depth() == 3)
        await asyncio.sleep(0.01)  # the event loop's once-an-iteration metrics writes
        depth_while_running = sample("gloro_queue_depth")
        backend.gate.set()
        await asyncio.gather(first, *waiting)
        return depth_while_running

    depth_while_running = run(main())
    batcher.stop(1.0)
    assert depth_while_running == 3
    assert sample("gloro_queue_depth") == 0
    assert backend.batch_sizes == [1, 6]
    assert sample("gloro_batch_size_count") == 2 and sample("gloro_batch_size_sum") == 7
    assert sample("gloro_queue_wait_seconds_count") == 4
    assert sample("gloro_certified_radius_count") == 7


@pytest.mark.integration
def test_the_queue_depth_counts_the_requests_of_a_batch_still_being_collected(fake_spec) -> None:
    metrics = Metrics(CollectorRegistry())
    backend = FakeBackend(fake_spec)
    # A batch waits up to 5 s for its 8 images: it is complete when the test sends the rest.
    batcher = Batcher("tiny", backend, BatchConfig(max_batch_size=8, max_queue_delay=5.0), metrics.for_model("tiny"))
    batcher.start()

    def send(n: int) -> list[asyncio.Future]:
        return [asyncio.ensure_future(batcher.infer(np.zeros((1, 1, 28, 28), np.float32))) for _ in range(n)]

    async def main() -> tuple[float | None, int]:
        answers = send(2)
        await asyncio.sleep(0)  # both submitted: their tasks ran before this one resumes
        await until(lambda: batcher.depth() == 0 and backend.batch_sizes == [])  # both taken, none run
        await asyncio.sleep(0.01)
        shown, queued = metrics.registry.get_sample_value("gloro_queue_depth", {"model": "tiny"}), batcher.depth()
        await asyncio.gather(*answers, *send(6))
        await asyncio.sleep(0)
        return shown, queued

    shown, queued = run(main())
    batcher.stop(1.0)
    assert (shown, queued) == (2, 0)
    assert backend.batch_sizes == [8]
    assert metrics.registry.get_sample_value("gloro_queue_depth", {"model": "tiny"}) == 0


@pytest.mark.integration
def test_a_failing_batch_fails_only_its_own_requests(fake_spec) -> None:
    backend = FakeBackend(fake_spec, fail_if=lambda batch: bool((batch == 1.0).any()))
    batcher = Batcher("tiny", backend, BatchConfig(max_batch_size=1))
    batcher.start()

    async def main():
        poison = batcher.infer(np.ones((1, 1, 28, 28), np.float32))
        good = [batcher.infer(np.zeros((1, 1, 28, 28), np.float32)) for _ in range(3)]
        return await asyncio.gather(poison, *good, return_exceptions=True)

    results = run(main())
    batcher.stop(1.0)
    assert isinstance(results[0], InferenceFailed) and "injected failure" in str(results[0])
    assert all(not isinstance(r, BaseException) and r.label.tolist() == [0] for r in results[1:])


@pytest.mark.integration
def test_full_queue_refuses_at_once_and_slow_model_times_out(fake_spec) -> None:
    backend = Gated(fake_spec)
    batcher = Batcher("tiny", backend, BatchConfig(max_batch_size=1, queue_size=2, timeout=0.2))
    batcher.start()

    async def main():
        x = np.zeros((1, 1, 28, 28), np.float32)
        first = asyncio.ensure_future(batcher.infer(x))
        await asyncio.to_thread(backend.inside.wait, 10.0)  # the worker is now held with `first`
        queued = [asyncio.ensure_future(batcher.infer(x)) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await batcher.infer(x)
        return await asyncio.gather(first, *queued, return_exceptions=True)

    results = run(main())
    backend.gate.set()
    batcher.stop(2.0)
    assert all(isinstance(r, RequestTimeout) for r in results)
    assert backend.batch_sizes == [1]  # the expired ones were dropped, not run


def holds_an_all_ones_image(batch: np.ndarray) -> bool:
    return bool((batch == 1.0).all(axis=(1, 2, 3)).any())


@pytest.mark.integration
def test_each_request_times_out_at_its_own_deadline_behind_answered_ones(fake_spec) -> None:
    """Requests answered in time leave no deadline behind; a later one stuck in a batch that has
    not ended gets its 504 when its own timeout has passed, not earlier."""
    backend = Gated(fake_spec, holds=holds_an_all_ones_image)
    timeout = 0.3
    batcher = Batcher("tiny", backend, BatchConfig(max_batch_size=1, timeout=timeout))
    batcher.start()
    quick, stuck = np.zeros((1, 1, 28, 28), np.float32), np.ones((1, 1, 28, 28), np.float32)

    async def main():
        answered = [await batcher.infer(quick) for _ in range(5)]
        await asyncio.sleep(0.1)
        started = time.monotonic()
        with pytest.raises(RequestTimeout, match="did not answer within 0.3 s"):
            await batcher.infer(stuck)
        return answered, time.monotonic() - started, backend.inside.is_set()

    answered, waited, was_running = run(main())
    backend.gate.set()
    batcher.stop(2.0)
    assert [len(a) for a in answered] == [1] * 5
    # The 504 came at its deadline while its batch was held (the gate gives up after 10 s).
    assert was_running and timeout - 0.01 <= waited < 5.0
    assert backend.batch_sizes == [1] * 6  # the stuck one ran once the gate opened


class ConcurrencyProbe(FakeBackend):
    """A slow fake backend that records how many batches it ran at the same time."""

    def __init__(self, spec, delay_s: float) -> None:
        super().__init__(spec, delay_s=delay_s)
        self._lock = threading.Lock()
        self.running = 0
        self.most_at_once = 0

    def _forward(self, batch: np.ndarray):
        with self._lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            return super()._forward(batch)
        finally:
            with self._lock:
                self.running -= 1


@pytest.mark.integration
def test_instances_run_batches_concurrently_and_each_request_still_gets_its_own_rows(fake_spec) -> None:
    backend = ConcurrencyProbe(fake_spec, delay_s=0.05)
    batcher = Batcher("tiny", backend, BatchConfig(max_batch_size=4, max_queue_delay=0.005, instances=2))
    batcher.start()

    async def main():
        # Sizes 1..9 with a batch of 4: some requests span two or three batches of one worker.
        inputs = [np.full((1 + i % 9, 1, 28, 28), i / 30, np.float32) for i in range(30)]
        return inputs, await asyncio.gather(*(batcher.infer(x) for x in inputs))

    inputs, outputs = run(main())
    assert batcher.depth() == 0
    batcher.stop(1.0)
    assert backend.most_at_once == 2
    assert_each_got_its_own_rows(inputs, outputs)
    assert sum(backend.batch_sizes) == sum(len(x) for x in inputs)


@pytest.mark.integration
def test_a_small_request_behind_a_large_one_is_answered_long_before_it(fake_spec) -> None:
    backend = FakeBackend(fake_spec, delay_s=0.02)  # 20 ms a batch
    batcher = Batcher("tiny", backend, BatchConfig(max_batch_size=4, max_queue_delay=0.001))
    batcher.start()

    async def main():
        large = asyncio.ensure_future(batcher.infer(np.full((40, 1, 28, 28), 0.5, np.float32)))  # 10 batches
        await asyncio.sleep(0.03)  # its first batches are running
        small = await batcher.infer(np.full((1, 1, 28, 28), 1.0, np.float32))
        done_before = large.done()
        return small, done_before, await large

    try:
        small, large_done_before_small, large = run(main())
    finally:
        batcher.stop(1.0)
    assert not large_done_before_small  # first in, but not first out: it shared its batches
    assert_each_got_its_own_rows([np.full((1, 1, 28, 28), 1.0), np.full((40, 1, 28, 28), 0.5)], [small, large])
    assert max(backend.batch_sizes) == 4 and sum(backend.batch_sizes) == 41


@pytest.mark.integration
def test_stop_answers_every_queued_request_of_every_instance(fake_spec) -> None:
    backend = FakeBackend(fake_spec, delay_s=0.3)
    batcher = Batcher("tiny", backend, BatchConfig(max_batch_size=2, instances=2, timeout=5.0))
    batcher.start()

    async def main():
        x = np.zeros((3, 1, 28, 28), np.float32)  # spans two batches: a carry is left mid-request
        pending = [asyncio.ensure_future(batcher.infer(x)) for _ in range(6)]
        await asyncio.sleep(0.1)  # both workers are inside their first batch
        await asyncio.to_thread(batcher.stop, 0.05)  # too short to finish: the rest is refused
        return await asyncio.gather(*pending, return_exceptions=True)

    results = run(main())
    refused = [r for r in results if isinstance(r, Unavailable)]
    assert refused and all(isinstance(r, Unavailable) or len(r) == 3 for r in results)
    assert "shut down" in str(refused[0])


def test_instances_must_be_positive(fake_spec) -> None:
    with pytest.raises(ValueError, match="instances"):
        Batcher("tiny", FakeBackend(fake_spec), BatchConfig(instances=0))

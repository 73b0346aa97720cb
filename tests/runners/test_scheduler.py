"""The runner's own queue (runners/scheduler.py, rules in runners/batching.py): which waiting
rows make each pipeline call, that each caller is answered when its own call ends, and that
abandoned work is dropped and finished work never run again.

The pipeline call here is a double that blocks until the test lets it go, so the order of calls
is decided by the test, not by the machine's speed.
"""

from __future__ import annotations

import asyncio
import io
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from log_format import JsonFormatter
from protocol.jobs import GenerationResult
from runners import deadlines
from runners.batching import Waiting, run_batched, take_call
from runners.scheduler import Scheduler
from tests.support.jobs import sd15_job, seed_results

WAIT_S = 10  # bound on waits for the worker thread: generous, only a hang reaches it


class GatedCall:
    """A pipeline call that records its rows and waits for the test to release it."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.started = threading.Semaphore(0)
        self.release = threading.Semaphore(0)
        self.fail_when: set[str] = set()

    def __call__(self, rows: list[Any]) -> list[GenerationResult]:
        self.calls.append([row.request_id for row in rows])
        self.started.release()
        assert self.release.acquire(timeout=WAIT_S), "the test never released the call"
        if self.fail_when & {row.request_id for row in rows}:
            raise RuntimeError("a row that cannot run")
        return seed_results(rows)

    def wait_started(self, count: int = 1) -> None:
        for _ in range(count):
            assert self.started.acquire(timeout=WAIT_S), f"calls so far: {self.calls}"

    def run_one(self) -> None:
        """Let the running call end, and wait until the next one starts."""
        self.release.release()
        self.wait_started()


def shape_of(row: Any) -> tuple[int, int]:
    return (row.width, row.height)


def job(request_id: str, shape: str = "A", **fields: Any):
    size = {"A": (64, 48), "B": (48, 64), "C": (64, 40)}[shape]
    return sd15_job(request_id=request_id, width=size[0], height=size[1], **fields)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop in a thread of its own, as BentoML's: tests submit to it and go on."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(WAIT_S)


def make_scheduler(call: GatedCall, max_batch_size: int = 4) -> Scheduler:
    return Scheduler("test", shape_of, call, max_batch_size)


def submit(loop, scheduler: Scheduler, *jobs: Any):
    """Submit jobs (one `generate` call) and return the concurrent future of its results."""
    return asyncio.run_coroutine_threadsafe(scheduler.submit(list(jobs)), loop)


def settle() -> None:
    """Let submissions already made on the loop reach the queue."""
    time.sleep(0.05)


# --- which rows make a call -------------------------------------------------------------------


def waiting(*keys: str) -> list[Waiting]:
    """A queue of rows named by key and place, oldest first."""
    return [Waiting(row=f"{key}{i}", key=key, reply=lambda _: None) for i, key in enumerate(keys)]


def test_a_call_is_the_oldest_rows_key_and_holds_at_most_the_max_batch_size():
    queue = waiting("B", "A", "B", "A", "A", "B", "A", "B")
    call = take_call(queue, max_batch_size=3)
    assert [item.row for item in call] == ["B0", "B2", "B5"]  # the oldest's, not the busiest
    assert [item.row for item in queue] == ["A1", "A3", "A4", "A6", "B7"]  # order kept
    assert [item.row for item in take_call(queue, max_batch_size=3)] == ["A1", "A3", "A4"]


# --- the queue, served by its thread ----------------------------------------------------------


def test_a_lone_job_on_an_idle_runner_starts_at_once(loop):
    call = GatedCall()
    scheduler = make_scheduler(call)
    future = submit(loop, scheduler, job("lone"))
    call.wait_started()  # no hold hoping for company: bounded only by WAIT_S
    call.release.release()
    [result] = future.result(WAIT_S)
    assert result.request_id == "lone" and result.batch_size == 1
    scheduler.close()


def test_each_caller_is_answered_when_its_own_call_ends_and_a_shape_waits_one_call(loop):
    """While a call runs, rows of two shapes queue. The next call is the oldest's shape; the
    other shape's caller waits for that one call only, and the first callers are answered
    without waiting for it."""
    call = GatedCall()
    scheduler = make_scheduler(call, max_batch_size=4)
    running = submit(loop, scheduler, job("a0", "A"))
    call.wait_started()
    b_first = submit(loop, scheduler, job("b1", "B"))
    settle()
    a_later = [submit(loop, scheduler, job(f"a{i}", "A")) for i in (2, 3, 4)]
    settle()
    call.run_one()  # a0 ends; the next call starts
    assert running.result(WAIT_S)[0].request_id == "a0"
    assert call.calls[1] == ["b1"]  # the oldest waiting row's shape, not the busier one
    assert not a_later[0].done()
    call.run_one()
    assert b_first.result(WAIT_S)[0].request_id == "b1"  # answered when its call ended
    assert call.calls[2] == ["a2", "a3", "a4"]
    call.release.release()
    assert [f.result(WAIT_S)[0].batch_size for f in a_later] == [3, 3, 3]
    scheduler.close()


def test_no_call_holds_more_rows_than_the_max_batch_size(loop):
    call = GatedCall()
    scheduler = make_scheduler(call, max_batch_size=3)
    first = submit(loop, scheduler, job("first"))
    call.wait_started()
    many = submit(loop, scheduler, job("many", samples=4), job("one"), job("two", samples=2))
    settle()
    for _ in range(3):
        call.run_one()
    call.release.release()
    first.result(WAIT_S)
    results = many.result(WAIT_S)
    assert [len(rows) for rows in call.calls] == [1, 3, 3, 1]
    assert [len(result.images) for result in results] == [4, 1, 2]
    assert results[0].images == [b"1234", b"1235", b"1236", b"1237"]  # seed + i per sample
    scheduler.close()


def test_a_cancelled_job_is_answered_at_once_and_never_run(loop):
    call = GatedCall()
    scheduler = make_scheduler(call)
    running = submit(loop, scheduler, job("running", "A"))
    call.wait_started()
    gone = submit(loop, scheduler, job("gone", "B", token="tok-gone"))
    kept = submit(loop, scheduler, job("kept", "C"))
    settle()
    scheduler.cancel(["tok-gone"])
    [expired] = gone.result(WAIT_S)  # before the running call ends
    assert expired.failure is not None and expired.failure.kind == "expired"
    call.run_one()
    call.release.release()
    running.result(WAIT_S), kept.result(WAIT_S)
    assert call.calls == [["running"], ["kept"]]
    scheduler.close()


def test_a_job_past_its_deadline_is_dropped_when_dequeued(loop):
    call = GatedCall()
    scheduler = make_scheduler(call)
    running = submit(loop, scheduler, job("running"))
    call.wait_started()
    late = submit(loop, scheduler, job("late", deadline=time.time() + 0.2))
    time.sleep(0.3)
    call.release.release()
    [expired] = late.result(WAIT_S)
    assert expired.failure.kind == "expired"
    running.result(WAIT_S)
    assert call.calls == [["running"]]
    scheduler.close()


def test_a_caller_that_goes_away_abandons_its_rows(loop):
    call = GatedCall()
    scheduler = make_scheduler(call)
    running = submit(loop, scheduler, job("running", "A"))
    call.wait_started()
    gone = submit(loop, scheduler, job("gone", "B"))
    settle()
    gone.cancel()  # the `generate` coroutine is cancelled: its HTTP caller went away
    settle()
    call.release.release()
    running.result(WAIT_S)
    scheduler.close()
    assert call.calls == [["running"]]


def test_a_failing_call_is_run_again_in_halves_and_fails_only_its_bad_row(loop):
    call = GatedCall()
    call.fail_when = {"bad"}
    scheduler = make_scheduler(call)
    first = submit(loop, scheduler, job("first"))
    call.wait_started()
    rest = submit(loop, scheduler, job("ok1"), job("bad"), job("ok2"), job("ok3"))
    settle()
    for _ in range(5):  # first, the call of 4, its halves [ok1, bad], [ok1], [bad], [ok2, ok3]
        call.run_one()
    call.release.release()
    first.result(WAIT_S)
    results = rest.result(WAIT_S)
    assert [r.failure is None for r in results] == [True, False, True, True]
    assert call.calls[1:] == [["ok1", "bad", "ok2", "ok3"], ["ok1", "bad"], ["ok1"], ["bad"],
                              ["ok2", "ok3"]]  # fmt: skip
    scheduler.close()


def test_the_worker_names_each_calls_requests_in_its_log_lines(loop):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    runners_logger = logging.getLogger("runners")
    runners_logger.addHandler(handler)

    def run_call(rows: list[Any]) -> list[GenerationResult]:
        logging.getLogger("runners.test").warning("inside a call")
        return seed_results(rows)

    scheduler = Scheduler("test", shape_of, run_call, 4)
    try:
        submit(loop, scheduler, job("req-a", samples=2), job("req-b")).result(WAIT_S)
    finally:
        runners_logger.removeHandler(handler)
        scheduler.close()
    lines = [line for line in stream.getvalue().splitlines() if "inside a call" in line]
    assert len(lines) == 1 and '"request_id": "req-a,req-b"' in lines[0]


# --- finished work is never run again ---------------------------------------------------------


def test_a_call_abandoned_mid_way_never_reruns_the_calls_that_finished():
    """Three calls (three shapes); the second one's callers go away while it runs: the first
    call's images are kept, the second answers `expired`, the third runs; each ran once."""
    calls: list[list[str]] = []

    def run_call(rows: list[Any]) -> list[GenerationResult]:
        calls.append([row.request_id for row in rows])
        if rows[0].request_id == "b":
            deadlines.cancel(["tok-b"])
            deadlines.stop_when_abandoned(rows)()  # the next step's check stops the call
        return seed_results(rows)

    jobs = [job("a", "A"), job("b", "B", token="tok-b"), job("c", "C")]
    results = run_batched(jobs, shape_of, run_call, max_batch_size=4)
    assert calls == [["a"], ["b"], ["c"]]
    assert [r.failure.kind if r.failure else None for r in results] == [None, "expired", None]
    assert results[0].images and results[2].images

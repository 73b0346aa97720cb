"""Which waiting jobs share one pipeline call, and running a call so that one job never fails
the others: the rules the runner's scheduler (runners/scheduler.py) applies, written once.

Every job is cut into one-sample rows (sample i seeded with `seed + i`, runners/samples.py), so
a request's samples count toward the max batch size and memory stays bounded whoever sends what.
A call is built from the oldest waiting row plus the waiting rows with the same call key (what a
pipeline call holds fixed: size, steps, ...), oldest first, at most `max_batch_size` of them.

One caller's job must never fail the others it was batched with: a call that raises is run
again in halves, down to single rows, so only the rows that fail on their own fail, each with
its own failure. A call whose rows were all abandoned mid-way (runners/deadlines.py) answers
them `expired` and nothing else: rows that finished in other calls are never run again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from protocol.jobs import GenerationResult, JobFailure
from runners import deadlines
from runners.samples import Job, merge_jobs, split_jobs

logger = logging.getLogger(__name__)

# What a caller is told when its job failed on its own with an unexpected error: the details
# (a trace) go to the runner's log, never into an answer.
INTERNAL_FAILURE = "internal error while generating"

CallKey = Callable[[Any], Hashable]
RunCall = Callable[[list[Any]], list[GenerationResult]]


@dataclass(eq=False)  # compared by identity: two rows may hold equal fields
class Waiting:
    """One row in a runner's queue, and how its result reaches its caller."""

    row: Any
    key: Hashable
    reply: Callable[[GenerationResult], None]
    enqueued: float = field(default_factory=time.monotonic)


def key_of(row: Any, call_key: CallKey) -> tuple[Hashable | None, GenerationResult | None]:
    """The row's call key, or, when its inputs cannot even be keyed, its failure: such a row
    fails alone, before it could share a call with others."""
    try:
        return call_key(row), None
    except Exception:
        logger.exception("request %s cannot be prepared for a pipeline call", row.request_id)
        return None, failed_result(row, INTERNAL_FAILURE)


def drop_abandoned(waiting: list[Waiting]) -> int:
    """Answer `expired` and remove from `waiting` the rows nobody waits for any more (deadline
    passed, or cancelled); returns how many."""
    gone = [item for item in waiting if deadlines.abandoned(item.row)]
    for item in gone:
        waiting.remove(item)
        item.reply(deadlines.expired_result(item.row))
    return len(gone)


def take_call(waiting: list[Waiting], max_batch_size: int) -> list[Waiting]:
    """Remove from `waiting` (oldest first) the rows of the next pipeline call and return them:
    the oldest row and the rows that can share its call, oldest first, at most
    `max_batch_size`. Oldest first across keys, so no shape starves, and a row never waits for
    a younger row's call (measured against running the fullest key first: as many samples per
    call on mixed traffic, and a shorter p95, docs/performance.md)."""
    key = waiting[0].key
    call = [item for item in waiting if item.key == key][:max_batch_size]
    waiting[:] = [item for item in waiting if item not in call]
    return call


def run_isolated(rows: list[Any], run_call: RunCall) -> list[GenerationResult]:
    """`run_call(rows)`; when it raises, the rows again in two halves, recursively, so a row
    that cannot run fails alone (an internal failure) and the others get their images, the
    same as alone. One bad row among n costs about 2 log2(n) extra calls, never n. A call
    stopped because all its rows were abandoned answers them `expired`."""
    try:
        return run_call(rows)
    except deadlines.Abandoned:
        return [deadlines.expired_result(row) for row in rows]
    except Exception as exc:
        if len(rows) == 1:
            logger.exception("request %s failed in its pipeline call", rows[0].request_id)
            return [failed_result(rows[0], INTERNAL_FAILURE)]
        logger.warning(
            "a pipeline call of %d samples failed (%s: %s): running it again in halves",
            len(rows),
            type(exc).__name__,
            exc,
        )
    middle = len(rows) // 2
    return run_isolated(rows[:middle], run_call) + run_isolated(rows[middle:], run_call)


def run_call_of(call: list[Waiting], run_call: RunCall) -> list[GenerationResult]:
    """Run one call (`run_isolated`), answer each of its rows, and return the answers."""
    answers = run_isolated([item.row for item in call], run_call)
    for item, answer in zip(call, answers, strict=True):
        item.reply(answer)
    return answers


def run_batched(
    jobs: list[Job], call_key: CallKey, run_call: RunCall, max_batch_size: int
) -> list[GenerationResult]:
    """One result per job, here and now: the jobs' rows queued at once and their calls run in
    the scheduler's order (what a pipeline's `run_batch` does for callers without a runner
    service: tests, benchmarks). Abandoned rows are answered `expired`, never run."""
    rows = split_jobs(jobs)
    results: list[GenerationResult | None] = [None] * len(rows)
    waiting: list[Waiting] = []
    for index, row in enumerate(rows):

        def reply(result: GenerationResult, index: int = index) -> None:
            results[index] = result

        key, failure = key_of(row, call_key)
        if failure is not None:
            reply(failure)
        else:
            waiting.append(Waiting(row=row, key=key, reply=reply))
    while waiting:
        drop_abandoned(waiting)
        if waiting:
            call = take_call(waiting, max_batch_size)
            run_call_of(call, run_call)
    return merge_jobs(jobs, results)


def failed_result(row: Any, message: str) -> GenerationResult:
    """An internal failure of one row: no images, a message fit for the caller."""
    return GenerationResult.failed(row, JobFailure(kind="internal", message=message))

"""Which jobs share one pipeline call: the runners' half of adaptive batching.

BentoML gathers concurrent calls into one list of jobs. Here every job is cut into one-sample
rows (sample i seeded with `seed + i`), rows that agree on what a pipeline call holds fixed are
grouped, and each group runs in calls of at most `max_batch_size` rows, so a request's samples
count toward the batch and memory stays bounded whoever sends what. The Gateway sends
one-sample jobs already (protocol/samples.py), because BentoML's batch size counts list items.

One caller's job must never fail the others it was batched with: a call that raises is run
again in halves, down to single rows, so only the rows that fail on their own fail, each with
its own failure; `run_batched` itself never raises for a job's sake.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from typing import Any

from protocol.jobs import GenerationResult, JobFailure
from protocol.samples import Job, merge_jobs, split_jobs

logger = logging.getLogger(__name__)

# What a caller is told when its job failed on its own with an unexpected error: the details
# (a trace) go to the runner's log, never into an answer.
INTERNAL_FAILURE = "internal error while generating"


def run_batched(
    jobs: list[Job],
    call_key: Callable[[Job], Hashable],
    run_call: Callable[[list[Job]], list[GenerationResult]],
    max_batch_size: int,
) -> list[GenerationResult]:
    """One result per job. `run_call` gets one-sample jobs with equal `call_key` (at most
    `max_batch_size` of them) and answers one result per job, in order."""
    rows = split_jobs(jobs)
    groups: dict[Hashable, list[int]] = {}
    row_results: dict[int, GenerationResult] = {}
    for index, row in enumerate(rows):
        # The key reads the row's inputs (its prompt's encoded length, say): a row whose inputs
        # cannot even be keyed fails alone here, before it could share a call with others.
        try:
            key = call_key(row)
        except Exception:
            logger.exception("request %s cannot be prepared for a pipeline call", row.request_id)
            row_results[index] = failed_result(row, INTERNAL_FAILURE)
            continue
        groups.setdefault(key, []).append(index)
    for indexes in groups.values():
        for start in range(0, len(indexes), max_batch_size):
            chunk = indexes[start : start + max_batch_size]
            results = run_isolated([rows[i] for i in chunk], run_call)
            row_results.update(zip(chunk, results, strict=True))
    return merge_jobs(jobs, [row_results[i] for i in range(len(rows))])


def run_isolated(
    rows: list[Job], run_call: Callable[[list[Job]], list[GenerationResult]]
) -> list[GenerationResult]:
    """`run_call(rows)`; when it raises, the rows again in two halves, recursively, so a row
    that cannot run fails alone (an internal failure) and the others get their images, the
    same as alone. One bad row among n costs about 2 log2(n) extra calls, never n."""
    try:
        return run_call(rows)
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


def failed_result(row: Any, message: str) -> GenerationResult:
    """An internal failure of one row: no images, a message fit for the caller."""
    return GenerationResult.failed(row, JobFailure(kind="internal", message=message))

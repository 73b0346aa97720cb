"""A runner's own queue and scheduler: batching that wins on mixed traffic.

Jobs reach the runner through its `generate` API (async, on BentoML's event loop): `submit`
cuts them into one-sample rows, puts the rows in this queue and awaits their results. One
worker thread runs the pipeline calls, one at a time: each is built from the waiting rows by
runners/batching.py's rules (the oldest row and the rows that can share its call, up to the
max batch size), and each caller is answered as soon as its own call ends.
A row that arrives while a call runs waits for that call only, and goes in the next one that
its key is chosen for; a lone row on an idle runner starts at once.

Work nobody waits for is not done: abandoned rows (deadline passed, cancelled through `cancel`,
or their caller's `generate` cancelled) are answered `expired` when dequeued, and a running call
whose rows are all abandoned stops at its next step (runners/deadlines.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from gateway import metrics  # torch-free; the runners' series sit beside the Gateway's
from log_format import requests_of
from protocol.jobs import GenerationResult
from runners import deadlines
from runners.batching import (
    CallKey,
    RunCall,
    Waiting,
    drop_abandoned,
    key_of,
    run_call_of,
    take_call,
)
from runners.samples import merge_jobs, split_jobs

logger = logging.getLogger(__name__)


class Scheduler:
    """The queue of one runner process and the thread that runs its pipeline calls."""

    def __init__(
        self,
        runner: str,
        call_key: CallKey,
        run_call: RunCall,
        max_batch_size: int,
        prepare: Callable[[Any], None] | None = None,
    ) -> None:
        """`call_key(row)`: what rows sharing a call must agree on; `run_call(rows)`: one
        pipeline call, one result per row; `prepare(row)`: starts a row's own input work
        (faces, depth maps) as it is queued, so it runs beside the call before it
        (runners/preparation.py)."""
        self.runner = runner
        self._call_key = call_key
        self._run_call = run_call
        self._prepare = prepare
        self.max_batch_size = max_batch_size
        self._waiting: list[Waiting] = []
        self._changed = threading.Condition()
        self._closed = False
        metrics.expose_runner_series(runner)
        self._thread = threading.Thread(target=self._serve, name=f"{runner}-calls", daemon=True)
        self._thread.start()

    async def submit(self, jobs: list[Any]) -> list[GenerationResult]:
        """One result per job, once the calls holding its rows have run. If the caller goes
        away (this coroutine is cancelled), its rows are abandoned."""
        rows = [_with_token(row) for row in split_jobs(jobs)]
        futures = self._enqueue(rows)
        try:
            results = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        except asyncio.CancelledError:
            self.cancel({row.token for row in rows})
            raise
        return merge_jobs(jobs, list(results))

    def cancel(self, tokens: Iterable[str]) -> None:
        """Nobody waits for these requests any more: their waiting rows are answered at once,
        and a running call of only theirs stops at its next step."""
        deadlines.cancel(tokens)
        with self._changed:
            self._drop_abandoned()

    def close(self) -> None:
        """Stop the worker once the waiting rows are run (tests)."""
        with self._changed:
            self._closed = True
            self._changed.notify()
        self._thread.join()

    def _enqueue(self, rows: list[Any]) -> list[concurrent.futures.Future]:
        futures = []
        items = []
        for row in rows:
            future: concurrent.futures.Future = concurrent.futures.Future()
            futures.append(future)
            key, failure = key_of(row, self._call_key)
            if failure is not None:
                future.set_result(failure)
                continue
            items.append(Waiting(row=row, key=key, reply=_replier(future)))
            if self._prepare is not None:
                try:
                    self._prepare(row)
                except Exception:  # the call computes what was not prepared, and fails there
                    logger.exception("%s: request %s not prepared", self.runner, row.request_id)
        with self._changed:
            self._waiting.extend(items)
            metrics.set_runner_queue_depth(self.runner, len(self._waiting))
            self._changed.notify()
        return futures

    def _serve(self) -> None:
        while True:
            call = self._next_call()
            if call is None:
                return
            started = time.monotonic()
            metrics.observe_runner_call(
                self.runner, [started - item.enqueued for item in call], len(call)
            )
            rows = [item.row for item in call]
            try:
                with requests_of(rows):  # every log line names the call's requests
                    answers = run_call_of(call, self._run_call)
                stopped = sum(1 for a in answers if a.failure and a.failure.kind == "expired")
                if stopped:
                    metrics.count_runner_abandoned(self.runner, "running", stopped)
            except BaseException:
                # run_isolated answers every row; this is a bug in it, never a job's fault.
                logger.exception("%s: a pipeline call failed outside its isolation", self.runner)
                for item in call:
                    item.reply(deadlines.expired_result(item.row))

    def _drop_abandoned(self) -> None:
        """Answer the waiting rows nobody waits for (`expired`); under `self._changed`."""
        dropped = drop_abandoned(self._waiting)
        if dropped:
            metrics.count_runner_abandoned(self.runner, "queued", dropped)
            metrics.set_runner_queue_depth(self.runner, len(self._waiting))

    def _next_call(self) -> list[Waiting] | None:
        """The next call's rows, waiting for some to arrive; None once closed and empty."""
        with self._changed:
            while True:
                self._drop_abandoned()
                if self._waiting:
                    break
                metrics.set_runner_queue_depth(self.runner, 0)
                if self._closed:
                    return None
                # A deadline can pass while nothing arrives: look again within a second.
                self._changed.wait(timeout=1.0)
            call = take_call(self._waiting, self.max_batch_size)
            metrics.set_runner_queue_depth(self.runner, len(self._waiting))
            return call


def _with_token(row: Any) -> Any:
    """Every row with a token, so that a caller going away can abandon it (the Gateway sends
    one per request; direct callers may not)."""
    return row if row.token else row.model_copy(update={"token": uuid.uuid4().hex})


def _replier(future: concurrent.futures.Future) -> Callable[[GenerationResult], None]:
    def reply(result: GenerationResult) -> None:
        # A caller that went away cancelled its future: nobody to answer.
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            future.set_result(result)

    return reply

"""Work nobody waits for is not done: a job past its deadline, or whose caller went away, is
not started, and a pipeline call whose every job is such stops at its next denoising step.

Every job carries `deadline` (Unix time by which its answer is needed; the Gateway sets it
from `DEPTHID_GENERATION_TIMEOUT_S`) and `token` (one per request, shared by its samples). The
Gateway cancels a token when its v1 client disconnects or its deadline passes, through the
runner's `cancel` API (`cancel` below). Torch-free: the runner services import it.

- **Not started**: the runner's scheduler (runners/scheduler.py) answers abandoned jobs with an
  `expired` failure when it dequeues them (at once for a cancel), and never runs them.
- **Stopped**: the pipelines pass `stop_when_abandoned(rows)` as diffusers'
  `callback_on_step_end` (the InstantID sampler calls it every step): once every job of the
  call is abandoned it raises `Abandoned`, which ends the call at once (no further steps, no
  decode) and frees the runner for the next call; that call's rows are answered `expired`
  (runners/batching.py), and no other call is run again. A call with one live job goes on.

`Abandoned` is a BaseException on purpose: it is not a job's error, so a per-job error
handler (`except Exception`) must never catch it and retry the abandoned work.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from protocol.jobs import GenerationResult, JobFailure

# A cancelled token is remembered this long: longer than any job waits in a runner's queue.
CANCEL_MEMORY_S = 3600.0
EXPIRED_MESSAGE = "generation abandoned: its deadline passed or its caller went away"

_cancelled: dict[str, float] = {}  # token -> when to forget it (monotonic)
_lock = threading.Lock()  # cancel() runs on the event loop, abandoned() in the worker thread


class Abandoned(BaseException):
    """Every job of a running pipeline call is abandoned: stop it."""


def cancel(tokens: Iterable[str]) -> None:
    """Mark these requests abandoned (their caller went away)."""
    now = time.monotonic()
    with _lock:
        for stale in [token for token, until in _cancelled.items() if until <= now]:
            del _cancelled[stale]
        for token in tokens:
            if token:
                _cancelled[token] = now + CANCEL_MEMORY_S


def abandoned(job: Any) -> bool:
    """Whether nobody waits for `job` any more: past its deadline, or cancelled."""
    if job.deadline is not None and time.time() >= job.deadline:
        return True
    with _lock:
        return bool(job.token) and job.token in _cancelled


def expired_result(job: Any) -> GenerationResult:
    return GenerationResult.failed(job, JobFailure(kind="expired", message=EXPIRED_MESSAGE))


def stop_when_abandoned(rows: Sequence[Any]) -> Callable[..., dict]:
    """A diffusers `callback_on_step_end` that stops the call once all `rows` are abandoned."""

    def check(_pipe: Any = None, _step: int = 0, _timestep: Any = None, kwargs: Any = None):
        if all(abandoned(row) for row in rows):
            raise Abandoned
        return kwargs if kwargs is not None else {}

    return check

"""A bound on how long BentoML's adaptive-batching dispatcher holds a call back.

BentoML 1.4's dispatcher (`bentoml/_internal/marshal/dispatcher.py`, CORK) holds a call that
arrives at an idle runner while `n * (wn + dt + a) <= wait * 0.95`, where `wait` is the mean of
the last 50 batches' queue waits (the first job's enqueue to the call). A burst fills that
mean with seconds of queueing behind running batches; afterwards every lone call is held about
0.95 x the mean, logs that hold as its own wait, and so keeps the mean up: lone requests stayed
several times slower than at idle for minutes. `max_latency_ms` does not bound this hold (it
caps only the dispatcher's training holds, and refuses calls only when several are queued).

The fix, at the cause: the learned `wait` is capped at `DEPTHID_BATCH_MAX_HOLD_MS`, so a call
on an idle runner is held at most that long hoping for company, whatever came before. Batching
under load is unchanged: calls that arrive while a batch runs queue and go together anyway.

`install` replaces the dispatcher class BentoML's service app builds, before the app is built:
runners/service_config.py calls it when a runner module is imported.
"""

from __future__ import annotations

from typing import Any

from _bentoml_impl.server import app as bentoml_service_app
from bentoml._internal.marshal.dispatcher import CorkDispatcher, Optimizer


class BoundedHoldOptimizer(Optimizer):
    """BentoML's estimator, with the learned hold (`wait`) capped at `max_hold_s`."""

    def __init__(self, max_latency: float, max_hold_s: float) -> None:
        super().__init__(max_latency)
        self.max_hold_s = max_hold_s

    def trigger_refresh(self) -> None:
        super().trigger_refresh()
        self.wait = min(self.wait, self.max_hold_s)


class BoundedHoldDispatcher(CorkDispatcher):
    """BentoML's dispatcher with a BoundedHoldOptimizer; `max_hold_s` is set by `install`."""

    max_hold_s: float = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.optimizer = BoundedHoldOptimizer(self.max_latency, self.max_hold_s)


def install(max_hold_ms: float) -> None:
    """Make BentoML's service app build its batching dispatchers with the hold bounded."""
    BoundedHoldDispatcher.max_hold_s = max_hold_ms / 1000.0
    bentoml_service_app.CorkDispatcher = BoundedHoldDispatcher

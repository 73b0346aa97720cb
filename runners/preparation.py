"""Per-sample input work started when a job is queued, done while the running call denoises.

A sample's face analysis and depth map depend on that sample alone, and in a pipeline call they
would run one sample after another while the whole batch waits (on the tiny profile, instantid's
face analysis was half of a call of four). So the runner's scheduler calls the pipeline's
`prepare(row)` as each row is queued, which `start`s that work in a thread of its own; the call
`take`s each result, waiting for it if it is not done, or computing it then if it was never
started (a direct `run_batch`, or an entry pushed out by newer ones).

Results are keyed by the input image object the job holds (its samples share it) and what the
work needs besides; an entry keeps its image, so no other image can reuse its id while it waits.
At most `capacity` entries wait (oldest dropped first): a job abandoned before its call leaves
nothing behind for long.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any


class Preparations:
    def __init__(self, name: str, capacity: int) -> None:
        # One thread: the work runs beside the pipeline call, in the order rows arrived.
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"{name}-prep")
        self._entries: OrderedDict[Hashable, tuple[Any, concurrent.futures.Future]] = OrderedDict()
        self._lock = threading.Lock()
        self.capacity = capacity

    def start(self, source: Any, what: Hashable, compute: Callable[[], Any]) -> None:
        """Start `compute()`, the work `what` on `source` (an input image), unless started."""
        key = (id(source), what)
        with self._lock:
            if key in self._entries:
                return
            self._entries[key] = (source, self._pool.submit(compute))
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def take(self, source: Any, what: Hashable, compute: Callable[[], Any]) -> Any:
        """The result of the work `what` on `source`: the started one (waiting for it), or
        `compute()` now. A failure raises here, in the call, as if computed in it."""
        with self._lock:
            entry = self._entries.pop((id(source), what), None)
        if entry is None:
            return compute()
        return entry[1].result()

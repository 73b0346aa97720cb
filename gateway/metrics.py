"""Prometheus metrics of the API, exposed on BentoML's /metrics next to its own.

STUB: the function names and metric names below are the interface other modules call and the
Grafana dashboard, ServiceMonitor and autoscalers read; the implementation is being written.

Metric names (all prefixed `depthid_`):
- depthid_requests_total{model, route, code}          counter   every API answer
- depthid_request_duration_seconds{model, route}      histogram end-to-end time of an answer
- depthid_generation_seconds{model}                    histogram runner time per generation
- depthid_in_flight{model}                             gauge     generations being run now
- depthid_queue_depth                                  gauge     v2 jobs queued, not started
- depthid_queue_wait_seconds{model}                    histogram v2 submit -> start
- depthid_batch_size{model}                            histogram samples per runner call
- depthid_credits_refused_total{model}                 counter   406 answers
- depthid_rate_limited_total{reason}                   counter   429 answers (rate|concurrency|queue)
"""

from __future__ import annotations


def observe_request(model: str, route: str, code: int, seconds: float) -> None:
    """One API answer: `route` is "v1" or "v2"; model "" for routes without one."""


def observe_generation(model: str, seconds: float) -> None:
    """One finished generation (v1 or v2), as long as the runner took."""


def track_in_flight(model: str, delta: int) -> None:
    """+1 when a generation starts, -1 when it ends."""


def set_queue_depth(depth: int) -> None:
    """Jobs queued and not yet started, as the job store counts them."""


def observe_queue_wait(model: str, seconds: float) -> None:
    """How long a v2 job waited between submit and start."""


def observe_batch_size(model: str, samples: int) -> None:
    """How many samples the runner's pipeline call held (reported by the runner's result)."""


def count_credits_refused(model: str) -> None:
    """A request refused with 406 for lack of credits."""


def count_rate_limited(reason: str) -> None:
    """A request refused with 429: reason is "rate", "concurrency" or "queue"."""

"""Prometheus metrics of the API, exposed on BentoML's /metrics next to its own.

The function and metric names are an interface: the middleware, runner client and v2 worker call
these functions, and the Grafana dashboard (observability/grafana-dashboard.json), the
ServiceMonitor and the autoscalers read these names.

Metric names (all prefixed `depthid_`):
- depthid_requests_total{model, route, code}       counter   every API answer
- depthid_request_duration_seconds{model, route}   histogram end-to-end time of an answer
- depthid_generation_seconds{model}                histogram runner time per generation
- depthid_in_flight{model}                         gauge     generations being run now
- depthid_queue_depth{model}                       gauge     v2 jobs queued, not started
- depthid_queue_wait_seconds{model}                histogram v2 submit -> start
- depthid_batch_size{model}                        histogram samples per runner call
- depthid_credits_refused_total{model}             counter   406 answers
- depthid_rate_limited_total{reason}               counter   429 answers (rate|concurrency|queue)
- depthid_jobs_given_up_total{model}               counter   v2 jobs FAILED after
  DEPTHID_JOB_MAX_ATTEMPTS takes without ending
- depthid_webhook_deliveries_total{outcome}        counter   webhook delivery attempts:
  delivered, retrying (failed, tried again later), given_up (failed for good)
Recorded by the runners' schedulers (runners/scheduler.py), in the runner processes:
- depthid_runner_queue_depth{runner}               gauge     samples waiting in the runner's queue
- depthid_runner_queue_wait_seconds{runner}        histogram a sample's wait in that queue
- depthid_runner_batch_size{runner}                histogram samples per pipeline call
- depthid_runner_abandoned_samples_total{runner, stage} counter samples nobody waited for any
  more, dropped from the queue (stage "queued") or stopped mid-call ("running")
Cold start and scale from zero:
- depthid_waiting_for_runner{model}                gauge     requests waiting for a runner with no
  ready replica (scale_to_zero_runners): what KEDA wakes a runner scaled to zero on
- depthid_runner_start_seconds{runner, phase}      gauge     a runner's time to ready by phase
  (runners/startup.py): read, build, to_device, accelerations, warmup, and the total

`route` is "v1", "v2" or "other" (docs, schema, unknown paths); `model` is one of the served
models or "" (routes without one, unknown names: a caller cannot grow the label set).
`expose_known_series` creates every series whose label values are known up front (each model,
each refusal reason) at 0 when the Gateway starts, so rate() and the dashboard see 0 rather than
nothing before the first event.

How they reach /metrics: `bentoml serve` runs every service in worker processes that share a
prometheus_client multiprocess directory (PROMETHEUS_MULTIPROC_DIR, set in the workers'
environment), and the Gateway's /metrics reads all of it. So the metrics are created lazily, on
first use inside the process that records them (never at import, which also happens in
BentoML's supervising process), and each gauge says how the processes' values combine. Outside
BentoML (tests, create_app alone) the same calls record into prometheus_client's default
registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

# Buckets, in the unit of each histogram. Requests: a 400 takes milliseconds, a generation on a
# GPU seconds, one on a CPU or behind a queue minutes.
REQUEST_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
GENERATION_SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
QUEUE_WAIT_SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 900, 3600)
BATCH_SIZE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)


@dataclass(frozen=True)
class MetricSpec:
    kind: Literal["Counter", "Gauge", "Histogram"]  # the prometheus_client class
    help: str
    labels: tuple[str, ...] = ()
    options: tuple[tuple[str, Any], ...] = ()  # buckets, multiprocess_mode


# Counter names are given without `_total`: prometheus_client adds it when it exposes them.
METRICS: dict[str, MetricSpec] = {
    "depthid_requests": MetricSpec("Counter", "API answers", ("model", "route", "code")),
    "depthid_request_duration_seconds": MetricSpec(
        "Histogram",
        "End-to-end time of an API answer",
        ("model", "route"),
        (("buckets", REQUEST_SECONDS_BUCKETS),),
    ),
    "depthid_generation_seconds": MetricSpec(
        "Histogram",
        "How long the runner took for one generation, as the Gateway waited for it",
        ("model",),
        (("buckets", GENERATION_SECONDS_BUCKETS),),
    ),
    "depthid_in_flight": MetricSpec(
        "Gauge",
        "Generations being run now",
        ("model",),
        # Each Gateway process counts its own: the total is the sum over the live ones.
        (("multiprocess_mode", "livesum"),),
    ),
    "depthid_queue_depth": MetricSpec(
        "Gauge",
        "v2 jobs queued and not yet started, per model",
        ("model",),
        # Every process reads the same shared queue (Redis): its latest reading is the depth.
        (("multiprocess_mode", "livemostrecent"),),
    ),
    "depthid_queue_wait_seconds": MetricSpec(
        "Histogram",
        "How long a v2 job waited between submit and start",
        ("model",),
        (("buckets", QUEUE_WAIT_SECONDS_BUCKETS),),
    ),
    "depthid_batch_size": MetricSpec(
        "Histogram",
        "Samples in the runner's pipeline call that made a request's images",
        ("model",),
        (("buckets", BATCH_SIZE_BUCKETS),),
    ),
    "depthid_credits_refused": MetricSpec(
        "Counter", "Requests refused with 406 for lack of credits", ("model",)
    ),
    "depthid_rate_limited": MetricSpec(
        "Counter",
        "Requests refused with 429 (reason: rate, concurrency or queue)",
        ("reason",),
    ),
    "depthid_runner_queue_depth": MetricSpec(
        "Gauge",
        "Samples waiting in a runner's own queue for a pipeline call",
        ("runner",),
        # Each runner process has its own queue: the runner's depth is the sum.
        (("multiprocess_mode", "livesum"),),
    ),
    "depthid_runner_queue_wait_seconds": MetricSpec(
        "Histogram",
        "How long a sample waited in a runner's queue before its pipeline call started",
        ("runner",),
        (("buckets", QUEUE_WAIT_SECONDS_BUCKETS),),
    ),
    "depthid_runner_batch_size": MetricSpec(
        "Histogram",
        "Samples in one pipeline call of a runner",
        ("runner",),
        (("buckets", BATCH_SIZE_BUCKETS),),
    ),
    "depthid_runner_abandoned_samples": MetricSpec(
        "Counter",
        "Samples nobody waited for any more (deadline passed, caller gone): dropped from a "
        "runner's queue (stage queued) or stopped mid-call (stage running)",
        ("runner", "stage"),
    ),
    "depthid_waiting_for_runner": MetricSpec(
        "Gauge",
        "Requests (v1, and v2 jobs in hand) waiting for a runner that has no ready replica: "
        "scaled to zero or starting",
        ("model",),
        # Each Gateway process counts its own waiters: the total is the sum over the live ones.
        (("multiprocess_mode", "livesum"),),
    ),
    "depthid_runner_start_seconds": MetricSpec(
        "Gauge",
        "How long a runner process took from the start of its loading to ready, by phase "
        "(read, build, to_device, accelerations, warmup, total)",
        ("runner", "phase"),
        # One value per runner process; the slowest live one is the runner's.
        (("multiprocess_mode", "livemax"),),
    ),
    "depthid_jobs_given_up": MetricSpec(
        "Counter",
        "v2 jobs ended FAILED because they were taken DEPTHID_JOB_MAX_ATTEMPTS times without "
        "ending (their runner or Gateway died each time)",
        ("model",),
    ),
    "depthid_webhook_deliveries": MetricSpec(
        "Counter",
        "Webhook delivery attempts by outcome: delivered, retrying (failed; tried again after "
        "a backoff) or given_up (failed for good: out of time, or a refused address)",
        ("outcome",),
    ),
}


# Label values known up front. `route` of a generation is "v1" or "v2"; the codes every model
# and route starts with are those the error ratio reads (success and server error).
RATE_LIMIT_REASONS = ("rate", "concurrency", "queue")
ABANDONED_STAGES = ("queued", "running")
WEBHOOK_OUTCOMES = ("delivered", "retrying", "given_up")
GENERATION_ROUTES = ("v1", "v2")
INITIAL_CODES = ("200", "500")


def exposed_names() -> set[str]:
    """Every series name these metrics appear under on /metrics (with _total, _bucket...)."""
    names: set[str] = set()
    for name, spec in METRICS.items():
        if spec.kind == "Counter":
            names |= {f"{name}_total"}
        elif spec.kind == "Histogram":
            names |= {name, f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            names |= {name}
    return names


@cache
def _metric(name: str) -> Any:
    """The metric `name`, created in this process on first use (see the module docstring)."""
    # Imported here, not at the top: prometheus_client picks its multiprocess mode from the
    # environment when first imported, which must be inside the worker, after BentoML set it.
    import prometheus_client

    spec = METRICS[name]
    kind = getattr(prometheus_client, spec.kind)
    return kind(name, spec.help, spec.labels, **dict(spec.options))


def expose_known_series(models: list[str]) -> None:
    """Every series whose labels are known up front, at 0: each of `models` (all the API
    serves) and each refusal reason. Called once in each Gateway process at start-up."""
    for model in models:
        for route in GENERATION_ROUTES:
            for code in INITIAL_CODES:
                _metric("depthid_requests").labels(model=model, route=route, code=code)
            _metric("depthid_request_duration_seconds").labels(model=model, route=route)
        for name in (
            "depthid_generation_seconds",
            "depthid_in_flight",
            "depthid_queue_depth",
            "depthid_queue_wait_seconds",
            "depthid_batch_size",
            "depthid_credits_refused",
            "depthid_waiting_for_runner",
            "depthid_jobs_given_up",
        ):
            _metric(name).labels(model=model)
    for reason in RATE_LIMIT_REASONS:
        _metric("depthid_rate_limited").labels(reason=reason)
    for outcome in WEBHOOK_OUTCOMES:
        _metric("depthid_webhook_deliveries").labels(outcome=outcome)


def observe_request(model: str, route: str, code: int, seconds: float) -> None:
    """One API answer: `route` is "v1", "v2" or "other"; model "" for routes without one."""
    _metric("depthid_requests").labels(model=model, route=route, code=str(code)).inc()
    _metric("depthid_request_duration_seconds").labels(model=model, route=route).observe(seconds)


def observe_generation(model: str, seconds: float) -> None:
    """One finished generation (v1 or v2), as long as the runner took."""
    _metric("depthid_generation_seconds").labels(model=model).observe(seconds)


def track_in_flight(model: str, delta: int) -> None:
    """+1 when a generation starts, -1 when it ends."""
    _metric("depthid_in_flight").labels(model=model).inc(delta)


def set_queue_depth(model: str, depth: int) -> None:
    """Jobs of `model` queued and not yet started, as the job store counts them."""
    _metric("depthid_queue_depth").labels(model=model).set(depth)


def observe_queue_wait(model: str, seconds: float) -> None:
    """How long a v2 job waited between submit and start."""
    _metric("depthid_queue_wait_seconds").labels(model=model).observe(seconds)


def observe_batch_size(model: str, samples: int) -> None:
    """How many samples the runner's pipeline call held (reported by the runner's result)."""
    _metric("depthid_batch_size").labels(model=model).observe(samples)


def count_credits_refused(model: str) -> None:
    """A request refused with 406 for lack of credits."""
    _metric("depthid_credits_refused").labels(model=model).inc()


def count_rate_limited(reason: str) -> None:
    """A request refused with 429: reason is "rate", "concurrency" or "queue"."""
    _metric("depthid_rate_limited").labels(reason=reason).inc()


def count_job_given_up(model: str) -> None:
    """A v2 job ended FAILED after DEPTHID_JOB_MAX_ATTEMPTS takes without ending."""
    _metric("depthid_jobs_given_up").labels(model=model).inc()


def count_webhook_delivery(outcome: str) -> None:
    """One webhook delivery attempt: "delivered", "retrying" or "given_up"."""
    _metric("depthid_webhook_deliveries").labels(outcome=outcome).inc()


def set_runner_queue_depth(runner: str, samples: int) -> None:
    """Samples waiting in `runner`'s own queue (its scheduler, in the runner's process)."""
    _metric("depthid_runner_queue_depth").labels(runner=runner).set(samples)


def expose_runner_series(runner: str) -> None:
    """`runner`'s series at 0, once its scheduler starts (in the runner's process)."""
    set_runner_queue_depth(runner, 0)
    _metric("depthid_runner_queue_wait_seconds").labels(runner=runner)
    _metric("depthid_runner_batch_size").labels(runner=runner)
    for stage in ABANDONED_STAGES:
        _metric("depthid_runner_abandoned_samples").labels(runner=runner, stage=stage)


def count_runner_abandoned(runner: str, stage: str, samples: int) -> None:
    """`samples` of `runner` nobody waits for: dropped ("queued") or stopped ("running")."""
    _metric("depthid_runner_abandoned_samples").labels(runner=runner, stage=stage).inc(samples)


def observe_runner_call(runner: str, waits: list[float], samples: int) -> None:
    """A pipeline call of `runner` starts: each of its samples' waits in the queue, and its
    size in samples."""
    wait = _metric("depthid_runner_queue_wait_seconds").labels(runner=runner)
    for seconds in waits:
        wait.observe(seconds)
    _metric("depthid_runner_batch_size").labels(runner=runner).observe(samples)


def track_waiting_for_runner(model: str, delta: int) -> None:
    """+n when requests of `model` start waiting for a runner with no ready replica, -n when
    one is ready (or they give up)."""
    _metric("depthid_waiting_for_runner").labels(model=model).inc(delta)


def set_runner_start_seconds(runner: str, phases: dict[str, float]) -> None:
    """`runner`'s time to ready, seconds per phase (and "total"), once it is ready."""
    for phase, seconds in phases.items():
        _metric("depthid_runner_start_seconds").labels(runner=runner, phase=phase).set(seconds)

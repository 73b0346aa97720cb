"""BentoML service options every runner shares."""

from __future__ import annotations

from typing import Annotated, Any

from bentoml.validators import ContentType

from log_format import configure_logging
from protocol.jobs import GenerationResult
from settings import Settings, get_settings
from tracing import tracing_options

# Every runner module imports this one, in each BentoML process that serves it, once BentoML
# has configured logging: the moment to put our log format in place (log_format.py).
configure_logging(get_settings().log_format)

# BentoML's gateway-to-runner client recycles its HTTP session after `max_requests` calls or
# `max_age` seconds, closing it under calls still in flight: under concurrency about one call
# in a hundred fails. Never recycling is the fix; tests/e2e/test_e2e.py keeps a concurrency test
# that catches a regression.
NEVER_RECYCLE = {"max_requests": 2**31 - 1, "max_age": 10.0**9}


def runner_service_config(settings: Settings) -> dict[str, Any]:
    return {
        "workers": settings.runner_workers,
        "traffic": {"timeout": settings.generation_timeout_s},
        "runner_connection": NEVER_RECYCLE,
        **tracing_options(settings),  # OTLP tracing, when an endpoint is set (tracing.py)
    }


# What every runner's `generate` returns. The media type is stated because BentoML otherwise
# derives it from the answer's JSON schema, which it rebuilds on every response: about 1.5 ms of
# the runner's event loop per call. It is the type BentoML derived anyway.
GenerationResults = Annotated[list[GenerationResult], ContentType("application/json")]

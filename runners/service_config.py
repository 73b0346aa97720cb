"""BentoML service options every runner shares."""

from __future__ import annotations

from typing import Any

from settings import Settings

# BentoML's gateway-to-runner client recycles its HTTP session after `max_requests` calls or
# `max_age` seconds, closing it under calls still in flight: under concurrency about one call
# in a hundred fails. Never recycling is the fix; tests/test_e2e.py keeps a concurrency test
# that catches a regression.
NEVER_RECYCLE = {"max_requests": 2**31 - 1, "max_age": 10.0**9}


def runner_service_config(settings: Settings) -> dict[str, Any]:
    return {
        "workers": settings.runner_workers,
        "traffic": {"timeout": settings.generation_timeout_s},
        "runner_connection": NEVER_RECYCLE,
    }

"""Tracing: BentoML's OpenTelemetry support, switched on by settings (off by default).

With `DEPTHID_TRACING_OTLP_ENDPOINT` set, every BentoML process (the Gateway and each runner)
exports its spans over OTLP/HTTP to that collector, sampled at `DEPTHID_TRACING_SAMPLE_RATE`
(a trace's first service decides; the runners follow its choice). BentoML's ASGI middleware
opens a span per request and its client carries the trace context (`traceparent`) on the
Gateway's call to the runner, so one trace runs from the Gateway's route through the runner's
`generate`. Shared by the Gateway and the runners, like log_format.py.

`tracing_options` is the BentoML service option that says so: every service (service.py's
Gateway, runners/service_config.py's runners) passes it to `@bentoml.service`, which applies it
in the service's process when it builds the app.
"""

from __future__ import annotations

from typing import Any

from settings import Settings

# The liveness, readiness and metrics probes would be most of the spans, and none of interest.
EXCLUDED_URLS = "livez,healthz,readyz,metrics"


def tracing_options(settings: Settings) -> dict[str, Any]:
    """`@bentoml.service` options: OTLP tracing when an endpoint is configured; else none."""
    if not settings.tracing_otlp_endpoint:
        return {}
    return {
        "tracing": {
            "exporter_type": "otlp",
            "sample_rate": settings.tracing_sample_rate,
            "excluded_urls": EXCLUDED_URLS,
            "otlp": {"protocol": "http", "endpoint": settings.tracing_otlp_endpoint},
        }
    }

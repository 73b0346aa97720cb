"""BentoML entry point: the Gateway service (HTTP API) and the runners it depends on.

The runners are those of the models' registry entries (gateway/schemas/registry.py: each names
its runner's service). `bentoml serve service:Gateway` starts the Gateway and, in separate
processes, every runner whose URL is not configured. With DEPTHID_SD15_RUNNER_URL set
(Kubernetes), the Gateway calls that runner over HTTP instead, and the same image serves the
runner with `bentoml serve runners.sd15_depth:SD15Depth`.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import bentoml

from compat import bentoml_metrics, uvicorn_httptools
from gateway.app import create_app
from gateway.http.errors import MALFORMED_REQUEST
from gateway.http.middleware import JsonErrorBodies
from gateway.http.route_templates import route_template
from gateway.runner_client import RunnerClient
from gateway.schemas.registry import MODEL_SPECS
from gateway.serving import Serving
from log_format import configure_logging
from models.store import MissingModelError, check_runner_models
from settings import get_settings
from tracing import tracing_options

settings = get_settings()
configure_logging(settings.log_format)  # BentoML's logging, our format (log_format.py)
bentoml_metrics.install(route_template)  # BentoML's request metrics by route template, not raw path

# The runners' services by name, each once (instantid serves two models).
RUNNERS = {spec.runner.name: spec.runner for spec in MODEL_SPECS.values()}

# The runners started here need their models: end `bentoml serve` now, non-zero, naming what is
# missing and how to provide it, rather than let BentoML restart a runner that cannot load.
_local_runners = [name for name in RUNNERS if settings.runner_url(name) is None]
try:
    check_runner_models(settings, _local_runners)
except MissingModelError as exc:
    sys.exit(f"error: cannot serve profile {settings.profile!r}:\n{exc}")


def runner_client(name: str, dependency: Any) -> RunnerClient:
    """A RunnerClient over a BentoML dependency's `generate` and `cancel` APIs."""

    async def generate(jobs: list) -> list:
        # The async client, so a generation never blocks the Gateway's event loop.
        return await dependency.get().to_async.call("generate", jobs)

    async def cancel(tokens: list[str]) -> None:
        await dependency.get().to_async.call("cancel", tokens)

    async def is_ready() -> bool:
        return await dependency.get().is_ready()

    return RunnerClient(
        name,
        generate,
        settings.generation_timeout_s,
        ready=is_ready,
        cancel=cancel,
        waits_for_ready=name in settings.scale_to_zero_runners,
    )


# The runners the Gateway depends on, each local (started by `bentoml serve service:Gateway`)
# or by URL. Each client resolves its dependency on its first call, in the served process.
dependencies = {
    name: bentoml.depends(service, url=settings.runner_url(name))
    for name, service in RUNNERS.items()
}
clients = {name: runner_client(name, dependency) for name, dependency in dependencies.items()}
app = create_app(
    settings,
    runners={model: clients[spec.runner.name] for model, spec in MODEL_SPECS.items()},
)
# Request heads that never end close their connection; uvicorn's own 400s answer JSON.
uvicorn_httptools.install(settings.request_head_timeout_s, MALFORMED_REQUEST)


class Gateway:
    async def __is_ready__(self) -> bool:
        """/readyz: ready once every runner answers its own /readyz (models loaded), except
        those that may scale to zero: requests for them wait for a replica (and wake one)."""
        serving: Serving = app.state.serving
        runners = {r for r in serving.runners.values() if not r.waits_for_ready}
        return all(await asyncio.gather(*(runner.is_ready() for runner in runners)))


# BentoML finds a service's dependencies among its class attributes when the class is made a
# service (below): one attribute per runner, named after it.
for name, dependency in dependencies.items():
    setattr(Gateway, name, dependency)

Gateway = bentoml.service(
    name="gateway",
    traffic={"timeout": settings.generation_timeout_s * 1.1},
    # BentoML's own runner probe hangs on a runner that refuses connections; __is_ready__
    # above asks every runner itself, with a bound.
    runner_probe={"enabled": False},
    **tracing_options(settings),  # BentoML's OpenTelemetry spans, when an endpoint is set
)(bentoml.asgi_app(app, path="/")(Gateway))


# The few errors BentoML answers itself, before our app, get the contract's body too.
Gateway.add_asgi_middleware(JsonErrorBodies)

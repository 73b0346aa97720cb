"""BentoML entry point: the Gateway service (HTTP API) and the runners it depends on.

`bentoml serve service:Gateway` starts the Gateway and, in separate processes, every runner
whose URL is not configured. With DEPTHID_SD15_RUNNER_URL set (Kubernetes), the Gateway calls
that runner over HTTP instead, and the same image serves the runner with
`bentoml serve runners.sd15_depth:SD15Depth`.
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
from gateway.serving import Serving
from log_format import configure_logging
from models.store import MissingModelError, check_runner_models
from runners.flux_depth import FluxDepth
from runners.instantid import InstantID
from runners.sd15_depth import SD15Depth
from settings import get_settings
from tracing import tracing_options

settings = get_settings()
configure_logging(settings.log_format)  # BentoML's logging, our format (log_format.py)
bentoml_metrics.install(route_template)  # BentoML's request metrics by route template, not raw path

# The runners started here need their models: end `bentoml serve` now, non-zero, naming what is
# missing and how to provide it, rather than let BentoML restart a runner that cannot load.
_local_runners = [
    runner
    for runner, url in (
        ("sd15_depth", settings.sd15_runner_url),
        ("flux_depth", settings.flux_runner_url),
        ("instantid", settings.instantid_runner_url),
    )
    if url is None
]
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
sd15_runner = bentoml.depends(SD15Depth, url=settings.sd15_runner_url)
instantid_runner = bentoml.depends(InstantID, url=settings.instantid_runner_url)
flux_runner = bentoml.depends(FluxDepth, url=settings.flux_runner_url)
instantid_client = runner_client("instantid", instantid_runner)  # one SDXL base, two models
app = create_app(
    settings,
    runners={
        "sd1.5-controlnet-depth": runner_client("sd15_depth", sd15_runner),
        "instantid": instantid_client,
        "insta-depth": instantid_client,
        "flux-depth-pro": runner_client("flux_depth", flux_runner),
    },
)
# Request heads that never end close their connection; uvicorn's own 400s answer JSON.
uvicorn_httptools.install(settings.request_head_timeout_s, MALFORMED_REQUEST)


@bentoml.service(
    name="gateway",
    traffic={"timeout": settings.generation_timeout_s * 1.1},
    # BentoML's own runner probe hangs on a runner that refuses connections; __is_ready__
    # below asks every runner itself, with a bound.
    runner_probe={"enabled": False},
    **tracing_options(settings),  # BentoML's OpenTelemetry spans, when an endpoint is set
)
@bentoml.asgi_app(app, path="/")
class Gateway:
    sd15 = sd15_runner
    instantid = instantid_runner
    flux = flux_runner

    async def __is_ready__(self) -> bool:
        """/readyz: ready once every runner answers its own /readyz (models loaded), except
        those that may scale to zero: requests for them wait for a replica (and wake one)."""
        serving: Serving = app.state.serving
        runners = {r for r in serving.runners.values() if not r.waits_for_ready}
        return all(await asyncio.gather(*(runner.is_ready() for runner in runners)))


# The few errors BentoML answers itself, before our app, get the contract's body too.
Gateway.add_asgi_middleware(JsonErrorBodies)

"""BentoML entry point: the Gateway service (HTTP API) and the runners it depends on.

`bentoml serve service:Gateway` starts the Gateway and, in separate processes, every runner
whose URL is not configured. With DEPTHID_SD15_RUNNER_URL set (Kubernetes), the Gateway calls
that runner over HTTP instead, and the same image serves the runner with
`bentoml serve runners.sd15_depth:SD15Depth`.
"""

from __future__ import annotations

import asyncio

import bentoml

from gateway.app import create_app
from gateway.runner_client import RunnerClient
from runners.sd15_depth import SD15Depth
from settings import get_settings

settings = get_settings()
app = create_app(settings)


@bentoml.service(
    name="gateway",
    traffic={"timeout": settings.generation_timeout_s * 1.1},
    # BentoML's own runner probe hangs on a runner that refuses connections; __is_ready__
    # below asks every runner itself, with a bound.
    runner_probe={"enabled": False},
)
@bentoml.asgi_app(app, path="/")
class Gateway:
    sd15 = bentoml.depends(SD15Depth, url=settings.sd15_runner_url)

    def __init__(self) -> None:
        deadline = settings.generation_timeout_s
        app.state.runners = {
            "sd1.5-controlnet-depth": RunnerClient(
                "sd15_depth", self._sd15_generate, deadline, ready=self.sd15.is_ready
            ),
        }

    async def __is_ready__(self) -> bool:
        """/readyz: ready once every runner answers its own /readyz (models loaded)."""
        checks = [runner.is_ready() for runner in app.state.runners.values()]
        return all(await asyncio.gather(*checks))

    async def _sd15_generate(self, jobs: list) -> list:
        # The async client, so a generation never blocks the Gateway's event loop.
        return await self.sd15.to_async.call("generate", jobs)

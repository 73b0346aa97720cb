"""BentoML service for the flux_depth runner (serves flux-depth-pro).

torch and diffusers are imported in `__init__`, inside the runner's own process, so importing
this module (as the Gateway does to declare its dependency) stays light.
"""

from __future__ import annotations

import bentoml

from log_format import requests_of
from protocol.jobs import FluxDepthJob
from runners import deadlines
from runners.service_config import (
    GenerationResults,
    batching_options,
    runner_service_config,
)
from settings import get_settings

SETTINGS = get_settings()


# Copied from runners.sd15_depth.SD15Depth (its model, job type and batching options changed):
# kept a copy on purpose, see docs/architecture.md "Copies kept on purpose".
@bentoml.service(name="flux_depth", **runner_service_config(SETTINGS))
class FluxDepth:
    def __init__(self) -> None:
        from runners.flux_pipeline import FluxDepthPipeline

        self.pipeline = FluxDepthPipeline.from_store(SETTINGS)

    @bentoml.api(**batching_options(SETTINGS.flux_max_batch_size, SETTINGS.flux_max_latency_ms))
    def generate(self, jobs: list[FluxDepthJob]) -> GenerationResults:
        """Run the jobs, one result each: jobs that can share a pipeline call share one.
        With adaptive batching, BentoML gathers concurrent calls into one list. Jobs nobody
        waits for any more are not run (runners/deadlines.py)."""
        with requests_of(jobs):  # every log line names the batch's requests
            return deadlines.run_live(jobs, self.pipeline.run_batch)

    @bentoml.api
    async def cancel(self, tokens: list[str]) -> int:
        """The Gateway's callers of these requests went away: their jobs are not started, and
        a call running only them stops at its next step. On the event loop, so it lands while
        `generate` runs in its thread."""
        deadlines.cancel(tokens)
        return len(tokens)

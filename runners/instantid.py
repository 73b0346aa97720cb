"""BentoML service for the instantid runner (serves instantid and insta-depth on one SDXL base).

torch, diffusers and insightface are imported in `__init__`, inside the runner's own process, so
importing this module (as the Gateway does to declare its dependency) stays light.
"""

from __future__ import annotations

import bentoml

from protocol.jobs import InstantIDJob
from runners.scheduler import Scheduler
from runners.service_config import GenerationResults, runner_service_config
from settings import get_settings

SETTINGS = get_settings()


# Copied from runners.sd15_depth.SD15Depth (its model, job type and batch size changed):
# kept a copy on purpose, see docs/architecture.md "Copies kept on purpose".
@bentoml.service(name="instantid", **runner_service_config(SETTINGS))
class InstantID:
    def __init__(self) -> None:
        from runners.instantid_pipeline import InstantIDPipelines

        self.pipelines = InstantIDPipelines.from_store(SETTINGS)
        # The runner's own queue: it builds each pipeline call (runners/scheduler.py).
        self.scheduler = Scheduler(
            "instantid",
            self.pipelines.call_key,
            self.pipelines.run_call,
            SETTINGS.instantid_max_batch_size,
            prepare=self.pipelines.prepare,
        )

    @bentoml.api
    async def generate(self, jobs: list[InstantIDJob]) -> GenerationResults:
        """Run the jobs, one result each, once the pipeline calls holding their samples end.
        Jobs nobody waits for any more are not run (runners/deadlines.py)."""
        return await self.scheduler.submit(jobs)

    @bentoml.api
    async def cancel(self, tokens: list[str]) -> int:
        """The Gateway's callers of these requests went away: their jobs are not started, and
        a call running only them stops at its next step."""
        self.scheduler.cancel(tokens)
        return len(tokens)

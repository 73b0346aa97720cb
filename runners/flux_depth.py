"""The flux_depth runner (serves flux-depth-pro): its API, the job it takes and the BentoML
service that runs it.

torch and diffusers are imported in `__init__`, inside the runner's own process, so importing
this module (as the Gateway does, for the job type and to declare its dependency) stays light.
"""

from __future__ import annotations

import bentoml
from pydantic import BaseModel, ConfigDict, Field

from protocol.jobs import OutputFormat, PILImage, Text
from runners.scheduler import Scheduler
from runners.service_config import GenerationResults, runner_service_config
from settings import get_settings

SETTINGS = get_settings()
# The output long side in the `full` profile (the hosted API's): the Gateway sizes jobs to it and
# the runner warms up at it (settings.long_side).
FULL_LONG_SIDE = 1024


class FluxDepthJob(BaseModel):
    """One flux-depth-pro request: one image, screened at `safety_tolerance` (1 strictest)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    request_id: str
    prompt: Text
    control_image: PILImage
    guidance: float
    steps: int = Field(ge=1)
    seed: int = Field(ge=0)
    width: int = Field(ge=16)
    height: int = Field(ge=16)
    output_format: OutputFormat = "JPEG"
    safety_tolerance: int = Field(ge=1, le=6)
    prompt_upsampling: bool = False
    deadline: float | None = None  # see Abandonable in protocol/jobs.py
    token: str = ""


# Copied from runners.sd15_depth.SD15Depth (its model, job type and batch size changed):
# kept a copy on purpose, see docs/architecture.md "Copies kept on purpose".
@bentoml.service(name="flux_depth", **runner_service_config(SETTINGS))
class FluxDepth:
    def __init__(self) -> None:
        from runners.flux_pipeline import FluxDepthPipeline

        self.pipeline = FluxDepthPipeline.from_store(SETTINGS)
        # The runner's own queue: it builds each pipeline call (runners/scheduler.py).
        self.scheduler = Scheduler(
            "flux_depth",
            self.pipeline.call_key,
            self.pipeline.run_call,
            SETTINGS.flux_max_batch_size,
            prepare=self.pipeline.prepare,
        )

    @bentoml.api
    async def generate(self, jobs: list[FluxDepthJob]) -> GenerationResults:
        """Run the jobs, one result each, once the pipeline calls holding their samples end.
        Jobs nobody waits for any more are not run (runners/deadlines.py)."""
        return await self.scheduler.submit(jobs)

    @bentoml.api
    async def cancel(self, tokens: list[str]) -> int:
        """The Gateway's callers of these requests went away: their jobs are not started, and
        a call running only them stops at its next step."""
        self.scheduler.cancel(tokens)
        return len(tokens)
